"""The backend contract: what a producer and a worker need from a queue.

`ProducerBackend` is the producer's side, `WorkerBackend` a worker's, `Backend` both in one
object. Both backends honour these rules, and `tests/contract/` runs one suite against both:

- `publish` returns only when every task is safely stored (on RabbitMQ: confirmed by the
  broker); otherwise it raises, and no task of the failed call counts as sent.
- `receive` returns a `Delivery` or `None` when nothing came within `timeout`, so a worker
  loop always gets a turn to check for shutdown.
- A delivery is handed out again (``redelivered=True``) until it is acked: a worker that dies
  before `ack` loses nothing. `ack` happens only after the handler has finished. Acks and
  results may be sent in batches, but no later than the worker's next `receive` that has to
  wait, or `close` (which waits for them).
- Results are at least once, like tasks: a task is acked only once its result is stored; a
  result the broker refuses or loses sends its task back to be run again. The worker does
  not wait for that.
- `publish(tasks, delay=...)` is the one way a task waits: the broker holds it back for
  `delay` seconds, or until the task's own `eta` if that is later (`held_for`, reckoned as
  it is published), never a sleeping worker, nor the caller. A producer and a worker use the
  same call; a worker that publishes with ``settles=delivery`` (a retry: the next attempt;
  next, a workflow's next step) has the delivery acked only once the new tasks are stored, on
  the same connection, so a crash in between repeats the delivery and never loses either.
- `publish(..., settles=)`, `dead_letter` and `requeue` each settle the delivery; after them
  the delivery must not be acked. They return once the new copies are stored.
- Deliveries may be settled in any order and from any thread (a watchdog settles a task that
  ran too long while the worker goes on): settling one never settles another.
- A delivery whose connection is gone cannot be settled: the settling methods then do
  nothing and raise nothing (no `ConnectionLost`), store no copy, and the broker hands the
  delivery out again. Other errors (a copy the broker refuses) are raised.
- A result goes only where this queue's producers asked for results (on RabbitMQ, a reply
  queue of this work queue); a task asking for it elsewhere runs, and gets no result.
- `revoke(task_ids, keep_for=...)` tells every worker of the queue, now and for the next
  `keep_for` seconds (at most `MAX_KEEP_FOR`, ten years), not to start these tasks: a worker
  that takes one asks `is_revoked` (a lookup in memory, no I/O: it runs once per task) and
  dead-letters it as ``revoked`` (a failed result if one is wanted); one already running is
  not interrupted. A worker started later learns the revocations still kept. Each worker
  keeps at most `MAX_REVOKED` of its queue's; past that, those that expire soonest are
  dropped first (said once in the log).
- Bodies are opaque bytes here; `common.schemas` turns them into tasks and results.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from common.events import EventSink
from common.schemas import TASK_ID_MAX, DeadLetter, TaskEnvelope, TaskResult

#: The longest a task may be held back: ten years (both backends can hold it; a longer one
#: is a mistake in the caller's arithmetic, refused before anything is sent).
MAX_DELAY = 10 * 365.25 * 86_400


#: The longest a revocation is kept: as long as a task may be held back.
#: How long a revocation is kept when its sender does not know when the task is due (the
#: client and ``consumer revoke`` alike): a worker that takes the task later runs it.
REVOKE_KEEP = 30 * 86_400.0
MAX_KEEP_FOR = MAX_DELAY

#: The most revocations a worker keeps for its queue (past it, those that expire soonest go).
MAX_REVOKED = 100_000


def held_for(task: TaskEnvelope, delay: float, now: datetime) -> float:
    """How long a publish holds `task` back: `delay` seconds, or until the task's eta if that
    is later (never more than `MAX_DELAY`). Reckoned when the task is published, so a batch
    that took a while to send still runs each task at its time."""
    if task.eta is None:
        return delay
    return max(delay, min((task.eta - now).total_seconds(), MAX_DELAY))


def check_delay(delay: float) -> float:
    """`delay` as a publish takes it: seconds, finite, from 0 to `MAX_DELAY`."""
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"a delay is a finite number of seconds, 0 or more, not {delay!r}")
    if delay > MAX_DELAY:
        raise ValueError(f"a delay is at most ten years ({MAX_DELAY:.0f} s), not {delay!r} s")
    return float(delay)


def check_revocation(task_ids: Sequence[str], keep_for: float) -> tuple[tuple[str, ...], float]:
    """`task_ids` and `keep_for` as `revoke` takes them: each id once (in order), each one a
    task id (1 to `TASK_ID_MAX` characters); `keep_for` seconds, finite, over 0 and at most
    `MAX_KEEP_FOR`. Raises `ValueError` (`TypeError` for one id given as a bare string, whose
    letters would be taken for ids) before anything is sent."""
    if isinstance(task_ids, str | bytes):
        raise TypeError(f"task_ids is a sequence of task ids, not one id: [{task_ids!r}]")
    if not math.isfinite(keep_for) or keep_for <= 0:
        raise ValueError(
            f"a revocation is kept a finite number of seconds over 0, not {keep_for!r}"
        )
    if keep_for > MAX_KEEP_FOR:
        raise ValueError(
            f"a revocation is kept at most ten years ({MAX_KEEP_FOR:.0f} s), not {keep_for!r} s"
        )
    ids = tuple(dict.fromkeys(task_ids))
    for task_id in ids:
        if not isinstance(task_id, str) or not 1 <= len(task_id) <= TASK_ID_MAX:
            raise ValueError(f"not a task id: {task_id!r} (1 to {TASK_ID_MAX} characters)")
    return ids, float(keep_for)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a worker, not yet settled."""

    body: bytes
    #: True when this message was handed out before and not acked (a crash, a requeue).
    redelivered: bool
    #: Whatever the backend needs to settle it (a delivery tag, a slot...).
    handle: Any = field(repr=False)
    #: False when nobody listens for the result (no reply queue): the worker skips it.
    wants_result: bool = True


