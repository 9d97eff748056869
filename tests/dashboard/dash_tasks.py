"""Task kinds for the dashboard's tests, loaded with ``--handlers tests.dashboard.dash_tasks``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from consumer.handlers import registry


class Flaky(BaseModel):
    #: While this file exists the task fails; once it is gone, the task succeeds.
    flag: str


@registry.task("flaky")
def flaky(payload: Flaky) -> str:
    if Path(payload.flag).exists():
        raise RuntimeError(f"{payload.flag} still exists")
    return "fixed"
