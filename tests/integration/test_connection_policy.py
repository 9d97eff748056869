"""What the programs say about their broker: a bad URL, a stopped run, a risky prefetch.

The tests that stop a broker run on a node of their own, in `tests/fault/test_connection_faults.py`.
"""

from __future__ import annotations

import signal

import pika
import pytest

from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope
from tests.helpers import run, start, stop, wait_until

pytestmark = pytest.mark.timeout(90)

BAD_QUERY = [
    ("?heartbeat=abc", "Invalid heartbeat value 'abc'"),
    ("?bogus=1", "Unknown URL parameter: 'bogus'"),
]


@pytest.mark.parametrize(("query", "said"), BAD_QUERY, ids=["heartbeat", "bogus"])
@pytest.mark.parametrize(
    "command",
    [["producer", "--backend", "rabbitmq"], ["consumer"], ["consumer", "dlq", "list"]],
    ids=["producer", "consumer", "dlq"],
)
def test_a_bad_url_query_value_is_one_line_and_exit_2(
    command: list[str], query: str, said: str
) -> None:
    url = f"amqp://guest:secret@127.0.0.1:5672/%2F{query}"
    completed = run(*command, "--url", url)
    err = completed.stderr.strip()
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"{command[0]}: error: Invalid value for '--url': malformed AMQP URL")
    assert said in err and "secret" not in err


def test_a_bad_url_query_value_from_the_environment_is_named_by_its_variable() -> None:
    env = {"AMQP_URL": "amqp://guest:secret@127.0.0.1:5672/%2F?heartbeat=abc"}
    completed = run("consumer", env=env)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("consumer: error: Invalid value for 'AMQP_URL'")
    assert "secret" not in completed.stderr


def test_producer_interrupted_without_wait_says_how_many_of_how_many_and_exits_130(
    broker_url: str, queue_name: str
) -> None:
    count = 100_000
    producer = start(
        "producer",
        *("--backend", "rabbitmq", "--queue", queue_name, "--count", str(count)),
        *("--rate", "200", "--quiet"),
    )
    queued = lambda: _queued(broker_url, queue_name)  # noqa: E731
    assert wait_until(lambda: producer.poll() is not None or queued() > 50, 30)  # it is sending
    code, out, err = stop(producer, signal.SIGINT, timeout=30)
    assert code == 128 + signal.SIGINT, (out, err)
    sent = queued()  # what the broker holds: every task it confirmed
    assert 0 < sent < count
    assert out.strip().startswith(f"sent {sent} of {count} tasks to queue {queue_name!r}"), out
    assert f"({sent} confirmed, {count - sent} not)" in out
    assert "all confirmed" not in out
    assert err.strip() == (
        f"producer: error: stopped by SIGINT: {sent} of {count} sent and confirmed, "
        f"{count - sent} not sent"
    )


def _queued(url: str, queue_name: str) -> int:
    with RabbitBackend(url, queue_name) as backend:
        return backend.pending()


@pytest.mark.parametrize(
    ("args", "warned"),
    [
        (
            ["--prefetch", "200", "--task-timeout", "10"],
            "--prefetch 200 x --task-timeout 10s = 2000s can pass the broker's "
            "consumer_timeout (1800s)",
        ),
        (["--task-timeout", "3600"], "longer than the broker's consumer_timeout (1800s)"),
        (["--prefetch", "10", "--task-timeout", "10"], None),
    ],
    ids=["prefetch-times-timeout", "timeout-alone", "within"],
)
def test_consumer_warns_when_prefetched_tasks_can_outlast_the_consumer_timeout(
    broker_url: str, queue_name: str, args: list[str], warned: str | None
) -> None:
    completed = run("consumer", "--queue", queue_name, "--burst", *args)
    assert completed.returncode == 0, completed.stderr
    if warned is None:
        assert "consumer_timeout" not in completed.stderr
    else:
        assert warned in completed.stderr


def test_a_worker_whose_queue_is_deleted_declares_it_again_and_goes_on(
    broker_url: str, queue_name: str
) -> None:
    with RabbitBackend(broker_url, queue_name, wait_for_broker=30) as worker:
        worker.start_consuming()
        connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        connection.channel().queue_delete(queue_name)  # the broker cancels the consumer
        connection.close()
        assert wait_until(lambda: worker.receive(0.2) is None and worker.reconnects == 1, 20)
        task = TaskEnvelope(kind="echo")
        with RabbitBackend(broker_url, queue_name) as producer:
            producer.publish([task])
        delivery = None
        for _ in range(50):
            delivery = delivery or worker.receive(0.2)
        assert delivery is not None and task.id.encode() in delivery.body
