"""The dashboard's picture of a queue, from real `TaskEvent`s, on a clock of the test's own."""

from __future__ import annotations

from typing import Any

import pytest

from common.events import EventKind, TaskEvent
from consumer.dashboard.state import FORGET_AFTER, SILENT_AFTER, Board, Depths


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def event(kind: EventKind, pid: int = 10, **fields: Any) -> TaskEvent:
    return TaskEvent(
        kind=kind, at=0.0, queue="q", host="h", pid=pid, ppid=1, worker=f"w{pid}", **fields
    )


def run_task(
    board: Board, task_id: str, outcome: EventKind, duration: float, pid: int = 10, **extra: Any
) -> None:
    """A task's events, as a worker (`pid`) sends them."""
    board.add(event(EventKind.RECEIVED, pid, task_id=task_id, task_kind="echo", attempt=1))
    board.add(event(EventKind.STARTED, pid, task_id=task_id, task_kind="echo"))
    board.add(event(outcome, pid, task_id=task_id, task_kind="echo", duration=duration, **extra))


@pytest.mark.timeout(10)
def test_tasks_are_counted_by_fate_with_their_durations() -> None:
    clock = Clock()
    board = Board(clock=clock)
    for n in range(9):
        run_task(board, f"ok{n}", EventKind.SUCCEEDED, duration=0.010 * (n + 1))
    run_task(board, "bad", EventKind.FAILED, duration=1.0, error="boom")
    board.add(event(EventKind.DEAD_LETTERED, task_id="bad", reason="max-attempts", error="boom"))
    clock.now += 2
    board.tick(Depths(5, 1, 2, 1), "test")

    picture = board.snapshot()
    assert picture["totals"] == {
        "received": 10,
        "succeeded": 9,
        "failed": 1,
        "retried": 0,
        "dead": 1,
    }
    assert picture["latency_ms"] == {"p50": 50.0, "p95": 1000.0, "max": 1000.0, "count": 10}
    assert picture["throughput"] == 4.5  # 9 successes in the 2 s the board has existed
    bad = picture["recent"][0]  # newest first
    assert (bad["task_id"], bad["fate"], bad["reason"], bad["error"]) == (
        "bad",
        "task-dead-lettered",
        "max-attempts",
        "boom",
    )
    # One chart row: the depths, then 9 successes and 1 dead letter over 2 s.
    time_, ready, unacked, waiting, dead, done, died, p50, slowest = picture["series"]
    assert (ready, unacked, waiting, dead) == ([5], [1], [2], [1])
    assert (time_, done, died, p50, slowest) == ([1002.0], [4.5], [0.5], [50.0], [1000.0])


@pytest.mark.timeout(10)
def test_a_row_without_depths_leaves_gaps_and_rates_start_again() -> None:
    clock = Clock()
    board = Board(clock=clock)
    run_task(board, "a", EventKind.SUCCEEDED, duration=0.1)
    clock.now += 1
    board.tick(None, "none", "broker down")
    clock.now += 1
    board.tick(Depths(0, None, 0, 0), "AMQP")
    picture = board.snapshot()
    assert picture["series"][1] == [None, 0]  # ready: a gap, then the reading
    assert picture["series"][2] == [None, None]  # unacked: AMQP cannot tell
    assert picture["series"][5] == [1.0, 0.0]  # the success counted once, in its second
    assert picture["depth_source"] == "AMQP" and picture["depth_error"] is None


@pytest.mark.timeout(10)
def test_workers_come_from_heartbeats_go_silent_and_are_forgotten() -> None:
    clock = Clock()
    board = Board(clock=clock)
    board.add(event(EventKind.ONLINE, pid=7, succeeded=0, failed=0, retried=0))
    board.add(
        event(
            EventKind.HEARTBEAT,
            pid=7,
            succeeded=4,
            failed=1,
            retried=2,
            in_hand="t9",
            in_hand_kind="sleep",
            in_hand_since=999.0,
        )
    )
    (worker,) = board.snapshot()["workers"]
    assert (worker["status"], worker["succeeded"], worker["failed"], worker["in_hand"]) == (
        "online",
        4,
        1,
        "t9",
    )
    # Between heartbeats, each outcome counts at once; the next heartbeat sets the totals.
    run_task(board, "t10", EventKind.SUCCEEDED, duration=0.1, pid=7)
    assert board.snapshot()["workers"][0]["succeeded"] == 5
    board.add(event(EventKind.HEARTBEAT, pid=7, succeeded=5, failed=1, retried=2))
    assert board.snapshot()["workers"][0]["succeeded"] == 5
    clock.now += SILENT_AFTER + 0.1
    assert board.snapshot()["workers"][0]["status"] == "silent"
    board.add(event(EventKind.OFFLINE, pid=7, succeeded=6, failed=1, retried=2))
    (worker,) = board.snapshot()["workers"]
    assert (worker["status"], worker["succeeded"], worker["in_hand"]) == ("offline", 6, None)
    clock.now += FORGET_AFTER + 1
    assert board.snapshot()["workers"] == []


@pytest.mark.timeout(10)
def test_what_is_kept_is_bounded() -> None:
    clock = Clock()
    board = Board(clock=clock, history=3, recent=4)
    for n in range(10):
        run_task(board, f"t{n}", EventKind.SUCCEEDED, duration=0.001)
        board.tick(Depths(n, 0, 0, 0), "test")
    picture = board.snapshot()
    assert [task["task_id"] for task in picture["recent"]] == ["t9", "t8", "t7", "t6"]
    assert picture["series"][1] == [7, 8, 9]
    assert picture["totals"]["succeeded"] == 10
