"""The report as tables on the terminal: figures against baselines and targets, CPU, scaling."""

from __future__ import annotations

import os
from typing import Any

from rich.markup import escape

from bench.options import BASELINES, base_system


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("msg/s", "tasks/s"):
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.1f} {unit}"


def _verdict(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[yellow]-[/]"}[passed]


def print_report(report: dict[str, Any]) -> None:
    """The figures table, then the CPU and scaling tables where there is anything to show."""
    from rich.console import Console

    console = Console(width=None if os.isatty(1) else 190)
    console.print(_figures_table(report))
    if report["cpu"]:
        console.print(_cpu_table(report["cpu"]))
    if report["scaling"]:
        console.print(_scaling_table(report["scaling"]))
    for note in report.get("notes", []):
        console.print(note, markup=False)
    meta = report["meta"]
    machine = meta["machine"]
    console.print(
        f"{machine['cpus']} CPUs; load average {machine['loadavg_before']} before, "
        f"{machine['loadavg_after']} after; RabbitMQ {meta['versions'].get('rabbitmq')}; "
        f"{meta['seconds']} s"
    )


def _figures_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

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
            escape(row["system"]),
            row["measure"],
            _fmt(row["value"], row["unit"]),
            baseline,
            ratio,
            row["target"] or "",
            _verdict(row["passed"]) if row["target"] else "",
            escape(row["note"]),
        )
    return table


def _cpu_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    cpu = Table(title="CPU over each timed window (cores busy; CPU microseconds per message)")
    for column in ("system", "case", "window", "broker", "workers", "producer", "other"):
        cpu.add_column(column, justify="left" if column in ("system", "case") else "right")
    cpu.add_column("machine", justify="right")
    cpu.add_column("us/msg broker / workers / producer", justify="right")
    for row in rows:
        cores = [row.get(k, {}).get("cores") for k in ("broker", "workers", "producer")]
        per_msg = [row.get(k, {}).get("us_per_msg") for k in ("broker", "workers", "producer")]
        cpu.add_row(
            escape(row["system"]),
            row["case"],
            f"{row.get('window_s', 0):.2f} s",
            *(f"{c:.2f}" if c is not None else "-" for c in cores),
            f"{row.get('other_cores', 0):.2f}",
            f"{row.get('machine_cores', 0):.2f}",
            " / ".join(f"{p:.0f}" if p is not None else "-" for p in per_msg),
        )
    return cpu


def _scaling_table(scaling: dict[str, Any]) -> Any:
    from rich.table import Table

    counts = sorted({int(w) for s in scaling.values() for w in s["rates"]})
    scale = Table(title="Throughput against worker processes")
    scale.add_column("system")
    scale.add_column("figure")
    for w in counts:
        scale.add_column(f"W={w}", justify="right")
    scale.add_column("grows until cores full")
    for system, figure in scaling.items():
        cells = []
        for w in counts:
            rate = figure["rates"].get(str(w))
            status = figure["status"].get(str(w))
            cells.append(_fmt(rate, "msg/s") if rate else (status or ""))
        baseline = base_system(system) in BASELINES
        verdict = _verdict(figure["grows_until_cores_full"])
        scale.add_row(
            escape(system),
            figure["figure"],
            *cells,
            f"{verdict}{' (baseline)' if baseline else ''}",
        )
    return scale


def markdown_report(report: dict[str, Any]) -> str:
    """The figures table in Markdown (as the README shows it), the scaling targets last,
    then the report's notes."""
    lines = [
        "| system | measure | value | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    verdict = {True: "pass", False: "**FAIL**", None: ""}
    for row in report["rows"]:
        if row["value"] is None and not row["target"]:
            continue  # n/a, or not measured: the terminal table says why
        baseline = (
            f"{row['baseline']} {_fmt(row['baseline_value'], row['unit'])}"
            if row["baseline"] and row["baseline_value"] is not None
            else ""
        )
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else ""
        cells = [row["system"], row["measure"], _fmt(row["value"], row["unit"]), baseline, ratio]
        cells += [row["target"] or "", verdict[row["passed"]] if row["target"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    for target in report["targets"]:
        if isinstance(target["value"], dict):  # a scaling target: the rate at each count
            rates = " / ".join(
                f"W={w}: {_fmt(rate, 'msg/s')}" for w, rate in target["value"].items()
            )
            cells = [target["system"], target["measure"], rates, "", "", target["target"]]
            lines.append("| " + " | ".join([*cells, verdict[target["passed"]]]) + " |")
    lines += ["", *report.get("notes", [])]
    return "\n".join(lines) + "\n"
