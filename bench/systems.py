"""taskshuttle under test, on both backends.

It is driven through its real code paths only: backends from `common.factory.open_backend`,
the `WorkerPool` of `consumer.supervisor` running `consumer.worker.Worker`,
`producer.run.run_rabbitmq` / `run_local` with their `Ledger`, and the application API,
`taskshuttle.Client`. The task kind is ``noop`` from `bench.tasks`, which also writes each
worker's stamps at exit.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.baselines import GATE_SETTLE, ConfirmedPublisher
from bench.broker import Gate, QueueSampler, connect, gated_drain, wait_ready_count
from bench.config import CaseConfig, CaseError, envelope_payload
from bench.figures import call_figures, per_second, stamped_figures, stamps_rss
from bench.procs import CpuSampler, cmdline, cpu_sampler, descendants
from bench.stamps import STAMPS_ENV, read_stamps, stamp_window

HANDLERS = ("bench.tasks",)
#: A burst worker leaves after this long with an empty queue.
BURST_IDLE = 0.5
#: The same while a gate holds the messages back: long enough to outlast the wait.
GATED_BURST_IDLE = 3.0


def _spawned_workers(count: int) -> Callable[[], list[int]]:
    """The worker processes `run_local` starts (its pool is not ours to ask), found among
    this process's children: looked up at each sample until all `count` are seen, which is
    before its clock starts (it waits for them to be ready)."""
    me = os.getpid()
    found: list[int] = []

    def pids() -> list[int]:
        if len(found) < count:
            # A child caught between its fork and its exec still shows this program's
            # command line: it is simply found at a later sample.
            found[:] = [p for p in descendants(me) if "spawn_main" in cmdline(p)][:count]
        return found

    return pids


# -- taskshuttle plumbing --------------------------------------------------------------------
def _settings(cfg: CaseConfig) -> Any:
    from common.settings import load_settings

    return load_settings(
        amqp_url=cfg.amqp_url,
        queue=cfg.queue,
        prefetch=cfg.prefetch,
        workers=cfg.workers,
        queue_type=cfg.queue_type,
    )


def _open_producer(cfg: CaseConfig, local: bool = False) -> Any:
    """The producer's backend, built as every program builds it."""
    from common.factory import Role, open_backend
    from common.settings import BackendName

    name = BackendName.local if local else BackendName.rabbitmq
    return open_backend(_settings(cfg), Role.PRODUCER, backend=name)


def _stamps_dir() -> str:
    """A fresh folder for worker stamps, named in the environment the workers inherit."""
    directory = tempfile.mkdtemp(prefix="taskshuttle-bench-")
    os.environ[STAMPS_ENV] = directory
    return directory


def _job(cfg: CaseConfig, count: int, rate: float | None = None) -> Any:
    from producer.run import Job

    return Job(count=count, kind="noop", payload=envelope_payload(cfg.body_size), rate=rate)


def _tasks(cfg: CaseConfig, count: int) -> list[Any]:
    from common.schemas import TaskEnvelope

    payload = envelope_payload(cfg.body_size)
    return [TaskEnvelope(kind="noop", payload=payload) for _ in range(count)]


def _pool(cfg: CaseConfig, burst_idle: float | None, local: Any = None) -> Any:
    from consumer.spec import WorkerSpec
    from consumer.supervisor import WorkerPool
    from consumer.worker import WorkerOptions

    spec = WorkerSpec(_settings(cfg), WorkerOptions(burst_idle=burst_idle), HANDLERS)
    pool = WorkerPool(spec, cfg.workers, slots=local.slots if local is not None else None)
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
    return stamps, stamps_rss(stamps)


def _ledger_e2e(cfg: CaseConfig, ledger: Any, directory: str, cpu: CpuSampler) -> dict[str, Any]:
    """The tally's own throughput (results on), checked against what the workers did."""
    if ledger.answered != cfg.n:
        raise CaseError(f"{ledger.answered} of {cfg.n} results came back")
    stamps, rss = _worker_figures(directory, cfg.n)
    assert ledger.finished is not None
    return {
        "e2e": per_second(ledger.answered, ledger.finished - ledger.started),
        "rss": rss,
        "cpu": cpu.usage(ledger.started, ledger.finished, cfg.n),
        "details": {"per_worker": [s["count"] for s in stamps]},
    }


