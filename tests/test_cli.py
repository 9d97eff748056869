"""The command lines as a user meets them: help, version, flags, environment, output streams,
handler modules from the current folder, and what a program imports. No broker needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consumer.cli import app as consumer_app
from producer.cli import app as producer_app
from tests.helpers import ROOT, run

pytestmark = pytest.mark.timeout(60)

BIN = Path(sys.executable).parent  # where the console scripts of this environment are

#: Every environment variable a program reads, by the flag it stands for.
ENVIRONMENT = {
    "--url": "AMQP_URL",
    "--queue": "TASKSHUTTLE_QUEUE",
    "--workers": "TASKSHUTTLE_WORKERS",
    "--prefetch": "TASKSHUTTLE_PREFETCH",
    "--max-attempts": "TASKSHUTTLE_MAX_ATTEMPTS",
    "--retry-delay": "TASKSHUTTLE_RETRY_BASE_DELAY",
    "--retry-max-delay": "TASKSHUTTLE_RETRY_MAX_DELAY",
    "--task-timeout": "TASKSHUTTLE_TASK_TIMEOUT",
    "--connect-timeout": "TASKSHUTTLE_CONNECT_TIMEOUT",
}


def _help(app: object, *args: str) -> str:
    done = CliRunner().invoke(app, [*args, "--help"])  # type: ignore[arg-type]
    assert done.exit_code == 0, done.output
    return " ".join(done.output.split())  # the same text however the terminal wraps it


@pytest.mark.parametrize("app", [producer_app, consumer_app], ids=["producer", "consumer"])
def test_help_lists_each_environment_variable_with_its_flag(app: object) -> None:
    text = _help(app)
    for flag, variable in ENVIRONMENT.items():
        assert re.search(rf"{flag} <\w+> [^\[]*\[env var: {variable}[;\]]", text), (flag, text)


def test_consumer_help_lists_the_broker_consumer_timeout_variable() -> None:
    assert "[env var: TASKSHUTTLE_BROKER_CONSUMER_TIMEOUT;" in _help(consumer_app)


@pytest.mark.parametrize(
    ("app", "flags"),
    [
        (producer_app, ["-q, --quiet No progress bar.", "--json Print", "-v, --verbose Log"]),
        (consumer_app, ["-v, --verbose Log", "--burst / --no-burst Exit"]),
    ],
    ids=["producer", "consumer"],
)
def test_boolean_options_are_shown_as_flags(app: object, flags: list[str]) -> None:
    text = _help(app)
    assert "<bool>" not in text
    for flag in flags:
        assert flag in text


def test_quiet_is_a_flag_that_takes_no_value() -> None:
    done = run("producer", "--quiet", "true")
    assert done.returncode == 2
    assert done.stderr == "producer: error: Got unexpected extra argument(s) (true)\n"


def test_dlq_commands_take_the_connection_options() -> None:
    for command in ("list", "replay"):
        text = _help(consumer_app, "dlq", command)
        for flag in ("--backend", "--queue", "--url"):
            assert f"{flag} <" in text


@pytest.mark.parametrize(
    "argv",
    [["producer"], ["consumer"], ["lessons"]],
    ids=["producer", "consumer", "lessons"],
)
def test_every_program_has_a_version(argv: list[str]) -> None:
    from importlib.metadata import version

    done = subprocess.run(
        [sys.executable, "-m", argv[0], "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{argv[0]} {version('taskshuttle')}\n"
    assert done.stderr == ""


def test_lessons_without_a_name_lists_them_and_exits_0() -> None:
    from lessons import LESSONS

    done = subprocess.run(
        [sys.executable, "-m", "lessons"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    for name in LESSONS:
        assert name in done.stdout


def test_a_captured_stderr_holds_no_empty_line() -> None:
    done = run("producer", "--backend", "local", "--count", "5")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar, and none of its leftovers, off a terminal
    assert "tasks sent" in done.stdout


def test_the_local_backend_ignores_a_broker_url_it_does_not_use() -> None:
    done = run(
        "producer", "--backend", "local", "--count", "1", "--json", env={"AMQP_URL": "garbage"}
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] == 1


def test_a_flag_wins_over_the_environment() -> None:
    done = run(
        "producer",
        *("--backend", "local", "--count", "4", "--workers", "1", "--json"),
        env={"TASKSHUTTLE_WORKERS": "0"},  # invalid, and overridden
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["workers"]) == 1


def test_record_writes_every_task_fate_as_json_lines(tmp_path: Path) -> None:
    record = tmp_path / "fates.jsonl"
    done = run(
        "producer",
        *("--backend", "local", "--count", "30", "--workers", "2", "--json"),
        *("--kind", "fail", "--max-attempts", "1", "--record", str(record)),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    last_fate = {line["task_id"]: line["fate"] for line in lines}
    assert len(last_fate) == summary["sent"] == 30
    assert set(last_fate.values()) == {"dead-lettered"} and summary["failed"] == 30
    assert all(line["status"] == "failed" and line["error"] for line in lines)


def test_record_to_a_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    done = run("producer", "--count", "1", "--record", str(tmp_path / "missing" / "f.jsonl"))
    assert done.returncode == 2
    assert "--record" in done.stderr and "cannot write it" in done.stderr


HANDLERS = """
import os
from pathlib import Path

