"""守护进程: daemon workers die with their parent; others keep it alive until they finish;
on RabbitMQ the work outlives the producer."""

from __future__ import annotations

import pytest

from lessons import daemon


@pytest.mark.timeout(60)
def test_daemon_workers_die_with_the_producer() -> None:
    run = daemon.run_emperor(True, count=20, seconds=0.1)
    assert run.done_when_gone < run.sent  # the rest died with the parent and its queue
    assert run.left_running == 0


@pytest.mark.timeout(60)
def test_other_workers_keep_the_producer_alive_until_done() -> None:
    run = daemon.run_emperor(False, count=20, seconds=0.1)
    assert run.running_after_main >= 1  # main() returned, the workers went on
    assert run.done_when_gone == run.sent
    assert run.left_running == 0


@pytest.mark.timeout(90)
def test_rabbitmq_keeps_the_work_after_the_producer_exits(broker_url: str) -> None:
    keeps = daemon.broker_keeps(broker_url, count=10)
    assert keeps.producer_exit == 0
    assert keeps.waiting_after_producer == 10
    assert keeps.done_later == 10
