"""The report as a chart: throughput per system, and against worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_chart(report: dict[str, Any], path: Path) -> str:
    """A PNG of throughput per system (and against workers); says why when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (pip install -e '.[bench]')"

    keys = [("publish", "publish"), ("drain", "drain"), ("e2e", "end to end")]
    systems = [
        s
        for s, e in report["systems"].items()
        if any(e.get("measures", {}).get(k) for k, _ in keys)
    ]
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
