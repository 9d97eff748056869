"""The application API: send one task of any kind from your code, get its result later.

    from taskshuttle import Client

    with Client.local(workers=2) as client:          # or Client(url="amqp://...")
        handle = client.send("echo", {"n": 1})
        handle.result(timeout=10)                      # {'n': 1}

        later = client.send("echo", {"n": 2}, countdown=30)
        client.revoke(later.id)                        # it will not run

`Client(url=...)` talks to RabbitMQ (workers are `consumer` processes, anywhere);
`Client.local(workers=N)` starts N daemon worker processes of its own around a
`multiprocessing.Queue`, and reaps them when it closes. Both speak the same envelopes, run
the same worker code, and give the same guarantees as the job runner under `producer`.

One thread of the client's own owns its backend (neither backend is thread-safe): `send`,
from any number of threads, hands its tasks over and waits until the broker has stored them
(publisher confirms), and the tasks handed over meanwhile by other threads go out in the same
batch, so many threads pipeline their confirms. The same thread takes the results off the
reply queue and resolves each `TaskHandle`: a handle may be waited on from any thread.

What is at least once, as everywhere in taskshuttle: a task whose worker dies, or whose
connection drops, runs again (same id: `TaskContext.task_id` is the key for work that must
happen once). A `task_id` given to `send` is the caller's idempotency key: sending the same
id twice while the first is queued runs it twice, and its first result resolves both handles.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from common.backend import MAX_DELAY, MAX_KEEP_FOR, REVOKE_KEEP, ProducerBackend
from common.errors import ConfigError, TaskshuttleError
from common.factory import Role, open_backend
from common.local import LocalBroker
from common.schemas import MAX_ATTEMPTS, TASK_ID_MAX, TaskEnvelope, TaskResult, TaskStatus, utcnow
from common.settings import BackendName, Settings, describe_error, load_settings
from producer.local import WorkerOptions, WorkerPool, import_handlers, local_workers, registry

if TYPE_CHECKING:
    from types import ModuleType

log = logging.getLogger("taskshuttle.client")

#: How long the client's thread waits for results before it looks at its other queues and,
#: with local workers, at their health.
_POLL = 0.2


# -- errors ---------------------------------------------------------------------------------


class TaskFailed(TaskshuttleError):
    """The task will not run again: its handler raised on its last attempt, or it was
    dead-lettered (`reason` says why: ``max-attempts``, ``bad-payload``, ``unknown-kind``...).
    `error_type` is the remote exception's type name when a raise made it fail."""

    def __init__(self, result: TaskResult) -> None:
        self.result = result
        self.task_id = result.task_id
        self.kind = result.kind
        self.reason = result.reason or "failed"
        self.error_type = result.error_type
        self.error = result.error or ""
        super().__init__(
            f"task {result.task_id} ({result.kind}) failed on attempt {result.attempt}: "
            f"{self.error}"
        )


class TaskExpired(TaskFailed):
    """The task's `expires` passed before a worker took it: it did not run."""


class TaskRevoked(TaskFailed):
    """The task was revoked before a worker started it: it did not run."""


class ClientClosed(TaskshuttleError):
    """The client was closed before this task's result came."""


_FAILURES: dict[str | None, type[TaskFailed]] = {"expired": TaskExpired, "revoked": TaskRevoked}


def failure_of(result: TaskResult) -> TaskFailed:
    """The exception a failed result raises in its handle."""
    return _FAILURES.get(result.reason, TaskFailed)(result)


# -- what a caller asks for ---------------------------------------------------------------------


