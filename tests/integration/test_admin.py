"""The queue's admin commands against the shared broker: `consumer purge`, and `consumer dlq
list --reason`, `replay --id/--reason` and `purge`. Each test has queues of its own; what a
test checks afterwards it reads with plain pika, acking, so the check itself never gives a
letter back (a quorum queue would put it back in an order of its own)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from common.defaults import QueueType
from common.rabbitmq import RabbitBackend
from common.rabbitmq.topology import QueueNames, dead_letter_message
from common.schemas import DeadLetter, TaskEnvelope, decode_task, encode, utcnow
from tests.helpers import ROOT, program, receive_within, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

#: The reasons of the letters `_letters` puts in a DLQ, in turn.
REASONS = ("max-attempts", "bad-payload", "max-attempts")


def _consumer(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`consumer ARGS` with a pipe on stdin (never a terminal), as a script runs it."""
    return subprocess.run(
        program("consumer", *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture
def channel(broker_url: str) -> Iterator[Any]:
    """A plain pika channel with publisher confirms, as any client of the broker has."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        connection.close()


def _queues(url: str, queue: str, queue_type: QueueType = QueueType.quorum) -> None:
    """Create the work queue and its DLQ as the programs do."""
    RabbitBackend(url, queue, queue_type=queue_type).close()


def _letters(channel: Any, queue: str, count: int) -> list[str]:
    """Put `count` dead letters in `queue`'s DLQ, reasons taken in turn from `REASONS`, each
    a sound task; their task ids, oldest first."""
    dlq, ids = QueueNames(queue).dlq, []
    for index in range(count):
        task = TaskEnvelope(kind="echo", payload={"n": index}, attempt=3)
        letter = DeadLetter(
            reason=REASONS[index % len(REASONS)],
            error=f"error {index}",
            queue=queue,
            attempts=3,
            task_id=task.id,
            dead_lettered_at=utcnow(),
            body=encode(task),
        )
        message = dead_letter_message(dlq, letter)
        channel.basic_publish("", dlq, message.body, message.properties)
        ids.append(task.id)
    return ids


def _tasks(channel: Any, queue: str, count: int) -> None:
    for _ in range(count):
        channel.basic_publish("", queue, encode(TaskEnvelope(kind="echo")))


def _retries(url: str, queue: str, count: int, delay: float = 4.0) -> None:
    """`count` retries waiting out `delay` in the delay levels, as a worker sends them (the
    levels are every queue's: a delay this short leaves nothing there after the test)."""
    with RabbitBackend(url, queue) as backend:
        backend.publish([TaskEnvelope(kind="echo", attempt=2) for _ in range(count)], delay=delay)


def _count(channel: Any, name: str) -> int:
    return int(channel.queue_declare(name, passive=True).method.message_count)


def _taken(channel: Any, name: str) -> list[Any]:
    """Every message in `name`, taken (acked) in order: (properties, body) pairs."""
    taken = []
    while True:
        method, properties, body = channel.basic_get(name, auto_ack=True)
        if method is None:
            return taken
        taken.append((properties, body))


def _task_ids_left(channel: Any, queue: str) -> list[str]:
    return [props.headers["x-task-id"] for props, _ in _taken(channel, QueueNames(queue).dlq)]


# -- dlq list --reason -----------------------------------------------------------------------
def test_dlq_list_by_reason_shows_only_that_reason_and_keeps_every_letter(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    ids = _letters(channel, queue_name, 9)  # 6 max-attempts, 3 bad-payload
    where = ("--queue", queue_name, "--url", broker_url)
    listed = _consumer("dlq", "list", "--reason", "bad-payload", "--json", *where)
    assert listed.returncode == 0, listed.stderr
    shown = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {letter["reason"] for letter in shown} == {"bad-payload"}
    assert sorted(letter["task_id"] for letter in shown) == sorted(ids[1::3])
    table = _consumer("dlq", "list", "--reason", "max-attempts", "--limit", "4", *where)
    assert table.returncode == 0, table.stderr
    assert table.stdout.count("  max-attempts  ") == 4  # the reason column
    assert "4 of 9 dead letters shown of reason 'max-attempts'" in table.stdout
    none = _consumer("dlq", "list", "--reason", "no-such-reason", *where)
    assert "0 of 9 dead letters shown" in none.stdout
    # Listing removes none: the broker takes back what a listing read as its connection
    # closes, a quorum queue a moment later.
    assert _wait_for_count(channel, QueueNames(queue_name).dlq, 9)
    assert sorted(_task_ids_left(channel, queue_name)) == sorted(ids)


def test_iter_dead_letters_filters_by_reason_up_to_its_limit(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    ids = _letters(channel, queue_name, 6)
    with RabbitBackend(broker_url, queue_name) as backend:
        letters = list(backend.iter_dead_letters(limit=3, reason="max-attempts"))
        assert [letter.reason for letter in letters] == ["max-attempts"] * 3
        assert {letter.task_id for letter in letters} <= set(ids[0::3] + ids[2::3])
        # Every letter back once the listing's connection is closed (see above).
        assert wait_until(lambda: backend.dead_letter_count() == 6, timeout=10)


# -- dlq replay --id / --reason ----------------------------------------------------------------
@pytest.mark.parametrize("queue_type", [QueueType.quorum, QueueType.classic])
def test_replay_by_id_moves_exactly_that_letter_and_leaves_the_others_in_order(
    broker_url: str, queue_name: str, channel: Any, queue_type: QueueType
) -> None:
    _queues(broker_url, queue_name, queue_type)
    ids = _letters(channel, queue_name, 250)  # more than one chunk (`dlq.REPLAY_CHUNK`)
    chosen = ids[137]
    replayed = _consumer(
        "dlq", "replay", "--id", chosen, "--queue", queue_name, "--url", broker_url,
        "--queue-type", queue_type.value,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == f"replayed 1 dead letter to {queue_name!r}\n"
    work = _taken(channel, queue_name)
    assert len(work) == 1
    task = decode_task(work[0][1])
    assert (task.id, task.attempt, task.payload) == (chosen, 1, {"n": 137})  # a first attempt
    assert _task_ids_left(channel, queue_name) == ids[:137] + ids[138:]


@pytest.mark.parametrize("queue_type", [QueueType.quorum, QueueType.classic])
def test_replay_of_every_letter_moves_each_once_and_leaves_none_behind(
    broker_url: str, queue_name: str, channel: Any, queue_type: QueueType
) -> None:
    """The last letters' acks go out just before the link closes: a quorum queue drops acks
    of ``basic.get`` deliveries that it holds back then, and they stayed in the DLQ."""
    _queues(broker_url, queue_name, queue_type)
    ids = _letters(channel, queue_name, 250)
    with RabbitBackend(broker_url, queue_name, queue_type=queue_type) as backend:
        assert backend.replay_dead_letters() == 250
    assert [decode_task(body).id for _, body in _taken(channel, queue_name)] == ids
    assert _count(channel, QueueNames(queue_name).dlq) == 0


def test_replay_of_a_task_id_not_in_the_dlq_says_so_and_changes_nothing(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    ids = _letters(channel, queue_name, 5)
    replayed = _consumer(
        "dlq", "replay", "--id", "nope", "--queue", queue_name, "--url", broker_url
    )
    assert replayed.returncode == 1
    assert (
        replayed.stderr == f"consumer: error: no dead letter of task 'nope' in '{queue_name}.dlq'\n"
    )
    assert replayed.stdout == ""
    assert _count(channel, queue_name) == 0
    assert _task_ids_left(channel, queue_name) == ids


def test_letters_a_filtered_replay_leaves_keep_their_bodies_and_headers_however_odd(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    """Each letter left is a copy (see `dlq.replay_matching`): nothing of it may change."""
    _queues(broker_url, queue_name)
    dlq = QueueNames(queue_name).dlq
    odd: list[dict[str, Any]] = [
        {"x-reason": b"\xff\xfe not utf-8", "x-task-id": b"\x80\x81", "x-attempts": "abc"},
        {"x-reason": "nested", "x-attempts": {"a": [1, 2]}, "x-queue": 7, "big": 10**18},
        {"x-first-death-reason": "delivery_limit", "x-first-death-queue": queue_name},
        {"x-reason": "picked", "x-task-id": "t-picked"},
    ]
    for index, headers in enumerate(odd):
        properties = pika.BasicProperties(headers=headers, message_id=f"m{index}")
        channel.basic_publish("", dlq, f"body {index}".encode(), properties)
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.replay_dead_letters(reason="picked") == 1
    left = _taken(channel, dlq)
    assert [body for _, body in left] == [b"body 0", b"body 1", b"body 2"]
    # A quorum queue adds its delivery count to whatever it delivers, the test's `get` too.
    stored = [{k: v for k, v in p.headers.items() if k != "x-delivery-count"} for p, _ in left]
    assert stored == odd[:3]
    assert [props.message_id for props, _ in left] == ["m0", "m1", "m2"]
    assert [body for _, body in _taken(channel, queue_name)] == [b"body 3"]


def test_replay_by_reason_moves_those_letters_in_order_and_leaves_the_others(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    ids = _letters(channel, queue_name, 12)  # 4 of them bad-payload
    with RabbitBackend(broker_url, queue_name) as backend:  # the library, as a dashboard
        assert backend.replay_dead_letters(reason="bad-payload") == 4
    assert [decode_task(body).id for _, body in _taken(channel, queue_name)] == ids[1::3]
    assert _task_ids_left(channel, queue_name) == [i for n, i in enumerate(ids) if n % 3 != 1]


def test_replay_by_id_and_reason_needs_both_to_match(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    ids = _letters(channel, queue_name, 3)
    args = ("dlq", "replay", "--id", ids[1], "--queue", queue_name, "--url", broker_url)
    refused = _consumer(*args, "--reason", "max-attempts")  # ids[1] is a bad-payload
    assert refused.returncode == 1, refused.stdout
    assert (
        "no dead letter of task" in refused.stderr and "of reason 'max-attempts'" in refused.stderr
    )
    done = _consumer(*args, "--reason", "bad-payload")
    assert done.returncode == 0, done.stderr
    assert _task_ids_left(channel, queue_name) == [ids[0], ids[2]]


# -- purge -----------------------------------------------------------------------------------
def test_purge_without_yes_on_a_pipe_refuses_and_removes_nothing(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    _tasks(channel, queue_name, 5)
    _letters(channel, queue_name, 2)
    for command in (["purge"], ["dlq", "purge"]):
        refused = _consumer(*command, "--queue", queue_name, "--url", broker_url, stdin="y\n")
        assert refused.returncode == 2
        assert refused.stderr == (
            f"consumer: error: {' '.join(command)} needs --yes: stdin is not a terminal to "
            "ask on; nothing removed\n"
        )
    assert _count(channel, queue_name) == 5
    assert _count(channel, QueueNames(queue_name).dlq) == 2


def test_purge_yes_empties_the_work_queue_but_not_the_dlq_nor_unacked_nor_delayed_tasks(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    _tasks(channel, queue_name, 8)
    _retries(broker_url, queue_name, 3)
    _letters(channel, queue_name, 2)
    with RabbitBackend(broker_url, queue_name, prefetch=1) as worker:
        held = receive_within(worker)  # in a worker's hands: not the purge's to remove
        purged = _consumer("purge", "--yes", "--queue", queue_name, "--url", broker_url)
        assert purged.returncode == 0, purged.stderr
        assert purged.stdout.splitlines() == [
            f"removed 7 messages from {queue_name!r}",
            "removed 7 messages in all; messages delivered to workers and not acked yet are "
            "not purged (they come back if not acked), nor are delayed tasks (they wait in "
            "the delay levels every queue shares)",
        ]
        assert _count(channel, queue_name) == 0
        assert decode_task(held.body).kind == "echo"
    # The worker's connection closed without acking: the task it held is back; and the
    # retries come when they are due.
    assert _wait_for_count(channel, queue_name, 1 + 3)
    assert _count(channel, QueueNames(queue_name).dlq) == 2


def _wait_for_count(channel: Any, name: str, count: int, timeout: float = 10) -> bool:
    return wait_until(lambda: _count(channel, name) == count, timeout)


def test_purge_queues_reports_every_queue_it_empties(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    _tasks(channel, queue_name, 4)
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.queued_messages()[queue_name] == 4
        purged = backend.purge_queues()
        assert list(purged) == [queue_name]  # the delay levels are every queue's
        assert purged[queue_name] == 4 and sum(purged.values()) == 4
        assert backend.purge_queues()[queue_name] == 0


def _on_a_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run `consumer ARGS` with a terminal on stdin and stdout, answer its question with
    `answer`; its exit code and all it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        program("consumer", *args), stdin=follower, stdout=follower, stderr=follower, cwd=ROOT
    )
    os.close(follower)
    written, answered = b"", False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the program is gone and its terminal closed
                    break
                if not chunk:
                    break
                written += chunk
            if not answered and b"[y/N]" in written:
                os.write(leader, answer.encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        return process.wait(timeout=30), written.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


def test_purge_on_a_terminal_asks_with_the_counts_and_does_what_the_answer_says(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    _tasks(channel, queue_name, 6)
    _retries(broker_url, queue_name, 1, delay=8.0)
    _letters(channel, queue_name, 3)
    args = ["purge", "--queue", queue_name, "--url", broker_url]
    code, said = _on_a_terminal(args, "n")
    question = re.search(
        rf"Remove 6 tasks from {re.escape(repr(queue_name))} \(the 3 dead letters in "
        rf"'{re.escape(queue_name)}\.dlq' stay, and so do the (\d+) delayed tasks? of all "
        r"queues in taskshuttle\.delay\.quorum\.\*\)\? \[y/N\]",
        said,
    )
    assert question is not None, said
    assert int(question[1]) >= 1  # ours, and any other queue's: the levels are shared
    assert code == 1 and "nothing removed" in said
    assert _count(channel, queue_name) == 6
    code, said = _on_a_terminal(args, "y")
    assert code == 0, said
    assert "removed 6 messages in all" in said
    assert _count(channel, queue_name) == 0
    assert _count(channel, QueueNames(queue_name).dlq) == 3
    assert _wait_for_count(channel, queue_name, 1, timeout=15)  # the retry, when due


# -- dlq purge -------------------------------------------------------------------------------
def test_dlq_purge_removes_every_letter_and_says_how_many(
    broker_url: str, queue_name: str, channel: Any
) -> None:
    _queues(broker_url, queue_name)
    _tasks(channel, queue_name, 2)
    _letters(channel, queue_name, 7)
    where = ("--queue", queue_name, "--url", broker_url)
    code, said = _on_a_terminal(["dlq", "purge", *where], "n")
    assert f"Remove 7 dead letters from '{queue_name}.dlq', for good? [y/N]" in said
    assert code == 1
    assert _count(channel, QueueNames(queue_name).dlq) == 7
    purged = _consumer("dlq", "purge", "--yes", *where)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout == f"removed 7 dead letters from '{queue_name}.dlq'\n"
    assert _count(channel, QueueNames(queue_name).dlq) == 0
    assert _count(channel, queue_name) == 2  # the tasks stay
    with RabbitBackend(broker_url, queue_name) as backend:
        assert backend.purge_dead_letters() == 0
