"""The local backend when workers die or run long: every task comes back exactly once, and a
task that kills its workers is dead-lettered instead of taking them all down."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.local import LocalBroker
from common.schemas import TaskEnvelope, TaskResult
from common.settings import load_settings
from consumer.spec import WorkerSpec
from consumer.supervisor import WorkerPool
from consumer.worker import StopFlag, WorkerOptions
from producer.ledger import Fate, Ledger
from producer.run import NEVER, Job, run_local
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


def _run(
    kind: str, marker: Path, count: int, stop: StopFlag = NEVER, **settings: object
) -> tuple[Ledger, LocalBroker]:
    config = load_settings(**settings)
    job = Job(count=count, kind=kind, payload={"marker": str(marker), "seconds": 60})
    options = WorkerOptions.from_settings(config)
    return run_local(
        job,
        config,
        options=options,
        timeout=60,
        handler_modules=("tests.local_tasks",),
        stop=stop,
    )


class Exists:
    """A stop flag that is set once a file exists (once a task has started)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def is_set(self) -> bool:
        return self.path.exists()


def test_a_stuck_task_is_stopped_by_its_time_limit_while_the_run_shuts_down(
    tmp_path: Path,
) -> None:
    # Stopped (as by Ctrl-C) while the one task sleeps for a minute: the workers finish
    # the tasks in hand, but a task past --task-timeout is stopped even then.
    marker = tmp_path / "first"
    started = time.monotonic()
    ledger, broker = _run(
        "slow-first", marker, 1, Exists(marker), workers=1, task_timeout=2, max_attempts=1
    )
    assert time.monotonic() - started < 20  # not the pool's 30 s wait for its workers
    assert ledger.fates()[Fate.DEAD_LETTERED] == 1
    [letter] = broker.dead_letters()
    assert letter.reason == "max-attempts" and letter.error.startswith("TaskTimeout")


def test_a_timed_out_task_gives_the_rest_of_its_batch_back_once(tmp_path: Path) -> None:
    # One worker takes batches of 10: the first task of the first batch runs past its
    # limit, the worker is replaced, and the 9 it had not started go back to the queue.
    ledger, broker = _run(
        "slow-first", tmp_path / "first", 40, workers=1, prefetch=10, task_timeout=2, max_attempts=1
    )
    fates = ledger.fates()
    assert fates[Fate.DONE_TWICE] == 0
    assert fates[Fate.DEAD_LETTERED] == 1 and fates[Fate.LOST] == 0
    assert fates[Fate.DONE_ONCE] + fates[Fate.DONE_AFTER_REDELIVERY] == 39
    assert all(len(results) == 1 for results in ledger.results.values())
    assert [letter.reason for letter in broker.dead_letters()] == ["max-attempts"]


def test_a_task_that_kills_its_worker_is_dead_lettered_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    ledger, broker = _run("kill-first", tmp_path / "first", 10, workers=2)
    summary = ledger.summary("local")
    assert (summary["done"], summary["failed"], summary["lost"]) == (9, 1, 0)
    [letter] = broker.dead_letters()
    assert letter.reason == "killed-worker"
    assert letter.task_id == (tmp_path / "first").read_text()
    assert letter.error.startswith("2 workers died running it")
    [result] = ledger.results[letter.task_id]
    assert result.error is not None and result.error.startswith("killed-worker: ")


# -- a long task after short ones in one batch ---------------------------------------------


@pytest.fixture
def one_worker() -> Iterator[tuple[LocalBroker, WorkerPool]]:
    """A broker and one worker that takes tasks two at a time."""
    broker = LocalBroker(slots=1, batch_size=2)
    spec = WorkerSpec(load_settings(workers=1), WorkerOptions(), ("tests.fault_tasks",))
    pool = WorkerPool(spec, 1, slots=broker.slots)
    pool.start()
    try:
        assert pool.wait_ready(30)
        yield broker, pool
    finally:
        pool.stop(timeout=10)
        broker.close()


