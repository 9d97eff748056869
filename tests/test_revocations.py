"""Revocations: the store both backends keep them in, a worker refusing a revoked task (and
not stopping a running one) on each backend, the local broker's worker processes, and the
RabbitMQ revocation stream's reader (malformed messages, a lost connection, a queue that is no
stream). The contract's rules are in tests/contract/; these are what lies around them."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest

from common.backend import Delivery, ProducerBackend, WorkerBackend
from common.clock import ManualClock
from common.errors import QueueMismatch
from common.local import LocalBroker
from common.revoked import RevokedIds
from common.schemas import Revocation, TaskEnvelope, TaskResult, TaskStatus, encode, utcnow
from common.settings import load_settings, redact_url
from consumer.handlers import Registry
from consumer.spec import WorkerSpec
from consumer.supervisor import WorkerPool
from consumer.worker import Worker, WorkerOptions
from tests.conftest import management_json, require_broker
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


# -- the store -----------------------------------------------------------------------------


def test_a_revocation_is_kept_until_its_time_then_pruned() -> None:
    clock = ManualClock()
    revoked = RevokedIds("q", clock)
    now = clock.time()
    revoked.add(["a", "b"], now + 10)
    revoked.add(["c"], now + 1)
    revoked.add(["gone"], now - 1)  # expired already: not kept
    assert "a" in revoked and "c" in revoked and "gone" not in revoked
    assert len(revoked) == 3
    clock.advance(1)
    assert "c" not in revoked  # expired: never answers, even before it is pruned
    revoked.add(["d"], clock.time() + 5)  # adding prunes
    assert len(revoked) == 3
    assert revoked.live() == {"a": now + 10, "b": now + 10, "d": clock.time() + 5}


def test_a_longer_revocation_wins_and_a_shorter_one_changes_nothing() -> None:
    clock = ManualClock()
    revoked = RevokedIds("q", clock)
    now = clock.time()
    revoked.add(["a"], now + 5)
    revoked.add(["a"], now + 50)
    revoked.add(["a"], now + 1)
    clock.advance(10)
    revoked.add([], clock.time() + 1)  # prunes: a's stale entry (now + 5) goes, a stays
    assert "a" in revoked
    assert revoked.live() == {"a": now + 50}


def test_past_the_limit_those_that_expire_soonest_go_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    revoked = RevokedIds("queue 'q'", clock, limit=3)
    now = clock.time()
    with caplog.at_level(logging.WARNING, logger="taskshuttle.revocations"):
        revoked.add(["late"], now + 100)
        revoked.add(["soon", "sooner"], now + 10)
        revoked.update({"soonest": now + 1, "later": now + 200})
        revoked.add(["x"], now + 5)
    assert set(revoked.live()) == {"late", "later", "sooner"}  # a tie goes by id
    assert "soonest" not in revoked and "x" not in revoked
    assert revoked.dropped == 3
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert "more than 3 revoked tasks kept for queue 'q'" in said[0]


def test_many_revocations_again_keep_the_store_small() -> None:
    clock = ManualClock()
    revoked = RevokedIds("q", clock)
    for step in range(5000):
        revoked.add(["a", "b"], clock.time() + 1000 + step)  # each one longer: a stale entry
    assert len(revoked) == 2
    assert len(revoked._expiry) < 2 * 2 + 1024 + 2  # rebuilt, not 10,000 entries long


# -- a worker, on each backend -------------------------------------------------------------

registry = Registry()
#: The `gate` task: set once it runs; it returns once `_released` is set.
_running = threading.Event()
_released = threading.Event()


@registry.task("ok")
def ok(payload: dict[str, object]) -> str:
    return "fine"


@registry.task("gate")
def gate(payload: dict[str, object]) -> str:
    _running.set()
    assert _released.wait(20)
    return "ran to its end"


@dataclass
class Sides:
    producer: ProducerBackend
    worker: WorkerBackend

    def take(self, timeout: float = 10.0) -> Delivery:
        """The next delivery (the local broker hands out due tasks while it listens)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if isinstance(self.producer, LocalBroker):
                assert self.producer.receive_result(0.05) is None
            delivery = self.worker.receive(0.1)
            if delivery is not None:
                return delivery
        raise AssertionError(f"nothing delivered within {timeout}s")

    def result(self, timeout: float = 10.0) -> TaskResult:
        if not isinstance(self.producer, LocalBroker):
            assert self.worker.receive(0.05) is None  # a worker that waits sends what it holds
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (result := self.producer.receive_result(0.1)) is not None:
                return result
        raise AssertionError("no result")


@pytest.fixture(params=["local", "rabbitmq"])
def sides(request: pytest.FixtureRequest, queue_name: str) -> Iterator[Sides]:
    if request.param == "local":
        broker = LocalBroker(slots=1, queue_name=queue_name)
        end = broker.slots.worker_end(0)
        yield Sides(broker, end)
        end.close()
        broker.close()
        return
    from common.rabbitmq import RabbitBackend

    url = require_broker()
    producer = RabbitBackend(url, queue_name, want_results=True)
    worker = RabbitBackend(url, queue_name)
    worker.start_consuming()
    yield Sides(producer, worker)
    worker.close()
    producer.close()


