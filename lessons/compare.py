"""One workload on both backends, side by side: every figure measured in this run."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.settings import load_settings
from consumer.worker import WorkerOptions
from lessons import show
from lessons.i18n import t
from lessons.mutex import ticket_run
from lessons.procs import wait_for
from lessons.runner import (
    HANDLERS,
    NumberedJob,
    broker_queue,
    first_results,
    out_of_order,
    percentile_ms,
    project_env,
    python,
    rabbit_pool,
    run_job,
    seconds,
)
from producer.ledger import Fate
from producer.run import run_local

LOCK_METHOD = {"local": "mp-lock", "rabbitmq": "flock"}


@dataclass
class Column:
    backend: str
    tasks: int = 0
    throughput: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    out_of_order: int = 0
    each_worker_in_order: bool = True
    crash_tasks: int = 0
    crash_fates: dict[str, int] = field(default_factory=dict)
    #: local only: tasks the in-flight registry put back (a bare Queue would have lost them)
    crash_recovered: int | None = None
    restart_tasks: int = 0
    restart_unfinished: int = 0  # sent, not done, when the producer went away
    restart_done_after: int = 0  # of those, done after it came back
    lock_method: str = ""
    lock_oversold: int = 0
    lock_buyers_per_s: float = 0.0
    nolock_oversold: int = 0
    seconds: float = 0.0


@dataclass
class Compare:
    workers: int
    columns: list[Column]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@contextlib.contextmanager
def _rabbit(url: str, topic: str, workers: int):  # type: ignore[no-untyped-def]
    with broker_queue(url, topic) as producer, rabbit_pool(url, producer, workers) as pool:
        yield producer, pool


def throughput_and_order(column: Column, workers: int, tasks: int, url: str) -> None:
    job = NumberedJob(count=tasks, kind="lesson.seq")
    if column.backend == "local":
        settings = load_settings(workers=workers)
        ledger, _ = run_local(
            job, settings, options=WorkerOptions(), timeout=120, handler_modules=HANDLERS
        )
    else:
        with _rabbit(url, "compare", workers) as (producer, pool):
            ledger = run_job(job, producer, timeout=120, tick=pool.check)
    answers = first_results(ledger)
    latencies = list(ledger.latency.values())
    column.tasks = tasks
    column.throughput = round(len(answers) / seconds(ledger), 1)
    column.p50_ms = percentile_ms(latencies, 50)
    column.p99_ms = percentile_ms(latencies, 99)
    column.out_of_order = out_of_order([r.value for r in answers])
    per_worker: dict[int, list[int]] = {}
    for r in answers:
        per_worker.setdefault(r.worker_pid, []).append(r.value)
    column.each_worker_in_order = all(s == sorted(s) for s in per_worker.values())


def crash(column: Column, workers: int, tasks: int, url: str) -> None:
    """One worker dies (os._exit) 0.2 s into task number tasks/2, once.

    Part way into a task, not at its first instruction: a process that dies while its queue's
    feeder thread is writing leaves the shared queue's write lock taken for good (the Python
    docs warn of this), and then no worker can report again. See docs/lessons.md.
    """
    with tempfile.TemporaryDirectory(prefix="lesson-crash-") as folder:
        marker = str(Path(folder) / "crashed")
        payload = {"crash_at": tasks // 2, "marker": marker, "work": 0.2}
        job = NumberedJob(count=tasks, kind="lesson.crash-once", payload=payload)
        if column.backend == "local":
            settings = load_settings(workers=workers)
            ledger, local = run_local(
                job, settings, options=WorkerOptions(), timeout=60, handler_modules=HANDLERS
            )
            column.crash_recovered = local.recovered
        else:
            with _rabbit(url, "compare-crash", workers) as (producer, pool):
                ledger = run_job(job, producer, timeout=60, tick=pool.check)
    column.crash_tasks = tasks
    column.crash_fates = {fate.value: n for fate, n in ledger.fates().items()}


def restart(column: Column, workers: int, tasks: int, url: str) -> None:
    """The producer goes away with work unfinished, then starts again."""
    with tempfile.TemporaryDirectory(prefix="lesson-restart-") as folder:
        tally = Path(folder) / "done.txt"
        payload = json.dumps({"file": str(tally), "seconds": 0.02})
        job = ("--kind", "lesson.tally", "--payload", payload, "--handlers", "lessons.tasks")
        if column.backend == "local":
            producer = ("-m", "producer", "--backend", "local", "--workers", str(workers), "-q")
            first = subprocess.Popen(
                python(*producer, *job, "--count", str(tasks)),
                env=project_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: _lines(tally) >= tasks // 10 or first.poll() is not None, 60)
            first.send_signal(signal.SIGINT)  # Ctrl-C: it stops its workers and exits
            try:
                first.wait(20)
            except subprocess.TimeoutExpired:  # see docs/lessons.md: a full pipe at close()
                first.kill()
                first.wait()
            done_before = _lines(tally)
            # Start again: a new producer has a new, empty queue; nothing reaches the old one.
            subprocess.run(
                python(*producer, *job, "--count", "0"),
                env=project_env(),
                timeout=60,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        else:
            with broker_queue(url, "compare-restart") as queue:
                where = ("--queue", queue.queue_name, "--count", str(tasks))
                subprocess.run(
                    python("-m", "producer", "--backend", "rabbitmq", "-q", *where, *job),
                    env=project_env(url),
                    timeout=60,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                done_before = _lines(tally)  # the producer has sent everything and exited
                # Start again (consumers, and a producer if it had more to send): the work
                # waited in the broker.
                with rabbit_pool(url, queue, workers):
                    wait_for(lambda: _lines(tally) >= tasks, 60)
        column.restart_tasks = tasks
        column.restart_unfinished = tasks - done_before
        column.restart_done_after = _lines(tally) - done_before


def locking(column: Column, workers: int, url: str) -> None:
    sizes = {"tickets": 20, "buyers": 80, "consumers": workers, "delay": 0.002, "url": url}
    safe = ticket_run(column.backend, LOCK_METHOD[column.backend], **sizes)
    unsafe = ticket_run(column.backend, "none", **sizes)
    column.lock_method = safe.what  # already in the lesson's language
    column.lock_oversold = safe.oversold
    column.lock_buyers_per_s = safe.buyers_per_s
    column.nolock_oversold = unsafe.oversold


def run(
    url: str | None = None,
    *,
    workers: int = 2,
    tasks: int = 2000,
    crash_tasks: int = 200,
    restart_tasks: int = 120,
    backends: tuple[str, ...] = ("local", "rabbitmq"),
) -> Compare:
    url = load_settings(amqp_url=url).amqp_url
    if "rabbitmq" in backends:
        with broker_queue(url, "compare"):
            pass  # a broker that is down: one clear error before anything runs
    columns = []
    if show.is_live():
        show.heading(t("compare.title", workers=workers))
    for backend in backends:
        started = time.perf_counter()
        column = Column(backend)
        with show.step("compare.step.throughput", backend=backend, tasks=tasks):
            throughput_and_order(column, workers, tasks, url)
        with show.step("compare.step.crash", backend=backend, tasks=crash_tasks):
            crash(column, workers, crash_tasks, url)
        with show.step("compare.step.restart", backend=backend, tasks=restart_tasks):
            restart(column, workers, restart_tasks, url)
        with show.step("compare.step.locking", backend=backend):
            locking(column, workers, url)
        column.seconds = round(time.perf_counter() - started, 1)
        columns.append(column)
    result = Compare(workers, columns)
    show.part(render_table, result)
    return result


def render(result: Compare) -> None:
    show.heading(t("compare.title", workers=result.workers))
    render_table(result)


def render_table(result: Compare) -> None:
    cols = result.columns

    def row(key: str, cell: Callable[[Column], object]) -> tuple[object, ...]:
        return (t(key), *(cell(c) for c in cols))

    def fate(name: Fate) -> Callable[[Column], object]:
        return lambda c: c.crash_fates.get(name.value)

    show.table(
        t("compare.table"),
        ["", *(c.backend for c in cols)],
        [
            row("compare.row.tasks", lambda c: c.tasks),
            row("compare.row.throughput", lambda c: f"{c.throughput:,.0f}"),
            row("compare.row.latency", lambda c: f"{c.p50_ms} / {c.p99_ms}"),
            row(
                "compare.row.out_of_order",
                lambda c: t("queues.of", n=c.out_of_order, tasks=c.tasks),
            ),
            row("compare.row.each_in_order", lambda c: c.each_worker_in_order),
            row("compare.row.crash", lambda c: c.crash_tasks),
            row("compare.row.crash_lost", fate(Fate.LOST)),
            row("compare.row.crash_redelivered", fate(Fate.DONE_AFTER_REDELIVERY)),
            row("compare.row.crash_twice", fate(Fate.DONE_TWICE)),
            row(
                "compare.row.restart_unfinished",
                lambda c: t("queues.of", n=c.restart_unfinished, tasks=c.restart_tasks),
            ),
            row("compare.row.restart_done", lambda c: c.restart_done_after),
            row("compare.row.lock_method", lambda c: c.lock_method),
            row("compare.row.lock_oversold", lambda c: c.lock_oversold),
            row("compare.row.lock_rate", lambda c: c.lock_buyers_per_s),
            row("compare.row.nolock_oversold", lambda c: c.nolock_oversold),
            row("compare.row.seconds", lambda c: f"{c.seconds:.1f}"),
        ],
    )
    by = {c.backend: c for c in cols}
    if "local" in by:
        show.note(t("compare.note.local", recovered=by["local"].crash_recovered))
    if "rabbitmq" in by:
        show.note(t("compare.note.rabbitmq"))
