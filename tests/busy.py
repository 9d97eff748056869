"""Busy-loop processes: load every CPU the way other work on a shared machine does.

Each is ``python -c 'while True: pass'`` with two guards added, so that it never outlives
the process that started it, even one that is SIGKILLed: it asks the kernel for SIGKILL when
its parent goes (``PR_SET_PDEATHSIG``, tied to the *thread* that started it: start busy loops
from a thread that lives as long as they should) and exits at once if its parent was already
gone by then.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

BUSY_CODE = """
import ctypes, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(0)
while True:
    pass
"""


def start_busy(count: int) -> list[subprocess.Popen[bytes]]:
    """Start `count` busy loops, each in a session of its own (a Ctrl-C in the terminal is
    for the caller, who stops them)."""
    procs = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", BUSY_CODE, str(os.getpid())],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
    except BaseException:
        stop_busy(procs)
        raise
    return procs


def stop_busy(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGKILL and reap each busy loop; return the pids of any that would not die (none)."""
    stuck = []
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            stuck.append(proc.pid)
    return stuck
