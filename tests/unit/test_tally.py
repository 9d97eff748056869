"""The producer's `Tally` against the `Ledger` it stands in for: the same fates for any
sequence of sends and results, in memory that does not grow with the run."""

from __future__ import annotations

import io
import json
import tracemalloc
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.schemas import TaskEnvelope, TaskResult, TaskStatus
from producer.ledger import Fate, Ledger, Tally, TaskNumbering

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _task(numbering: TaskNumbering, number: int) -> TaskEnvelope:
    return TaskEnvelope(id=numbering.task_id(number), kind="echo", created_at=NOW)


def _result(
    task_id: str, status: TaskStatus = TaskStatus.DONE, redelivered: bool = False
) -> TaskResult:
    return TaskResult(
        task_id=task_id,
        kind="echo",
        status=status,
        attempt=1,
        redelivered=redelivered,
        worker_pid=10,
        worker_ppid=1,
        worker_host="here",
        worker_name="worker-0",
        started_at=NOW,
        finished_at=NOW,
        created_at=NOW,
    )


def test_numbered_ids_look_like_random_ones_and_give_their_number_back() -> None:
    numbering = TaskNumbering()
    task_id = numbering.task_id(123_456)
    assert len(task_id) == 32 and int(task_id, 16) >= 0
    assert numbering.number(task_id) == 123_456
    assert numbering.number(TaskNumbering().task_id(5)) is None  # another job's
    assert numbering.number("not-a-task-of-this-job") is None


# One event: send task k, or a result for task k (status, redelivered).
_events = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 7)),
        st.tuples(st.just("result"), st.integers(0, 9), st.sampled_from(TaskStatus), st.booleans()),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(events=_events, foreign=st.booleans())
def test_the_tally_counts_every_fate_as_the_ledger_does(events: list[tuple], foreign: bool) -> None:
    """Results before their send, duplicates, failures then successes, results for tasks
    never sent, ids of another numbering: the counts agree with the full ledger's."""
    numbering = TaskNumbering()
    ids = [
        TaskNumbering().task_id(k) if foreign and k % 2 else numbering.task_id(k) for k in range(10)
    ]
    ledger, tally = Ledger(), Tally(numbering)
    sent: set[int] = set()
    for event in events:
        if event[0] == "send":
            if event[1] in sent:
                continue  # a producer sends each id once
            sent.add(event[1])
            task = TaskEnvelope(id=ids[event[1]], kind="echo", created_at=NOW)
            ledger.record_sent([task])
            tally.record_sent([task])
        else:
            _, k, status, redelivered = event
            ledger.record_result(_result(ids[k], status, redelivered))
            tally.record_result(_result(ids[k], status, redelivered))
    assert tally.fates() == ledger.fates()
    assert tally.outstanding == ledger.outstanding
    summary, expected = tally.summary("local"), ledger.summary("local")
    for key in ("sent", "done", "failed", "lost", "workers", "ledger"):
        assert summary[key] == expected[key]


def test_latency_percentiles_come_from_the_histogram() -> None:
    numbering = TaskNumbering()
    tally = Tally(numbering)
    tasks = [_task(numbering, k) for k in range(100)]
    tally.record_sent(tasks)
    for task in tasks:
        tally.record_result(_result(task.id))
    latency = tally.summary("local")["latency_ms"]
    assert latency.keys() == {"p50", "p95", "p99", "max"}
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]


def test_a_long_run_costs_about_a_byte_per_task() -> None:
    """What a million-task run keeps: each task's fate in one byte, its send time only
    while it is in flight; measured here on 100,000 tasks sent and answered in batches."""
    numbering = TaskNumbering()
    tally = Tally(numbering)
    tracemalloc.start()
    try:
        for first in range(0, 100_000, 1000):
            batch = [_task(numbering, k) for k in range(first, first + 1000)]
            tally.record_sent(batch)
            for task in batch:
                tally.record_result(_result(task.id))
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tally.fates()[Fate.DONE_ONCE] == 100_000
    assert tally.outstanding == 0
    assert kept < 1_000_000  # the Ledger keeps about 1.8 KB per task: 180 MB here


def test_record_writes_each_result_and_then_each_task_left_without_one() -> None:
    numbering = TaskNumbering()
    out = io.StringIO()
    tally = Tally(numbering, record=out)
    tasks = [_task(numbering, k) for k in range(3)]
    tally.record_sent(tasks)
    tally.record_result(_result(tasks[0].id))
    tally.record_result(_result(tasks[0].id, redelivered=True))  # a duplicate
    tally.record_result(_result(tasks[1].id, TaskStatus.FAILED))
    tally.record_lost()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["task_id"], line["fate"]) for line in lines] == [
        (tasks[0].id, "done once"),
        (tasks[0].id, "done twice"),
        (tasks[1].id, "dead-lettered"),
        (tasks[2].id, "lost"),
    ]
    assert lines[0]["latency_ms"] is not None and lines[1]["latency_ms"] is None
