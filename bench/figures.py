"""From raw times and counts to the figures a case reports: rates, latency percentiles, RSS."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bench.config import CaseError
from bench.stamps import stamp_window
from producer.ledger import percentile

if TYPE_CHECKING:
    from bench.procs import CpuSampler


def per_second(count: float, seconds: float) -> float:
    if seconds <= 0:
        raise CaseError(f"non-positive duration {seconds!r} for {count} messages")
    return round(count / seconds, 1)


def _ms_figure(values_ms: list[float], pct: int) -> float:
    return round(percentile(values_ms, pct) or 0.0, 3)


def latency_figures(
    seconds: Iterable[float],
    sent: int,
    elapsed: float,
    from_publish: Iterable[float] = (),
) -> dict[str, Any]:
    """p50/p99 of send-to-result times, where "sent" is when the publish returned (for
    RabbitMQ: confirmed), as `Ledger.latency` counts it. `from_publish`: the same results
    timed from just before the publish call, so the confirm's wait is inside."""
    ms = sorted(v * 1000 for v in seconds)
    if not ms:
        raise CaseError("no latency sample came back")
    figures = {
        "p50_ms": _ms_figure(ms, 50),
        "p99_ms": _ms_figure(ms, 99),
        "max_ms": round(ms[-1], 3),
        "samples": len(ms),
        "sent": sent,
        "achieved_rate": round(sent / elapsed, 1) if elapsed > 0 else None,
    }
    whole = [v * 1000 for v in from_publish]
    if whole:
        figures["from_publish_p50_ms"] = _ms_figure(whole, 50)
        figures["from_publish_p99_ms"] = _ms_figure(whole, 99)
    return figures


def call_figures(seconds: Iterable[float]) -> dict[str, Any]:
    """p50, p99, max and mean of how long calls took, in ms, and how many were timed."""
    ms = sorted(v * 1000 for v in seconds)
    if not ms:
        raise CaseError("no call was timed")
    return {
        "p50_ms": _ms_figure(ms, 50),
        "p99_ms": _ms_figure(ms, 99),
        "max_ms": round(ms[-1], 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "samples": len(ms),
    }


def rss_figures(peak_kib: dict[int, int], method: str = "VmHWM") -> dict[str, Any]:
    """Per-worker peak resident set sizes (KiB by pid) as MiB: the largest, the mean, each."""
    if not peak_kib:
        return {"method": f"{method} (no worker seen)", "per_worker_mib": None, "workers": {}}
    values = list(peak_kib.values())
    return {
        "method": method,
        "per_worker_mib": round(max(values) / 1024, 1),
        "mean_mib": round(sum(values) / len(values) / 1024, 1),
        "workers": {str(pid): round(kib / 1024, 1) for pid, kib in peak_kib.items()},
    }


def stamps_rss(stamps: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' peak RSS, as each reported it in its stamps."""
    return rss_figures({s["pid"]: s["vmhwm_kib"] for s in stamps if s.get("vmhwm_kib")})


def stamped_figures(
    key: str, n: int, stamps: list[dict[str, Any]], start: float, cpu: CpuSampler
) -> dict[str, Any]:
    """The `key` rate of `n` messages from `start` to the last one any worker handled (by
    their stamps, checked against `n`), with their peak RSS and the CPU over that window."""
    _, last, count = stamp_window(stamps)
    if count != n:
        raise CaseError(f"workers handled {count} messages, expected {n}")
    return {
        key: per_second(n, last - start),
        "rss": stamps_rss(stamps),
        "cpu": cpu.usage(start, last, n),
        "details": {"per_worker": [s["count"] for s in stamps]},
    }
