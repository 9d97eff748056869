"""Task kinds of the client's contract suite (``handlers=["tests.client_tasks"]``), the kinds
an application registers: a pydantic payload, a context, a failure of its own."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from consumer.handlers import TaskContext, registry


class Add(BaseModel):
    x: int
    y: int


@registry.task("add")
def add(payload: Add) -> int:
    return payload.x + payload.y


class Stamp(BaseModel):
    label: str = ""
    seconds: float = Field(default=0.0, ge=0, le=60)
    #: A file to append the task's id to, each time it runs: how many times it ran.
    record: str | None = None


@registry.task("stamp")
def stamp(payload: Stamp, context: TaskContext) -> dict[str, object]:
    """When it ran (wall clock), after sleeping `seconds`: countdown order and lateness."""
    started = time.time()
    if payload.record:
        with open(payload.record, "a") as runs:
            runs.write(f"{context.task_id}\n")
    time.sleep(payload.seconds)
    return {"label": payload.label, "ran_at": started, "task_id": context.task_id}


class Refuse(BaseModel):
    message: str


class Refused(Exception):
    pass


@registry.task("refuse")
def refuse(payload: Refuse) -> None:
    raise Refused(payload.message)
