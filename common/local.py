"""The local backend: a `multiprocessing.Queue` inside one process tree.

Two types, one for each side. `LocalBroker` lives in the parent process (the producer, which
also supervises the workers): it is the broker here. It puts encoded tasks on a shared task
queue, keeps each task it sent until a result or a dead letter for it comes back, schedules
retries and keeps dead letters. `LocalWorkerEnd` is what one worker process holds: the shared
task queue, the writing end of a pipe of its own, and its slot of the in-flight registry;
nothing of the parent's.

A worker sends its events (`Result`, `Acked`, `Retry`, `Dead`, `Requeue`) back on its own
pipe. (Not one shared queue: a worker killed while writing to a shared queue would leave its
write lock taken and silence every other worker.) Each worker also writes the keys of the
tasks it holds into its own slot of shared memory: with the tasks the parent keeps, that is
the in-flight registry. `LocalBroker.slots` does the handshake with the workers in one place:
it hands each worker its end, closes the parent's copy of the pipe's writer once the worker
has it (so a worker that dies mid-write leaves the parent reading end-of-file, never waiting
for the rest of a message), and when a worker dies reads its slot and puts the held tasks
back, which a bare `multiprocessing.Queue` cannot do (`recovered` counts what it would have
lost).

Tasks travel in small batches and events are sent in batches: a `Queue.put` costs a pickle,
a lock and a pipe write, so one per task would cost more than the task. A big job is cut into
batches of up to `batch_size`; a small one goes one task at a time, so no worker sits on
tasks that an idle one could run (the same trade as RabbitMQ's prefetch).

Known limit, as the Python docs warn: a worker killed while inside `Queue.get()` holds the
queue's internal read lock forever; workers here are killed (in tests) while they run a task.
"""

from __future__ import annotations

import contextlib
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
from typing import TYPE_CHECKING, Any, NoReturn

from common.backend import Delivery, ProducerBackend, WorkerBackend
from common.clock import SYSTEM_CLOCK, Clock
from common.errors import TaskshuttleError
from common.schemas import (
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    as_first_attempt,
    decode_result,
    encode,
)

if TYPE_CHECKING:
    from common.settings import Settings

#: spawn, not fork: the parent runs threads (the queue's feeder, rich's progress bar), and
#: forking a process with threads can copy a held lock into the child.
MP_CONTEXT: BaseContext = multiprocessing.get_context("spawn")

_KEY_BYTES = 80  # a task id (up to 64 characters), "/", an attempt number
#: Events a worker collects before sending them in one put, and for how long at most (it
#: also sends before it waits for more work).
_EVENT_BATCH = 64
_EVENT_DELAY = 0.005

#: A task on the task queue: key, body, redelivered. A bare tuple, since every task is
#: pickled once on its way, and a tuple pickles many times faster than a record.
_Item = tuple[str, bytes, bool]


def task_key(task_id: str, attempt: int) -> str:
    """One attempt of one task: a retry is a new attempt, so a new key."""
    return f"{task_id}/{attempt}"


# -- events: what a worker tells the broker, in batches, on its own pipe -------------------
# Each one pickles as its class and its fields (`__reduce__`): the default for a frozen
# record with slots goes through its state one attribute at a time, several times slower,
# and every task sends one event.


@dataclass(frozen=True, slots=True)
class Result:
    """The task is done and its producer wants the result (an encoded `TaskResult`)."""

    key: str
    result: bytes

    def __reduce__(self) -> tuple[type[Result], tuple[str, bytes]]:
        return Result, (self.key, self.result)


@dataclass(frozen=True, slots=True)
class Acked:
    """The task is done; nobody asked for its result."""

    key: str

    def __reduce__(self) -> tuple[type[Acked], tuple[str]]:
        return Acked, (self.key,)


@dataclass(frozen=True, slots=True)
class Retry:
    """The attempt failed: its next attempt (`body`, under `new_key`) is due `delay` seconds
    after the broker hears of it. The broker's clock keeps the time, not the worker's."""

    key: str
    new_key: str
    body: bytes
    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    """A dead letter (an encoded `DeadLetter`), and the failed result if one is wanted."""

    key: str
    letter: bytes
    result: bytes | None


@dataclass(frozen=True, slots=True)
class Requeue:
    """Handed back unfinished: to be handed out again, marked as redelivered."""

    key: str


Event = Result | Acked | Retry | Dead | Requeue


@dataclass(frozen=True, slots=True)
class _Held:
    key: str


