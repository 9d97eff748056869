"""Task events: what workers say as they work, for whoever watches (`consumer events`,
`consumer status`, the dashboard, `-v` logs).

A worker emits small `TaskEvent`s (a task received, started, succeeded, failed, retried or
dead-lettered; the worker online, alive, offline) through an `Emitter`, which hands them to
its sinks:

- on RabbitMQ, a transient topic exchange (`EVENTS_EXCHANGE`), routing key
  ``<queue>.<kind>``, messages neither persistent nor confirmed for the worker: an event
  nobody receives is not worth a disk write or a round trip;
- on the local backend, the worker's pipe to its parent (the producer), which logs them;
- the log of the worker's own process (``-v``).

Nothing is built when no sink wants events: the cost of a task is then one attribute read
per step. On RabbitMQ a worker learns whether anybody listens from its heartbeats: they are
published ``mandatory`` every `HEARTBEAT_INTERVAL` seconds whatever happens, and the broker
returns one that no queue is bound to receive. Task events are published only while the last
heartbeat went through, so a listener sees them from at most `HEARTBEAT_INTERVAL` after it
binds its queue, and workers stop sending them as soon as one comes back.

Events are JSON validated by pydantic, like tasks: `decode_event` turns anything else into
None, so whatever another client publishes on the exchange cannot crash a listener.

This module is the schema and the emitter, and imports no backend: the RabbitMQ listener is
`common.rabbitmq.events.EventListener` (open one with `common.factory.open_event_listener`),
and the backends' sinks live with their backends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from common.schemas import HOSTNAME

log = logging.getLogger("taskshuttle.events")

#: The topic exchange task events go to (transient: declared again by whoever connects).
EVENTS_EXCHANGE = "taskshuttle.events"
#: Seconds between a worker's heartbeats.
HEARTBEAT_INTERVAL = 2.0


class EventKind(StrEnum):
    RECEIVED = "task-received"
    STARTED = "task-started"
    SUCCEEDED = "task-succeeded"
    #: An attempt failed; a `RETRIED` or a `DEAD_LETTERED` follows.
    FAILED = "task-failed"
    RETRIED = "task-retried"
    DEAD_LETTERED = "task-dead-lettered"
    ONLINE = "worker-online"
    HEARTBEAT = "worker-heartbeat"
    OFFLINE = "worker-offline"


#: The kinds that say what became of a task (a filter's "outcome").
OUTCOMES = (EventKind.SUCCEEDED, EventKind.RETRIED, EventKind.DEAD_LETTERED, EventKind.FAILED)
WORKER_KINDS = (EventKind.ONLINE, EventKind.HEARTBEAT, EventKind.OFFLINE)


class TaskEvent(BaseModel):
    """One event, as it travels (JSON). Fields a kind has no use for stay None."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: EventKind
    #: Unix time, seconds.
    at: float
    #: The work queue the worker consumes.
    queue: str
    host: str
    pid: int
    ppid: int
    worker: str
    task_id: str | None = None
    task_kind: str | None = None
    attempt: int | None = None
    redelivered: bool | None = None
    #: Seconds the handler ran (succeeded, failed).
    duration: float | None = None
    error: str | None = None
    #: Why a message was dead-lettered (the DLQ's reason: max-attempts, bad-payload...).
    reason: str | None = None
    #: Seconds until the next attempt (retried).
    retry_in: float | None = None
    # The worker's totals (heartbeat, offline): failed counts dead-lettered tasks.
    succeeded: int | None = None
    failed: int | None = None
    retried: int | None = None
    in_hand: str | None = None
    in_hand_kind: str | None = None
    #: Unix time the task in hand started.
    in_hand_since: float | None = None


def routing_key(queue: str, kind: EventKind) -> str:
    return f"{queue}.{kind}"


def encode_event(event: TaskEvent) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


def decode_event(body: bytes) -> TaskEvent | None:
    """The event in `body`, or None for anything that is not one (never raises)."""
    try:
        return TaskEvent.model_validate_json(body)
    except (ValidationError, ValueError):
        return None


class EventSink(Protocol):
    """Where an emitter's events go."""

    @property
    def wanted(self) -> bool:
        """Whether task events are worth building now (read before every step of a task)."""

    def send(self, events: Sequence[TaskEvent]) -> None:
        """Pass the events on; never raises for a lost connection (events are not kept)."""


