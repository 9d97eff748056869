"""Dead letters read and replayed on a link of their own (an admin connection), streamed: a
DLQ of any length is never held in memory.

Reading takes letters one at a time with ``basic.get`` and does not ack them, so the broker
keeps every one; closing the link gives them all back. A classic queue puts each back where
it was; a quorum queue puts them back in an order of its own (RabbitMQ 3.10 does, even for 20
letters), so reading is safe but may shuffle a quorum DLQ.

A replay acks, and only letters whose copies the broker has confirmed. It takes them a chunk
at a time by a consumer of the chunk's own (`_chunks`), not by ``basic.get``: a quorum queue
takes the ack of each ``get`` as a command of its own, holds back those past 32 unapplied,
and drops them if the channel closes first, so the last letters of a replay would have stayed
in the DLQ beside their copies (measured: 17 of 250). A replay of some letters
(`replay_matching`) leaves the others in their order by moving every letter it does not
replay to the DLQ's tail, copy first, rather than by giving it back.
"""

from __future__ import annotations

import copy
import itertools
import queue
from collections.abc import Callable, Iterator, Sequence

from pika.spec import BasicProperties

import common.rabbitmq.topology as topology  # not the package, whose __init__ imports dlq
from common.errors import ConnectionLost
from common.rabbitmq.link import Link, Received
from common.rabbitmq.topology import Message, QueueNames
from common.schemas import DeadLetter, as_first_attempt

#: Dead letters moved per confirmed chunk by the replays, and about how many bytes of them
#: (a dead letter may be a body too large to process): a chunk holds fewer letters when the
#: letters so far were large. The first chunk is small, as nothing is known yet.
REPLAY_CHUNK = 100
REPLAY_CHUNK_BYTES = 8_000_000
FIRST_CHUNK = 10
#: How long a replay waits for the next letter of a chunk before it takes the DLQ as shorter
#: than it was counted (another client took or holds some of its letters).
LETTER_WAIT = 2.0


def _chunks(link: Link, dlq: str, count: int) -> Iterator[list[Received]]:
    """The first `count` letters of `dlq`, in order, a chunk at a time; the caller acks each
    chunk's letters at once (`Link.ack_all`) before it asks for the next.

    Each chunk is taken by a consumer allowed to hold exactly that many unacked, cancelled
    before the chunk is handed over: no letter past it is delivered, and none is left unacked
    to be given back (out of order) when the link closes."""
    tags = (f"{dlq}.replay.{n}" for n in itertools.count())
    size, taken_bytes, taken = min(count, FIRST_CHUNK), 0, 0
    while size > 0:
        tag = next(tags)
        link.consume(dlq, prefetch=size, tag=tag)
        chunk = _take(link.inbox, size, LETTER_WAIT)
        link.cancel(tag)
        chunk += _take(link.inbox, size - len(chunk), 0)  # delivered before the cancel
        if not chunk:
            return
        yield chunk
        count -= len(chunk)
        taken += len(chunk)
        taken_bytes += sum(len(body) for *_, body in chunk)
        fits = REPLAY_CHUNK_BYTES * taken // max(taken_bytes, 1)
        size = min(count, REPLAY_CHUNK, max(fits, 1))


def _take(inbox: queue.SimpleQueue[Received], size: int, wait: float) -> list[Received]:
    """Up to `size` deliveries from `inbox`, waiting at most `wait` for each."""
    taken: list[Received] = []
    while len(taken) < size:
        try:
            taken.append(inbox.get(timeout=wait) if wait else inbox.get_nowait())
        except queue.Empty:
            break
    return taken


