"""Processes of the chaos run: the consumer under test, its workers, and what must be gone.

Everything is read from /proc (psutil is not a dependency). Each consumer runs in a session
of its own, so its process group holds exactly the supervisor and what it started (workers,
multiprocessing's resource tracker): "left behind" means a live member of that group once
the supervisor is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

from tests.helpers import ROOT, children_of

#: Runs a program with PR_SET_PDEATHSIG set (it survives exec): if the harness itself is
#: SIGKILLed, the consumer goes with it instead of running on unseen.
WITH_PARENT = """
import ctypes, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    os._exit(70)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := stat(int(entry.name))) is not None:
            state, _ppid, group = info
            if group == pgid and state != "Z":
                found.append(int(entry.name))
    return found


def describe(pid: int) -> str:
    info = stat(pid)
    state = info[0] if info else "gone"
    return f"pid {pid} [{state}] {cmdline(pid)[:100]}"


class Consumer:
    """One `python -m consumer` run by the harness, its output in a file of its own."""

    def __init__(self, number: int, args: list[str], log_path: Path) -> None:
        self.number = number
        self.log_path = log_path
        self._log: IO[bytes] | None = open(log_path, "wb")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WITH_PARENT, str(os.getpid()), "-m", "consumer", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        #: True once the harness has SIGKILLed or SIGTERMed it: its exit is then expected.
        self.ended_by_harness = False
        #: When the harness SIGKILLed one of its workers.
        self.worker_kills: list[float] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        """The supervisor's worker processes (multiprocessing's spawned children)."""
        return [p for p in children_of(self.pid) if "spawn_main" in cmdline(p)]

    def exited_by_itself(self) -> bool:
        return not self.ended_by_harness and self.proc.poll() is not None

    def kill(self) -> None:
        """SIGKILL the supervisor alone (its workers must follow by themselves) and reap it."""
        if self.proc.poll() is None:  # one that exited already did so by itself
            self.ended_by_harness = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, as a service manager stops it; its exit code, or None if it did not exit
        within `timeout` (then its whole group is SIGKILLed)."""
        if self.proc.poll() is None:
            self.ended_by_harness = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return None

    def leftovers(self, within: float) -> list[str]:
        """Members of its process group still alive `within` seconds from now (none, when
        the consumer is correct); whatever is left is then SIGKILLed."""
        deadline = time.monotonic() + within
        while (left := group_members(self.pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        found = [describe(pid) for pid in left]
        if left:
            self.kill_group()
        return found

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def tail(self, lines: int = 3) -> str:
        """Its last lines, on one line (for the event table)."""
        text = [line.strip() for line in self.output().splitlines()]
        text = [line for line in text if line.strip("^~ ")]  # no traceback underlines
        return " | ".join(text[-lines:])

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def consumer_summary(consumers: list[Consumer], exits: int) -> dict[str, object]:
    """What the consumers printed, counted (information only: no verdict rests on it)."""
    deaths: Counter[str] = Counter()
    reconnects = 0
    for consumer in consumers:
        text = consumer.output()
        deaths.update(re.findall(r"died with exit code (-?\d+)", text))
        reconnects += text.count("reconnected to")
    return {
        "started": len(consumers),
        "exited_by_itself": exits,
        "worker_deaths_by_exit_code": dict(sorted(deaths.items())),
        "worker_reconnects": reconnects,
    }
