"""线程: threads of one process keep at most one core busy with Python code (the GIL), yet
run sleeping tasks at the same time; processes are separate pids."""

from __future__ import annotations

import os

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


@pytest.mark.timeout(60)
def test_threads_share_one_pid_and_the_data_of_their_process() -> None:
    b = threads.basics(count=3)
    assert {s.pid for s in [b.main, *b.threads]} == {os.getpid()}
    assert b.main.name == "MainThread"
    assert len({s.name for s in b.threads}) == 3
    assert len({s.native_id for s in [b.main, *b.threads]}) == 4  # one kernel thread each
    assert b.after_thread == 0  # a thread changed the main thread's global
    assert b.after_process == 100  # a child process changed only its own copy


@pytest.mark.timeout(60)
def test_a_shared_counter_loses_updates_without_a_lock_and_none_with_one() -> None:
    # The read and the write are 1 ms apart and four threads start together at a barrier: a
    # run without the lock cannot avoid losing updates, however loaded the machine (a busier
    # machine only widens the gap). With the lock the count is exact, always.
    for _ in range(3):
        unlocked = threads.race(False, threads=4, rounds=50)
        assert unlocked.expected == 200
        assert unlocked.lost > 0
        assert unlocked.got == unlocked.expected - unlocked.lost
        locked = threads.race(True, threads=4, rounds=50)
        assert (locked.got, locked.lost) == (200, 0)


def test_the_text_follows_the_figures() -> None:
    def row(workload: str, pool: str, n: int, speedup: float) -> threads.ThreadRun:
        return threads.ThreadRun("local", workload, pool, n, 8, 1.0, speedup, 1.0, 1, n)

    def said(cpu_processes: float, cpu_threads: float) -> str:
        result = threads.Threads(
            "local",
            2,
            [
                row("cpu", "process", 2, cpu_processes),
                row("cpu", "thread", 2, cpu_threads),
                row("sleep", "process", 2, 1.9),
                row("sleep", "thread", 2, 1.95),
            ],
            load=3.0,
            cores=2,
        )
        return " ".join(threads.conclusions(result))

    from lessons.i18n import Lang, set_language

    set_language(Lang.en)
    assert "ran side by side" in said(1.9, 1.0)
    assert "only x1.17" in said(1.17, 1.0)  # a loaded machine: no claim of side by side
    assert "ran side by side" not in said(1.17, 1.0)
    assert "more than the GIL should allow" in said(1.9, 1.6)
