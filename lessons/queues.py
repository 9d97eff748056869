"""队列 and 进程间通信 (queues and IPC): first in, first out; what `Queue`'s `full()`,
`empty()` and `qsize()` can promise across processes; and when FIFO order holds on a backend."""

from __future__ import annotations

import contextlib
import os
import queue
from dataclasses import dataclass
from typing import Any

from common.local import MP_CONTEXT
from common.settings import load_settings
from consumer.worker import WorkerOptions
from lessons import show
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
    qsize: str
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
    caveats: Caveats
    runs: list[OrderRun]


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
    try:
        size = f"{bounded.qsize()} (works on Linux; NotImplementedError on macOS)"
    except NotImplementedError:
        size = "NotImplementedError (macOS)"
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
    runs = [order_run(backend, n, tasks, url) for n in (1, 3)]
    return Queues(backend, caveats(), runs)


def render(result: Queues) -> None:
    c = result.caveats
    show.heading(f"队列 / 进程间通信 (queues and IPC) · backend {result.backend}")
    show.trace(
        [
            f"queue.Queue, put 1..5 then get: {c.queue_order}  (队列: first in, first out)",
            f"queue.LifoQueue (a stack):      {c.stack_order}  (堆栈: first in, last out)",
            f"multiprocessing.Queue({c.maxsize}) after {c.maxsize} puts: full() -> "
            f"{c.full_after_puts}",
            f"one more put(timeout=0.1): {c.put_when_full}",
            f"qsize(): {c.qsize}",
            f"empty() right after put(): True in {c.empty_right_after_put} of {c.tries} tries",
            f"a child put {c.child_said!r} on the queue; this process got it (IPC)",
        ]
    )
    show.note(
        "put() returns before the item is in the pipe (a feeder thread writes it), and other "
        "processes put and get at the same time: full(), empty() and qsize() are only "
        "snapshots. Use get(timeout=...) and handle queue.Empty instead of asking first."
    )
    show.table(
        "FIFO order of results, tasks numbered as sent",
        ["consumers", "first results to come back", "out of order", "each worker in order"],
        [
            (
                r.consumers,
                " ".join(map(str, r.first_arrivals)) + " ...",
                f"{r.out_of_order} of {r.tasks}",
                r.each_worker_in_order,
            )
            for r in result.runs
        ],
    )
    show.note(
        "One producer, one consumer: FIFO end to end. Several consumers: each still takes tasks "
        "in order, but they finish at different speeds, so results overtake each other."
        + (
            " On RabbitMQ the queue is FIFO too; a requeued or redelivered message comes back "
            "later than its neighbours (see `compare`)."
            if result.backend == "rabbitmq"
            else ""
        )
    )
