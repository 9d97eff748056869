"""The in-flight registry: which task each worker has in hand, and which tasks kill workers.

Each worker slot has a small cell of shared memory (a `RawArray`, so it works for worker
processes and threads alike) where its worker writes the id of the task it is running, and
clears it once the task is settled. The supervisor reads the cells: to say how many tasks a
shutdown waits for, and, when a worker dies, which task it was running.

A task that was running each time its worker died is a suspect: it may be what kills them (a
segfault in a C extension, the OOM killer, `os._exit`). Once `max_deaths` workers died
running the same task id, the supervisor writes that id into the death table, a second piece
of shared memory that only it writes and every worker reads. The backend hands the message
out again; whichever worker takes it sees the id there and dead-letters it
(``killed-worker``, `consumer.middleware.KilledWorkers`) instead of running it. Only a
redelivered message is checked: a task sent anew with that id (a replayed dead letter) gets
its chance again. The rule is the same for both backends.

Beside its cell, each slot has its figures (`_Figures`): the worker's pid and ppid, how many
tasks it finished, dead-lettered and sent to retry, the kind of the task in hand and when it
took it. The worker writes them in place as it goes (a few words of shared memory per task,
no message to anyone); the supervisor reads them for its live table and its summary. When a
worker ends, the supervisor moves its figures into `InFlight.earlier` and clears the slot
for the replacement, which counts from zero: a slot's figures are the sum of its workers'.
"""

from __future__ import annotations

import ctypes
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

from common.local import MP_CONTEXT

#: Room for a task id (`TaskEnvelope.id` is at most 64 characters, 4 bytes each at most in
#: UTF-8), after two bytes of length.
_ID_BYTES = 256
_CELL = 2 + _ID_BYTES
_EMPTY = b"\0\0"
#: Tasks the death table remembers (the oldest makes room for a new one).
TABLE_SIZE = 64
#: Task ids whose deaths the supervisor counts (the oldest is forgotten first).
_COUNTED = 4096


#: Room for a task kind (at most 64 characters), in UTF-8.
_KIND_BYTES = 256


class _Figures(ctypes.Structure):
    """One slot's figures, written by its worker only. Each field is one aligned word (or a
    few bytes the reader shows as they are), so a reader never sees half a number."""

    _fields_ = (
        ("pid", ctypes.c_int64),
        ("ppid", ctypes.c_int64),
        ("succeeded", ctypes.c_uint64),
        ("dead_lettered", ctypes.c_uint64),
        ("retried", ctypes.c_uint64),
        # time.monotonic() (one clock for every process on the machine) when the task in hand
        # was taken; 0 when none is
        ("since", ctypes.c_double),
        ("kind", ctypes.c_char * _KIND_BYTES),
    )


@dataclass(frozen=True)
class SlotFigures:
    """What one worker did, as its slot's shared memory says."""

    slot: int
    pid: int | None
    ppid: int | None
    succeeded: int = 0
    dead_lettered: int = 0
    retried: int = 0
    task_id: str | None = None
    kind: str | None = None
    #: Seconds the task in hand has been running (None: no task in hand).
    running_for: float | None = None
    #: The worker ended unexpectedly (it died, or ran over its time) and was replaced.
    replaced: bool = False

    @property
    def settled(self) -> int:
        """Deliveries this worker settled: finished, dead-lettered or sent to retry."""
        return self.succeeded + self.dead_lettered + self.retried


def _encode(task_id: str) -> bytes:
    data = task_id.encode("utf-8", "surrogatepass")[:_ID_BYTES]
    return len(data).to_bytes(2, "big") + data


def _decode(raw: bytes, errors: str = "surrogatepass") -> str | None:
    size = int.from_bytes(raw[:2], "big")
    if not size:
        return None
    return raw[2 : 2 + size].decode("utf-8", errors)


