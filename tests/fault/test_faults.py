"""Fault tests: kill workers, kill the supervisor, restart the broker, feed it garbage.

Each asserts on the delivery ledger (`producer/ledger.py`): what was done once, done after a
redelivery, done twice, dead-lettered, or lost. Lost must always be 0.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pika
import pytest

from common.rabbitmq import RabbitBackend
from common.schemas import MAX_BODY_BYTES, TaskEnvelope
from tests.helpers import (
    finish,
    json_summary,
    process_state,
    run,
    start,
    stop,
    wait_for_output,
    wait_until,
)
from tests.rabbit_node import RabbitNode

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

HANDLERS = ("--handlers", "tests.fault_tasks")


def _gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z")


def _started_pids(folder: Path) -> list[int]:
    """Pids of the workers that started a `hold` task, in the order they started."""
    starts = sorted(folder.iterdir(), key=lambda p: int(p.name.split("-")[1]))
    return list(dict.fromkeys(int(p.name.split("-")[0]) for p in starts))


def _report(name: str, summary: dict) -> None:  # type: ignore[type-arg]
    """Print the figures (pytest -s, or the CI log on failure) for the closing notes."""
    print(f"\n[{name}] sent={summary['sent']} ledger={json.dumps(summary['ledger'])}")


@pytest.fixture
def started(tmp_path: Path) -> Path:
    """Where `hold` tasks leave a file as they start (see tests/fault_tasks.py)."""
    folder = tmp_path / "started"
    folder.mkdir()
    return folder


def _hold_job(started: Path, count: int, seconds: float) -> list[str]:
    """Producer arguments for `count` tasks that each hold a worker for `seconds`."""
    payload = json.dumps({"seconds": seconds, "started": str(started)})
    return [
        "--count",
        str(count),
        "--kind",
        "hold",
        "--payload",
        payload,
        "--json",
        "--quiet",
        *HANDLERS,
    ]


def _kill_first_worker_mid_task(started: Path, timeout: float = 30) -> int:
    assert wait_until(lambda: len(list(started.iterdir())) >= 1, timeout)
    victim = _started_pids(started)[0]
    os.kill(victim, signal.SIGKILL)
    return victim


def test_sigkill_local_worker_mid_task_loses_nothing(started: Path) -> None:
    producer = start(
        "producer",
        "--backend",
        "local",
        "--workers",
        "2",
        *_hold_job(started, 6, 1.0),
    )
    victim = _kill_first_worker_mid_task(started)
    code, out, err = finish(producer)
    assert code == 0, err
    summary = json.loads(out)
    _report("local worker SIGKILL", summary)
    assert summary["ledger"]["lost"] == 0
    assert summary["done"] == 6
    assert summary["ledger"]["done after redelivery"] == 1
    assert summary["recovered_from_dead_workers"] == 1  # a bare Queue would have lost it
    assert victim not in {w["pid"] for w in summary["workers"]}
    assert _gone(victim)


def test_sigkill_rabbitmq_worker_mid_task_loses_nothing(
    broker_url: str, queue_name: str, started: Path
) -> None:
    consumer = start(
        "consumer", "--queue", queue_name, "--workers", "2", "--prefetch", "1", *HANDLERS
    )
    try:
        producer = start(
            "producer",
            "--backend",
            "rabbitmq",
            "--queue",
            queue_name,
            "--wait",
            "--timeout",
            "60",
            *_hold_job(started, 6, 1.0),
        )
        victim = _kill_first_worker_mid_task(started)
        code, out, err = finish(producer)
        assert code == 0, err
    finally:
        consumer_code, _, consumer_err = stop(consumer)
    summary = json.loads(out)
    _report("rabbitmq worker SIGKILL", summary)
    assert summary["ledger"]["lost"] == 0
    assert summary["done"] == 6
    assert summary["ledger"]["done after redelivery"] == 1  # the broker gave it to another
    assert summary["ledger"]["done twice"] == 0
    assert consumer_code == 0, consumer_err
    assert "died with exit code -9" in consumer_err  # seen, reaped and replaced
    assert _gone(victim)


def test_sigkill_supervisor_takes_its_workers_and_loses_nothing(
    broker_url: str, queue_name: str, started: Path
) -> None:
    with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
        tasks = [
            TaskEnvelope(kind="hold", payload={"seconds": 3.0, "started": str(started)})
            for _ in range(4)
        ]
        producer.publish(tasks)
        consumer = start(
            "consumer", "--queue", queue_name, "--workers", "2", "--prefetch", "1", *HANDLERS
        )
        assert wait_until(lambda: len(_started_pids(started)) == 2, 30)
        workers = _started_pids(started)
        stop(consumer, signal.SIGKILL)  # no chance to clean up
        assert wait_until(lambda: all(_gone(pid) for pid in workers), timeout=5), [
            (pid, process_state(pid)) for pid in workers
        ]
        # What they held went back to the queue: a new consumer finishes everything.
        rest = run("consumer", "--queue", queue_name, "--burst", *HANDLERS, timeout=60)
        assert rest.returncode == 0, rest.stderr
        results = []
        deadline = time.monotonic() + 20
        while len({r.task_id for r in results}) < 4 and time.monotonic() < deadline:
            if (result := producer.receive_result(0.2)) is not None:
                results.append(result)
    done = {r.task_id for r in results if r.status == "done"}
    assert done == {t.id for t in tasks}  # 0 lost
    redelivered = [r for r in results if r.redelivered]
    print(f"\n[supervisor SIGKILL] sent=4 done={len(done)} redelivered={len(redelivered)} lost=0")
    assert len(redelivered) >= 2  # the two tasks the killed workers held


@pytest.mark.parametrize("backend", ["local", "rabbitmq"])
def test_task_that_always_fails_is_tried_max_attempts_then_dead_lettered(
    backend: str, queue_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tally = tmp_path / "attempts"
    common = ["--queue", queue_name, "--max-attempts", "3", "--retry-delay", "0.2", *HANDLERS]
    payload = json.dumps({"log": str(tally)})
    job = ["--count", "1", "--kind", "tally-fail", "--payload", payload, "--json", "--quiet"]
    if backend == "local":
        summary = json_summary(run("producer", "--backend", "local", *common, *job))
    else:
        request.getfixturevalue("broker_url")
        consumer = start("consumer", *common)
        try:
            summary = json_summary(
                run("producer", "--backend", "rabbitmq", "--wait", "--timeout", "30", *common, *job)
            )
        finally:
            stop(consumer)
        listed = run("consumer", "--queue", queue_name, "dlq", "list", "--json")
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(d["reason"], d["attempts"]) for d in letters] == [("max-attempts", 3)]
        assert "fails every time" in letters[0]["error"]
    _report(f"always fails ({backend})", summary)
    assert len(tally.read_text().splitlines()) == 3  # exactly max-attempts tries
    assert summary["failed"] == 1
    assert summary["ledger"]["dead-lettered"] == 1
    assert summary["ledger"]["lost"] == 0


def test_garbage_bodies_are_dead_lettered_with_reasons_and_the_consumer_goes_on(
    broker_url: str, queue_name: str
) -> None:
    garbage = {
        b"Hello World!": "not-json",  # what RabbitMQ's tutorial sends
        os.urandom(64) + b"\xff": "not-json",
        b'{"kind": 5}': "schema",
        b'["a", "list"]': "schema",
        json.dumps({"kind": "echo", "payload": {}, "extra": 1}).encode(): "schema",
        b"x" * (MAX_BODY_BYTES + 1): "too-large",
        TaskEnvelope(kind="no-such-kind").model_dump_json().encode(): "unknown-kind",
        TaskEnvelope(kind="sleep", payload={"seconds": "soon"})
        .model_dump_json()
        .encode(): "bad-payload",
    }
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.queue_declare(queue_name, durable=True)
    for body in garbage:
        channel.basic_publish("", queue_name, body)  # any client, no schema of ours
    connection.close()
    with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
        good = TaskEnvelope(kind="echo", payload={"still": "healthy"})
        producer.publish([good])
        drained = run("consumer", "--queue", queue_name, "--burst", "--workers", "1", timeout=60)
        assert drained.returncode == 0, drained.stderr
        result = producer.receive_result(10)
        assert result is not None and result.task_id == good.id and result.value == good.payload
        letters = producer.dead_letters()
        assert producer.pending() == 0
    assert sorted((d.body, d.reason) for d in letters) == sorted(garbage.items())
    assert all(d.error for d in letters)
    print(f"\n[garbage] published={len(garbage)} dead-lettered={len(letters)} lost=0")


def test_task_longer_than_three_heartbeats_is_acked_once_without_reconnect(
    broker_url: str, queue_name: str
) -> None:
    heartbeat_url = broker_url.split("?")[0] + "?heartbeat=1"
    consumer = start(
        "consumer", "--queue", queue_name, "--workers", "1", "--url", heartbeat_url, "--verbose"
    )
    try:
        summary = json_summary(
            run(
                "producer",
                "--backend",
                "rabbitmq",
                "--queue",
                queue_name,
                "--wait",
                "--json",
                "--quiet",
                "--count",
                "1",
                "--kind",
                "sleep",
                "--payload",
                '{"seconds": 3.5}',
                "--timeout",
                "30",
                "--url",
                heartbeat_url,
            )
        )
    finally:
        code, _out, err = stop(consumer)
    _report("3.5 s task, 1 s heartbeat", summary)
    assert summary["ledger"]["done once"] == 1  # acked once, never redelivered
    assert code == 0
    assert "connection lost" not in err and "reconnect" not in err, err
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.pending() == 0


def _connections(node: RabbitNode) -> int:
    """Client connections the node has open (one pid, ``<...>``, a line)."""
    return sum("<" in line for line in node.ctl("list_connections", "pid").splitlines())


def test_broker_restart_while_5000_tasks_flow_loses_none(own_broker: RabbitNode) -> None:
    url = own_broker.url
    queue = "restart-test"
    consumer = start("consumer", "--queue", queue, "--workers", "2", "--url", url)
    try:
        wait_for_output(consumer, "consuming", timeout=90)  # its workers are connected
        producer = start(
            "producer",
            "--backend",
            "rabbitmq",
            "--queue",
            queue,
            "--url",
            url,
            "--wait",
            "--json",
            "--quiet",
            "--count",
            "5000",
            "--rate",  # 10 s of sending: the restart below lands mid-flow, even when slow
            "500",
            "--timeout",
            "90",
            "--connect-timeout",  # a restart on a busy machine can pass the default 30 s
            "120",
        )
        # On a busy machine a program takes seconds to start: restart once it is connected.
        assert wait_until(lambda: _connections(own_broker) >= 3, 90)
        time.sleep(2.0)  # tasks are flowing
        own_broker.restart(timeout=60)
        code, out, err = finish(producer, timeout=150)
    finally:
        consumer_code, _, consumer_err = stop(consumer, timeout=30)
    assert code == 0, err
    summary = json.loads(out)
    _report("broker restart mid-flow", summary)
    assert summary["sent"] == 5000
    assert summary["ledger"]["lost"] == 0
    assert summary["done"] == 5000
    assert "reconnected" in err  # the producer saw the restart and came back
    assert "reconnected" in consumer_err
    assert consumer_code == 0


def test_sigterm_to_local_producer_finishes_tasks_in_hand(started: Path) -> None:
    producer = start(
        "producer",
        "--backend",
        "local",
        "--workers",
        "2",
        *_hold_job(started, 20, 0.8),
    )
    assert wait_until(lambda: len(list(started.iterdir())) >= 3, 30)  # mid-task
    code, out, err = stop(producer, signal.SIGTERM, timeout=30)
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "the local queue died" in err
    summary = json.loads(out)
    _report("local producer SIGTERM", summary)
    # Every task a worker had started was finished, not cut off: none lost in hand.
    assert summary["done"] == len(list(started.iterdir()))
    assert summary["done"] >= 3
    assert summary["ledger"]["done twice"] == 0
    for worker in summary["workers"]:
        assert _gone(worker["pid"])


@pytest.mark.parametrize("backend", ["local", "rabbitmq"])
def test_task_over_its_time_limit_is_stopped_retried_then_dead_lettered(
    backend: str, queue_name: str, request: pytest.FixtureRequest
) -> None:
    common = [
        "--queue",
        queue_name,
        "--max-attempts",
        "2",
        "--retry-delay",
        "0.1",
        "--task-timeout",
        "0.5",
    ]
    job = [
        "--count",
        "2",
        "--kind",
        "sleep",
        "--payload",
        '{"seconds": 30}',
        "--json",
        "--quiet",
        "--timeout",
        "60",
    ]
    started = time.monotonic()
    if backend == "local":
        summary = json_summary(run("producer", "--backend", "local", *common, *job, timeout=90))
    else:
        request.getfixturevalue("broker_url")
        consumer = start("consumer", *common)
        try:
            summary = json_summary(
                run("producer", "--backend", "rabbitmq", "--wait", *common, *job, timeout=90)
            )
        finally:
            code, _out, err = stop(consumer)
        assert code == 0, err
        with RabbitBackend(request.getfixturevalue("broker_url"), queue_name) as dlq:
            letters = dlq.dead_letters()
        assert [(d.reason, d.attempts) for d in letters] == [("max-attempts", 2)] * 2
        assert all("TaskTimeout" in d.error for d in letters)
    _report(f"task timeout ({backend})", summary)
    assert time.monotonic() - started < 30  # nobody waited for the 30 s sleeps
    assert summary["failed"] == 2
    assert summary["ledger"]["lost"] == 0


def test_consumer_warns_when_task_timeout_exceeds_the_brokers_consumer_timeout(
    broker_url: str, queue_name: str
) -> None:
    completed = run("consumer", "--queue", queue_name, "--burst", "--task-timeout", "3600")
    assert completed.returncode == 0, completed.stderr
    assert "longer than the broker's consumer_timeout (1800s)" in completed.stderr


def test_a_returned_message_is_not_counted_as_sent(broker_url: str, queue_name: str) -> None:
    from common.errors import PublishFailed

    with RabbitBackend(broker_url, queue_name) as backend:
        backend.delete_queues()  # now nothing routes to the queue: the broker returns it
        with pytest.raises(PublishFailed, match="unroutable"):
            backend.publish([TaskEnvelope(kind="echo")])