def _worker(sides: Sides, queue_name: str) -> Worker:
    return Worker(sides.worker, registry, WorkerOptions(), threading.Event(), queue_name)


def test_a_revoked_delayed_task_is_dead_lettered_revoked_with_a_failed_result(
    sides: Sides, queue_name: str
) -> None:
    task = TaskEnvelope(kind="ok")
    sides.producer.publish([task], delay=0.5)
    sides.producer.revoke([task.id], keep_for=60)
    worker = _worker(sides, queue_name)
    delivery = sides.take()
    worker.process(delivery)
    result = sides.result()
    assert (result.task_id, result.status, result.reason) == (task.id, TaskStatus.FAILED, "revoked")
    assert result.error is not None and "revoked before it started" in result.error
    assert wait_until(lambda: len(sides.producer.dead_letters()) == 1, 5)
    [letter] = sides.producer.dead_letters()
    assert (letter.reason, letter.task_id) == ("revoked", task.id)
    assert (worker.succeeded, worker.dead_lettered) == (0, 1)


def test_a_task_revoked_while_it_runs_is_not_interrupted(sides: Sides, queue_name: str) -> None:
    _running.clear()
    _released.clear()
    task, after = TaskEnvelope(kind="gate"), TaskEnvelope(kind="ok")
    sides.producer.publish([task])
    worker = _worker(sides, queue_name)
    delivery = sides.take()
    running = threading.Thread(target=worker.process, args=(delivery,), daemon=True)
    running.start()
    try:
        assert _running.wait(10)
        sides.producer.revoke([task.id], keep_for=60)
        assert wait_until(lambda: sides.worker.is_revoked(task.id), 5, interval=0.01)
    finally:
        _released.set()
    running.join(10)
    result = sides.result()
    assert (result.task_id, result.status, result.value) == (
        task.id,
        TaskStatus.DONE,
        "ran to its end",
    )
    assert sides.producer.dead_letters() == []
    # and another task runs as ever
    sides.producer.publish([after])
    worker.process(sides.take())
    assert sides.result().status is TaskStatus.DONE


# -- the local broker's worker processes ----------------------------------------------------


def test_local_worker_processes_learn_revocations_before_they_start_and_after(
    queue_name: str,
) -> None:
    """Revoked before the pool starts: each worker process brings it with its end (the
    revocations are pickled with it); revoked once they run: on each slot's control pipe."""
    broker = LocalBroker(slots=2, queue_name=queue_name)
    before, during, kept = (TaskEnvelope(kind="echo") for _ in range(3))
    broker.revoke([before.id], keep_for=60)
    pool = WorkerPool(WorkerSpec(load_settings(workers=2), WorkerOptions()), 2, slots=broker.slots)
    pool.start()
    try:
        assert pool.wait_ready(30)
        broker.revoke([during.id, *(uuid.uuid4().hex for _ in range(3000))], keep_for=60)
        broker.publish([before, during, kept])
        results = {}
        deadline = time.monotonic() + 20
        while len(results) < 3 and time.monotonic() < deadline:
            pool.check()
            if (result := broker.receive_result(0.1)) is not None:
                results[result.task_id] = result
    finally:
        pool.stop()
        broker.close()
    assert {i: (r.status, r.reason) for i, r in results.items()} == {
        before.id: (TaskStatus.FAILED, "revoked"),
        during.id: (TaskStatus.FAILED, "revoked"),
        kept.id: (TaskStatus.DONE, None),
    }
    assert pool.deaths == []


def test_a_local_revocation_waits_for_no_worker_that_is_gone() -> None:
    """A slot whose end closed (its worker stopped) is no longer written to: many ids, and no
    wait for a pipe nobody reads."""
    broker = LocalBroker(slots=2)
    try:
        gone, live = broker.slots.worker_end(0), broker.slots.worker_end(1)
        gone.close()
        many = [uuid.uuid4().hex for _ in range(20_000)]  # far more than a pipe holds
        reading = threading.Thread(
            target=lambda: wait_until(lambda: live.is_revoked(many[-1]), 10, interval=0.01),
            daemon=True,
        )
        reading.start()
        started = time.monotonic()
        broker.revoke(many, keep_for=60)
        assert time.monotonic() - started < 5
        reading.join(10)
        assert live.is_revoked(many[0]) and live.is_revoked(many[-1])
        live.close()
    finally:
        broker.close()


# -- the RabbitMQ revocation stream's reader -------------------------------------------------


@pytest.fixture
def stream(queue_name: str) -> Iterator[str]:
    """A revocation stream of this test's own (the shared one stays clean), deleted after."""
    name = f"{queue_name}.revocations"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(require_broker()))
    try:
        connection.channel().queue_delete(name)
    finally:
        connection.close()


