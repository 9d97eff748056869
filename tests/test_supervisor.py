"""Worker processes: reaped when they exit, replaced when they die, within a budget."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from common.local import LocalBroker
from common.settings import load_settings
from consumer.supervisor import CrashLoop, WorkerPool, WorkerSpec
from consumer.worker import WorkerOptions, backoff_delay
from tests.helpers import children_of, process_state, wait_until

pytestmark = pytest.mark.timeout(60)


def _local_pool(count: int, **kwargs: object) -> tuple[WorkerPool, LocalBroker]:
    backend = LocalBroker(slots=count)
    spec = WorkerSpec(load_settings(workers=count), WorkerOptions())
    return WorkerPool(spec, count, slots=backend.slots, **kwargs), backend  # type: ignore[arg-type]


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


def test_a_worker_dead_in_the_middle_of_a_write_does_not_stall_the_parent() -> None:
    from common.schemas import TaskEnvelope

    backend = LocalBroker(slots=1)
    try:
        backend.publish([TaskEnvelope(kind="echo")])
        worker = backend.slots.worker_end(0)  # this process plays the worker of slot 0
        assert worker.receive(5) is not None  # it holds the task
        # ... and dies after writing a message header that promises 1,000 bytes, and 10.
        writer = worker._writer
        os.write(writer.fileno(), (1000).to_bytes(4, "big") + b"x" * 10)
        recovered: list[int] = []
        recovering = threading.Thread(target=lambda: recovered.append(backend.slots.on_death(0)))
        recovering.daemon = True  # a blocked read cannot be interrupted: do not wait on it
        recovering.start()
        recovering.join(5)
        assert recovered == [1]  # no wait for the rest of the message: the task goes back
        assert backend.slots.worker_end(0).receive(5) is not None
    finally:
        backend.close()
