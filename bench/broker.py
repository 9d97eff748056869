"""The broker, as the harness sees it from outside: connections, a raw publisher, queue
readiness and sampling, the gate that starts every consumer at once, and clean-up through
the management API.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pika
import pika.exceptions

from bench.config import CaseError
from common.settings import split_urls


def connect(url: str) -> pika.BlockingConnection:
    """A connection to `url`, or to the first node of a comma-separated list (a cluster)."""
    params = pika.URLParameters(split_urls(url)[0])
    params.connection_attempts = 1
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


def declare(url: str, name: str, arguments: dict[str, Any] | None = None) -> None:
    with contextlib.closing(connect(url)) as conn:
        conn.channel().queue_declare(name, durable=True, arguments=arguments)


def publish_raw(
    url: str,
    queue: str,
    bodies: Iterable[bytes],
    props: Callable[[int], pika.BasicProperties] | None = None,
    arguments: dict[str, Any] | None = None,
) -> tuple[int, float, float]:
    """Publish persistent messages without confirms, as fast as pika's blocking client goes,
    to `queue`, declared with `arguments` if it does not exist.

    Returns (count, start, end): from the first publish (connection already open) until the
    broker answered a round trip sent after the last one (so every message has reached it).
    """
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    with contextlib.closing(connect(url)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True, arguments=arguments)
        count = 0
        start = time.perf_counter()
        for body in bodies:
            channel.basic_publish("", queue, body, props(count) if props else persistent)
            count += 1
        channel.queue_declare(queue, durable=True, passive=True)
        return count, start, time.perf_counter()


def wait_ready_count(url: str, queue: str, count: int, deadline: float) -> None:
    """Wait until `queue` holds `count` ready messages (published ones may lag a little)."""
    with contextlib.closing(connect(url)) as conn:
        channel = conn.channel()
        while True:
            ready = channel.queue_declare(queue, passive=True).method.message_count
            if ready >= count:
                return
            if time.perf_counter() > deadline:
                raise CaseError(f"queue {queue} holds {ready} of {count} messages")
            time.sleep(0.02)


class QueueSampler(threading.Thread):
    """Asks the broker every `interval` s how many messages are ready in a queue and how many
    consumers it has (a passive declare on a connection of its own)."""

    def __init__(self, url: str, queue: str, interval: float = 0.01) -> None:
        super().__init__(name=f"sampler-{queue}", daemon=True)
        self.url = url
        self.queue = queue
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            conn = connect(self.url)
        except BaseException as exc:
            self.error = exc
            return
        try:
            channel = conn.channel()
            while not self._stop_event.is_set():
                try:
                    frame = channel.queue_declare(self.queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker:  # not declared yet
                    channel = conn.channel()
                    time.sleep(self.interval)
                    continue
                sample = (
                    time.perf_counter(),
                    frame.method.message_count,
                    frame.method.consumer_count,
                )
                with self._changed:
                    self.samples.append(sample)
                    self._changed.notify_all()
                time.sleep(self.interval)
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def wait_for(
        self,
        test: Callable[[int, int], bool],
        deadline: float,
        since: float = 0.0,
        what: str = "condition",
    ) -> tuple[float, int, int]:
        """The first sample taken after `since` where ``test(ready, consumers)`` holds."""
        seen = 0
        with self._changed:
            while True:
                for sample in self.samples[seen:]:
                    if sample[0] >= since and test(sample[1], sample[2]):
                        return sample
                seen = len(self.samples)
                if self.error is not None:
                    raise CaseError(f"queue sampler failed: {self.error!r}")
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    last = self.samples[-1] if self.samples else None
                    raise CaseError(f"timed out waiting for {what} (last sample {last})")
                self._changed.wait(min(remaining, 0.5))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


class Gate:
    """Holds every message of a pre-filled queue so its workers start on an empty queue.

    It consumes all `count` messages without acking them. Once the workers are all
    consuming, `open()` closes its channel: the broker puts every message back at once and
    the workers drain them together, so none of them gets a head start while the others
    are still starting up. The messages come back marked redelivered.
    """

    #: Deliveries a quorum queue hands one consumer with no prefetch limit (it allows no
    #: unlimited prefetch): the gate holds a large queue with one consumer per this many.
    QUORUM_CREDIT = 2000

    def __init__(self, url: str, queue: str, count: int, deadline: float) -> None:
        self.conn = connect(url)
        self.channels = [self.conn.channel() for _ in range(count // self.QUORUM_CREDIT + 1)]
        self.held = 0

        def hold(_ch: Any, _method: Any, _props: Any, _body: bytes) -> None:
            self.held += 1

        for channel in self.channels:
            channel.basic_consume(queue, hold)
        while self.held < count:
            if time.perf_counter() > deadline:
                raise CaseError(f"held only {self.held} of {count} messages")
            self.conn.process_data_events(time_limit=0.1)

    def open(self) -> float:
        """Hand every message back; returns when (perf_counter) that began."""
        start = time.perf_counter()
        self.conn.close()  # every channel's holdings back at once
        return start

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def gated_drain(
    sampler: QueueSampler, gate: Gate, consumers: int, deadline: float, wait_empty: bool
) -> tuple[float, float | None]:
    """Open `gate` once the queue has its `consumers` (plus the gate's own); returns (start,
    first time the queue showed 0 ready after it filled again, when `wait_empty`)."""
    sampler.wait_for(
        lambda _r, c: c >= consumers + len(gate.channels),
        deadline,
        what=f"{consumers} consumers on the queue",
    )
    start = gate.open()
    if not wait_empty:
        return start, None
    refilled, _, _ = sampler.wait_for(
        lambda r, _c: r > 0, deadline, since=start, what="the messages to come back"
    )
    empty, _, _ = sampler.wait_for(
        lambda r, _c: r == 0, deadline, since=refilled, what="the queue to empty"
    )
    return start, empty


class Management:
    """The RabbitMQ management HTTP API (for the broker's version and for clean-up), of the
    broker at `amqp_url` (the first node of a list) only: `serves` tells whether the API on
    `port` is that broker's (a cluster's nodes, on other AMQP ports, may have none, and the
    API there would then be another broker's)."""

    def __init__(self, amqp_url: str, port: int = 15672) -> None:
        parts = urllib.parse.urlsplit(split_urls(amqp_url)[0])
        self.amqp_port = parts.port or 5672
        self.base = f"http://{parts.hostname or 'localhost'}:{port}/api"
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.vhost = urllib.parse.quote(urllib.parse.unquote(parts.path[1:] or "/"), safe="")

    def _request(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.base + path, method=method)
        request.add_header("Authorization", self._auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def overview(self) -> dict[str, Any]:
        """The broker's overview; raises if the API is missing or another broker's."""
        overview: dict[str, Any] = self._request("/overview")
        listeners = overview.get("listeners") or []
        if not any(
            item.get("protocol") == "amqp" and item.get("port") == self.amqp_port
            for item in listeners
        ):
            raise LookupError(f"the management API does not serve AMQP port {self.amqp_port}")
        return overview

    def version(self) -> str | None:
        try:
            return str(self.overview().get("rabbitmq_version"))
        except Exception:
            return None

    def names(self, kind: str, prefix: str) -> list[str]:
        items = self._request(f"/{kind}/{self.vhost}?columns=name")
        return [item["name"] for item in items if item["name"].startswith(prefix)]

    def delete(self, kind: str, name: str) -> None:
        with contextlib.suppress(Exception):
            self._request(f"/{kind}/{self.vhost}/{urllib.parse.quote(name, safe='')}", "DELETE")


def delete_prefixed(amqp_url: str, prefix: str, known: Sequence[str] = ()) -> list[str]:
    """Delete every queue and exchange named `prefix`...; `known` names instead, over AMQP
    through the first node that answers, where the broker's management API does not
    answer (a cluster's nodes). Returns what was deleted."""
    deleted: list[str] = []
    api = Management(amqp_url)
    try:
        api.overview()
        for kind in ("queues", "exchanges"):
            for name in api.names(kind, prefix):
                api.delete(kind, name)
                deleted.append(name)
        return deleted
    except Exception:
        pass
    for url in split_urls(amqp_url):
        try:
            conn = connect(url)
        except Exception:
            continue
        with contextlib.suppress(Exception), contextlib.closing(conn):
            for name in known:
                channel = conn.channel()
                try:
                    channel.queue_delete(name)
                    deleted.append(name)
                except pika.exceptions.ChannelClosedByBroker:
                    continue
                with contextlib.suppress(Exception):
                    channel.close()
        return deleted
    return deleted
