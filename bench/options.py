"""The harness's command line: which systems, how many messages and workers, where to write."""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_SYSTEMS = ("raw-mp", "raw-pika", "local", "rabbitmq", "celery", "dramatiq")
#: The modules a system needs beyond the project's own dependencies.
OPTIONAL = {"celery": ("celery",), "dramatiq": ("dramatiq", "pika")}


@dataclass(frozen=True)
class Options:
    n: int
    workers: int
    prefetch: int
    body_size: int
    rate: float
    latency_seconds: float
    systems: tuple[str, ...]
    scaling: tuple[int, ...]
    out: Path
    repeat: int
    case_timeout: float
    amqp_url: str
    quick: bool


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="taskshuttle beside raw multiprocessing, raw pika, Celery and Dramatiq.",
    )
    parser.add_argument("--n", type=int, help="messages per throughput case (20000; quick 2000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--prefetch", type=int, default=100, help="prefetch per worker (100)")
    parser.add_argument("--body-size", type=int, default=200, help="message body bytes (200)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency offered rate (1000)")
    parser.add_argument(
        "--latency-seconds", type=float, help="seconds of paced sending per latency case (3)"
    )
    parser.add_argument(
        "--systems",
        help=f"comma-separated, from {','.join(ALL_SYSTEMS)} (default: all installed)",
    )
    parser.add_argument(
        "--scaling", help="worker counts for the scaling cases (1,2,4; quick: --workers only)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="folder for latest.json, throughput.png and logs/ (bench/results)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; median kept (1)")
    parser.add_argument("--case-timeout", type=float, help="seconds per case (120; quick 45)")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
    )
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    return parser


def parse_args(argv: list[str] | None) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.systems:
        systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
        unknown = [s for s in systems if s not in ALL_SYSTEMS]
        if unknown:
            parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(ALL_SYSTEMS)}")
    else:
        systems = tuple(s for s in ALL_SYSTEMS if missing(s) is None)
    n = args.n or (2000 if args.quick else 20000)
    if args.scaling is not None:
        scaling = _csv_ints(args.scaling)
    else:
        scaling = (args.workers,) if args.quick else (1, 2, 4)
    if min((n, args.workers, args.prefetch, args.repeat, *scaling), default=1) < 1:
        parser.error("--n, --workers, --prefetch, --repeat and --scaling must be positive")
    if args.rate <= 0 or args.body_size < 0:
        parser.error("--rate must be positive and --body-size not negative")
    return Options(
        n=n,
        workers=args.workers,
        prefetch=args.prefetch,
        body_size=args.body_size,
        rate=args.rate,
        latency_seconds=args.latency_seconds or (0.5 if args.quick else 3.0),
        systems=systems,
        scaling=scaling,
        out=args.out,
        repeat=args.repeat,
        case_timeout=args.case_timeout or (45.0 if args.quick else 120.0),
        amqp_url=args.amqp_url,
        quick=args.quick,
    )


def missing(system: str) -> str | None:
    """Why an optional system cannot run here, or None."""
    for module in OPTIONAL.get(system, ()):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None
