"""What the consumer shows on its own terminal: a live table of its workers, and a summary.

Every figure comes from the in-flight registry's shared memory (`consumer.inflight`), where
each worker counts what it does in place: drawing the table costs the workers nothing, and
no message goes from a worker to the supervisor per task. On a terminal the table is redrawn
twice a second (rich's ``Live``, on stdout); log lines print above it, the worker
processes' too: their stderr is a pipe that the supervisor reads and prints through the live
display (`WorkerStderr`), else their lines would land in the middle of the table. Piped, or
with ``--log-format json``, there is no table, and the summary is log lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from common.local import MP_CONTEXT
from consumer.inflight import InFlight, SlotFigures

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Seconds of history behind a tasks/s figure.
RATE_WINDOW = 5.0
#: Redraws per second.
REFRESH = 2.0


class Watched(Protocol):
    """A pool (`WorkerPool`, `ThreadWorkers`): its slots' records."""

    in_flight: InFlight


class Rates:
    """Tasks per second, per slot and in all, over the last `RATE_WINDOW` seconds, from
    the counts read at each redraw."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: dict[int | None, deque[tuple[float, int]]] = {}

    def rate(self, key: int | None, settled: int, now: float) -> float:
        samples = self._samples.setdefault(key, deque())
        samples.append((now, settled))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        then, before = samples[0]
        if now <= then:
            return 0.0
        return max(0.0, (settled - before) / (now - then))


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _short(text: str, width: int) -> str:
    """`text` cut to `width`, with anything a terminal would act on shown escaped (a task id
    and a kind come from the network)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: width + 1])
    return text[: width - 1] + "~" if len(text) > width else text


def live_table(in_flight: InFlight, rates: Rates, title: str, now: float | None = None) -> Table:
    """The table the consumer redraws: a row per worker slot, then the totals. Task ids,
    kinds and the title are shown as plain text, never read as rich's markup."""
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic() if now is None else now
    table = Table(title=Text(title), title_justify="left")
    for name in ("slot", "pid", "ppid", "done", "failed", "retried", "restarts"):
        table.add_column(name, justify="right")
    table.add_column("task in hand")
    table.add_column("kind")
    table.add_column("for", justify="right")
    table.add_column("tasks/s", justify="right")
    rows = [in_flight.totals(slot) for slot in range(in_flight.slots)]
    for figures in rows:
        running = figures.running_for
        table.add_row(
            str(figures.slot),
            str(figures.pid or "-"),
            str(figures.ppid or "-"),
            str(figures.succeeded),
            str(figures.dead_lettered),
            str(figures.retried),
            str(in_flight.restarts[figures.slot]),
            Text(_short(figures.task_id, 32) if figures.task_id else "-"),
            Text(_short(figures.kind, 16) if figures.kind else ""),
            _seconds(running) if running is not None else "",
            f"{rates.rate(figures.slot, figures.settled, now):.1f}",
        )
    total = _sum(rows)
    busy = sum(f.task_id is not None for f in rows)
    table.add_section()
    table.add_row(
        "all",
        "",
        "",
        str(total.succeeded),
        str(total.dead_lettered),
        str(total.retried),
        str(sum(in_flight.restarts)),
        f"{busy} of {len(rows)} busy",
        "",
        "",
        f"{rates.rate(None, total.settled, now):.1f}",
        style="bold",
    )
    return table


def _sum(rows: list[SlotFigures]) -> SlotFigures:
    return SlotFigures(
        slot=-1,
        pid=None,
        ppid=None,
        succeeded=sum(f.succeeded for f in rows),
        dead_lettered=sum(f.dead_lettered for f in rows),
        retried=sum(f.retried for f in rows),
    )


