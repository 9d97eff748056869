"""The baselines: a bare `multiprocessing.Queue` pipeline and bare pika.

Each consumer here is as small as it can be and still count: it notes the time of each
message (`Stamps.hit`) and, for pika, acks it. Every consumer reports its stamps and its
own peak RSS (VmHWM) on a queue when it exits.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from collections.abc import Callable
from typing import Any

import pika

from bench.broker import (
    Gate,
    QueueSampler,
    connect,
    declare,
    gated_drain,
    publish_raw,
    wait_ready_count,
)
from bench.config import CaseConfig, CaseError, raw_body
from bench.figures import latency_figures, per_second, stamped_figures, stamps_rss
from bench.procs import cpu_sampler
from bench.stamps import Stamps
from common.defaults import QueueType

CTX = multiprocessing.get_context("spawn")
#: Seconds for started consumers to reach their first (blocked) get before a gate opens.
GATE_SETTLE = 0.3
#: Seconds a consumer of the raw baselines waits with nothing to do before it exits.
IDLE_EXIT = 0.5


# -- shared plumbing -------------------------------------------------------------------------
def _start(target: Callable[..., None], args: tuple[Any, ...], workers: int) -> list[Any]:
    procs = [CTX.Process(target=target, args=args, name=f"consumer-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()
    return procs


def _await_ready(ready: Any, workers: int, deadline: float) -> None:
    for _ in range(workers):
        if not ready.acquire(timeout=max(deadline - time.perf_counter(), 0.01)):
            raise CaseError("consumers did not start in time")


def _collect(stats: Any, workers: int, deadline: float) -> list[dict[str, Any]]:
    reports = []
    for _ in range(workers):
        try:
            reports.append(stats.get(timeout=max(deadline - time.perf_counter(), 0.01)))
        except queue.Empty:
            raise CaseError(f"only {len(reports)} of {workers} consumers reported") from None
    return reports


def _reap(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# -- multiprocessing.Queue -------------------------------------------------------------------
def _mp_consumer(tasks: Any, results: Any, ready: Any, stats: Any, echo: bool) -> None:
    stamps = Stamps()
    ready.release()
    while True:
        item = tasks.get()
        if item is None:
            break
        stamps.hit()
        if echo:
            results.put(item[0])
    stats.put(stamps.as_dict())


def _put_all(tasks: Any, body: bytes, cfg: CaseConfig) -> None:
    """N bodies, then one sentinel per consumer."""
    for _ in range(cfg.n):
        tasks.put(body)
    for _ in range(cfg.workers):
        tasks.put(None)


def _mp_setup() -> tuple[Any, Any, Any, Any]:
    """Task queue, result queue, ready semaphore, stats queue."""
    return CTX.Queue(), CTX.Queue(), CTX.Semaphore(0), CTX.Queue()


def mp_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """1 producer (this process) puts N bytes objects; W consumer processes take them."""
    deadline = cfg.deadline()
    tasks, results, ready, stats = _mp_setup()
    procs = _start(_mp_consumer, (tasks, results, ready, stats, False), cfg.workers)
    try:
        _await_ready(ready, cfg.workers, deadline)
        cpu = cpu_sampler(cfg, lambda: [p.pid for p in procs])
        body = raw_body(cfg.body_size)
        start = time.perf_counter()
        _put_all(tasks, body, cfg)
        reports = _collect(stats, cfg.workers, deadline)
        cpu.stop()
    finally:
        _reap(procs)
    return stamped_figures("e2e", cfg.n, reports, start, cpu)


def mp_drain(cfg: CaseConfig) -> dict[str, Any]:
    """N bytes objects are put before the W consumers start; timed from letting them all go
    at once to the last get."""
    deadline = cfg.deadline()
    tasks, results, ready, stats = _mp_setup()
    _put_all(tasks, raw_body(cfg.body_size), cfg)
    # The queue's reader lock (a private attribute of multiprocessing.Queue) holds every
    # consumer back until all have started, so none gets a head start.
    gate = tasks._rlock
    gate.acquire()
    procs = _start(_mp_consumer, (tasks, results, ready, stats, False), cfg.workers)
    cpu = cpu_sampler(cfg, lambda: [p.pid for p in procs])
    try:
        _await_ready(ready, cfg.workers, deadline)
        time.sleep(GATE_SETTLE)
        start = time.perf_counter()
        gate.release()
        reports = _collect(stats, cfg.workers, deadline)
        cpu.stop()
    finally:
        _reap(procs)
    return stamped_figures("drain", cfg.n, reports, start, cpu)


def mp_latency(cfg: CaseConfig) -> dict[str, Any]:
    """Send at `cfg.rate`; each consumer puts the sequence number back; round-trip time."""
    deadline = cfg.deadline()
    tasks, results, ready, stats = _mp_setup()
    procs = _start(_mp_consumer, (tasks, results, ready, stats, True), cfg.workers)
    total = cfg.latency_count
    sent: dict[int, float] = {}
    latencies: list[float] = []
    try:
        _await_ready(ready, cfg.workers, deadline)
        body = raw_body(cfg.body_size)
        start = time.perf_counter()
        i = 0
        while (i < total or len(latencies) < total) and time.perf_counter() < deadline:
            due = min(total, int((time.perf_counter() - start) * cfg.rate) + 1)
            while i < due:
                tasks.put((i, body))
                sent[i] = time.perf_counter()
                i += 1
            next_due = start + i / cfg.rate if i < total else time.perf_counter() + 0.05
            timeout = max(next_due - time.perf_counter(), 0)
            try:
                seq = results.get(timeout=timeout)
            except queue.Empty:
                continue
            latencies.append(time.perf_counter() - sent[seq])
            with contextlib.suppress(queue.Empty):
                while True:
                    seq = results.get_nowait()
                    latencies.append(time.perf_counter() - sent[seq])
        elapsed = time.perf_counter() - start
        for _ in range(cfg.workers):
            tasks.put(None)
        reports = _collect(stats, cfg.workers, deadline + 5)
    finally:
        _reap(procs)
    figures = latency_figures(latencies, i, elapsed, from_publish=latencies)
    return {"latency": figures, "rss": stamps_rss(reports)}


# -- pika ------------------------------------------------------------------------------------
def _queue_arguments(cfg: CaseConfig) -> dict[str, Any] | None:
    """Raw pika's work queue: plain (classic), or quorum as RabbitMQ's tutorial declares it."""
    return {"x-queue-type": "quorum"} if cfg.queue_type is QueueType.quorum else None


class ConfirmedPublisher:
    """Raw pika's publish with a confirm, one message at a time: a `BlockingConnection`
    whose channel is in confirm mode, so each `basic_publish` (persistent, ``mandatory``)
    returns once the broker has confirmed it. Its queue is declared durable, plain
    (classic) or quorum as `_queue_arguments` says. Use it as a context manager."""

    def __init__(self, cfg: CaseConfig, queue_name: str) -> None:
        self.queue = queue_name
        self.body = raw_body(cfg.body_size)
        self.props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        self.conn = connect(cfg.amqp_url)
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()
        self.channel.queue_declare(queue_name, durable=True, arguments=_queue_arguments(cfg))

    def publish(self) -> float:
        """One message, confirmed: how long the call took, in seconds."""
        start = time.perf_counter()
        self.channel.basic_publish("", self.queue, self.body, self.props, mandatory=True)
        return time.perf_counter() - start

    def __enter__(self) -> ConfirmedPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def _pika_consumer(
    url: str, queue_name: str, prefetch: int, ready: Any, stats: Any, stop: Any, reply: bool
) -> None:
    """Consume with `prefetch`, ack each message; leave after IDLE_EXIT s without one."""
    conn = connect(url)
    channel = conn.channel()
    channel.basic_qos(prefetch_count=prefetch)
    stamps = Stamps()

    def on_message(ch: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        stamps.hit()
        if reply and props.reply_to:
            ch.basic_publish(
                "", props.reply_to, b"", pika.BasicProperties(correlation_id=props.correlation_id)
            )
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue_name, on_message)
    ready.release()
    while not stop.is_set():
        conn.process_data_events(time_limit=0.05)
        if stamps.last is not None and time.perf_counter() - stamps.last > IDLE_EXIT:
            break
    stats.put(stamps.as_dict())
    conn.close()


def _pika_consumers(cfg: CaseConfig, reply: bool) -> tuple[list[Any], Any, Any, Any]:
    ready, stats, stop = CTX.Semaphore(0), CTX.Queue(), CTX.Event()
    args = (cfg.amqp_url, cfg.queue, cfg.prefetch, ready, stats, stop, reply)
    return _start(_pika_consumer, args, cfg.workers), ready, stats, stop


def pika_publish_drain(cfg: CaseConfig) -> dict[str, Any]:
    """Publish N persistent messages without confirms (timed), then drain them with W
    consumers at `cfg.prefetch`, an ack per message, from the gate's opening to the last."""
    deadline = cfg.deadline()
    body = raw_body(cfg.body_size)
    publish_cpu = cpu_sampler(cfg, lambda: [])
    bodies = (body for _ in range(cfg.n))
    count, start, end = publish_raw(
        cfg.amqp_url, cfg.queue, bodies, arguments=_queue_arguments(cfg)
    )
    publish_cpu.stop()
    publish_rate = per_second(count, end - start)
    wait_ready_count(cfg.amqp_url, cfg.queue, cfg.n, deadline)
    gate = Gate(cfg.amqp_url, cfg.queue, cfg.n, deadline)
    sampler = QueueSampler(cfg.amqp_url, cfg.queue)
    sampler.start()
    procs, _ready, stats, stop = _pika_consumers(cfg, reply=False)
    cpu = cpu_sampler(cfg, lambda: [p.pid for p in procs])
    try:
        window_start, _ = gated_drain(sampler, gate, cfg.workers, deadline, wait_empty=False)
        reports = _collect(stats, cfg.workers, deadline)
    finally:
        gate.close()
        sampler.stop()
        cpu.stop()
        stop.set()
        _reap(procs)
    figures = stamped_figures("drain", cfg.n, reports, window_start, cpu)
    figures["publish"] = publish_rate
    figures["cpu_publish"] = publish_cpu.usage(start, end, cfg.n)
    return figures


