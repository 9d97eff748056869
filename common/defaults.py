"""Names, defaults and environment variables of the settings, without pydantic.

The command line builds its options (and its ``--help``) from these, so a program that only
prints its help never imports pydantic; `common.settings` builds on them too, so each default
and each variable's name is written once.
"""

from __future__ import annotations

from enum import StrEnum


class BackendName(StrEnum):
    """Where the tasks travel: inside one process tree, or through RabbitMQ."""

    local = "local"
    rabbitmq = "rabbitmq"


class QueueType(StrEnum):
    """How RabbitMQ keeps a queue it creates: ``quorum`` replicates it over the cluster's
    nodes (Raft) and counts deliveries; ``classic`` keeps it on one node."""

    quorum = "quorum"
    classic = "classic"


DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(message)s"

QUEUE = "tasks"
QUEUE_TYPE = QueueType.quorum
PREFETCH = 100
WORKERS = 2
MAX_ATTEMPTS = 3
TASK_TIMEOUT = 0.0
BROKER_CONSUMER_TIMEOUT = 1800.0
RETRY_BASE_DELAY = 1.0
RETRY_MAX_DELAY = 300.0
MAX_DEATHS = 2
SHUTDOWN_TIMEOUT = 30.0
#: Seconds the producer waits for a broker that is down (at start-up, and per outage) when
#: no ``--connect-timeout`` is given; the consumer, a service, waits as long as it takes.
PRODUCER_CONNECT_TIMEOUT = 30.0

#: The environment variable of each setting. The command line reads them through click (so
#: `--help` shows them), `load_settings` reads them for the library: the same names, and in
#: both a value given explicitly wins over the environment, which wins over the default.
ENVIRONMENT = {
    "amqp_url": "AMQP_URL",
    "queue": "TASKSHUTTLE_QUEUE",
    "queue_type": "TASKSHUTTLE_QUEUE_TYPE",
    "workers": "TASKSHUTTLE_WORKERS",
    "prefetch": "TASKSHUTTLE_PREFETCH",
    "max_attempts": "TASKSHUTTLE_MAX_ATTEMPTS",
    "retry_base_delay": "TASKSHUTTLE_RETRY_BASE_DELAY",
    "retry_max_delay": "TASKSHUTTLE_RETRY_MAX_DELAY",
    "task_timeout": "TASKSHUTTLE_TASK_TIMEOUT",
    "broker_consumer_timeout": "TASKSHUTTLE_BROKER_CONSUMER_TIMEOUT",
    "max_deaths": "TASKSHUTTLE_MAX_DEATHS",
    "shutdown_timeout": "TASKSHUTTLE_SHUTDOWN_TIMEOUT",
    "connect_timeout": "TASKSHUTTLE_CONNECT_TIMEOUT",
    "task_events": "TASKSHUTTLE_TASK_EVENTS",
}
