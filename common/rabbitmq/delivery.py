"""A delivery on RabbitMQ: how a received message becomes a `Delivery`, which ``reply_to`` it
may keep, and which errors of settling it are dropped. Runs in the caller's thread."""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Iterator
from dataclasses import dataclass

from common.backend import Delivery
from common.errors import BrokerError
from common.rabbitmq.link import Link
from common.rabbitmq.topology import QueueNames

log = logging.getLogger("taskshuttle.rabbitmq")

#: Refused ``reply_to`` values remembered (each is logged once); past this, only counted.
REFUSED_LOGGED = 1000


@dataclass(frozen=True, slots=True)
class Handle:
    """What settles a delivery: the link it came on, its tag, where its result goes."""

    link: Link
    tag: int
    reply_to: str | None


class ReplyCheck:
    """Which ``reply_to`` a task keeps: only a reply queue of this work queue (see
    `QueueNames.is_reply_queue`). A task with any other runs, but its result is not sent;
    `refused` counts them, and each distinct value is logged once."""

    def __init__(self, names: QueueNames) -> None:
        self.names = names
        self.refused = 0
        self._seen: set[object] = set()

    def allowed(self, reply_to: object) -> str | None:
        if reply_to is None or self.names.is_reply_queue(reply_to):
            return reply_to  # type: ignore[return-value]  # is_reply_queue: a str
        self.refused += 1
        if reply_to not in self._seen and len(self._seen) < REFUSED_LOGGED:
            self._seen.add(reply_to)
            log.warning(
                "refused reply_to %r: not a reply queue of %r; its tasks run, no result is sent",
                reply_to,
                self.names.work,
            )
        return None


def take(link: Link, timeout: float, replies: ReplyCheck) -> Delivery | None:
    """The next message `link`'s consumer received, within `timeout` seconds."""
    try:
        tag, redelivered, props, body = link.inbox.get(timeout=timeout)
    except queue.Empty:
        return None
    reply_to = replies.allowed(props.reply_to)
    return Delivery(
        body=body,
        redelivered=redelivered,
        handle=Handle(link, tag, reply_to),
        wants_result=reply_to is not None,
    )


@contextlib.contextmanager
def unless_gone(link: Link) -> Iterator[None]:
    """Errors that come from `link`'s death are dropped: the delivery it carried is not
    settled, and the broker hands it out again. Any other error goes on."""
    try:
        yield
    except BrokerError:
        if link.alive:
            raise