class SendRequest(BaseModel):
    """One task as a caller asks for it: `send`'s arguments, a `send_many` item, a line of
    ``producer send --from FILE``. Validated once, here, before anything is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    #: Seconds from now before it may run (Celery's ``countdown``, Dramatiq's ``delay``).
    countdown: Annotated[float, Field(ge=0, le=MAX_DELAY, allow_inf_nan=False)] | None = None
    #: The time it may run (with a timezone), instead of a countdown.
    eta: AwareDatetime | None = None
    #: Seconds from now, or a time (with a timezone), after which it must not start.
    expires: (
        Annotated[float, Field(gt=0, le=MAX_DELAY, allow_inf_nan=False)] | AwareDatetime | None
    ) = None
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] | None = None
    #: The task's id: yours to choose (an idempotency key), or a random one.
    task_id: Annotated[str, Field(min_length=1, max_length=TASK_ID_MAX)] | None = None
    #: Another work queue than the client's (checked as the settings check a queue's name).
    queue: str | None = None

    @field_validator("payload", mode="before")
    @classmethod
    def _model_to_dict(cls, payload: object) -> object:
        if isinstance(payload, BaseModel):
            return payload.model_dump(mode="json")
        return payload

    @field_validator("expires", mode="before")
    @classmethod
    def _seconds_are_seconds(cls, expires: object) -> object:
        # A number is seconds from now, never a Unix time (which pydantic would make of it).
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            if not (math.isfinite(expires) and 0 < expires <= MAX_DELAY):
                raise ValueError(f"must be more than 0 seconds and at most {MAX_DELAY:.0f}")
            return float(expires)
        return expires

    @model_validator(mode="after")
    def _one_time(self) -> Self:
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give countdown or eta, not both")
        if self.eta is not None and (self.eta - utcnow()).total_seconds() > MAX_DELAY:
            raise ValueError("eta is more than ten years from now")
        return self

    def envelope(self, now: datetime) -> TaskEnvelope:
        """The task to send, its times reckoned from `now`; its payload checked against the
        handler's model when the kind is registered in this process."""
        handler = registry.get(self.kind)
        if handler is not None:
            handler.check(self.payload)  # PayloadError, one line
        eta = self.eta
        if self.countdown:
            eta = now + timedelta(seconds=self.countdown)
        expires = self.expires
        if isinstance(expires, float | int):
            expires = now + timedelta(seconds=expires)
        fields: dict[str, Any] = {
            "kind": self.kind,
            "payload": self.payload,
            "max_attempts": self.max_attempts,
            "created_at": now,
            "eta": eta,
            "expires": expires,
        }
        if self.task_id is not None:
            fields["id"] = self.task_id
        return TaskEnvelope(**fields)


def as_request(item: SendRequest | Mapping[str, Any]) -> SendRequest:
    """A `send_many` item as a request, or `ConfigError` naming the field that is wrong."""
    if isinstance(item, SendRequest):
        return item
    try:
        return SendRequest.model_validate(item)
    except ValidationError as exc:
        raise ConfigError(_validation_line(exc)) from None


def _validation_line(exc: ValidationError) -> str:
    """The first error as ``field: what is wrong`` (a whole-request rule has no field)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function"))
    return f"{where}: {describe_error(first)}" if where else describe_error(first)


# -- handles ------------------------------------------------------------------------------------


class TaskState(StrEnum):
    PENDING = "pending"  # sent (confirmed), no result yet
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"
    REVOKED = "revoked"


class TaskHandle:
    """A sent task: its id now, its result once a worker has sent it back.

    Any thread may wait on it. It holds its own result once it came, so the client keeps
    nothing of the task after that."""

    __slots__ = ("_arrived", "_closed", "_outcome", "eta", "id", "kind")

    def __init__(self, task: TaskEnvelope) -> None:
        self.id = task.id
        self.kind = task.kind
        self.eta = task.eta
        # Held until the result (or the close) comes; each waiter takes it and gives it back
        # at once. A lock, not an Event: a client makes one handle per task it sends, and an
        # Event is a Condition, a deque and bound methods to build, which the garbage
        # collector then walks at every collection for as long as the handles live.
        self._arrived = threading.Lock()
        self._arrived.acquire()
        self._outcome: TaskResult | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"TaskHandle(id={self.id!r}, kind={self.kind!r}, status={self.status.value!r})"

    def done(self) -> bool:
        """Whether the result has come (success or failure)."""
        return self._outcome is not None

    @property
    def status(self) -> TaskState:
        outcome = self._outcome
        if outcome is None:
            return TaskState.PENDING
        if outcome.status is TaskStatus.DONE:
            return TaskState.DONE
        return {"expired": TaskState.EXPIRED, "revoked": TaskState.REVOKED}.get(
            outcome.reason or "", TaskState.FAILED
        )

    @property
    def outcome(self) -> TaskResult | None:
        """The worker's whole record (who ran it, when, which attempt), once it came."""
        return self._outcome

    def result(self, timeout: float | None = None) -> Any:
        """The handler's return value, waiting up to `timeout` seconds (None: as long as it
        takes). Raises `TaskFailed` (`TaskExpired`, `TaskRevoked`) if the task will not run
        again, `TimeoutError` if no result came in time, `ClientClosed` if the client closed
        first."""
        if self._outcome is None and not self._wait(timeout):
            raise TimeoutError(f"no result for task {self.id} ({self.kind}) within {timeout} s")
        if self._closed:
            raise ClientClosed(f"the client closed before task {self.id}'s result came")
        outcome = self._outcome
        assert outcome is not None
        if outcome.status is not TaskStatus.DONE:
            raise failure_of(outcome)
        return outcome.value

    def _wait(self, timeout: float | None) -> bool:
        """Whether the result (or the close) came within `timeout`, as `Event.wait` says."""
        if timeout is None:
            came = self._arrived.acquire()
        elif timeout > 0:
            came = self._arrived.acquire(timeout=timeout)
        else:
            came = self._arrived.acquire(blocking=False)
        if came:
            self._open()  # for the next waiter
        return came

    def _resolve(self, result: TaskResult) -> None:
        self._outcome = result
        self._open()

    def _abandon(self) -> None:
        self._closed = True
        self._open()

    def _open(self) -> None:
        with contextlib.suppress(RuntimeError):  # opened by another thread meanwhile
            self._arrived.release()


