"""The state of one queue family and of the workers that serve it, as data: what
``consumer status`` shows, for any other screen (a dashboard) to reuse.

A queue family is a work queue ``Q`` and its companion ``Q.dlq`` (`topology.QueueNames`), and
between them one row for the delay levels of the queue's type (`topology.DelayLevels`), when
they exist: their totals, which are every queue's delayed tasks of that type (the levels are
shared, so whose each one is cannot be told). Their figures come from one of two sources:

- the **management API** (HTTP, the AMQP URL's credentials; its client is
  `common.rabbitmq.management`), when it answers: messages
  ready and unacknowledged, consumers and the node each one's channel is on, publish and
  deliver rates. Its figures are the broker's statistics, emitted every few seconds
  (``collect_statistics_interval``, 5 s by default), so they lag the queue by that much;
- **AMQP** alone otherwise: a passive declare per queue (nothing is created; the connection
  is `common.factory.open_queue_counter`'s) tells how many messages are ready and how many
  consumers there are, nothing more. Unacked messages,
  rates and consumers' nodes are then unknown, and stay None: never 0.

No queue of the family is created or changed here (the heartbeats' listener has a queue of
its own, gone with its connection). The workers are learnt from their heartbeats
(`common.events`), which each worker publishes every ``HEARTBEAT_INTERVAL`` seconds: a
listener hears every live worker within that time. `StatusWatcher` keeps one listener open
for a screen that refreshes; `collect_status` is one look.
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from common.events import HEARTBEAT_INTERVAL, EventKind, TaskEvent
from common.factory import open_event_listener, open_queue_counter
from common.rabbitmq.management import (
    Management,
    ManagementUnavailable,
    default_management_url,
)
from common.rabbitmq.topology import DelayLevels, QueueNames
from common.settings import Settings, redact_url

if TYPE_CHECKING:
    from common.rabbitmq.events import EventListener

#: Seconds to listen for heartbeats: a little over the workers' heartbeat interval, so each
#: live worker is heard at least once.
LISTEN_FOR = HEARTBEAT_INTERVAL + 0.5
#: Seconds one AMQP connection attempt may take.
AMQP_TIMEOUT = 5.0
#: A worker not heard for this long (five heartbeats missed) is dropped from a watched screen.
WORKER_FORGOTTEN_AFTER = 5 * HEARTBEAT_INTERVAL


class Source(StrEnum):
    """Where the queue figures came from."""

    MANAGEMENT = "management"
    AMQP = "amqp"


#: What AMQP alone cannot tell: the fields left None when the figures come from it.
UNKNOWN_WITHOUT_MANAGEMENT = ("unacked", "publish_rate", "deliver_rate", "consumer_details")


#: What a queue is to its family (``delayed``: the delay levels of its type, all queues').
Role = Literal["work", "delayed", "dlq"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConsumerInfo(_Model):
    """One consumer of a queue, as the management API sees it."""

    node: str | None  # the broker node its channel is on
    peer: str | None  # the client's address, host:port
    prefetch: int | None
    tag: str | None


class QueueStatus(_Model):
    """One queue of the family. Every figure is None when it is not known (the queue does
    not exist, or the source cannot tell), never 0."""

    name: str
    role: Role
    exists: bool
    type: str | None = None  # quorum, classic (management only)
    node: str | None = None  # the node holding the queue (a quorum queue's leader)
    ready: int | None = None
    unacked: int | None = None
    consumers: int | None = None
    consumer_details: list[ConsumerInfo] | None = None
    publish_rate: float | None = None  # messages/s into the queue
    deliver_rate: float | None = None  # messages/s handed out (deliveries and gets)


class WorkerStatus(_Model):
    """A worker, as its last heartbeat (or online event) said."""

    worker: str
    host: str
    pid: int
    ppid: int
    succeeded: int | None
    failed: int | None  # dead-lettered
    retried: int | None
    in_hand: str | None  # the id of the task it is running
    in_hand_kind: str | None
    in_hand_for: float | None  # seconds it had been running it when last heard
    last_heard: float  # seconds ago


class QueueFamilyStatus(_Model):
    queue: str
    broker: str  # the AMQP URL, password hidden
    at: float  # unix time the figures were taken
    source: Source
    management_url: str
    #: Why the management API was not used (None when it was).
    management_error: str | None
    #: The figures the source could not give (None in every queue).
    unknown: list[str]
    queues: list[QueueStatus]
    #: Seconds spent listening for heartbeats, in all (a watched screen listens on).
    listened_for: float
    workers: list[WorkerStatus]


def _rate(stats: dict[str, Any], key: str) -> float:
    """A rate of the queue's statistics: a counter never moved is left out of them (a delay
    level's messages leave it by expiring, never by a delivery), so its rate is 0."""
    details = stats.get(f"{key}_details")
    return float(details.get("rate", 0.0)) if isinstance(details, dict) else 0.0


