"""生产者消费者模型 (the producer-consumer model): how the consumers learn that the work is
over (a sentinel, `JoinableQueue.task_done`; acks on RabbitMQ), what prefetch does to
fairness when one task is slow, and the seed's model written with the client
(`taskshuttle.Client`): items of different kinds, each with its id and its handle, each result
read by its handle, the same code on both backends."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.local import MP_CONTEXT
from common.schemas import TaskEnvelope
from common.settings import load_settings
from lessons import show
from lessons.i18n import t
from lessons.runner import broker_queue, job_of, local_pool, rabbit_pool, run_job, seconds
from taskshuttle import Client, TaskFailed, TaskHandle

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


# -- the seed's model with the client: each item its id and its handle --------------------------
#: What the producer puts on the queue, in the order `send_items` sends them: the names of
#: their labels (``pc.item.<name>``).
ITEM_NAMES = ("make", "eat", "note", "later", "burnt")
#: The workers the client part runs with, on either backend.
CLIENT_WORKERS = 2
#: Seconds each result is waited for, by its handle.
RESULT_TIMEOUT = 30.0


def send_items(client: Client) -> list[TaskHandle]:
    """The producer: five items of four kinds, one handle each (what `CLIENT_CODE` shows).
    No payload carries an id: the handle is what ties a result to its item."""
    return [
        client.send("cpu", {"rounds": 200_000}),
        client.send("sleep", {"seconds": 0.3}),
        client.send("echo", {"note": "two buns left"}),
        client.send("echo", {"note": "one more, later"}, countdown=1.0),
        client.send("fail", {"message": "the bun burnt"}, max_attempts=1),
    ]


@dataclass
class ByHandle:
    """One item, as its handle tells it: seconds are counted from just before the first send."""

    name: str  # one of ITEM_NAMES
    kind: str
    task_id: str
    #: The task id of the result the handle gave (its own: `handle.outcome.task_id`).
    result_task_id: str | None
    worker_pid: int | None
    worker_name: str | None
    not_before: float | None  # the countdown's time (the handle's eta)
    started: float | None
    finished: float | None
    #: 1 for the first result the workers finished, and so on: the order they came back in.
    done_as: int | None
    value: Any = None
    #: The exception `handle.result()` raised (TaskFailed, TimeoutError...), and its text.
    raised: str | None = None
    error: str | None = None
    error_type: str | None = None  # the handler's exception, when a raise made it fail


@dataclass
class ClientRun:
    backend: str
    #: The one line of the producer that differs between the backends.
    client: str
    workers: int
    items: list[ByHandle] = field(default_factory=list)
    #: The lesson's own work queue on RabbitMQ (deleted after the run); None on local.
    queue: str | None = None


def _since(start: datetime, when: datetime | None) -> float | None:
    return None if when is None else round((when - start).total_seconds(), 3)


def read_by_handle(
    names: tuple[str, ...], handles: list[TaskHandle], start: datetime
) -> list[ByHandle]:
    """Every result, each from its own handle, in the order the items were sent (whatever
    order they came back in)."""
    items = []
    for name, handle in zip(names, handles, strict=True):
        value, raised, error, error_type = None, None, None, None
        try:
            value = handle.result(timeout=RESULT_TIMEOUT)
        except TaskFailed as failed:
            raised, error, error_type = type(failed).__name__, failed.error, failed.error_type
        except TimeoutError as late:
            raised, error = type(late).__name__, str(late)
        outcome = handle.outcome
        items.append(
            ByHandle(
                name,
                handle.kind,
                handle.id,
                outcome.task_id if outcome else None,
                outcome.worker_pid if outcome else None,
                outcome.worker_name if outcome else None,
                _since(start, handle.eta),
                _since(start, outcome.started_at if outcome else None),
                _since(start, outcome.finished_at if outcome else None),
                None,
                value,
                raised,
                error,
                error_type,
            )
        )
    came_back = sorted((i for i in items if i.finished is not None), key=lambda i: i.finished)
    for rank, item in enumerate(came_back, 1):
        item.done_as = rank
    return items


def producer_with_client(client: Client) -> list[ByHandle]:
    """The part's producer, the same on both backends: send, then read by handle."""
    start = datetime.now(UTC)
    return read_by_handle(ITEM_NAMES, send_items(client), start)


