"""守护进程 (daemon processes): a daemon child dies with its parent.

The seed's emperor (皇帝) starts a steward (总管) with ``p.daemon = True``; when the emperor's
main code ends, Python terminates daemon children before the process exits, and joins
(waits for) every other child. Here the emperor is a producer with two local workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.local import LocalBroker
from common.schemas import TaskEnvelope
from common.settings import load_settings
from consumer.supervisor import WorkerPool, WorkerSpec
from consumer.worker import WorkerOptions
from lessons import procs, show
from lessons.runner import HANDLERS, broker_queue, project_env, python, rabbit_pool


def emperor(daemon: bool, workers: int, count: int, seconds: float, tally: str) -> None:
    """Run as a program of its own: start the workers, hand them work, and end main()
    without stopping them. What happens next is up to `daemon`."""
    backend = LocalBroker(slots=workers)
    # burst_idle: a worker left to itself exits once the queue stays empty.
    options = WorkerOptions(burst_idle=0.5)
    spec = WorkerSpec(load_settings(workers=workers), options, HANDLERS)
    pool = WorkerPool(spec, workers, slots=backend.slots, daemon=daemon)
    pool.start()
    pool.wait_ready()
    payload = {"file": tally, "seconds": seconds}
    backend.publish(
        [TaskEnvelope(kind="lesson.tally", payload={**payload, "seq": i}) for i in range(count)]
    )
    time.sleep(0.2)  # the workers get going
    print(json.dumps({"pid": os.getpid(), "workers": pool.pids}), flush=True)
    # 皇帝寿终正寝: main() ends here. No pool.stop(), no join().


@dataclass
class EmperorRun:
    daemon: bool
    sent: int
    #: Workers still running 0.1 s after main() returned.
    running_after_main: int
    #: Seconds from main() returning to the process being gone.
    exit_seconds: float
    done_when_gone: int  # tasks finished when the emperor's process was gone
    left_running: int  # workers still running after that


@dataclass
class BrokerKeeps:
    sent: int
    producer_exit: int
    producer_seconds: float
    waiting_after_producer: int  # in the broker, with the producer gone
    done_later: int  # by consumers started after the producer had exited


@dataclass
class Daemon:
    backend: str
    runs: list[EmperorRun]
    broker: BrokerKeeps | None


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_emperor(
    daemon: bool, workers: int = 2, count: int = 20, seconds: float = 0.1
) -> EmperorRun:
    with tempfile.TemporaryDirectory(prefix="lesson-daemon-") as folder:
        tally = Path(folder) / "done.txt"
        code = (
            "from lessons.daemon import emperor; "
            f"emperor({daemon}, {workers}, {count}, {seconds}, {str(tally)!r})"
        )
        program = subprocess.Popen(
            python("-c", code), env=project_env(), stdout=subprocess.PIPE, text=True
        )
        assert program.stdout is not None
        try:
            said = json.loads(program.stdout.readline())
            returned = time.monotonic()
            time.sleep(0.1)
            running = sum(procs.running(pid) for pid in said["workers"])
            program.wait(60)
            gone = time.monotonic() - returned
            done = _count_lines(tally)
            left = sum(procs.running(pid) for pid in said["workers"])
        finally:
            if program.poll() is None:
                program.kill()  # its workers die with it (parent-death signal)
                program.wait()
            program.stdout.close()
        return EmperorRun(daemon, count, running, round(gone, 3), done, left)


def broker_keeps(url: str, count: int = 20, seconds: float = 0.02) -> BrokerKeeps:
    """On RabbitMQ nothing dies with the producer: it sends, exits, and the work waits."""
    with (
        broker_queue(url, "daemon") as producer,
        tempfile.TemporaryDirectory(prefix="lesson-daemon-") as folder,
    ):
        tally = Path(folder) / "done.txt"
        payload = json.dumps({"file": str(tally), "seconds": seconds})
        started = time.monotonic()
        sent = subprocess.run(
            python(
                *("-m", "producer", "--backend", "rabbitmq", "--queue", producer.queue_name),
                *("--count", str(count), "--kind", "lesson.tally"),
                *("--payload", payload, "--handlers", "lessons.tasks", "--quiet"),
            ),
            env=project_env(url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
        waiting = producer.pending()
        with rabbit_pool(url, producer, 2):
            procs.wait_for(lambda: _count_lines(tally) >= count, 60)
        return BrokerKeeps(count, sent.returncode, round(took, 3), waiting, _count_lines(tally))


def run(backend: str = "local", url: str | None = None) -> Daemon:
    runs = [run_emperor(True), run_emperor(False)]
    keeps = broker_keeps(load_settings(amqp_url=url).amqp_url) if backend == "rabbitmq" else None
    return Daemon(backend, runs, keeps)


def render(result: Daemon) -> None:
    show.heading(f"守护进程 (daemon processes) · backend {result.backend}")
    show.table(
        "the same job, its producer's main() ending with the workers still busy",
        [
            "workers",
            "running 0.1 s after main()",
            "process gone after (s)",
            "tasks done / sent",
            "left running",
        ],
        [
            (
                "daemon=True" if r.daemon else "daemon=False",
                r.running_after_main,
                r.exit_seconds,
                f"{r.done_when_gone} / {r.sent}",
                r.left_running,
            )
            for r in result.runs
        ],
    )
    show.note(
        "daemon=True: at exit Python terminates daemon children; each finishes the task in hand "
        "and dies with its parent, and the rest of the work dies with the queue. daemon=False: "
        "Python joins the children first; the parent cannot end until they have finished (here "
        "they stop once the queue is empty; a worker that never stops would hang it for good)."
    )
    if result.broker is None:
        return
    b = result.broker
    show.table(
        "RabbitMQ: the producer sends and exits; nothing dies with it",
        ["tasks sent", "producer exit", "producer ran (s)", "then in the broker", "done later"],
        [(b.sent, b.producer_exit, b.producer_seconds, b.waiting_after_producer, b.done_later)],
    )
    show.note(
        "Nothing on RabbitMQ is a daemon of the producer: the broker holds the work (durable "
        "queue, persistent messages) whoever comes and goes. The daemon role moves to the "
        "consumer: its workers are daemon children of the `consumer` supervisor, and die with "
        "it; their unacked tasks go back to the queue."
    )
