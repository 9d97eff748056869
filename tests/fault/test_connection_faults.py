"""The connection policy against a broker that is not there: each test on a node of its own.

A consumer is a service: it waits for its broker as long as it takes, at start-up as after a
loss, and a worker replaced while the broker is away waits too instead of dying. A producer
is a command someone waits on: it waits ``--connect-timeout`` seconds (30 by default), then
fails and says what was confirmed. A channel the broker closes (a delivery left unacked past
its ``consumer_timeout``) is reopened and the work goes on, the redeliveries counted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.rabbitmq import RabbitBackend
from tests.conftest import require_rabbitmq_server
from tests.helpers import (
    children_of,
    finish,
    json_summary,
    output_of,
    process_state,
    run,
    start,
    stop,
    wait_for_output,
    wait_until,
)
from tests.rabbit_node import RabbitNode, free_port

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

QUEUE = "connection-test"
RETRYING = "broker unreachable, retrying in "
#: The outage of the long test: as long as a broker upgrade or a host reboot.
OUTAGE = 60
#: RabbitMQ 3.10 checks consumer_timeout on each channel tick, every `channel_tick_interval`
#: ms (60 s by default): a tick of 1 s makes a 3 s timeout fire after 3 to 4 s.
SHORT_CONSUMER_TIMEOUT = "consumer_timeout = 3000"
FAST_TICK = "[{rabbit, [{channel_tick_interval, 1000}]}].\n"


@pytest.fixture
def stopped_node(tmp_path: Path) -> Iterator[RabbitNode]:
    """A node of this test's own, not started yet."""
    require_rabbitmq_server()
    with RabbitNode(free_port(), f"ts-late-{os.getpid()}", tmp_path) as node:
        yield node


def _producer(url: str, *args: str) -> list[str]:
    return ["--backend", "rabbitmq", "--queue", QUEUE, "--url", url, "--quiet", *args]


def _worker_pids(consumer: subprocess.Popen[str]) -> list[int]:
    found = re.search(r"\(pids? ([\d, ]+)\)", output_of(consumer)[1])
    assert found, output_of(consumer)[1]
    return [int(pid) for pid in found.group(1).split(",")]


def test_consumer_started_before_its_broker_waits_for_it_then_processes_tasks(
    stopped_node: RabbitNode,
) -> None:
    url = stopped_node.url
    consumer = start("consumer", "--queue", QUEUE, "--workers", "2", "--url", url)
    try:
        wait_for_output(consumer, RETRYING, timeout=60)
        time.sleep(3)
        assert consumer.poll() is None, output_of(consumer)[1]  # a service does not give up
        stopped_node.start(timeout=90)
        wait_for_output(consumer, "consuming", timeout=90)
        summary = json_summary(
            run(
                "producer",
                *_producer(url, "--wait", "--json", "--count", "50", "--timeout", "90"),
                timeout=150,
            )
        )
        assert consumer.poll() is None
    finally:
        code, _out, err = stop(consumer, timeout=60)
    print(f"\n[consumer before broker] ledger={json.dumps(summary['ledger'])}")
    assert summary["done"] == 50 and summary["ledger"]["lost"] == 0
    assert code == 0, err
    assert "died with exit code" not in err and "error:" not in err, err
    assert f"WARNING {RETRYING}" in err and "cannot reach broker" in err  # one line per try
    assert "***@" in err and "guest:guest" not in err


def test_a_60s_outage_with_a_worker_replaced_meanwhile_leaves_the_consumer_running(
    own_broker: RabbitNode,
) -> None:
    url = own_broker.url
    consumer = start("consumer", "--queue", QUEUE, "--workers", "2", "--url", url)
    try:
        wait_for_output(consumer, "consuming", timeout=90)
        victim = _worker_pids(consumer)[0]
        producer = start(
            "producer",
            *_producer(url, "--wait", "--json", "--count", "3000", "--rate", "300"),
            *("--timeout", "200", "--connect-timeout", "180"),
        )
        time.sleep(3)  # tasks are flowing
        own_broker.stop(timeout=60)
        down = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # its replacement starts while the broker is away
        time.sleep(max(OUTAGE - (time.monotonic() - down), 0))
        own_broker.start(timeout=90)
        code, out, err = finish(producer, timeout=240)
        assert consumer.poll() is None, output_of(consumer)[1]
        # The surviving worker may still be in its last pause (up to 10 s, jittered) when
        # the replacement alone has finished the work: it must come back all the same.
        wait_for_output(consumer, "reconnected", timeout=60)
    finally:
        consumer_code, _, consumer_err = stop(consumer, timeout=60)
    assert code == 0, f"producer: {err}\nconsumer: {consumer_err}"
    summary = json.loads(out)
    print(f"\n[{OUTAGE} s outage] sent={summary['sent']} ledger={json.dumps(summary['ledger'])}")
    assert summary["sent"] == 3000 and summary["done"] == 3000
    assert summary["ledger"]["lost"] == 0
    assert consumer_code == 0, consumer_err
    # One death, the SIGKILL; its replacement waited for the broker instead of dying.
    assert consumer_err.count("died with exit code") == 1, consumer_err
    assert "died with exit code -9" in consumer_err and "giving up" not in consumer_err
    assert RETRYING in consumer_err, consumer_err


