"""The local backend: a `multiprocessing.Queue` inside one process tree.

Two types, one for each side. `LocalBroker` lives in the parent process (the producer, which
also supervises the workers): it is the broker here. It puts encoded tasks on a shared task
queue, keeps each task it sent until a result or a dead letter for it comes back, holds back
delayed tasks (retries, tasks published for later) and keeps dead letters. `LocalWorkerEnd`
is what one worker process holds: the shared task queue, the writing end of a pipe of its
own, and its slot of the in-flight registry; nothing of the parent's.

A worker sends its events (`Result`, `Acked`, `Published`, `Dead`, `Requeue`) back on its own
pipe. (Not one shared queue: a worker killed while writing to a shared queue would leave its
write lock taken and silence every other worker.) The broker sends each worker its
revocations (`Revoked`, `LocalBroker.revoke`) the other way, on a control pipe of the slot's
own; a worker started later gets those still kept with its end. Each worker also writes the
keys of the tasks it holds into its own slot of shared memory: with the tasks the parent
keeps, that is the in-flight registry. `LocalBroker.slots` does the handshake with the
workers in one place: it hands each worker its end, closes the parent's copy of the pipe's
writer once the worker has it (so a worker that dies mid-write leaves the parent reading
end-of-file, never waiting for the rest of a message), and when a worker dies reads its slot
and puts the held tasks back, which a bare `multiprocessing.Queue` cannot do (`recovered`
counts what it would have lost). Which task a dead worker was running is the in-flight
registry's to know, as on RabbitMQ (`consumer.inflight`): the supervisor counts the deaths,
and the worker that takes the task next dead-letters it (``killed-worker``) once `max_deaths`
workers died running it. A worker that hands tasks back itself (`Requeue`, when it closes)
stops holding them, so each comes back once.

Tasks travel in small batches and events are sent in batches: a `Queue.put` costs a pickle,
a lock and a pipe write, so one per task would cost more than the task. A big job is cut into
batches of up to `batch_size`; a small one goes one task at a time, so no worker sits on
tasks that an idle one could run (the same trade as RabbitMQ's prefetch). Events that have
waited 50 ms (finished tasks behind a long one) are sent by a thread of the worker's, so a
long task neither delays the results before it nor, if its worker dies, makes them run again.

Known limit, as the Python docs warn: a worker killed while inside `Queue.get()` holds the
queue's internal read lock forever; workers here are killed (in tests) while they run a task.

`broker.py` is the parent's side, `end.py` a worker's, `wire.py` what crosses between them.

What it may import: the standard library (multiprocessing) and the rest of `common`'s contract
(schemas, backend, events, errors, clock, settings); never `common.rabbitmq`, pika,
`common.factory` (which builds the broker: `open_backend`, `local_broker`) or either program.
"""

from common.local.broker import LocalBroker, Slots
from common.local.end import LocalWorkerEnd
from common.local.wire import (
    MP_CONTEXT,
    Acked,
    Dead,
    Event,
    Published,
    Requeue,
    Result,
    Revoked,
    task_key,
)

__all__ = [
    "MP_CONTEXT",
    "Acked",
    "Dead",
    "Event",
    "LocalBroker",
    "LocalWorkerEnd",
    "Published",
    "Requeue",
    "Result",
    "Revoked",
    "Slots",
    "task_key",
]
