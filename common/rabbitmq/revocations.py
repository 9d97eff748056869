"""Revocations on RabbitMQ: one stream that every worker reads from its first message.

`REVOCATION_STREAM` (``taskshuttle.revocations``) is a durable stream queue of the virtual
host, shared by all its work queues. Each message is one `common.schemas.Revocation` (task
id, work queue, until) as JSON, published with confirms by `RabbitBackend.revoke`. A stream
keeps its messages for every reader (reading removes nothing), so a worker started later
still reads every revocation there. It is bounded twice, oldest messages first: by age, a bit
over ten years (`STREAM_MAX_AGE`: no revocation is kept longer, `MAX_KEEP_FOR`), and by size,
50 MB (`STREAM_MAX_BYTES`, some 300,000 revocations). A stream drops whole segments only, so
its segments are 5 MB (`STREAM_SEGMENT_BYTES`; the broker's default, 500 MB, would let it grow
to ten times its bound before the first cut). It is declared where it is used, by a producer
before it revokes and by a worker before it reads; one that exists with other bounds is used
as it is (said once), one that is no stream is refused (`QueueMismatch`).

Each consuming `RabbitBackend` (a worker) runs a `RevocationListener` from `start_consuming`
on: a connection of its own (its messages never mix with the work link's deliveries), whose
consumer reads the stream from its first message (``x-stream-offset: first``, with a
prefetch and manual acks, as streams require) and keeps the revocations of its own work
queue in a `common.revoked.RevokedIds` (at most `MAX_REVOKED`, each until its time, pruned as
they expire). `is_revoked` is a lookup there. A message that is no revocation (any client may
write to the stream) is skipped with a log line (the first `MALFORMED_LOGGED`; then counted
only), never raised. A lost connection is opened again with backoff, as the backend's own,
and the reading resumes after the last message read.

Catching up: before the worker takes its first task it has read the whole stream. The
listener publishes a marker (an empty message whose ``type`` is `MARKER_TYPE` and whose id is
its own), then reads from the first message: once its marker comes back, every revocation
stored before it has been read (a stream keeps its order). Each worker start so adds one small
message to the stream; listeners skip markers silently.

How soon a revocation reaches a running worker: within milliseconds after `revoke` returns
(the broker confirms a message once the stream stored it, then hands it to each reader),
never before it returns. A worker started later has it before its first task (unless reading
the stream to its marker takes over `CATCH_UP_TIMEOUT`: then it says so and starts, and
learns the rest as it reads on). A worker whose revocation connection is down learns what
was revoked meanwhile once that connection is back.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pika
from pika.spec import BasicProperties

from common.clock import Clock
from common.errors import BadMessage, BrokerError, ConnectionLost, QueueMismatch
from common.rabbitmq.link import Link
from common.rabbitmq.reconnect import RETRYABLE, Reconnect, StopFlag
from common.rabbitmq.topology import PERSISTENT, Message
from common.revoked import RevokedIds
from common.schemas import Revocation, decode_revocation, encode

log = logging.getLogger("taskshuttle.revocations")

REVOCATION_STREAM = "taskshuttle.revocations"
#: A bit over ten years (`common.backend.MAX_KEEP_FOR`, 3652.5 days).
STREAM_MAX_AGE = "3660D"
STREAM_MAX_BYTES = 50_000_000
STREAM_SEGMENT_BYTES = 5_000_000
#: Messages of the stream a listener may hold unacked (a stream needs a prefetch).
STREAM_PREFETCH = 1000
#: The ``type`` of a listener's catch-up marker (see the module's docstring).
MARKER_TYPE = "taskshuttle.catch-up"
#: How long `RevocationListener.start` waits to have read the stream to its marker.
CATCH_UP_TIMEOUT = 30.0
#: Malformed messages a listener logs one by one; past this it only counts them.
MALFORMED_LOGGED = 100

#: Streams found with other arguments than asked for, said once per process.
_used_as_is: set[str] = set()


def stream_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "stream",
        "x-max-age": STREAM_MAX_AGE,
        "x-max-length-bytes": STREAM_MAX_BYTES,
        "x-stream-max-segment-size-bytes": STREAM_SEGMENT_BYTES,
    }


def declare_stream(link: Link, name: str = REVOCATION_STREAM) -> None:
    """Declare the revocation stream (once per link). One that exists with other bounds is
    used as it is (said once); one that is no stream cannot serve: `QueueMismatch`."""
    declared = link.declare_once(name, stream_arguments())
    if declared is None or declared.mismatch is None:
        return
    if "'x-queue-type'" in declared.mismatch:
        raise QueueMismatch(
            f"queue {name!r} exists but is not a stream ({declared.mismatch}); "
            "revocations need it to be one: delete it"
        )
    if name not in _used_as_is:
        _used_as_is.add(name)
        log.warning(
            "stream %r exists with other arguments; used as it is: %s", name, declared.mismatch
        )


def revocation_messages(
    stream: str, work_queue: str, task_ids: Sequence[str], until: datetime
) -> list[Message]:
    """One persistent JSON message per task id, to `stream` (the default exchange)."""
    messages = []
    for task_id in task_ids:
        body = encode(Revocation(task_id=task_id, queue=work_queue, until=until))
        properties = BasicProperties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            message_id=uuid.uuid4().hex,
        )
        messages.append(Message(stream, body, properties))
    return messages


def marker_message(stream: str, nonce: str) -> Message:
    properties = BasicProperties(delivery_mode=PERSISTENT, type=MARKER_TYPE, message_id=nonce)
    return Message(stream, b"", properties)


#: Where a listener may connect, in the order to try: each node's parameters and its
#: address with the password hidden. Asked again for each connection.
Nodes = Callable[[], Sequence[tuple[pika.URLParameters, str]]]


class RevocationListener:
    """Reads the revocation stream for one work queue, on a connection of its own, and keeps
    that queue's revocations in `revoked` (see the module's docstring).

    `nodes`: where to connect (the backend's nodes, the one its work link is on first).
    Reconnects with capped, jittered backoff (`Reconnect`, up to `max_reconnect_delay`), for
    as long as it takes, until `close`; a refusal no retry can fix (a stream that is no
    stream, access refused) stops it, raised by `start` if it comes first, else logged.
    """

    def __init__(
        self,
        work_queue: str,
        nodes: Nodes,
        *,
        clock: Clock,
        attempt_timeout: float = 10.0,
        max_reconnect_delay: float = 10.0,
        stream: str = REVOCATION_STREAM,
    ) -> None:
        self.work_queue = work_queue
        self.stream = stream
        self.revoked = RevokedIds(f"queue {work_queue!r}", clock)
        #: Messages of the stream that were no revocation (skipped).
        self.malformed = 0
        #: Connections opened again after a loss.
        self.reconnects = 0
        #: What stopped the listener for good, if anything did.
        self.error: BrokerError | None = None
        self._nodes = nodes
        self._attempt_timeout = attempt_timeout
        self._closing = threading.Event()
        self._reconnect = Reconnect(None, max_reconnect_delay, clock, stop=self._closing)
        self._nonce = uuid.uuid4().hex
        #: Set once this listener read its own marker: it has read the whole stream as it
        #: was when it started.
        self.caught_up = threading.Event()
        #: Set once caught up, or stopped for good: what `start` waits for.
        self._settled = threading.Event()
        #: The offset to resume from on a new connection (None: the first message).
        self._next_offset: int | None = None
        self._link: Link | None = None
        self._thread = threading.Thread(target=self._serve, name="revocations", daemon=True)

    # -- the caller's thread ----------------------------------------------------------------
    def start(self, timeout: float = CATCH_UP_TIMEOUT, stop: StopFlag | None = None) -> None:
        """Start reading, and wait until the stream is read to its end as it is now (at most
        `timeout` seconds, or until `stop` is set: then the worker goes on, and learns the
        rest as it comes). Raises what stopped the listener for good before that."""
        self._thread.start()
        waited = 0.0
        while not self._settled.wait(min(0.2, timeout - waited)):
            waited += 0.2
            if stop is not None and stop.is_set():
                return  # the worker is being stopped: it takes no task
            if waited >= timeout:
                log.warning(
                    "not all revocations of %r read after %.0fs (stream %r): the worker "
                    "starts and learns the rest as they come",
                    self.work_queue,
                    waited,
                    self.stream,
                )
                return
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._closing.set()
        link = self._link
        if link is not None:
            link.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    # -- the listener's thread ----------------------------------------------------------------
    def _serve(self) -> None:
        try:
            link = self._first_link()
            while not self._closing.is_set():
                self._read(link)
                if self._closing.is_set():
                    break
                error = link.close_error or ConnectionLost(f"connection to {link.safe_url} lost")
                link.close()
                link = self._reconnect.run(self._open, error, wait=None)
                self.reconnects += 1
                log.warning("revocations: reconnected to %s", link.safe_url)
        except BrokerError as exc:
            if not self._closing.is_set():
                self._stopped(exc)
        except Exception as exc:  # a bug: say it, keep what is known, never end the worker
            log.exception("revocations: the listener of %r stopped", self.work_queue)
            self._stopped(BrokerError(f"the revocation listener stopped: {exc!r}"))
        finally:
            if self._link is not None:
                self._link.close()

    def _first_link(self) -> Link:
        try:
            return self._open()
        except RETRYABLE as error:
            self._reconnect.failed(error)
            return self._reconnect.run(self._open, error, wait=None)  # type: ignore[return-value]

    def _stopped(self, error: BrokerError) -> None:
        self.error = error
        if self._settled.is_set():
            log.error(
                "revocations: stopped reading stream %r: %s; the %d revocations known are kept",
                self.stream,
                error,
                len(self.revoked),
            )
        self._settled.set()

    def _connect(self) -> Link:
        """A new link to the first node that answers."""
        error: BaseException | None = None
        for params, safe_url in self._nodes():
            link = Link(params, safe_url, f"{self.work_queue}-revocations")
            try:
                link.open(self._attempt_timeout)
            except RETRYABLE as exc:
                error = exc
                continue
            return link
        raise error or ConnectionLost("no broker node to connect to")

    def _open(self) -> Link:
        """A link that reads the stream: from its first message, or after the last one read;
        with a marker published first while this listener has not caught up yet."""
        link = self._connect()
        try:
            declare_stream(link, self.stream)
            if not self.caught_up.is_set():
                marker = marker_message(self.stream, self._nonce)
                if link.publish_many([marker], timeout=30):
                    raise link.close_error or ConnectionLost("connection lost with the marker")
            offset: int | str = "first" if self._next_offset is None else self._next_offset
            try:
                link.consume(
                    self.stream, prefetch=STREAM_PREFETCH, arguments={"x-stream-offset": offset}
                )
            except ConnectionLost as exc:  # the broker's words: "invalid arg 'x-stream-offset'
                if "'x-stream-offset'" not in str(exc):  # ... of queue type rabbit_classic_queue"
                    raise
                raise QueueMismatch(
                    f"queue {self.stream!r} exists but is not a stream ({exc}); "
                    "revocations need it to be one: delete it"
                ) from None
        except BaseException:
            link.close()
            raise
        self._link = link
        if self._closing.is_set():  # `close` ran meanwhile, and did not see this link
            link.close()
        return link

    def _read(self, link: Link) -> None:
        """Take what the link's consumer receives until the link dies or this closes."""
        while not self._closing.is_set():
            try:
                tag, _redelivered, props, body = link.inbox.get(timeout=0.2)
            except queue.Empty:
                if not link.alive:
                    return
                continue
            try:
                self._take(props, body)
            except Exception as exc:  # whatever a message holds, it costs only itself
                self._malformed("?", BadMessage("unreadable", f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(BrokerError):  # a dead link: its credit goes with it
                link.ack(tag)

    def _take(self, props: BasicProperties, body: bytes) -> None:
        headers = props.headers if isinstance(props.headers, dict) else {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int) and not isinstance(offset, bool):
            self._next_offset = offset + 1
        if props.type == MARKER_TYPE:
            if props.message_id == self._nonce and not self.caught_up.is_set():
                self.caught_up.set()
                self._settled.set()
            return
        try:
            revocation = decode_revocation(body)
        except BadMessage as exc:
            self._malformed(offset, exc)
            return
        if revocation.queue == self.work_queue:
            self.revoked.add((revocation.task_id,), revocation.until.timestamp())

    def _malformed(self, offset: object, exc: BadMessage) -> None:
        self.malformed += 1
        if self.malformed <= MALFORMED_LOGGED:
            more = "" if self.malformed < MALFORMED_LOGGED else " (further ones: not logged)"
            log.warning(
                "revocations: skipped the message at offset %s of stream %r: %s%s",
                offset,
                self.stream,
                exc,
                more,
            )
