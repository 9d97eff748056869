"""The worker's own timers (burst idle, the task-time watchdog) run on an injected clock,
so these tests take no wall-clock time waiting."""

from __future__ import annotations

import threading

import pytest

from common.backend import Delivery
from common.clock import ManualClock
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, encode
from consumer.handlers import Registry
from consumer.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(10)


class ScriptedQueue:
    """The worker side of a queue, in memory: hands out the given bodies, then waits
    (on the clock) for nothing to come. Records how each delivery was settled."""

    def __init__(self, clock: ManualClock, bodies: list[bytes] = ()) -> None:  # type: ignore[assignment]
        self.clock = clock
        self.bodies = list(bodies)
        self.settled: list[tuple[str, object]] = []
        self.pending_calls = 0

    def receive(self, timeout: float) -> Delivery | None:
        if self.bodies:
            return Delivery(body=self.bodies.pop(0), redelivered=False, handle=None)
        self.clock.sleep(timeout)
        return None

    def pending(self) -> int:
        self.pending_calls += 1
        return 0

    def event_sink(self) -> None:
        return None

    def is_revoked(self, task_id: str) -> bool:
        return False

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        self.settled.append(("ack", result))

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        self.settled.append(("retry", task.attempt))

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        self.settled.append(("dead", letter.reason))


def test_burst_mode_exits_once_the_queue_stayed_empty_for_burst_idle_seconds() -> None:
    clock = ManualClock()
    queue = ScriptedQueue(clock)
    options = WorkerOptions(burst_idle=5.0, poll_interval=0.5)
    start = clock.monotonic()

    Worker(queue, Registry(), options, threading.Event(), clock=clock).run()  # type: ignore[arg-type]

    idle = clock.monotonic() - start
    assert 5.0 <= idle <= 5.5  # not a poll interval more than asked
    assert queue.pending_calls == 1  # the broker is asked only once the idle time is over


def test_a_task_over_its_time_limit_is_failed_by_the_watchdog_while_the_handler_runs() -> None:
    clock = ManualClock()
    registry = Registry()
    release = threading.Event()

    @registry.task("stuck")
    def stuck(payload: dict[str, object]) -> None:
        release.wait(5)  # real time: the watchdog must fire long before this

    task = TaskEnvelope(kind="stuck", payload={}, max_attempts=3)
    queue = ScriptedQueue(clock, [encode(task)])
    timed_out = threading.Event()
    stop = threading.Event()
    worker = Worker(
        queue,  # type: ignore[arg-type]
        registry,
        WorkerOptions(task_timeout=60.0),
        stop,
        on_timeout=lambda _backend: (timed_out.set(), release.set(), stop.set()),
        clock=clock,
    )
    worker.run()

    assert timed_out.is_set()
    assert queue.settled == [("retry", 2)]  # failed once, not acked after the watchdog
    assert sum(clock.sleeps) >= 60.0  # the limit was measured on the injected clock
