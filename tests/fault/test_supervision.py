"""The consumer's supervisor under faults of its own workers: a task that kills the worker
running it, a worker thread whose loop dies, a handler stuck when the consumer is stopped."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope, TaskResult
from tests.helpers import finish, output_of, process_state, run, start, stop, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

HANDLERS = ("--handlers", "tests.fault_tasks")


def _results(producer: RabbitBackend, count: int, timeout: float) -> list[TaskResult]:
    results: list[TaskResult] = []
    deadline = time.monotonic() + timeout
    while len(results) < count and time.monotonic() < deadline:
        if (result := producer.receive_result(0.2)) is not None:
            results.append(result)
    return results


def _worker_pids(consumer: subprocess.Popen[str]) -> list[int]:
    """The worker pids the consumer announced when its workers were ready."""
    found = re.search(r"\(pids? ([\d, ]+)\)", output_of(consumer)[1])
    assert found, output_of(consumer)[1]
    return [int(pid) for pid in found.group(1).split(",")]


def _poison_among_others(
    broker_url: str, queue_name: str, kind: str, consumer_args: tuple[str, ...]
) -> None:
    """Three tasks of `kind` (each kills what runs it) among ten that do not: the ten are
    done, the three dead-lettered as ``killed-worker``, and the consumer goes on, though
    their six deaths are more than the restart budget's five."""
    with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
        poison = [TaskEnvelope(kind=kind) for _ in range(3)]
        others = [TaskEnvelope(kind="echo", payload={"n": n}) for n in range(10)]
        producer.publish([*others[:3], poison[0], *others[3:6], *poison[1:], *others[6:]])
        consumer = start("consumer", "--queue", queue_name, *consumer_args, *HANDLERS)
        try:
            results = _results(producer, 13, timeout=150)
            assert consumer.poll() is None, output_of(consumer)[1]  # still consuming
        finally:
            code, _out, err = stop(consumer)
        letters = producer.dead_letters()
    assert code == 0, err
    done = {r.task_id for r in results if r.status == "done"}
    assert done == {t.id for t in others}
    assert sorted((d.task_id or "", d.reason) for d in letters) == sorted(
        (t.id, "killed-worker") for t in poison
    )
    deaths = [re.fullmatch(r"(\d+) workers died running it", d.error) for d in letters]
    killed = [int(m.group(1)) for m in deaths]  # type: ignore[union-attr]
    assert min(killed) >= 2  # --max-deaths (2): one more may die if it took the task first
    assert all(f"while running task {t.id}" in err for t in poison)
    failed = {r.task_id: r.status for r in results if r.status != "done"}
    assert failed == {t.id: "failed" for t in poison}  # their producer hears of them too
    print(f"\n[poison {kind}] others done={len(done)} dead-lettered=3 workers killed={killed}")


def test_a_task_that_kills_its_worker_process_is_dead_lettered_and_the_consumer_goes_on(
    broker_url: str, queue_name: str
) -> None:
    _poison_among_others(broker_url, queue_name, "die", ("--workers", "2", "--prefetch", "1"))


def test_a_dead_worker_thread_is_replaced_and_its_poison_task_dead_lettered(
    broker_url: str, queue_name: str
) -> None:
    args = ("--pool", "thread", "--workers", "2", "--prefetch", "1")
    _poison_among_others(broker_url, queue_name, "quit", args)


def test_a_thread_pool_whose_workers_keep_dying_exits_non_zero(
    broker_url: str, queue_name: str
) -> None:
    with RabbitBackend(broker_url, queue_name) as producer:
        producer.publish([TaskEnvelope(kind="quit")])
    consumer = start(
        "consumer",
        *("--queue", queue_name, "--pool", "thread", "--workers", "1", "--max-deaths", "100"),
        *HANDLERS,
    )
    code, _out, err = finish(consumer, timeout=90)
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last == (
        "consumer: error: 5 workers died within 60s while running a task; "
        "giving up (see the errors above)"
    )


def _stuck_consumer(broker_url: str, queue_name: str, *args: str) -> subprocess.Popen[str]:
    """A consumer with one worker stuck in a 60 s handler (`stall`: done at once when
    redelivered)."""
    with RabbitBackend(broker_url, queue_name) as producer:
        producer.publish([TaskEnvelope(kind="stall", payload={"seconds": 60})])
        consumer = start(
            "consumer", "--queue", queue_name, "--workers", "1", "--prefetch", "1", *args, *HANDLERS
        )
        assert wait_until(lambda: "consuming" in output_of(consumer)[1], 60)
        assert wait_until(lambda: producer.pending() == 0, 30)  # the worker has it
    time.sleep(0.5)  # ... and runs it
    return consumer


def test_the_second_signal_stops_a_stuck_handler_at_once_and_its_task_comes_back(
    broker_url: str, queue_name: str
) -> None:
    consumer = _stuck_consumer(broker_url, queue_name)
    workers = _worker_pids(consumer)
    consumer.send_signal(signal.SIGTERM)
    message = "SIGTERM: finishing 1 task in hand; press Ctrl-C again to stop now"
    assert wait_until(lambda: message in output_of(consumer)[1], 10), output_of(consumer)[1]
    time.sleep(1)
    assert consumer.poll() is None  # still finishing what it holds
    stopped = time.monotonic()
    code, _out, err = stop(consumer, signal.SIGTERM, timeout=30)
    took = time.monotonic() - stopped
    assert code == 1, err
    assert err.strip().splitlines()[-1] == (
        "consumer: error: stopped at the second signal (SIGTERM): 1 worker killed with "
        "1 task in hand, which the broker hands out again"
    )
    assert took < 10
    assert all(process_state(pid) is None for pid in workers)  # killed and reaped
    _the_task_comes_back(broker_url, queue_name)


def _the_task_comes_back(broker_url: str, queue_name: str) -> None:
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.pending() == 1
    rest = run("consumer", "--queue", queue_name, "--burst", *HANDLERS, timeout=60)
    assert rest.returncode == 0, rest.stderr
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.pending() == 0 and backend.dead_letters() == []


def test_the_shutdown_timeout_stops_a_stuck_handler(broker_url: str, queue_name: str) -> None:
    consumer = _stuck_consumer(broker_url, queue_name, "--shutdown-timeout", "2")
    workers = _worker_pids(consumer)
    stopped = time.monotonic()
    code, _out, err = stop(consumer, signal.SIGTERM, timeout=30)
    took = time.monotonic() - stopped
    assert code == 1, err
    assert "finishing 1 task in hand" in err
    assert "stopped after waiting 2s (--shutdown-timeout): 1 worker killed" in err
    assert 2 <= took < 2 + 8
    assert all(process_state(pid) is None for pid in workers)
    _the_task_comes_back(broker_url, queue_name)
