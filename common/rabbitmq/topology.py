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
- ``Q.wait.K``, K = 0 .. `LAST_WAIT_STEP`: where a failed task waits out its retry delay. A
  message there carries its delay as a per-message TTL; when it expires the queue
  dead-letters it back to ``Q``. The waiting happens in the broker, not in a sleeping
  consumer. The broker expires messages only at the head of a queue, so each wait queue
  holds delays of one doubling step: ``Q.wait.0`` up to 1 s, ``Q.wait.K`` from 2**(K-1) to
  2**K seconds, and the last one every longer delay. A message then waits at most about twice
  its delay (behind a longer one of its step), whatever its attempt number, and the set of
  wait queues stays fixed and small. Quorum wait queues dead-letter "at least once": an
  expired retry leaves its wait queue only once the work queue has confirmed it.
- ``Q.replies.<id>``: one producer's results (``reply_to`` + ``correlation_id``, RabbitMQ's
  RPC pattern); durable so a broker restart keeps them, deleted after 10 idle minutes. Always
  classic: a reply queue lives as long as one producer, on the node it is connected to, and
  replicating it would double the cost of every result for a copy nobody reads after a
  failover (the producer reconnects with the same reply queue only if its node comes back;
  the ledger counts what a lost reply queue took with it). A
  worker publishes a result only to a reply queue of its own work queue (`is_reply_queue`):
  whoever may publish a task must not be able to make workers write into any other queue.
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
#: The last wait queue's step: ``Q.wait.15`` holds delays over 2**14 s (4.5 hours).
LAST_WAIT_STEP = 15
#: The longest per-message TTL sent (about 49 days): the broker refuses much longer ones
#: by closing the channel.
MAX_TTL_MS = 2**32 - 1
#: What follows ``Q.replies.`` in a reply queue's name (`QueueNames.new_replies` makes 12 hex
#: digits; any plain name is taken, never one with another dot).
_REPLY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Message(NamedTuple):
    """One publish to the default exchange: the queue's name is the routing key."""

    routing_key: str
    body: bytes
    properties: BasicProperties


@dataclass(frozen=True, slots=True)
class QueueNames:
    """The names of a work queue and of its companions."""

    work: str

    @property
    def dlq(self) -> str:
        return f"{self.work}.dlq"

    def wait_for(self, delay: float) -> str:
        """Where a task waits `delay` seconds before it comes back: the step of its delay."""
        return f"{self.work}.wait.{wait_step(delay)}"

    def wait_queues(self) -> list[str]:
        """Every wait queue a retry can go to, shortest delays first."""
        return [f"{self.work}.wait.{step}" for step in range(LAST_WAIT_STEP + 1)]

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
        producers' reply queues, which each producer deletes, or which expire)."""
        return [self.work, self.dlq, *self.wait_queues()]


def ttl_ms(delay: float) -> int:
    """A delay in seconds as a per-message TTL the broker takes: whole milliseconds, from 0
    to `MAX_TTL_MS` (a NaN is 0)."""
    if not delay > 0:  # also NaN
        return 0
    return int(min(delay * 1000, MAX_TTL_MS))


def wait_step(delay: float) -> int:
    """The wait queue step of `delay`: 0 up to 1 s, K from 2**(K-1) to 2**K s, capped."""
    ms = ttl_ms(delay)
    if ms <= 1000:
        return 0
    return min(math.ceil(math.log2(ms / 1000)), LAST_WAIT_STEP)


def work_queue_arguments(
    names: QueueNames, queue_type: QueueType, extra: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The work queue's arguments: its type's, plus the caller's (`extra`, e.g. a lesson's
    ``x-single-active-consumer``). A classic work queue has none of its own, as before
    queue types were chosen, so a queue an older version created is declared alike."""
    if queue_type is QueueType.classic:
        return extra
    return {
        **_quorum_dead_lettering(names.dlq),
        "x-delivery-limit": DELIVERY_LIMIT,
        **(extra or {}),
    }


def dlq_arguments(queue_type: QueueType) -> dict[str, Any] | None:
    return None if queue_type is QueueType.classic else {"x-queue-type": "quorum"}


def wait_queue_arguments(work_queue: str, queue_type: QueueType) -> dict[str, Any]:
    """A wait queue sends each message back to the work queue when its TTL runs out."""
    if queue_type is QueueType.classic:
        return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": work_queue}
    return _quorum_dead_lettering(work_queue)


def _quorum_dead_lettering(to_queue: str) -> dict[str, Any]:
    """A quorum queue that dead-letters to `to_queue` at least once: the broker keeps a
    message until `to_queue` has confirmed it (which needs ``reject-publish`` overflow)."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": to_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def serves_as_wait_queue(mismatch: str) -> bool:
    """Whether a wait queue that exists with other arguments (the broker's `mismatch`
    text, which names the first argument that differs) still sends expired retries back:
    not if it differs in where it dead-letters to."""
    return "x-dead-letter-exchange" not in mismatch and "x-dead-letter-routing-key" not in mismatch


def reply_queue_arguments() -> dict[str, Any]:
    return {"x-expires": REPLY_QUEUE_EXPIRES_MS}


# Only the properties the broker or a client acts on: each one is encoded here, parsed by the
# broker and decoded by the worker, per message. A task's id and kind are in the body already.


def task_message(queue: str, task: TaskEnvelope, reply_to: str | None) -> Message:
    properties = BasicProperties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_id=task.id,
        reply_to=reply_to,
    )
    return Message(queue, encode(task), properties)


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
    wait_queue: str, task: TaskEnvelope, reply_to: str | None, delay: float
) -> Message:
    """A task (a retry's next attempt, a task sent for later) to wait `delay` seconds in
    `wait_queue` (its TTL) before it goes to the work queue."""
    properties = BasicProperties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_id=task.id,
        reply_to=reply_to,
        expiration=str(ttl_ms(delay)),
    )
    return Message(wait_queue, encode(task), properties)


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
