"""Peak RSS of the `producer` command as a run grows: does it keep every task, or only those
in flight?

    python -m bench.rss --backend local --counts 10000,100000,1000000
    python -m bench.rss --backend rabbitmq --counts 10000,100000   # with 2 consumers running
    python -m bench.rss --tree /tmp/before ...   # the same, on another checkout's producer

Each count runs ``producer --backend B --count N --workers 2 --quiet --json`` (RabbitMQ:
``--wait``, with ``consumer --workers 2`` started on a queue of its own and stopped after) and
reads the producer's peak resident set from the kernel: the command is started by a small
Python process that waits for it with `os.wait4`, whose ``ru_maxrss`` is the largest of the
two (the starter's is a few MB: Linux counts the pre-exec image too, so the harness itself
must not be that parent).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

#: Run by a fresh interpreter: start argv[2:], wait for it, write its peak RSS (KiB) to
#: argv[1], exit with its status.
_STARTER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""

#: The handler of the bench's other cases (no work, so the figure is the producer's own).
HANDLERS = "bench.tasks"


def _tree_python(tree: Path) -> str:
    venv = tree / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def producer_peak(
    tree: Path,
    backend: str,
    count: int,
    *,
    workers: int = 2,
    url: str | None = None,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run one producer to the end: its peak RSS in MiB, its summary, and the wall time."""
    python = _tree_python(tree)
    queue = f"bench.rss.{uuid.uuid4().hex[:8]}"
    consumer: subprocess.Popen[bytes] | None = None
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [python, "-m", "producer", "--backend", backend, "--count", str(count)]
    command += ["--workers", str(workers), "--quiet", "--json", "--timeout", str(timeout)]
    if backend == "rabbitmq":
        command += ["--wait", "--queue", queue]
        if url:
            command += ["--url", url]
        consumer_command = [python, "-m", "consumer", "--backend", "rabbitmq", "--queue", queue]
        consumer_command += ["--workers", str(workers), "--handlers", HANDLERS]
        if url:
            consumer_command += ["--url", url]
        consumer = subprocess.Popen(
            consumer_command,
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    with tempfile.NamedTemporaryFile("r", suffix=".kib") as peak:
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-c", _STARTER, peak.name, *command],
                cwd=tree,
                env=env,
                capture_output=True,
                timeout=timeout + 60,
                check=False,
            )
        finally:
            if consumer is not None:
                _stop(consumer)
                _delete_queues(url, queue)
        seconds = time.perf_counter() - started
        kib = int(peak.read() or 0)
    if done.returncode != 0:
        raise RuntimeError(
            f"producer exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}"
        )
    summary = json.loads(done.stdout)
    return {
        "count": count,
        "peak_rss_mib": round(kib / 1024, 1),
        "seconds": round(seconds, 2),
        "sent": summary["sent"],
        "done": summary["done"],
        "throughput_per_s": summary["throughput_per_s"],
    }


def _stop(consumer: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the consumer's whole group (it waits for its workers), SIGKILL if late."""
    try:
        os.killpg(consumer.pid, signal.SIGTERM)
        consumer.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait()
    except ProcessLookupError:
        pass


def _delete_queues(url: str | None, queue: str) -> None:
    from bench.broker import delete_prefixed
    from common.defaults import DEFAULT_AMQP_URL
    from common.rabbitmq.topology import QueueNames

    delete_prefixed(url or DEFAULT_AMQP_URL, queue, known=QueueNames(queue).with_companions())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("local", "rabbitmq"), default="local")
    parser.add_argument("--counts", default="10000,100000,1000000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--url", default=os.environ.get("AMQP_URL"))
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        row = producer_peak(args.tree, args.backend, count, workers=args.workers, url=args.url)
        row["load_after"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
