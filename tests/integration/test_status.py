"""`consumer status`: its figures are the broker's, from the management API or from AMQP
alone (and then it says what it does not know); its workers are the ones running; a broker
it cannot use is one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from common.defaults import QueueType
from common.rabbitmq import RabbitBackend, topology
from common.rabbitmq.topology import DelayLevels, QueueNames
from common.schemas import TaskEnvelope
from tests.conftest import note_figure, rabbitmqctl, url_with
from tests.helpers import output_of, run, start, stop, wait_for_output, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

#: Messages put in each queue of the family, and how many the test's own consumer holds;
#: IN_WAIT tasks are delayed (for `DELAYED_FOR` seconds: longer than any look of a test).
IN_WORK, HELD, IN_WAIT, IN_DLQ = 10, 4, 2, 3
DELAYED_FOR = 40.0
#: The row of the delay levels of the family's type (quorum): every queue's delayed tasks.
DELAYED_ROW = f"{DelayLevels(QueueType.quorum).prefix}.*"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HeldFamily:
    """A queue family with messages in its work queue and its DLQ, tasks of its own in the
    delay levels, and a consumer of the test's own holding `HELD` of the work queue's
    messages unacked."""

    def __init__(self, url: str, queue: str) -> None:
        self.names = QueueNames(queue)
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = self.connection.channel()
        arguments = topology.work_queue_arguments(self.names, QueueType.quorum)
        channel.queue_declare(queue, durable=True, arguments=arguments)
        channel.queue_declare(self.names.dlq, durable=True)
        for name, count in ((queue, IN_WORK), (self.names.dlq, IN_DLQ)):
            for n in range(count):
                channel.basic_publish("", name, json.dumps({"n": n}).encode())
        with RabbitBackend(url, queue) as producer:  # due after the test: dropped then
            delayed = [TaskEnvelope(kind="echo") for _ in range(IN_WAIT)]
            producer.publish(delayed, delay=DELAYED_FOR)
        channel.basic_qos(prefetch_count=HELD)
        self.held: list[int] = []
        channel.basic_consume(queue, lambda _ch, method, _p, _b: self.held.append(method))
        deadline = time.monotonic() + 10
        while len(self.held) < HELD and time.monotonic() < deadline:
            self.connection.process_data_events(0.1)
        assert len(self.held) == HELD

    def keep_alive(self) -> None:
        self.connection.process_data_events(0)

    def close(self) -> None:
        self.connection.close()  # the held messages go back to the work queue


@pytest.fixture
def family(broker_url: str, queue_name: str) -> Iterator[HeldFamily]:
    held = HeldFamily(broker_url, queue_name)
    yield held
    held.close()


def _status(queue: str, *args: str, timeout: float = 30) -> dict[str, Any]:
    completed = run("consumer", "status", "--queue", queue, "--json", *args, timeout=timeout)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


FIGURES = ("name", "messages_ready", "messages_unacknowledged", "consumers")


def _rabbitmqctl_figures(names: list[str]) -> dict[str, tuple[int, int, int]]:
    """(ready, unacked, consumers) of each queue named, as the broker's node says now."""
    listed = subprocess.run(
        rabbitmqctl("-q", "list_queues", *FIGURES),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    figures = {}
    for line in listed.splitlines():
        cells = line.split("\t")
        if len(cells) == 4 and cells[0] in names:
            figures[cells[0]] = (int(cells[1]), int(cells[2]), int(cells[3]))
    return figures


def _status_figures(found: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    queues = [q for q in found["queues"] if q["exists"]]
    return {q["name"]: (q["ready"], q["unacked"], q["consumers"]) for q in queues}


def _since(began: float) -> str:
    return f"{time.monotonic() - began:.1f} s"


def _rabbitmqctl_usable() -> None:
    """The test broker's own `rabbitmqctl` can be run (the host's needs root)."""
    command = rabbitmqctl()
    if shutil.which(command[0]) is None or (command[0] == "rabbitmqctl" and os.geteuid() != 0):
        pytest.skip(f"needs {command[0]} (as root) for the broker's own figures")


def test_management_figures_are_the_brokers(family: HeldFamily, queue_name: str) -> None:
    _rabbitmqctl_usable()
    names = [queue_name, family.names.dlq]
    expected = {queue_name: (IN_WORK - HELD, HELD, 1), family.names.dlq: (IN_DLQ, 0, 0)}
    # The management API reports statistics the broker emits every few seconds
    # (collect_statistics_interval, 5 s by default), so a queue created a moment ago has no
    # figures yet, or older ones: ask again until they are the node's own, for a bounded time.
    seen: list[Any] = []

    def same() -> bool:
        family.keep_alive()
        found = _status(queue_name, "--listen", "0")
        broker = _rabbitmqctl_figures(names)
        seen[:] = [found, broker]
        own = {name: figures for name, figures in _status_figures(found).items() if name in names}
        return found["source"] == "management" and own == broker and _delayed(found) >= IN_WAIT

    began = time.monotonic()
    assert wait_until(same, timeout=30, interval=1), seen
    note_figure(f"consumer status: management figures = rabbitmqctl's after {_since(began)}")
    found, broker = seen
    assert broker == expected  # the test's own consumer does hold messages unacked
    # between them the delay levels' totals: every queue's delayed tasks, ours among them
    assert [q["name"] for q in found["queues"]] == [queue_name, DELAYED_ROW, family.names.dlq]
    assert found["queues"][1]["role"] == "delayed"
    assert found["management_error"] is None and found["unknown"] == []
    work = found["queues"][0]
    assert work["role"] == "work" and work["type"] == "quorum"
    assert [c["prefetch"] for c in work["consumer_details"]] == [HELD]
    assert work["consumer_details"][0]["node"] == work["node"]  # one node: the queue's
    assert work["publish_rate"] is not None and work["deliver_rate"] is not None


def _delayed(found: dict[str, Any]) -> int:
    """The delayed tasks the status counts (of every queue of its type), or -1 if none."""
    rows = [q for q in found["queues"] if q["role"] == "delayed"]
    return rows[0]["ready"] if rows and rows[0]["ready"] is not None else -1


def test_without_management_api_the_ready_counts_come_from_amqp(
    family: HeldFamily, queue_name: str
) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    found = _status(queue_name, "--listen", "0", "--management-url", closed)
    assert found["source"] == "amqp"
    assert closed in found["management_error"]
    assert set(found["unknown"]) >= {"unacked", "publish_rate", "deliver_rate"}
    figures = _status_figures(found)
    assert _delayed(found) >= IN_WAIT  # ours, and any other queue's
    assert figures.pop(DELAYED_ROW) == (_delayed(found), None, 0)
    assert figures == {
        queue_name: (IN_WORK - HELD, None, 1),  # unacked: unknown, not 0
        family.names.dlq: (IN_DLQ, None, 0),
    }
    assert all(q["publish_rate"] is None and q["deliver_rate"] is None for q in found["queues"])

    screen = run(
        "consumer",
        *("status", "--queue", queue_name, "--listen", "0", "--management-url", closed),
        env={"COLUMNS": "200"},  # the queue's long name on one line
    )
    assert screen.returncode == 0, screen.stderr
    assert "figures from AMQP alone" in screen.stdout
    work_row = next(line for line in screen.stdout.splitlines() if line.startswith(queue_name))
    cells = [c.strip() for c in re.split(r"[│┃]", work_row)]
    assert cells[1:4] == [str(IN_WORK - HELD), "?", "1"], work_row  # ready, unacked, consumers
    assert f"delayed, all queues ({DELAYED_ROW})" in screen.stdout


def test_a_queue_that_does_not_exist_is_said_so_and_not_created(queue_name: str) -> None:
    found = _status(queue_name, "--listen", "0")
    own = [q for q in found["queues"] if q["role"] != "delayed"]  # the levels: every queue's
    assert [(q["name"], q["exists"], q["ready"]) for q in own] == [
        (queue_name, False, None),
        (f"{queue_name}.dlq", False, None),
    ]
    amqp = _status(queue_name, "--listen", "0", "--management-url", "http://127.0.0.1:1")
    own = [q for q in amqp["queues"] if q["role"] != "delayed"]
    assert [q["exists"] for q in own] == [False, False]  # passive declares only


@pytest.mark.timeout(120)
def test_the_running_workers_are_listed_with_their_pids(broker_url: str, queue_name: str) -> None:
    consumer = start("consumer", "--workers", "2", "--queue", queue_name)
    try:
        wait_for_output(consumer, "consuming")
        stderr = output_of(consumer)[1]
        pids = {int(p) for p in re.findall(r"\d+", stderr.rpartition("(pids ")[2].split(")")[0])}
        assert len(pids) == 2, stderr
        found = _status(queue_name)
        assert {w["pid"] for w in found["workers"]} == pids
        assert {w["ppid"] for w in found["workers"]} == {consumer.pid}
        assert all(w["last_heard"] < 3 for w in found["workers"])
        screen = run("consumer", "status", "--queue", queue_name)
        assert screen.returncode == 0, screen.stderr
        assert all(str(pid) in screen.stdout for pid in pids), screen.stdout
    finally:
        assert stop(consumer)[0] == 0


def test_no_workers_heard_is_said(queue_name: str) -> None:
    screen = run("consumer", "status", "--queue", queue_name)
    assert screen.returncode == 0, screen.stderr
    assert "no workers heard" in screen.stdout
    assert _status(queue_name)["workers"] == []


def test_watch_refreshes_until_ctrl_c_then_exits_0(family: HeldFamily, queue_name: str) -> None:
    watching = start(
        "consumer", "status", "--queue", queue_name, "--watch", "--json", "--interval", "0.5"
    )
    try:
        refreshes = lambda: output_of(watching)[0].count("\n")  # noqa: E731
        assert wait_until(lambda: refreshes() >= 3, timeout=20), refreshes()
    finally:
        code, out, err = stop(watching, signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
    documents = [json.loads(line) for line in out.splitlines()]
    assert len({d["at"] for d in documents}) == len(documents)  # each one a new look
    assert all(d["queue"] == queue_name for d in documents)


def test_the_watched_screen_ends_at_ctrl_c_with_exit_0(queue_name: str) -> None:
    watching = start("consumer", "status", "--queue", queue_name, "--watch", "--interval", "0.5")
    time.sleep(4)  # the first look (2.5 s of listening), then refreshes
    code, out, err = stop(watching, signal.SIGINT)
    assert code == 0, err
    assert "Traceback" not in err
    assert f"queue {queue_name!r}" in out and "no workers heard" in out  # its last screen


@pytest.mark.parametrize("listen", [[], ["--listen", "0"]])
@pytest.mark.parametrize(
    ("broker", "fragment"),
    [
        ("closed-port", "cannot reach broker"),
        ("wrong-password", "refused the credentials"),
        ("bad-url", "malformed AMQP URL"),
    ],
)
def test_a_broker_it_cannot_use_is_one_line(
    broker_url: str, broker: str, fragment: str, listen: list[str]
) -> None:
    url = {
        "closed-port": f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F",
        "wrong-password": url_with(broker_url, password="not-the-password"),
        "bad-url": "amqp://guest:guest@127.0.0.1:notaport/",
    }[broker]
    completed = run("consumer", "status", "--url", url, *listen, timeout=30)
    assert completed.returncode != 0
    err = completed.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("consumer: error: ") and fragment in err, err
    assert "not-the-password" not in err
