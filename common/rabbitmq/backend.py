"""`RabbitBackend`: the backend contract on RabbitMQ, over a `Link` it re-opens when lost.

Runs in the caller's thread and never touches a channel: every broker operation is a named
method of `Link`, which hands it to the link's I/O thread. What is said on the wire (names,
properties, headers) comes from `topology`.

A backend plays one of two roles on its connection, chosen when it is built:

- **consumer** (default): it consumes the work queue (`start_consuming`, `receive`, and the
  settling methods), and may publish tasks without asking for results;
- **results** (``want_results=True``): its tasks carry a reply queue of its own, which it
  consumes instead, for `receive_result`. Such a backend cannot consume the work queue:
  `start_consuming` and `receive` raise rather than hand out its results as tasks.

Both can publish (at once, or delayed: through the delay levels every queue of the broker of
the same type shares, see `topology`), count, list, replay and purge dead letters, purge the
work queue, and delete the work queue and its DLQ.

Settling a delivery follows one rule: it is done on the link the delivery came on, and if
that link is gone, the delivery is left alone and nothing raises: the broker hands it out
again, so acking it, or storing its retry copy or dead letter, would make a second copy.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika

import common.rabbitmq.dlq as dlq  # the module, not the package: its __init__ imports this one
import common.rabbitmq.revocations as revocations
import common.rabbitmq.topology as topology
from common.backend import Backend, Delivery, check_delay, check_revocation, held_for
from common.clock import SYSTEM_CLOCK, Clock
from common.defaults import QueueType
from common.errors import BrokerError, ConfigError, ConnectionLost, QueueMismatch
from common.events import (
    EVENTS_EXCHANGE,
    WORKER_KINDS,
    EventSink,
    TaskEvent,
    encode_event,
    routing_key,
)
from common.rabbitmq.confirms import Meanwhile
from common.rabbitmq.delivery import Handle, ReplyCheck, take, unless_gone
from common.rabbitmq.link import Link, Received
from common.rabbitmq.reconnect import RETRYABLE, Reconnect, StopFlag
from common.rabbitmq.topology import Message, QueueNames
from common.schemas import DeadLetter, TaskEnvelope, TaskResult, decode_result, utcnow
from common.settings import redact_url, split_urls

log = logging.getLogger("taskshuttle.rabbitmq")

#: Put in the results inbox by `interrupt`: no result, a wake-up.
_INTERRUPT: Received = (-1, False, pika.BasicProperties(), b"")

#: How long `close` waits for results' confirms, so their tasks' acks go out first.
CLOSE_SETTLE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Node:
    """One broker address: a cluster has several, and a backend is on one at a time."""

    params: pika.URLParameters
    safe_url: str


def _node(url: str, attempt_timeout: float) -> Node:
    safe_url = redact_url(url)
    try:
        params = pika.URLParameters(url)
    except Exception as exc:  # pika says ValueError, or worse, for a bad query value
        raise ConfigError(f"malformed AMQP URL {safe_url!r}: {exc}") from None
    params.connection_attempts = 1  # the retries are ours (`Reconnect`), over every node
    params.socket_timeout = attempt_timeout
    return Node(params, safe_url)


def first_answering_link(url: str, name: str, attempt_timeout: float = 10.0) -> Link:
    """An open link to the first node of `url` (one or several, comma-separated) that
    answers; raises the last node's error if none does."""
    error: BaseException | None = None
    for one in split_urls(url):
        node = _node(one, attempt_timeout)
        link = Link(node.params, node.safe_url, name)
        try:
            link.open(attempt_timeout)
        except RETRYABLE as exc:
            error = exc
            continue
        return link
    raise error or ConfigError("no AMQP URL given")


