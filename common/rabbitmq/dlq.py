"""Dead letters read and replayed on a link of their own (an admin connection), streamed: a
DLQ of any length is never held in memory.

Letters are taken one at a time with ``basic.get`` and not acked, so the broker keeps every
one; closing the link gives them all back. A classic queue puts each back where it was; a
quorum queue puts them back in an order of its own (RabbitMQ 3.10 does, even for 20 letters),
so reading is safe but may shuffle a quorum DLQ. Only a replay acks, and only letters whose
copies the broker has confirmed: a replay of some letters (`replay_matching`) leaves the
others in their order by moving every letter it does not replay to the DLQ's tail, copy
first, rather than by giving it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from common.errors import ConnectionLost
from common.rabbitmq import topology
from common.rabbitmq.link import Link, Received
from common.rabbitmq.topology import Message, QueueNames
from common.schemas import DeadLetter, as_first_attempt

#: Dead letters moved per confirmed batch by the replays, and at most about this
#: many bytes of them (a dead letter may be a body too large to process).
REPLAY_CHUNK = 100
REPLAY_CHUNK_BYTES = 8_000_000


def _messages(link: Link, queue: str, limit: int | None) -> Iterator[Received]:
    taken = 0
    while limit is None or taken < limit:
        received = link.get(queue)
        if received is None:
            return
        taken += 1
        yield received


def _chunk(link: Link, queue: str, limit: int) -> list[Received]:
    chunk, size = [], 0
    for received in _messages(link, queue, limit):
        chunk.append(received)
        size += len(received[3])
        if size >= REPLAY_CHUNK_BYTES:
            break
    return chunk


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
    (`REPLAY_CHUNK`): a chunk's letters are acked once their copies are confirmed. Only as
    many as the DLQ held at the start, so a letter that comes back meanwhile (garbage is
    dead-lettered again at once) is not replayed round and round. How many moved."""
    moved = 0
    total = link.queue_length(names.dlq)
    while chunk := _chunk(link, names.dlq, min(total - moved, REPLAY_CHUNK)):
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
    left = link.queue_length(names.dlq)
    while chunk := _chunk(link, names.dlq, min(left, REPLAY_CHUNK)):
        left -= len(chunk)
        copies = []
        for _tag, _redelivered, props, body in chunk:
            if wanted(topology.letter_from(props, body, names.work)):
                copies.append(topology.raw_message(names.work, as_first_attempt(body)))
                moved += 1
            else:
                copies.append(Message(names.dlq, body, props))
        _move(link, chunk, copies)
    link.settle_pending(timeout=30)
    return moved


def _move(link: Link, chunk: Sequence[Received], copies: Sequence[Message]) -> None:
    """Publish the copies of a chunk's letters; ack the letters once every copy is confirmed
    (in one publish, so the copies that go to one queue keep the letters' order)."""
    if link.publish_many(copies, timeout=60):  # left unconfirmed: the link is gone
        raise link.close_error or ConnectionLost("connection lost while replaying")
    for tag, *_ in chunk:
        link.ack(tag)
