"""互斥锁 (the mutex): the seed's ticket office, with and without a lock, on both backends.

N tickets in a JSON file; M buyers, each a task; each checks the count, waits (the seed's
network delay), then buys. Several worker processes buy at once.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.settings import load_settings
from lessons import show
from lessons.runner import (
    NumberedJob,
    broker_queue,
    first_results,
    job_of,
    local_pool,
    rabbit_pool,
    run_job,
    seconds,
)
from lessons.ticket_office import Guard, open_office, search

#: method -> (what it is, the guard its buyers use)
METHODS: dict[str, tuple[str, Guard]] = {
    "mp-lock": ("shared multiprocessing.Lock", Guard.MP_LOCK),
    "none": ("no lock", Guard.NONE),
    "flock": ("flock + purchase id", Guard.FLOCK),
    "single-active": ("single-active-consumer queue", Guard.NONE),
    "lock-per-consumer": ("multiprocessing.Lock per consumer", Guard.MP_LOCK),
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
class Mutex:
    backend: str
    safe: bool
    runs: list[TicketRun]


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
    what, guard = METHODS[method]
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
    safe: bool = True,
    *,
    tickets: int = 50,
    buyers: int = 200,
    consumers: int = 4,
    delay: float = 0.01,
    url: str | None = None,
) -> Mutex:
    methods = (SAFE if safe else UNSAFE)[backend]
    runs = [
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
        for method in methods
    ]
    return Mutex(backend, safe, runs)


def render(result: Mutex) -> None:
    first = result.runs[0]
    show.heading(f"互斥锁 (the mutex): the ticket office · backend {result.backend}")
    show.table(
        f"{first.tickets} tickets, {first.buyers} buyers, {first.consumers} worker processes, "
        f"{first.delay * 1000:g} ms between check and buy",
        ["method", "processes used", "sold", "left", "oversold", "seconds", "buyers/s"],
        [
            (r.what, r.processes_used, r.sold, r.left, r.oversold, r.seconds, r.buyers_per_s)
            for r in result.runs
        ],
    )
    for r in result.runs:
        if r.lost:
            show.note(f"{r.what}: {r.lost} buyers got no answer")
        if r.replayed:
            show.note(
                f"{r.what}: {r.replayed} purchases sent again with the same ids (as a "
                f"redelivery would): {r.replay_sold} more tickets taken."
            )
    notes = {
        ("local", True): "The lock makes check-and-buy one step: buyers take turns (serial, "
        "slower), and no ticket is sold twice.",
        ("local", False): "Without the lock, several buyers read the same count during the "
        "delay and each writes count - 1: more buyers are told yes than there were tickets.",
        ("rabbitmq", True): "A multiprocessing.Lock cannot reach a consumer on another machine "
        "(or one started apart from the producer). The file lock serializes buyers who share "
        "the disk, and the purchase id makes a redelivered purchase a no-op. The single-active-"
        "consumer queue serializes at the broker: one consumer buys, the others stand by.",
        ("rabbitmq", False): "No lock oversells as locally. Nor does the seed's Lock help: "
        "each consumer process can only make its own, and a lock nobody else takes excludes "
        "nobody.",
    }
    show.note(notes[(result.backend, result.safe)])
