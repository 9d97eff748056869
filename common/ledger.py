"""The delivery ledger: every task's fate in one run, as the producer saw it.

A task is *done once*, *done after redelivery* (a worker died or a connection dropped
before its ack, and another worker finished it), *done twice* (a duplicate: more than one
success came back), *dead-lettered* (it failed every attempt, or could not be processed), or
*lost* (sent, and nothing came back).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from common.schemas import TaskEnvelope, TaskResult, TaskStatus


class Fate(StrEnum):
    DONE_ONCE = "done once"
    DONE_AFTER_REDELIVERY = "done after redelivery"
    DONE_TWICE = "done twice"
    DEAD_LETTERED = "dead-lettered"
    LOST = "lost"


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

    def record_sent(self, tasks: list[TaskEnvelope]) -> None:
        now = time.perf_counter()
        for task in tasks:
            self.sent[task.id] = now
            self.answered += task.id in self.results

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
        elapsed = max(end - self.started, 1e-9)
        fates = self.fates()
        done = fates[Fate.DONE_ONCE] + fates[Fate.DONE_AFTER_REDELIVERY] + fates[Fate.DONE_TWICE]
        # By host too: workers on two machines (or in two containers) may share a pid.
        workers: Counter[tuple[str, int, int, str]] = Counter()
        for results in self.results.values():
            for r in results:
                workers[(r.worker_host, r.worker_pid, r.worker_ppid, r.worker_name)] += 1
        latencies = sorted(self.latency.values())
        return {
            "backend": backend,
            "sent": len(self.sent),
            "done": done,
            "failed": fates[Fate.DEAD_LETTERED],
            "lost": fates[Fate.LOST],
            "seconds": round(elapsed, 3),
            "throughput_per_s": round(len(self.results) / elapsed, 1),
            "latency_ms": {
                "p50": _ms(percentile(latencies, 50)),
                "p95": _ms(percentile(latencies, 95)),
                "max": _ms(latencies[-1] if latencies else None),
            },
            "workers": [
                {"host": host, "pid": pid, "ppid": ppid, "name": name, "tasks": n}
                for (host, pid, ppid, name), n in sorted(workers.items())
            ],
            "ledger": {fate.value: fates[fate] for fate in Fate},
        }


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
