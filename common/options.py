"""The command-line options both programs share, each declared once.

An option that sets a `Settings` field reads its environment variable through click
(``envvar=``), so ``--help`` lists the variable and one rule decides every value: a flag wins
over the environment, which wins over the default. `settings_from` then builds `Settings`
from what click read, without reading the environment again, and an invalid value is
reported under the name the user typed (``'--retry-delay'``, ``'TASKSHUTTLE_WORKERS'``),
never under a field's name.

This module imports neither pydantic nor rich, so ``--help`` and ``--version`` start fast.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from common.defaults import ENVIRONMENT, BackendName, QueueType
from common.logs import LogFormat, LogLevel

if TYPE_CHECKING:
    from common.settings import Settings


def _show_version(ctx: typer.Context, value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"{ctx.find_root().info_name} {version('taskshuttle')}")
        raise typer.Exit()


Version = Annotated[
    bool,
    typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
    ),
]
Backend = Annotated[
    BackendName, typer.Option(help="local: one process tree; rabbitmq: through a broker.")
]
Url = Annotated[
    str,
    typer.Option(
        envvar=ENVIRONMENT["amqp_url"], help="Broker URL (rabbitmq); ?heartbeat=N etc. allowed."
    ),
]
Queue = Annotated[
    str,
    typer.Option(
        envvar=ENVIRONMENT["queue"], help="Work queue (with <queue>.dlq, <queue>.wait.N)."
    ),
]
QueueTypeOption = Annotated[
    QueueType,
    typer.Option(
        "--queue-type",
        envvar=ENVIRONMENT["queue_type"],
        help="rabbitmq: the type of the queues created (quorum: replicated over a cluster; "
        "classic: one node). A queue that exists already is used as it is.",
    ),
]
Workers = Annotated[int, typer.Option(envvar=ENVIRONMENT["workers"], help="Worker processes.")]
Prefetch = Annotated[
    int, typer.Option(envvar=ENVIRONMENT["prefetch"], help="Tasks a worker may hold at once.")
]
MaxAttempts = Annotated[
    int,
    typer.Option(
        envvar=ENVIRONMENT["max_attempts"], help="Tries per task before it is dead-lettered."
    ),
]
RetryDelay = Annotated[
    float,
    typer.Option(
        envvar=ENVIRONMENT["retry_base_delay"],
        help="First retry delay in seconds; doubles per attempt, with jitter.",
    ),
]
RetryMaxDelay = Annotated[
    float,
    typer.Option(envvar=ENVIRONMENT["retry_max_delay"], help="Cap on the retry delay, in seconds."),
]
TaskTimeout = Annotated[
    float,
    typer.Option(
        envvar=ENVIRONMENT["task_timeout"],
        help="Seconds a task may run before it fails (0: no limit).",
    ),
]
BrokerConsumerTimeout = Annotated[
    float,
    typer.Option(
        envvar=ENVIRONMENT["broker_consumer_timeout"],
        help="The broker's consumer_timeout in seconds: a longer --task-timeout gets a warning.",
    ),
]
Handlers = Annotated[
    list[str] | None,
    typer.Option(
        help="Import this module to register task kinds (repeatable); "
        "the current folder is searched too."
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log at INFO level (--log-level info).")
]
LogLevelOption = Annotated[
    LogLevel | None,
    typer.Option(
        "--log-level",
        envvar="TASKSHUTTLE_LOG_LEVEL",
        case_sensitive=False,
        help="Log at this level and above [default: warning, and the consumer's start, "
        "stop and summary at info].",
        show_default=False,
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="TASKSHUTTLE_LOG_FORMAT",
        case_sensitive=False,
        help="Log lines as text, or as JSON objects, one a line (time, level, logger, "
        "message, pid); json also turns the consumer's live table off.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


#: The option (the parameter's name) that sets each `Settings` field.
SETTINGS_FIELDS = {
    "amqp_url": "url",
    "queue": "queue",
    "queue_type": "queue_type",
    "workers": "workers",
    "prefetch": "prefetch",
    "max_attempts": "max_attempts",
    "retry_base_delay": "retry_delay",
    "retry_max_delay": "retry_max_delay",
    "task_timeout": "task_timeout",
    "broker_consumer_timeout": "broker_consumer_timeout",
    "max_deaths": "max_deaths",
    "shutdown_timeout": "shutdown_timeout",
    "connect_timeout": "connect_timeout",
    "task_events": "task_events",
}


def given(ctx: typer.Context, name: str) -> tuple[typer.Context, Any]:
    """The context that holds the value of option `name`, and the value.

    An option may be given to a group and to its subcommand (``consumer --queue q dlq list``
    and ``consumer dlq list --queue q``): the innermost command where it was typed wins,
    then the environment or the default, which are the same at every level.
    """
    holders = []
    current: typer.Context | None = ctx
    while current is not None:
        if name in current.params:
            holders.append(current)
        current = current.parent
    if not holders:
        raise KeyError(name)
    typed = [c for c in holders if _source(c, name) == "COMMANDLINE"]
    holder = (typed or holders)[0]
    return holder, holder.params[name]


def is_default(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was left to its default (neither typed nor in the environment)."""
    holder, _value = given(ctx, name)
    return _source(holder, name) not in ("COMMANDLINE", "ENVIRONMENT")