def with_client(backend: str = "local", url: str | None = None) -> ClientRun:
    """The seed's model with the client: `Client.local` starts its own worker processes; on
    RabbitMQ the lesson starts them (`rabbit_pool`, consumer processes as `consumer` starts
    them) on a queue of its own, deleted afterwards, and the client talks to that queue."""
    if backend == "local":
        with Client.local(workers=CLIENT_WORKERS) as client:
            items = producer_with_client(client)
        return ClientRun(backend, f"Client.local(workers={CLIENT_WORKERS})", CLIENT_WORKERS, items)
    url = load_settings(amqp_url=url).amqp_url
    with (
        broker_queue(url, "producer-consumer") as target,
        rabbit_pool(url, target, CLIENT_WORKERS, prefetch=1),
        Client(url=url, queue=target.queue_name) as client,
    ):
        items = producer_with_client(client)
    return ClientRun(
        backend, "Client(url=..., queue=...)", CLIENT_WORKERS, items, target.queue_name
    )


@dataclass
class ProducerConsumer:
    backend: str
    shutdowns: list[Shutdown] = field(default_factory=list)
    fairness: list[Fairness] = field(default_factory=list)
    client: ClientRun | None = None


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

#: The same model with the client, as `send_items` and `read_by_handle` run it.
CLIENT_CODE = """
client = Client.local(workers=2)   # 或 Client(url=..., queue=...): 只有这一行不同
handles = [                        # 生产者: 每份数据一个 id, 一个句柄
    client.send("cpu", {"rounds": 200_000}),                          # 做包子
    client.send("sleep", {"seconds": 0.3}),                           # 吃包子
    client.send("echo", {"note": "two buns left"}),                   # 一张字条
    client.send("echo", {"note": "one more, later"}, countdown=1.0),  # 待会儿
    client.send("fail", {"message": "the bun burnt"}, max_attempts=1),
]
for handle in handles:             # 按句柄取结果, 不按到达的顺序
    try:
        value = handle.result(timeout=30)
    except TaskFailed as failed:
        value = failed.error
    print(handle.kind, handle.outcome.worker_pid, value)
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
    if show.is_live():
        show.code(CLIENT_CODE)
    with show.step("pc.step.client", backend=backend, workers=CLIENT_WORKERS):
        result.client = with_client(backend, url)
    show.part(render_client, result)
    return result


def render(result: ProducerConsumer) -> None:
    show.heading(t("pc.title", backend=result.backend))
    show.code(MODEL_CODE)
    render_shutdowns(result)
    render_fairness(result)
    if result.client is not None:
        show.code(CLIENT_CODE)
    render_client(result)


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


def _shown(value: Any, width: int = 30) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(item: ByHandle) -> str:
    if item.started is None or item.finished is None:
        return "-"
    return f"{item.started:.3f} → {item.finished:.3f}"


def outcome_text(item: ByHandle) -> str:
    if item.raised is None:
        return _shown(item.value)
    error = item.error or ""
    if item.error_type is not None:  # the handler raised: its exception, without the reason
        error = error.partition(f"{item.error_type}: ")[2] or error
        return _shown(f"{item.raised}: {item.error_type}: {error}", 48)
    return _shown(f"{item.raised}: {error}", 48)


def render_client(result: ProducerConsumer) -> None:
    run = result.client
    if run is None:
        return
    show.table(
        t("pc.client.table", workers=run.workers),
        [
            t("pc.col.item"),
            t("pc.col.worker"),
            t("pc.col.ran"),
            t("pc.col.done_as"),
            t("pc.col.value"),
        ],
        [
            (
                f"{t(f'pc.item.{i.name}')} ({i.kind})",
                "-" if i.worker_pid is None else f"{i.worker_name} · {i.worker_pid}",
                _when(i),
                i.done_as,
                outcome_text(i),
            )
            for i in run.items
        ],
    )
    later = [i for i in run.items if i.not_before is not None]
    came_back = sorted((i for i in run.items if i.done_as), key=lambda i: i.done_as or 0)
    show.note(
        t(
            "pc.client.note",
            sent=" → ".join(t(f"pc.item.{i.name}") for i in run.items),
            came=" → ".join(t(f"pc.item.{i.name}") for i in came_back),
            not_before=later[0].not_before if later else "-",
            client=run.client,
        )
    )
