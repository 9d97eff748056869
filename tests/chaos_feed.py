"""The chaos run's producer: a steady mix of tasks through the project's own library.

It publishes with `open_backend(settings, Role.PRODUCER, results=True)`, whose `publish`
returns only once the broker has confirmed every task: a task id enters the ledger only
then. A call that raised may have stored some of its tasks anyway; their ids are kept apart
(`unconfirmed`) and never count as lost.

When the library gives up (it reconnects a bounded number of times, as a producer should),
the feeder says so in the event log and carries on with the same backend, which tries again
on its next call (with one task per call until one is confirmed). Only a backend that keeps
failing while the broker answers is replaced. It is not closed then (closing deletes its
reply queue, and the results still due to it with it): its reply queue is drained with raw
pika (`chaos_amqp.take`) every few seconds, and at the end whatever the old backend itself
took is read from it before it is closed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from common.backend import Backend
from common.errors import BadMessage, BrokerUnreachable, ConnectionLost
from common.factory import Role, open_backend
from common.schemas import TaskEnvelope, TaskStatus, decode_result
from common.settings import Settings
from producer.ledger import Ledger
from tests import chaos_amqp
from tests.chaos_report import Events
from tests.chaos_tasks import FLAKY

log = logging.getLogger("chaos.feeder")

#: The mix of kinds, by weight.
MIX = (("echo", 4), ("sleep", 2), ("cpu", 2), (FLAKY, 2))
#: A backend failing this long while the broker answers is given up and replaced.
STUCK_AFTER = 30.0
#: A publish call that blocks this long (the library reconnecting inside it) is an event.
STALL = 5.0
RETIRED_DRAIN_EVERY = 5.0


class Feeder(threading.Thread):
    """Publishes `rate` tasks a second while `publishing` is set; takes results until
    `stopping` is set. Runs in a thread of its own; the harness reads its ledger."""

    def __init__(
        self,
        settings: Settings,
        rate: float,
        seed: int,
        events: Events,
        broker_up: Callable[[], bool],
    ) -> None:
        super().__init__(name="chaos-feeder", daemon=True)
        self.settings = settings
        self.rate = rate
        self.rng = random.Random(seed)
        self.events = events
        self.broker_up = broker_up
        self.ledger = Ledger()
        self.kinds: dict[str, str] = {}
        #: Ids of tasks whose publish raised: stored or not, nobody can tell.
        self.unconfirmed: set[str] = set()
        #: Result bodies that were not results (a bug somewhere).
        self.bad_results = 0
        self.publishing = threading.Event()
        self.publishing.set()
        #: Held for the whole of a publish call, so the harness can wait for the last one.
        self._publish_call = threading.Lock()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.outages = 0
        self.stalls: list[float] = []
        self._opened: list[Backend] = []
        self._backend: Backend | None = None
        self._retired: list[str] = []  # reply queues of replaced backends
        self._retired_backends: list[Backend] = []
        self._failing_since: float | None = None

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug of the harness: say so, never pass silently
            self.error = exc
            self.events.add("harness-error", f"feeder: {type(exc).__name__}: {exc}")
            log.exception("feeder failed")

    def _loop(self) -> None:
        owed = 0.0
        last = time.monotonic()
        next_drain = last + RETIRED_DRAIN_EVERY
        while not self.stopping.is_set():
            now = time.monotonic()
            # Missed slots (an outage) are not made up in one burst: at most 2 s worth.
            owed = min(owed + (now - last) * self.rate, max(self.rate, 1) * 2)
            last = now
            if not self.publishing.is_set():
                owed = 0.0
            if now >= next_drain:
                self.drain_retired()
                next_drain = now + RETIRED_DRAIN_EVERY
            backend = self._current()
            if backend is None:
                self.stopping.wait(1.0)
                continue
            try:
                if int(owed) > 0:
                    # While the library fails, one task per call probes for its return.
                    n = 1 if self._failing_since is not None else int(owed)
                    with self._publish_call:
                        if not self.publishing.is_set():
                            continue
                        self._publish(backend, n)
                    owed -= n
                    self._recovered()
                self._take(backend, 0.1)
            except Exception as exc:
                self._trouble(backend, exc)
                self.stopping.wait(0.5)

    def stop_publishing(self, timeout: float) -> bool:
        """Publish nothing more, and wait for a publish call in progress to return (it may
        still be confirming tasks across an outage: they belong in the drain). False if it
        is still going after `timeout` seconds."""
        self.publishing.clear()
        if not self._publish_call.acquire(timeout=timeout):
            return False
        self._publish_call.release()
        return True

    def _current(self) -> Backend | None:
        if self._backend is None:
            try:
                self._backend = open_backend(self.settings, Role.PRODUCER, results=True)
                self._opened.append(self._backend)
            except Exception as exc:
                self._note_failure(exc, "cannot open a producer backend")
                return None
        return self._backend

    def _task(self) -> TaskEnvelope:
        kind = self.rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        payload: dict[str, Any] = {
            "echo": lambda: {"n": self.rng.randrange(1_000_000)},
            "sleep": lambda: {"seconds": round(self.rng.uniform(0.01, 0.3), 3)},
            "cpu": lambda: {"rounds": self.rng.randrange(1_000, 30_000)},
            FLAKY: lambda: {"succeed_on": 2},
        }[kind]()
        return TaskEnvelope(kind=kind, payload=payload)

    def _publish(self, backend: Backend, n: int) -> None:
        tasks = [self._task() for _ in range(n)]
        started = time.monotonic()
        try:
            backend.publish(tasks)
        except BaseException:
            self.unconfirmed.update(t.id for t in tasks)
            raise
        finally:
            took = time.monotonic() - started
            if took > STALL:
                self.stalls.append(took)
                self.events.add("producer-stalled", f"publish() of {n} tasks took {took:.1f}s")
        self.ledger.record_sent(tasks)
        self.kinds.update((t.id, t.kind) for t in tasks)

    def _take(self, backend: Backend, timeout: float) -> int:
        taken = 0
        result = backend.receive_result(timeout)
        while result is not None:
            self.ledger.record_result(result)
            taken += 1
            result = backend.receive_result(0)
        return taken

    # -- trouble -----------------------------------------------------------------------------
    def _note_failure(self, exc: BaseException, what: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self.outages += 1
            self.events.add("producer-trouble", f"{what}: {type(exc).__name__}: {exc}")

    def _recovered(self) -> None:
        if self._failing_since is not None:
            seconds = time.monotonic() - self._failing_since
            self.events.add("producer-recovered", f"publishing again after {seconds:.1f}s")
            self._failing_since = None

    def _trouble(self, backend: Backend, exc: Exception) -> None:
        """The library raised. Carry on with the same backend (its next call reconnects),
        unless it keeps failing while the broker answers: then replace it."""
        self._note_failure(exc, "the producer library raised; retrying")
        assert self._failing_since is not None
        failing_for = time.monotonic() - self._failing_since
        connection_trouble = isinstance(exc, ConnectionLost | BrokerUnreachable)
        if failing_for > STUCK_AFTER and (not connection_trouble or self.broker_up()):
            self._replace(backend, f"failing for {failing_for:.0f}s while the broker answers")

    def _replace(self, backend: Backend, why: str) -> None:
        reply_queue = getattr(backend, "reply_queue", None)
        if reply_queue:
            self._retired.append(reply_queue)
        self._retired_backends.append(backend)  # closed by `finish`, once its results are in
        self._backend = None
        self._failing_since = None
        self.events.add("producer-reopened", f"{why}; its results are read from {reply_queue}")

    # -- results of replaced backends, and the end -------------------------------------------
    def drain_retired(self) -> None:
        for name in list(self._retired):
            try:
                bodies = chaos_amqp.take(self.settings.amqp_url, name, timeout=30)
            except chaos_amqp.AmqpTrouble:
                continue  # the broker is away: next time
            if bodies is None:
                self._retired.remove(name)
                self.events.add("reply-queue-gone", f"{name} no longer exists")
                continue
            for body in bodies:
                try:
                    self.ledger.record_result(decode_result(body))
                except BadMessage:
                    self.bad_results += 1

    def finish(self, quiet_for: float = 2.0) -> None:
        """After the thread has stopped: take every result still waiting, then close."""
        backends = [*self._retired_backends, *([self._backend] if self._backend else [])]
        for backend in backends:
            with contextlib.suppress(Exception):
                while self._take(backend, quiet_for):
                    pass
        self.drain_retired()
        for backend in backends:
            with contextlib.suppress(Exception):
                backend.close()
        self._backend = None
        self._retired_backends.clear()

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Each kind's tasks by fate."""
        counts: dict[str, Counter[str]] = {}
        for task_id, kind in self.kinds.items():
            counts.setdefault(kind, Counter())[self.ledger.fate(task_id).value] += 1
        return {kind: dict(c) for kind, c in sorted(counts.items())}

    def summary(self) -> dict[str, Any]:
        """What the producer side saw, besides the ledger."""
        answered_unconfirmed = len(self.unconfirmed & self.ledger.results.keys())
        flaky_first_try = sum(
            1
            for task_id, kind in self.kinds.items()
            if kind == FLAKY
            for r in self.ledger.results.get(task_id, [])
            if r.status is TaskStatus.DONE and r.attempt < 2
        )
        return {
            "unconfirmed_publishes": len(self.unconfirmed),
            "unconfirmed_but_answered": answered_unconfirmed,
            "bad_result_bodies": self.bad_results,
            "flaky_done_on_first_attempt": flaky_first_try,
            "library_raised": self.outages,
            "publish_stalls": len(self.stalls),
            "longest_stall_s": round(max(self.stalls, default=0.0), 1),
            "backends_opened": len(self._opened),
            "reconnects": sum(getattr(b, "reconnects", 0) for b in self._opened),
            "republished": sum(getattr(b, "republished", 0) for b in self._opened),
        }
