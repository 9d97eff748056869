"""Run a job: send N tasks of one kind and, when asked, collect every result.

This is the library under the `producer` command; tests and lessons call it directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from common.backend import ProducerBackend
from common.errors import BrokerError, TaskshuttleError
from common.factory import Role, open_backend
from common.ledger import Ledger
from common.local import LocalBroker
from common.schemas import TaskEnvelope, new_task_id, utcnow
from common.settings import BackendName, Settings
from consumer.supervisor import WorkerPool, WorkerSpec
from consumer.worker import StopFlag, WorkerOptions

#: Tasks per publish call when no rate is set: large enough to pipeline confirms.
BATCH = 1000


@dataclass(frozen=True)
class Job:
    count: int
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    #: Tasks per second; None sends as fast as the backend confirms.
    rate: float | None = None
    max_attempts: int | None = None

    def tasks(self) -> Iterator[TaskEnvelope]:
        # Validate the job once; each task is a copy with its own id and time.
        template = TaskEnvelope(
            kind=self.kind, payload=self.payload, max_attempts=self.max_attempts
        )
        for _ in range(self.count):
            yield template.model_copy(update={"id": new_task_id(), "created_at": utcnow()})


class JobFailed(TaskshuttleError):
    """The broker failed the job after it had started: it stayed away longer than the
    producer waits for it, or refused a message. `ledger` holds what was confirmed (and,
    with results, what came back) before that; `cause` is the broker's error."""

    def __init__(self, cause: BrokerError, ledger: Ledger) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.ledger = ledger
        self.exit_code = cause.exit_code


class Progress:
    """What a run reports as it goes; the CLI draws a bar, tests pass nothing."""

    def sent(self, n: int) -> None:
        pass

    def done(self, n: int) -> None:
        pass


NEVER: StopFlag = threading.Event()  # a stop flag nobody sets


def send(
    job: Job,
    backend: ProducerBackend,
    ledger: Ledger,
    progress: Progress,
    *,
    between: Callable[[float], object] = time.sleep,
    stop: StopFlag = NEVER,
) -> None:
    """Publish the job's tasks: in batches of `BATCH`, or paced at `job.rate` per second.

    After each batch `between(seconds)` runs, where `seconds` is how long until the next
    batch is due: it may wait that long, and should take results meanwhile, so that a
    result is recorded when it arrives, not when the producer wakes up.
    """
    tasks = job.tasks()
    start = time.perf_counter()
    sent = 0
    while sent < job.count and not stop.is_set():
        if job.rate is None:
            due = min(job.count, sent + BATCH)
        else:  # task k (from 0) is due k / rate seconds after the start
            due = min(job.count, int((time.perf_counter() - start) * job.rate) + 1)
        if due > sent:
            batch = [next(tasks) for _ in range(due - sent)]
            backend.publish(batch)
            ledger.record_sent(batch)
            progress.sent(len(batch))
            sent = due
        wait = 0.0 if job.rate is None else sent / job.rate - (time.perf_counter() - start)
        between(max(wait, 0.0) if sent < job.count else 0.0)


def collect(
    backend: ProducerBackend,
    ledger: Ledger,
    progress: Progress,
    *,
    until: float,
    poll: float = 0.2,
    tick: Callable[[], None] = lambda: None,
    stop: StopFlag = NEVER,
) -> None:
    """Take results until every sent task has one, `until` (perf_counter) passes, or `stop`."""
    while ledger.outstanding and time.perf_counter() < until and not stop.is_set():
        _take_results(backend, ledger, progress, min(poll, until - time.perf_counter()))
        tick()
    ledger.finished = time.perf_counter()


def _take_results(
    backend: ProducerBackend, ledger: Ledger, progress: Progress, timeout: float
) -> None:
    result = backend.receive_result(max(timeout, 0))
    taken = 0
    while result is not None:
        ledger.record_result(result)
        taken += 1
        result = backend.receive_result(0)
    if taken:
        progress.done(taken)


def run_local(
    job: Job,
    settings: Settings,
    *,
    options: WorkerOptions,
    timeout: float,
    handler_modules: tuple[str, ...] = (),
    progress: Progress | None = None,
    daemon: bool = True,
    stop: StopFlag = NEVER,
) -> tuple[Ledger, LocalBroker]:
    """The whole producer-consumer model in one process tree: this process feeds a
    `multiprocessing.Queue`, `settings.workers` daemon children consume it.

    When `stop` is set (SIGINT, SIGTERM), sending stops, each worker finishes the task in
    hand and exits, and their results are counted; what was still queued dies with this
    process tree (the ledger calls it lost: that is the local model's limit).
    """
    progress = progress or Progress()
    # Prefetch means the same on both backends: tasks a worker may hold at once.
    backend = open_backend(settings, Role.PRODUCER, backend=BackendName.local)
    assert isinstance(backend, LocalBroker)
    spec = WorkerSpec(settings, options, handler_modules)
    pool = WorkerPool(
        spec,
        settings.workers,
        slots=backend.slots,
        daemon=daemon,
        max_deaths=settings.max_deaths,  # the broker's limit: such deaths do not count
    )
    ledger = Ledger()
    pool.start()
    try:
        pool.wait_ready(stop=stop.is_set)  # a Ctrl-C while the workers start ends the wait
        ledger.started = time.perf_counter()  # the clock starts once the workers are up
        send(
            job,
            backend,
            ledger,
            progress,
            between=lambda wait: (_take_results(backend, ledger, progress, wait), pool.check()),
            stop=stop,
        )
        collect(
            backend,
            ledger,
            progress,
            until=time.perf_counter() + timeout,
            tick=pool.check,
            stop=stop,
        )
    finally:
        pool.stop()  # each worker finishes the task in hand first
    backend.drain_events()
    _take_results(backend, ledger, progress, 0)
    backend.close()
    return ledger, backend


def run_rabbitmq(
    job: Job,
    settings: Settings,
    *,
    wait: bool,
    timeout: float,
    progress: Progress | None = None,
    stop: StopFlag = NEVER,
) -> Ledger:
    """Publish with confirms; with `wait`, collect the results on a reply queue.

    A broker that is down is waited for (`--connect-timeout`, 30 s by default), at the start
    and per outage, and `stop` ends that wait. Failing to connect raises the broker's error;
    failing after that raises `JobFailed`, which carries the ledger so far.
    """
    progress = progress or Progress()
    ledger = Ledger()
    with open_backend(settings, Role.PRODUCER, results=wait, stop=stop) as backend:
        try:
            if not wait:
                send(job, backend, ledger, progress, stop=stop)
                ledger.finished = time.perf_counter()
                return ledger
            send(
                job,
                backend,
                ledger,
                progress,
                between=lambda wait: _take_results(backend, ledger, progress, wait),
                stop=stop,
            )
            collect(backend, ledger, progress, until=time.perf_counter() + timeout, stop=stop)
        except BrokerError as exc:
            ledger.finished = time.perf_counter()
            raise JobFailed(exc, ledger) from exc
    return ledger
