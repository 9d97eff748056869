"""What a worker is started with, in a process or a thread: `WorkerSpec`, how the worker
gets its backend (`WorkerBackendSource`), and the middleware it runs with (`worker_middleware`).

Both pools import it (`consumer.supervisor.WorkerPool`, processes; `consumer.threads.
ThreadWorkers`, threads), and neither imports the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from common.backend import WorkerBackend
from common.events import EventSink, LogSink
from common.logs import JsonFormatter, LogFormat
from common.settings import Settings
from consumer.handlers import registry
from consumer.middleware import Middleware, default_middleware
from consumer.worker import WorkerOptions, worker_name

if TYPE_CHECKING:
    from consumer.inflight import InHand

__all__ = ["OwnConnection", "WorkerBackendSource", "WorkerSpec", "worker_middleware"]


class WorkerBackendSource(Protocol):
    """How a worker gets its backend. It crosses into the worker process (pickled), and
    `connect` runs there."""

    def connect(self, settings: Settings) -> WorkerBackend: ...


@dataclass(frozen=True)
class OwnConnection:
    """Each worker opens a connection of its own, through the one factory (RabbitMQ)."""

    def connect(self, settings: Settings) -> WorkerBackend:
        from common.factory import Role, open_backend

        backend = open_backend(settings, Role.WORKER)
        assert isinstance(backend, WorkerBackend)  # only the producer role can be local
        return backend


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, picklable (it crosses a process start)."""

    settings: Settings
    options: WorkerOptions
    handler_modules: tuple[str, ...] = ()
    #: How the worker gets its backend. A pool with `slots` gives each worker its own end.
    backend: WorkerBackendSource = field(default=OwnConnection(), repr=False)
    #: Runs first in each worker process, with `init_args` (a lesson hands its handlers a
    #: shared `multiprocessing.Lock` this way, as `multiprocessing.Pool`'s initializer does).
    initializer: Callable[..., object] | None = None
    init_args: tuple[Any, ...] = ()
    #: The workers log at the level their parent was set to, in its format.
    log_level: int = field(default_factory=lambda: logging.getLogger().getEffectiveLevel())
    log_format: LogFormat = field(default_factory=lambda: _log_format())
    #: Each worker logs its tasks, a line per step (``consumer -v``). The local backend's
    #: workers send their task events to the parent, which logs them (see `common.factory`).
    log_events: bool = False
    #: Each worker counts its tasks for the supervisor's Prometheus endpoint (`consumer.metrics`).
    metrics: bool = False
    #: Where a worker process's stderr goes instead of its parent's (a writable
    #: `multiprocessing.connection.Connection`, `consumer.live.WorkerStderr.writer`).
    stderr: Any = field(default=None, repr=False)


def _log_format() -> LogFormat:
    """The format this process logs in (`common.logs.configure`): JSON or text."""
    handlers = logging.getLogger().handlers
    as_json = any(isinstance(h.formatter, JsonFormatter) for h in handlers)
    return LogFormat.json if as_json else LogFormat.text


def worker_middleware(
    spec: WorkerSpec, backend: WorkerBackend, in_hand: InHand | None
) -> list[Middleware]:
    """The middleware of a worker of this spec: the default stack for its options, its
    task events also in its log (``-v``), and its metrics (``--metrics-port``)."""
    sinks: list[EventSink] = [LogSink()] if spec.log_events else []
    extra: list[Middleware] = []
    if spec.metrics:
        from consumer.metrics import Metrics

        reconnects = lambda: int(getattr(backend, "reconnects", 0))  # noqa: E731
        extra.append(Metrics(spec.settings.queue, registry.kinds(), reconnects))
    return default_middleware(
        spec.options,
        backend,
        spec.settings.queue,
        worker_name(),
        in_flight=in_hand,
        event_sinks=sinks,
        extra=extra,
    )
