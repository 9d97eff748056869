"""The RabbitMQ backend: pika, a durable queue, persistent messages, confirms, late acks; and
what else talks to the broker: its admin (dead letters, queue lengths), the event listener,
passive queue counts and the management API's client.

This package is the only code that imports pika (but `common.settings`' URL check). It may
import the rest of `common`'s contract (schemas, backend, events, settings, errors, clock),
never `common.factory` (which builds what is here), `common.local`, or either program.
Programs get what is here through `common.factory`. Its modules follow the thread line:

- `backend`: `RabbitBackend`, the backend contract and reconnecting; the caller's thread.
- `reconnect`: the connection policy (capped, jittered backoff; what is retried, how long).
- `link`: one connection and its channel, run by a private I/O thread; the only code that
  touches a channel (its docstring states which methods are safe from which thread).
- `connection`: `link`'s base: the connection's life, its I/O thread, and how it dies.
- `outbox`: acks and results, batched safely; `confirms`: publisher-confirm bookkeeping, no
  connection (both fed by the I/O thread); `delivery`: a delivery's handle, caller's side.
- `dlq`: dead letters, streamed and replayed; `topology`: queue names, queue arguments,
  the delay levels, message properties, dead-letter headers.
- `revocations`: the revocation stream, and the reader a worker runs on a connection (and a
  thread) of its own.
- `events`: `EventListener`, task events from the events exchange; `counts`: passive looks
  at queues (ready messages, consumers); `management`: the management HTTP API (urllib).
- `errors`: pika's exceptions, as this project's.
"""

from common.rabbitmq.backend import RabbitBackend

__all__ = ["RabbitBackend"]
