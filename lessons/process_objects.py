"""进程对象及其他方法 (process objects): pid, ppid, `current_process()`, `terminate()`,
`is_alive()`, `join()`; then who runs the tasks of a job, on each backend."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing import current_process
from typing import Any

from common.errors import TaskshuttleError
from common.local import MP_CONTEXT
from common.settings import load_settings
from consumer.worker import WorkerOptions
from lessons import show
from lessons.runner import broker_queue, project_env, python, run_job
from producer.run import Job, run_local


@dataclass
class Identity:
    name: str  # current_process().name
    pid: int  # current_process().pid
    getpid: int  # os.getpid()
    getppid: int  # os.getppid()


@dataclass
class TerminateTry:
    alive_right_after: bool  # p.is_alive() just after p.terminate()
    join_ms: float  # how long p.join() then waited
    alive_after_join: bool
    exitcode: int | None


@dataclass
class WorkerRow:
    host: str
    name: str
    pid: int
    ppid: int
    tasks: int


@dataclass
class ProcessObjects:
    backend: str
    me: Identity
    child: Identity
    terminations: list[TerminateTry]
    workers: list[WorkerRow]
    #: Who started the workers: this process (local) or a `consumer` program (rabbitmq).
    supervisor_pid: int
    tasks: int = 0


def identity() -> Identity:
    me = current_process()
    return Identity(me.name, me.pid or 0, os.getpid(), os.getppid())


def _introduce(answer: Any) -> None:
    """A child tells its parent who it is (the queue carries it back)."""
    answer.put(identity())


def child_identity() -> Identity:
    answer = MP_CONTEXT.Queue()
    child = MP_CONTEXT.Process(target=_introduce, args=(answer,), name="child-1")
    child.start()
    try:
        return answer.get(timeout=30)
    finally:
        child.join()
        answer.close()
        answer.join_thread()


def terminate_once() -> TerminateTry:
    sleeper = MP_CONTEXT.Process(target=time.sleep, args=(60,), name="sleeper")
    sleeper.start()
    sleeper.terminate()  # asks the OS to send SIGTERM; it returns before the child is dead
    alive = sleeper.is_alive()
    started = time.perf_counter()
    sleeper.join()  # waits for the death, and reaps it
    waited = (time.perf_counter() - started) * 1000
    return TerminateTry(alive, round(waited, 2), sleeper.is_alive(), sleeper.exitcode)


def _rows(results: list) -> list[WorkerRow]:  # type: ignore[type-arg]
    counts = Counter((r.worker_host, r.worker_name, r.worker_pid, r.worker_ppid) for r in results)
    return [WorkerRow(*key, tasks=n) for key, n in sorted(counts.items(), key=lambda i: i[0][2])]


def run(
    backend: str = "local", url: str | None = None, tasks: int = 20, tries: int = 3
) -> ProcessObjects:
    me = identity()
    child = child_identity()
    terminations = [terminate_once() for _ in range(tries)]
    job = Job(count=tasks, kind="sleep", payload={"seconds": 0.01})
    if backend == "local":
        settings = load_settings(workers=2)
        ledger, _ = run_local(job, settings, options=WorkerOptions(), timeout=60)
        supervisor = os.getpid()
    else:
        settings = load_settings(amqp_url=url)
        with broker_queue(settings.amqp_url, "process-objects") as producer:
            # The consumer is a program of its own, as it would be on another machine.
            consumer = subprocess.Popen(
                python(
                    *("-m", "consumer", "--queue", producer.queue_name),
                    *("--workers", "2", "--prefetch", "1"),
                ),
                env=project_env(settings.amqp_url),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                ledger = run_job(job, producer, timeout=60, tick=lambda: _alive(consumer))
            finally:
                if consumer.poll() is None:
                    consumer.send_signal(signal.SIGTERM)  # finish the task in hand, then exit
                _, errors = consumer.communicate(timeout=30)
            if consumer.returncode != 0:
                raise TaskshuttleError(f"consumer exited {consumer.returncode}: {errors.strip()}")
            supervisor = consumer.pid
    results = [r for rs in ledger.results.values() for r in rs]
    return ProcessObjects(backend, me, child, terminations, _rows(results), supervisor, tasks)


def _alive(program: subprocess.Popen[str]) -> None:
    if program.poll() is not None:
        raise TaskshuttleError(f"consumer exited early with code {program.returncode}")


def render(result: ProcessObjects) -> None:
    me, child = result.me, result.child
    show.heading(f"进程对象 (process objects) · backend {result.backend}")
    show.table(
        "who is who",
        ["", "current_process().name", "current_process().pid", "os.getpid()", "os.getppid()"],
        [
            ("this process", me.name, me.pid, me.getpid, me.getppid),
            ("a child it started", child.name, child.pid, child.getpid, child.getppid),
        ],
    )
    show.table(
        "p.terminate(), then at once p.is_alive(); then p.join()",
        ["try", "is_alive() at once", "join() waited (ms)", "is_alive() after join", "exitcode"],
        [
            (n, t.alive_right_after, t.join_ms, t.alive_after_join, t.exitcode)
            for n, t in enumerate(result.terminations, 1)
        ],
    )
    alive = sum(t.alive_right_after for t in result.terminations)
    show.note(
        f"is_alive() right after terminate() said True in {alive} of {len(result.terminations)} "
        "tries: terminate() only asks the OS to send SIGTERM; the child dies a moment later. "
        "join() waits for that moment (exitcode -15 = killed by SIGTERM)."
    )
    show.table(
        f"who ran the {result.tasks} tasks (every result names its worker)",
        ["host", "process name", "pid", "ppid", "tasks"],
        [(w.host, w.name, w.pid, w.ppid, w.tasks) for w in result.workers],
    )
    if result.backend == "local":
        show.note(
            f"ppid = {result.supervisor_pid} = this process: locally the producer is the "
            "workers' parent, and they live and die in its process tree."
        )
    else:
        show.note(
            f"ppid = {result.supervisor_pid}: the `consumer` program, not this producer "
            f"(pid {me.pid}). On RabbitMQ producer and workers are no relatives; the host "
            "column would name another machine if the consumer ran there."
        )
