"""Task kinds for fault tests, loaded by workers with ``--handlers tests.fault_tasks``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from consumer.handlers import registry


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
