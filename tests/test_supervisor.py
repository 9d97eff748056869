"""Worker processes: reaped when they exit, replaced when they die, within a budget."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.backend import Delivery, WorkerBackend
from common.errors import ConnectionLost
from common.local import LocalBroker
from common.schemas import TaskEnvelope, encode
from common.settings import load_settings
from consumer.middleware import backoff_delay
from consumer.spec import WorkerSpec
from consumer.supervisor import CrashLoop, WorkerPool
from consumer.worker import WorkerOptions
from tests.helpers import ROOT, children_of, process_state, program, wait_until

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
    """Workers that die while they run a task count toward the restart budget."""
    backend = LocalBroker(slots=1, batch_size=1)
    spec = WorkerSpec(load_settings(workers=1, prefetch=1), WorkerOptions())
    pool = WorkerPool(spec, 1, slots=backend.slots, restart_budget=2)
    backend.publish([TaskEnvelope(kind="sleep", payload={"seconds": 30}) for _ in range(5)])
    pool.start()
    try:
        assert pool.wait_ready(30)
        with pytest.raises(CrashLoop, match="2 workers died within 60s while running a task"):
            for _ in range(5):
                assert wait_until(lambda: (pool.check(), pool.in_hand() == 1)[1], 30)
                pid = pool.pids[0]
                os.kill(pid, signal.SIGKILL)
                assert wait_until(lambda pid=pid: process_state(pid) in (None, "Z"), 10)
                pool.check(5)
    finally:
        pool.stop(timeout=0)
        backend.close()


@dataclass(frozen=True)
class LosesItsBroker:
    """A worker's backend whose connection drops as it acks its first task."""

    def connect(self, settings: object) -> WorkerBackend:
        return _LosingBackend()


class _LosingBackend(WorkerBackend):
    name = "losing"

    def receive(self, timeout: float) -> Delivery | None:
        time.sleep(0.05)  # a task now and then, not a hot loop
        return Delivery(encode(TaskEnvelope(kind="echo")), redelivered=False, handle=None)

    def ack(self, delivery: Delivery, result: object = None) -> None:
        raise ConnectionLost("connection lost (the broker restarted)")

    publish = dead_letter = requeue = ack  # type: ignore[assignment]

    def pending(self) -> int:
        return 1


def test_a_worker_that_loses_its_broker_mid_task_does_not_count_toward_the_budget() -> None:
    spec = WorkerSpec(load_settings(workers=1), WorkerOptions(), backend=LosesItsBroker())
    pool = WorkerPool(spec, 1, restart_budget=1)
    pool.start()
    try:
        assert pool.wait_ready(30)
        # Every task's settlement meets a lost connection: the delivery is left for the
        # broker to hand out again, and the worker goes on; nothing dies, nothing is counted.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            pool.check(0.1)
        assert pool.deaths == []
        assert not pool.restarts.counted
        assert pool.alive() == 1
    finally:
        pool.stop(timeout=5)


def test_stop_reaps_every_worker() -> None:
    pool, backend = _local_pool(3)
    pool.start()
    assert pool.wait_ready(30)
    pids = pool.pids
    pool.stop()
    backend.close()
    assert all(process_state(pid) is None for pid in pids)


def test_a_worker_dead_in_the_middle_of_a_write_does_not_stall_the_parent() -> None:
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


def _session(sid: int) -> list[int]:
    """Live processes of session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[4]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def test_ctrl_c_while_local_workers_start_stops_cleanly() -> None:
    """A terminal's Ctrl-C reaches the whole process group, workers still importing
    included: no traceback, no replacement started after it, no process left."""
    args = ("--backend", "local", "--workers", "4", "--count", "100000", "--json", "--quiet")
    producer = subprocess.Popen(
        program("producer", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    try:
        assert wait_until(lambda: len(children_of(producer.pid)) >= 3, 30, interval=0.01)
        os.killpg(producer.pid, signal.SIGINT)
        _out, err = producer.communicate(timeout=60)
    finally:
        if producer.poll() is None:
            os.killpg(producer.pid, signal.SIGKILL)
            producer.wait()
    assert "Traceback" not in err, err
    assert producer.returncode == 130, err
    assert "died with exit code" not in err  # no worker died of it, none was replaced
    assert wait_until(lambda: not _session(producer.pid), 10), _session(producer.pid)
