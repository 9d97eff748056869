"""`consumer --metrics-port`: what Prometheus scrapes equals what the workers did."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope
from tests.helpers import children_of, run, start, stop

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _until(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_scraped_figures_equal_what_the_workers_did(
    broker_url: str, queue_name: str, pool: str
) -> None:
    port = _free_port()
    consumer = start(
        "consumer", "--url", broker_url, "--queue", queue_name, "--workers", "2",
        "--pool", pool, "--max-attempts", "2", "--retry-delay", "0.1",
        "--metrics-port", str(port),
    )  # fmt: skip
    try:
        assert _until(lambda: _port_answers(port), 30), "the metrics endpoint never answered"
        tasks = [TaskEnvelope(kind="echo", payload={"n": n}) for n in range(20)]
        tasks += [TaskEnvelope(kind="fail"), TaskEnvelope(kind="no-such-kind")]
        with RabbitBackend(broker_url, queue_name) as producer:
            producer.publish(tasks)
        q = queue_name

        def settled() -> bool:
            samples = _scrape(port)
            return _value(
                samples, "taskshuttle_queue_messages", queue=q, queue_role="dead_letter"
            ) == 2 and (
                _value(
                    samples, "taskshuttle_tasks_total", queue=q, kind="echo", outcome="succeeded"
                )
                == 20
            )

        assert _until(settled, 30), _scrape(port)
        samples = _scrape(port)
        assert (
            _value(samples, "taskshuttle_tasks_total", queue=q, kind="fail", outcome="failed") == 2
        )
        assert (
            _value(samples, "taskshuttle_tasks_total", queue=q, kind="fail", outcome="retried") == 1
        )
        assert (
            _value(
                samples, "taskshuttle_tasks_total", queue=q, kind="fail", outcome="dead_lettered"
            )
            == 1
        )
        # a kind nobody handles is no new label value: a producer cannot grow the series
        assert (
            _value(
                samples, "taskshuttle_tasks_total", queue=q, kind="unknown", outcome="dead_lettered"
            )
            == 1
        )
        assert not any("no-such-kind" in str(labels) for _, labels in samples)
        count = _value(samples, "taskshuttle_task_duration_seconds_count", queue=q, kind="echo")
        assert count == 20
        assert _value(samples, "taskshuttle_queue_messages", queue=q, queue_role="work") == 0
        assert _value(samples, "taskshuttle_tasks_in_hand", queue=q) == 0
        assert _value(samples, "taskshuttle_broker_up", queue=q) == 1

        if pool == "process":  # a worker killed is counted, and what it did still counts
            workers = [pid for pid in children_of(consumer.pid) if _is_worker(pid)]
            os.kill(workers[0], signal.SIGKILL)
            assert _until(
                lambda: _value(_scrape(port), "taskshuttle_worker_restarts_total", queue=q) == 1,
                30,
            )
            after = _scrape(port)
            assert (
                _value(after, "taskshuttle_tasks_total", queue=q, kind="echo", outcome="succeeded")
                == 20
            )
    except BaseException:
        print(stop(consumer)[2])  # the consumer's own words (a scrape's error is logged there)
        raise
    code, _, err = stop(consumer)
    assert code == 0, err
    assert not _port_answers(port), "the metrics endpoint outlived the consumer"


def test_a_port_in_use_is_one_line_and_no_worker_starts(broker_url: str, queue_name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "consumer", "--url", broker_url, "--queue", queue_name, "--metrics-port", str(port)
        )
    assert done.returncode != 0
    assert re.fullmatch(
        rf"consumer: error: --metrics-port: cannot listen on 127\.0\.0\.1:{port}: .+\n",
        done.stderr,
    ), done.stderr


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"resource_tracker" not in cmdline.read()
    except OSError:
        return False
