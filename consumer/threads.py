"""``--pool thread``: the workers as threads of the consumer's own process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.errors import ConfigError
from consumer.handlers import registry
from consumer.restarts import Cut, WorkerSlots, is_connection_error, is_fatal, never
from consumer.spec import worker_middleware
from consumer.worker import Worker

if TYPE_CHECKING:
    from consumer.spec import WorkerSpec


class ThreadWorkers(WorkerSlots):
    """N worker threads in this one process, each with its own connection (``--pool thread``):
    each thread calls `spec.backend.connect`, which opens a new one every time. A thread whose
    loop dies of an exception is replaced, as a dead worker process is.

    Threads share one interpreter and so one GIL: sleep-bound tasks scale with threads,
    CPU-bound ones do not. A thread cannot be killed, so no task timeout here, and a stop
    that runs out of time leaves the stuck threads to end with the process (they are daemons).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        count: int,
        *,
        restart_budget: int = 5,
        budget_window: float = 60.0,
        max_deaths: int | None = None,
    ) -> None:
        if spec.options.task_timeout:
            raise ConfigError("--task-timeout needs --pool process: a thread cannot be stopped")
        super().__init__(count, restart_budget, budget_window, max_deaths)
        self.spec = spec
        self.stop_event = threading.Event()
        self.threads: dict[int, threading.Thread] = {}
        self._ended: dict[int, BaseException] = {}  # why a thread's loop ended, if not cleanly
        self._changed = threading.Event()  # a thread ended
        self._ready = threading.Semaphore(0)

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def _start(self, slot: int) -> None:
        thread = threading.Thread(
            target=self._run, args=(slot,), name=f"worker-{slot}", daemon=True
        )
        self.threads[slot] = thread
        thread.start()

    def _run(self, slot: int) -> None:
        try:
            backend = self.spec.backend.connect(self.spec.settings)
        except BaseException as exc:
            self._ended[slot] = exc
            self._ready.release()
            self._changed.set()
            return
        spec, record = self.spec, self.in_flight.record(slot)
        record.started(os.getpid(), os.getppid())
        try:
            worker = Worker(
                backend,
                registry,
                spec.options,
                self.stop_event,
                spec.settings.queue,
                middleware=worker_middleware(spec, backend, record),
            )
            self._ready.release()
            worker.run()
        except BaseException as exc:  # the supervisor decides what it means
            if is_connection_error(exc):
                record.release()  # the broker went away: the task in hand is no suspect
            self._ended[slot] = exc
        finally:
            backend.close()
            self._changed.set()

    def _stopping(self) -> bool:
        return self.stop_event.is_set()

    def _live(self) -> int:
        return len(self.threads)

    def wait_ready(self, timeout: float = 30.0, stop: Callable[[], bool] = never) -> bool:
        deadline = time.monotonic() + timeout
        for _ in range(self.count):
            while not self._ready.acquire(timeout=0.2):
                if stop() or time.monotonic() > deadline:
                    return False
            self.check()  # a thread that could not start is reaped (and replaced) here
        return True

    @property
    def pids(self) -> list[int]:
        return [os.getpid()]

    def check(self, timeout: float = 0.0) -> None:
        """Reap threads that ended; replace the ones whose loop died (never once stopping)."""
        self._start_due()
        if self._changed.wait(self._until_due(timeout)):
            self._changed.clear()
        for slot in [slot for slot, thread in self.threads.items() if not thread.is_alive()]:
            self._reap(slot)
        self._start_due()

    def _reap(self, slot: int) -> None:
        self.threads.pop(slot).join()
        error = self._ended.pop(slot, None)
        if error is None or self._stopping():
            self.in_flight.retire(slot, replaced=False)
            self.in_flight.clear(slot)
            return
        self.in_flight.retire(slot, replaced=not is_fatal(error))
        self.deaths.append((os.getpid(), None))
        if is_fatal(error):
            raise error
        self._died(slot, f"worker thread {slot} died of {type(error).__name__}: {error}")

    def stop(self, timeout: float = 30.0, now: Callable[[], bool] = never) -> Cut:
        """Ask every thread to finish its task; wait up to `timeout` seconds (or until
        `now()` says so). What is still running then ends with the process."""
        self.stop_event.set()
        self._due.clear()
        deadline = time.monotonic() + timeout
        while self.threads and not now() and (left := deadline - time.monotonic()) > 0:
            self.check(min(left, 0.2))
        rest = list(self.threads)
        self.threads.clear()
        return Cut(len(rest), sum(self.in_flight.held(slot) is not None for slot in rest))
