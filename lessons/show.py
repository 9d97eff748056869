"""How the lessons print: rich tables and short notes on stdout, or the result as JSON."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

#: On a terminal, its width; piped or captured, 100 columns (rich would pick 80).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 100)


def table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None
) -> None:
    console.print(f"[italic]{title}[/italic]")  # above the table: a title inside would wrap
    out = Table(caption=caption, caption_justify="left")
    for index, column in enumerate(columns):
        if index == 0:
            out.add_column(column, justify="left", no_wrap=True)
        else:
            out.add_column(column, justify="right")
    for row in rows:
        out.add_row(*(_cell(value) for value in row))
    console.print(out)


def heading(text: str) -> None:
    console.print(f"\n[bold]{text}[/bold]")


def note(text: str) -> None:
    console.print(text, soft_wrap=False)


def trace(lines: Iterable[str]) -> None:
    for line in lines:
        console.print(f"  {line}", markup=False)


def as_json(result: Any) -> None:
    print(json.dumps(dataclasses.asdict(result), indent=2, default=str))


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if value is None:
        return "-"
    return str(value)
