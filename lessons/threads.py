"""线程 (threads): the same worker loop run as N processes or as N threads of one process.

CPU-bound tasks need the interpreter all the time, and CPython lets one thread of a process
run Python code at once (the GIL): threads take turns, processes run side by side. Tasks that
sleep (or wait on the network or disk) release the GIL, so threads overlap as well as
processes do, and cost less.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from common.errors import TaskshuttleError
from common.local import LocalBroker
from common.schemas import TaskEnvelope
from common.settings import load_settings
from consumer.handlers import registry
from consumer.supervisor import ThreadWorkers, WorkerSpec
from consumer.worker import Worker, WorkerOptions
from lessons import show
from lessons.runner import (
    HANDLERS,
    broker_queue,
    first_results,
    job_of,
    rabbit_pool,
    run_job,
    seconds,
)
from producer.run import run_local


@dataclass
class ThreadRun:
    backend: str
    workload: str  # cpu or sleep
    pool: str  # process or thread
    workers: int
    tasks: int
    seconds: float
    speedup: float  # against one worker
    #: CPU seconds the handlers used, per wall-clock second: how many cores did Python work.
    cores_busy: float | None
    pids: int  # distinct worker pids among the results
    at_once: int  # most tasks running at the same moment (from their start and end times)


@dataclass
class Threads:
    backend: str
    workers: int
    runs: list[ThreadRun]
    #: The machine's 1-minute load average when the lesson started, and its cores.
    load: float = 0.0
    cores: int = 0
    repeat: int = 1  # runs of each configuration; the fastest is shown


@contextlib.contextmanager
def local_threads(n: int) -> Iterator[LocalBroker]:
    """N threads of this process, each running the project's `Worker` loop on the local
    backend. (`consumer --pool thread` runs on RabbitMQ only; this is the local twin.)"""
    import lessons.tasks  # noqa: F401 - the lesson's task kinds, in this process

    parent = LocalBroker(slots=n)
    stop = threading.Event()
    # Each thread takes the end of its slot. The writers stay open on the parent's side too:
    # here it is one and the same object, in one process.
    ends = [parent.slots.worker_end(i) for i in range(n)]
    workers = [Worker(end, registry, WorkerOptions(), stop) for end in ends]
    threads = [
        threading.Thread(target=w.run, name=f"worker-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        yield parent
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        parent.close()


@contextlib.contextmanager
def rabbit_threads(url: str, queue: str, n: int) -> Iterator[ThreadWorkers]:
    """`consumer --pool thread`: N threads of this process, one connection each."""
    import lessons.tasks  # noqa: F401

    settings = load_settings(amqp_url=url, queue=queue, prefetch=1, workers=n)
    pool = ThreadWorkers(WorkerSpec(settings, WorkerOptions(), HANDLERS), n)
    pool.start()
    try:
        if not pool.wait_ready():
            raise TaskshuttleError("the worker threads did not start")
        time.sleep(0.3)  # each thread's first receive() registers its consumer
        yield pool
    finally:
        pool.stop()


def _tasks(workload: str, count: int, rounds: int, nap: float) -> list[TaskEnvelope]:
    if workload == "cpu":
        return [TaskEnvelope(kind="lesson.spin", payload={"rounds": rounds}) for _ in range(count)]
    return [TaskEnvelope(kind="sleep", payload={"seconds": nap}) for _ in range(count)]


def measure(
    backend: str,
    workload: str,
    pool: str,
    workers: int,
    *,
    tasks: int = 16,
    rounds: int = 130_000,
    nap: float = 0.05,
    url: str | None = None,
) -> ThreadRun:
    job = job_of(_tasks(workload, tasks, rounds, nap))
    url = load_settings(amqp_url=url).amqp_url
    if backend == "local" and pool == "process":
        ledger, _ = run_local(
            job,
            load_settings(workers=workers),
            options=WorkerOptions(),
            timeout=120,
            handler_modules=HANDLERS,
        )
    elif backend == "local":
        with local_threads(workers) as local:
            ledger = run_job(job, local, timeout=120)
    else:
        with contextlib.ExitStack() as stack:
            producer = stack.enter_context(broker_queue(url, "threads"))
            if pool == "process":
                procs = stack.enter_context(rabbit_pool(url, producer, workers, prefetch=1))
                ledger = run_job(job, producer, timeout=120, tick=procs.check)
            else:
                stack.enter_context(rabbit_threads(url, producer.queue_name, workers))
                ledger = run_job(job, producer, timeout=120)
    answers = first_results(ledger)
    took = seconds(ledger)
    cores = None
    if workload == "cpu":
        cores = round(sum(r.value["cpu_s"] for r in answers) / took, 2)
    pids = len({r.worker_pid for r in answers})
    done = len(answers)
    overlap = most_at_once(answers)
    return ThreadRun(
        backend, workload, pool, workers, done, round(took, 3), 0.0, cores, pids, overlap
    )


def most_at_once(results: list[Any]) -> int:
    """The most tasks that were running at one moment, from each one's start and end."""
    edges = sorted(
        [(r.started_at, 1) for r in results] + [(r.finished_at, -1) for r in results],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def run(
    backend: str = "local",
    workers: int = 2,
    url: str | None = None,
    repeat: int = 2,
    **sizes: Any,
) -> Threads:
    """Each configuration `repeat` times, keeping its fastest run (the least disturbed by
    whatever else the machine was doing)."""
    load = round(os.getloadavg()[0], 2)

    def best(workload: str, pool: str, n: int) -> ThreadRun:
        runs = [measure(backend, workload, pool, n, url=url, **sizes) for _ in range(repeat)]
        return min(runs, key=lambda r: r.seconds)

    runs: list[ThreadRun] = []
    for workload in ("cpu", "sleep"):
        base = best(workload, "process", 1)
        base.speedup = 1.0
        runs.append(base)
        for pool in ("process", "thread"):
            one = best(workload, pool, workers)
            one.speedup = round(base.seconds / one.seconds, 2)
            runs.append(one)
    return Threads(backend, workers, runs, load, os.cpu_count() or 0, repeat)


def render(result: Threads) -> None:
    show.heading(f"线程 (threads) · backend {result.backend} · this process is pid {os.getpid()}")
    show.table(
        f"the same Worker loop as processes or as threads (fastest of {result.repeat} runs each)",
        ["workload", "workers", "tasks", "seconds", "speedup", "cores busy", "at once", "pids"],
        [
            (
                f"{r.workload}-bound",
                f"{r.workers} {r.pool}{'es' if r.pool == 'process' else 's'}"
                if r.workers > 1
                else f"1 {r.pool}",
                r.tasks,
                r.seconds,
                f"x{r.speedup}",
                r.cores_busy,
                r.at_once,
                r.pids,
            )
            for r in result.runs
        ],
    )
    show.note(
        f"{result.cores} cores; load average {result.load} when this began (other programs "
        "take cores from the workers). "
        "cpu-bound: processes run on separate cores (cores busy near the number of workers, "
        "up to the machine's cores); threads share one interpreter lock, so they never keep "
        "more than one core busy and gain nothing. sleep-bound: a sleeping thread releases the "
        "lock, so threads overlap as well as processes. `pids` shows which is which: threads "
        "all report this one process."
    )
