"""`producer send`: send one task of any kind, or a mixed batch from a file, through the
application API (`producer.client.Client`), and print each task's id (with ``--wait``, its
result).

    producer send echo '{"n": 1}'                           # local workers, prints the result
    producer send --backend rabbitmq resize '{"path": "a.png"}' --countdown 30
    producer send --backend rabbitmq --from batch.jsonl --wait --json

A ``--from`` file holds one JSON object per line, `SendRequest`'s fields: ``kind``,
``payload``, ``countdown``, ``eta``, ``expires``, ``max_attempts``, ``task_id``, ``queue``.
Every line is checked before anything is sent: a file with one bad line sends nothing, and
the error names it (``batch.jsonl:3: countdown: must be at most ...``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from common.cli import (
    CONNECTION,
    Handlers,
    Json,
    LogFormatOption,
    LogLevelOption,
    Verbose,
    Version,
    given,
    new_app,
    parse_json_object,
    settings_from,
    setup_logging,
    takes,
)
from common.defaults import BackendName
from common.logs import LogFormat

if TYPE_CHECKING:
    from producer.client import Client, SendRequest, TaskHandle

app = new_app()

#: A field of `SendRequest` as the command line names it.
_FLAGS = {
    "kind": "KIND",
    "payload": "PAYLOAD",
    "countdown": "--countdown",
    "eta": "--eta",
    "expires": "--expires",
    "max_attempts": "--max-attempts",
    "task_id": "--id",
}


@app.command()
@takes(backend=BackendName.local)
@takes(*CONNECTION, "workers", "connect_timeout", before="handlers")
def send(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Argument(help="The task's kind.", show_default=False)] = None,
    payload: Annotated[
        str | None, typer.Argument(help="Its payload, a JSON object [default: {}].")
    ] = None,
    countdown: Annotated[
        float | None, typer.Option(help="Run it no earlier than S seconds from now.", metavar="S")
    ] = None,
    eta: Annotated[
        str | None,
        typer.Option(
            help="Run it no earlier than this time (ISO 8601, with a timezone).", metavar="ISO"
        ),
    ] = None,
    expires: Annotated[
        float | None,
        typer.Option(help="Do not start it later than S seconds from now.", metavar="S"),
    ] = None,
    task_id: Annotated[
        str | None, typer.Option("--id", help="Its id (yours: an idempotency key).")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Tries it gets [default: the consumer's].")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Send the tasks of FILE instead, one JSON object per line (kind, payload, "
            "countdown, eta, expires, max_attempts, task_id, queue); '-' reads stdin.",
            metavar="FILE",
            dir_okay=False,
            allow_dash=True,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for each result and print it (always, on local).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 60.0,
    handlers: Handlers = None,
    as_json: Json = False,
    verbose: Verbose = False,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = LogFormat.text,
    version: Version = False,
) -> None:
    """Send one task of KIND (or every task of --from FILE); print each one's id, and with
    --wait (always, on the local backend) its result. Exits 1 if a task failed."""
    setup_logging(verbose, log_level, log_format)
    from producer.client import as_request
    from producer.local import import_handlers

    local = given(ctx, "backend") is BackendName.local
    if timeout <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="'--timeout'")
    import_handlers(handlers or [])
    if from_file is not None:
        if kind is not None:
            raise typer.BadParameter("give KIND or --from FILE, not both", param_hint="KIND")
        requests = _read_requests(from_file)
    else:
        if kind is None:
            raise typer.BadParameter("give a task's KIND, or --from FILE", param_hint="KIND")
        fields: dict[str, Any] = {
            "kind": kind,
            "payload": parse_json_object(payload or "{}", "PAYLOAD"),
            "countdown": countdown,
            "eta": _time(eta),
            "expires": expires,
            "max_attempts": max_attempts,
            "task_id": task_id,
        }
        requests = [_checked(lambda f=fields: as_request(f), None)]  # type: ignore[misc]
    settings = settings_from(ctx, with_url=not local)
    from producer.client import Client

    client = (
        Client.local(settings=settings, handlers=tuple(handlers or ()))
        if local
        else Client(settings=settings)
    )
    with client:
        handles = client.send_many(requests)
        if not (wait or local):
            for handle in handles:
                _say_sent(handle, as_json)
            return
        failed = _print_results(client, handles, timeout, as_json)
    if failed:
        raise typer.Exit(1)


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="'--eta'") from None
    if when.tzinfo is None:
        raise typer.BadParameter(
            f"{text!r} has no timezone (e.g. {text}+00:00)", param_hint="'--eta'"
        )
    return when


def _checked(make: Any, where: str | None) -> SendRequest:
    """`make()`, a request whose kind is known here and whose payload fits it, with its
    error as one line: naming the flag on the command line, ``file:line:`` for a file."""
    from common.errors import ConfigError, TaskshuttleError
    from producer.local import registry

    try:
        request: SendRequest = make()
        registry.require(request.kind).check(request.payload)
    except TaskshuttleError as exc:
        message = str(exc)
        if where is not None:
            raise ConfigError(f"{where}: {message}") from None
        field, _, rest = message.partition(": ")
        if field in _FLAGS and rest:
            raise typer.BadParameter(rest, param_hint=repr(_FLAGS[field])) from None
        raise ConfigError(message) from None
    return request


def _read_requests(path: Path) -> list[SendRequest]:
    """Every request of a --from file, all checked before any is sent."""
    from producer.client import as_request

    try:
        text = typer.open_file(str(path)).read() if str(path) == "-" else path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read it: {exc}", param_hint="'--from'") from None
    requests = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON ({exc.msg})", param_hint=where) from None
        if not isinstance(item, dict):
            raise typer.BadParameter("not a JSON object", param_hint=where)
        requests.append(_checked(lambda i=item: as_request(i), where))  # type: ignore[misc]
    if not requests:
        raise typer.BadParameter("holds no task", param_hint=str(path))
    return requests


def _say_sent(handle: TaskHandle, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"id": handle.id, "kind": handle.kind, "status": "sent"}))
    else:
        typer.echo(handle.id)


def _print_results(
    client: Client, handles: list[TaskHandle], timeout: float, as_json: bool
) -> bool:
    """Wait for every result and print it; whether any task failed (or gave none in time)."""
    import time

    from producer.client import TaskFailed

    deadline = time.monotonic() + timeout
    failed = False
    for handle in handles:
        record: dict[str, Any] = {"id": handle.id, "kind": handle.kind}
        try:
            value = handle.result(max(deadline - time.monotonic(), 0.0))
        except TaskFailed as exc:
            failed = True
            record |= {"status": handle.status.value, "reason": exc.reason, "error": exc.error}
        except TimeoutError:
            failed = True
            record |= {"status": "pending", "error": f"no result within {timeout:g} s"}
        else:
            record |= {"status": "done", "value": value}
        if as_json:
            typer.echo(json.dumps(record, default=str))
        elif record["status"] == "done":
            typer.echo(f"{handle.id} done: {json.dumps(record['value'], default=str)}")
        else:
            typer.echo(f"{handle.id} {record['status']}: {record['error']}")
    return failed
