"""The ``noop`` task kind the harness sends to taskshuttle workers (``--handlers bench.tasks``).

The handler does nothing but note the time (two clock reads' worth of work), so a run
measures the queue, not the task. Where `STAMPS_ENV` names a folder, each worker process
writes its stamps there when it exits: first and last message handled, count, peak RSS.
"""

from __future__ import annotations

import multiprocessing.util
import os
import time
from typing import Any

from bench.stamps import STAMPS_ENV, Stamps
from consumer.handlers import registry

stamps = Stamps()


@registry.task("noop")
def noop(payload: dict[str, Any]) -> None:
    stamps.hit()


@registry.task("timeline")
def timeline(payload: dict[str, Any]) -> dict[str, float]:
    """For `bench.timeline`: when the handler started and ended, on the wall clock."""
    started = time.time()
    return {"start": started, "end": time.time()}


if os.environ.get(STAMPS_ENV):
    # Worker processes leave through multiprocessing's exit path, which runs these
    # finalizers (plain `atexit` hooks do not run in multiprocessing children).
    multiprocessing.util.Finalize(
        None, stamps.dump, args=(os.environ[STAMPS_ENV],), exitpriority=50
    )
