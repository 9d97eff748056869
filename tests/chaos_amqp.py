"""Raw pika, as any other client of the broker would use it: no code of the product's.

Every call opens a short-lived connection of its own and is bounded in time: a call that
has not returned after `timeout` seconds is abandoned (its daemon thread is left to die
with its socket) and reported as an error, so the harness never hangs on a broker that
is restarting or in a memory alarm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

T = TypeVar("T")


class AmqpTrouble(Exception):
    """The broker could not be used for this call (down, refused, too slow)."""


def _params(url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = 20
    return params


def bounded(timeout: float, fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread; its value, or `AmqpTrouble` if it raised or took too long."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="chaos-amqp", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AmqpTrouble(f"no answer within {timeout:g}s")
    if "error" in box:
        exc = box["error"]
        raise AmqpTrouble(f"{type(exc).__name__}: {exc}".strip(": ")) from exc
    return box["value"]  # type: ignore[no-any-return]


def _with_channel(url: str, work: Callable[[BlockingChannel], T]) -> T:
    connection = pika.BlockingConnection(_params(url))
    try:
        return work(connection.channel())
    finally:
        if connection.is_open:
            connection.close()


def publish(url: str, queue: str, bodies: Sequence[bytes], timeout: float = 30) -> None:
    """Publish each body to `queue` through the default exchange, persistent, mandatory,
    with publisher confirms: returns only when the broker has stored every one."""

    def work(channel: BlockingChannel) -> None:
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(
                "",
                queue,
                body,
                pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
                mandatory=True,
            )

    bounded(timeout, lambda: _with_channel(url, work))


def peek(
    url: str, queue: str, limit: int = 100_000, timeout: float = 60
) -> list[tuple[bytes, dict[str, Any]]]:
    """Up to `limit` messages of `queue` as (body, headers), left in place (nothing is acked:
    closing the connection puts them all back). Empty when the queue does not exist."""

    def work(channel: BlockingChannel) -> list[tuple[bytes, dict[str, Any]]]:
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return []
            raise
        got = []
        while len(got) < limit:
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            got.append((body, dict(props.headers or {})))
        return got

    return bounded(timeout, lambda: _with_channel(url, work))


def take(url: str, queue: str, timeout: float = 60) -> list[bytes] | None:
    """Every message of `queue`, removed (auto-ack); None when the queue does not exist."""

    def work(channel: BlockingChannel) -> list[bytes] | None:
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise
        got = []
        while True:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append(body)

    return bounded(timeout, lambda: _with_channel(url, work))
