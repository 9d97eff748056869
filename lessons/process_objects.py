"""进程对象及其他方法 (process objects): pid, ppid, `current_process()`, `terminate()`,
`is_alive()`, `join()`; then who runs the tasks of a job, on each backend."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import current_process
from typing import Any

from common.errors import TaskshuttleError
from common.local import MP_CONTEXT
from common.settings import load_settings
from consumer.worker import WorkerOptions
from lessons import show
from lessons.i18n import t
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
    child: Identity | None = None
    terminations: list[TerminateTry] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    #: Who started the workers: this process (local) or a `consumer` program (rabbitmq).
    supervisor_pid: int = 0
    tasks: int = 0


COURSE_CODE = """
from multiprocessing import Process, current_process
current_process().pid # 查看当前进程的进程号
import os
os.getpid() # 查看当前进程的pid号
os.getppid()# 查看当前进程的父进程pid号
p = Process(target=task)
p.terminate() # 杀死当前进程
# 是告诉操作系统帮我杀死当前进程 但是需要一定的时间 而代码运行的速度极其的快
print(p.is_alive()) # 判断当前进程是否存活
"""


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
    result = ProcessObjects(backend, identity(), tasks=tasks)
    if show.is_live():
        show.heading(t("objects.title", backend=backend))
        show.code(COURSE_CODE)
    with show.step("objects.step.child"):
        result.child = child_identity()
    show.part(render_identity, result)
    with show.step("objects.step.terminate", tries=tries):
        result.terminations = [terminate_once() for _ in range(tries)]
    show.part(render_terminate, result)
    job = Job(count=tasks, kind="sleep", payload={"seconds": 0.01})
    with show.step(f"objects.step.job.{backend}", tasks=tasks):
        if backend == "local":
            settings = load_settings(workers=2)
            ledger, _ = run_local(job, settings, options=WorkerOptions(), timeout=60)
            supervisor = os.getpid()
        else:
            ledger, supervisor = _on_rabbitmq(job, url)
    results = [r for rs in ledger.results.values() for r in rs]
    result.workers, result.supervisor_pid = _rows(results), supervisor
    show.part(render_workers, result)
    return result


def _on_rabbitmq(job: Job, url: str | None) -> tuple[Any, int]:
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
        return ledger, consumer.pid


def _alive(program: subprocess.Popen[str]) -> None:
    if program.poll() is not None:
        raise TaskshuttleError(f"consumer exited early with code {program.returncode}")


def render(result: ProcessObjects) -> None:
    show.heading(t("objects.title", backend=result.backend))
    show.code(COURSE_CODE)
    render_identity(result)
    render_terminate(result)
    render_workers(result)


def render_identity(result: ProcessObjects) -> None:
    me, child = result.me, result.child
    if child is None:
        return
    show.table(
        t("objects.who.table"),
        ["", "current_process().name", "current_process().pid", "os.getpid()", "os.getppid()"],
        [
            (t("objects.who.me"), me.name, me.pid, me.getpid, me.getppid),
            (t("objects.who.child"), child.name, child.pid, child.getpid, child.getppid),
        ],
    )
    key = "objects.who.note" if child.getppid == me.pid else "objects.who.odd"
    show.note(t(key, pid=me.pid, ppid=me.getppid, child=child.pid))


def render_terminate(result: ProcessObjects) -> None:
    if not result.terminations:
        return
    show.table(
        t("objects.terminate.table"),
        [
            t("objects.col.try"),
            t("objects.col.alive_at_once"),
            t("objects.col.join_ms"),
            t("objects.col.alive_after"),
            "exitcode",
        ],
        [
            (n, term.alive_right_after, term.join_ms, term.alive_after_join, term.exitcode)
            for n, term in enumerate(result.terminations, 1)
        ],
    )
    alive = sum(term.alive_right_after for term in result.terminations)
    show.note(t("objects.terminate.note", alive=alive, tries=len(result.terminations)))


def render_workers(result: ProcessObjects) -> None:
    if not result.workers:
        return
    show.table(
        t("objects.workers.table", tasks=result.tasks),
        [
            t("objects.col.host"),
            t("objects.col.name"),
            "pid",
            "ppid",
            t("objects.col.tasks"),
        ],
        [(w.host, w.name, w.pid, w.ppid, w.tasks) for w in result.workers],
    )
    show.note(
        t(f"objects.workers.{result.backend}", supervisor=result.supervisor_pid, me=result.me.pid)
    )
