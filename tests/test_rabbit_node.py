"""A node of our own survives a crash with its durable queue and persistent message."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from tests.conftest import require_rabbitmq_server
from tests.rabbit_node import (
    RabbitNode,
    free_port,
    pid_alive,
    port_open,
)


def mnesia_holds(node: RabbitNode, needle: bytes) -> bool:
    """Whether any file of the node's Mnesia directory holds these bytes (a queue's name is
    stored as it is in the records Mnesia logs)."""
    for path in (node.dir / "mnesia").rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and needle in path.read_bytes():
                return True
    return False


def wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.05)


@pytest.mark.broker
@pytest.mark.fault
@pytest.mark.timeout(120)
def test_persistent_message_survives_sigkill(tmp_path: Path) -> None:
    require_rabbitmq_server()
    queue = "ts-fault-durable"
    with RabbitNode(free_port(), "ts-fault-test", tmp_path) as node:
        assert node.port != 5672
        node.start(timeout=60)

        connection = pika.BlockingConnection(pika.URLParameters(node.url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue, durable=True)
        channel.basic_publish(
            "", queue, b"survivor", pika.BasicProperties(delivery_mode=2), mandatory=True
        )  # confirmed: the broker has written the message to disk
        # The queue's own record goes to Mnesia's log, not to the message store: wait until it
        # is in a file (the kernel keeps it across a SIGKILL of the VM) rather than for a while.
        wait_for(lambda: mnesia_holds(node, queue.encode()), 30, "the queue's record on disk")

        vm_pid = node.vm_pid()
        assert vm_pid is not None and pid_alive(vm_pid)
        node.kill()
        assert not pid_alive(vm_pid)
        assert not port_open(node.port)
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()  # the stream is gone: pika reports it as it closes

        node.start(timeout=60)
        connection = pika.BlockingConnection(pika.URLParameters(node.url))
        try:
            channel = connection.channel()
            try:
                declared = channel.queue_declare(queue, durable=True, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                pytest.fail(
                    f"{exc}; in Mnesia's files: {mnesia_holds(node, queue.encode())}\n"
                    f"{node.log_tail(60)}"
                )
            assert declared.method.message_count == 1
            _, properties, body = channel.basic_get(queue, auto_ack=True)
            assert body == b"survivor"
            assert properties.delivery_mode == 2
        finally:
            connection.close()
        new_pid = node.vm_pid()
        assert new_pid is not None and new_pid != vm_pid

    assert not node.running
    assert not pid_alive(new_pid), "the node's Erlang VM outlived close()"
    assert not port_open(node.port)