def _from_management(name: str, role: Role, record: dict[str, Any] | None) -> QueueStatus:
    if record is None:
        return QueueStatus(name=name, role=role, exists=False)
    # A queue created moments ago has no statistics yet: its figures stay unknown until
    # the broker emits them. Once it has some, a counter left out has never moved.
    counted = "messages_ready" in record
    stats = record.get("message_stats") or {}
    consumers = [
        ConsumerInfo(
            node=(c.get("channel_details") or {}).get("node"),
            peer=_peer(c.get("channel_details") or {}),
            prefetch=c.get("prefetch_count"),
            tag=c.get("consumer_tag"),
        )
        for c in record.get("consumer_details") or []
    ]

    def rate(key: str) -> float | None:
        return _rate(stats, key) if counted else None

    return QueueStatus(
        name=name,
        role=role,
        exists=True,
        type=record.get("type"),
        node=record.get("leader") or record.get("node"),
        ready=record.get("messages_ready"),
        unacked=record.get("messages_unacknowledged"),
        consumers=record.get("consumers"),
        consumer_details=consumers if counted else None,
        publish_rate=rate("publish"),
        deliver_rate=rate("deliver_get"),
    )


def _peer(channel: dict[str, Any]) -> str | None:
    host, port = channel.get("peer_host"), channel.get("peer_port")
    return f"{host}:{port}" if host and port else None


# -- AMQP alone -----------------------------------------------------------------------------


def _from_amqp(amqp_url: str, family: list[tuple[str, Role]]) -> list[QueueStatus]:
    """Ready counts and consumer counts by passive declares, on a connection of their own
    (the first node of the list that answers): nothing is created."""
    with open_queue_counter(amqp_url, attempt_timeout=AMQP_TIMEOUT) as counter:
        counts = counter.count([name for name, _ in family])
    found = []
    for name, role in family:
        count = counts[name]
        if count is None:
            found.append(QueueStatus(name=name, role=role, exists=False))
        else:
            found.append(
                QueueStatus(
                    name=name,
                    role=role,
                    exists=True,
                    ready=count.ready,
                    consumers=count.consumers,
                )
            )
    return found


# -- workers --------------------------------------------------------------------------------


class WorkerBook:
    """The live workers, from the events heard: the last heartbeat (or online event) of
    each; an offline event removes it."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], TaskEvent] = {}

    def note(self, event: TaskEvent) -> None:
        key = (event.host, event.pid)
        if event.kind is EventKind.OFFLINE:
            self._last.pop(key, None)
        elif event.kind in (EventKind.HEARTBEAT, EventKind.ONLINE):
            self._last[key] = event

    def forget_silent(self, now: float, after: float = WORKER_FORGOTTEN_AFTER) -> None:
        """Drop the workers not heard for `after` seconds (killed: no offline event)."""
        self._last = {k: e for k, e in self._last.items() if now - e.at <= after}

    def workers(self, now: float) -> list[WorkerStatus]:
        return [
            WorkerStatus(
                worker=e.worker,
                host=e.host,
                pid=e.pid,
                ppid=e.ppid,
                succeeded=e.succeeded,
                failed=e.failed,
                retried=e.retried,
                in_hand=e.in_hand,
                in_hand_kind=e.in_hand_kind,
                # as of the heartbeat: the task may have ended since
                in_hand_for=max(0.0, e.at - e.in_hand_since) if e.in_hand_since else None,
                last_heard=max(0.0, now - e.at),
            )
            for _key, e in sorted(self._last.items())
        ]


def open_worker_listener(settings: Settings) -> EventListener:
    """A listener for the heartbeats (and online/offline events) of this queue's workers."""
    kinds = (EventKind.HEARTBEAT, EventKind.ONLINE, EventKind.OFFLINE)
    return open_event_listener(settings.amqp_url, settings.queue, kinds)


# -- the whole ------------------------------------------------------------------------------


def family_of(queue: str) -> list[tuple[str, Role]]:
    """The queue family's own queues and roles, in the order a task meets them."""
    names = QueueNames(queue)
    return [(names.work, "work"), (names.dlq, "dlq")]


