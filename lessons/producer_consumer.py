"""生产者消费者模型 (the producer-consumer model): how the consumers learn that the work is
over (a sentinel, `JoinableQueue.task_done`; acks on RabbitMQ), and what prefetch does to
fairness when one task is slow."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from common.local import MP_CONTEXT
from common.schemas import TaskEnvelope
from common.settings import load_settings
from lessons import show
from lessons.i18n import t
from lessons.runner import broker_queue, job_of, local_pool, rabbit_pool, run_job, seconds

EAT_SECONDS = 0.005


# -- the seed's model, in plain multiprocessing -------------------------------------------
def _eat_until_sentinel(food: Any, report: Any) -> None:
    eaten = 0
    while food.get() is not None:  # None: the producer says there is no more
        time.sleep(EAT_SECONDS)
        eaten += 1
    report.put(eaten)


def _eat_forever(food: Any, eaten: Any) -> None:
    while True:  # never ends by itself: a daemon, stopped with its parent
        food.get()
        time.sleep(EAT_SECONDS)
        with eaten.get_lock():
            eaten.value += 1
        food.task_done()  # one more item finished: join() counts these


@dataclass
class Shutdown:
    way: str
    items: int
    eaten: list[int]  # per consumer (sentinel), or in all when join() returned
    alive_after: int  # consumers still running once the producer knew the work was done
    exitcodes: list[int | None]


def with_sentinels(items: int = 30, consumers: int = 3) -> Shutdown:
    food, report = MP_CONTEXT.Queue(), MP_CONTEXT.Queue()
    eaters = [
        MP_CONTEXT.Process(target=_eat_until_sentinel, args=(food, report))
        for _ in range(consumers)
    ]
    for eater in eaters:
        eater.start()
    for n in range(items):
        food.put(n)
    for _ in eaters:
        food.put(None)  # one sentinel per consumer: each takes one and stops
    eaten = sorted(report.get(timeout=60) for _ in eaters)
    for eater in eaters:
        eater.join(30)
    alive = sum(e.is_alive() for e in eaters)
    for q in (food, report):
        q.close()
        q.join_thread()
    codes = [e.exitcode for e in eaters]
    return Shutdown("sentinel", items, eaten, alive, codes)


def with_joinable_queue(items: int = 30, consumers: int = 3) -> Shutdown:
    food = MP_CONTEXT.JoinableQueue()
    eaten = MP_CONTEXT.Value("i", 0)
    eaters = [
        MP_CONTEXT.Process(target=_eat_forever, args=(food, eaten), daemon=True)
        for _ in range(consumers)
    ]
    for eater in eaters:
        eater.start()
    for n in range(items):
        food.put(n)
    food.join()  # returns once task_done() was called for every item put
    done = eaten.value
    alive = sum(e.is_alive() for e in eaters)
    for eater in eaters:  # what Python does to daemon children when the parent exits
        eater.terminate()
        eater.join()
    food.close()
    food.join_thread()
    codes = [e.exitcode for e in eaters]
    return Shutdown("joinable", items, [done], alive, codes)


# -- fairness: one slow task among fast ones --------------------------------------------------
@dataclass
class Fairness:
    backend: str
    prefetch: int | None  # None: the local queue, taken one task at a time
    seconds: float  # until the last result
    waiting_early: int  # tasks still in the queue shortly after sending (not handed out)
    held_behind_slow: int  # fast tasks that waited for the slow task's worker
    fast_wait_p50: float  # seconds from send to result, fast tasks
    fast_wait_max: float
    per_worker: list[int]


def _slow_and_fast(slow: float, fast: int, fast_seconds: float) -> list[TaskEnvelope]:
    tasks = [TaskEnvelope(kind="sleep", payload={"seconds": slow})]
    return tasks + [
        TaskEnvelope(kind="sleep", payload={"seconds": fast_seconds}) for _ in range(fast)
    ]


def fairness(
    backend: str,
    prefetch: int | None,
    *,
    slow: float = 1.0,
    fast: int = 60,
    fast_seconds: float = 0.01,
    url: str | None = None,
) -> Fairness:
    tasks = _slow_and_fast(slow, fast, fast_seconds)
    with contextlib.ExitStack() as stack:
        if backend == "local":
            target, pool = stack.enter_context(local_pool(2))
        else:
            url = load_settings(amqp_url=url).amqp_url
            target = stack.enter_context(broker_queue(url, "producer-consumer"))
            pool = stack.enter_context(rabbit_pool(url, target, 2, prefetch=prefetch or 1))
        sample: list[int] = []
        started = time.perf_counter()

        def tick() -> None:
            pool.check()
            if not sample and time.perf_counter() - started > 0.25:
                sample.append(target.pending())

        ledger = run_job(job_of(tasks), target, timeout=60, tick=tick)
    results = {task_id: rs[0] for task_id, rs in ledger.results.items()}
    slow_result = results[tasks[0].id]
    fast_results = [results[t.id] for t in tasks[1:] if t.id in results]
    held = sum(
        r.worker_pid == slow_result.worker_pid and r.started_at >= slow_result.finished_at
        for r in fast_results
    )
    waits = sorted(ledger.latency[t.id] for t in tasks[1:] if t.id in ledger.latency)
    per_worker: dict[int, int] = {}
    for r in results.values():
        per_worker[r.worker_pid] = per_worker.get(r.worker_pid, 0) + 1
    return Fairness(
        backend,
        prefetch,
        round(seconds(ledger), 3),
        sample[0] if sample else -1,
        held,
        round(statistics.median(waits), 3),
        round(waits[-1], 3),
        sorted(per_worker.values(), reverse=True),
    )


@dataclass
class ProducerConsumer:
    backend: str
    shutdowns: list[Shutdown] = field(default_factory=list)
    fairness: list[Fairness] = field(default_factory=list)


#: The course names the topic (its text stops before the code); this is the model it teaches,
#: in plain multiprocessing, as the lesson runs it.
MODEL_CODE = """
def producer(q):                 # 生产者
    for i in range(30):
        q.put(i)
    for _ in range(3):
        q.put(None)              # 结束信号: 每个消费者一个

