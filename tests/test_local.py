"""The local broker on its own, in this process: what the workers' events do to it."""

from __future__ import annotations

import pickle

import pytest

from common.clock import ManualClock
from common.local import Acked, Dead, Event, LocalBroker, Published, Requeue, Result
from common.schemas import TaskEnvelope, decode_task

pytestmark = pytest.mark.timeout(30)


def test_a_retry_is_released_when_the_broker_clock_passes_its_due_time() -> None:
    clock = ManualClock()
    broker = LocalBroker(slots=1, clock=clock)
    worker = broker.slots.worker_end(0)  # this process plays the worker of slot 0
    try:
        task = TaskEnvelope(kind="fail")
        broker.publish([task])
        delivery = worker.receive(5)
        assert delivery is not None
        worker.retry_later(delivery, task.model_copy(update={"attempt": 2}), delay=30)
        broker.drain_events()

        clock.advance(29.9)
        assert broker.receive_result(0) is None  # the broker looks at its schedule
        assert broker.pending() == 1  # waiting, counted as pending, but not released
        assert worker.receive(0) is None

        clock.advance(0.2)
        assert broker.receive_result(0) is None
        assert broker.pending() == 1
        again = worker.receive(5)
        assert again is not None and not again.redelivered
        assert (decode_task(again.body).id, decode_task(again.body).attempt) == (task.id, 2)
        assert clock.sleeps == []  # nobody waited for the 30 seconds
    finally:
        broker.close()


def test_the_broker_does_not_pickle_a_worker_takes_its_end() -> None:
    broker = LocalBroker(slots=2)
    try:
        with pytest.raises(TypeError, match="stays in its own process"):
            pickle.dumps(broker)
    finally:
        broker.close()


@pytest.mark.parametrize(
    "event",
    [
        Result("a/1", b"{}"),
        Acked("a/1"),
        Published("a/1", (("a/2", b"{}"),), 1.5),
        Dead("a/1", b"{}", None),
        Requeue("a/1"),
    ],
)
def test_events_travel_as_the_records_they_are(event: Event) -> None:
    assert pickle.loads(pickle.dumps([event])) == [event]
