"""Task handlers: what a worker does for each task kind.

Add your own with the registry's decorator; a handler takes the task's payload, validated by
the pydantic model its parameter is annotated with (or a plain ``dict``), and returns any
JSON-serialisable value. Raising means the attempt failed: it is retried, then dead-lettered.

    from consumer.handlers import registry
    from pydantic import BaseModel

    class Resize(BaseModel):
        path: str
        width: int

    @registry.task("resize")
    def resize(payload: Resize) -> str:
        ...

A second parameter receives a `TaskContext` (task id, attempt, redelivered flag).

Then start the programs with ``--handlers mymodule`` so both sides know the kind.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ConfigError, TaskshuttleError


class PayloadError(TaskshuttleError):
    """A payload does not fit its kind's model: retrying cannot help."""


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about the task besides its payload: declare a second
    parameter to receive it. The task id is the key for idempotent work (a redelivered or
    retried task has the same id)."""

    task_id: str
    kind: str
    attempt: int
    max_attempts: int
    redelivered: bool


@dataclass(frozen=True)
class Handler:
    kind: str
    fn: Callable[..., Any]
    payload_model: type[BaseModel] | None
    wants_context: bool = False

    def check(self, payload: dict[str, Any]) -> Any:
        """The payload as the handler takes it, or `PayloadError` saying what is wrong."""
        if self.payload_model is None:
            return payload
        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "payload"
            raise PayloadError(
                f"invalid payload for kind {self.kind!r}: {where}: {first['msg']}"
            ) from None

    def __call__(self, payload: dict[str, Any], context: TaskContext | None = None) -> Any:
        if self.wants_context:
            return self.fn(self.check(payload), context)
        return self.fn(self.check(payload))


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def task(self, kind: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Register the decorated function as the handler of `kind`."""

        def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            if kind in self._handlers:
                raise ValueError(f"task kind {kind!r} is already registered")
            params = list(inspect.signature(fn).parameters)
            hints = typing.get_type_hints(fn)
            model = hints.get(params[0]) if params else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                model = None
            self._handlers[kind] = Handler(kind, fn, model, wants_context=len(params) >= 2)
            return fn

        return register

    def get(self, kind: str) -> Handler | None:
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    def require(self, kind: str) -> Handler:
        handler = self.get(kind)
        if handler is None:
            raise ConfigError(f"unknown task kind {kind!r} (known: {', '.join(self.kinds())})")
        return handler


registry = Registry()


def import_handlers(modules: list[str]) -> None:
    """Import modules that register handlers (``--handlers``), with a one-line error.

    The current folder is searched first, as ``python -m`` does (and ``celery -A``), since a
    console script's own folder is the one on `sys.path`. A worker process calls this too,
    from the folder its supervisor runs in.
    """
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise ConfigError(f"cannot import handlers module {name!r}: {exc}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepPayload(_Strict):
    seconds: float = Field(ge=0, le=86_400)


class CpuPayload(_Strict):
    rounds: int = Field(ge=0, le=100_000_000)


class FailPayload(_Strict):
    message: str = "failed on purpose"


@registry.task("echo")
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@registry.task("sleep")
def sleep(payload: SleepPayload) -> float:
    time.sleep(payload.seconds)
    return payload.seconds


@registry.task("cpu")
def cpu(payload: CpuPayload) -> str:
    digest = b""
    for _ in range(payload.rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@registry.task("fail")
def fail(payload: FailPayload) -> None:
    raise RuntimeError(payload.message)
