"""`consumer`: a supervisor that runs N worker processes against a RabbitMQ queue."""

from __future__ import annotations

import json
import logging
import signal
import threading
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.cli import fail, run_app, setup_logging
from common.factory import Role, open_backend
from common.settings import BackendName, Settings, load_settings
from consumer.handlers import import_handlers
from consumer.supervisor import ThreadWorkers, WorkerPool, WorkerSpec
from consumer.worker import WorkerOptions

log = logging.getLogger("taskshuttle.consumer")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False)
dlq_app = typer.Typer(help="See and replay dead letters.")
app.add_typer(dlq_app, name="dlq")

LOCAL_MESSAGE = (
    "the local backend's queue lives inside one process tree, so a separate consumer "
    "cannot reach it; run `producer --backend local --workers N`, which starts N workers "
    "itself, or use --backend rabbitmq"
)


class PoolKind(StrEnum):
    process = "process"
    thread = "thread"


UrlOption = Annotated[str | None, typer.Option(help="Broker URL [env AMQP_URL].")]
QueueOption = Annotated[str | None, typer.Option(help="Queue name [env TASKSHUTTLE_QUEUE].")]


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    backend: Annotated[BackendName, typer.Option(help="Only rabbitmq runs standalone.")] = (
        BackendName.rabbitmq
    ),
    workers: Annotated[int | None, typer.Option(help="Workers [default 2].")] = None,
    pool: Annotated[
        PoolKind, typer.Option(help="Workers as processes, or as threads of one process.")
    ] = PoolKind.process,
    prefetch: Annotated[int | None, typer.Option(help="Unacked tasks per worker [100].")] = None,
    queue: QueueOption = None,
    url: UrlOption = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Tries per task before dead-lettering [3].")
    ] = None,
    retry_delay: Annotated[
        float | None, typer.Option(help="First retry delay, seconds; doubles per try [1].")
    ] = None,
    task_timeout: Annotated[
        float | None, typer.Option(help="Seconds a task may run before it fails [no limit].")
    ] = None,
    burst: Annotated[
        bool, typer.Option(help="Exit 0 once the queue has been empty for a moment.")
    ] = False,
    handlers: Annotated[
        list[str] | None, typer.Option(help="Import this module to register task kinds.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """Consume tasks with N worker processes until SIGINT/SIGTERM (or, with --burst, until
    the queue is empty)."""
    setup_logging(verbose)
    if ctx.invoked_subcommand is not None:
        ctx.obj = (backend, queue, url)
        return
    if backend is BackendName.local:
        fail("consumer", LOCAL_MESSAGE)
    settings = load_settings(
        amqp_url=url,
        queue=queue,
        workers=workers,
        prefetch=prefetch,
        max_attempts=max_attempts,
        retry_base_delay=retry_delay,
        task_timeout=task_timeout,
    )
    modules = tuple(handlers or ())
    import_handlers(list(modules))
    _check_broker(settings)
    if settings.task_timeout > settings.broker_consumer_timeout:
        log.warning(
            "--task-timeout %gs is longer than the broker's consumer_timeout (%gs): the broker "
            "will close a worker's channel (and redeliver its task) before the limit is reached",
            settings.task_timeout,
            settings.broker_consumer_timeout,
        )
    options = WorkerOptions.from_settings(settings, burst_idle=1.0 if burst else None)
    if pool is PoolKind.thread and settings.task_timeout:
        fail("consumer", "--task-timeout needs --pool process: a thread cannot be stopped")
    supervise(settings, options, modules, pool)


def _check_broker(settings: Settings) -> None:
    """Fail fast, in the supervisor, on a bad URL, password or queue, before any worker."""
    open_backend(settings, Role.ADMIN).close()


def supervise(
    settings: Settings,
    options: WorkerOptions,
    modules: tuple[str, ...],
    pool_kind: PoolKind = PoolKind.process,
) -> None:
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("%s: finishing tasks in hand, then stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    spec = WorkerSpec(settings, options, modules)
    pool: WorkerPool | ThreadWorkers = (
        ThreadWorkers(spec, settings.workers)
        if pool_kind is PoolKind.thread
        else WorkerPool(spec, settings.workers)
    )
    pool.start()
    try:
        pool.wait_ready()
        log.warning(
            "consuming %r on %s with %d worker %ss (pids %s)",
            settings.queue,
            settings.safe_url,
            settings.workers,
            pool_kind.value,
            pool.pids,
        )
        pool.wait_all(stopping.is_set)
    finally:
        pool.stop()


def _rabbit(ctx: typer.Context):  # type: ignore[no-untyped-def]
    backend, queue, url = ctx.obj
    if backend is BackendName.local:
        fail("consumer", "dead letters of the local backend are shown by `producer` itself")
    return open_backend(load_settings(amqp_url=url, queue=queue), Role.ADMIN)


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show every dead letter with why it is there (they stay in the DLQ)."""
    with _rabbit(ctx) as backend:
        letters = backend.dead_letters()
    if as_json:
        for letter in letters:
            print(json.dumps(letter.model_dump(mode="json")))
        return
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("task id", "reason", "attempts", "error", "when"):
        table.add_column(column)
    for letter in letters:
        table.add_row(
            letter.task_id or "-",
            letter.reason,
            str(letter.attempts),
            letter.error[:80],
            letter.dead_lettered_at.isoformat(timespec="seconds"),
        )
    Console().print(table)


@dlq_app.command("replay")
def dlq_replay(ctx: typer.Context) -> None:
    """Move every dead letter back to the work queue, as a first attempt."""
    with _rabbit(ctx) as backend:
        moved = backend.replay_dead_letters()
    print(f"replayed {moved} dead letters to {backend.queue_name!r}")


def cli(argv: list[str] | None = None) -> None:
    run_app(app, "consumer", argv)
