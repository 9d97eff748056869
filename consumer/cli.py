"""`consumer`: a supervisor that runs N worker processes against a RabbitMQ queue.

Everything that needs no broker is checked before the first connection. The library (the
supervisor, the backends, pydantic, pika) is imported only by the command that runs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from common.cli import (
    CONNECTION,
    Handlers,
    LogFormatOption,
    LogLevelOption,
    Verbose,
    Version,
    bad_value,
    given,
    invalid,
    new_app,
    rabbitmq_settings,
    run_app,
    settings_from,
    setup_logging,
    takes,
)
from common.defaults import BackendName
from common.logs import STATUS_LOGGER, LogFormat
from consumer import admin, dashboard, watch

if TYPE_CHECKING:
    from common.backend import Backend
    from common.settings import Settings
    from consumer.live import Watched
    from consumer.supervisor import WorkerPool
    from consumer.threads import ThreadWorkers
    from consumer.worker import WorkerOptions

log = logging.getLogger("taskshuttle.consumer")
#: Start, stop and the summary: shown at the default level (`common.logs`).
status = logging.getLogger(STATUS_LOGGER)

app = new_app()
# The queue's admin commands (`consumer.admin`): purge, and the dead letters'.
app.command("purge")(admin.purge)
app.add_typer(admin.dlq_app, name="dlq")
watch.register(app)  # status, events
dashboard.register(app)

LOCAL_MESSAGE = (
    "the local backend's queue lives inside one process tree, so a separate consumer "
    "cannot reach it; run `producer --backend local --workers N`, which starts N workers "
    "itself, or use --backend rabbitmq"
)


class PoolKind(StrEnum):
    process = "process"
    thread = "thread"


@app.callback(invoke_without_command=True)
@admin.connection
@takes(
    "workers",
    "prefetch",
    "max_attempts",
    "retry_base_delay",
    "retry_max_delay",
    "task_timeout",
    "broker_consumer_timeout",
    "max_deaths",
    "shutdown_timeout",
    "connect_timeout",
    "task_events",
)
def main(
    ctx: typer.Context,
    pool: Annotated[
        PoolKind, typer.Option(help="Workers as processes, or as threads of one process.")
    ] = PoolKind.process,
    burst: Annotated[
        bool, typer.Option(help="Exit 0 once the queue has been empty for a moment.")
    ] = False,
    handlers: Handlers = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics on this port (0: any free one; the log says which).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="The address the metrics endpoint listens on.")
    ] = "127.0.0.1",
    verbose: Verbose = False,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = LogFormat.text,
    version: Version = False,
) -> None:
    """Consume tasks with N worker processes until SIGINT/SIGTERM (or, with --burst, until
    the queue is empty). On a terminal, a live table shows what each worker does."""
    setup_logging(verbose, log_level, log_format)
    if ctx.invoked_subcommand is not None:
        return  # `dlq`, `purge`: they read --backend, --url and --queue from here or their own
    if given(ctx, "backend") is BackendName.local:
        raise bad_value(ctx, "backend", LOCAL_MESSAGE)
    settings = settings_from(ctx)  # --queue, --url, --workers...
    if pool is PoolKind.thread and settings.task_timeout:
        message = "needs --pool process: a thread cannot be stopped"
        raise bad_value(ctx, "task_timeout", message)
    from consumer.handlers import import_handlers
    from consumer.worker import WorkerOptions

    with invalid("--handlers"):
        import_handlers(list(handlers or ()))
    _admin(settings, waits=True).close()  # a bad password or queue fails here, before any worker
    _warn_about_consumer_timeout(settings)
    worker_options = WorkerOptions.from_settings(settings, burst_idle=1.0 if burst else None)
    live = sys.stdout.isatty() and log_format is LogFormat.text
    metrics = None if metrics_port is None else (metrics_host, metrics_port)
    supervise(settings, worker_options, tuple(handlers or ()), pool, live=live, metrics=metrics)


#: `consumer revoke --keep-for`'s default: the client's (`common.backend.REVOKE_KEEP`).
DEFAULT_KEEP_FOR = 30 * 86_400.0


@app.command("revoke")
@takes(*CONNECTION, backend=BackendName.rabbitmq, before="keep_for")  # after the ids
def revoke(
    ctx: typer.Context,
    task_ids: Annotated[
        list[str], typer.Argument(metavar="ID", help="The ids of the tasks not to run.")
    ],
    keep_for: Annotated[
        float,
        typer.Option(
            "--keep-for",
            help="Seconds the workers keep the revocation (at most ten years); a task taken "
            "later runs.",
        ),
    ] = DEFAULT_KEEP_FOR,
) -> None:
    """Tell every worker of the queue, now and for --keep-for seconds (workers started later
    too), not to run these tasks: a worker that takes one dead-letters it as revoked, unrun
    (a failed result goes to its producer). A task already running is not stopped."""
    settings = rabbitmq_settings(
        ctx, "the local backend's queue lives in `producer` itself: revoke with its LocalBroker"
    )
    from common.backend import check_revocation

    with invalid("--keep-for"):
        check_revocation([], keep_for)
    with invalid("ID"):
        ids, keep_for = check_revocation(task_ids, keep_for)
    with _admin(settings) as backend:
        backend.revoke(ids, keep_for=keep_for)
    for task_id in ids:
        print(f"revoked {task_id}: no worker of {settings.queue!r} starts it for {keep_for:g} s")


def _admin(settings: Settings, *, waits: bool = False) -> Backend:
    """A short-lived connection (the admin commands have their own: `consumer.admin`), or
    (`waits`) the check before the workers start, which waits for a broker that is down as
    the workers would."""
    from common.factory import Role, open_backend

    return open_backend(settings, Role.PROBE if waits else Role.ADMIN)


def _warn_about_consumer_timeout(settings: Settings) -> None:
    """Warn when a delivery can stay unacked past the broker's consumer_timeout: a worker
    holding `prefetch` tasks acks the last one after up to prefetch x task_timeout seconds."""
    limit, task, prefetch = (
        settings.broker_consumer_timeout,
        settings.task_timeout,
        settings.prefetch,
    )
    if task > limit:
        log.warning(
            "--task-timeout %gs is longer than the broker's consumer_timeout (%gs): the broker "
            "will close a worker's channel (and redeliver its task) before the limit is reached",
            task,
            limit,
        )
    elif task and prefetch * task > limit:
        log.warning(
            "--prefetch %d x --task-timeout %gs = %gs can pass the broker's consumer_timeout "
            "(%gs): the last of a worker's prefetched tasks may wait that long for its ack, and "
            "the broker would close the channel and hand them all out again; lower --prefetch",
            prefetch,
            task,
            prefetch * task,
            limit,
        )
    elif not task and prefetch > 1:
        log.info(
            "tasks have no time limit: a worker holding %d prefetched tasks acks the last one "
            "only after the ones before it; if that can take longer than the broker's "
            "consumer_timeout (%gs), lower --prefetch or set --task-timeout",
            prefetch,
            limit,
        )


def supervise(
    settings: Settings,
    worker_options: WorkerOptions,
    modules: tuple[str, ...],
    pool_kind: PoolKind = PoolKind.process,
    *,
    live: bool = False,
    metrics: tuple[str, int] | None = None,
) -> None:
    """Run the workers until a signal (or, with --burst, until they are done); then stop
    them in two steps (`consumer.shutdown`), and say what each worker did.

    `live`: on a terminal, a table of the workers redrawn while they run (`consumer.live`),
    and the summary as a table; else the summary is log lines.
    """
    from consumer.live import WorkerStderr, watching
    from consumer.shutdown import Shutdown, StoppedNow
    from consumer.spec import WorkerSpec
    from consumer.supervisor import WorkerPool
    from consumer.threads import ThreadWorkers

    shutdown = Shutdown(settings.shutdown_timeout)
    shutdown.install()
    # On a terminal, the worker processes' lines go above the live table, not through it.
    to_terminal = live and pool_kind is PoolKind.process and sys.stderr.isatty()
    stderr = WorkerStderr() if to_terminal else None
    events_shown = logging.getLogger("taskshuttle.events").isEnabledFor(logging.INFO)
    spec = WorkerSpec(
        settings,
        worker_options,
        modules,
        log_events=events_shown,
        metrics=metrics is not None,
        stderr=stderr and stderr.writer,
    )
    pool: WorkerPool | ThreadWorkers = (
        ThreadWorkers(spec, settings.workers, max_deaths=settings.max_deaths)
        if pool_kind is PoolKind.thread
        else WorkerPool(spec, settings.workers, max_deaths=settings.max_deaths)
    )
    what = "thread" if pool_kind is PoolKind.thread else "process"
    if settings.workers != 1:
        what = "threads" if pool_kind is PoolKind.thread else "processes"
    title = f"consumer · queue {settings.queue!r} · {settings.workers} worker {what}"
    try:
        with (
            _metrics_served(metrics, settings, pool),
            watching(pool, title, live=live, stderr=stderr),
            shutdown.stopping(pool),
        ):
            pool.start()
            pool.wait_ready(stop=shutdown.requested)
            if not shutdown.requested():
                pids = pool.pids
                status.info(
                    "consumer started: %d worker %s (%s %s) consuming queue %r on %s",
                    settings.workers,
                    what,
                    "pid" if len(pids) == 1 else "pids",
                    ", ".join(map(str, pids)),
                    settings.queue,
                    settings.safe_url,
                )
            pool.wait_all(shutdown.requested)
    except StoppedNow:
        _report(pool, live)
        raise
    _report(pool, live)
    why = f"on {shutdown.signals[0].name}" if shutdown.signals else "the queue is empty"
    status.info("consumer stopped (%s): every worker finished its task in hand", why)


def _report(pool: Watched, live: bool) -> None:
    """What each worker did, once they all stopped: a table on a terminal, else log lines."""
    from consumer import live as view

    if not live:
        view.log_summary(pool.in_flight, status)
        return
    from rich.console import Console

    Console().print(view.summary_table(pool.in_flight))


@contextlib.contextmanager
def _metrics_served(
    metrics: tuple[str, int] | None, settings: Settings, pool: WorkerPool | ThreadWorkers
) -> Iterator[None]:
    """The Prometheus endpoint, up before the first worker starts (a port in use fails the
    start, not a scrape) and closed after the last one stopped."""
    if metrics is None:
        yield
        return
    from common.errors import ConfigError
    from consumer.metrics import MetricsServer, SupervisorCollector

    server = MetricsServer(*metrics)
    collector = SupervisorCollector(
        settings,
        in_hand=pool.in_flight.in_hand,  # reads no task id: a worker may be writing one
        restarts=lambda: len(pool.deaths),
    )
    try:
        try:
            server.start(collector)
        except OSError as exc:
            host, port = metrics
            message = f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror}"
            raise ConfigError(message) from None
        yield
    finally:
        server.close()


def cli(argv: list[str] | None = None) -> None:
    run_app(app, "consumer", argv)
