"""Fixtures of the fault suite.

``TASKSHUTTLE_TEST_BUSY=N`` starts N busy-loop processes (``while True: pass``, see
`tests/busy.py`) for the whole session of this suite, beside the tests, and kills and reaps
them at the end: the fault tests must pass on a machine that is busy with other work, e.g.

    TASKSHUTTLE_TEST_BUSY=3 .venv/bin/python -m pytest tests/fault

Unset, empty or 0: no busy loops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.busy import start_busy, stop_busy
from tests.conftest import require_rabbitmq_server
from tests.rabbit_node import RabbitNode, free_port

BUSY_ENV = "TASKSHUTTLE_TEST_BUSY"


def busy_count() -> int:
    text = os.environ.get(BUSY_ENV, "").strip() or "0"
    if not text.isdigit():
        raise pytest.UsageError(f"{BUSY_ENV} must be a whole number of processes, got {text!r}")
    return int(text)


@pytest.fixture(scope="session", autouse=True)
def _busy_machine() -> Iterator[int]:
    """The busy loops asked for by ``TASKSHUTTLE_TEST_BUSY`` (how many run)."""
    procs = start_busy(busy_count())
    try:
        yield len(procs)
    finally:
        stuck = stop_busy(procs)
        assert not stuck, f"busy loops {stuck} did not die on SIGKILL"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test's own, to stop, restart or kill (never the shared one)."""
    require_rabbitmq_server()
    with RabbitNode(free_port(), f"ts-restart-{os.getpid()}", tmp_path) as node:
        node.start(timeout=60)
        yield node
