"""From case results to the report: figures, baselines, ratios, targets, tables, chart.

Results are keyed by `Variant.label` (``rabbitmq[quorum]``); notes, targets and the like by
the system alone (`base_system`), so they hold for every queue type and broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.options import ALL_SYSTEMS, base_system

#: (key, label, unit, higher is better)
MEASURES: tuple[tuple[str, str, str, bool], ...] = (
    ("publish", "publish", "msg/s", True),
    ("drain", "drain", "msg/s", True),
    ("e2e", "end to end", "msg/s", True),
    ("e2e_noresults", "end to end, results off", "msg/s", True),
    ("e2e_replies", "end to end, against replies", "msg/s", True),
    ("latency_p50_ms", "latency p50, sent -> result", "ms", False),
    ("latency_p99_ms", "latency p99, sent -> result", "ms", False),
    ("latency_pub_p50_ms", "latency p50, publish call -> result", "ms", False),
    ("latency_pub_p99_ms", "latency p99, publish call -> result", "ms", False),
    ("rss_mib", "peak RSS / worker", "MiB", False),
    ("send_p50_ms", "send p50, call -> confirmed", "ms", False),
    ("send_p99_ms", "send p99, call -> confirmed", "ms", False),
    ("send_many", "send_many, confirmed", "tasks/s", True),
)
#: The application API's measures (`taskshuttle.Client`): taskshuttle's on RabbitMQ only.
CLIENT_MEASURES = ("send_p50_ms", "send_p99_ms", "send_many")
#: Measures a system cannot have, and why (shown instead of a figure).
NOT_APPLICABLE = {
    ("raw-mp", "publish"): "no broker: put() only hands bytes to a feeder thread",
    ("local", "publish"): "no broker: put() only hands bytes to a feeder thread",
    ("local", "e2e_noresults"): "the local backend always returns results",
    ("raw-mp", "e2e_noresults"): "",
    ("raw-pika", "e2e_noresults"): "",
    ("celery", "e2e_noresults"): "",
    ("dramatiq", "e2e_noresults"): "",
    ("raw-mp", "e2e_replies"): "",
    ("local", "e2e_replies"): "",
    ("celery", "e2e_replies"): "",
    ("dramatiq", "e2e_replies"): "",
    ("celery", "latency_p50_ms"): "needs a result backend",
    ("celery", "latency_p99_ms"): "",
    ("celery", "latency_pub_p50_ms"): "",
    ("celery", "latency_pub_p99_ms"): "",
    ("dramatiq", "latency_p50_ms"): "needs a result backend",
    ("dramatiq", "latency_p99_ms"): "",
    ("dramatiq", "latency_pub_p50_ms"): "",
    ("dramatiq", "latency_pub_p99_ms"): "",
    **{
        (system, key): ""
        for system in ALL_SYSTEMS
        if system != "rabbitmq"
        for key in CLIENT_MEASURES
    },
}
#: Raw pika's "sent" is its confirm, which comes after the reply: no fair ratio there.
NO_RATIO = {("rabbitmq", "latency_p50_ms"), ("rabbitmq", "latency_p99_ms")}
ROW_NOTES = {
    ("rabbitmq", "latency_p50_ms"): "Ledger.latency: from the confirmed publish to the result",
    ("local", "latency_p50_ms"): "Ledger.latency: from put() returning to the result",
    ("raw-pika", "latency_p50_ms"): (
        "from the confirm, which comes after the reply: pika's blocking client hands the "
        "reply over only then; compare the publish call rows"
    ),
    ("rabbitmq", "latency_pub_p50_ms"): "from each task's creation, just before its publish",
    ("raw-pika", "e2e_replies"): (
        "RabbitMQ's RPC tutorial: a transient reply per message to an exclusive queue, no confirms"
    ),
    ("rabbitmq", "e2e_replies"): (
        "the end to end above, against raw pika with replies: the like-for-like baseline "
        "(information, no target)"
    ),
    ("local", "latency_pub_p50_ms"): "from each task's creation, just before its put()",
    ("rabbitmq", "send_p50_ms"): (
        "call to return; raw pika's BlockingConnection publish+confirm interleaved, call by call"
    ),
    ("rabbitmq", "send_many"): (
        "1,000 tasks a call; job path: producer.run.send, as run_rabbitmq(wait=False) runs it; "
        "rounds in turn"
    ),
}
#: (system, key) -> (kind, bound, text): kind "ratio" (value / baseline >= bound),
#: "ratio_max" (value / baseline <= bound) or "max" (value < bound). The project's performance
#: targets.
TARGETS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("rabbitmq", "publish"): ("ratio", 0.9, ">= 0.90x raw pika without confirms"),
    ("rabbitmq", "drain"): ("ratio", 1.5, ">= 1.50x raw pika, prefetch 100"),
    ("rabbitmq", "e2e"): ("ratio", 1.2, ">= 1.20x raw pika end to end"),
    ("rabbitmq", "latency_pub_p50_ms"): ("ratio_max", 2.0, "<= 2x raw pika's"),
    ("rabbitmq", "latency_pub_p99_ms"): ("ratio_max", 2.0, "<= 2x raw pika's"),
    ("local", "e2e"): ("ratio", 0.3, ">= 0.30x raw multiprocessing"),
    ("local", "latency_p99_ms"): ("ratio_max", 2.0, "<= 2x raw multiprocessing's"),
    ("rabbitmq", "send_p50_ms"): ("ratio_max", 1.3, "<= 1.3x raw pika publish+confirm"),
    ("rabbitmq", "send_many"): ("ratio", 0.9, ">= 0.90x the job path"),
}
#: Targets judged on one queue type only: on the others, the row is information.
TARGET_QUEUE_TYPE = {("rabbitmq", "send_p50_ms"): "quorum"}
#: What the client's rows are ratios to: a figure measured in the same case, beside it.
IN_CASE_BASELINES = {
    "send_p50_ms": "raw pika publish+confirm",
    "send_p99_ms": "raw pika publish+confirm",
    "send_many": "job path",
}
#: rabbitmq's drain against these systems' drain in the same run.
DRAIN_VERSUS = (("dramatiq", 4.0), ("celery", 8.0))
#: The producer's peak RSS at its largest count against its smallest: at most this.
RSS_GROWTH = 1.5
SCALED_FIGURE = {"raw-mp": "e2e", "raw-pika": "drain", "local": "e2e", "rabbitmq": "drain"}
CLUSTER_HINT = (
    "no cluster rows: start the cluster with `bash scripts/cluster.sh start` and add "
    '`--cluster-url "$(bash scripts/cluster.sh urls)"`'
)


def _ok(case: dict[str, Any] | None) -> bool:
    return bool(case) and case.get("status") == "ok"  # type: ignore[union-attr]


def measures_of(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures of one system, from its cases."""
    found: dict[str, Any] = {}
    for name in ("publish+drain", "drain"):
        case = cases.get(name)
        if _ok(case):
            assert case is not None
            if "publish" in case:
                found["publish"] = case["publish"]
            found["drain"] = case["drain"]
    if _ok(cases.get("e2e")):
        found["e2e"] = cases["e2e"]["e2e"]
    if _ok(cases.get("e2e-noresults")):
        found["e2e_noresults"] = cases["e2e-noresults"]["e2e"]
    if _ok(cases.get("e2e-replies")):
        found["e2e_replies"] = cases["e2e-replies"]["e2e"]
    if _ok(cases.get("latency")):
        latency = cases["latency"]["latency"]
        found["latency_p50_ms"] = latency["p50_ms"]
        found["latency_p99_ms"] = latency["p99_ms"]
        found["latency_pub_p50_ms"] = latency.get("from_publish_p50_ms")
        found["latency_pub_p99_ms"] = latency.get("from_publish_p99_ms")
        found["latency"] = latency
    # The client's: each with its `IN_CASE_BASELINES` figure, from the same case.
    in_case: dict[str, float] = {}
    if _ok(cases.get("send")):
        send, raw = cases["send"]["send"], cases["send"]["raw_pika"]
        for pct in ("p50", "p99"):
            found[f"send_{pct}_ms"] = send[f"{pct}_ms"]
            in_case[f"send_{pct}_ms"] = raw[f"{pct}_ms"]
        found["send"] = {"samples": send["samples"], "warmup": cases["send"]["details"]["warmup"]}
    if _ok(cases.get("send-many")):
        found["send_many"] = cases["send-many"]["send_many"]
        in_case["send_many"] = cases["send-many"]["job_path"]
    if in_case:
        found["in_case_baselines"] = in_case
    for name in ("publish+drain", "drain", "e2e", "latency"):
        case = cases.get(name)
        if _ok(case) and (case or {}).get("rss", {}).get("per_worker_mib"):
            assert case is not None
            found["rss_mib"] = case["rss"]["per_worker_mib"]
            found["rss_method"] = f"{case['rss']['method']}, {name} case"
            break
    return found


