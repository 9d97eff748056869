"""How the lessons print: rich tables and short notes on stdout, or the result as JSON; and,
while a lesson runs, each step announced before it starts.

Live output (`start_live`, set by ``python -m lessons``): `step` prints one line naming the
step before running it, and on a terminal keeps a spinner turning while it runs; `part` prints
a step's result as soon as it is measured; `echo` passes on, as it comes, what a course
example prints. Called as a library (tests, `run()` alone), the lessons print nothing; then
`render(result)` prints everything at once.

When stdout is not a terminal (a pipe, a test), the step lines are plain lines, in the order
the steps run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from lessons.i18n import t, yes_no

#: On a terminal, its width; piped or captured, 100 columns (rich would pick 80).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 100)

R = TypeVar("R")


@dataclasses.dataclass
class _Live:
    on: bool = False
    #: False under --json: steps are announced on stderr, results are not drawn.
    parts: bool = True
    steps: int = 0
    out: Console = dataclasses.field(default_factory=lambda: console)


_live = _Live()


def start_live(as_json: bool = False) -> None:
    """Announce steps from now on (on stderr when stdout carries JSON)."""
    global _live
    out = Console(stderr=True, highlight=False) if as_json else console
    _live = _Live(on=True, parts=not as_json, out=out)


def stop_live() -> None:
    global _live
    _live = _Live()


def is_live() -> bool:
    return _live.on and _live.parts


@contextlib.contextmanager
def step(key: str, **values: object) -> Iterator[None]:
    """Announce a step (one line), then run the body; on a terminal a spinner with the
    seconds spent turns below the line until the body is done."""
    if not _live.on:
        yield
        return
    _live.steps += 1
    text = t(key, **values)
    _live.out.print(t("live.step", n=_live.steps, text=text), markup=False, soft_wrap=True)
    if not _live.out.is_terminal:
        yield
        return
    started = time.monotonic()
    with _live.out.status(t("live.running", seconds=0.0)) as status:
        ticking = True

        def tick() -> None:
            while ticking:
                status.update(t("live.running", seconds=time.monotonic() - started))
                time.sleep(0.2)

        import threading

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            ticking = False
            ticker.join()


def measured(key: str, work: Callable[[], R], **values: object) -> R:
    """`work()` run as one announced step."""
    with step(key, **values):
        return work()


def part(render: Callable[[Any], None], result: Any) -> None:
    """Draw one step's result now, if the lesson runs live."""
    if is_live():
        render(result)


def echo(line: str) -> None:
    """A line a course example printed, passed on live as it comes."""
    if is_live():
        console.print(f"    {line}", markup=False, soft_wrap=True)


def table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None
) -> None:
    console.print(title, style="italic", markup=False)  # above the table: it would wrap inside
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
    console.print()
    console.print(text, style="bold", markup=False)


def note(text: str) -> None:
    for line in wrap(text, console.width):
        console.print(line, markup=False, soft_wrap=True)


#: one CJK character (or full-width punctuation), a run of other non-blank characters, blanks
_TOKEN = re.compile(
    r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f“”]|[^\s\u2e80-\u9fff\uf900-\ufaff"
    r"\uff00-\uffef\u3000-\u303f“”]+|\s+"
)
#: may not begin a line: it stays at the end of the line before, one or two cells over
_CLOSING = set(",。:;、)!?”》")


def wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` cells: between words, and between any two CJK characters
    (Chinese has no spaces to break at; rich would break only at the rare spaces)."""
    lines: list[str] = []
    line = ""
    for token in _TOKEN.findall(text):
        if token.isspace():
            if line:
                line += " "
            continue
        if not line or cell_len(line + token) <= width or token in _CLOSING:
            line += token
            continue
        lines.append(line.rstrip())
        line = token
    if line.strip():
        lines.append(line.rstrip())
    return lines


def trace(lines: Iterable[str]) -> None:
    for line in lines:
        console.print(f"  {line}", markup=False)


def code(snippet: str) -> None:
    """A few lines of the course's code, as the course writes them."""
    for line in snippet.strip("\n").splitlines():
        console.print(f"  │ {line}", markup=False, style="cyan")


def as_json(result: Any) -> None:
    print(json.dumps(dataclasses.asdict(result), indent=2, default=str, ensure_ascii=False))


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if value is None:
        return "-"
    return str(value)
