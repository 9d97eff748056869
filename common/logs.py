"""Logging for both programs and their worker processes: the level, text or JSON lines.

No typer, no rich: a worker process configures its logging through here, and it should not
pay for the command line's imports.

``--log-format json`` writes one JSON object per line (time, level, logger, message, pid,
process; the traceback as ``exception`` when there is one), for a log collector. Left at
its default level, a program still tells what it is doing at start and stop: the
`STATUS_LOGGER` speaks at INFO while everything else waits for a WARNING.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum

from common.defaults import LOG_FORMAT


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"

    @property
    def number(self) -> int:
        return logging.getLevelNamesMapping()[self.value.upper()]


class LogFormat(StrEnum):
    text = "text"
    json = "json"


#: The level when none is given. The status logger goes one step lower (INFO) then.
DEFAULT_LEVEL = LogLevel.warning
#: The lines that say a program started and stopped, and what it did: shown at the default
#: level, so that a consumer started on a terminal says that it did.
STATUS_LOGGER = "taskshuttle.status"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes any newline)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "process": record.processName,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time: a live display on the terminal
    (rich's ``Live``) swaps it for a proxy that prints above the display."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass  # always the current sys.stderr


def configure(level: int | None, log_format: LogFormat = LogFormat.text) -> None:
    """Log to stderr at `level` (None: the default, with the status lines at INFO), as text
    or JSON lines. Run again, it replaces its own handler (and leaves others alone: pytest's,
    a program's that embeds the command)."""
    handler = StderrHandler()
    handler.setFormatter(
        JsonFormatter() if log_format is LogFormat.json else logging.Formatter(LOG_FORMAT)
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(DEFAULT_LEVEL.number if level is None else level)
    status = logging.INFO if level is None else logging.NOTSET
    logging.getLogger(STATUS_LOGGER).setLevel(status)
    # pika logs every failed connection attempt at ERROR with a stack of detail; the
    # project reports the same failure in one line, so pika speaks only when asked to.
    verbose = level is not None and level <= logging.INFO
    logging.getLogger("pika").setLevel(logging.INFO if verbose else logging.CRITICAL)
