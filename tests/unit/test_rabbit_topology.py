"""Dead letters through their headers and back, with pika's own codec in between (as they
travel to the broker and come back from the DLQ); queue names and message properties."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime

import pytest
from pika.spec import BasicProperties

from common.defaults import QueueType
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
    assert names.new_replies().startswith("work.replies.")
    assert names.new_replies() != names.new_replies()
    waits = [f"work.wait.{step}" for step in range(topology.LAST_WAIT_STEP + 1)]
    assert names.wait_queues() == waits
    assert names.with_companions() == ["work", "work.dlq", *waits]


def test_classic_queues_are_declared_as_before_queue_types_were_chosen() -> None:
    names = QueueNames("work")
    assert topology.work_queue_arguments(names, QueueType.classic) is None
    assert topology.work_queue_arguments(names, QueueType.classic, {"x-a": 1}) == {"x-a": 1}
    assert topology.dlq_arguments(QueueType.classic) is None
    assert topology.wait_queue_arguments("work", QueueType.classic) == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "work",
    }


def test_quorum_queues_dead_letter_at_least_once_and_limit_deliveries() -> None:
    names = QueueNames("work")
    at_least_once = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    work = topology.work_queue_arguments(
        names, QueueType.quorum, {"x-single-active-consumer": True}
    )
    assert work == {
        **at_least_once,
        "x-dead-letter-routing-key": "work.dlq",  # past its delivery limit
        "x-delivery-limit": topology.DELIVERY_LIMIT,
        "x-single-active-consumer": True,
    }
    assert topology.wait_queue_arguments("work", QueueType.quorum) == {
        **at_least_once,
        "x-dead-letter-routing-key": "work",  # expired retries go back
    }
    assert topology.dlq_arguments(QueueType.quorum) == {"x-queue-type": "quorum"}


def test_a_message_the_broker_dead_lettered_reads_as_a_dead_letter_with_its_reason() -> None:
    died = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    headers = {
        "x-first-death-reason": "delivery_limit",
        "x-first-death-queue": "work",
        "x-first-death-exchange": "",
        "x-death": [{"reason": "delivery_limit", "queue": "work", "count": 1, "time": died}],
    }
    props = _over_the_wire(BasicProperties(headers=headers, message_id="t-1"))
    letter = letter_from(props, b"{}", "fallback")
    assert (letter.reason, letter.queue, letter.task_id) == ("delivery-limit", "work", "t-1")
    assert letter.attempts == topology.UNKNOWN_ATTEMPTS
    assert "delivery_limit" in letter.error
    assert letter.dead_lettered_at == died


def test_a_wait_queue_that_dead_letters_elsewhere_cannot_serve() -> None:
    other_type = "inequivalent arg 'x-queue-type' for queue 'q.wait.0' in vhost '/'"
    other_target = "inequivalent arg 'x-dead-letter-routing-key' for queue 'q.wait.0'"
    assert topology.serves_as_wait_queue(other_type)
    assert not topology.serves_as_wait_queue(other_target)


@pytest.mark.parametrize(
    ("delay", "step"),
    [
        (-5.0, 0),
        (float("nan"), 0),
        (0.0, 0),
        (0.25, 0),
        (1.0, 0),
        (1.01, 1),
        (2.0, 1),
        (3.0, 2),
        (300.0, 9),  # the default cap on retry delays
        (2.0**14, 14),
        (2.0**14 + 1, 15),
        (10.0**9, 15),
        (float("inf"), 15),
    ],
)
def test_a_delay_waits_in_the_queue_of_its_doubling_step_up_to_the_last(
    delay: float, step: int
) -> None:
    assert topology.wait_step(delay) == step
    assert QueueNames("work").wait_for(delay) == f"work.wait.{step}"


def test_every_delay_maps_to_one_of_the_fixed_wait_queues() -> None:
    names = QueueNames("q")
    queues = set(names.wait_queues())
    delays = [0.001 * 1.7**k for k in range(60)]  # 1 ms to far past the last step
    assert {names.wait_for(delay) for delay in delays} == queues


@pytest.mark.parametrize(
    ("delay", "expiration"),
    [(-1, "0"), (float("nan"), "0"), (1.5, "1500"), (10.0**12, str(2**32 - 1))],
)
def test_a_ttl_is_whole_milliseconds_the_broker_takes(delay: float, expiration: str) -> None:
    message = topology.delayed_message("work.wait.1", TaskEnvelope(kind="echo"), None, delay)
    assert message.properties.expiration == expiration


@pytest.mark.parametrize(
    ("reply_to", "ok"),
    [
        ("work.replies.0123456789ab", True),
        ("work.replies.my-own_id", True),
        ("work.replies.", False),
        ("work.replies.a.b", False),
        ("work.replies.a/b", False),
        ("work.replies." + "a" * 65, False),
        ("work.dlq", False),
        ("work", False),
        ("other.replies.0123456789ab", False),
        ("workx.replies.0123456789ab", False),
        ("amq.gen-abc", False),
        (b"work.replies.0123456789ab", False),  # not text: pika could not decode it
        (None, False),
    ],
)
def test_results_go_only_to_reply_queues_of_the_work_queue(reply_to: object, ok: bool) -> None:
    names = QueueNames("work")
    assert names.is_reply_queue(reply_to) is ok
    assert names.is_reply_queue(names.new_replies())


def test_a_retry_waits_its_delay_as_a_ttl_and_keeps_its_reply_queue() -> None:
    task = TaskEnvelope(kind="echo", attempt=2)
    message = topology.delayed_message("work.wait.1", task, "work.replies.r", delay=1.5)
    props = message.properties
    assert (props.expiration, props.message_id, props.reply_to) == (
        "1500",
        task.id,
        "work.replies.r",
    )
    assert props.delivery_mode == topology.PERSISTENT.value


def test_a_raw_body_is_persistent_with_a_fresh_message_id() -> None:
    first, second = (topology.raw_message("work", b"x").properties for _ in range(2))
    assert first.message_id and first.message_id != second.message_id
    assert first.delivery_mode == topology.PERSISTENT.value


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-attempts": "abc"}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-attempts": "12"}, {"attempts": 12}),
        ({"x-attempts": b"7"}, {"attempts": 7}),
        ({"x-attempts": "\u00b2"}, {"attempts": topology.UNKNOWN_ATTEMPTS}),  # a digit, not ASCII
        ({"x-attempts": "9" * 5000}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-attempts": 10**18}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-attempts": -3}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-attempts": True}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-attempts": decimal.Decimal("2.5")}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-attempts": {"a": [1]}}, {"attempts": topology.UNKNOWN_ATTEMPTS}),
        ({"x-reason": b"\xff\xfe bad"}, {"reason": "\\xff\\xfe bad"}),
        ({"x-task-id": b"\x80"}, {"task_id": "\\x80"}),
        ({"x-queue": 7}, {"queue": "7"}),
        ({"x-error": ["a", 1]}, {"error": "['a', 1]"}),
    ],
)
def test_hostile_headers_read_as_text_or_an_unknown_count_never_an_error(
    headers: dict[str, object], expected: dict[str, object]
) -> None:
    back = letter_from(_over_the_wire(BasicProperties(headers=headers)), b"x", "work")
    assert {key: getattr(back, key) for key in expected} == expected


@pytest.mark.parametrize("stamp", ["yesterday", b"\xff", "", 12, {"a": 1}])
def test_an_unreadable_time_reads_as_now(stamp: object) -> None:
    before = utcnow()
    back = letter_from(
        _over_the_wire(BasicProperties(headers={"x-dead-lettered-at": stamp})), b"x", "work"
    )
    assert before <= back.dead_lettered_at <= utcnow()


def test_an_amqp_timestamp_reads_as_that_time() -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    back = letter_from(
        _over_the_wire(BasicProperties(headers={"x-dead-lettered-at": when})), b"x", "work"
    )
    assert back.dead_lettered_at == when
