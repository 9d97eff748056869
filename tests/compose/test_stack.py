"""docker-compose.yml end to end: the broker and three consumer containers, the producer
service, a consumer container killed, the stack taken down with tasks in hand and brought up
again. The tests run in order on one stack (see conftest.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import pytest

from tests.compose.conftest import CONSUMING, QUEUE, Stack
from tests.conftest import note_figure
from tests.helpers import start, stop, wait_until

pytestmark = [pytest.mark.compose, pytest.mark.timeout(420)]


def _summary(stdout: str) -> dict[str, Any]:
    """The producer's --json summary (Compose may print its own lines before it)."""
    return json.loads(stdout[stdout.index("{") :])


def _record(case: str, summary: dict[str, Any]) -> None:
    """One row of the end-to-end table: sent, done, lost, and tasks per container."""
    per_host: Counter[str] = Counter()
    for worker in summary["workers"]:
        per_host[worker["host"]] += worker["tasks"]
    hosts = ", ".join(f"{host} {n}" for host, n in sorted(per_host.items()))
    note_figure(
        f"compose, {case}: sent {summary['sent']}, done {summary['done']},"
        f" lost {summary['lost']}; results by container: {hosts}"
    )


def _producer_service(*args: str) -> list[str]:
    """`run` of the producer service, as a user types it, with `args` as its command."""
    return ["run", "--rm", "-T", "producer", "producer", "--backend", "rabbitmq", *args]


def _queued(stack: Stack) -> int:
    return stack.ready(QUEUE) or 0


def test_three_consumer_containers_share_a_thousand_tasks(stack: Stack) -> None:
    completed = stack.compose(*_producer_service("--count", "1000", "--wait", "--json", "-q"))
    summary = _summary(completed.stdout)
    _record("three consumers", summary)
    assert (summary["sent"], summary["done"], summary["lost"]) == (1000, 1000, 0), summary
    hosts = {worker["host"] for worker in summary["workers"]}
    consumers = stack.hostnames("consumer")
    assert len(consumers) == 3
    assert hosts == consumers, f"workers ran on {hosts}, the consumer containers are {consumers}"


def test_a_consumer_container_killed_mid_run_loses_nothing(stack: Stack) -> None:
    producer = stack.popen(
        *_producer_service(
            "--count",
            "1000",
            "--kind",
            "sleep",
            "--payload",
            '{"seconds": 0.05}',
            "--wait",
            "--json",
            "-q",
        )
    )
    try:
        # Six workers hold at most 600 tasks (prefetch 100): while more wait in the queue, every
        # consumer has tasks in hand. Then one of them is killed (SIGKILL, no goodbye).
        assert wait_until(lambda: _queued(stack) > 0, timeout=120), "no task was ever queued"
        victim = stack.running("consumer")[0]
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True, timeout=30)
        out, err = producer.communicate(timeout=300)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.communicate()
    assert producer.returncode == 0, err
    summary = _summary(out)
    _record("one consumer container killed mid-run", summary)
    assert (summary["sent"], summary["done"], summary["lost"]) == (1000, 1000, 0), summary
    # The killed container's tasks came back to the queue and were done by the others.
    assert summary["ledger"]["done after redelivery"] > 0, summary["ledger"]
    stack.compose("up", "-d", "--no-recreate", "--scale", "consumer=3", "consumer")
    assert wait_until(lambda: len(stack.running("consumer")) == 3, timeout=60)
    stack.wait_consuming(QUEUE, CONSUMING)


def test_down_with_tasks_in_hand_then_up_again_loses_nothing(stack: Stack) -> None:
    # A producer on the host, through the published port, waits across the outage: its tasks
    # and its reply queue are durable, so the volume keeps both.
    producer = start(
        "producer", "--backend", "rabbitmq", "--url", stack.url, "--count", "1000",
        "--kind", "sleep", "--payload", '{"seconds": 0.05}', "--wait", "--json", "-q",
        "--connect-timeout", "300", "--timeout", "360",
    )  # fmt: skip
    try:
        assert wait_until(lambda: _queued(stack) > 0, timeout=120), "no task was ever queued"
        consumers = stack.running("consumer")
        # `docker wait` prints each container's exit code once it stops (before `down` removes it).
        waits = [
            subprocess.Popen(["docker", "wait", c], stdout=subprocess.PIPE, text=True)
            for c in consumers
        ]
        down_started = time.monotonic()
        stack.compose("down", "-t", "45")  # the volume stays
        down_took = time.monotonic() - down_started
        codes = [w.communicate(timeout=60)[0].strip() for w in waits]
        assert codes == ["0"] * len(consumers), f"consumer exit codes after SIGTERM: {codes}"

        stack.compose("up", "-d", "rabbitmq")
        stack.wait_healthy()
        assert wait_until(lambda: stack.ready(QUEUE) is not None, timeout=60)
        left = stack.ready(QUEUE)
        assert left is not None and 0 < left < 1000, f"queued after down and up: {left}"

        stack.compose("up", "-d", "--scale", "consumer=3", "consumer")
        code, out, err = stop(producer, sig=0, timeout=360)
    finally:
        if producer.poll() is None:
            stop(producer, signal.SIGKILL, timeout=30)
    assert code == 0, err
    summary = json.loads(out)
    _record(
        f"`down` with tasks in hand ({down_took:.1f} s, {left} left queued), then `up`", summary
    )
    assert (summary["sent"], summary["done"], summary["lost"]) == (1000, 1000, 0), summary
    assert wait_until(lambda: stack.ready(QUEUE) == 0, timeout=30)
