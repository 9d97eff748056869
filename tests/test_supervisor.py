"""Worker processes: reaped when they exit, replaced when they die, within a budget."""

from __future__ import annotations

import os
import signal

import pytest

from common.local import LocalBackend
from common.settings import load_settings
from consumer.supervisor import CrashLoop, WorkerPool, WorkerSpec
from consumer.worker import WorkerOptions, backoff_delay
from tests.helpers import children_of, process_state, wait_until

pytestmark = pytest.mark.timeout(60)


def _local_pool(count: int, **kwargs: object) -> tuple[WorkerPool, LocalBackend]:
    backend = LocalBackend(slots=count)
    spec = WorkerSpec(load_settings(workers=count), WorkerOptions(), local=backend)
    return WorkerPool(spec, count, on_death=backend.recover, **kwargs), backend  # type: ignore[arg-type]


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert backoff_delay(1, 1.0, 60, rand=lambda: 1.0) == 1.0
    assert backoff_delay(3, 1.0, 60, rand=lambda: 1.0) == 4.0
    assert backoff_delay(3, 1.0, 60, rand=lambda: 0.0) == 2.0  # at least half
    assert backoff_delay(20, 1.0, 60, rand=lambda: 1.0) == 60  # capped


def test_dead_worker_is_reaped_and_replaced() -> None:
    pool, backend = _local_pool(2)
    pool.start()
    try:
        assert pool.wait_ready(30)
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: (pool.check(0.1), victim not in pool.pids)[1], 10)
        assert process_state(victim) is None  # joined: no zombie left behind
        assert len(pool.pids) == 2 and pool.alive() == 2
        assert pool.deaths == [(victim, -signal.SIGKILL)]
    finally:
        pool.stop()
        backend.close()
    assert children_of(os.getpid()) == [] or all(process_state(pid) is None for pid in pool.pids)


def test_crash_loop_stops_with_a_clear_error() -> None:
    pool, backend = _local_pool(1, restart_budget=2)
    pool.start()
    try:
        assert pool.wait_ready(30)
        with pytest.raises(CrashLoop, match="2 workers died within 60s"):
            for _ in range(5):
                pid = pool.pids[0]
                os.kill(pid, signal.SIGKILL)
                assert wait_until(lambda pid=pid: process_state(pid) in (None, "Z"), 10)
                pool.check(5)
                pool.wait_ready(30)
    finally:
        pool.stop()
        backend.close()


def test_stop_reaps_every_worker() -> None:
    pool, backend = _local_pool(3)
    pool.start()
    assert pool.wait_ready(30)
    pids = pool.pids
    pool.stop()
    backend.close()
    assert all(process_state(pid) is None for pid in pids)
