"""What the dashboard knows, built from task events and queue depths; no I/O here.

`Board` takes each task event as it arrives (`add`) and, once a second, the queue depths
(`tick`), which closes one row of the charts: the depths, and the tasks finished and their
durations since the row before. Rates are per second of the dashboard's own clock, counted
as events arrive, not from the events' `at`: workers on other hosts may have other clocks.

Everything here is bounded: the charts keep `history` rows, the recent tasks `recent`
entries, the latency window `LATENCY_WINDOW` seconds of durations (at most
`MAX_DURATIONS`), and a worker is forgotten `FORGET_AFTER` seconds after it went quiet.

An event (`common.events.TaskEvent`) is read by attribute only (`kind`, `task_id`...), so a
test can feed objects of its own; `kind` is compared by value (``"task-succeeded"``), as sent
on the wire.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from common.events import HEARTBEAT_INTERVAL, TaskEvent

#: A worker with no heartbeat for this long is shown as silent (it may be dead or stuck).
SILENT_AFTER = 3 * HEARTBEAT_INTERVAL
#: A silent or offline worker is dropped from the table this long after its last word.
FORGET_AFTER = 60.0
#: Seconds of task durations behind the latency figures.
LATENCY_WINDOW = 60.0
MAX_DURATIONS = 20_000
#: Seconds behind the throughput figure.
THROUGHPUT_WINDOW = 10.0
#: Characters of an error kept per task (errors may be long tracebacks).
ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class Depths:
    """A work queue's depths. `unacked` is None when the source cannot tell (AMQP)."""

    ready: int
    unacked: int | None
    waiting: int  # delayed tasks in the delay levels of the queue's type: all queues'
    dead: int
    consumers: int | None = None


@dataclass(slots=True)
class WorkerView:
    host: str
    pid: int
    ppid: int
    worker: str
    queue: str
    last_seen: float  # the dashboard's clock
    heard_at: float  # the worker's clock, at its last word
    online: bool = True
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    in_hand: str | None = None
    in_hand_kind: str | None = None
    in_hand_since: float | None = None


@dataclass(slots=True)
class TaskView:
    task_id: str
    kind: str | None
    fate: str  # the kind of the last event seen for it: "task-succeeded"...
    attempt: int | None
    at: float  # the event's own time
    worker: str
    duration: float | None = None
    error: str | None = None
    reason: str | None = None


#: The event kinds, by value (common.events.EventKind).
RECEIVED, STARTED, SUCCEEDED, FAILED = (
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
)
RETRIED, DEAD_LETTERED = "task-retried", "task-dead-lettered"
ONLINE, HEARTBEAT, OFFLINE = "worker-online", "worker-heartbeat", "worker-offline"

