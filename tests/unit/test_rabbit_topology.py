"""Dead letters through their headers and back, with pika's own codec in between (as they
travel to the broker and come back from the DLQ); queue names and message properties."""

from __future__ import annotations

import pytest
from pika.spec import BasicProperties

from common.rabbitmq import topology
from common.rabbitmq.topology import QueueNames, letter_from
from common.schemas import DeadLetter, TaskEnvelope, utcnow

pytestmark = pytest.mark.timeout(10)


def _letter(**changes: object) -> DeadLetter:
    fields: dict[str, object] = {
        "reason": "handler-error",
        "error": "ValueError: boom",
        "queue": "work",
        "attempts": 3,
        "task_id": "task-1",
        "dead_lettered_at": utcnow(),
        "body": b'{"kind": "fail"}',
    }
    return DeadLetter.model_validate(fields | changes)


def _over_the_wire(properties: BasicProperties) -> BasicProperties:
    """`properties` encoded as pika sends them, and decoded as pika delivers them."""
    received = BasicProperties()
    received.decode(b"".join(properties.encode()))
    return received


@pytest.mark.parametrize(
    "letter",
    [
        _letter(),
        _letter(task_id=None, body=b"\xff not json at all"),
        _letter(reason="not-json", error="", attempts=0, queue="other"),
    ],
    ids=["task", "no-task-id", "empty-error"],
)
def test_a_dead_letter_round_trips_through_its_headers(letter: DeadLetter) -> None:
    message = topology.dead_letter_message("work.dlq", letter)
    assert message.routing_key == "work.dlq"
    received = _over_the_wire(message.properties)
    assert letter_from(received, message.body, "work") == letter


def test_bytes_valued_headers_read_as_text() -> None:
    letter = _letter()
    headers = {
        key: value.encode() if isinstance(value, str) else value
        for key, value in topology.dead_letter_headers(letter).items()
    }
    received = _over_the_wire(BasicProperties(headers=headers))
    assert isinstance(received.headers["x-reason"], bytes)  # pika hands byte arrays as bytes
    assert letter_from(received, letter.body, "work") == letter


def test_a_long_error_keeps_its_first_characters() -> None:
    letter = _letter(error="x" * 10_000)
    message = topology.dead_letter_message("work.dlq", letter)
    back = letter_from(_over_the_wire(message.properties), message.body, "work")
    assert back == letter.model_copy(update={"error": "x" * topology.ERROR_HEADER_CHARS})


def test_a_message_without_headers_gets_the_defaults() -> None:
    before = utcnow()
    back = letter_from(BasicProperties(), b"raw", "work")
    assert (back.reason, back.error, back.queue, back.attempts, back.task_id, back.body) == (
        "unknown",
        "",
        "work",
        0,
        None,
        b"raw",
    )
    assert before <= back.dead_lettered_at <= utcnow()


def test_an_absent_header_gets_its_default_and_the_rest_are_kept() -> None:
    letter = _letter()
    headers = topology.dead_letter_headers(letter)
    del headers["x-attempts"], headers["x-queue"]
    back = letter_from(_over_the_wire(BasicProperties(headers=headers)), letter.body, "fallback")
    assert back == letter.model_copy(update={"attempts": 0, "queue": "fallback"})


def test_queue_names() -> None:
    names = QueueNames("work")
    assert names.dlq == "work.dlq"
    assert names.wait(2) == "work.wait.1"  # attempt 2 waits after the first failure
    assert names.new_replies().startswith("work.replies.")
    assert names.new_replies() != names.new_replies()
    assert names.with_companions(2) == [
        "work",
        "work.dlq",
        "work.wait.0",
        "work.wait.1",
        "work.wait.2",
    ]
    assert topology.wait_queue_arguments("work") == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "work",
    }


def test_a_retry_waits_its_delay_as_a_ttl_and_keeps_its_reply_queue() -> None:
    task = TaskEnvelope(kind="echo", attempt=2)
    message = topology.retry_message("work.wait.1", task, "work.replies.r", delay=1.5)
    props = message.properties
    assert (props.expiration, props.message_id, props.reply_to) == (
        "1500",
        task.id,
        "work.replies.r",
    )
    assert props.delivery_mode == topology.PERSISTENT.value
    assert topology.retry_message("w", task, None, delay=-1).properties.expiration == "0"


def test_a_raw_body_is_persistent_with_a_fresh_message_id() -> None:
    first, second = (topology.raw_message("work", b"x").properties for _ in range(2))
    assert first.message_id and first.message_id != second.message_id
    assert first.delivery_mode == topology.PERSISTENT.value
