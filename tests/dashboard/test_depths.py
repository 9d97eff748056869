"""Queue depths as the dashboard reads them, from the real broker."""

from __future__ import annotations

import os
import socket
import urllib.request

import pytest

from common.defaults import QueueType
from consumer.dashboard.depths import (
    DEFAULT_MANAGEMENT_URL,
    AmqpDepths,
    DepthReader,
    ManagementDepths,
)
from consumer.dashboard.state import Depths
from tests.helpers import run

pytestmark = pytest.mark.broker

MANAGEMENT_URL = os.environ.get("TASKSHUTTLE_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL)


def publish(broker_url: str, queue_name: str, count: int) -> None:
    sent = run(
        "producer",
        *("--backend", "rabbitmq", "--url", broker_url, "--queue", queue_name),
        *("--count", str(count)),
    )
    assert sent.returncode == 0, sent.stderr


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(60)
def test_ready_tasks_are_counted_at_once_over_amqp(broker_url: str, queue_name: str) -> None:
    publish(broker_url, queue_name, 7)
    management = ManagementDepths(f"http://127.0.0.1:{closed_port()}", broker_url, queue_name)
    reader = DepthReader(management, AmqpDepths(broker_url, queue_name, QueueType.quorum))
    try:
        depths, why = reader.read()
        assert depths is not None
        # waiting: every queue's delayed tasks of the type (the delay levels are shared)
        assert depths == Depths(ready=7, unacked=None, waiting=depths.waiting, dead=0)
        assert depths.waiting >= 0
        assert why is not None and why.startswith("management API at http://127.0.0.1:")
        assert reader.source.startswith("AMQP (no unacked count")
        # A failed API is not asked again at once: the next reading says nothing of it.
        assert reader.read() == (depths, None)
    finally:
        reader.close()


@pytest.mark.timeout(60)
def test_the_management_api_adds_what_amqp_cannot_tell(broker_url: str, queue_name: str) -> None:
    try:
        urllib.request.urlopen(MANAGEMENT_URL, timeout=3).close()
    except OSError:
        pytest.skip(f"no management API answers at {MANAGEMENT_URL}")
    publish(broker_url, queue_name, 3)
    management = ManagementDepths(MANAGEMENT_URL, broker_url, queue_name)
    reader = DepthReader(management, AmqpDepths(broker_url, queue_name, QueueType.quorum))
    try:
        depths, why = reader.read()
        assert why is None, why
        assert reader.source == "AMQP, unacked from the management API"
        assert depths is not None
        assert (depths.ready, depths.unacked) == (3, 0)
    finally:
        reader.close()
