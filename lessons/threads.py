"""线程 (threads): `threading.Thread` itself, then the same worker loop run as N processes or
as N threads of one process.

First the basics: threads start and join like processes, each has its own name
(`current_thread().name`) but all report the one pid of their process, and they share its data
(a global a thread changes is changed for all; a child process changes its own copy). Shared
data means races: a counter whose read and write a thread switch can come between loses
updates, and a `threading.Lock` around them loses none.

Then the measurements.

CPU-bound tasks need the interpreter all the time, and CPython lets one thread of a process
run Python code at once (the GIL): threads take turns, processes run side by side. Tasks that
sleep (or wait on the network or disk) release the GIL, so threads overlap as well as
processes do, and cost less.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common.errors import TaskshuttleError
from common.factory import local_broker
from common.local import LocalBroker
from common.schemas import TaskEnvelope
from common.settings import load_settings
from consumer.handlers import registry
from consumer.spec import WorkerSpec
from consumer.threads import ThreadWorkers
from consumer.worker import Worker, WorkerOptions
from lessons import show
from lessons.i18n import t
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
class ThreadSeen:
    name: str  # threading.current_thread().name
    pid: int  # os.getpid(), in that thread
    native_id: int  # the kernel's id of the thread


@dataclass
class Basics:
    main: ThreadSeen
    threads: list[ThreadSeen]
    #: a global, 100, set to 0 by a thread / by a child process: what the main thread sees
    after_thread: int
    after_process: int


@dataclass
class Race:
    locked: bool
    threads: int
    rounds: int  # increments per thread
    expected: int
    got: int
    lost: int
    seconds: float


@dataclass
class Threads:
    backend: str
    workers: int
    runs: list[ThreadRun] = field(default_factory=list)
    #: The machine's 1-minute load average when the lesson started, and its cores.
    load: float = 0.0
    cores: int = 0
    repeat: int = 1  # runs of each configuration; the fastest is shown
    basics: Basics | None = None
    races: list[Race] = field(default_factory=list)


# -- threading.Thread itself ------------------------------------------------------------------
def _introduce(seen: list[ThreadSeen]) -> None:
    me = threading.current_thread()
    seen.append(ThreadSeen(me.name, os.getpid(), threading.get_native_id()))


money = 100  # a global of this module: one copy per process, shared by its threads


def _spend() -> None:
    global money
    money = 0


def _reset() -> None:
    global money
    money = 100


def basics(count: int = 3) -> Basics:
    """Start `count` threads, join them; then change a global from a thread and from a
    child process, and look at it from here."""
    seen: list[ThreadSeen] = []
    threads = [
        threading.Thread(target=_introduce, args=(seen,))  # named by Python: Thread-N (...)
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen.sort(key=lambda s: s.name)
    main: list[ThreadSeen] = []
    _introduce(main)

    _reset()
    spender = threading.Thread(target=_spend)
    spender.start()
    spender.join()
    after_thread = money
    _reset()
    child = multiprocessing.get_context("spawn").Process(target=_spend)
    child.start()
    child.join()
    after_process = money
    return Basics(main[0], seen, after_thread, after_process)


class _Counter:
    value = 0


def _add(counter: _Counter, rounds: int, lock: Any, pause: float, start: threading.Barrier) -> None:
    start.wait()  # every thread begins at once
    for _ in range(rounds):
        with lock:
            seen = counter.value  # read
            time.sleep(pause)  # a switch point: another thread runs here
            counter.value = seen + 1  # write back what was read, plus one


def race(locked: bool, threads: int = 4, rounds: int = 100, pause: float = 0.001) -> Race:
    """`threads` threads add 1 to one shared counter `rounds` times each, reading it, pausing
    (any thread switch between a read and its write would do; the pause makes one certain),
    then writing. With `locked`, read-pause-write is done under one `threading.Lock`."""
    counter = _Counter()
    lock: Any = threading.Lock() if locked else contextlib.nullcontext()
    start = threading.Barrier(threads)
    workers = [
        threading.Thread(target=_add, args=(counter, rounds, lock, pause, start))
        for _ in range(threads)
    ]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    took = round(time.perf_counter() - began, 3)
    expected = threads * rounds
    return Race(locked, threads, rounds, expected, counter.value, expected - counter.value, took)


@contextlib.contextmanager
def local_threads(n: int) -> Iterator[LocalBroker]:
    """N threads of this process, each running the project's `Worker` loop on the local
    backend. (`consumer --pool thread` runs on RabbitMQ only; this is the local twin.)"""
    import lessons.tasks  # noqa: F401 - the lesson's task kinds, in this process

    parent = local_broker(n)
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
    """The basics and the race, then each configuration `repeat` times, keeping its fastest
    run (the least disturbed by whatever else the machine was doing)."""
    result = Threads(backend, workers, load=round(os.getloadavg()[0], 2))
    result.cores, result.repeat = os.cpu_count() or 0, repeat
    if show.is_live():
        show.heading(t("threads.title", backend=backend, pid=os.getpid()))
        show.code(BASICS_CODE)
    with show.step("threads.step.basics"):
        result.basics = basics()
    show.part(render_basics, result)
    for locked in (False, True):
        with show.step("threads.step.race", how=_race_label(locked)):
            result.races.append(race(locked))
    show.part(render_race, result)

    def best(workload: str, pool: str, n: int) -> ThreadRun:
        with show.step(
            "threads.step.measure",
            workload=t(f"threads.{workload}"),
            who=_who(pool, n),
            repeat=repeat,
        ):
            runs = [measure(backend, workload, pool, n, url=url, **sizes) for _ in range(repeat)]
        return min(runs, key=lambda r: r.seconds)

    for workload in ("cpu", "sleep"):
        base = best(workload, "process", 1)
        base.speedup = 1.0
        result.runs.append(base)
        for pool in ("process", "thread"):
            one = best(workload, pool, workers)
            one.speedup = round(base.seconds / one.seconds, 2)
            result.runs.append(one)
    show.part(render_measures, result)
    return result


BASICS_CODE = """
from threading import Thread, current_thread
import os

