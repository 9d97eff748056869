"""The worker loop, in this process, on the local backend: what each outcome settles as."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from common.local import LocalBroker, LocalWorkerEnd
from common.schemas import TaskEnvelope, TaskStatus
from consumer.handlers import Handler, Registry, TaskContext
from consumer.worker import Worker, WorkerOptions

pytestmark = pytest.mark.timeout(30)

registry = Registry()
seen: list[TaskContext] = []


@registry.task("with-context")
def with_context(payload: dict[str, object], context: TaskContext) -> str:
    seen.append(context)
    return context.task_id


@registry.task("not-json")
def not_json(payload: dict[str, object]) -> object:
    return object()


Local = tuple[LocalBroker, LocalWorkerEnd]


@pytest.fixture
def backend() -> Iterator[Local]:
    """The broker, and the end of slot 0: this process plays both."""
    broker = LocalBroker(slots=1)
    end = broker.slots.worker_end(0)
    yield broker, end
    end.close()
    broker.close()


def _run_once(backend: Local, task: TaskEnvelope) -> None:
    broker, end = backend
    broker.publish([task])
    worker = Worker(end, registry, WorkerOptions(max_attempts=2), threading.Event())
    delivery = end.receive(5)
    assert delivery is not None
    worker.process(delivery)
    assert end.receive(0.05) is None  # flushes what the worker sent


def _result(backend: Local):  # type: ignore[no-untyped-def]
    broker, _ = backend
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (result := broker.receive_result(0.1)) is not None:
            return result
    raise AssertionError("no result")


def test_a_handler_can_ask_for_the_task_context(backend: Local) -> None:
    task = TaskEnvelope(kind="with-context", attempt=2)
    _run_once(backend, task)
    result = _result(backend)
    assert (result.status, result.value) == (TaskStatus.DONE, task.id)
    assert seen[-1] == TaskContext(
        task_id=task.id, kind="with-context", attempt=2, max_attempts=2, redelivered=False
    )


def test_a_result_that_is_not_json_is_dead_lettered_not_retried(backend: Local) -> None:
    _run_once(backend, TaskEnvelope(kind="not-json"))
    result = _result(backend)
    assert result.status == TaskStatus.FAILED
    assert [d.reason for d in backend[0].dead_letters()] == ["bad-result"]


def test_an_unknown_kind_is_dead_lettered_with_a_failed_result(backend: Local) -> None:
    _run_once(backend, TaskEnvelope(kind="nobody-handles-this"))
    result = _result(backend)
    assert result.status == TaskStatus.FAILED
    assert "unknown-kind" in (result.error or "")
    [letter] = backend[0].dead_letters()
    assert letter.reason == "unknown-kind" and "nobody-handles-this" in letter.error


class LazyRegistry(Registry):
    """Imports a kind's handler on first use, and fails to for one kind."""

    def get(self, kind: str) -> Handler | None:
        if kind == "broken":
            raise ImportError("cannot import name 'resize' from 'images'")
        return registry.get(kind)


def test_an_error_outside_the_handler_dead_letters_that_task_and_the_worker_goes_on(
    backend: Local,
) -> None:
    broker, end = backend
    broken, after = TaskEnvelope(kind="broken"), TaskEnvelope(kind="with-context")
    broker.publish([broken, after])
    worker = Worker(end, LazyRegistry(), WorkerOptions(), threading.Event())
    for _ in range(2):
        delivery = end.receive(5)
        assert delivery is not None
        worker.process(delivery)
    assert end.receive(0.05) is None  # flushes what the worker sent

    results = {result.task_id: result for result in (_result(backend), _result(backend))}
    assert results[broken.id].status == TaskStatus.FAILED
    assert results[broken.id].error == (
        "worker-error: ImportError: cannot import name 'resize' from 'images'"
    )
    assert results[after.id].status == TaskStatus.DONE
    assert [letter.reason for letter in broker.dead_letters()] == ["worker-error"]
