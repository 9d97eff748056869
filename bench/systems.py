"""The systems under test: taskshuttle's two backends, Celery and Dramatiq.

taskshuttle is driven through its real code paths only: `RabbitBackend.publish`, the
`WorkerPool` of `consumer.supervisor` running `consumer.worker.Worker`, and
`producer.run.run_rabbitmq` / `run_local` with their `Ledger`. The task kind is ``noop``
from `bench.tasks`, which also writes each worker's stamps at exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.baselines import GATE_SETTLE
from bench.measure import (
    STAMPS_ENV,
    CaseConfig,
    CaseError,
    Gate,
    PeakRss,
    QueueSampler,
    cmdline,
    cpu_sampler,
    declare,
    descendants,
    envelope_payload,
    gated_drain,
    latency_figures,
    per_second,
    read_stamps,
    rss_figures,
    stamp_window,
    wait_ready_count,
)

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ("bench.tasks",)
#: A burst worker leaves after this long with an empty queue.
BURST_IDLE = 0.5
#: The same while a gate holds the messages back: long enough to outlast the wait.
GATED_BURST_IDLE = 3.0


_CMD_CACHE: dict[int, str] = {}


def _cmd(pid: int) -> str:
    if pid not in _CMD_CACHE:
        _CMD_CACHE[pid] = cmdline(pid)
    return _CMD_CACHE[pid]


def _spawned_workers(count: int) -> Any:
    """The worker processes `run_local` starts (its pool is not ours to ask), found in /proc:
    looked up again at most every half second until all `count` are seen."""
    me = os.getpid()
    found: list[int] = []
    looked = [0.0]

    def pids() -> list[int]:
        now = time.perf_counter()
        if len(found) < count and now - looked[0] > 0.5:
            looked[0] = now
            found[:] = [p for p in descendants(me) if "spawn_main" in _cmd(p)][:count]
        return found

    return pids


# -- taskshuttle plumbing --------------------------------------------------------------------
def _settings(cfg: CaseConfig) -> Any:
    from common.settings import load_settings

    return load_settings(
        amqp_url=cfg.amqp_url, queue=cfg.queue, prefetch=cfg.prefetch, workers=cfg.workers
    )


def _stamps_dir() -> str:
    """A fresh folder for worker stamps, named in the environment the workers inherit."""
    directory = tempfile.mkdtemp(prefix="taskshuttle-bench-")
    os.environ[STAMPS_ENV] = directory
    return directory


def _tasks(cfg: CaseConfig, count: int) -> list[Any]:
    from common.schemas import TaskEnvelope

    payload = envelope_payload(cfg.body_size)
    return [TaskEnvelope(kind="noop", payload=payload) for _ in range(count)]


def _pool(cfg: CaseConfig, burst_idle: float | None, local: Any = None) -> Any:
    from consumer.supervisor import WorkerPool, WorkerSpec
    from consumer.worker import WorkerOptions

    spec = WorkerSpec(_settings(cfg), WorkerOptions(burst_idle=burst_idle), HANDLERS, local=local)
    on_death = local.recover if local is not None else None
    pool = WorkerPool(spec, cfg.workers, on_death=on_death)
    pool.start()
    return pool


def _wait_exit(pool: Any, deadline: float) -> None:
    """Wait for burst workers to leave on their own (each writes its stamps as it goes)."""
    pool.wait_all(stop=lambda: time.perf_counter() > deadline, poll=0.05)
    if pool.workers:
        raise CaseError(f"{len(pool.workers)} workers still running at the time limit")


def _worker_figures(directory: str, expected: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stamps = read_stamps(directory)
    handled = sum(s["count"] for s in stamps)
    if handled != expected:
        raise CaseError(f"workers handled {handled} tasks, expected {expected}")
    rss = rss_figures({s["pid"]: s["vmhwm_kib"] for s in stamps if s.get("vmhwm_kib")})
    return stamps, rss


def _ledger_latency(ledger: Any, sent: int) -> dict[str, Any]:
    """The ledger's latencies (confirm to result); also from each task's creation, which
    `Job` does just before its publish: the wall clock, mapped onto perf_counter."""
    offset = time.time() - time.perf_counter()
    whole = [
        ledger.sent[task_id]
        + seconds
        - (ledger.results[task_id][0].created_at.timestamp() - offset)
        for task_id, seconds in ledger.latency.items()
    ]
    sent_times = sorted(ledger.sent.values())
    elapsed = sent_times[-1] - sent_times[0] if len(sent_times) > 1 else 0.0
    figures = latency_figures(ledger.latency.values(), max(sent - 1, 0), elapsed, whole)
    figures["sent"] = sent
    if len(ledger.latency) != sent:
        raise CaseError(f"{len(ledger.latency)} of {sent} results came back")
    return figures


# -- taskshuttle on RabbitMQ -----------------------------------------------------------------
def rabbit_publish_drain(cfg: CaseConfig) -> dict[str, Any]:
    """`RabbitBackend.publish` in batches (persistent, confirmed), then a burst `WorkerPool`
    drains the queue (validation, the ``noop`` handler, an ack after it), timed from the
    gate's opening to the last task handled."""
    from common.rabbitmq import RabbitBackend
    from producer.run import BATCH

    deadline = cfg.deadline()
    tasks = _tasks(cfg, cfg.n)
    publish_cpu = cpu_sampler(cfg, lambda: [])
    with RabbitBackend(cfg.amqp_url, cfg.queue, prefetch=cfg.prefetch) as backend:
        start = time.perf_counter()
        for first in range(0, cfg.n, BATCH):
            backend.publish(tasks[first : first + BATCH])
        published = time.perf_counter()
    publish_cpu.stop()
    publish_rate = per_second(cfg.n, published - start)
    wait_ready_count(cfg.amqp_url, cfg.queue, cfg.n, deadline)

    directory = _stamps_dir()
    gate = Gate(cfg.amqp_url, cfg.queue, cfg.n, deadline)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    pool = _pool(cfg, GATED_BURST_IDLE)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    try:
        window_start, _ = gated_drain(sampler, gate, cfg.workers, deadline, wait_empty=False)
        _wait_exit(pool, deadline)
    finally:
        gate.close()
        sampler.stop()
        cpu.stop()
        pool.stop(timeout=5)
    stamps, rss = _worker_figures(directory, cfg.n)
    _, last, _ = stamp_window(stamps)
    return {
        "publish": publish_rate,
        "drain": per_second(cfg.n, last - window_start),
        "rss": rss,
        "cpu": cpu.usage(window_start, last, cfg.n),
        "cpu_publish": publish_cpu.usage(start, published, cfg.n),
        "details": {
            "per_worker": [s["count"] for s in stamps],
            "body_bytes": len(tasks[0].model_dump_json()),
        },
    }