@dataclass
class Row:
    system: str
    measure: str
    value: float | None
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    passed: bool | None = None
    note: str = ""


def _why_missing(entry: dict[str, Any], cases_for: tuple[str, ...]) -> str:
    if entry.get("status") in ("skipped", "error") and entry.get("reason"):
        return f"{entry['status']}: {entry['reason']}"
    for name in cases_for:
        case = entry.get("cases", {}).get(name)
        if case and case.get("status") != "ok":
            return f"{case.get('status')}: {str(case.get('reason', ''))[:120]}"
    return "not measured"


_CASES_FOR = {
    "publish": ("publish+drain",),
    "drain": ("publish+drain", "drain"),
    "e2e": ("e2e",),
    "e2e_noresults": ("e2e-noresults",),
    "e2e_replies": ("e2e-replies", "e2e"),
    "latency_p50_ms": ("latency",),
    "latency_p99_ms": ("latency",),
    "latency_pub_p50_ms": ("latency",),
    "latency_pub_p99_ms": ("latency",),
    "rss_mib": ("publish+drain", "drain", "e2e"),
    "send_p50_ms": ("send",),
    "send_p99_ms": ("send",),
    "send_many": ("send-many",),
}


def _judge(kind: str, bound: float, value: float | None, ratio: float | None) -> bool | None:
    if kind == "ratio":
        return None if ratio is None else ratio >= bound
    if kind == "ratio_max":
        return None if ratio is None else ratio <= bound
    return None if value is None else value < bound


