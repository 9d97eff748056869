"""The delivery ledger: every task's fate in one run, as the producer saw it.

`Ledger` keeps every result of every task (tests and lessons look at each one); `Tally`
keeps the same counts and percentiles in memory that does not grow with the run (the
`producer` command's). Both are a `Recorder`, which is all `producer.run` needs.

A task is *done once*, *done after redelivery* (a worker died or a connection dropped
before its ack, and another worker finished it), *done twice* (a duplicate: more than one
success came back), *dead-lettered* (it failed every attempt, or could not be processed), or
*lost* (sent, and nothing came back).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TextIO

from hdrh.histogram import HdrHistogram

from common.schemas import TaskEnvelope, TaskResult, TaskStatus

#: Who did a task: (host, pid, ppid, name). The host counts because workers on two machines,
#: or in two containers, may share a pid.
WorkerKey = tuple[str, int, int, str]


def worker_key(result: TaskResult) -> WorkerKey:
    return (result.worker_host, result.worker_pid, result.worker_ppid, result.worker_name)


class Fate(StrEnum):
    DONE_ONCE = "done once"
    DONE_AFTER_REDELIVERY = "done after redelivery"
    DONE_TWICE = "done twice"
    DEAD_LETTERED = "dead-lettered"
    LOST = "lost"


class Recorder(Protocol):
    """What a run records into: sends, results, and the summary at the end."""

    started: float
    finished: float | None

    def record_sent(self, tasks: Sequence[TaskEnvelope]) -> None: ...

    def record_result(self, result: TaskResult) -> None: ...

    @property
    def outstanding(self) -> int: ...

    def fates(self) -> Counter[Fate]: ...

    def summary(self, backend: str) -> dict[str, Any]: ...


@dataclass
class Ledger:
    #: task id -> when it was confirmed sent (the producer's clock, seconds)
    sent: dict[str, float] = field(default_factory=dict)
    results: dict[str, list[TaskResult]] = field(default_factory=dict)
    #: task id -> seconds from send to its first result
    latency: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    #: how many sent tasks have at least one result
    answered: int = 0

    def record_sent(self, tasks: Sequence[TaskEnvelope]) -> None:
        now = time.perf_counter()
        for task in tasks:
            self.sent[task.id] = now
            if task.id in self.results:  # answered before its confirm came back
                self.answered += 1
                self.latency.setdefault(task.id, 0.0)

    def record_result(self, result: TaskResult) -> None:
        first = result.task_id not in self.results
        self.results.setdefault(result.task_id, []).append(result)
        if first and result.task_id in self.sent:
            self.answered += 1
            self.latency[result.task_id] = time.perf_counter() - self.sent[result.task_id]

    @property
    def outstanding(self) -> int:
        """Sent tasks with no result yet."""
        return len(self.sent) - self.answered

    def fate(self, task_id: str) -> Fate:
        results = self.results.get(task_id, [])
        done = [r for r in results if r.status is TaskStatus.DONE]
        if len(done) > 1:
            return Fate.DONE_TWICE
        if done:
            return Fate.DONE_AFTER_REDELIVERY if done[0].redelivered else Fate.DONE_ONCE
        if results:
            return Fate.DEAD_LETTERED
        return Fate.LOST

    def fates(self) -> Counter[Fate]:
        counts: Counter[Fate] = Counter({fate: 0 for fate in Fate})
        counts.update(self.fate(task_id) for task_id in self.sent)
        return counts

    def summary(self, backend: str) -> dict[str, Any]:
        end = self.finished or time.perf_counter()
        workers: Counter[WorkerKey] = Counter()
        for results in self.results.values():
            for result in results:
                workers[worker_key(result)] += 1
        latencies = sorted(self.latency.values())
        return _summary(
            backend,
            sent=len(self.sent),
            fates=self.fates(),
            answered=len(self.results),
            elapsed=max(end - self.started, 1e-9),
            latency_ms={
                "p50": _ms(percentile(latencies, 50)),
                "p95": _ms(percentile(latencies, 95)),
                "p99": _ms(percentile(latencies, 99)),
                "max": _ms(latencies[-1] if latencies else None),
            },
            workers=workers,
        )


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The `pct`-th percentile (1 to 99) by the inclusive method; None for no values.

    The ledger, the lessons and the bench all use this one, so their p50 and p99 agree."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# -- the producer's tally: bounded memory, whatever the run's length ----------------------
class TaskNumbering:
    """Task ids that carry their task's number in the job: 16 random hex digits for the job,
    then the number in 16 hex digits (32 in all, the shape of `new_task_id`).

    A tally finds a task's fate code by its number, so it keeps one byte per task instead of
    a dict entry per id, and still tells a duplicate from a first result."""

    PREFIX_LENGTH = 16

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else os.urandom(8).hex()
        if len(self.prefix) != self.PREFIX_LENGTH:
            raise ValueError(f"a numbering prefix has {self.PREFIX_LENGTH} characters")

    def task_id(self, number: int) -> str:
        return f"{self.prefix}{number:016x}"

    def number(self, task_id: str) -> int | None:
        """The task's number, or None for an id this numbering did not make."""
        if len(task_id) != 32 or not task_id.startswith(self.prefix):
            return None
        try:
            return int(task_id[self.PREFIX_LENGTH :], 16)
        except ValueError:
            return None


