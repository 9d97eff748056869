"""线程: threads of one process keep at most one core busy with Python code (the GIL), yet
run sleeping tasks at the same time; processes are separate pids."""

from __future__ import annotations

import pytest

from lessons import threads

CPU = {"tasks": 6, "rounds": 60_000}
SLEEP = {"tasks": 8, "nap": 0.1}


def _check(backend: str, url: str | None) -> None:
    cpu_threads = threads.measure(backend, "cpu", "thread", 2, url=url, **CPU)
    assert cpu_threads.tasks == 6
    assert cpu_threads.pids == 1
    assert cpu_threads.cores_busy is not None
    assert cpu_threads.cores_busy <= 1.25  # never more than one core: the GIL
    cpu_processes = threads.measure(backend, "cpu", "process", 2, url=url, **CPU)
    assert cpu_processes.pids == 2
    sleep_threads = threads.measure(backend, "sleep", "thread", 4, url=url, **SLEEP)
    assert sleep_threads.pids == 1
    assert sleep_threads.at_once >= 2  # sleeping threads overlap


@pytest.mark.timeout(90)
def test_local() -> None:
    _check("local", None)


@pytest.mark.timeout(120)
def test_rabbitmq(broker_url: str) -> None:
    _check("rabbitmq", broker_url)
