"""A worker's side of the local backend: `LocalWorkerEnd`, the one thing of the local queue
that crosses into a worker process."""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from common.backend import Delivery, WorkerBackend
from common.local.wire import Acked, Dead, Event, Item, Requeue, Result, Retry, task_key
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, encode

if TYPE_CHECKING:
    from common.settings import Settings

#: Events a worker collects before sending them in one put, and for how long at most (it
#: also sends before it waits for more work).
_EVENT_BATCH = 64
_EVENT_DELAY = 0.005


@dataclass(frozen=True, slots=True)
class _Held:
    key: str


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
        self._inbox: deque[Item] = deque()
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
            if not batch:  # a stopping pool's wake-up call (`Slots.wake`)
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
