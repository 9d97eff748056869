"""僵尸进程与孤儿进程 (zombie and orphan processes).

A zombie is a child that has exited but whose parent has not yet collected its exit status:
its pid and an entry in /proc (state ``Z``) stay until the parent `join()`s (waits for) it.
An orphan is a child whose parent died: the kernel hands it to a new parent, pid 1 or the
nearest ancestor that registered as a "child subreaper" (the seed's children's welfare home).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from common.errors import TaskshuttleError
from common.local import MP_CONTEXT
from common.settings import load_settings
from lessons import procs, show
from lessons.runner import broker_queue, local_pool, project_env, python, rabbit_pool


@dataclass
class Zombie:
    pid: int
    state_running: str | None  # before it exits
    state_exited: str | None  # exited, not joined: Z
    state_later: str | None  # still Z a moment later: nobody else reaps it
    state_joined: str | None  # after join(): None, no /proc entry left
    exitcode: int | None


@dataclass
class PoolReap:
    killed_pid: int
    state_before_check: str | None  # Z: its supervisor has not looked yet
    state_after_check: str | None  # None: WorkerPool.check() joined it
    replacement_pid: int | None
    workers_after: int


@dataclass
class Orphan:
    parent_pid: int
    child_pid: int
    ppid_before: int | None
    ppid_after: int | None
    home_pid: int  # the subreaper that adopted it
    state_after: str | None  # still running: parent gone, child alive


@dataclass
class GuardedChild:
    pid: int
    role: str
    ppid_after: int | None  # a moment after the supervisor died
    ended: str  # how it ended (killed by SIGKILL, exit code 69...)
    seconds: float | None  # after the supervisor's death


@dataclass
class Guard:
    program: str
    supervisor_pid: int
    children: list[GuardedChild]
    strays: int  # children still running 10 s after the supervisor died


@dataclass
class ZombieOrphan:
    backend: str
    zombies: list[Zombie]
    pool: PoolReap
    orphan: Orphan
    guard: Guard


def _exit_when(told: Any) -> None:
    told.wait(30)


def zombies(count: int = 3) -> list[Zombie]:
    """Children that exit and are not joined: zombies, until join() reaps them."""
    told = MP_CONTEXT.Event()
    children = [MP_CONTEXT.Process(target=_exit_when, args=(told,)) for _ in range(count)]
    for child in children:
        child.start()
    # They wait for `told`, so none exits (and is quietly reaped by the next start()) early.
    running = {c.pid: procs.state(c.pid) for c in children if c.pid}
    told.set()
    # Read /proc only: even `is_alive()` would reap the child (it calls waitpid).
    procs.wait_for(lambda: all(procs.state(pid) == "Z" for pid in running), 30)
    exited = {pid: procs.state(pid) for pid in running}
    time.sleep(0.3)
    later = {pid: procs.state(pid) for pid in running}
    for child in children:
        child.join()
    return [
        Zombie(
            c.pid or 0,
            running[c.pid],
            exited[c.pid],
            later[c.pid],
            procs.state(c.pid or 0),
            c.exitcode,
        )
        for c in children
    ]


def pool_reaps(pool: Any) -> PoolReap:
    """Kill one worker of a running pool: a zombie until the supervisor's check() joins it."""
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    procs.wait_for(lambda: procs.state(victim) == "Z", 10)
    before = procs.state(victim)
    pool.check(timeout=5)  # what the supervisor's loop does every half second
    after = procs.state(victim)
    new = [pid for pid in pool.pids if pid != victim]
    return PoolReap(victim, before, after, new[-1] if new else None, pool.alive())


