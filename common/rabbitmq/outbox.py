"""The outbox: deliveries' outcomes queued by callers, sent by a link's I/O thread in batches.

Callers queue `AckOp`, `NackOp` and `ResultOp` with `Outbox.put` (any thread); the link's I/O
thread, woken once per batch, hands its channel to `Outbox.send_io`, which is the only code
here that touches a channel (and only in that thread). Two rules make the batching safe:

- **A ``multiple=True`` ack covers only settled deliveries.** It acks every unacked delivery
  of the channel up to its tag, so `Acks` records, per delivery tag, which are settled, and
  an ack is coalesced into the next multiple ack only when every earlier tag is settled;
  otherwise it goes out alone. Deliveries may then be settled in any order, by any thread.
  That is what a worker needs: its watchdog fails a task that overran its limit (storing the
  retry copy first, a round trip) while the main thread, whose handler has just returned,
  goes on and acks the next task. Without the per-tag record, that ack would cover the timed
  out delivery before its retry copy is stored; if the process died then, the task would be
  lost. (Letting only the main thread settle cannot work: the watchdog acts precisely when
  that thread is stuck in a handler.)
- **A task's ack waits for its result's confirm.** Results are published with publisher
  confirms, and the ack of their task is sent only once the broker has taken the result; a
  result the broker refuses sends its task back to the queue (a nack with requeue), and one
  lost with the connection leaves its task unacked, to be handed out again. So results are
  at least once, like tasks. The worker's thread never waits for this: the results of one
  batch are published together, and the I/O thread sends their tasks' acks when the batch's
  confirms come back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.rabbitmq.confirms import Batch
from common.rabbitmq.topology import Message

log = logging.getLogger("taskshuttle.rabbitmq")


@dataclass(frozen=True, slots=True)
class AckOp:
    tag: int


@dataclass(frozen=True, slots=True)
class NackOp:
    """Give the delivery back to the queue."""

    tag: int


@dataclass(frozen=True, slots=True)
class ResultOp:
    """Publish a result with a confirm; then ack its task's delivery (or nack it if refused)."""

    message: Message
    tag: int


OutboxOp = AckOp | NackOp | ResultOp


class Acks:
    """The delivery tags of one channel, and which of them are settled (acked or nacked).

    I/O thread only. Every tag handed out is recorded with `delivered`; each is settled once,
    with `ack` or `nack`. An ack whose earlier tags are all settled is held, to go out as one
    ``multiple=True`` ack with those after it (`flush`); any other goes out alone at once.
    """

    __slots__ = ("_early", "_open", "_pending", "channel")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        #: Tags delivered and not settled, in order (the broker counts up from 1).
        self._open: deque[int] = deque()
        #: Tags settled while an earlier one was still open.
        self._early: set[int] = set()
        #: The held ack: it covers itself and every tag before it.
        self._pending: int | None = None

    def delivered(self, tag: int) -> None:
        self._open.append(tag)

    def ack(self, tag: int) -> None:
        if self._settle(tag):
            self._pending = tag
        else:
            self.channel.basic_ack(tag, multiple=False)

    def nack(self, tag: int) -> None:
        # Sent at once: the held ack covers only earlier tags, all settled already.
        self._settle(tag)
        self.channel.basic_nack(tag, multiple=False, requeue=True)

    def flush(self) -> None:
        """Send the held ack, if any."""
        if self._pending is not None:
            self.channel.basic_ack(self._pending, multiple=True)
            self._pending = None

    def _settle(self, tag: int) -> bool:
        """Record `tag` as settled; True if every tag before it is settled too."""
        open_tags = self._open
        if not open_tags or open_tags[0] != tag:
            self._early.add(tag)
            return False
        open_tags.popleft()
        early = self._early
        while early and open_tags and open_tags[0] in early:
            early.discard(open_tags.popleft())
        return True


#: How the I/O thread publishes a message whose confirm `batch` awaits, at `index` in it.
PublishTracked = Callable[[Message, Batch, int], None]


