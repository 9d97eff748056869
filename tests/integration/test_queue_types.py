"""Queue types on a real broker: what quorum queues add (a delivery limit the broker keeps),
and queues that exist already, made by another client or another version, used as they are."""

from __future__ import annotations

import json
from typing import Any

import pika
import pytest

from common.defaults import QueueType
from common.errors import QueueMismatch
from common.rabbitmq import RabbitBackend
from common.rabbitmq.topology import DELIVERY_LIMIT, DelayLevels
from common.schemas import DeadLetter, TaskEnvelope, encode, utcnow
from tests.helpers import finish, receive_within, start, stop, wait_for_output, wait_until

pytestmark = pytest.mark.timeout(90)

USED_AS_IS = "exists with other arguments; used as it is"


def _declare(url: str, name: str, arguments: dict[str, Any] | None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
    finally:
        connection.close()


def _queue_type(url: str, name: str, arguments: dict[str, Any]) -> None:
    """Raises if `name` was not declared with `arguments` (a passive check cannot tell)."""
    _declare(url, name, arguments)


@pytest.mark.parametrize(
    "existing",
    [{"x-queue-type": "quorum"}, {"x-queue-type": "classic"}, None],
    ids=["bare-quorum", "classic", "no-arguments"],
)
def test_a_queue_made_elsewhere_is_used_as_it_is(
    existing: dict[str, Any] | None, broker_url: str, queue_name: str
) -> None:
    """As RabbitMQ's tutorial or an older taskshuttle made it: the work goes through, with
    one warning per program, and the queue keeps its type."""
    _declare(broker_url, queue_name, existing)
    consumer = start("consumer", "--queue", queue_name, "--workers", "1", "--url", broker_url)
    try:
        wait_for_output(consumer, "consuming", timeout=60)
        producer = start(
            "producer", "--backend", "rabbitmq", "--queue", queue_name, "--url", broker_url,
            "--count", "20", "--wait", "--json", "--timeout", "60",
        )  # fmt: skip
        code, out, err = finish(producer, timeout=80)
    finally:
        consumer_code, _, consumer_err = stop(consumer, timeout=60)
    assert code == 0, err
    assert json.loads(out)["done"] == 20
    assert consumer_code == 0, consumer_err
    warning = f"WARNING queue {queue_name!r} {USED_AS_IS}: inequivalent arg 'x-"
    assert err.count(warning) == 1, err  # the producer says it once
    assert "error" not in err.lower(), err
    _queue_type(broker_url, queue_name, existing)  # untouched


def test_the_queue_type_option_decides_what_is_created(broker_url: str, queue_name: str) -> None:
    for queue_type, arguments in [
        (QueueType.classic, None),
        (QueueType.quorum, {"x-queue-type": "quorum"}),
    ]:
        with RabbitBackend(broker_url, queue_name, queue_type=queue_type) as backend:
            assert backend.used_as_is == {}
            _queue_type(broker_url, backend.dlq_name, arguments)  # raises if not that type
            backend.delete_queues()


def test_a_delay_level_that_holds_its_messages_otherwise_is_refused_with_one_line(
    own_vhost: str, queue_name: str
) -> None:
    """In a virtual host of its own, as the next test: the levels are every queue's."""
    level = DelayLevels(QueueType.classic).level(3)
    _declare(own_vhost, level, {"x-message-ttl": 1000, "x-dead-letter-exchange": "elsewhere"})
    with RabbitBackend(own_vhost, queue_name, queue_type=QueueType.classic) as worker:
        task = TaskEnvelope(kind="echo")
        worker.publish([task])
        delivery = receive_within(worker)
        with pytest.raises(QueueMismatch) as refused:
            worker.retry_later(delivery, task.model_copy(update={"attempt": 2}), 0.1)
        message = str(refused.value)
        assert message.startswith(f"delay level {level!r} exists but cannot serve as one")
        assert "x-message-ttl" in message and "\n" not in message
        worker.requeue(delivery)
        assert wait_until(lambda: worker.pending() == 1, 5)  # the task is still there


def test_a_delay_level_of_another_type_is_used_as_it_is(
    own_vhost: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    levels = DelayLevels(QueueType.quorum)
    classic = DelayLevels(QueueType.classic)
    # Level 0 as a classic queue, holding and passing on as the quorum one would.
    arguments = {**classic.queue_arguments(0), "x-dead-letter-exchange": levels.deliver}
    _declare(own_vhost, levels.level(0), arguments)
    with RabbitBackend(own_vhost, queue_name, queue_type=QueueType.quorum) as backend:
        task = TaskEnvelope(kind="echo")
        backend.publish([task], delay=0.25)  # 1 unit: level 0 only
        assert receive_within(backend).body == encode(task)
        assert list(backend.used_as_is) == [levels.level(0)]  # the broker names x-overflow
    assert sum(USED_AS_IS in r.getMessage() for r in caplog.records) == 1


def test_a_quorum_queue_dead_letters_a_message_handed_out_past_its_delivery_limit(
    broker_url: str, queue_name: str
) -> None:
    """The broker's own count, for a message that kills every consumer before the consumer
    can count the deaths: after `DELIVERY_LIMIT` returns it goes to the DLQ, not round again."""
    with RabbitBackend(broker_url, queue_name, queue_type=QueueType.quorum) as worker:
        task = TaskEnvelope(kind="echo")
        worker.publish([task])
        for _ in range(DELIVERY_LIMIT + 1):
            worker.requeue(receive_within(worker))
        assert worker.receive(1.0) is None
        letters = worker.dead_letters()
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.reason, letter.task_id, letter.queue) == ("delivery-limit", task.id, queue_name)
    assert json.loads(letter.body)["id"] == task.id


def test_dead_letters_written_by_us_and_by_the_broker_list_side_by_side(
    broker_url: str, queue_name: str
) -> None:
    with RabbitBackend(broker_url, queue_name, queue_type=QueueType.quorum) as worker:
        ours, theirs = TaskEnvelope(kind="echo"), TaskEnvelope(kind="echo")
        worker.publish([ours, theirs])
        first = receive_within(worker)
        letter = DeadLetter(
            reason="max-attempts", error="boom", queue=queue_name, attempts=3,
            task_id=ours.id, dead_lettered_at=utcnow(), body=first.body,
        )  # fmt: skip
        worker.dead_letter(first, letter)
        for _ in range(DELIVERY_LIMIT + 1):
            worker.requeue(receive_within(worker))
        reasons = sorted(letter.reason for letter in worker.dead_letters())
        assert reasons == ["delivery-limit", "max-attempts"]
        assert worker.replay_dead_letters() == 2
        assert worker.pending() == 2
