"""The parent's side of the local backend: `LocalBroker`, and `Slots`, its handshake with
each worker process."""

from __future__ import annotations

import ctypes
import heapq
import pickle
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, NoReturn

from common.backend import ProducerBackend, check_delay, check_revocation
from common.clock import SYSTEM_CLOCK, Clock
from common.errors import TaskshuttleError
from common.events import LogSink, decode_event
from common.local.end import LocalWorkerEnd
from common.local.wire import (
    KEY_BYTES,
    MP_CONTEXT,
    Acked,
    Dead,
    Event,
    Item,
    Noted,
    Published,
    Requeue,
    Result,
    Revoked,
    SlotMemory,
    items_by_delay,
)
from common.revoked import RevokedIds
from common.schemas import (
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    as_first_attempt,
    decode_result,
)


class LocalBroker(ProducerBackend):
    """The producer's side, and the broker: tasks out on a `multiprocessing.Queue`, events
    in from each worker's pipe, delayed tasks and dead letters kept here.

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
        task_events: bool = False,
    ) -> None:
        self.queue_name = queue_name
        self.batch_size = batch_size
        #: Whether workers send task events, which this process logs (``producer -v``).
        self.task_events = task_events
        self._event_log = LogSink(say_who=True)
        #: Schedules delayed tasks. (Waiting for events is a real wait on pipes, on real time.)
        self._clock = clock
        #: Batches of tasks, shared by every worker. (bench/ holds its workers back at the
        #: start line with this queue's reader lock, so it reaches for this name.)
        self._tasks: Any = context.Queue()
        #: Tasks on the task queue (it holds batches, and qsize() is missing on macOS).
        self._queued: Any = context.Value(ctypes.c_long, 0, lock=True)
        self._unfinished: dict[str, bytes] = {}
        #: Tasks waiting out a delay (a retry's, a publish's): due time, key, body.
        self._delayed: list[tuple[float, str, bytes]] = []
        self._dead: list[DeadLetter] = []
        self._results: deque[TaskResult] = deque()
        self._raw_count = 0
        #: Tasks put back after their worker died (a bare Queue would have lost them).
        self.recovered = 0
        #: The revocations still kept (`revoke`): each worker end starts with them.
        self._revoked = RevokedIds(f"queue {queue_name!r}", clock)
        self.slots = Slots(self, slots, batch_size, context)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a LocalBroker stays in its own process; a worker takes broker.slots.worker_end(slot)"
        )

    def publish(self, tasks: Sequence[TaskEnvelope], *, delay: float = 0.0) -> None:
        for held, items in items_by_delay(tasks, check_delay(delay)).items():
            self._schedule(items, held)

    def _schedule(self, items: Sequence[tuple[str, bytes]], delay: float) -> None:
        """Queue `items` now, or keep them here until `delay` seconds have passed (a heap
        of this process: a delayed task is lost only if the whole process tree is)."""
        if not delay:
            self._put([(key, body, False) for key, body in items])
            return
        due = self._clock.monotonic() + delay
        for key, body in items:
            self._unfinished[key] = body
            heapq.heappush(self._delayed, (due, key, body))
        with self._queued.get_lock():  # `pending` counts delayed tasks too
            self._queued.value += len(items)

    def publish_raw(self, bodies: Sequence[bytes]) -> None:
        items = []
        for body in bodies:
            self._raw_count += 1
            items.append((f"raw/{self._raw_count}", body, False))
        self._put(items)

    def _put(self, items: list[Item]) -> None:
        for key, body, _ in items:
            self._unfinished[key] = body
        # Up to batch_size at a time, but never so many that a worker holds tasks while
        # another could run them: a quarter of an even share each.
        size = max(1, min(self.batch_size, len(items) // (4 * len(self.slots))))
        for start in range(0, len(items), size):
            self._enqueue(items[start : start + size])

    def _enqueue(self, batch: list[Item]) -> None:
        with self._queued.get_lock():
            self._queued.value += len(batch)
        self._tasks.put(batch)

    def receive_result(self, timeout: float) -> TaskResult | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._results:
                return self._results.popleft()
            self._release_due()
            wait_for = deadline - time.monotonic()
            if self._delayed:
                wait_for = min(wait_for, self._delayed[0][0] - self._clock.monotonic())
            for slot in self.slots.ready(max(wait_for, 0)):
                self._take_events(slot)
            if not self._results and (time.monotonic() >= deadline or self.slots.interrupted()):
                return None

    def interrupt(self) -> None:
        self.slots.interrupt()

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
                case Published():
                    if event.settles is not None:
                        unfinished.pop(event.settles, None)
                    self._schedule(event.items, event.delay)
                case Dead():
                    unfinished.pop(event.key, None)
                    self._dead.append(DeadLetter.model_validate_json(event.letter))
                    if event.result is not None:
                        self._results.append(decode_result(event.result))
                case Noted():
                    self._event_log.send(
                        [e for line in event.events.split(b"\n") if (e := decode_event(line))]
                    )
                case Requeue() if event.key in unfinished:
                    self._enqueue([(event.key, unfinished[event.key], True)])

    def _release_due(self) -> None:
        now = self._clock.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, key, body = heapq.heappop(self._delayed)
            with self._queued.get_lock():  # `_enqueue` counts it again
                self._queued.value -= 1
            self._enqueue([(key, body, False)])

    def _put_back(self, keys: list[str]) -> int:
        """Queue again, as redelivered, the tasks among `keys` that never finished. (One
        that keeps killing its workers is dead-lettered by the worker that takes it next:
        the killed-worker rule is the same for both backends, `consumer.middleware`.)"""
        back = [(key, self._unfinished[key], True) for key in keys if key in self._unfinished]
        for item in back:
            self._enqueue([item])
        self.recovered += len(back)
        return len(back)

    def pending(self) -> int:
        return int(self._queued.value)

    def revoke(self, task_ids: Sequence[str], *, keep_for: float) -> None:
        """Keep these tasks revoked here for `keep_for` seconds (by this broker's clock's
        wall time) and tell each worker at once, on its slot's control pipe: when this
        returns, every worker's next `is_revoked` sees them. A worker started later (a
        replacement after a death) gets every revocation still kept with its end.

        Bounds, here and in each worker: a revocation is kept for its `keep_for`, and at most
        `MAX_REVOKED` at once (past it, those that expire soonest are dropped first, said
        once). A revoked task still waiting out a delay here is handed out when it is due,
        like any, and the worker that takes it dead-letters it as ``revoked`` (with a failed
        result). A worker whose control pipe is full (about a thousand ids it has not read,
        while it starts) makes this wait until it reads them: it does before each task,
        while it waits for work, and every 50 ms while a task runs."""
        ids, keep_for = check_revocation(task_ids, keep_for)
        if not ids:
            return
        until = self._clock.time() + keep_for
        self._revoked.add(ids, until)
        self.slots.tell((until, ids))

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


class Slots:
    """The broker's side of each worker slot, and the whole handshake with its worker.

    A slot has a pipe for its worker's events, a control pipe the other way (the broker's
    revocations: `tell`) and a piece of shared memory where the worker writes the keys of the
    tasks it holds (and the broker counts what it wrote to the control pipe).
    `consumer.supervisor.WorkerPool` calls the three steps: `worker_end(slot)` is what the
    worker takes into its process (with the revocations still kept); `on_started(slot)`
    closes the parent's copy of the pipe's writer and of the control pipe's reader once the
    worker has its own; `on_death(slot)` puts back what a dead worker held and gives the slot
    fresh pipes for its replacement.
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
            context.RawArray(ctypes.c_char, KEY_BYTES * batch_size) for _ in range(count)
        ]
        self._memory = [context.RawValue(SlotMemory) for _ in range(count)]
        #: `interrupt` writes here, so that a wait on the slots' pipes returns at once.
        self._wake_reader, self._wake_writer = context.Pipe(duplex=False)
        controls = [context.Pipe(duplex=False) for _ in range(count)]
        self._control_readers: list[Connection | None] = [reader for reader, _ in controls]
        self._control_writers: list[Connection | None] = [writer for _, writer in controls]
        #: Whether the slot's end was handed out (`worker_end`) and so reads its control
        #: pipe: only those are written to (an end made later gets every revocation at once).
        self._listening = [False] * count

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
        held, memory = self._held_keys[slot], self._memory[slot]
        self._listening[slot] = True  # before the copy: a revocation meanwhile is in both
        return LocalWorkerEnd(
            broker._tasks,
            broker._queued,
            held,
            memory,
            writer,
            slot,
            broker.task_events,
            control=self._control_readers[slot],
            revoked=broker._revoked.live(),
        )

    def on_started(self, slot: int) -> None:
        """The worker in `slot` has started with its own copy of the writer (and of the
        control pipe's reader): close ours."""
        writer = self._writers[slot]
        if writer is not None:
            writer.close()
            self._writers[slot] = None
        control = self._control_readers[slot]
        if control is not None:  # so a write to a dead worker's pipe fails, never waits
            control.close()
            self._control_readers[slot] = None

    def tell(self, revoked: Revoked) -> None:
        """Write revocations to the control pipe of each slot whose end was handed out,
        counting each in the slot's shared memory first (see `LocalWorkerEnd.is_revoked`). A
        slot whose worker is gone is skipped from then on: its replacement gets every
        revocation with its end."""
        for slot, writer in enumerate(self._control_writers):
            if writer is None or not self._listening[slot]:
                continue
            self._memory[slot].revocations += 1
            try:
                writer.send(revoked)
            except OSError:  # BrokenPipeError: nobody reads it any more
                self._listening[slot] = False

    def on_death(self, slot: int) -> int:
        """Put back the tasks the (dead) worker in `slot` held and never finished, and give
        the slot a fresh pipe for its replacement; how many tasks went back."""
        self.on_started(slot)  # no writer left: a half-written message reads as end-of-file
        self._broker.drain_events()
        reader = self._readers[slot]
        if reader is not None:
            reader.close()
        self._readers[slot], self._writers[slot] = self._context.Pipe(duplex=False)
        for end in (self._control_readers[slot], self._control_writers[slot]):
            if end is not None:
                end.close()
        self._control_readers[slot], self._control_writers[slot] = self._context.Pipe(duplex=False)
        self._listening[slot] = False
        self._memory[slot].revocations = 0  # counted from 0 on the fresh control pipe
        held = self._held_keys[slot]
        keys = held.value.decode().split()
        held.value = b""
        self._memory[slot].pid = 0
        return self._broker._put_back(keys)

    def wake(self, count: int) -> None:
        """Put `count` empty batches on the task queue: the sentinel of the classic
        producer-consumer model. A worker waiting in `get` takes one, sees that it is being
        stopped and exits, instead of waiting out its poll interval."""
        for _ in range(count):
            self._broker._tasks.put([])

    def ready(self, timeout: float) -> list[int]:
        """The slots whose pipe has something to read (events, or end-of-file), waiting up to
        `timeout` seconds for one."""
        slots = {reader: slot for slot, reader in enumerate(self._readers) if reader is not None}
        ready = connection.wait([*slots, self._wake_reader], timeout)
        return [slots[reader] for reader in ready if reader in slots]  # type: ignore[index]

    def interrupt(self) -> None:
        """Wake a `ready` waiting in another thread (any thread may call it)."""
        self._wake_writer.send_bytes(b"")

    def interrupted(self) -> bool:
        """Whether `interrupt` was called since the last time this said so."""
        woken = False
        while self._wake_reader.poll():
            self._wake_reader.recv_bytes()
            woken = True
        return woken

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
        ends = (
            *self._readers,
            *self._writers,
            *self._control_readers,
            *self._control_writers,
            self._wake_reader,
            self._wake_writer,
        )
        for end in ends:
            if end is not None:
                end.close()
