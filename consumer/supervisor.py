"""Worker processes and the supervisor that starts, reaps and replaces them.

The seed course's process lessons, applied: every worker is a daemon child; every child that
exits is joined (so none lingers as a zombie); a worker asks the kernel to signal it when
its parent dies (``PR_SET_PDEATHSIG``) and also watches ``os.getppid()``, so a killed
supervisor leaves no stray orphans; SIGINT and SIGTERM mean "finish the task in hand, then
stop", and a worker that does not stop in time is SIGKILLed (`WorkerPool.stop`). What a
dead worker counts for (the restart budget, a suspect task) is decided in `consumer.restarts`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from common.errors import TaskshuttleError
from common.local import MP_CONTEXT
from common.logs import configure
from consumer.handlers import import_handlers, registry
from consumer.inflight import InHand
from consumer.middleware import EXIT_TASK_TIMEOUT
from consumer.restarts import (
    CrashLoop,
    Cut,
    WorkerFailed,
    WorkerSlots,
    is_connection_error,
    is_fatal,
    never,
)
from consumer.spec import WorkerBackendSource, WorkerSpec, worker_middleware
from consumer.worker import Worker

__all__ = ["CrashLoop", "WorkerFailed", "WorkerPool", "worker_main"]

_PR_SET_PDEATHSIG = 1
#: Exit code of a worker that found its supervisor gone.
EXIT_ORPHANED = 69
#: Exit code of a worker stopped by an error no restart can fix (``EX_CONFIG``).
EXIT_FATAL = 78


class StopSignal:
    """The pool's "stop" for every worker process: one shared byte, set by the supervisor
    only and read without a lock.

    A worker looks at it before each task. A `multiprocessing.Event` takes a lock on every
    `is_set`, and the workers would then contend for that lock once per task; a single
    writer of a single byte needs none.
    """

    def __init__(self, context: BaseContext = MP_CONTEXT) -> None:
        self._flag: Any = context.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._flag.value = True

    def is_set(self) -> bool:
        return bool(self._flag.value)


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


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back while a worker process starts.

    The child inherits the blocked signal, so a Ctrl-C at the terminal cannot interrupt it
    while it imports (a `KeyboardInterrupt` traceback from ``multiprocessing/spawn.py``);
    `worker_main` lets it through once its own handler is in place. A SIGINT meant for this
    process meanwhile waits, and arrives when the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_main(
    spec: WorkerSpec,
    slot: int,
    parent_pid: int,
    stop_all: StopSignal,
    ready: Any,
    in_hand: InHand | None = None,
) -> None:
    """Entry point of a worker process."""
    if spec.stderr is not None:
        os.dup2(spec.stderr.fileno(), sys.stderr.fileno())
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "pthread_sigmask"):  # held back while this process started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent_pid)

    class _Either:
        def is_set(self) -> bool:
            return stop.is_set() or stop_all.is_set()

    configure(spec.log_level, spec.log_format)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    if in_hand is not None:
        in_hand.started(os.getpid(), parent_pid)
    try:
        if spec.initializer is not None:
            spec.initializer(*spec.init_args)
        import_handlers(list(spec.handler_modules))
        backend = spec.backend.connect(spec.settings)
        queue = spec.settings.queue
        middleware = worker_middleware(spec, backend, in_hand)
        worker = Worker(backend, registry, spec.options, _Either(), queue, middleware=middleware)
        ready.release()
        worker.run()
        backend.close()
    except TaskshuttleError as exc:
        print(f"worker {os.getpid()}: error: {exc}", file=sys.stderr)
        if is_connection_error(exc) and in_hand is not None:
            in_hand.release()  # the broker went away: the task in hand is no suspect
        sys.exit(EXIT_FATAL if is_fatal(exc) else 3)


class WorkerPool(WorkerSlots):
    """N worker processes, kept at N: dead ones are reaped and replaced.

    With `slots` (the local backend's `LocalBroker.slots`), each worker takes its own end of
    a queue that lives in this process, and a dead worker's tasks are put back before its
    replacement starts. Without, every worker connects on its own (`spec.backend`).
    `max_deaths`: see `consumer.inflight.InFlight`, the same rule with either backend.
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
        max_deaths: int | None = None,
    ) -> None:
        super().__init__(count, restart_budget, budget_window, max_deaths)
        self.spec = spec
        self.slots = slots
        self.daemon = daemon
        self.stop_event = StopSignal()
        self._ready = MP_CONTEXT.Semaphore(0)
        self.workers: dict[int, BaseProcess] = {}

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def _start(self, slot: int) -> None:
        spec = self.spec
        if self.slots is not None:
            spec = replace(spec, backend=self.slots.worker_end(slot))
        record = self.in_flight.record(slot)
        process = MP_CONTEXT.Process(
            target=worker_main,
            args=(spec, slot, os.getpid(), self.stop_event, self._ready, record),
            name=f"worker-{slot}",
            daemon=self.daemon,
        )
        with _sigint_held():
            process.start()
        if self.slots is not None:
            self.slots.on_started(slot)
        self.workers[slot] = process

    def _stopping(self) -> bool:
        return self.stop_event.is_set()

    def _live(self) -> int:
        return len(self.workers)

    def wait_ready(self, timeout: float = 30.0, stop: Callable[[], bool] = never) -> bool:
        """Wait until every worker started so far has its backend and handlers ready
        (False if `timeout` passed or `stop()` said so first)."""
        deadline = time.monotonic() + timeout
        for _ in range(self.count):
            while not self._ready.acquire(timeout=0.2):
                if stop():
                    return False
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
        """Reap workers that exited; replace the ones that died unexpectedly (never once
        stopping)."""
        self._start_due()
        timeout = self._until_due(timeout)
        sentinels = {p.sentinel: slot for slot, p in self.workers.items()}
        if not sentinels:
            time.sleep(timeout)
        for sentinel in wait(list(sentinels), timeout) if sentinels else []:
            self._reap(sentinels[sentinel])  # type: ignore[index]
        self._start_due()

    def _reap(self, slot: int) -> None:
        process = self.workers.pop(slot)
        process.join()  # reap: no zombie
        code = process.exitcode
        if code == 0 or self._stopping():
            self.in_flight.retire(slot, replaced=False)
            self.in_flight.clear(slot)
            return
        self.in_flight.retire(slot, replaced=code != EXIT_FATAL)
        self.deaths.append((process.pid or 0, code))
        if code == EXIT_TASK_TIMEOUT:  # a task over its time limit ends its worker on
            self.in_flight.clear(slot)  # purpose: not a crash
            self._put_back(slot)
            self._due[slot] = 0.0
            return
        if code == EXIT_FATAL:
            self._put_back(slot)
            raise WorkerFailed(f"worker {slot} stopped on an error a restart cannot fix (above)")
        # The death is counted (and a task that killed `max_deaths` workers written into the
        # death table) before the dead worker's tasks go back: whichever worker takes one
        # next already knows.
        self._died(slot, f"worker {slot} (pid {process.pid}) died with exit code {code}")
        self._put_back(slot)

    def _put_back(self, slot: int) -> None:
        """A backend in this process (the local one) puts back what the dead worker held;
        RabbitMQ does it by itself when the worker's connection closes."""
        if self.slots is not None:
            self.slots.on_death(slot)

    def stop(self, timeout: float = 30.0, now: Callable[[], bool] = never) -> Cut:
        """Ask every worker to finish its task and exit; wait up to `timeout` seconds (or
        until `now()` says so), then SIGKILL the rest. Every worker is reaped."""
        self.stop_event.set()
        self._due.clear()
        if self.slots is not None:
            self.slots.wake(len(self.workers))
        deadline = time.monotonic() + timeout
        while self.workers and not now() and (left := deadline - time.monotonic()) > 0:
            self.check(min(left, 0.2))
        rest = list(self.workers.items())
        cut = Cut(len(rest), sum(self.in_flight.held(slot) is not None for slot, _ in rest))
        for _slot, process in rest:
            process.kill()  # SIGKILL: a stuck handler cannot refuse it
        for slot, process in rest:
            process.join()
            self.in_flight.retire(slot, replaced=False)
            self.in_flight.clear(slot)
        self.workers.clear()
        return cut
