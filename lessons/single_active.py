"""A single-active-consumer queue: RabbitMQ delivers to one consumer at a time.

Declared with ``x-single-active-consumer``, a queue keeps every other consumer waiting as a
standby; if the active one goes away, the broker picks the next. Purchases are serialized by
the broker itself, with no lock and no shared disk: it works across machines.

Every client must declare the queue with the same arguments (RabbitMQ refuses a second
declaration whose arguments differ, PRECONDITION_FAILED), so producer and consumers all pass
`queue_arguments=SINGLE_ACTIVE`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from common.errors import TaskshuttleError
from common.factory import Role, open_backend
from common.local import MP_CONTEXT
from common.settings import load_settings
from consumer.handlers import registry
from consumer.worker import Worker, WorkerOptions
from lessons import procs

#: Declared on the work queue: the broker delivers to one consumer at a time.
SINGLE_ACTIVE = {"x-single-active-consumer": True}


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

    settings = load_settings(amqp_url=url, queue=queue, prefetch=1)
    backend = open_backend(settings, Role.WORKER, queue_arguments=SINGLE_ACTIVE)
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
