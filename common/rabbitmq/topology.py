"""Where messages go and what they carry, each written once: queue names, queue arguments,
message properties and dead-letter headers. No connection here, only functions of their
arguments, so the wire format can be read, and tested, in one screen.

Topology for a work queue ``Q``, each queue of the type asked for (`QueueType`, quorum by
default) when this program creates it; a queue that exists already is used as it is:

- ``Q``: durable; tasks are persistent, published with ``mandatory``. As a quorum queue it
  also has a delivery limit (`DELIVERY_LIMIT`): a message handed out that many times and
  never acked (its consumers keep dying before they can count it) is dead-lettered by the
  broker itself to ``Q.dlq``, with reason ``delivery_limit`` in its ``x-death`` header.
- ``Q.dlq``: dead letters, the original body with why in headers (``x-reason`` ...).
- ``Q.replies.<id>``: one producer's results (``reply_to`` + ``correlation_id``, RabbitMQ's
  RPC pattern); durable so a broker restart keeps them, deleted after 10 idle minutes. Always
  classic: a reply queue lives as long as one producer, on the node it is connected to, and
  replicating it would double the cost of every result for a copy nobody reads after a
  failover (the producer reconnects with the same reply queue only if its node comes back;
  the ledger counts what a lost reply queue took with it). A
  worker publishes a result only to a reply queue of its own work queue (`is_reply_queue`):
  whoever may publish a task must not be able to make workers write into any other queue.

Delayed tasks (a retry's next attempt, a task sent for later, one that came early) wait in
the broker, never in a sleeping consumer, in a fixed set of **delay levels** shared by every
work queue of the broker that has the same queue type (`DelayLevels`; quorum and classic
work queues never share one). A delay is counted in units of `DELAY_UNIT` (a quarter
second), rounded up so a task never comes back early, and written in binary, one level per
bit: `DELAY_LEVELS` (31) levels cover `common.backend.MAX_DELAY` (ten years). Level N is a
durable topic exchange and a durable queue, both ``taskshuttle.delay.<type>.<NN>``; the queue
holds every message for exactly 2**N units (``x-message-ttl``), then dead-letters it to level
N-1's exchange (level 0's: ``taskshuttle.delay.<type>.deliver``), keeping its routing key:
the delay's bits as words, most significant first, then the work queue's name
(``0.0...1.0.1.Q``, `delay_routing_key`). Exchange N routes a message whose bit N is 1 to its
queue, and one whose bit is 0 straight on to exchange N-1 (an exchange-to-exchange binding:
no queue hop), so a message is published once, to the top level's exchange, with
``mandatory`` and confirms, and waits once in each level of a 1 bit: 2**N units each, its
whole delay in all. The deliver exchange binds each work queue ``Q`` with exactly
`DELAY_LEVELS` words before its name, so ``b`` never gets what was meant for ``a.b``.

Why it is exact: the broker expires messages only at the head of a queue, and every message
of a level queue has that queue's one TTL, so the head is always the first to expire (a 3 s
delay published after a 4 s one is not held behind it, as it was in the per-queue wait queues
of one doubling step each that came before). Quorum levels dead-letter "at least once"
(``x-dead-letter-strategy``, with ``reject-publish`` overflow): a message leaves a level only
once the next level, or the work queue, has confirmed it. What it is not exact about: each
level's wait starts when a message enters it, so a broker outage that spans a message's move
from one level to the next makes it late by up to the outage (never early). Going through the
levels from the lowest bit up would put the long wait last, but then a message would cross
every higher level's exchange on its way out, the cost `delayed_message` avoids.

Why not RabbitMQ's ``rabbitmq_delayed_message_exchange`` plugin: Debian's broker does not ship
it, and it keeps delayed messages in one node's Mnesia table, not replicated: losing that
node loses every delayed task. The cost of the levels instead, per queue type for the whole
broker (L = `DELAY_LEVELS`): L+2 exchanges (the levels', deliver, dropped), L+1 queues and
2*L+1 bindings, plus one binding per work queue, where the wait queues took 16 queues per work
queue. ``taskshuttle.delay.<type>.dropped`` is the deliver exchange's alternate exchange and
a queue that keeps nothing (``x-max-length`` 0): a delayed task whose work queue was deleted
meanwhile is dropped there. Without it, a quorum level (dead-lettering at least once) would
hold such a message and retry it forever, and past 32 of them (the broker's
``dead_letter_worker_consumer_prefetch``) it would pass nothing on, for any queue.

Work queues declare their binding to the deliver exchange whenever they declare the work queue
(producers and workers alike: a message reaching level 0 with no binding is dropped); the levels
are declared, all idempotent, once per connection before its first delayed publish. Wait
queues ``Q.wait.K`` an older version left on a broker still dead-letter their messages into
``Q`` by themselves as they expire; nothing here uses them any more, and they can be deleted
once empty.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import pika
from pika.spec import BasicProperties

from common.defaults import QueueType
from common.errors import ConfigError
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, encode, utcnow

PERSISTENT = pika.DeliveryMode.Persistent
#: Deliveries of one message a quorum work queue allows before it dead-letters the message
#: itself (RabbitMQ 4.0's own default). Far above what a task meets in normal life (each
#: lost connection or killed consumer hands its prefetched messages out again), it only
#: stops a message that kills every consumer before the consumer can count the deaths.
DELIVERY_LIMIT = 20
REPLY_QUEUE_EXPIRES_MS = 600_000
#: A dead letter keeps this much of the error's text (headers travel in every frame).
ERROR_HEADER_CHARS = 4000
#: What a delay is counted in, in seconds: every delay is rounded up to a whole number of
#: these (a task never comes back early).
DELAY_UNIT = 0.25
_UNIT_MS = 250
#: One delay level per bit of a delay in units: 31 bits hold `common.backend.MAX_DELAY` (ten
#: years). A wire format shared by every program on the broker: never derived, never changed.
DELAY_LEVELS = 31
#: The longest delay the levels hold, in units (about 17 years).
MAX_DELAY_UNITS = 2**DELAY_LEVELS - 1
#: The longest routing key (and binding key) AMQP carries: a short string.
MAX_ROUTING_KEY_BYTES = 255
#: What follows ``Q.replies.`` in a reply queue's name (`QueueNames.new_replies` makes 12 hex
#: digits; any plain name is taken, never one with another dot).
_REPLY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Message(NamedTuple):
    """One publish: to `exchange`, by default the default one, where the routing key is the
    queue's name."""

    routing_key: str
    body: bytes
    properties: BasicProperties
    exchange: str = ""