class DeathTable:
    """Task ids that killed `max_deaths` workers or more, with how many: written by the
    supervisor, read by every worker before it runs a redelivered task.

    The writer makes the version odd while it writes, and even again after; a reader keeps
    what it read last until it gets a clean read of a newer version, so it never acts on a
    half-written id. Each reader reads the table only when the version changed: a worker
    pays one shared-memory read per task.
    """

    def __init__(self, context: BaseContext = MP_CONTEXT, size: int = TABLE_SIZE) -> None:
        self._cells: Any = context.RawArray(ctypes.c_char, size * _CELL)
        self._counts: Any = context.RawArray(ctypes.c_int, size)
        self._version: Any = context.RawValue(ctypes.c_uint64, 0)
        self._size = size
        self._seen = 0
        self._known: dict[str, int] = {}
        self._places: OrderedDict[str, int] = OrderedDict()  # the writer's: id -> place

    def __getstate__(self) -> dict[str, Any]:
        """What a worker process takes: the shared memory, none of the writer's bookkeeping."""
        state = self.__dict__.copy()
        state["_places"] = OrderedDict()
        return state

    def put(self, task_id: str, deaths: int) -> None:
        """Record (or update) that `task_id` killed `deaths` workers. Supervisor only."""
        place = self._places.pop(task_id, None)
        if place is None:
            place = len(self._places)
            if place >= self._size:
                _oldest, place = self._places.popitem(last=False)
        self._places[task_id] = place
        self._version.value += 1  # odd: being written
        self._cells[place * _CELL : (place + 1) * _CELL] = _encode(task_id).ljust(_CELL, b"\0")
        self._counts[place] = deaths
        self._version.value += 1

    def deaths(self, task_id: str) -> int:
        """How many workers `task_id` killed, if that reached the limit; else 0."""
        version = self._version.value
        if version != self._seen and version % 2 == 0:
            raw = self._cells.raw
            counts = list(self._counts)
            known = {
                _decode(raw[i * _CELL : (i + 1) * _CELL]): count
                for i, count in enumerate(counts)
                if count
            }
            if self._version.value == version:  # nobody wrote meanwhile: a clean read
                self._known = {k: v for k, v in known.items() if k is not None}
                self._seen = version
        return self._known.get(task_id, 0)


class InHand:
    """One worker's record: its slot's cell, and its view of the death table.

    `Worker` calls `take` when it has decoded a task, `count` and `release` once the task
    is settled; whoever starts the worker calls `started` first.
    """

    def __init__(self, cell: Any, table: DeathTable | None, figures: Any = None) -> None:
        self._cell = cell
        self._table = table
        self._figures = figures if figures is not None else _Figures()

    def started(self, pid: int, ppid: int) -> None:
        """The worker in this slot runs as `pid`, child of `ppid`."""
        self._figures.pid, self._figures.ppid = pid, ppid

    def take(self, task_id: str, redelivered: bool, kind: str = "") -> int:
        """Note `task_id` (of `kind`) as in hand. If it comes back after killing workers
        `max_deaths` times, how many it killed (the worker then dead-letters it unrun);
        else 0."""
        self._cell.raw = _encode(task_id)
        self._figures.kind = kind.encode("utf-8", "surrogatepass")[:_KIND_BYTES]
        self._figures.since = time.monotonic()
        if redelivered and self._table is not None:
            return self._table.deaths(task_id)
        return 0

    def count(self, succeeded: int, retried: int, dead_lettered: int) -> None:
        """The worker's totals so far (`Worker.succeeded`...), copied in place."""
        figures = self._figures
        figures.succeeded, figures.retried, figures.dead_lettered = (
            succeeded,
            retried,
            dead_lettered,
        )

    def release(self) -> None:
        self._figures.since = 0.0
        self._cell.raw = _EMPTY


