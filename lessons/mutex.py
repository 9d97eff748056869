"""互斥锁 (the mutex): the course's ticket office, with and without a lock, on both backends.

First the course's own program, run for real: a JSON file named ``data`` holding the ticket
count, nine buyer processes that `search` (查票) and then `buy` (买票) between
``mutex.acquire()`` and ``mutex.release()``; then the same buyers without the lock.

Then taskshuttle: N tickets in a JSON file; M buyers, each a task; each checks the count, waits
(the course's network delay), then buys. Several worker processes buy at once, with a lock and
without, side by side, and the time the lock cost.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.settings import load_settings
from lessons import show
from lessons.i18n import t
from lessons.runner import (
    CourseRun,
    NumberedJob,
    broker_queue,
    first_results,
    job_of,
    local_pool,
    rabbit_pool,
    run_course,
    run_job,
    seconds,
)
from lessons.ticket_office import Guard, open_office, search

#: method -> (the string key naming it, the guard its buyers use)
METHODS: dict[str, tuple[str, Guard]] = {
    "mp-lock": ("mutex.method.mp-lock", Guard.MP_LOCK),
    "none": ("mutex.method.none", Guard.NONE),
    "flock": ("mutex.method.flock", Guard.FLOCK),
    "single-active": ("mutex.method.single-active", Guard.NONE),
    "lock-per-consumer": ("mutex.method.lock-per-consumer", Guard.MP_LOCK),
}
SAFE = {"local": ["mp-lock"], "rabbitmq": ["flock", "single-active"]}
UNSAFE = {"local": ["none"], "rabbitmq": ["none", "lock-per-consumer"]}


@dataclass
class TicketRun:
    backend: str
    method: str
    what: str
    tickets: int
    buyers: int
    consumers: int  # worker processes started
    delay: float
    sold: int  # buyers told "you got a ticket"
    left: int  # tickets left in the store afterwards
    oversold: int  # sold beyond the tickets there were
    seconds: float
    buyers_per_s: float
    processes_used: int  # distinct worker pids among the results
    lost: int  # buyers who got no answer
    replayed: int = 0  # purchases sent again with the same id, as a redelivery would
    replay_sold: int = 0  # tickets those replays took


@dataclass
class CourseTickets:
    """The course's program, run once: nine buyers, one `data` file."""

    locked: bool
    tickets: int
    buyers: int
    bought: int  # lines 用户i买票成功
    refused: int  # lines 用户i买票失败
    left: int  # ticket_num in `data` afterwards
    oversold: int
    seconds: float
    errors: str  # what the buyers wrote to stderr (a torn read of `data`, if any)


@dataclass
class Mutex:
    backend: str
    #: None: with and without a lock, side by side; True: only safe methods; False: only unsafe
    safe: bool | None
    course: list[CourseTickets]
    runs: list[TicketRun]


COURSE_TICKETS = 1
COURSE_CODE = """
# 买票 1.查票 3.再买
def buy(i):
    # 先查票
    with open('data', 'r', encoding='utf-8') as f:
        dic = json.load(f)
    # 虚拟网络延迟
    time.sleep(random.randint(1, 3))
    # 判断当前是否有票
    if dic.get('ticket_num') > 0:
        # 修改数据库 买票
        dic['ticket_num'] -= 1
        # 写入数据库
        with open('data', 'w', encoding='utf-8') as f:
            json.dump(dic, f)
        print('用户%s买票成功' % i)
    else:
        print('用户%s买票失败' % i)
def run(i, mutex):
    search(i)
    # 给买票环节加锁处理
    # 抢锁
    mutex.acquire()
    buy(i)
    # 释放
    mutex.release()
if __name__ == '__main__':
    # 在主进程中生成一把锁 让所有的子进程抢 谁先抢到谁先买票
    mutex = Lock()
    for i in range(1, 10):
        p = Process(target=run, args=(i, mutex))
        p.start()
"""


