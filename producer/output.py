"""What `producer` shows while it runs and when it is done, and how it stops on a signal."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from common.cli import fail, print_summary
from producer import run

if TYPE_CHECKING:
    from rich.console import RenderableType

    from common.errors import BrokerError
    from common.schemas import TaskResult
    from common.settings import Settings
    from producer.ledger import WorkerKey

#: Seconds between two updates of the live "who did what" table.
WHO_EVERY = 0.5


def who_table(workers: Iterable[tuple[WorkerKey, int]]) -> RenderableType:
    """The summary's "who did what" table, from (worker, tasks) pairs: a host column only
    when the workers ran on more than one machine (or container). Names and hosts come from
    the results: plain text, never rich's markup."""
    from rich.table import Table
    from rich.text import Text

    rows = sorted(workers)
    table = Table(title="who did what")
    several_hosts = len({host for (host, _pid, _ppid, _name), _n in rows}) > 1
    columns = ["worker pid", "ppid", "name", "tasks"]
    for column in ["host", *columns] if several_hosts else columns:
        table.add_column(column, justify="left" if column in ("host", "name") else "right")
    for (host, pid, ppid, name), tasks in rows:
        cells = [Text(str(pid)), Text(str(ppid)), Text(name), Text(str(tasks))]
        table.add_row(*([Text(host), *cells] if several_hosts else cells))
    return table


class _Bar(run.Progress):
    """A rich progress bar on stderr: one line for sent, one for done; with `who`, the
    "who did what" table under it, counted from the results as they come and redrawn
    every `WHO_EVERY` seconds."""

    def __init__(self, total: int, counting_results: bool, who: bool = False) -> None:
        from rich.console import Console, Group
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        #: Tasks per worker, counted on the main thread; rich draws from its own thread,
        #: so it reads `_shown`, a table built from a copy, replaced whole.
        self._who: Counter[WorkerKey] | None = Counter() if who else None
        self._shown: RenderableType | None = None
        self._drawn_at = 0.0
        parent = self

        class _WithWho(Progress):
            def get_renderable(self) -> RenderableType:
                bars = super().get_renderable()
                shown = parent._shown
                return bars if shown is None else Group(bars, shown)

        self._bar = _WithWho(
            TextColumn("{task.description:>5}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
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

    def result(self, result: TaskResult) -> None:
        if self._who is not None:
            from producer.ledger import worker_key

            self._who[worker_key(result)] += 1

    def done(self, n: int) -> None:
        if self._done is not None:
            self._bar.advance(self._done, n)
        now = time.monotonic()
        if self._who and now - self._drawn_at >= WHO_EVERY:
            self._shown = who_table(self._who.items())
            self._drawn_at = now


@contextlib.contextmanager
def progress(
    total: int, counting_results: bool, *, show: bool, who: bool = False
) -> Iterator[run.Progress]:
    """A progress bar while the job runs, drawn only on a terminal: piped or captured,
    stderr gets errors and nothing else (rich would leave an empty line there). With
    `who` (the local backend), the "who did what" table under it, as the results come."""
    if not (show and sys.stderr.isatty()):
        yield run.Progress()
        return
    with _Bar(total, counting_results, who=who and counting_results) as bar:
        yield bar


class Stop:
    """Set by SIGINT or SIGTERM: stop sending, let the tasks in hand finish, summarise."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def is_set(self) -> bool:
        return self.signal is not None

    def __call__(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum)


def report_sent(
    summary: dict[str, Any],
    settings: Settings,
    as_json: bool,
    *,
    count: int,
    stop: Stop,
    error: BrokerError | None = None,
) -> None:
    """What a producer that did not wait for results says: how many of how many went where,
    all confirmed (a task counts as sent once the broker confirmed it); then, if it stopped
    early, why, as an error."""
    sent, missing = summary["sent"], count - summary["sent"]
    if as_json:
        report = {"backend": "rabbitmq", "sent": sent, "requested": count, "unconfirmed": missing}
        print(json.dumps(report | {"queue": settings.queue, "seconds": summary["seconds"]}))
    else:
        how_many = f"{sent} tasks" if not missing else f"{sent} of {count} tasks"
        confirmed = "all confirmed" if not missing else f"{sent} confirmed, {missing} not"
        print(
            f"sent {how_many} to queue {settings.queue!r} on {settings.safe_url} "
            f"({confirmed}) in {summary['seconds']}s"
        )
    if stop.signal:
        fail(
            "producer",
            f"stopped by {stop.signal.name}: {sent} of {count} sent and confirmed, "
            f"{missing} not sent",
            128 + stop.signal,
        )
    if error is not None:
        fail("producer", f"{error} ({sent} of {count} sent and confirmed)", error.exit_code)


def report_results(
    summary: dict[str, Any],
    settings: Settings,
    as_json: bool,
    *,
    count: int,
    timeout: float,
    stop: Stop,
    error: BrokerError | None = None,
) -> None:
    """The summary; then, if the run was cut short or results are missing, an error."""
    print_summary(summary, as_json)
    if stop.signal:
        where = (
            "the local queue died with this process tree"
            if summary["backend"] == "local"
            else f"they stay in queue {settings.queue!r} for the consumers"
        )
        fail(
            "producer",
            f"stopped by {stop.signal.name}: {summary['sent']} of {count} sent, "
            f"{summary['lost']} without a result ({where})",
            128 + stop.signal,
        )
    if error is not None:
        fail(
            "producer",
            f"{error} ({summary['sent']} of {count} sent and confirmed, "
            f"{summary['lost']} without a result)",
            error.exit_code,
        )
    if summary["lost"]:
        fail("producer", f"{summary['lost']} tasks got no result within {timeout:g}s", 1)
