"""The local backend: a `multiprocessing.Queue` inside one process tree.

The parent process (the producer, which also supervises the workers) is the broker here: it
puts encoded tasks on a shared task queue, and every worker sends its results, retries and
dead letters back on one event queue. The parent keeps each task it sent until a result or a
dead letter for it comes back, and each worker writes the key of the task it holds into its
own slot of shared memory: that pair is the in-flight registry. When a worker dies, the
parent reads its slot and puts the held task back, which a bare `multiprocessing.Queue`
cannot do (`lost_without_registry` counts what it would have lost).

Known limit, as the Python docs warn: a worker killed while inside `Queue.get()` holds the
queue's internal read lock forever; workers here are killed (in tests) while they run a task.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import multiprocessing
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
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

_KEY_BYTES = 80


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
        self, *, slots: int = 64, queue_name: str = "tasks", context: BaseContext = MP_CONTEXT
    ) -> None:
        self.queue_name = queue_name
        self._tasks: Any = context.Queue()
        self._events: Any = context.Queue()
        #: The seed's mutex: handlers that share a resource (the ticket office) take it.
        self.lock: Any = context.Lock()
        self._held_keys = [context.RawArray(ctypes.c_char, _KEY_BYTES) for _ in range(slots)]
        self._slot: int | None = None
        # Parent-only:
        self._unfinished: dict[str, bytes] = {}
        self._retries: list[tuple[float, str, bytes]] = []
        self._dead: list[DeadLetter] = []
        self._results: list[TaskResult] = []
        self._raw_count = 0
        self.recovered = 0
        self.lost_without_registry = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for parent_only in ("_unfinished", "_retries", "_dead", "_results"):
            state[parent_only] = type(state[parent_only])()
        return state

    @property
    def slots(self) -> int:
        return len(self._held_keys)

    # -- producer (parent) side ----------------------------------------------------------
    def publish(self, tasks: Sequence[TaskEnvelope]) -> None:
        for task in tasks:
            body = encode(task)
            key = task_key(task.id, task.attempt)
            self._unfinished[key] = body
            self._tasks.put((key, body, False))

    def publish_raw(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            self._raw_count += 1
            key = f"raw/{self._raw_count}"
            self._unfinished[key] = body
            self._tasks.put((key, body, False))

    def receive_result(self, timeout: float) -> TaskResult | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._results:
                return self._results.pop(0)
            self._release_due_retries()
            wait = deadline - time.monotonic()
            if self._retries:
                wait = min(wait, self._retries[0][0] - time.time())
            try:
                event = self._events.get(timeout=max(wait, 0))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                continue
            self._handle(event)

    def drain_events(self) -> None:
        """Take in every event already sent (before deciding a dead worker's task was lost)."""
        while True:
            try:
                event = self._events.get(timeout=0.05)
            except queue.Empty:
                return
            self._handle(event)

    def recover(self, slot: int) -> bool:
        """Put back the task the (dead) worker in `slot` held, if it never finished it."""
        self.drain_events()
        key = self._held_keys[slot].value.decode()
        self._held_keys[slot].value = b""
        body = self._unfinished.get(key)
        if body is None:
            return False
        self._tasks.put((key, body, True))
        self.recovered += 1
        self.lost_without_registry += 1
        return True

    @property
    def unfinished(self) -> int:
        """Tasks sent and neither finished nor dead-lettered (queued, held or awaiting retry)."""
        return len(self._unfinished)

    def _handle(self, event: tuple[Any, ...]) -> None:
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
        elif kind == "requeue":
            self._tasks.put((key, self._unfinished[key], True))

    def _release_due_retries(self) -> None:
        now = time.time()
        while self._retries and self._retries[0][0] <= now:
            _, key, body = heapq.heappop(self._retries)
            self._tasks.put((key, body, False))

    # -- worker side ---------------------------------------------------------------------
    def attach(self, slot: int) -> None:
        """Called once in a worker process: which in-flight slot is its own."""
        if not 0 <= slot < len(self._held_keys):
            raise TaskshuttleError(f"slot {slot} out of range 0..{len(self._held_keys) - 1}")
        self._slot = slot

    def receive(self, timeout: float) -> Delivery | None:
        try:
            key, body, redelivered = self._tasks.get(timeout=timeout)
        except queue.Empty:
            return None
        if self._slot is not None:
            self._held_keys[self._slot].value = key.encode()
        return Delivery(body=body, redelivered=redelivered, handle=_Held(key))

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        key = delivery.handle.key
        if result is None:
            self._events.put(("ack", key))
        else:
            self._events.put(("result", key, encode(result)))

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        due = time.time() + delay
        self._events.put(
            ("retry", delivery.handle.key, due, task_key(task.id, task.attempt), encode(task))
        )

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        self._events.put(
            ("dead", delivery.handle.key, encode(letter), encode(result) if result else None)
        )

    def requeue(self, delivery: Delivery) -> None:
        self._events.put(("requeue", delivery.handle.key))

    # -- both ----------------------------------------------------------------------------
    def pending(self) -> int:
        with contextlib.suppress(NotImplementedError):  # qsize() is missing on macOS
            return self._tasks.qsize()
        return -1

    def dead_letters(self) -> list[DeadLetter]:
        return list(self._dead)

    def replay_dead_letters(self) -> int:
        letters, self._dead = self._dead, []
        self.publish_raw([as_first_attempt(letter.body) for letter in letters])
        return len(letters)

    def close(self) -> None:
        for q in (self._tasks, self._events):
            q.close()
            q.join_thread()
