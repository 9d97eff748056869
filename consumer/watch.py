"""`consumer status` and `consumer events`: the operator's view of a running system.

- ``status``: one screen on a queue family (`consumer.status`): its queues' figures, from the
  management API or, failing that, from AMQP alone (and then says what it cannot know), and
  the live workers, from their heartbeats. ``--watch`` refreshes it until Ctrl-C.
- ``events``: the task events of a queue's workers as they happen, one line each (or one
  JSON object each), until Ctrl-C or ``--count`` events.

Both end with exit 0 on Ctrl-C: stopping to watch is how they are used, not a failure. Like
the rest of the command line, this module imports only typer; the library is imported by the
command that runs.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from common.cli import CONNECTION, invalid, settings_from, takes

if TYPE_CHECKING:
    from rich.console import RenderableType

    from common.events import EventKind, TaskEvent
    from consumer.status import QueueFamilyStatus, QueueStatus, StatusWatcher


def register(app: typer.Typer) -> None:
    """Add ``status`` and ``events`` to the `consumer` app."""
    app.command("status")(status)
    app.command("events")(events)


# -- status ---------------------------------------------------------------------------------

ManagementUrl = Annotated[
    str | None,
    typer.Option(
        envvar="TASKSHUTTLE_MANAGEMENT_URL",
        help="The broker's management API (credentials: its own, else the AMQP URL's). "
        "By default the AMQP URL's host, port 15672. If it does not answer, the figures come "
        "from AMQP alone: no unacked counts, rates or consumers' nodes.",
        show_default=False,
    ),
]


@takes(*CONNECTION)
def status(
    ctx: typer.Context,
    management_url: ManagementUrl = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document (with --watch, one per line).")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option(min=0.5, help="Seconds between refreshes (--watch).")
    ] = 2.0,
    listen: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds to listen for the workers' heartbeats (they come every 2 s; "
            "0: do not look for workers).",
        ),
    ] = 2.5,
) -> None:
    """Show the queue family of --queue (the work queue, the delayed tasks of every queue of
    its type, its DLQ) and the live workers: messages ready and unacked, consumers, rates,
    each worker's tasks."""
    settings = settings_from(ctx)
    from common.rabbitmq.management import check_management_url
    from consumer.status import StatusWatcher

    if management_url is not None:
        with invalid("--management-url"):
            check_management_url(management_url)

    with StatusWatcher(settings, management_url) as watcher:
        if not watch:
            _show(watcher.collect(listen), as_json)
            return
        try:
            _watch(watcher, listen, interval, as_json)
        except KeyboardInterrupt:
            return


def _watch(watcher: StatusWatcher, listen: float, interval: float, as_json: bool) -> None:
    """Refresh until Ctrl-C. Each round after the first listens for heartbeats for
    `interval` seconds (or, with ``--listen 0``, sleeps), then takes the figures again."""

    def again() -> QueueFamilyStatus:
        if not listen:
            time.sleep(interval)
        return watcher.collect(interval if listen else 0)

    if as_json:
        _show(watcher.collect(listen), as_json=True, indent=None)
        while True:
            _show(again(), as_json=True, indent=None)
    from rich.console import Console
    from rich.live import Live

    with Live(render(watcher.collect(listen)), console=Console(), auto_refresh=False) as live:
        while True:
            live.update(render(again()), refresh=True)


def _show(found: QueueFamilyStatus, as_json: bool, indent: int | None = 2) -> None:
    if as_json:
        print(json.dumps(found.model_dump(mode="json"), indent=indent), flush=True)
        return
    from rich.console import Console

    Console().print(render(found))


#: How an unknown figure is shown: never as 0.
UNKNOWN = "?"


