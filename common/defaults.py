"""Every setting, declared once: its field, type, bounds, default, variable, flag and help.

`SettingFields` is the one declaration. `common.settings.Settings` is a pydantic model built
on it (pydantic, since 2.7, takes the fields of a plain base class quietly), which validates the
bounds; the command line builds its options (and its ``--help``) from the same fields
(`common.cli.takes`). This module imports no pydantic, so a program that only prints its
help never does: the bounds reach pydantic through annotated-types' protocol for grouped
constraints, read only when pydantic builds the model.
"""

from collections.abc import Iterator
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, NamedTuple, get_args, get_type_hints


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
#: Seconds the producer waits for a broker that is down (at start-up, and per outage) when
#: no ``--connect-timeout`` is given; the consumer, a service, waits as long as it takes.
PRODUCER_CONNECT_TIMEOUT = 30.0


class Setting:
    """What a setting's field says beyond its type and default: the environment variable
    and the flag that set it, its help, and the bounds its value must keep (pydantic's
    names: ``ge``, ``gt``, ``le``, ``min_length``, ``max_length``, ``pattern``).

    A flag wins over the variable, which wins over the default, in the command line and in
    `common.settings.load_settings` alike. `flag` is None when it is the field's name
    (``max_attempts``: ``--max-attempts``).
    """

    # A plain class, not a dataclass: every ``--help`` builds this module, and building a
    # dataclass takes about a millisecond.
    __slots__ = ("bounds", "env", "flag", "help", "show_default")

    #: annotated-types' mark of grouped constraints: pydantic reads them through `__iter__`.
    __is_annotated_types_grouped_metadata__ = True

    def __init__(
        self,
        env: str,
        help: str,
        *,
        flag: str | None = None,
        show_default: bool = True,
        **bounds: float | str,
    ) -> None:
        unknown = bounds.keys() - {"ge", "gt", "le", "min_length", "max_length", "pattern"}
        if unknown:
            raise TypeError(f"unknown bounds: {sorted(unknown)}")
        self.env, self.help, self.flag, self.show_default = env, help, flag, show_default
        self.bounds = bounds

    def __repr__(self) -> str:
        return f"Setting({self.env!r}, flag={self.flag!r}, bounds={self.bounds!r})"

    def __iter__(self) -> Iterator[object]:
        # Called by pydantic while it builds `Settings`: these imports never reach --help.
        import annotated_types as at
        from pydantic import StringConstraints

        constraints = {"ge": at.Ge, "gt": at.Gt, "le": at.Le}
        constraints |= {"min_length": at.MinLen, "max_length": at.MaxLen}
        for name, bound in self.bounds.items():
            if name == "pattern":
                yield from StringConstraints(pattern=str(bound))
            else:
                yield constraints[name](bound)


