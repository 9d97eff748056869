"""One AMQP connection and its one confirm-mode channel, served by a private I/O thread.

The only code that touches a pika connection or channel. A `Link` is an asynchronous
`SelectConnection` whose ioloop runs in a thread of its own, so heartbeats keep flowing while a
handler runs for minutes, and publisher confirms are pipelined, not one round trip each.

Threading rules (pika's own: a connection belongs to the thread that runs its ioloop, and
``add_callback_threadsafe`` is its one thread-safe method):

- **Any thread** may call `open`, `close`, `alive` and `close_error`, and the blocking
  operations (`declare`, `declare_once`, `consume`, `queue_length`, `get`, `delete`,
  `cancel`, `publish_many`): each hands its work to the I/O thread and waits on a future,
  raising `ConnectionLost` (or the broker's reason) if the link dies first.
- **Any thread** may queue deliveries' outcomes in the outbox (`ack`, `nack`,
  `ack_with_result`): they go out with one wake-up of the I/O thread per batch, acks
  coalesced into ``multiple=True`` acks where every earlier delivery is settled, and a task's
  ack only after its result is confirmed (see `outbox`); `settle_pending` waits for all that.
- `inbox` is a thread-safe queue: the I/O thread puts what consumers receive, a caller takes.
- **The I/O thread only** runs the methods ending in ``_io`` and pika's callbacks.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pika
import pika.exceptions
from pika.spec import Basic, BasicProperties

from common.errors import BrokerError, BrokerUnreachable, ConnectionLost
from common.rabbitmq.confirms import Batch, ConfirmTracker, publish_in_chunks
from common.rabbitmq.errors import translate
from common.rabbitmq.outbox import AckOp, NackOp, Outbox, OutboxOp, ResultOp
from common.rabbitmq.topology import Message

log = logging.getLogger("taskshuttle.rabbitmq")


#: A message a consumer or a `get` received, not yet acked: delivery tag, redelivered,
#: properties, body. A plain tuple: one is built per message, in the I/O thread.
Received = tuple[int, bool, BasicProperties, bytes]


class Link:
    """One AMQP connection and its one confirm-mode channel; see the module's threading rules."""

    def __init__(self, params: pika.URLParameters, safe_url: str, name: str) -> None:
        self.safe_url = safe_url
        self.inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
        #: Why the link died (None while it lives, or after a close we asked for).
        self.close_error: BrokerError | None = None
        self._params = params
        self._opened: Future[None] = Future()
        self._dead = threading.Event()
        self._closing = False
        self._conn: pika.SelectConnection | None = None
        self._channel: Any = None
        self._waiting: set[Future[Any]] = set()
        self._confirms = ConfirmTracker()
        self._outbox = Outbox()
        self._declared: set[str] = set()
        self._thread = threading.Thread(target=self._run_io, name=f"amqp-{name}", daemon=True)

    # -- any thread: life cycle ----------------------------------------------------------
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

    def close(self) -> None:
        if self._conn is None or self._dead.is_set():
            self._dead.set()
            return
        self._closing = True
        try:
            self._post(self._close_io)
        except BrokerError:
            return
        self._thread.join(10)

    # -- any thread: operations that wait for the broker's answer -------------------------
    def declare(self, name: str, arguments: dict[str, Any] | None = None) -> int:
        """Declare a durable queue; how many messages it holds."""
        count = int(self._call(functools.partial(self._declare_io, name, arguments, False)))
        self._declared.add(name)
        return count

    def declare_once(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        """Declare a queue unless this link declared it already."""
        if name not in self._declared:
            self.declare(name, arguments)

    def consume(self, name: str, *, prefetch: int | None = None, tag: str | None = None) -> None:
        """Deliver `name`'s messages to `inbox` (at most `prefetch` unacked, if given)."""
        self._call(functools.partial(self._consume_io, name, prefetch, tag))

    def queue_length(self, name: str) -> int:
        return int(self._call(functools.partial(self._declare_io, name, None, True)))

    def count(self, queues: Sequence[tuple[str, dict[str, Any] | None]]) -> int:
        """Declare each (durable) queue, with its arguments, in one hand-over to the I/O
        thread; how many messages they hold in all."""
        total = int(self._call(functools.partial(self._count_io, list(queues))))
        self._declared.update(name for name, _ in queues)
        return total

    def get(self, name: str) -> Received | None:
        """One message from `name`, unacked (closing the link gives it back); None if empty."""
        return self._call(functools.partial(self._get_io, name))  # type: ignore[no-any-return]

    def delete(self, name: str) -> None:
        self._call(functools.partial(self._delete_io, name))

    def cancel(self, tag: str, *, then_delete: str | None = None, timeout: float = 30.0) -> None:
        """Stop the consumer `tag`; then, if asked, delete a queue."""
        self._call(functools.partial(self._cancel_io, tag, then_delete), timeout)

    def publish_many(self, messages: Sequence[Message], timeout: float) -> list[Message]:
        """Publish every message with ``mandatory``; wait for the broker's confirms.

        Returns the messages left unconfirmed because the connection dropped (empty when
        all went through); raises `PublishFailed` for a nacked or returned message.
        """
        return publish_in_chunks(messages, self._send_batch, timeout, self.safe_url)

    def _send_batch(self, batch: Batch) -> None:
        self._post(functools.partial(self._publish_batch_io, batch))

    # -- any thread: the outbox -----------------------------------------------------------
    def ack(self, tag: int) -> None:
        self._enqueue(AckOp(tag))

    def nack(self, tag: int) -> None:
        """Give a delivery back to its queue, to be handed out again."""
        self._enqueue(NackOp(tag))

    def ack_with_result(self, tag: int, message: Message) -> None:
        """Publish `message` (a result); ack `tag` once the broker confirms it, or give the
        delivery back if the broker refuses it. Nobody waits."""
        self._enqueue(ResultOp(message, tag))

    def settle_pending(self, timeout: float) -> bool:
        """Wait until the outbox is sent and every result's confirm (and so its task's ack) is
        in; False if `timeout` passed first or the link died (its deliveries go back)."""
        deadline = time.monotonic() + timeout
        try:  # runs after the flushes posted before it
            self._call(lambda future: future.set_result(None), timeout)
        except BrokerError:
            return False
        while not self._outbox.results_settled.wait(0.05):
            if not self.alive or time.monotonic() > deadline:
                return False
        return self.alive

    def _enqueue(self, op: OutboxOp) -> None:
        if self._outbox.put(op):
            self._post(self._flush_io)

    # -- any thread: the two ways into the I/O thread -------------------------------------
    def _post(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the I/O thread, soon; raises `ConnectionLost` if the link is dead."""
        if self._dead.is_set() or self._conn is None:
            raise self.close_error or ConnectionLost(f"connection to {self.safe_url} is closed")
        try:
            self._conn.ioloop.add_callback_threadsafe(fn)
        except Exception as exc:  # the ioloop closed under us
            raise self.close_error or ConnectionLost(str(exc)) from None

    def _call(self, start: Callable[[Future[Any]], None], timeout: float = 30.0) -> Any:
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

        self._post(run)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise BrokerError(
                f"broker at {self.safe_url} did not answer within {timeout:g}s"
            ) from None

    # -- I/O thread: the connection's life ------------------------------------------------
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
        self._confirms.connection_lost(error)

    # -- I/O thread: the channel ----------------------------------------------------------
    def _declare_io(
        self, name: str, arguments: dict[str, Any] | None, passive: bool, future: Future[Any]
    ) -> None:
        self._channel.queue_declare(
            name,
            passive=passive,
            durable=not passive,
            arguments=arguments,
            callback=lambda frame: future.set_result(frame.method.message_count),
        )

    def _consume_io(
        self, name: str, prefetch: int | None, tag: str | None, future: Future[Any]
    ) -> None:
        channel = self._channel

        def consume(_frame: Any = None) -> None:
            channel.basic_consume(
                name,
                self._on_message_io,
                consumer_tag=tag,
                callback=lambda _frame: future.set_result(None),
            )

        if prefetch is None:
            consume()
        else:
            channel.basic_qos(prefetch_count=prefetch, callback=consume)

    def _get_io(self, name: str, future: Future[Any]) -> None:
        def got(channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
            self._outbox.delivered_io(channel, method.delivery_tag)
            future.set_result((method.delivery_tag, method.redelivered, props, body))

        self._channel.basic_get(name, callback=got, auto_ack=False)
        # basic_get_empty has no callback of its own in pika: ask for the length too.
        self._channel.queue_declare(
            name,
            passive=True,
            callback=lambda _frame: None if future.done() else future.set_result(None),
        )

    def _count_io(
        self, queues: list[tuple[str, dict[str, Any] | None]], future: Future[Any]
    ) -> None:
        counts: list[int] = []

        def counted(frame: Any) -> None:
            counts.append(frame.method.message_count)
            if len(counts) == len(queues):
                future.set_result(sum(counts))

        if not queues:
            future.set_result(0)
        for name, arguments in queues:
            self._channel.queue_declare(name, durable=True, arguments=arguments, callback=counted)

    def _delete_io(self, name: str, future: Future[Any]) -> None:
        self._channel.queue_delete(name, callback=lambda _frame: future.set_result(None))

    def _cancel_io(self, tag: str, then_delete: str | None, future: Future[Any]) -> None:
        def cancelled(_frame: Any) -> None:
            if then_delete is None:
                future.set_result(None)
            else:
                self._delete_io(then_delete, future)

        self._channel.basic_cancel(tag, callback=cancelled)

    def _publish_io(
        self, message: Message, batch: Batch | None, index: int = 0, *, mandatory: bool = False
    ) -> None:
        routing_key, body, props = message
        self._channel.basic_publish("", routing_key, body, props, mandatory)
        self._confirms.published(batch, index, props.message_id)

    def _publish_batch_io(self, batch: Batch) -> None:
        for index, message in enumerate(batch.messages):
            self._publish_io(message, batch, index, mandatory=True)

    def _flush_io(self) -> None:
        self._outbox.send_io(self._channel, self._publish_io)

    def _on_message_io(
        self, channel: Any, method: Any, props: BasicProperties, body: bytes
    ) -> None:
        self._outbox.delivered_io(channel, method.delivery_tag)
        self.inbox.put((method.delivery_tag, method.redelivered, props, body))

    def _on_return_io(self, channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        self._confirms.returned(props.message_id)

    def _on_confirm_io(self, frame: Any) -> None:
        method = frame.method
        self._confirms.answered(
            method.delivery_tag, multiple=method.multiple, acked=isinstance(method, Basic.Ack)
        )