def course_office(locked: bool, tickets: int = COURSE_TICKETS) -> CourseTickets:
    """The course's ticket office (`lessons.course.ticket_office`), in a folder of its own
    holding ``data``."""
    with tempfile.TemporaryDirectory(prefix="lesson-course-tickets-") as folder:
        data = Path(folder) / "data"
        data.write_text(json.dumps({"ticket_num": tickets}), encoding="utf-8")
        ran: CourseRun = run_course(
            "ticket_office", "lock" if locked else "no-lock", cwd=Path(folder), echo=show.echo
        )
        left = int(json.loads(data.read_text(encoding="utf-8"))["ticket_num"])
    bought = ran.printed("买票成功")
    return CourseTickets(
        locked,
        tickets,
        9,
        bought,
        ran.printed("买票失败"),
        left,
        max(bought - tickets, 0),
        ran.exit_seconds,
        ran.errors,
    )


@contextlib.contextmanager
def _consumers(backend: str, method: str, consumers: int, url: str) -> Iterator[tuple[Any, Any]]:
    """(something to publish to, a pool to keep an eye on) for one method."""
    if backend == "local":
        with local_pool(consumers, share_lock=(method == "mp-lock")) as (local, pool):
            yield local, pool
    elif method == "single-active":
        from lessons.single_active import SINGLE_ACTIVE, single_active_pool

        with (
            broker_queue(url, "mutex", SINGLE_ACTIVE) as producer,
            single_active_pool(url, producer.queue_name, consumers),
        ):
            yield producer, None
    else:
        # prefetch 1: each consumer holds one purchase at a time, so all of them buy at once.
        with (
            broker_queue(url, "mutex") as producer,
            rabbit_pool(url, producer, consumers, prefetch=1) as pool,
        ):
            yield producer, pool


def ticket_run(
    backend: str = "local",
    method: str = "mp-lock",
    *,
    tickets: int = 50,
    buyers: int = 200,
    consumers: int = 4,
    delay: float = 0.01,
    replay: int = 0,
    url: str | None = None,
) -> TicketRun:
    what_key, guard = METHODS[method]
    what = t(what_key)
    url = load_settings(amqp_url=url).amqp_url
    with (
        tempfile.TemporaryDirectory(prefix="lesson-tickets-") as folder,
        _consumers(backend, method, consumers, url) as (target, pool),
    ):
        store = open_office(Path(folder), tickets)
        purchases = list(
            NumberedJob(
                count=buyers,
                kind="lesson.ticket",
                payload={"store": str(store), "delay": delay, "guard": guard.value},
                with_id=True,
            ).tasks()
        )
        tick = pool.check if pool is not None else (lambda: None)
        ledger = run_job(job_of(purchases), target, timeout=120, tick=tick)
        answers = first_results(ledger)
        sold = sum(bool(r.value["bought"]) for r in answers)
        left = search(store)
        replay_sold = 0
        if replay:
            # The same purchases again, ids and all: what a redelivery or a retry looks like.
            again = run_job(job_of(purchases[:replay]), target, timeout=60, tick=tick)
            replay_sold = left - search(store)
            if len(first_results(again)) != replay:
                raise RuntimeError("some replayed purchases got no answer")
        took = seconds(ledger)
        return TicketRun(
            backend=backend,
            method=method,
            what=what,
            tickets=tickets,
            buyers=buyers,
            consumers=consumers,
            delay=delay,
            sold=sold,
            left=left,
            oversold=max(sold - tickets, 0),
            seconds=round(took, 3),
            buyers_per_s=round(len(answers) / took, 1),
            processes_used=len({r.worker_pid for r in answers}),
            lost=buyers - len(answers),
            replayed=replay,
            replay_sold=replay_sold,
        )


def run(
    backend: str = "local",
    safe: bool | None = None,
    *,
    tickets: int = 50,
    buyers: int = 200,
    consumers: int = 4,
    delay: float = 0.01,
    url: str | None = None,
    course: bool = True,
) -> Mutex:
    """The course's program (with and without its Lock, unless `safe` says which), then
    taskshuttle's ticket office with every method of `backend`: safe and unsafe side by side
    by default, only the unsafe ones with ``safe=False`` (``--no-lock``)."""
    result = Mutex(backend, safe, [], [])
    if show.is_live():
        show.heading(t("mutex.title", backend=backend))
        show.code(COURSE_CODE)
    if course:
        for locked in (True, False):
            if safe is None or safe is locked:
                with show.step("mutex.step.course", lock=_course_label(locked)):
                    result.course.append(course_office(locked))
        show.part(render_course, result)
    methods = {True: SAFE, False: UNSAFE}
    chosen = [m for ok in (True, False) if safe in (None, ok) for m in methods[ok][backend]]
    for method in chosen:
        with show.step(
            "mutex.step.office",
            backend=backend,
            method=t(METHODS[method][0]),
            buyers=buyers,
            consumers=consumers,
        ):
            result.runs.append(
                ticket_run(
                    backend,
                    method,
                    tickets=tickets,
                    buyers=buyers,
                    consumers=consumers,
                    delay=delay,
                    replay=min(20, buyers) if method == "flock" else 0,
                    url=url,
                )
            )
    show.part(render_office, result)
    return result


