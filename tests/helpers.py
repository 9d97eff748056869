"""Running the real programs as subprocesses, and cleaning up after them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

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
    """Start a program with its output going to files, so it never blocks on a full pipe
    and a test can read what it printed so far (`output_of`)."""
    out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by stop()
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115
    process = subprocess.Popen(
        program(name, *args),
        stdout=out,
        stderr=err,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    _OUTPUT[process.pid] = (out, err)
    _STARTED[process.pid] = process
    return process


_OUTPUT: dict[int, tuple[IO[str], IO[str]]] = {}
_STARTED: dict[int, subprocess.Popen[str]] = {}


def kill_leftovers() -> list[int]:
    """SIGKILL and reap every program a test started and did not stop (after a failure)."""
    leftovers = list(_STARTED.values())
    for process in leftovers:
        stop(process, signal.SIGKILL, timeout=10)
    return [p.pid for p in leftovers]


def output_of(process: subprocess.Popen[str]) -> tuple[str, str]:
    """What the program has printed so far: (stdout, stderr)."""
    texts = []
    for stream in _OUTPUT[process.pid]:
        stream.flush()
        stream.seek(0)
        texts.append(stream.read())
    return texts[0], texts[1]


def wait_for_output(process: subprocess.Popen[str], text: str, timeout: float = 30) -> None:
    """Wait until the program's stderr says `text` (e.g. that its workers are ready)."""
    if not wait_until(lambda: text in output_of(process)[1] or process.poll() is not None, timeout):
        raise AssertionError(f"{process.args} did not say {text!r} within {timeout}s")
    assert text in output_of(process)[1], output_of(process)[1]


def stop(
    process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30
) -> tuple[int, str, str]:
    """Signal a program, wait for it (killing it if it hangs), return (code, out, err)."""
    if sig and process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(
            f"{process.args} did not exit within {timeout}s; stderr: {output_of(process)[1]}"
        ) from None
    out, err = output_of(process)
    _STARTED.pop(process.pid, None)
    for stream in _OUTPUT.pop(process.pid):
        stream.close()
    return process.returncode, out, err


def finish(process: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    """Wait for a program to exit by itself; return (code, out, err)."""
    return stop(process, sig=0, timeout=timeout)


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


def receive_within(backend: Any, timeout: float = 10.0) -> Any:
    """The next delivery a worker backend hands out within `timeout` seconds, or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery = backend.receive(0.2)
        if delivery is not None:
            return delivery
    raise AssertionError(f"nothing received within {timeout}s")


def result_for(task: Any, *, redelivered: bool = False, value: Any = None) -> Any:
    """A done `TaskResult` for `task`, as a worker would send it back."""
    from common.schemas import TaskResult, TaskStatus, utcnow

    now = utcnow()
    return TaskResult(
        task_id=task.id,
        kind=task.kind,
        status=TaskStatus.DONE,
        attempt=task.attempt,
        redelivered=redelivered,
        worker_pid=1,
        worker_ppid=0,
        worker_host="h",
        worker_name="w",
        started_at=now,
        finished_at=now,
        created_at=task.created_at,
        value=value,
    )
