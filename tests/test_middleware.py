"""Worker middleware, on the local backend in this process: what each hook sees, and what a
middleware may decide (refuse a task, settle a failure) or break (nothing but that task)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from common.local import LocalBroker, LocalWorkerEnd
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, TaskStatus, encode
from consumer.handlers import Registry
from consumer.middleware import Middleware, RefuseTask, Retries, Schedule, default_middleware
from consumer.worker import Worker, WorkerOptions, WorkItem

pytestmark = pytest.mark.timeout(30)

registry = Registry()


@registry.task("ok")
def ok(payload: dict[str, object]) -> str:
    return "fine"


@registry.task("boom")
def boom(payload: dict[str, object]) -> None:
    raise RuntimeError("boom")


class Recorder(Middleware):
    """Notes each hook as it is called, with the task's attempt where it has one."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        self.calls.append("before_process_message")

    def before_handler(self, worker: Worker, item: WorkItem) -> None:
        self.calls.append("before_handler")

    def after_process_message(
        self,
        worker: Worker,
        item: WorkItem,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        self.calls.append(f"after_process_message({result!r}, {type(exception).__name__})")

    def on_failure(self, worker: Worker, item: WorkItem, error: str) -> bool:
        self.calls.append(f"on_failure({error})")
        return False

    def after_retry(self, worker: Worker, item: WorkItem, delay: float, error: str) -> None:
        self.calls.append("after_retry")

    def after_ack(self, worker: Worker, item: WorkItem) -> None:
        self.calls.append("after_ack")

    def after_dead_letter(self, worker: Worker, item: WorkItem, letter: DeadLetter) -> None:
        self.calls.append(f"after_dead_letter({letter.reason})")

    def after_delivery_done(self, worker: Worker, item: WorkItem) -> None:
        self.calls.append("after_delivery_done")


Local = tuple[LocalBroker, LocalWorkerEnd]


@pytest.fixture
def local() -> Iterator[Local]:
    broker = LocalBroker(slots=1)
    end = broker.slots.worker_end(0)
    yield broker, end
    end.close()
    broker.close()


def _process(
    local: Local, task: TaskEnvelope, middleware: list[Middleware], *, raw: bool = False
) -> Worker:
    """Publish `task` (`raw`: as its bare body, which no eta of its holds back, as a client
    of another clock or a forger would) and have a worker process it."""
    broker, end = local
    if raw:
        broker.publish_raw([encode(task)])
    else:
        broker.publish([task])
    worker = Worker(end, registry, WorkerOptions(), threading.Event(), middleware=middleware)
    delivery = end.receive(5)
    assert delivery is not None
    worker.process(delivery)
    assert end.receive(0.05) is None  # sends what the worker settled
    broker.drain_events()
    return worker


def _result(broker: LocalBroker) -> TaskResult:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (result := broker.receive_result(0.1)) is not None:
            return result
    raise AssertionError("no result")


def test_hooks_see_a_success_in_order(local: Local) -> None:
    recorder = Recorder()
    _process(local, TaskEnvelope(kind="ok"), [recorder])
    assert recorder.calls == [
        "before_process_message",
        "before_handler",
        "after_process_message('fine', NoneType)",
        "after_ack",
        "after_delivery_done",
    ]
    assert _result(local[0]).value == "fine"


def test_a_failure_is_told_before_the_retry_that_settles_it(local: Local) -> None:
    recorder = Recorder()
    worker = _process(local, TaskEnvelope(kind="boom"), [recorder, Retries(3, 1.0, 1.0)])
    assert recorder.calls[2:] == [
        "after_process_message(None, RuntimeError)",
        "on_failure(RuntimeError: boom)",
        "after_retry",
        "after_delivery_done",
    ]
    assert (worker.retried, worker.dead_lettered) == (1, 0)
    assert local[0].pending() == 1  # the next attempt waits out its delay in the broker


def test_without_a_middleware_that_settles_it_a_failure_is_dead_lettered(local: Local) -> None:
    recorder = Recorder()
    _process(local, TaskEnvelope(kind="boom"), [recorder])
    assert recorder.calls[-2:] == ["after_dead_letter(failed)", "after_delivery_done"]
    [letter] = local[0].dead_letters()
    assert (letter.reason, letter.error) == ("failed", "RuntimeError: boom")


class Refuses(Middleware):
    def before_process_message(self, worker: Worker, item: WorkItem) -> None:
        raise RefuseTask("revoked", "revoked by the test")


def test_a_middleware_may_refuse_a_task_which_is_dead_lettered_unrun(local: Local) -> None:
    recorder = Recorder()
    _process(local, TaskEnvelope(kind="ok"), [Refuses(), recorder])
    assert "before_handler" not in recorder.calls  # never ran
    [letter] = local[0].dead_letters()
    assert (letter.reason, letter.error) == ("revoked", "revoked by the test")
    result = _result(local[0])
    assert result.status is TaskStatus.FAILED
    assert result.error == "revoked: revoked by the test"


class Broken(Middleware):
    def before_handler(self, worker: Worker, item: WorkItem) -> None:
        raise KeyError("a bug in a middleware")


def test_a_broken_middleware_costs_its_task_not_the_worker(local: Local) -> None:
    broker, end = local
    broker.publish([TaskEnvelope(kind="ok"), TaskEnvelope(kind="ok")])
    worker = Worker(end, registry, WorkerOptions(), threading.Event(), middleware=[Broken()])
    for _ in range(2):
        delivery = end.receive(5)
        assert delivery is not None
        worker.process(delivery)
    assert end.receive(0.05) is None
    broker.drain_events()
    letters = broker.dead_letters()
    assert [letter.reason for letter in letters] == ["worker-error", "worker-error"]
    assert letters[0].error == "KeyError: 'a bug in a middleware'"


def test_the_default_stack_watches_first_then_acts(local: Local) -> None:
    _, end = local
    options = WorkerOptions(task_timeout=5.0)
    stack = default_middleware(options, end, "tasks", "worker-0", extra=[Recorder()])
    names = [type(m).__name__ for m in stack]
    # no event sink, no in-flight slot
    assert names == ["Recorder", "Schedule", "Revocations", "Retries", "TimeLimit"]


# -- the task's schedule: expiry, a task that comes before its time, forged times -----------


def test_a_task_past_its_expiry_is_dead_lettered_unrun_with_a_failed_result(local: Local) -> None:
    recorder = Recorder()
    expired = TaskEnvelope(kind="ok", expires=datetime.now(UTC) - timedelta(seconds=1))
    _process(local, expired, [recorder, Schedule()])
    assert "before_handler" not in recorder.calls
    [letter] = local[0].dead_letters()
    assert letter.reason == "expired" and letter.error.startswith("expired at ")
    result = _result(local[0])
    assert (result.status, result.reason) == (TaskStatus.FAILED, "expired")


def test_a_task_that_comes_before_its_time_goes_back_to_wait_out_the_rest(local: Local) -> None:
    """The broker holds a task until its eta; one that arrives early anyway (another host's
    clock, or a body published straight to the work queue) is sent back, unrun."""
    broker, end = local
    recorder = Recorder()
    early = TaskEnvelope(kind="ok", eta=datetime.now(UTC) + timedelta(seconds=0.6))
    _process(local, early, [recorder, Schedule()], raw=True)
    assert "before_handler" not in recorder.calls
    assert broker.dead_letters() == [] and broker.pending() == 1  # waiting, not lost
    worker = Worker(end, registry, WorkerOptions(), threading.Event(), middleware=[Schedule()])
    sent_back = time.monotonic()
    delivery = None
    while delivery is None and time.monotonic() - sent_back < 5:
        broker.receive_result(0.02)  # the broker's clock releases it
        delivery = end.receive(0.02)
    assert delivery is not None
    assert datetime.now(UTC) >= early.eta  # type: ignore[operator]
    worker.process(delivery)
    assert worker.succeeded == 1


def test_a_forged_eta_years_away_waits_at_most_the_longest_delay(local: Local) -> None:
    broker, _ = local
    forged = TaskEnvelope(kind="ok", eta=datetime(9999, 1, 1, tzinfo=UTC))
    _process(local, forged, [Schedule()], raw=True)
    assert broker.dead_letters() == [] and broker.pending() == 1  # held, not run, not looping


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eta", "2030-01-01T00:00:00"),  # no timezone
        ("eta", "soon"),
        ("expires", 1e300),
        ("eta", {"delay": 5}),
    ],
)
def test_a_malformed_time_on_the_wire_is_a_schema_dead_letter(
    local: Local, field: str, value: object
) -> None:
    broker, end = local
    body = json.dumps({"kind": "ok", field: value}).encode()
    broker.publish_raw([body])
    worker = Worker(end, registry, WorkerOptions(), threading.Event())
    delivery = end.receive(5)
    assert delivery is not None
    worker.process(delivery)
    assert end.receive(0.05) is None
    broker.drain_events()
    [letter] = broker.dead_letters()
    assert letter.reason == "schema" and field in letter.error
    assert letter.body == body