def _ledger_latency(ledger: Any, sent: int) -> dict[str, Any]:
    """The tally's latencies, as the producer reports them (HDR histograms, within 0.1%):
    from the confirmed publish to the result, and from each task's creation, which `Job`
    does just before its publish."""
    confirmed, created = ledger.latency, ledger.latency_from_created
    samples = confirmed.get_total_count()
    if samples != sent:
        raise CaseError(f"{samples} of {sent} results came back")
    elapsed = (ledger.last_sent or 0.0) - (ledger.first_sent or 0.0)
    ms = _histogram_ms
    return {
        "p50_ms": ms(confirmed, 50),
        "p99_ms": ms(confirmed, 99),
        "max_ms": round(confirmed.get_max_value() / 1000, 3),
        "samples": samples,
        "sent": sent,
        "achieved_rate": round((sent - 1) / elapsed, 1) if elapsed > 0 else None,
        "from_publish_p50_ms": ms(created, 50),
        "from_publish_p99_ms": ms(created, 99),
        "method": "HDR histogram (hdrhistogram), 3 significant digits",
    }


def _histogram_ms(histogram: Any, pct: float) -> float:
    return round(histogram.get_value_at_percentile(pct) / 1000, 3)


def _tally(job: Any) -> Any:
    """What `producer` records into: counts and histograms, no list of every task."""
    from producer.ledger import Tally

    return Tally(job.numbering, from_creation=True)


# -- taskshuttle on RabbitMQ -----------------------------------------------------------------
def _rabbit_publish(cfg: CaseConfig, tasks: list[Any]) -> tuple[float, float, dict[str, Any]]:
    """`publish` in batches of the producer's size (persistent, confirmed): (start, end,
    the producer's CPU figures)."""
    from producer.run import BATCH

    publish_cpu = cpu_sampler(cfg, lambda: [])
    with _open_producer(cfg) as backend:
        start = time.perf_counter()
        for first in range(0, len(tasks), BATCH):
            backend.publish(tasks[first : first + BATCH])
        published = time.perf_counter()
        if backend.used_as_is:  # the figures would be another queue type's
            raise CaseError(f"queues not of the type asked for: {backend.used_as_is}")
    publish_cpu.stop()
    return start, published, publish_cpu.usage(start, published, len(tasks))


def rabbit_publish_drain(cfg: CaseConfig) -> dict[str, Any]:
    """The RabbitMQ backend's `publish`, then a burst `WorkerPool` drains the queue
    (validation, the ``noop`` handler, an ack after it), timed from the gate's opening to
    the last task handled."""
    deadline = cfg.deadline()
    tasks = _tasks(cfg, cfg.n)
    start, published, cpu_publish = _rabbit_publish(cfg, tasks)
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
    figures = stamped_figures("drain", cfg.n, read_stamps(directory), window_start, cpu)
    figures["publish"] = per_second(cfg.n, published - start)
    figures["cpu_publish"] = cpu_publish
    figures["details"]["body_bytes"] = len(tasks[0].model_dump_json())
    return figures


def _rabbit_running_pool(cfg: CaseConfig, burst_idle: float | None, deadline: float) -> Any:
    """A pool whose every worker is consuming from the empty queue (the workers declare it,
    of `cfg.queue_type`)."""
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


def _run_rabbitmq(cfg: CaseConfig, job: Any, wait: bool, deadline: float) -> Any:
    from producer.run import run_rabbitmq

    return run_rabbitmq(
        job,
        _settings(cfg),
        wait=wait,
        timeout=deadline - time.perf_counter(),
        ledger=_tally(job),
    )


def rabbit_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """`run_rabbitmq(wait=True)` while a pool runs: confirms, results, the ledger."""
    deadline = cfg.deadline()
    directory = _stamps_dir()
    pool = _rabbit_running_pool(cfg, None, deadline)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    try:
        ledger = _run_rabbitmq(cfg, _job(cfg, cfg.n), True, deadline)
    finally:
        cpu.stop()
        pool.stop(timeout=10)
    figures = _ledger_e2e(cfg, ledger, directory, cpu)
    figures["details"]["ledger"] = ledger.summary("")
    return figures


def rabbit_e2e_noresults(cfg: CaseConfig) -> dict[str, Any]:
    """`run_rabbitmq(wait=False)` (confirms, no results) while a burst pool drains."""
    deadline = cfg.deadline()
    directory = _stamps_dir()
    # Long enough not to leave between starting and the first task.
    pool = _rabbit_running_pool(cfg, 3 * BURST_IDLE, deadline)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    try:
        start = time.perf_counter()
        ledger = _run_rabbitmq(cfg, _job(cfg, cfg.n), False, deadline)
        published = time.perf_counter()
        _wait_exit(pool, deadline)
    finally:
        cpu.stop()
        pool.stop(timeout=5)
    figures = stamped_figures("e2e", cfg.n, read_stamps(directory), start, cpu)
    figures["details"]["publish_during_e2e"] = per_second(ledger.sent, published - start)
    return figures


