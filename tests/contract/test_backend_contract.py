"""One suite, both backends: the rules in `common/backend.py`, checked on each.

The `make_backend` fixture builds only the backend the test asked for, so the local half
runs with no broker at all. Local tests play the worker in this same process: the broker
is the producer, and the end of slot 0 the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from common.backend import Delivery, ProducerBackend, WorkerBackend
from common.local import LocalBroker
from common.schemas import (
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    decode_task,
    utcnow,
)
from tests.conftest import require_broker
from tests.helpers import receive_within, result_for, wait_until

pytestmark = pytest.mark.timeout(60)

MakeBackend = Callable[..., ProducerBackend]


def _producer_and_worker(make_backend: MakeBackend) -> tuple[ProducerBackend, WorkerBackend]:
    """Two views of one queue: a producer that wants results, and a worker."""
    first = make_backend()
    if isinstance(first, LocalBroker):
        return first, first.slots.worker_end(0)  # this process plays the worker of slot 0
    return make_backend(want_results=True), _worker_side(first)


def _worker_side(backend: ProducerBackend) -> WorkerBackend:
    assert isinstance(backend, WorkerBackend)  # RabbitMQ: one object has both sides
    return backend


def _result_for(task: TaskEnvelope, delivery: Delivery) -> TaskResult:
    return result_for(task, redelivered=delivery.redelivered, value=task.payload)


def _results(backend: ProducerBackend, n: int, timeout: float = 10.0) -> list[TaskResult]:
    got: list[TaskResult] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        result = backend.receive_result(0.2)
        if result is not None:
            got.append(result)
    return got


def test_published_tasks_arrive_intact_in_order(make_backend: MakeBackend) -> None:
    producer, worker = _producer_and_worker(make_backend)
    tasks = [TaskEnvelope(kind="echo", payload={"seq": i}) for i in range(20)]
    producer.publish(tasks)
    received = [decode_task(receive_within(worker).body) for _ in tasks]
    assert received == tasks  # one producer, one consumer: FIFO
    assert worker.receive(0.3) is None


def test_receive_returns_none_when_idle(make_backend: MakeBackend) -> None:
    _producer, worker = _producer_and_worker(make_backend)
    started = time.monotonic()
    assert worker.receive(0.3) is None
    assert time.monotonic() - started < 5


def test_ack_sends_the_result_back_to_the_producer(make_backend: MakeBackend) -> None:
    producer, worker = _producer_and_worker(make_backend)
    tasks = [TaskEnvelope(kind="echo", payload={"seq": i}) for i in range(5)]
    producer.publish(tasks)
    for _ in tasks:
        delivery = receive_within(worker)
        worker.ack(delivery, _result_for(decode_task(delivery.body), delivery))
    assert worker.receive(0.1) is None  # a worker that waits has sent what it finished
    results = _results(producer, len(tasks))
    assert sorted(r.task_id for r in results) == sorted(t.id for t in tasks)
    assert {r.value["seq"] for r in results} == set(range(5))


def test_requeued_delivery_comes_back_marked_redelivered(make_backend: MakeBackend) -> None:
    producer, worker = _producer_and_worker(make_backend)
    task = TaskEnvelope(kind="echo")
    producer.publish([task])
    first = receive_within(worker)
    assert not first.redelivered
    worker.requeue(first)
    if isinstance(producer, LocalBroker):
        producer.drain_events()  # the parent is the broker here: let it act on the requeue
    again = receive_within(worker)
    assert again.redelivered
    assert decode_task(again.body) == task
    worker.ack(again)


def test_unacked_delivery_of_a_dead_worker_is_handed_out_again(
    make_backend: MakeBackend, backend_name: str
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    task = TaskEnvelope(kind="echo")
    producer.publish([task])
    held = receive_within(worker)
    assert decode_task(held.body) == task
    survivor: WorkerBackend
    if isinstance(producer, LocalBroker):
        assert producer.slots.on_death(0)  # what the supervisor does when slot 0's worker dies
        survivor = producer.slots.worker_end(0)  # and the end its replacement takes
    else:
        worker.close()  # the connection goes away with the task unacked
        survivor = _worker_side(make_backend())
    again = receive_within(survivor)
    assert again.redelivered
    assert decode_task(again.body).id == task.id


def test_retry_later_comes_back_after_its_delay_as_the_next_attempt(
    make_backend: MakeBackend,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    task = TaskEnvelope(kind="fail")
    producer.publish([task])
    delivery = receive_within(worker)
    sent_at = time.monotonic()
    worker.retry_later(delivery, task.model_copy(update={"attempt": 2}), delay=0.5)
    if isinstance(producer, LocalBroker):
        producer.receive_result(0.8)  # the parent releases due retries while it listens
    again = decode_task(receive_within(worker, timeout=10).body)
    assert time.monotonic() - sent_at >= 0.45
    assert again.id == task.id
    assert again.attempt == 2
    assert worker.receive(0.3) is None  # the first attempt was settled, not redelivered


def _receive_released(producer: ProducerBackend, worker: WorkerBackend, timeout: float) -> Delivery:
    """The next delivery; the local parent releases due tasks while it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if isinstance(producer, LocalBroker):
            producer.receive_result(0.05)
        delivery = worker.receive(0.1)
        if delivery is not None:
            return delivery
    raise AssertionError(f"nothing delivered within {timeout}s")


