"""A link whose I/O thread hits an exception fails its callers at once with ConnectionLost.

pika is not mocked: each test runs a real link against the broker, through a subclass of
`Link` (used only here) whose I/O-thread code raises, as a bug or an unexpected state would.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pika
import pytest

from common.errors import ConnectionLost
from common.rabbitmq import RabbitBackend
from common.rabbitmq import backend as backend_module
from common.rabbitmq.confirms import Batch
from common.rabbitmq.link import Link
from common.rabbitmq.topology import Message
from common.schemas import TaskEnvelope
from common.settings import redact_url

pytestmark = pytest.mark.timeout(60)


class BrokenPublish(Link):
    """Its I/O thread raises where it would publish a batch (code run from a posted call)."""

    def _publish_batch_io(self, batch: Batch) -> None:
        raise RuntimeError("a bug while publishing")


class BrokenConfirm(Link):
    """Its I/O thread raises in a frame callback (the broker's confirm)."""

    def _on_confirm_io(self, frame: Any) -> None:
        raise RuntimeError("a bug while reading a confirm")


def _open(link_class: type[Link], url: str, queue: str) -> Link:
    link = link_class(pika.URLParameters(url), redact_url(url), queue)
    link.open(10)
    link.declare(queue)
    return link


@pytest.mark.parametrize("link_class", [BrokenPublish, BrokenConfirm])
def test_an_exception_in_the_io_thread_fails_the_publisher_at_once_with_connection_lost(
    link_class: type[Link],
    broker_url: str,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = _open(link_class, broker_url, queue_name)
    message = Message(queue_name, b"{}", pika.BasicProperties(message_id="m1"))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="taskshuttle.rabbitmq"):
        unconfirmed = link.publish_many([message], timeout=30)
    elapsed = time.monotonic() - started
    assert unconfirmed == [message]  # so the backend publishes it again
    assert elapsed < 5, f"the caller waited {elapsed:.1f}s"  # not the 30 s confirm timeout
    assert isinstance(link.close_error, ConnectionLost), link.close_error
    assert "RuntimeError: a bug" in str(link.close_error)
    assert not link.alive
    # Not silent: the error is logged with its traceback.
    logged = [r for r in caplog.records if "error in the AMQP I/O thread" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "a bug" in str(logged[0].exc_info[1])
    link.close()


def test_a_backend_publishes_again_what_a_broken_io_thread_left_unconfirmed(
    broker_url: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    links: list[Link] = []

    class FirstLinkBreaks(Link):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            links.append(self)

        def _publish_batch_io(self, batch: Batch) -> None:
            if len(links) == 1:
                raise RuntimeError("a bug while publishing")
            super()._publish_batch_io(batch)

    monkeypatch.setattr(backend_module, "Link", FirstLinkBreaks)
    task = TaskEnvelope(kind="echo")
    with RabbitBackend(broker_url, queue_name, wait_for_broker=10) as backend:
        started = time.monotonic()
        backend.publish([task], timeout=30)
        assert time.monotonic() - started < 10
        assert backend.republished == 1 and backend.reconnects == 1
        assert backend.pending() == 1  # once: the broken link never published it
