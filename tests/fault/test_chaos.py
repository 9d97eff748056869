"""The chaos run (`tests/chaos.py`) as part of the fault suite: 70 s of seeded faults.

The run starts a node of its own, a consumer and a producer, kills workers, the supervisor
and the broker, publishes garbage, forged and oversized messages, and loads the CPUs; it
exits 0 only if no confirmed task was lost, every hostile message is in the DLQ with its
reason, no process was left behind and the consumer never exited by itself.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import chaos_hostile
from tests.chaos_plan import WEIGHTS, make_plan
from tests.conftest import require_rabbitmq_server
from tests.helpers import ROOT

SECONDS = 70
DRAIN = 60
SEED = 4
#: The harness ends itself by SECONDS + DRAIN + 300 s, its watchdog 60 s later.
HARNESS_LIMIT = SECONDS + DRAIN + 300 + 60

pytestmark = pytest.mark.fault


def test_the_plan_is_a_function_of_the_seed_and_holds_every_fault() -> None:
    plan = make_plan(SEED, SECONDS)
    assert plan == make_plan(SEED, SECONDS)
    assert plan != make_plan(SEED + 1, SECONDS)
    assert {step.kind for step in plan} == set(WEIGHTS)
    assert all(0 < step.at < SECONDS for step in plan)


def _interrupt(harness: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C: the harness stops and reaps what it started; SIGKILL if it will not."""
    harness.send_signal(signal.SIGINT)
    try:
        return harness.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        harness.kill()
        return harness.communicate()


@pytest.mark.timeout(HARNESS_LIMIT + 180)
def test_chaos_run_loses_no_confirmed_task_and_the_consumer_stays_up(tmp_path: Path) -> None:
    require_rabbitmq_server()
    command = [sys.executable, "-m", "tests.chaos", "--seconds", str(SECONDS), "--seed", str(SEED)]
    command += ["--drain", str(DRAIN), "--json", "--workdir", str(tmp_path / "chaos")]
    harness = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = harness.communicate(timeout=HARNESS_LIMIT + 30)
    except subprocess.TimeoutExpired:
        _, err = _interrupt(harness)
        pytest.fail(f"the chaos run outlived its own bounds; its last words: {err[-3000:]}")
    finally:
        if harness.poll() is None:  # pytest's own timeout: let it clean up, then kill
            _interrupt(harness)
    print(err)  # the event log as it went (shown with -s, and under a failure)
    report = json.loads(out) if out.strip().startswith("{") else {}
    assert harness.returncode == 0, (
        f"chaos run (seed {SEED}) exited {harness.returncode}: {report.get('ledger_line')}; "
        f"failures: {report.get('failures')}; harness error: {report.get('harness_error')}; "
        f"files in {tmp_path / 'chaos'}"
    )
    assert report["ledger"]["lost"] == 0
    print(f"\n[chaos seed {SEED}] {report['ledger_line']}; hostile {len(report['hostile'])}")


def test_a_hostile_message_is_found_in_the_dlq_even_after_retries_changed_its_body() -> None:
    forged = chaos_hostile.make("forged", random.Random(1), 7)[0]
    garbage = chaos_hostile.make("garbage", random.Random(1), 8)
    for h in [forged, *garbage]:
        h.published = True
    retried = forged.body.replace(b'"attempt": ', b'"attempt": 1').replace(b"3000", b"3")
    dlq = [(retried, {"x-reason": "max-attempts"}), (garbage[0].body, {"x-reason": "schema"})]
    failures = chaos_hostile.locate([forged, *garbage], dlq, {"q": [garbage[1].body]})
    assert forged.where == "DLQ" and forged.reason == "max-attempts"
    assert garbage[0].where == "DLQ"
    assert failures == [f"garbage message #9 ({garbage[1].label}) is not in the DLQ; found in: q"]
