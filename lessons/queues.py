"""队列 and 进程间通信 (queues and IPC): first in, first out; what `Queue`'s `full()`,
`empty()` and `qsize()` can promise across processes; and when FIFO order holds on a backend."""

from __future__ import annotations

import contextlib
import os
import queue
from dataclasses import dataclass, field
from typing import Any

from common.local import MP_CONTEXT
from common.settings import load_settings
from consumer.worker import WorkerOptions
from lessons import show
from lessons.i18n import t
from lessons.runner import (
    HANDLERS,
    NumberedJob,
    broker_queue,
    first_results,
    out_of_order,
    rabbit_pool,
    run_job,
)
from producer.run import run_local


@dataclass
class Caveats:
    queue_order: list[int]  # queue.Queue: put 1..5, get
    stack_order: list[int]  # queue.LifoQueue, a stack
    maxsize: int
    full_after_puts: bool  # full() once maxsize items are in
    put_when_full: str  # what put(timeout=0.1) did then
    tries: int
    empty_right_after_put: int  # how often empty() said True just after a put()
    qsize: int | None  # None: NotImplementedError (macOS)
    child_said: str  # a message a child process put on the queue (IPC)
    child_pid: int


@dataclass
class OrderRun:
    backend: str
    consumers: int
    tasks: int
    first_arrivals: list[int]  # the first task numbers, in the order results came back
    out_of_order: int  # results that came after a later-numbered one
    each_worker_in_order: bool  # every worker took its tasks in sent order
    workers_used: int


@dataclass
class Queues:
    backend: str
    caveats: Caveats | None = None
    runs: list[OrderRun] = field(default_factory=list)


COURSE_TEXT = """
进程间通信
队列Queue模块
队列:先进先出
堆栈:先进后出
"""


def _say_hello(channel: Any) -> None:
    channel.put((os.getpid(), f"hello from pid {os.getpid()}"))


def caveats(tries: int = 200) -> Caveats:
    fifo: queue.Queue[int] = queue.Queue()
    stack: queue.LifoQueue[int] = queue.LifoQueue()
    for n in range(1, 6):
        fifo.put(n)
        stack.put(n)
    queue_order = [fifo.get() for _ in range(5)]
    stack_order = [stack.get() for _ in range(5)]

    bounded = MP_CONTEXT.Queue(3)
    for n in range(3):
        bounded.put(n)
    full = bounded.full()
    try:
        bounded.put(3, timeout=0.1)
        put_when_full = "went in"
    except queue.Full:
        put_when_full = "raised queue.Full after waiting 0.1 s"
    size: int | None
    try:
        size = bounded.qsize()
    except NotImplementedError:
        size = None
    while not bounded.empty():
        bounded.get()

    # put() hands the item to a background feeder thread, which writes it into a pipe a
    # moment later; empty() looks at the pipe. So right after put(), empty() may say True.
    probe = MP_CONTEXT.Queue()
    empty_after_put = 0
    for n in range(tries):
        probe.put(n)
        empty_after_put += probe.empty()
        probe.get()

    # IPC: a child's message crosses into this process through the same kind of queue.
    child = MP_CONTEXT.Process(target=_say_hello, args=(probe,))
    child.start()
    child_pid, said = probe.get(timeout=30)
    child.join()
    for q in (bounded, probe):
        q.close()
        q.join_thread()
    return Caveats(
        queue_order,
        stack_order,
        3,
        full,
        put_when_full,
        tries,
        empty_after_put,
        size,
        said,
        child_pid,
    )


def _order(backend: str, consumers: int, ledger: Any, tasks: int) -> OrderRun:
    answers = first_results(ledger)
    seqs = [r.value for r in answers]
    late = out_of_order(seqs)
    per_worker: dict[int, list[int]] = {}
    for r in answers:
        per_worker.setdefault(r.worker_pid, []).append(r.value)
    in_order = all(taken == sorted(taken) for taken in per_worker.values())
    return OrderRun(backend, consumers, tasks, seqs[:12], late, in_order, len(per_worker))


def order_run(backend: str, consumers: int, tasks: int = 200, url: str | None = None) -> OrderRun:
    job = NumberedJob(count=tasks, kind="lesson.seq", payload={"jitter_ms": 2})
    if backend == "local":
        settings = load_settings(workers=consumers)
        ledger, _ = run_local(
            job, settings, options=WorkerOptions(), timeout=60, handler_modules=HANDLERS
        )
    else:
        url = load_settings(amqp_url=url).amqp_url
        with contextlib.ExitStack() as stack:
            producer = stack.enter_context(broker_queue(url, "queues"))
            pool = stack.enter_context(rabbit_pool(url, producer, consumers))
            ledger = run_job(job, producer, timeout=60, tick=pool.check)
    return _order(backend, consumers, ledger, tasks)


def run(backend: str = "local", url: str | None = None, tasks: int = 200) -> Queues:
    result = Queues(backend)
    if show.is_live():
        show.heading(t("queues.title", backend=backend))
        show.code(COURSE_TEXT)
    with show.step("queues.step.caveats"):
        result.caveats = caveats()
    show.part(render_caveats, result)
    for n in (1, 3):
        with show.step(f"queues.step.order.{backend}", tasks=tasks, consumers=n):
            result.runs.append(order_run(backend, n, tasks, url))
    show.part(render_order, result)
    return result


def render(result: Queues) -> None:
    show.heading(t("queues.title", backend=result.backend))
    show.code(COURSE_TEXT)
    render_caveats(result)
    render_order(result)


def render_caveats(result: Queues) -> None:
    c = result.caveats
    if c is None:
        return
    full = "queues.full_raised" if c.put_when_full.startswith("raised") else "queues.full_went_in"
    show.trace(
        [
            t("queues.fifo", order=c.queue_order),
            t("queues.lifo", order=c.stack_order),
            t("queues.full", maxsize=c.maxsize, full=c.full_after_puts),
            t(full),
            t("queues.qsize", size=c.qsize) if c.qsize is not None else t("queues.qsize_none"),
            t("queues.empty", empty=c.empty_right_after_put, tries=c.tries),
            t("queues.ipc", said=c.child_said, pid=c.child_pid),
        ]
    )
    show.note(t("queues.caveats.note"))


def render_order(result: Queues) -> None:
    if not result.runs:
        return
    show.table(
        t("queues.order.table"),
        [
            t("queues.col.consumers"),
            t("queues.col.first"),
            t("queues.col.out_of_order"),
            t("queues.col.each_in_order"),
        ],
        [
            (
                r.consumers,
                " ".join(map(str, r.first_arrivals)) + " ...",
                t("queues.of", n=r.out_of_order, tasks=r.tasks),
                r.each_worker_in_order,
            )
            for r in result.runs
        ],
    )
    one = next((r for r in result.runs if r.consumers == 1), None)
    several = next((r for r in result.runs if r.consumers > 1), None)
    if one and several:
        key = (
            "queues.order.note"
            if one.out_of_order == 0 and several.out_of_order > 0
            else "queues.order.odd"
        )
        show.note(t(key, late=several.out_of_order, tasks=several.tasks))
    if result.backend == "rabbitmq":
        show.note(t("queues.order.rabbitmq"))
