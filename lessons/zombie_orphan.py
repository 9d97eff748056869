"""僵尸进程与孤儿进程 (zombie and orphan processes).

A zombie is a child that has exited but whose parent has not yet collected its exit status:
its pid and an entry in /proc (state ``Z``) stay until the parent `join()`s (waits for) it.
An orphan is a child whose parent died: the kernel hands it to a new parent, pid 1 or the
nearest ancestor that registered as a "child subreaper" (the course's 儿童福利院, the
children's welfare home). The lesson names both: the home it sets up to watch its orphan, and
the one this machine gives an orphan of the lesson's own.

Linux only: it reads /proc and calls prctl.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from common.errors import TaskshuttleError
from common.local import MP_CONTEXT
from common.settings import load_settings
from lessons import procs, show
from lessons.i18n import t
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
class MachineHome:
    """Who adopts an orphan of this lesson's own process, outside its welfare home."""

    orphan_pid: int
    adopter_pid: int  # pid 1, or the nearest ancestor that is a child subreaper
    adopter_name: str  # /proc/<pid>/comm


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
    zombies: list[Zombie] = field(default_factory=list)
    pool: PoolReap | None = None
    orphan: Orphan | None = None
    machine: MachineHome | None = None
    guard: Guard | None = None


COURSE_TEXT = """
# 僵死进程
死了但是没有死透
当你开设了子进程 该进程死后不会立刻释放占用的进程号
因为我要让父进程能够查看到它开设的子进程的一些基本信息 占用的pid号 运行时间。。。
所有的进程都会步入僵死进程
父进程不死并且无限制的创建子进程并且子进程也不结束
回收子进程占用的pid号
父进程等待子进程运行结束
父进程调用join方法
# 孤儿进程
子进程存活 父进程以外存活
操作系统会开设一个“儿童福利院”专门管理孤儿进程回收相关资源
"""


@contextlib.contextmanager
def _quiet_supervisor() -> Iterator[None]:
    """The pool logs a worker's death as a warning; the lesson kills one on purpose, and
    shows it in its own words."""
    logger = logging.getLogger("taskshuttle")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    with _quiet_supervisor():
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


def _welfare_home(answer: Any, program: list[str] | None, url: str | None) -> None:
    """Runs in a child process that adopts orphans, so the lesson can watch and reap them:
    the course's orphan (no `program`), or the children of a killed supervisor."""
    procs.become_subreaper()
    try:
        answer.put(_orphan(os.getpid()) if program is None else _guard(program, url))
    except Exception as exc:  # carried back as one line, raised in the lesson process
        answer.put(str(exc))


def orphan() -> Orphan:
    """A child whose parent is SIGKILLed, inside a welfare home of the lesson's own."""
    return _in_welfare_home(None, None)


def guarded(program: list[str], url: str | None = None) -> Guard:
    """A supervisor program SIGKILLed: what its worker children do, in a welfare home."""
    return _in_welfare_home(program, url)


_STRAY_PARENT = (
    "import os, subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())])\n"
    "os._exit(0)  # at once: its child is an orphan\n"
)
_STRAY = (
    "import os, sys, time\n"
    "parent, deadline = int(sys.argv[1]), time.monotonic() + 10\n"
    "while os.getppid() == parent and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
    "print(os.getpid(), os.getppid(), flush=True)\n"
)


