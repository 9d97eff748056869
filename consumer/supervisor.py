"""Worker processes and the supervisor that starts, reaps and replaces them.

The seed course's process lessons, applied: every worker is a daemon child; every child that
exits is joined (so none lingers as a zombie); a worker asks the kernel to signal it when
its parent dies (``PR_SET_PDEATHSIG``) and also watches ``os.getppid()``, so a killed
supervisor leaves no stray orphans; SIGINT and SIGTERM mean "finish the task in hand, then
stop".
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from common.backend import WorkerBackend
from common.errors import ConfigError, TaskshuttleError
from common.local import MP_CONTEXT
from common.settings import LOG_FORMAT, Settings
from consumer.handlers import import_handlers, registry
from consumer.worker import EXIT_TASK_TIMEOUT, Worker, WorkerOptions

log = logging.getLogger("taskshuttle.supervisor")

_PR_SET_PDEATHSIG = 1
#: Exit code of a worker that found its supervisor gone.
EXIT_ORPHANED = 69


class CrashLoop(TaskshuttleError):
    """Workers keep dying: the restart budget is spent."""


class WorkerBackendSource(Protocol):
    """How a worker gets its backend. It crosses into the worker process (pickled), and
    `connect` runs there."""

    def connect(self, settings: Settings) -> WorkerBackend: ...


@dataclass(frozen=True)
class OwnConnection:
    """Each worker opens a connection of its own, through the one factory (RabbitMQ)."""

    def connect(self, settings: Settings) -> WorkerBackend:
        from common.factory import Role, open_backend

        backend = open_backend(settings, Role.WORKER)
        assert isinstance(backend, WorkerBackend)  # only the producer role can be local
        return backend


class SlotHooks(Protocol):
    """A backend that lives in the supervisor's own process (the local one: `LocalBroker.slots`)
    follows its workers slot by slot."""

    def worker_end(self, slot: int) -> WorkerBackendSource:
        """What the worker about to start in `slot` takes with it."""
        ...

    def on_started(self, slot: int) -> object:
        """The worker in `slot` has started with its end."""
        ...

    def on_death(self, slot: int) -> object:
        """The worker in `slot` died unexpectedly; its replacement starts next."""
        ...

    def wake(self, count: int) -> object:
        """The pool is stopping: wake `count` workers that wait for work, so they see it
        at once instead of at the end of their poll."""
        ...


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, picklable (it crosses a process start)."""

    settings: Settings
    options: WorkerOptions
    handler_modules: tuple[str, ...] = ()
    #: How the worker gets its backend. A pool with `slots` gives each worker its own end.
    backend: WorkerBackendSource = field(default=OwnConnection(), repr=False)
    #: Runs first in each worker process, with `init_args` (a lesson hands its handlers a
    #: shared `multiprocessing.Lock` this way, as `multiprocessing.Pool`'s initializer does).
    initializer: Callable[..., object] | None = None
    init_args: tuple[Any, ...] = ()
    #: The workers log at the level their parent was set to.
    log_level: int = field(default_factory=lambda: logging.getLogger().getEffectiveLevel())


def _die_with_parent(parent_pid: int) -> None:
    """End this worker as soon as its supervisor is gone, however it went.

    Dying at once is safe: whatever this worker held was not acked, so RabbitMQ hands it to
    another consumer (and with the local backend, the queue died with the parent anyway).
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:  # portable fallback, and it covers a parent that died before prctl
        while True:
            if os.getppid() != parent_pid:
                os._exit(EXIT_ORPHANED)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(spec: WorkerSpec, slot: int, parent_pid: int, stop_all: Any, ready: Any) -> None:
    """Entry point of a worker process."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _die_with_parent(parent_pid)

    class _Either:
        def is_set(self) -> bool:
            return stop.is_set() or stop_all.is_set()

    logging.basicConfig(level=spec.log_level, format=LOG_FORMAT)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        if spec.initializer is not None:
            spec.initializer(*spec.init_args)
        import_handlers(list(spec.handler_modules))
        backend = spec.backend.connect(spec.settings)
        worker = Worker(backend, registry, spec.options, _Either(), spec.settings.queue)
        ready.release()
        worker.run()
        backend.close()
    except TaskshuttleError as exc:
        print(f"worker {os.getpid()}: error: {exc}", file=sys.stderr)
        sys.exit(3)


