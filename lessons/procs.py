"""Looking at processes from the outside, the way `ps` does: through Linux's /proc.

`/proc/<pid>/stat` holds a process's one-letter state (R running, S sleeping, Z zombie...)
and its parent's pid. A zombie still has its entry there; a reaped process has none.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROC = Path("/proc")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text.rsplit(")", 1)[1].split()


def state(pid: int) -> str | None:
    """R, S, D, Z... or None once the process is gone (reaped)."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    return state(pid) not in (None, "Z")


def children_of(pid: int) -> list[int]:
    """Every process (zombies included) whose parent is `pid`."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return sorted(found)


def role(pid: int) -> str:
    """What a Python child process is for, read from its command line."""
    try:
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    if "spawn_main" in cmdline:
        return "worker"
    return cmdline.strip()[:40]


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (Linux), instead of letting them go to init.

    This is the seed's "children's welfare home": when a parent dies, the kernel gives its
    children to the nearest ancestor that asked for them, or to pid 1.
    """
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux), as the
    project's workers do: no stray orphans if the lesson is killed."""
    if sys.platform == "linux":
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def describe_exit(status: int) -> str:
    """An `os.waitpid` status in words."""
    if os.WIFSIGNALED(status):
        import signal

        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


def _home(answer: Any, work: Callable[..., Any], args: tuple[Any, ...]) -> None:
    become_subreaper()
    try:
        answer.put(work(*args))
    except Exception as exc:  # carried back as one line
        answer.put(RuntimeError(str(exc)))
    # Reap whatever was adopted and has ended (orphans of the work): no zombie left.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)


def in_welfare_home(work: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    """Run `work(*args)` in a child process that adopts its orphans (a child subreaper) and
    reaps them, so that a lesson that kills a supervisor leaves no orphan to pid 1.
    `work` must be a module-level function; its result must pickle."""
    from common.local import MP_CONTEXT

    answer = MP_CONTEXT.Queue()
    home = MP_CONTEXT.Process(target=_home, args=(answer, work, args), name="welfare-home")
    home.start()
    try:
        got = answer.get(timeout=timeout)
    finally:
        home.join(30)
        answer.close()
        answer.join_thread()
    if isinstance(got, RuntimeError):
        from common.errors import TaskshuttleError

        raise TaskshuttleError(str(got))
    return got