def consumer(q):                 # 消费者
    while q.get() is not None:
        time.sleep(0.005)
"""


def run(backend: str = "local", url: str | None = None) -> ProducerConsumer:
    result = ProducerConsumer(backend)
    if show.is_live():
        show.heading(t("pc.title", backend=backend))
        show.code(MODEL_CODE)
    with show.step("pc.step.sentinel"):
        result.shutdowns.append(with_sentinels())
    with show.step("pc.step.joinable"):
        result.shutdowns.append(with_joinable_queue())
    show.part(render_shutdowns, result)
    prefetches: list[int | None] = [None] if backend == "local" else [1, 100]
    for prefetch in prefetches:
        label = t("pc.local_queue") if prefetch is None else f"prefetch {prefetch}"
        with show.step("pc.step.fairness", backend=backend, how=label):
            result.fairness.append(fairness(backend, prefetch, url=url))
    show.part(render_fairness, result)
    return result


def render(result: ProducerConsumer) -> None:
    show.heading(t("pc.title", backend=result.backend))
    show.code(MODEL_CODE)
    render_shutdowns(result)
    render_fairness(result)


def render_shutdowns(result: ProducerConsumer) -> None:
    if not result.shutdowns:
        return
    show.table(
        t("pc.shutdown.table"),
        [
            t("pc.col.way"),
            t("pc.col.items"),
            t("pc.col.eaten"),
            t("pc.col.alive_after"),
            t("pc.col.exitcodes"),
        ],
        [
            (
                t(f"pc.way.{s.way}"),
                s.items,
                "+".join(map(str, s.eaten)),
                s.alive_after,
                s.exitcodes,
            )
            for s in result.shutdowns
        ],
    )
    show.note(t("pc.shutdown.note"))


def render_fairness(result: ProducerConsumer) -> None:
    if not result.fairness:
        return
    f0 = result.fairness[0]
    show.table(
        t("pc.fairness.table", fast=sum(f0.per_worker) - 1),
        [
            "prefetch",
            t("pc.col.seconds"),
            t("pc.col.queued"),
            t("pc.col.held"),
            t("pc.col.fast_wait"),
            t("pc.col.per_worker"),
        ],
        [
            (
                t("pc.local_queue") if f.prefetch is None else f"prefetch {f.prefetch}",
                f.seconds,
                f.waiting_early,
                f.held_behind_slow,
                f"{f.fast_wait_p50} / {f.fast_wait_max}",
                " / ".join(map(str, f.per_worker)),
            )
            for f in result.fairness
        ],
    )
    if result.backend == "rabbitmq":
        by = {f.prefetch: f for f in result.fairness}
        one, hundred = by.get(1), by.get(100)
        if one and hundred:
            key = (
                "pc.fairness.rabbitmq"
                if hundred.held_behind_slow > one.held_behind_slow
                else "pc.fairness.rabbitmq_odd"
            )
            show.note(t(key, held100=hundred.held_behind_slow, held1=one.held_behind_slow))
    elif f0.held_behind_slow == 0:
        show.note(t("pc.fairness.local_none"))
    else:
        show.note(t("pc.fairness.local_batches", held=f0.held_behind_slow))
