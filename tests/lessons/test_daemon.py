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


@pytest.mark.timeout(60)
def test_the_courses_daemon_steward_never_says_he_is_dying() -> None:
    # The course's own program: p.daemon = True, the steward sleeps 1 s, the emperor ends.
    for _ in range(2):
        run = daemon.course_run(True, seconds=1.0)
        assert run.returncode == 0, run.errors
        assert run.printed(daemon.EMPEROR) == 1
        assert run.printed(daemon.DYING) == 0  # terminated with the emperor: never 正在死亡
        assert run.exit_seconds < 1.0  # the emperor did not wait for his steward


@pytest.mark.timeout(60)
def test_without_daemon_the_steward_lives_out_his_sleep() -> None:
    run = daemon.course_run(False, seconds=1.0)
    assert run.returncode == 0, run.errors
    assert run.printed(daemon.ALIVE) == 1
    assert run.printed(daemon.DYING) == 1
    assert run.exit_seconds >= 1.0  # Python joined the child before the emperor could exit
    lines = [line for _, line in run.lines]
    assert lines.index("egon 总管正在活着") < lines.index("egon 总管正在死亡")


@pytest.mark.timeout(30)
def test_setting_daemon_after_start_raises_as_the_course_says() -> None:
    assert daemon.set_after_start() == "AssertionError: process has already started"


@pytest.mark.timeout(90)
def test_rabbitmq_puts_back_the_tasks_a_dead_consumers_workers_held(broker_url: str) -> None:
    dies = daemon.consumer_dies(broker_url, count=8, seconds=0.4)
    assert dies.done_before >= 2
    assert dies.workers_running_after == 0  # daemon workers: gone with their supervisor
    assert dies.back_in_queue == dies.sent - dies.done_before  # the tasks in hand too
    assert dies.done_in_all == dies.sent  # none lost
