"""Benchmark harness: ``python bench/run.py [--quick] [--systems ...] [--n 20000] ...``.

Runs each sub-benchmark (`bench.case`) in a fresh process with a hard time limit, on one
broker, then prints one table (value, baseline, ratio, target, pass/fail), a CPU table (what
bounds each figure) and a scaling table; writes ``latest.json`` and ``throughput.png`` to
``--out``. Exit status: 0 when every requested system ran, 1 when a case failed or timed
out, 2 on bad arguments. Performance targets never change the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.case import BROKER_SYSTEMS
from bench.measure import (
    CaseConfig,
    Management,
    connect,
    delete_prefixed,
    listening_pid,
)
from bench.report import build_report, print_report, write_chart

ROOT = Path(__file__).resolve().parent.parent
ALL_SYSTEMS = ("raw-mp", "raw-pika", "local", "rabbitmq", "celery", "dramatiq")
#: Which cases each system runs (publish+drain: the timed publish is the drain's pre-fill).
PLAN: dict[str, tuple[str, ...]] = {
    "raw-mp": ("e2e", "drain", "latency"),
    "raw-pika": ("publish+drain", "e2e", "latency"),
    "local": ("drain", "e2e", "latency"),
    "rabbitmq": ("publish+drain", "e2e", "e2e-noresults", "latency"),
    "celery": ("publish+drain", "e2e"),
    "dramatiq": ("publish+drain", "e2e"),
}
#: The case re-run at each worker count of ``--scaling``.
SCALING_CASE = {
    "raw-mp": "e2e",
    "raw-pika": "publish+drain",
    "local": "e2e",
    "rabbitmq": "publish+drain",
}
#: The figure a repeated case is ranked by (its median run is kept).
PRIMARY = {"publish+drain": "drain", "drain": "drain", "e2e": "e2e", "e2e-noresults": "e2e"}
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


def parse_args(argv: list[str] | None) -> Options:
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
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; median kept (1)")
    parser.add_argument("--case-timeout", type=float, help="seconds per case (120; quick 45)")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F"),
    )
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    args = parser.parse_args(argv)

    if args.systems:
        systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
        unknown = [s for s in systems if s not in ALL_SYSTEMS]
        if unknown:
            parser.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(ALL_SYSTEMS)}")
    else:
        systems = tuple(s for s in ALL_SYSTEMS if _missing(s) is None)
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


def _missing(system: str) -> str | None:
    """Why an optional system cannot run here, or None."""
    for module in OPTIONAL.get(system, ()):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- running cases ---------------------------------------------------------------------------
def run_one(cfg: CaseConfig, timeout: float, logs: Path) -> dict[str, Any]:
    """One case in a process group of its own, killed whole if it overruns `timeout`."""
    name = cfg.queue.split(".", 2)[-1]
    out = logs / f"{name}.json"
    log = logs / f"{name}.log"
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.case", cfg.to_json(), str(out)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            if cfg.system in BROKER_SYSTEMS:
                delete_prefixed(cfg.amqp_url, cfg.queue)
            return {"status": "timeout", "reason": f"killed after {timeout:g}s", "log": str(log)}
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        return {"status": "error", "reason": f"exit {proc.returncode}: {tail}", "log": str(log)}
    if result.get("status") != "ok":
        result["log"] = str(log)
    return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _primary(measure: str, result: dict[str, Any]) -> float | None:
    if result.get("status") != "ok":
        return None
    if measure == "latency":
        return float(result["latency"]["p50_ms"])
    return float(result[PRIMARY[measure]])


def run_repeated(cfg: CaseConfig, opts: Options, logs: Path, say: Any) -> dict[str, Any]:
    runs = []
    for rep in range(opts.repeat):
        queue = f"{cfg.queue}.r{rep}" if opts.repeat > 1 else cfg.queue
        result = run_one(replace(cfg, queue=queue), opts.case_timeout, logs)
        runs.append(result)
        say(cfg, result)
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return runs[-1]
    ranked = sorted(ok, key=lambda r: _primary(cfg.measure, r) or 0.0)
    kept = dict(ranked[(len(ranked) - 1) // 2])
    if opts.repeat > 1:
        kept["runs"] = [_primary(cfg.measure, r) for r in runs]
    return kept


def _say(cfg: CaseConfig, result: dict[str, Any]) -> None:
    status = result.get("status")
    if status == "ok":
        figures = []
        for key in ("publish", "drain", "e2e"):
            if key in result:
                figures.append(f"{key} {result[key]:,.0f}/s")
        if "latency" in result:
            lat = result["latency"]
            figures.append(f"p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms")
        text = ", ".join(figures)
    else:
        text = f"{status}: {str(result.get('reason', ''))[:200]}"
    took = result.get("seconds", "-")
    print(f"  {cfg.system:9} {cfg.measure:14} W={cfg.workers:<2} {text} ({took}s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    run_id = time.strftime("%H%M%S") + uuid.uuid4().hex[:4]
    opts.out.mkdir(parents=True, exist_ok=True)
    logs = opts.out / "logs"
    logs.mkdir(exist_ok=True)
    for old in logs.glob("*"):
        old.unlink()
    started = time.time()
    load_before = os.getloadavg()

    broker_error = None
    broker_pid = None
    if any(s in BROKER_SYSTEMS for s in opts.systems):
        try:
            connect(opts.amqp_url).close()
        except Exception as exc:
            broker_error = f"no broker at {urlsplit(opts.amqp_url).netloc.split('@')[-1]}: {exc!r}"
        broker_pid = listening_pid(urlsplit(opts.amqp_url).port or 5672)

    latency_count = max(1, int(opts.rate * opts.latency_seconds))
    print(
        f"taskshuttle bench {run_id}: N={opts.n} W={opts.workers} prefetch={opts.prefetch} "
        f"body={opts.body_size}B rate={opts.rate:g}/s systems={','.join(opts.systems)} "
        f"scaling={','.join(map(str, opts.scaling))}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    scaling: dict[str, dict[int, dict[str, Any]]] = {}
    for system in opts.systems:
        skip = _missing(system) or (broker_error if system in BROKER_SYSTEMS else None)
        if skip:
            status = "skipped" if _missing(system) else "error"
            results[system] = {"status": status, "reason": skip, "cases": {}}
            print(f"  {system:9} {status}: {skip}", flush=True)
            continue
        cases: dict[str, dict[str, Any]] = {}
        worker_counts = [opts.workers]
        if system in SCALING_CASE:
            worker_counts += [w for w in opts.scaling if w != opts.workers]
        for measure in PLAN[system]:
            counts = worker_counts if SCALING_CASE.get(system) == measure else [opts.workers]
            for workers in counts:
                slug = measure.replace("+", "-")
                cfg = CaseConfig(
                    system=system,
                    measure=measure,
                    n=opts.n,
                    workers=workers,
                    prefetch=opts.prefetch,
                    body_size=opts.body_size,
                    rate=opts.rate,
                    latency_count=latency_count,
                    amqp_url=opts.amqp_url,
                    queue=f"bench.{run_id}.{system}.{slug}.w{workers}",
                    time_limit=max(opts.case_timeout - 10, opts.case_timeout * 0.8),
                    broker_pid=broker_pid,
                )
                result = run_repeated(cfg, opts, logs, _say)
                if workers == opts.workers:
                    cases[measure] = result
                if SCALING_CASE.get(system) == measure:
                    scaling.setdefault(system, {})[workers] = result
        statuses = {r.get("status") for r in cases.values()}
        results[system] = {
            "status": "ok" if statuses == {"ok"} else "failed",
            "cases": cases,
        }

    meta = {
        "run_id": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "options": {
            "n": opts.n,
            "workers": opts.workers,
            "prefetch": opts.prefetch,
            "body_size": opts.body_size,
            "rate": opts.rate,
            "latency_messages": latency_count,
            "systems": list(opts.systems),
            "scaling": list(opts.scaling),
            "repeat": opts.repeat,
            "case_timeout": opts.case_timeout,
            "quick": opts.quick,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "rabbitmq": Management(opts.amqp_url).version() if broker_pid else None,
            **{p: _version(p) for p in ("pika", "pydantic", "celery", "dramatiq", "taskshuttle")},
        },
    }
    report = build_report(meta, results, scaling, opts.workers)
    out_json = opts.out / "latest.json"
    out_json.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    chart = write_chart(report, opts.out / "throughput.png")
    print(f"JSON: {out_json}")
    print(f"chart: {chart}")

    failed = [
        f"{system} {measure}: {case.get('status')}"
        for system, entry in results.items()
        if entry["status"] != "skipped"
        for measure, case in (entry.get("cases") or {"-": entry}).items()
        if case.get("status") != "ok"
    ]
    failed += [
        f"{system} scaling W={w}: {case.get('status')}"
        for system, by_w in scaling.items()
        for w, case in by_w.items()
        if case.get("status") != "ok" and w != opts.workers
    ]
    if failed:
        print("not every case ran: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