def pika_e2e(cfg: CaseConfig) -> dict[str, Any]:
    """W consumers running; publish N without confirms; timed first publish to last ack."""
    deadline = cfg.deadline()
    declare(cfg.amqp_url, cfg.queue, _queue_arguments(cfg))
    procs, ready, stats, stop = _pika_consumers(cfg, reply=False)
    try:
        _await_ready(ready, cfg.workers, deadline)
        cpu = cpu_sampler(cfg, lambda: [p.pid for p in procs])
        body = raw_body(cfg.body_size)
        bodies = (body for _ in range(cfg.n))
        count, start, end = publish_raw(
            cfg.amqp_url, cfg.queue, bodies, arguments=_queue_arguments(cfg)
        )
        reports = _collect(stats, cfg.workers, deadline)
        cpu.stop()
    finally:
        stop.set()
        _reap(procs)
    figures = stamped_figures("e2e", cfg.n, reports, start, cpu)
    figures["details"]["publish_during_e2e"] = per_second(count, end - start)
    return figures


def pika_e2e_replies(cfg: CaseConfig) -> dict[str, Any]:
    """RabbitMQ's RPC tutorial at full speed: W consumers reply to each message (transient,
    no confirm) then ack; the producer publishes N persistent messages without confirms,
    each with ``reply_to`` its exclusive reply queue, taking replies as they come; timed
    from the first publish to the last reply. What a task queue with results does, minus
    what taskshuttle adds for them: confirms, durable replies, a task's ack after its
    result is stored."""
    deadline = cfg.deadline()
    declare(cfg.amqp_url, cfg.queue, _queue_arguments(cfg))
    procs, ready, stats, stop = _pika_consumers(cfg, reply=True)
    replies = 0
    try:
        _await_ready(ready, cfg.workers, deadline)
        conn = connect(cfg.amqp_url)
        channel = conn.channel()
        reply_queue = channel.queue_declare("", exclusive=True).method.queue

        def on_reply(*_args: Any) -> None:
            nonlocal replies
            replies += 1

        channel.basic_consume(reply_queue, on_reply, auto_ack=True)
        cpu = cpu_sampler(cfg, lambda: [p.pid for p in procs])
        body = raw_body(cfg.body_size)
        start = time.perf_counter()
        for i in range(cfg.n):
            props = pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                reply_to=reply_queue,
                correlation_id=str(i),
            )
            channel.basic_publish("", cfg.queue, body, props)
            if i % 100 == 99:
                conn.process_data_events(time_limit=0)  # replies, as they come
        while replies < cfg.n and time.perf_counter() < deadline:
            conn.process_data_events(time_limit=0.05)
        end = time.perf_counter()
        cpu.stop()
        conn.close()
        if replies < cfg.n:
            raise CaseError(f"{replies} of {cfg.n} replies came back in time")
        reports = _collect(stats, cfg.workers, deadline + 5)
    finally:
        stop.set()
        _reap(procs)
    return {
        "e2e": per_second(cfg.n, end - start),
        "rss": stamps_rss(reports),
        "cpu": cpu.usage(start, end, cfg.n),
        "details": {"per_worker": [r["count"] for r in reports]},
    }


