"""The processes of a run, through psutil: who they are, their CPU time, their peak RSS.

`CpuSampler` reads named groups of processes (broker, workers, producer) and the whole
machine every 50 ms, so a case can say which of them bounds its figure. `PeakRss` follows
worker processes the harness did not start itself (Celery's, Dramatiq's).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from bench.config import CaseConfig
from bench.figures import rss_figures
from bench.stamps import peak_rss_kib

#: What RabbitMQ's Erlang VM is called in the process table.
BROKER_NAMES = ("beam.smp", "beam")


def descendants(root: int) -> list[int]:
    """Every live process below `root` (empty once `root` is gone)."""
    try:
        return [child.pid for child in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        return []


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _listens_on(proc: psutil.Process, port: int) -> bool:
    try:
        connections = proc.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


def broker_pid(port: int) -> int | None:
    """The broker's Erlang VM: the one listening on `port`, or the only one there is.

    Other nodes may run beside it (tests start private ones on ports of their own). A VM's
    sockets can be read only as root or as its user: without that, only a lone VM is found.
    """
    vms = [p for p in psutil.process_iter(["name"]) if p.info["name"] in BROKER_NAMES]
    for vm in vms:
        if _listens_on(vm, port):
            return vm.pid
    return vms[0].pid if len(vms) == 1 else None


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (idle and I/O wait left out)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # Linux counts guest time inside user and nice already.
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - idle - guest


class PeakRss(threading.Thread):
    """Reads the peak RSS of the worker processes every `interval` s; keeps the last value
    per pid (a high-water mark, so a reading shortly before the process exits is its peak).
    `pids()` names the workers."""

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 0.2) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self._pids = pids
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak_kib: dict[int, int] = {}

    def sample(self) -> None:
        with contextlib.suppress(Exception):
            for pid in list(self._pids()):
                kib = peak_rss_kib(pid)
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
        self._procs: dict[int, psutil.Process] = {}
        self._stop_event = threading.Event()

    def _cpu_seconds(self, pid: int) -> float | None:
        """User + system CPU seconds of one process so far (None: gone or not ours to read)."""
        try:
            proc = self._procs.get(pid)
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            times = proc.cpu_times()
        except psutil.Error:
            return None
        return times.user + times.system

    def sample(self) -> None:
        totals: dict[str, float] = {}
        for name, pids in self.groups.items():
            with contextlib.suppress(Exception):
                for pid in list(pids()):
                    value = self._cpu_seconds(pid)
                    if value is not None:
                        self._last[(name, pid)] = value
            totals[name] = sum(v for (group, _), v in self._last.items() if group == name)
        totals["machine"] = machine_busy_seconds()
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
        return self.usage_over([(start, end)], messages)

    def usage_over(self, windows: Iterable[tuple[float, float]], messages: int) -> dict[str, Any]:
        """`usage` over several windows taken together (one side of a case that alternates
        two, with `messages` in all of them): each group's CPU seconds added up, over the
        windows' wall time added up."""
        wall = 0.0
        used = dict.fromkeys([*self.groups, "machine"], 0.0)
        for start, end in windows:
            before = [s for s in self.samples if s[0] <= start]
            after = [s for s in self.samples if s[0] >= end]
            if not before or not after:
                return {}
            (t0, c0), (t1, c1) = before[-1], after[0]
            wall += t1 - t0
            for name in used:
                used[name] += c1.get(name, 0.0) - c0.get(name, 0.0)
        figures: dict[str, Any] = {"window_s": round(wall, 3)}
        for name in self.groups:
            figures[name] = {
                "cores": round(used[name] / wall, 2) if wall > 0 else None,
                "us_per_msg": round(used[name] / messages * 1e6, 1) if messages else None,
            }
        figures["total_cores"] = round(
            sum(f["cores"] or 0 for k, f in figures.items() if isinstance(f, dict)), 2
        )
        if wall > 0:
            machine = used["machine"] / wall
            figures["machine_cores"] = round(machine, 2)
            # Everything else on the machine: other users' tests, this harness's samplers.
            figures["other_cores"] = round(max(machine - figures["total_cores"], 0.0), 2)
        return figures


def cpu_sampler(
    cfg: CaseConfig, workers: Callable[[], Iterable[int]], background: bool = True
) -> CpuSampler:
    """A started `CpuSampler` over the broker, the workers and this (producer) process;
    with `background` False, one that reads only when its case calls `sample()` (at the
    edges of its windows, for windows too short for a reading every 50 ms)."""
    sampler = CpuSampler(
        {
            "broker": lambda: cfg.broker_pids,
            "workers": workers,
            "producer": lambda: [os.getpid()],
        }
    )
    if background:
        sampler.start()
    return sampler