def machine_home() -> MachineHome:
    """Make an orphan of this process's own, outside any home the lesson set up, and see who
    the kernel gives it to. It reports and exits at once; its new parent reaps it."""
    parent = subprocess.Popen(
        python("-c", _STRAY_PARENT, _STRAY), stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    try:
        line = parent.stdout.readline().split()
    finally:
        parent.wait()
        parent.stdout.close()
    if len(line) != 2:
        raise TaskshuttleError("the orphan did not say who adopted it")
    orphan_pid, adopter = int(line[0]), int(line[1])
    try:
        name = (procs.PROC / str(adopter) / "comm").read_text().strip()
    except OSError:
        name = "?"
    return MachineHome(orphan_pid, adopter, name)


def _in_welfare_home(program: list[str] | None, url: str | None) -> Any:
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
    result = ZombieOrphan(backend)
    if show.is_live():
        show.heading(t("zombie.title", backend=backend))
        show.code(COURSE_TEXT)
    with show.step("zombie.step.zombies"):
        result.zombies = zombies()
    show.part(render_zombies, result)
    settings = load_settings(amqp_url=url)
    with contextlib.ExitStack() as stack:
        if backend == "local":
            with show.step("zombie.step.pool", backend=backend):
                _, pool = stack.enter_context(local_pool(2))
                result.pool = pool_reaps(pool)
            program = python(
                *("-m", "producer", "--backend", "local", "--workers", "2", "--quiet"),
                *("--kind", "sleep", "--payload", '{"seconds": 0.2}', "--count", "100000"),
            )
        else:
            producer = stack.enter_context(broker_queue(settings.amqp_url, "zombie-orphan"))
            with (
                show.step("zombie.step.pool", backend=backend),
                rabbit_pool(settings.amqp_url, producer, 2) as pool,
            ):
                result.pool = pool_reaps(pool)
            program = python("-m", "consumer", "--queue", producer.queue_name, "--workers", "2")
        show.part(render_pool, result)
        with show.step("zombie.step.orphan"):
            result.orphan = orphan()
        with show.step("zombie.step.machine"):
            result.machine = machine_home()
        show.part(render_orphan, result)
        with show.step("zombie.step.guard", program=" ".join(program[1:4])):
            result.guard = guarded(program, settings.amqp_url if backend == "rabbitmq" else None)
        show.part(render_guard, result)
    return result


def _zombie_row(z: Zombie) -> tuple[object, ...]:
    joined = z.state_joined or t("zombie.gone")
    return (z.pid, z.state_running, z.state_exited, z.state_later, joined, z.exitcode)


def render(result: ZombieOrphan) -> None:
    show.heading(t("zombie.title", backend=result.backend))
    show.code(COURSE_TEXT)
    for part in (render_zombies, render_pool, render_orphan, render_guard):
        part(result)


def render_zombies(result: ZombieOrphan) -> None:
    show.table(
        t("zombie.zombies.table"),
        [
            t("zombie.col.child"),
            t("zombie.col.running"),
            t("zombie.col.exited"),
            t("zombie.col.later"),
            t("zombie.col.joined"),
            "exitcode",
        ],
        [_zombie_row(z) for z in result.zombies],
    )
    all_z = all(z.state_exited == "Z" and z.state_later == "Z" for z in result.zombies)
    show.note(t("zombie.zombies.note" if all_z else "zombie.zombies.odd"))


def render_pool(result: ZombieOrphan) -> None:
    p = result.pool
    if p is None:
        return
    show.trace(
        [
            t("zombie.pool.killed", backend=result.backend, pid=p.killed_pid),
            t("zombie.pool.before", state=p.state_before_check or t("zombie.gone")),
            t(
                "zombie.pool.after",
                state=p.state_after_check or t("zombie.gone"),
                new=p.replacement_pid,
                alive=p.workers_after,
            ),
        ]
    )


def render_orphan(result: ZombieOrphan) -> None:
    o, m = result.orphan, result.machine
    if o is None:
        return
    show.heading(t("zombie.orphan.heading"))
    show.trace(
        [
            t("zombie.orphan.started", parent=o.parent_pid, child=o.child_pid, ppid=o.ppid_before),
            t("zombie.orphan.killed", ppid=o.ppid_after, state=o.state_after),
            t("zombie.orphan.home", home=o.home_pid),
        ]
    )
    if m is not None:
        key = "zombie.machine.init" if m.adopter_pid == 1 else "zombie.machine.subreaper"
        show.note(t(key, orphan=m.orphan_pid, pid=m.adopter_pid, name=m.adopter_name))


def render_guard(result: ZombieOrphan) -> None:
    g = result.guard
    if g is None:
        return
    show.table(
        t("zombie.guard.table", program=g.program, pid=g.supervisor_pid),
        [
            "pid",
            t("zombie.col.role"),
            t("zombie.col.ppid_after"),
            t("zombie.col.ended"),
            t("zombie.col.reaped_after"),
        ],
        [
            (
                c.pid,
                t(f"zombie.role.{c.role.replace(' ', '_')}") if c.role in ROLES else c.role,
                c.ppid_after,
                _ended(c.ended),
                c.seconds,
            )
            for c in g.children
        ],
        caption=t("zombie.guard.strays", strays=g.strays),
    )
    key = "zombie.guard.note" if g.strays == 0 else "zombie.guard.strays_note"
    where = "zombie.guard.rabbitmq" if result.backend == "rabbitmq" else "zombie.guard.local"
    show.note(t(key, strays=g.strays) + " " + t(where))


ROLES = ("worker", "resource tracker")


def _ended(text: str) -> str:
    """`procs.describe_exit`'s words, in the lesson's language."""
    if text.startswith("killed by "):
        return t("zombie.killed_by", signal=text.removeprefix("killed by "))
    if text.startswith("exit code "):
        return t("zombie.exit_code", code=text.removeprefix("exit code "))
    if text.startswith("still running"):
        return t("zombie.still_running")
    return text
