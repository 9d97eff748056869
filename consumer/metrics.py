"""Prometheus metrics of a consumer (``consumer --metrics-port N``), as Dramatiq's Prometheus
middleware serves them: `prometheus_client` in multiprocess mode.

Each worker process counts its own tasks (`Metrics`, one of its middleware) in files of
a directory the supervisor makes for the run; the supervisor's HTTP server adds them up at
each scrape, with what only the supervisor knows, read at that moment (`SupervisorCollector`):
the tasks in hand (from the in-flight registry's shared memory), worker restarts, and the
queue's depths, asked of the broker on a connection of its own.

The metrics (``queue`` is the work queue's name on each):

- ``taskshuttle_tasks_total{kind, outcome}``: tasks by outcome: succeeded, retried,
  dead_lettered (an attempt that failed is ``failed``, counted before its retry or dead
  letter);
- ``taskshuttle_task_duration_seconds{kind}``: how long handlers ran (a histogram);
- ``taskshuttle_reconnects_total``: connections the workers had to open again;
- ``taskshuttle_tasks_in_hand``, ``taskshuttle_worker_restarts_total``,
  ``taskshuttle_queue_messages{queue_role}`` (work, waiting, dead_letter; waiting is the
  delayed tasks of every queue of its type, in the shared delay levels),
  ``taskshuttle_broker_up``.

A task's kind comes from the network: only the kinds this consumer has handlers for become
label values (others count as ``unknown``), so a hostile producer cannot grow the series
without end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from common.errors import TaskshuttleError
from common.events import HEARTBEAT_INTERVAL
from consumer.middleware import Middleware

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from common.schemas import DeadLetter
    from common.settings import Settings
    from consumer.middleware import Worker, WorkItem

log = logging.getLogger("taskshuttle.metrics")

#: Where `prometheus_client` keeps each process's figures (set before it is imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics(Middleware):
    """A worker's task counts, in this process's multiprocess files: worker middleware, told
    of each outcome as it happens, and of the backend's reconnects every few seconds."""

    def __init__(
        self,
        queue: str,
        kinds: Sequence[str],
        reconnects: Callable[[], int],
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.queue = queue
        self.kinds = frozenset(kinds)
        self.interval = interval
        self._reconnects = reconnects
        self._reconnects_seen = 0
        self._stopped = threading.Event()
        self.tasks, self.duration, self.reconnects = _worker_metrics()

    def _count(self, item: WorkItem, outcome: str, duration: float | None = None) -> None:
        task = item.task
        kind = task.kind if task is not None and task.kind in self.kinds else "unknown"
        self.tasks.labels(self.queue, kind, outcome).inc()
        if duration is not None:
            self.duration.labels(self.queue, kind).observe(duration)

    def on_failure(self, worker: Worker, item: WorkItem, error: str) -> bool:
        self._count(item, "failed", item.duration)
        return False

    def after_retry(self, worker: Worker, item: WorkItem, delay: float, error: str) -> None:
        self._count(item, "retried")

    def after_ack(self, worker: Worker, item: WorkItem) -> None:
        self._count(item, "succeeded", item.duration)

    def after_dead_letter(self, worker: Worker, item: WorkItem, letter: DeadLetter) -> None:
        self._count(item, "dead_lettered")

    def after_worker_boot(self, worker: Worker) -> None:
        threading.Thread(target=self._watch_reconnects, name="metrics", daemon=True).start()

    def after_worker_shutdown(self, worker: Worker) -> None:
        self._stopped.set()
        self._count_reconnects()

    def _watch_reconnects(self) -> None:
        while not self._stopped.wait(self.interval):
            self._count_reconnects()

    def _count_reconnects(self) -> None:
        now = self._reconnects()
        if now > self._reconnects_seen:
            self.reconnects.labels(self.queue).inc(now - self._reconnects_seen)
            self._reconnects_seen = now


@functools.cache
def _worker_metrics() -> tuple[Any, Any, Any]:
    """This process's metrics, made once (``--pool thread`` runs every worker in one process,
    and a name can be registered only once)."""
    from prometheus_client import Counter, Histogram

    return (
        Counter("taskshuttle_tasks", "Tasks by outcome.", ["queue", "kind", "outcome"]),
        Histogram("taskshuttle_task_duration_seconds", "How long handlers ran.", ["queue", "kind"]),
        Counter("taskshuttle_reconnects", "Connections the workers opened again.", ["queue"]),
    )


class SupervisorCollector:
    """What the supervisor knows, read at each scrape."""

    def __init__(self, settings: Settings, in_hand: Callable[[], int], restarts: Callable[[], int]):
        self.settings = settings
        self.in_hand = in_hand
        self.restarts = restarts
        self._admin: Any = None
        #: Scrapes may come at once, each in a thread of the HTTP server: one at a time here.
        self._admin_lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        queue = self.settings.queue
        in_hand = GaugeMetricFamily(
            "taskshuttle_tasks_in_hand", "Tasks the workers are running.", labels=["queue"]
        )
        in_hand.add_metric([queue], self.in_hand())
        yield in_hand
        restarts = CounterMetricFamily(
            "taskshuttle_worker_restarts", "Workers that died and were replaced.", labels=["queue"]
        )
        restarts.add_metric([queue], self.restarts())
        yield restarts
        depths = self._depths()
        up = GaugeMetricFamily(
            "taskshuttle_broker_up", "Whether the broker answered this scrape.", labels=["queue"]
        )
        up.add_metric([queue], 0 if depths is None else 1)
        yield up
        if depths is not None:
            messages = GaugeMetricFamily(
                "taskshuttle_queue_messages",
                "Messages ready in the work queue (work), its DLQ (dead_letter) and the "
                "delay levels of its type (waiting: delayed, all queues).",
                labels=["queue", "queue_role"],
            )
            for role, count in depths.items():
                messages.add_metric([queue, role], count)
            yield messages

    def _depths(self) -> dict[str, int] | None:
        """Ready messages by role, on a connection kept between scrapes (opened again after a
        failure); None when the broker does not answer."""
        with self._admin_lock:
            return self._depths_now()

    def _depths_now(self) -> dict[str, int] | None:
        try:
            if self._admin is None:
                from common.factory import Role, open_backend

                self._admin = open_backend(self.settings, Role.ADMIN)
            return dict(self._admin.depths())
        except TaskshuttleError as exc:  # a scrape gets what is known, never a 500
            log.warning("metrics: queue depths unknown: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None


class _WorkersFiles:
    """The workers' files, read again when one is being made at that very moment:
    `prometheus_client` creates a file before it gives it its size, and a scrape that opens
    it in between fails (``struct.error``) instead of skipping it."""

    def __init__(self, files: Any) -> None:
        self._files = files

    def collect(self) -> list[Any]:
        for _ in range(_READS - 1):
            try:
                return list(self._files.collect())
            except struct.error:
                time.sleep(0.01)
        return list(self._files.collect())


#: Tries at reading the workers' files in one scrape.
_READS = 5


class MetricsServer:
    """The supervisor's side: the directory the workers count in, and the HTTP endpoint."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        # Made before any worker starts, so each one finds it in its environment.
        self.directory = tempfile.mkdtemp(prefix="taskshuttle-metrics-")
        os.environ[MULTIPROC_ENV] = self.directory
        self._server: WSGIServer | None = None
        self._collector: SupervisorCollector | None = None

    def start(self, collector: SupervisorCollector) -> None:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        registry.register(_WorkersFiles(multiprocess.MultiProcessCollector(None, self.directory)))
        registry.register(collector)
        self._collector = collector
        self._server, _thread = start_http_server(self.port, addr=self.host, registry=registry)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._collector is not None:
            self._collector.close()
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(self.directory, ignore_errors=True)
