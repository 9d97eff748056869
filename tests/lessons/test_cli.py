"""`python -m lessons ...`: one command per lesson, one line per error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lessons import LESSONS
from lessons.runner import ROOT, project_env


def _lessons(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lessons", *args],
        cwd=ROOT,
        env=project_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(30)
def test_every_lesson_is_a_command() -> None:
    done = _lessons("--help")
    assert done.returncode == 0, done.stderr
    for name, (topic, _module) in LESSONS.items():
        assert name in done.stdout
        assert topic.split(" ")[0] in done.stdout  # the seed's own name for it


@pytest.mark.timeout(60)
def test_a_lesson_runs_from_the_command_line() -> None:
    done = _lessons("queues", "--tasks", "30", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["backend"] == "local"
    assert [run["consumers"] for run in result["runs"]] == [1, 3]
    assert result["runs"][0]["out_of_order"] == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("lesson", ["mutex", "compare"])
def test_a_broker_that_is_down_is_one_line(lesson: str) -> None:
    args = ["--backend", "rabbitmq"] if lesson == "mutex" else []
    url = "amqp://guest:guest@127.0.0.1:1/%2F"
    # A lesson waits for its broker as the producer does: here 1 s, not the default 30 s.
    done = _lessons(lesson, *args, "--url", url, env={"TASKSHUTTLE_CONNECT_TIMEOUT": "1"})
    assert done.returncode == 1
    *retries, last = done.stderr.strip().splitlines()
    assert last.startswith("lessons: error: cannot reach broker at"), done.stderr
    assert retries and all("broker unreachable, retrying in" in line for line in retries)


@pytest.mark.timeout(30)
def test_a_bad_option_is_one_line() -> None:
    done = _lessons("mutex", "--backend", "nowhere")
    assert done.returncode == 2
    assert done.stderr.startswith("lessons: error:")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("lang", "daemon_topic"), [("en", "daemon processes"), ("zh", "守护进程")])
def test_no_lesson_named_lists_them_and_exits_cleanly(lang: str, daemon_topic: str) -> None:
    done = _lessons("--lang", lang)
    assert done.returncode == 0
    assert done.stderr == ""  # no "lessons: error:"
    for name in LESSONS:
        assert f"  {name} " in done.stdout
    assert daemon_topic in done.stdout
    bare = _lessons()
    assert (bare.returncode, bare.stderr) == (0, "")
    assert all(name in bare.stdout for name in LESSONS)


@pytest.mark.parametrize(
    ("args", "needs"),
    [
        (["zombie-orphan"], "/proc, prctl"),
        (["daemon"], "/proc"),
        (["mutex", "--backend", "rabbitmq"], "fcntl.flock"),
    ],
)
def test_a_lesson_that_needs_linux_says_so_in_one_line_elsewhere(
    args: list[str],
    needs: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lessons.__main__ import cli

    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(SystemExit) as exit_:
        cli([*args, "--lang", "en"])
    assert exit_.value.code == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.strip().splitlines() == [
        f"lessons: error: {args[0]} needs Linux ({needs}); this system is darwin"
    ]
