"""Run a job: send N tasks of one kind and, when asked, collect every result.

This is the library under the `producer` command; tests and lessons call it directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from common.backend import ProducerBackend
from common.errors import BrokerError, TaskshuttleError
from common.factory import Role, open_backend
from common.local import LocalBroker
from common.schemas import TaskEnvelope, TaskResult, utcnow
from common.settings import BackendName, Settings
from producer.ledger import Ledger, Recorder, TaskNumbering
from producer.local import StopFlag, WorkerOptions, local_workers

#: Tasks per publish call when no rate is set: large enough to pipeline confirms.
BATCH = 1000

#: The most tasks `run_local` lets be in flight (sent, no result yet). Its queue lives in
#: this process, so without a bound a run of a million tasks would hold a million bodies;
#: this many keeps every worker busy (a few tenths of a second of work) in a few MB.
LOCAL_WINDOW = 8 * BATCH

#: How long `send` waits for results at most before it looks at its window again.
WINDOW_POLL = 0.05

_Recorder = TypeVar("_Recorder", bound=Recorder)


@dataclass(frozen=True)
class Job:
    count: int
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    #: Tasks per second; None sends as fast as the backend confirms.
    rate: float | None = None
    max_attempts: int | None = None
    #: Task ids carry their number in the job, so a `Tally` keeps a byte per task, not an id.
    numbering: TaskNumbering = field(default_factory=TaskNumbering)

    def tasks(self) -> Iterator[TaskEnvelope]:
        # The job's fields are checked once, here; each task is then validated from them
        # with its own id and time, which pydantic's compiled validator does faster than
        # `model_copy` copies (and a copy would skip validation).
        fields = TaskEnvelope(
            kind=self.kind, payload=self.payload, max_attempts=self.max_attempts
        ).model_dump()
        validate = TaskEnvelope.model_validate
        task_id = self.numbering.task_id
        for number in range(self.count):
            yield validate({**fields, "id": task_id(number), "created_at": utcnow()})


class JobFailed(TaskshuttleError):
    """The broker failed the job after it had started: it stayed away longer than the
    producer waits for it, or refused a message. `ledger` holds what was confirmed (and,
    with results, what came back) before that; `cause` is the broker's error."""

    def __init__(self, cause: BrokerError, ledger: Recorder) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.ledger = ledger
        self.exit_code = cause.exit_code


class Progress:
    """What a run reports as it goes; the CLI draws a bar (and, from each result, who did
    what so far), tests pass nothing."""

    def sent(self, n: int) -> None:
        pass

    def result(self, result: TaskResult) -> None:
        """A result came (before `done` counts it with the others of its batch)."""

    def done(self, n: int) -> None:
        pass


NEVER: StopFlag = threading.Event()  # a stop flag nobody sets


def send(
    job: Job,
    backend: ProducerBackend,
    ledger: Recorder,
    progress: Progress,
    *,
    between: Callable[[float], object] = time.sleep,
    stop: StopFlag = NEVER,
    window: int | None = None,
    publish: Callable[[list[TaskEnvelope]], None] | None = None,
) -> None:
    """Publish the job's tasks: in batches of `BATCH`, or paced at `job.rate` per second.

    After each batch `between(seconds)` runs, where `seconds` is how long until the next
    batch is due: it may wait that long, and should take results meanwhile, so that a
    result is recorded when it arrives, not when the producer wakes up. With `window`, a
    batch waits (in `between`, taking results) until no more than `window` tasks would be
    in flight with it. `publish` replaces `backend.publish` (`run_rabbitmq` has it take
    results while it waits for confirms).
    """
    publish = publish or backend.publish
    tasks = job.tasks()
    start = time.perf_counter()
    sent = 0
    while sent < job.count and not stop.is_set():
        if job.rate is None:
            due = min(job.count, sent + BATCH)
        else:  # task k (from 0) is due k / rate seconds after the start
            due = min(job.count, int((time.perf_counter() - start) * job.rate) + 1)
        if window is not None and ledger.outstanding and ledger.outstanding + due - sent > window:
            between(WINDOW_POLL)  # returns as soon as results come in
            continue
        if due > sent:
            batch = [next(tasks) for _ in range(due - sent)]
            publish(batch)
            ledger.record_sent(batch)
            progress.sent(len(batch))
            sent = due
        wait = 0.0 if job.rate is None else sent / job.rate - (time.perf_counter() - start)
        between(max(wait, 0.0) if sent < job.count else 0.0)


def collect(
    backend: ProducerBackend,
    ledger: Recorder,
    progress: Progress,
    *,
    until: float,
    poll: float = 0.2,
    tick: Callable[[], None] = lambda: None,
    stop: StopFlag = NEVER,
) -> None:
    """Take results until every sent task has one, `until` (perf_counter) passes, or `stop`."""
    while ledger.outstanding and time.perf_counter() < until and not stop.is_set():
        take_results(backend, ledger, progress, min(poll, until - time.perf_counter()))
        tick()
    ledger.finished = time.perf_counter()


