"""`producer`: send tasks, and (locally, or with --wait) collect and summarise the results."""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.cli import fail, parse_json_object, print_summary, run_app, setup_logging, stderr
from common.settings import BackendName, load_settings
from consumer.handlers import import_handlers, registry
from consumer.worker import WorkerOptions
from producer import run

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class _Bar(run.Progress):
    """A rich progress bar on stderr: one line for sent, one for done."""

    def __init__(self, total: int, counting_results: bool) -> None:
        self._bar = Progress(
            TextColumn("{task.description:>5}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        )
        self._sent = self._bar.add_task("sent", total=total)
        self._done = self._bar.add_task("done", total=total) if counting_results else None

    def __enter__(self) -> _Bar:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def sent(self, n: int) -> None:
        self._bar.advance(self._sent, n)

    def done(self, n: int) -> None:
        if self._done is not None:
            self._bar.advance(self._done, n)


@app.command()
def main(
    backend: Annotated[
        BackendName, typer.Option(help="local: one process tree; rabbitmq: a broker.")
    ] = BackendName.local,
    count: Annotated[int, typer.Option(help="How many tasks to send.")] = 100,
    kind: Annotated[
        str, typer.Option(help="Task kind: echo, sleep, cpu, fail, or your own.")
    ] = "echo",
    payload: Annotated[
        str, typer.Option(help='Task payload, a JSON object, e.g. {"seconds": 0.1}.')
    ] = "{}",
    queue: Annotated[
        str | None, typer.Option(help="Queue name [env TASKSHUTTLE_QUEUE; default tasks].")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Broker URL [env AMQP_URL].")] = None,
    rate: Annotated[
        float | None, typer.Option(help="Tasks per second (default: as fast as possible).")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="rabbitmq: wait for every result and summarise.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for results.")] = 300.0,
    workers: Annotated[
        int | None,
        typer.Option(help="local: worker processes to start [env TASKSHUTTLE_WORKERS; default 2]."),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            help="local: tasks a worker may hold at once [env TASKSHUTTLE_PREFETCH; 100]."
        ),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Tries per task before it is dead-lettered [default 3].")
    ] = None,
    retry_delay: Annotated[
        float | None,
        typer.Option(help="local: first retry delay in seconds, doubling per attempt [default 1]."),
    ] = None,
    task_timeout: Annotated[
        float | None, typer.Option(help="local: seconds a task may run before it fails.")
    ] = None,
    handlers: Annotated[
        list[str] | None,
        typer.Option(help="Import this module to register task kinds (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> int:
    """Send COUNT tasks of KIND; with the local backend, also run the workers."""
    setup_logging(verbose)
    if count < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--count")
    if rate is not None and rate <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="--rate")
    if timeout <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="--timeout")
    body = parse_json_object(payload, "--payload")
    modules = tuple(handlers or ())
    import_handlers(list(modules))
    handler = registry.require(kind)
    try:
        handler.check(body)
    except Exception as exc:
        fail("producer", str(exc))
    settings = load_settings(
        amqp_url=url,
        queue=queue,
        workers=workers,
        prefetch=prefetch,
        max_attempts=max_attempts,
        retry_base_delay=retry_delay,
        task_timeout=task_timeout,
    )
    stop = _stop_on_signals()
    job = run.Job(count=count, kind=kind, payload=body, rate=rate, max_attempts=max_attempts)
    collecting = backend is BackendName.local or wait
    bar = run.Progress() if quiet or as_json else _Bar(count, collecting)
    with bar if isinstance(bar, _Bar) else contextlib.nullcontext():
        if backend is BackendName.local:
            options = WorkerOptions.from_settings(settings)
            ledger, local = run.run_local(
                job,
                settings,
                options=options,
                timeout=timeout,
                handler_modules=modules,
                progress=bar,
                stop=stop,
            )
            summary = ledger.summary("local")
            summary["recovered_from_dead_workers"] = local.recovered
        else:
            ledger = run.run_rabbitmq(
                job, settings, wait=wait, timeout=timeout, progress=bar, stop=stop
            )
            summary = ledger.summary("rabbitmq")
    if not collecting:
        message = {
            "backend": "rabbitmq",
            "sent": summary["sent"],
            "queue": settings.queue,
            "seconds": summary["seconds"],
        }
        print(
            json.dumps(message)
            if as_json
            else f"sent {summary['sent']} tasks to queue {settings.queue!r} on {settings.safe_url} "
            f"(all confirmed) in {summary['seconds']}s"
        )
        return 0
    print_summary(summary, as_json)
    if stop.signal:
        where = (
            "the local queue died with this process tree"
            if backend is BackendName.local
            else f"they stay in queue {settings.queue!r} for the consumers"
        )
        fail(
            "producer",
            f"stopped by {stop.signal.name}: {summary['sent']} of {count} sent, "
            f"{summary['lost']} without a result ({where})",
            128 + stop.signal,
        )
    if summary["lost"]:
        fail("producer", f"{summary['lost']} tasks got no result within {timeout:g}s", 1)
    return 0


class _Stop:
    """Set by SIGINT or SIGTERM: stop sending, let the tasks in hand finish, summarise."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def is_set(self) -> bool:
        return self.signal is not None

    def __call__(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum)


def _stop_on_signals() -> _Stop:
    stop = _Stop()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stop


def cli(argv: list[str] | None = None) -> None:
    run_app(app, "producer", argv)