class InFlight:
    """Every slot's record, seen from the supervisor, and the deaths it counted.

    `max_deaths`: after that many deaths while running the same task id, the task is
    dead-lettered (None: never): the supervisor writes such ids into the death table and
    the workers dead-letter the task when it comes back (`consumer.middleware.KilledWorkers`),
    with either backend.
    """

    def __init__(
        self,
        slots: int,
        max_deaths: int | None = None,
        *,
        context: BaseContext = MP_CONTEXT,
    ) -> None:
        self._cells = [context.RawArray(ctypes.c_char, _CELL) for _ in range(slots)]
        self._figures = [context.RawValue(_Figures) for _ in range(slots)]
        self.max_deaths = max_deaths
        self.table = DeathTable(context) if max_deaths is not None else None
        self._deaths: OrderedDict[str, int] = OrderedDict()
        #: The figures of every worker that ended, oldest first (the supervisor appends).
        self.earlier: list[SlotFigures] = []
        #: How many times each slot's worker was replaced (it died, or ran over its time).
        self.restarts = [0] * slots

    @property
    def slots(self) -> int:
        return len(self._cells)

    def record(self, slot: int) -> InHand:
        """What the worker in `slot` writes to (it crosses into a worker process)."""
        return InHand(self._cells[slot], self.table, self._figures[slot])

    def figures(self, slot: int) -> SlotFigures:
        """What the worker now in `slot` did so far, and the task it has in hand."""
        raw = self._figures[slot]
        since = raw.since
        task_id = _decode(self._cells[slot].raw, "replace") if since else None
        return SlotFigures(
            slot=slot,
            pid=raw.pid or None,
            ppid=raw.ppid or None,
            succeeded=raw.succeeded,
            dead_lettered=raw.dead_lettered,
            retried=raw.retried,
            task_id=task_id,
            kind=raw.kind.decode("utf-8", "replace") if task_id else None,
            running_for=max(0.0, time.monotonic() - since) if task_id else None,
        )

    def totals(self, slot: int) -> SlotFigures:
        """What every worker of `slot` did, the one there now and the ones before it."""
        now = self.figures(slot)
        before = [f for f in self.earlier if f.slot == slot]
        return SlotFigures(
            slot=slot,
            pid=now.pid,
            ppid=now.ppid,
            succeeded=now.succeeded + sum(f.succeeded for f in before),
            dead_lettered=now.dead_lettered + sum(f.dead_lettered for f in before),
            retried=now.retried + sum(f.retried for f in before),
            task_id=now.task_id,
            kind=now.kind,
            running_for=now.running_for,
        )

    def workers(self) -> list[SlotFigures]:
        """What each worker did, slot by slot: the ones that ended, then the one there now."""
        now = [self.figures(slot) for slot in range(self.slots)]
        every = self.earlier + [f for f in now if f.pid is not None]
        return sorted(every, key=lambda f: f.slot)  # stable: the earlier ones first

    def retire(self, slot: int, *, replaced: bool) -> None:
        """The worker in `slot` has ended (`replaced`: unexpectedly, and another takes its
        place): keep its figures in `earlier`, and clear the slot's for the next one."""
        ended = self.figures(slot)
        if ended.pid is not None:
            self.earlier.append(
                SlotFigures(
                    slot=slot,
                    pid=ended.pid,
                    ppid=ended.ppid,
                    succeeded=ended.succeeded,
                    dead_lettered=ended.dead_lettered,
                    retried=ended.retried,
                    replaced=replaced,
                )
            )
        ctypes.memset(ctypes.addressof(self._figures[slot]), 0, ctypes.sizeof(_Figures))
        if replaced:
            self.restarts[slot] += 1

    def held(self, slot: int) -> str | None:
        """The id of the task the worker in `slot` is running, if any."""
        return _decode(self._cells[slot].raw)

    def in_hand(self) -> int:
        """How many workers are running a task now."""
        return sum(cell.raw[:2] != _EMPTY for cell in self._cells)

    def clear(self, slot: int) -> None:
        """The worker in `slot` is gone, and not because of its task (it timed out, or
        it was stopped): forget what it held."""
        self._cells[slot].raw = _EMPTY

    def died(self, slot: int) -> tuple[str, int] | None:
        """The worker in `slot` died unexpectedly: the task it was running and how many
        workers died running it so far (None if it ran none). Clears the slot."""
        task_id = self.held(slot)
        self.clear(slot)
        if task_id is None:
            return None
        deaths = self._deaths.pop(task_id, 0) + 1
        self._deaths[task_id] = deaths
        if len(self._deaths) > _COUNTED:
            self._deaths.popitem(last=False)
        limit = self.max_deaths
        if self.table is not None and limit is not None and deaths >= limit:
            self.table.put(task_id, deaths)
        return task_id, deaths
