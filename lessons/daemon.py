"""守护进程 (daemon processes): a daemon child dies with its parent.

First the course's own example, run for real: the emperor (皇帝) starts a steward (总管) with
``p.daemon = True`` and ends; at exit Python terminates daemonic children with SIGTERM, and a
plain child dies of it at once, so the steward never says 正在死亡. Without ``daemon`` Python
joins the child first: it sleeps its 3 s and says it.

Then the same in taskshuttle: the emperor is a producer with two local workers. Our workers
catch SIGTERM to finish the task in hand (what a task queue wants), so a daemon worker dies
with its parent a moment later rather than at once. On RabbitMQ the work outlives them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.factory import local_broker
from common.local import MP_CONTEXT
from common.schemas import TaskEnvelope
from common.settings import load_settings
from consumer.spec import WorkerSpec
from consumer.supervisor import WorkerPool
from consumer.worker import WorkerOptions
from lessons import procs, show
from lessons.i18n import t
from lessons.runner import (
    HANDLERS,
    CourseRun,
    broker_queue,
    project_env,
    python,
    rabbit_pool,
    run_course,
)


def emperor(daemon: bool, workers: int, count: int, seconds: float, tally: str) -> None:
    """Run as a program of its own: start the workers, hand them work, and end main()
    without stopping them. What happens next is up to `daemon`."""
    backend = local_broker(workers)
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
class ConsumerDies:
    """The `consumer` program killed while its daemon workers are busy."""

    sent: int
    done_before: int  # tasks done when it was killed
    workers_running_after: int  # its workers still running a moment after
    back_in_queue: int  # ready in the queue again, the tasks in hand among them
    done_later: int  # by a consumer started afterwards
    done_in_all: int  # distinct tasks done, in the end (sent: none lost)


@dataclass
class CourseDaemon:
    """The course's example, run for real: once with ``p.daemon = True``, once without."""

    steward_seconds: float
    runs: list[CourseRun]
    #: what `p.daemon = True` after `p.start()` raised (the course: "不然会直接报错")
    set_after_start: str


@dataclass
class Daemon:
    backend: str
    course: CourseDaemon | None = None
    runs: list[EmperorRun] = field(default_factory=list)
    broker: BrokerKeeps | None = None
    consumer: ConsumerDies | None = None


COURSE_CODE = """
from multiprocessing import Process
import time
def task(name):
    print('%s 总管正在活着' % name)
    time.sleep(3)
    print('%s 总管正在死亡' % name)
if __name__ == '__main__':
    p = Process(target=task, args=('egon',))
    p.daemon = True # 将进程P设置为守护进程 这一句一定要放在start方法前面,不然会直接报错
    p.start()
    print('皇帝寿终正寝')
"""
ALIVE, DYING, EMPEROR = "总管正在活着", "总管正在死亡", "皇帝寿终正寝"


def course_run(daemon: bool, seconds: float = 3.0) -> CourseRun:
    """The course's program, run as it is: the emperor's main ends at once."""
    return run_course("daemon", "daemon" if daemon else "plain", f"{seconds:g}", echo=show.echo)


def set_after_start() -> str:
    """Set `daemon` on a process that has started: what the course says raises."""
    child = MP_CONTEXT.Process(target=time.sleep, args=(0,))
    child.start()
    try:
        child.daemon = True
    except AssertionError as exc:
        return f"AssertionError: {exc}"
    finally:
        child.join()
    return "no error"


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


def consumer_dies(url: str, count: int = 12, seconds: float = 0.4) -> ConsumerDies:
    """Tasks in hand when the `consumer` program dies at once (SIGKILL): its daemon workers die
    with it, their tasks unacked, and the broker puts those back in the queue."""
    return procs.in_welfare_home(_consumer_dies, url, count, seconds)


