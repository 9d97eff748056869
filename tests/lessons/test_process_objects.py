"""进程对象: every result names its worker's pid and ppid; terminate() then join()."""

from __future__ import annotations

import os
import signal

import pytest

from lessons import process_objects


@pytest.mark.timeout(60)
def test_local_workers_are_children_of_this_process() -> None:
    result = process_objects.run("local", tasks=10, tries=2)
    assert result.me.pid == result.me.getpid == os.getpid()
    assert result.me.getppid == os.getppid()
    assert result.child.getppid == os.getpid()
    assert result.child.pid == result.child.getpid != os.getpid()
    for attempt in result.terminations:
        assert attempt.alive_after_join is False
        assert attempt.exitcode == -signal.SIGTERM
    assert sum(w.tasks for w in result.workers) == 10
    assert {w.ppid for w in result.workers} == {os.getpid()} == {result.supervisor_pid}
    assert all(w.name.startswith("worker-") for w in result.workers)


@pytest.mark.timeout(90)
def test_rabbitmq_workers_are_children_of_the_consumer(broker_url: str) -> None:
    result = process_objects.run("rabbitmq", broker_url, tasks=10, tries=1)
    assert sum(w.tasks for w in result.workers) == 10
    assert {w.ppid for w in result.workers} == {result.supervisor_pid}
    assert result.supervisor_pid != os.getpid()
    assert os.getpid() not in {w.pid for w in result.workers}