def rabbit_latency(cfg: CaseConfig) -> dict[str, Any]:
    """`run_rabbitmq(wait=True)` of a `Job` paced at `cfg.rate`; the ledger's latencies."""
    deadline = cfg.deadline()
    directory = _stamps_dir()
    pool = _rabbit_running_pool(cfg, None, deadline)
    try:
        job = _job(cfg, cfg.latency_count, rate=cfg.rate)
        ledger = _run_rabbitmq(cfg, job, True, deadline)
    finally:
        pool.stop(timeout=10)
    _, rss = _worker_figures(directory, cfg.latency_count)
    return {"latency": _ledger_latency(ledger, cfg.latency_count), "rss": rss}


# -- taskshuttle local -----------------------------------------------------------------------
def _drain_results(backend: Any, pool: Any, count: int, deadline: float) -> int:
    """Take in results until `count` came back or the deadline passed; how many came."""
    got = 0
    while got < count and time.perf_counter() < deadline:
        if backend.receive_result(0.1) is not None:
            got += 1
        else:
            pool.check()
    return got


def local_drain(cfg: CaseConfig) -> dict[str, Any]:
    """The local backend's `publish` of N tasks, then a burst pool drains them; timed from
    letting the started workers go to the last result taken in by this (parent) process."""
    deadline = cfg.deadline()
    directory = _stamps_dir()
    backend = _open_producer(cfg, local=True)
    backend.publish(_tasks(cfg, cfg.n))
    # The task queue's reader lock holds every worker back until all have started, so none
    # gets a head start. It is private to multiprocessing.Queue (and the queue private to
    # the backend): without it, the drain is timed from the first task handled.
    gate = getattr(getattr(backend, "_tasks", None), "_rlock", None)
    if gate is not None:
        gate.acquire()
    pool = _pool(cfg, BURST_IDLE, local=backend)
    cpu = cpu_sampler(cfg, lambda: pool.pids)
    try:
        if not pool.wait_ready(max(deadline - time.perf_counter(), 1)):
            raise CaseError("workers did not start in time")
        start: float | None = None
        if gate is not None:
            time.sleep(GATE_SETTLE)
            start = time.perf_counter()
            gate.release()
        got = _drain_results(backend, pool, cfg.n, deadline)
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


def _run_local(cfg: CaseConfig, job: Any, deadline: float) -> Any:
    from consumer.worker import WorkerOptions
    from producer.run import run_local

    ledger, _ = run_local(
        job,
        _settings(cfg),
        options=WorkerOptions(),
        timeout=deadline - time.perf_counter(),
        handler_modules=HANDLERS,
        ledger=_tally(job),
    )
    return ledger


def local_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """`run_local`: results, the in-flight registry, the ledger."""
    deadline = cfg.deadline()
    directory = _stamps_dir()
    cpu = cpu_sampler(cfg, _spawned_workers(cfg.workers))
    try:
        ledger = _run_local(cfg, _job(cfg, cfg.n), deadline)
    finally:
        cpu.stop()
    return _ledger_e2e(cfg, ledger, directory, cpu)


def local_latency(cfg: CaseConfig) -> dict[str, Any]:
    """`run_local` of a `Job` paced at `cfg.rate`; the ledger's latencies."""
    deadline = cfg.deadline()
    directory = _stamps_dir()
    ledger = _run_local(cfg, _job(cfg, cfg.latency_count, rate=cfg.rate), deadline)
    _, rss = _worker_figures(directory, cfg.latency_count)
    return {"latency": _ledger_latency(ledger, cfg.latency_count), "rss": rss}


# -- the application API: taskshuttle.Client on RabbitMQ -------------------------------------
#: `Client.send` calls (and raw publishes) made before the timed ones, untimed.
SEND_WARMUP = 100
#: `send_many` against the job path: rounds of this many tasks each, the two in turn (who
#: goes first alternates), the queue purged after each, so both see the same moments of a
#: machine that is shared and noisy, and the same queue.
SEND_MANY_ROUND = 2000


def _client(cfg: CaseConfig) -> Any:
    """A `Client` on the case's queue, made as an application makes one."""
    from taskshuttle import Client

    queue_type = cfg.queue_type.value if cfg.queue_type else None
    return Client(url=cfg.amqp_url, queue=cfg.queue, queue_type=queue_type)


