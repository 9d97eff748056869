"""What each worker process notes while it runs (first and last message, count) and reports
at exit with its peak RSS; and reading those reports back in the case process.

Imported by every worker the harness starts (through `bench.tasks`), so it stays light.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import time
from pathlib import Path
from typing import Any

from bench.config import CaseError

#: Environment variable naming the folder where workers write their stamps at exit.
STAMPS_ENV = "TASKSHUTTLE_BENCH_STAMPS"


def peak_rss_kib(pid: int) -> int | None:
    """The peak resident set of a process in KiB, or None once it is gone.

    The kernel's own high-water mark (``VmHWM``): psutil has no peak RSS, and
    ``getrusage().ru_maxrss`` of a spawned worker starts at its parent's peak (the kernel
    carries the high-water mark over an exec). Where ``/proc`` is missing, psutil's current
    RSS stands in: sampled often enough, its largest reading is close to the peak.
    """
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/{pid}/status") as status,
    ):
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import psutil  # only where /proc gave no answer, so workers seldom load it

    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except psutil.Error:
        return None


class Stamps:
    """When a worker handled its first and last message, and how many: a few hundred ns each."""

    __slots__ = ("count", "first", "last")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0

    def hit(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "first": self.first,
            "last": self.last,
            "count": self.count,
            "vmhwm_kib": peak_rss_kib(os.getpid()),
        }

    def dump(self, directory: str) -> None:
        path = Path(directory) / f"{os.getpid()}.json"
        path.write_text(json.dumps(self.as_dict()))


class LiveStamps:
    """`Stamps` kept in a small memory-mapped file of this process's own, updated in place
    at each hit (a few hundred ns), so the harness reads them while the worker runs: for
    worker programs that do not leave through an exit path the harness controls (Celery's
    and Dramatiq's), whose last task is otherwise known only as "the queue looked empty",
    which their prefetch makes too early."""

    __slots__ = ("_map", "count", "directory", "first")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.first = 0.0
        self.count = 0
        self._map: mmap.mmap | None = None

    def hit(self) -> None:
        now = time.perf_counter()
        if self._map is None:
            self.first = now
            self._map = _new_map(Path(self.directory) / f"{os.getpid()}.live")
        self.count += 1
        _LIVE.pack_into(self._map, 0, self.first, now, self.count)


#: first, last (perf_counter), count.
_LIVE = struct.Struct("ddq")


def _new_map(path: Path) -> mmap.mmap:
    with open(path, "w+b") as file:
        file.truncate(_LIVE.size)
        return mmap.mmap(file.fileno(), _LIVE.size)


def read_live_stamps(directory: str | Path) -> list[dict[str, Any]]:
    """What every `LiveStamps` of `directory` holds now (as `read_stamps` gives it)."""
    found = []
    for path in sorted(Path(directory).glob("*.live")):
        with contextlib.suppress(OSError, struct.error):
            first, last, count = _LIVE.unpack(path.read_bytes()[: _LIVE.size])
            pid = int(path.stem)
            found.append(
                {"pid": pid, "first": first, "last": last, "count": count,
                 "vmhwm_kib": peak_rss_kib(pid)}
            )  # fmt: skip
    return found


def read_stamps(directory: str | Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            found.append(json.loads(path.read_text()))
    return found


def stamp_window(stamps: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(first, last, count) over every worker that handled anything."""
    busy = [s for s in stamps if s.get("count")]
    if not busy:
        raise CaseError("no worker reported handling a message")
    return (
        min(s["first"] for s in busy),
        max(s["last"] for s in busy),
        sum(s["count"] for s in busy),
    )
