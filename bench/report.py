"""From case results to the report: figures, baselines, ratios, targets, tables, chart."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (key, label, unit, higher is better)
MEASURES: tuple[tuple[str, str, str, bool], ...] = (
    ("publish", "publish", "msg/s", True),
    ("drain", "drain", "msg/s", True),
    ("e2e", "end to end", "msg/s", True),
    ("e2e_noresults", "end to end, results off", "msg/s", True),
    ("latency_p50_ms", "latency p50, sent -> result", "ms", False),
    ("latency_p99_ms", "latency p99, sent -> result", "ms", False),
    ("latency_pub_p50_ms", "latency p50, publish call -> result", "ms", False),
    ("latency_pub_p99_ms", "latency p99, publish call -> result", "ms", False),
    ("rss_mib", "peak RSS / worker", "MiB", False),
)
BASELINES = ("raw-mp", "raw-pika")
#: Measures a system cannot have, and why (shown instead of a figure).
NOT_APPLICABLE = {
    ("raw-mp", "publish"): "no broker: put() only hands bytes to a feeder thread",
    ("local", "publish"): "no broker: put() only hands bytes to a feeder thread",
    ("local", "e2e_noresults"): "the local backend always returns results",
    ("raw-mp", "e2e_noresults"): "",
    ("raw-pika", "e2e_noresults"): "",
    ("celery", "e2e_noresults"): "",
    ("dramatiq", "e2e_noresults"): "",
    ("celery", "latency_p50_ms"): "needs a result backend",
    ("celery", "latency_p99_ms"): "",
    ("celery", "latency_pub_p50_ms"): "",
    ("celery", "latency_pub_p99_ms"): "",
    ("dramatiq", "latency_p50_ms"): "needs a result backend",
    ("dramatiq", "latency_p99_ms"): "",
    ("dramatiq", "latency_pub_p50_ms"): "",
    ("dramatiq", "latency_pub_p99_ms"): "",
}
#: Raw pika's "sent" is its confirm, which comes after the reply: no fair ratio there.
NO_RATIO = {("rabbitmq", "latency_p50_ms"), ("rabbitmq", "latency_p99_ms")}
LATENCY_NOTES = {
    ("rabbitmq", "latency_p50_ms"): "Ledger.latency: from the confirmed publish to the result",
    ("local", "latency_p50_ms"): "Ledger.latency: from put() returning to the result",
    ("raw-pika", "latency_p50_ms"): (
        "from the confirm, which comes after the reply: pika's blocking client hands the "
        "reply over only then; compare the publish call rows"
    ),
    ("rabbitmq", "latency_pub_p50_ms"): "from each task's creation, just before its publish",
    ("local", "latency_pub_p50_ms"): "from each task's creation, just before its put()",
}
#: (system, key) -> (kind, bound, text): kind "ratio" (value / baseline >= bound) or "max".
TARGETS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("rabbitmq", "publish"): ("ratio", 0.5, ">= 0.50x raw pika without confirms"),
    ("rabbitmq", "drain"): ("ratio", 0.8, ">= 0.80x raw pika, prefetch 100"),
    ("local", "e2e"): ("ratio", 0.5, ">= 0.50x raw multiprocessing"),
    ("rabbitmq", "latency_p50_ms"): ("max", 1.0, "< 1 ms"),
    ("rabbitmq", "latency_p99_ms"): ("max", 5.0, "< 5 ms"),
    ("local", "latency_p50_ms"): ("max", 1.0, "< 1 ms"),
    ("local", "latency_p99_ms"): ("max", 5.0, "< 5 ms"),
}
#: rabbitmq's drain against these systems' drain in the same run.
DRAIN_VERSUS = (("dramatiq", 2.5), ("celery", 4.0))
SCALED_FIGURE = {"raw-mp": "e2e", "raw-pika": "drain", "local": "e2e", "rabbitmq": "drain"}


def baseline_of(system: str) -> str | None:
    if system in BASELINES:
        return None
    return "raw-mp" if system == "local" else "raw-pika"


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
    if _ok(cases.get("latency")):
        latency = cases["latency"]["latency"]
        found["latency_p50_ms"] = latency["p50_ms"]
        found["latency_p99_ms"] = latency["p99_ms"]
        found["latency_pub_p50_ms"] = latency.get("from_publish_p50_ms")
        found["latency_pub_p99_ms"] = latency.get("from_publish_p99_ms")
        found["latency"] = latency
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
    "latency_p50_ms": ("latency",),
    "latency_p99_ms": ("latency",),
    "latency_pub_p50_ms": ("latency",),
    "latency_pub_p99_ms": ("latency",),
    "rss_mib": ("publish+drain", "drain", "e2e"),
}


def _judge(kind: str, bound: float, value: float | None, ratio: float | None) -> bool | None:
    if kind == "ratio":
        return None if ratio is None else ratio >= bound
    return None if value is None else value < bound


def build_rows(systems: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for system, entry in systems.items():
        figures = entry["measures"]
        base_name = baseline_of(system)
        base = systems.get(base_name, {}).get("measures", {}) if base_name else {}
        for key, label, unit, _higher in MEASURES:
            if (system, key) in NOT_APPLICABLE:
                why = NOT_APPLICABLE[(system, key)]
                if why:
                    rows.append(Row(system, label, None, unit, note=f"n/a: {why}"))
                continue
            value = figures.get(key)
            base_key = "e2e" if key == "e2e_noresults" else key
            base_value = base.get(base_key) if base_name else None
            ratio = round(value / base_value, 3) if value and base_value else None
            if (system, key) in NO_RATIO:
                ratio = None
            row = Row(system, label, value, unit, base_name, base_value, ratio)
            if value is None:
                row.note = _why_missing(entry, _CASES_FOR[key])
            if key == "rss_mib" and value is not None:
                row.note = figures.get("rss_method", "")
            if key.startswith("latency") and value is not None:
                row.note = LATENCY_NOTES.get((system, key), "")
                if key == "latency_p50_ms":
                    rate = figures["latency"]["achieved_rate"]
                    row.note = "; ".join(filter(None, [f"sent at {rate:g}/s", row.note]))
            target = TARGETS.get((system, key))
            if target:
                kind, bound, text = target
                row.target = text
                row.passed = _judge(kind, bound, value, ratio)
            rows.append(row)
        if system == "rabbitmq":
            drain = figures.get("drain")
            for other, bound in DRAIN_VERSUS:
                other_drain = systems.get(other, {}).get("measures", {}).get("drain")
                ratio = round(drain / other_drain, 3) if drain and other_drain else None
                note = "" if other in systems else f"{other} not in this run"
                if other in systems and other_drain is None:
                    note = _why_missing(systems[other], ("publish+drain",))
                rows.append(
                    Row(
                        system,
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


def scaling_figures(
    scaling: dict[str, dict[int, dict[str, Any]]], cpus: int
) -> dict[str, dict[str, Any]]:
    """Per system: the figure at each worker count, and whether it grows until the cores are
    full (each step up to `cpus` workers >= 1.1x the last; beyond, >= 0.9x the best)."""
    out: dict[str, dict[str, Any]] = {}
    for system, by_workers in scaling.items():
        key = SCALED_FIGURE[system]
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


def build_report(
    meta: dict[str, Any],
    results: dict[str, dict[str, Any]],
    scaling: dict[str, dict[int, dict[str, Any]]],
    workers: int,
) -> dict[str, Any]:
    systems = {}
    for system, entry in results.items():
        systems[system] = {**entry, "measures": measures_of(entry.get("cases", {}))}
    rows = build_rows(systems)
    cpus = meta["machine"]["cpus"] or 1
    scaled = scaling_figures(scaling, cpus)
    cpu_rows = []
    for system, entry in systems.items():
        for name, case in entry.get("cases", {}).items():
            if _ok(case) and case.get("cpu_publish"):
                cpu_rows.append({"system": system, "case": "publish", **case["cpu_publish"]})
            if _ok(case) and case.get("cpu"):
                label = "drain" if name == "publish+drain" else name
                cpu_rows.append({"system": system, "case": label, **case["cpu"]})
    for system, by_workers in scaling.items():
        for w, case in sorted(by_workers.items()):
            if w != workers and _ok(case) and case.get("cpu"):
                label = f"{SCALED_FIGURE[system]} W={w}"
                cpu_rows.append({"system": system, "case": label, **case["cpu"]})
    targets = [row.__dict__ for row in rows if row.target]
    for system in ("rabbitmq", "local"):
        if system in scaled:
            figure = scaled[system]
            targets.append(
                {
                    "system": system,
                    "measure": f"{figure['figure']} scaling",
                    "value": figure["rates"],
                    "target": f"grows with workers until {cpus} cores are full",
                    "passed": figure["grows_until_cores_full"],
                }
            )
    return {
        "meta": meta,
        "systems": systems,
        "rows": [row.__dict__ for row in rows],
        "targets": targets,
        "cpu": cpu_rows,
        "scaling": scaled,
    }


# -- printing --------------------------------------------------------------------------------
def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.1f} {unit}"


def _verdict(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]-[/]"}[passed]


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if os.isatty(1) else 190)
    meta = report["meta"]
    options = meta["options"]
    table = Table(
        title=(
            f"taskshuttle bench {meta['run_id']}: N={options['n']}, W={options['workers']}, "
            f"prefetch {options['prefetch']}, {options['body_size']} B bodies, "
            f"latency at {options['rate']:g}/s"
        )
    )
    for column in ("system", "measure", "value", "baseline", "ratio", "target", "result"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    table.add_column("note", overflow="fold")
    previous = None
    for row in report["rows"]:
        if previous is not None and row["system"] != previous:
            table.add_section()
        previous = row["system"]
        baseline = (
            f"{row['baseline']} {_fmt(row['baseline_value'], row['unit'])}"
            if row["baseline"]
            else ""
        )
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else ""
        table.add_row(
            row["system"],
            row["measure"],
            _fmt(row["value"], row["unit"]),
            baseline,
            ratio,
            row["target"] or "",
            _verdict(row["passed"]) if row["target"] else "",
            row["note"],
        )
    console.print(table)

    if report["cpu"]:
        cpu = Table(title="CPU over each timed window (cores busy; CPU microseconds per message)")
        for column in ("system", "case", "window", "broker", "workers", "producer", "other"):
            cpu.add_column(column, justify="left" if column in ("system", "case") else "right")
        cpu.add_column("machine", justify="right")
        cpu.add_column("us/msg broker / workers / producer", justify="right")
        for row in report["cpu"]:
            cores = [row.get(k, {}).get("cores") for k in ("broker", "workers", "producer")]
            per_msg = [row.get(k, {}).get("us_per_msg") for k in ("broker", "workers", "producer")]
            cpu.add_row(
                row["system"],
                row["case"],
                f"{row.get('window_s', 0):.2f} s",
                *(f"{c:.2f}" if c is not None else "-" for c in cores),
                f"{row.get('other_cores', 0):.2f}",
                f"{row.get('machine_cores', 0):.2f}",
                " / ".join(f"{p:.0f}" if p is not None else "-" for p in per_msg),
            )
        console.print(cpu)

    if report["scaling"]:
        counts = sorted({int(w) for s in report["scaling"].values() for w in s["rates"]})
        scale = Table(title="Throughput against worker processes")
        scale.add_column("system")
        scale.add_column("figure")
        for w in counts:
            scale.add_column(f"W={w}", justify="right")
        scale.add_column("grows until cores full")
        for system, figure in report["scaling"].items():
            cells = []
            for w in counts:
                rate = figure["rates"].get(str(w))
                status = figure["status"].get(str(w))
                cells.append(_fmt(rate, "msg/s") if rate else (status or ""))
            baseline = system in BASELINES
            verdict = _verdict(figure["grows_until_cores_full"])
            scale.add_row(
                system, figure["figure"], *cells, f"{verdict}{' (baseline)' if baseline else ''}"
            )
        console.print(scale)

    machine = meta["machine"]
    console.print(
        f"{machine['cpus']} CPUs; load average {machine['loadavg_before']} before, "
        f"{machine['loadavg_after']} after; RabbitMQ {meta['versions'].get('rabbitmq')}; "
        f"{meta['seconds']} s"
    )


# -- chart -----------------------------------------------------------------------------------
def write_chart(report: dict[str, Any], path: Path) -> str:
    """A PNG of throughput per system (and against workers); says why when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (pip install -e '.[bench]')"

    systems = [s for s, e in report["systems"].items() if e.get("measures")]
    keys = [("publish", "publish"), ("drain", "drain"), ("e2e", "end to end")]
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        figures = report["systems"][system]["measures"]
        xs = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(keys))]
        values = [figures.get(key) or 0 for key, _ in keys]
        drawn = bars.bar(xs, values, width, label=system)
        bars.bar_label(drawn, labels=[f"{v / 1000:.1f}k" if v else "" for v in values], fontsize=7)
    bars.set_xticks(range(len(keys)), [label for _, label in keys])
    bars.set_yscale("log")
    bars.set_ylabel("messages per second (log scale)")
    options = report["meta"]["options"]
    bars.set_title(f"Throughput, N={options['n']}, W={options['workers']}")
    if systems:
        bars.legend(fontsize=8)
    for system, figure in report["scaling"].items():
        points = sorted((int(w), r) for w, r in figure["rates"].items() if r)
        if points:
            lines.plot(
                [w for w, _ in points],
                [r for _, r in points],
                marker="o",
                label=f"{system} {figure['figure']}",
            )
    counts = sorted({int(w) for f in report["scaling"].values() for w in f["rates"]})
    if counts:
        lines.set_xticks(counts)
    lines.set_xlabel("worker processes")
    lines.set_ylabel("messages per second")
    lines.set_yscale("log")
    lines.set_title(f"Against workers ({report['meta']['machine']['cpus']} CPUs)")
    if lines.get_lines():
        lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
