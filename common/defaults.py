"""Names and defaults of the settings, without pydantic.

The command line builds its options (and its ``--help``) from these, so a program that only
prints its help never imports the settings machinery; `common.settings` builds on them too,
so each default is written once.
"""

from __future__ import annotations

from enum import StrEnum


class BackendName(StrEnum):
    """Where the tasks travel: inside one process tree, or through RabbitMQ."""

    local = "local"
    rabbitmq = "rabbitmq"


DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(message)s"

QUEUE = "tasks"
PREFETCH = 100
WORKERS = 2
MAX_ATTEMPTS = 3
TASK_TIMEOUT = 0.0
BROKER_CONSUMER_TIMEOUT = 1800.0
RETRY_BASE_DELAY = 1.0
RETRY_MAX_DELAY = 300.0
