"""`RevokedIds`: the revocations a worker (or the local broker) keeps for one queue, bounded.

Both backends keep them the same way: a dict of task id to the time its revocation ends (epoch
seconds, from a `Clock`), so `is_revoked` is one lookup per task. Its bounds:

- a revocation is kept until its time (`keep_for` after it was sent); expired ones are
  pruned whenever revocations are added, and never answer a lookup meanwhile;
- at most `MAX_REVOKED` at once; past that, the ones that expire soonest are dropped first,
  and the log says so once per store (a revocation dropped that way is forgotten early:
  a worker may then run its task).

One thread may add while others look up: adding takes a lock, a lookup does not (a dict's
``get`` is atomic).
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Iterable, Mapping

from common.backend import MAX_REVOKED
from common.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("taskshuttle.revocations")


class RevokedIds:
    """Task ids revoked until a time, for one queue (`what` names it in the log)."""

    def __init__(self, what: str, clock: Clock = SYSTEM_CLOCK, limit: int = MAX_REVOKED) -> None:
        self.what = what
        self.limit = limit
        #: Revocations dropped early because there were more than `limit`.
        self.dropped = 0
        self._clock = clock
        self._until: dict[str, float] = {}
        #: (until, task id) of every revocation kept, soonest first; an entry whose id was
        #: revoked again for longer since (or dropped) is stale, and skipped when popped.
        self._expiry: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._warned = False

    def __contains__(self, task_id: object) -> bool:
        until = self._until.get(task_id)  # type: ignore[call-overload]
        return until is not None and until > self._clock.time()

    def __len__(self) -> int:
        """How many are kept (expired ones included until the next prune)."""
        return len(self._until)

    def add(self, task_ids: Iterable[str], until: float) -> None:
        """Keep each of `task_ids` revoked until `until` (a later time than one it has
        already; an earlier one changes nothing). One already expired is not kept."""
        with self._lock:
            now = self._clock.time()
            if until > now:
                for task_id in task_ids:
                    self._keep(task_id, until)
            self._bound(now)

    def update(self, revoked: Mapping[str, float]) -> None:
        """`add` each of `revoked` (task id: until), as `live` gives them."""
        with self._lock:
            now = self._clock.time()
            for task_id, until in revoked.items():
                if until > now:
                    self._keep(task_id, until)
            self._bound(now)

    def live(self) -> dict[str, float]:
        """The revocations still kept (task id: until), for a worker about to start."""
        with self._lock:
            self._bound(self._clock.time())
            return dict(self._until)

    def _keep(self, task_id: str, until: float) -> None:
        if self._until.get(task_id, 0.0) >= until:
            return
        self._until[task_id] = until
        heapq.heappush(self._expiry, (until, task_id))

    def _bound(self, now: float) -> None:
        """Prune what expired; then drop the soonest to expire past `limit`."""
        until, expiry = self._until, self._expiry
        while expiry and expiry[0][0] <= now:
            self._pop()
        over = len(until) - self.limit
        if over > 0:
            if not self._warned:
                self._warned = True
                log.warning(
                    "more than %d revoked tasks kept for %s: dropping those that expire "
                    "soonest (their tasks may run; said once)",
                    self.limit,
                    self.what,
                )
            while len(until) > self.limit:
                self.dropped += self._pop()
        if len(expiry) > 2 * len(until) + 1024:  # mostly stale: rebuild it
            self._expiry = [(end, task_id) for task_id, end in until.items()]
            heapq.heapify(self._expiry)

    def _pop(self) -> int:
        """Forget the revocation that expires soonest, unless its entry is stale; 1 if one
        was forgotten."""
        end, task_id = heapq.heappop(self._expiry)
        if self._until.get(task_id) != end:
            return 0
        del self._until[task_id]
        return 1