def _consumer_dies(url: str, count: int, seconds: float) -> ConsumerDies:
    with (
        broker_queue(url, "daemon-consumer") as producer,
        tempfile.TemporaryDirectory(prefix="lesson-daemon-") as folder,
    ):
        tally = Path(folder) / "done.txt"
        payload = {"file": str(tally), "seconds": seconds}
        producer.publish(
            [TaskEnvelope(kind="lesson.tally", payload={**payload, "seq": i}) for i in range(count)]
        )
        consumer = subprocess.Popen(
            python(
                *("-m", "consumer", "--queue", producer.queue_name, "--workers", "2"),
                *("--prefetch", "1", "--handlers", "lessons.tasks"),
            ),
            env=project_env(url),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            procs.wait_for(lambda: _count_lines(tally) >= 2 or consumer.poll() is not None, 60)
            workers = procs.children_of(consumer.pid)
            time.sleep(seconds / 2)  # each worker part way into its next task
        finally:
            consumer.kill()  # the supervisor dies at once: no cleanup, no ack
            consumer.wait()
        done_before = _count_lines(tally)
        procs.wait_for(lambda: not any(procs.running(pid) for pid in workers), 10)
        running = sum(procs.running(pid) for pid in workers)
        procs.wait_for(lambda: producer.pending() >= count - done_before, 10)
        back = producer.pending()
        with rabbit_pool(url, producer, 2):
            procs.wait_for(lambda: len(_seqs(tally)) >= count, 60)
        return ConsumerDies(
            count, done_before, running, back, _count_lines(tally) - done_before, len(_seqs(tally))
        )


def _seqs(path: Path) -> set[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return {line.split()[1] for line in lines}


def run(backend: str = "local", url: str | None = None, steward_seconds: float = 3.0) -> Daemon:
    result = Daemon(backend)
    if show.is_live():
        show.heading(t("daemon.title", backend=backend))
        show.code(COURSE_CODE)
    with show.step("daemon.step.course", daemon="p.daemon = True"):
        with_daemon = course_run(True, steward_seconds)
    with show.step("daemon.step.course", daemon=t("daemon.without")):
        without = course_run(False, steward_seconds)
    with show.step("daemon.step.after_start"):
        raised = set_after_start()
    result.course = CourseDaemon(steward_seconds, [with_daemon, without], raised)
    show.part(render_course, result)
    for daemon in (True, False):
        with show.step("daemon.step.emperor", daemon=daemon):
            result.runs.append(run_emperor(daemon))
    show.part(render_local, result)
    if backend == "rabbitmq":
        broker_url = load_settings(amqp_url=url).amqp_url
        with show.step("daemon.step.broker"):
            result.broker = broker_keeps(broker_url)
        with show.step("daemon.step.consumer_dies"):
            result.consumer = consumer_dies(broker_url)
        show.part(render_broker, result)
    return result


def render(result: Daemon) -> None:
    show.heading(t("daemon.title", backend=result.backend))
    show.code(COURSE_CODE)
    for part in (render_course, render_local, render_broker):
        part(result)


def render_course(result: Daemon) -> None:
    course = result.course
    if course is None:
        return
    if not show.is_live():  # live, these lines were shown as they came
        for run in course.runs:
            show.note(t("daemon.course.printed", args=" ".join(run.args)))
            show.trace(f"{at:5.2f} s  {line}" for at, line in run.lines)
    show.table(
        t("daemon.course.table", seconds=course.steward_seconds),
        [
            t("daemon.col.run"),
            EMPEROR,
            ALIVE,
            DYING,
            t("daemon.col.emperor_exit"),
        ],
        [
            (
                "p.daemon = True" if run.args[0] == "daemon" else t("daemon.without"),
                run.printed(EMPEROR),
                run.printed(ALIVE),
                run.printed(DYING),
                run.exit_seconds,
            )
            for run in course.runs
        ],
    )
    show.note(t("daemon.course.after_start", error=course.set_after_start))
    daemonic, plain = course.runs
    as_the_course = daemonic.printed(DYING) == 0 and plain.printed(DYING) == 1
    show.note(
        t(
            "daemon.course.note" if as_the_course else "daemon.course.odd",
            daemon_exit=daemonic.exit_seconds,
            plain_exit=plain.exit_seconds,
            dying_daemon=daemonic.printed(DYING),
            dying_plain=plain.printed(DYING),
        )
    )


def render_local(result: Daemon) -> None:
    if not result.runs:
        return
    first = result.runs[0]
    show.table(
        t("daemon.local.table", count=first.sent),
        [
            t("daemon.col.workers"),
            t("daemon.col.running_after"),
            t("daemon.col.producer_gone"),
            t("daemon.col.done_sent"),
            t("daemon.col.left_running"),
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
    show.note(t("daemon.local.note"))


def render_broker(result: Daemon) -> None:
    if result.broker is None:
        return
    b = result.broker
    show.table(
        t("daemon.broker.table"),
        [
            t("daemon.col.sent"),
            t("daemon.col.producer_exit"),
            t("daemon.col.producer_ran"),
            t("daemon.col.in_broker"),
            t("daemon.col.done_later"),
        ],
        [(b.sent, b.producer_exit, b.producer_seconds, b.waiting_after_producer, b.done_later)],
    )
    c = result.consumer
    if c is not None:
        show.table(
            t("daemon.consumer.table"),
            [
                t("daemon.col.sent"),
                t("daemon.col.done_before"),
                t("daemon.col.workers_after"),
                t("daemon.col.back"),
                t("daemon.col.done_later"),
                t("daemon.col.done_in_all"),
            ],
            [
                (
                    c.sent,
                    c.done_before,
                    c.workers_running_after,
                    c.back_in_queue,
                    c.done_later,
                    f"{c.done_in_all} / {c.sent}",
                )
            ],
        )
    show.note(t("daemon.broker.note"))