def typed_name(ctx: typer.Context, name: str) -> str:
    """How the user gave option `name`, quoted as click quotes it: its flag, or the
    environment variable it was read from."""
    param = next(p for p in ctx.command.params if p.name == name)
    envvars = getattr(param, "envvar", None)
    if _source(ctx, name) == "ENVIRONMENT" and envvars:
        candidates = [envvars] if isinstance(envvars, str) else list(envvars)
        return repr(next((v for v in candidates if v in os.environ), candidates[0]))
    flags = [opt for opt in param.opts if opt.startswith("--")] or param.opts
    return repr(flags[0])


def bad_value(ctx: typer.Context, name: str, message: str) -> typer.BadParameter:
    """click's usage error for option `name`, naming it as the user gave it."""
    holder, _value = given(ctx, name)
    return typer.BadParameter(message, param_hint=typed_name(holder, name))


def settings_from(ctx: typer.Context, *, with_url: bool = True) -> Settings:
    """`Settings` from the options of this command (and of its parents).

    `with_url=False` leaves the broker URL out, so the local backend, which has no broker,
    never rejects an ``AMQP_URL`` meant for something else.
    """
    from pydantic import ValidationError

    from common.settings import Settings, describe_error

    names = {f: o for f, o in SETTINGS_FIELDS.items() if with_url or f != "amqp_url"}
    values = {}
    for field, option in names.items():
        try:
            values[field] = given(ctx, option)[1]
        except KeyError:  # this command has no such option: the default applies
            continue
    try:
        return Settings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise bad_value(ctx, names[str(error["loc"][0])], describe_error(error)) from None


def rabbitmq_settings(ctx: typer.Context, refusal: str) -> Settings:
    """`settings_from(ctx)` for a command only a broker can serve: ``--backend local``
    (given before the command or after it) is refused with `refusal`."""
    if given(ctx, "backend")[1] is BackendName.local:
        raise bad_value(ctx, "backend", refusal)
    return settings_from(ctx)


def _source(ctx: typer.Context, name: str) -> str | None:
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


MaxDeaths = Annotated[
    int,
    typer.Option(
        envvar=ENVIRONMENT["max_deaths"],
        help="Workers a task may kill (dying while they run it) before it is dead-lettered.",
    ),
]
ShutdownTimeout = Annotated[
    float,
    typer.Option(
        envvar=ENVIRONMENT["shutdown_timeout"],
        help="Seconds the first Ctrl-C or SIGTERM waits for the tasks in hand; "
        "then (or at the second) the workers are killed.",
    ),
]
TaskEvents = Annotated[
    bool,
    typer.Option(
        "--task-events/--no-task-events",
        envvar=ENVIRONMENT["task_events"],
        help="Publish task events for `consumer events`, `status` and the dashboard "
        "(heartbeats always; each task's steps only while somebody listens).",
    ),
]
ConnectTimeout = Annotated[
    float | None,
    typer.Option(
        envvar=ENVIRONMENT["connect_timeout"],
        help="Seconds to wait for a broker that is down, at start-up and per outage "
        "(0: as long as it takes; by default the producer waits 30, the consumer as long "
        "as it takes).",
        show_default=False,
    ),
]
DlqLimit = Annotated[
    int,
    typer.Option(
        "--limit", min=0, help="Show at most this many dead letters, oldest first (0: all)."
    ),
]
