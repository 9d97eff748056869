"""Where messages go and what they carry, each written once: queue names, queue arguments,
message properties and dead-letter headers. No connection here, only functions of their
arguments, so the wire format can be read, and tested, in one screen.

Topology for a work queue ``Q``:

- ``Q``: durable classic queue; tasks are persistent, published with ``mandatory``.
- ``Q.dlq``: dead letters, the original body with why in headers (``x-reason`` ...).
- ``Q.wait.N``: where attempt N+1 of a failed task waits out its backoff. A message there
  carries its delay as a per-message TTL; when it expires the queue dead-letters it back to
  ``Q``. The waiting happens in the broker, not in a sleeping consumer.
- ``Q.replies.<id>``: one producer's results (``reply_to`` + ``correlation_id``, RabbitMQ's
  RPC pattern); durable so a broker restart keeps them, deleted after 10 idle minutes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import pika
from pika.spec import BasicProperties

from common.schemas import DeadLetter, TaskEnvelope, TaskResult, encode, utcnow

PERSISTENT = pika.DeliveryMode.Persistent
REPLY_QUEUE_EXPIRES_MS = 600_000
#: A dead letter keeps this much of the error's text (headers travel in every frame).
ERROR_HEADER_CHARS = 4000


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

    def wait(self, attempt: int) -> str:
        """Where attempt `attempt` (2 or more) of a task waits out its delay."""
        return f"{self.work}.wait.{attempt - 1}"

    def new_replies(self) -> str:
        """A reply queue of one producer's own."""
        return f"{self.work}.replies.{uuid.uuid4().hex[:12]}"

    def with_companions(self, max_attempts: int) -> list[str]:
        """The work queue, its dead letters and every wait queue up to `max_attempts`."""
        waits = [self.wait(attempt) for attempt in range(1, max_attempts + 2)]
        return [self.work, self.dlq, *waits]


def wait_queue_arguments(work_queue: str) -> dict[str, Any]:
    """A wait queue sends each message back to the work queue when its TTL runs out."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": work_queue}


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


def retry_message(
    wait_queue: str, task: TaskEnvelope, reply_to: str | None, delay: float
) -> Message:
    """The next attempt of a task, to wait `delay` seconds in `wait_queue` (its TTL)."""
    properties = BasicProperties(
        content_type="application/json",
        delivery_mode=PERSISTENT,
        message_id=task.id,
        reply_to=reply_to,
        expiration=str(max(int(delay * 1000), 0)),
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


def letter_from(properties: BasicProperties, body: bytes, queue: str) -> DeadLetter:
    """A dead letter read back from the DLQ; headers another client left out get defaults
    (pika hands a header over as bytes when it was sent as a byte array)."""
    headers = properties.headers or {}

    def text(key: str, default: str = "") -> str:
        value = headers.get(key, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    stamp = text("x-dead-lettered-at")
    return DeadLetter(
        reason=text("x-reason", "unknown"),
        error=text("x-error"),
        queue=text("x-queue", queue),
        attempts=int(headers.get("x-attempts", 0) or 0),
        task_id=text("x-task-id") or None,
        dead_lettered_at=datetime.fromisoformat(stamp) if stamp else utcnow(),
        body=body,
    )