def _course_label(locked: bool) -> str:
    return t("mutex.course.with_lock") if locked else t("mutex.course.without_lock")


def render(result: Mutex) -> None:
    show.heading(t("mutex.title", backend=result.backend))
    show.code(COURSE_CODE)
    render_course(result)
    render_office(result)


def render_course(result: Mutex) -> None:
    if not result.course:
        return
    show.table(
        t("mutex.course.table", tickets=result.course[0].tickets),
        [
            t("mutex.col.course_run"),
            t("mutex.col.bought"),
            t("mutex.col.refused"),
            t("mutex.col.left"),
            t("mutex.col.oversold"),
            t("mutex.col.seconds"),
        ],
        [
            (_course_label(c.locked), c.bought, c.refused, c.left, c.oversold, c.seconds)
            for c in result.course
        ],
    )
    for c in result.course:
        if c.errors:
            show.note(t("mutex.course.errors", run=_course_label(c.locked)))
            show.trace(c.errors.splitlines()[-3:])
    by = {c.locked: c for c in result.course}
    if True in by and False in by:
        locked, unlocked = by[True], by[False]
        key = "mutex.course.note" if unlocked.oversold else "mutex.course.note_lucky"
        show.note(
            t(
                key,
                sold=locked.bought,
                oversold=unlocked.oversold,
                bought=unlocked.bought,
                tickets=unlocked.tickets,
                locked_s=locked.seconds,
                unlocked_s=unlocked.seconds,
            )
        )
    show.note(t("mutex.course.delay"))


def _lock_cost(run: TicketRun, runs: list[TicketRun]) -> str:
    """Seconds a safe run took beyond the unsafe `none` run of the same backend."""
    plain = next((r for r in runs if r.method == "none"), None)
    if plain is None or run.method in ("none", "lock-per-consumer") or plain.seconds <= 0:
        return "-"
    return t("mutex.cost", seconds=run.seconds - plain.seconds, ratio=run.seconds / plain.seconds)


def render_office(result: Mutex) -> None:
    if not result.runs:
        return
    first = result.runs[0]
    show.table(
        t(
            "mutex.office.table",
            backend=result.backend,
            tickets=first.tickets,
            buyers=first.buyers,
            consumers=first.consumers,
            ms=first.delay * 1000,
        ),
        [
            t("mutex.col.method"),
            t("mutex.col.processes"),
            t("mutex.col.sold"),
            t("mutex.col.left"),
            t("mutex.col.oversold"),
            t("mutex.col.seconds"),
            t("mutex.col.lock_cost"),
        ],
        [
            (
                r.what,
                r.processes_used,
                r.sold,
                r.left,
                r.oversold,
                r.seconds,
                _lock_cost(r, result.runs),
            )
            for r in result.runs
        ],
    )
    for r in result.runs:
        if r.lost:
            show.note(t("mutex.office.lost", method=r.what, lost=r.lost))
        if r.replayed:
            show.note(
                t("mutex.office.replay", method=r.what, replayed=r.replayed, sold=r.replay_sold)
            )
    safe = [r for r in result.runs if _lock_cost(r, result.runs) != "-"]
    unsafe = [r for r in result.runs if r not in safe]
    if safe:
        oversold = sum(r.oversold for r in safe)
        key = f"mutex.office.safe.{result.backend}" if not oversold else "mutex.office.safe_failed"
        show.note(t(key, oversold=oversold))
    if unsafe:
        oversold = max(r.oversold for r in unsafe)
        key = f"mutex.office.unsafe.{result.backend}" if oversold else "mutex.office.unsafe_lucky"
        show.note(t(key, oversold=oversold))
