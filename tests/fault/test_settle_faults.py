"""Settling a delivery while its connection breaks, on a broker node of this test's own.

A memory alarm holds the broker's confirm of a retry copy or a dead letter; the broker then
closes the connection. The delivery's settlement must neither raise nor be half done: no copy
is stored, and the original comes back to be tried again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from common.backend import Delivery
from common.rabbitmq import RabbitBackend
from common.schemas import DeadLetter, TaskEnvelope, decode_task, utcnow
from tests.helpers import receive_within
from tests.rabbit_node import RabbitNode

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

QUEUE = "settle-test"


def _retry(backend: RabbitBackend, delivery: Delivery, task: TaskEnvelope) -> None:
    backend.retry_later(delivery, task.model_copy(update={"attempt": 2}), delay=0.2)


def _dead_letter(backend: RabbitBackend, delivery: Delivery, task: TaskEnvelope) -> None:
    letter = DeadLetter(
        reason="max-attempts",
        error="RuntimeError: x",
        queue=QUEUE,
        attempts=1,
        task_id=task.id,
        dead_lettered_at=utcnow(),
        body=delivery.body,
    )
    backend.dead_letter(delivery, letter)


@pytest.fixture
def alarmed(own_broker: RabbitNode) -> Iterator[RabbitNode]:
    """The node; whatever alarm a test raised is cleared afterwards."""
    yield own_broker
    own_broker.ctl("set_vm_memory_high_watermark", "0.4")


@pytest.mark.parametrize("settle", [_retry, _dead_letter], ids=["retry_later", "dead_letter"])
def test_a_settlement_cut_by_a_lost_connection_stores_nothing_and_the_task_comes_back(
    alarmed: RabbitNode, settle: Callable[[RabbitBackend, Delivery, TaskEnvelope], None]
) -> None:
    task = TaskEnvelope(kind="fail")
    with RabbitBackend(alarmed.url, QUEUE, wait_for_broker=None) as worker:
        worker.publish([task])
        delivery = receive_within(worker, timeout=30)
        alarmed.ctl("set_vm_memory_high_watermark", "0")  # publishes wait, unconfirmed
        outcome: list[BaseException | None] = []

        def settling() -> None:
            try:
                settle(worker, delivery, task)
                outcome.append(None)
            except BaseException as exc:  # what the worker would have died of
                outcome.append(exc)

        thread = threading.Thread(target=settling)
        thread.start()
        time.sleep(1.0)  # the copy is out, its confirm held back
        assert thread.is_alive(), outcome
        alarmed.ctl("close_all_connections", "test: connection cut mid-settlement")
        thread.join(40)
        assert not thread.is_alive()
        assert outcome == [None]  # no ConnectionLost for a delivery that is not settled
        alarmed.ctl("set_vm_memory_high_watermark", "0.4")

        again = receive_within(worker, timeout=30)  # the original, after a reconnect
        assert (decode_task(again.body).id, decode_task(again.body).attempt) == (task.id, 1)
        assert again.redelivered
        worker.ack(again)
        assert worker.receive(1.0) is None  # and no retry copy came back beside it
        assert worker.pending() == 0
        assert worker.depths()["waiting"] == 0  # nor waits in the delay levels (its node's own)
        assert worker.dead_letters() == []