class Exchange(NamedTuple):
    """A durable exchange to declare."""

    name: str
    kind: str = "topic"
    arguments: dict[str, Any] | None = None


class Binding(NamedTuple):
    """A binding of `destination` (a queue, or an exchange when `to_exchange`) to the
    exchange `source`, with a binding key."""

    source: str
    destination: str
    key: str
    to_exchange: bool = False


@dataclass(frozen=True, slots=True)
class QueueNames:
    """The names of a work queue and of its companions."""

    work: str

    @property
    def dlq(self) -> str:
        return f"{self.work}.dlq"

    def new_replies(self) -> str:
        """A reply queue of one producer's own."""
        return f"{self.work}.replies.{uuid.uuid4().hex[:12]}"

    def is_reply_queue(self, name: object) -> bool:
        """Whether `name` (a ``reply_to`` as received: text, bytes or anything) names a reply
        queue of this work queue, as `new_replies` makes them.

        A worker sends a task's result only there. A task with any other ``reply_to`` still
        runs (whoever published it may publish tasks, and an older or foreign client may
        have sent a sound task), but gets no result: a ``reply_to`` must not let a publisher
        write into any queue with the workers' credentials. Not dead-lettered either: the
        task is not at fault, only where it asked its result to go."""
        prefix = f"{self.work}.replies."
        return (
            isinstance(name, str)
            and name.startswith(prefix)
            and _REPLY_ID.fullmatch(name[len(prefix) :]) is not None
        )

    def with_companions(self) -> list[str]:
        """The work queue and every queue of its own the topology creates beside it (not the
        producers' reply queues, which each producer deletes, or which expire, nor the delay
        levels, which every queue of the broker shares)."""
        return [self.work, self.dlq]


