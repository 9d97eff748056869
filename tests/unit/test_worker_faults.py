"""No message can take a worker down: forged attempt counts, errors outside the handler,
settles that fail, a watchdog that must outlive the stop flag. The worker loop runs here on
an in-memory queue and a `ManualClock`."""

from __future__ import annotations

import json
import threading

import pytest

from common.backend import Delivery
from common.clock import ManualClock
from common.errors import BadMessage, ConnectionLost
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, decode_task, encode
from consumer.handlers import Handler, Registry
from consumer.middleware import backoff_delay
from consumer.worker import Worker, WorkerOptions
from tests.unit.test_worker_clock import ScriptedQueue

pytestmark = pytest.mark.timeout(20)


class FaultyQueue(ScriptedQueue):
    """A `ScriptedQueue` that keeps every dead letter, feeds retries back to the worker,
    and raises what `faults[method]` holds (once each) instead of settling."""

    def __init__(self, clock: ManualClock, bodies: list[bytes]) -> None:
        super().__init__(clock, bodies)
        self.letters: list[DeadLetter] = []
        self.faults: dict[str, list[Exception]] = {}

    def _fault(self, method: str) -> None:
        if self.faults.get(method):
            raise self.faults[method].pop(0)

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        self._fault("ack")
        super().ack(delivery, result)

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        self._fault("retry_later")
        super().retry_later(delivery, task, delay)
        self.bodies.append(encode(task))

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        self._fault("dead_letter")
        super().dead_letter(delivery, letter, result)
        self.letters.append(letter)


def _drain(queue: FaultyQueue, registry: Registry, **options: object) -> Worker:
    """Run a burst worker over the queue until it stays empty (no wall-clock wait)."""
    opts = WorkerOptions(burst_idle=1.0, poll_interval=0.5, **options)  # type: ignore[arg-type]
    worker = Worker(queue, registry, opts, threading.Event(), clock=queue.clock)  # type: ignore[arg-type]
    worker.run()
    return worker


def _failing() -> Registry:
    registry = Registry()

    @registry.task("fail")
    def fail(payload: dict[str, object]) -> None:
        raise RuntimeError("failed on purpose")

    @registry.task("echo")
    def echo(payload: dict[str, object]) -> dict[str, object]:
        return payload

    return registry


def _forged(**fields: object) -> bytes:
    body = json.loads(encode(TaskEnvelope(kind="fail")))
    return json.dumps({**body, **fields}).encode()


# -- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields", [{"attempt": 2000, "max_attempts": 3000}, {"attempt": 101}, {"max_attempts": 101}]
)
def test_a_forged_attempt_count_is_a_schema_error(fields: dict[str, int]) -> None:
    with pytest.raises(BadMessage) as caught:
        decode_task(_forged(**fields))
    assert caught.value.reason == "schema"


def test_a_retry_delay_for_any_attempt_is_the_cap_without_overflow() -> None:
    assert backoff_delay(10**6, 1.0, 300.0, rand=lambda: 1.0) == 300.0
    assert backoff_delay(2000, 0.001, 5.0, rand=lambda: 0.0) == 2.5


def test_a_forged_failing_task_is_dead_lettered_and_the_worker_goes_on() -> None:
    clock = ManualClock()
    after = TaskEnvelope(kind="echo", payload={"n": 1})
    queue = FaultyQueue(clock, [_forged(attempt=2000, max_attempts=3000), encode(after)])
    _drain(queue, _failing())
    assert [letter.reason for letter in queue.letters] == ["schema"]
    assert queue.settled[-1][0] == "ack"  # the next task ran


def test_the_consumers_max_attempts_wins_over_the_tasks() -> None:
    clock = ManualClock()
    queue = FaultyQueue(clock, [encode(TaskEnvelope(kind="fail", max_attempts=50))])
    _drain(queue, _failing(), max_attempts=3)
    assert queue.settled == [("retry", 2), ("retry", 3), ("dead", "max-attempts")]
    assert queue.letters[0].attempts == 3


def test_a_task_asking_for_fewer_attempts_than_the_consumer_gets_fewer() -> None:
    clock = ManualClock()
    queue = FaultyQueue(clock, [encode(TaskEnvelope(kind="fail", max_attempts=2))])
    _drain(queue, _failing(), max_attempts=5)
    assert queue.settled == [("retry", 2), ("dead", "max-attempts")]


# -- an unexpected error while processing one message ------------------------------------


class LazyRegistry(Registry):
    """A registry that imports a kind's module on first use, and fails to for one kind."""

    def get(self, kind: str) -> Handler | None:
        if kind == "broken":
            raise ImportError("cannot import name 'resize' from 'images'")
        return super().get(kind)