_ORPHAN_PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _orphan(home: int) -> Orphan:
    parent = subprocess.Popen(python("-c", _ORPHAN_PARENT), stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    before = procs.parent_of(child)
    parent.kill()  # SIGKILL: the parent dies without a word to its child
    parent.wait()
    parent.stdout.close()
    procs.wait_for(lambda: procs.parent_of(child) != parent.pid, 5)
    orphan = Orphan(parent.pid, child, before, procs.parent_of(child), home, procs.state(child))
    os.kill(child, signal.SIGTERM)  # the home ends and reaps it: no stray, no zombie
    os.waitpid(child, 0)
    return orphan


def _guard(program: list[str], url: str | None) -> Guard:
    """Start a supervisor program, SIGKILL it, and watch what its worker children do."""
    supervisor = subprocess.Popen(
        program, env=project_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def started() -> bool:
        if supervisor.poll() is not None:
            raise TaskshuttleError(f"{' '.join(program[1:3])} exited with {supervisor.returncode}")
        return sum(procs.role(p) == "worker" for p in procs.children_of(supervisor.pid)) >= 2

    if not procs.wait_for(started, 30):
        supervisor.kill()
        supervisor.wait()
        raise TaskshuttleError(f"{' '.join(program[1:3])} did not start its workers")
    time.sleep(1.0)  # let each worker finish starting (and arm its parent-death signal)
    children = {pid: procs.role(pid) for pid in procs.children_of(supervisor.pid)}
    supervisor.kill()  # a crash: no `finally`, no stop() of the pool
    died = time.monotonic()
    supervisor.wait()
    time.sleep(0.05)
    ppids = {pid: procs.parent_of(pid) for pid in children}
    ended: dict[int, tuple[str, float]] = {}
    deadline = died + 10
    while len(ended) < len(children) and time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)  # adopted: they are ours to reap now
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
        elif pid in children:
            ended[pid] = (procs.describe_exit(status), round(time.monotonic() - died, 3))
    strays = [pid for pid in children if pid not in ended]
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    rows = [
        GuardedChild(pid, role, ppids[pid], *ended.get(pid, ("still running: killed", None)))
        for pid, role in children.items()
    ]
    return Guard(" ".join(program[1:4]), supervisor.pid, rows, len(strays))


def _welfare_home(answer: Any, program: list[str], url: str | None) -> None:
    """Runs in a child process that adopts orphans, so the lesson can watch and reap them."""
    procs.become_subreaper()
    try:
        answer.put((_orphan(os.getpid()), _guard(program, url)))
    except Exception as exc:  # carried back as one line, raised in the lesson process
        answer.put(str(exc))


def orphans(program: list[str], url: str | None = None) -> tuple[Orphan, Guard]:
    answer = MP_CONTEXT.Queue()
    home = MP_CONTEXT.Process(
        target=_welfare_home, args=(answer, program, url), name="welfare-home"
    )
    home.start()
    try:
        got = answer.get(timeout=90)
        if isinstance(got, str):
            raise TaskshuttleError(got)
        return got
    finally:
        home.join(30)
        answer.close()
        answer.join_thread()


def run(backend: str = "local", url: str | None = None) -> ZombieOrphan:
    found = zombies()
    if backend == "local":
        with local_pool(2) as (_, pool):
            reap = pool_reaps(pool)
        program = python(
            *("-m", "producer", "--backend", "local", "--workers", "2", "--quiet"),
            *("--kind", "sleep", "--payload", '{"seconds": 0.2}', "--count", "100000"),
        )
        orphan, guard = orphans(program)
    else:
        settings = load_settings(amqp_url=url)
        with broker_queue(settings.amqp_url, "zombie-orphan") as producer:
            with rabbit_pool(settings.amqp_url, producer, 2) as pool:
                reap = pool_reaps(pool)
            program = python("-m", "consumer", "--queue", producer.queue_name, "--workers", "2")
            orphan, guard = orphans(program, settings.amqp_url)
    return ZombieOrphan(backend, found, reap, orphan, guard)


def _zombie_row(z: Zombie) -> tuple[object, ...]:
    joined = z.state_joined or "gone"
    return (z.pid, z.state_running, z.state_exited, z.state_later, joined, z.exitcode)


def render(result: ZombieOrphan) -> None:
    show.heading(f"僵尸进程与孤儿进程 (zombie and orphan processes) · backend {result.backend}")
    show.table(
        "children that exited and were not joined (state from /proc/<pid>/stat)",
        ["child pid", "running", "exited", "0.3 s later", "after join()", "exitcode"],
        [_zombie_row(z) for z in result.zombies],
    )
    show.note(
        "Z = zombie: dead, but its pid and exit status wait for the parent. join() collects "
        "them (waitpid) and the entry is gone. A parent that starts children forever and never "
        "joins them fills the process table with zombies."
    )
    p = result.pool
    show.trace(
        [
            f"a worker pool ({result.backend}): worker {p.killed_pid} killed with SIGKILL",
            f"  its state until the supervisor looks: {p.state_before_check}",
            f"  after WorkerPool.check() joined it: {p.state_after_check or 'gone'}; "
            f"replaced by {p.replacement_pid}; workers alive: {p.workers_after}",
        ]
    )
    o = result.orphan
    show.heading("an orphan")
    show.trace(
        [
            f"parent {o.parent_pid} started child {o.child_pid}: the child's ppid is "
            f"{o.ppid_before}",
            f"parent killed with SIGKILL: the child's ppid is now {o.ppid_after}, "
            f"its state {o.state_after}",
            f"{o.home_pid} is a subreaper (PR_SET_CHILD_SUBREAPER) standing in for pid 1;",
            "it adopted the orphan, then ended and reaped it.",
        ]
    )
    g = result.guard
    show.table(
        f"the supervisor `{g.program} ...` (pid {g.supervisor_pid}) killed with SIGKILL: "
        "its children",
        ["pid", "role", "ppid after", "how it ended", "reaped after (s)"],
        [(c.pid, c.role, c.ppid_after, c.ended, c.seconds) for c in g.children],
        caption=f"still running 10 s later (strays): {g.strays}",
    )
    show.note(
        "Each worker asked the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG) and "
        "also watches os.getppid(): orphaned, it ends at once instead of running on unsupervised."
        + (
            " On RabbitMQ nothing is lost by it: the broker redelivers whatever it held unacked."
            if result.backend == "rabbitmq"
            else " Locally the queue died with the parent anyway."
        )
    )
