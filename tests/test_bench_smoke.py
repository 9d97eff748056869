"""The benchmark harness runs end to end (``bench/run.py --quick``) and writes its report.

Figures are not judged here: this machine is shared and noisy. Only that every requested
system ran and gave positive, finite numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("raw-mp", "raw-pika", "local", "rabbitmq")
RATES = {
    "raw-mp": ("drain", "e2e"),
    "raw-pika": ("publish", "drain", "e2e"),
    "local": ("drain", "e2e"),
    "rabbitmq": ("publish", "drain", "e2e", "e2e_noresults"),
}


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_quick_run_reports_every_system(broker_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--systems",
            ",".join(SYSTEMS),
            "--amqp-url",
            broker_url,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    report = json.loads((out / "latest.json").read_text())
    assert set(report["systems"]) == set(SYSTEMS)
    for system in SYSTEMS:
        entry = report["systems"][system]
        assert entry["status"] == "ok", (system, entry)
        figures = entry["measures"]
        for rate in RATES[system]:
            assert _positive(figures.get(rate)), (system, rate, figures.get(rate))
        assert _positive(figures.get("latency_p50_ms")) or figures.get("latency_p50_ms") == 0
        assert _positive(figures.get("latency_p99_ms")), (system, figures)
    assert report["rows"], "the report has no table rows"
    assert (out / "throughput.png").exists() or "matplotlib" in proc.stdout
