"""Task kinds for the local backend's fault tests (``handler_modules=("tests.local_tasks",)``).

Each picks one task of a job, the first to start, to misbehave: a job sends one kind with one
payload, and the test needs one bad task among good ones.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from consumer.handlers import TaskContext, registry


class FirstOne(BaseModel):
    #: A file the first task to start creates, with its id in it.
    marker: str
    seconds: float = 0.0


def _is_first(payload: FirstOne, context: TaskContext) -> bool:
    """True for the task that started first, every time it runs."""
    try:
        fd = os.open(payload.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return Path(payload.marker).read_text() == context.task_id
    with os.fdopen(fd, "w") as marker:
        marker.write(context.task_id)
    return True


@registry.task("slow-first")
def slow_first(payload: FirstOne, context: TaskContext) -> int:
    """The first task sleeps `seconds`; the others return at once."""
    if _is_first(payload, context):
        time.sleep(payload.seconds)
    return os.getpid()


@registry.task("kill-first")
def kill_first(payload: FirstOne, context: TaskContext) -> int:
    """The first task ends its worker process at once, however often it is run, as a
    segfault in a C extension or the OOM killer would."""
    if _is_first(payload, context):
        os._exit(3)
    return os.getpid()
