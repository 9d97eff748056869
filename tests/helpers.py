"""Running the real programs as subprocesses, and cleaning up after them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def program(name: str, *args: str) -> list[str]:
    """The command line of `producer` or `consumer`, run by this test's Python."""
    return [sys.executable, "-m", name, *args]


def run(
    name: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        program(name, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def start(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        program(name, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def stop(
    process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30
) -> tuple[int, str, str]:
    """Signal a program, wait for it (killing it if it hangs), return (code, out, err)."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(
            f"{process.args} did not exit within {timeout}s; stderr: {err}"
        ) from None
    return process.returncode, out, err


def json_summary(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat (R, S, Z...), None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_until(condition: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