def read_letters(
    link: Link, names: QueueNames, limit: int | None, reason: str | None = None
) -> Iterator[DeadLetter]:
    """The dead letters of `names`' DLQ, oldest first, at most `limit` of those whose reason
    is `reason` (any, if None); however hostile their headers (see `topology.letter_from`).
    They stay in the DLQ. A letter of another reason is dropped as soon as it is read: a
    filter over a long DLQ holds one letter at a time, as the plain listing does."""
    shown = 0
    while limit is None or shown < limit:  # checked before a `get`: none is taken in vain
        received = link.get(names.dlq)
        if received is None:
            return
        _tag, _redelivered, props, body = received
        letter = topology.letter_from(props, body, names.work)
        if reason is None or letter.reason == reason:
            shown += 1
            yield letter


def matching(task_id: str | None, reason: str | None) -> Callable[[DeadLetter], bool]:
    """Whether a letter is one of those asked for: of task `task_id` and of reason `reason`
    (either left out: any)."""

    def wanted(letter: DeadLetter) -> bool:
        return (task_id is None or letter.task_id == task_id) and (
            reason is None or letter.reason == reason
        )

    return wanted


def replay_letters(link: Link, names: QueueNames) -> int:
    """Move dead letters back to the work queue as fresh first attempts, a chunk at a time
    (`_chunks`): a chunk's letters are acked once their copies are confirmed. Only as many as
    the DLQ held at the start, so a letter that comes back meanwhile (garbage is
    dead-lettered again at once) is not replayed round and round. How many moved."""
    moved = 0
    for chunk in _chunks(link, names.dlq, link.queue_length(names.dlq)):
        copies = [
            topology.raw_message(names.work, as_first_attempt(body))
            for _tag, _redelivered, _props, body in chunk
        ]
        _move(link, chunk, copies)
        moved += len(chunk)
    link.settle_pending(timeout=30)
    return moved


def replay_matching(link: Link, names: QueueNames, wanted: Callable[[DeadLetter], bool]) -> int:
    """Move the dead letters `wanted` picks back to the work queue as fresh first attempts,
    and leave the others in the DLQ in their order. How many moved.

    One pass over as many letters as the DLQ held at the start, a chunk at a time, each
    letter copied before it is acked: a picked one to the work queue (as `replay_letters`
    does), any other to the DLQ's tail as it was (same body, same properties). After a whole
    pass the letters left are in their order again, behind any dead-lettered meanwhile; so
    the pass never stops early (it would leave the DLQ rotated), even once a task id is found.
    A link lost mid-chunk gives that chunk's letters back unacked, beside whatever copies were
    confirmed: a letter may then be there twice, or replayed and still there; none is lost."""
    moved = 0
    for chunk in _chunks(link, names.dlq, link.queue_length(names.dlq)):
        copies = []
        for _tag, _redelivered, props, body in chunk:
            if wanted(topology.letter_from(props, body, names.work)):
                copies.append(topology.raw_message(names.work, as_first_attempt(body)))
                moved += 1
            else:
                copies.append(Message(names.dlq, body, _as_stored(props)))
        _move(link, chunk, copies)
    link.settle_pending(timeout=30)
    return moved


#: A header a quorum queue adds to each message it delivers: not part of the letter.
_DELIVERY_HEADER = "x-delivery-count"


def _as_stored(props: BasicProperties) -> BasicProperties:
    """A letter's properties as they were stored, without what its delivery added."""
    if not isinstance(props.headers, dict) or _DELIVERY_HEADER not in props.headers:
        return props
    stored = copy.copy(props)
    stored.headers = {k: v for k, v in props.headers.items() if k != _DELIVERY_HEADER}
    return stored


def _move(link: Link, chunk: Sequence[Received], copies: Sequence[Message]) -> None:
    """Publish the copies of a chunk's letters; ack the letters once every copy is confirmed
    (in one publish, so the copies that go to one queue keep the letters' order)."""
    if link.publish_many(copies, timeout=60):  # left unconfirmed: the link is gone
        raise link.close_error or ConnectionLost("connection lost while replaying")
    link.ack_all([tag for tag, *_ in chunk])  # one ack: see `Link.ack_all`