class RabbitEventSink:
    """Task events to `EVENTS_EXCHANGE`, on the worker's own connection (see `common.events`).

    Every worker event (online, heartbeat, offline) is a probe: it clears the link's
    `events_returned` flag as it goes, and the broker sets it again within milliseconds if
    no queue was bound to take it. Task events are wanted while the flag is clear.
    """

    def __init__(self, backend: RabbitBackend) -> None:
        self._backend = backend

    @property
    def wanted(self) -> bool:
        return not self._backend._link.events_returned.is_set()

    def send(self, events: Sequence[TaskEvent]) -> None:
        link = self._backend._link  # read once: the worker's thread may replace it
        if not link.alive:
            return
        if events[0].kind in WORKER_KINDS:
            link.events_returned.clear()
        with contextlib.suppress(BrokerError):
            link.publish_events([(routing_key(e.queue, e.kind), encode_event(e)) for e in events])


class RabbitBackend(Backend):
    """A task queue on RabbitMQ. Connects (and declares its queues) when built.

    `wait_for_broker`: seconds to wait for a broker that is down, when built and after each
    loss, trying again with capped, jittered backoff (see `Reconnect`); None: as long as it
    takes; 0 (the default): not at all. A wrong password, a refused virtual host or a queue
    that cannot be used (see `Link.declare`) is never retried. `attempt_timeout`: how long
    one attempt may take. `stop`: a flag that ends the waiting early (raising the last error).
    `clock`: what reconnect backoff reads and sleeps on.
    """

    name = "rabbitmq"

    def __init__(
        self,
        url: str,
        queue_name: str = "tasks",
        *,
        prefetch: int = 100,
        want_results: bool = False,
        wait_for_broker: float | None = 0.0,
        attempt_timeout: float = 10.0,
        max_reconnect_delay: float = 10.0,
        queue_type: QueueType = QueueType.quorum,
        queue_arguments: dict[str, Any] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stop: StopFlag | None = None,
    ) -> None:
        self.names = QueueNames(topology.check_queue_name(queue_name))
        self.queue_name = queue_name
        self.dlq_name = self.names.dlq
        self.queue_type = queue_type
        #: Arguments the work queue is declared with: its type's, and the caller's
        #: (`queue_arguments`, e.g. ``x-single-active-consumer``).
        self.queue_arguments = topology.work_queue_arguments(
            self.names, queue_type, queue_arguments
        )
        #: Where this queue's delayed tasks wait: the levels of its type, shared.
        self.levels = topology.DelayLevels(queue_type)
        #: The link the levels were last declared on (once per link, before it delays).
        self._levels_link: Link | None = None
        #: Queues found with other arguments than asked for, used as they are: the broker's
        #: words for each (each said once, not on every reconnect).
        self.used_as_is: dict[str, str] = {}
        self.prefetch = prefetch
        self.want_results = want_results
        self.reconnects = 0
        #: Messages published again after a dropped connection (each may be a duplicate).
        self.republished = 0
        self.safe_url = redact_url(url)
        self._nodes = [_node(one, attempt_timeout) for one in split_urls(url)]
        if not self._nodes:
            raise ConfigError("no AMQP URL given")
        #: The node the next connection tries first: a random one at start, so the
        #: consumers of one cluster spread over its nodes instead of all taking the first.
        self._next_node = random.randrange(len(self._nodes))
        self._node = self._nodes[self._next_node]
        self._attempt_timeout = attempt_timeout
        self._reconnect = Reconnect(wait_for_broker, max_reconnect_delay, clock, stop=stop)
        self._consuming = False
        #: Whether this backend's links declare the events exchange (see `event_sink`).
        self._events = False
        self._replies = ReplyCheck(self.names)
        self.reply_queue = self.names.new_replies() if want_results else None
        #: Results received and acked, not taken yet: kept across links, since they were
        #: acked on arrival (see `Link.consume`'s `settle_on_arrival`).
        self._results_inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
        #: Set as each result arrives (see `publish`'s `meanwhile`).
        self._result_arrived = threading.Event()
        self._link = self._first_link()

    @property
    def connected_to(self) -> str:
        """The node this backend is (or was last) connected to, password hidden."""
        return self._node.safe_url

    # -- connection ----------------------------------------------------------------------
    def _first_link(self) -> Link:
        """The first link, waited for as the policy allows if the broker is not there yet."""
        try:
            return self._connect()
        except RETRYABLE as error:
            self._reconnect.failed(error)  # raises if the policy does not wait
            link = self._reconnect.run(self._connect, error, wait=None)
        assert link is not None  # without `wait`, it raises rather than give up
        log.warning("connected to %s", self._node.safe_url)
        return link

    def _connect(self) -> Link:
        """A new link with this backend's queues declared and its consumer registered."""
        node = self._nodes[self._next_node]
        # The next attempt (after a failure or a loss) goes to the next node in the list.
        self._next_node = (self._next_node + 1) % len(self._nodes)
        link = Link(node.params, node.safe_url, self.queue_name)
        if self.want_results:
            link.inbox = self._results_inbox  # before it opens: the I/O thread fills it
            link.arrivals = self._result_arrived
        link.open(self._attempt_timeout)
        try:
            self._declare(link, self.queue_name, self.queue_arguments)
            self._declare(link, self.dlq_name, topology.dlq_arguments(self.queue_type))
            # Wherever the work queue is declared, its binding to the levels' deliver exchange
            # is too: a delayed task reaching level 0 with no binding would be dropped.
            link.declare_routes(
                [self.levels.deliver_exchange()], [self.levels.delivers_to(self.queue_name)]
            )
            if self.reply_queue:
                link.declare(self.reply_queue, topology.reply_queue_arguments())
                link.consume(self.reply_queue, tag=self.reply_queue, settle_on_arrival=True)
            if self._events:
                link.declare_exchange(EVENTS_EXCHANGE)
            if self._consuming:
                link.consume(self.queue_name, prefetch=self.prefetch)
        except BaseException:
            link.close()
            raise
        self._node = node
        return link

    def _declare(
        self, link: Link, name: str, arguments: dict[str, Any] | None, *, level: bool = False
    ) -> None:
        """Declare a queue (once per link); if it exists with other arguments (another
        type, a queue made by another client), use it as it is, saying so once, unless it
        cannot serve: a delay `level` that does not hold its messages its level's time, or
        does not pass them on to the level below."""
        declared = link.declare_once(name, arguments)
        if declared is None or declared.mismatch is None or name in self.used_as_is:
            return
        if level and not topology.serves_as_delay_level(declared.mismatch):
            raise QueueMismatch(
                f"delay level {name!r} exists but cannot serve as one ({declared.mismatch}); "
                "delete it once it is empty"
            )
        self.used_as_is[name] = declared.mismatch
        log.warning(
            "queue %r exists with other arguments; used as it is: %s", name, declared.mismatch
        )

    def _declare_levels(self, link: Link) -> None:
        """The delay levels of this queue's type, on `link` unless declared on it already:
        their queues, then their exchanges and bindings (all idempotent)."""
        if self._levels_link is link:
            return
        for n, name in enumerate(self.levels.queues()):
            self._declare(link, name, self.levels.queue_arguments(n), level=True)
        self._declare(link, self.levels.dropped, self.levels.dropped_arguments())
        link.declare_routes(self.levels.exchanges(), self.levels.bindings())
        self._levels_link = link

    def _live_link(self, wait: float | None = None) -> Link | None:
        """The current link, re-established if it was lost (see `Reconnect.run`)."""
        link = self._link
        if link.alive:
            return link
        error = link.close_error or ConnectionLost("connection closed")
        relinked = self._reconnect.run(self._connect, error, wait)
        if relinked is None:
            return None
        self._link = relinked
        self.reconnects += 1
        log.warning("reconnected to %s", self._node.safe_url)
        return relinked

    def _link_now(self) -> Link:
        link = self._live_link()
        assert link is not None  # without `wait`, it raises rather than give up
        return link

    @contextlib.contextmanager
    def _side_link(self) -> Iterator[Link]:
        """A short-lived second connection, so admin work never touches the work channel
        (closing it gives back whatever it got and did not ack, in order)."""
        link = Link(self._node.params, self._node.safe_url, f"{self.queue_name}-admin")
        link.open(self._attempt_timeout)
        try:
            yield link
        finally:
            link.close()

    # -- producer side -------------------------------------------------------------------
    def publish(
        self,
        tasks: Sequence[TaskEnvelope],
        timeout: float = 60.0,
        *,
        delay: float = 0.0,
        settles: Delivery | None = None,
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        """Publish and wait for every confirm; a task with a `delay` waits it out in the
        delay levels (`topology`: the delay rounded up to a quarter second), and comes back
        to the work queue from there.

        With `settles` (a worker), the tasks go out on that delivery's own link with its
        reply address, and the delivery is acked once they are confirmed: if the link is
        lost first, nothing is acked and the broker hands the delivery out again.

        With `meanwhile` (a backend with results), it runs each time results arrive during
        the wait for confirms: a producer takes them with `arrived_results` instead of
        leaving them until its publish returns."""
        delay = check_delay(delay)
        if settles is not None:
            self._publish_settling(tasks, delay, settles)
            return
        messages, delayed = self._messages(tasks, self.reply_queue, delay)
        doing = None
        if meanwhile is not None and self.want_results:
            doing = Meanwhile(meanwhile, self._result_arrived)
        self._publish_with_retry(messages, timeout, doing, delayed)

    def _messages(
        self, tasks: Sequence[TaskEnvelope], reply_to: str | None, delay: float
    ) -> tuple[list[Message], bool]:
        """The messages of `tasks`, and whether any goes through the delay levels (held for
        at least one unit: `delay`, or until its eta) rather than straight to the work
        queue. Each message carries its own delay in its routing key, so tasks due at
        different times still go out in one pipelined publish."""
        now = utcnow()
        messages, delayed = [], False
        for task in tasks:
            units = topology.delay_units(held_for(task, delay, now))
            if units:
                delayed = True
                messages.append(
                    topology.delayed_message(self.levels, self.queue_name, task, reply_to, units)
                )
            else:
                messages.append(topology.task_message(self.queue_name, task, reply_to))
        return messages, delayed

    def _publish_settling(
        self, tasks: Sequence[TaskEnvelope], delay: float, delivery: Delivery
    ) -> None:
        """The copies first, then the ack, both on the delivery's own link, so a copy is
        never stored while the original comes back."""
        handle = self._live_handle(delivery)
        if handle is None:
            return
        link = handle.link
        messages, delayed = self._messages(tasks, handle.reply_to, delay)
        with unless_gone(link):
            if delayed:
                self._declare_levels(link)
            if not link.publish_many(messages, timeout=30):
                self.ack(delivery)

    def publish_raw(self, bodies: Sequence[bytes], timeout: float = 60.0) -> None:
        messages = [topology.raw_message(self.queue_name, body) for body in bodies]
        self._publish_with_retry(messages, timeout)

    def _publish_with_retry(
        self,
        messages: Sequence[Message],
        timeout: float,
        meanwhile: Meanwhile | None = None,
        delayed: bool = False,
    ) -> None:
        """Publish; if the connection drops, reconnect and publish again what was unconfirmed
        (declaring the delay levels first on each link, when the messages are `delayed`).

        A message in flight when the connection dropped may already be stored: publishing it
        again can make a duplicate, which consumers see (same task id) and the ledger counts.
        """
        remaining = list(messages)
        while remaining:
            link = self._link_now()
            if delayed:
                with unless_gone(link):
                    self._declare_levels(link)
            remaining = link.publish_many(remaining, timeout, meanwhile)
            if remaining:
                error = link.close_error or ConnectionLost("connection lost while publishing")
                log.warning("connection lost with %d messages unconfirmed", len(remaining))
                if not self._reconnect.retries(error):
                    raise error
                self.republished += len(remaining)

    def receive_result(self, timeout: float) -> TaskResult | None:
        if not self.want_results:
            raise BrokerError("this backend was built without want_results=True")
        if self._results_inbox.empty():
            # Only a live link adds to the inbox; what a lost one put there is still here.
            self._live_link(wait=timeout)
        try:
            received = self._results_inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if received is _INTERRUPT:
            return None
        return decode_result(received[3])  # acked on arrival

    def interrupt(self) -> None:
        self._results_inbox.put(_INTERRUPT)
        self._result_arrived.set()

    def arrived_results(self) -> list[TaskResult]:
        """The results that have arrived, without waiting and without touching the
        connection (so it may run in the middle of a publish: see `publish`)."""
        taken = []
        while True:
            try:
                received = self._results_inbox.get_nowait()
            except queue.Empty:
                return taken
            if received is _INTERRUPT:
                self._results_inbox.put(_INTERRUPT)  # for the `receive_result` it was meant for
                return taken
            taken.append(decode_result(received[3]))

    # -- worker side ---------------------------------------------------------------------
    def start_consuming(self) -> None:
        """Register as the work queue's consumer now (workers do this before they say they
        are ready); otherwise the first `receive` does it."""
        self._refuse_if_results()
        if not self._consuming:
            self._listen_for_revocations()  # before the first task comes
            self._consuming = True
            self._link_now().consume(self.queue_name, prefetch=self.prefetch)

    def _refuse_if_results(self) -> None:
        if self.want_results:
            raise BrokerError(
                "this backend was built with want_results=True: it consumes its reply "
                "queue, not the work queue; build another for a worker"
            )

    def receive(self, timeout: float) -> Delivery | None:
        self._refuse_if_results()
        link = self._live_link(wait=timeout)
        if link is None:
            return None
        if not self._consuming:
            self.start_consuming()
        return take(link, timeout, self._replies)

    def event_sink(self) -> EventSink:
        """Where a worker on this backend sends its task events (the exchange is declared
        now, and again on each new connection: publishing to a missing one would close the
        channel)."""
        if not self._events:
            self._events = True
            self._link_now().declare_exchange(EVENTS_EXCHANGE)
        return RabbitEventSink(self)

    @property
    def refused_replies(self) -> int:
        """Tasks taken whose ``reply_to`` was not a reply queue of this queue (no result)."""
        return self._replies.refused

    def _live_handle(self, delivery: Delivery) -> Handle | None:
        """The delivery's handle; None when it came on a connection that is gone: the broker
        hands it out again, so settling it (or publishing its retry) would make a duplicate."""
        handle: Handle = delivery.handle
        if handle.link is not self._link or not handle.link.alive:
            return None
        return handle

    def ack(self, delivery: Delivery, result: TaskResult | None = None) -> None:
        """Ack; with a result, only once the broker has confirmed the result (at least once,
        like tasks). The caller does not wait for that confirm."""
        handle = self._live_handle(delivery)
        if handle is None:
            return
        try:  # not a context manager: this runs once per delivery
            if result is not None and handle.reply_to:
                message = topology.result_message(handle.reply_to, result)
                handle.link.ack_with_result(handle.tag, message)
            else:
                handle.link.ack(handle.tag)
        except BrokerError:
            if handle.link.alive:
                raise
            # else the delivery goes back to the queue by itself

    def requeue(self, delivery: Delivery) -> None:
        handle = self._live_handle(delivery)
        if handle is None:
            return
        with unless_gone(handle.link):
            handle.link.nack(handle.tag)

    def dead_letter(
        self, delivery: Delivery, letter: DeadLetter, result: TaskResult | None = None
    ) -> None:
        handle = self._live_handle(delivery)
        if handle is None:
            return
        with unless_gone(handle.link):
            dead = topology.dead_letter_message(self.dlq_name, letter)
            if self._publish_confirmed(handle.link, dead):
                self.ack(delivery, result)

    @staticmethod
    def _publish_confirmed(link: Link, message: Message) -> bool:
        """One message, confirmed (retries, dead letters); False if the connection dropped."""
        return not link.publish_many([message], timeout=30)

    # -- both ----------------------------------------------------------------------------
    def pending(self) -> int:
        """Tasks in the work queue, and tasks this worker received and did not take yet.
        Those are counted last: a task that arrives goes from the work queue straight to a
        consumer, and would be counted nowhere if it came in between. Delayed tasks are not
        counted: they wait in the delay levels, which every queue of the broker shares, so
        which queue's they are cannot be told (a burst worker waits for its own retries:
        `consumer.worker.Worker`)."""
        link = self._link_now()
        queued = link.queue_length(self.queue_name)
        return queued + (link.inbox.qsize() if self._consuming else 0)

    def dead_letter_count(self) -> int:
        """Dead letters in the DLQ (not counting those an `iter_dead_letters` holds)."""
        return self._link_now().queue_length(self.dlq_name)

    def depths(self) -> dict[str, int]:
        """Messages ready in the work queue, in the delay levels of its type (declared here
        if absent: asking for a missing queue's length would close the channel) and in its
        DLQ, keyed ``work``, ``waiting``, ``dead_letter``. ``waiting`` is every queue's
        delayed tasks of that type: the levels are shared."""
        link = self._link_now()
        self._declare_levels(link)
        return {
            "work": link.queue_length(self.queue_name),
            "waiting": link.count(self.levels.queues()),
            "dead_letter": link.queue_length(self.dlq_name),
        }

    def dead_letters(self) -> list[DeadLetter]:
        return list(self.iter_dead_letters())

    def iter_dead_letters(
        self, limit: int | None = None, reason: str | None = None
    ) -> Iterator[DeadLetter]:
        """The dead letters, oldest first, one at a time (at most `limit`; only those whose
        reason is `reason`, if given), on a connection of their own: see `dlq.read_letters`."""
        with self._side_link() as link:
            yield from dlq.read_letters(link, self.names, limit, reason)

    def replay_dead_letters(self, task_id: str | None = None, reason: str | None = None) -> int:
        """Move dead letters back to the work queue as fresh first attempts, on a connection
        of their own; how many moved. All of them without a filter (`dlq.replay_letters`);
        with `task_id` and/or `reason`, those that match, the others left in their order
        (`dlq.replay_matching`, which goes once through the whole DLQ)."""
        with self._side_link() as link:
            if task_id is None and reason is None:
                return dlq.replay_letters(link, self.names)
            return dlq.replay_matching(link, self.names, dlq.matching(task_id, reason))

    def purge_dead_letters(self) -> int:
        """Remove every dead letter the DLQ holds; how many. Letters a listing or a replay
        holds at that moment are not removed (they are not in the queue until given back)."""
        with self._side_link() as link:
            return link.purge(self.dlq_name)

    def queued_messages(self) -> dict[str, int]:
        """Messages ready in the work queue, by name: what `purge_queues` would remove now.
        Neither the DLQ nor delayed tasks are among them."""
        with self._side_link() as link:
            return {self.queue_name: link.queue_length(self.queue_name)}

    def purge_queues(self) -> dict[str, int]:
        """Empty the work queue, never the DLQ; how many messages it lost, by name. Only ready
        messages go: those in a worker's hands (delivered, not acked) stay with it, and come
        back if it does not ack them. Delayed tasks (retries waiting out their delay, tasks
        sent for later) stay too: they wait in the delay levels, which every queue of the
        broker shares, and come to the work queue when they are due."""
        with self._side_link() as link:
            return {self.queue_name: link.purge(self.queue_name)}

    def delete_queues(self) -> None:
        """Delete this queue, its DLQ and this backend's reply queue (tests, clean-ups), never
        the delay levels, which every queue shares (a delayed task of this queue that comes
        due later is dropped: `topology`). On a connection of its own: deleting a queue
        cancels its consumers, and the work link would take that for a lost queue."""
        names = self.names.with_companions()
        if self.reply_queue:
            names.append(self.reply_queue)
        with self._side_link() as link:
            for name in names:
                link.delete(name)

    def close(self) -> None:
        """Close the connection, once the acks still waiting for their results' confirms are
        out (for at most `CLOSE_SETTLE_TIMEOUT`); a producer's reply queue is deleted first
        (its results were taken), rather than left to expire. A worker's revocation
        listener goes too."""
        self._stop_listening_for_revocations()
        link = self._link
        if link.alive:
            link.settle_pending(CLOSE_SETTLE_TIMEOUT)
        if self.reply_queue and link.alive:
            with contextlib.suppress(BrokerError):
                link.cancel(self.reply_queue, then_delete=self.reply_queue, timeout=5)
        link.close()

    # -- revocations (`common.rabbitmq.revocations`) -----------------------------------------
    #: A consuming backend's reader of the revocation stream (None before `start_consuming`).
    _revocations: revocations.RevocationListener | None = None

    def revoke(self, task_ids: Sequence[str], *, keep_for: float, timeout: float = 60.0) -> None:
        """Publish one revocation per task id to the revocation stream, for this work
        queue's workers, and wait for the broker's confirms (on a lost connection, again on
        a new one, as a publish does). `until` is this host's clock plus `keep_for`; a worker
        compares it with its own clock.

        A running worker learns it within milliseconds after this returns, never before; a
        worker started later, before its first task. Bounds: each worker keeps at most
        `MAX_REVOKED` of its queue's, each until its time; the stream keeps them for a bit
        over ten years, and at most 50 MB of them (oldest dropped first; see
        `common.rabbitmq.revocations`)."""
        ids, keep_for = check_revocation(task_ids, keep_for)
        if not ids:
            return
        until = datetime.fromtimestamp(self._reconnect.clock.time() + keep_for, UTC)
        stream = revocations.REVOCATION_STREAM
        remaining = revocations.revocation_messages(stream, self.queue_name, ids, until)
        while remaining:
            link = self._link_now()
            with unless_gone(link):
                revocations.declare_stream(link, stream)
            remaining = link.publish_many(remaining, timeout)
            if remaining:
                error = link.close_error or ConnectionLost("connection lost while revoking")
                log.warning("connection lost with %d revocations unconfirmed", len(remaining))
                if not self._reconnect.retries(error):
                    raise error
                self.republished += len(remaining)

    def is_revoked(self, task_id: str) -> bool:
        """Whether this worker has read a revocation of `task_id` that is still kept: a
        lookup in memory (the listener's thread fills it). False for a backend that does not
        consume (it reads no revocations)."""
        listener = self._revocations
        return listener is not None and task_id in listener.revoked

    def _listen_for_revocations(self) -> None:
        """Start reading the revocation stream on a connection of its own, and wait until
        it is read to its end (see `RevocationListener.start`)."""
        if self._revocations is not None:
            return
        listener = revocations.RevocationListener(
            self.queue_name,
            self._revocation_nodes,
            clock=self._reconnect.clock,
            attempt_timeout=self._attempt_timeout,
            max_reconnect_delay=self._reconnect.max_delay,
        )
        self._revocations = listener
        try:
            listener.start(stop=self._reconnect.stop)
        except BaseException:
            self._stop_listening_for_revocations()
            raise

    def _revocation_nodes(self) -> list[tuple[pika.URLParameters, str]]:
        """The nodes to try, the work link's first."""
        at = next((i for i, node in enumerate(self._nodes) if node is self._node), 0)
        ordered = self._nodes[at:] + self._nodes[:at]
        return [(node.params, node.safe_url) for node in ordered]

    def _stop_listening_for_revocations(self) -> None:
        listener, self._revocations = self._revocations, None
        if listener is not None:
            listener.close()
