"""The RabbitMQ delivery path against the shared broker: what is settled when, where results
and retries may go, and what the dead-letter commands show. Each test has queues of its own."""

from __future__ import annotations

import base64
import decimal
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from common.backend import MAX_DELAY, Delivery
from common.defaults import QueueType
from common.rabbitmq import RabbitBackend
from common.rabbitmq.management import Management
from common.rabbitmq.revocations import REVOCATION_STREAM
from common.rabbitmq.topology import DelayLevels, QueueNames
from common.schemas import TaskEnvelope, TaskResult, decode_task, encode
from consumer.handlers import Registry, TaskContext
from consumer.worker import Worker, WorkerOptions
from tests.conftest import MANAGEMENT_URL
from tests.helpers import receive_within, result_for, run, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


@pytest.fixture
def raw(broker_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A plain pika channel, as any client of the broker has."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


def _drain(backend: RabbitBackend, seconds: float) -> list[Delivery]:
    """Every delivery that comes within `seconds`, acked."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        delivery = backend.receive(0.2)
        if delivery is not None:
            got.append(delivery)
            backend.ack(delivery)
    return got


def _count(broker_url: str, name: str) -> int | None:
    """Messages in `name`, or None when no such queue exists (a channel of its own: a
    passive declare of a missing queue closes it)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        frame = connection.channel().queue_declare(name, passive=True)
        return int(frame.method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 404, exc
        return None
    finally:
        if connection.is_open:
            connection.close()


def _publish_task(raw: Any, queue: str, task: TaskEnvelope, reply_to: str | None) -> None:
    properties = pika.BasicProperties(delivery_mode=2, message_id=task.id, reply_to=reply_to)
    raw.basic_publish("", queue, encode(task), properties)


# -- results: confirmed before the task's ack ------------------------------------------------
def test_a_task_whose_result_the_broker_refuses_is_not_acked_but_handed_out_again(
    broker_url: str, queue_name: str, raw: Any
) -> None:
    replies = f"{queue_name}.replies.{uuid.uuid4().hex[:12]}"
    # A reply queue that refuses every message: the broker nacks the result.
    raw.queue_declare(replies, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    try:
        with RabbitBackend(broker_url, queue_name) as worker:
            task = TaskEnvelope(kind="echo")
            _publish_task(raw, queue_name, task, replies)
            first = receive_within(worker)
            worker.ack(first, result_for(task))
            again = receive_within(worker, timeout=10)  # acked with its result lost: never again
            assert (decode_task(again.body).id, again.redelivered) == (task.id, True)
            worker.ack(again)
            assert worker.receive(1.0) is None
    finally:
        raw.queue_delete(replies)


def test_results_of_many_tasks_all_arrive_and_every_task_is_acked(
    broker_url: str, queue_name: str
) -> None:
    with (
        RabbitBackend(broker_url, queue_name, want_results=True) as producer,
        RabbitBackend(broker_url, queue_name) as worker,
    ):
        tasks = [TaskEnvelope(kind="echo", payload={"n": i}) for i in range(300)]
        producer.publish(tasks)
        for _ in tasks:
            delivery = receive_within(worker)
            worker.ack(delivery, result_for(decode_task(delivery.body)))
        results = set()
        deadline = time.monotonic() + 20
        while len(results) < len(tasks) and time.monotonic() < deadline:
            result = producer.receive_result(0.2)
            if result is not None:
                results.add(result.task_id)
        assert results == {t.id for t in tasks}
        worker.close()  # sends the acks still waiting for their results' confirms
        with RabbitBackend(broker_url, queue_name) as again:
            assert _drain(again, 1.0) == []  # none of them comes back


# -- reply_to: only this queue's reply queues ------------------------------------------------
def test_a_result_is_never_published_to_a_queue_that_is_not_a_reply_queue_of_this_queue(
    broker_url: str, queue_name: str, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    victim = f"{queue_name}-victim"
    other_replies = f"{queue_name}x.replies.{uuid.uuid4().hex[:12]}"  # another queue's
    good = f"{queue_name}.replies.{uuid.uuid4().hex[:12]}"
    raw.queue_declare(queue_name, durable=True)
    for name in (victim, other_replies, good):
        raw.queue_declare(name)
    try:
        forged = [TaskEnvelope(kind="echo") for _ in range(3)]
        for task, reply_to in zip(forged, [victim, victim, other_replies], strict=True):
            _publish_task(raw, queue_name, task, reply_to)
        honest = TaskEnvelope(kind="echo")
        _publish_task(raw, queue_name, honest, good)
        with (
            caplog.at_level(logging.WARNING, logger="taskshuttle.rabbitmq"),
            RabbitBackend(broker_url, queue_name) as backend,
        ):
            from consumer.handlers import registry

            options = WorkerOptions(burst_idle=0.5)
            processed = Worker(backend, registry, options, threading.Event()).run()
        assert processed == 4  # the forged tasks were run all the same
        assert wait_until(lambda: _count(broker_url, good) == 1, 5)  # an honest one arrives
        assert _count(broker_url, victim) == 0
        assert _count(broker_url, other_replies) == 0
        assert backend.refused_replies == 3
        warnings = [r.getMessage() for r in caplog.records if "reply_to" in r.getMessage()]
        assert len(warnings) == 2, warnings  # once per distinct reply_to
        assert victim in warnings[0] and other_replies in warnings[1]
    finally:
        for name in (victim, other_replies, good):
            raw.queue_delete(name)


# -- delays: a fixed set of levels, whatever the delay or the attempt ---------------------
def test_a_retry_of_attempt_2000_waits_in_the_fixed_set_of_delay_levels(
    own_vhost: str, queue_name: str
) -> None:
    """In a virtual host of its own: its delays (up to ten years) would outlive the test."""
    with RabbitBackend(own_vhost, queue_name) as backend:
        backend.publish([TaskEnvelope(kind="fail", max_attempts=100)])
        delivery = receive_within(backend)
        task = decode_task(delivery.body)
        # Built without validation: however the schema bounds attempts, where it waits
        # must not depend on the attempt number.
        late = TaskEnvelope.model_construct(**{**dict(task), "attempt": 2000})
        for delay in (5.0, 70.0, 3600.0, MAX_DELAY):  # each longer than this test
            backend.retry_later(delivery, late, delay=delay)
            backend.publish([task])
            delivery = receive_within(backend)
        backend.ack(delivery)
        assert backend.depths()["waiting"] == 4  # all four wait, in the levels
        assert backend.pending() == 0  # which are no queue's own
        levels = backend.levels
    found = set(Management(MANAGEMENT_URL, own_vhost).queues_matching(".*"))
    # and the revocation stream, which every worker of the virtual host reads
    assert found == {
        queue_name,
        f"{queue_name}.dlq",
        *levels.queues(),
        levels.dropped,
        REVOCATION_STREAM,
    }


def test_a_delayed_task_survives_its_consumers_reconnect_and_arrives_once(
    broker_url: str, queue_name: str
) -> None:
    task = TaskEnvelope(kind="echo")
    with RabbitBackend(broker_url, queue_name) as first:
        first.start_consuming()
        before = time.monotonic()
        first.publish([task], delay=3.0)
        after = time.monotonic()
    time.sleep(1.0)  # nobody consumes the work queue now
    with RabbitBackend(broker_url, queue_name) as second:
        arrived = receive_within(second, timeout=10)
        at = time.monotonic()
        second.ack(arrived)
        assert decode_task(arrived.body).id == task.id
        assert at - before >= 3.0 and at - after <= 4.0
        assert _drain(second, 1.5) == []  # once


def test_a_delayed_task_whose_work_queue_is_gone_is_dropped_and_holds_up_no_other(
    own_vhost: str, queue_name: str
) -> None:
    """A quorum level passes a message on only once its target has it: one whose work queue
    was deleted meanwhile goes to the deliver exchange's alternate exchange and is dropped
    there, not held (past 32 such, the level would pass nothing on, for any queue)."""
    gone, kept = f"{queue_name}.gone", f"{queue_name}.kept"
    with RabbitBackend(own_vhost, gone) as doomed:
        # 5 units: through levels 2 and 0, where the next task passes too
        doomed.publish([TaskEnvelope(kind="echo") for _ in range(40)], delay=1.25)
        doomed.delete_queues()
    time.sleep(2.0)  # they came due, to no work queue
    with RabbitBackend(own_vhost, kept) as backend:
        task = TaskEnvelope(kind="echo")
        backend.publish([task], delay=0.25)  # 1 unit: level 0 only
        assert decode_task(receive_within(backend, timeout=10).body).id == task.id
        assert backend.depths()["waiting"] == 0


# -- ack coalescing: never over a delivery whose settlement is not final ---------------------
class _RetryStalls(RabbitBackend):
    """`retry_later` waits until the worker has acked the next task, then loses the
    connection before the retry copy is stored (as a process killed there would)."""

    acked = 0

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        super().ack(delivery, result)
        self.acked += 1

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        assert wait_until(lambda: self.acked >= 1, 10), "the next task was never acked"
        time.sleep(0.5)  # the I/O thread sends that ack
        delivery.handle.link.close()
        super().retry_later(delivery, task, delay)


def test_an_ack_after_a_timed_out_task_does_not_cover_it_before_its_retry_is_stored(
    broker_url: str, queue_name: str
) -> None:
    registry = Registry()
    runs: list[tuple[str, bool]] = []

    @registry.task("overrun")
    def overrun(payload: dict[str, Any], context: TaskContext) -> None:
        runs.append((context.task_id, context.redelivered))
        if not context.redelivered:
            time.sleep(1.5)  # just past the limit: returns while the watchdog settles it

    @registry.task("quick")
    def quick_task(payload: dict[str, Any]) -> None:
        return None

    slow, quick = TaskEnvelope(kind="overrun"), TaskEnvelope(kind="quick")
    stop = threading.Event()
    with _RetryStalls(broker_url, queue_name, wait_for_broker=None) as backend:
        backend.publish([slow, quick])
        worker = Worker(
            backend,
            registry,
            WorkerOptions(task_timeout=1.0),
            stop,
            on_timeout=lambda _backend: stop.set(),
        )
        worker.run()
    with RabbitBackend(broker_url, queue_name) as after:
        left = [decode_task(d.body).id for d in _drain(after, 2.0)]
    came_back = [task_id for task_id, redelivered in runs if redelivered] + left
    assert slow.id in came_back  # not lost under the next task's ack
    assert quick.id not in came_back  # and the next task was acked once


# -- burst mode waits for its own retries (the delay levels are every queue's) -------------
def test_burst_consumer_stays_until_a_waiting_retry_is_done(
    broker_url: str, queue_name: str
) -> None:
    task = TaskEnvelope(kind="chaos-flaky", payload={"succeed_on": 2})
    with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
        producer.publish([task])
        # The retry waits 3 to 6 s: longer than the burst idle time (1 s), so a consumer
        # that forgot its retry (no queue counts it) would leave before it comes back.
        completed = run(
            "consumer",
            *("--queue", queue_name, "--url", broker_url, "--burst", "--workers", "1"),
            *("--retry-delay", "6", "--retry-max-delay", "6"),
            *("--handlers", "tests.chaos_tasks"),
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        result = producer.receive_result(2.0)
        assert result is not None, completed.stderr
        assert (result.task_id, result.status, result.attempt) == (task.id, "done", 2)
        assert producer.pending() == 0


def test_pending_counts_a_task_already_sent_to_this_worker_and_not_taken_yet(
    broker_url: str, queue_name: str
) -> None:
    """A task that arrives goes from the work queue straight to a consumer (a retry whose
    delay ends, too): counted in no queue, it must still count, or a burst worker that asks
    just then leaves without it."""
    with RabbitBackend(broker_url, queue_name) as worker:
        worker.start_consuming()
        worker.publish([TaskEnvelope(kind="echo")])
        assert wait_until(lambda: worker.pending() == 1, 5)
        worker.ack(receive_within(worker))
        assert worker.pending() == 0


# -- dlq list and replay: streamed, hostile headers shown, never a traceback -----------------
HOSTILE_HEADERS: list[dict[str, Any]] = [
    {"x-reason": "bad-count", "x-attempts": "abc"},
    {"x-reason": "huge", "x-attempts": 10**18, "x-error": "x" * 5000},
    {"x-reason": "decimal", "x-attempts": decimal.Decimal("2.5")},
    {"x-reason": b"\xff\xfe not utf-8", "x-task-id": b"\x80\x81", "x-error": b"\xc3\x28"},
    {"x-reason": "markup", "x-error": "[/bold] \x1b[31mred\x1b[0m", "x-dead-lettered-at": "now"},
    {"x-reason": "nested", "x-attempts": {"a": [1, 2]}, "x-queue": 7},
]


def test_dlq_list_shows_hostile_headers_without_a_traceback_and_keeps_every_letter(
    broker_url: str, queue_name: str, raw: Any
) -> None:
    dlq = QueueNames(queue_name).dlq
    raw.queue_declare(dlq, durable=True)
    for index, headers in enumerate(HOSTILE_HEADERS):
        raw.basic_publish("", dlq, f"body {index}".encode(), pika.BasicProperties(headers=headers))
    listed = run("consumer", "dlq", "list", "--queue", queue_name, "--url", broker_url)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr + listed.stdout
    for reason in ("bad-count", "huge", "decimal", "\\xff\\xfe", "markup", "nested"):
        assert reason in listed.stdout
    assert "\x1b" not in listed.stdout  # a header cannot drive the terminal
    as_json = run("consumer", "dlq", "list", "--json", "--queue", queue_name, "--url", broker_url)
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    bodies = [base64.b64decode(line["body"]) for line in lines]
    assert bodies == [f"body {i}".encode() for i in range(len(HOSTILE_HEADERS))]  # in order
    assert _count(broker_url, dlq) == len(HOSTILE_HEADERS)  # listing removes none
    replayed = run("consumer", "dlq", "replay", "--queue", queue_name, "--url", broker_url)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(HOSTILE_HEADERS)} dead letters" in replayed.stdout
    assert _count(broker_url, dlq) == 0
    assert _count(broker_url, queue_name) == len(HOSTILE_HEADERS)


def test_dlq_list_stops_at_its_limit_and_leaves_every_letter_in_order(
    broker_url: str, queue_name: str, raw: Any
) -> None:
    dlq = QueueNames(queue_name).dlq
    raw.queue_declare(dlq, durable=True)
    for index in range(250):
        raw.basic_publish("", dlq, f"{index}".encode(), pika.BasicProperties(message_id=str(index)))
    args = ("dlq", "list", "--json", "--queue", queue_name, "--url", broker_url)
    first = run("consumer", *args, "--limit", "5")
    assert first.returncode == 0, first.stderr
    bodies = [json.loads(line)["body"] for line in first.stdout.splitlines()]
    assert len(bodies) == 5
    table = run("consumer", *args[:2], *args[3:], "--limit", "5")
    assert table.returncode == 0, table.stderr
    assert "5 of 250 dead letters shown" in table.stdout
    whole = run("consumer", *args)  # the default limit is 100
    assert [json.loads(line)["body"] for line in whole.stdout.splitlines()][:5] == bodies
    assert len(whole.stdout.splitlines()) == 100
    assert _count(broker_url, dlq) == 250


def test_forged_delays_on_the_wire_are_held_or_dropped_never_misread_or_looping(
    own_vhost: str, queue_name: str
) -> None:
    """Any client may publish into the delay levels, or put delay-like headers on a task. A
    routing key that is no delay matches no binding and is returned unroutable; the largest
    delay a key can say waits in the levels, however long; headers (``x-delay``, the plugin's)
    are not read at all: such a task runs at once, once."""
    levels = DelayLevels(QueueType.quorum)
    with RabbitBackend(own_vhost, queue_name) as backend:
        backend.publish([TaskEnvelope(kind="echo")], delay=0.25)  # the levels exist
        assert receive_within(backend, timeout=10) is not None
        connection = pika.BlockingConnection(pika.URLParameters(own_vhost))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            persistent = pika.BasicProperties(delivery_mode=2)
            with pytest.raises(pika.exceptions.UnroutableError):
                channel.basic_publish(
                    levels.top, "2." * 31 + queue_name, b"{}", persistent, mandatory=True
                )
            channel.basic_publish(  # every bit set: the longest wait the levels can hold
                levels.top, "1." * 31 + queue_name, b"{}", persistent, mandatory=True
            )
            plugin_style = TaskEnvelope(kind="echo")
            channel.basic_publish(
                "",
                queue_name,
                plugin_style.model_dump_json().encode(),
                pika.BasicProperties(delivery_mode=2, headers={"x-delay": 10**12}),
                mandatory=True,
            )
        finally:
            connection.close()
        arrived = receive_within(backend, timeout=10)
        assert decode_task(arrived.body).id == plugin_style.id
        backend.ack(arrived)
        assert _drain(backend, 1.0) == []  # the forged longest delay waits, once
        assert backend.depths()["waiting"] == 1
