"""One AMQP connection and its one confirm-mode channel, served by a private I/O thread.

The only code that touches a pika connection or channel, with its base class
`connection.Connection`, which owns the connection's life (opening it, the I/O thread, dying
cleanly). A `Link` is an asynchronous `SelectConnection` whose ioloop runs in a thread of its
own, so heartbeats keep flowing while a handler runs for minutes, and publisher confirms are
pipelined, not one round trip each.

Threading rules (pika's own: a connection belongs to the thread that runs its ioloop, and
``add_callback_threadsafe`` is its one thread-safe method):

- **Any thread** may call `open`, `close`, `alive` and `close_error`, and the blocking
  operations (`declare`, `declare_once`, `declare_routes`, `consume`, `queue_length`,
  `inspect_queues`, `get`, `purge`, `delete`, `cancel`, `publish_many`): each hands its
  work to the I/O thread and waits on a future, raising `ConnectionLost` (or the broker's
  reason) if the link dies first.
- **Any thread** may queue deliveries' outcomes in the outbox (`ack`, `ack_all`, `nack`,
  `ack_with_result`): they go out with one wake-up of the I/O thread per batch, acks
  coalesced into ``multiple=True`` acks where every earlier delivery is settled, and a task's
  ack only after its result is confirmed (see `outbox`); `settle_pending` waits for all that.
- `inbox` is a thread-safe queue: the I/O thread puts what consumers receive, a caller takes.
- **The I/O thread only** runs the methods ending in ``_io`` and pika's callbacks.

Whatever way the link dies, every caller waiting on it learns at once (see `connection`).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import pika
import pika.exceptions
from pika.spec import Basic, BasicProperties

from common.errors import BrokerError, QueueMismatch
from common.events import EVENTS_EXCHANGE
from common.rabbitmq.confirms import Batch, ConfirmTracker, Meanwhile, publish_in_chunks
from common.rabbitmq.connection import Connection
from common.rabbitmq.errors import refused_declare, translate
from common.rabbitmq.outbox import AckOp, NackOp, Outbox, OutboxOp, ResultOp
from common.rabbitmq.topology import Binding, Exchange, Message

log = logging.getLogger("taskshuttle.rabbitmq")

#: Task events: transient (never written to disk), JSON.
_EVENT_PROPERTIES = BasicProperties(delivery_mode=1, content_type="application/json")


class Declared(NamedTuple):
    """A declared queue: how many messages it holds, and, when it existed with other
    arguments than those asked for and is used as it is, the broker's words about that."""

    messages: int
    mismatch: str | None


def _other_arguments(reason: BaseException) -> bool:
    """Whether a declare was refused only because the queue exists with other arguments."""
    return (
        isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        and reason.reply_code == 406
        and "inequivalent arg" in reason.reply_text
    )


#: A message a consumer or a `get` received, not yet acked: delivery tag, redelivered,
#: properties, body. A plain tuple: one is built per message, in the I/O thread.
Received = tuple[int, bool, BasicProperties, bytes]


