"""The worker loop: the same code runs under `consumer` and inside `producer --backend local`.

One delivery at a time: decode, run the handler, then settle. Settling happens only after the
handler has returned or raised, so a worker that dies mid-task leaves its delivery unsettled
and the backend hands it out again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from pydantic_core import PydanticSerializationError

from common.backend import Delivery, WorkerBackend
from common.clock import SYSTEM_CLOCK, Clock
from common.errors import BadMessage, ConnectionLost
from common.events import Emitter, EventKind, EventSink
from common.schemas import (
    HOSTNAME,
    MAX_ATTEMPTS,
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    TaskStatus,
    decode_task,
    utcnow,
)
from common.settings import Settings
from consumer.handlers import PayloadError, Registry, TaskContext

if TYPE_CHECKING:
    from consumer.inflight import InHand

log = logging.getLogger("taskshuttle.worker")


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class WorkerOptions:
    max_attempts: int = 3
    retry_base_delay: float = 1.0
    retry_max_delay: float = 300.0
    #: Exit once the queue has stayed empty this long (``--burst``); None: run until stopped.
    burst_idle: float | None = None
    #: How long one `receive` may block before the loop looks at the stop flag again.
    poll_interval: float = 0.2
    #: Seconds a task may run; past it the task fails (retried or dead-lettered) and the
    #: worker process is replaced, since Python cannot stop a running function. None: no limit.
    task_timeout: float | None = None
    #: Publish task events through the backend (`Settings.task_events`).
    task_events: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, burst_idle: float | None = None) -> WorkerOptions:
        return cls(
            max_attempts=settings.max_attempts,
            retry_base_delay=settings.retry_base_delay,
            retry_max_delay=settings.retry_max_delay,
            task_timeout=settings.task_timeout or None,
            burst_idle=burst_idle,
            task_events=settings.task_events,
        )


#: Exit code of a worker that gave up on a task past its time limit (replaced, not a crash).
EXIT_TASK_TIMEOUT = 75

#: 2 ** 64 times any sane base delay is past any cap: higher exponents change nothing.
_MAX_EXPONENT = 64


@dataclass
class _InHand:
    delivery: Delivery
    task: TaskEnvelope
    started_at: datetime
    started: float


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


class Worker:
    def __init__(
        self,
        backend: WorkerBackend,
        registry: Registry,
        options: WorkerOptions,
        stop: StopFlag,
        queue_name: str = "tasks",
        on_timeout: Callable[[WorkerBackend], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        in_flight: InHand | None = None,
        event_sinks: Sequence[EventSink] = (),
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.options = options
        self.stop = stop
        self.queue_name = queue_name
        self.processed = 0
        self.succeeded = 0
        self.retried = 0
        self.dead_lettered = 0
        thread = threading.current_thread()
        self._name = multiprocessing.current_process().name
        if thread is not threading.main_thread():  # --pool thread: say which thread
            self._name += f"/{thread.name}"
        self._in_hand: _InHand | None = None
        self._in_hand_lock = threading.Lock()
        #: Set once `run` has returned: the watchdog keeps watching until then, draining too.
        self._finished = threading.Event()
        self.on_timeout = on_timeout or _exit_for_timeout
        self.clock = clock
        #: Where this worker notes the task in hand, for its supervisor (`consumer.inflight`).
        self.in_flight = in_flight
        own_sink = backend.event_sink() if options.task_events else None
        sinks = [*([own_sink] if own_sink is not None else []), *event_sinks]
        self.events = Emitter(sinks, queue_name, self._name, self._totals)

    def run(self) -> int:
        """Take tasks until stopped (or, in burst mode, until the queue stays empty)."""
        if self.options.task_timeout:
            threading.Thread(target=self._watchdog, name="task-timeout", daemon=True).start()
        self.events.start()
        try:
            self._loop()
        finally:
            self._finished.set()
            self.events.stop()
        return self.processed

    def _loop(self) -> None:
        idle_since: float | None = None
        while not self.stop.is_set():
            delivery = self.backend.receive(self.options.poll_interval)
            if delivery is None:
                if self.options.burst_idle is None:
                    continue
                now = self.clock.monotonic()
                if idle_since is None:
                    idle_since = now
                if now - idle_since >= self.options.burst_idle and self.backend.pending() == 0:
                    return
                continue
            idle_since = None
            self.process(delivery)
            if self.in_flight is not None:
                self.in_flight.count(self.succeeded, self.retried, self.dead_lettered)
                self.in_flight.release()  # settled

    def process(self, delivery: Delivery) -> None:
        """Decode, run and settle one delivery. Whatever goes wrong with it, it is settled
        (dead-lettered as ``worker-error`` when nothing else applies) and the worker goes on;
        only a lost connection leaves it unsettled, for the broker to hand out again."""
        task: TaskEnvelope | None = None
        try:
            try:
                task = decode_task(delivery.body)
            except BadMessage as exc:
                self._dead_letter(delivery, exc.reason, exc.detail, attempts=0, task=None)
                return
            self.events.task(
                EventKind.RECEIVED,
                task_id=task.id,
                task_kind=task.kind,
                attempt=task.attempt,
                redelivered=delivery.redelivered,
            )
            self._run(delivery, task)
        except ConnectionLost as exc:
            self._release()
            log.warning("%s: connection lost before it was settled (%s)", _which(task), exc)
        except Exception as exc:
            self._release()
            self._worker_error(delivery, task, exc)
        finally:
            self.events.flush()

    def _worker_error(self, delivery: Delivery, task: TaskEnvelope | None, exc: Exception) -> None:
        log.exception("unexpected error while processing %s", _which(task))
        error = f"{type(exc).__name__}: {exc}"
        try:
            self._dead_letter(delivery, "worker-error", error, task.attempt if task else 0, task)
        except Exception as again:  # not settled: the broker hands it out again
            log.error(
                "%s: could not dead-letter it either: %s: %s",
                _which(task),
                type(again).__name__,
                again,
            )

    def _run(self, delivery: Delivery, task: TaskEnvelope) -> None:
        if self.in_flight and (
            killed := self.in_flight.take(task.id, delivery.redelivered, task.kind)
        ):
            error = f"killed {killed} workers"
            self._dead_letter(delivery, "killed-worker", error, task.attempt, task)
            return
        handler = self.registry.get(task.kind)
        if handler is None:
            known = ", ".join(self.registry.kinds())
            detail = f"no handler for kind {task.kind!r} (known: {known})"
            self._dead_letter(delivery, "unknown-kind", detail, task.attempt, task)
            return

        started_at = utcnow()
        started = self.clock.monotonic()
        with self._in_hand_lock:
            self._in_hand = _InHand(delivery, task, started_at, started)
        self.events.task(EventKind.STARTED, task_id=task.id, task_kind=task.kind)
        try:
            context = self._context(task, delivery) if handler.wants_context else None
            value = handler(task.payload, context)
        except PayloadError as exc:
            if self._release():
                self._dead_letter(delivery, "bad-payload", str(exc), task.attempt, task, started_at)
            return
        except Exception as exc:
            if self._release():
                error = f"{type(exc).__name__}: {exc}"
                self._failed(delivery, task, error, started_at, self.clock.monotonic() - started)
            return
        if not self._release():
            return  # the watchdog already failed it for running too long
        duration = self.clock.monotonic() - started
        if not delivery.wants_result:
            self.backend.ack(delivery)
            self._succeeded(task, duration)
            return
        result = self._result(task, delivery, TaskStatus.DONE, started_at, value=value)
        try:
            self.backend.ack(delivery, result)
        except PydanticSerializationError as exc:  # retrying would return the same value
            error = f"the handler returned a value that is not JSON: {exc}"
            self._dead_letter(delivery, "bad-result", error, task.attempt, task, started_at)
            return
        self._succeeded(task, duration)

    def _succeeded(self, task: TaskEnvelope, duration: float) -> None:
        self.processed += 1
        self.succeeded += 1
        self.events.task(
            EventKind.SUCCEEDED, task_id=task.id, task_kind=task.kind, duration=duration
        )

    def _totals(self) -> dict[str, object]:
        """What this worker did so far, and what it holds (its heartbeats carry them)."""
        with self._in_hand_lock:
            in_hand = self._in_hand
        return {
            "succeeded": self.succeeded,
            "failed": self.dead_lettered,
            "retried": self.retried,
            "in_hand": in_hand.task.id if in_hand else None,
            "in_hand_kind": in_hand.task.kind if in_hand else None,
            "in_hand_since": in_hand.started_at.timestamp() if in_hand else None,
        }

    def _context(self, task: TaskEnvelope, delivery: Delivery) -> TaskContext:
        return TaskContext(
            task_id=task.id,
            kind=task.kind,
            attempt=task.attempt,
            max_attempts=self._allowed(task),
            redelivered=delivery.redelivered,
        )

    def _allowed(self, task: TaskEnvelope) -> int:
        """Tries this task gets: what it asks for, never more than this consumer allows."""
        cap = min(self.options.max_attempts, MAX_ATTEMPTS)
        return min(task.max_attempts or cap, cap)

    def _release(self) -> bool:
        """The handler is done: take the task back from the watchdog. False if it had
        already been failed for running too long."""
        with self._in_hand_lock:
            mine = self._in_hand is not None
            self._in_hand = None
        return mine

    def _watchdog(self) -> None:
        limit = self.options.task_timeout or 0
        while not self._finished.is_set():
            self.clock.sleep(min(0.1, limit / 4))
            with self._in_hand_lock:
                in_hand = self._in_hand
                if in_hand is None or self.clock.monotonic() - in_hand.started < limit:
                    continue
                self._in_hand = None
            log.warning("task %s ran over its %gs limit; stopping it", in_hand.task.id, limit)
            error = f"TaskTimeout: still running after {limit:g}s"
            try:
                ran = self.clock.monotonic() - in_hand.started
                self._failed(in_hand.delivery, in_hand.task, error, in_hand.started_at, ran)
                self.events.flush()
            except Exception as exc:  # unsettled: handed out again once this process is gone
                log.error(
                    "task %s: could not settle it: %s: %s", in_hand.task.id, type(exc).__name__, exc
                )
            finally:
                if self.in_flight is not None:
                    self.in_flight.count(self.succeeded, self.retried, self.dead_lettered)
                self.on_timeout(self.backend)
            return

    def _failed(
        self,
        delivery: Delivery,
        task: TaskEnvelope,
        error: str,
        started_at: object,
        duration: float | None = None,
    ) -> None:
        allowed = self._allowed(task)
        self.events.task(
            EventKind.FAILED,
            task_id=task.id,
            task_kind=task.kind,
            attempt=task.attempt,
            duration=duration,
            error=error,
        )
        if task.attempt < allowed:
            delay = backoff_delay(
                task.attempt, self.options.retry_base_delay, self.options.retry_max_delay
            )
            log.debug(
                "task %s attempt %d/%d failed (%s); retry in %.2fs",
                task.id,
                task.attempt,
                allowed,
                error,
                delay,
            )
            next_try = task.model_copy(update={"attempt": task.attempt + 1})
            self.backend.retry_later(delivery, next_try, delay)
            self.retried += 1
            self.events.task(
                EventKind.RETRIED,
                task_id=task.id,
                task_kind=task.kind,
                attempt=task.attempt,
                retry_in=delay,
                error=error,
            )
            return
        self._dead_letter(delivery, "max-attempts", error, task.attempt, task, started_at)

    def _dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        error: str,
        attempts: int,
        task: TaskEnvelope | None,
        started_at: object = None,
    ) -> None:
        log.warning("dead-lettering %s: %s: %s", task.id if task else "a message", reason, error)
        letter = DeadLetter(
            reason=reason,
            error=error,
            queue=self.queue_name,
            attempts=attempts,
            task_id=task.id if task else None,
            dead_lettered_at=utcnow(),
            body=delivery.body,
        )
        result = None
        if task is not None and delivery.wants_result:
            result = self._result(
                task,
                delivery,
                TaskStatus.FAILED,
                started_at or utcnow(),
                error=f"{reason}: {error}",
            )
        self.backend.dead_letter(delivery, letter, result)
        self.processed += 1
        self.dead_lettered += 1
        self.events.task(
            EventKind.DEAD_LETTERED,
            task_id=task.id if task else None,
            task_kind=task.kind if task else None,
            attempt=attempts,
            reason=reason,
            error=error,
        )

    def _result(
        self,
        task: TaskEnvelope,
        delivery: Delivery,
        status: TaskStatus,
        started_at: object,
        *,
        value: object = None,
        error: str | None = None,
    ) -> TaskResult:
        # Validated, though every field comes from this code or a validated task: pydantic's
        # validator (compiled) takes half the time of `model_construct` (Python). A handler's
        # value that is not JSON is caught when the result is encoded.
        return TaskResult.model_validate(
            {
                "task_id": task.id,
                "kind": task.kind,
                "status": status,
                "attempt": task.attempt,
                "redelivered": delivery.redelivered,
                "worker_pid": os.getpid(),
                "worker_ppid": os.getppid(),
                "worker_host": HOSTNAME,
                "worker_name": self._name,
                "started_at": started_at,
                "finished_at": utcnow(),
                "created_at": task.created_at,
                "value": value,
                "error": error,
            }
        )


def _which(task: TaskEnvelope | None) -> str:
    return f"task {task.id}" if task is not None else "a message"


def _exit_for_timeout(backend: WorkerBackend) -> None:
    """A running Python function cannot be stopped from outside: end the process (after
    the backend has sent what it holds); the supervisor starts a fresh worker."""
    backend.close()
    os._exit(EXIT_TASK_TIMEOUT)
