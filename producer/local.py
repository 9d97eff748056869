"""What the producer takes from the consumer's side: the one module of `producer` that imports
`consumer` (tests/test_layers.py and the import-linter contracts in pyproject.toml hold it).

Why the producer starts workers at all: this is the seed course's model. A
`multiprocessing.Queue` lives inside one process tree, so on the local backend the main process
(the producer) is the parent of its workers: it creates the queue, starts `settings.workers`
daemon children around it, feeds them and collects their results, as the course's main process
does with its `Process` objects. No other process can reach that queue, which is why
``consumer --backend local`` refuses to start. On RabbitMQ the workers are the consumer's, in
another process tree or on another machine, and the producer starts none.

Besides the workers, the producer checks a job before it sends it, on either backend: that its
kind is a task the workers know and its payload one that task accepts (`registry`,
`import_handlers`), and it passes the workers' options along (`WorkerOptions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consumer.handlers import import_handlers, registry
from consumer.spec import WorkerSpec
from consumer.supervisor import WorkerPool
from consumer.worker import StopFlag, WorkerOptions

if TYPE_CHECKING:
    from common.local import LocalBroker
    from common.settings import Settings

__all__ = [
    "StopFlag",
    "WorkerOptions",
    "WorkerPool",
    "import_handlers",
    "local_workers",
    "registry",
]


def local_workers(
    broker: LocalBroker,
    settings: Settings,
    options: WorkerOptions,
    handler_modules: tuple[str, ...] = (),
    *,
    daemon: bool = True,
) -> WorkerPool:
    """`settings.workers` worker processes, children of this one, each taking its own end of
    `broker`'s queue (`LocalBroker.slots`); start them with `start`, stop them with `stop`."""
    return WorkerPool(
        WorkerSpec(settings, options, handler_modules),
        settings.workers,
        slots=broker.slots,
        daemon=daemon,
        max_deaths=settings.max_deaths,
    )