# -- the client ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Order:
    """Something a caller's thread hands to the client's thread, and waits for."""

    queue: str
    tasks: list[TaskEnvelope] = field(default_factory=list)
    revoke: tuple[list[str], float] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Client:
    """Send tasks and get their results; see the module's docstring. Use it as a context
    manager, or call `close`.

    `Client(url=...)` uses RabbitMQ: `url`, `queue` and `queue_type` as the programs take them
    (None: the settings' environment variables, then their defaults), or whole `settings`.
    `connect_timeout`: seconds to wait for a broker that is down, at start and per outage.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        queue: str | None = None,
        queue_type: str | None = None,
        connect_timeout: float | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None:
            settings = load_settings(
                amqp_url=url, queue=queue, queue_type=queue_type, connect_timeout=connect_timeout
            )
        self._start(settings, open_backend(settings, Role.PRODUCER, results=True), None)

    @classmethod
    def local(
        cls,
        workers: int = 2,
        handlers: Sequence[str | ModuleType] = (),
        *,
        queue: str | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> Client:
        """A client with `workers` daemon worker processes of its own around a
        `multiprocessing.Queue`, started now and reaped by `close`. `handlers`: modules (or
        their names) that register your task kinds, imported by each worker (a kind
        registered at the top of your main module needs none: each worker imports it).
        `options`: other settings by name (``max_attempts=5``, ``task_timeout=30``...).

        Tasks held back (countdown, eta, retries) wait in a heap of this process: they are
        lost with it, as everything queued is: that is the local backend's limit."""
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            raise ConfigError(
                "Client.local() ran while a worker process imported your main module: "
                "put it under `if __name__ == '__main__':`"
            )
        modules = tuple(h if isinstance(h, str) else h.__name__ for h in handlers)
        if settings is None:
            settings = load_settings(workers=workers, queue=queue, **options)
        import_handlers(list(modules))  # the payload check needs the kinds here too
        broker = open_backend(settings, Role.PRODUCER, backend=BackendName.local)
        pool = local_workers(broker, settings, WorkerOptions.from_settings(settings), modules)
        client = cls.__new__(cls)
        pool.start()
        try:
            # A worker that dies as it starts would die again: say why at once.
            if not pool.wait_ready(stop=lambda: bool(pool.deaths)):
                raise TaskshuttleError(
                    "the local workers did not start (see above); a worker imports your "
                    "main module: create the client under `if __name__ == '__main__':`"
                )
        except BaseException:
            pool.stop()
            broker.close()
            raise
        client._start(settings, broker, pool)
        return client

    def _start(self, settings: Settings, backend: ProducerBackend, pool: WorkerPool | None) -> None:
        self.settings = settings
        self.queue = settings.queue
        self._backends: dict[str, ProducerBackend] = {settings.queue: backend}
        self._pool = pool
        self._orders: queue.SimpleQueue[_Order] = queue.SimpleQueue()
        #: Handles waiting for their result, by task id (several, if an id was sent twice).
        self._waiting: dict[str, list[TaskHandle]] = {}
        self._waiting_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        #: Results that came for no handle (a task id sent twice: its second result).
        self.unclaimed = 0
        self._thread = threading.Thread(target=self._run, name="taskshuttle-client", daemon=True)
        self._thread.start()

    @property
    def backend(self) -> str:
        """``local`` or ``rabbitmq``."""
        return "local" if self._pool is not None else "rabbitmq"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sending ------------------------------------------------------------------------------

    def send(
        self,
        kind: str,
        payload: Mapping[str, Any] | BaseModel | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        max_attempts: int | None = None,
        task_id: str | None = None,
        queue: str | None = None,
    ) -> TaskHandle:
        """Send one task; return once the broker has stored it (confirmed), with its handle.

        `payload` is a dict, or the handler's pydantic model; it is checked against the
        handler's model when `kind` is registered in this process. `countdown` (seconds) or
        `eta` (a time with a timezone): not before then; the task waits in the broker, never
        in a worker or here. `expires` (seconds from now, or a time): not started after.
        Raises `ConfigError` (or `PayloadError`) for a bad argument, the broker's error if it
        could not store the task; nothing is sent then."""
        request = as_request(
            {
                "kind": kind,
                "payload": payload if payload is not None else {},
                "countdown": countdown,
                "eta": eta,
                "expires": expires,
                "max_attempts": max_attempts,
                "task_id": task_id,
                "queue": queue,
            }
        )
        return self.send_many([request])[0]

    def send_many(self, items: Iterable[SendRequest | Mapping[str, Any]]) -> list[TaskHandle]:
        """Send many tasks, each a `SendRequest` or a dict of `send`'s arguments (``kind``,
        ``payload``, ``countdown``...), with their confirms pipelined; their handles, in
        order. Every item is checked before any is sent: one bad item sends nothing."""
        requests = [as_request(item) for item in items]
        now = utcnow()
        tasks = [request.envelope(now) for request in requests]
        # One order per queue: the backend holds each task until its own eta, reckoned as
        # it publishes, so tasks due at different times still go out in one publish.
        orders: dict[str, _Order] = {}
        for request, task in zip(requests, tasks, strict=True):
            name = request.queue or self.queue
            order = orders.get(name)
            if order is None:  # not setdefault, which builds an order (an Event) per task
                order = orders[name] = _Order(name)
            order.tasks.append(task)
        handles = [TaskHandle(task) for task in tasks]
        with self._waiting_lock:  # before the send: a result may come before it returns
            for handle in handles:
                self._waiting.setdefault(handle.id, []).append(handle)
        try:
            self._hand_over(list(orders.values()))
        except BaseException:
            with self._waiting_lock:
                for handle in handles:
                    self._forget(handle)
            raise
        return handles

    def revoke(self, task_ids: str | Iterable[str], *, keep_for: float | None = None) -> None:
        """Tell every worker not to start these tasks: one taken later is dead-lettered as
        ``revoked`` (its handle raises `TaskRevoked`). A task already running is not
        interrupted. The revocation is kept `keep_for` seconds: by default until a day after
        the task's eta when this client sent it, else `REVOKE_KEEP` (30 days)."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        if keep_for is None:
            keep_for = max([REVOKE_KEEP, *(self._keep_for(task_id) for task_id in ids)])
        if not math.isfinite(keep_for) or keep_for <= 0:
            raise ConfigError(f"keep_for must be a number of seconds above 0, not {keep_for!r}")
        self._hand_over([_Order(self.queue, revoke=(ids, min(keep_for, MAX_KEEP_FOR)))])

    def _keep_for(self, task_id: str) -> float:
        with self._waiting_lock:
            handles = self._waiting.get(task_id, [])
        etas = [h.eta for h in handles if h.eta is not None]
        return max(((eta - utcnow()).total_seconds() + 86_400 for eta in etas), default=0.0)

    def _hand_over(self, orders: list[_Order]) -> None:
        if self._closed or self._closing.is_set():
            raise ClientClosed("the client is closed")
        for order in orders:
            self._orders.put(order)
        self._backends[self.queue].interrupt()
        for order in orders:
            while not order.done.wait(1.0):
                if not self._thread.is_alive():
                    raise ClientClosed("the client's thread has stopped")
            if order.error is not None:
                raise order.error

    # -- the client's thread --------------------------------------------------------------------

    def _run(self) -> None:
        main = self._backends[self.queue]
        while not self._closing.is_set():
            self._carry_out_orders()
            others = len(self._backends) > 1
            try:
                self._take_results(main, 0.01 if others else _POLL)
                if others:
                    for name, backend in list(self._backends.items()):
                        if name != self.queue:
                            self._take_results(backend, 0)
                if self._pool is not None:
                    self._pool.check()
            except Exception as exc:  # the broker's; `send` reports it to its caller
                log.warning("while taking results: %s: %s", type(exc).__name__, exc)
                time.sleep(_POLL)
        self._carry_out_orders(refuse=ClientClosed("the client closed before sending"))

    def _carry_out_orders(self, refuse: BaseException | None = None) -> None:
        """Everything handed over so far: the tasks of all orders for one queue in one
        publish (their confirms pipelined), and the revocations."""
        orders: list[_Order] = []
        with contextlib.suppress(queue.Empty):
            while True:
                orders.append(self._orders.get_nowait())
        batches: dict[tuple[str, bool], list[_Order]] = {}
        for order in orders:
            batches.setdefault((order.queue, order.revoke is not None), []).append(order)
        for (name, revokes), batch in batches.items():
            try:
                if refuse is not None:
                    raise refuse
                backend = self._backend_for(name)
                if revokes:
                    for order in batch:
                        assert order.revoke is not None
                        ids, keep_for = order.revoke
                        backend.revoke(ids, keep_for=keep_for)
                else:
                    backend.publish([task for order in batch for task in order.tasks])
            except BaseException as exc:
                for order in batch:
                    order.error = exc
            for order in batch:
                order.done.set()

    def _backend_for(self, name: str) -> ProducerBackend:
        backend = self._backends.get(name)
        if backend is None:
            if self._pool is not None:
                raise ConfigError(
                    f"the local backend has one queue, {self.queue!r}; it cannot send to {name!r}"
                )
            settings = self._settings_for(name)
            backend = open_backend(settings, Role.PRODUCER, results=True)
            self._backends[name] = backend
        return backend

    def _settings_for(self, queue_name: str) -> Settings:
        """This client's settings for another queue, that queue's name checked as any is."""
        try:
            return Settings.model_validate({**self.settings.model_dump(), "queue": queue_name})
        except ValidationError as exc:
            raise ConfigError(f"queue {queue_name!r}: {describe_error(exc.errors()[0])}") from None

    def _take_results(self, backend: ProducerBackend, timeout: float) -> None:
        result = backend.receive_result(timeout)
        while result is not None:
            self._deliver(result)
            result = backend.receive_result(0)

    def _deliver(self, result: TaskResult) -> None:
        with self._waiting_lock:
            handles = self._waiting.pop(result.task_id, None)
        if not handles:
            self.unclaimed += 1
            return
        for handle in handles:
            handle._resolve(result)

    def _forget(self, handle: TaskHandle) -> None:
        handles = self._waiting.get(handle.id)
        if handles and handle in handles:
            handles.remove(handle)
            if not handles:
                del self._waiting[handle.id]

    @property
    def outstanding(self) -> int:
        """Handles waiting for their result."""
        with self._waiting_lock:
            return sum(len(handles) for handles in self._waiting.values())

    # -- closing --------------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Stop the client's thread, close its connections and, with local workers, stop
        them (each finishes the task in hand) and reap them. A handle still waiting then
        raises `ClientClosed`. Safe to call twice."""
        if self._closed:
            return
        self._closing.set()
        main = self._backends[self.queue]
        main.interrupt()
        self._thread.join(timeout)
        self._closed = True
        if self._pool is not None:
            self._pool.stop(timeout)
            local = main
            assert isinstance(local, LocalBroker)  # a pool is the local backend's only
            with contextlib.suppress(Exception):
                local.drain_events()
                self._take_results(local, 0)  # what came while the workers stopped
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                backend.close()
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for handles in waiting.values():
            for handle in handles:
                handle._abandon()


__all__ = [
    "REVOKE_KEEP",
    "Client",
    "ClientClosed",
    "SendRequest",
    "TaskExpired",
    "TaskFailed",
    "TaskHandle",
    "TaskRevoked",
    "TaskState",
    "as_request",
]
