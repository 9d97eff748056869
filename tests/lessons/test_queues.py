"""队列 / IPC: FIFO vs LIFO, the Queue caveats, and FIFO order with one consumer vs several."""

from __future__ import annotations

import os

import pytest

from lessons import queues


@pytest.mark.timeout(60)
def test_queue_and_stack_and_caveats() -> None:
    c = queues.caveats(tries=50)
    assert c.queue_order == [1, 2, 3, 4, 5]
    assert c.stack_order == [5, 4, 3, 2, 1]
    assert c.full_after_puts is True
    assert c.put_when_full.startswith("raised queue.Full")
    assert 0 <= c.empty_right_after_put <= c.tries
    assert c.child_pid != os.getpid()
    assert c.child_said == f"hello from pid {c.child_pid}"


def _check(one: queues.OrderRun, several: queues.OrderRun) -> None:
    assert one.workers_used == 1
    assert one.out_of_order == 0  # one producer, one consumer: FIFO
    assert several.workers_used >= 2
    assert several.each_worker_in_order
    assert several.out_of_order > 0  # results overtake each other


@pytest.mark.timeout(60)
def test_order_local() -> None:
    _check(queues.order_run("local", 1, tasks=100), queues.order_run("local", 3, tasks=100))


@pytest.mark.timeout(90)
def test_order_rabbitmq(broker_url: str) -> None:
    one = queues.order_run("rabbitmq", 1, tasks=100, url=broker_url)
    several = queues.order_run("rabbitmq", 3, tasks=100, url=broker_url)
    _check(one, several)
