"""`producer send`: one task, or a file of them, through the application API. Local: its own
workers, no broker needed. Every bad input is one line and a non-zero exit, nothing sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run

pytestmark = pytest.mark.timeout(120)


def test_one_task_prints_its_id_and_result() -> None:
    done = run("producer", "send", "echo", '{"n": 1}', "--json")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    record = json.loads(line)
    assert record["status"] == "done" and record["value"] == {"n": 1}
    assert len(record["id"]) == 32


def test_a_countdown_and_a_callers_id(tmp_path: Path) -> None:
    done = run("producer", "send", "echo", "--countdown", "1", "--id", "order-7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("order-7 done: {}")


def test_a_failed_task_exits_1_with_its_reason() -> None:
    done = run("producer", "send", "fail", '{"message": "nope"}', "--max-attempts", "1")
    assert done.returncode == 1
    assert "failed: max-attempts: RuntimeError: nope" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_mixed_batch_from_a_file(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    lines = [
        {"kind": "echo", "payload": {"i": 1}},
        {"kind": "sleep", "payload": {"seconds": 0.05}, "countdown": 0.5},
        {"kind": "echo", "payload": {"i": 3}, "task_id": "third", "expires": 60},
    ]
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    done = run("producer", "send", "--from", str(batch), "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["value"] for r in records] == [{"i": 1}, 0.05, {"i": 3}]
    assert records[2]["id"] == "third"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["echo", "--countdown", "-1"], "Invalid value for '--countdown': must be at least 0"),
        (["echo", "--countdown", "nan"], "'--countdown': Input should be a finite number"),
        (["echo", "--countdown", "4e8"], "'--countdown': must be at most 315576000"),
        (
            ["echo", "--eta", "2030-01-01T00:00:00"],
            "'--eta': '2030-01-01T00:00:00' has no timezone",
        ),
        (["echo", "--eta", "tomorrow"], "'--eta': not an ISO 8601 time: 'tomorrow'"),
        (["echo", "--countdown", "1", "--eta", "2030-01-01T00:00:00+00:00"], "not both"),
        (["echo", "[1]"], "PAYLOAD"),
        (["sleep", '{"seconds": -1}'], "invalid payload for kind 'sleep': seconds"),
        (["no-such-kind"], "unknown task kind 'no-such-kind' (known: "),
        ([], "give a task's KIND, or --from FILE"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], error: str) -> None:
    done = run("producer", "send", *args)
    assert done.returncode == 2, done.stdout
    assert error in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""  # nothing sent, so no id printed


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"kind": "nope"}', "unknown task kind 'nope'"),
        ('{"kind": "echo", "countdown": -5}', "countdown: must be at least 0"),
        ('{"kind": "echo", "eta": "2030-01-01T00:00:00"}', "eta: Input should have timezone info"),
        ('{"kind": "echo", "colour": "red"}', "colour: Extra inputs are not permitted"),
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_a_bad_line_in_a_file_names_it_and_nothing_is_sent(
    tmp_path: Path, line: str, error: str
) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text('{"kind": "echo"}\n' + line + "\n")
    done = run("producer", "send", "--from", str(batch))
    assert done.returncode == 2
    assert f"{batch}:2" in done.stderr and error in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""  # the good first line was not sent either


def test_help_names_the_send_command() -> None:
    assert "producer send --help" in run("producer", "--help").stdout
    assert "--countdown S" in run("producer", "send", "--help").stdout
