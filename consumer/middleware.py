"""Worker middleware: every policy around the worker loop, as hooks.

`consumer.worker.Worker` only takes a delivery, runs its handler and settles it. What it
does around that (retrying a failed task, stopping one that runs too long, dead-lettering a
task that keeps killing its workers, telling watchers what happens, counting for Prometheus)
is a `Middleware` here, called at each step, in the order of the worker's list. The hooks
are named as Dramatiq names them where they mean the same:

==========================  ===============================================================
`after_worker_boot`         the worker is about to take its first delivery
`before_process_message`    a delivery is decoded into a task; raise `RefuseTask` to have it
                            dead-lettered unrun (the killed-worker rule; expiry, revocation)
`before_handler`            its handler is found and about to run
`after_process_message`     the handler returned (`result`) or raised (`exception`)
`on_failure`                the task failed (raised, or ran past its limit): return True
                            once this middleware has settled it (a retry); if none does,
                            the worker dead-letters it
`after_retry`               its next attempt is stored, to come back after `delay`
`after_ack`                 it succeeded and is acked (its result stored)
`after_dead_letter`         it (or a body that is no task) is dead-lettered
`after_delivery_done`       the worker has let go of the delivery, however it ended
`after_worker_shutdown`     the worker took its last delivery
==========================  ===============================================================

A hook that raises is a bug in that middleware: the delivery is dead-lettered as
``worker-error`` and the worker goes on, as for any unexpected error.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from common.backend import MAX_DELAY
from common.events import Emitter, EventKind, EventSink
from common.schemas import MAX_ATTEMPTS, DeadLetter, utcnow

if TYPE_CHECKING:
    from common.backend import Delivery, WorkerBackend
    from common.clock import Clock
    from common.schemas import TaskEnvelope
    from consumer.inflight import InHand

log = logging.getLogger("taskshuttle.worker")


@dataclass(eq=False)
class WorkItem:
    """One delivery in a worker's hands: the delivery, its task once decoded, and what the
    middleware and the settling need to know of its run."""

    delivery: Delivery
    #: None while the body is not decoded, and for a body that is no task.
    task: TaskEnvelope | None = None
    #: The attempts this task gets (`consumer.middleware.Retries` sets it).
    max_attempts: int = 1
    #: When its handler started (wall clock), and how long it ran (once it has).
    started_at: datetime | None = None
    duration: float | None = None
    #: The type of the exception its handler raised, if it raised (results carry it).
    error_type: str | None = None
    _owner: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def claim(self, owner: object) -> bool:
        """Whether `owner` is the one to settle this task: the first to claim it is (the
        worker, or the time limit's watchdog), and stays so."""
        with self._lock:
            if self._owner is None:
                self._owner = owner
            return self._owner is owner


class Worker(Protocol):
    """What middleware may use of the worker that calls it (`consumer.worker.Worker`)."""

    backend: WorkerBackend
    clock: Clock
    succeeded: int
    retried: int
    dead_lettered: int

    def totals(self) -> dict[str, object]: ...
    def fail(self, item: WorkItem, error: str) -> None: ...
    def retry_later(
        self, item: WorkItem, next_try: TaskEnvelope, delay: float, error: str
    ) -> None: ...
    def dead_letter(self, item: WorkItem, reason: str, error: str) -> None: ...
    def postpone(self, item: WorkItem, delay: float) -> None: ...
    def done(self, item: WorkItem) -> None: ...


class WorkerOptions(Protocol):
    """The options the default stack is built from (`consumer.worker.WorkerOptions`)."""

    max_attempts: int
    retry_base_delay: float
    retry_max_delay: float
    task_timeout: float | None
    task_events: bool


class RefuseTask(Exception):
    """Raised by a `before_process_message` hook: dead-letter this task with `reason`
    instead of running it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Postpone(Exception):
    """Raised by a `before_process_message` hook: the task came too early; the worker sends
    it back, unchanged and unrun, to come back after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"due in {delay:.3f} s")
        self.delay = delay


