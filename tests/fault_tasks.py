"""Task kinds for fault tests, loaded by workers with ``--handlers tests.fault_tasks``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from consumer.handlers import TaskContext, registry


class Hold(BaseModel):
    seconds: float
    #: A folder where the worker leaves a file, named ``<pid>-<ns>``, as it starts the task.
    started: str


@registry.task("hold")
def hold(payload: Hold) -> int:
    Path(payload.started, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(payload.seconds)
    return os.getpid()


class Tally(BaseModel):
    #: A file that gets one line per attempt.
    log: str


@registry.task("tally-fail")
def tally_fail(payload: Tally) -> None:
    with open(payload.log, "a") as log:
        log.write(f"{os.getpid()}\n")
    raise RuntimeError("fails every time")


@registry.task("die")
def die(payload: dict[str, object]) -> None:
    """Kills its own worker process, as a segfault or the OOM killer would: no exception,
    no `finally`, no goodbye to the broker."""
    os._exit(3)


@registry.task("quit")
def quit_worker(payload: dict[str, object]) -> None:
    """Ends its worker's loop: `SystemExit` is no `Exception`, so it is not a failed
    attempt; it ends a worker process (exit code 3) or a worker thread (``--pool thread``)."""
    raise SystemExit(3)


class Stall(BaseModel):
    seconds: float


@registry.task("stall")
def stall(payload: Stall, context: TaskContext) -> bool:
    """Stuck for `seconds` the first time; done at once when redelivered."""
    if not context.redelivered:
        time.sleep(payload.seconds)
    return context.redelivered
