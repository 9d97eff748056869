"""Benchmark harness: ``python bench/run.py [--quick] [--systems ...] [--n 20000] ...``.

Runs each sub-benchmark (`bench.case`) in a fresh process with a hard time limit, on one
broker, then prints one table (value, baseline, ratio, target, pass/fail), a CPU table (what
bounds each figure) and a scaling table; writes ``latest.json`` and ``throughput.png`` to
``--out``. Exit status: 0 when every requested system ran, 1 when a case failed or timed
out, 2 on bad arguments. Performance targets never change the exit status.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.broker import Management, connect, delete_prefixed
from bench.case import BROKER_SYSTEMS, known_queues
from bench.chart import write_chart
from bench.config import CaseConfig
from bench.options import Options, Variant, missing, parse_args
from bench.procs import broker_pid
from bench.report import build_report
from bench.rss import producer_peak
from bench.tables import markdown_report, print_report
from common.settings import redact_url, split_urls

ROOT = Path(__file__).resolve().parent.parent
#: Which cases each system runs (publish+drain: the timed publish is the drain's pre-fill).
PLAN: dict[str, tuple[str, ...]] = {
    "raw-mp": ("e2e", "drain", "latency"),
    "raw-pika": ("publish+drain", "e2e", "e2e-replies", "latency"),
    "local": ("drain", "e2e", "latency"),
    "rabbitmq": ("publish+drain", "e2e", "e2e-noresults", "latency", "send", "send-many"),
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
PRIMARY = {
    "publish+drain": "drain",
    "drain": "drain",
    "e2e": "e2e",
    "e2e-noresults": "e2e",
    "e2e-replies": "e2e",
    "send-many": "send_many",
}


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
                delete_prefixed(cfg.amqp_url, cfg.queue, known=known_queues(cfg))
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
    if measure in ("latency", "send"):
        return float(result[measure]["p50_ms"])
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


def _say(label: str, cfg: CaseConfig, result: dict[str, Any]) -> None:
    status = result.get("status")
    if status == "ok":
        figures = []
        for key in ("publish", "drain", "e2e"):
            if key in result:
                figures.append(f"{key} {result[key]:,.0f}/s")
        if "latency" in result:
            lat = result["latency"]
            figures.append(f"p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms")
        for key, base in (("send", "raw_pika"), ("send_many", "job_path")):
            if key in result:
                figures.append(
                    f"{key} {_say_figure(result[key])} against {_say_figure(result[base])}"
                )
        text = ", ".join(figures)
    else:
        text = f"{status}: {str(result.get('reason', ''))[:200]}"
    took = result.get("seconds", "-")
    print(f"  {label:17} {cfg.measure:14} W={cfg.workers:<2} {text} ({took}s)", flush=True)


def _say_figure(figure: Any) -> str:
    """A rate, or a call's p50 and p99."""
    if isinstance(figure, dict):
        return f"p50 {figure['p50_ms']:.2f} ms p99 {figure['p99_ms']:.2f} ms"
    return f"{figure:,.0f}/s"


def _find_broker(url: str) -> tuple[str | None, list[int]]:
    """(why the broker at `url`, or the first node of a cluster, cannot be used, or None;
    the OS processes of its nodes that were found)."""
    error = None
    try:
        connect(url).close()
    except Exception as exc:
        error = f"no broker at {urlsplit(split_urls(url)[0]).netloc.split('@')[-1]}: {exc!r}"
    pids = [broker_pid(urlsplit(one).port or 5672) for one in split_urls(url)]
    return error, list(dict.fromkeys(pid for pid in pids if pid))


@dataclass
class Run:
    """One invocation: its options, where its logs go, and what it found so far."""

    opts: Options
    run_id: str
    logs: Path
    latency_count: int
    #: The broker's OS processes, and the cluster's nodes'.
    broker_pids: list[int] = field(default_factory=list)
    cluster_pids: list[int] = field(default_factory=list)
    #: Keyed by `Variant.label`.
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    scaling: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def config(self, variant: Variant, measure: str, workers: int) -> CaseConfig:
        opts = self.opts
        slug = measure.replace("+", "-")
        return CaseConfig(
            system=variant.system,
            measure=measure,
            n=opts.n,
            workers=workers,
            prefetch=opts.prefetch,
            body_size=opts.body_size,
            rate=opts.rate,
            latency_count=self.latency_count,
            amqp_url=opts.url_of(variant),
            queue=f"bench.{self.run_id}.{variant.slug}.{slug}.w{workers}",
            time_limit=max(opts.case_timeout - 10, opts.case_timeout * 0.8),
            broker_pids=self.cluster_pids if variant.nodes else self.broker_pids,
            queue_type=variant.queue_type,
            send_count=opts.send_count,
        )

    def entry(self, variant: Variant, status: str, **fields: Any) -> None:
        """The results of `variant`: its status, what it is and what its ratios are to."""
        baseline = variant.baseline()
        self.results[variant.label] = {
            "status": status,
            **fields,
            "system": variant.system,
            "queue_type": variant.queue_type,
            "nodes": variant.nodes,
            "baseline": baseline.label if baseline else None,
        }

    def system(self, variant: Variant) -> None:
        """Every case of `variant`, the scaling case at each worker count."""
        opts = self.opts
        system = variant.system
        say = functools.partial(_say, variant.label)
        cases: dict[str, dict[str, Any]] = {}
        worker_counts = [opts.workers]
        if system in SCALING_CASE:
            worker_counts += [w for w in opts.scaling if w != opts.workers]
        for measure in PLAN[system]:
            scaled = SCALING_CASE.get(system) == measure
            for workers in worker_counts if scaled else [opts.workers]:
                cfg = self.config(variant, measure, workers)
                result = run_repeated(cfg, opts, self.logs, say)
                if workers == opts.workers:
                    cases[measure] = result
                if scaled:
                    self.scaling.setdefault(variant.label, {})[workers] = result
        statuses = {r.get("status") for r in cases.values()}
        self.entry(variant, "ok" if statuses == {"ok"} else "failed", cases=cases)

    def failures(self) -> list[str]:
        failed = [
            f"{system} {measure}: {case.get('status')}"
            for system, entry in self.results.items()
            if entry["status"] != "skipped"
            for measure, case in (entry.get("cases") or {"-": entry}).items()
            if case.get("status") != "ok"
        ]
        return failed + [
            f"{system} scaling W={w}: {case.get('status')}"
            for system, by_w in self.scaling.items()
            for w, case in by_w.items()
            if case.get("status") != "ok" and w != self.opts.workers
        ]


