"""Task events from RabbitMQ: `EventListener`, an exclusive queue bound to `EVENTS_EXCHANGE`.

The event schema and the emitter are `common.events`'s (no backend there); the worker's sink,
which publishes to the exchange, is `common.rabbitmq.backend.RabbitEventSink`. Programs open
a listener through `common.factory.open_event_listener`.
"""

from __future__ import annotations

import queue as queue_module
import time
from collections.abc import Iterable, Iterator
from typing import Self

from common.errors import ConnectionLost
from common.events import EVENTS_EXCHANGE, EventKind, TaskEvent, decode_event
from common.rabbitmq.backend import first_answering_link
from common.rabbitmq.link import Link

#: Events a listener's queue keeps for it at most (the oldest go first): a listener that
#: falls behind loses old events rather than make the broker hold them without end.
LISTENER_BACKLOG = 10_000


class EventListener:
    """Task events from RabbitMQ, as they come: an exclusive queue of its own, bound to
    `EVENTS_EXCHANGE` for one work queue's events (or every queue's) and some kinds (or all),
    gone with the connection. Events that do not validate are dropped (counted in
    `dropped`)."""

    def __init__(
        self,
        url: str,
        queue: str | None = None,
        kinds: Iterable[EventKind] = (),
        *,
        attempt_timeout: float = 10.0,
    ) -> None:
        self.kinds = tuple(kinds)
        keys = [f"{queue or '*'}.{kind}" for kind in self.kinds] or [f"{queue or '*'}.*"]
        if queue is not None and "." in queue:  # a topic key's words are split at dots
            keys = ["#"]
        self.queue = queue
        self.dropped = 0
        self._link: Link = first_answering_link(url, "events", attempt_timeout)
        try:
            self._name = self._link.listen(EVENTS_EXCHANGE, keys, LISTENER_BACKLOG)
        except BaseException:
            self._link.close()
            raise

    def get(self, timeout: float) -> TaskEvent | None:
        """The next event, or None when none came within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                _tag, _redelivered, _props, body = self._link.inbox.get(timeout=max(remaining, 0))
            except queue_module.Empty:
                if not self._link.alive:
                    lost = ConnectionLost(f"connection to {self._link.safe_url} lost")
                    raise (self._link.close_error or lost) from None
                return None
            event = decode_event(body)
            if event is None:
                self.dropped += 1
            elif self._matches(event):
                return event

    def _matches(self, event: TaskEvent) -> bool:
        """What the binding could not filter: a queue name with dots in it."""
        return (self.queue is None or event.queue == self.queue) and (
            not self.kinds or event.kind in self.kinds
        )

    def __iter__(self) -> Iterator[TaskEvent]:
        while True:
            event = self.get(1.0)
            if event is not None:
                yield event

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
