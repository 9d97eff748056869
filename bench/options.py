"""The harness's command line: which systems, how many messages and workers, where to write."""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.defaults import QueueType
from common.settings import split_urls

ROOT = Path(__file__).resolve().parent.parent
ALL_SYSTEMS = ("raw-mp", "raw-pika", "local", "rabbitmq", "celery", "dramatiq")
BASELINES = ("raw-mp", "raw-pika")
#: The modules a system needs beyond the project's own dependencies.
OPTIONAL = {"celery": ("celery",), "dramatiq": ("dramatiq", "pika")}
#: Systems measured once per queue type of ``--queue-types`` (and on the cluster).
TYPED_SYSTEMS = ("raw-pika", "rabbitmq")
QUEUE_TYPES = (QueueType.classic, QueueType.quorum)


@dataclass(frozen=True)
class Variant:
    """What one group of rows measures: a system and, for `TYPED_SYSTEMS`, the type of its
    work queue and the broker (`nodes` None: ``--amqp-url``; N: the N nodes of
    ``--cluster-url``)."""

    system: str
    queue_type: QueueType | None = None
    nodes: int | None = None

    @property
    def label(self) -> str:
        """The name in the report: ``rabbitmq[quorum]``, ``raw-pika[quorum, 3 nodes]``."""
        if self.queue_type is None:
            return self.system
        where = f", {self.nodes} node{'s' * (self.nodes != 1)}" if self.nodes else ""
        return f"{self.system}[{self.queue_type.value}{where}]"

    @property
    def slug(self) -> str:
        """The label as a part of queue and log file names."""
        kind = self.queue_type.value if self.queue_type else ""
        return "-".join(filter(None, [self.system, kind, f"{self.nodes}n" * bool(self.nodes)]))

    def baseline(self) -> Variant | None:
        """What its ratios are to: raw pika on the same queue type and broker for taskshuttle
        on RabbitMQ; raw pika on classic queues, which they declare, for Celery and Dramatiq."""
        if self.system in BASELINES:
            return None
        if self.system == "local":
            return Variant("raw-mp")
        if self.system == "rabbitmq":
            return Variant("raw-pika", self.queue_type, self.nodes)
        return Variant("raw-pika", QueueType.classic)


def base_system(label: str) -> str:
    """The system of a `Variant.label`: ``rabbitmq[quorum]`` -> ``rabbitmq``."""
    return label.partition("[")[0]


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
    queue_types: tuple[QueueType, ...] = QUEUE_TYPES
    #: The cluster's comma-separated node URLs (``scripts/cluster.sh urls``), or None.
    cluster_url: str | None = None
    #: Task counts of the producer's peak-RSS rows, per backend (empty: no such rows).
    rss_counts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Where the report is copied for the docs (`docs/bench`), or None.
    docs: Path | None = None
    #: `Client.send` calls timed one at a time (and as many raw pika publishes with a
    #: confirm) in taskshuttle's ``send`` case.
    send_count: int = 2000

    def variants(self) -> list[Variant]:
        """Every group of rows to measure, in order: each system (the typed ones once per
        queue type), then the typed ones again on quorum queues of the cluster."""
        found = [
            Variant(system, queue_type)
            for system in self.systems
            for queue_type in (self.queue_types if system in TYPED_SYSTEMS else [None])
        ]
        if self.cluster_url:
            nodes = len(split_urls(self.cluster_url))
            typed = [s for s in self.systems if s in TYPED_SYSTEMS]
            found += [Variant(system, QueueType.quorum, nodes) for system in typed]
        return found

    def url_of(self, variant: Variant) -> str:
        """The broker URL(s) a variant's cases connect to."""
        return self.cluster_url if variant.nodes and self.cluster_url else self.amqp_url


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
        "--send-count",
        type=int,
        help="Client.send calls timed one at a time, after a warm-up (N / 10: 2000; quick 200)",
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
    parser.add_argument(
        "--queue-types",
        default=",".join(QUEUE_TYPES),
        help="work queue types raw-pika and rabbitmq run on, each a row group (classic,quorum)",
    )
    parser.add_argument(
        "--cluster-url",
        help="comma-separated node URLs of a cluster (`bash scripts/cluster.sh urls`): the "
        "quorum rows of raw-pika and rabbitmq again, there (default: none)",
    )
    parser.add_argument(
        "--rss-local",
        help="task counts of the producer's peak-RSS rows, local backend "
        "(10000,100000,1000000; quick: none)",
    )
    parser.add_argument(
        "--rss-rabbitmq",
        help="the same on RabbitMQ, with --wait and 2 consumers (10000,100000; quick: none)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        help="folder the report is copied to as latest.json and latest.md (docs/bench when "
        "--out is not given; with --out, none unless given)",
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
    send_count = args.send_count if args.send_count is not None else max(n // 10, 1)
    if send_count < 1:
        parser.error("--send-count must be positive")
    if args.rate <= 0 or args.body_size < 0:
        parser.error("--rate must be positive and --body-size not negative")
    try:
        names = [part.strip() for part in args.queue_types.split(",") if part.strip()]
        queue_types = tuple(dict.fromkeys(QueueType(name) for name in names))
    except ValueError:
        parser.error(f"--queue-types takes {','.join(QUEUE_TYPES)}, not {args.queue_types!r}")
    if not queue_types:
        parser.error("--queue-types needs at least one queue type")
    if args.cluster_url is not None and QueueType.quorum not in queue_types:
        parser.error("--cluster-url measures quorum queues: add quorum to --queue-types")
    if args.cluster_url is not None and not split_urls(args.cluster_url):
        parser.error("--cluster-url needs at least one URL")
    rss_counts: dict[str, tuple[int, ...]] = {}
    for backend, given, full in (
        ("local", args.rss_local, "10000,100000,1000000"),
        ("rabbitmq", args.rss_rabbitmq, "10000,100000"),
    ):
        counts = _csv_ints(given if given is not None else ("" if args.quick else full))
        if counts and backend in systems:
            rss_counts[backend] = counts
    default_out = args.out == ROOT / "bench" / "results"
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
        queue_types=queue_types,
        cluster_url=args.cluster_url,
        rss_counts=rss_counts,
        docs=args.docs or (ROOT / "docs" / "bench" if default_out else None),
        send_count=send_count,
    )


def missing(system: str) -> str | None:
    """Why an optional system cannot run here, or None."""
    for module in OPTIONAL.get(system, ()):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None
