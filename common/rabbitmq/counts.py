"""Passive looks at queues: how many messages each holds ready, how many consumers it has.

A passive declare creates nothing and changes nothing; a queue that does not exist is said so
(None). What AMQP cannot tell (unacked messages, rates, consumers' nodes) is the management
API's (`common.rabbitmq.management`). Open a counter with `common.factory.open_queue_counter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Self

from common.rabbitmq.backend import first_answering_link


class QueueCount(NamedTuple):
    ready: int
    consumers: int


class QueueCounter:
    """Passive declares on a connection of its own, to the first node of `url` that answers
    (the last node's error when none does; a refused password at once)."""

    def __init__(self, url: str, *, attempt_timeout: float = 10.0) -> None:
        self._link = first_answering_link(url, "counts", attempt_timeout)

    def count(self, names: Sequence[str]) -> dict[str, QueueCount | None]:
        """Each queue's ready messages and consumers (None for a queue that does not exist)."""
        found = self._link.inspect_queues(list(names))
        return {
            name: None if figures is None else QueueCount(*figures)
            for name, figures in zip(names, found, strict=True)
        }

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
