"""The chaos run's own task kind, loaded by its consumer with ``--handlers tests.chaos_tasks``."""

from __future__ import annotations

from pydantic import BaseModel

from consumer.handlers import TaskContext, registry

FLAKY = "chaos-flaky"


class Flaky(BaseModel):
    #: The first attempt that succeeds; every earlier one raises.
    succeed_on: int = 2


@registry.task(FLAKY)
def flaky(payload: Flaky, context: TaskContext) -> int:
    """Fails on purpose until attempt `succeed_on`: a retry must come back and succeed."""
    if context.attempt < payload.succeed_on:
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    return context.attempt