#: The worker total each outcome adds to (a worker's `failed` counts its dead letters).
_WORKER_TOTALS = {SUCCEEDED: "succeeded", DEAD_LETTERED: "failed", RETRIED: "retried"}


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class Board:
    """The dashboard's picture of one work queue; safe to use from several threads."""

    def __init__(
        self, *, history: int = 300, recent: int = 50, clock: Callable[[], float] = time.time
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.totals = {"received": 0, "succeeded": 0, "failed": 0, "retried": 0, "dead": 0}
        #: Chart rows: time, ready, unacked, waiting, dead, done/s, dead/s, p50 ms, max ms.
        self._rows: deque[tuple[float | int | None, ...]] = deque(maxlen=history)
        self._recent: OrderedDict[str, TaskView] = OrderedDict()
        self._recent_size = recent
        self._workers: dict[tuple[str, int], WorkerView] = {}
        self._durations: deque[tuple[float, float]] = deque(maxlen=MAX_DURATIONS)
        self._finished: deque[float] = deque()  # arrival times of successes, for throughput
        # Since the last row: successes, dead letters, durations.
        self._row_done = self._row_dead = 0
        self._row_durations: list[float] = []
        self._last_tick: float | None = None
        self.depths: Depths | None = None
        self.depth_source = "not read yet"
        self.depth_error: str | None = None
        self.events_status = "starting"

    # -- input ---------------------------------------------------------------------------
    def add(self, event: TaskEvent) -> None:
        kind = str(event.kind)
        now = self._clock()
        with self._lock:
            if kind in (ONLINE, HEARTBEAT, OFFLINE):
                self._worker_event(kind, event, now)
                return
            self._count(kind, event, now)
            self._credit(kind, event)
            if event.task_id is not None:
                self._remember(kind, event)

    def _count(self, kind: str, event: TaskEvent, now: float) -> None:
        if kind == RECEIVED:
            self.totals["received"] += 1
        elif kind == SUCCEEDED:
            self.totals["succeeded"] += 1
            self._row_done += 1
            self._finished.append(now)
        elif kind == FAILED:
            self.totals["failed"] += 1
        elif kind == RETRIED:
            self.totals["retried"] += 1
        elif kind == DEAD_LETTERED:
            self.totals["dead"] += 1
            self._row_dead += 1
        if kind in (SUCCEEDED, FAILED) and event.duration is not None:
            self._durations.append((now, event.duration))
            self._row_durations.append(event.duration)

    def _credit(self, kind: str, event: TaskEvent) -> None:
        """Count a task's outcome in its worker's totals at once, not only at its next
        heartbeat, which sets them again (it went out on the same connection as the task
        events, so it counts those sent before it and none after)."""
        field = _WORKER_TOTALS.get(kind)
        worker = self._workers.get((event.host, event.pid))
        if field is not None and worker is not None:
            setattr(worker, field, getattr(worker, field) + 1)

    def _remember(self, kind: str, event: TaskEvent) -> None:
        assert event.task_id is not None
        task = self._recent.pop(event.task_id, None)
        if task is None:
            task = TaskView(event.task_id, event.task_kind, kind, event.attempt, event.at, "")
        task.fate, task.at, task.worker = kind, event.at, f"{event.host}:{event.pid}"
        task.kind = event.task_kind or task.kind
        task.attempt = event.attempt if event.attempt is not None else task.attempt
        if event.duration is not None:
            task.duration = event.duration
        if event.error is not None:
            task.error = event.error[:ERROR_CHARS]
        if event.reason is not None:
            task.reason = event.reason
        self._recent[event.task_id] = task
        while len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)

    def _worker_event(self, kind: str, event: TaskEvent, now: float) -> None:
        key = (event.host, event.pid)
        worker = self._workers.get(key)
        if worker is None:
            worker = self._workers[key] = WorkerView(
                event.host, event.pid, event.ppid, event.worker, event.queue, now, event.at
            )
        worker.last_seen, worker.heard_at, worker.online = now, event.at, kind != OFFLINE
        for name in ("succeeded", "failed", "retried"):
            value = getattr(event, name)
            if value is not None:
                setattr(worker, name, value)
        if kind in (HEARTBEAT, OFFLINE):  # a heartbeat says what is in hand, or none
            worker.in_hand, worker.in_hand_kind = event.in_hand, event.in_hand_kind
            worker.in_hand_since = event.in_hand_since

    def tick(self, depths: Depths | None, source: str, error: str | None = None) -> None:
        """Close a chart row with `depths` (None: could not be read) and the tasks finished
        since the previous row."""
        now = self._clock()
        with self._lock:
            elapsed = max(now - (self._last_tick or self.started), 1e-3)
            self._last_tick = now
            self.depths, self.depth_source, self.depth_error = depths, source, error
            ordered = sorted(self._row_durations)
            self._rows.append(
                (
                    round(now, 3),
                    *(
                        (depths.ready, depths.unacked, depths.waiting, depths.dead)
                        if depths
                        else (None, None, None, None)
                    ),
                    round(self._row_done / elapsed, 2),
                    round(self._row_dead / elapsed, 2),
                    _ms(_percentile(ordered, 0.5)),
                    _ms(ordered[-1] if ordered else None),
                )
            )
            self._row_done = self._row_dead = 0
            self._row_durations = []

    # -- output --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values."""
        now = self._clock()
        with self._lock:
            while self._finished and self._finished[0] < now - THROUGHPUT_WINDOW:
                self._finished.popleft()
            while self._durations and self._durations[0][0] < now - LATENCY_WINDOW:
                self._durations.popleft()
            window = min(THROUGHPUT_WINDOW, max(now - self.started, 1.0))
            ordered = sorted(duration for _at, duration in self._durations)
            return {
                "now": now,
                "started": self.started,
                "totals": dict(self.totals),
                "throughput": round(len(self._finished) / window, 2),
                "latency_ms": {
                    "p50": _ms(_percentile(ordered, 0.5)),
                    "p95": _ms(_percentile(ordered, 0.95)),
                    "max": _ms(ordered[-1] if ordered else None),
                    "count": len(ordered),
                },
                "depths": asdict(self.depths) if self.depths else None,
                "depth_source": self.depth_source,
                "depth_error": self.depth_error,
                "events": self.events_status,
                "series": [list(column) for column in zip(*self._rows, strict=True)],
                "workers": self._worker_rows(now),
                "recent": [asdict(task) for task in reversed(self._recent.values())],
            }

    def _worker_rows(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for key, worker in list(self._workers.items()):
            quiet = now - worker.last_seen
            if quiet > FORGET_AFTER:
                del self._workers[key]
                continue
            status = "online" if worker.online else "offline"
            if worker.online and quiet > SILENT_AFTER:
                status = "silent"
            rows.append({**asdict(worker), "status": status, "quiet": round(quiet, 1)})
        return sorted(rows, key=lambda row: (row["host"], row["pid"]))
