"""`producer --backend local -v`: each task's steps, logged by the parent for its workers."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run

pytestmark = pytest.mark.timeout(60)

LINE = re.compile(
    r"(?P<worker>worker-\d) \(pid (?P<pid>\d+)\): (?P<kind>\w+)\[(?P<id>\w+)\] (?P<what>.*)$"
)


def test_verbose_logs_each_task_with_the_worker_that_ran_it() -> None:
    done = run(
        # Tasks that take a moment: echo tasks could all go to the first worker to wake up
        # on a loaded machine, before the second is scheduled at all.
        "producer", "--backend", "local", "--count", "12", "--kind", "sleep",
        "--payload", '{"seconds": 0.05}', "--workers", "2", "--json", "-v",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    steps: dict[str, list[str]] = {}
    pids: dict[str, str] = {}
    for line in done.stderr.splitlines():
        if (match := LINE.search(line)) is None:
            continue
        steps.setdefault(match["id"], []).append(match["what"].split(" ")[0])
        pids[match["worker"]] = match["pid"]
    assert len(steps) == 12
    assert all(what == ["received", "succeeded"] for what in steps.values()), steps
    assert len(pids) == 2 and len(set(pids.values())) == 2  # two workers, each its own pid
    assert "MainProcess" in done.stderr  # logged by the parent, not by the workers


def test_without_verbose_no_task_is_logged() -> None:
    done = run("producer", "--backend", "local", "--count", "5", "--kind", "echo", "--json")
    assert done.returncode == 0, done.stderr
    assert not any(LINE.search(line) for line in done.stderr.splitlines()), done.stderr
