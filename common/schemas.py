"""The wire format both backends speak: JSON bytes validated by pydantic, never pickle.

Encoding and decoding live here and nowhere else, so the local backend (which puts encoded
bytes on its `multiprocessing.Queue`) exercises exactly the bytes RabbitMQ carries.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from common.errors import BadMessage

#: Bodies larger than this are refused before any parsing (dead-lettered as ``too-large``).
MAX_BODY_BYTES = 1_000_000

#: The most tries a task may ask for, and so the highest attempt number a body may carry: a
#: body past it is forged or broken (dead-lettered as ``schema``), never a reason to retry.
MAX_ATTEMPTS = 100

#: This machine's name, as tasks and results report it.
HOSTNAME = socket.gethostname()


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: The longest id a task may carry (and so a revocation may name).
TASK_ID_MAX = 64


def new_task_id() -> str:
    """128 random bits in hex, like ``uuid4().hex`` at a third of the cost."""
    return os.urandom(16).hex()


class TaskEnvelope(_Strict):
    """One unit of work, as the producer sends it."""

    id: str = Field(default_factory=new_task_id, min_length=1, max_length=TASK_ID_MAX)
    kind: str = Field(min_length=1, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    #: 1 for the first try; a retry is a new envelope with attempt + 1.
    attempt: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] = 1
    #: None means "use the consumer's default"; a consumer never allows more than its own.
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] | None = None
    producer_host: str = Field(default=HOSTNAME)
    producer_pid: int = Field(default_factory=os.getpid)
    #: When the task is due (a countdown's or an eta's time): the broker holds it back until
    #: then, and a worker that gets it earlier (another host's clock) sends it back to wait
    #: out the rest. None: at once. With a timezone, as every time on the wire.
    eta: AwareDatetime | None = None
    #: Past this time a worker that takes the task does not run it: it is dead-lettered as
    #: ``expired`` (a result says so). None: never expires.
    expires: AwareDatetime | None = None


class TaskStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"


class TaskResult(_Strict):
    """What a worker did with one task."""

    task_id: str
    kind: str
    status: TaskStatus
    attempt: int
    #: True when the broker (or the local supervisor) handed this task out before.
    redelivered: bool = False
    worker_pid: int
    worker_ppid: int
    worker_host: str
    worker_name: str
    started_at: datetime
    finished_at: datetime
    #: The task's creation time, copied so the producer can compute latency from one record.
    created_at: datetime
    value: Any = None
    error: str | None = None
    #: Why a failed task will not run again, as its dead letter says (``max-attempts``,
    #: ``expired``, ``revoked``...); None for a task that succeeded.
    reason: str | None = None
    #: The handler's exception type (``ValueError``), when a raise made it fail.
    error_type: str | None = None


class DeadLetter(_Strict):
    """A message that will not be processed, kept with why."""

    # The body may be any bytes a client sent: carry it as base64 in JSON.
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )

    reason: str
    error: str
    queue: str
    attempts: int
    task_id: str | None
    dead_lettered_at: datetime
    body: bytes


class Revocation(_Strict):
    """One task that the workers of `queue` must not start before `until` (RabbitMQ carries
    one per message on its revocation stream: `common.rabbitmq.revocations`)."""

    task_id: str = Field(min_length=1, max_length=TASK_ID_MAX)
    queue: str = Field(min_length=1, max_length=255)
    #: When the revocation is forgotten. With a timezone, as every time on the wire.
    until: AwareDatetime


_Model = TypeVar("_Model", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def _decode(body: bytes, model: type[_Model]) -> _Model:
    if len(body) > MAX_BODY_BYTES:
        raise BadMessage("too-large", f"{len(body)} bytes, limit {MAX_BODY_BYTES}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise BadMessage("not-json", f"body is not valid JSON ({first['msg']})") from None
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadMessage("schema", f"not a {model.__name__}: {where}: {first['msg']}") from None
    except (UnicodeDecodeError, ValueError) as exc:  # pragma: no cover - pydantic wraps these
        raise BadMessage("not-json", str(exc)) from None


def decode_task(body: bytes) -> TaskEnvelope:
    """Bytes to a task, or `BadMessage` saying what is wrong. Never raises anything else."""
    return _decode(body, TaskEnvelope)


def decode_result(body: bytes) -> TaskResult:
    return _decode(body, TaskResult)


def decode_revocation(body: bytes) -> Revocation:
    """Bytes to a revocation, or `BadMessage` saying what is wrong. Never raises anything else."""
    return _decode(body, Revocation)


def as_first_attempt(body: bytes) -> bytes:
    """A dead letter's body, made ready to replay: a valid task starts again at attempt 1;
    anything else goes back as it was (and will be dead-lettered again, with its reason)."""
    try:
        task = decode_task(body)
    except BadMessage:
        return body
    return encode(task.model_copy(update={"attempt": 1}))
