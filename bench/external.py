"""Celery and Dramatiq under test: each system's own client sends, its own worker program
runs (`bench.celery_app`, `bench.dramatiq_app`), with its defaults.

Their no-op tasks stamp each run in shared memory (`bench.stamps.LiveStamps`): the timed
window ends at the last task run, read while the workers still run (their exit paths are
their own, so no stamps are written at exit), and peak RSS is read from outside
(`PeakRss`). The queue looking empty is not the end: both prefetch, so the broker has
handed out the last tasks well before they run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.broker import Gate, QueueSampler, gated_drain, wait_ready_count
from bench.config import CaseConfig, CaseError, envelope_payload
from bench.figures import per_second
from bench.procs import CpuSampler, PeakRss, cpu_sampler, descendants
from bench.stamps import STAMPS_ENV, read_live_stamps, stamp_window

ROOT = Path(__file__).resolve().parent.parent


class _External:
    """A worker program run as a child process of this case, stopped (or killed) at the end."""

    def __init__(self, argv: list[str], log_name: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log = Path(tempfile.mkdtemp(prefix="taskshuttle-bench-")) / log_name
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def processes(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def children(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self._kill_all()
                self.proc.wait(5)

    def _kill_all(self) -> None:
        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in tree:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-800:]
        except OSError:
            return ""


def _start_worker(cfg: CaseConfig, stamps: str) -> _External:
    os.environ[STAMPS_ENV] = stamps  # the worker's environment is a copy of this one
    if cfg.system == "celery":
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
        argv += ["-P", "prefork", "-c", str(cfg.workers), "-Q", cfg.queue, "-l", "WARNING"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        argv += ["-n", f"{cfg.queue}@%h"]
        return _External(argv, "celery.log")
    argv = [sys.executable, "-m", "dramatiq", "bench.dramatiq_app"]
    argv += ["--processes", str(cfg.workers), "--threads", "1", "--queues", cfg.queue]
    return _External(argv, "dramatiq.log")


def _sender(cfg: CaseConfig) -> Callable[[], object]:
    """A function that sends one no-op task with the system's own client."""
    os.environ["TASKSHUTTLE_BENCH_AMQP_URL"] = cfg.amqp_url
    os.environ["TASKSHUTTLE_BENCH_QUEUE"] = cfg.queue
    pad = envelope_payload(cfg.body_size)["pad"]
    if cfg.system == "celery":
        from bench.celery_app import noop

        return lambda: noop.apply_async(args=(pad,))
    from bench.dramatiq_app import noop as actor

    return lambda: actor.send(pad)


# Celery: one consumer (the main process) feeding the prefork children; Dramatiq: one
# consumer per worker process.
def _consumers(cfg: CaseConfig) -> int:
    return 1 if cfg.system == "celery" else cfg.workers


def _watch(cfg: CaseConfig, ext: _External) -> tuple[PeakRss, CpuSampler]:
    """Started peak-RSS and CPU samplers over the processes that do the work: Celery's main
    process takes the messages (and its children run them); Dramatiq's main process only
    supervises its worker processes."""
    workers = ext.processes if cfg.system == "celery" else ext.children
    rss = PeakRss(workers)
    rss.start()
    return rss, cpu_sampler(cfg, workers)


def _last_run(directory: str, n: int, deadline: float, ext: _External) -> float:
    """When the workers ran the last of the `n` tasks, once their stamps count them all."""
    while True:
        stamps = read_live_stamps(directory)
        count = sum(s["count"] for s in stamps)
        if count >= n:
            if count > n:
                raise CaseError(f"workers ran {count} tasks, {n} were sent")
            return stamp_window(stamps)[1]
        if time.perf_counter() > deadline:
            raise CaseError(f"workers ran {count} of {n} tasks in time; output: {ext.tail()}")
        time.sleep(0.01)


def _send_all(cfg: CaseConfig, send: Callable[[], object]) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(cfg.n):
        send()
    return start, time.perf_counter()


def external_publish_drain(cfg: CaseConfig) -> dict[str, Any]:
    """Send N no-op tasks with the system's client (timed), then start its worker program
    and time the drain from the gate's opening to the queue empty."""
    deadline = cfg.deadline()
    send = _sender(cfg)
    publish_cpu = cpu_sampler(cfg, lambda: [])
    start, published = _send_all(cfg, send)
    publish_cpu.stop()
    wait_ready_count(cfg.amqp_url, cfg.queue, cfg.n, deadline)

    gate = Gate(cfg.amqp_url, cfg.queue, cfg.n, deadline)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    stamps = tempfile.mkdtemp(prefix="taskshuttle-bench-stamps-")
    ext = _start_worker(cfg, stamps)
    rss, cpu = _watch(cfg, ext)
    try:
        try:
            window_start, _ = gated_drain(sampler, gate, _consumers(cfg), deadline, wait_empty=True)
        except CaseError as exc:
            raise CaseError(f"{exc}; worker output: {ext.tail()}") from None
        empty = _last_run(stamps, cfg.n, deadline, ext)
        rss_figs = rss.finish()
    finally:
        gate.close()
        sampler.stop()
        cpu.stop()
        ext.stop()
    return {
        "publish": per_second(cfg.n, published - start),
        "drain": per_second(cfg.n, empty - window_start),
        "rss": rss_figs,
        "cpu": cpu.usage(window_start, empty, cfg.n),
        "cpu_publish": publish_cpu.usage(start, published, cfg.n),
    }


def external_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """The worker program running; send N tasks; timed first send to the queue empty."""
    deadline = cfg.deadline()
    send = _sender(cfg)
    stamps = tempfile.mkdtemp(prefix="taskshuttle-bench-stamps-")
    ext = _start_worker(cfg, stamps)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    rss, cpu = _watch(cfg, ext)
    try:
        try:
            sampler.wait_for(lambda _r, c: c >= _consumers(cfg), deadline, what="consumers")
        except CaseError as exc:
            raise CaseError(f"{exc}; worker output: {ext.tail()}") from None
        start, published = _send_all(cfg, send)
        empty = _last_run(stamps, cfg.n, deadline, ext)
        rss_figs = rss.finish()
    finally:
        sampler.stop()
        cpu.stop()
        ext.stop()
    return {
        "e2e": per_second(cfg.n, empty - start),
        "rss": rss_figs,
        "cpu": cpu.usage(start, empty, cfg.n),
        "details": {"publish_during_e2e": per_second(cfg.n, published - start)},
    }