def check_queue_name(queue: str) -> str:
    """`queue` if the delay levels can deliver to it: its routing key (and the deliver
    exchange's binding key) is `DELAY_LEVELS` words and the name, at most 255 bytes, and no
    word of it may be a wildcard of a binding (``*``, ``#``)."""
    longest = MAX_ROUTING_KEY_BYTES - 2 * DELAY_LEVELS
    if len(queue.encode()) > longest:
        raise ConfigError(
            f"queue name {queue[:40]!r}... is {len(queue.encode())} bytes long; at most "
            f"{longest} bytes (the delay levels route by it)"
        )
    if {"*", "#"} & set(queue.split(".")):
        raise ConfigError(f"queue name {queue!r} has a word '*' or '#' (dot-separated), a wildcard")
    return queue


def delay_units(delay: float) -> int:
    """`delay` seconds in `DELAY_UNIT`s, rounded up so a task never comes back early, at most
    `MAX_DELAY_UNITS`; 0 (no delay: straight to the work queue) for 0, below or NaN."""
    if not delay > 0:  # also NaN
        return 0
    if delay >= MAX_DELAY_UNITS * DELAY_UNIT:
        return MAX_DELAY_UNITS
    return math.ceil(delay / DELAY_UNIT)


def delay_routing_key(units: int, queue: str) -> str:
    """The routing key of a task delayed by `units` for `queue`: the delay's `DELAY_LEVELS`
    bits as words, most significant first, then the queue's name (``0.0...1.0.1.queue``)."""
    if not 0 < units <= MAX_DELAY_UNITS:
        raise ValueError(f"a delay of {units} units is not one the levels hold")
    bits = (str(units >> level & 1) for level in reversed(range(DELAY_LEVELS)))
    return ".".join([*bits, queue])


@dataclass(frozen=True, slots=True)
class DelayLevels:
    """The delay levels of one queue type, shared by every work queue of that type on the
    broker (see the module's docstring): their names, arguments and bindings."""

    queue_type: QueueType

    @property
    def prefix(self) -> str:
        return f"taskshuttle.delay.{self.queue_type.value}"

    def level(self, n: int) -> str:
        """Level `n`'s exchange, and its queue: the same name."""
        return f"{self.prefix}.{n:02d}"

    @property
    def top(self) -> str:
        """Where every delayed task is published: the exchange of the highest level."""
        return self.level(DELAY_LEVELS - 1)

    @property
    def deliver(self) -> str:
        """The exchange below level 0, which delivers to the work queues."""
        return f"{self.prefix}.deliver"

    @property
    def dropped(self) -> str:
        """The deliver exchange's alternate exchange, and the queue bound to it that keeps
        nothing: a delayed task whose work queue is gone is dropped there."""
        return f"{self.prefix}.dropped"

    def below(self, n: int) -> str:
        """The exchange level `n` passes its messages on to."""
        return self.level(n - 1) if n > 0 else self.deliver

    def queues(self) -> list[str]:
        """The level queues, level 0 first."""
        return [self.level(n) for n in range(DELAY_LEVELS)]

    def queue_arguments(self, n: int) -> dict[str, Any]:
        """Level `n`'s queue: every message held 2**n units, then passed on, routing key kept
        (no dead-letter routing key)."""
        ttl = {"x-message-ttl": 2**n * _UNIT_MS}
        if self.queue_type is QueueType.classic:
            return {**ttl, "x-dead-letter-exchange": self.below(n)}
        return {**ttl, **_quorum_dead_lettering(self.below(n))}

    def dropped_arguments(self) -> dict[str, Any]:
        keep_nothing = {"x-max-length": 0}
        if self.queue_type is QueueType.classic:
            return keep_nothing
        return {"x-queue-type": "quorum", **keep_nothing}

    def exchanges(self) -> list[Exchange]:
        """Every exchange of the levels: level 0 up, then the deliver and dropped ones."""
        levels = [Exchange(self.level(n)) for n in range(DELAY_LEVELS)]
        return [*levels, self.deliver_exchange(), Exchange(self.dropped, "fanout")]

    def deliver_exchange(self) -> Exchange:
        return Exchange(self.deliver, arguments={"alternate-exchange": self.dropped})

    def bindings(self) -> list[Binding]:
        """Level `n` keeps a message whose bit `n` is 1 in its queue, and passes one whose bit
        is 0 on to the exchange below, at once."""
        bound = [Binding(self.dropped, self.dropped, "")]
        for n in range(DELAY_LEVELS):
            skip = "*." * (DELAY_LEVELS - 1 - n)
            bound.append(Binding(self.level(n), self.level(n), f"{skip}1.#"))
            bound.append(Binding(self.level(n), self.below(n), f"{skip}0.#", to_exchange=True))
        return bound

    def delivers_to(self, queue: str) -> Binding:
        """The work queue's binding to the deliver exchange: exactly `DELAY_LEVELS` words
        before its name."""
        return Binding(self.deliver, queue, "*." * DELAY_LEVELS + queue)