def render(found: QueueFamilyStatus) -> RenderableType:
    """The status screen: a heading, the queues, the workers."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from consumer.status import Source

    when = datetime.fromtimestamp(found.at).strftime("%H:%M:%S")
    heading = Text(f"queue {found.queue!r} on {found.broker} at {when}", style="bold")
    if found.source is Source.MANAGEMENT:
        source = Text(
            f"figures from the management API ({found.management_url}), "
            "as of its last statistics (every 5 s by default)"
        )
    else:
        source = Text(
            f"figures from AMQP alone: {found.management_error}; "
            f"unknown ({UNKNOWN}): unacked, rates, consumers' nodes",
            style="yellow",
        )
    queues = Table(show_edge=False, pad_edge=False)
    queues.add_column("queue", overflow="fold")  # a long name folds; figures never do
    for column in ("ready", "unacked", "consumers", "publish/s", "deliver/s"):
        queues.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    queues.add_column("consumers on", overflow="fold")
    for one in found.queues:
        queues.add_row(*_queue_row(one, found.queue))
    return Group(heading, source, queues, Text(""), _workers(found))


def _queue_row(one: QueueStatus, work_queue: str) -> list[str]:
    # A companion by what follows the work queue's name, which the heading gives.
    name = one.name if one.role == "work" else "  " + one.name.removeprefix(work_queue)
    if one.role == "delayed":  # the shared delay levels: not this queue's alone
        name = f"  delayed, all queues ({one.name})"
    if not one.exists:
        return [name, "-", "-", "-", "-", "-", "no such queue"]

    def number(value: float | None, rate: bool = False) -> str:
        if value is None:
            return UNKNOWN
        return f"{value:.1f}" if rate else str(value)

    nodes = UNKNOWN
    if one.consumer_details is not None:
        count: dict[str, int] = {}
        for consumer in one.consumer_details:
            node = consumer.node or UNKNOWN
            count[node] = count.get(node, 0) + 1
        nodes = ", ".join(f"{node} x{n}" for node, n in sorted(count.items())) or "-"
    return [
        name,
        number(one.ready),
        number(one.unacked),
        number(one.consumers),
        number(one.publish_rate, rate=True),
        number(one.deliver_rate, rate=True),
        nodes,
    ]


def _workers(found: QueueFamilyStatus) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    if found.listened_for == 0:
        return Text("workers not looked for (--listen 0)")
    if not found.workers:
        return Text(f"no workers heard (listened for {found.listened_for:g} s)", style="yellow")
    table = Table(title=f"workers heard ({len(found.workers)})", show_edge=False, pad_edge=False)
    for column in ("host", "pid", "ppid", "done", "failed", "retried"):
        table.add_column(column, justify="left" if column == "host" else "right")
    table.add_column("task in hand", overflow="fold")
    table.add_column("for", justify="right")  # as of the last heartbeat
    table.add_column("last heard", justify="right")
    for w in found.workers:
        in_hand = f"{w.in_hand_kind or UNKNOWN}[{w.in_hand}]" if w.in_hand else "-"
        running = f"{w.in_hand_for:.1f} s" if w.in_hand_for is not None else "-"
        table.add_row(
            _printable(w.host),
            str(w.pid),
            str(w.ppid),
            *(UNKNOWN if n is None else str(n) for n in (w.succeeded, w.failed, w.retried)),
            _printable(in_hand),
            running,
            f"{w.last_heard:.1f} s ago",
        )
    return table


def _printable(text: str) -> str:
    """`text` (from the network) with anything a terminal would act on shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- events ---------------------------------------------------------------------------------


class Outcome(StrEnum):
    """What became of an attempt: each is one kind of task event."""

    succeeded = "succeeded"
    failed = "failed"
    retried = "retried"
    dead_lettered = "dead-lettered"


EVENTS_NOTICE = (
    "task events are seen from at most {:g} s after this line: workers publish them only while "
    "someone listens, and learn it from their next heartbeat"
)


