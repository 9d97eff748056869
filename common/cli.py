"""What both command-line programs share: one-line errors, exit codes, logging, output."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from common.errors import TaskshuttleError
from common.settings import LOG_FORMAT

stderr = Console(stderr=True)


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


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
    except typer.TyperException as exc:  # click's usage errors: bad flag, bad value...
        fail(prog, exc.format_message(), getattr(exc, "exit_code", 2))
    except BrokenPipeError:  # output piped into `head`
        code = 0
    raise SystemExit(code if isinstance(code, int) else 0)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    # pika logs every failed connection attempt at ERROR with a stack of detail; the
    # project reports the same failure in one line, so pika speaks only when asked to.
    logging.getLogger("pika").setLevel(logging.INFO if verbose else logging.CRITICAL)


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    out = Console()
    latency = summary["latency_ms"]
    table = Table(title=f"taskshuttle · {summary['backend']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in [
        ("tasks sent", summary["sent"]),
        ("done", summary["done"]),
        ("failed (dead-lettered)", summary["failed"]),
        ("lost (no result)", summary["lost"]),
        ("seconds", summary["seconds"]),
        ("throughput (tasks/s)", summary["throughput_per_s"]),
        ("latency p50 / p95 / max (ms)", f"{latency['p50']} / {latency['p95']} / {latency['max']}"),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    if summary["workers"]:
        workers = Table(title="who did what")
        for column in ("worker pid", "ppid", "name", "tasks"):
            workers.add_column(column, justify="right")
        for row in summary["workers"]:
            workers.add_row(str(row["pid"]), str(row["ppid"]), row["name"], str(row["tasks"]))
        out.print(workers)
    ledger = Table(title="delivery ledger")
    ledger.add_column("fate")
    ledger.add_column("tasks", justify="right")
    for fate, n in summary["ledger"].items():
        ledger.add_row(fate, str(n))
    out.print(ledger)


Callback = Callable[..., Any]
