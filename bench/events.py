"""What task events cost: taskshuttle on RabbitMQ with events off, on with nobody listening,
and on with a listener, beside raw pika, in one run.

    python -m bench.events                          # N=20000, 3 rounds, classic queue
    python -m bench.events --n 5000 --rounds 1 --queue-type quorum --json out.json

Each round runs every mode once, in turn (so a machine that gets busier mid-run weighs on
every mode alike), for two measures of `bench.systems`: ``drain`` (N tasks published, then
drained by a burst pool; from the stamps the ``noop`` handler leaves) and ``e2e`` (the
producer's `run_rabbitmq` with results while a pool runs). The median of the rounds is kept.
Raw pika's drain is measured in each round too, the baseline of every ratio the main
harness prints; the events ratios are to the ``off`` mode of the same run:

- ``off``: ``TASKSHUTTLE_TASK_EVENTS=false``, nothing published at all;
- ``nobody``: the default, with nobody listening: each worker publishes a heartbeat every
  2 s, which the broker returns, and builds no task event;
- ``listener``: an `EventListener` bound to the queue's events takes every event (3 per
  task: received, started, outcome) while the case runs; it counts them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import uuid
from typing import Any

from bench.broker import delete_prefixed
from bench.config import CaseConfig
from common.defaults import QueueType

MODES = ("off", "nobody", "listener")
MEASURES = ("drain", "e2e")


class _Listening:
    """An `EventListener` for one queue, taking events in a thread until stopped."""

    def __init__(self, url: str, queue: str) -> None:
        from common.factory import open_event_listener

        self.listener = open_event_listener(url, queue)
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._take, name="listener", daemon=True)
        self._thread.start()

    def _take(self) -> None:
        while not self._stop.is_set():
            if self.listener.get(0.2) is not None:
                self.count += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        return self.count


def _case(args: argparse.Namespace, measure: str, queue: str) -> CaseConfig:
    return CaseConfig(
        system="rabbitmq",
        measure=measure,
        n=args.n,
        workers=args.workers,
        prefetch=args.prefetch,
        body_size=0,
        rate=0,
        latency_count=0,
        amqp_url=args.url,
        queue=queue,
        time_limit=args.case_timeout,
        queue_type=QueueType(args.queue_type),
    )


def _run_mode(args: argparse.Namespace, mode: str, measure: str) -> tuple[float, int]:
    """One case: (tasks per second, events the listener took)."""
    from bench import systems

    queue = f"bench-events-{uuid.uuid4().hex[:8]}"
    os.environ["TASKSHUTTLE_TASK_EVENTS"] = "false" if mode == "off" else "true"
    listening = _Listening(args.url, queue) if mode == "listener" else None
    try:
        cfg = _case(args, measure, queue)
        run = systems.rabbit_publish_drain if measure == "drain" else systems.rabbit_e2e
        figures = run(cfg)
    finally:
        heard = listening.stop() if listening else 0
        os.environ.pop("TASKSHUTTLE_TASK_EVENTS", None)
        delete_prefixed(args.url, queue)
    return float(figures[measure]), heard


def _raw_pika_drain(args: argparse.Namespace) -> float:
    from bench import baselines

    queue = f"bench-events-raw-{uuid.uuid4().hex[:8]}"
    try:
        cfg = _case(args, "drain", queue)
        cfg.system = "raw-pika"
        return float(baselines.pika_publish_drain(cfg)["drain"])
    finally:
        delete_prefixed(args.url, queue)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rates: dict[str, dict[str, list[float]]] = {m: {mode: [] for mode in MODES} for m in MEASURES}
    heard: dict[str, list[int]] = {m: [] for m in MEASURES}
    raw: list[float] = []
    for round_number in range(args.rounds):
        raw.append(_raw_pika_drain(args))
        for measure_name in MEASURES:
            for mode in MODES:
                rate, events = _run_mode(args, mode, measure_name)
                rates[measure_name][mode].append(rate)
                if mode == "listener":
                    heard[measure_name].append(events)
                print(
                    f"round {round_number + 1}: {measure_name:5} {mode:8} {rate:9.0f} tasks/s"
                    + (f"  ({events} events heard)" if mode == "listener" else ""),
                    file=sys.stderr,
                    flush=True,
                )
    medians = {m: {mode: statistics.median(v) for mode, v in by.items()} for m, by in rates.items()}
    return {
        "n": args.n,
        "workers": args.workers,
        "queue_type": args.queue_type,
        "rounds": args.rounds,
        "raw_pika_drain": statistics.median(raw),
        "rates": rates,
        "medians": medians,
        "events_heard": heard,
        "load_average": os.getloadavg(),
    }


def print_report(report: dict[str, Any]) -> None:
    raw = report["raw_pika_drain"]
    print(
        f"task events, {report['n']} tasks, {report['workers']} workers, "
        f"{report['queue_type']} queue, median of {report['rounds']} rounds"
    )
    print(f"raw pika drain: {raw:,.0f} tasks/s")
    print(f"{'measure':8} {'mode':9} {'tasks/s':>9} {'vs off':>7} {'vs raw pika':>12}")
    for measure_name, by_mode in report["medians"].items():
        off = by_mode["off"]
        for mode, rate in by_mode.items():
            print(f"{measure_name:8} {mode:9} {rate:9,.0f} {rate / off:6.2f}x {rate / raw:11.2f}x")
        spread = report["rates"][measure_name]["off"]
        if len(spread) > 1:  # what "within noise" means in this run
            print(f"{'':8} off, round to round: {min(spread):,.0f} .. {max(spread):,.0f} tasks/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events")
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queue-type", default="classic", choices=("classic", "quorum"))
    parser.add_argument("--case-timeout", type=float, default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = measure(args)
    print_report(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
