"""`consumer purge` and `consumer dlq ...`: the queue's admin commands, on RabbitMQ.

Each opens a short-lived admin connection (it does not wait for a broker that is down) and
reads --backend, --url and --queue from the command line before the command or after it.
What removes messages (`purge`, `dlq purge`) asks first, saying what it would remove, and
needs --yes when there is no terminal to ask on. The work is the backend's own
(`RabbitBackend.purge_queues` and the like), so a dashboard can do the same.

Like `consumer.cli`, this module imports only typer at start: the library (pydantic, pika)
is imported by the command that runs.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer

from common.cli import CONNECTION, fail, new_app, rabbitmq_settings, takes
from common.defaults import BackendName

if TYPE_CHECKING:
    from common.rabbitmq import RabbitBackend
    from common.schemas import DeadLetter
    from common.settings import Settings

PROG = "consumer"

#: The options that say which queue on which broker, declared once for the consumer: taken
#: by `consumer` itself and by each command that works on its queue (`purge`, `dlq ...`,
#: `dashboard`), typed before the command's name or after it.
connection = takes(*CONNECTION, backend=BackendName.rabbitmq)

dlq_app = new_app(help="See, replay and purge dead letters.")

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before removing.")]
Reason = Annotated[
    str | None,
    typer.Option(help="Only dead letters of this reason (bad-payload, max-attempts...)."),
]
DlqLimit = Annotated[
    int,
    typer.Option(
        "--limit", min=0, help="Show at most this many dead letters, oldest first (0: all)."
    ),
]


def _settings(ctx: typer.Context) -> Settings:
    """Settings from --backend, --url and --queue, given before the command or after it."""
    return rabbitmq_settings(ctx, "the local backend's queues live in `producer` itself")


def _backend(settings: Settings) -> RabbitBackend:
    from common.factory import Role, open_backend
    from common.rabbitmq import RabbitBackend

    backend = open_backend(settings, Role.ADMIN)
    assert isinstance(backend, RabbitBackend)  # _settings refused the local backend
    return backend


def _refuse_unasked(command: str, yes: bool) -> None:
    """Without --yes there must be a terminal to ask on. Checked before connecting: a
    refusal touches nothing."""
    if not yes and not sys.stdin.isatty():
        fail(PROG, f"{command} needs --yes: stdin is not a terminal to ask on; nothing removed")


def _confirm(question: str) -> None:
    if not typer.confirm(question, default=False):
        fail(PROG, "nothing removed", 1)


def _plural(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


@connection
def purge(
    ctx: typer.Context,
    yes: Yes = False,
) -> None:
    """Remove every task waiting in the work queue; the dead letters stay, and so do delayed
    tasks (retries waiting out their delay), which wait in delay levels every queue shares.
    Tasks in workers' hands (unacked) are not removed."""
    settings = _settings(ctx)
    _refuse_unasked("purge", yes)
    with _backend(settings) as admin:
        if not yes:
            _confirm(_purge_question(settings.queue, admin.queued_messages(), admin))
        purged = admin.purge_queues()
    for name, count in purged.items():
        if count or name == settings.queue:
            print(f"removed {_plural(count, 'message')} from {name!r}")
    print(
        f"removed {_plural(sum(purged.values()), 'message')} in all; messages delivered to "
        "workers and not acked yet are not purged (they come back if not acked), nor are "
        "delayed tasks (they wait in the delay levels every queue shares)"
    )


def _purge_question(queue: str, queued: dict[str, int], admin: RabbitBackend) -> str:
    depths = admin.depths()
    return (
        f"Remove {_plural(queued.get(queue, 0), 'task')} from {queue!r} "
        f"(the {_plural(depths['dead_letter'], 'dead letter')} in {admin.dlq_name!r} stay, "
        f"and so do the {_plural(depths['waiting'], 'delayed task')} of all queues in "
        f"{admin.levels.prefix}.*)?"
    )


@dlq_app.command("list")
@connection
def dlq_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    limit: DlqLimit = 100,
    reason: Reason = None,
) -> None:
    """Show the dead letters, oldest first, with why each is there (they stay in the DLQ)."""
    with _backend(_settings(ctx)) as admin:
        total = admin.dead_letter_count()
        with contextlib.closing(admin.iter_dead_letters(limit or None, reason)) as letters:
            shown = _print_letters(letters, as_json)
    if not as_json:
        of_reason = "" if reason is None else f" of reason {reason!r}"
        print(f"{shown} of {total} dead letters shown{of_reason}")


#: The columns of `dlq list`, and how wide each is.
_LETTER_COLUMNS = {"task id": 32, "reason": 16, "attempts": 8, "when": 25, "error": 80}


def _print_letters(letters: Iterable[DeadLetter], as_json: bool) -> int:
    """Print each letter as it comes (the DLQ may be long); how many were printed."""
    from common.rabbitmq.topology import UNKNOWN_ATTEMPTS

    if not as_json:
        print("  ".join(name.ljust(width) for name, width in _LETTER_COLUMNS.items()).rstrip())
    shown = 0
    for letter in letters:
        shown += 1
        if as_json:  # json.dumps escapes whatever a header holds
            print(json.dumps(letter.model_dump(mode="json")))
            continue
        attempts = "?" if letter.attempts == UNKNOWN_ATTEMPTS else str(letter.attempts)
        when = letter.dead_lettered_at.isoformat(timespec="seconds")
        cells = [letter.task_id or "-", letter.reason, attempts, when, letter.error]
        widths = _LETTER_COLUMNS.values()
        print("  ".join(map(_cell, cells, widths)).rstrip())
    return shown


def _cell(text: str, width: int) -> str:
    """`text` in a column `width` wide, cut short, with anything a terminal would act on
    (escape sequences, newlines: a header may hold any bytes) shown escaped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: width + 1])
    return (text[: width - 1] + "~" if len(text) > width else text).ljust(width)


@dlq_app.command("replay")
@connection
def dlq_replay(
    ctx: typer.Context,
    task_id: Annotated[
        str | None, typer.Option("--id", help="Only the dead letters of this task id.")
    ] = None,
    reason: Reason = None,
) -> None:
    """Move dead letters back to the work queue, as first attempts: all of them, or those of
    --id and/or --reason (the others stay, in their order)."""
    settings = _settings(ctx)
    with _backend(settings) as admin:
        moved = admin.replay_dead_letters(task_id, reason)
    if moved == 0 and task_id is not None:
        of_reason = "" if reason is None else f" of reason {reason!r}"
        fail(PROG, f"no dead letter of task {task_id!r}{of_reason} in {admin.dlq_name!r}", 1)
    print(f"replayed {_plural(moved, 'dead letter')} to {settings.queue!r}")


@dlq_app.command("purge")
@connection
def dlq_purge(
    ctx: typer.Context,
    yes: Yes = False,
) -> None:
    """Remove every dead letter, for good."""
    settings = _settings(ctx)
    _refuse_unasked("dlq purge", yes)
    with _backend(settings) as admin:
        if not yes:
            count = admin.dead_letter_count()
            _confirm(f"Remove {_plural(count, 'dead letter')} from {admin.dlq_name!r}, for good?")
        removed = admin.purge_dead_letters()
    print(f"removed {_plural(removed, 'dead letter')} from {admin.dlq_name!r}")