# A task's state in a tally: one byte, _SENT or-ed with what its results say so far.
_UNANSWERED, _DONE_ONCE, _DONE_REDELIVERED, _DONE_TWICE, _DEAD = range(5)
_SENT = 0x80
_STATE_FATE = {
    _UNANSWERED: Fate.LOST,
    _DONE_ONCE: Fate.DONE_ONCE,
    _DONE_REDELIVERED: Fate.DONE_AFTER_REDELIVERY,
    _DONE_TWICE: Fate.DONE_TWICE,
    _DEAD: Fate.DEAD_LETTERED,
}
#: Latencies are kept in microseconds, from 1 us to an hour (longer ones count as an hour),
#: to 3 significant digits: the histogram's size is fixed by that, not by the run.
_LATENCY_MAX_US = 3_600_000_000


def _next_state(state: int, result: TaskResult) -> int:
    """What a task's results say once `result` is added (as `Ledger.fate` reads the list):
    two successes make a duplicate; a success outranks failures, and its redelivered flag
    is the first success's; failures alone make a dead letter."""
    if result.status is TaskStatus.DONE:
        if state in (_DONE_ONCE, _DONE_REDELIVERED, _DONE_TWICE):
            return _DONE_TWICE
        return _DONE_REDELIVERED if result.redelivered else _DONE_ONCE
    return _DEAD if state in (_UNANSWERED, _DEAD) else state