class _Side(ABC):
    """What both sides of a queue have: a name, a count of waiting tasks, a close."""

    name: ClassVar[str]

    @abstractmethod
    def pending(self) -> int:
        """Tasks waiting to be handed out: in the queue, and those a worker received and has
        not taken yet (not counting the ones handed out). Delayed tasks (retries waiting out
        their delay, tasks sent for later) are counted where the backend can tell whose they
        are: the local backend counts its heap of delayed tasks; RabbitMQ cannot, since they
        wait in delay levels every queue of the broker shares. A burst worker leaves only
        when this is 0, and once the retries and postponed tasks it published itself are
        due (`consumer.worker.Worker`)."""

    def close(self) -> None:  # noqa: B027 - closing is optional for in-memory backends
        """Release connections; safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ProducerBackend(_Side):
    """One task queue, seen from the producer: sending tasks, taking results, dead letters."""

    @abstractmethod
    def publish(self, tasks: Sequence[TaskEnvelope], *, delay: float = 0.0) -> None:
        """Store every task, to be handed out `delay` seconds from now (0: at once), or at
        its eta if that is later, or raise `PublishFailed` / `BrokerError`. Results of these
        tasks come back to this backend object when it takes results."""

    @abstractmethod
    def publish_raw(self, bodies: Sequence[bytes]) -> None:
        """Store bodies exactly as given, as any client could send them (tests, replays)."""

    @abstractmethod
    def receive_result(self, timeout: float) -> TaskResult | None:
        """The next result sent back to this producer, or None after `timeout` seconds (or
        at once after `interrupt`).

        Only results of tasks published by this backend object with results requested.
        """

    @abstractmethod
    def interrupt(self) -> None:
        """Make a `receive_result` waiting in another thread return now (None if nothing
        came), or the next one if none waits. The one method of a backend that any thread
        may call while another uses it: a client's sender wakes its I/O thread with it."""

    @abstractmethod
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters kept so far, oldest first (without removing them). Whatever
        another client wrote into a dead letter's metadata, reading it never raises."""

    @abstractmethod
    def revoke(self, task_ids: Sequence[str], *, keep_for: float) -> None:
        """Tell every worker of this queue, now and for the next `keep_for` seconds, not to
        run these tasks: one taken before it started is dead-lettered as ``revoked``; one
        already running is not interrupted. Returns once the revocation is stored; each
        backend says how soon its workers learn it. `check_revocation` says what is taken
        (`ValueError` before anything is sent); no id: nothing is done."""

    @abstractmethod
    def replay_dead_letters(self) -> int:
        """Move every dead letter back to the work queue as a first attempt; how many moved.
        Each leaves the dead letters only once its copy is stored; one dead-lettered again
        meanwhile is not replayed again by the same call."""


class WorkerBackend(_Side):
    """One task queue, seen from a worker: taking deliveries and settling each one."""

    @abstractmethod
    def receive(self, timeout: float) -> Delivery | None:
        """The next delivery, or None when none came within `timeout` seconds."""

    @abstractmethod
    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        """Settle a finished delivery, after sending its result to whoever asked for it."""

    @abstractmethod
    def publish(
        self,
        tasks: Sequence[TaskEnvelope],
        *,
        delay: float = 0.0,
        settles: Delivery | None = None,
    ) -> None:
        """Store every task, to be handed out `delay` seconds from now. With `settles`, the
        tasks carry that delivery's reply address (their results go where its result would
        have gone), and the delivery is acked, without a result, once they are stored."""

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        """Store `task`, the next attempt of `delivery`'s task, to come back after `delay`
        seconds; settle `delivery`. (The retry middleware's one call: a delayed publish.)"""
        self.publish([task], delay=delay, settles=delivery)

    @abstractmethod
    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        """Keep the message with why it will not be processed; then `ack(delivery, result)`."""

    @abstractmethod
    def requeue(self, delivery: Delivery) -> None:
        """Give an unfinished delivery back, to be handed out again."""

    def event_sink(self) -> EventSink | None:
        """Where this worker's task events go (`common.events`); None: nowhere."""
        return None

    def is_revoked(self, task_id: str) -> bool:
        """Whether a producer revoked this task (`ProducerBackend.revoke`) and the
        revocation is still kept: a lookup in memory, asked once per task (the
        `consumer.middleware.Revocations` middleware). Both backends answer it; this default
        (nothing is revoked) is for a backend no producer can revoke on (a test's)."""
        return False


class Backend(ProducerBackend, WorkerBackend):
    """Both sides in one object: a client of a broker that any process can connect to
    (RabbitMQ). The local backend splits them: its broker is the producer's process, and
    each worker holds an end of its own."""

    @abstractmethod
    def publish(
        self,
        tasks: Sequence[TaskEnvelope],
        *,
        delay: float = 0.0,
        settles: Delivery | None = None,
    ) -> None:
        """Both sides' `publish`: without `settles`, a producer's (results to this object);
        with it, a worker's."""
