"""The application API (`taskshuttle.Client`) on every backend: local (its own workers), and
RabbitMQ on each queue type with a `consumer` of its own. What a user of `send` and
`result` sees must not depend on which one runs underneath."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from common.errors import ConfigError
from consumer.handlers import PayloadError
from producer.client import Client, TaskExpired, TaskFailed, TaskRevoked, TaskState
from tests import client_tasks
from tests.conftest import require_broker
from tests.helpers import start, stop, wait_for_output

pytestmark = pytest.mark.timeout(180)

HANDLERS = "tests.client_tasks"


@pytest.fixture
def client(backend_name: str, queue_name: str) -> Iterator[Client]:
    if backend_name == "local":
        with Client.local(workers=2, handlers=[client_tasks], queue=queue_name) as local:
            yield local
        return
    url = require_broker()
    queue_type = backend_name.removeprefix("rabbitmq-")
    consumer = start(
        "consumer",
        *("--queue", queue_name, "--queue-type", queue_type, "--url", url),
        *("--workers", "2", "--handlers", HANDLERS, "--max-attempts", "2"),
        *("--retry-delay", "0.2"),
    )
    try:
        wait_for_output(consumer, "consuming", timeout=90)  # its workers are connected
        with Client(url=url, queue=queue_name, queue_type=queue_type) as remote:
            yield remote
    finally:
        stop(consumer)


def test_send_returns_a_handle_whose_result_is_the_handlers_value(client: Client) -> None:
    handle = client.send("add", {"x": 2, "y": 3})
    assert handle.result(timeout=30) == 5
    assert handle.done() and handle.status is TaskState.DONE
    assert handle.outcome is not None and handle.outcome.task_id == handle.id
    assert client.outstanding == 0  # nothing kept of a task once its result came


def test_a_payload_model_is_sent_as_its_fields(client: Client) -> None:
    assert client.send("add", client_tasks.Add(x=1, y=1)).result(timeout=30) == 2


def test_a_bad_payload_for_a_registered_kind_is_refused_before_sending(client: Client) -> None:
    with pytest.raises(PayloadError, match="invalid payload for kind 'add': y: Field required"):
        client.send("add", {"x": 1})
    assert client.outstanding == 0


def test_send_many_resolves_every_handle_in_order(client: Client) -> None:
    handles = client.send_many([{"kind": "add", "payload": {"x": i, "y": 1}} for i in range(300)])
    assert [h.result(timeout=60) for h in handles] == [i + 1 for i in range(300)]
    assert len({h.id for h in handles}) == 300


def test_one_bad_item_in_send_many_sends_nothing(client: Client) -> None:
    items = [{"kind": "add", "payload": {"x": 1, "y": 1}}, {"kind": "add", "countdown": -1}]
    with pytest.raises(ConfigError, match="countdown: must be at least 0"):
        client.send_many(items)
    assert client.outstanding == 0


def test_a_failing_task_raises_task_failed_with_the_remote_error(client: Client) -> None:
    handle = client.send("refuse", {"message": "no thanks"}, max_attempts=1)
    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=30)
    assert failed.value.error_type == "Refused"
    assert failed.value.reason == "max-attempts"
    assert "Refused: no thanks" in failed.value.error
    assert handle.status is TaskState.FAILED


def test_a_result_not_in_time_raises_timeout_error(client: Client) -> None:
    handle = client.send("stamp", {"seconds": 2})
    with pytest.raises(TimeoutError, match=handle.id):
        handle.result(timeout=0.2)
    assert handle.result(timeout=30)["task_id"] == handle.id  # it still comes


def test_countdowns_run_in_the_order_of_their_time_and_never_early(client: Client) -> None:
    sent = time.time()
    later = client.send("stamp", {"label": "later"}, countdown=3)
    sooner = client.send("stamp", {"label": "sooner"}, countdown=1.5)
    at_once = client.send("stamp", {"label": "now"})
    ran = {
        h.result(timeout=30)["label"]: h.result()["ran_at"] - sent for h in (later, sooner, at_once)
    }
    assert sorted(ran, key=ran.__getitem__) == ["now", "sooner", "later"]
    assert 1.5 <= ran["sooner"] < 1.5 + 1.5
    assert 3.0 <= ran["later"] < 3.0 + 1.5


def test_an_eta_is_a_time_with_a_timezone(client: Client) -> None:
    when = datetime.now(UTC) + timedelta(seconds=1.5)
    handle = client.send("stamp", {}, eta=when)
    assert handle.result(timeout=30)["ran_at"] >= when.timestamp()
    with pytest.raises(ConfigError, match="eta: Input should have timezone info"):
        client.send("stamp", {}, eta=datetime.now() + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"countdown": float("nan")}, "countdown: Input should be a finite number"),
        ({"countdown": -1}, "countdown: must be at least 0"),
        ({"countdown": 11 * 365 * 86_400}, "countdown: must be at most 315576000"),
        ({"countdown": 1, "eta": datetime.now(UTC)}, "give countdown or eta, not both"),
        ({"expires": 0}, "expires: must be more than 0 seconds"),
        ({"expires": float("inf")}, "expires: must be more than 0 seconds"),
        ({"max_attempts": 0}, "max_attempts: must be at least 1"),
        ({"task_id": ""}, "task_id: must be at least 1 characters long"),
    ],
)
def test_bad_options_are_one_clear_error_and_nothing_is_sent(
    client: Client, options: dict[str, object], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        client.send("add", {"x": 1, "y": 1}, **options)  # type: ignore[arg-type]
    assert client.outstanding == 0


def test_a_task_past_its_expiry_is_not_run(client: Client) -> None:
    blockers = [client.send("stamp", {"seconds": 1.5}) for _ in range(2)]  # both workers busy
    time.sleep(0.3)
    expiring = client.send("stamp", {"label": "expiring"}, expires=0.5)
    with pytest.raises(TaskExpired, match="expired at"):
        expiring.result(timeout=30)
    assert expiring.status is TaskState.EXPIRED
    for blocker in blockers:
        blocker.result(timeout=30)


def test_a_revoked_task_waiting_for_its_time_is_not_run(client: Client) -> None:
    doomed = client.send("stamp", {"label": "doomed"}, countdown=2)
    kept = client.send("stamp", {"label": "kept"}, countdown=2)
    client.revoke(doomed.id)
    with pytest.raises(TaskRevoked, match="revoked"):
        doomed.result(timeout=30)
    assert doomed.status is TaskState.REVOKED
    assert kept.result(timeout=30)["label"] == "kept"


def test_a_callers_task_id_is_its_own(client: Client) -> None:
    handle = client.send("add", {"x": 1, "y": 2}, task_id="order-1234")
    assert handle.id == "order-1234"
    assert handle.result(timeout=30) == 3


def test_twenty_threads_sending_5000_tasks_resolve_every_handle_once(client: Client) -> None:
    handles: list[list[object]] = [[] for _ in range(20)]
    errors: list[BaseException] = []

    def sender(mine: list[object], base: int) -> None:
        try:
            for i in range(250):
                mine.append(client.send("add", {"x": base, "y": i}))
        except BaseException as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(handles[t], t * 1000)) for t in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    values = [h.result(timeout=120) for mine in handles for h in mine]  # type: ignore[attr-defined]
    assert sorted(values) == sorted(t * 1000 + i for t in range(20) for i in range(250))
    assert client.outstanding == 0 and client.unclaimed == 0


def test_a_handle_can_be_awaited_from_another_thread(client: Client) -> None:
    handle = client.send("stamp", {"seconds": 0.3})
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(handle.result(timeout=30)))
    waiter.start()
    waiter.join(30)
    assert got and got[0]["task_id"] == handle.id  # type: ignore[index]


def test_send_after_close_is_refused(client: Client) -> None:
    client.close()
    with pytest.raises(Exception, match="closed"):
        client.send("add", {"x": 1, "y": 1})
