"""Task events on RabbitMQ: what a listener sees of a real consumer's work, and what workers
send when nobody listens."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable

import pika
import pytest

from common.events import (
    EVENTS_EXCHANGE,
    Emitter,
    EventKind,
    TaskEvent,
    encode_event,
    routing_key,
)
from common.rabbitmq import RabbitBackend
from common.rabbitmq.events import EventListener
from common.schemas import TaskEnvelope
from tests.helpers import children_of, start, stop

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


def _collect(
    listener: EventListener, until: Callable[[list[TaskEvent]], bool], timeout: float
) -> list[TaskEvent]:
    events: list[TaskEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(events):
        if (event := listener.get(0.2)) is not None:
            events.append(event)
    return events


def test_a_listener_sees_each_task_from_received_to_its_outcome(
    broker_url: str, queue_name: str
) -> None:
    with EventListener(broker_url, queue_name) as listener:
        consumer = start(
            "consumer", "--url", broker_url, "--queue", queue_name, "--workers", "2",
            "--max-attempts", "2", "--retry-delay", "0.1",
        )  # fmt: skip
        try:
            beats = _collect(
                listener,
                lambda seen: len({e.pid for e in seen if e.kind is EventKind.HEARTBEAT}) == 2,
                30,
            )
            workers = {e.pid for e in beats if e.kind is EventKind.HEARTBEAT}
            assert len(workers) == 2 and workers <= set(children_of(consumer.pid)), beats
            assert {e.ppid for e in beats} == {consumer.pid}

            echoes = [TaskEnvelope(kind="echo", payload={"n": n}) for n in range(10)]
            failing = TaskEnvelope(kind="fail")
            with RabbitBackend(broker_url, queue_name) as producer:
                producer.publish([*echoes, failing])
            events = _collect(
                listener,
                lambda seen: (
                    Counter(e.kind for e in seen)[EventKind.SUCCEEDED] == 10
                    and any(e.kind is EventKind.DEAD_LETTERED for e in seen)
                ),
                30,
            )
        finally:
            code, _, err = stop(consumer)
        offline = _collect(
            listener, lambda seen: sum(e.kind is EventKind.OFFLINE for e in seen) == 2, 10
        )
    assert code == 0, err

    steps: dict[str, list[EventKind]] = defaultdict(list)
    for event in events:
        if event.task_id is not None:
            assert event.pid in workers and event.queue == queue_name
            steps[event.task_id].append(event.kind)
    for task in echoes:
        assert steps[task.id] == [EventKind.RECEIVED, EventKind.STARTED, EventKind.SUCCEEDED]
    assert steps[failing.id] == [
        *(EventKind.RECEIVED, EventKind.STARTED, EventKind.FAILED, EventKind.RETRIED),
        *(EventKind.RECEIVED, EventKind.STARTED, EventKind.FAILED, EventKind.DEAD_LETTERED),
    ]
    dead = next(e for e in events if e.kind is EventKind.DEAD_LETTERED)
    assert dead.reason == "max-attempts" and dead.error == "RuntimeError: failed on purpose"
    # each worker's last word carries its totals
    finals = [e for e in offline if e.kind is EventKind.OFFLINE]
    assert {e.pid for e in finals} == workers
    assert sum(e.succeeded or 0 for e in finals) == 10
    assert sum(e.failed or 0 for e in finals) == 1
    assert sum(e.retried or 0 for e in finals) == 1


def test_workers_build_task_events_only_while_somebody_listens(
    broker_url: str, queue_name: str
) -> None:
    with RabbitBackend(broker_url, queue_name) as backend:
        sink = backend.event_sink()
        emitter = Emitter([sink], queue_name, "worker-0", heartbeat_interval=0.3)
        emitter.start()
        try:
            # nobody bound: the first probe comes back, and the worker stops building events
            assert _wait(lambda: not emitter.wanted, 5), "the broker never returned a probe"
            emitter.task(EventKind.RECEIVED, task_id="unseen")
            assert emitter._pending == []

            with EventListener(broker_url, queue_name) as listener:
                assert _wait(lambda: emitter.wanted, 5), "the listener's queue was never seen"
                emitter.task(EventKind.RECEIVED, task_id="seen", task_kind="echo", attempt=1)
                emitter.flush()
                got = _collect(listener, lambda seen: any(e.task_id for e in seen), 5)
            assert [e.task_id for e in got if e.task_id] == ["seen"]
            # the listener is gone: the next probe comes back
            assert _wait(lambda: not emitter.wanted, 5)
        finally:
            emitter.stop()


def test_a_listener_drops_what_is_not_an_event(broker_url: str, queue_name: str) -> None:
    with EventListener(broker_url, queue_name) as listener:
        params = pika.URLParameters(broker_url)
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            key = routing_key(queue_name, EventKind.SUCCEEDED)
            for hostile in (b"\x80\x04not json", b'{"kind": "task-succeeded"}', b"[]" * 1000):
                channel.basic_publish(EVENTS_EXCHANGE, key, hostile)
            good = Emitter([], queue_name, "worker-0").event(
                EventKind.SUCCEEDED, task_id="t1", task_kind="echo", duration=0.5
            )
            channel.basic_publish(EVENTS_EXCHANGE, key, encode_event(good))
        finally:
            connection.close()
        assert listener.get(10) == good
        assert listener.dropped == 3


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_no_task_events_publishes_nothing(broker_url: str, queue_name: str) -> None:
    with EventListener(broker_url, queue_name) as listener:
        consumer = start(
            "consumer", "--url", broker_url, "--queue", queue_name, "--workers", "1",
            "--no-task-events",
        )  # fmt: skip
        try:
            with RabbitBackend(broker_url, queue_name) as producer:
                producer.publish([TaskEnvelope(kind="echo") for _ in range(5)])
                assert _wait(lambda: producer.pending() == 0, 30)
            # two heartbeat intervals: a worker that published anything would have by now
            heard = _collect(listener, lambda seen: bool(seen), 4.5)
        finally:
            code, _, err = stop(consumer)
    assert code == 0, err
    assert heard == []