class LocalBroker(ProducerBackend):
    """The producer's side, and the broker: tasks out on a `multiprocessing.Queue`, events
    in from each worker's pipe, retries and dead letters kept here.

    Start the workers with `WorkerPool(spec, n, slots=broker.slots)`; the broker itself never
    leaves this process.
    """

    name = "local"

    def __init__(
        self,
        *,
        slots: int = 8,
        queue_name: str = "tasks",
        batch_size: int = 100,
        context: BaseContext = MP_CONTEXT,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.queue_name = queue_name
        self.batch_size = batch_size
        #: Schedules retries. (Waiting for events is a real wait on pipes, on real time.)
        self._clock = clock
        #: Batches of tasks, shared by every worker. (bench/ holds its workers back at the
        #: start line with this queue's reader lock, so it reaches for this name.)
        self._tasks: Any = context.Queue()
        #: Tasks on the task queue (it holds batches, and qsize() is missing on macOS).
        self._queued: Any = context.Value(ctypes.c_long, 0, lock=True)
        self._unfinished: dict[str, bytes] = {}
        self._retries: list[tuple[float, str, bytes]] = []
        self._dead: list[DeadLetter] = []
        self._results: deque[TaskResult] = deque()
        self._raw_count = 0
        #: Tasks put back after their worker died (a bare Queue would have lost them).
        self.recovered = 0
        self.slots = Slots(self, slots, batch_size, context)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a LocalBroker stays in its own process; a worker takes broker.slots.worker_end(slot)"
        )

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
        size = max(1, min(self.batch_size, len(items) // (4 * len(self.slots))))
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
                wait_for = min(wait_for, self._retries[0][0] - self._clock.monotonic())
            for slot in self.slots.ready(max(wait_for, 0)):
                self._take_events(slot)
            if not self._results and time.monotonic() >= deadline:
                return None

    def drain_events(self) -> None:
        """Take in every event already sent (before deciding a dead worker's task was lost)."""
        while ready := self.slots.ready(0):
            for slot in ready:
                self._take_events(slot)

    def _take_events(self, slot: int) -> None:
        events = self.slots.read(slot)
        if events is not None:
            self._handle(events)

    def _handle(self, events: list[Event]) -> None:
        unfinished = self._unfinished
        for event in events:
            match event:
                case Result():
                    unfinished.pop(event.key, None)
                    self._results.append(decode_result(event.result))
                case Acked():
                    unfinished.pop(event.key, None)
                case Retry():
                    unfinished.pop(event.key, None)
                    unfinished[event.new_key] = event.body
                    due = self._clock.monotonic() + event.delay
                    heapq.heappush(self._retries, (due, event.new_key, event.body))
                case Dead():
                    unfinished.pop(event.key, None)
                    self._dead.append(DeadLetter.model_validate_json(event.letter))
                    if event.result is not None:
                        self._results.append(decode_result(event.result))
                case Requeue() if event.key in unfinished:
                    self._enqueue([(event.key, unfinished[event.key], True)])

    def _release_due_retries(self) -> None:
        now = self._clock.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, key, body = heapq.heappop(self._retries)
            self._enqueue([(key, body, False)])

    def _put_back(self, keys: list[str]) -> int:
        """Queue again, as redelivered, the tasks among `keys` that never finished."""
        back = [(key, self._unfinished[key], True) for key in keys if key in self._unfinished]
        for item in back:
            self._enqueue([item])
        self.recovered += len(back)
        return len(back)

    def pending(self) -> int:
        return int(self._queued.value)

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead)

    def replay_dead_letters(self) -> int:
        letters, self._dead = self._dead, []
        self.publish_raw([as_first_attempt(letter.body) for letter in letters])
        return len(letters)

    def close(self) -> None:
        """Drop whatever is still queued (the workers are gone) and close every pipe."""
        self._tasks.close()
        # Without this, a parent stopped with tasks still queued would wait forever for
        # the queue's feeder thread to write them into a pipe nobody reads any more.
        self._tasks.cancel_join_thread()
        self.slots.close()


#: The broker's earlier name, which the bench still imports.
LocalBackend = LocalBroker


class Slots:
    """The broker's side of each worker slot, and the whole handshake with its worker.

    A slot has a pipe for its worker's events and a piece of shared memory where the worker
    writes the keys of the tasks it holds. `consumer.supervisor.WorkerPool` calls the three
    steps: `worker_end(slot)` is what the worker takes into its process; `on_started(slot)`
    closes the parent's copy of the pipe's writer once the worker has its own; `on_death(slot)`
    puts back what a dead worker held and gives the slot a fresh pipe for its replacement.
    """

    def __init__(
        self, broker: LocalBroker, count: int, batch_size: int, context: BaseContext
    ) -> None:
        self._broker = broker
        self._context = context
        pipes = [context.Pipe(duplex=False) for _ in range(count)]
        self._readers: list[Connection | None] = [reader for reader, _ in pipes]
        self._writers: list[Connection | None] = [writer for _, writer in pipes]
        self._held_keys = [
            context.RawArray(ctypes.c_char, _KEY_BYTES * batch_size) for _ in range(count)
        ]

    def __len__(self) -> int:
        return len(self._held_keys)

    def worker_end(self, slot: int) -> LocalWorkerEnd:
        """The end of the queue for the worker in `slot` (a process started next, or a thread
        of this one)."""
        if not 0 <= slot < len(self):
            raise TaskshuttleError(f"slot {slot} out of range 0..{len(self) - 1}")
        writer = self._writers[slot]
        if writer is None:
            raise TaskshuttleError(f"slot {slot} is taken: its worker has the pipe's writer")
        broker = self._broker
        return LocalWorkerEnd(broker._tasks, broker._queued, self._held_keys[slot], writer, slot)

    def on_started(self, slot: int) -> None:
        """The worker in `slot` has started with its own copy of the writer: close ours."""
        writer = self._writers[slot]
        if writer is not None:
            writer.close()
            self._writers[slot] = None

    def on_death(self, slot: int) -> int:
        """Put back the tasks the (dead) worker in `slot` held and never finished, and give
        the slot a fresh pipe for its replacement; how many tasks went back."""
        self.on_started(slot)  # no writer left: a half-written message reads as end-of-file
        self._broker.drain_events()
        reader = self._readers[slot]
        if reader is not None:
            reader.close()
        self._readers[slot], self._writers[slot] = self._context.Pipe(duplex=False)
        held = self._held_keys[slot]
        keys = held.value.decode().split()
        held.value = b""
        return self._broker._put_back(keys)

    def ready(self, timeout: float) -> list[int]:
        """The slots whose pipe has something to read (events, or end-of-file), waiting up to
        `timeout` seconds for one."""
        slots = {reader: slot for slot, reader in enumerate(self._readers) if reader is not None}
        return [slots[reader] for reader in connection.wait(list(slots), timeout)]  # type: ignore[index]

    def read(self, slot: int) -> list[Event] | None:
        """One batch of events from the slot's pipe; None once the pipe is finished (its
        worker is gone, perhaps in the middle of a write)."""
        reader = self._readers[slot]
        assert reader is not None
        try:
            events: list[Event] = reader.recv()
        except (EOFError, OSError, pickle.UnpicklingError):
            reader.close()
            self._readers[slot] = None
            return None
        return events

    def close(self) -> None:
        for end in (*self._readers, *self._writers):
            if end is not None:
                end.close()


class LocalWorkerEnd(WorkerBackend):
    """One worker's end of the local queue, from `LocalBroker.slots.worker_end(slot)`.

    It crosses into the worker process as that process starts (spawn pickles it), and holds
    only what the worker needs: the shared task queue and its counter, the slot's piece of the
    in-flight registry, and the writing end of the slot's own event pipe.
    """

    name = "local"

    def __init__(
        self, tasks: Any, queued: Any, held_keys: Any, writer: Connection, slot: int
    ) -> None:
        self.slot = slot
        self._tasks = tasks
        self._queued = queued
        self._held_keys = held_keys
        self._writer = writer
        self._inbox: deque[_Item] = deque()
        self._outbox: list[Event] = []
        self._outbox_since = 0.0

    def connect(self, settings: Settings) -> LocalWorkerEnd:
        """How a worker gets its backend (`consumer.supervisor.WorkerSpec.backend`): this end
        was made for it by the parent and came with it, so there is nothing to open."""
        return self

    def receive(self, timeout: float) -> Delivery | None:
        if not self._inbox:
            self._flush()  # about to wait: send what is done first
            try:
                batch = self._tasks.get(timeout=timeout)
            except queue.Empty:
                return None
            # Registered before any of them runs.
            self._held_keys.value = " ".join(key for key, _, _ in batch).encode()
            with self._queued.get_lock():
                self._queued.value -= len(batch)
            self._inbox.extend(batch)
        key, body, redelivered = self._inbox.popleft()
        return Delivery(body=body, redelivered=redelivered, handle=_Held(key))

    def _send(self, event: Event) -> None:
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
                self._writer.send(self._outbox)
            self._outbox = []

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        key = delivery.handle.key
        self._send(Acked(key) if result is None else Result(key, encode(result)))

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        new_key = task_key(task.id, task.attempt)
        self._send(Retry(delivery.handle.key, new_key, encode(task), delay))
        self._flush()  # the contract: stored (with the parent) when this returns

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        encoded = encode(result) if result is not None else None
        self._send(Dead(delivery.handle.key, encode(letter), encoded))
        self._flush()

    def requeue(self, delivery: Delivery) -> None:
        self._send(Requeue(delivery.handle.key))
        self._flush()

    def pending(self) -> int:
        return int(self._queued.value)

    def close(self) -> None:
        """Give back the tasks taken but never started, and send what is not sent yet. The
        task queue is the parent's: a worker's copy goes with its process."""
        while self._inbox:
            key, _, _ = self._inbox.popleft()
            self._outbox.append(Requeue(key))
        self._flush()
        self._writer.close()
