"""Dead letters through their headers and back, with pika's own codec in between (as they
travel to the broker and come back from the DLQ); queue names, message properties, and the
delay levels' names, arguments, bindings and routing keys (walked here as the broker's topic
exchanges route, so a delay is seen to reach its work queue through exactly its levels)."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime

import pytest
from pika.spec import BasicProperties

from common.backend import MAX_DELAY
from common.defaults import QueueType
from common.errors import ConfigError
from common.rabbitmq import topology
from common.rabbitmq.topology import DELAY_LEVELS, DelayLevels, QueueNames, letter_from
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
    assert names.with_companions() == ["work", "work.dlq"]  # the delay levels are shared


def test_classic_queues_are_declared_as_before_queue_types_were_chosen() -> None:
    names = QueueNames("work")
    assert topology.work_queue_arguments(names, QueueType.classic) is None
    assert topology.work_queue_arguments(names, QueueType.classic, {"x-a": 1}) == {"x-a": 1}
    assert topology.dlq_arguments(QueueType.classic) is None


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


# -- the delay levels ------------------------------------------------------------------------
def test_thirty_one_levels_of_a_quarter_second_hold_the_longest_delay_and_no_fewer_would() -> None:
    assert DELAY_LEVELS == 31
    assert topology.MAX_DELAY_UNITS * topology.DELAY_UNIT >= MAX_DELAY
    assert (2 ** (DELAY_LEVELS - 1) - 1) * topology.DELAY_UNIT < MAX_DELAY


@pytest.mark.parametrize(
    ("delay", "units"),
    [
        (-5.0, 0),
        (float("nan"), 0),
        (0.0, 0),  # no delay: straight to the work queue
        (1e-9, 1),  # rounded up: never early
        (0.25, 1),
        (0.26, 2),
        (1.0, 4),
        (1.3, 6),
        (2.6, 11),
        (3.0, 12),
        (300.0, 1200),  # the default cap on retry delays
        (MAX_DELAY, 4 * int(MAX_DELAY)),
        (10.0**12, 2**31 - 1),
        (float("inf"), 2**31 - 1),
    ],
)
def test_a_delay_is_whole_quarter_seconds_rounded_up(delay: float, units: int) -> None:
    assert topology.delay_units(delay) == units


def test_a_delay_of_no_unit_goes_straight_to_the_work_queue() -> None:
    levels = DelayLevels(QueueType.quorum)
    with pytest.raises(ValueError, match="0 units"):
        topology.delay_routing_key(0, "work")
    with pytest.raises(ValueError):
        topology.delay_routing_key(2**31, "work")
    message = topology.delayed_message(levels, "work", TaskEnvelope(kind="echo"), None, 1)
    assert message.exchange == "taskshuttle.delay.quorum.00"  # its highest bit's level
    longer = topology.delayed_message(levels, "work", TaskEnvelope(kind="echo"), None, 0b10110)
    assert longer.exchange == "taskshuttle.delay.quorum.04"  # none above it to cross
    assert topology.task_message("work", TaskEnvelope(kind="echo"), None).exchange == ""


def test_the_routing_key_is_the_delays_bits_most_significant_first_then_the_queue() -> None:
    key = topology.delay_routing_key(0b101, "a.b")
    assert key == "0." * 28 + "1.0.1.a.b"
    assert key.split(".")[:DELAY_LEVELS].count("1") == 2
    assert topology.delay_routing_key(2**31 - 1, "q") == "1." * 31 + "q"


@pytest.mark.parametrize("queue_type", list(QueueType))
def test_level_names_and_arguments(queue_type: QueueType) -> None:
    levels = DelayLevels(queue_type)
    prefix = f"taskshuttle.delay.{queue_type.value}"
    assert levels.queues() == [f"{prefix}.{n:02d}" for n in range(31)]
    assert (levels.top, levels.deliver) == (f"{prefix}.30", f"{prefix}.deliver")
    assert levels.below(0) == levels.deliver and levels.below(5) == f"{prefix}.04"
    quorum = {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    for n in (0, 1, 30):
        expected = {"x-message-ttl": 2**n * 250, "x-dead-letter-exchange": levels.below(n)}
        if queue_type is QueueType.quorum:
            expected |= quorum
        assert levels.queue_arguments(n) == expected  # no dead-letter routing key: it is kept
    assert levels.queue_arguments(30)["x-message-ttl"] == 2**30 * 250  # under 2**32 - 1 ms
    exchanges = {e.name: e for e in levels.exchanges()}
    assert len(exchanges) == DELAY_LEVELS + 2  # the levels, deliver and dropped
    assert all(exchanges[name].kind == "topic" for name in [*levels.queues(), levels.deliver])
    assert exchanges[levels.deliver].arguments == {"alternate-exchange": levels.dropped}
    assert exchanges[levels.dropped].kind == "fanout"
    assert levels.dropped_arguments()["x-max-length"] == 0  # keeps nothing


def test_quorum_and_classic_work_queues_never_share_a_level() -> None:
    quorum, classic = (set(DelayLevels(t).queues()) for t in QueueType)
    assert not quorum & classic


def _topic_matches(key: str, words: list[str]) -> bool:
    """Whether a topic binding `key` matches a routing key's `words`, as the broker says:
    ``*`` one word, ``#`` zero or more."""
    if not key:
        return not words
    first, _, rest = key.partition(".")
    if first == "#":
        return any(_topic_matches(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and first in ("*", words[0]) and _topic_matches(rest, words[1:])


def _route(levels: DelayLevels, queues: list[str], routing_key: str) -> tuple[list[str], list[str]]:
    """Where a message published to the top level goes, as the bindings say: the level
    queues it waits in, in order (each passing it on to the exchange below when its TTL ends,
    its routing key kept), and the work queues it reaches at last."""
    bindings = [*levels.bindings(), *(levels.delivers_to(q) for q in queues)]
    words = routing_key.split(".")
    waited: list[str] = []
    exchange = levels.top
    while True:
        targets = [b for b in bindings if b.source == exchange and _topic_matches(b.key, words)]
        assert len(targets) <= 1 or exchange == levels.deliver, targets
        if exchange == levels.deliver:
            return waited, [b.destination for b in targets]
        [target] = targets  # every level routes each delayed message one way
        if target.to_exchange:
            exchange = target.destination
        else:
            waited.append(target.destination)
            exchange = levels.below(levels.queues().index(target.destination))


@pytest.mark.parametrize(
    "units", [1, 2, 3, 5, 12, 0b1010_0000_0000_0000_0000_0000_0000_001, 2**31 - 1]
)
def test_a_delay_waits_once_in_each_level_of_a_one_bit_and_reaches_only_its_queue(
    units: int,
) -> None:
    levels = DelayLevels(QueueType.quorum)
    queues = ["a.b", "b", "a", "a.b.c"]
    waited, reached = _route(levels, queues, topology.delay_routing_key(units, "a.b"))
    assert reached == ["a.b"]  # not "b" (its name's last word) nor "a" (its first)
    ones = [n for n in range(DELAY_LEVELS) if units >> n & 1]
    assert waited == [levels.level(n) for n in reversed(ones)]  # the longest wait first
    ttl = sum(levels.queue_arguments(levels.queues().index(q))["x-message-ttl"] for q in waited)
    assert ttl == units * 250  # exactly its delay in all


def test_a_delayed_task_whose_queue_is_gone_reaches_no_work_queue() -> None:
    levels = DelayLevels(QueueType.classic)
    assert _route(levels, ["other"], topology.delay_routing_key(3, "gone")) == (
        [levels.level(1), levels.level(0)],
        [],  # the deliver exchange's alternate exchange drops it
    )


@pytest.mark.parametrize(
    "mismatch",
    [
        "inequivalent arg 'x-queue-type' for queue 'taskshuttle.delay.quorum.03' in vhost '/'",
        "inequivalent arg 'x-overflow' for queue 'taskshuttle.delay.quorum.03' in vhost '/'",
    ],
)
def test_a_level_of_another_type_serves(mismatch: str) -> None:
    assert topology.serves_as_delay_level(mismatch)


@pytest.mark.parametrize("argument", ["x-message-ttl", "x-dead-letter-exchange"])
def test_a_level_that_holds_or_passes_on_otherwise_cannot_serve(argument: str) -> None:
    mismatch = f"inequivalent arg '{argument}' for queue 'taskshuttle.delay.classic.03'"
    assert not topology.serves_as_delay_level(mismatch)


def test_queue_names_the_levels_cannot_route_to_are_refused() -> None:
    longest = "q" * (255 - 2 * DELAY_LEVELS)
    assert topology.check_queue_name(longest) == longest
    assert len(topology.delay_routing_key(2**31 - 1, longest).encode()) == 255
    with pytest.raises(ConfigError, match="at most 193 bytes") as refused:
        topology.check_queue_name(longest + "q")
    assert "\n" not in str(refused.value)
    for wild in ("a.*", "#", "a.#.b", "*"):
        with pytest.raises(ConfigError, match="wildcard"):
            topology.check_queue_name(wild)
    assert topology.check_queue_name("a*b.c#") == "a*b.c#"  # only whole words are wildcards


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


def test_a_delayed_task_keeps_its_reply_queue_and_carries_no_ttl_of_its_own() -> None:
    task = TaskEnvelope(kind="echo", attempt=2)
    levels = DelayLevels(QueueType.quorum)
    message = topology.delayed_message(levels, "work", task, "work.replies.r", units=6)
    props = message.properties
    assert (props.expiration, props.message_id, props.reply_to) == (None, task.id, "work.replies.r")
    assert props.delivery_mode == topology.PERSISTENT.value
    assert message.routing_key == topology.delay_routing_key(6, "work")


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
