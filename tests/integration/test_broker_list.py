"""Several broker addresses in one URL setting (a cluster's nodes): a backend connects to one
of them, not always the first, and a node that does not answer is passed over."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope
from common.settings import redact_url
from tests.helpers import receive_within

pytestmark = pytest.mark.timeout(60)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/%2F"


def _alias(url: str) -> str:
    """The same broker under another host name: another "node" for the backend."""
    parts = urlsplit(url)
    other = "localhost" if parts.hostname != "localhost" else "127.0.0.1"
    return url.replace(f"@{parts.hostname}", f"@{other}", 1)


def test_a_node_that_does_not_answer_is_passed_over(broker_url: str, queue_name: str) -> None:
    urls = f"{_dead_url()},{broker_url}"
    for _ in range(4):  # whichever node the backend tries first
        with RabbitBackend(urls, queue_name, wait_for_broker=10) as backend:
            assert backend.connected_to == redact_url(broker_url)
            task = TaskEnvelope(kind="echo")
            backend.publish([task])
            assert receive_within(backend).body
            backend.delete_queues()


def test_backends_spread_over_the_nodes_of_the_list(broker_url: str, queue_name: str) -> None:
    urls = [broker_url, _alias(broker_url)]
    seen = []
    for _ in range(20):
        with RabbitBackend(",".join(urls), queue_name) as backend:
            seen.append(backend.connected_to)
    assert set(seen) == {redact_url(u) for u in urls}, seen  # chance of one node only: 2e-6
