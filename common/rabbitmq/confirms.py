"""Publisher confirms: which publishes the broker has taken, refused or not answered yet.

No connection here. `publish_in_chunks` pipelines a publish in chunks of `PUBLISH_CHUNK`,
one `Batch` each; the I/O thread reports what the channel saw (a publish went out, the
broker acked or nacked up to a tag, returned a message, the connection died) to a
`ConfirmTracker`; a caller waits on a `Batch`. One future per batch, not one per message:
a `Future` per message costs more than the publish itself.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from common.errors import BrokerError, ConnectionLost, PublishFailed
from common.rabbitmq.topology import Message

#: Publishes handed to the I/O thread at once; the next chunk goes out while this one's
#: confirms come back, so at most two chunks are unconfirmed.
PUBLISH_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Meanwhile:
    """Work for a publisher's thread while it waits for confirms: `run()` each time `wake` is
    set (by whatever it waits for besides: results arriving), and once at the start. The
    confirms set `wake` too, so the wait ends as soon as they are in."""

    run: Callable[[], object]
    wake: threading.Event


class Batch:
    """Publishes awaiting the broker's confirms, with one future for all of them."""

    __slots__ = ("confirmed", "failures", "future", "messages", "remaining")

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self.confirmed = [False] * len(messages)
        self.remaining = len(messages)
        self.failures: list[str] = []
        self.future: Future[None] = Future()

    def record_answer(self, index: int, failure: str | None) -> None:
        """The broker's answer for message `index`: taken (`failure` None), or why not."""
        if failure is None:
            self.confirmed[index] = True
        else:
            self.failures.append(failure)
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    def _wait_doing(self, meanwhile: Meanwhile, timeout: float) -> float:
        """Wait for the future (at most `timeout`), running `meanwhile` at each wake-up; the
        time left."""
        wake, future = meanwhile.wake, self.future
        future.add_done_callback(lambda _: wake.set())
        deadline = time.monotonic() + timeout
        while not future.done():
            wake.clear()  # cleared before looking: a wake-up after this is not missed
            meanwhile.run()
            left = deadline - time.monotonic()
            if future.done() or left <= 0:
                break
            wake.wait(left)
        return max(deadline - time.monotonic(), 0.0)

    @property
    def unconfirmed(self) -> list[Message]:
        return [m for m, ok in zip(self.messages, self.confirmed, strict=True) if not ok]

    def wait(self, timeout: float, safe_url: str, meanwhile: Meanwhile | None = None) -> bool:
        """True once all are confirmed; False if the connection dropped first. With
        `meanwhile`, its work runs whenever its event wakes this wait.

        Raises `PublishFailed` if the broker nacked or returned any, `BrokerError` if it
        stayed silent for `timeout` seconds.
        """
        if meanwhile is not None:
            timeout = self._wait_doing(meanwhile, timeout)
        try:
            self.future.result(timeout)
        except FutureTimeout:
            raise BrokerError(
                f"broker at {safe_url} did not confirm within {timeout:g}s (a quorum queue "
                "stores nothing while most of its nodes are down)"
            ) from None
        except ConnectionLost:
            return False
        if self.failures:
            raise PublishFailed(
                f"{len(self.failures)} of {len(self.messages)} messages not accepted: "
                f"{self.failures[0]}"
            )
        return True


class ConfirmTracker:
    """The publishes of one confirm-mode channel not yet answered, by delivery tag.

    Not locked: one thread (the link's I/O thread) calls every method.
    """

    def __init__(self) -> None:
        # delivery tag -> (its batch and index, or None when nobody waits; message id)
        self._unanswered: dict[int, tuple[Batch | None, int, str | None]] = {}
        self._returned: set[str] = set()
        self._last_tag = 0

    def __len__(self) -> int:
        return len(self._unanswered)

    def published(self, batch: Batch | None, index: int, message_id: str | None) -> int:
        """A publish went out on the channel; its delivery tag (1, 2, ... as the broker counts)."""
        self._last_tag += 1
        self._unanswered[self._last_tag] = (batch, index, message_id)
        return self._last_tag

    def returned(self, message_id: str | None) -> None:
        """The broker returned a message as unroutable (its confirm follows)."""
        if message_id:
            self._returned.add(message_id)

    def answered(self, delivery_tag: int, *, multiple: bool, acked: bool) -> None:
        """A confirm (``acked``) or a nack, for `delivery_tag` or, with `multiple`, all up to it."""
        if multiple:
            tags = list(itertools.takewhile(lambda t: t <= delivery_tag, self._unanswered))
        else:
            tags = [delivery_tag]
        for tag in tags:
            batch, index, message_id = self._unanswered.pop(tag, (None, 0, None))
            returned = message_id is not None and message_id in self._returned
            if returned:
                self._returned.discard(message_id)
            if batch is None:
                continue
            if acked and not returned:
                batch.record_answer(index, None)
            else:
                why = "unroutable (returned)" if returned else "nacked by the broker"
                batch.record_answer(index, f"message {message_id} {why}")

    def connection_lost(self, error: BrokerError) -> None:
        """No answers will come: every waiting batch learns it; its unconfirmed stay so."""
        for batch, _, _ in self._unanswered.values():
            if batch is not None and not batch.future.done():
                batch.future.set_exception(error)
        self._unanswered.clear()


def publish_in_chunks(
    messages: Sequence[Message],
    send: Callable[[Batch], None],
    timeout: float,
    safe_url: str,
    meanwhile: Meanwhile | None = None,
) -> list[Message]:
    """`send` each chunk of `messages` as a `Batch`, with at most two chunks in flight: the
    next one goes out while this one's confirms come back (and `meanwhile` runs).

    Returns the messages left unconfirmed because the connection dropped (`send` raised
    `ConnectionLost`, or a batch learnt it); raises as `Batch.wait` does.
    """
    chunks = [messages[i : i + PUBLISH_CHUNK] for i in range(0, len(messages), PUBLISH_CHUNK)]
    batches: list[Batch] = []
    for chunk in chunks:
        batch = Batch(chunk)
        try:
            send(batch)
        except ConnectionLost:
            break
        batches.append(batch)
        if len(batches) > 1 and not batches[-2].wait(timeout, safe_url, meanwhile):
            break
    if batches:
        batches[-1].wait(timeout, safe_url, meanwhile)
    unconfirmed = [m for batch in batches for m in batch.unconfirmed]
    for chunk in chunks[len(batches) :]:
        unconfirmed.extend(chunk)
    return unconfirmed