class Link(Connection):
    """One AMQP connection and its one confirm-mode channel; see the module's threading rules."""

    def __init__(self, params: pika.URLParameters, safe_url: str, name: str) -> None:
        super().__init__(params, safe_url, name)
        #: What consumers received. A caller may put its own here before `open`, to outlive
        #: the link: what `consume(settle_on_arrival=True)` puts there is acked already.
        self.inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
        #: Set by the I/O thread each time `consume(settle_on_arrival=True)` adds to
        #: `inbox`: a caller may put its own here too before `open`.
        self.arrivals = threading.Event()
        self._confirms = ConfirmTracker()
        self._outbox = Outbox()
        self._declared: set[str] = set()
        #: Set by the I/O thread when the broker returns a task event as unroutable: nobody
        #: listens (see `common.events`; whoever sends a probe clears it first).
        self.events_returned = threading.Event()

    # -- any thread: operations that wait for the broker's answer -------------------------
    def declare(self, name: str, arguments: dict[str, Any] | None = None) -> Declared:
        """Declare a durable queue with `arguments`; if it exists with other ones, take it as
        it is (`Declared.mismatch` then holds the broker's words). Tried on a channel of its
        own, since a refused declare closes its channel: the link's channel never sees one.
        Any other refusal is `errors.refused_declare`'s: final (an exclusive queue of another
        connection), or waited for (a queue whose node is down)."""
        declared: Declared = self._call(functools.partial(self._declare_io, name, arguments))
        self._declared.add(name)
        return declared

    def declare_once(self, name: str, arguments: dict[str, Any] | None = None) -> Declared | None:
        """Declare a queue unless this link declared it already (then None)."""
        return None if name in self._declared else self.declare(name, arguments)

    def declare_routes(self, exchanges: Sequence[Exchange], bindings: Sequence[Binding]) -> None:
        """Declare durable exchanges, then bindings (their queues must exist), sent one after
        the other on a channel of their own and waited for once. An exchange that exists as
        another kind or with other arguments is `QueueMismatch` (the broker closes that
        channel; the link's own never sees it)."""
        self._call(functools.partial(self._routes_io, list(exchanges), list(bindings)))

    def consume(
        self,
        name: str,
        *,
        prefetch: int | None = None,
        tag: str | None = None,
        settle_on_arrival: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Deliver `name`'s messages to `inbox` (at most `prefetch` unacked, if given), with
        the consumer's `arguments` if given (a stream's ``x-stream-offset``: where to start).

        With `settle_on_arrival`, the I/O thread acks each message once it is in `inbox`,
        without waiting for a caller to take it: for a reply queue, whose messages are in
        this process's hands from then on (a caller's inbox outlives the link). Its sender
        waits for that ack before it acks the task the result is for; a caller busy waiting
        for a publish's confirm would otherwise hold the whole chain up.
        """
        on_message = self._on_settled_message_io if settle_on_arrival else self._on_message_io
        start = functools.partial(self._consume_io, name, prefetch, tag, on_message, arguments)
        self._call(start)

    def declare_exchange(self, name: str) -> None:
        """Declare the transient topic exchange `name` (task events)."""
        self._call(functools.partial(self._exchange_io, name))

    def listen(self, exchange: str, keys: Sequence[str], backlog: int) -> str:
        """Bind a new exclusive queue (at most `backlog` messages, the oldest dropped first)
        to `exchange` with each routing key, and deliver what it gets to `inbox`, acked by
        the broker as it sends it: a listener's messages are a view, never work. Returns
        the queue's (server-made) name; it goes with the connection."""
        return str(self._call(functools.partial(self._listen_io, exchange, list(keys), backlog)))

    def queue_length(self, name: str) -> int:
        """How many messages the queue `name` holds (it must exist)."""
        return int(self._call(functools.partial(self._count_io, [name])))

    def count(self, names: Sequence[str]) -> int:
        """How many messages the queues hold in all (they must exist), asked in one
        hand-over to the I/O thread."""
        return int(self._call(functools.partial(self._count_io, list(names))))

    def inspect_queues(self, names: Sequence[str]) -> list[tuple[int, int] | None]:
        """Each queue's ready messages and consumers, by passive declares (nothing is
        created), or None for a queue that does not exist. Each is asked on a channel of its
        own, since the broker closes the channel of a passive declare that finds no queue:
        the link's channel never sees one. Any other refusal is raised, as this project's."""
        return self._call(functools.partial(self._inspect_io, list(names)))  # type: ignore[no-any-return]

    def get(self, name: str) -> Received | None:
        """One message from `name`, unacked (closing the link gives it back); None if empty."""
        return self._call(functools.partial(self._get_io, name))  # type: ignore[no-any-return]

    def purge(self, name: str) -> int:
        """Remove the messages ready in `name` (it must exist); how many. Those delivered and
        not acked yet are not ready: they stay with whoever holds them."""
        return int(self._call(functools.partial(self._purge_io, name)))

    def delete(self, name: str) -> None:
        self._call(functools.partial(self._delete_io, name))

    def cancel(self, tag: str, *, then_delete: str | None = None, timeout: float = 30.0) -> None:
        """Stop the consumer `tag`; then, if asked, delete a queue."""
        self._call(functools.partial(self._cancel_io, tag, then_delete), timeout)

    def publish_many(
        self, messages: Sequence[Message], timeout: float, meanwhile: Meanwhile | None = None
    ) -> list[Message]:
        """Publish every message with ``mandatory``; wait for the broker's confirms (running
        `meanwhile` while waiting, if given).

        Returns the messages left unconfirmed because the connection dropped (empty when
        all went through); raises `PublishFailed` for a nacked or returned message.
        """
        return publish_in_chunks(messages, self._send_batch, timeout, self.safe_url, meanwhile)

    def publish_events(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish task events (routing key, body) to `EVENTS_EXCHANGE`, ``mandatory``, and
        wait for nothing: a return sets `events_returned`; a lost link drops them."""
        self._post(functools.partial(self._publish_events_io, list(messages)))

    def _send_batch(self, batch: Batch) -> None:
        self._wait_on(batch.future)
        try:
            self._post(functools.partial(self._publish_batch_io, batch))
        except BrokerError:
            self._forget(batch.future)
            raise

    # -- any thread: the outbox -----------------------------------------------------------
    def ack(self, tag: int) -> None:
        self._enqueue(AckOp(tag))

    def ack_all(self, tags: Sequence[int]) -> None:
        """Ack several deliveries at once: queued in the I/O thread, so no flush splits them,
        and sent before this returns; as one ``multiple=True`` ack where they follow every
        earlier delivery, settled. A quorum queue takes each ack frame of a consumer's
        deliveries as a command of its own; past 32 unapplied it holds the next back, and
        drops them if the channel closes first: acks sent one by one just before closing can
        be lost, and their deliveries come back."""
        self._call(functools.partial(self._ack_all_io, list(tags)))

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

    # -- I/O thread: the channel ----------------------------------------------------------
    def _prepare_channel_io(self, channel: Any, ready: Callable[[], None]) -> None:
        channel.add_on_return_callback(self._guard(self._on_return_io))
        channel.confirm_delivery(
            ack_nack_callback=self._guard(self._on_confirm_io), callback=lambda _frame: ready()
        )

    def _lost_io(self, error: BrokerError) -> None:
        self._confirms.connection_lost(error)

    def _declare_io(self, name: str, arguments: dict[str, Any] | None, future: Future[Any]) -> None:
        assert self._conn is not None
        counted: list[int] = []
        probe: list[Any] = []

        def opened(channel: Any) -> None:
            probe.append(channel)
            channel.add_on_close_callback(self._guard(closed))
            channel.queue_declare(
                name, durable=True, arguments=arguments, callback=self._guard(declared)
            )

        def declared(frame: Any) -> None:
            counted.append(frame.method.message_count)
            probe[0].close()

        def closed(_channel: Any, reason: BaseException) -> None:
            if future.done():
                return
            if counted:
                future.set_result(Declared(counted[0], None))
            elif _other_arguments(reason):
                text = reason.reply_text.removeprefix("PRECONDITION_FAILED - ")  # type: ignore[attr-defined]
                self._channel.queue_declare(
                    name,
                    passive=True,
                    callback=lambda frame: future.set_result(
                        Declared(frame.method.message_count, text)
                    ),
                )
            elif isinstance(reason, pika.exceptions.ChannelClosedByBroker):
                future.set_exception(refused_declare(name, reason, self.safe_url))
            # else the connection is closing: its death fails the future

        self._conn.channel(on_open_callback=self._guard(opened))

    def _routes_io(
        self, exchanges: list[Exchange], bindings: list[Binding], future: Future[Any]
    ) -> None:
        assert self._conn is not None
        probe: list[Any] = []
        steps = len(exchanges) + len(bindings)
        answered: list[None] = []

        def opened(channel: Any) -> None:
            probe.append(channel)
            channel.add_on_close_callback(self._guard(closed))
            if not steps:
                channel.close()
            # pika sends each of these once the broker has answered the one before.
            for exchange in exchanges:
                channel.exchange_declare(
                    exchange.name,
                    exchange.kind,
                    durable=True,
                    arguments=exchange.arguments,
                    callback=self._guard(done),
                )
            for binding in bindings:
                bind = channel.exchange_bind if binding.to_exchange else channel.queue_bind
                bind(binding.destination, binding.source, binding.key, callback=self._guard(done))

        def done(_frame: Any) -> None:
            answered.append(None)
            if len(answered) == steps:
                probe[0].close()

        def closed(_channel: Any, reason: BaseException) -> None:
            if future.done():
                return
            if len(answered) == steps:
                future.set_result(None)
            elif isinstance(reason, pika.exceptions.ChannelClosedByBroker):
                future.set_exception(
                    QueueMismatch(
                        "cannot declare the delay levels' exchanges and bindings: "
                        f"{reason.reply_code} {reason.reply_text}"
                    )
                )
            # else the connection is closing: its death fails the future

        self._conn.channel(on_open_callback=self._guard(opened))

    def _consume_io(
        self,
        name: str,
        prefetch: int | None,
        tag: str | None,
        on_message: Callable[..., None],
        arguments: dict[str, Any] | None,
        future: Future[Any],
    ) -> None:
        channel = self._channel

        def consume(_frame: Any = None) -> None:
            channel.basic_consume(
                name,
                self._guard(on_message),
                consumer_tag=tag,
                arguments=arguments,
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

    def _count_io(self, names: list[str], future: Future[Any]) -> None:
        counts: list[int] = []

        def counted(frame: Any) -> None:
            counts.append(frame.method.message_count)
            if len(counts) == len(names):
                future.set_result(sum(counts))

        if not names:
            future.set_result(0)
        for name in names:
            self._channel.queue_declare(name, passive=True, callback=counted)

    def _inspect_io(self, names: list[str], future: Future[Any]) -> None:
        """Passive declares one after the other, each on a new channel, closed after it."""
        assert self._conn is not None
        conn = self._conn
        found: list[tuple[int, int] | None] = []

        def ask() -> None:
            if len(found) == len(names):
                future.set_result(found)
                return
            name = names[len(found)]
            answer: list[tuple[int, int]] = []
            probe: list[Any] = []

            def opened(channel: Any) -> None:
                probe.append(channel)
                channel.add_on_close_callback(self._guard(closed))
                channel.queue_declare(name, passive=True, callback=self._guard(declared))

            def declared(frame: Any) -> None:
                answer.append((frame.method.message_count, frame.method.consumer_count))
                probe[0].close()

            def closed(_channel: Any, reason: BaseException) -> None:
                if future.done():
                    return
                refused = isinstance(reason, pika.exceptions.ChannelClosedByBroker)
                if answer or (refused and reason.reply_code == 404):  # type: ignore[attr-defined]
                    found.append(answer[0] if answer else None)
                    ask()
                elif refused:
                    future.set_exception(translate(reason, self.safe_url))
                # else the connection is closing: its death fails the future

            conn.channel(on_open_callback=self._guard(opened))

        ask()

    def _purge_io(self, name: str, future: Future[Any]) -> None:
        self._channel.queue_purge(
            name, callback=lambda frame: future.set_result(frame.method.message_count)
        )

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
        routing_key, body, props, exchange = message
        self._channel.basic_publish(exchange, routing_key, body, props, mandatory)
        self._confirms.published(batch, index, props.message_id)

    def _publish_events_io(self, messages: list[tuple[str, bytes]]) -> None:
        for key, body in messages:
            self._channel.basic_publish(EVENTS_EXCHANGE, key, body, _EVENT_PROPERTIES, True)
            self._confirms.published(None, 0, None)  # the channel confirms it: count its tag

    def _exchange_io(self, name: str, future: Future[Any]) -> None:
        self._channel.exchange_declare(
            name, "topic", durable=False, callback=lambda _frame: future.set_result(None)
        )

    def _listen_io(self, exchange: str, keys: list[str], backlog: int, future: Future[Any]) -> None:
        channel = self._channel

        def on_message(_channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
            self.inbox.put((method.delivery_tag, method.redelivered, props, body))

        def bind(name: str, remaining: list[str]) -> None:
            if remaining:
                key, *rest = remaining
                channel.queue_bind(name, exchange, key, callback=lambda _f: bind(name, rest))
                return
            channel.basic_consume(
                name,
                self._guard(on_message),
                auto_ack=True,
                callback=lambda _frame: future.set_result(name),
            )

        def declare_queue(_frame: Any) -> None:
            channel.queue_declare(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": backlog},
                callback=lambda frame: bind(frame.method.queue, keys),
            )

        channel.exchange_declare(exchange, "topic", durable=False, callback=declare_queue)

    def _publish_batch_io(self, batch: Batch) -> None:
        for index, message in enumerate(batch.messages):
            self._publish_io(message, batch, index, mandatory=True)

    def _ack_all_io(self, tags: list[int], future: Future[Any]) -> None:
        for tag in tags:
            self._outbox.put(AckOp(tag))
        self._flush_io()  # sends them with whatever else was queued
        future.set_result(None)

    def _flush_io(self) -> None:
        self._outbox.send_io(self._channel, self._publish_io)

    def _on_message_io(
        self, channel: Any, method: Any, props: BasicProperties, body: bytes
    ) -> None:
        self._outbox.delivered_io(channel, method.delivery_tag)
        self.inbox.put((method.delivery_tag, method.redelivered, props, body))

    def _on_settled_message_io(
        self, channel: Any, method: Any, props: BasicProperties, body: bytes
    ) -> None:
        self.inbox.put((method.delivery_tag, method.redelivered, props, body))
        self.arrivals.set()
        if self._outbox.settle_on_arrival_io(channel, method.delivery_tag):
            # Run once pika has handed over every message of this read: one ack for all.
            self._conn.ioloop.call_later(0, self._guard(self._outbox.flush_arrivals_io))

    def _on_return_io(self, channel: Any, method: Any, props: BasicProperties, body: bytes) -> None:
        if method.exchange == EVENTS_EXCHANGE:
            self.events_returned.set()
            return
        self._confirms.returned(props.message_id)

    def _on_confirm_io(self, frame: Any) -> None:
        method = frame.method
        self._confirms.answered(
            method.delivery_tag, multiple=method.multiple, acked=isinstance(method, Basic.Ack)
        )
