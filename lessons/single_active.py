"""A single-active-consumer queue: RabbitMQ delivers to one consumer at a time.

Declared with ``x-single-active-consumer``, a queue keeps every other consumer waiting as a
standby; if the active one goes away, the broker picks the next. Purchases are serialized by
the broker itself, with no lock and no shared disk: it works across machines.

The project's `RabbitBackend` declares its queue without arguments, and RabbitMQ refuses a
second declaration whose arguments differ (PRECONDITION_FAILED). So this lesson declares
the queue through a small subclass, and starts its consumers itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from common.errors import TaskshuttleError
from common.local import MP_CONTEXT
from common.rabbitmq import RabbitBackend
from consumer.handlers import registry
from consumer.worker import Worker, WorkerOptions
from lessons import procs


class SingleActiveConsumerBackend(RabbitBackend):
    """A `RabbitBackend` whose work queue is declared with ``x-single-active-consumer``."""

    def _declare(self, link: Any, name: str, arguments: dict[str, Any] | None = None) -> int:
        if name == self.queue_name:
            arguments = {**(arguments or {}), "x-single-active-consumer": True}
        return RabbitBackend._declare(link, name, arguments)


class _Either:
    """Stop when the pool says so, or on SIGTERM (a signal handler must not take the
    shared Event's lock, so it sets a flag of this process)."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared
        self.own = threading.Event()

    def is_set(self) -> bool:
        return self.own.is_set() or self.shared.is_set()


def _consume(url: str, queue: str, stop: Any, ready: Any) -> None:
    procs.die_with_parent()
    flag = _Either(stop)
    signal.signal(signal.SIGTERM, lambda *_: flag.own.set())
    import lessons.tasks  # noqa: F401 - the lessons' task kinds

    backend = SingleActiveConsumerBackend(url, queue, prefetch=1)
    ready.release()
    try:
        Worker(backend, registry, WorkerOptions(), flag, queue).run()
    finally:
        backend.close()


@contextlib.contextmanager
def single_active_pool(url: str, queue: str, count: int) -> Iterator[list[Any]]:
    """`count` consumer processes on a single-active-consumer queue: one works, the rest wait."""
    stop = MP_CONTEXT.Event()
    ready = MP_CONTEXT.Semaphore(0)
    workers = [
        MP_CONTEXT.Process(
            target=_consume, args=(url, queue, stop, ready), name=f"consumer-{n}", daemon=True
        )
        for n in range(count)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=30):
                raise TaskshuttleError("the single-active-consumer workers did not start")
        yield workers
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
            if worker.is_alive():
                worker.terminate()
                worker.join()
