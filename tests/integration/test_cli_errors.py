"""Every bad input gets one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket

import pika
import pytest

from tests.helpers import run

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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--payload", "{bad"], ["--payload is not valid JSON"]),
        (["--payload", "[1, 2]"], ["--payload must be a JSON object"]),
        (["--kind", "nope"], ["unknown task kind 'nope'", "known: cpu, echo, fail, sleep"]),
        (["--count", "-1"], ["--count", "must be 0 or more"]),
        (["--count", "many"], ["'--count'", "valid integer"]),
        (
            ["--kind", "sleep", "--payload", '{"seconds": "soon"}'],
            ["invalid payload for kind 'sleep'"],
        ),
        (["--kind", "sleep", "--payload", '{"secs": 1}'], ["invalid payload for kind 'sleep'"]),
        (["--backend", "kafka"], ["'--backend'", "'local', 'rabbitmq'"]),
        (["--backend", "rabbitmq", "--url", "http://localhost"], ["malformed AMQP URL", "amqp://"]),
        (
            ["--backend", "rabbitmq", "--url", "amqp://u:secret@:5672/"],
            ["malformed AMQP URL", "no host"],
        ),
        (["--backend", "rabbitmq", "--url", "amqp://h:99999/"], ["malformed AMQP URL"]),
        (["--workers", "0"], ["invalid workers"]),
    ],
)
def test_producer_usage_errors_exit_2_with_one_line(args: list[str], fragments: list[str]) -> None:
    completed = run("producer", *args)
    err = _one_line_error(completed, 2, "producer", *fragments)
    assert "secret" not in err  # credentials never printed


def test_consumer_local_backend_points_to_the_producer() -> None:
    completed = run("consumer", "--backend", "local")
    _one_line_error(completed, 2, "consumer", "producer --backend local --workers N")


@pytest.mark.parametrize("prog", ["producer", "consumer"])
def test_closed_port_and_wrong_password_are_two_different_errors(
    prog: str, broker_url: str, queue_name: str
) -> None:
    rabbit = ["--backend", "rabbitmq", "--queue", queue_name]
    refused = run(prog, *rabbit, "--url", f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F")
    refused_err = _one_line_error(refused, 1, prog, "cannot reach broker", "Connection refused")
    denied = run(prog, *rabbit, "--url", "amqp://guest:hunter2@127.0.0.1:5672/%2F")
    denied_err = _one_line_error(denied, 1, prog, "refused the credentials")
    assert "hunter2" not in denied_err and "guest:***@" in denied_err
    assert refused_err != denied_err


def test_unknown_virtual_host_is_an_access_error(broker_url: str) -> None:
    completed = run(
        "producer",
        "--backend",
        "rabbitmq",
        "--url",
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
    )
    _one_line_error(completed, 1, "producer", "refused access to the virtual host")


@pytest.mark.parametrize("prog", ["producer", "consumer"])
def test_queue_declared_as_quorum_elsewhere_is_a_mismatch(
    prog: str, broker_url: str, queue_name: str
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_declare(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        completed = run(
            prog,
            "--backend",
            "rabbitmq",
            "--queue",
            queue_name,
            *(["--count", "1"] if prog == "producer" else []),
        )
        _one_line_error(completed, 1, prog, "queue exists with other arguments", "x-queue-type")
    finally:
        connection.channel().queue_delete(queue_name)
        connection.close()
