"""Shared tools of the harness: case settings, clocks, queue sampling, peak RSS, broker admin.

Clocks: every timestamp is `time.perf_counter()`, which on Linux is ``CLOCK_MONOTONIC``, one
clock for the whole machine, so a worker's stamp and the case process's stamp compare.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import statistics
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

#: Environment variable naming the folder where workers write their stamps at exit.
STAMPS_ENV = "TASKSHUTTLE_BENCH_STAMPS"
#: Seconds a consumer of the raw baselines waits with nothing to do before it exits.
IDLE_EXIT = 0.5


@dataclass
class CaseConfig:
    """Everything one sub-benchmark needs; crosses the process boundary as JSON."""

    system: str
    measure: str
    n: int
    workers: int
    prefetch: int
    body_size: int
    rate: float
    latency_count: int
    amqp_url: str
    queue: str
    #: Seconds the case may spend waiting on anything; the parent kills it a bit later.
    time_limit: float
    #: The broker's OS process, to tell its CPU use apart from the clients' (None: unknown).
    broker_pid: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CaseConfig:
        return cls(**json.loads(text))

    def deadline(self) -> float:
        return time.perf_counter() + self.time_limit


class CaseError(Exception):
    """A sub-benchmark could not produce its figure (the message says why)."""


# -- figures ---------------------------------------------------------------------------------
def per_second(count: float, seconds: float) -> float:
    if seconds <= 0:
        raise CaseError(f"non-positive duration {seconds!r} for {count} messages")
    return round(count / seconds, 1)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Inclusive-method percentile, as `common.ledger` computes it."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(pct) - 1]


def latency_figures(
    seconds: Iterable[float],
    sent: int,
    elapsed: float,
    from_publish: Iterable[float] = (),
) -> dict[str, Any]:
    """p50/p99 of send-to-result times, where "sent" is when the publish returned (for
    RabbitMQ: confirmed), as `Ledger.latency` counts it. `from_publish`: the same results
    timed from just before the publish call, so the confirm's wait is inside."""
    values = sorted(seconds)
    if not values:
        raise CaseError("no latency sample came back")
    ms = [v * 1000 for v in values]
    figures = {
        "p50_ms": round(percentile(ms, 50) or 0.0, 3),
        "p99_ms": round(percentile(ms, 99) or 0.0, 3),
        "max_ms": round(ms[-1], 3),
        "samples": len(ms),
        "sent": sent,
        "achieved_rate": round(sent / elapsed, 1) if elapsed > 0 else None,
    }
    whole = sorted(v * 1000 for v in from_publish)
    if whole:
        figures["from_publish_p50_ms"] = round(percentile(whole, 50) or 0.0, 3)
        figures["from_publish_p99_ms"] = round(percentile(whole, 99) or 0.0, 3)
    return figures


# -- bodies ----------------------------------------------------------------------------------
def raw_body(size: int) -> bytes:
    return b"x" * size


def envelope_payload(body_size: int) -> dict[str, str]:
    """A payload that makes a ``noop`` `TaskEnvelope` about `body_size` bytes of JSON.

    An envelope with an empty payload is already about 190 bytes (id, timestamps, host), so
    below that the body is simply the bare envelope.
    """
    from common.schemas import TaskEnvelope, encode

    bare = len(encode(TaskEnvelope(kind="noop", payload={"pad": ""})))
    return {"pad": "x" * max(0, body_size - bare)}


# -- worker stamps ---------------------------------------------------------------------------
class Stamps:
    """When a worker handled its first and last message, and how many: a few hundred ns each."""

    __slots__ = ("count", "first", "last")

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0

    def hit(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "first": self.first,
            "last": self.last,
            "count": self.count,
            "vmhwm_kib": proc_status_kib(os.getpid(), "VmHWM"),
        }

    def dump(self, directory: str) -> None:
        path = Path(directory) / f"{os.getpid()}.json"
        path.write_text(json.dumps(self.as_dict()))


