"""The dead letters the page lists, and its actions on them, over one admin connection.

Listing a DLQ takes its letters with ``basic.get`` and gives them back (`iter_dead_letters`):
each listing is a delivery of every letter listed, so the list is read again only when the
DLQ's length changes or after an action, not on every tick. Listing and actions hold one
lock: a replay never runs while a listing holds letters back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common.errors import TaskshuttleError

if TYPE_CHECKING:
    from common.rabbitmq import RabbitBackend

log = logging.getLogger("taskshuttle.dashboard")

#: Dead letters shown on the page (the oldest; the count is the DLQ's whole length).
LISTED = 50
#: Characters of a dead letter's error shown.
ERROR_CHARS = 300


class LetterDesk:
    """The DLQ of one work queue: its length, its oldest letters, replay and purge.

    `open_admin` builds a connected admin backend; a lost connection is built again at the
    next call (an admin connection does not wait for the broker: the page shows the error).
    """

    def __init__(self, open_admin: Callable[[], RabbitBackend]) -> None:
        self._open_admin = open_admin
        self._lock = threading.Lock()
        self._admin: RabbitBackend | None = open_admin()  # a bad URL or password fails here
        self._listed_at_count: int | None = None
        self.count: int | None = None
        self.letters: list[dict[str, Any]] = []
        self.error: str | None = None

    def _backend(self) -> RabbitBackend:
        if self._admin is None:
            self._admin = self._open_admin()
        return self._admin

    def _drop(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def refresh(self, *, force: bool = False) -> None:
        """Count the DLQ; list its oldest letters again if the count changed (or `force`)."""
        with self._lock:
            try:
                admin = self._backend()
                count = admin.dead_letter_count()
                if force or count != self._listed_at_count:
                    with contextlib.closing(admin.iter_dead_letters(limit=LISTED)) as letters:
                        self.letters = [self._row(letter) for letter in letters]
                    self._listed_at_count = count
                self.count, self.error = count, None
            except TaskshuttleError as exc:
                self._drop()
                self.error = str(exc)

    @staticmethod
    def _row(letter: Any) -> dict[str, Any]:
        return {
            "task_id": letter.task_id,
            "reason": letter.reason,
            "attempts": letter.attempts,
            "when": letter.dead_lettered_at.isoformat(timespec="seconds"),
            "error": letter.error[:ERROR_CHARS],
        }

    def replay(self, task_id: str | None = None) -> int:
        """Move the dead letters (or the one of `task_id`) back to the work queue."""
        return self._act(lambda admin: admin.replay_dead_letters(task_id=task_id))

    def purge(self) -> int:
        """Delete every dead letter; how many."""
        return self._act(lambda admin: admin.purge_dead_letters())

    def _act(self, action: Callable[[RabbitBackend], int]) -> int:
        with self._lock:
            try:
                done = int(action(self._backend()))
            except TaskshuttleError:
                self._drop()
                raise
            self._listed_at_count = None  # list again at the next refresh
        self.refresh()
        return done

    def snapshot(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "letters": list(self.letters),
            "error": self.error,
            "listed": LISTED,
        }

    def close(self) -> None:
        with self._lock:
            self._drop()
