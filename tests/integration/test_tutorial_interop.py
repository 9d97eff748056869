"""Side by side with RabbitMQ's own work-queue tutorial (``new_task.py`` / ``worker.py``),
on its queue ``task_queue``, which the tutorial declares as a plain quorum queue.

The two tutorial programs are played here by a few lines of pika doing what they do: declare
``task_queue`` durable with ``x-queue-type: quorum``, publish plain text as persistent
messages; consume with prefetch 1 and ack each message after its work.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator

import pika
import pytest

from common.schemas import TaskEnvelope, decode_task
from tests.conftest import delete_queues
from tests.helpers import run

pytestmark = pytest.mark.timeout(90)

QUEUE = "task_queue"
TUTORIAL_ARGUMENTS = {"x-queue-type": "quorum"}


@pytest.fixture
def task_queue(broker_url: str) -> Iterator[str]:
    delete_queues(broker_url, QUEUE)
    yield QUEUE
    delete_queues(broker_url, QUEUE)


def _new_task(url: str, *messages: str) -> None:
    """What the tutorial's new_task.py does, once per message."""
    for message in messages:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.queue_declare(queue=QUEUE, durable=True, arguments=TUTORIAL_ARGUMENTS)
        channel.basic_publish(
            exchange="",
            routing_key=QUEUE,
            body=message,
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
        connection.close()


class TutorialWorker(threading.Thread):
    """What the tutorial's worker.py does, until `expected` messages are acked."""

    def __init__(self, url: str, expected: int) -> None:
        super().__init__(daemon=True)
        self.expected = expected
        self.bodies: list[bytes] = []
        self.declared = threading.Event()
        self.connection = pika.BlockingConnection(pika.URLParameters(url))

    def run(self) -> None:
        channel = self.connection.channel()
        channel.queue_declare(queue=QUEUE, durable=True, arguments=TUTORIAL_ARGUMENTS)
        channel.basic_qos(prefetch_count=1)
        self.declared.set()
        for method, _properties, body in channel.consume(QUEUE, inactivity_timeout=30):
            if method is None:
                break
            self.bodies.append(body)
            channel.basic_ack(delivery_tag=method.delivery_tag)
            if len(self.bodies) == self.expected:
                break
        channel.cancel()
        self.connection.close()


def test_new_task_s_plain_text_goes_to_our_dlq_with_its_reason(
    broker_url: str, task_queue: str
) -> None:
    _new_task(broker_url, "First message.", "Second message..")
    consumer = run(
        "consumer", "--queue", task_queue, "--url", broker_url, "--workers", "1", "--burst",
        timeout=60,
    )  # fmt: skip
    assert consumer.returncode == 0, consumer.stderr
    assert "exists with other arguments; used as it is" in consumer.stderr
    listed = run("consumer", "dlq", "list", "--queue", task_queue, "--url", broker_url, "--json")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(letter["reason"], base64.b64decode(letter["body"])) for letter in letters] == [
        ("not-json", b"First message."),
        ("not-json", b"Second message.."),
    ], letters
    assert all(letter["queue"] == QUEUE and letter["attempts"] == 0 for letter in letters)


def test_our_producer_s_tasks_are_worked_by_the_tutorial_s_worker(
    broker_url: str, task_queue: str
) -> None:
    """The tutorial's worker declares the queue first, as its tutorial has it started first:
    it would refuse a queue made by us (ours carries a delivery limit and a DLQ)."""
    worker = TutorialWorker(broker_url, expected=5)
    worker.start()
    assert worker.declared.wait(30)
    producer = run(
        "producer", "--backend", "rabbitmq", "--queue", task_queue, "--url", broker_url,
        "--count", "5", "--kind", "echo", "--payload", '{"text": "Hello World!"}',
    )  # fmt: skip
    assert producer.returncode == 0, producer.stderr
    worker.join(60)
    assert not worker.is_alive()
    tasks = [decode_task(body) for body in worker.bodies]
    assert [task.payload for task in tasks] == [{"text": "Hello World!"}] * 5
    assert all(isinstance(task, TaskEnvelope) and task.kind == "echo" for task in tasks)