def _row(name: str, entry: dict[str, Any], base: dict[str, Any], measure: tuple[Any, ...]) -> Row:
    """One system's figure for one measure, beside its baseline's and judged on its target."""
    key, label, unit, _higher = measure
    figures = entry["measures"]
    system = base_system(name)
    base_name = entry.get("baseline")
    # taskshuttle's end to end always has its results: that figure is its "with replies".
    value = figures.get("e2e" if (system, key) == ("rabbitmq", "e2e_replies") else key)
    base_value = base.get("e2e" if key == "e2e_noresults" else key) if base_name else None
    if key in IN_CASE_BASELINES:
        base_name = IN_CASE_BASELINES[key]
        base_value = figures.get("in_case_baselines", {}).get(key)
    ratio = round(value / base_value, 3) if value and base_value else None
    if (system, key) in NO_RATIO:
        ratio = None
    row = Row(name, label, value, unit, base_name, base_value, ratio)
    if value is None:
        row.note = _why_missing(entry, _CASES_FOR[key])
    elif key == "rss_mib":
        row.note = figures.get("rss_method", "")
    elif key == "e2e_replies":
        row.note = ROW_NOTES.get((system, key), "")
    elif key.startswith("latency"):
        row.note = ROW_NOTES.get((system, key), "")
        if key == "latency_p50_ms":
            rate = figures["latency"]["achieved_rate"]
            row.note = "; ".join(filter(None, [f"sent at {rate:g}/s", row.note]))
    else:
        row.note = ROW_NOTES.get((system, key), "")
        if key == "send_p50_ms":
            calls = figures["send"]
            counted = f"{calls['samples']:,} calls each, after {calls['warmup']} untimed"
            row.note = "; ".join(filter(None, [counted, row.note]))
    target = TARGETS.get((system, key))
    only = TARGET_QUEUE_TYPE.get((system, key))
    if target and only and entry.get("queue_type") != only:
        row.note = "; ".join(
            filter(None, [f"information: the target is on {only} queues", row.note])
        )
        target = None
    if target:
        kind, bound, text = target
        row.target = text
        row.passed = _judge(kind, bound, value, ratio)
    return row


