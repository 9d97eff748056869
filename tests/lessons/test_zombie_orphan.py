"""僵尸进程与孤儿进程: the zombie really is Z until joined; the orphan really changes parent;
a killed supervisor leaves no stray worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lessons import procs, zombie_orphan
from lessons.runner import ROOT, project_env


def _check(result: zombie_orphan.ZombieOrphan) -> None:
    for zombie in result.zombies:
        assert zombie.state_running not in (None, "Z")
        assert zombie.state_exited == "Z"
        assert zombie.state_later == "Z"  # nobody but the parent reaps it
        assert zombie.state_joined is None  # join() did
        assert zombie.exitcode == 0

    pool = result.pool
    assert pool.state_before_check == "Z"
    assert pool.state_after_check is None
    assert pool.replacement_pid not in (None, pool.killed_pid)
    assert pool.workers_after == 2

    orphan = result.orphan
    assert orphan.ppid_before == orphan.parent_pid
    assert orphan.ppid_after == orphan.home_pid != orphan.parent_pid
    assert orphan.state_after not in (None, "Z")  # alive without its parent

    guard = result.guard
    workers = [c for c in guard.children if c.role == "worker"]
    assert len(workers) >= 2
    assert guard.strays == 0
    for child in guard.children:
        assert child.seconds is not None, child  # it ended by itself
        assert child.ppid_after != guard.supervisor_pid


@pytest.mark.timeout(90)
def test_local() -> None:
    _check(zombie_orphan.run("local"))


@pytest.mark.timeout(90)
def test_rabbitmq(broker_url: str) -> None:
    _check(zombie_orphan.run("rabbitmq", broker_url))


def _ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        parent = procs.parent_of(pid)
        if parent is None:
            break
        found.append(parent)
        pid = parent
    return found


@pytest.mark.timeout(30)
def test_the_machines_welfare_home_is_named() -> None:
    home = zombie_orphan.machine_home()
    assert home.orphan_pid != os.getpid()
    # pid 1, or a subreaper among this process's ancestors: nothing else can adopt it.
    assert home.adopter_pid == 1 or home.adopter_pid in _ancestors(os.getpid())
    assert home.adopter_name not in ("", "?")


@pytest.mark.timeout(90)
def test_the_lesson_prints_no_stray_log_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lessons", "zombie-orphan", "--lang", "en"],
        cwd=ROOT,
        env=project_env(),
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "WARNING" not in done.stdout
    assert done.stdout.lstrip().startswith("僵尸进程与孤儿进程 · zombie and orphan processes")
    assert "went to pid" in done.stdout  # the orphan's new parent, named
