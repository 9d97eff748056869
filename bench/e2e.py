"""What one task with a result costs the broker: `producer --wait` through running consumers.

    python bench/e2e.py                                # 20,000 echo tasks, classic queue
    python bench/e2e.py --queue-type quorum --n 50000
    python bench/e2e.py --tree /tmp/before             # another checkout, for before/after

Starts ``consumer --workers W`` on a queue of its own, runs `producer.run.run_rabbitmq` with
``wait=True`` (what ``producer --wait`` runs) in this process, and reports the tasks per
second, the broker's CPU per task (the Erlang VM listening on the AMQP port, read with psutil
over the run) and how many acks the producer sent for its results (counted by wrapping
pika's `Channel.basic_ack` in this process). Run as a script, not with ``-m``: with
``--tree`` the project's modules are imported from that checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/e2e.py")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--url", default="amqp://guest:guest@localhost:5672/%2F")
    parser.add_argument("--queue-type", default="classic", choices=("classic", "quorum"))
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON object, no text")
    return parser.parse_args(argv)


def _count_acks() -> dict[str, int]:
    """Count the ack frames this process sends (the producer's, for its results: the
    consumer is another process): each is one call of pika's `Channel.basic_ack`, a single
    ack or a ``multiple=True`` one."""
    from pika.channel import Channel

    sent = {"acks": 0}
    basic_ack = Channel.basic_ack

    def counted_ack(self: Channel, delivery_tag: int = 0, multiple: bool = False) -> None:
        sent["acks"] += 1
        basic_ack(self, delivery_tag, multiple)

    Channel.basic_ack = counted_ack  # type: ignore[method-assign]
    return sent


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))  # the tree's own modules, bench's helpers included
    sent = _count_acks()
    import psutil

    from bench.broker import delete_prefixed
    from bench.procs import broker_pid
    from common.settings import Settings, split_urls
    from producer.run import Job, run_rabbitmq

    pid = broker_pid(urlsplit(split_urls(args.url)[0]).port or 5672)
    if pid is None:
        raise SystemExit(f"e2e: no broker found for {args.url}")
    broker = psutil.Process(pid)
    queue = f"bench.e2e.{uuid.uuid4().hex[:8]}"
    python = tree / ".venv" / "bin" / "python"
    consumer = subprocess.Popen(
        [
            str(python if python.exists() else sys.executable),
            *("-m", "consumer", "--queue", queue, "--queue-type", args.queue_type),
            *("--workers", str(args.workers), "--url", args.url, "--log-format", "json"),
        ],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = Settings(amqp_url=args.url, queue=queue, queue_type=args.queue_type)
    try:
        time.sleep(3)  # the consumer's workers connected
        job = Job(count=args.n, kind="echo", payload={"data": "x" * 200})
        cpu_before, start = sum(broker.cpu_times()[:2]), time.perf_counter()
        ledger = run_rabbitmq(job, settings, wait=True, timeout=300)
        seconds = time.perf_counter() - start
        broker_cpu = sum(broker.cpu_times()[:2]) - cpu_before
    finally:
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(30)
        delete_prefixed(args.url, queue, known=[queue, f"{queue}.dlq"])
    done = ledger.summary("rabbitmq")["done"]
    report = {
        "tree": str(tree),
        "queue_type": args.queue_type,
        "tasks": args.n,
        "done": done,
        "tasks_per_s": round(args.n / seconds),
        "broker_us_per_task": round(broker_cpu / args.n * 1e6),
        "result_acks": sent["acks"],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{tree}: {report['tasks_per_s']:,} tasks/s, broker {report['broker_us_per_task']} "
            f"us/task, {sent['acks']:,} acks for {done:,} results ({args.queue_type})"
        )
    return 0 if done == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