class Tally:
    """A run's fates, throughput, latency percentiles and per-worker counts, in memory that
    does not grow with the run: what `producer` keeps (`Ledger` keeps every result instead).

    Per task: its send time while it is in flight (sent, no result yet), and one byte for its
    fate when its id comes from `numbering` (ids from elsewhere cost a dict entry). Latencies
    go into fixed-size HDR histograms. With `record`, every result and, at `record_lost`,
    every task left without one, is written to it as a JSON line.
    """

    def __init__(
        self,
        numbering: TaskNumbering | None = None,
        record: TextIO | None = None,
        *,
        from_creation: bool = False,
    ) -> None:
        self.numbering = numbering or TaskNumbering()
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._record = record
        #: task number -> state byte (0: nothing known yet)
        self._states = bytearray()
        #: the same for ids `numbering` did not make
        self._other_states: dict[str, int] = {}
        #: task id -> when its publish returned (confirmed), for tasks with no result yet
        self._in_flight: dict[str, float] = {}
        #: task id -> when its first result came and how long after the task's creation,
        #: for results that came before their task's publish returned (a producer takes
        #: results while it waits for confirms): their latency is counted once it returns
        self._early: dict[str, tuple[float, float]] = {}
        #: sent tasks per state
        self._counts = [0] * 5
        self.sent = 0
        #: when the first and the last task were sent (perf_counter), for the rate achieved
        self.first_sent: float | None = None
        self.last_sent: float | None = None
        #: tasks (sent or not) with at least one result
        self.answered = 0
        self._workers: Counter[WorkerKey] = Counter()
        #: from the publish returning (confirmed) to the first result
        self.latency = HdrHistogram(1, _LATENCY_MAX_US, 3)
        #: with `from_creation`: from the task's creation (just before its publish call, on
        #: the wall clock) to the first result
        self.latency_from_created = HdrHistogram(1, _LATENCY_MAX_US, 3) if from_creation else None

    def _number(self, task_id: str) -> int | None:
        """The task's number in `numbering`, its states grown to hold it; None for an id
        from elsewhere."""
        number = self.numbering.number(task_id)
        if number is not None and number >= len(self._states):
            self._states.extend(bytes(number + 1 - len(self._states)))
        return number

    def record_sent(self, tasks: Sequence[TaskEnvelope]) -> None:
        now = time.perf_counter()
        if tasks:
            self.first_sent = self.first_sent or now
            self.last_sent = now
        states, others, counts, in_flight = (
            self._states,
            self._other_states,
            self._counts,
            self._in_flight,
        )
        for task in tasks:
            task_id = task.id
            number = self._number(task_id)
            state = others.get(task_id, 0) if number is None else states[number]
            if state & _SENT:
                continue  # sent again (a replay): still one task
            if number is None:
                others[task_id] = state | _SENT
            else:
                states[number] = state | _SENT
            self.sent += 1
            counts[state] += 1
            if state == _UNANSWERED:
                in_flight[task_id] = now
            elif (early := self._early.pop(task_id, None)) is not None:
                # Answered before its confirm came back: no wait after the confirm at all.
                self._record_latency(0.0, early[1])

    def record_result(self, result: TaskResult) -> None:
        now = time.perf_counter()
        task_id = result.task_id
        number = self._number(task_id)
        code = self._other_states.get(task_id, 0) if number is None else self._states[number]
        state = code & ~_SENT
        new_state = _next_state(state, result)
        if number is None:
            self._other_states[task_id] = (code & _SENT) | new_state
        else:
            self._states[number] = (code & _SENT) | new_state
        if code & _SENT:
            self._counts[state] -= 1
            self._counts[new_state] += 1
        latency: float | None = None
        if state == _UNANSWERED:
            self.answered += 1
            from_creation = time.time() - result.created_at.timestamp()
            sent_at = self._in_flight.pop(task_id, None)
            if sent_at is not None:
                latency = now - sent_at
                self._record_latency(latency, from_creation)
            elif not code & _SENT:
                self._early[task_id] = (now, from_creation)
        self._workers[worker_key(result)] += 1
        if self._record is not None:
            line = {
                "task_id": task_id,
                "fate": _STATE_FATE[new_state].value,
                "status": result.status.value,
                "attempt": result.attempt,
                "redelivered": result.redelivered,
                "worker": result.worker_name,
                "worker_pid": result.worker_pid,
                "latency_ms": _ms(latency),
                "error": result.error,
            }
            self._record.write(json.dumps(line) + "\n")

    def _record_latency(self, from_confirm: float, from_creation: float) -> None:
        self.latency.record_value(_micros(from_confirm))
        if self.latency_from_created is not None:
            self.latency_from_created.record_value(_micros(from_creation))

    def record_lost(self) -> None:
        """Write a line for every sent task still without a result (when there is a record)."""
        if self._record is None:
            return
        for task_id in self._in_flight:
            self._record.write(json.dumps({"task_id": task_id, "fate": Fate.LOST.value}) + "\n")
        self._record.flush()

    @property
    def outstanding(self) -> int:
        """Sent tasks with no result yet."""
        return self._counts[_UNANSWERED]

    def fates(self) -> Counter[Fate]:
        counts: Counter[Fate] = Counter({fate: 0 for fate in Fate})
        for state, fate in _STATE_FATE.items():
            counts[fate] += self._counts[state]
        return counts

    def summary(self, backend: str) -> dict[str, Any]:
        """The same summary as `Ledger.summary`, with p99 besides; percentiles are the HDR
        histogram's (within 0.1%)."""
        return _summary(
            backend,
            sent=self.sent,
            fates=self.fates(),
            answered=self.answered,
            elapsed=max((self.finished or time.perf_counter()) - self.started, 1e-9),
            latency_ms={
                "p50": _histogram_ms(self.latency, 50),
                "p95": _histogram_ms(self.latency, 95),
                "p99": _histogram_ms(self.latency, 99),
                "max": _histogram_ms(self.latency, 100),
            },
            workers=self._workers,
        )


def _micros(seconds: float) -> int:
    return min(max(int(seconds * 1_000_000), 1), _LATENCY_MAX_US)


def _histogram_ms(histogram: HdrHistogram, pct: float) -> float | None:
    if not histogram.get_total_count():
        return None
    value = histogram.get_max_value() if pct >= 100 else histogram.get_value_at_percentile(pct)
    return round(value / 1000, 2)


def _summary(
    backend: str,
    *,
    sent: int,
    fates: Counter[Fate],
    answered: int,
    elapsed: float,
    latency_ms: dict[str, float | None],
    workers: Counter[WorkerKey],
) -> dict[str, Any]:
    done = fates[Fate.DONE_ONCE] + fates[Fate.DONE_AFTER_REDELIVERY] + fates[Fate.DONE_TWICE]
    return {
        "backend": backend,
        "sent": sent,
        "done": done,
        "failed": fates[Fate.DEAD_LETTERED],
        "lost": fates[Fate.LOST],
        "seconds": round(elapsed, 3),
        "throughput_per_s": round(answered / elapsed, 1),
        "latency_ms": latency_ms,
        "workers": [
            {"host": host, "pid": pid, "ppid": ppid, "name": name, "tasks": n}
            for (host, pid, ppid, name), n in sorted(workers.items())
        ],
        "ledger": {fate.value: fates[fate] for fate in Fate},
    }
