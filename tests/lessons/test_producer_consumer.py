"""生产者消费者模型: sentinel vs JoinableQueue shutdown; prefetch and fairness."""

from __future__ import annotations

import signal

import pytest

from lessons import producer_consumer as pc

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
