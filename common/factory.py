"""One place that builds backends: every program, the lessons and the bench call `open_backend`
(or one of its siblings below); nothing else constructs a `RabbitBackend`, a `LocalBroker`, an
event listener or an AMQP connection (tests/test_layers.py checks it).

What differs between roles is decided here and nowhere else. Each waits for a broker that is
down (at start-up as after a loss) with capped, jittered backoff, logging one line per
attempt, for as long as its role allows (`broker_wait`; ``--connect-timeout`` sets it):

- a **producer** publishes (and, with ``results=True``, collects results on a reply queue of
  its own); someone is waiting on it, so it waits 30 s per outage, then fails;
- a **worker** consumes; it waits as long as it takes (a broker restart is not a reason for
  a service to stop, nor a worker's death), and is registered as a consumer before
  `open_backend` returns, so "ready" means the broker already delivers to it;
- a **probe** is the consumer's check before it starts its workers (the URL, the password,
  the queue's arguments): it waits for the broker as the workers would, then closes;
- an **admin** connection (dead letters, queue lengths, deleting queues) does not wait: it
  is short-lived, and its caller reports the failure.

A wrong password or virtual host, or a queue that cannot be used, is never waited
for: every role fails at once with its one-line error.

Prefetch and the queue's name come from `Settings`; queue arguments (a lesson's
single-active-consumer queue) are passed by the caller that needs them.

Its siblings, for what is not a backend of a program's role:

- `local_broker`: a `LocalBroker` with explicit slots and options (a lesson that starts and
  feeds its own workers);
- `open_event_listener`: a listener for the task events on RabbitMQ (`consumer events`,
  `consumer status`, the dashboard);
- `open_queue_counter`: passive looks at queues (ready messages, consumers) on a connection of
  its own, which creates nothing (`consumer status` without the management API).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from common import defaults
from common.errors import ConfigError
from common.settings import BackendName, Settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from common.backend import Backend
    from common.events import EventKind
    from common.local import LocalBroker
    from common.rabbitmq.counts import QueueCounter
    from common.rabbitmq.events import EventListener
    from common.rabbitmq.reconnect import StopFlag


class Role(StrEnum):
    PRODUCER = "producer"
    WORKER = "worker"
    PROBE = "probe"
    ADMIN = "admin"


#: Seconds each role waits for a broker that is down, when ``--connect-timeout`` is not
#: given (None: as long as it takes; 0: not at all).
DEFAULT_WAIT: dict[Role, float | None] = {
    Role.PRODUCER: defaults.PRODUCER_CONNECT_TIMEOUT,
    Role.WORKER: None,
    Role.PROBE: None,
    Role.ADMIN: 0.0,
}


def broker_wait(role: Role, settings: Settings) -> float | None:
    """How long `role` waits for the broker, at start-up and per outage (None: forever).

    ``--connect-timeout`` (`Settings.connect_timeout`) sets it for every role but an admin
    connection's; 0 there means as long as it takes.
    """
    if role is Role.ADMIN or settings.connect_timeout is None:
        return DEFAULT_WAIT[role]
    return settings.connect_timeout or None


def open_backend(
    settings: Settings,
    role: Role,
    *,
    backend: BackendName = BackendName.rabbitmq,
    results: bool = False,
    queue_arguments: dict[str, Any] | None = None,
    stop: StopFlag | None = None,
    attempt_timeout: float | None = None,
) -> Backend | LocalBroker:
    """A connected backend for `role`; close it (or use it as a context manager) when done.

    The local backend exists only as the parent of its workers (the producer role, a
    `LocalBroker`): its workers get their end of it from `WorkerPool`, never from here.
    `stop`, when set (a signal), ends any wait for the broker at once. `attempt_timeout`:
    seconds one connection attempt may take (`RabbitBackend`'s own default when None).
    """
    if backend is BackendName.local:
        if role is not Role.PRODUCER:
            raise ConfigError(
                f"the local backend has no separate {role.value}: its queue lives inside "
                "the producer's process tree"
            )
        return local_broker(
            settings.workers,
            queue_name=settings.queue,
            batch_size=settings.prefetch,
            # shown as log lines: asked for only when they would be shown (-v)
            task_events=logging.getLogger("taskshuttle.events").isEnabledFor(logging.INFO),
        )
    from common.rabbitmq import RabbitBackend  # only this path needs pika

    timeouts = {} if attempt_timeout is None else {"attempt_timeout": attempt_timeout}
    with _signals_end_the_wait(stop if role is Role.WORKER else None) as stop:
        rabbit = RabbitBackend(
            settings.amqp_url,
            settings.queue,
            prefetch=settings.prefetch,
            want_results=results,
            wait_for_broker=broker_wait(role, settings),
            queue_type=settings.queue_type,
            queue_arguments=queue_arguments,
            stop=stop,
            **timeouts,
        )
        if role is Role.WORKER:
            try:
                rabbit.start_consuming()
            except BaseException:
                rabbit.close()
                raise
    return rabbit


def local_broker(slots: int, **options: Any) -> LocalBroker:
    """A `LocalBroker` with `slots` worker slots; `options` are its other keyword arguments
    (its own defaults otherwise). The producer's comes from `open_backend`; a lesson that
    starts and feeds its workers itself takes one here."""
    from common.local import LocalBroker

    return LocalBroker(slots=slots, **options)


def open_event_listener(
    amqp_url: str,
    queue: str | None = None,
    kinds: Iterable[EventKind] = (),
    *,
    attempt_timeout: float = 10.0,
) -> EventListener:
    """A listener for the task events of `queue` (every queue's when None) and of `kinds`
    (all when empty), on a connection of its own to the first node of `amqp_url` that
    answers; close it when done (or use it as a context manager)."""
    from common.rabbitmq.events import EventListener

    return EventListener(amqp_url, queue, kinds, attempt_timeout=attempt_timeout)


def open_queue_counter(amqp_url: str, *, attempt_timeout: float = 10.0) -> QueueCounter:
    """Passive looks at queues (nothing is created) on a connection of its own to the first
    node of `amqp_url` that answers; close it when done. Like an admin connection it does
    not wait for a broker that is down: the broker's error is raised at once."""
    from common.rabbitmq.counts import QueueCounter

    return QueueCounter(amqp_url, attempt_timeout=attempt_timeout)


@contextlib.contextmanager
def _signals_end_the_wait(stop: StopFlag | None) -> Iterator[StopFlag | None]:
    """For a worker process that waits for its broker before it runs: a stop flag that its
    SIGTERM or SIGINT sets, on top of what its own handlers do (they set the flag its loop
    reads, which a wait at start-up would never look at), so a consumer stopped while the
    broker is away is not left waiting for a worker that waits for the broker.

    Only in a process's main thread (where handlers live), and only while connecting.
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    mine = threading.current_thread() is threading.main_thread()
    if stop is not None or not mine or None in previous.values():
        yield stop
        return
    signalled = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        signalled.set()
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield signalled
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