def _versus_rows(name: str, systems: dict[str, Any]) -> list[Row]:
    """A rabbitmq row group's drain against Dramatiq's and Celery's in the same run (on
    classic queues, which they declare)."""
    drain = systems[name]["measures"].get("drain")
    rows = []
    for other, bound in DRAIN_VERSUS:
        other_drain = systems.get(other, {}).get("measures", {}).get("drain")
        ratio = round(drain / other_drain, 3) if drain and other_drain else None
        note = "" if other in systems else f"{other} not in this run"
        if other in systems and other_drain is None:
            note = _why_missing(systems[other], ("publish+drain",))
        elif systems[name].get("queue_type") != "classic":
            note = "; ".join(filter(None, [note, f"{other} on classic queues"]))
        rows.append(
            Row(
                name,
                f"drain vs {other}",
                drain,
                "msg/s",
                other,
                other_drain,
                ratio,
                f">= {bound:g}x {other}",
                None if ratio is None else ratio >= bound,
                note,
            )
        )
    return rows


def build_rows(systems: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, entry in systems.items():
        system = base_system(name)
        base_name = entry.get("baseline")
        base = systems.get(base_name, {}).get("measures", {}) if base_name else {}
        for measure in MEASURES:
            key, label, unit, _higher = measure
            if (system, key) not in NOT_APPLICABLE:
                rows.append(_row(name, entry, base, measure))
            elif NOT_APPLICABLE[(system, key)]:
                why = NOT_APPLICABLE[(system, key)]
                rows.append(Row(name, label, None, unit, note=f"n/a: {why}"))
        if system == "rabbitmq" and not entry.get("nodes"):
            rows += _versus_rows(name, systems)
    return rows


def memory_rows(memory: dict[str, list[dict[str, Any]]]) -> list[Row]:
    """The producer's peak RSS per backend and task count, each against the smallest count's;
    the largest judged on `RSS_GROWTH`."""
    rows: list[Row] = []
    for backend, runs in memory.items():
        measured = [run for run in runs if run.get("peak_rss_mib")]
        smallest = measured[0] if measured else None
        for run in runs:
            row = Row(backend, f"producer peak RSS, N={run['count']:,}", None, "MiB")
            if not run.get("peak_rss_mib"):
                row.note = run.get("error", "not measured")
                rows.append(row)
                continue
            row.value = run["peak_rss_mib"]
            row.note = f"{run['throughput_per_s']:,.0f} tasks/s; `bench/rss.py`"
            if smallest is not None and run is not smallest:
                row.baseline = f"N={smallest['count']:,}"
                row.baseline_value = smallest["peak_rss_mib"]
                row.ratio = round(run["peak_rss_mib"] / smallest["peak_rss_mib"], 3)
            if run is measured[-1] and run is not smallest:
                row.target = f"<= {RSS_GROWTH:g}x N={smallest['count']:,}"  # type: ignore[index]
                row.passed = row.ratio is not None and row.ratio <= RSS_GROWTH
            rows.append(row)
    return rows


def scaling_figures(
    scaling: dict[str, dict[int, dict[str, Any]]], cpus: int
) -> dict[str, dict[str, Any]]:
    """Per system: the figure at each worker count, and whether it grows until the cores are
    full (each step up to `cpus` workers >= 1.1x the last; beyond, >= 0.9x the best)."""
    out: dict[str, dict[str, Any]] = {}
    for system, by_workers in scaling.items():
        key = SCALED_FIGURE[base_system(system)]
        rates = {
            w: (case.get(key) if _ok(case) else None) for w, case in sorted(by_workers.items())
        }
        counts = [w for w, r in rates.items() if r]
        passed: bool | None = None
        if len(counts) >= 2 and all(rates.values()):
            passed = True
            best = 0.0
            previous: float | None = None
            for w in counts:
                rate = float(rates[w] or 0)
                if w <= cpus:
                    if previous is not None and rate < 1.1 * previous:
                        passed = False
                    best = max(best, rate)
                elif rate < 0.9 * best:
                    passed = False
                previous = rate
        out[system] = {
            "figure": key,
            "rates": {str(w): r for w, r in rates.items()},
            "status": {str(w): case.get("status") for w, case in by_workers.items()},
            "cpu": {str(w): case.get("cpu") for w, case in by_workers.items() if _ok(case)},
            "grows_until_cores_full": passed,
        }
    return out


def _cpu_rows(
    systems: dict[str, Any], scaling: dict[str, dict[int, dict[str, Any]]], workers: int
) -> list[dict[str, Any]]:
    """One row per timed window: every case at `workers`, then the other scaling runs."""
    rows = []
    for system, entry in systems.items():
        for name, case in entry.get("cases", {}).items():
            if _ok(case) and case.get("cpu_publish"):
                rows.append({"system": system, "case": "publish", **case["cpu_publish"]})
            if _ok(case) and case.get("cpu_job_path"):
                label = f"{name}, job path"
                rows.append({"system": system, "case": label, **case["cpu_job_path"]})
            if _ok(case) and case.get("cpu"):
                label = "drain" if name == "publish+drain" else name
                rows.append({"system": system, "case": label, **case["cpu"]})
    for system, by_workers in scaling.items():
        for w, case in sorted(by_workers.items()):
            if w != workers and _ok(case) and case.get("cpu"):
                label = f"{SCALED_FIGURE[base_system(system)]} W={w}"
                rows.append({"system": system, "case": label, **case["cpu"]})
    return rows


def build_report(
    meta: dict[str, Any],
    results: dict[str, dict[str, Any]],
    scaling: dict[str, dict[int, dict[str, Any]]],
    workers: int,
    memory: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    systems = {}
    for system, entry in results.items():
        systems[system] = {**entry, "measures": measures_of(entry.get("cases", {}))}
    rows = build_rows(systems) + memory_rows(memory or {})
    cpus = meta["machine"]["cpus"] or 1
    scaled = scaling_figures(scaling, cpus)
    targets = [row.__dict__ for row in rows if row.target]
    for system, figure in scaled.items():
        if base_system(system) in ("rabbitmq", "local"):
            targets.append(
                {
                    "system": system,
                    "measure": f"{figure['figure']} scaling",
                    "value": figure["rates"],
                    "target": f"grows with workers until {cpus} cores are full",
                    "passed": figure["grows_until_cores_full"],
                }
            )
    typed = any(entry.get("queue_type") for entry in systems.values())
    notes = [CLUSTER_HINT] if typed and not meta["options"].get("cluster") else []
    return {
        "meta": meta,
        "notes": notes,
        "systems": systems,
        "rows": [row.__dict__ for row in rows],
        "targets": targets,
        "cpu": _cpu_rows(systems, scaling, workers),
        "scaling": scaled,
        "memory": memory or {},
    }
