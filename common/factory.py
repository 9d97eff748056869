"""One place that builds backends: every program, the lessons and the bench call `open_backend`.

What differs between roles is decided here and nowhere else:

- a **producer** publishes (and, with ``results=True``, collects results on a reply queue of
  its own); it reconnects a bounded number of times, since someone is waiting on it;
- a **worker** consumes; it reconnects for as long as it takes (a broker restart is not a
  reason for a service to stop), and is registered as a consumer before `open_backend`
  returns, so "ready" means the broker already delivers to it;
- an **admin** connection (dead letters, queue lengths, deleting queues) never reconnects:
  it is short-lived, and its caller reports the failure.

Prefetch and the queue's name come from `Settings`; queue arguments (a lesson's
single-active-consumer queue) are passed by the caller that needs them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError
from common.settings import BackendName, Settings

if TYPE_CHECKING:
    from common.backend import Backend
    from common.local import LocalBroker


class Role(StrEnum):
    PRODUCER = "producer"
    WORKER = "worker"
    ADMIN = "admin"


#: Reconnects before a lost connection's error reaches the caller (None: forever).
RECONNECT_ATTEMPTS: dict[Role, int | None] = {
    Role.PRODUCER: 10,
    Role.WORKER: None,
    Role.ADMIN: 0,
}


def open_backend(
    settings: Settings,
    role: Role,
    *,
    backend: BackendName = BackendName.rabbitmq,
    results: bool = False,
    queue_arguments: dict[str, Any] | None = None,
) -> Backend | LocalBroker:
    """A connected backend for `role`; close it (or use it as a context manager) when done.

    The local backend exists only as the parent of its workers (the producer role, a
    `LocalBroker`): its workers get their end of it from `WorkerPool`, never from here.
    """
    if backend is BackendName.local:
        if role is not Role.PRODUCER:
            raise ConfigError(
                f"the local backend has no separate {role.value}: its queue lives inside "
                "the producer's process tree"
            )
        from common.local import LocalBroker

        return LocalBroker(
            slots=settings.workers, queue_name=settings.queue, batch_size=settings.prefetch
        )
    from common.rabbitmq import RabbitBackend  # only this path needs pika

    rabbit = RabbitBackend(
        settings.amqp_url,
        settings.queue,
        prefetch=settings.prefetch,
        want_results=results,
        reconnect_attempts=RECONNECT_ATTEMPTS[role],
        queue_arguments=queue_arguments,
    )
    if role is Role.WORKER:
        try:
            rabbit.start_consuming()
        except BaseException:
            rabbit.close()
            raise
    return rabbit