def _rabbit_running_pool(cfg: CaseConfig, burst_idle: float | None, deadline: float) -> Any:
    """A pool whose every worker is consuming from the (declared, empty) queue."""
    declare(cfg.amqp_url, cfg.queue)
    pool = _pool(cfg, burst_idle)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    try:
        sampler.wait_for(lambda _r, c: c >= cfg.workers, deadline, what=f"{cfg.workers} consumers")
    except BaseException:
        pool.stop(timeout=5)
        raise
    finally:
        sampler.stop()
    return pool


def rabbit_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """`run_rabbitmq(wait=True)` while a pool runs: confirms, results, the ledger."""
    from producer.run import Job, run_rabbitmq

    deadline = cfg.deadline()
    directory = _stamps_dir()
    pool = _rabbit_running_pool(cfg, None, deadline)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    try:
        job = Job(count=cfg.n, kind="noop", payload=envelope_payload(cfg.body_size))
        ledger = run_rabbitmq(
            job, _settings(cfg), wait=True, timeout=deadline - time.perf_counter()
        )
    finally:
        cpu.stop()
        pool.stop(timeout=10)
    if len(ledger.results) != cfg.n:
        raise CaseError(f"{len(ledger.results)} of {cfg.n} results came back")
    stamps, rss = _worker_figures(directory, cfg.n)
    assert ledger.finished is not None
    return {
        "e2e": per_second(len(ledger.results), ledger.finished - ledger.started),
        "rss": rss,
        "cpu": cpu.usage(ledger.started, ledger.finished, cfg.n),
        "details": {"per_worker": [s["count"] for s in stamps], "ledger": ledger.summary("")},
    }


def rabbit_e2e_noresults(cfg: CaseConfig) -> dict[str, Any]:
    """`run_rabbitmq(wait=False)` (confirms, no results) while a burst pool drains."""
    from producer.run import Job, run_rabbitmq

    deadline = cfg.deadline()
    directory = _stamps_dir()
    # Long enough not to leave between starting and the first task.
    pool = _rabbit_running_pool(cfg, 3 * BURST_IDLE, deadline)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    try:
        job = Job(count=cfg.n, kind="noop", payload=envelope_payload(cfg.body_size))
        start = time.perf_counter()
        ledger = run_rabbitmq(
            job, _settings(cfg), wait=False, timeout=deadline - time.perf_counter()
        )
        published = time.perf_counter()
        _wait_exit(pool, deadline)
    finally:
        cpu.stop()
        pool.stop(timeout=5)
    stamps, rss = _worker_figures(directory, cfg.n)
    _, last, _ = stamp_window(stamps)
    return {
        "e2e": per_second(cfg.n, last - start),
        "rss": rss,
        "cpu": cpu.usage(start, last, cfg.n),
        "details": {
            "publish_during_e2e": per_second(len(ledger.sent), published - start),
            "per_worker": [s["count"] for s in stamps],
        },
    }