def work_queue_arguments(
    names: QueueNames, queue_type: QueueType, extra: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The work queue's arguments: its type's, plus the caller's (`extra`, e.g. a lesson's
    ``x-single-active-consumer``). A classic work queue has none of its own, as before
    queue types were chosen, so a queue an older version created is declared alike."""
    if queue_type is QueueType.classic:
        return extra
    return {
        **_quorum_dead_lettering("", names.dlq),
        "x-delivery-limit": DELIVERY_LIMIT,
        **(extra or {}),
    }


def dlq_arguments(queue_type: QueueType) -> dict[str, Any] | None:
    return None if queue_type is QueueType.classic else {"x-queue-type": "quorum"}


def _quorum_dead_lettering(exchange: str, to_queue: str | None = None) -> dict[str, Any]:
    """A quorum queue that dead-letters to `exchange` at least once: the broker keeps a
    message until its target has confirmed it (which needs ``reject-publish`` overflow).
    With `to_queue`, through the default exchange to that queue; without, the message keeps
    its routing key."""
    routing = {} if to_queue is None else {"x-dead-letter-routing-key": to_queue}
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": exchange,
        **routing,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def serves_as_delay_level(mismatch: str) -> bool:
    """Whether a level queue that exists with other arguments (the broker's `mismatch` text,
    which names the first argument that differs) still holds each message its level's time
    and passes it on with its routing key: not if it differs in any of those. The broker
    compares those three before the others (the queue's type, its overflow), so a mismatch
    that names another means those three are the same."""
    return not any(
        argument in mismatch
        for argument in ("x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key")
    )


def reply_queue_arguments() -> dict[str, Any]:
    return {"x-expires": REPLY_QUEUE_EXPIRES_MS}


# Only the properties the broker or a client acts on: each one is encoded here, parsed by the
# broker and decoded by the worker, per message. A task's id and kind are in the body already.


def task_message(queue: str, task: TaskEnvelope, reply_to: str | None) -> Message:
    return Message(queue, encode(task), _task_properties(task, reply_to))


def _task_properties(task: TaskEnvelope, reply_to: str | None) -> BasicProperties:
    return BasicProperties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_id=task.id,
        reply_to=reply_to,
    )


def raw_message(queue: str, body: bytes) -> Message:
    """A body as any client could send it (also a replayed dead letter)."""
    properties = BasicProperties(delivery_mode=PERSISTENT, message_id=uuid.uuid4().hex)
    return Message(queue, body, properties)


def result_message(reply_to: str, result: TaskResult) -> Message:
    properties = BasicProperties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        correlation_id=result.task_id,
    )
    return Message(reply_to, encode(result), properties)


def delayed_message(
    levels: DelayLevels, queue: str, task: TaskEnvelope, reply_to: str | None, units: int
) -> Message:
    """A task (a retry's next attempt, a task sent for later) to wait `units` delay units in
    the `levels` before it goes to the work queue `queue`: published to the exchange of the
    level of its delay's highest bit (the levels above would only pass it down, and every
    exchange a message crosses costs the broker a topic match: from the top, a short delay
    crossed thirty, and a publish took 50 times as long), its delay and destination in its
    routing key (no TTL of its own)."""
    key = delay_routing_key(units, queue)
    first = levels.level(units.bit_length() - 1)
    return Message(key, encode(task), _task_properties(task, reply_to), exchange=first)


def dead_letter_message(dlq: str, letter: DeadLetter) -> Message:
    properties = BasicProperties(
        delivery_mode=PERSISTENT,
        message_id=letter.task_id or uuid.uuid4().hex,
        headers=dead_letter_headers(letter),
    )
    return Message(dlq, letter.body, properties)


def dead_letter_headers(letter: DeadLetter) -> dict[str, Any]:
    return {
        "x-reason": letter.reason,
        "x-error": letter.error[:ERROR_HEADER_CHARS],
        "x-attempts": letter.attempts,
        "x-queue": letter.queue,
        "x-task-id": letter.task_id or "",
        "x-dead-lettered-at": letter.dead_lettered_at.isoformat(),
    }


#: A dead letter's ``attempts`` when its ``x-attempts`` header holds no count.
UNKNOWN_ATTEMPTS = -1
_MAX_ATTEMPTS_READ = 10**9


def letter_from(properties: BasicProperties, body: bytes, queue: str) -> DeadLetter:
    """A dead letter read back from the DLQ. Any client may have written it, so this never
    raises: a header left out gets its default; text that is not UTF-8 keeps its bytes as
    ``\\xNN`` escapes (pika hands such a header over as bytes, as it does a byte array); any
    other value is shown as Python prints it; an ``x-attempts`` that is not a whole count from
    0 to 10**9 reads as `UNKNOWN_ATTEMPTS`; an unreadable time as now.

    A message the broker dead-lettered itself (a quorum work queue past its delivery limit)
    has none of our headers but RabbitMQ's ``x-first-death-*`` ones: its reason is the
    broker's (``delivery-limit``), its task id the message's id."""
    headers = properties.headers if isinstance(properties.headers, dict) else {}
    if "x-reason" not in headers and "x-first-death-reason" in headers:
        headers = _from_broker(headers, properties)

    def text(key: str, default: str = "") -> str:
        value = headers.get(key, default)
        if isinstance(value, bytes):
            return value.decode(errors="backslashreplace")
        return value if isinstance(value, str) else str(value)

    return DeadLetter(
        reason=text("x-reason", "unknown"),
        error=text("x-error"),
        queue=text("x-queue", queue),
        attempts=_attempts(headers.get("x-attempts", 0)),
        task_id=text("x-task-id") or None,
        dead_lettered_at=_stamp(headers.get("x-dead-lettered-at")),
        body=body,
    )


def _from_broker(headers: dict[str, Any], properties: BasicProperties) -> dict[str, Any]:
    """RabbitMQ's dead-lettering headers, as the ones we write."""
    reason = headers["x-first-death-reason"]
    if isinstance(reason, bytes):
        reason = reason.decode(errors="backslashreplace")
    ours = {
        "x-reason": str(reason).replace("_", "-"),
        "x-error": f"dead-lettered by the broker: {reason}",
        "x-attempts": UNKNOWN_ATTEMPTS,
        "x-task-id": properties.message_id or "",
    }
    if headers.get("x-first-death-queue"):
        ours["x-queue"] = headers["x-first-death-queue"]
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        ours["x-dead-lettered-at"] = deaths[0].get("time")
    return {**headers, **ours}


def _attempts(value: object) -> int:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ATTEMPTS_READ:
        return value
    return UNKNOWN_ATTEMPTS


def _stamp(value: object) -> datetime:
    if isinstance(value, datetime):  # an AMQP timestamp
        return value
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return utcnow()
