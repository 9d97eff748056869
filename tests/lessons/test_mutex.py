"""互斥锁: the safe ticket office never oversells, run after run; the unsafe one does."""

from __future__ import annotations

import pytest

from lessons import mutex
from lessons.mutex import ticket_run

SMALL = {"tickets": 10, "buyers": 40, "consumers": 4}


@pytest.mark.timeout(90)
def test_local_lock_never_oversells() -> None:
    for _ in range(3):
        run = ticket_run("local", "mp-lock", delay=0.003, **SMALL)
        assert (run.oversold, run.sold, run.left, run.lost) == (0, 10, 0, 0)
        assert run.processes_used >= 2


@pytest.mark.timeout(60)
def test_local_without_lock_oversells() -> None:
    run = ticket_run("local", "none", delay=0.02, **SMALL)
    assert run.lost == 0
    assert run.processes_used >= 2
    assert run.oversold > 0
    assert run.sold == run.tickets + run.oversold


@pytest.mark.timeout(120)
def test_rabbitmq_file_lock_never_oversells_200_buyers_4_processes(broker_url: str) -> None:
    sizes = {"tickets": 50, "buyers": 200, "consumers": 4, "delay": 0.002}
    run = ticket_run("rabbitmq", "flock", replay=20, url=broker_url, **sizes)
    assert (run.oversold, run.sold, run.left, run.lost) == (0, 50, 0, 0)
    assert run.processes_used == 4
    assert run.replayed == 20
    assert run.replay_sold == 0  # a purchase seen before takes no second ticket
    for _ in range(2):
        again = ticket_run("rabbitmq", "flock", delay=0.003, url=broker_url, **SMALL)
        assert (again.oversold, again.sold, again.lost) == (0, 10, 0)


@pytest.mark.timeout(90)
def test_rabbitmq_single_active_consumer_never_oversells(broker_url: str) -> None:
    run = ticket_run("rabbitmq", "single-active", delay=0.003, url=broker_url, **SMALL)
    assert (run.oversold, run.sold, run.lost) == (0, 10, 0)
    assert run.processes_used == 1  # one consumer buys, the others stand by


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["none", "lock-per-consumer"])
def test_rabbitmq_unsafe_methods_oversell(broker_url: str, method: str) -> None:
    run = ticket_run("rabbitmq", method, delay=0.02, url=broker_url, **SMALL)
    assert run.lost == 0
    assert run.processes_used >= 2
    assert run.oversold > 0


@pytest.mark.timeout(60)
def test_the_courses_ticket_office_with_its_lock_sells_one_ticket_once() -> None:
    for _ in range(2):
        run = mutex.course_office(True)
        assert run.errors == ""
        assert (run.tickets, run.bought, run.refused, run.left, run.oversold) == (1, 1, 8, 0, 0)


@pytest.mark.timeout(60)
def test_the_courses_ticket_office_without_its_lock_oversells() -> None:
    # Nine buyers read the count within milliseconds and write 0.1-0.3 s later.
    run = mutex.course_office(False)
    assert run.bought + run.refused == 9
    assert run.oversold > 0
    assert run.left == 0


@pytest.mark.timeout(90)
def test_one_run_shows_safe_and_unsafe_side_by_side() -> None:
    both = mutex.run("local", tickets=10, buyers=40, consumers=4, delay=0.02, course=False)
    assert [r.method for r in both.runs] == ["mp-lock", "none"]
    safe, unsafe = both.runs
    assert safe.oversold == 0 and unsafe.oversold > 0
    assert safe.seconds > unsafe.seconds  # what the lock cost
    only_unsafe = mutex.run("local", False, tickets=5, buyers=10, consumers=2, course=False)
    assert [r.method for r in only_unsafe.runs] == ["none"]  # --no-lock
