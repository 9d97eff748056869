"""What the command-line programs share: one-line errors, exit codes, logging, output.

Rich is imported only to draw a table, so ``--help`` and the workers never load it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import typer

from common.errors import TaskshuttleError
from common.logs import LogFormat, LogLevel, configure
from common.options import typed_name


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def new_app(**kwargs: Any) -> typer.Typer:
    """A typer app with click's plain help: flags shown as flags, ``[env var: ...]`` kept
    (rich's help reads those brackets as markup and drops them)."""
    return typer.Typer(
        add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, **kwargs
    )


def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> NoReturn:
    """Run a typer app so that every error is one line on stderr and a non-zero exit:
    2 for a usage error, the error's own code for the project's errors, 130 on Ctrl-C."""
    try:
        code = app(args=argv, prog_name=prog, standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        fail(prog, "interrupted", 130)
    except TaskshuttleError as exc:
        fail(prog, str(exc), exc.exit_code)
    except typer.BadParameter as exc:
        fail(prog, _invalid_value(exc), exc.exit_code)
    except typer.TyperException as exc:  # click's other usage errors: unknown flag...
        fail(prog, exc.format_message(), getattr(exc, "exit_code", 2))
    except BrokenPipeError:  # output piped into `head`
        code = 0
    raise SystemExit(code if isinstance(code, int) else 0)


def _invalid_value(exc: typer.BadParameter) -> str:
    """click's "Invalid value for '--x': ...", naming the flag or the environment variable
    the value came from (click itself names both, whichever it was)."""
    if exc.param_hint is None and exc.param is not None and exc.ctx is not None:
        exc.param_hint = typed_name(exc.ctx, exc.param.name or "")
    exc.message = exc.message.removeprefix("Value error, ")  # typer's own choice errors
    return exc.format_message()


@contextlib.contextmanager
def invalid(flag: str) -> Iterator[None]:
    """An error raised inside becomes click's usage error for `flag` (e.g. a handlers module
    that does not import, for ``--handlers``)."""
    try:
        yield
    except Exception as exc:
        raise typer.BadParameter(str(exc), param_hint=repr(flag)) from None


def setup_logging(
    verbose: bool = False,
    level: LogLevel | None = None,
    log_format: LogFormat = LogFormat.text,
) -> None:
    """Logging on stderr as ``--log-level``, ``-v`` (INFO) and ``--log-format`` say: a level
    given by name wins over ``-v``; neither leaves the default (`common.logs.configure`)."""
    number = level.number if level is not None else logging.INFO if verbose else None
    configure(number, log_format)


def parse_json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=repr(flag)) from None
    if not isinstance(value, dict):
        raise typer.BadParameter(
            f"must be a JSON object, got {type(value).__name__}", param_hint=repr(flag)
        )
    return value


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table on stdout, numbers to the right; with no column names, a label/value table."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=bool(columns))
    if columns:
        for index, column in enumerate(columns):
            numbers = all(isinstance(row[index], int | float) for row in rows)
            table.add_column(column, justify="right" if numbers else "left")
    else:
        table.add_column(style="bold")
        table.add_column(justify="right")
    for row in rows:  # plain text: a worker's name or host is never read as rich's markup
        table.add_row(*(Text(str(cell)) for cell in row))
    Console().print(table)


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    latency = summary["latency_ms"]
    rows: list[list[Any]] = [
        ["tasks sent", summary["sent"]],
        ["done", summary["done"]],
        ["failed (dead-lettered)", summary["failed"]],
        ["lost (no result)", summary["lost"]],
        ["seconds", summary["seconds"]],
        ["throughput (tasks/s)", summary["throughput_per_s"]],
        ["latency p50 / p95 / max (ms)", f"{latency['p50']} / {latency['p95']} / {latency['max']}"],
    ]
    print_table(f"taskshuttle · {summary['backend']}", [], rows)
    if summary["workers"]:
        # The host column only when the workers ran on more than one machine (or container).
        columns, fields = ["worker pid", "ppid", "name", "tasks"], ["pid", "ppid", "name", "tasks"]
        if len({w["host"] for w in summary["workers"]}) > 1:
            columns, fields = ["host", *columns], ["host", *fields]
        workers = [[w[f] for f in fields] for w in summary["workers"]]
        print_table("who did what", columns, workers)
    print_table("delivery ledger", ["fate", "tasks"], [list(i) for i in summary["ledger"].items()])
