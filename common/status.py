"""The state of one queue family and of the workers that serve it, as data: what
``consumer status`` shows, for any other screen (a dashboard) to reuse.

A queue family is a work queue ``Q`` and its companions (`topology.QueueNames`): ``Q.dlq`` and
the wait queues ``Q.wait.K`` that exist. Their figures come from one of two sources:

- the **management API** (HTTP, the AMQP URL's credentials), when it answers: messages
  ready and unacknowledged, consumers and the node each one's channel is on, publish and
  deliver rates. Its figures are the broker's statistics, emitted every few seconds
  (``collect_statistics_interval``, 5 s by default), so they lag the queue by that much;
- **AMQP** alone otherwise: a passive declare per queue (nothing is created) tells how many
  messages are ready and how many consumers there are, nothing more. Unacked messages,
  rates and consumers' nodes are then unknown, and stay None: never 0.

No queue of the family is created or changed here (the heartbeats' listener has a queue of
its own, gone with its connection). The workers are learnt from their heartbeats
(`common.events`), which each worker publishes every ``HEARTBEAT_INTERVAL`` seconds: a
listener hears every live worker within that time. `StatusWatcher` keeps one listener open
for a screen that refreshes; `collect_status` is one look.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict

from common.errors import BrokerError, BrokerUnreachable
from common.events import HEARTBEAT_INTERVAL, EventKind, EventListener, TaskEvent
from common.rabbitmq.topology import QueueNames
from common.settings import Settings, redact_url, split_urls

#: Seconds to listen for heartbeats: a little over the workers' heartbeat interval, so each
#: live worker is heard at least once.
LISTEN_FOR = HEARTBEAT_INTERVAL + 0.5
#: The management API's port when only the AMQP URL is known.
MANAGEMENT_PORT = 15672
#: Seconds one management request may take before the API counts as not answering.
MANAGEMENT_TIMEOUT = 3.0
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


#: What a queue is to its family.
Role = Literal["work", "wait", "dlq"]


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


class ManagementUnavailable(Exception):
    """The management API did not answer, or not as one: why, in a few words."""


# -- the management API ---------------------------------------------------------------------


def default_management_url(amqp_url: str) -> str:
    """The management API of the broker of `amqp_url` (its first node): same host, port
    15672, plain HTTP."""
    host = urlsplit(split_urls(amqp_url)[0]).hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"http://{host}:{MANAGEMENT_PORT}"


def check_management_url(url: str) -> str:
    """`url`, if it can be a management API's address (raises `ValueError` otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {redact_url(url)!r}")
    return url


class Management:
    """A client of the management API: GET only, through urllib. The credentials are the
    management URL's own if it has some, else the AMQP URL's."""

    def __init__(self, base_url: str, amqp_url: str, timeout: float = MANAGEMENT_TIMEOUT) -> None:
        parts = urlsplit(check_management_url(base_url))
        amqp = urlsplit(split_urls(amqp_url)[0])
        source = parts if parts.username else amqp
        user, password = unquote(source.username or "guest"), unquote(source.password or "guest")
        netloc = parts.netloc.rpartition("@")[2]
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        self.vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._timeout = timeout

    def get(self, path: str) -> Any:
        """The JSON at `path`; None for a 404; `ManagementUnavailable` for anything else
        that is not an answer."""
        request = urllib.request.Request(self.base + path, headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code == 401:
                raise ManagementUnavailable("it refused the credentials (401)") from None
            raise ManagementUnavailable(f"it answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementUnavailable(f"no answer ({reason})") from None
        except ValueError:  # not JSON: some other web server
            raise ManagementUnavailable("its answer is not JSON") from None

    def queues(self, names: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Each queue's record (None for a queue that does not exist)."""
        vhost = quote(self.vhost, safe="")
        if self.get(f"/api/vhosts/{vhost}") is None:  # also tells a server that is not one
            raise ManagementUnavailable(f"it knows no virtual host {self.vhost!r}")
        return {name: self.get(f"/api/queues/{vhost}/{quote(name, safe='')}") for name in names}


def _rate(stats: dict[str, Any], key: str) -> float:
    """A rate of the queue's statistics: a counter never moved is left out of them (a wait
    queue's messages leave it by expiring, never by a delivery), so its rate is 0."""
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
    (the first node of the list that answers). A missing queue closes its channel (404):
    the next one gets a new channel."""
    import pika
    import pika.exceptions

    from common.rabbitmq.errors import translate

    connection = _amqp_connection(amqp_url)
    try:
        found = []
        channel = connection.channel()
        for name, role in family:
            try:
                ok = channel.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise translate(exc, redact_url(amqp_url)) from None
                found.append(QueueStatus(name=name, role=role, exists=False))
                channel = connection.channel()
                continue
            found.append(
                QueueStatus(
                    name=name,
                    role=role,
                    exists=True,
                    ready=ok.message_count,
                    consumers=ok.consumer_count,
                )
            )
        return found
    except pika.exceptions.AMQPError as exc:
        raise translate(exc, redact_url(amqp_url)) from None
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def _amqp_connection(amqp_url: str) -> Any:
    """A blocking connection to the first node of `amqp_url` that answers; the project's
    error (unreachable, refused credentials) for the last one that did not."""
    import pika

    from common.rabbitmq.errors import translate

    error: BrokerError | None = None
    for url in split_urls(amqp_url):
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.socket_timeout = params.blocked_connection_timeout = AMQP_TIMEOUT
        try:
            return pika.BlockingConnection(params)
        except Exception as exc:  # pika's connection errors, and OSError beneath them
            error = translate(exc, redact_url(url))
            if not isinstance(error, BrokerUnreachable):  # a refused password: same on all
                raise error from None
    assert error is not None  # split_urls gave at least one URL (Settings checked it)
    raise error


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
    return EventListener(settings.amqp_url, settings.queue, kinds)


# -- the whole ------------------------------------------------------------------------------


def family_of(queue: str) -> list[tuple[str, Role]]:
    """The queue family's names and roles, in the order a task meets them."""
    names = QueueNames(queue)
    waits: list[tuple[str, Role]] = [(name, "wait") for name in names.wait_queues()]
    return [(names.work, "work"), *waits, (names.dlq, "dlq")]


def queue_figures(
    settings: Settings, management_url: str | None
) -> tuple[Source, str | None, list[QueueStatus]]:
    """The family's figures, from the management API if it answers, else from AMQP:
    (source, why the management API was not used, queues). Wait queues that do not exist
    are left out; the work queue and the DLQ are always there (``exists`` says)."""
    family = family_of(settings.queue)
    url = management_url or default_management_url(settings.amqp_url)
    reason: str | None
    try:
        records = Management(url, settings.amqp_url).queues(name for name, _ in family)
    except ManagementUnavailable as exc:
        reason = f"management API at {redact_url(url)}: {exc}"
        source, queues = Source.AMQP, _from_amqp(settings.amqp_url, family)
    else:
        reason, source = None, Source.MANAGEMENT
        queues = [_from_management(name, role, records[name]) for name, role in family]
    return source, reason, [q for q in queues if q.exists or q.role != "wait"]


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
            _amqp_connection(self.settings.amqp_url).close()
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
