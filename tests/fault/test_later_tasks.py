"""Later tasks under faults, on a busy machine: a countdown outlives a broker restart and a
consumer killed with SIGKILL and runs once, on time; a thousand random countdowns each run no
earlier than their time and at most a second after; a consumer started after a task's time
runs it at once."""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path

import pytest

from producer.client import Client
from tests.conftest import delete_queues, require_broker
from tests.helpers import start, stop, wait_for_output, wait_until
from tests.rabbit_node import RabbitNode

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

HANDLERS = ("--handlers", "tests.client_tasks")
#: How late a task may run after its time.
ON_TIME = 1.0


def _report(name: str, figures: dict[str, object]) -> None:
    print(f"\n{name}: {json.dumps(figures)}")


def _consumer(url: str, queue: str, workers: int = 1):  # type: ignore[no-untyped-def]
    consumer = start(
        "consumer", "--queue", queue, "--url", url, "--workers", str(workers), *HANDLERS
    )
    wait_for_output(consumer, "consuming", timeout=90)  # its workers are connected
    return consumer


def test_a_countdown_outlives_a_broker_restart_and_a_killed_consumer(
    own_broker: RabbitNode, tmp_path: Path
) -> None:
    url, queue = own_broker.url, "later-restart"
    runs = tmp_path / "runs"
    consumer = _consumer(url, queue)
    try:
        with Client(url=url, queue=queue, connect_timeout=120) as client:
            handle = client.send("stamp", {"record": str(runs)}, countdown=20)
            assert handle.eta is not None
            due = handle.eta.timestamp()
            time.sleep(max(due - 10 - time.time(), 0))
            # At about 10 s the task is in the broker only: the consumer is SIGKILLed (its
            # workers die with it: they watch their parent), the broker restarts, and a new
            # consumer starts once the broker is back, as a service manager would start it.
            consumer.kill()
            consumer.wait(30)
            down = time.time()
            own_broker.restart(timeout=60)
            outage = time.time() - down
            consumer = _consumer(url, queue)  # back when it says its workers consume
            ready = time.time()
            value = handle.result(timeout=60)
        late = value["ran_at"] - due
        figures = {
            "late_s": round(late, 3),
            "broker_down_s": round(outage, 3),
            "consumer_ready_before_due_s": round(due - ready, 3),
        }
        _report("countdown 20 s, broker restart at 10 s, consumer SIGKILL", figures)
        assert late >= 0  # never before its time
        # Each delay level's wait starts when the task enters it: an outage that spans the
        # task's move from one level to the next (20 s: 16 s in one, then 4 s in another)
        # delays it by at most the outage. Past that, on time, or at once once the new
        # consumer is back, if a busy machine brought it back later (the task waited ready).
        assert value["ran_at"] <= max(due + outage, ready) + ON_TIME
        assert runs.read_text().splitlines() == [handle.id]  # once
    finally:
        stop(consumer, timeout=30)


def test_a_thousand_random_countdowns_each_run_on_time(tmp_path: Path) -> None:
    url = require_broker()
    queue = f"later-many-{os.getpid()}"
    consumer = _consumer(url, queue, workers=2)
    try:
        with Client(url=url, queue=queue) as client:
            rng = random.Random(7)
            items = [
                {"kind": "stamp", "payload": {"label": str(i)}, "countdown": rng.uniform(1, 30)}
                for i in range(1000)
            ]
            handles = client.send_many(items)
            values = [h.result(timeout=90) for h in handles]
        lateness = sorted(
            v["ran_at"] - h.eta.timestamp()  # type: ignore[union-attr]
            for h, v in zip(handles, values, strict=True)
        )
        figures = {
            "tasks": len(lateness),
            "early": sum(late < 0 for late in lateness),
            "late_p50_s": round(statistics.median(lateness), 3),
            "late_p99_s": round(lateness[int(len(lateness) * 0.99) - 1], 3),
            "late_max_s": round(lateness[-1], 3),
        }
        _report("1,000 countdowns of 1-30 s: lateness", figures)
        assert figures["early"] == 0
        assert lateness[-1] <= ON_TIME
    finally:
        stop(consumer, timeout=30)
        delete_queues(url, queue)


def test_a_consumer_started_after_the_time_runs_it_at_once() -> None:
    url = require_broker()
    queue = f"later-no-consumer-{os.getpid()}"
    try:
        with Client(url=url, queue=queue) as client:
            handle = client.send("stamp", {}, countdown=1.5)
            assert handle.eta is not None
            # Its time passes with nobody consuming: it waits in the work queue.
            assert wait_until(lambda: time.time() > handle.eta.timestamp() + 2, 10)  # type: ignore[union-attr]
            with pytest.raises(TimeoutError):
                handle.result(timeout=0.1)
            consumer = _consumer(url, queue)
            ready = time.time()
            try:
                value = handle.result(timeout=30)
            finally:
                stop(consumer, timeout=30)
        _report("consumer started after the time", {"ran_after_ready_s": value["ran_at"] - ready})
        assert value["ran_at"] - ready <= ON_TIME
    finally:
        delete_queues(url, queue)