def summary_table(in_flight: InFlight, title: str = "what each worker did") -> Table:
    """After the stop: a row per worker that ran (a replaced one and its replacement are
    two rows of one slot), then the totals."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("slot", "pid", "ppid", "done", "failed", "retried"):
        table.add_column(name, justify="right")
    table.add_column("ended")
    workers = in_flight.workers()
    for figures in workers:
        table.add_row(
            str(figures.slot),
            str(figures.pid),
            str(figures.ppid),
            str(figures.succeeded),
            str(figures.dead_lettered),
            str(figures.retried),
            "replaced" if figures.replaced else "stopped",
        )
    total = _sum(workers)
    table.add_section()
    table.add_row(
        "all",
        "",
        "",
        str(total.succeeded),
        str(total.dead_lettered),
        str(total.retried),
        f"{len(workers)} workers, {sum(in_flight.restarts)} replaced",
        style="bold",
    )
    return table


def log_summary(in_flight: InFlight, log: logging.Logger) -> None:
    """The summary as log lines: one per worker, then the totals."""
    workers = in_flight.workers()
    for f in workers:
        log.info(
            "worker slot %d pid %s (ppid %s): %d done, %d failed (dead-lettered), %d retried%s",
            f.slot,
            f.pid,
            f.ppid,
            f.succeeded,
            f.dead_lettered,
            f.retried,
            "; it died (or ran over --task-timeout) and was replaced" if f.replaced else "",
        )
    total = _sum(workers)
    log.info(
        "in all: %d done, %d failed (dead-lettered), %d retried, by %d workers (%d replaced)",
        total.succeeded,
        total.dead_lettered,
        total.retried,
        len(workers),
        sum(in_flight.restarts),
    )


class WorkerStderr:
    """A pipe for the worker processes' stderr (`writer` crosses into each of them, which
    puts it in place of its fd 2), and a thread that prints what comes, line by line, to
    this process's `sys.stderr`: while the live table is drawn, rich's proxy, which prints
    above the table.

    A line up to the pipe's atomic size (4 KiB on Linux) is written in one piece, so the
    lines of two workers never mix; a worker killed mid-line leaves half a line, shown as it is.
    """

    def __init__(self) -> None:
        self._reader, self.writer = MP_CONTEXT.Pipe(duplex=False)  # an OS pipe, read raw
        self._stop = threading.Event()
        self._partial = b""
        self._thread = threading.Thread(target=self._forward, name="worker-stderr", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Print what the workers wrote so far, then stop reading (the pipe stays open)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._partial:
            self._print(self._partial + b"\n")

    def close(self) -> None:
        self._reader.close()
        self.writer.close()

    def _forward(self) -> None:
        fd = self._reader.fileno()
        while not self._stop.is_set():
            if select.select([fd], [], [], 0.1)[0]:
                self._read(fd)
        while select.select([fd], [], [], 0)[0] and self._read(fd):  # what came before
            pass

    def _read(self, fd: int) -> bool:
        data = os.read(fd, 65536)
        if data:
            self._print(self._partial + data)
        return bool(data)

    def _print(self, data: bytes) -> None:
        *lines, self._partial = data.split(b"\n")
        if lines:
            sys.stderr.write("".join(line.decode(errors="replace") + "\n" for line in lines))
            sys.stderr.flush()


class LiveView:
    """The live table on the terminal while the block runs (rich's ``Live``, redrawn from
    its own thread); cleared at the end, when the summary takes its place. With `stderr`,
    the workers' lines are printed above the table."""

    def __init__(
        self,
        pool: Watched,
        title: str,
        console: Console | None = None,
        stderr: WorkerStderr | None = None,
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        self._stderr = stderr
        self._in_flight = pool.in_flight
        self._title = title
        self._rates = Rates()
        self._lock = threading.Lock()  # rich draws from its thread, and at start and stop
        self._started = time.monotonic()
        self.live = Live(
            console=console or Console(),
            get_renderable=self._render,
            refresh_per_second=REFRESH,
            transient=True,
            # Log lines above the table only when they would land on this terminal anyway:
            # a stderr sent to a file (``2>consumer.log``) stays there.
            redirect_stderr=sys.stderr.isatty(),
        )

    def _render(self) -> Table:
        with self._lock:
            up = _seconds(time.monotonic() - self._started)
            return live_table(self._in_flight, self._rates, f"{self._title} · up {up}")

    def __enter__(self) -> LiveView:
        self.live.start()
        if self._stderr is not None:
            self._stderr.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stderr is not None:
            self._stderr.stop()  # the workers' last lines above the table, before it goes
        self.live.stop()


@contextlib.contextmanager
def watching(
    pool: Watched, title: str, *, live: bool, stderr: WorkerStderr | None = None
) -> Iterator[None]:
    """The live table while the block runs, if `live`; else nothing."""
    if not live:
        yield
        return
    with LiveView(pool, title, stderr=stderr):
        yield
