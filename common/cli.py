"""The command line both programs share: their options, one-line errors, exit codes,
logging, output. The only module of `common` that imports typer (and rich).

The options that set a `Settings` field are built from its declaration
(`common.defaults.SettingFields`): a command says which it takes (`takes`), and reads them
back from its click context (`settings_from`, `given`), never as arguments. Each reads its
environment variable through click (``envvar=``), so ``--help`` lists the variable and one
rule decides every value: a flag wins over the environment, which wins over the default.
An invalid value is reported under the name the user typed (``'--retry-delay'``,
``'TASKSHUTTLE_WORKERS'``), never under a field's name.

No pydantic, no rich at import, so ``--help`` and ``--version`` start fast; rich is imported
only to draw a table, and the workers never load this module.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import typer

from common.defaults import BackendName, declared
from common.errors import TaskshuttleError
from common.logs import LogFormat, LogLevel, configure

if TYPE_CHECKING:
    from common.settings import Settings


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


# -- options that set no `Settings` field ---------------------------------------------------


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
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


# -- the options of the settings, and reading them back ------------------------------------

#: The settings that say which queue, on which broker. With ``--backend`` (not a setting:
#: the library is given the backend apart, as `open_backend`'s argument), the four
#: connection options.
CONNECTION = ("queue", "queue_type", "amqp_url")

Command = TypeVar("Command", bound=Callable[..., Any])


def option(name: str) -> Any:
    """The typer annotation of the option that sets field `name`, from its declaration
    (the parameter's default, `declared()[name].default`, goes beside it)."""
    field = declared()[name]
    setting = field.setting
    return Annotated[
        field.type,
        typer.Option(
            *([setting.flag] if setting.flag else []),
            envvar=setting.env,
            help=setting.help,
            show_default=setting.show_default,
        ),
    ]


Url = option("amqp_url")


def takes(
    *names: str, backend: BackendName | None = None, before: str | None = None
) -> Callable[[Command], Command]:
    """Give a command the options of the settings `names` (and ``--backend``, defaulting to
    `backend`, unless it is None), listed in ``--help`` ahead of its own option `before`
    (by default, of all its own).

    The command does not receive them as arguments: it reads them from its context
    (`settings_from`, `given`), where a group and its subcommands meet. An option taken by a
    group and by its subcommand may be typed before the subcommand or after it
    (``consumer --queue q dlq list``, ``consumer dlq list --queue q``).

    The command must take a `typer.Context`. typer reads a command's options from its
    signature, which is why they are added there.
    """
    added = [
        inspect.Parameter(
            name, _POSITIONAL, default=declared()[name].default, annotation=option(name)
        )
        for name in names
    ]
    if backend is not None:
        added.insert(
            0, inspect.Parameter("backend", _POSITIONAL, default=backend, annotation=Backend)
        )

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = list(signature.parameters.values())
        [context] = [p.name for p in own if p.annotation is typer.Context]
        clash = {p.name for p in added} & signature.parameters.keys()
        if clash:
            raise TypeError(f"{command.__name__} has parameters of its own named {clash}")
        order = [p.name for p in own]
        at = order.index(before) if before is not None else order.index(context) + 1

        @functools.wraps(command)
        def run(**arguments: Any) -> Any:
            ctx = arguments[context]
            for parameter in added:
                del arguments[parameter.name]  # the command reads it from `ctx`
            _line(ctx, create=True).took(ctx, [parameter.name for parameter in added])
            return command(**arguments)

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own[:at], *added, *own[at:]]
        )
        return cast(Command, run)

    return decorate


_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD


class CommandLine:
    """Which command of this command line holds each option of `takes`: the one where it
    was typed, the innermost first; else the innermost that took it, since the environment
    and the default are the same at every level. Kept in the context's `obj`, which a
    subcommand shares with its group."""

    def __init__(self) -> None:
        self._holders: dict[str, typer.Context] = {}

    def took(self, ctx: typer.Context, names: list[str]) -> None:
        for name in names:
            earlier = self._holders.get(name)
            if earlier is None or _typed(ctx, name) or not _typed(earlier, name):
                self._holders[name] = ctx

    def holder(self, name: str) -> typer.Context:
        """The context whose ``params[name]`` is the value of option `name`."""
        return self._holders[name]

    def names(self) -> list[str]:
        return list(self._holders)


def _line(ctx: typer.Context, create: bool = False) -> CommandLine:
    found = ctx.ensure_object(CommandLine) if create else ctx.find_object(CommandLine)
    return found if found is not None else CommandLine()


def given(ctx: typer.Context, name: str) -> Any:
    """The value of option `name` (a field's name, or ``backend``), wherever it was given."""
    return _line(ctx).holder(name).params[name]


def is_default(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was left to its default (neither typed nor in the environment)."""
    return _source(_line(ctx).holder(name), name) not in ("COMMANDLINE", "ENVIRONMENT")


def bad_value(ctx: typer.Context, name: str, message: str) -> typer.BadParameter:
    """click's usage error for option `name`, naming it as the user gave it."""
    holder = _line(ctx).holder(name)
    return typer.BadParameter(message, param_hint=typed_name(holder, name))


def typed_name(ctx: typer.Context, name: str) -> str:
    """How the user gave option `name` of this command, quoted as click quotes it: its
    flag, or the environment variable it was read from."""
    param = next(p for p in ctx.command.params if p.name == name)
    envvars = getattr(param, "envvar", None)
    if _source(ctx, name) == "ENVIRONMENT" and envvars:
        candidates = [envvars] if isinstance(envvars, str) else list(envvars)
        return repr(next((v for v in candidates if v in os.environ), candidates[0]))
    flags = [opt for opt in param.opts if opt.startswith("--")] or param.opts
    return repr(flags[0])


def settings_from(ctx: typer.Context, *, with_url: bool = True) -> Settings:
    """`Settings` from the options this command and its groups took; a field none of them
    took keeps its default.

    `with_url=False` leaves the broker URL out, so the local backend, which has no broker,
    never rejects an ``AMQP_URL`` meant for something else.
    """
    from pydantic import ValidationError

    from common.settings import Settings, describe_error

    fields = declared().keys() - ({"amqp_url"} if not with_url else set())
    values = {name: given(ctx, name) for name in _line(ctx).names() if name in fields}
    try:
        return Settings(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise bad_value(ctx, str(error["loc"][0]), describe_error(error)) from None


def rabbitmq_settings(ctx: typer.Context, refusal: str) -> Settings:
    """`settings_from(ctx)` for a command only a broker can serve: ``--backend local`` (given
    before the command or after it) is refused with `refusal`."""
    if given(ctx, "backend") is BackendName.local:
        raise bad_value(ctx, "backend", refusal)
    return settings_from(ctx)


def _typed(ctx: typer.Context, name: str) -> bool:
    return _source(ctx, name) == "COMMANDLINE"


def _source(ctx: typer.Context, name: str) -> str | None:
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


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
