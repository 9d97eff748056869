"""Confirm bookkeeping without a broker: the tracker is told what a channel would report."""

from __future__ import annotations

import threading
import time

import pytest
from pika.spec import BasicProperties

from common.errors import BrokerError, ConnectionLost, PublishFailed
from common.rabbitmq.confirms import (
    PUBLISH_CHUNK,
    Batch,
    ConfirmTracker,
    Meanwhile,
    publish_in_chunks,
)
from common.rabbitmq.topology import Message

pytestmark = pytest.mark.timeout(10)

URL = "amqp://guest:***@broker:5672/%2F"


def _messages(n: int) -> list[Message]:
    return [Message("work", b"%d" % i, BasicProperties(message_id=f"m{i}")) for i in range(n)]


def _published(tracker: ConfirmTracker, n: int) -> Batch:
    """A batch of `n` messages, each published (tags 1..n on a fresh channel)."""
    batch = Batch(_messages(n))
    tags = [
        tracker.published(batch, i, m.properties.message_id) for i, m in enumerate(batch.messages)
    ]
    assert tags == list(range(1, n + 1))
    return batch


def test_a_multiple_ack_confirms_every_tag_up_to_it() -> None:
    tracker = ConfirmTracker()
    batch = _published(tracker, 5)
    tracker.answered(3, multiple=True, acked=True)
    assert batch.confirmed == [True, True, True, False, False]
    assert not batch.future.done() and len(tracker) == 2
    tracker.answered(5, multiple=True, acked=True)
    assert batch.wait(1, URL) is True
    assert batch.unconfirmed == [] and len(tracker) == 0


def test_a_nack_fails_the_batch_once_every_message_is_answered() -> None:
    tracker = ConfirmTracker()
    batch = _published(tracker, 3)
    tracker.answered(2, multiple=False, acked=False)
    tracker.answered(1, multiple=False, acked=True)
    assert not batch.future.done()
    tracker.answered(3, multiple=False, acked=True)
    with pytest.raises(PublishFailed, match="1 of 3 messages not accepted: message m1 nacked"):
        batch.wait(1, URL)
    assert batch.unconfirmed == [batch.messages[1]]


def test_a_returned_message_fails_even_though_its_confirm_is_an_ack() -> None:
    tracker = ConfirmTracker()
    batch = _published(tracker, 2)
    tracker.returned("m0")  # the broker returns an unroutable message, then confirms it
    tracker.answered(2, multiple=True, acked=True)
    with pytest.raises(PublishFailed, match="message m0 unroutable"):
        batch.wait(1, URL)


def test_a_connection_lost_mid_batch_leaves_exactly_the_unconfirmed() -> None:
    tracker = ConfirmTracker()
    batch = _published(tracker, 5)
    tracker.answered(2, multiple=True, acked=True)
    tracker.connection_lost(ConnectionLost("gone"))
    assert batch.wait(1, URL) is False
    assert batch.unconfirmed == batch.messages[2:]
    assert len(tracker) == 0


def _published_after(tracker: ConfirmTracker, first_tag: int, n: int) -> Batch:
    batch = Batch(_messages(n))
    tags = [tracker.published(batch, i, None) for i in range(n)]
    assert tags == list(range(first_tag, first_tag + n))
    return batch


def test_publishes_nobody_waits_for_take_their_tags_without_a_batch() -> None:
    tracker = ConfirmTracker()
    assert tracker.published(None, 0, None) == 1  # a result, between two batches
    batch = _published_after(tracker, first_tag=2, n=2)
    tracker.answered(3, multiple=True, acked=True)
    assert batch.wait(1, URL) is True and len(tracker) == 0


def test_a_silent_broker_is_an_error_after_the_timeout() -> None:
    with pytest.raises(BrokerError, match=r"did not confirm within 0\.01s"):
        Batch(_messages(1)).wait(0.01, URL)


class _Channel:
    """Stands in for a link's I/O thread: publishes each batch and answers as told; once
    the connection is lost, it takes no more (as a dead link's `_post` raises)."""

    def __init__(self, *, lose_at_chunk: int | None = None, drop_at_chunk: int | None = None):
        self.tracker = ConfirmTracker()
        self.chunks: list[int] = []
        self.lose_at_chunk = lose_at_chunk
        self.drop_at_chunk = drop_at_chunk
        self.lost = False

    def send(self, batch: Batch) -> None:
        chunk = len(self.chunks)
        if chunk == self.drop_at_chunk or self.lost:
            raise ConnectionLost("the link is closed")
        self.chunks.append(len(batch.messages))
        last = 0
        for i, message in enumerate(batch.messages):
            last = self.tracker.published(batch, i, message.properties.message_id)
        if chunk == self.lose_at_chunk:
            self.tracker.answered(last - 1, multiple=True, acked=True)  # all but the last
            self.tracker.connection_lost(ConnectionLost("gone"))
            self.lost = True
        else:
            self.tracker.answered(last, multiple=True, acked=True)


def test_a_publish_goes_out_in_chunks_each_confirmed() -> None:
    channel = _Channel()
    n = 2 * PUBLISH_CHUNK + 7
    assert publish_in_chunks(_messages(n), channel.send, 1, URL) == []
    assert channel.chunks == [PUBLISH_CHUNK, PUBLISH_CHUNK, 7]


def test_a_chunk_cut_short_leaves_its_unconfirmed_and_every_later_chunk() -> None:
    messages = _messages(3 * PUBLISH_CHUNK)
    channel = _Channel(lose_at_chunk=1)
    left = publish_in_chunks(messages, channel.send, 1, URL)
    assert left == messages[2 * PUBLISH_CHUNK - 1 :]


def test_a_closed_link_leaves_every_chunk_it_did_not_take() -> None:
    messages = _messages(2 * PUBLISH_CHUNK)
    channel = _Channel(drop_at_chunk=1)
    assert publish_in_chunks(messages, channel.send, 1, URL) == messages[PUBLISH_CHUNK:]


def test_a_wait_with_work_meanwhile_does_it_at_each_wake_up_and_ends_with_the_confirms() -> None:
    """A producer takes the results that arrive while its publish waits (each arrival sets
    the event), and the wait ends as soon as the confirms are in."""
    tracker = ConfirmTracker()
    batch = _published(tracker, 2)
    wake = threading.Event()
    runs: list[float] = []

    def arrivals() -> None:  # the I/O thread: a result arrives, then the confirms
        time.sleep(0.05)
        wake.set()
        time.sleep(0.05)
        tracker.answered(2, multiple=True, acked=True)

    threading.Thread(target=arrivals).start()
    started = time.monotonic()
    assert batch.wait(5, URL, Meanwhile(lambda: runs.append(time.monotonic()), wake)) is True
    assert time.monotonic() - started < 1
    assert len(runs) >= 2  # once at the start, once when the result arrived
    assert runs[1] - started >= 0.04


def test_a_wait_with_work_meanwhile_still_times_out() -> None:
    batch = _published(ConfirmTracker(), 1)
    with pytest.raises(BrokerError, match="did not confirm within"):
        batch.wait(0.2, URL, Meanwhile(lambda: None, threading.Event()))
