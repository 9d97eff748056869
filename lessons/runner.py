"""Running a job on a pool of workers, on either backend, the way the lessons need it.

`producer.run.run_local` and `run_rabbitmq` are the project's own one-call runs; the lessons
use them where they fit. Here are the pieces they need besides: a pool they can look at
(pids, deaths), a local pool whose workers can take the parent's `multiprocessing.Lock`, a
RabbitMQ queue of their own that is deleted afterwards, and jobs whose tasks are numbered.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.backend import ProducerBackend
from common.errors import BrokerError, TaskshuttleError
from common.factory import Role, local_broker, open_backend
from common.local import MP_CONTEXT, LocalBroker
from common.schemas import TaskEnvelope, TaskResult, TaskStatus
from common.settings import load_settings
from consumer.spec import WorkerSpec
from consumer.supervisor import WorkerPool
from consumer.worker import WorkerOptions
from producer.ledger import Ledger, percentile
from producer.run import Job, Progress, collect, send

#: Imported by every worker the lessons start, so they know the lessons' task kinds.
HANDLERS = ("lessons.tasks",)
ROOT = Path(__file__).resolve().parents[1]


def lesson_queue(topic: str) -> str:
    """A queue name of one run's own, so runs and tests never share a queue."""
    return f"lesson.{topic}.{uuid.uuid4().hex[:8]}"


def project_env(url: str | None = None) -> dict[str, str]:
    """The environment for a program run as a subprocess: it must import this project, and
    it gets the broker URL here rather than on its command line, where `ps` shows passwords."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}
    if url is not None:
        env["AMQP_URL"] = url
    return env


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


@dataclass(frozen=True)
class NumberedJob(Job):
    """A `Job` whose task number i carries ``"seq": i`` in its payload: the order it was sent
    in. With `with_id`, the payload also carries the task's own id as ``"purchase"`` (a
    handler sees only the payload, and the task id is what stays the same on redelivery)."""

    with_id: bool = False

    def tasks(self) -> Iterator[TaskEnvelope]:
        for seq in range(self.count):
            task_id = uuid.uuid4().hex
            payload = {**self.payload, "seq": seq}
            if self.with_id:
                payload["purchase"] = task_id
            yield TaskEnvelope(
                id=task_id, kind=self.kind, payload=payload, max_attempts=self.max_attempts
            )


@dataclass(frozen=True)
class TaskList(Job):
    """A `Job` of tasks made beforehand (so that the same tasks can be sent again)."""

    items: tuple[TaskEnvelope, ...] = ()

    def tasks(self) -> Iterator[TaskEnvelope]:
        yield from self.items


def job_of(tasks: list[TaskEnvelope]) -> TaskList:
    return TaskList(count=len(tasks), kind=tasks[0].kind if tasks else "echo", items=tuple(tasks))


@contextlib.contextmanager
def local_pool(
    workers: int,
    *,
    options: WorkerOptions | None = None,
    share_lock: bool = False,
    daemon: bool = True,
) -> Iterator[tuple[LocalBroker, WorkerPool]]:
    """`workers` daemon children around one `multiprocessing.Queue` (as `run_local` starts).

    With `share_lock`, one `multiprocessing.Lock` made here reaches every worker as it starts
    (the spawned process is handed it, as the seed hands its Lock to each `Process`), and
    `lessons.tasks.share_lock` gives it to the handlers, which only ever see a payload.
    """
    broker = local_broker(workers)
    spec = WorkerSpec(load_settings(workers=workers), options or WorkerOptions(), HANDLERS)
    if share_lock:
        from lessons.tasks import share_lock as give_to_handlers

        spec = replace(spec, initializer=give_to_handlers, init_args=(MP_CONTEXT.Lock(),))
    pool = WorkerPool(spec, workers, slots=broker.slots, daemon=daemon)
    pool.start()
    try:
        if not pool.wait_ready():
            raise TaskshuttleError("the local workers did not start")
        yield broker, pool
    finally:
        pool.stop()
        broker.close()


@contextlib.contextmanager
def broker_queue(
    url: str, topic: str, queue_arguments: dict[str, Any] | None = None
) -> Iterator[Any]:
    """A fresh queue on the broker and a producer on it that collects results.

    Connecting here first means a broker that is down is one clear error, before any worker
    starts. Every queue the run made (work, dead letters, retries, replies) is deleted after.
    """
    settings = load_settings(amqp_url=url, queue=lesson_queue(topic))
    producer = open_backend(settings, Role.PRODUCER, results=True, queue_arguments=queue_arguments)
    try:
        yield producer
    finally:
        producer.close()  # deletes its reply queue
        with (
            contextlib.suppress(BrokerError),
            open_backend(settings, Role.ADMIN, queue_arguments=queue_arguments) as cleaner,
        ):
            cleaner.delete_queues()  # type: ignore[attr-defined]


@contextlib.contextmanager
def rabbit_pool(
    url: str,
    producer: Any,
    workers: int,
    *,
    prefetch: int = 100,
    options: WorkerOptions | None = None,
) -> Iterator[WorkerPool]:
    """`workers` consumer processes on the producer's queue, each with its own connection,
    started as `consumer` starts them; they are all consuming when this yields."""
    settings = load_settings(
        amqp_url=url, queue=producer.queue_name, prefetch=prefetch, workers=workers
    )
    pool = WorkerPool(WorkerSpec(settings, options or WorkerOptions(), HANDLERS), workers)
    pool.start()
    try:
        if not pool.wait_ready():
            raise TaskshuttleError("the consumer processes did not start")
        warm_up(producer, pool)
        yield pool
    finally:
        pool.stop()


def warm_up(producer: ProducerBackend, pool: WorkerPool, timeout: float = 30.0) -> None:
    """Send a few short tasks until every worker has answered one.

    A worker is "ready" before it has told the broker it consumes; a job sent in that moment
    would all go to the workers that were quicker. After this, each one is consuming.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not set(pool.pids) <= seen:
        if time.monotonic() > deadline:
            raise TaskshuttleError("not every consumer process started consuming")
        tasks = [TaskEnvelope(kind="sleep", payload={"seconds": 0.02}) for _ in range(pool.count)]
        producer.publish(tasks)
        waiting = {task.id for task in tasks}
        while waiting and time.monotonic() < deadline:
            result = producer.receive_result(0.5)
            if result is not None and result.task_id in waiting:
                waiting.discard(result.task_id)
                seen.add(result.worker_pid)
        pool.check()


