"""Every bad input gets one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from tests.conftest import url_with
from tests.helpers import run, wait_until

pytestmark = pytest.mark.timeout(60)


def _one_line_error(completed, code: int, prog: str, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    err = completed.stderr.strip()
    assert completed.returncode == code, (completed.returncode, completed.stderr)
    assert "Traceback" not in completed.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _error_after_retries(completed, code: int, prog: str, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    """The program waited for the broker (one warning per attempt), then gave up with one
    line: that line."""
    *retries, last = completed.stderr.strip().splitlines()
    assert retries, completed.stderr  # it did wait
    assert all("WARNING broker unreachable, retrying in " in line for line in retries), retries
    return _one_line_error(
        subprocess.CompletedProcess(completed.args, completed.returncode, "", last),
        code,
        prog,
        *fragments,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--payload", "{bad"], ["Invalid value for '--payload': not valid JSON"]),
        (["--payload", "[1, 2]"], ["Invalid value for '--payload': must be a JSON object"]),
        (
            ["--kind", "nope"],
            [
                "Invalid value for '--kind': unknown task kind 'nope'",
                "known: cpu, echo, fail, sleep",
            ],
        ),
        (["--count", "-1"], ["Invalid value for '--count': must be at least 0"]),
        (["--count", "many"], ["Invalid value for '--count': ", "valid integer"]),
        (
            ["--kind", "sleep", "--payload", '{"seconds": "soon"}'],
            ["Invalid value for '--payload': invalid payload for kind 'sleep'"],
        ),
        (
            ["--kind", "sleep", "--payload", '{"secs": 1}'],
            ["Invalid value for '--payload': invalid payload for kind 'sleep'"],
        ),
        (["--backend", "kafka"], ["Invalid value for '--backend': ", "'local', 'rabbitmq'"]),
        (
            ["--backend", "rabbitmq", "--url", "http://localhost"],
            ["Invalid value for '--url': malformed AMQP URL", "amqp://"],
        ),
        (
            ["--backend", "rabbitmq", "--url", "amqp://u:secret@:5672/"],
            ["Invalid value for '--url': malformed AMQP URL", "no host"],
        ),
        (
            ["--backend", "rabbitmq", "--url", "amqp://h:99999/"],
            ["Invalid value for '--url': malformed AMQP URL"],
        ),
        (["--workers", "0"], ["Invalid value for '--workers': must be at least 1"]),
        (["--retry-delay", "-1"], ["Invalid value for '--retry-delay': must be at least 0"]),
        (["--handlers", "no_such_module"], ["Invalid value for '--handlers': ", "no_such_module"]),
    ],
)
def test_producer_usage_errors_exit_2_with_one_line(args: list[str], fragments: list[str]) -> None:
    completed = run("producer", *args)
    err = _one_line_error(completed, 2, "producer", *fragments)
    assert "secret" not in err  # credentials never printed


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"TASKSHUTTLE_WORKERS": "0"},
            [],
            "Invalid value for 'TASKSHUTTLE_WORKERS': must be at least 1",
        ),
        ({"TASKSHUTTLE_WORKERS": "two"}, [], "Invalid value for 'TASKSHUTTLE_WORKERS': "),
        (
            {"TASKSHUTTLE_RETRY_BASE_DELAY": "-1"},
            [],
            "Invalid value for 'TASKSHUTTLE_RETRY_BASE_DELAY': must be at least 0",
        ),
        (
            {"TASKSHUTTLE_QUEUE": "has space"},
            [],
            "Invalid value for 'TASKSHUTTLE_QUEUE': must match",
        ),
        (
            {"AMQP_URL": "http://u:secret@localhost"},
            ["--backend", "rabbitmq"],
            "Invalid value for 'AMQP_URL': malformed AMQP URL 'http://u:***@localhost'",
        ),
    ],
)
def test_an_invalid_environment_variable_is_named(
    env: dict[str, str], args: list[str], message: str
) -> None:
    completed = run("producer", "--count", "1", *args, env=env)
    err = _one_line_error(completed, 2, "producer", message)
    for field in ("workers:", "retry_base_delay", "amqp_url", "queue:"):
        assert field not in err  # the name the user typed, never the settings field
    assert "secret" not in err


def test_a_flag_is_named_even_when_the_variable_is_set_too() -> None:
    completed = run("producer", "--workers", "0", env={"TASKSHUTTLE_WORKERS": "3"})
    err = _one_line_error(completed, 2, "producer", "Invalid value for '--workers': ")
    assert "TASKSHUTTLE_WORKERS" not in err


def test_consumer_local_backend_points_to_the_producer() -> None:
    completed = run("consumer", "--backend", "local")
    _one_line_error(
        completed,
        2,
        "consumer",
        "Invalid value for '--backend': ",
        "producer --backend local --workers N",
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--task-timeout", "5"], {}, "'--task-timeout'"),
        ([], {"TASKSHUTTLE_TASK_TIMEOUT": "5"}, "'TASKSHUTTLE_TASK_TIMEOUT'"),
    ],
)
def test_thread_pool_with_a_task_timeout_is_refused_before_connecting(
    args: list[str], env: dict[str, str], named: str
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F"  # nothing listens there
    completed = run("consumer", "--pool", "thread", "--url", url, *args, env=env)
    err = _one_line_error(
        completed, 2, "consumer", f"Invalid value for {named}: needs --pool process"
    )
    assert "cannot reach broker" not in err


def test_handlers_are_imported_before_connecting() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F"
    completed = run("consumer", "--url", url, "--handlers", "no_such_module")
    _one_line_error(completed, 2, "consumer", "Invalid value for '--handlers': ")


def test_dlq_options_are_taken_after_the_subcommand() -> None:
    port = _closed_port()
    completed = run(
        "consumer", "dlq", "list", "--queue", "q", "--url", f"amqp://guest:guest@127.0.0.1:{port}/"
    )
    _one_line_error(
        completed, 1, "consumer", f"cannot reach broker at amqp://guest:***@127.0.0.1:{port}/"
    )
    local = run("consumer", "dlq", "replay", "--backend", "local")
    _one_line_error(local, 2, "consumer", "Invalid value for '--backend': ", "`producer` itself")


def test_dlq_option_after_the_subcommand_wins_over_one_before(
    broker_url: str, queue_name: str
) -> None:
    closed = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F"
    completed = run(
        "consumer",
        "--url",
        closed,
        "dlq",
        "list",
        "--url",
        broker_url,
        "--queue",
        queue_name,
        "--json",
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""  # a new queue has no dead letters


@pytest.mark.parametrize("prog", ["producer", "consumer"])
def test_closed_port_and_wrong_password_are_two_different_errors(
    prog: str, broker_url: str, queue_name: str
) -> None:
    rabbit = ["--backend", "rabbitmq", "--queue", queue_name, "--connect-timeout", "1"]
    refused = run(prog, *rabbit, "--url", f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F")
    refused_err = _error_after_retries(
        refused, 1, prog, "cannot reach broker", "Connection refused"
    )
    started = time.monotonic()
    wrong_password = url_with(broker_url, password="hunter2")
    denied = run(prog, *rabbit[:-2], "--url", wrong_password)
    denied_err = _one_line_error(denied, 1, prog, "refused the credentials")  # no retries
    assert time.monotonic() - started < 20  # at once, though the consumer waits forever
    user = urlsplit(broker_url).username
    assert "hunter2" not in denied_err and f"{user}:***@" in denied_err
    assert refused_err != denied_err


def test_unknown_virtual_host_is_an_access_error(broker_url: str) -> None:
    completed = run(
        "producer",
        "--backend",
        "rabbitmq",
        "--url",
        url_with(broker_url, vhost="no-such-vhost"),
    )
    _one_line_error(completed, 1, "producer", "refused access to the virtual host")


def test_consumer_revoke_prints_a_line_per_id_and_the_workers_learn_them(
    broker_url: str, queue_name: str
) -> None:
    from common.rabbitmq import RabbitBackend

    worker = RabbitBackend(broker_url, queue_name)
    try:
        worker.start_consuming()  # a worker that runs already
        completed = run(
            "consumer", "--queue", queue_name, "revoke", "t-one", "t-two", "t-one",
            "--url", broker_url, "--keep-for", "60",
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.splitlines() == [
            f"revoked t-one: no worker of {queue_name!r} starts it for 60 s",
            f"revoked t-two: no worker of {queue_name!r} starts it for 60 s",
        ]
        assert wait_until(lambda: worker.is_revoked("t-one") and worker.is_revoked("t-two"), 5)
        assert not worker.is_revoked(queue_name)
    finally:
        worker.close()


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["--backend", "local"], 2, ["Invalid value for '--backend': ", "`producer` itself"]),
        (["--url", "http://u:secret@localhost"], 2, ["Invalid value for '--url': malformed"]),
        (["--keep-for", "0"], 2, ["Invalid value for '--keep-for': ", "over 0"]),
        (["--keep-for", "nan"], 2, ["Invalid value for '--keep-for': ", "finite"]),
        (["--keep-for", "1e12"], 2, ["Invalid value for '--keep-for': ", "at most ten years"]),
        (["x" * 65], 2, ["Invalid value for 'ID': not a task id"]),
    ],
)
def test_consumer_revoke_usage_errors_are_one_line_before_connecting(
    args: list[str], code: int, fragments: list[str]
) -> None:
    closed = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F"  # were it tried: exit 1
    completed = run("consumer", "revoke", "t-1", "--url", closed, *args)
    err = _one_line_error(completed, code, "consumer", *fragments)
    assert "secret" not in err
    assert completed.stdout == ""


def test_consumer_revoke_with_no_broker_is_one_line_and_revokes_nothing() -> None:
    port = _closed_port()
    completed = run("consumer", "revoke", "t-1", "--url", f"amqp://guest:guest@127.0.0.1:{port}/")
    _one_line_error(
        completed, 1, "consumer", f"cannot reach broker at amqp://guest:***@127.0.0.1:{port}/"
    )
    assert completed.stdout == ""
