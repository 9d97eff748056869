"""What a supervisor does when a worker dies: the restart budget, and the replacements due.

Both pools (`consumer.supervisor.WorkerPool`, processes; `consumer.threads.ThreadWorkers`,
threads) keep one slot per worker with its record in the in-flight registry
(`consumer.inflight`), so a death is judged by what the worker was doing:

- running a task: the task is a suspect (dead-lettered once it has killed `max_deaths`
  workers), and the death counts toward the restart budget; the replacement starts at once;
- running none (it lost its broker, it could not start): not the work's fault, never
  counted; the replacement starts after a pause that grows while such deaths go on;
- stopped on an error no restart can fix (a wrong password, a queue declared with other
  arguments): the consumer stops with it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from common.errors import (
    AuthenticationFailed,
    BrokerUnreachable,
    ConfigError,
    ConnectionLost,
    QueueMismatch,
    TaskshuttleError,
)
from consumer.inflight import InFlight

log = logging.getLogger("taskshuttle.supervisor")


class CrashLoop(TaskshuttleError):
    """Workers keep dying while they run tasks: the restart budget is spent."""


class WorkerFailed(TaskshuttleError):
    """A worker stopped on an error that a restart cannot fix."""


def is_fatal(error: BaseException) -> bool:
    """An error a restart cannot fix: the consumer stops with it."""
    return isinstance(error, AuthenticationFailed | QueueMismatch | ConfigError)


def is_connection_error(error: BaseException) -> bool:
    """A lost or absent broker: the worker's task is not to blame for it."""
    return isinstance(error, ConnectionLost | BrokerUnreachable)


class Cut(NamedTuple):
    """What a pool's stop had to cut short: workers that did not stop in time, and the
    tasks they were running (the broker hands those out again)."""

    workers: int
    tasks: int


class Restarts:
    """The restart budget, and when a dead worker's replacement starts.

    Only a worker that died running a task counts: more than `budget` of those within
    `window` seconds is a crash loop, and the supervisor gives up. Once a task has killed
    `max_deaths` workers it is dead-lettered, and the deaths it caused are forgiven: a task
    that kills what runs it costs a bounded number of deaths, so no message can spend the
    budget (a handler that kills its worker on every task still does). A worker that died
    with no task in hand (it lost its broker, it failed to start) never counts: its
    replacement starts at once the first time in a window, then after a pause that doubles
    up to `MAX_PAUSE`, so a cause that persists costs no busy loop.
    """

    FIRST_PAUSE = 0.5
    MAX_PAUSE = 30.0

    def __init__(
        self, budget: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget
        self.window = window
        self._clock = clock
        self.counted: deque[tuple[float, str]] = deque()  # (when, task id)
        self._uncounted: deque[tuple[float, str]] = deque()

    def _recent(self, times: deque[tuple[float, str]]) -> float:
        now = self._clock()
        while times and now - times[0][0] > self.window:
            times.popleft()
        return now

    def crashed(self, task_id: str) -> None:
        """A worker died running `task_id`: count it, or raise `CrashLoop` if none are left."""
        now = self._recent(self.counted)
        if len(self.counted) >= self.budget:
            raise CrashLoop(
                f"{len(self.counted)} workers died within {self.window:g}s while running a "
                "task; giving up (see the errors above)"
            )
        self.counted.append((now, task_id))

    def forgive(self, task_id: str) -> None:
        """`task_id` is dead-lettered for killing workers: its deaths no longer count."""
        self.counted = deque(entry for entry in self.counted if entry[1] != task_id)

    def pause(self) -> float:
        """A worker died with no task in hand: seconds before its replacement starts."""
        now = self._recent(self._uncounted)
        before = len(self._uncounted)
        self._uncounted.append((now, ""))
        if not before:
            return 0.0
        return min(self.FIRST_PAUSE * 2 ** min(before - 1, 16), self.MAX_PAUSE)


def never() -> bool:
    """A stop condition that never holds."""
    return False


class WorkerSlots:
    """What both pools share: one slot per worker, its record in the in-flight registry,
    the restart budget, and the replacements that are due."""

    def __init__(
        self,
        count: int,
        restart_budget: int,
        budget_window: float,
        max_deaths: int | None,
    ) -> None:
        self.count = count
        self.in_flight = InFlight(count, max_deaths)
        self.restarts = Restarts(restart_budget, budget_window)
        self.deaths: list[tuple[int, int | None]] = []  # (pid, exit code) of unexpected exits
        self._due: dict[int, float] = {}  # slot -> when its replacement starts

    def _start(self, slot: int) -> None:
        raise NotImplementedError

    def _stopping(self) -> bool:
        raise NotImplementedError

    def _live(self) -> int:
        raise NotImplementedError

    def check(self, timeout: float = 0.0) -> None:
        raise NotImplementedError

    def in_hand(self) -> int:
        """How many workers are running a task now."""
        return self.in_flight.in_hand()

    def wait_all(self, stop: Callable[[], bool], poll: float = 0.2) -> None:
        """Supervise until `stop()` says so or every worker has exited on its own."""
        while (self._live() or self._due) and not stop():
            self.check(poll)

    def _died(self, slot: int, what: str) -> None:
        """The worker in `slot` died unexpectedly (`what` says how): schedule its
        replacement, counting the death if it was running a task."""
        held = self.in_flight.died(slot)
        if held is None:
            pause = self.restarts.pause()
            log.warning("%s%s", what, f"; replaced in {pause:g}s" if pause else "")
            self._due[slot] = time.monotonic() + pause
            return
        task_id, deaths = held
        if deaths != self.in_flight.max_deaths:
            log.warning("%s while running task %s (deaths: %d)", what, task_id, deaths)
            self.restarts.crashed(task_id)
        else:
            # Dead-lettered now: its cost is bounded, so its deaths are forgiven (should it
            # kill again all the same, those deaths count).
            log.warning(
                "%s while running task %s (deaths: %d): it is dead-lettered as killed-worker",
                what,
                task_id,
                deaths,
            )
            self.restarts.forgive(task_id)
        self._due[slot] = time.monotonic()

    def _start_due(self) -> None:
        if self._stopping():
            self._due.clear()  # no replacement once stopping
            return
        now = time.monotonic()
        for slot in [slot for slot, at in self._due.items() if at <= now]:
            del self._due[slot]
            self._start(slot)

    def _until_due(self, timeout: float) -> float:
        if not self._due:
            return timeout
        return max(0.0, min(timeout, min(self._due.values()) - time.monotonic()))
