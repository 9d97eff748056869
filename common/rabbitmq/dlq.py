"""Dead letters read and replayed on a link of their own (an admin connection), streamed: a
DLQ of any length is never held in memory.

Letters are taken one at a time with ``basic.get`` and not acked, so the broker keeps every
one; closing the link gives them all back, in their order. Only a replay acks, and only
letters whose copies in the work queue the broker has confirmed.
"""

from __future__ import annotations

from collections.abc import Iterator

from common.errors import ConnectionLost
from common.rabbitmq import topology
from common.rabbitmq.link import Link, Received
from common.rabbitmq.topology import QueueNames
from common.schemas import DeadLetter, as_first_attempt

#: Dead letters moved back per confirmed batch by `replay_letters`, and at most about this
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


def read_letters(link: Link, names: QueueNames, limit: int | None) -> Iterator[DeadLetter]:
    """The dead letters of `names`' DLQ, oldest first, at most `limit`; however hostile
    their headers (see `topology.letter_from`). They stay in the DLQ."""
    for _tag, _redelivered, props, body in _messages(link, names.dlq, limit):
        yield topology.letter_from(props, body, names.work)


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
        if link.publish_many(copies, timeout=60):  # left unconfirmed: the link is gone
            raise link.close_error or ConnectionLost("connection lost while replaying")
        for tag, *_ in chunk:
            link.ack(tag)
        moved += len(chunk)
    link.settle_pending(timeout=30)
    return moved
