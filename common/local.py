"""The local backend: a `multiprocessing.Queue` inside one process tree.

The parent process (the producer, which also supervises the workers) is the broker here: it
puts encoded tasks on a shared task queue, and each worker sends its results, retries and
dead letters back on a pipe of its own. (Not one shared queue: a worker killed while writing
to a shared queue would leave its write lock taken and silence every other worker.)
The parent keeps each task it sent until a result or a dead letter for it comes back, and
each worker writes the keys of the tasks it holds into its own slot of shared memory: that
pair is the in-flight registry. When a worker dies, the
parent reads its slot and puts the held tasks back, which a bare `multiprocessing.Queue`
cannot do (`recovered` counts what it would have lost).

Tasks travel in small batches and events are sent in batches: a `Queue.put` costs a pickle,
a lock and a pipe write, so one per task would cost more than the task. A big job is cut into
batches of up to `batch_size`; a small one goes one task at a time, so no worker sits on
tasks that an idle one could run (the same trade as RabbitMQ's prefetch).

Known limit, as the Python docs warn: a worker killed while inside `Queue.get()` holds the
queue's internal read lock forever; workers here are killed (in tests) while they run a task.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import heapq
import multiprocessing
import pickle
import queue
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from common.backend import Backend, Delivery
from common.errors import TaskshuttleError
from common.schemas import (
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    as_first_attempt,
    decode_result,
    encode,
)

#: spawn, not fork: the parent runs threads (the queue's feeder, rich's progress bar), and
#: forking a process with threads can copy a held lock into the child.
MP_CONTEXT: BaseContext = multiprocessing.get_context("spawn")

_KEY_BYTES = 80  # a task id (up to 64 characters), "/", an attempt number
#: Events a worker collects before sending them in one put, and for how long at most (it
#: also sends before it waits for more work).
_EVENT_BATCH = 64
_EVENT_DELAY = 0.005

_Item = tuple[str, bytes, bool]  # key, body, redelivered


def task_key(task_id: str, attempt: int) -> str:
    """One attempt of one task: a retry is a new attempt, so a new key."""
    return f"{task_id}/{attempt}"


@dataclass(frozen=True, slots=True)
class _Held:
    key: str


class LocalBackend(Backend):
    """Tasks and results on `multiprocessing.Queue`s, workers as children of this process.

    Build it in the parent and hand it to each worker process; the worker calls
    `attach(slot)` first. Parent-only state (tasks awaiting a result, scheduled retries, dead
    letters) is not pickled into the children.
    """

    name = "local"

    def __init__(
        self,
        *,
        slots: int = 8,
        queue_name: str = "tasks",
        batch_size: int = 100,
        context: BaseContext = MP_CONTEXT,
    ) -> None:
        self.queue_name = queue_name
        self.batch_size = batch_size
        self._context = context
        self._tasks: Any = context.Queue()
        # One pipe per worker slot for the worker's events. The parent lets go of a slot's
        # writer once its worker has it, so that a worker dying mid-write leaves a reader at
        # end-of-file, never one waiting forever for the rest of a message.
        pipes = [context.Pipe(duplex=False) for _ in range(slots)]
        self._readers: list[Connection | None] = [reader for reader, _ in pipes]
        self._writers: list[Connection | None] = [writer for _, writer in pipes]
        #: Tasks on the task queue (it holds batches, and qsize() is missing on macOS).
        self._queued: Any = context.Value(ctypes.c_long, 0, lock=True)
        #: The seed's mutex: handlers that share a resource (the ticket office) take it.
        self.lock: Any = context.Lock()
        self._held_keys = [
            context.RawArray(ctypes.c_char, _KEY_BYTES * batch_size) for _ in range(slots)
        ]
        # Worker-only:
        self._slot: int | None = None
        self._writer: Any = None
        self._inbox: deque[_Item] = deque()
        self._outbox: list[tuple[Any, ...]] = []
        self._outbox_since = 0.0
        # Parent-only:
        self._unfinished: dict[str, bytes] = {}
        self._retries: list[tuple[float, str, bytes]] = []
        self._dead: list[DeadLetter] = []
        self._results: deque[TaskResult] = deque()
        self._raw_count = 0
        self.recovered = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for own in ("_unfinished", "_retries", "_dead", "_results", "_inbox", "_outbox"):
            state[own] = type(state[own])()
        return state

    @property
    def slots(self) -> int:
        return len(self._held_keys)

    # -- producer (parent) side ----------------------------------------------------------
    def publish(self, tasks: Sequence[TaskEnvelope]) -> None:
        self._put([(task_key(t.id, t.attempt), encode(t), False) for t in tasks])

    def publish_raw(self, bodies: Sequence[bytes]) -> None:
        items = []
        for body in bodies:
            self._raw_count += 1
            items.append((f"raw/{self._raw_count}", body, False))
        self._put(items)

    def _put(self, items: list[_Item]) -> None:
        for key, body, _ in items:
            self._unfinished[key] = body
        # Up to batch_size at a time, but never so many that a worker holds tasks while
        # another could run them: a quarter of an even share each.
        size = max(1, min(self.batch_size, len(items) // (4 * self.slots)))
        for start in range(0, len(items), size):
            self._enqueue(items[start : start + size])

    def _enqueue(self, batch: list[_Item]) -> None:
        with self._queued.get_lock():
            self._queued.value += len(batch)
        self._tasks.put(batch)

    def receive_result(self, timeout: float) -> TaskResult | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._results:
                return self._results.popleft()
            self._release_due_retries()
            wait_for = deadline - time.monotonic()
            if self._retries:
                wait_for = min(wait_for, self._retries[0][0] - time.time())
            readers = [reader for reader in self._readers if reader is not None]
            for reader in connection.wait(readers, max(wait_for, 0)):
                self._take_events(self._readers.index(reader))  # type: ignore[arg-type]
            if not self._results and time.monotonic() >= deadline:
                return None

    def _take_events(self, slot: int) -> bool:
        """Handle one message from the slot's pipe; False once the pipe is finished (its
        worker is gone, perhaps in the middle of a write)."""
        reader = self._readers[slot]
        assert reader is not None
        try:
            events = reader.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            reader.close()
            self._readers[slot] = None
            return False
        self._handle(events)
        return True

    def drain_events(self) -> None:
        """Take in every event already sent (before deciding a dead worker's task was lost)."""
        for slot, reader in enumerate(self._readers):
            while reader is not None and reader.poll(0) and self._take_events(slot):
                pass

    def for_worker(self, slot: int) -> LocalBackend:
        """What the worker process in `slot` is given: the shared queue, lock and registry,
        and the writing end of its own pipe only."""
        view = copy.copy(self)  # through __getstate__: none of the parent's own state
        view._readers, view._writers = [], []
        view._slot = slot
        view._writer = self._writers[slot]
        return view

    def handed_over(self, slot: int) -> None:
        """The worker in `slot` has started with its writer: the parent closes its copy."""
        writer = self._writers[slot]
        if writer is not None:
            writer.close()
            self._writers[slot] = None

    def recover(self, slot: int) -> int:
        """Put back the tasks the (dead) worker in `slot` held and never finished, and give
        the slot a fresh pipe for its replacement."""
        self.handed_over(slot)  # no writer left: a half-written message reads as end-of-file
        self.drain_events()
        reader = self._readers[slot]
        if reader is not None:
            reader.close()
        self._readers[slot], self._writers[slot] = self._context.Pipe(duplex=False)
        keys = self._held_keys[slot].value.decode().split()
        self._held_keys[slot].value = b""
        back = [(key, self._unfinished[key], True) for key in keys if key in self._unfinished]
        for item in back:
            self._enqueue([item])
        self.recovered += len(back)
        return len(back)

    def _handle(self, events: list[tuple[Any, ...]]) -> None:
        for event in events:
            kind, key = event[0], event[1]
            if kind == "result":
                self._unfinished.pop(key, None)
                self._results.append(decode_result(event[2]))
            elif kind == "ack":
                self._unfinished.pop(key, None)
            elif kind == "retry":
                _, _, due, new_key, body = event
                self._unfinished.pop(key, None)
                self._unfinished[new_key] = body
                heapq.heappush(self._retries, (due, new_key, body))
            elif kind == "dead":
                self._unfinished.pop(key, None)
                self._dead.append(DeadLetter.model_validate_json(event[2]))
                if event[3] is not None:
                    self._results.append(decode_result(event[3]))
            elif kind == "requeue" and key in self._unfinished:
                self._enqueue([(key, self._unfinished[key], True)])

    def _release_due_retries(self) -> None:
        now = time.time()
        while self._retries and self._retries[0][0] <= now:
            _, key, body = heapq.heappop(self._retries)
            self._enqueue([(key, body, False)])

    # -- worker side ---------------------------------------------------------------------
    def attach(self, slot: int) -> None:
        """Called once in a worker process: which in-flight slot is its own."""
        if not 0 <= slot < len(self._held_keys):
            raise TaskshuttleError(f"slot {slot} out of range 0..{len(self._held_keys) - 1}")
        self._slot = slot
        if self._writer is None:  # the parent's own copy, when one process plays both roles
            self._writer = self._writers[slot]

    def receive(self, timeout: float) -> Delivery | None:
        if not self._inbox:
            self._flush()  # about to wait: send what is done first
            try:
                batch = self._tasks.get(timeout=timeout)
            except queue.Empty:
                return None
            if self._slot is not None:  # registered before any of them runs
                self._held_keys[self._slot].value = " ".join(k for k, _, _ in batch).encode()
            with self._queued.get_lock():
                self._queued.value -= len(batch)
            self._inbox.extend(batch)
        key, body, redelivered = self._inbox.popleft()
        return Delivery(body=body, redelivered=redelivered, handle=_Held(key))

    def _send(self, event: tuple[Any, ...]) -> None:
        """Collect events; send them when there are enough, when the oldest has waited
        long enough (so slow tasks report at once), or before the worker waits."""
        now = time.monotonic()
        if not self._outbox:
            self._outbox_since = now
        self._outbox.append(event)
        if len(self._outbox) >= _EVENT_BATCH or now - self._outbox_since >= _EVENT_DELAY:
            self._flush()

    def _flush(self) -> None:
        if self._outbox:
            with contextlib.suppress(BrokenPipeError):
                # The parent closed its end: nobody collects these any more, but a
                # non-daemon worker may still be finishing the queue's tasks.
                (self._writer or self._writers[0]).send(self._outbox)
            self._outbox = []

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        key = delivery.handle.key
        self._send(("ack", key) if result is None else ("result", key, encode(result)))

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        due = time.time() + delay
        new_key = task_key(task.id, task.attempt)
        self._send(("retry", delivery.handle.key, due, new_key, encode(task)))
        self._flush()  # the contract: stored (with the parent) when this returns

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        self._send(
            ("dead", delivery.handle.key, encode(letter), encode(result) if result else None)
        )
        self._flush()

    def requeue(self, delivery: Delivery) -> None:
        self._send(("requeue", delivery.handle.key))
        self._flush()

    # -- both ----------------------------------------------------------------------------
    def pending(self) -> int:
        return int(self._queued.value)

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead)

    def replay_dead_letters(self) -> int:
        letters, self._dead = self._dead, []
        self.publish_raw([as_first_attempt(letter.body) for letter in letters])
        return len(letters)

    def close(self) -> None:
        """In a worker: give back the tasks it holds but never started, and send what it
        has. In the parent: drop whatever is still queued (the workers are gone)."""
        while self._inbox:
            key, _, _ = self._inbox.popleft()
            self._outbox.append(("requeue", key))
        self._flush()
        self._tasks.close()
        # Without this, a parent stopped with tasks still queued would wait forever for
        # the queue's feeder thread to write them into a pipe nobody reads any more.
        self._tasks.cancel_join_thread()
        for end in (*self._readers, *self._writers):
            if end is not None:
                end.close()
