"""What the chaos run says: its event log (printed as it goes) and the final report."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the run started
    name: str
    detail: str


class Events:
    """A thread-safe log of what happened; each line also goes to stderr at once, so a long
    run shows where it is, and a run that hangs shows where it hung."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.start = time.monotonic()
        self.rows: list[Event] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.start

    def add(self, name: str, detail: str = "") -> None:
        event = Event(round(self.now(), 1), name, detail)
        with self._lock:
            self.rows.append(event)
        print(f"chaos: {event.at:7.1f}s  {name:<20} {detail}", file=self.out, flush=True)

    def count(self, name: str) -> int:
        with self._lock:
            return sum(e.name == name for e in self.rows)


@dataclass
class Report:
    seed: int
    seconds: float
    workdir: str
    events: list[Event] = field(default_factory=list)
    #: The ledger's summary of every confirmed task (`Ledger.summary`), plus extra counts.
    ledger: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    consumer: dict[str, Any] = field(default_factory=dict)
    hostile: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Set when the harness itself could not finish (its own error, not the product's).
    harness_error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.harness_error is None

    def ledger_line(self) -> str:
        fates = self.ledger.get("ledger", {})
        counts = ", ".join(f"{fate} {n}" for fate, n in fates.items())
        return f"confirmed {self.ledger.get('sent', 0)}: {counts}" if fates else "no ledger"

    def as_json(self) -> str:
        return json.dumps(
            {
                "passed": self.passed,
                "seed": self.seed,
                "seconds": self.seconds,
                "workdir": self.workdir,
                "ledger_line": self.ledger_line(),
                "ledger": self.ledger,
                "producer": self.producer,
                "consumer": self.consumer,
                "hostile": self.hostile,
                "queues": self.queues,
                "events": [e.__dict__ for e in self.events],
                "failures": self.failures,
                "harness_error": self.harness_error,
            },
            indent=2,
        )

    def as_text(self) -> str:
        lines = [f"chaos run: seed {self.seed}, {self.seconds:g}s, files in {self.workdir}", ""]
        lines += _table(
            ["time", "event", "detail"],
            [[f"{e.at:.1f}s", e.name, e.detail] for e in self.events],
        )
        lines += ["", f"ledger: {self.ledger_line()}"]
        for kind, fates in self.ledger.get("by_kind", {}).items():
            lines.append(f"  {kind}: " + ", ".join(f"{f} {n}" for f, n in fates.items()))
        for side in ("producer", "consumer"):
            if values := getattr(self, side):
                lines.append(f"{side}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        if self.hostile:
            lines += ["", "hostile messages:"]
            lines += _table(
                ["#", "category", "what", "bytes", "found in", "x-reason"],
                [
                    [
                        str(h["number"]),
                        h["category"],
                        h["label"],
                        str(h["size"]),
                        h["where"],
                        h.get("reason") or "-",
                    ]
                    for h in self.hostile
                ],
            )
        if self.queues:
            lines.append(
                "queues at the end: " + ", ".join(f"{q}={n}" for q, n in self.queues.items())
            )
        lines.append("")
        if self.harness_error:
            lines.append(f"HARNESS ERROR (not a verdict on the product): {self.harness_error}")
        for failure in self.failures:
            lines.append(f"FAIL: {failure}")
        if self.passed:
            lines.append("PASS: nothing confirmed was lost, every hostile message is in the DLQ")
        return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    widths[-1] = 0  # the last column runs free

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

    return [line(header), line(["-" * (w or 6) for w in widths]), *map(line, rows)]