def publish_taking_results(
    backend: ProducerBackend, ledger: Recorder, progress: Progress
) -> Callable[[list[TaskEnvelope]], None]:
    """`backend.publish`, recording the results that arrive while it waits for confirms:
    otherwise they would wait for the publish to return, and a paced producer, always in
    the middle of one, would count a confirm's wait into every latency."""
    from common.rabbitmq import RabbitBackend

    assert isinstance(backend, RabbitBackend)

    def take_arrived() -> None:
        results = backend.arrived_results()
        for result in results:
            ledger.record_result(result)
            progress.result(result)
        if results:
            progress.done(len(results))

    return lambda batch: backend.publish(batch, meanwhile=take_arrived)


def take_results(
    backend: ProducerBackend, ledger: Recorder, progress: Progress, timeout: float
) -> None:
    """Record every result there is, waiting up to `timeout` seconds for the first."""
    result = backend.receive_result(max(timeout, 0))
    taken = 0
    while result is not None:
        ledger.record_result(result)
        progress.result(result)
        taken += 1
        result = backend.receive_result(0)
    if taken:
        progress.done(taken)


@overload
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
    ledger: None = None,
) -> tuple[Ledger, LocalBroker]: ...


@overload
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
    ledger: _Recorder,
) -> tuple[_Recorder, LocalBroker]: ...


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
    ledger: Recorder | None = None,
) -> tuple[Recorder, LocalBroker]:
    """The whole producer-consumer model in one process tree: this process feeds a
    `multiprocessing.Queue`, `settings.workers` daemon children consume it.

    The results go into `ledger`: a `Ledger` (every result kept) unless another `Recorder`
    is given, as `producer` gives its `Tally`. At most `LOCAL_WINDOW` tasks are in flight at
    once, so this process (which holds the queue) stays the same size however long the job.

    When `stop` is set (SIGINT, SIGTERM), sending stops, each worker finishes the task in
    hand and exits, and their results are counted; what was still queued dies with this
    process tree (the ledger calls it lost: that is the local model's limit).
    """
    progress = progress or Progress()
    # Prefetch means the same on both backends: tasks a worker may hold at once.
    backend = open_backend(settings, Role.PRODUCER, backend=BackendName.local)
    assert isinstance(backend, LocalBroker)
    pool = local_workers(backend, settings, options, handler_modules, daemon=daemon)
    ledger = Ledger() if ledger is None else ledger
    pool.start()
    try:
        pool.wait_ready(stop=stop.is_set)  # a Ctrl-C while the workers start ends the wait
        ledger.started = time.perf_counter()  # the clock starts once the workers are up
        send(
            job,
            backend,
            ledger,
            progress,
            between=lambda wait: (take_results(backend, ledger, progress, wait), pool.check()),
            stop=stop,
            window=LOCAL_WINDOW,
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
    take_results(backend, ledger, progress, 0)
    backend.close()
    return ledger, backend


@overload
def run_rabbitmq(
    job: Job,
    settings: Settings,
    *,
    wait: bool,
    timeout: float,
    progress: Progress | None = None,
    stop: StopFlag = NEVER,
    ledger: None = None,
) -> Ledger: ...


@overload
def run_rabbitmq(
    job: Job,
    settings: Settings,
    *,
    wait: bool,
    timeout: float,
    progress: Progress | None = None,
    stop: StopFlag = NEVER,
    ledger: _Recorder,
) -> _Recorder: ...


def run_rabbitmq(
    job: Job,
    settings: Settings,
    *,
    wait: bool,
    timeout: float,
    progress: Progress | None = None,
    stop: StopFlag = NEVER,
    ledger: Recorder | None = None,
) -> Recorder:
    """Publish with confirms; with `wait`, collect the results on a reply queue (into
    `ledger`: a `Ledger` unless another `Recorder` is given).

    A broker that is down is waited for (`--connect-timeout`, 30 s by default), at the start
    and per outage, and `stop` ends that wait. Failing to connect raises the broker's error;
    failing after that raises `JobFailed`, which carries the ledger so far.
    """
    progress = progress or Progress()
    ledger = Ledger() if ledger is None else ledger
    ledger.started = time.perf_counter()
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
                between=lambda wait: take_results(backend, ledger, progress, wait),
                stop=stop,
                publish=publish_taking_results(backend, ledger, progress),
            )
            collect(backend, ledger, progress, until=time.perf_counter() + timeout, stop=stop)
        except BrokerError as exc:
            ledger.finished = time.perf_counter()
            raise JobFailed(exc, ledger) from exc
    return ledger