class LogSink:
    """Task events as log lines of the worker's own process (``-v``), as Celery's worker
    prints them: one line when a task is received, one for what became of it."""

    wanted = True

    def __init__(self, logger: logging.Logger = log, *, say_who: bool = False) -> None:
        self.logger = logger
        #: Name the worker on each line: the lines are logged by another process (the local
        #: backend's parent), whose name the log format shows instead of the worker's.
        self.say_who = say_who

    def send(self, events: Sequence[TaskEvent]) -> None:
        for event in events:
            if event.kind is EventKind.DEAD_LETTERED:
                continue  # the worker says it itself, as a warning, whoever listens
            if (line := describe(event)) is None:
                continue
            if self.say_who and event.kind not in WORKER_KINDS:
                line = f"{event.worker} (pid {event.pid}): {line}"
            self.logger.info("%s", line)


def describe(event: TaskEvent) -> str | None:
    """One readable line for a task event (None for kinds not worth a line)."""
    task = f"{event.task_kind}[{event.task_id}]"
    match event.kind:
        case EventKind.RECEIVED:
            again = ", redelivered" if event.redelivered else ""
            return f"{task} received (attempt {event.attempt}{again})"
        case EventKind.SUCCEEDED:
            return f"{task} succeeded in {event.duration:.3f}s"
        case EventKind.RETRIED:
            return f"{task} retry in {event.retry_in:.2f}s: {event.error}"
        case EventKind.DEAD_LETTERED:
            return f"{task} dead-lettered: {event.reason}: {event.error}"
        case EventKind.ONLINE | EventKind.OFFLINE:
            return f"worker {event.worker} (pid {event.pid}) {event.kind.removeprefix('worker-')}"
    return None


class Emitter:
    """A worker's events: built only when a sink wants them, batched, sent to each sink.

    The worker calls `task` at each step and `flush` once the task is settled (one hand-over
    per task, not one per event). `start` sends `ONLINE` and starts the heartbeats (a thread,
    so they go on while a handler runs for minutes); `stop` ends them and sends `OFFLINE`.
    """

    def __init__(
        self,
        sinks: Iterable[EventSink],
        queue: str,
        worker: str,
        totals: Callable[[], dict[str, Any]] = dict,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.sinks = list(sinks)
        self.queue = queue
        self.worker = worker
        self.totals = totals
        self.heartbeat_interval = heartbeat_interval
        self._pending: list[TaskEvent] = []
        self._stopped = threading.Event()
        self._beats: threading.Thread | None = None

    @property
    def wanted(self) -> bool:
        return any(sink.wanted for sink in self.sinks)

    def event(self, kind: EventKind, **fields: Any) -> TaskEvent:
        return TaskEvent(
            kind=kind,
            at=time.time(),
            queue=self.queue,
            host=HOSTNAME,
            pid=os.getpid(),
            ppid=os.getppid(),
            worker=self.worker,
            **fields,
        )

    def task(self, kind: EventKind, **fields: Any) -> None:
        """Note a task's step (sent at the next `flush`), if anybody wants it."""
        for sink in self.sinks:  # runs three times per task: no generator, no event unwanted
            if sink.wanted:
                self._pending.append(self.event(kind, **fields))
                return

    def flush(self) -> None:
        if not self._pending:
            return
        events, self._pending = self._pending, []
        self._send(events, tasks=True)

    def start(self) -> None:
        if not self.sinks:
            return
        self._send([self.event(EventKind.ONLINE, **self.totals())])
        self._beats = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
        self._beats.start()

    def stop(self) -> None:
        if self._beats is None:
            return
        self._stopped.set()
        self._beats.join(self.heartbeat_interval + 1)
        self.flush()
        self._send([self.event(EventKind.OFFLINE, **self.totals())])

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_interval):
            self._send([self.event(EventKind.HEARTBEAT, **self.totals())])

    def _send(self, events: list[TaskEvent], *, tasks: bool = False) -> None:
        for sink in self.sinks:
            if tasks and not sink.wanted:
                continue
            try:
                sink.send(events)
            except Exception as exc:  # events are a view: never a reason to stop working
                log.debug("events not sent: %s: %s", type(exc).__name__, exc)