@takes("queue", "amqp_url")  # no --queue-type: its listener has an exclusive queue of its own
def events(
    ctx: typer.Context,
    all_queues: Annotated[
        bool, typer.Option("--all-queues", help="The events of every queue's workers.")
    ] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            metavar="<kind>",
            help="Only events of this kind (repeatable): task-received, task-started, "
            "task-succeeded, task-failed, task-retried, task-dead-lettered, worker-online, "
            "worker-heartbeat, worker-offline (the part after 'task-' or 'worker-' will do). "
            "By default every kind but worker-heartbeat.",
        ),
    ] = None,
    outcome: Annotated[
        list[Outcome] | None,
        typer.Option(
            metavar="<succeeded|failed|retried|dead-lettered>",
            help="Only the attempts that ended so (repeatable; adds to --kind).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    count: Annotated[
        int | None,
        typer.Option(min=1, help="Exit 0 after this many events.", show_default=False),
    ] = None,
) -> None:
    """Print the task events of --queue's workers as they happen, one line each, until
    Ctrl-C (or --count events)."""
    settings = settings_from(ctx)
    kinds = _kinds(list(kind or ()), list(outcome or ()))
    from common.events import HEARTBEAT_INTERVAL
    from common.factory import open_event_listener

    queue_name = None if all_queues else settings.queue
    listener = open_event_listener(settings.amqp_url, queue_name, kinds)
    where = "every queue" if all_queues else f"queue {settings.queue!r}"
    print(f"consumer: listening to the events of {where} on {settings.safe_url}", file=sys.stderr)
    print(f"consumer: {EVENTS_NOTICE.format(HEARTBEAT_INTERVAL)}", file=sys.stderr, flush=True)
    shown = 0
    try:
        with listener:
            while count is None or shown < count:
                event = listener.get(timeout=1.0)  # a short wait, so Ctrl-C is seen at once
                if event is None:
                    continue
                print(_json_line(event) if as_json else event_line(event), flush=True)
                shown += 1
    except KeyboardInterrupt:
        return


def _kinds(asked: list[str], outcomes: list[Outcome]) -> list[EventKind]:
    """The event kinds to show: those asked by --kind and --outcome, or every kind but the
    heartbeats (one per worker every 2 s would drown the rest)."""
    from common.events import EventKind

    known = {k.value: k for k in EventKind}
    for k in EventKind:  # "succeeded" for "task-succeeded", "heartbeat" for "worker-heartbeat"
        known.setdefault(k.value.partition("-")[2], k)
    chosen = []
    for name in asked:
        if name not in known:
            raise typer.BadParameter(
                f"unknown event kind {name!r}; known: {', '.join(k.value for k in EventKind)}",
                param_hint="'--kind'",
            )
        chosen.append(known[name])
    chosen += [EventKind(f"task-{o.value}") for o in outcomes]
    if not chosen:
        chosen = [k for k in EventKind if k is not EventKind.HEARTBEAT]
    return list(dict.fromkeys(chosen))


def _json_line(event: TaskEvent) -> str:
    return json.dumps(event.model_dump(mode="json", exclude_none=True))


def event_line(event: TaskEvent) -> str:
    """One event as a line: when, who, what, which task, and what came of it."""
    from common.events import EventKind

    when = datetime.fromtimestamp(event.at).strftime("%H:%M:%S.%f")[:-3]
    who = f"{event.host}:{event.pid}"
    cells = [when, who.ljust(20), event.kind.value.ljust(18)]
    if event.task_id is not None:
        cells += [event.task_id.ljust(32), (event.task_kind or "?").ljust(8)]
        if event.attempt is not None:
            cells.append(f"attempt {event.attempt}")
    details = {
        EventKind.SUCCEEDED: lambda e: _seconds("took", e.duration),
        EventKind.FAILED: lambda e: f"{_seconds('after', e.duration)} error: {e.error}",
        EventKind.RETRIED: lambda e: _seconds("retry in", e.retry_in),
        EventKind.DEAD_LETTERED: lambda e: f"reason: {e.reason} error: {e.error}",
        EventKind.HEARTBEAT: _totals,
        EventKind.OFFLINE: _totals,
    }
    detail = details.get(event.kind)
    if detail is not None:
        cells.append(detail(event))
    return _printable("  ".join(cells).rstrip())


def _seconds(label: str, value: float | None) -> str:
    if value is None:
        return f"{label} ?"
    return f"{label} {value * 1000:.1f} ms" if value < 1 else f"{label} {value:.2f} s"


def _totals(event: TaskEvent) -> str:
    def n(value: int | None) -> str:
        return UNKNOWN if value is None else str(value)

    totals = f"done {n(event.succeeded)} failed {n(event.failed)} retried {n(event.retried)}"
    return f"{totals} in hand {event.in_hand}" if event.in_hand else totals
