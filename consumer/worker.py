"""The worker loop: the same code runs under `consumer` and inside `producer --backend local`.

One delivery at a time: decode, run the handler, then settle. Settling happens only after the
handler has returned or raised, so a worker that dies mid-task leaves its delivery unsettled
and the backend hands it out again. Every policy around that (retries, the time limit, the
killed-worker rule, task events, metrics) is middleware (`consumer.middleware`), called at
each step; this module only knows how to settle: ack, retry later, dead-letter.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic_core import PydanticSerializationError

from common.backend import Delivery, WorkerBackend
from common.clock import SYSTEM_CLOCK, Clock
from common.defaults import SettingFields
from common.errors import BadMessage, ConnectionLost
from common.events import EventSink
from common.schemas import (
    HOSTNAME,
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    TaskStatus,
    decode_task,
    utcnow,
)
from common.settings import Settings
from consumer.handlers import PayloadError, Registry, TaskContext
from consumer.middleware import Middleware, Postpone, RefuseTask, WorkItem, default_middleware

if TYPE_CHECKING:
    from consumer.inflight import InHand

log = logging.getLogger("taskshuttle.worker")


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker's default middleware is built from; the defaults are the settings'
    (`common.defaults.SettingFields`), never restated here."""

    max_attempts: int = SettingFields.max_attempts
    retry_base_delay: float = SettingFields.retry_base_delay
    retry_max_delay: float = SettingFields.retry_max_delay
    #: Exit once the queue has stayed empty this long (``--burst``); None: run until stopped.
    burst_idle: float | None = None
    #: How long one `receive` may block before the loop looks at the stop flag again.
    poll_interval: float = 0.2
    #: Seconds a task may run; past it the task fails (retried or dead-lettered) and the
    #: worker process is replaced, since Python cannot stop a running function. None: no limit.
    task_timeout: float | None = None
    #: Publish task events through the backend (`Settings.task_events`).
    task_events: bool = SettingFields.task_events

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


def worker_name() -> str:
    """This worker's name in results and events: its process's, and its thread's when it
    is one of several in one process (``--pool thread``)."""
    name = multiprocessing.current_process().name
    thread = threading.current_thread()
    if thread is not threading.main_thread():
        name += f"/{thread.name}"
    return name