def pika_latency(cfg: CaseConfig) -> dict[str, Any]:
    """Publish with a confirm each at `cfg.rate`; consumers reply then ack; the time from the
    confirm to the reply's arrival (what `Ledger.latency` measures for taskshuttle)."""
    deadline = cfg.deadline()
    declare(cfg.amqp_url, cfg.queue, _queue_arguments(cfg))
    procs, ready, stats, stop = _pika_consumers(cfg, reply=True)
    total = cfg.latency_count
    sent: dict[int, float] = {}
    before: dict[int, float] = {}
    replied: dict[int, float] = {}
    try:
        _await_ready(ready, cfg.workers, deadline)
        conn = connect(cfg.amqp_url)
        channel = conn.channel()
        channel.confirm_delivery()
        reply_queue = channel.queue_declare("", exclusive=True).method.queue

        def on_reply(_ch: Any, _method: Any, props: pika.BasicProperties, _body: bytes) -> None:
            # A reply that comes in while its publish waits for the confirm is handed over
            # only after it: pika's blocking client holds deliveries during that wait.
            replied[int(props.correlation_id)] = time.perf_counter()

        channel.basic_consume(reply_queue, on_reply, auto_ack=True)
        body = raw_body(cfg.body_size)
        start = time.perf_counter()
        i = 0
        while (i < total or len(replied) < total) and time.perf_counter() < deadline:
            due = min(total, int((time.perf_counter() - start) * cfg.rate) + 1)
            while i < due:
                props = pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    reply_to=reply_queue,
                    correlation_id=str(i),
                )
                before[i] = time.perf_counter()
                channel.basic_publish("", cfg.queue, body, props, mandatory=True)
                sent[i] = time.perf_counter()
                i += 1
                conn.process_data_events(time_limit=0)  # take in replies that came meanwhile
            next_due = start + i / cfg.rate if i < total else time.perf_counter() + 0.05
            conn.process_data_events(time_limit=max(next_due - time.perf_counter(), 0))
        elapsed = time.perf_counter() - start
        conn.close()
        reports = _collect(stats, cfg.workers, deadline + 5)
    finally:
        stop.set()
        _reap(procs)
    # As the ledger counts it: from the confirm (never below zero) to the reply.
    latencies = [max(at - sent[seq], 0.0) for seq, at in replied.items()]
    whole = [at - before[seq] for seq, at in replied.items()]
    return {"latency": latency_figures(latencies, i, elapsed, whole), "rss": stamps_rss(reports)}
