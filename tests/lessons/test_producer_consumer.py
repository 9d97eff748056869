"""生产者消费者模型: sentinel vs JoinableQueue shutdown; prefetch and fairness; the seed's
model with the client, each item read by its handle, on both backends."""

from __future__ import annotations

import hashlib
import inspect
import signal
from urllib.parse import quote, unquote, urlsplit

import pytest

from lessons import producer_consumer as pc
from lessons.i18n import Lang, set_language
from tests.conftest import management_json

SIZES = {"slow": 0.6, "fast": 30, "fast_seconds": 0.01}


@pytest.mark.timeout(60)
def test_sentinels_end_every_consumer_from_inside() -> None:
    run = pc.with_sentinels(items=20, consumers=3)
    assert sum(run.eaten) == 20
    assert run.alive_after == 0
    assert run.exitcodes == [0, 0, 0]


@pytest.mark.timeout(60)
def test_joinable_queue_knows_the_work_is_done_but_consumers_wait_on() -> None:
    run = pc.with_joinable_queue(items=20, consumers=3)
    assert run.eaten == [20]  # join() returned only after every task_done()
    assert run.alive_after == 3
    assert run.exitcodes == [-signal.SIGTERM] * 3


@pytest.mark.timeout(60)
def test_local_fairness_run_finishes_everything() -> None:
    run = pc.fairness("local", None, **SIZES)
    assert sum(run.per_worker) == 31


@pytest.mark.timeout(120)
def test_prefetch_100_holds_tasks_behind_the_slow_one(broker_url: str) -> None:
    one = pc.fairness("rabbitmq", 1, url=broker_url, **SIZES)
    hundred = pc.fairness("rabbitmq", 100, url=broker_url, **SIZES)
    assert sum(one.per_worker) == sum(hundred.per_worker) == 31
    assert hundred.waiting_early == 0  # all handed out (unacked) at once
    assert hundred.held_behind_slow >= 5  # dealt to the slow task's worker up front
    assert one.held_behind_slow < hundred.held_behind_slow


# -- part 3: the seed's model with the client -------------------------------------------------


def _digest(rounds: int) -> str:
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def _check_read_by_handle(run: pc.ClientRun) -> None:
    items = {item.name: item for item in run.items}
    # Read in the order sent, each from its own handle: the result it gave is its task's.
    assert [item.name for item in run.items] == list(pc.ITEM_NAMES)
    assert len({item.task_id for item in run.items}) == len(pc.ITEM_NAMES)
    assert all(item.result_task_id == item.task_id for item in run.items)
    assert [item.kind for item in run.items] == ["cpu", "sleep", "echo", "echo", "fail"]
    # Each value is its own item's, whatever order the results came back in.
    assert items["make"].value == _digest(200_000)
    assert items["eat"].value == 0.3
    assert items["note"].value == {"note": "two buns left"}
    assert items["later"].value == {"note": "one more, later"}
    for name in ("make", "eat", "note", "later"):
        assert items[name].raised is None, items[name]
    burnt = items["burnt"]
    assert burnt.raised == "TaskFailed" and burnt.value is None
    assert burnt.error_type == "RuntimeError"
    assert burnt.error is not None and "the bun burnt" in burnt.error
    # The countdown: not before its time, which is at least its countdown after the first send.
    later = items["later"]
    assert later.not_before is not None and later.not_before >= 1.0
    assert later.started is not None and later.started >= later.not_before
    assert all(i.not_before is None for i in run.items if i.name != "later")
    # Who ran each one, and the order they came back in (1 to 5, each once).
    assert all(i.worker_pid and i.worker_name for i in run.items)
    assert len({i.worker_pid for i in run.items}) <= run.workers
    assert sorted(i.done_as for i in run.items if i.done_as) == [1, 2, 3, 4, 5]
    assert items["later"].done_as == 5  # the others were done long before its second


@pytest.mark.timeout(60)
def test_the_client_part_reads_every_item_by_its_handle_on_local() -> None:
    run = pc.with_client("local")
    assert run.client == "Client.local(workers=2)" and run.queue is None
    _check_read_by_handle(run)


@pytest.mark.timeout(120)
def test_the_client_part_reads_every_item_by_its_handle_on_rabbitmq(broker_url: str) -> None:
    run = pc.with_client("rabbitmq", url=broker_url)
    assert run.client == "Client(url=..., queue=...)"
    _check_read_by_handle(run)
    assert run.queue is not None and run.queue.startswith("lesson.producer-consumer.")
    assert _queues_named(broker_url, run.queue) == []  # its queues were deleted after


def _queues_named(url: str, prefix: str) -> list[str]:
    """The broker's queues whose name starts with `prefix` (the management API)."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    names = [q["name"] for q in management_json(f"/api/queues/{quote(vhost, safe='')}")]
    return [name for name in names if name.startswith(prefix)]


def test_the_client_code_shown_is_the_code_the_part_runs() -> None:
    shown = [
        line.split("#")[0].strip() for line in pc.CLIENT_CODE.splitlines() if "client.send(" in line
    ]
    source = inspect.getsource(pc.send_items)
    assert len(shown) == len(pc.ITEM_NAMES)
    for line in shown:
        assert line in source, line
    assert source.count("client.send(") == len(shown)
    assert "handle.result(timeout=30)" in pc.CLIENT_CODE and pc.RESULT_TIMEOUT == 30


KINDS = ("cpu", "sleep", "echo", "echo", "fail")


def _measured_items() -> list[pc.ByHandle]:
    """What a run of the part could give, made up: for drawing it without workers."""
    items = [
        pc.ByHandle(
            name,
            kind,
            task_id=f"id{n}",
            result_task_id=f"id{n}",
            worker_pid=100 + n % 2,
            worker_name=f"worker-{n % 2}",
            not_before=None,
            started=0.1 * n,
            finished=0.1 * n + 0.05,
            done_as=n + 1,
            value="v" * 40,
        )
        for n, (name, kind) in enumerate(zip(pc.ITEM_NAMES, KINDS, strict=True))
    ]
    items[3].not_before = 1.0
    burnt = items[4]
    burnt.value, burnt.raised, burnt.error_type = None, "TaskFailed", "RuntimeError"
    burnt.error = "max-attempts: RuntimeError: the bun burnt"
    return items


@pytest.mark.parametrize("lang", [Lang.en, Lang.zh])
def test_the_client_part_renders_in_both_languages(
    lang: Lang, capsys: pytest.CaptureFixture[str]
) -> None:
    run = pc.ClientRun("local", "Client.local(workers=2)", 2, _measured_items())
    set_language(lang)
    try:
        pc.render(pc.ProducerConsumer("local", client=run))
    finally:
        set_language(Lang.en)
    out = capsys.readouterr().out
    assert "TaskFailed:" in out and "RuntimeError:" in out
    assert "Client.local(workers=2)" in out  # the one line that differs
    assert 'client.send("fail"' in out  # the code the part runs
    assert ("做包子" if lang is Lang.zh else "make a bun") in out


def test_a_failed_item_shows_the_exception_and_the_handlers_error() -> None:
    items = _measured_items()
    assert pc.outcome_text(items[4]) == "TaskFailed: RuntimeError: the bun burnt"
    assert pc.outcome_text(items[0]) == "v" * 29 + "…"  # a long value, cut
    late = pc.ByHandle("eat", "sleep", "id", None, None, None, None, None, None, None)
    late.raised, late.error = "TimeoutError", "no result for task id (sleep) within 30.0 s"
    assert pc.outcome_text(late).startswith("TimeoutError: no result for task id")
