"""The benchmark harness runs end to end (``bench/run.py --quick``) and writes its report.

Figures are not judged here: this machine is shared and noisy. Only that every requested
system ran and gave positive, finite numbers, that the RabbitMQ rows of each queue type are
ratios to raw pika on the same type, and that no queue of the run is left behind.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from common.rabbitmq.topology import QueueNames

ROOT = Path(__file__).resolve().parent.parent
#: Report label -> the rates it must have.
RATES = {
    "raw-mp": ("drain", "e2e"),
    "raw-pika[classic]": ("publish", "drain", "e2e"),
    "local": ("drain", "e2e"),
    "rabbitmq[classic]": ("publish", "drain", "e2e", "e2e_noresults"),
}
QUORUM_RATES = {
    "raw-pika[quorum]": ("publish", "drain", "e2e"),
    "rabbitmq[quorum]": ("publish", "drain", "e2e", "e2e_noresults"),
}


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _run_bench(out: Path, timeout: float, *args: str) -> tuple[dict[str, Any], str]:
    """`bench/run.py ARGS --out OUT`, which must exit 0: (its report, its output)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "latest.json").read_text()), proc.stdout


def _check_figures(report: dict[str, Any], rates: dict[str, tuple[str, ...]]) -> None:
    assert set(report["systems"]) == set(rates)
    for label, names in rates.items():
        entry = report["systems"][label]
        assert entry["status"] == "ok", (label, entry)
        figures = entry["measures"]
        for rate in names:
            assert _positive(figures.get(rate)), (label, rate, figures.get(rate))
        assert _positive(figures.get("latency_p50_ms")) or figures.get("latency_p50_ms") == 0
        assert _positive(figures.get("latency_p99_ms")), (label, figures)
    assert report["rows"], "the report has no table rows"


def _check_ratios(report: dict[str, Any], label: str, baseline: str) -> None:
    """`label`'s throughput rows are ratios to `baseline`'s figures of the same run."""
    assert report["systems"][label]["baseline"] == baseline
    rows = {(r["system"], r["measure"]): r for r in report["rows"]}
    for measure in ("publish", "drain", "end to end"):
        row = rows[(label, measure)]
        assert row["baseline"] == baseline, row
        assert _positive(row["ratio"]), row


def _check_deleted(url: str, report: dict[str, Any], slugs: tuple[str, ...]) -> None:
    """No work queue of these row groups' cases, nor any of its companions, is left."""
    prefix = f"bench.{report['meta']['run_id']}"
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        for slug in slugs:
            for case in ("publish-drain", "e2e", "latency"):
                for queue in QueueNames(f"{prefix}.{slug}.{case}.w2").with_companions():
                    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="404"):
                        conn.channel().queue_declare(queue, passive=True)


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_quick_run_reports_every_system(broker_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    systems = "raw-mp,raw-pika,local,rabbitmq"
    args = ("--quick", "--systems", systems, "--queue-types", "classic", "--amqp-url", broker_url)
    report, stdout = _run_bench(out, 170, *args)
    _check_figures(report, RATES)
    assert (out / "throughput.png").exists() or "matplotlib" in stdout
    assert "| rabbitmq[classic] | drain |" in (out / "latest.md").read_text()


@pytest.mark.broker
@pytest.mark.timeout(150)
def test_quorum_rows_are_ratios_to_raw_pika_on_quorum(broker_url: str, tmp_path: Path) -> None:
    """A tiny run on quorum queues: each rabbitmq[quorum] figure beside raw-pika[quorum]'s,
    and every queue of the run deleted afterwards (quorum ones too)."""
    args = ("--systems", "raw-pika,rabbitmq", "--queue-types", "quorum", "--n", "300")
    args += ("--scaling", "2", "--latency-seconds", "0.3", "--amqp-url", broker_url)
    report, _ = _run_bench(tmp_path / "results", 140, *args)
    _check_figures(report, QUORUM_RATES)
    _check_ratios(report, "rabbitmq[quorum]", "raw-pika[quorum]")
    assert any("--cluster-url" in note for note in report["notes"])
    _check_deleted(broker_url, report, ("raw-pika-quorum", "rabbitmq-quorum"))