from pydantic import BaseModel

from consumer.handlers import registry


class Double(BaseModel):
    n: int


@registry.task("double")
def double(payload: Double) -> int:
    Path(f"ran-{os.getpid()}-{payload.n}").write_text(str(payload.n * 2))
    return payload.n * 2
"""


def test_handlers_module_is_found_in_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(HANDLERS)
    done = subprocess.run(
        [
            str(BIN / "producer"),  # a console script: its own folder is on sys.path, not ours
            *("--backend", "local", "--handlers", "mytasks", "--kind", "double"),
            *("--payload", '{"n": 21}', "--count", "3", "--json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["done"], summary["failed"]) == (3, 0)
    ran = list(tmp_path.glob("ran-*-21"))
    assert {path.read_text() for path in ran} == {"42"}  # the handler's own result
    worker_pids = {w["pid"] for w in summary["workers"]}
    assert {int(path.name.split("-")[1]) for path in ran} <= worker_pids  # run by the workers


def test_consumer_imports_handlers_from_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(HANDLERS)
    done = subprocess.run(
        [
            str(BIN / "consumer"),
            "--handlers",
            "mytasks",
            "--url",
            "amqp://guest:guest@127.0.0.1:1/",
            "--connect-timeout",
            "0.5",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # past the handlers, at the (closed) broker
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("consumer: error: cannot reach broker"), done.stderr


def _readme_block(after: str) -> str:
    """The first python block of the README after the line `after`."""
    readme = (ROOT / "README.md").read_text()
    rest = readme[readme.index(after) :]
    return rest.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_handlers_example_runs_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "mytasks.py").write_text(_readme_block("### Your own task kinds"))
    done = subprocess.run(
        [
            str(BIN / "producer"),
            *("--backend", "local", "--handlers", "mytasks", "--kind", "resize"),
            *("--payload", '{"path": "a.png", "width": 64}', "--count", "3", "--json"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] == 3


def test_readme_library_example_runs_as_a_saved_script(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(_readme_block("### The job runner as a library"))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "'done': 100" in done.stdout


def test_readme_application_api_example_runs_as_a_saved_script(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(_readme_block("## Use it from your code"))
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "4\n"
    sent = subprocess.run(
        [str(BIN / "producer"), "send", "add", '{"x": 2, "y": 2}', "--handlers", "app"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.endswith(" done: 4\n")


def test_help_imports_neither_pydantic_nor_rich_nor_pika() -> None:
    loaded = _modules_after("from producer.cli import cli; cli(['--help'])")
    assert loaded & {"pydantic", "rich", "pika"} == set()


def test_a_local_run_never_imports_pika() -> None:
    loaded = _modules_after("from producer.cli import cli; cli(['--count', '1', '--json'])")
    assert "pika" not in loaded
    assert "pydantic" in loaded  # the probe does see what a run imports


PROBE = """
import sys
from pathlib import Path
import os

