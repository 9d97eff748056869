"""What crosses between the local broker and its workers: tasks one way, events the other.

Tasks go out on the shared task queue in batches of `Item`s; each worker sends its events
back in batches on a pipe of its own, and the broker sends each worker its revocations
(`Revoked`) on a control pipe of the worker's own. All are pickled on the way, so their shapes
are kept cheap to pickle.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext

from common.backend import held_for
from common.schemas import TaskEnvelope, encode, utcnow

#: spawn, not fork: the parent runs threads (the queue's feeder, rich's progress bar), and
#: forking a process with threads can copy a held lock into the child.
MP_CONTEXT: BaseContext = multiprocessing.get_context("spawn")

#: Room for one task key in a slot of the in-flight registry: a task id (up to 64
#: characters), "/", an attempt number.
KEY_BYTES = 80


class SlotMemory(ctypes.Structure):
    """What a worker tells its slot through shared memory besides the keys of the tasks it
    holds, for the broker to read once the worker is dead: its pid. (Which task it was
    running is the in-flight registry's to know: `consumer.inflight`, for both backends.)"""

    _fields_ = [
        ("pid", ctypes.c_long),
        # How many `Revoked` the broker has written to the slot's control pipe, counted from 0
        # for each fresh pipe: a worker reads the pipe only when this moved past what it read,
        # so a task's `is_revoked` costs no system call.
        ("revocations", ctypes.c_long),
    ]


#: A task on the task queue: key, body, redelivered. A bare tuple, since every task is
#: pickled once on its way, and a tuple pickles many times faster than a record.
Item = tuple[str, bytes, bool]


#: Revocations on a slot's control pipe, broker to worker: the time they end (epoch seconds,
#: the broker's clock) and the task ids. A bare tuple of built-in types, like `Item`.
Revoked = tuple[float, tuple[str, ...]]


def task_key(task_id: str, attempt: int) -> str:
    """One attempt of one task: a retry is a new attempt, so a new key."""
    return f"{task_id}/{attempt}"


def items_by_delay(
    tasks: Sequence[TaskEnvelope], delay: float
) -> dict[float, list[tuple[str, bytes]]]:
    """`tasks` encoded (key, body), grouped by how long a publish holds each back: `delay`,
    or until its eta if later (`held_for`, reckoned now). The one place both sides of the
    local backend turn a publish into items."""
    now = utcnow()
    by_delay: dict[float, list[tuple[str, bytes]]] = {}
    for task in tasks:
        by_delay.setdefault(held_for(task, delay, now), []).append(
            (task_key(task.id, task.attempt), encode(task))
        )
    return by_delay


# -- events: what a worker tells the broker ---------------------------------------------
# Every task sends a `Result` or an `Acked`, so those two pickle as their class and fields
# (`__reduce__`): the default for a frozen record with slots is several times slower.


@dataclass(frozen=True, slots=True)
class Result:
    """The task is done and its producer wants the result (an encoded `TaskResult`)."""

    key: str
    result: bytes

    def __reduce__(self) -> tuple[type[Result], tuple[str, bytes]]:
        return Result, (self.key, self.result)


@dataclass(frozen=True, slots=True)
class Acked:
    """The task is done; nobody asked for its result."""

    key: str

    def __reduce__(self) -> tuple[type[Acked], tuple[str]]:
        return Acked, (self.key,)


@dataclass(frozen=True, slots=True)
class Published:
    """Tasks a worker published (`items`: each one's key and body), due `delay` seconds
    after the broker hears of them (the broker's clock keeps the time, not the worker's);
    `settles`: the key of the delivery they settle (a retry's failed attempt), if any."""

    settles: str | None
    items: tuple[tuple[str, bytes], ...]
    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    """A dead letter (an encoded `DeadLetter`), and the failed result if one is wanted."""

    key: str
    letter: bytes
    result: bytes | None


@dataclass(frozen=True, slots=True)
class Requeue:
    """Handed back unfinished: to be handed out again, marked as redelivered."""

    key: str


@dataclass(frozen=True, slots=True)
class Noted:
    """Task events (`common.events`), one encoded event per line, for the parent to show."""

    events: bytes


Event = Result | Acked | Published | Dead | Requeue | Noted
