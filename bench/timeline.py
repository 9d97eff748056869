"""Where the milliseconds of one task go on RabbitMQ: a per-hop timeline.

    python -m bench.timeline                       # 300 tasks one at a time, quorum queue
    python -m bench.timeline --queue-type classic --tasks 2000 --rate 1000

Workers run as `consumer` runs them (a `WorkerPool` of the ``timeline`` kind below); the
producer is a `RabbitBackend` with results, as `producer --wait` opens it. For each task,
wall-clock times (one machine, one clock) at each hand-off, from one thread to another or
through the broker:

    publish call          the producer's thread, just after the task is built
    sent                  the producer's I/O thread writes it to the socket
    delivered             a worker's I/O thread takes it from the socket
    handler start, end    the worker's thread (the ``timeline`` handler returns both)
    result queued         the worker's thread hands the result to its I/O thread
    result sent           the worker's I/O thread writes it to the socket
    result delivered      the producer's I/O thread takes it from the socket
    recorded              the producer's thread records it (what a user's latency ends at)

and, beside them, when the publish returned (confirmed: that wait is not on the task's way
to its result, which often comes first). The I/O threads' times come from wrappers put
around pika's `Channel.basic_publish` and `Channel.basic_consume` (and the result's hand-off
from `common.rabbitmq.link.Link.ack_with_result`) when this module runs as the program (and
in the worker processes it starts, which run this module again as ``__mp_main__``):
importing it changes nothing. Each worker process writes its times to a file as it exits.

Without ``--rate`` each task is published once the previous result is in (no queueing
anywhere: the floor of each hop); with ``--rate`` tasks are paced as `producer --rate --wait`
paces them (`producer.run.send`, results taken while waiting). Prints the median, p90 and
p99 of each hop in milliseconds, and writes them as JSON with ``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing.util
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

#: Where worker processes write their times (set by `measure` for the processes it starts).
TRACE_ENV = "TASKSHUTTLE_BENCH_TIMELINE_DIR"

#: (key, from, to, what): each hop between two stamps of a task.
HOPS = (
    ("to_io", "called", "sent", "publish call -> producer's I/O thread sends it"),
    ("broker_in", "sent", "delivered", "-> a worker's I/O thread has it (broker)"),
    ("to_handler", "delivered", "start", "-> handler start (hand-off, decode)"),
    ("handler", "start", "end", "-> handler end"),
    ("to_queue", "end", "queued", "-> result built and queued for the I/O thread"),
    ("to_io_back", "queued", "result_sent", "-> worker's I/O thread sends it"),
    ("broker_back", "result_sent", "result_delivered", "-> producer's I/O thread has it (broker)"),
    ("to_record", "result_delivered", "recorded", "-> producer's thread records it"),
    ("total", "called", "recorded", "publish call -> result recorded"),
    ("confirm", "called", "returned", "(beside: publish call -> publish returned, confirmed)"),
)

#: task id -> stamp name -> wall-clock time, in this process.
STAMPS: dict[str, dict[str, float]] = {}


def _stamp(task_id: str | None, name: str) -> None:
    if task_id:
        STAMPS.setdefault(task_id, {})[name] = time.time()


def _trace_channels() -> None:
    """Stamp each I/O thread hand-off where it happens: in pika's `Channel.basic_publish`
    (sent) and in the callback each `Channel.basic_consume` registers (delivered), both run
    by the I/O thread, and in `Link.ack_with_result`, where a worker's thread queues a result
    for its I/O thread. A task's message carries its id as ``message_id``, a result's as
    ``correlation_id``; task events carry neither, and are not stamped."""
    from pika.channel import Channel

    from common.rabbitmq.link import Link

    basic_publish, basic_consume = Channel.basic_publish, Channel.basic_consume
    ack_with_result = Link.ack_with_result

    def publish(self: Channel, exchange: str, key: str, body: bytes, props: Any = None, *a: Any):
        if props is not None and props.correlation_id:
            _stamp(props.correlation_id, "result_sent")
        elif props is not None:
            _stamp(props.message_id, "sent")
        basic_publish(self, exchange, key, body, props, *a)

    def consume(self: Channel, queue: str, on_message: Any, *args: Any, **kwargs: Any) -> Any:
        def stamped(channel: Any, method: Any, props: Any, body: bytes) -> None:
            if props.correlation_id:
                _stamp(props.correlation_id, "result_delivered")
            else:
                _stamp(props.message_id, "delivered")
            on_message(channel, method, props, body)

        return basic_consume(self, queue, stamped, *args, **kwargs)

    def queue_result(self: Link, tag: int, message: Any) -> None:
        _stamp(message.properties.correlation_id, "queued")
        ack_with_result(self, tag, message)

    Channel.basic_publish = publish  # type: ignore[method-assign]
    Channel.basic_consume = consume  # type: ignore[method-assign]
    Link.ack_with_result = queue_result  # type: ignore[method-assign]


def _dump_stamps(folder: str) -> None:
    path = Path(folder) / f"{os.getpid()}.json"
    path.write_text(json.dumps(STAMPS), encoding="utf-8")


if __name__ in ("__main__", "__mp_main__"):  # the program, or a worker process it started
    _trace_channels()
    if __name__ == "__mp_main__" and os.environ.get(TRACE_ENV):
        # Worker processes leave through multiprocessing's exit path, which runs this.
        multiprocessing.util.Finalize(
            None, _dump_stamps, args=(os.environ[TRACE_ENV],), exitpriority=50
        )


def _one_by_one(producer: Any, tasks: int) -> None:
    """Each task published once the previous result is in: nothing queues anywhere."""
    from common.schemas import TaskEnvelope, utcnow

    template = TaskEnvelope(kind="timeline")
    for number in range(tasks):
        task = template.model_copy(update={"id": f"{number:032x}", "created_at": utcnow()})
        _stamp(task.id, "called")
        producer.publish([task])
        _stamp(task.id, "returned")
        result = producer.receive_result(5.0)
        assert result is not None, "no result within 5 s"
        _stamp(result.task_id, "recorded")
        _note_handler(result.task_id, result.value)


def _paced(producer: Any, tasks: int, rate: float) -> None:
    """As `producer --rate --wait` runs: `producer.run.send` and `collect`, into the
    producer's `Tally`, whose `record_result` is the end of each task's way."""
    from producer.ledger import Tally
    from producer.run import Job, Progress, collect, publish_taking_results, send, take_results

    job = Job(count=tasks, kind="timeline", rate=rate)
    ledger, progress = Tally(job.numbering), Progress()
    record_result = ledger.record_result

    def record(result: Any) -> None:
        _stamp(result.task_id, "recorded")
        _note_handler(result.task_id, result.value)
        record_result(result)

    ledger.record_result = record  # type: ignore[method-assign]
    publish = publish_taking_results(producer, ledger, progress)

    def timed_publish(batch: list[Any]) -> None:
        for task in batch:  # built just before: the publish call
            _stamp(task.id, "called")
        publish(batch)
        for task in batch:
            _stamp(task.id, "returned")

    send(
        job,
        producer,
        ledger,
        progress,
        between=lambda wait: take_results(producer, ledger, progress, wait),
        publish=timed_publish,
    )
    collect(producer, ledger, progress, until=time.perf_counter() + 30)


def _note_handler(task_id: str, value: dict[str, float]) -> None:
    STAMPS.setdefault(task_id, {}).update(start=value["start"], end=value["end"])


def _merge_worker_stamps(folder: Path) -> None:
    for path in folder.glob("*.json"):
        for task_id, stamps in json.loads(path.read_text(encoding="utf-8")).items():
            STAMPS.setdefault(task_id, {}).update(stamps)


def _pct(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000


def _figures(rows: list[dict[str, float]]) -> dict[str, Any]:
    figures = {}
    for key, start, end, what in HOPS:
        values = [row[end] - row[start] for row in rows]
        percentiles = {f"p{pct}_ms": round(_pct(values, pct), 3) for pct in (50, 90, 99)}
        figures[key] = {"what": what, **percentiles}
    return figures


def measure(url: str, queue_type: str, tasks: int, rate: float | None, workers: int) -> dict:
    from common.defaults import QueueType
    from common.factory import Role, open_backend
    from common.settings import load_settings
    from consumer.spec import WorkerSpec
    from consumer.supervisor import WorkerPool
    from consumer.worker import WorkerOptions

    queue = f"bench.timeline.{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        amqp_url=url, queue=queue, workers=workers, queue_type=QueueType(queue_type)
    )
    with tempfile.TemporaryDirectory(prefix="timeline-") as folder:
        os.environ[TRACE_ENV] = folder  # the workers started next write their stamps there
        pool = WorkerPool(WorkerSpec(settings, WorkerOptions(), ("bench.tasks",)), workers)
        producer: Any = open_backend(settings, Role.PRODUCER, results=True)
        try:
            pool.start()
            pool.wait_ready()
            time.sleep(0.5)  # every worker's consumer registered
            if rate is None:
                _one_by_one(producer, tasks)
            else:
                _paced(producer, tasks, rate)
        finally:
            producer.delete_queues()
            producer.close()
            pool.stop(timeout=10)
            del os.environ[TRACE_ENV]
        _merge_worker_stamps(Path(folder))
    names = {name for _, start, end, _ in HOPS for name in (start, end)}
    rows = [stamps for stamps in STAMPS.values() if names <= stamps.keys()]
    if not rows:
        raise SystemExit("timeline: no task has every stamp (did the workers exit cleanly?)")
    return {"queue_type": queue_type, "tasks": len(rows), "rate": rate, "hops": _figures(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline")
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--queue-type", default="quorum", choices=("classic", "quorum"))
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = measure(args.url, args.queue_type, args.tasks, args.rate, args.workers)
    rate = args.rate or "one by one"
    print(f"{report['tasks']} tasks on a {args.queue_type} queue, rate {rate}")
    print(f"  {'':<56} {'p50':>9} {'p90':>9} {'p99':>9}")
    for hop in report["hops"].values():
        print(
            f"  {hop['what']:<56} {hop['p50_ms']:6.3f} ms"
            f" {hop['p90_ms']:6.3f} ms {hop['p99_ms']:6.3f} ms"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