from consumer.handlers import registry


@registry.task("probe")
def probe(payload: dict) -> None:
    heavy = sorted(m for m in ("typer", "rich", "pika", "producer.cli") if m in sys.modules)
    Path(f"modules-{os.getpid()}").write_text(" ".join(heavy) or "-")
"""


def test_worker_processes_do_not_import_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    done = subprocess.run(
        [
            str(BIN / "producer"),
            *("--backend", "local", "--handlers", "probe", "--kind", "probe"),
            *("--count", "20", "--prefetch", "1", "--quiet"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = {path.read_text() for path in tmp_path.glob("modules-*")}
    assert found == {"-"}


def _modules_after(code: str) -> set[str]:
    """The top-level modules loaded by the end of `code`, run in a fresh interpreter."""
    report = "import sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    program = f"import atexit\natexit.register(lambda: exec({report!r}))\n{code}\n"
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "AMQP_URL": "garbage"},
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split("\n")[-2].split())


def _group_and_command() -> object:
    """A group and its subcommand that both take --queue, as `consumer` and `dlq list` do;
    the subcommand prints where the value came from."""
    from common.cli import given, is_default, new_app, takes
    from common.defaults import BackendName

    group = new_app()

    @group.callback()
    @takes("queue", backend=BackendName.rabbitmq)
    def main(ctx: typer.Context) -> None:
        pass

    @group.command("sub")
    @takes("queue", "workers")
    def sub(ctx: typer.Context, count: int = 1) -> None:
        print(given(ctx, "queue"), is_default(ctx, "queue"), given(ctx, "backend"), count)

    return group


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        ([], {}, "tasks True rabbitmq 1"),
        (["--queue", "a"], {}, "a False rabbitmq 1"),
        (["sub", "--queue", "b"], {}, "b False rabbitmq 1"),
        (["--queue", "a", "sub", "--queue", "b"], {}, "b False rabbitmq 1"),
        (["--queue", "a", "--backend", "local"], {"TASKSHUTTLE_QUEUE": "e"}, "a False local 1"),
        ([], {"TASKSHUTTLE_QUEUE": "e"}, "e False rabbitmq 1"),
        (["sub", "--queue", "b"], {"TASKSHUTTLE_QUEUE": "e"}, "b False rabbitmq 1"),
    ],
)
def test_an_option_typed_on_the_innermost_command_wins(
    args: list[str], env: dict[str, str], shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKSHUTTLE_QUEUE", raising=False)
    # `sub` always last: a group's options come before the subcommand's name.
    argv = [*args, "sub"] if "sub" not in args else args
    done = CliRunner().invoke(_group_and_command(), argv, env=env)  # type: ignore[arg-type]
    assert done.exit_code == 0, done.output
    assert done.output == shown + "\n"


def test_a_subcommand_help_lists_the_options_it_takes_ahead_of_its_own() -> None:
    text = _help(_group_and_command(), "sub")
    assert text.index("--queue <str>") < text.index("--workers <int>") < text.index("--count")
    assert "--backend" not in text


def test_every_setting_is_an_option_of_the_consumer_built_from_its_declaration() -> None:
    from common.defaults import declared

    text = _help(consumer_app)
    for name, field in declared().items():
        flag = (field.setting.flag or "--" + name.replace("_", "-")).split("/")[0]
        assert f"{flag} " in text, name
        assert f"[env var: {field.setting.env}" in text, name
        if field.setting.show_default:  # a flag's default is shown as the flag
            default = flag.removeprefix("--") if field.default is True else field.default
            assert f"default: {default}]" in text, name


def test_a_command_cannot_take_an_option_it_declares_itself() -> None:
    from common.cli import takes

    def command(ctx: typer.Context, queue: str = "q") -> None:
        pass

    with pytest.raises(TypeError, match="queue"):
        takes("queue")(command)
