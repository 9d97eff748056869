"""A work queue's depths: over AMQP, and from the management HTTP API when it answers.

The management API knows what AMQP cannot tell: how many messages are delivered and not
acked yet. It samples its counters (every 5 s by default), so its figures lag. AMQP passive
declares count ready messages exactly and at once, and nothing else. `DepthReader` takes
each figure from the source that knows it best.

A management API that does not answer is asked again only every `MANAGEMENT_RETRY` seconds,
so a broker without the plugin costs one failed request now and then, not one a second.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from typing import Any

from common.defaults import QueueType
from common.errors import TaskshuttleError
from common.settings import redact_url, split_urls
from consumer.dashboard.state import Depths

log = logging.getLogger("taskshuttle.dashboard")

DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:15672"
#: Seconds between two tries of a management API that did not answer.
MANAGEMENT_RETRY = 15.0
#: Seconds one HTTP request or AMQP connection attempt may take.
REQUEST_TIMEOUT = 3.0


class DepthError(Exception):
    """The depths could not be read from one source (the message says why, no password)."""


def _amqp_parts(amqp_url: str) -> tuple[str, str, str]:
    """User, password and virtual host of the first broker URL (RabbitMQ's defaults when
    absent: guest, guest, ``/``)."""
    parts = urllib.parse.urlsplit(split_urls(amqp_url)[0])
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return user, password, vhost


class ManagementDepths:
    """Depths from RabbitMQ's management HTTP API; credentials from `management_url`'s own
    user info, else from the AMQP URL's (the same user usually may use both)."""

    def __init__(self, management_url: str, amqp_url: str, queue: str) -> None:
        parts = urllib.parse.urlsplit(management_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_url(management_url)!r}")
        user, password, vhost = _amqp_parts(amqp_url)
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # an IPv6 address
            netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        self.base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        # The work queue, its DLQ and its wait queues, and nothing else on the broker.
        pattern = f"^{re.escape(queue)}(\\.dlq|\\.wait\\.[0-9]+)?$"
        query = urllib.parse.urlencode(
            {
                "page": 1,
                "page_size": 100,
                "name": pattern,
                "use_regex": "true",
                "columns": "name,messages_ready,messages_unacknowledged,consumers",
            }
        )
        self._url = f"{self.base}/api/queues/{urllib.parse.quote(vhost, safe='')}?{query}"
        self._queue = queue

    def read(self) -> Depths:
        request = urllib.request.Request(self._url, headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                items: list[dict[str, Any]] = json.load(response)["items"]
        except urllib.error.HTTPError as exc:
            raise DepthError(f"management API at {self.base}: HTTP {exc.code}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DepthError(f"management API at {self.base}: {exc}") from None
        ready = unacked = waiting = dead = 0
        consumers = None
        for item in items:
            name = item.get("name")
            held = int(item.get("messages_ready") or 0)
            if name == self._queue:
                ready, unacked = held, int(item.get("messages_unacknowledged") or 0)
                consumers = int(item.get("consumers") or 0)
            elif name == f"{self._queue}.dlq":
                dead = held + int(item.get("messages_unacknowledged") or 0)
            else:
                waiting += held
        return Depths(ready, unacked, waiting, dead, consumers)


class AmqpDepths:
    """Depths from AMQP: each queue's ready count. The queues are declared once per
    connection with the arguments the workers use (as `RabbitBackend.pending` does), since a
    passive declare of a missing queue would close the channel; then only counted."""

    def __init__(self, amqp_url: str, queue: str, queue_type: QueueType) -> None:
        from common.rabbitmq.topology import QueueNames

        self._url = split_urls(amqp_url)[0]
        self._names = QueueNames(queue)
        self._queue_type = queue_type
        self._link: Any = None

    def _open(self) -> Any:
        import pika

        from common.rabbitmq import topology
        from common.rabbitmq.link import Link

        safe_url = redact_url(self._url)
        try:
            params = pika.URLParameters(self._url)
        except Exception as exc:
            raise DepthError(f"malformed AMQP URL {safe_url!r}: {exc}") from None
        params.connection_attempts = 1
        params.socket_timeout = REQUEST_TIMEOUT
        link = Link(params, safe_url, f"{self._names.work}-dashboard")
        try:
            link.open(REQUEST_TIMEOUT)
            names, kind = self._names, self._queue_type
            link.declare(names.work, topology.work_queue_arguments(names, kind))
            link.declare(names.dlq, topology.dlq_arguments(kind))
            for wait in names.wait_queues():
                link.declare(wait, topology.wait_queue_arguments(names.work, kind))
        except BaseException:
            link.close()
            raise
        return link

    def read(self) -> Depths:
        try:
            if self._link is None or not self._link.alive:
                self.close()
                self._link = self._open()
            link, names = self._link, self._names
            return Depths(
                ready=link.queue_length(names.work),
                unacked=None,
                waiting=link.count(names.wait_queues()),
                dead=link.queue_length(names.dlq),
            )
        except TaskshuttleError as exc:
            self.close()
            raise DepthError(f"AMQP: {exc}") from None

    def close(self) -> None:
        if self._link is not None:
            with contextlib.suppress(Exception):
                self._link.close()
            self._link = None


class DepthReader:
    """Ready messages, retries waiting and dead letters counted over AMQP, which is exact and
    immediate; unacked messages (and consumers) from the management API when it answers,
    which AMQP cannot tell. The API alone would do, but it samples its counters: during a
    fast job its ready count lags the real one by seconds, and the chart would show a full
    queue that is half drained. Says where the figures came from (`source`)."""

    def __init__(
        self, management: ManagementDepths | None, amqp: AmqpDepths, *, clock: Any = time.monotonic
    ) -> None:
        self._management, self._amqp, self._clock = management, amqp, clock
        self._management_down_until = 0.0
        self.source = "not read yet"

    def _sampled(self) -> tuple[Depths | None, str | None]:
        if self._management is None or self._clock() < self._management_down_until:
            return None, None
        try:
            return self._management.read(), None
        except DepthError as exc:
            self._management_down_until = self._clock() + MANAGEMENT_RETRY
            log.info("%s; unacked messages are not counted", exc)
            return None, str(exc)

    def read(self) -> tuple[Depths | None, str | None]:
        """The depths (None if no source answered) and, if a source failed, why."""
        try:
            exact, amqp_error = self._amqp.read(), None
        except DepthError as exc:
            exact, amqp_error = None, str(exc)
        sampled, management_error = self._sampled()
        why = "; ".join(filter(None, [amqp_error, management_error])) or None
        if exact is not None and sampled is not None:
            self.source = "AMQP, unacked from the management API"
            return replace(exact, unacked=sampled.unacked, consumers=sampled.consumers), why
        if exact is not None:
            self.source = "AMQP (no unacked count without the management API)"
            return exact, why
        if sampled is not None:
            self.source = "management API (sampled every few seconds)"
            return sampled, why
        self.source = "none"
        return None, why

    def close(self) -> None:
        self._amqp.close()
