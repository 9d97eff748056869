"""Every lesson test must leave no process behind: no worker, no orphan, no zombie."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lessons import procs


def _leftovers() -> list[tuple[int, str | None, str]]:
    # multiprocessing's resource tracker is started once and lives as long as this process.
    return [
        (pid, procs.state(pid), procs.role(pid))
        for pid in procs.children_of(os.getpid())
        if procs.role(pid) != "resource tracker"
    ]


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    before = {pid for pid, _, _ in _leftovers()}
    yield
    procs.wait_for(lambda: not [p for p in _leftovers() if p[0] not in before], 10)
    left = [p for p in _leftovers() if p[0] not in before]
    assert left == [], f"processes left behind (pid, state, role): {left}"