class Outbox:
    """What callers queued for one link, and what the I/O thread sent and still waits for.

    `put` is thread-safe; every method ending in ``_io`` runs in the link's I/O thread.
    """

    def __init__(self) -> None:
        self._ops: list[OutboxOp] = []
        self._lock = threading.Lock()
        self._send_posted = False
        #: The current channel's delivery tags and which are settled.
        self._acks: Acks | None = None
        #: Batches of results whose confirms (and so their tasks' acks) are awaited.
        self._results_in_flight = 0
        #: Set while no result awaits its confirm.
        self.results_settled = threading.Event()
        self.results_settled.set()
        #: A flush of acks held on arrival is scheduled (`settle_on_arrival_io`).
        self._arrivals_flush_due = False

    def put(self, op: OutboxOp) -> bool:
        """Queue `op`; True when the caller must wake the I/O thread (`send_io`) for it."""
        with self._lock:
            self._ops.append(op)
            if self._send_posted:
                return False
            self._send_posted = True
            return True

    def delivered_io(self, channel: Any, tag: int) -> None:
        """`channel` handed out `tag` (to a consumer or a get)."""
        self._acks_of(channel).delivered(tag)

    def settle_on_arrival_io(self, channel: Any, tag: int) -> bool:
        """`channel` handed out `tag` and it is acked at once (see `Link.consume`): held, to
        go out as one ``multiple=True`` ack with the others that came in the same read from
        the socket. True when the caller must schedule `flush_arrivals_io` for it (the first
        ack held since the last flush)."""
        acks = self._acks_of(channel)
        acks.delivered(tag)
        acks.ack(tag)
        if self._arrivals_flush_due:
            return False
        self._arrivals_flush_due = True
        return True

    def flush_arrivals_io(self) -> None:
        """Send the ack held by `settle_on_arrival_io` (dropped with a closed channel, whose
        deliveries go back to their queue by themselves)."""
        self._arrivals_flush_due = False
        acks = self._acks
        if acks is not None and acks.channel.is_open:
            acks.flush()

    def _acks_of(self, channel: Any) -> Acks:
        """The settlement record of `channel` (a new channel counts its tags from 1 again)."""
        acks = self._acks
        if acks is None or acks.channel is not channel:
            acks = self._acks = Acks(channel)
        return acks

    def send_io(self, channel: Any, publish: PublishTracked) -> None:
        """Send what was queued on `channel` (dropped if it is closed: the deliveries of a
        closed channel go back to their queue by themselves)."""
        with self._lock:
            ops, self._ops = self._ops, []
            self._send_posted = False
        if channel is None or not channel.is_open:
            return
        acks = self._acks_of(channel)
        results: list[ResultOp] = []
        for op in ops:  # isinstance, not `match`: this runs once per delivery
            if isinstance(op, AckOp):
                acks.ack(op.tag)
            elif isinstance(op, ResultOp):
                results.append(op)
            else:
                acks.nack(op.tag)
        acks.flush()
        if results:
            self._publish_results_io(acks, results, publish)

    def _publish_results_io(
        self, acks: Acks, results: list[ResultOp], publish: PublishTracked
    ) -> None:
        """Publish a batch of results; their tasks are settled when the confirms are in."""
        batch = Batch([op.message for op in results])
        for index, op in enumerate(results):
            publish(op.message, batch, index)
        self._results_in_flight += 1
        self.results_settled.clear()
        batch.future.add_done_callback(lambda _: self._results_answered_io(acks, results, batch))

    def _results_answered_io(self, acks: Acks, results: list[ResultOp], batch: Batch) -> None:
        """Every result of `batch` is answered, or the connection is gone (and with it every
        unsettled delivery, which the broker hands out again)."""
        self._results_in_flight -= 1
        if self._results_in_flight == 0:
            self.results_settled.set()
        if batch.future.exception() is not None or not acks.channel.is_open:
            return
        for op, confirmed in zip(results, batch.confirmed, strict=True):
            if confirmed:
                acks.ack(op.tag)
            else:
                log.warning("the broker refused a task's result: the task goes back to its queue")
                acks.nack(op.tag)
        acks.flush()