def rabbit_latency(cfg: CaseConfig) -> dict[str, Any]:
    """`run_rabbitmq(wait=True)` of a `Job` paced at `cfg.rate`; the ledger's latencies."""
    from producer.run import Job, run_rabbitmq

    deadline = cfg.deadline()
    directory = _stamps_dir()
    pool = _rabbit_running_pool(cfg, None, deadline)
    try:
        job = Job(
            count=cfg.latency_count,
            kind="noop",
            payload=envelope_payload(cfg.body_size),
            rate=cfg.rate,
        )
        ledger = run_rabbitmq(
            job, _settings(cfg), wait=True, timeout=deadline - time.perf_counter()
        )
    finally:
        pool.stop(timeout=10)
    _, rss = _worker_figures(directory, cfg.latency_count)
    return {"latency": _ledger_latency(ledger, cfg.latency_count), "rss": rss}


# -- taskshuttle local -----------------------------------------------------------------------
def local_drain(cfg: CaseConfig) -> dict[str, Any]:
    """`LocalBackend.publish` of N tasks, then a burst pool drains them; timed from letting
    the started workers go to the last result taken in by this (parent) process."""
    from common.local import LocalBackend

    deadline = cfg.deadline()
    directory = _stamps_dir()
    backend = LocalBackend(slots=cfg.workers, queue_name=cfg.queue)
    backend.publish(_tasks(cfg, cfg.n))
    # The task queue's reader lock holds every worker back until all have started, so none
    # gets a head start. It is private to multiprocessing.Queue (and the queue private to
    # the backend): without it, the drain is timed from the first task handled.
    gate = getattr(getattr(backend, "_tasks", None), "_rlock", None)
    if gate is not None:
        gate.acquire()
    pool = _pool(cfg, BURST_IDLE, local=backend)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    got = 0
    try:
        if not pool.wait_ready(max(deadline - time.perf_counter(), 1)):
            raise CaseError("workers did not start in time")
        start: float | None = None
        if gate is not None:
            time.sleep(GATE_SETTLE)
            start = time.perf_counter()
            gate.release()
        while got < cfg.n and time.perf_counter() < deadline:
            if backend.receive_result(0.1) is not None:
                got += 1
            else:
                pool.check()
        end = time.perf_counter()
        _wait_exit(pool, deadline)
    finally:
        cpu.stop()
        pool.stop(timeout=5)
        backend.close()
    if got != cfg.n:
        raise CaseError(f"{got} of {cfg.n} results came back")
    stamps, rss = _worker_figures(directory, cfg.n)
    if start is None:
        start = stamp_window(stamps)[0]
    return {
        "drain": per_second(cfg.n, end - start),
        "rss": rss,
        "cpu": cpu.usage(start, end, cfg.n),
        "details": {"per_worker": [s["count"] for s in stamps], "gated": gate is not None},
    }


def local_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """`run_local`: results, the in-flight registry, the ledger."""
    from consumer.worker import WorkerOptions
    from producer.run import Job, run_local

    deadline = cfg.deadline()
    directory = _stamps_dir()
    job = Job(count=cfg.n, kind="noop", payload=envelope_payload(cfg.body_size))
    cpu = cpu_sampler(cfg, _spawned_workers(cfg.workers))
    try:
        ledger, _ = run_local(
            job,
            _settings(cfg),
            options=WorkerOptions(),
            timeout=deadline - time.perf_counter(),
            handler_modules=HANDLERS,
        )
    finally:
        cpu.stop()
    if len(ledger.results) != cfg.n:
        raise CaseError(f"{len(ledger.results)} of {cfg.n} results came back")
    stamps, rss = _worker_figures(directory, cfg.n)
    assert ledger.finished is not None
    return {
        "e2e": per_second(len(ledger.results), ledger.finished - ledger.started),
        "rss": rss,
        "cpu": cpu.usage(ledger.started, ledger.finished, cfg.n),
        "details": {"per_worker": [s["count"] for s in stamps]},
    }


def local_latency(cfg: CaseConfig) -> dict[str, Any]:
    """`run_local` of a `Job` paced at `cfg.rate`; the ledger's latencies."""
    from consumer.worker import WorkerOptions
    from producer.run import Job, run_local

    deadline = cfg.deadline()
    directory = _stamps_dir()
    job = Job(
        count=cfg.latency_count,
        kind="noop",
        payload=envelope_payload(cfg.body_size),
        rate=cfg.rate,
    )
    ledger, _ = run_local(
        job,
        _settings(cfg),
        options=WorkerOptions(),
        timeout=deadline - time.perf_counter(),
        handler_modules=HANDLERS,
    )
    _, rss = _worker_figures(directory, cfg.latency_count)
    return {"latency": _ledger_latency(ledger, cfg.latency_count), "rss": rss}