def _workers_of(pid: int) -> list[int]:
    """The worker processes among `pid`'s children (not multiprocessing's resource tracker)."""
    workers = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_producer_gives_up_after_the_connect_timeout_and_says_what_was_confirmed(
    own_broker: RabbitNode,
) -> None:
    # At start-up, nothing listening: it waits --connect-timeout seconds, then one line.
    closed = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F"
    started = time.monotonic()
    early = run("producer", *_producer(closed, "--count", "10", "--connect-timeout", "3"))
    waited = time.monotonic() - started
    *retries, last = early.stderr.strip().splitlines()
    assert early.returncode == 1, early.stderr
    assert 3 <= waited < 20, waited
    assert retries and all(RETRYING in line for line in retries), early.stderr
    assert last.startswith("producer: error: cannot reach broker at amqp://guest:***@")

    # Midway: the node stops while it sends; it gives up and says what was confirmed.
    url, count = own_broker.url, 100_000
    job = ["--count", str(count), "--rate", "500", "--connect-timeout", "3"]
    producer = start("producer", *_producer(url, *job))
    with RabbitBackend(url, QUEUE) as watch:
        deadline = time.monotonic() + 60
        while watch.pending() < 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    own_broker.stop(timeout=60)
    code, out, err = finish(producer, timeout=60)
    assert code == 1, (out, err)
    sent = int(out.split()[1])
    assert out.startswith(f"sent {sent} of {count} tasks to queue {QUEUE!r}"), out
    assert f"({sent} confirmed, {count - sent} not)" in out and "all confirmed" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("producer: error: "), err
    assert f"({sent} of {count} sent and confirmed)" in last
    own_broker.start(timeout=90)
    with RabbitBackend(url, QUEUE) as check:
        assert check.pending() >= sent  # every confirmed task is there


def test_a_delivery_past_the_consumer_timeout_reopens_the_channel_and_the_work_goes_on(
    tmp_path: Path,
) -> None:
    require_rabbitmq_server()
    name = f"ts-ctimeout-{os.getpid()}"
    with RabbitNode(
        free_port(), name, tmp_path, extra_config=SHORT_CONSUMER_TIMEOUT, advanced_config=FAST_TICK
    ) as node:
        node.start(timeout=90)
        url = node.url
        # One worker holding 4 tasks of 1 s: the 4th waits 3 s for its turn, past the limit.
        consumer = start(
            "consumer",
            *("--queue", QUEUE, "--workers", "1", "--prefetch", "4", "--url", url),
            *("--broker-consumer-timeout", "3"),
        )
        try:
            wait_for_output(consumer, "consuming", timeout=90)
            job = ["--kind", "sleep", "--payload", '{"seconds": 1.0}', "--count", "8"]
            summary = json_summary(
                run(
                    "producer",
                    *_producer(url, "--wait", "--json", "--timeout", "150", *job),
                    timeout=200,
                )
            )
            running = consumer.poll() is None
        finally:
            code, _out, err = stop(consumer, timeout=60)
        log = node.log_file.read_text(errors="replace")
    print(f"\n[consumer_timeout] ledger={json.dumps(summary['ledger'])}")
    assert "delivery acknowledgement on channel 1 timed out" in log  # the broker did close it
    assert running and code == 0, err
    assert summary["done"] == 8 and summary["ledger"]["lost"] == 0
    assert summary["ledger"]["done after redelivery"] >= 1  # counted, not hidden
    assert "broker closed the channel: 406 PRECONDITION_FAILED" in err
    assert "consumer_timeout" in err and "reconnected" in err
    assert "died with exit code" not in err, err  # the worker reopened; it did not die


def test_a_worker_waiting_for_its_broker_at_start_up_stops_on_sigterm(
    own_broker: RabbitNode,
) -> None:
    consumer = start("consumer", "--queue", QUEUE, "--workers", "1", "--url", own_broker.url)
    try:
        wait_for_output(consumer, "consuming", timeout=90)
        own_broker.stop(timeout=60)
        os.kill(_worker_pids(consumer)[0], signal.SIGKILL)
        # Its replacement waits for the broker at start-up, in its own process.
        wait_for_output(consumer, "died with exit code -9", timeout=60)
        since_death = lambda: output_of(consumer)[1].split("died with exit code -9")[1]  # noqa: E731
        assert wait_until(lambda: RETRYING in since_death(), 60), output_of(consumer)[1]
        waiting = [p for p in _workers_of(consumer.pid) if p not in _worker_pids(consumer)]
        assert waiting, output_of(consumer)[1]
        consumer.send_signal(signal.SIGTERM)
        wait_for_output(consumer, "in hand; press Ctrl-C again to stop now", timeout=30)
        time.sleep(1.0)  # the supervisor now waits for its workers to finish
        for pid in waiting:  # as a service manager stops every process of the unit
            os.kill(pid, signal.SIGTERM)
        code, _out, err = stop(consumer, sig=0, timeout=20)
    finally:
        if consumer.poll() is None:
            stop(consumer, signal.SIGKILL)
    assert code == 0, err
    assert all(process_state(pid) in (None, "Z") for pid in waiting)
