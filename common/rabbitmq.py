"""The RabbitMQ backend: pika, a durable queue, persistent messages, confirms, late acks.

This module is the only one that imports pika. Each connection is a `_Link`: an asynchronous
`SelectConnection` with one channel in confirm mode, served by a private I/O thread. The
caller's thread never touches pika; it hands work to the I/O thread and, where it needs an
answer, waits on a future. That is what keeps heartbeats flowing while a handler runs for
minutes, and what lets publisher confirms be pipelined instead of one round trip each.

Topology for a work queue ``Q``:
- ``Q``: durable classic queue; tasks are persistent, published with ``mandatory``.
- ``Q.dlq``: dead letters, the original body with why in headers (``x-reason`` ...).
- ``Q.wait.N``: where attempt N+1 of a failed task waits out its backoff. A message there
  carries its delay as a per-message TTL; when it expires the queue dead-letters it back to
  ``Q``. The waiting happens in the broker, not in a sleeping consumer.
- ``Q.replies.<id>``: one producer's results (``reply_to`` + ``correlation_id``, RabbitMQ's
  RPC pattern); durable so a broker restart keeps them, deleted after 10 idle minutes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed
from pika.spec import Basic, BasicProperties

from common.backend import Backend, Delivery
from common.errors import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConnectionLost,
    PublishFailed,
    QueueMismatch,
)
from common.schemas import (
    DeadLetter,
    TaskEnvelope,
    TaskResult,
    as_first_attempt,
    decode_result,
    encode,
    utcnow,
)
from common.settings import redact_url

log = logging.getLogger("taskshuttle.rabbitmq")

PERSISTENT = pika.DeliveryMode.Persistent
#: Publishes handed to the I/O thread at once; the next chunk goes out while this one's
#: confirms come back, so at most two chunks are unconfirmed.
PUBLISH_CHUNK = 500
REPLY_QUEUE_EXPIRES_MS = 600_000


def translate(exc: BaseException, safe_url: str) -> BrokerError:
    """pika's exception, as this project's error (the one place this happens)."""
    if isinstance(exc, BrokerError):
        return exc
    text = str(exc)
    if isinstance(
        exc,
        pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError,
    ):
        return AuthenticationFailed(f"broker at {safe_url} refused the credentials")
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return AuthenticationFailed(f"broker at {safe_url} refused access to the virtual host")
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        if exc.reply_code == 406 and "inequivalent arg" in exc.reply_text:
            return QueueMismatch(
                f"queue exists with other arguments ({exc.reply_text}); "
                "delete it or choose another --queue"
            )
        if exc.reply_code == 403:
            return AuthenticationFailed(f"access refused: {exc.reply_text}")
        return BrokerError(f"broker closed the channel: {exc.reply_code} {exc.reply_text}")
    if isinstance(exc, AMQPConnectionWorkflowFailed | pika.exceptions.AMQPConnectionError):
        cause = getattr(exc, "exceptions", None) or (exc.args[0] if exc.args else None)
        if isinstance(cause, list) and cause:
            cause = cause[-1]
        if isinstance(cause, AMQPConnectionWorkflowFailed):
            cause = cause.exceptions[-1] if cause.exceptions else cause
        detail = getattr(cause, "exception", cause)
        if isinstance(
            exc, pika.exceptions.ConnectionClosedByBroker | pika.exceptions.StreamLostError
        ):
            return ConnectionLost(f"connection to {safe_url} lost: {text}")
        return BrokerUnreachable(f"cannot reach broker at {safe_url}: {detail or text}")
    return BrokerError(f"broker error at {safe_url}: {type(exc).__name__}: {text}")


_Message = tuple[str, bytes, BasicProperties]  # routing key, body, properties


class _Batch:
    """Publishes awaiting the broker's confirms: one future for all of them, not one each
    (a `Future` per message costs more than the publish itself)."""

    __slots__ = ("confirmed", "failures", "future", "messages", "remaining")

    def __init__(self, messages: Sequence[_Message]) -> None:
        self.messages = messages
        self.confirmed = [False] * len(messages)
        self.remaining = len(messages)
        self.failures: list[str] = []
        self.future: Future[None] = Future()

    def settle(self, index: int, failure: str | None) -> None:
        if failure is None:
            self.confirmed[index] = True
        else:
            self.failures.append(failure)
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)

    @property
    def unconfirmed(self) -> list[_Message]:
        return [m for m, ok in zip(self.messages, self.confirmed, strict=True) if not ok]

    def wait(self, timeout: float, safe_url: str) -> bool:
        """True once all are confirmed; False if the connection dropped first.

        Raises `PublishFailed` if the broker nacked or returned any, `BrokerError` if it
        stayed silent for `timeout` seconds.
        """
        try:
            self.future.result(timeout)
        except FutureTimeout:
            raise BrokerError(f"broker at {safe_url} did not confirm within {timeout:g}s") from None
        except ConnectionLost:
            return False
        if self.failures:
            raise PublishFailed(
                f"{len(self.failures)} of {len(self.messages)} messages not accepted: "
                f"{self.failures[0]}"
            )
        return True


@dataclass(frozen=True, slots=True)
class _Tag:
    link: _Link
    tag: int
    reply_to: str | None


class _Link:
    """One AMQP connection and its one confirm-mode channel, run by a private I/O thread.

    Methods ending in ``_io`` run only in the I/O thread. `call` and `post` are the only
    ways in from other threads.
    """

    def __init__(self, params: pika.URLParameters, safe_url: str, name: str) -> None:
        self.safe_url = safe_url
        self.inbox: queue.SimpleQueue[tuple[int, bool, BasicProperties, bytes]] = (
            queue.SimpleQueue()
        )
        self.close_error: BrokerError | None = None
        self._params = params
        self._opened: Future[None] = Future()
        self._dead = threading.Event()
        self._closing = False
        self._conn: pika.SelectConnection | None = None
        self._channel: Any = None
        self._waiting: set[Future[Any]] = set()
        # delivery tag -> (its batch and index, or None when nobody waits; message id)
        self._unconfirmed: dict[int, tuple[_Batch | None, int, str | None]] = {}
        self._returned: set[str] = set()
        self._publish_count = 0
        self._outbox: list[tuple[Any, ...]] = []
        self._outbox_lock = threading.Lock()
        self._flush_posted = False
        self.declared: set[str] = set()
        self._thread = threading.Thread(target=self._run_io, name=f"amqp-{name}", daemon=True)

    # -- from any thread -----------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self._dead.is_set()

    def open(self, timeout: float) -> None:
        self._thread.start()
        try:
            self._opened.result(timeout)
        except FutureTimeout:
            self.close()
            raise BrokerUnreachable(
                f"cannot reach broker at {self.safe_url}: no answer within {timeout:g}s"
            ) from None

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the I/O thread, soon; raises `ConnectionLost` if the link is dead."""
        if self._dead.is_set() or self._conn is None:
            raise self.close_error or ConnectionLost(f"connection to {self.safe_url} is closed")
        try:
            self._conn.ioloop.add_callback_threadsafe(fn)
        except Exception as exc:  # the ioloop closed under us
            raise self.close_error or ConnectionLost(str(exc)) from None

    def call(self, start: Callable[[Future[Any]], None], timeout: float = 30.0) -> Any:
        """Run `start(future)` in the I/O thread and wait for it to resolve the future."""
        future: Future[Any] = Future()

        def run() -> None:
            self._waiting.add(future)
            future.add_done_callback(self._waiting.discard)
            try:
                start(future)
            except Exception as exc:
                if not future.done():
                    future.set_exception(translate(exc, self.safe_url))

        self.post(run)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise BrokerError(
                f"broker at {self.safe_url} did not answer within {timeout:g}s"
            ) from None

    def settle(self, op: tuple[Any, ...]) -> None:
        """Queue a result publish, ack or nack, in order; one wake-up of the I/O thread per batch.

        Consecutive acks are sent as one ``multiple=True`` ack: safe because one worker
        thread settles deliveries in the order they came, so every earlier tag is settled.
        """
        with self._outbox_lock:
            self._outbox.append(op)
            if self._flush_posted:
                return
            self._flush_posted = True
        self.post(self._flush_io)

    def close(self) -> None:
        if self._conn is None or self._dead.is_set():
            self._dead.set()
            return
        self._closing = True
        try:
            self.post(self._close_io)
        except BrokerError:
            return
        self._thread.join(10)

    # -- I/O thread ----------------------------------------------------------------------
    def _run_io(self) -> None:
        try:
            self._conn = pika.SelectConnection(
                self._params,
                on_open_callback=self._on_connection_open_io,
                on_open_error_callback=self._on_open_error_io,
                on_close_callback=self._on_connection_closed_io,
            )
            self._conn.ioloop.start()
        except Exception as exc:  # pragma: no cover - a bug in a callback
            self._fail_io(translate(exc, self.safe_url))
        finally:
            self._dead.set()
            self._fail_io(self.close_error or ConnectionLost("connection closed"))
            if self._conn is not None:
                self._conn.ioloop.close()  # its wake-up socket pair, else they leak

    def _on_connection_open_io(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel_open_io)

    def _on_channel_open_io(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed_io)
        channel.add_on_return_callback(self._on_return_io)
        channel.add_on_cancel_callback(self._on_cancelled_io)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm_io,
            callback=lambda _frame: self._opened.set_result(None),
        )

    def _on_open_error_io(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self.close_error = translate(exc, self.safe_url)
        if not self._opened.done():
            self._opened.set_exception(self.close_error)
        conn.ioloop.stop()

    def _on_connection_closed_io(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        if not self._closing and self.close_error is None:
            self.close_error = (
                translate(reason, self.safe_url)
                if isinstance(reason, pika.exceptions.ChannelClosedByBroker)
                else ConnectionLost(f"connection to {self.safe_url} lost: {reason}")
            )
            log.warning("%s", self.close_error)
        if not self._opened.done():
            self._opened.set_exception(self.close_error or ConnectionLost(str(reason)))
        self._dead.set()
        self._fail_io(self.close_error or ConnectionLost("connection closed"))
        conn.ioloop.stop()

    def _on_channel_closed_io(self, channel: Any, reason: BaseException) -> None:
        # One channel per link: when the broker closes it, the link is done.
        if not self._closing and self.close_error is None:
            self.close_error = translate(reason, self.safe_url)
        self._fail_io(self.close_error or ConnectionLost("channel closed"))
        if self._conn is not None and self._conn.is_open:
            self._closing = True
            self._conn.close()

    def _on_cancelled_io(self, frame: Any) -> None:
        # The broker cancelled our consumer (queue deleted): treat the link as lost.
        self.close_error = ConnectionLost("the broker cancelled the consumer (queue deleted?)")
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _close_io(self) -> None:
        if self._conn is None:
            return
        if self._conn.is_open:
            self._conn.close()
        elif self._conn.is_closed:
            self._conn.ioloop.stop()
        # else it is closing already: its close callback stops the loop once the socket is shut

    def _fail_io(self, error: BrokerError) -> None:
        for future in list(self._waiting):
            if not future.done():
                future.set_exception(error)
        for batch, _, _ in self._unconfirmed.values():
            if batch is not None and not batch.future.done():
                batch.future.set_exception(error)
        self._unconfirmed.clear()

    def _on_return_io(self, channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def _on_confirm_io(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        if method.multiple:
            tags = list(itertools.takewhile(lambda t: t <= method.delivery_tag, self._unconfirmed))
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            batch, index, message_id = self._unconfirmed.pop(tag, (None, 0, None))
            returned = message_id is not None and message_id in self._returned
            if returned:
                self._returned.discard(message_id)
            if batch is None:
                continue
            if acked and not returned:
                batch.settle(index, None)
            else:
                why = "unroutable (returned)" if returned else "nacked by the broker"
                batch.settle(index, f"message {message_id} {why}")

    def publish_io(
        self, message: _Message, batch: _Batch | None, index: int = 0, *, mandatory: bool = False
    ) -> None:
        routing_key, body, props = message
        self._channel.basic_publish("", routing_key, body, props, mandatory)
        self._publish_count += 1
        self._unconfirmed[self._publish_count] = (batch, index, props.message_id)

    def _publish_batch_io(self, batch: _Batch) -> None:
        for index, message in enumerate(batch.messages):
            self.publish_io(message, batch, index, mandatory=True)

    def publish_many(self, messages: Sequence[_Message], timeout: float) -> list[_Message]:
        """Publish every message with ``mandatory``; wait for the broker's confirms.

        Returns the messages left unconfirmed because the connection dropped (empty when
        all went through); raises `PublishFailed` for a nacked or returned message.
        At most two chunks are in flight: the next one goes out while this one's confirms
        come back.
        """
        chunks = [messages[i : i + PUBLISH_CHUNK] for i in range(0, len(messages), PUBLISH_CHUNK)]
        batches: list[_Batch] = []
        for chunk in chunks:
            batch = _Batch(chunk)
            try:
                self.post(functools.partial(self._publish_batch_io, batch))
            except ConnectionLost:
                break
            batches.append(batch)
            if len(batches) > 1 and not batches[-2].wait(timeout, self.safe_url):
                break
        if batches:
            batches[-1].wait(timeout, self.safe_url)
        unconfirmed = [m for batch in batches for m in batch.unconfirmed]
        for chunk in chunks[len(batches) :]:
            unconfirmed.extend(chunk)
        return unconfirmed

    def _flush_io(self) -> None:
        with self._outbox_lock:
            ops, self._outbox = self._outbox, []
            self._flush_posted = False
        if self._channel is None or not self._channel.is_open:
            return  # deliveries of a closed channel go back to the queue by themselves
        last_ack: int | None = None
        for op in ops:
            if op[0] == "ack":
                last_ack = op[1]
            elif op[0] == "publish":
                self.publish_io(op[1], None)
            elif op[0] == "nack":
                if last_ack is not None:
                    self._channel.basic_ack(last_ack, multiple=True)
                    last_ack = None
                self._channel.basic_nack(op[1], multiple=False, requeue=True)
        if last_ack is not None:
            self._channel.basic_ack(last_ack, multiple=True)

    def on_message_io(self, channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        self.inbox.put((method.delivery_tag, method.redelivered, props, body))

    @property
    def channel_io(self) -> Any:
        return self._channel


def _declare_io(
    link: _Link, future: Future[Any], name: str, arguments: dict[str, Any] | None = None
) -> None:
    link.channel_io.queue_declare(
        name,
        durable=True,
        arguments=arguments,
        callback=lambda frame: future.set_result(frame.method.message_count),
    )


class RabbitBackend(Backend):
    """A task queue on RabbitMQ. Connects (and declares its queues) when built.

    `reconnect_attempts`: how many times a lost connection is re-established before the
    error reaches the caller (None: forever). A wrong password is never retried.
    """

    name = "rabbitmq"

    def __init__(
        self,
        url: str,
        queue_name: str = "tasks",
        *,
        prefetch: int = 100,
        want_results: bool = False,
        connect_timeout: float = 10.0,
        reconnect_attempts: int | None = 0,
        max_reconnect_delay: float = 10.0,
        queue_arguments: dict[str, Any] | None = None,
    ) -> None:
        self.queue_name = queue_name
        #: Arguments the work queue is declared with (e.g. ``x-single-active-consumer``).
        self.queue_arguments = queue_arguments
        self.dlq_name = f"{queue_name}.dlq"
        self.prefetch = prefetch
        self.want_results = want_results
        self.reconnects = 0
        #: Messages published again after a dropped connection (each may be a duplicate).
        self.republished = 0
        self.safe_url = redact_url(url)
        self._params = pika.URLParameters(url)
        self._params.connection_attempts = 1
        self._params.socket_timeout = connect_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_attempts = reconnect_attempts
        self._max_reconnect_delay = max_reconnect_delay
        self._consuming = False
        self._failed_reconnects = 0
        self._reconnect_delay = 0.2
        self._retry_at = 0.0
        self.reply_queue = f"{queue_name}.replies.{uuid.uuid4().hex[:12]}" if want_results else None
        self._link = self._connect()

    # -- connection ----------------------------------------------------------------------
    def _connect(self) -> _Link:
        link = _Link(self._params, self.safe_url, self.queue_name)
        link.open(self._connect_timeout)
        try:
            self._declare(link, self.queue_name, self.queue_arguments)
            self._declare(link, self.dlq_name)
            if self.reply_queue:
                self._declare(link, self.reply_queue, {"x-expires": REPLY_QUEUE_EXPIRES_MS})
                link.call(
                    lambda f: link.channel_io.basic_consume(
                        self.reply_queue,
                        link.on_message_io,
                        consumer_tag=self.reply_queue,
                        callback=lambda _frame: f.set_result(None),
                    )
                )
            if self._consuming:
                self._start_consuming(link)
        except BaseException:
            link.close()
            raise
        return link

    @staticmethod
    def _declare(link: _Link, name: str, arguments: dict[str, Any] | None = None) -> int:
        count: int = link.call(functools.partial(_declare_io, link, name=name, arguments=arguments))
        link.declared.add(name)
        return count

    def start_consuming(self) -> None:
        """Register as a consumer now (workers do this before they say they are ready);
        otherwise the first `receive` does it."""
        if not self._consuming and not self.want_results:
            self._consuming = True
            self._start_consuming(self._link_now())

    def _start_consuming(self, link: _Link) -> None:
        def start(future: Future[Any]) -> None:
            channel = link.channel_io
            channel.basic_qos(
                prefetch_count=self.prefetch,
                callback=lambda _frame: channel.basic_consume(
                    self.queue_name,
                    link.on_message_io,
                    callback=lambda _frame: future.set_result(None),
                ),
            )

        link.call(start)

    def _live_link(self, wait: float | None = None) -> _Link | None:
        """The current link, re-established (capped exponential backoff) if it was lost.

        Without `wait`: keeps trying until `reconnect_attempts` are spent, then raises.
        With `wait`: tries for at most `wait` seconds and returns None if still down, so a
        worker loop gets its turn to notice a shutdown while the broker is away.
        A wrong password or a queue mismatch is never retried.
        """
        link = self._link
        if link.alive:
            return link
        error = link.close_error or ConnectionLost("connection closed")
        if not isinstance(error, ConnectionLost | BrokerUnreachable) or (
            self._reconnect_attempts == 0
        ):
            raise error
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            pause = self._retry_at - time.monotonic()
            if deadline is not None and self._retry_at > deadline:
                time.sleep(max(deadline - time.monotonic(), 0))
                return None
            if pause > 0:
                time.sleep(pause)
            self._failed_reconnects += 1
            log.warning(
                "connection lost (%s); reconnecting, attempt %d", error, self._failed_reconnects
            )
            try:
                self._link = self._connect()
            except (ConnectionLost, BrokerUnreachable) as exc:
                error = exc
                spent = self._reconnect_attempts is not None and (
                    self._failed_reconnects >= self._reconnect_attempts
                )
                if spent:
                    raise
                self._retry_at = time.monotonic() + self._reconnect_delay
                self._reconnect_delay = min(self._reconnect_delay * 2, self._max_reconnect_delay)
                continue
            self._failed_reconnects = 0
            self._reconnect_delay = 0.2
            self.reconnects += 1
            log.warning("reconnected to %s", self.safe_url)
            return self._link

    def _link_now(self) -> _Link:
        link = self._live_link()
        assert link is not None  # without `wait`, it raises rather than give up
        return link

    # -- producer side -------------------------------------------------------------------
    def publish(self, tasks: Sequence[TaskEnvelope], timeout: float = 60.0) -> None:
        # Only the properties the broker or a client acts on: each one is encoded here,
        # parsed by the broker and decoded by the worker, per message. The task's id and
        # kind are in the body already.
        messages = [
            (
                self.queue_name,
                encode(task),
                BasicProperties(
                    content_type="application/json",
                    delivery_mode=PERSISTENT,
                    message_id=task.id,
                    reply_to=self.reply_queue,
                ),
            )
            for task in tasks
        ]
        self._publish_with_retry(messages, timeout)

    def publish_raw(self, bodies: Sequence[bytes], timeout: float = 60.0) -> None:
        messages = [
            (
                self.queue_name,
                body,
                BasicProperties(delivery_mode=PERSISTENT, message_id=uuid.uuid4().hex),
            )
            for body in bodies
        ]
        self._publish_with_retry(messages, timeout)

    def _publish_with_retry(self, messages: Sequence[_Message], timeout: float) -> None:
        """Publish; if the connection drops, reconnect and publish again what was unconfirmed.

        A message in flight when the connection dropped may already be stored: publishing it
        again can make a duplicate, which consumers see (same task id) and the ledger counts.
        """
        remaining = list(messages)
        while remaining:
            link = self._link_now()
            remaining = link.publish_many(remaining, timeout)
            if remaining:
                log.warning("connection lost with %d messages unconfirmed", len(remaining))
                if self._reconnect_attempts == 0:
                    raise link.close_error or ConnectionLost("connection lost while publishing")
                self.republished += len(remaining)

    def receive_result(self, timeout: float) -> TaskResult | None:
        if not self.want_results:
            raise BrokerError("this backend was built without want_results=True")
        delivery = self.receive(timeout)
        if delivery is None:
            return None
        self.ack(delivery)
        return decode_result(delivery.body)

    # -- worker side ---------------------------------------------------------------------
    def receive(self, timeout: float) -> Delivery | None:
        link = self._live_link(wait=timeout)
        if link is None:
            return None
        self.start_consuming()
        try:
            tag, redelivered, props, body = link.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        return Delivery(
            body=body,
            redelivered=redelivered,
            handle=_Tag(link, tag, props.reply_to),
            wants_result=props.reply_to is not None,
        )

    def _stale(self, delivery: Delivery) -> bool:
        """True when the delivery came on a connection that is gone: the broker hands it
        out again, so settling it (or publishing its retry) would make a duplicate."""
        handle: _Tag = delivery.handle
        return handle.link is not self._link or not handle.link.alive

    def _settle(self, delivery: Delivery, op: tuple[Any, ...]) -> None:
        handle: _Tag = delivery.handle
        if self._stale(delivery):
            return
        try:
            handle.link.settle(op)
        except ConnectionLost:
            return

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        handle: _Tag = delivery.handle
        if result is not None and handle.reply_to:
            props = BasicProperties(
                content_type="application/json",
                delivery_mode=PERSISTENT,
                correlation_id=result.task_id,
            )
            self._settle(delivery, ("publish", (handle.reply_to, encode(result), props)))
        self._settle(delivery, ("ack", handle.tag))

    def requeue(self, delivery: Delivery) -> None:
        self._settle(delivery, ("nack", delivery.handle.tag))

    def _publish_confirmed(self, link: _Link, message: _Message) -> None:
        """One message, waiting for its confirm (retries and dead letters)."""
        if link.publish_many([message], timeout=30):
            raise link.close_error or ConnectionLost("connection lost while publishing")

    def retry_later(self, delivery: Delivery, task: TaskEnvelope, delay: float) -> None:
        if self._stale(delivery):
            return
        link = self._link_now()
        wait_queue = f"{self.queue_name}.wait.{task.attempt - 1}"
        if wait_queue not in link.declared:
            self._declare(
                link,
                wait_queue,
                {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.queue_name},
            )
        props = BasicProperties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            message_id=task.id,
            reply_to=delivery.handle.reply_to,
            expiration=str(max(int(delay * 1000), 0)),
        )
        self._publish_confirmed(link, (wait_queue, encode(task), props))
        self.ack(delivery)

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        if self._stale(delivery):
            return
        link = self._link_now()
        props = BasicProperties(
            delivery_mode=PERSISTENT,
            message_id=letter.task_id or uuid.uuid4().hex,
            headers={
                "x-reason": letter.reason,
                "x-error": letter.error[:4000],
                "x-attempts": letter.attempts,
                "x-queue": letter.queue,
                "x-task-id": letter.task_id or "",
                "x-dead-lettered-at": letter.dead_lettered_at.isoformat(),
            },
        )
        self._publish_confirmed(link, (self.dlq_name, letter.body, props))
        self.ack(delivery, result)

    # -- both ----------------------------------------------------------------------------
    def pending(self) -> int:
        return self._queue_length(self.queue_name)

    def _queue_length(self, name: str) -> int:
        link = self._link_now()
        return int(
            link.call(
                lambda f: link.channel_io.queue_declare(
                    name,
                    passive=True,
                    callback=lambda frame: f.set_result(frame.method.message_count),
                )
            )
        )

    def _side_link(self) -> _Link:
        """A short-lived second connection, so reading the DLQ never touches the work channel."""
        link = _Link(self._params, self.safe_url, f"{self.queue_name}-admin")
        link.open(self._connect_timeout)
        return link

    def dead_letters(self) -> list[DeadLetter]:
        link = self._side_link()
        try:
            letters = []
            for _tag, props, body in self._get_all(link, self.dlq_name):
                letters.append(_letter_from(props, body, self.queue_name))
            return letters  # closing the link returns them all to the DLQ, in order
        finally:
            link.close()

    def replay_dead_letters(self) -> int:
        """Move every dead letter back to the work queue, as a fresh first attempt."""
        link = self._side_link()
        moved = 0
        try:
            for tag, _props, body in self._get_all(link, self.dlq_name):
                props = BasicProperties(delivery_mode=PERSISTENT, message_id=uuid.uuid4().hex)
                self._publish_confirmed(link, (self.queue_name, as_first_attempt(body), props))
                link.call(lambda f, tag=tag: (link.channel_io.basic_ack(tag), f.set_result(None)))
                moved += 1
            return moved
        finally:
            link.close()

    @staticmethod
    def _get_all(link: _Link, name: str) -> list[tuple[int, BasicProperties, bytes]]:
        got: list[tuple[int, BasicProperties, bytes]] = []
        while True:

            def get_one(future: Future[Any]) -> None:
                link.channel_io.basic_get(
                    name,
                    callback=lambda _ch, method, props, body: future.set_result(
                        (method.delivery_tag, props, body)
                    ),
                    auto_ack=False,
                )
                # basic_get_empty has no callback of its own in pika: ask for the length too.
                link.channel_io.queue_declare(
                    name,
                    passive=True,
                    callback=lambda frame: None if future.done() else future.set_result(None),
                )

            item = link.call(get_one)
            if item is None:
                return got
            got.append(item)

    def delete_queues(self, max_attempts: int = 10) -> None:
        """Delete this queue and its companions (tests, clean-ups).

        On a connection of its own: deleting a queue cancels its consumers, and the work
        link would take that for a lost queue.
        """
        names = [self.queue_name, self.dlq_name]
        names += [f"{self.queue_name}.wait.{n}" for n in range(max_attempts + 1)]
        if self.reply_queue:
            names.append(self.reply_queue)
        link = self._side_link()
        try:
            for name in names:
                link.call(
                    lambda f, name=name: link.channel_io.queue_delete(
                        name, callback=lambda _frame: f.set_result(None)
                    )
                )
        finally:
            link.close()

    def close(self) -> None:
        """Close the connection; a producer's reply queue is deleted first (its results
        were taken), rather than left to expire."""
        link = self._link
        if self.reply_queue and link.alive:
            reply_queue = self.reply_queue

            def cancel_then_delete(future: Future[Any]) -> None:
                link.channel_io.basic_cancel(
                    reply_queue,
                    callback=lambda _frame: link.channel_io.queue_delete(
                        reply_queue, callback=lambda _frame: future.set_result(None)
                    ),
                )

            with contextlib.suppress(BrokerError):
                link.call(cancel_then_delete, timeout=5)
        link.close()


def _letter_from(props: BasicProperties, body: bytes, queue_name: str) -> DeadLetter:
    headers = props.headers or {}

    def text(key: str, default: str = "") -> str:
        value = headers.get(key, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    stamp = text("x-dead-lettered-at")
    return DeadLetter(
        reason=text("x-reason", "unknown"),
        error=text("x-error"),
        queue=text("x-queue", queue_name),
        attempts=int(headers.get("x-attempts", 0) or 0),
        task_id=text("x-task-id") or None,
        dead_lettered_at=datetime.fromisoformat(stamp) if stamp else utcnow(),
        body=body,
    )
