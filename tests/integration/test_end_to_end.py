"""The real programs, as a user runs them: every task processed, once, nothing left over."""

from __future__ import annotations

import signal
import time

import pytest

from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope
from producer.ledger import Ledger
from producer.run import Progress, collect
from tests.helpers import (
    json_summary,
    process_state,
    run,
    start,
    stop,
    wait_for_output,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def _assert_each_once(summary: dict, count: int) -> None:  # type: ignore[type-arg]
    assert summary["sent"] == count
    assert summary["done"] == count
    assert summary["ledger"] == {
        "done once": count,
        "done after redelivery": 0,
        "done twice": 0,
        "dead-lettered": 0,
        "lost": 0,
    }
    assert sum(w["tasks"] for w in summary["workers"]) == count


def test_local_job_processes_every_task_once() -> None:
    summary = json_summary(
        run("producer", "--backend", "local", "--count", "1000", "--workers", "2", "--json")
    )
    _assert_each_once(summary, 1000)
    assert len(summary["workers"]) >= 1
    for worker in summary["workers"]:
        assert process_state(worker["pid"]) is None  # reaped, not a zombie


def test_consumer_and_producer_in_two_terminals(broker_url: str, queue_name: str) -> None:
    consumer = start("consumer", "--backend", "rabbitmq", "--workers", "2", "--queue", queue_name)
    wait_for_output(consumer, "consuming")  # as a user waits for the consumer to be up
    try:
        produced = run(
            "producer",
            "--backend",
            "rabbitmq",
            "--count",
            "1000",
            "--wait",
            "--json",
            "--queue",
            queue_name,
            "--timeout",
            "60",
            timeout=90,
        )
        summary = json_summary(produced)
        _assert_each_once(summary, 1000)
        assert {w["ppid"] for w in summary["workers"]} == {consumer.pid}
        assert len(summary["workers"]) == 2  # both workers took part
    finally:
        code, _out, err = stop(consumer, signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err
    for worker in summary["workers"]:
        assert process_state(worker["pid"]) is None
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.pending() == 0
        assert backend.dead_letters() == []


def test_producer_without_wait_only_sends(broker_url: str, queue_name: str) -> None:
    sent = run("producer", "--backend", "rabbitmq", "--count", "50", "--queue", queue_name)
    assert sent.returncode == 0, sent.stderr
    assert f"sent 50 tasks to queue '{queue_name}'" in sent.stdout
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.pending() == 50
    drained = run("consumer", "--queue", queue_name, "--burst", timeout=60)
    assert drained.returncode == 0, drained.stderr
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.pending() == 0


def test_sigterm_finishes_tasks_in_hand_and_loses_none(broker_url: str, queue_name: str) -> None:
    count = 12
    with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
        tasks = [TaskEnvelope(kind="sleep", payload={"seconds": 0.6}) for _ in range(count)]
        producer.publish(tasks)
        ledger = Ledger()
        ledger.record_sent(tasks)
        consumer = start("consumer", "--queue", queue_name, "--workers", "2", "--prefetch", "3")
        # Wait until both workers are mid-task, with more prefetched behind them.
        assert wait_until(lambda: _take(producer, ledger) >= 2, timeout=30)
        code, _out, err = stop(consumer, signal.SIGTERM, timeout=30)
        assert code == 0, err
        finished_before_exit = len(ledger.results)
        # Whatever was in hand is either finished (its result came) or back in the queue.
        assert wait_until(lambda: _take(producer, ledger) + producer.pending() >= count, timeout=10)
        assert len(ledger.results) + producer.pending() == count
        assert len(ledger.results) >= finished_before_exit
        # A new consumer finishes the rest: every task done, none lost.
        rest = run("consumer", "--queue", queue_name, "--burst", timeout=60)
        assert rest.returncode == 0, rest.stderr
        collect(producer, ledger, Progress(), until=time.perf_counter() + 20)
    fates = ledger.fates()
    assert fates["lost"] == 0
    assert fates["done twice"] == 0
    assert len(ledger.results) == count


def _take(producer: RabbitBackend, ledger: Ledger) -> int:
    while (result := producer.receive_result(0.05)) is not None:
        ledger.record_result(result)
    return len(ledger.results)


def test_thread_pool_consumes_with_threads_of_one_process(broker_url: str, queue_name: str) -> None:
    consumer = start("consumer", "--queue", queue_name, "--workers", "3", "--pool", "thread")
    try:
        summary = json_summary(
            run(
                "producer",
                "--backend",
                "rabbitmq",
                "--count",
                "300",
                "--wait",
                "--json",
                "--quiet",
                "--queue",
                queue_name,
                "--timeout",
                "60",
                timeout=90,
            )
        )
    finally:
        code, _out, err = stop(consumer)
    _assert_each_once(summary, 300)
    assert {w["pid"] for w in summary["workers"]} == {consumer.pid}  # one process
    assert {w["name"] for w in summary["workers"]} <= {f"MainProcess/worker-{i}" for i in range(3)}
    assert code == 0, err
