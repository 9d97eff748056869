"""The dashboard as a user runs it: a subprocess on a free port, against the test broker."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import output_of, start, stop, wait_until

TOKEN_HEADER = "X-Dashboard-Token"


@dataclass
class Running:
    process: subprocess.Popen[str]
    url: str  # as printed: with ?token=

    @property
    def base(self) -> str:
        return self.url.split("?", 1)[0]

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def token(self) -> str:
        return self.url.split("token=", 1)[1]

    def state(self) -> dict[str, Any]:
        status, body = request(f"{self.base}api/state?token={self.token}")
        assert status == 200, body
        return body

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 20):
        """Wait until `check` holds for the dashboard's state; the last state if it never did
        (with `what` in the failure)."""
        seen: list[dict[str, Any]] = [{}]

        def holds() -> bool:
            seen[0] = self.state()
            return check(seen[0])

        if not wait_until(holds, timeout, interval=0.3):
            shown = {k: seen[0].get(k) for k in ("totals", "depths", "events", "dlq")}
            raise AssertionError(f"dashboard never showed {what} within {timeout}s: {shown}")
        return seen[0]


def request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any]:
    """(status, JSON body or text) of one HTTP request; an HTTP error is an answer too."""
    data = None if body is None else json.dumps(body).encode()
    sent = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def start_dashboard(*args: str, timeout: float = 30) -> Running:
    """``consumer dashboard ARGS --port 0``, once it has printed its URL."""
    process = start("tests.dashboard.launch", *args, "--port", "0")
    printed = lambda: "dashboard: " in output_of(process)[0]  # noqa: E731
    if not wait_until(lambda: printed() or process.poll() is not None, timeout):
        stop(process, timeout=10)
        raise AssertionError(f"the dashboard printed no URL within {timeout}s")
    out, err = output_of(process)
    assert printed(), f"the dashboard exited: {err}"
    url = next(line for line in out.splitlines() if line.startswith("dashboard: "))[11:]
    return Running(process, url.strip())


@pytest.fixture
def dashboard(broker_url: str, queue_name: str) -> Iterator[Running]:
    """The dashboard of this test's queue; stopped with SIGTERM afterwards, which must end it
    within seconds and with exit code 0, open streams or not."""
    running = start_dashboard("--url", broker_url, "--queue", queue_name)
    yield running
    began = time.monotonic()
    code, _out, err = stop(running.process, timeout=15)
    assert code == 0, err
    assert time.monotonic() - began < 10, "the dashboard took long to stop"