def _meta(run: Run, started: float, load_before: tuple[float, ...]) -> dict[str, Any]:
    opts = run.opts
    return {
        "run_id": run.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "options": {
            "n": opts.n,
            "workers": opts.workers,
            "prefetch": opts.prefetch,
            "body_size": opts.body_size,
            "rate": opts.rate,
            "latency_messages": run.latency_count,
            "send_count": opts.send_count,
            "systems": list(opts.systems),
            "scaling": list(opts.scaling),
            "repeat": opts.repeat,
            "case_timeout": opts.case_timeout,
            "quick": opts.quick,
            "queue_types": list(opts.queue_types),
            "cluster": split_urls(redact_url(opts.cluster_url)) if opts.cluster_url else None,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "rabbitmq": Management(opts.amqp_url).version() if run.broker_pids else None,
            **{p: _version(p) for p in ("pika", "pydantic", "celery", "dramatiq", "taskshuttle")},
        },
    }


def producer_memory(opts: Options) -> dict[str, list[dict[str, Any]]]:
    """The `producer` command's peak RSS at each count of `opts.rss_counts` (`bench.rss`)."""
    memory: dict[str, list[dict[str, Any]]] = {}
    for backend, counts in opts.rss_counts.items():
        for count in counts:
            try:
                run = producer_peak(ROOT, backend, count, workers=opts.workers, url=opts.amqp_url)
            except Exception as exc:
                run = {"count": count, "error": f"{type(exc).__name__}: {exc}"[:300]}
            memory.setdefault(backend, []).append(run)
            figure = f"{run['peak_rss_mib']} MiB" if "peak_rss_mib" in run else run["error"]
            print(f"  producer --backend {backend} --count {count}: peak RSS {figure}", flush=True)
    return memory


def _fresh_logs(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for old in logs.glob("*"):
        old.unlink()
    return logs


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.time()
    load_before = os.getloadavg()
    variants = opts.variants()
    on_broker = any(v.system in BROKER_SYSTEMS and not v.nodes for v in variants)
    broker_error, pids = _find_broker(opts.amqp_url) if on_broker else (None, [])
    cluster_error, cluster_pids = _find_broker(opts.cluster_url) if opts.cluster_url else (None, [])
    run = Run(
        opts=opts,
        run_id=time.strftime("%H%M%S") + uuid.uuid4().hex[:4],
        logs=_fresh_logs(opts.out),
        latency_count=max(1, int(opts.rate * opts.latency_seconds)),
        broker_pids=pids,
        cluster_pids=cluster_pids,
    )
    print(
        f"taskshuttle bench {run.run_id}: N={opts.n} W={opts.workers} prefetch={opts.prefetch} "
        f"body={opts.body_size}B rate={opts.rate:g}/s systems={','.join(opts.systems)} "
        f"queue types={','.join(opts.queue_types)} scaling={','.join(map(str, opts.scaling))}"
        + (f" cluster={redact_url(opts.cluster_url)}" if opts.cluster_url else ""),
        flush=True,
    )
    for variant in variants:
        error = cluster_error if variant.nodes else broker_error
        skip = missing(variant.system) or (error if variant.system in BROKER_SYSTEMS else None)
        if skip:
            status = "skipped" if missing(variant.system) else "error"
            run.entry(variant, status, reason=skip, cases={})
            print(f"  {variant.label:17} {status}: {skip}", flush=True)
            continue
        run.system(variant)

    memory = producer_memory(opts)
    meta = _meta(run, started, load_before)
    report = build_report(meta, run.results, run.scaling, opts.workers, memory)
    out_json = opts.out / "latest.json"
    out_json.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    out_markdown = opts.out / "latest.md"
    out_markdown.write_text(markdown_report(report))
    chart = write_chart(report, opts.out / "throughput.png")
    if opts.docs is not None:
        opts.docs.mkdir(parents=True, exist_ok=True)
        (opts.docs / "latest.json").write_text(out_json.read_text())
        (opts.docs / "latest.md").write_text(out_markdown.read_text())
        if chart is not None and Path(chart).exists():
            (opts.docs / "throughput.png").write_bytes(Path(chart).read_bytes())
        print(f"copied to {opts.docs}")
    print(f"JSON: {out_json}")
    print(f"Markdown: {out_markdown}")
    print(f"chart: {chart}")
    failed = run.failures()
    if failed:
        print("not every case ran: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
