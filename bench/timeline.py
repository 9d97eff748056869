"""Where the milliseconds of one task go on RabbitMQ: a per-hop timeline.

    python -m bench.timeline                       # 300 tasks one at a time, quorum queue
    python -m bench.timeline --queue-type classic --tasks 500 --rate 1000

Workers run as `consumer` runs them (a `WorkerPool` of the ``timeline`` kind below); the
producer is a `RabbitBackend` with results, as `producer --wait` opens it. For each task,
wall-clock times (one machine, one clock):

    publish call -> publish returned (confirmed) -> handler start -> handler end
    -> result received by the producer

The handler (``timeline`` in `bench.tasks`) notes when it starts and ends, and returns
both, so they come back in the result. Without ``--rate`` each task is published once the
previous result is in (no queueing anywhere: the floor of each hop); with ``--rate`` tasks
are paced as `producer --rate` paces them, and results are taken while waiting, as
`producer.run` does.
Prints the median and p99 of each hop in milliseconds, and writes them as JSON with
``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from typing import Any

HOPS = (
    ("confirm", "publish call -> publish returned (confirmed)"),
    ("to_handler", "publish returned -> handler start (delivery, decode)"),
    ("handler", "handler start -> handler end"),
    ("to_producer", "handler end -> result received (result publish, delivery)"),
    ("total", "publish call -> result received"),
)


def _hops(called: float, returned: float, received: float, value: dict[str, float]) -> dict:
    return {
        "confirm": returned - called,
        "to_handler": value["start"] - returned,
        "handler": value["end"] - value["start"],
        "to_producer": received - value["end"],
        "total": received - called,
    }


def _pct(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] * 1000


def _one_by_one(producer: Any, tasks: int) -> list[dict[str, float]]:
    """Each task published once the previous result is in: nothing queues anywhere."""
    from common.schemas import TaskEnvelope, utcnow

    template = TaskEnvelope(kind="timeline")
    rows = []
    for number in range(tasks):
        task = template.model_copy(update={"id": f"{number:032x}", "created_at": utcnow()})
        called = time.time()
        producer.publish([task])
        returned = time.time()
        result = producer.receive_result(5.0)
        assert result is not None, "no result within 5 s"
        rows.append(_hops(called, returned, time.time(), result.value))
    return rows


def _paced(producer: Any, tasks: int, rate: float) -> list[dict[str, float]]:
    """As `producer --rate --wait` runs: `producer.run.send` and `collect` into a `Ledger`
    (which keeps every result); the times are the ledger's, put on the wall clock."""
    from common.ledger import Ledger
    from producer.run import Job, Progress, _publish_taking_results, _take_results, collect, send

    ledger, progress = Ledger(), Progress()
    offset = time.time() - time.perf_counter()
    job = Job(count=tasks, kind="timeline", rate=rate)
    send(
        job,
        producer,
        ledger,
        progress,
        between=lambda wait: _take_results(producer, ledger, progress, wait),
        publish=_publish_taking_results(producer, ledger, progress),
    )
    collect(producer, ledger, progress, until=time.perf_counter() + 30)
    rows = []
    for task_id, latency in ledger.latency.items():
        result = ledger.results[task_id][0]
        returned = ledger.sent[task_id] + offset
        rows.append(
            _hops(result.created_at.timestamp(), returned, returned + latency, result.value)
        )
    return rows


def measure(url: str, queue_type: str, tasks: int, rate: float | None, workers: int) -> dict:
    from common.defaults import QueueType
    from common.rabbitmq.backend import RabbitBackend
    from common.settings import load_settings
    from consumer.supervisor import WorkerPool, WorkerSpec
    from consumer.worker import WorkerOptions

    queue = f"bench.timeline.{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        amqp_url=url, queue=queue, workers=workers, queue_type=QueueType(queue_type)
    )
    pool = WorkerPool(WorkerSpec(settings, WorkerOptions(), ("bench.tasks",)), workers)
    producer = RabbitBackend(url, queue, want_results=True, queue_type=QueueType(queue_type))
    try:
        pool.start()
        pool.wait_ready()
        time.sleep(0.5)  # every worker's consumer registered
        rows = _one_by_one(producer, tasks) if rate is None else _paced(producer, tasks, rate)
    finally:
        producer.delete_queues()
        producer.close()
        pool.stop(timeout=10)
    figures = {
        key: {
            "what": what,
            "p50_ms": round(_pct([r[key] for r in rows], 50), 3),
            "p99_ms": round(_pct([r[key] for r in rows], 99), 3),
        }
        for key, what in HOPS
    }
    return {"queue_type": queue_type, "tasks": len(rows), "rate": rate, "hops": figures}


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
    print(f"{report['tasks']} tasks on a {args.queue_type} queue, rate {args.rate or 'one by one'}")
    for hop in report["hops"].values():
        print(f"  {hop['what']:<62} p50 {hop['p50_ms']:8.3f} ms   p99 {hop['p99_ms']:8.3f} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