def delayed_row(levels: DelayLevels, found: list[QueueStatus]) -> QueueStatus | None:
    """The delay levels as one row, named ``taskshuttle.delay.<type>.*``: each figure the
    total of the levels that exist (unknown if one level's is), every queue's delayed tasks
    of that type; None when no level exists."""
    present = [q for q in found if q.exists]
    if not present:
        return None

    def total(field: str) -> Any:
        values = [getattr(q, field) for q in present]
        return None if any(v is None for v in values) else sum(values)

    details = [q.consumer_details for q in present]
    consumers = None if None in details else [c for d in details for c in d or ()]
    return QueueStatus(
        name=f"{levels.prefix}.*",
        role="delayed",
        exists=True,
        type=present[0].type,
        consumer_details=consumers,
        ready=total("ready"),
        unacked=total("unacked"),
        consumers=total("consumers"),
        publish_rate=total("publish_rate"),
        deliver_rate=total("deliver_rate"),
    )


def queue_figures(
    settings: Settings, management_url: str | None
) -> tuple[Source, str | None, list[QueueStatus]]:
    """The family's figures, from the management API if it answers, else from AMQP:
    (source, why the management API was not used, queues). The work queue and the DLQ are
    always there (``exists`` says); between them the delay levels' row, if they exist."""
    family = family_of(settings.queue)
    levels = DelayLevels(settings.queue_type)
    level_family: list[tuple[str, Role]] = [(name, "delayed") for name in levels.queues()]
    url = management_url or default_management_url(settings.amqp_url)
    reason: str | None
    try:
        api = Management(url, settings.amqp_url)
        records = api.queues(name for name, _ in family)
        pattern = f"^{re.escape(levels.prefix)}\\.[0-9]+$"
        records.update(api.queues_matching(pattern))
    except ManagementUnavailable as exc:
        reason = f"management API at {redact_url(url)}: {exc}"
        source = Source.AMQP
        found = _from_amqp(settings.amqp_url, [*family, *level_family])
    else:
        reason, source = None, Source.MANAGEMENT
        found = [
            _from_management(name, role, records.get(name))
            for name, role in [*family, *level_family]
        ]
    work, dlq, *in_levels = found
    delayed = delayed_row(levels, in_levels)
    return source, reason, [work, *([delayed] if delayed else []), dlq]


class StatusWatcher:
    """Looks at a queue family again and again, with one listener for the workers kept open
    between looks (a refreshing screen, a dashboard). Close it when done."""

    def __init__(self, settings: Settings, management_url: str | None = None) -> None:
        self.settings = settings
        self.management_url = management_url or default_management_url(settings.amqp_url)
        self._book = WorkerBook()
        self._listened = 0.0
        self._listener: EventListener | None = None

    def collect(self, listen_for: float = LISTEN_FOR) -> QueueFamilyStatus:
        """Listen for heartbeats for `listen_for` seconds (0: not at all), then take the
        queue figures. The first call opens the listener."""
        if listen_for > 0:
            self._listen(listen_for)
        elif self._listener is None:
            # The management API may answer for a broker whose AMQP port the URL gets
            # wrong (or that refuses its password there): the URL is checked either way.
            open_queue_counter(self.settings.amqp_url, attempt_timeout=AMQP_TIMEOUT).close()
        source, reason, queues = queue_figures(self.settings, self.management_url)
        now = time.time()
        self._book.forget_silent(now)
        return QueueFamilyStatus(
            queue=self.settings.queue,
            broker=self.settings.safe_url,
            at=now,
            source=source,
            management_url=redact_url(self.management_url),
            management_error=reason,
            unknown=[] if source is Source.MANAGEMENT else list(UNKNOWN_WITHOUT_MANAGEMENT),
            queues=queues,
            listened_for=round(self._listened, 3),
            workers=self._book.workers(now),
        )

    def _listen(self, seconds: float) -> None:
        if self._listener is None:
            self._listener = open_worker_listener(self.settings)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            event = self._listener.get(timeout=left)
            if event is not None:
                self._book.note(event)
        self._listened += seconds

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> StatusWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect_status(
    settings: Settings, management_url: str | None = None, listen_for: float = LISTEN_FOR
) -> QueueFamilyStatus:
    """One look at the queue family of ``settings.queue`` and at its live workers (heard
    for `listen_for` seconds; 0: workers not listened for). Raises the project's
    `BrokerError` when the broker cannot be reached over AMQP."""
    with StatusWatcher(settings, management_url) as watcher:
        return watcher.collect(listen_for)
