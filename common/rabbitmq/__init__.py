"""The RabbitMQ backend: pika, a durable queue, persistent messages, confirms, late acks.

This package is the only code that imports pika. Its modules follow the thread line:

- `backend`: `RabbitBackend`, the backend contract and reconnecting; the caller's thread.
- `reconnect`: the connection policy (capped, jittered backoff; what is retried, how long).
- `link`: one connection and its channel, run by a private I/O thread; the only code that
  touches a channel (its docstring states which methods are safe from which thread).
- `connection`: `link`'s base: the connection's life, its I/O thread, and how it dies.
- `confirms`: publisher-confirm bookkeeping, no connection (fed by the I/O thread).
- `topology`: queue names, queue arguments, message properties, dead-letter headers.
- `errors`: pika's exceptions, as this project's.
"""

from common.rabbitmq.backend import RabbitBackend

__all__ = ["RabbitBackend"]