class Middleware:
    """Every hook, doing nothing: a middleware overrides the ones it needs."""

    def after_worker_boot(self, worker: Worker) -> None:
        pass

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        pass

    def before_handler(self, worker: Worker, item: WorkItem) -> None:
        pass

    def after_process_message(
        self,
        worker: Worker,
        item: WorkItem,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        pass

    def on_failure(self, worker: Worker, item: WorkItem, error: str) -> bool:
        return False

    def after_retry(self, worker: Worker, item: WorkItem, delay: float, error: str) -> None:
        pass

    def after_ack(self, worker: Worker, item: WorkItem) -> None:
        pass

    def after_dead_letter(self, worker: Worker, item: WorkItem, letter: DeadLetter) -> None:
        pass

    def after_delivery_done(self, worker: Worker, item: WorkItem) -> None:
        pass

    def after_worker_shutdown(self, worker: Worker) -> None:
        pass


# -- retries -------------------------------------------------------------------------------

#: 2 ** 64 times any sane base delay is past any cap: higher exponents change nothing.
_MAX_EXPONENT = 64


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before attempt `attempt + 1`: exponential, capped, with jitter.

    Between half and all of ``base * 2 ** (attempt - 1)`` (capped), so a burst of failures
    does not come back as a burst. The exponent is capped too: any attempt number gives a
    delay, never an `OverflowError`.
    """
    full = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return full * (0.5 + 0.5 * rand())


class Retries(Middleware):
    """A failed task comes back as its next attempt after a backoff delay, through the
    backend's delayed `publish` (the wait is the broker's, never a sleeping worker's), until
    it has had the attempts it asked for, never more than this consumer allows; then it is
    dead-lettered as ``max-attempts``."""

    def __init__(self, max_attempts: int, base_delay: float, max_delay: float) -> None:
        self.max_attempts = min(max_attempts, MAX_ATTEMPTS)
        self.base_delay = base_delay
        self.max_delay = max_delay

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        assert item.task is not None
        item.max_attempts = min(item.task.max_attempts or self.max_attempts, self.max_attempts)

    def on_failure(self, worker: Worker, item: WorkItem, error: str) -> bool:
        task = item.task
        assert task is not None
        if task.attempt >= item.max_attempts:
            worker.dead_letter(item, "max-attempts", error)
            return True
        delay = backoff_delay(task.attempt, self.base_delay, self.max_delay)
        log.debug(
            "task %s attempt %d/%d failed (%s); retry in %.2fs",
            task.id,
            task.attempt,
            item.max_attempts,
            error,
            delay,
        )
        next_try = task.model_copy(update={"attempt": task.attempt + 1})
        worker.retry_later(item, next_try, delay, error)
        return True


# -- the time limit ------------------------------------------------------------------------

#: Exit code of a worker that gave up on a task past its time limit (replaced, not a crash).
EXIT_TASK_TIMEOUT = 75


class TimeLimit(Middleware):
    """A task still running `limit` seconds after its handler started fails (retried or
    dead-lettered like any failure), and then `on_timeout` ends the worker: Python cannot
    stop a running function, so the process goes and the supervisor starts a fresh one.

    A watchdog thread does it, so it holds while the worker drains at shutdown too. The
    worker and the watchdog each `claim` the task before settling it: whoever claims it
    first settles it, once.
    """

    def __init__(self, limit: float, on_timeout: Callable[[WorkerBackend], None]) -> None:
        self.limit = limit
        self.on_timeout = on_timeout
        self._watched: tuple[WorkItem, float] | None = None
        self._lock = threading.Lock()
        self._finished = threading.Event()

    def after_worker_boot(self, worker: Worker) -> None:
        threading.Thread(
            target=self._watch, args=(worker,), name="task-timeout", daemon=True
        ).start()

    def before_handler(self, worker: Worker, item: WorkItem) -> None:
        with self._lock:
            self._watched = (item, worker.clock.monotonic())

    def after_process_message(
        self,
        worker: Worker,
        item: WorkItem,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            self._watched = None

    def after_worker_shutdown(self, worker: Worker) -> None:
        self._finished.set()

    def _watch(self, worker: Worker) -> None:
        clock, limit = worker.clock, self.limit
        while not self._finished.is_set():
            clock.sleep(min(0.1, limit / 4))
            with self._lock:
                watched = self._watched
                if watched is None or clock.monotonic() - watched[1] < limit:
                    continue
                self._watched = None
            item, started = watched
            if not item.claim(self):
                continue  # the handler returned just now: the worker settles it
            assert item.task is not None
            log.warning("task %s ran over its %gs limit; stopping it", item.task.id, limit)
            try:
                item.duration = clock.monotonic() - started
                worker.fail(item, f"TaskTimeout: still running after {limit:g}s")
            except Exception as exc:  # unsettled: handed out again once this process is gone
                log.error(
                    "task %s: could not settle it: %s: %s", item.task.id, type(exc).__name__, exc
                )
            finally:
                worker.done(item)
                self.on_timeout(worker.backend)
            return


# -- the killed-worker rule ----------------------------------------------------------------


class KilledWorkers(Middleware):
    """Notes the task in hand in this worker's slot of the in-flight registry, and refuses a
    task that killed `max_deaths` workers already.

    The supervisor reads the slot when a worker dies: it counts a death against the task the
    worker was running, and once a task has `max_deaths` it writes the id into the death
    table (`consumer.inflight`). The backend hands the task out again, redelivered; the
    worker that takes it finds it in the table and dead-letters it (``killed-worker``)
    instead of dying too. The same rule for both backends: on the local one the supervisor
    is the producer, on RabbitMQ the consumer.
    """

    def __init__(self, in_hand: InHand) -> None:
        self.in_hand = in_hand

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        task = item.task
        assert task is not None
        killed = self.in_hand.take(task.id, item.delivery.redelivered, task.kind)
        if killed:
            raise RefuseTask("killed-worker", f"{killed} workers died running it")

    def after_delivery_done(self, worker: Worker, item: WorkItem) -> None:
        self.in_hand.count(worker.succeeded, worker.retried, worker.dead_lettered)
        self.in_hand.release()


# -- task events ---------------------------------------------------------------------------


class Events(Middleware):
    """Task events (`common.events`) for whoever watches: one per step of each task, sent
    once the task is settled (one hand-over per task), and the worker's heartbeats."""

    def __init__(self, sinks: Sequence[EventSink], queue: str, worker: str) -> None:
        self.sinks = list(sinks)
        self.queue = queue
        self.worker_name = worker
        self.emitter: Emitter | None = None

    def after_worker_boot(self, worker: Worker) -> None:
        self.emitter = Emitter(self.sinks, self.queue, self.worker_name, worker.totals)
        self.emitter.start()

    def _task(self, kind: EventKind, **fields: Any) -> None:
        if self.emitter is not None:
            self.emitter.task(kind, **fields)

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        task = item.task
        assert task is not None
        self._task(
            EventKind.RECEIVED,
            task_id=task.id,
            task_kind=task.kind,
            attempt=task.attempt,
            redelivered=item.delivery.redelivered,
        )

    def before_handler(self, worker: Worker, item: WorkItem) -> None:
        assert item.task is not None
        self._task(EventKind.STARTED, task_id=item.task.id, task_kind=item.task.kind)

    def on_failure(self, worker: Worker, item: WorkItem, error: str) -> bool:
        task = item.task
        assert task is not None
        self._task(
            EventKind.FAILED,
            task_id=task.id,
            task_kind=task.kind,
            attempt=task.attempt,
            duration=item.duration,
            error=error,
        )
        return False

    def after_retry(self, worker: Worker, item: WorkItem, delay: float, error: str) -> None:
        task = item.task
        assert task is not None
        self._task(
            EventKind.RETRIED,
            task_id=task.id,
            task_kind=task.kind,
            attempt=task.attempt,
            retry_in=delay,
            error=error,
        )

    def after_ack(self, worker: Worker, item: WorkItem) -> None:
        assert item.task is not None
        self._task(
            EventKind.SUCCEEDED,
            task_id=item.task.id,
            task_kind=item.task.kind,
            duration=item.duration,
        )

    def after_dead_letter(self, worker: Worker, item: WorkItem, letter: DeadLetter) -> None:
        task = item.task
        self._task(
            EventKind.DEAD_LETTERED,
            task_id=letter.task_id,
            task_kind=task.kind if task else None,
            attempt=letter.attempts,
            reason=letter.reason,
            error=letter.error,
        )

    def after_delivery_done(self, worker: Worker, item: WorkItem) -> None:
        if self.emitter is not None:
            self.emitter.flush()

    def after_worker_shutdown(self, worker: Worker) -> None:
        if self.emitter is not None:
            self.emitter.stop()


# -- when a task may run ---------------------------------------------------------------------


class Schedule(Middleware):
    """A task runs between its `eta` and its `expires`, by this worker's clock.

    Past `expires`, it is dead-lettered as ``expired``, unrun (Celery's ``expires``). Before
    its `eta` (the broker held it back from the sender's clock, and this host's runs behind),
    it goes back to wait out the rest: a task never runs before its time. The broker's wait
    rounds up, so on one host this never happens; a forged `eta` is waited out at most once,
    since the task then comes back after it."""

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        task = item.task
        assert task is not None
        if task.expires is None and task.eta is None:
            return
        now = utcnow()
        if task.expires is not None and now > task.expires:
            late = (now - task.expires).total_seconds()
            raise RefuseTask("expired", f"expired at {task.expires.isoformat()}, {late:.3f} s ago")
        if task.eta is not None and task.eta > now:
            raise Postpone(min((task.eta - now).total_seconds(), MAX_DELAY))


class Revocations(Middleware):
    """A revoked task (`ProducerBackend.revoke`) taken before it started is dead-lettered as
    ``revoked``, unrun. A task already running is not interrupted: Python cannot stop a
    running function, and the worker would have to die to do it."""

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        task = item.task
        assert task is not None
        if worker.backend.is_revoked(task.id):
            raise RefuseTask("revoked", f"task {task.id} was revoked before it started")


# -- the stack -----------------------------------------------------------------------------


def default_middleware(
    options: WorkerOptions,
    backend: WorkerBackend,
    queue: str,
    worker_name: str,
    *,
    in_flight: InHand | None = None,
    event_sinks: Sequence[EventSink] = (),
    extra: Sequence[Middleware] = (),
    on_timeout: Callable[[WorkerBackend], None] | None = None,
) -> list[Middleware]:
    """The middleware a worker runs with, in order. Those that only watch come first, so
    each is told of a step before a policy acts on it (a failure before its retry): task
    events, then `extra` (metrics). Then the policies: the killed-worker rule (with
    `in_flight`, the worker's slot in its supervisor's registry), the task's schedule (eta,
    expiry), revocations, retries, the time limit."""
    stack: list[Middleware] = []
    own_sink = backend.event_sink() if options.task_events else None
    sinks = [*([own_sink] if own_sink is not None else []), *event_sinks]
    if sinks:
        stack.append(Events(sinks, queue, worker_name))
    stack.extend(extra)
    if in_flight is not None:
        stack.append(KilledWorkers(in_flight))
    stack.extend([Schedule(), Revocations()])
    stack.append(Retries(options.max_attempts, options.retry_base_delay, options.retry_max_delay))
    if options.task_timeout:
        stack.append(TimeLimit(options.task_timeout, on_timeout or exit_for_timeout))
    return stack


def exit_for_timeout(backend: WorkerBackend) -> None:
    """A running Python function cannot be stopped from outside: end the process (after
    the backend has sent what it holds); the supervisor starts a fresh worker."""
    import os

    backend.close()
    os._exit(EXIT_TASK_TIMEOUT)


__all__ = [
    "EXIT_TASK_TIMEOUT",
    "Events",
    "KilledWorkers",
    "Middleware",
    "Postpone",
    "RefuseTask",
    "Retries",
    "Revocations",
    "Schedule",
    "TimeLimit",
    "backoff_delay",
    "default_middleware",
    "exit_for_timeout",
]
