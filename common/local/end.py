"""A worker's side of the local backend: `LocalWorkerEnd`, the one thing of the local queue
that crosses into a worker process."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from common.backend import Delivery, WorkerBackend, check_delay
from common.events import EventSink, TaskEvent, encode_event
from common.local.wire import (
    Acked,
    Dead,
    Event,
    Item,
    Noted,
    Published,
    Requeue,
    Result,
    Revoked,
    items_by_delay,
)
from common.revoked import RevokedIds
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, encode

if TYPE_CHECKING:
    from common.local.wire import SlotMemory
    from common.settings import Settings

#: Events a worker collects before sending them in one put, and for how long at most (it
#: also sends before it waits for more work).
_EVENT_BATCH = 64
_EVENT_DELAY = 0.005
#: Events older than this are sent by a thread of their own: the task after them is a long
#: one, and the broker must not wait for it to learn that the earlier ones are done.
_LATE_FLUSH = 0.05


@dataclass(frozen=True, slots=True)
class _Held:
    key: str


class LocalWorkerEnd(WorkerBackend):
    """One worker's end of the local queue, from `LocalBroker.slots.worker_end(slot)`.

    It crosses into the worker process as that process starts (spawn pickles it), and holds
    only what the worker needs: the shared task queue and its counter, the slot's piece of the
    in-flight registry, the writing end of the slot's own event pipe, and the reading end of
    its control pipe with the revocations still kept when it was made.

    Three threads may use it: the worker loop, the worker's watchdog (which settles a task
    past its time limit, then closes this end) and the late sender (`_send_late`); one lock
    keeps the batch in hand, the events not yet sent and the pipe's writes in order. The
    control pipe has a lock of its own: reading it never waits for an event pipe's write.

    Revocations (`is_revoked`): the broker counts what it writes to the control pipe in the
    slot's shared memory, so a lookup reads the pipe only when something is there, and sees
    every revocation whose `LocalBroker.revoke` has returned. The pipe is read before each
    task, while the worker waits for work, and every 50 ms while a task runs (the late
    sender), so the broker's write waits little even for many ids.
    """

    name = "local"

    def __init__(
        self,
        tasks: Any,
        queued: Any,
        held_keys: Any,
        memory: SlotMemory,
        writer: Connection,
        slot: int,
        task_events: bool = False,
        *,
        control: Connection | None = None,
        revoked: Mapping[str, float] | None = None,
    ) -> None:
        self.slot = slot
        #: Whether the parent wants task events (it shows them: ``producer -v``).
        self.task_events = task_events
        self._tasks = tasks
        self._queued = queued
        self._held_keys = held_keys
        self._memory = memory
        self._writer = writer
        #: The reading end of the slot's control pipe (revocations, from the broker).
        self._control = control
        self._init_local(revoked or {})

    def _init_local(self, revoked: Mapping[str, float]) -> None:
        """What stays with the process it was made in (a lock, a thread, what is in hand,
        the revocations known)."""
        self._inbox: deque[Item] = deque()
        self._outbox: list[Event] = []
        self._outbox_since = 0.0
        self._lock = threading.Lock()
        self._late_sender: threading.Thread | None = None
        self._closed = False
        self._revoked = RevokedIds(f"the local worker of slot {self.slot}")
        self._revoked.update(revoked)
        #: How many `Revoked` this end has read from the control pipe.
        self._control_read = 0
        self._control_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "slot",
            "task_events",
            "_tasks",
            "_queued",
            "_held_keys",
            "_memory",
            "_writer",
            "_control",
        )
        state = {name: self.__dict__[name] for name in keep}
        state["revoked"] = self._revoked.live()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        revoked = state.pop("revoked")
        self.__dict__.update(state)
        self._init_local(revoked)

    def connect(self, settings: Settings) -> LocalWorkerEnd:
        """How a worker gets its backend (`consumer.spec.WorkerSpec.backend`): this end
        was made for it by the parent and came with it, so there is nothing to open."""
        self._memory.pid = os.getpid()
        return self

    def receive(self, timeout: float) -> Delivery | None:
        self._read_control()
        with self._lock:
            item = self._next()
        if item is None:
            item = self._take(timeout)
            if item is None:
                return None
        key, body, redelivered = item
        return Delivery(body=body, redelivered=redelivered, handle=_Held(key))

    def _next(self) -> Item | None:
        """The next task of the batch in hand, now the one running (with the lock held)."""
        if not self._inbox:
            return None
        return self._inbox.popleft()

    def _take(self, timeout: float) -> Item | None:
        """A new batch from the task queue, and its first task."""
        self._flush()  # about to wait: send what is done first
        try:
            batch: list[Item] = self._tasks.get(timeout=timeout)
        except queue.Empty:
            return None
        if not batch:  # a stopping pool's wake-up call (`Slots.wake`)
            return None
        with self._queued.get_lock():
            self._queued.value -= len(batch)
        if self._late_sender is None:
            self._late_sender = threading.Thread(
                target=self._send_late, name="late-events", daemon=True
            )
            self._late_sender.start()
        with self._lock:
            # Registered before any of them runs.
            self._held_keys.value = " ".join(key for key, _, _ in batch).encode()
            if self._closed:  # closed meanwhile: held, so put back once this process is gone
                return None
            self._inbox.extend(batch)
            return self._next()

    def _send(self, event: Event) -> None:
        """Collect events; send them when there are enough, when the oldest has waited
        long enough (so slow tasks report at once), or before the worker waits."""
        with self._lock:
            now = time.monotonic()
            if not self._outbox:
                self._outbox_since = now
            self._outbox.append(event)
            if len(self._outbox) >= _EVENT_BATCH or now - self._outbox_since >= _EVENT_DELAY:
                self._write()

    def _send_late(self) -> None:
        """Send events left waiting behind a long task (the loop sends the others), and read
        the revocations that came meanwhile, so the broker's writes to the control pipe do
        not wait for the task to end."""
        while True:
            time.sleep(_LATE_FLUSH)
            self._read_control(wait=False)
            with self._lock:
                if self._closed or self._writer.closed:
                    return
                if self._outbox and time.monotonic() - self._outbox_since >= _LATE_FLUSH:
                    self._write()

    def _flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        """Send the events collected so far (with the lock held)."""
        if self._outbox and not self._writer.closed:
            with contextlib.suppress(BrokenPipeError):
                # The parent closed its end: nobody collects these any more, but a
                # non-daemon worker may still be finishing the queue's tasks.
                self._writer.send(self._outbox)
        self._outbox = []

    def _give_back(self, keys: list[str]) -> None:
        """Send a `Requeue` for each of `keys`, then stop holding them (with the lock held):
        the broker puts back what a dead worker held, and these are back already."""
        self._outbox.extend(Requeue(key) for key in keys)
        self._write()
        gone = set(keys)
        held = self._held_keys.value.decode().split()
        self._held_keys.value = " ".join(key for key in held if key not in gone).encode()

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        key = delivery.handle.key
        self._send(Acked(key) if result is None else Result(key, encode(result)))

    def publish(
        self,
        tasks: Sequence[TaskEnvelope],
        *,
        delay: float = 0.0,
        settles: Delivery | None = None,
    ) -> None:
        delay = check_delay(delay)
        settled = settles.handle.key if settles is not None else None
        # No task at all still settles the delivery: one empty `Published`.
        for held, items in items_by_delay(tasks, delay).items() or [(delay, [])]:
            # The first settles the delivery: the parent stores the rest in the same read.
            self._send(Published(settled, tuple(items), held))
            settled = None
        self._flush()  # the contract: stored (with the parent) when this returns

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        encoded = encode(result) if result is not None else None
        self._send(Dead(delivery.handle.key, encode(letter), encoded))
        self._flush()

    def requeue(self, delivery: Delivery) -> None:
        with self._lock:
            self._give_back([delivery.handle.key])

    def pending(self) -> int:
        return int(self._queued.value)

    def is_revoked(self, task_id: str) -> bool:
        """Whether the broker revoked this task (`LocalBroker.revoke`) and keeps it so: a
        lookup, after reading what the control pipe holds (nothing to read: no system call)."""
        self._read_control()
        return task_id in self._revoked

    def _read_control(self, wait: bool = True) -> None:
        """Take in the revocations the broker has written (or is writing) to the control
        pipe. The broker counts each in shared memory before it writes it, so what is counted
        and not read yet is there or on its way, and a large one is read while written.
        `wait=False`: not if another thread is reading it now."""
        memory = self._memory
        if memory.revocations == self._control_read:
            return
        if not self._control_lock.acquire(blocking=wait):
            return
        try:
            while self._control_read < memory.revocations:
                control = self._control
                if control is None:
                    return
                try:
                    revoked: Revoked = control.recv()
                except (EOFError, OSError):  # the broker is gone, or this end closed
                    return
                self._control_read += 1
                until, task_ids = revoked
                self._revoked.add(task_ids, until)
        finally:
            self._control_lock.release()

    def event_sink(self) -> EventSink | None:
        return _ParentSink(self) if self.task_events else None

    def close(self) -> None:
        """Give back the tasks taken but never started, and send what is not sent yet. The
        task queue is the parent's: a worker's copy goes with its process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unstarted = [key for key, _, _ in self._inbox]
            self._inbox.clear()
            self._give_back(unstarted)
            self._writer.close()
        control, self._control = self._control, None
        if control is not None:  # the broker's writes to it fail from now on, not wait
            control.close()


class _ParentSink:
    """Task events to the parent, with the worker's other events (in order with them)."""

    wanted = True

    def __init__(self, end: LocalWorkerEnd) -> None:
        self._end = end

    def send(self, events: Sequence[TaskEvent]) -> None:
        if not self._end._closed:
            self._end._send(Noted(b"\n".join(encode_event(event) for event in events)))
