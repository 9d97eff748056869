"""`producer`: send tasks, and (locally, or with --wait) collect and summarise the results.

The library (`producer.run`, the backends, pydantic) is imported when a job runs, so
``producer --help`` loads little more than typer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from common.cli import (
    CONNECTION,
    Handlers,
    Json,
    LogFormatOption,
    LogLevelOption,
    Verbose,
    Version,
    given,
    invalid,
    is_default,
    new_app,
    parse_json_object,
    run_app,
    settings_from,
    setup_logging,
    takes,
)
from common.defaults import BackendName
from common.logs import LogFormat

if TYPE_CHECKING:
    from collections.abc import Iterator

    from common.errors import BrokerError
    from common.settings import Settings
    from producer.local import StopFlag
    from producer.run import Job, Progress

app = new_app()

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


@app.command()
@takes(backend=BackendName.local)  # first in --help: it says which of the others apply
@takes(
    *CONNECTION,
    "workers",
    "prefetch",
    "max_attempts",
    "retry_base_delay",
    "retry_max_delay",
    "task_timeout",
    "max_deaths",
    "connect_timeout",
    before="handlers",
)
def main(
    ctx: typer.Context,
    count: Annotated[int, typer.Option(help="How many tasks to send.")] = 100,
    kind: Annotated[str, typer.Option(help="Task kind: echo, sleep, cpu, fail, or your own.")] = (
        "echo"
    ),
    payload: Annotated[str, typer.Option(help='A JSON object, e.g. {"seconds": 0.1}.')] = "{}",
    rate: Annotated[
        float | None, typer.Option(help="Tasks per second [default: no limit].")
    ] = None,
    wait: Annotated[bool, typer.Option(help="rabbitmq: wait for every result, summarise.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for results.")] = 300.0,
    handlers: Handlers = None,
    record: Annotated[
        Path | None,
        typer.Option(
            help="Write every task's fate to FILE as JSON lines: a line per result as it "
            "comes, then one per task left without a result.",
            metavar="FILE",
            dir_okay=False,
        ),
    ] = None,
    quiet: Quiet = False,
    as_json: Json = False,
    verbose: Verbose = False,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = LogFormat.text,
    version: Version = False,
) -> None:
    """Send COUNT tasks of KIND; with the local backend, also run the workers (--workers,
    --prefetch, --retry-delay, --task-timeout apply to those).

    To send one task of your own and get its result, see `producer send --help`."""
    setup_logging(verbose, log_level, log_format)
    job = _job(ctx, count, kind, payload, rate, timeout, handlers or [])
    local = given(ctx, "backend") is BackendName.local
    settings = settings_from(ctx, with_url=not local)  # --queue, --url, --workers...
    from producer import output

    stop = output.Stop()
    collecting = local or wait
    with (
        _record_file(record) as record_to,
        output.progress(
            count,
            collecting,
            show=not (quiet or as_json),
            who=local and log_format is LogFormat.text,  # json: lines for a machine to read
        ) as bar,
    ):
        summary, error = _run(
            job, settings, local, wait, timeout, tuple(handlers or ()), bar, stop, record_to
        )
    if collecting:
        output.report_results(
            summary, settings, as_json, count=count, timeout=timeout, stop=stop, error=error
        )
    else:
        output.report_sent(summary, settings, as_json, count=count, stop=stop, error=error)


def _run(
    job: Job,
    settings: Settings,
    local: bool,
    wait: bool,
    timeout: float,
    modules: tuple[str, ...],
    progress: Progress,
    stop: StopFlag,
    record: TextIO | None = None,
) -> tuple[dict[str, Any], BrokerError | None]:
    """Run the job on its backend (locally, with workers of its own): its summary, and the
    broker's error if the broker failed it midway (or it was stopped while waiting for one).

    Results are counted in a `Tally`: its memory stays the same however many tasks run.
    """
    from common.errors import BrokerError
    from producer import run
    from producer.ledger import Tally
    from producer.local import WorkerOptions

    tally = Tally(job.numbering, record=record)
    if local:
        options = WorkerOptions.from_settings(settings)
        _, backend = run.run_local(
            job,
            settings,
            options=options,
            timeout=timeout,
            handler_modules=modules,
            progress=progress,
            stop=stop,
            ledger=tally,
        )
        tally.record_lost()
        summary = tally.summary("local")
        return summary | {"recovered_from_dead_workers": backend.recovered}, None
    try:
        run.run_rabbitmq(
            job, settings, wait=wait, timeout=timeout, progress=progress, stop=stop, ledger=tally
        )
    except run.JobFailed as failed:
        failure: BrokerError = failed.cause
    except BrokerError as exc:
        if not stop.is_set():
            raise  # never connected: the error alone says it
        failure = exc  # stopped while waiting for the broker
    else:
        failure = None
    if wait:
        tally.record_lost()
    return tally.summary("rabbitmq"), failure


@contextlib.contextmanager
def _record_file(path: Path | None) -> Iterator[TextIO | None]:
    """The --record file, open for writing (None without the option)."""
    if path is None:
        yield None
        return
    try:
        handle = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise typer.BadParameter(f"cannot write it: {exc}", param_hint="'--record'") from None
    with handle:
        yield handle


def _job(
    ctx: typer.Context,
    count: int,
    kind: str,
    payload: str,
    rate: float | None,
    timeout: float,
    handlers: list[str],
) -> Job:
    """The job the options describe, checked before anything starts or connects."""
    for flag, wrong, rule in (
        ("--count", count < 0, "must be at least 0"),
        ("--rate", rate is not None and rate <= 0, "must be more than 0"),
        ("--timeout", timeout <= 0, "must be more than 0"),
    ):
        if wrong:
            raise typer.BadParameter(rule, param_hint=repr(flag))
    body = parse_json_object(payload, "--payload")
    from producer.local import import_handlers, registry
    from producer.run import Job

    with invalid("--handlers"):
        import_handlers(handlers)
    with invalid("--kind"):
        handler = registry.require(kind)
    with invalid("--payload"):
        handler.check(body)
    # Given by flag or environment, the tries travel with each task; else the consumer decides.
    tries = None if is_default(ctx, "max_attempts") else given(ctx, "max_attempts")
    return Job(count=count, kind=kind, payload=body, rate=rate, max_attempts=tries)


def cli(argv: list[str] | None = None) -> None:
    """``producer send ...`` is the application API's command (`producer.send`); anything
    else runs a job (``producer --count N``), as before there was a second command."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["send"]:
        from producer.send import app as send_app

        run_app(send_app, "producer send", args[1:])
    run_app(app, "producer", argv)