class SettingFields:
    """The settings both programs share, each declared once (see the module's docstring)."""

    amqp_url: Annotated[
        str,
        Setting("AMQP_URL", "Broker URL (rabbitmq); ?heartbeat=N etc. allowed.", flag="--url"),
    ] = DEFAULT_AMQP_URL
    queue: Annotated[
        str,
        Setting(
            "TASKSHUTTLE_QUEUE",
            "Work queue (with <queue>.dlq; delayed tasks wait in shared delay levels).",
            min_length=1,
            max_length=200,
            pattern=r"^[A-Za-z0-9_.:-]+$",
        ),
    ] = "tasks"
    #: The type of the queues this program creates (an existing queue is used as it is).
    queue_type: Annotated[
        QueueType,
        Setting(
            "TASKSHUTTLE_QUEUE_TYPE",
            "rabbitmq: the type of the queues created (quorum: replicated over a cluster; "
            "classic: one node). A queue that exists already is used as it is.",
        ),
    ] = QueueType.quorum
    prefetch: Annotated[
        int, Setting("TASKSHUTTLE_PREFETCH", "Tasks a worker may hold at once.", ge=1, le=65535)
    ] = 100
    workers: Annotated[int, Setting("TASKSHUTTLE_WORKERS", "Worker processes.", ge=1, le=256)] = 2
    #: Tries per task before it is dead-lettered (a task may carry its own).
    max_attempts: Annotated[
        int,
        Setting(
            "TASKSHUTTLE_MAX_ATTEMPTS", "Tries per task before it is dead-lettered.", ge=1, le=100
        ),
    ] = 3
    #: Seconds a task may run before it is stopped; 0 means no limit.
    task_timeout: Annotated[
        float,
        Setting(
            "TASKSHUTTLE_TASK_TIMEOUT",
            "Seconds a task may run before it fails (0: no limit).",
            ge=0,
        ),
    ] = 0.0
    #: The broker's `consumer_timeout` in seconds (RabbitMQ's default: 30 minutes). A
    #: delivery left unacked longer closes its channel, so a longer task timeout is useless.
    broker_consumer_timeout: Annotated[
        float,
        Setting(
            "TASKSHUTTLE_BROKER_CONSUMER_TIMEOUT",
            "The broker's consumer_timeout in seconds: a longer --task-timeout gets a warning.",
            gt=0,
        ),
    ] = 1800.0
    #: Seconds to wait for a broker that is down, at start-up and per outage; 0: as long as
    #: it takes; None: the role's own default (`common.factory.DEFAULT_WAIT`).
    connect_timeout: Annotated[
        float | None,
        Setting(
            "TASKSHUTTLE_CONNECT_TIMEOUT",
            "Seconds to wait for a broker that is down, at start-up and per outage "
            "(0: as long as it takes; by default the producer waits "
            f"{PRODUCER_CONNECT_TIMEOUT:g}, the consumer as long as it takes).",
            show_default=False,
            ge=0,
        ),
    ] = None
    #: First retry delay in seconds; doubles per attempt, with jitter, capped at retry_max_delay.
    retry_base_delay: Annotated[
        float,
        Setting(
            "TASKSHUTTLE_RETRY_BASE_DELAY",
            "First retry delay in seconds; doubles per attempt, with jitter.",
            flag="--retry-delay",
            ge=0,
        ),
    ] = 1.0
    retry_max_delay: Annotated[
        float,
        Setting("TASKSHUTTLE_RETRY_MAX_DELAY", "Cap on the retry delay, in seconds.", ge=0),
    ] = 300.0
    max_deaths: Annotated[
        int,
        Setting(
            "TASKSHUTTLE_MAX_DEATHS",
            "Workers a task may kill (dying while they run it) before it is dead-lettered.",
            ge=1,
            le=1000,
        ),
    ] = 2
    #: Seconds a stopping consumer waits for the tasks in hand before it kills the workers.
    shutdown_timeout: Annotated[
        float,
        Setting(
            "TASKSHUTTLE_SHUTDOWN_TIMEOUT",
            "Seconds the first Ctrl-C or SIGTERM waits for the tasks in hand; "
            "then (or at the second) the workers are killed.",
            gt=0,
        ),
    ] = 30.0
    #: Workers publish task events to the broker: heartbeats always, the steps of each task
    #: while somebody listens (`common.events`). Off: nothing at all.
    task_events: Annotated[
        bool,
        Setting(
            "TASKSHUTTLE_TASK_EVENTS",
            "Publish task events for `consumer events`, `status` and the dashboard "
            "(heartbeats always; each task's steps only while somebody listens).",
            flag="--task-events/--no-task-events",
        ),
    ] = True


class Declared(NamedTuple):
    """One field of `SettingFields`, taken apart."""

    type: Any
    default: Any
    setting: Setting


@cache
def declared() -> dict[str, Declared]:
    """Each field of `SettingFields`, by name, in the order declared."""
    fields = {}
    for name, hint in get_type_hints(SettingFields, include_extras=True).items():
        base, *extras = get_args(hint)
        [setting] = [extra for extra in extras if isinstance(extra, Setting)]
        fields[name] = Declared(base, getattr(SettingFields, name), setting)
    return fields


#: The environment variable of each setting, by field.
ENVIRONMENT = {name: field.setting.env for name, field in declared().items()}
