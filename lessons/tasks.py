"""Task kinds the lessons send. Workers import this module (``handler_modules``) so that
spawned processes, which start with a fresh interpreter, know these kinds too."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from multiprocessing.synchronize import Lock as MpLock
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from consumer.handlers import registry
from lessons.ticket_office import Guard, buy

#: The `multiprocessing.Lock` handed down by the parent (set by `share_lock` when a local
#: worker starts). None in a process that has no parent to get it from.
shared_lock: MpLock | None = None
_own_lock: MpLock | None = None
_own_lock_guard = threading.Lock()


def share_lock(lock: MpLock) -> None:
    """A worker's initializer (`WorkerSpec.initializer`, see `runner.local_pool`): keep the
    parent's Lock for the ticket buyers, who are only given their payload."""
    global shared_lock
    shared_lock = lock


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeqPayload(_Payload):
    seq: int
    #: Work time in ms, so that with several workers some finish out of turn.
    jitter_ms: float = Field(default=0, ge=0)


class TicketPayload(_Payload):
    seq: int
    store: str
    purchase: str
    delay: float = Field(ge=0)
    guard: Guard


class CrashPayload(_Payload):
    seq: int
    crash_at: int
    marker: str
    #: Seconds of work before the crash.
    work: float = Field(default=0, ge=0)


class TallyPayload(_Payload):
    file: str
    seconds: float = Field(default=0, ge=0)
    seq: int = 0


class SpinPayload(_Payload):
    rounds: int = Field(ge=0)
    seq: int = 0


@registry.task("lesson.seq")
def numbered(payload: SeqPayload) -> int:
    # A spread of work times that depends only on the number: runs are comparable.
    time.sleep(payload.jitter_ms * ((payload.seq * 7919) % 10) / 10 / 1000)
    return payload.seq


@registry.task("lesson.ticket")
def ticket(payload: TicketPayload) -> dict:
    lock = _lock() if payload.guard is Guard.MP_LOCK else None
    return buy(
        Path(payload.store), payload.purchase, payload.seq, payload.delay, payload.guard, lock
    )


def _lock() -> MpLock:
    """The parent's Lock if this worker was given one; otherwise a Lock of this process
    alone, which is what the seed's code becomes on a consumer nobody handed a Lock to."""
    global _own_lock
    if shared_lock is not None:
        return shared_lock
    with _own_lock_guard:
        if _own_lock is None:
            import multiprocessing

            _own_lock = multiprocessing.get_context("spawn").Lock()
        return _own_lock


@registry.task("lesson.crash-once")
def crash_once(payload: CrashPayload) -> int:
    if payload.seq == payload.crash_at:
        try:  # O_EXCL: only the first worker to get here creates the marker, and dies
            os.close(os.open(payload.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return payload.seq
        time.sleep(payload.work)  # part way through the task...
        os._exit(1)  # a crash: no cleanup, no ack, no result
    return payload.seq


@registry.task("lesson.tally")
def tally(payload: TallyPayload) -> int:
    time.sleep(payload.seconds)
    # One short write with O_APPEND is atomic: lines from several processes never mix.
    fd = os.open(payload.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {payload.seq}\n".encode())
    finally:
        os.close(fd)
    return payload.seq


@registry.task("lesson.spin")
def spin(payload: SpinPayload) -> dict:
    """CPU-bound work, like the core ``cpu`` kind, reporting the CPU time this thread used."""
    start = time.thread_time()
    digest = b""
    for _ in range(payload.rounds):
        digest = hashlib.sha256(digest).digest()
    return {"cpu_s": time.thread_time() - start}