def run_job(
    job: Job,
    backend: ProducerBackend,
    *,
    timeout: float = 120.0,
    tick: Callable[[], object] = lambda: None,
) -> Ledger:
    """Send the job, collect every result (as `run_local` does, on a pool that is already up)."""
    ledger = Ledger()

    def between(wait: float = 0.0) -> None:
        # Take the results that are already in (waiting up to `wait`), so each is recorded,
        # and its latency measured, when it arrives.
        result = backend.receive_result(wait)
        while result is not None:
            ledger.record_result(result)
            result = backend.receive_result(0)
        tick()

    send(job, backend, ledger, Progress(), between=between)
    collect(backend, ledger, Progress(), until=time.perf_counter() + timeout, tick=tick)
    return ledger


def first_results(ledger: Ledger) -> list[TaskResult]:
    """Each task's first successful result, in the order they reached the producer."""
    firsts = []
    for results in ledger.results.values():
        done = [r for r in results if r.status is TaskStatus.DONE]
        if done:
            firsts.append(done[0])
    return firsts


def seconds(ledger: Ledger) -> float:
    return (ledger.finished or time.perf_counter()) - ledger.started


def percentile_ms(values: list[float], pct: int) -> float | None:
    """The pct-th percentile of seconds, in milliseconds."""
    value = percentile(values, pct)
    return None if value is None else round(value * 1000, 2)


def out_of_order(seqs: list[int]) -> int:
    """How many numbers came after a higher one (0: the order was kept)."""
    highest, late = -1, 0
    for seq in seqs:
        late += seq < highest
        highest = max(highest, seq)
    return late


@dataclass
class CourseRun:
    """One run of a course example (`lessons.course`): what it printed, and when."""

    args: list[str]
    #: (seconds since start, line) for every line it printed, in order
    lines: list[tuple[float, str]]
    returncode: int
    #: seconds from its start until its main process had exited
    exit_seconds: float
    errors: str = ""

    def printed(self, text: str) -> int:
        """How many of its lines contain `text`."""
        return sum(text in line for _, line in self.lines)


def run_course(
    name: str,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], None] = lambda line: None,
) -> CourseRun:
    """Run ``python -m lessons.course.<name> <args>`` and collect its lines as they come;
    `echo` gets each line with its time.

    Its stdout is line-buffered, as on a terminal: each line leaves when it is printed, in one
    write (unbuffered, print writes the text and the newline apart, and the lines of two
    processes would interleave mid-line).
    """
    import subprocess
    import threading

    launch = (
        "import runpy, sys; sys.stdout.reconfigure(line_buffering=True, write_through=False); "
        f"sys.argv = ['-m', *{list(args)!r}]; "
        f"runpy.run_module('lessons.course.{name}', run_name='__main__', alter_sys=True)"
    )
    started = time.monotonic()
    program = subprocess.Popen(
        python("-c", launch),
        cwd=cwd,
        env={k: v for k, v in project_env().items() if k != "PYTHONUNBUFFERED"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert program.stdout is not None and program.stderr is not None
    lines: list[tuple[float, str]] = []
    errors: list[str] = []

    def read_errors() -> None:
        assert program.stderr is not None
        errors.append(program.stderr.read())

    reader = threading.Thread(target=read_errors, daemon=True)
    reader.start()
    exited: list[float] = []

    def watch_exit() -> None:
        program.wait()
        exited.append(time.monotonic() - started)

    watcher = threading.Thread(target=watch_exit, daemon=True)
    watcher.start()
    try:
        for raw in program.stdout:  # until every process holding the pipe has ended
            line = raw.rstrip("\n")
            at = time.monotonic() - started
            lines.append((round(at, 2), line))
            echo(f"{at:5.2f} s  {line}")
            if at > timeout:
                raise TaskshuttleError(f"the course's {name} example ran over {timeout:g} s")
        program.wait(timeout)
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
        watcher.join(5)
        reader.join(5)
        program.stdout.close()
        program.stderr.close()
    return CourseRun(
        list(args),
        lines,
        program.returncode,
        round(exited[0] if exited else time.monotonic() - started, 2),
        "".join(errors).strip(),
    )