def _listener(queue: str, stream: str, **kwargs: object):  # type: ignore[no-untyped-def]
    from common.clock import SYSTEM_CLOCK
    from common.rabbitmq.revocations import RevocationListener

    url = require_broker()
    return RevocationListener(
        queue,
        lambda: [(pika.URLParameters(url), redact_url(url))],
        clock=SYSTEM_CLOCK,
        stream=stream,
        **kwargs,  # type: ignore[arg-type]
    )


def _write(stream: str, bodies: list[bytes], message_type: str | None = None) -> None:
    """Publish bodies to the stream as any client could."""
    from common.rabbitmq.revocations import stream_arguments

    connection = pika.BlockingConnection(pika.URLParameters(require_broker()))
    try:
        channel = connection.channel()
        channel.queue_declare(stream, durable=True, arguments=stream_arguments())
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", stream, body, pika.BasicProperties(type=message_type))
    finally:
        connection.close()


def _revocation(task_id: str, queue: str, keep_for: float = 60) -> bytes:
    until = utcnow().timestamp() + keep_for
    from datetime import UTC, datetime

    return encode(
        Revocation(task_id=task_id, queue=queue, until=datetime.fromtimestamp(until, UTC))
    )


def test_a_malformed_stream_message_is_skipped_with_a_log_line(
    queue_name: str, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    require_broker()
    naive = b'{"task_id": "t-naive", "queue": "%s", "until": "2999-01-01T00:00:00"}' % (
        queue_name.encode()
    )
    _write(
        stream,
        [
            b"\xff not json",
            b'{"task_id": "t-extra", "queue": "q", "until": "2999-01-01T00:00:00Z", "x": 1}',
            naive,  # a time without a timezone
            b"[]",
            _revocation("t-ok", queue_name),
            _revocation("t-other-queue", f"{queue_name}.other"),
        ],
    )
    listener = _listener(queue_name, stream)
    with caplog.at_level(logging.WARNING, logger="taskshuttle.revocations"):
        listener.start(timeout=20)
    try:
        assert listener.caught_up.is_set()
        assert "t-ok" in listener.revoked
        assert not {"t-extra", "t-naive", "t-other-queue"} & set(listener.revoked.live())
        assert listener.malformed == 4
        skipped = [
            r.getMessage() for r in caplog.records if "skipped the message" in r.getMessage()
        ]
        assert len(skipped) == 4, skipped
        assert "not-json" in skipped[0] and "schema" in skipped[1]
        # it goes on reading what comes after
        _write(stream, [b"garbage", _revocation("t-later", queue_name)])
        assert wait_until(lambda: "t-later" in listener.revoked, 5, interval=0.01)
        assert listener.error is None
    finally:
        listener.close()


def test_a_lost_revocation_connection_is_opened_again_and_reads_on_after_the_last_message(
    queue_name: str, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import common.rabbitmq.revocations as revocations
    from common.rabbitmq.link import Link

    breaks = threading.Event()

    class BreaksOnce(Link):
        """Its I/O thread raises on the first message carrying "t-break" (not put in the
        inbox, so not read): the connection dies as a bug or a broker going away would."""

        def _on_message_io(self, channel, method, props, body):  # type: ignore[no-untyped-def]
            if b"t-break" in body and not breaks.is_set():
                breaks.set()
                raise RuntimeError("the revocation link breaks")
            super()._on_message_io(channel, method, props, body)

    monkeypatch.setattr(revocations, "Link", BreaksOnce)
    _write(stream, [_revocation("t-first", queue_name)])
    listener = _listener(queue_name, stream, max_reconnect_delay=0.5)
    listener.start(timeout=20)
    try:
        assert "t-first" in listener.revoked
        _write(stream, [_revocation("t-break", queue_name), _revocation("t-after", queue_name)])
        assert wait_until(lambda: "t-after" in listener.revoked, 15, interval=0.02)
        assert breaks.is_set() and listener.reconnects == 1
        assert "t-break" in listener.revoked  # read again on the new connection
        assert listener.malformed == 0 and listener.error is None
    finally:
        listener.close()


def test_a_revocation_queue_that_is_no_stream_is_refused(queue_name: str, stream: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(require_broker()))
    try:
        connection.channel().queue_declare(stream, durable=True)  # a classic queue
    finally:
        connection.close()
    listener = _listener(queue_name, stream)
    try:
        with pytest.raises(QueueMismatch, match="is not a stream"):
            listener.start(timeout=20)
    finally:
        listener.close()


def test_the_shared_stream_is_bounded_by_age_and_size(queue_name: str) -> None:
    """Declared by the first revoke; its bounds as the broker keeps them (the management API)."""
    from common.rabbitmq import RabbitBackend
    from common.rabbitmq.revocations import REVOCATION_STREAM, stream_arguments

    with RabbitBackend(require_broker(), queue_name) as backend:
        backend.revoke(["t-bounds"], keep_for=1)
    found = management_json(f"/api/queues/%2F/{REVOCATION_STREAM}")
    assert found["type"] == "stream" and found["durable"]
    assert found["arguments"] == stream_arguments()
    assert stream_arguments()["x-max-length-bytes"] == 50_000_000