# -- Celery and Dramatiq ---------------------------------------------------------------------
class _External:
    """A worker program run as a child process of this case, stopped (or killed) at the end."""

    def __init__(self, argv: list[str], cfg: CaseConfig, log_name: str) -> None:
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
                for pid in self.processes():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                self.proc.wait(5)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-800:]
        except OSError:
            return ""


def _external_env(cfg: CaseConfig) -> None:
    os.environ["TASKSHUTTLE_BENCH_AMQP_URL"] = cfg.amqp_url
    os.environ["TASKSHUTTLE_BENCH_QUEUE"] = cfg.queue


def _celery_worker(cfg: CaseConfig) -> _External:
    argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
    argv += ["-P", "prefork", "-c", str(cfg.workers), "-Q", cfg.queue, "-l", "WARNING"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    argv += ["-n", f"{cfg.queue}@%h"]
    return _External(argv, cfg, "celery.log")


def _dramatiq_worker(cfg: CaseConfig) -> _External:
    argv = [sys.executable, "-m", "dramatiq", "bench.dramatiq_app"]
    argv += ["--processes", str(cfg.workers), "--threads", "1", "--queues", cfg.queue]
    return _External(argv, cfg, "dramatiq.log")


def _sender(system: str, cfg: CaseConfig) -> Any:
    """A function that sends one no-op task with the system's own client."""
    _external_env(cfg)
    pad = envelope_payload(cfg.body_size)["pad"]
    if system == "celery":
        from bench.celery_app import noop

        return lambda: noop.apply_async(args=(pad,))
    from bench.dramatiq_app import noop as actor

    return lambda: actor.send(pad)


# Celery: one consumer (the main process) feeding the prefork children; Dramatiq: one
# consumer per worker process.
def _consumers(system: str, cfg: CaseConfig) -> int:
    return 1 if system == "celery" else cfg.workers


def _external_workers(system: str, ext: _External) -> list[int]:
    # Celery's main process takes the messages (and children run them); Dramatiq's main
    # process only supervises its worker processes.
    return ext.processes() if system == "celery" else ext.children()


def external_publish_drain(cfg: CaseConfig) -> dict[str, Any]:
    """Send N no-op tasks with the system's client (timed), then start its worker program
    and time the drain from the gate's opening to the queue empty."""
    deadline = cfg.deadline()
    send = _sender(cfg.system, cfg)
    publish_cpu = cpu_sampler(cfg, lambda: [])
    start = time.perf_counter()
    for _ in range(cfg.n):
        send()
    published = time.perf_counter()
    publish_cpu.stop()
    publish_rate = per_second(cfg.n, published - start)
    wait_ready_count(cfg.amqp_url, cfg.queue, cfg.n, deadline)

    gate = Gate(cfg.amqp_url, cfg.queue, cfg.n, deadline)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    ext = _celery_worker(cfg) if cfg.system == "celery" else _dramatiq_worker(cfg)
    rss = PeakRss(lambda: _external_workers(cfg.system, ext))
    rss.start()
    cpu = cpu_sampler(cfg, lambda: _external_workers(cfg.system, ext))
    try:
        try:
            window_start, empty = gated_drain(
                sampler, gate, _consumers(cfg.system, cfg), deadline, wait_empty=True
            )
        except CaseError as exc:
            raise CaseError(f"{exc}; worker output: {ext.tail()}") from None
        assert empty is not None
        rss_figs = rss.finish()
    finally:
        gate.close()
        sampler.stop()
        cpu.stop()
        ext.stop()
    return {
        "publish": publish_rate,
        "drain": per_second(cfg.n, empty - window_start),
        "rss": rss_figs,
        "cpu": cpu.usage(window_start, empty, cfg.n),
        "cpu_publish": publish_cpu.usage(start, published, cfg.n),
    }


def external_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """The worker program running; send N tasks; timed first send to the queue empty."""
    deadline = cfg.deadline()
    send = _sender(cfg.system, cfg)
    ext = _celery_worker(cfg) if cfg.system == "celery" else _dramatiq_worker(cfg)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    rss = PeakRss(lambda: _external_workers(cfg.system, ext))
    rss.start()
    cpu = cpu_sampler(cfg, lambda: _external_workers(cfg.system, ext))
    try:
        try:
            sampler.wait_for(
                lambda _r, c: c >= _consumers(cfg.system, cfg), deadline, what="consumers"
            )
        except CaseError as exc:
            raise CaseError(f"{exc}; worker output: {ext.tail()}") from None
        start = time.perf_counter()
        for _ in range(cfg.n):
            send()
        published = time.perf_counter()
        empty, _, _ = sampler.wait_for(
            lambda r, _c: r == 0, deadline, since=published, what="the queue to empty"
        )
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
