"""The connection policy: when a backend tries its broker again, and when it gives up.

One `Reconnect` per backend, configured per role by `common.factory` (a worker waits as long
as it takes, a producer about 30 s per outage, an admin command not at all). It serves the
first connection as well as every one after a loss, so a program started while the broker
is down waits for it like one that lost it.

No connection here, no pika: `connect` is any callable that raises as
`RabbitBackend._connect` does, and time comes from a `Clock`, so the schedule is tested
without a broker and without sleeping.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Protocol, TypeVar

from common.clock import Clock
from common.errors import BrokerError, BrokerUnreachable, ConnectionLost

log = logging.getLogger("taskshuttle.rabbitmq")

_T = TypeVar("_T")

#: What a retry can fix: a broker that is away, or a connection (or channel) it dropped.
#: Anything else (a wrong password or virtual host, a queue that cannot be used)
#: reaches the caller at once.
RETRYABLE = (ConnectionLost, BrokerUnreachable)


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class Reconnect:
    """Tries a connect again after a failure: the first time at once after a loss, then
    after pauses that double from `FIRST_DELAY` up to `max_delay`, each jittered (between
    half and all of it, so workers that lost the broker together do not come back in step).

    `give_up_after`: seconds an outage may last (from the loss, or from the first failed
    connect) before its last error reaches the caller; None: no limit; 0: no retry at all.
    A success starts the schedule and the outage clock over. `stop`, when set, ends the
    waiting at once (a program that was asked to stop), raising the last error.

    Each failed attempt logs one line: ``broker unreachable, retrying in Ns: <reason>``.
    """

    FIRST_DELAY = 0.2
    #: Longest single sleep while a `stop` flag is watched.
    STOP_POLL = 0.2

    def __init__(
        self,
        give_up_after: float | None,
        max_delay: float,
        clock: Clock,
        *,
        rand: Callable[[], float] = random.random,
        stop: StopFlag | None = None,
    ) -> None:
        self.give_up_after = give_up_after
        self.max_delay = max_delay
        self.clock = clock
        self.rand = rand
        self.stop = stop
        #: Failed attempts in the current outage.
        self.attempt = 0
        self._delay = self.FIRST_DELAY
        self._retry_at = 0.0
        self._outage_since: float | None = None

    def retries(self, error: BaseException) -> bool:
        """Whether `error` is worth another attempt under this policy."""
        return isinstance(error, RETRYABLE) and self.give_up_after != 0

    def failed(self, error: BrokerError) -> None:
        """A connect attempt failed with `error`: schedule the next one and say when, or
        raise `error` if it cannot be retried or the outage has lasted too long."""
        if not self.retries(error):
            raise error
        now = self.clock.monotonic()
        if self._outage_since is None:
            self._outage_since = now
        self.attempt += 1
        delay = min(self._delay, self.max_delay) * (0.5 + 0.5 * self.rand())
        self._delay = min(self._delay * 2, self.max_delay)
        if self.give_up_after is not None:
            left = self._outage_since + self.give_up_after - now
            if left <= 0:
                raise error
            delay = min(delay, left)  # the last try comes at the bound, not before it
        self._retry_at = now + delay
        log.warning("broker unreachable, retrying in %.1fs: %s", delay, error)

    def run(self, connect: Callable[[], _T], error: BrokerError, wait: float | None) -> _T | None:
        """`connect()`'s result, tried as the schedule allows, after `error` broke the link
        (or made the first connect fail: then call `failed(error)` first).

        Without `wait`: keeps trying until it succeeds or gives up (raising the last error).
        With `wait`: tries for at most `wait` seconds and returns None if still down, so a
        worker loop gets its turn to notice a shutdown while the broker is away.
        """
        if not self.retries(error):
            raise error
        if self._outage_since is None:
            self._outage_since = self.clock.monotonic()
        deadline = None if wait is None else self.clock.monotonic() + wait
        while True:
            if deadline is not None and self._retry_at > deadline:
                self._sleep_until(deadline, error)
                return None
            self._sleep_until(self._retry_at, error)
            try:
                connected = connect()
            except RETRYABLE as exc:
                error = exc
                self.failed(exc)
                continue
            self.attempt = 0
            self._delay = self.FIRST_DELAY
            self._outage_since = None
            return connected

    def _sleep_until(self, when: float, error: BrokerError) -> None:
        while True:
            if self.stop is not None and self.stop.is_set():
                raise error
            pause = when - self.clock.monotonic()
            if pause <= 0:
                return
            self.clock.sleep(pause if self.stop is None else min(pause, self.STOP_POLL))
