"""One AMQP connection and its channel, served by a private I/O thread: its life.

`Connection` opens a pika `SelectConnection` and runs its ioloop in a thread of its own, hands
work to that thread (`_post`, `_call`), and dies cleanly: whatever way it goes (the broker
closes the connection or the channel, the network drops, or code in the I/O thread raises),
every caller waiting on it learns at once, with `ConnectionLost` unless the broker refused
something for good (`QueueMismatch`, `AuthenticationFailed`). Publishers then publish again
what was left unconfirmed, and the backend opens a new link. An exception in the I/O thread
is logged with its traceback and closes the connection, so the broker hands out again what
it had delivered.

`Link` (``link.py``) adds the operations on the channel; the threading rules are there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pika
import pika.exceptions

from common.errors import BrokerError, BrokerUnreachable, ConnectionLost
from common.rabbitmq.errors import translate

log = logging.getLogger("taskshuttle.rabbitmq")


class Connection:
    """One AMQP connection and its one channel, with the I/O thread that serves them."""

    def __init__(self, params: pika.URLParameters, safe_url: str, name: str) -> None:
        self.safe_url = safe_url
        #: Why the link died (None while it lives, or after a close we asked for).
        self.close_error: BrokerError | None = None
        self._params = params
        self._opened: Future[None] = Future()
        self._dead = threading.Event()
        self._closing = False
        self._conn: pika.SelectConnection | None = None
        self._channel: Any = None
        #: Futures callers wait on (calls and publish batches), failed when the link dies.
        self._waiting: set[Future[Any]] = set()
        self._waiting_lock = threading.Lock()
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
            self._post(self._shut_io)
        except BrokerError:
            return
        self._thread.join(10)

    # -- any thread: the two ways into the I/O thread -------------------------------------
    def _post(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the I/O thread, soon; raises `ConnectionLost` if the link is dead.

        If `fn` raises, the link dies (see `_broken_io`) rather than the I/O thread.
        """
        if self._dead.is_set() or self._conn is None:
            raise self.close_error or ConnectionLost(f"connection to {self.safe_url} is closed")
        try:
            self._conn.ioloop.add_callback_threadsafe(self._guard(fn))
        except Exception as exc:  # the ioloop closed under us
            raise self.close_error or ConnectionLost(str(exc)) from None

    def _wait_on(self, future: Future[Any]) -> None:
        """Register a future a caller is about to wait on: if the link dies, it fails.

        Registered before the work is posted, and the link is marked dead before the
        futures are failed, so none is missed: posted work the I/O thread never ran fails
        too, instead of leaving its caller to time out.
        """
        with self._waiting_lock:
            self._waiting.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[Any]) -> None:
        with self._waiting_lock:
            self._waiting.discard(future)

    def _call(self, start: Callable[[Future[Any]], None], timeout: float = 30.0) -> Any:
        """Run `start(future)` in the I/O thread and wait for it to resolve the future."""
        future: Future[Any] = Future()

        def run() -> None:
            try:
                start(future)
            except Exception as exc:
                if not future.done():
                    future.set_exception(self._error_for_io(exc))

        self._wait_on(future)
        try:
            self._post(run)
        except BrokerError:
            self._forget(future)
            raise
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
        except Exception as exc:  # a bug in pika, or in a callback pika did not catch
            self._broken_io(exc)
            with contextlib.suppress(Exception):  # serve the close, so the broker sees it now
                if self._conn is not None and not self._conn.is_closed:
                    self._conn.ioloop.start()
        finally:
            self._dead.set()
            self._fail_io(self.close_error or ConnectionLost("connection closed"))
            if self._conn is not None:
                self._conn.ioloop.close()  # its wake-up socket pair, else they leak

    def _on_connection_open_io(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel_open_io)

    def _on_channel_open_io(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._guard(self._on_channel_closed_io))
        channel.add_on_cancel_callback(self._guard(self._on_cancelled_io))
        self._prepare_channel_io(channel, self._on_ready_io)

    def _prepare_channel_io(self, channel: Any, ready: Callable[[], None]) -> None:
        """Set the new channel up (a subclass's hook, which registers its callbacks through
        `_guard`); call `ready()` once it is usable."""
        ready()

    def _on_ready_io(self) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_open_error_io(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self.close_error = translate(exc, self.safe_url)
        if not self._opened.done():
            self._opened.set_exception(self.close_error)
        conn.ioloop.stop()

    def _on_connection_closed_io(self, conn: pika.SelectConnection, reason: BaseException) -> None:
        if not isinstance(reason, pika.exceptions.AMQPError | OSError):
            # pika caught an exception raised by one of our frame callbacks and aborted the
            # connection: say so, with the traceback (pika's own log is silenced).
            log.error("error in the AMQP I/O thread of %s", self.safe_url, exc_info=reason)
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
        if not isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            return  # the connection is closing: its own callback says why
        # One channel per link: when the broker closes it, the link is done. A recoverable
        # closure (consumer_timeout, a deleted queue) is `ConnectionLost`: the backend opens
        # a new link, declares its queues again and resumes; the unacked deliveries are
        # handed out again, flagged as redelivered.
        if not self._closing and self.close_error is None:
            self.close_error = translate(reason, self.safe_url)
            if isinstance(self.close_error, ConnectionLost):
                log.warning("%s", self.close_error)
        self._fail_io(self.close_error or ConnectionLost("channel closed"))
        self._shut_io()

    def _on_cancelled_io(self, frame: Any) -> None:
        # The broker cancelled our consumer (queue deleted): treat the link as lost.
        if not self._closing and self.close_error is None:
            self.close_error = ConnectionLost(
                f"the broker at {self.safe_url} cancelled the consumer (queue deleted?)"
            )
            log.warning("%s", self.close_error)
        self._fail_io(self.close_error or ConnectionLost("consumer cancelled"))
        self._shut_io()

    def _guard(self, fn: Callable[..., object]) -> Callable[..., None]:
        """`fn`, for pika to call in this thread: if it raises, the link dies, not the
        thread (pika would abort the connection and log the error where nobody looks)."""
        return functools.partial(self._guarded_io, fn)

    def _guarded_io(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._broken_io(exc)

    def _broken_io(self, exc: Exception) -> None:
        """Code in this thread raised: the link is no longer to be trusted. Everyone waiting
        learns `ConnectionLost` (so publishers publish again what was unconfirmed), and the
        connection is closed so the broker hands out again what it delivered."""
        channel_gone = self._channel is None or not self._channel.is_open
        if self.close_error is None:
            self.close_error = ConnectionLost(
                f"connection to {self.safe_url} lost: {type(exc).__name__}: {exc}"
            )
        if not channel_gone:  # not the usual race with a closing channel: a bug, say it
            log.error("error in the AMQP I/O thread of %s", self.safe_url, exc_info=exc)
        self._fail_io(self.close_error)
        self._shut_io()

    def _shut_io(self) -> None:
        """Close the connection; its close callback stops the loop once the socket is shut."""
        if self._conn is None:
            return
        self._closing = True
        with contextlib.suppress(Exception):  # already closing or closed: nothing to undo
            if self._conn.is_open:
                self._conn.close()
            elif self._conn.is_closed:
                self._conn.ioloop.stop()

    def _fail_io(self, error: BrokerError) -> None:
        """The link is dead (from now on `alive` says so, and nothing more is posted to it):
        every caller waiting on it learns `error`."""
        self._dead.set()
        if not self._opened.done():
            self._opened.set_exception(error)
        with self._waiting_lock:
            waiting = list(self._waiting)
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        self._lost_io(error)

    def _lost_io(self, error: BrokerError) -> None:
        """The link is dead: a subclass's hook, to fail what it tracks itself."""

    def _error_for_io(self, exc: Exception) -> BrokerError:
        """What a call that raised in this thread tells its caller: why the link died, if it
        did (a closed channel refuses every call), else the error itself."""
        if self.close_error is not None:
            return self.close_error
        if self._channel is None or not self._channel.is_open:
            return ConnectionLost(f"connection to {self.safe_url} lost: the channel is closed")
        return translate(exc, self.safe_url)