class WorkerPool:
    """N worker processes, kept at N: dead ones are reaped and replaced.

    With `slots` (the local backend's `LocalBroker.slots`), each worker takes its own end of
    a queue that lives in this process, and a dead worker's tasks are put back before its
    replacement starts. Without, every worker connects on its own (`spec.backend`).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        count: int,
        *,
        slots: SlotHooks | None = None,
        restart_budget: int = 5,
        budget_window: float = 60.0,
        daemon: bool = True,
    ) -> None:
        self.spec = spec
        self.count = count
        self.slots = slots
        self.restart_budget = restart_budget
        self.budget_window = budget_window
        self.daemon = daemon
        self.stop_event = MP_CONTEXT.Event()
        self._ready = MP_CONTEXT.Semaphore(0)
        self.workers: dict[int, BaseProcess] = {}
        self.restarts: deque[float] = deque()
        self.deaths: list[tuple[int, int | None]] = []  # (pid, exit code) of unexpected exits

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def _start(self, slot: int) -> None:
        spec = self.spec
        if self.slots is not None:
            spec = replace(spec, backend=self.slots.worker_end(slot))
        process = MP_CONTEXT.Process(
            target=worker_main,
            args=(spec, slot, os.getpid(), self.stop_event, self._ready),
            name=f"worker-{slot}",
            daemon=self.daemon,
        )
        process.start()
        if self.slots is not None:
            self.slots.on_started(slot)
        self.workers[slot] = process

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until every worker started so far has its backend and handlers ready."""
        deadline = time.monotonic() + timeout
        for _ in range(self.count):
            while not self._ready.acquire(timeout=0.2):
                self.check()  # a worker that fails to start is reaped (and replaced) here
                if time.monotonic() > deadline:
                    return False
        return True

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.workers.values() if p.pid is not None]

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.workers.values())

    def check(self, timeout: float = 0.0) -> None:
        """Reap workers that exited; replace the ones that died unexpectedly."""
        sentinels = {p.sentinel: slot for slot, p in self.workers.items()}
        if not sentinels:
            return
        for sentinel in wait(list(sentinels), timeout):
            slot = sentinels[sentinel]  # type: ignore[index]
            process = self.workers.pop(slot)
            process.join()  # reap: no zombie
            expected = process.exitcode == 0 or self.stop_event.is_set()
            if expected:
                continue
            timed_out = process.exitcode == EXIT_TASK_TIMEOUT
            if not timed_out:
                log.warning(
                    "worker %s (pid %s) died with exit code %s",
                    slot,
                    process.pid,
                    process.exitcode,
                )
            self.deaths.append((process.pid or 0, process.exitcode))
            if self.slots is not None:
                self.slots.on_death(slot)
            # A task over its time limit ends its worker on purpose: not a crash.
            self._replace(slot, counts=not timed_out)

    def _replace(self, slot: int, counts: bool = True) -> None:
        if not counts:
            self._start(slot)
            return
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > self.budget_window:
            self.restarts.popleft()
        if len(self.restarts) >= self.restart_budget:
            raise CrashLoop(
                f"{len(self.restarts)} workers died within {self.budget_window:g}s; "
                "giving up (see the errors above)"
            )
        self.restarts.append(now)
        self._start(slot)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every worker to finish its task and exit; reap them all."""
        self.stop_event.set()
        if self.slots is not None:
            self.slots.wake(len(self.workers))
        deadline = time.monotonic() + timeout
        for process in self.workers.values():
            process.join(max(deadline - time.monotonic(), 0))
        for process in self.workers.values():
            if process.is_alive():
                log.warning("worker pid %s did not stop in time; terminating", process.pid)
                process.terminate()
                process.join(5)
        self.workers.clear()

    def wait_all(self, stop: Callable[[], bool], poll: float = 0.5) -> None:
        """Supervise until `stop()` says so or every worker has exited on its own."""
        while self.workers and not stop():
            self.check(poll)


class ThreadWorkers:
    """N worker threads in this one process, each with its own connection (``--pool thread``):
    each thread calls `spec.backend.connect`, which opens a new one every time.

    Threads share one interpreter and so one GIL: sleep-bound tasks scale with threads,
    CPU-bound ones do not. A thread cannot be killed, so no task timeout here.
    """

    def __init__(self, spec: WorkerSpec, count: int) -> None:
        if spec.options.task_timeout:
            raise ConfigError("--task-timeout needs --pool process: a thread cannot be stopped")
        self.spec = spec
        self.count = count
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[TaskshuttleError] = []
        self._ready = threading.Semaphore(0)

    def start(self) -> None:
        for slot in range(self.count):
            thread = threading.Thread(target=self._run, args=(slot,), name=f"worker-{slot}")
            thread.start()
            self.threads.append(thread)

    def _run(self, slot: int) -> None:
        try:
            backend = self.spec.backend.connect(self.spec.settings)
        except TaskshuttleError as exc:
            self.errors.append(exc)
            self._ready.release()
            return
        worker = Worker(
            backend, registry, self.spec.options, self.stop_event, self.spec.settings.queue
        )
        self._ready.release()
        try:
            worker.run()
        finally:
            backend.close()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        for _ in range(self.count):
            if not self._ready.acquire(timeout=timeout):
                return False
        if self.errors:
            raise self.errors[0]
        return True

    @property
    def pids(self) -> list[int]:
        return [os.getpid()]

    def wait_all(self, stop: Callable[[], bool], poll: float = 0.5) -> None:
        while any(t.is_alive() for t in self.threads) and not stop():
            self.threads[0].join(poll) if self.threads[0].is_alive() else time.sleep(poll)

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))