def task():
    print(current_thread().name, os.getpid())

t = Thread(target=task)
t.start()
t.join()
"""


def _who(pool: str, n: int) -> str:
    return t(f"threads.who.{pool}", n=n)


def _race_label(locked: bool) -> str:
    return t("threads.race.with_lock") if locked else t("threads.race.without_lock")


def render(result: Threads) -> None:
    show.heading(t("threads.title", backend=result.backend, pid=os.getpid()))
    show.code(BASICS_CODE)
    render_basics(result)
    render_race(result)
    render_measures(result)


def render_basics(result: Threads) -> None:
    b = result.basics
    if b is None:
        return
    show.table(
        t("threads.basics.table"),
        [t("threads.col.name"), "os.getpid()", "threading.get_native_id()"],
        [(s.name, s.pid, s.native_id) for s in [b.main, *b.threads]],
    )
    pids = {s.pid for s in [b.main, *b.threads]}
    key = "threads.basics.one_pid" if len(pids) == 1 else "threads.basics.pids"
    show.note(t(key, pid=b.main.pid, count=len(b.threads)))
    show.note(
        t("threads.basics.shared", after_thread=b.after_thread, after_process=b.after_process)
    )


def render_race(result: Threads) -> None:
    if not result.races:
        return
    first = result.races[0]
    show.table(
        t("threads.race.table", threads=first.threads, rounds=first.rounds),
        [
            "",
            t("threads.col.expected"),
            t("threads.col.got"),
            t("threads.col.lost"),
            t("threads.col.seconds"),
        ],
        [(_race_label(r.locked), r.expected, r.got, r.lost, r.seconds) for r in result.races],
    )
    by = {r.locked: r for r in result.races}
    if True in by and False in by:
        unlocked, locked = by[False], by[True]
        key = "threads.race.note" if unlocked.lost and not locked.lost else "threads.race.odd"
        show.note(
            t(
                key,
                lost=unlocked.lost,
                expected=unlocked.expected,
                locked_lost=locked.lost,
                locked_s=locked.seconds,
                unlocked_s=unlocked.seconds,
            )
        )


def render_measures(result: Threads) -> None:
    if not result.runs:
        return
    show.table(
        t("threads.measure.table", repeat=result.repeat),
        [
            t("threads.col.workload"),
            t("threads.col.workers"),
            t("threads.col.tasks"),
            t("threads.col.seconds"),
            t("threads.col.speedup"),
            t("threads.col.cores_busy"),
            t("threads.col.at_once"),
            "pids",
        ],
        [
            (
                t(f"threads.{r.workload}"),
                _who(r.pool, r.workers),
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
    for line in conclusions(result):
        show.note(line)


def conclusions(result: Threads) -> list[str]:
    """What the figures say, each sentence chosen from the measured ratios."""
    by = {(r.workload, r.pool, r.workers): r for r in result.runs}
    n = result.workers
    lines = [t("threads.measure.machine", cores=result.cores, load=result.load)]
    procs, threads_ = by.get(("cpu", "process", n)), by.get(("cpu", "thread", n))
    if procs and threads_:
        if procs.speedup >= 1 + 0.5 * (min(n, result.cores or n) - 1):
            key = "threads.cpu.processes_parallel"
        else:
            key = "threads.cpu.processes_starved"
        lines.append(t(key, n=n, speedup=procs.speedup, cores=procs.cores_busy, load=result.load))
        key = "threads.cpu.threads_gil" if threads_.speedup <= 1.2 else "threads.cpu.threads_gain"
        lines.append(t(key, n=n, speedup=threads_.speedup, cores=threads_.cores_busy))
    procs, threads_ = by.get(("sleep", "process", n)), by.get(("sleep", "thread", n))
    if procs and threads_:
        close = threads_.speedup >= 0.8 * procs.speedup
        key = "threads.sleep.as_well" if close else "threads.sleep.behind"
        lines.append(
            t(key, n=n, threads=threads_.speedup, processes=procs.speedup, at_once=threads_.at_once)
        )
    lines.append(t("threads.measure.pids"))
    return lines