class Worker:
    """Takes deliveries until stopped, runs each one's handler and settles it, calling its
    middleware around each step (`consumer.middleware`).

    Without `middleware`, the worker runs `default_middleware` for its options: the
    remaining arguments (`in_flight`, `event_sinks`, `on_timeout`) are that stack's.
    """

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
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.options = options
        self.stop = stop
        self.queue_name = queue_name
        self.clock = clock
        self.name = worker_name()
        self.processed = 0
        self.succeeded = 0
        self.retried = 0
        self.dead_lettered = 0
        #: When (this worker's monotonic clock) the latest-due retry or postponed task it
        #: published comes back; None: none yet. A burst worker stays until then (and its
        #: idle window after): a backend need not count delayed tasks (`pending`).
        self.delayed_due: float | None = None
        #: The task whose handler is running (heartbeats tell it).
        self.current: WorkItem | None = None
        if middleware is None:
            middleware = default_middleware(
                options,
                backend,
                queue_name,
                self.name,
                in_flight=in_flight,
                event_sinks=event_sinks,
                on_timeout=on_timeout,
            )
        self.middleware = list(middleware)

    def run(self) -> int:
        """Take tasks until stopped (or, in burst mode, until the queue stays empty and the
        tasks it sent back to wait have come back)."""
        for middleware in self.middleware:
            middleware.after_worker_boot(self)
        try:
            self._loop()
        finally:
            for middleware in self.middleware:
                middleware.after_worker_shutdown(self)
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
                if self._burst_done(now, now - idle_since):
                    return
                continue
            idle_since = None
            self.process(delivery)

    def _burst_done(self, now: float, idle: float) -> bool:
        """Whether a burst worker may leave: idle for `burst_idle`, past the idle window after
        its own latest delayed task came due, and nothing pending (asked last: the broker)."""
        window = self.options.burst_idle
        assert window is not None
        if idle < window:
            return False
        due = self.delayed_due
        if due is not None and now < due + window:
            return False
        return self.backend.pending() == 0

    def _sent_to_wait(self, delay: float) -> None:
        """Note a task this worker published to come back after `delay` seconds."""
        due = self.clock.monotonic() + delay
        if self.delayed_due is None or due > self.delayed_due:
            self.delayed_due = due

    def process(self, delivery: Delivery) -> None:
        """Decode, run and settle one delivery. Whatever goes wrong with it, it is settled
        (dead-lettered as ``worker-error`` when nothing else applies) and the worker goes on;
        only a lost connection leaves it unsettled, for the broker to hand out again."""
        item = WorkItem(delivery)
        try:
            try:
                item.task = decode_task(delivery.body)
            except BadMessage as exc:
                self.dead_letter(item, exc.reason, exc.detail)
            else:
                self._run(item)
        except ConnectionLost as exc:
            item.claim(self)
            log.warning("%s: connection lost before it was settled (%s)", _which(item), exc)
        except Exception as exc:
            if item.claim(self):  # not settled by the time limit meanwhile
                self._worker_error(item, exc)
        except BaseException:
            # The worker itself is ending (SystemExit in a thread, KeyboardInterrupt) with
            # the task in hand: its slot keeps it, so the supervisor counts the death.
            self.current = None
            raise
        self.current = None
        self.done(item)

    def _run(self, item: WorkItem) -> None:
        task = item.task
        assert task is not None
        try:
            for middleware in self.middleware:
                middleware.before_process_message(self, item)
        except RefuseTask as refused:
            self.dead_letter(item, refused.reason, refused.detail)
            return
        except Postpone as early:
            self.postpone(item, early.delay)
            return
        handler = self.registry.get(task.kind)
        if handler is None:
            known = ", ".join(self.registry.kinds())
            detail = f"no handler for kind {task.kind!r} (known: {known})"
            self.dead_letter(item, "unknown-kind", detail)
            return

        item.started_at = utcnow()
        started = self.clock.monotonic()
        self.current = item
        for middleware in self.middleware:
            middleware.before_handler(self, item)
        try:
            context = self._context(item) if handler.wants_context else None
            value = handler(task.payload, context)
        except PayloadError as exc:
            item.error_type = type(exc).__name__
            if self._finished(item, started, exception=exc):
                self.dead_letter(item, "bad-payload", str(exc))
            return
        except Exception as exc:
            item.error_type = type(exc).__name__
            if self._finished(item, started, exception=exc):
                self.fail(item, f"{type(exc).__name__}: {exc}")
            return
        if self._finished(item, started, result=value):
            self.ack(item, value)

    def _finished(
        self,
        item: WorkItem,
        started: float,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> bool:
        """The handler returned or raised: tell the middleware; whether this worker is the
        one to settle the task (False: the time limit failed it already)."""
        self.current = None
        for middleware in self.middleware:
            middleware.after_process_message(self, item, result=result, exception=exception)
        if not item.claim(self):
            return False
        item.duration = self.clock.monotonic() - started
        return True

    # -- settling: each way once, for the loop and the middleware -----------------------------

    def ack(self, item: WorkItem, value: object = None) -> None:
        """The task succeeded: ack it, with its result if anybody asked for it."""
        delivery = item.delivery
        if delivery.wants_result:
            result = self._result(item, TaskStatus.DONE, value=value)
            try:
                self.backend.ack(delivery, result)
            except PydanticSerializationError as exc:  # retrying would return the same value
                error = f"the handler returned a value that is not JSON: {exc}"
                self.dead_letter(item, "bad-result", error)
                return
        else:
            self.backend.ack(delivery)
        self.processed += 1
        self.succeeded += 1
        for middleware in self.middleware:
            middleware.after_ack(self, item)

    def fail(self, item: WorkItem, error: str) -> None:
        """The task failed: the middleware may settle it (a retry); else it is dead-lettered."""
        for middleware in self.middleware:
            if middleware.on_failure(self, item, error):
                return
        self.dead_letter(item, "failed", error)

    def retry_later(self, item: WorkItem, next_try: TaskEnvelope, delay: float, error: str) -> None:
        """Settle the delivery by storing its task's next attempt, due in `delay` seconds."""
        self.backend.retry_later(item.delivery, next_try, delay)
        self._sent_to_wait(delay)
        self.retried += 1
        for middleware in self.middleware:
            middleware.after_retry(self, item, delay, error)

    def postpone(self, item: WorkItem, delay: float) -> None:
        """Settle the delivery by storing its task again, unchanged, due in `delay` seconds
        (a task that came before its time)."""
        assert item.task is not None
        log.info("task %s came %.3f s early: sent back to wait", item.task.id, delay)
        self.backend.publish([item.task], delay=delay, settles=item.delivery)
        # Not noted for a burst worker: the wait is the task's own schedule (a countdown,
        # or a forged eta years away), which a burst worker does not stay for, as it does
        # not for tasks sent with a countdown.

    def dead_letter(self, item: WorkItem, reason: str, error: str) -> None:
        """Keep the message, with why it will not be processed, and settle the delivery."""
        task, delivery = item.task, item.delivery
        log.warning("dead-lettering %s: %s: %s", task.id if task else "a message", reason, error)
        letter = DeadLetter(
            reason=reason,
            error=error,
            queue=self.queue_name,
            attempts=task.attempt if task else 0,
            task_id=task.id if task else None,
            dead_lettered_at=utcnow(),
            body=delivery.body,
        )
        result = None
        if task is not None and delivery.wants_result:
            result = self._result(
                item, TaskStatus.FAILED, error=f"{reason}: {error}", reason=reason
            )
        self.backend.dead_letter(delivery, letter, result)
        self.processed += 1
        self.dead_lettered += 1
        for middleware in self.middleware:
            middleware.after_dead_letter(self, item, letter)

    def done(self, item: WorkItem) -> None:
        """The worker lets go of `item`, however it ended (also the time limit's watchdog)."""
        for middleware in self.middleware:
            try:
                middleware.after_delivery_done(self, item)
            except Exception as exc:  # the delivery is settled: only the view is lost
                log.error(
                    "%s: after_delivery_done: %s: %s",
                    type(middleware).__name__,
                    type(exc).__name__,
                    exc,
                )

    def _worker_error(self, item: WorkItem, exc: Exception) -> None:
        log.exception("unexpected error while processing %s", _which(item))
        try:
            self.dead_letter(item, "worker-error", f"{type(exc).__name__}: {exc}")
        except Exception as again:  # not settled: the broker hands it out again
            log.error(
                "%s: could not dead-letter it either: %s: %s",
                _which(item),
                type(again).__name__,
                again,
            )

    def totals(self) -> dict[str, object]:
        """What this worker did so far, and what it holds (its heartbeats carry them)."""
        current = self.current
        task = current.task if current is not None else None
        started_at = current.started_at if current is not None else None
        return {
            "succeeded": self.succeeded,
            "failed": self.dead_lettered,
            "retried": self.retried,
            "in_hand": task.id if task else None,
            "in_hand_kind": task.kind if task else None,
            "in_hand_since": started_at.timestamp() if task and started_at else None,
        }

    def _context(self, item: WorkItem) -> TaskContext:
        task = item.task
        assert task is not None
        return TaskContext(
            task_id=task.id,
            kind=task.kind,
            attempt=task.attempt,
            max_attempts=item.max_attempts,
            redelivered=item.delivery.redelivered,
        )

    def _result(
        self,
        item: WorkItem,
        status: TaskStatus,
        *,
        value: object = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> TaskResult:
        task = item.task
        assert task is not None
        # Validated, though every field comes from this code or a validated task: pydantic's
        # validator (compiled) takes half the time of `model_construct` (Python). A handler's
        # value that is not JSON is caught when the result is encoded.
        return TaskResult.model_validate(
            {
                "task_id": task.id,
                "kind": task.kind,
                "status": status,
                "attempt": task.attempt,
                "redelivered": item.delivery.redelivered,
                "worker_pid": os.getpid(),
                "worker_ppid": os.getppid(),
                "worker_host": HOSTNAME,
                "worker_name": self.name,
                "started_at": item.started_at or utcnow(),
                "finished_at": utcnow(),
                "created_at": task.created_at,
                "value": value,
                "error": error,
                "reason": reason,
                "error_type": item.error_type if reason is not None else None,
            }
        )


def _which(item: WorkItem) -> str:
    return f"task {item.task.id}" if item.task is not None else "a message"
