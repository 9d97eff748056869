"""Stopping the consumer in two steps, as Celery's warm and cold shutdown.

The first SIGINT or SIGTERM is a warm shutdown: every worker stops taking tasks, gives back
what it had prefetched, finishes the task in hand and exits, and the consumer exits 0. It
waits at most `timeout` seconds (``--shutdown-timeout``) for that. The second signal, or the
timeout, is a cold shutdown: the workers still running are SIGKILLed, the broker hands their
tasks out again (they were never acked), and the consumer exits 1 saying so. No path waits
for a stuck handler for ever.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from typing import Protocol

from common.errors import TaskshuttleError
from common.logs import STATUS_LOGGER
from consumer.restarts import Cut

log = logging.getLogger("taskshuttle.consumer")
#: The shutdown's own steps: INFO, shown at the default level (`common.logs`).
status = logging.getLogger(STATUS_LOGGER)


class StoppedNow(TaskshuttleError):
    """A cold shutdown: workers were killed in the middle of their tasks."""


class Stoppable(Protocol):
    def in_hand(self) -> int: ...

    def stop(self, timeout: float, now: Callable[[], bool]) -> Cut: ...


def _count(count: int, thing: str) -> str:
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


class Shutdown:
    """The consumer's SIGINT and SIGTERM handler, and how it stops its pool."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.signals: list[signal.Signals] = []

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signal.Signals(signum))  # the supervisor's loop acts on it

    def requested(self) -> bool:
        """A first signal came: stop taking tasks."""
        return bool(self.signals)

    def now(self) -> bool:
        """A second signal came: stop at once."""
        return len(self.signals) >= 2

    @contextlib.contextmanager
    def stopping(self, pool: Stoppable) -> Iterator[None]:
        """Run the block, then stop `pool` in two steps. If the block raises (a crash
        loop), the pool is stopped the same way and the error goes on."""
        try:
            yield
        except BaseException:
            pool.stop(self.timeout, self.now)
            raise
        self.stop(pool)

    def stop(self, pool: Stoppable) -> None:
        """Warm, then (at the second signal or the timeout) cold: `StoppedNow` if any
        worker had to be killed."""
        if self.signals:
            status.info(
                "%s: finishing %s in hand; press Ctrl-C again to stop now",
                self.signals[0].name,
                _count(pool.in_hand(), "task"),
            )
        cut = pool.stop(self.timeout, self.now)
        if not cut.workers:
            return
        why = (
            f"at the second signal ({self.signals[1].name})"
            if self.now()
            else f"after waiting {self.timeout:g}s (--shutdown-timeout)"
        )
        raise StoppedNow(
            f"stopped {why}: {_count(cut.workers, 'worker')} killed with "
            f"{_count(cut.tasks, 'task')} in hand, "
            "which the broker hands out again"
        )
