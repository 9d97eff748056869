"""The plan of a chaos run: its options, and which fault happens when, drawn from its seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Options:
    seconds: float
    seed: int
    workers: int = 4
    rate: float = 20.0
    prefetch: int = 10
    busy: int = 0
    drain: float = 90.0
    workdir: Path = field(default_factory=Path)

    @property
    def deadline(self) -> float:
        """Seconds after the start by which the run must be over, whatever happens: time
        for the node to start, the plan, a slow broker restart late in it, the drain."""
        return self.seconds + self.drain + 300


@dataclass(frozen=True)
class Step:
    """One planned fault: `at` seconds into the run; the draws it needs, made up front."""

    at: float
    kind: str
    down: float  # broker events: seconds the node stays down
    load: float  # cpu-load: seconds the busy loops run
    pick: float  # which worker, in [0, 1)
    seed: int  # hostile messages' contents


#: How often each fault is drawn, after every kind has had its turn once.
WEIGHTS = {
    "kill-worker": 4.0,
    "kill-supervisor": 2.0,
    "restart-broker": 1.5,
    "kill-broker": 1.5,
    "garbage": 1.5,
    "forged": 1.5,
    "oversized": 1.0,
    "cpu-load": 1.5,
}
FIRST_STEP_AT = 4.0
GAP = (3.0, 9.0)  # seconds between planned steps
QUIET_END = 3.0


def make_plan(seed: int, seconds: float) -> list[Step]:
    """The faults of a run, a function of its seed and length alone."""
    rng = random.Random(seed)
    times = []
    at = FIRST_STEP_AT
    while at < seconds - QUIET_END:
        times.append(round(at, 1))
        at += rng.uniform(*GAP)
    kinds = list(WEIGHTS)
    rng.shuffle(kinds)
    kinds = kinds[: len(times)]
    kinds += rng.choices(list(WEIGHTS), list(WEIGHTS.values()), k=len(times) - len(kinds))
    rng.shuffle(kinds)
    return [
        Step(
            at=at,
            kind=kind,
            down=round(rng.uniform(0.0, 8.0), 1),
            load=round(rng.uniform(5.0, 15.0), 1),
            pick=rng.random(),
            seed=rng.randrange(2**32),
        )
        for at, kind in zip(times, kinds, strict=True)
    ]