def test_an_error_outside_the_handler_dead_letters_that_message_only() -> None:
    clock = ManualClock()
    broken, after = TaskEnvelope(kind="broken"), TaskEnvelope(kind="echo")
    registry = LazyRegistry()
    registry.task("echo")(lambda payload: payload)
    queue = FaultyQueue(clock, [encode(broken), encode(after)])

    worker = _drain(queue, registry)

    [letter] = queue.letters
    assert (letter.reason, letter.task_id) == ("worker-error", broken.id)
    assert letter.error == "ImportError: cannot import name 'resize' from 'images'"
    assert [how for how, _ in queue.settled] == ["dead", "ack"]
    assert worker.processed == 2


def test_a_settle_that_fails_dead_letters_the_message_with_the_error() -> None:
    clock = ManualClock()
    queue = FaultyQueue(clock, [encode(TaskEnvelope(kind="echo")) for _ in range(2)])
    queue.faults["ack"] = [RuntimeError("result store refused it")]

    _drain(queue, _failing())

    assert [(letter.reason, letter.error) for letter in queue.letters] == [
        ("worker-error", "RuntimeError: result store refused it")
    ]
    assert [how for how, _ in queue.settled] == ["dead", "ack"]


def test_a_lost_connection_while_settling_leaves_the_message_to_the_broker() -> None:
    clock = ManualClock()
    queue = FaultyQueue(
        clock, [encode(TaskEnvelope(kind="fail")), encode(TaskEnvelope(kind="echo"))]
    )
    queue.faults["retry_later"] = [ConnectionLost("broker went away")]

    _drain(queue, _failing(), max_attempts=1 + 1)

    assert queue.letters == []  # not dead-lettered: it is redelivered, unsettled
    assert [how for how, _ in queue.settled] == ["ack"]  # and the worker went on


def test_a_dead_letter_that_fails_too_does_not_stop_the_worker() -> None:
    clock = ManualClock()
    queue = FaultyQueue(clock, [encode(TaskEnvelope(kind="echo")) for _ in range(2)])
    queue.faults["ack"] = [RuntimeError("first")]
    queue.faults["dead_letter"] = [RuntimeError("second")]

    _drain(queue, _failing())

    assert [how for how, _ in queue.settled] == ["ack"]  # the second task


def test_keyboard_interrupt_is_not_swallowed() -> None:
    registry = Registry()

    @registry.task("interrupt")
    def interrupt(payload: dict[str, object]) -> None:
        raise KeyboardInterrupt

    queue = FaultyQueue(ManualClock(), [encode(TaskEnvelope(kind="interrupt"))])
    with pytest.raises(KeyboardInterrupt):
        _drain(queue, registry)


# -- the watchdog ------------------------------------------------------------------------


def _stuck_worker(
    queue: FaultyQueue, release: threading.Event, stop: threading.Event, *, stop_at_start: bool
) -> tuple[Worker, threading.Event]:
    """A worker whose one task blocks (in real time) until `release`, with a 60 s limit
    on the manual clock; its `on_timeout` releases the handler and stops the loop."""
    registry = Registry()

    @registry.task("stuck")
    def stuck(payload: dict[str, object]) -> None:
        if stop_at_start:
            stop.set()  # a SIGTERM while the task runs: the worker is draining
        release.wait(5)
        stop.set()

    queue.bodies.append(encode(TaskEnvelope(kind="stuck", max_attempts=3)))
    timed_out = threading.Event()
    worker = Worker(
        queue,  # type: ignore[arg-type]
        registry,
        WorkerOptions(task_timeout=60.0),
        stop,
        on_timeout=lambda _backend: (timed_out.set(), release.set(), stop.set()),
        clock=queue.clock,
    )
    return worker, timed_out


def test_the_time_limit_holds_while_the_worker_drains_at_shutdown() -> None:
    queue = FaultyQueue(ManualClock(), [])
    release, stop = threading.Event(), threading.Event()
    worker, timed_out = _stuck_worker(queue, release, stop, stop_at_start=True)

    worker.run()

    assert timed_out.is_set()  # stopped by the watchdog, not by waiting the handler out
    assert queue.settled == [("retry", 2)]


def test_a_settle_that_fails_on_timeout_still_replaces_the_worker() -> None:
    queue = FaultyQueue(ManualClock(), [])
    queue.faults["retry_later"] = [ConnectionLost("broker went away")]
    release, stop = threading.Event(), threading.Event()
    worker, timed_out = _stuck_worker(queue, release, stop, stop_at_start=False)

    worker.run()

    assert timed_out.is_set()  # on_timeout ran: the process would be replaced
    assert queue.settled == []  # unsettled: the broker hands it out again
