"""The in-flight registry: what each worker holds, what a dead worker was running, and the
death table through which the supervisor tells every worker which tasks kill workers."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from common.backend import Delivery, WorkerBackend
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, encode
from consumer.handlers import Registry
from consumer.inflight import DeathTable, InFlight
from consumer.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

registry = Registry()
runs: list[str] = []


@registry.task("count-runs")
def count_runs(payload: dict[str, object]) -> None:
    runs.append("ran")


class _Memory(WorkerBackend):
    """Hands out the given deliveries once each and records how each was settled."""

    name = "memory"

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self.settled: list[tuple[str, object]] = []

    def receive(self, timeout: float) -> Delivery | None:
        return self.deliveries.pop(0) if self.deliveries else None

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        self.settled.append(("ack", delivery.handle))

    def publish(
        self,
        tasks: Sequence[TaskEnvelope],
        *,
        delay: float = 0.0,
        settles: Delivery | None = None,
    ) -> None:
        self.settled.append(("retry", settles.handle if settles else None))

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        self.settled.append(("dead", (letter.reason, letter.error)))

    def requeue(self, delivery: Delivery) -> None:
        self.settled.append(("requeue", delivery.handle))

    def pending(self) -> int:
        return len(self.deliveries)


def test_a_dead_workers_task_is_counted_and_published_at_max_deaths() -> None:
    registry_ = InFlight(2, max_deaths=2)
    assert registry_.table is not None
    record = registry_.record(1)
    record.take("t-1", redelivered=False)
    assert (registry_.held(1), registry_.in_hand()) == ("t-1", 1)
    assert registry_.died(1) == ("t-1", 1)
    assert registry_.held(1) is None and registry_.in_hand() == 0
    assert registry_.table.deaths("t-1") == 0  # one death: not yet
    record.take("t-1", redelivered=True)
    assert registry_.died(1) == ("t-1", 2)
    assert registry_.table.deaths("t-1") == 2
    assert registry_.died(0) is None  # slot 0 ran nothing


def test_the_death_table_keeps_the_newest_and_reads_only_whole_entries() -> None:
    table = DeathTable(size=3)
    for n in range(5):
        table.put(f"task-{n}", n + 2)
    assert [table.deaths(f"task-{n}") for n in range(5)] == [0, 0, 4, 5, 6]
    table.put("task-2", 9)  # an update keeps its place
    assert table.deaths("task-2") == 9 and table.deaths("task-4") == 6
    table._version.value += 1  # a writer caught in the middle: the last clean read stands
    table._cells[0:4] = b"\x00\x02zz"
    assert table.deaths("task-2") == 9 and table.deaths("zz") == 0
    table._version.value += 1  # ... until it is done
    assert table.deaths("zz") > 0
    table.put("\N{GRINNING FACE}" * 64, 3)  # the longest id, 4 bytes a character in UTF-8
    assert table.deaths("\N{GRINNING FACE}" * 64) == 3


def test_a_redelivered_task_that_killed_workers_is_dead_lettered_unrun() -> None:
    in_flight = InFlight(1, max_deaths=2)
    poison = TaskEnvelope(kind="count-runs")
    for _ in range(2):
        in_flight.record(0).take(poison.id, redelivered=True)
        in_flight.died(0)
    deliveries = [
        Delivery(encode(poison), redelivered=True, handle="again", wants_result=False),
        Delivery(encode(poison), redelivered=False, handle="sent anew", wants_result=False),
    ]
    backend = _Memory(deliveries)
    options = WorkerOptions(burst_idle=0)
    stop = threading.Event()
    worker = Worker(backend, registry, options, stop, in_flight=in_flight.record(0))
    runs.clear()
    worker.run()
    # Back from killing two workers: dead-lettered without running. Sent anew (a replayed
    # dead letter): it gets its chance again.
    assert backend.settled == [
        ("dead", ("killed-worker", "2 workers died running it")),
        ("ack", "sent anew"),
    ]
    assert runs == ["ran"]
    assert in_flight.in_hand() == 0  # released once settled