def client_send(cfg: CaseConfig) -> dict[str, Any]:
    """`Client.send` one task at a time (each returns once the broker confirmed it), beside
    raw pika's publish with a confirm of a message of the same size (`ConfirmedPublisher`,
    a durable queue of the same type): `cfg.send_count` calls each after `SEND_WARMUP`,
    interleaved call by call (who goes first alternates), so both see the same moments of
    the machine. Each call timed from its start to its return. No consumer: the tasks queue
    up, and the case's queues are deleted after it."""
    from common.schemas import TaskEnvelope, encode

    deadline = cfg.deadline()
    payload = envelope_payload(cfg.body_size)
    warmup = min(SEND_WARMUP, cfg.send_count)
    sends: list[float] = []
    publishes: list[float] = []
    with _client(cfg) as client, ConfirmedPublisher(cfg, f"{cfg.queue}.raw") as raw:

        def send() -> float:
            start = time.perf_counter()
            client.send("noop", payload)
            return time.perf_counter() - start

        for i in range(warmup + cfg.send_count):
            if i % 2:
                took_send, took_publish = send(), raw.publish()
            else:
                took_publish, took_send = raw.publish(), send()
            if i >= warmup:
                sends.append(took_send)
                publishes.append(took_publish)
            if time.perf_counter() > deadline:
                raise CaseError(f"{len(sends)} of {cfg.send_count} sends by the time limit")
    return {
        "send": call_figures(sends),
        "raw_pika": call_figures(publishes),
        "details": {
            "warmup": warmup,
            "body_bytes": len(encode(TaskEnvelope(kind="noop", payload=payload))),
            "raw_body_bytes": len(raw.body),
        },
    }


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[first : first + size] for first in range(0, len(items), size)]


def client_send_many(cfg: CaseConfig) -> dict[str, Any]:
    """`Client.send_many` of `cfg.n` tasks in chunks of the producer's `BATCH` per call,
    against the producer's job path on the same queue: `producer.run.send`, as
    `run_rabbitmq(wait=False)` runs it, on a backend opened as it opens one (its connection
    opened before the clock, as the client's is). After a chunk of each, untimed, rounds of
    `SEND_MANY_ROUND` tasks of each in turn; each round's tasks checked stored, then purged.
    Tasks per second of each over all its rounds, and its CPU over them (read at the edges
    of each round)."""
    from producer.run import BATCH, Progress, send

    deadline = cfg.deadline()
    payload = envelope_payload(cfg.body_size)
    rounds = [min(SEND_MANY_ROUND, cfg.n - sent) for sent in range(0, cfg.n, SEND_MANY_ROUND)]
    cpu = cpu_sampler(cfg, lambda: [], background=False)
    windows: dict[str, list[tuple[float, float]]] = {"job path": [], "send_many": []}
    with (
        _open_producer(cfg) as backend,
        _client(cfg) as client,
        contextlib.closing(connect(cfg.amqp_url)) as admin,
    ):
        channel = admin.channel()

        def job_path(count: int) -> tuple[float, float]:
            job = _job(cfg, count)
            cpu.sample()
            start = time.perf_counter()
            send(job, backend, _tally(job), Progress())
            end = time.perf_counter()
            cpu.sample()
            return start, end

        def send_many(count: int) -> tuple[float, float]:
            items = [{"kind": "noop", "payload": payload} for _ in range(count)]
            cpu.sample()
            start = time.perf_counter()
            for chunk in _chunks(items, BATCH):
                client.send_many(chunk)
            end = time.perf_counter()
            cpu.sample()
            return start, end

        def stored_then_purged(count: int) -> None:
            wait_ready_count(cfg.amqp_url, cfg.queue, count, deadline)
            channel.queue_purge(cfg.queue)

        sides = {"job path": job_path, "send_many": send_many}
        for side in sides.values():
            side(min(BATCH, cfg.n))
            stored_then_purged(min(BATCH, cfg.n))
        for number, count in enumerate(rounds):
            for name in sorted(sides, reverse=bool(number % 2)):
                windows[name].append(sides[name](count))
                stored_then_purged(count)
        if backend.used_as_is:  # the figures would be another queue type's
            raise CaseError(f"queues not of the type asked for: {backend.used_as_is}")
    rates = {
        name: per_second(cfg.n, sum(end - start for start, end in spans))
        for name, spans in windows.items()
    }
    return {
        "send_many": rates["send_many"],
        "job_path": rates["job path"],
        "cpu": cpu.usage_over(windows["send_many"], cfg.n),
        "cpu_job_path": cpu.usage_over(windows["job path"], cfg.n),
        "details": {"rounds": rounds, "per_call": BATCH, "warmup": min(BATCH, cfg.n)},
    }