def read_stamps(directory: str | Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        with contextlib.suppress(ValueError, OSError):
            found.append(json.loads(path.read_text()))
    return found


def stamp_window(stamps: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(first, last, count) over every worker that handled anything."""
    busy = [s for s in stamps if s.get("count")]
    if not busy:
        raise CaseError("no worker reported handling a message")
    return (
        min(s["first"] for s in busy),
        max(s["last"] for s in busy),
        sum(s["count"] for s in busy),
    )


# -- processes and memory --------------------------------------------------------------------
def proc_status_kib(pid: int, field: str = "VmHWM") -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmHWM: peak resident set), or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    return int(text.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc (empty where /proc is missing)."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                ppid = _parent_of(int(entry))
                if ppid is not None:
                    parents[int(entry)] = ppid
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class PeakRss(threading.Thread):
    """Reads VmHWM of the worker processes every `interval` s; keeps the last value per pid.

    VmHWM is the kernel's own high-water mark of a process's resident set, so a reading
    taken shortly before the process exits is its peak. `pids()` names the workers.
    """

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 0.2) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self._pids = pids
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak_kib: dict[int, int] = {}

    def sample(self) -> None:
        with contextlib.suppress(Exception):
            for pid in list(self._pids()):
                kib = proc_status_kib(pid)
                if kib is not None:
                    self.peak_kib[pid] = max(kib, self.peak_kib.get(pid, 0))

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            self.sample()

    def finish(self) -> dict[str, Any]:
        """Take a last reading (call it while the workers still live) and stop."""
        self.sample()
        self._stop_event.set()
        return rss_figures(self.peak_kib)


def rss_figures(peak_kib: dict[int, int], method: str = "VmHWM") -> dict[str, Any]:
    if not peak_kib:
        return {"method": f"{method} (no worker seen)", "per_worker_mib": None, "workers": {}}
    values = list(peak_kib.values())
    return {
        "method": method,
        "per_worker_mib": round(max(values) / 1024, 1),
        "mean_mib": round(sum(values) / len(values) / 1024, 1),
        "workers": {str(pid): round(kib / 1024, 1) for pid, kib in peak_kib.items()},
    }


def children_rusage_figures() -> dict[str, Any]:
    """The fallback where /proc is missing: the largest reaped child's peak RSS."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss_figures({0: kib}, method="getrusage(RUSAGE_CHILDREN).ru_maxrss (largest child)")


# -- CPU -------------------------------------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``; idle and iowait out)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _CLK_TCK


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuSampler(threading.Thread):
    """CPU seconds used by named groups of processes, read every `interval` s.

    A process that exits keeps its last reading, so a group's total never goes down.
    `usage(start, end)` gives each group's busy cores over a window of the run.
    """

    def __init__(
        self, groups: dict[str, Callable[[], Iterable[int]]], interval: float = 0.05
    ) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.groups = groups
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._last: dict[tuple[str, int], float] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        totals: dict[str, float] = {}
        for name, pids in self.groups.items():
            with contextlib.suppress(Exception):
                for pid in list(pids()):
                    value = cpu_seconds(pid)
                    if value is not None:
                        self._last[(name, pid)] = value
            totals[name] = sum(v for (group, _), v in self._last.items() if group == name)
        machine = machine_busy_seconds()
        if machine is not None:
            totals["machine"] = machine
        self.samples.append((time.perf_counter(), totals))

    def start(self) -> None:
        self.sample()  # before returning, so a window may begin right after
        super().start()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.sample()

    def usage(self, start: float, end: float, messages: int) -> dict[str, Any]:
        """Cores busy per group between two perf_counter times, and CPU per message."""
        before = [s for s in self.samples if s[0] <= start]
        after = [s for s in self.samples if s[0] >= end]
        if not before or not after:
            return {}
        (t0, c0), (t1, c1) = before[-1], after[0]
        wall = t1 - t0
        figures: dict[str, Any] = {"window_s": round(wall, 3)}
        for name in self.groups:
            used = c1.get(name, 0.0) - c0.get(name, 0.0)
            figures[name] = {
                "cores": round(used / wall, 2) if wall > 0 else None,
                "us_per_msg": round(used / messages * 1e6, 1) if messages else None,
            }
        figures["total_cores"] = round(
            sum(f["cores"] or 0 for k, f in figures.items() if isinstance(f, dict)), 2
        )
        if "machine" in c0 and "machine" in c1 and wall > 0:
            machine = (c1["machine"] - c0["machine"]) / wall
            figures["machine_cores"] = round(machine, 2)
            # Everything else on the machine: other users' tests, this harness's samplers.
            figures["other_cores"] = round(max(machine - figures["total_cores"], 0.0), 2)
        return figures


def cpu_sampler(cfg: CaseConfig, workers: Callable[[], Iterable[int]]) -> CpuSampler:
    """A started `CpuSampler` over the broker, the workers and this (producer) process."""
    sampler = CpuSampler(
        {
            "broker": lambda: [cfg.broker_pid] if cfg.broker_pid else [],
            "workers": workers,
            "producer": lambda: [os.getpid()],
        }
    )
    sampler.start()
    return sampler


def listening_pid(port: int) -> int | None:
    """The process listening on TCP `port` (the broker), from /proc; None if not found."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                            return int(entry)
    return None


# -- the broker ------------------------------------------------------------------------------
def connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


def declare(url: str, name: str, arguments: dict[str, Any] | None = None) -> None:
    with contextlib.closing(connect(url)) as conn:
        conn.channel().queue_declare(name, durable=True, arguments=arguments)


def publish_raw(
    url: str,
    queue: str,
    bodies: Iterable[bytes],
    props: Callable[[int], pika.BasicProperties] | None = None,
) -> tuple[int, float, float]:
    """Publish persistent messages without confirms, as fast as pika's blocking client goes.

    Returns (count, start, end): from the first publish (connection already open) until the
    broker answered a round trip sent after the last one (so every message has reached it).
    """
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    with contextlib.closing(connect(url)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        count = 0
        start = time.perf_counter()
        for body in bodies:
            channel.basic_publish("", queue, body, props(count) if props else persistent)
            count += 1
        channel.queue_declare(queue, durable=True, passive=True)
        return count, start, time.perf_counter()


def wait_ready_count(url: str, queue: str, count: int, deadline: float) -> None:
    """Wait until `queue` holds `count` ready messages (published ones may lag a little)."""
    with contextlib.closing(connect(url)) as conn:
        channel = conn.channel()
        while True:
            ready = channel.queue_declare(queue, passive=True).method.message_count
            if ready >= count:
                return
            if time.perf_counter() > deadline:
                raise CaseError(f"queue {queue} holds {ready} of {count} messages")
            time.sleep(0.02)


class QueueSampler(threading.Thread):
    """Asks the broker every `interval` s how many messages are ready in a queue and how many
    consumers it has (a passive declare on a connection of its own)."""

    def __init__(self, url: str, queue: str, interval: float = 0.01) -> None:
        super().__init__(name=f"sampler-{queue}", daemon=True)
        self.url = url
        self.queue = queue
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        try:
            conn = connect(self.url)
        except BaseException as exc:
            self.error = exc
            return
        try:
            channel = conn.channel()
            while not self._stop_event.is_set():
                try:
                    frame = channel.queue_declare(self.queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker:  # not declared yet
                    channel = conn.channel()
                    time.sleep(self.interval)
                    continue
                sample = (
                    time.perf_counter(),
                    frame.method.message_count,
                    frame.method.consumer_count,
                )
                with self._changed:
                    self.samples.append(sample)
                    self._changed.notify_all()
                time.sleep(self.interval)
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def wait_for(
        self,
        test: Callable[[int, int], bool],
        deadline: float,
        since: float = 0.0,
        what: str = "condition",
    ) -> tuple[float, int, int]:
        """The first sample taken after `since` where ``test(ready, consumers)`` holds."""
        seen = 0
        with self._changed:
            while True:
                for sample in self.samples[seen:]:
                    if sample[0] >= since and test(sample[1], sample[2]):
                        return sample
                seen = len(self.samples)
                if self.error is not None:
                    raise CaseError(f"queue sampler failed: {self.error!r}")
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    last = self.samples[-1] if self.samples else None
                    raise CaseError(f"timed out waiting for {what} (last sample {last})")
                self._changed.wait(min(remaining, 0.5))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


class Gate:
    """Holds every message of a pre-filled queue so its workers start on an empty queue.

    It consumes all `count` messages without acking them. Once the workers are all
    consuming, `open()` closes its channel: the broker puts every message back at once and
    the workers drain them together, so none of them gets a head start while the others
    are still starting up. The messages come back marked redelivered.
    """

    def __init__(self, url: str, queue: str, count: int, deadline: float) -> None:
        self.conn = connect(url)
        self.channel = self.conn.channel()
        self.held = 0

        def hold(_ch: Any, _method: Any, _props: Any, _body: bytes) -> None:
            self.held += 1

        self.channel.basic_consume(queue, hold)
        while self.held < count:
            if time.perf_counter() > deadline:
                raise CaseError(f"held only {self.held} of {count} messages")
            self.conn.process_data_events(time_limit=0.1)

    def open(self) -> float:
        """Hand every message back; returns when (perf_counter) that began."""
        start = time.perf_counter()
        self.channel.close()
        return start

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def gated_drain(
    sampler: QueueSampler, gate: Gate, consumers: int, deadline: float, wait_empty: bool
) -> tuple[float, float | None]:
    """Open `gate` once the queue has its `consumers` (plus the gate's own); returns (start,
    first time the queue showed 0 ready after it filled again, when `wait_empty`)."""
    sampler.wait_for(
        lambda _r, c: c >= consumers + 1, deadline, what=f"{consumers} consumers on the queue"
    )
    start = gate.open()
    if not wait_empty:
        return start, None
    refilled, _, _ = sampler.wait_for(
        lambda r, _c: r > 0, deadline, since=start, what="the messages to come back"
    )
    empty, _, _ = sampler.wait_for(
        lambda r, _c: r == 0, deadline, since=refilled, what="the queue to empty"
    )
    return start, empty


class Management:
    """The RabbitMQ management HTTP API (for the broker's version and for clean-up)."""

    def __init__(self, amqp_url: str, port: int = 15672) -> None:
        parts = urllib.parse.urlsplit(amqp_url)
        self.base = f"http://{parts.hostname or 'localhost'}:{port}/api"
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.vhost = urllib.parse.quote(urllib.parse.unquote(parts.path[1:] or "/"), safe="")

    def _request(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.base + path, method=method)
        request.add_header("Authorization", self._auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None

    def version(self) -> str | None:
        try:
            return str(self._request("/overview").get("rabbitmq_version"))
        except Exception:
            return None

    def names(self, kind: str, prefix: str) -> list[str]:
        items = self._request(f"/{kind}/{self.vhost}?columns=name")
        return [item["name"] for item in items if item["name"].startswith(prefix)]

    def delete(self, kind: str, name: str) -> None:
        with contextlib.suppress(Exception):
            self._request(f"/{kind}/{self.vhost}/{urllib.parse.quote(name, safe='')}", "DELETE")


def delete_prefixed(amqp_url: str, prefix: str, known: Sequence[str] = ()) -> list[str]:
    """Delete every queue and exchange named `prefix`...; `known` names too, over AMQP, where
    the management API does not answer. Returns what was deleted."""
    deleted: list[str] = []
    api = Management(amqp_url)
    try:
        for kind in ("queues", "exchanges"):
            for name in api.names(kind, prefix):
                api.delete(kind, name)
                deleted.append(name)
        return deleted
    except Exception:
        pass
    with contextlib.suppress(Exception), contextlib.closing(connect(amqp_url)) as conn:
        for name in known:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
                deleted.append(name)
            except pika.exceptions.ChannelClosedByBroker:
                continue
            with contextlib.suppress(Exception):
                channel.close()
    return deleted