def test_a_producers_delayed_publish_is_held_back_for_its_delay(
    make_backend: MakeBackend,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    later, now = TaskEnvelope(kind="echo"), TaskEnvelope(kind="echo")
    sent_at = time.monotonic()
    producer.publish([later], delay=0.8)
    producer.publish([now])
    first = _receive_released(producer, worker, 10)
    assert decode_task(first.body).id == now.id  # the later one waits in the broker
    worker.ack(first)
    second = _receive_released(producer, worker, 10)
    assert decode_task(second.body).id == later.id
    assert time.monotonic() - sent_at >= 0.75
    worker.ack(second, _result_for(later, second))
    [result] = _results(producer, 1)
    assert result.task_id == later.id  # its result still finds its producer


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), -1.0])
def test_a_delay_that_is_no_time_is_refused_and_nothing_sent(
    make_backend: MakeBackend, delay: float
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    with pytest.raises(ValueError, match="a delay is a finite number of seconds"):
        producer.publish([TaskEnvelope(kind="echo")], delay=delay)
    assert worker.receive(0.3) is None


def test_a_workers_publish_that_settles_its_delivery_keeps_the_reply_address(
    make_backend: MakeBackend,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    first = TaskEnvelope(kind="echo")
    producer.publish([first])
    delivery = receive_within(worker)
    follow_up = TaskEnvelope(kind="echo", payload={"after": first.id})
    worker.publish([follow_up], settles=delivery)
    again = _receive_released(producer, worker, 10)
    assert decode_task(again.body).id == follow_up.id
    assert not again.redelivered  # the first was settled, not handed out again
    worker.ack(again, _result_for(follow_up, again))
    [result] = _results(producer, 1)
    assert result.task_id == follow_up.id  # the result goes where the first one's would have
    assert worker.receive(0.3) is None


def test_dead_letter_keeps_the_body_and_the_reason(make_backend: MakeBackend) -> None:
    producer, worker = _producer_and_worker(make_backend)
    producer.publish_raw([b"\xff not json at all"])
    delivery = receive_within(worker)
    letter = DeadLetter(
        reason="not-json",
        error="body is not valid JSON",
        queue="q",
        attempts=0,
        task_id=None,
        dead_lettered_at=utcnow(),
        body=delivery.body,
    )
    worker.dead_letter(delivery, letter)
    if isinstance(producer, LocalBroker):
        producer.drain_events()
    letters = producer.dead_letters()
    assert [(d.reason, d.body) for d in letters] == [("not-json", b"\xff not json at all")]
    assert worker.receive(0.3) is None  # settled: not handed out again
    assert producer.dead_letters() == letters  # listing does not remove them


def test_replayed_dead_letters_return_as_first_attempts(make_backend: MakeBackend) -> None:
    producer, worker = _producer_and_worker(make_backend)
    task = TaskEnvelope(kind="fail", attempt=3)
    producer.publish([task])
    delivery = receive_within(worker)
    letter = DeadLetter(
        reason="max-attempts",
        error="RuntimeError: x",
        queue="q",
        attempts=3,
        task_id=task.id,
        dead_lettered_at=utcnow(),
        body=delivery.body,
    )
    worker.dead_letter(delivery, letter)
    if isinstance(producer, LocalBroker):
        producer.drain_events()
    assert producer.replay_dead_letters() == 1
    replayed = decode_task(receive_within(worker).body)
    assert (replayed.id, replayed.attempt) == (task.id, 1)
    assert producer.dead_letters() == []


def test_pending_counts_waiting_tasks(make_backend: MakeBackend) -> None:
    producer, _worker = _producer_and_worker(make_backend)
    producer.publish([TaskEnvelope(kind="echo") for _ in range(7)])
    deadline = time.monotonic() + 5
    while producer.pending() != 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert producer.pending() == 7


def test_pending_counts_a_waiting_retry_where_the_backend_can_tell_whose_it_is(
    make_backend: MakeBackend,
) -> None:
    """The local broker counts the retry while it waits; on RabbitMQ it waits in delay levels
    every queue of the broker shares, so no queue's `pending` counts it (a burst worker waits
    for its own retries instead: `consumer.worker.Worker`). Once due, it is this queue's
    again on every backend: counted, then handed out."""
    producer, worker = _producer_and_worker(make_backend)
    task = TaskEnvelope(kind="fail")
    producer.publish([task])
    delivery = receive_within(worker)
    worker.retry_later(delivery, task.model_copy(update={"attempt": 2}), delay=1.5)
    local = isinstance(producer, LocalBroker)
    if local:
        producer.drain_events()
    waiting = 1 if local else 0
    assert producer.pending() == waiting  # not in the queue yet, nor done
    assert worker.pending() == waiting  # what a burst worker asks before it leaves
    if not local:  # due: in the queue, or already in this consumer's hands
        assert wait_until(lambda: worker.pending() == 1, 10)
    again = _receive_released(producer, worker, 10)
    assert decode_task(again.body).attempt == 2
    worker.ack(again)
    assert worker.pending() == 0


def _arrivals(
    producer: ProducerBackend, worker: WorkerBackend, delays: list[float]
) -> list[tuple[TaskEnvelope, float, float, float]]:
    """Publish one task for each delay, in that order; take them as they come back: (task,
    its delay, seconds from just before its publish to its arrival, and from just after)."""
    sent: dict[str, tuple[TaskEnvelope, float, float, float]] = {}
    for delay in delays:
        task = TaskEnvelope(kind="echo", payload={"delay": delay})
        before = time.monotonic()
        producer.publish([task], delay=delay)
        sent[task.id] = (task, delay, before, time.monotonic())
    came = []
    for _ in delays:
        delivery = _receive_released(producer, worker, max(delays) + 5)
        arrived = time.monotonic()
        task, delay, before, after = sent[decode_task(delivery.body).id]
        came.append((task, delay, arrived - before, arrived - after))
        worker.ack(delivery)
    assert worker.receive(0.3) is None
    return came


def test_a_shorter_delay_sent_after_a_longer_one_comes_back_first(
    make_backend: MakeBackend,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    came = _arrivals(producer, worker, [4.0, 3.0])
    assert [delay for _, delay, _, _ in came] == [3.0, 4.0]  # not held behind the longer one
    for _task, delay, since_before, since_after in came:
        assert since_before >= delay  # never early
        assert since_after <= delay + 1.0  # and not much later


def test_delays_that_are_no_whole_quarter_seconds_arrive_in_order_never_early(
    make_backend: MakeBackend,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    came = _arrivals(producer, worker, [1.3, 2.6])
    assert [delay for _, delay, _, _ in came] == [1.3, 2.6]
    for _task, delay, since_before, since_after in came:
        assert since_before >= delay
        assert since_after <= delay + 1.0


# -- revocations ---------------------------------------------------------------------------


def _started(worker: WorkerBackend) -> WorkerBackend:
    """The worker, registered as a consumer (a RabbitMQ backend reads its revocations from
    then on, as a worker does before it says it is ready); a local end has nothing to start."""
    start_consuming = getattr(worker, "start_consuming", None)
    if start_consuming is not None:
        start_consuming()
    return worker


def _fresh_worker(producer: ProducerBackend, make_backend: MakeBackend) -> WorkerBackend:
    """A worker that starts now: on local, the replacement of slot 0's worker after a death
    (a fresh end, pipes and all); on RabbitMQ, a new backend, consuming."""
    if isinstance(producer, LocalBroker):
        producer.slots.on_death(0)
        return producer.slots.worker_end(0)
    return _started(_worker_side(make_backend()))


def test_a_revoked_task_is_refused_by_a_running_worker_and_an_unrevoked_one_is_not(
    make_backend: MakeBackend,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    _started(worker)
    revoked, kept = TaskEnvelope(kind="echo"), TaskEnvelope(kind="echo")
    producer.publish([revoked, kept])
    producer.revoke([revoked.id], keep_for=60)
    # local: at once; RabbitMQ: within milliseconds after revoke returned
    assert wait_until(lambda: worker.is_revoked(revoked.id), 5, interval=0.01)
    assert not worker.is_revoked(kept.id)
    ids = {decode_task(receive_within(worker).body).id for _ in range(2)}
    assert ids == {revoked.id, kept.id}  # revoking takes nothing off the queue: the worker
    assert worker.is_revoked(revoked.id)  # that takes it refuses it
    assert not worker.is_revoked(kept.id)


def test_a_revocation_sent_before_a_worker_started_is_seen_by_it_before_its_first_task(
    make_backend: MakeBackend,
) -> None:
    producer, _worker = _producer_and_worker(make_backend)
    queued, other = TaskEnvelope(kind="echo"), TaskEnvelope(kind="echo")
    producer.publish([queued])
    producer.revoke([queued.id, "not-a-queued-task"], keep_for=60)
    later = _fresh_worker(producer, make_backend)
    delivery = receive_within(later)
    assert decode_task(delivery.body).id == queued.id
    assert later.is_revoked(queued.id)  # no wait: it knew before it took the task
    assert later.is_revoked("not-a-queued-task")
    assert not later.is_revoked(other.id)


def test_a_revocation_is_for_its_own_queue_only(make_backend: MakeBackend) -> None:
    """Another queue's revocation never reaches this queue's workers (locally, another queue
    is another broker: its own process tree)."""
    producer, worker = _producer_and_worker(make_backend)
    _started(worker)
    elsewhere: ProducerBackend
    if isinstance(producer, LocalBroker):
        elsewhere = LocalBroker(queue_name=f"{producer.queue_name}.other")
    else:
        from common.rabbitmq import RabbitBackend

        assert isinstance(producer, RabbitBackend)
        elsewhere = RabbitBackend(require_broker(), f"{producer.queue_name}.other")
    try:
        task = TaskEnvelope(kind="echo")
        elsewhere.revoke([task.id], keep_for=60)
        marker = TaskEnvelope(kind="echo")
        producer.revoke([marker.id], keep_for=60)  # read after the other queue's revocation
        assert wait_until(lambda: worker.is_revoked(marker.id), 5, interval=0.01)
        assert not worker.is_revoked(task.id)
    finally:
        delete = getattr(elsewhere, "delete_queues", None)
        if delete is not None:
            delete()
        elsewhere.close()


def test_expired_revocations_are_forgotten(make_backend: MakeBackend) -> None:
    producer, worker = _producer_and_worker(make_backend)
    _started(worker)
    brief, kept = TaskEnvelope(kind="echo"), TaskEnvelope(kind="echo")
    producer.revoke([brief.id], keep_for=1.0)
    revoked_at = time.monotonic()
    producer.revoke([kept.id], keep_for=60)
    assert wait_until(lambda: worker.is_revoked(kept.id), 5, interval=0.01)
    if time.monotonic() - revoked_at < 0.9:  # a slow run may see it expire before it checks
        assert worker.is_revoked(brief.id)
    assert wait_until(lambda: not worker.is_revoked(brief.id), 5, interval=0.05)
    assert worker.is_revoked(kept.id)
    tiny = TaskEnvelope(kind="echo")
    producer.revoke([tiny.id], keep_for=0.01)
    time.sleep(0.05)
    later = _fresh_worker(producer, make_backend)  # one started after they expired
    assert not later.is_revoked(tiny.id)
    assert not later.is_revoked(brief.id)
    assert later.is_revoked(kept.id)


@pytest.mark.parametrize(
    ("task_ids", "keep_for", "error", "match"),
    [
        (["a"], 0.0, ValueError, "over 0"),
        (["a"], float("nan"), ValueError, "a finite number of seconds"),
        (["a"], float("inf"), ValueError, "a finite number of seconds"),
        (["a"], 11 * 365.25 * 86_400, ValueError, "at most ten years"),
        (["x" * 65], 60.0, ValueError, "not a task id"),
        ([""], 60.0, ValueError, "not a task id"),
        ("abc", 60.0, TypeError, "not one id"),
    ],
)
def test_a_revocation_that_cannot_be_kept_is_refused_and_nothing_sent(
    make_backend: MakeBackend,
    task_ids: list[str],
    keep_for: float,
    error: type[Exception],
    match: str,
) -> None:
    producer, worker = _producer_and_worker(make_backend)
    _started(worker)
    with pytest.raises(error, match=match):
        producer.revoke(task_ids, keep_for=keep_for)
    producer.revoke([], keep_for=60)  # nothing to revoke: nothing done
    marker = TaskEnvelope(kind="echo")
    producer.revoke([marker.id], keep_for=60)
    assert wait_until(lambda: worker.is_revoked(marker.id), 5, interval=0.01)
    assert not any(worker.is_revoked(i) for i in ("a", "b", "c", "x" * 65))