def _publish_fast_then_slow(broker: LocalBroker, started: Path) -> tuple[str, str]:
    fast = TaskEnvelope(kind="echo")
    slow = TaskEnvelope(kind="hold", payload={"seconds": 4, "started": str(started)})
    # 8 tasks for one worker go out two at a time: [fast, slow] is the first batch.
    broker.publish([fast, slow, *(TaskEnvelope(kind="echo") for _ in range(6))])
    return fast.id, slow.id


def _results_until(broker: LocalBroker, done: object, timeout: float) -> list[TaskResult]:
    taken: list[TaskResult] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(taken):  # type: ignore[operator]
        if (result := broker.receive_result(0.1)) is not None:
            taken.append(result)
    return taken


def test_a_finished_task_reports_at_once_while_a_long_one_runs(
    one_worker: tuple[LocalBroker, WorkerPool], tmp_path: Path
) -> None:
    broker, _ = one_worker
    fast_id, _ = _publish_fast_then_slow(broker, tmp_path)
    assert wait_until(lambda: any(tmp_path.iterdir()), 10)  # the slow one has started
    slow_started = time.monotonic()

    taken = _results_until(broker, lambda got: fast_id in {r.task_id for r in got}, 10)

    assert fast_id in {r.task_id for r in taken}
    assert time.monotonic() - slow_started < 2  # not after the 4 s task


def test_a_worker_killed_during_a_long_task_does_not_run_the_earlier_ones_again(
    one_worker: tuple[LocalBroker, WorkerPool], tmp_path: Path
) -> None:
    broker, pool = one_worker
    fast_id, slow_id = _publish_fast_then_slow(broker, tmp_path)
    assert wait_until(lambda: any(tmp_path.iterdir()), 10)
    time.sleep(1)  # well into the slow task
    [victim] = pool.pids
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: (pool.check(0.1), victim not in pool.pids)[1], 10)

    taken = _results_until(broker, lambda got: len(got) >= 8, 30)

    assert sorted(r.task_id for r in taken if r.task_id == fast_id) == [fast_id]  # once
    [fast] = [r for r in taken if r.task_id == fast_id]
    assert fast.worker_pid == victim and not fast.redelivered
    assert [r.redelivered for r in taken if r.task_id == slow_id] == [True]


# -- how many deaths a task may cause ------------------------------------------------------
# The rule is the one RabbitMQ's consumer follows (`consumer.middleware.KilledWorkers`): the
# pool counts each death against the task its worker was running, and the worker that takes
# it next, once `max_deaths` workers died, dead-letters it unrun.


@pytest.mark.parametrize("max_deaths", [1, 2, 3])
def test_a_task_is_put_back_until_max_deaths_workers_died_running_it(
    tmp_path: Path, max_deaths: int
) -> None:
    marker = tmp_path / "first"
    ledger, broker = _run("kill-first", marker, 8, workers=1, max_deaths=max_deaths)
    summary = ledger.summary("local")
    assert (summary["done"], summary["failed"], summary["lost"]) == (7, 1, 0)
    [letter] = broker.dead_letters()
    assert (letter.reason, letter.task_id) == ("killed-worker", marker.read_text())
    assert letter.error == f"{max_deaths} workers died running it"
    [result] = ledger.results[letter.task_id]
    assert result.error == f"killed-worker: {max_deaths} workers died running it"
    assert broker.pending() == 0


def test_only_the_task_a_worker_ran_counts_its_death_not_the_rest_of_its_batch(
    tmp_path: Path,
) -> None:
    # One worker takes 4 tasks at a time and dies on the first: the other three of its batch
    # go back and run; only the one it ran is dead-lettered.
    marker = tmp_path / "first"
    ledger, broker = _run("kill-first", marker, 16, workers=1, prefetch=4, max_deaths=1)
    fates = ledger.fates()
    assert fates[Fate.DEAD_LETTERED] == 1 and fates[Fate.LOST] == 0
    assert fates[Fate.DONE_TWICE] == 0
    assert [letter.task_id for letter in broker.dead_letters()] == [marker.read_text()]
    assert broker.recovered >= 3


def test_max_deaths_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_deaths"):
        load_settings(max_deaths=0)
