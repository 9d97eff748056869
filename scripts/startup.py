"""How long the programs take to start: wall time of `producer --help` and of a one-task
local run, each against `python -c pass`, median of N runs.

    python scripts/startup.py                          # this tree
    python scripts/startup.py --tree . --tree /work/before --runs 15

Each tree is a checkout with its own ``.venv`` (the project installed into it). The trees
are measured in turns, run by run, so a busy moment of the machine falls on all of them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "python -c pass": ["python", "-c", "pass"],
    "producer --help": ["producer", "--help"],
    "producer --backend local --count 1 --quiet": [
        "producer",
        "--backend",
        "local",
        "--count",
        "1",
        "--quiet",
    ],
}


def wall_time(tree: Path, argv: list[str]) -> float:
    program = tree / ".venv" / "bin" / argv[0]
    start = time.perf_counter()
    done = subprocess.run(
        [str(program), *argv[1:]], cwd=tree, capture_output=True, text=True, timeout=60
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{program} {' '.join(argv[1:])} failed: {done.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", help="a checkout (repeatable)")
    parser.add_argument("--runs", type=int, default=11, help="runs per command and tree")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parents[1]])]
    times: dict[tuple[Path, str], list[float]] = {(t, c): [] for t in trees for c in COMMANDS}
    for tree in trees:  # a first, unmeasured run of each: files into the page cache
        for argv in COMMANDS.values():
            wall_time(tree, argv)
    for _ in range(args.runs):
        for tree in trees:
            for name, argv in COMMANDS.items():
                times[tree, name].append(wall_time(tree, argv))
    print(f"median wall time of {args.runs} runs, seconds (minus `python -c pass`)")
    for tree in trees:
        base = statistics.median(times[tree, "python -c pass"])
        print(f"\n{tree}")
        for name in COMMANDS:
            median = statistics.median(times[tree, name])
            extra = "" if name == "python -c pass" else f"  (+{median - base:.3f})"
            print(f"  {name:<45} {median:.3f}{extra}")


if __name__ == "__main__":
    sys.exit(main())
