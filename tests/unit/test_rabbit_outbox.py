"""The outbox's bookkeeping, without a broker: which acks may be coalesced into one
``multiple=True`` ack, and when a task's ack follows its result's confirm.

The channel here only records the acks and nacks it is asked to send, in order; what the
broker does with them is the integration tests' business (tests/integration/test_delivery.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from pika.spec import BasicProperties

from common.rabbitmq.confirms import Batch, ConfirmTracker
from common.rabbitmq.outbox import AckOp, Acks, NackOp, Outbox, ResultOp
from common.rabbitmq.topology import Message

pytestmark = pytest.mark.timeout(10)


class Recorder:
    """A channel that records what it is asked to send."""

    is_open = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool) -> None:
        self.sent.append(("ack", tag, multiple))

    def basic_nack(self, tag: int, multiple: bool, requeue: bool) -> None:
        assert requeue
        self.sent.append(("nack", tag, multiple))


def _acks(delivered: int) -> tuple[Acks, Recorder]:
    channel = Recorder()
    acks = Acks(channel)
    for tag in range(1, delivered + 1):
        acks.delivered(tag)
    return acks, channel


def test_acks_in_order_go_out_as_one_multiple_ack() -> None:
    acks, channel = _acks(5)
    for tag in (1, 2, 3):
        acks.ack(tag)
    assert channel.sent == []  # held
    acks.flush()
    assert channel.sent == [("ack", 3, True)]


def test_an_ack_after_an_unsettled_delivery_goes_alone() -> None:
    """Delivery 1 is being retried by the watchdog while the worker acks 2 and 3: no ack may
    cover 1 until it is settled."""
    acks, channel = _acks(4)
    acks.ack(2)
    acks.ack(3)
    acks.flush()
    assert channel.sent == [("ack", 2, False), ("ack", 3, False)]
    acks.ack(1)  # its retry copy is stored: now it is settled
    acks.ack(4)
    acks.flush()
    assert channel.sent[2:] == [("ack", 4, True)]  # covers 1 (and 2, 3 were acked already)


def test_a_nack_goes_at_once_and_is_never_covered_by_a_later_ack() -> None:
    acks, channel = _acks(4)
    acks.ack(1)
    acks.nack(2)
    acks.ack(3)
    acks.flush()
    # The held ack of 1 goes out after the nack of 2: it covers only 1.
    assert channel.sent == [("nack", 2, False), ("ack", 3, True)]


def test_every_tag_is_acked_exactly_once_whatever_the_order() -> None:
    order = [3, 1, 4, 2, 6, 5, 8, 7]
    acks, channel = _acks(len(order))
    for tag in order:
        acks.ack(tag)
    acks.flush()
    covered: set[int] = set()
    for _kind, tag, multiple in channel.sent:
        newly = set(range(1, tag + 1)) - covered if multiple else {tag}
        assert tag in newly  # a multiple ack's own tag is always still unacked
        covered |= newly
    assert covered == set(range(1, len(order) + 1))


def _result(tag: int) -> ResultOp:
    return ResultOp(Message("q.replies.x", b"{}", BasicProperties()), tag)


def _outbox_with(ops: list[Any]) -> tuple[Outbox, Recorder, ConfirmTracker]:
    outbox, channel, tracker = Outbox(), Recorder(), ConfirmTracker()
    for tag in range(1, 10):
        outbox.delivered_io(channel, tag)
    for op in ops:
        outbox.put(op)

    def publish(message: Message, batch: Batch, index: int) -> None:
        tracker.published(batch, index, message.properties.message_id)

    outbox.send_io(channel, publish)
    return outbox, channel, tracker


def test_a_task_with_a_result_is_acked_only_once_the_result_is_confirmed() -> None:
    outbox, channel, tracker = _outbox_with([_result(1), _result(2), AckOp(3)])
    assert channel.sent == [("ack", 3, False)]  # 1 and 2 wait for their results
    assert not outbox.results_settled.is_set()
    tracker.answered(2, multiple=True, acked=True)
    assert channel.sent[1:] == [("ack", 2, True)]
    assert outbox.results_settled.is_set()


def test_a_refused_result_sends_its_task_back() -> None:
    _outbox, channel, tracker = _outbox_with([_result(1), _result(2)])
    tracker.answered(1, multiple=False, acked=False)
    tracker.answered(2, multiple=False, acked=True)
    assert channel.sent == [("nack", 1, False), ("ack", 2, True)]


def test_results_lost_with_the_connection_leave_their_tasks_unsettled() -> None:
    from common.errors import ConnectionLost

    outbox, channel, tracker = _outbox_with([_result(1), NackOp(2)])
    tracker.connection_lost(ConnectionLost("gone"))
    assert channel.sent == [("nack", 2, False)]
    assert outbox.results_settled.is_set()  # nothing left to wait for


def test_a_new_channel_starts_a_new_record() -> None:
    outbox, old, _ = _outbox_with([])
    new = Recorder()
    outbox.delivered_io(new, 1)
    outbox.put(AckOp(1))
    outbox.send_io(new, lambda *_: None)
    assert (old.sent, new.sent) == ([], [("ack", 1, True)])


def test_results_settled_on_arrival_in_one_read_are_acked_together() -> None:
    """A producer's reply queue: every result is acked as it arrives, and those of one read
    from the socket go out as one ``multiple=True`` ack, scheduled by the first of them."""
    outbox, channel = Outbox(), Recorder()
    scheduled = [outbox.settle_on_arrival_io(channel, tag) for tag in (1, 2, 3)]
    assert scheduled == [True, False, False]
    assert channel.sent == []
    outbox.flush_arrivals_io()
    assert channel.sent == [("ack", 3, True)]
    assert outbox.settle_on_arrival_io(channel, 4) is True  # the next read schedules again
    outbox.flush_arrivals_io()
    assert channel.sent == [("ack", 3, True), ("ack", 4, True)]


def test_acks_held_on_arrival_are_dropped_with_a_closed_channel() -> None:
    """The broker hands a closed channel's deliveries out again: nothing is sent on it."""
    outbox, channel = Outbox(), Recorder()
    outbox.settle_on_arrival_io(channel, 1)
    channel.is_open = False
    outbox.flush_arrivals_io()
    assert channel.sent == []
