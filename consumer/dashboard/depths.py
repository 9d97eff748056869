"""A work queue's depths: over AMQP, and from the management HTTP API when it answers.

The management API knows what AMQP cannot tell: how many messages are delivered and not
acked yet. It samples its counters (every 5 s by default), so its figures lag. AMQP passive
declares count ready messages exactly and at once, and nothing else. `DepthReader` takes
each figure from the source that knows it best.

A management API that does not answer is asked again only every `MANAGEMENT_RETRY` seconds,
so a broker without the plugin costs one failed request now and then, not one a second.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import urllib.parse
from dataclasses import replace
from typing import Any

from common.defaults import QueueType
from common.errors import TaskshuttleError
from consumer.dashboard.state import Depths

log = logging.getLogger("taskshuttle.dashboard")

DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:15672"
#: Seconds between two tries of a management API that did not answer.
MANAGEMENT_RETRY = 15.0
#: Seconds one HTTP request or AMQP connection attempt may take.
REQUEST_TIMEOUT = 3.0


class DepthError(Exception):
    """The depths could not be read from one source (the message says why, no password)."""


class ManagementDepths:
    """Depths from RabbitMQ's management HTTP API (`common.rabbitmq.management.Management`:
    credentials from `management_url`'s own user info, else from the AMQP URL's). Waiting:
    the delayed tasks of every queue of `queue_type` (the delay levels are shared)."""

    def __init__(
        self,
        management_url: str,
        amqp_url: str,
        queue: str,
        queue_type: QueueType = QueueType.quorum,
    ) -> None:
        from common.rabbitmq.management import Management
        from common.rabbitmq.topology import DelayLevels

        self._api = Management(management_url, amqp_url, timeout=REQUEST_TIMEOUT)
        self.base = self._api.base
        # The work queue, its DLQ and the delay levels of its type (every queue's delayed
        # tasks: the levels are shared), and nothing else on the broker.
        levels = re.escape(DelayLevels(queue_type).prefix)
        pattern = f"^({re.escape(queue)}(\\.dlq)?|{levels}\\.[0-9]+)$"
        query = urllib.parse.urlencode(
            {
                "page": 1,
                "page_size": 100,
                "name": pattern,
                "use_regex": "true",
                "columns": "name,messages_ready,messages_unacknowledged,consumers",
            }
        )
        self._path = f"/api/queues/{urllib.parse.quote(self._api.vhost, safe='')}?{query}"
        self._queue = queue

    def read(self) -> Depths:
        from common.rabbitmq.management import ManagementUnavailable

        try:
            found = self._api.get(self._path)
            if found is None:
                raise ManagementUnavailable(f"it knows no virtual host {self._api.vhost!r}")
            items: list[dict[str, Any]] = found["items"]
        except (ManagementUnavailable, KeyError, TypeError) as exc:
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
    """Depths from AMQP: each queue's ready count, by `RabbitBackend.depths` on an admin
    connection (`common.factory.open_backend`) kept between readings (opened again after a
    failure)."""

    def __init__(self, amqp_url: str, queue: str, queue_type: QueueType) -> None:
        self._url, self._queue, self._queue_type = amqp_url, queue, queue_type
        self._backend: Any = None

    def read(self) -> Depths:
        from common.factory import Role, open_backend
        from common.settings import Settings

        try:
            if self._backend is None:
                settings = Settings(
                    amqp_url=self._url, queue=self._queue, queue_type=self._queue_type
                )
                self._backend = open_backend(settings, Role.ADMIN, attempt_timeout=REQUEST_TIMEOUT)
            depths = self._backend.depths()
        except TaskshuttleError as exc:
            self.close()
            raise DepthError(f"AMQP: {exc}") from None
        return Depths(
            ready=depths["work"],
            unacked=None,
            waiting=depths["waiting"],
            dead=depths["dead_letter"],
        )

    def close(self) -> None:
        if self._backend is not None:
            with contextlib.suppress(Exception):
                self._backend.close()
            self._backend = None


class DepthReader:
    """Ready messages, delayed tasks and dead letters counted over AMQP, which is exact and
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
