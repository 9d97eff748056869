"""`consumer events`: the task events of a real consumer's workers, as lines or JSON objects,
filtered by kind or outcome; until --count events or Ctrl-C (exit 0 both ways); a broker it
cannot use is one line and a non-zero exit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from common.events import HEARTBEAT_INTERVAL
from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope
from tests.conftest import url_with
from tests.helpers import finish, run, start, stop, wait_for_output

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


@pytest.fixture
def consumer(broker_url: str, queue_name: str) -> Iterator[subprocess.Popen[str]]:
    """A real consumer on the test's queue: two workers, one attempt per task."""
    process = start(
        "consumer", "--url", broker_url, "--queue", queue_name, "--workers", "2",
        "--max-attempts", "1",
    )  # fmt: skip
    wait_for_output(process, "consuming")
    yield process
    code, _, err = stop(process)
    assert code == 0, err


def _listening(queue: str, *args: str) -> subprocess.Popen[str]:
    """`consumer events` on `queue`, once it listens and the workers know it: they learn it
    from their next heartbeat, at most HEARTBEAT_INTERVAL later (it says so on stderr)."""
    process = start("consumer", "events", "--queue", queue, *args)
    wait_for_output(process, f"task events are seen from at most {HEARTBEAT_INTERVAL:g} s")
    time.sleep(HEARTBEAT_INTERVAL + 1.0)
    return process


def _publish(url: str, queue: str, tasks: list[TaskEnvelope]) -> None:
    with RabbitBackend(url, queue) as producer:
        producer.publish(tasks)


def test_count_json_shows_the_succeeded_event_of_each_task(
    broker_url: str, queue_name: str, consumer: subprocess.Popen[str]
) -> None:
    events = _listening(queue_name, "--count", "5", "--json", "--outcome", "succeeded")
    tasks = [TaskEnvelope(kind="echo", payload={"n": n}) for n in range(5)]
    _publish(broker_url, queue_name, tasks)
    code, out, err = finish(events, timeout=30)  # it exits by itself after 5 events
    assert code == 0, err
    shown = [json.loads(line) for line in out.splitlines()]
    assert sorted(e["task_id"] for e in shown) == sorted(t.id for t in tasks)
    assert {e["kind"] for e in shown} == {"task-succeeded"}
    assert {e["queue"] for e in shown} == {queue_name}
    assert {e["ppid"] for e in shown} == {consumer.pid}
    assert all(e["duration"] >= 0 for e in shown)


def test_a_filtered_stream_shows_only_that_kind(
    broker_url: str, queue_name: str, consumer: subprocess.Popen[str]
) -> None:
    events = _listening(queue_name, "--json", "--kind", "dead-lettered", "--count", "1")
    echoes = [TaskEnvelope(kind="echo", payload={"n": n}) for n in range(3)]
    failing = TaskEnvelope(kind="fail", payload={"message": "no luck"})
    _publish(broker_url, queue_name, [*echoes, failing])  # 3 x 3 events, then 4 more
    code, out, err = finish(events, timeout=30)
    assert code == 0, err
    (shown,) = [json.loads(line) for line in out.splitlines()]
    assert shown["kind"] == "task-dead-lettered" and shown["task_id"] == failing.id
    assert shown["reason"] == "max-attempts" and "no luck" in shown["error"]


def test_lines_say_when_who_what_and_which_task(
    broker_url: str, queue_name: str, consumer: subprocess.Popen[str]
) -> None:
    events = _listening(queue_name, "--kind", "task-started", "--kind", "failed")
    failing = TaskEnvelope(kind="fail", payload={"message": "no luck"})
    _publish(broker_url, queue_name, [failing])
    try:
        assert _wait_for_lines(events, 2, timeout=20)
    finally:
        code, out, err = stop(events, signal.SIGINT)  # Ctrl-C: how it is stopped
    assert code == 0, err
    assert "Traceback" not in err
    started, failed = out.splitlines()
    for line in (started, failed):
        when, who, _kind, task_id, task_kind, *_detail = line.split()
        assert time.strptime(when.partition(".")[0], "%H:%M:%S")
        assert who.partition(":")[2].isdigit() and task_id == failing.id and task_kind == "fail"
    assert started.split()[2] == "task-started"
    assert failed.split()[2] == "task-failed"
    assert "attempt 1" in failed and "error: RuntimeError: no luck" in failed


def _wait_for_lines(process: subprocess.Popen[str], count: int, timeout: float) -> bool:
    from tests.helpers import output_of, wait_until

    return wait_until(lambda: len(output_of(process)[0].splitlines()) >= count, timeout)


def test_ctrl_c_with_nothing_heard_exits_0(queue_name: str, broker_url: str) -> None:
    events = start("consumer", "events", "--queue", queue_name)
    wait_for_output(events, "task events are seen from")
    code, out, err = stop(events, signal.SIGINT, timeout=10)
    assert code == 0, err
    assert "Traceback" not in err and out == ""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--url", "amqp://guest:guest@127.0.0.1:{closed}/%2F"], 1, "cannot reach broker"),
        (["--url", "{wrong_password}"], 1, "refused the credentials"),
        (["--url", "amqp://guest:guest@127.0.0.1:notaport/"], 2, "malformed AMQP URL"),
        (["--kind", "task-exploded"], 2, "unknown event kind 'task-exploded'"),
        (["--outcome", "lost"], 2, "Invalid value for '--outcome'"),
        (["--count", "0"], 2, "Invalid value for '--count'"),
    ],
)
def test_bad_input_is_one_line(broker_url: str, args: list[str], code: int, fragment: str) -> None:
    wrong = url_with(broker_url, password="not-the-password")
    args = [a.format(closed=_closed_port(), wrong_password=wrong) for a in args]
    completed = run("consumer", "events", *args, timeout=30)
    err = completed.stderr.strip()
    assert completed.returncode == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("consumer: error: ") and fragment in err, err
    assert "not-the-password" not in err
