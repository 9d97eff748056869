"""``python -m tests.dashboard.launch ARGS``: ``consumer dashboard ARGS``, whether or not
consumer/cli.py registers the command yet (the tests run the same code either way)."""

from __future__ import annotations

import sys

from common.cli import run_app
from consumer.cli import app
from consumer.dashboard import register

if __name__ == "__main__":
    if not any(command.name == "dashboard" for command in app.registered_commands):
        register(app)
    run_app(app, "consumer", ["dashboard", *sys.argv[1:]])
