"""One chaos run: a broker node of its own, a consumer, a producer, and faults on a schedule.

`ChaosRun.run(plan)` does the whole run and returns its `Report`; `close()` (always called,
also after Ctrl-C or an error) stops and reaps every process the run started. The checks
are in `_verdict`; the faults are the `do_*` methods, one per event name, and
`_publish_hostile` for the garbage, forged and oversized messages.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections import Counter

from common.rabbitmq.revocations import REVOCATION_STREAM
from common.settings import load_settings
from producer.ledger import Fate
from tests import chaos_amqp, chaos_hostile
from tests.busy import start_busy, stop_busy
from tests.chaos_feed import Feeder
from tests.chaos_plan import Options, Step
from tests.chaos_procs import Consumer, consumer_summary, describe, group_members
from tests.chaos_report import Events, Report
from tests.rabbit_node import RabbitNode, RabbitNodeError, amqp_answers, free_port

#: The harness SIGKILLs at most this many workers of one consumer per minute: the consumer
#: may give up after 5 deaths a minute (its restart budget), and that is not what is tested.
WORKER_KILLS_PER_MINUTE = 2
CONSUMER_RESTART_BACKOFF = 5.0
NODE_START_TIMEOUT = 120.0


class HarnessError(Exception):
    """The harness could not do its job; says nothing about the product."""


class ChaosRun:
    def __init__(self, options: Options, events: Events) -> None:
        self.o = options
        self.events = events
        self.queue = f"chaos-{options.seed}-{os.getpid()}"
        self.node = RabbitNode(free_port(), f"chaos-{os.getpid()}", options.workdir)
        self.node_groups: set[int] = set()
        self.consumers: list[Consumer] = []
        self.consumer: Consumer | None = None
        self.restart_consumer_at: float | None = None
        self.exits: list[str] = []  # the consumer's exits by itself
        self.feeder: Feeder | None = None
        self.hostile: list[chaos_hostile.Hostile] = []
        self.loads: list[tuple[float, list]] = []  # (ends at, busy loops)
        self.background: list = []
        self.failures: list[str] = []
        self.done_kinds: set[str] = set()
        self.skipped_late = 0
        self.t0 = 0.0
        self.cpus = max(os.cpu_count() or 1, 2)

    # -- the run -----------------------------------------------------------------------------
    def run(self, plan: list[Step]) -> Report:
        self._start_node()
        self.background = start_busy(self.o.busy)
        if self.o.busy:
            self.events.add("busy", f"{self.o.busy} busy loops for the whole run")
        self._start_consumer("first start")
        self._wait_for_workers(60)
        settings = load_settings(amqp_url=self.node.url, queue=self.queue)
        self.feeder = Feeder(
            settings,
            self.o.rate,
            self.o.seed + 1,
            self.events,
            lambda: amqp_answers(self.node.port),
        )
        self.feeder.start()
        self.events.add("sending", f"{self.o.rate:g} tasks/s to {self.queue}")
        self.t0 = self.events.now()  # the plan's clock starts with the flow of tasks
        for step in plan:
            self._sleep_until(self.t0 + step.at)
            if self.events.now() - self.t0 > self.o.seconds and step.kind in self.done_kinds:
                self.skipped_late += 1  # behind schedule: only kinds not yet seen still run
                continue
            self._watch()  # a consumer that exited by itself is seen before the next fault
            if step.kind in chaos_hostile.CATEGORIES:
                self._publish_hostile(step, step.kind)
            else:
                getattr(self, "do_" + step.kind.replace("-", "_"))(step)
            self.done_kinds.add(step.kind)
        self._sleep_until(self.t0 + self.o.seconds)
        if self.skipped_late:
            self.events.add("behind-schedule", f"{self.skipped_late} late steps skipped")
        self._finish()
        return self._verdict()

    def _start_node(self) -> None:
        try:
            self.node.start(timeout=NODE_START_TIMEOUT)
        except RabbitNodeError as exc:
            first_line = str(exc).splitlines()[0]
            self.events.add("broker-start-retry", first_line)
            self.node.kill()
            try:
                self.node.start(timeout=NODE_START_TIMEOUT)
            except RabbitNodeError as again:
                raise HarnessError(f"the broker node would not start: {again}") from None
        if (pid := self.node.vm_pid()) is not None:
            with contextlib.suppress(OSError):
                self.node_groups.add(os.getpgid(pid))

    def _start_consumer(self, why: str) -> None:
        number = len(self.consumers) + 1
        args = [
            "--backend", "rabbitmq", "--url", self.node.url, "--queue", self.queue,
            "--workers", str(self.o.workers), "--prefetch", str(self.o.prefetch),
            "--retry-delay", "0.2", "--handlers", "tests.chaos_tasks",
        ]  # fmt: skip
        consumer = Consumer(number, args, self.o.workdir / f"consumer-{number}.log")
        self.consumers.append(consumer)
        self.consumer = consumer
        self.restart_consumer_at = None
        self.events.add("consumer-start", f"#{number} pid {consumer.pid} ({why})")

    def _wait_for_workers(self, timeout: float) -> None:
        """Until the broker sees every worker consuming (its view, not the consumer's log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._watch()
            if self._queue_stats("consumers").get(self.queue, 0) >= self.o.workers:
                return
            time.sleep(0.5)
        self.events.add(
            "consumer-slow", f"fewer than {self.o.workers} consumers after {timeout:g}s"
        )

    # -- watching between steps --------------------------------------------------------------
    def _sleep_until(self, at: float) -> None:
        while self.events.now() < at:
            self._watch()
            time.sleep(min(0.2, max(at - self.events.now(), 0)))

    def _pause(self, seconds: float) -> None:
        self._sleep_until(self.events.now() + seconds)

    def _watch(self) -> None:
        if self.events.now() > self.o.deadline:
            raise HarnessError(f"the run passed its deadline ({self.o.deadline:g}s)")
        now = time.monotonic()
        for ends, procs in [load for load in self.loads if load[0] <= now]:
            self.loads.remove((ends, procs))
            stop_busy(procs)
            self.events.add("cpu-load-end", f"{len(procs)} busy loops stopped")
        if self.consumer is not None and self.consumer.exited_by_itself():
            self._note_exit(self.consumer)
            self.restart_consumer_at = now + CONSUMER_RESTART_BACKOFF
        if self.consumer is None and self.restart_consumer_at and now >= self.restart_consumer_at:
            self._start_consumer(f"restarted {CONSUMER_RESTART_BACKOFF:g}s after it exited")

    def _note_exit(self, consumer: Consumer) -> None:
        code = consumer.proc.returncode
        self.exits.append(f"#{consumer.number} code {code}: {consumer.tail(2)}")
        self.events.add(
            "consumer-exited", f"#{consumer.number} BY ITSELF, code {code}: {consumer.tail()}"
        )
        self._check_left(consumer, "after the consumer exited by itself")
        self.consumer = None

    def _check_left(self, consumer: Consumer, when: str, within: float = 10) -> None:
        left = consumer.leftovers(within)
        if left:
            self.failures.append(f"left behind {when} (#{consumer.number}): {'; '.join(left)}")
            self.events.add("left-behind", f"#{consumer.number}: {'; '.join(left)}")
        consumer.close()

    # -- the faults --------------------------------------------------------------------------
    def do_kill_worker(self, step: Step) -> None:
        consumer = self.consumer
        if consumer is None:
            self.events.add("kill-worker", "skipped: no consumer running")
            return
        now = time.monotonic()
        if sum(now - t < 60 for t in consumer.worker_kills) >= WORKER_KILLS_PER_MINUTE:
            self.events.add("kill-worker", "skipped: 2 killed in the last minute already")
            return
        workers = consumer.workers()
        if not workers:
            self.events.add("kill-worker", "skipped: no worker process running")
            return
        victim = workers[int(step.pick * len(workers))]
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        consumer.worker_kills.append(now)
        self.events.add("kill-worker", f"SIGKILL worker {victim} of #{consumer.number}")

    def do_kill_supervisor(self, step: Step) -> None:
        old = self.consumer
        if old is None:
            self.events.add("kill-supervisor", "skipped: no consumer running")
            return
        workers = old.workers()
        old.kill()
        self.events.add(
            "kill-supervisor", f"SIGKILL supervisor {old.pid} of #{old.number}, workers {workers}"
        )
        self._check_left(old, "10s after its supervisor was SIGKILLed")
        self._start_consumer("replaces the killed one")

    def _broker_down(self, step: Step, name: str, stop: str) -> None:
        started = time.monotonic()
        if stop == "kill":
            self.events.add(name, f"SIGKILL the Erlang VM (pid {self.node.vm_pid()})")
            self.node.kill()
        else:
            self.events.add(name, "graceful stop (SIGTERM)")
            try:
                self.node.stop(timeout=60)
            except RabbitNodeError:
                self.events.add(name, "did not stop within 60s of SIGTERM: killed")
        stopped = time.monotonic()
        self._pause(step.down)
        self._start_node()
        up = time.monotonic()
        self.events.add(
            "broker-up", f"stopping took {stopped - started:.1f}s, down for {up - stopped:.1f}s"
        )

    def do_restart_broker(self, step: Step) -> None:
        self._broker_down(step, "restart-broker", "stop")

    def do_kill_broker(self, step: Step) -> None:
        self._broker_down(step, "kill-broker", "kill")

    def _publish_hostile(self, step: Step, category: str) -> None:
        made = chaos_hostile.make(category, random.Random(step.seed), len(self.hostile) + 1)
        self.hostile += made
        notes = []
        for h in made:
            try:
                chaos_amqp.publish(self.node.url, self.queue, [h.body], timeout=30)
                h.published = True
                notes.append(f"#{h.number} {h.label}")
            except chaos_amqp.AmqpTrouble as exc:
                notes.append(f"#{h.number} {h.label} NOT published ({exc})")
        self.events.add(category, "; ".join(notes))

    def do_cpu_load(self, step: Step) -> None:
        procs = start_busy(self.cpus)
        self.loads.append((time.monotonic() + step.load, procs))
        self.events.add("cpu-load", f"{len(procs)} busy loops for {step.load:.0f}s")

    # -- the end -----------------------------------------------------------------------------
    def _queue_stats(self, column: str = "messages") -> dict[str, int]:
        """`column` (messages: ready and unacked) of every queue, as the broker reports it."""
        try:
            text = self.node.ctl("list_queues", "name", column, "--no-table-headers")
        except (RabbitNodeError, OSError, subprocess.TimeoutExpired) as exc:
            self.events.add("list-queues-failed", str(exc).splitlines()[0])
            return {}
        stats = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                stats[parts[0]] = int(parts[1])
        return dict(sorted(stats.items()))

    def _unsettled(self, depths: dict[str, int]) -> dict[str, int]:
        """Queues still holding work: anything but the DLQ, reply queues and the revocation
        stream (a log every worker reads, whose messages are never consumed away)."""
        return {
            q: n
            for q, n in depths.items()
            if n and q != f"{self.queue}.dlq" and ".replies." not in q and q != REVOCATION_STREAM
        }

    def _finish(self) -> None:
        assert self.feeder is not None
        for load in self.loads:
            stop_busy(load[1])
        self.loads.clear()
        ledger = self.feeder.ledger
        if not self.feeder.stop_publishing(timeout=self.o.drain):
            raise HarnessError(f"a publish call was still going {self.o.drain}s after the end")
        self.events.add("stop-sending", f"{len(ledger.sent)} tasks confirmed; draining")
        drain_end = self.events.now() + self.o.drain
        unsettled: dict[str, int] = {}
        next_look = 0.0
        while self.events.now() < drain_end:
            self._watch()
            if ledger.outstanding == 0 and self.events.now() >= next_look:
                unsettled = self._unsettled(self._queue_stats())
                if not unsettled:
                    break
                next_look = self.events.now() + 3
            time.sleep(0.3)
        if ledger.outstanding or unsettled:
            unsettled = self._unsettled(self._queue_stats())
        self.events.add(
            "drained" if ledger.outstanding == 0 and not unsettled else "drain-timeout",
            f"{ledger.outstanding} confirmed tasks without a result; queues holding work: "
            f"{unsettled or 'none'}",
        )
        self._stop_consumer()
        self.feeder.stopping.set()
        self.feeder.join(90)
        if self.feeder.is_alive():
            raise HarnessError("the feeder thread did not stop within 90s")
        self.feeder.finish()

    def _stop_consumer(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        if consumer.exited_by_itself():
            self._note_exit(consumer)
            return
        code = consumer.terminate(60)
        if code is None:
            self.failures.append(f"consumer #{consumer.number} did not exit within 60s of SIGTERM")
        elif code != 0:
            self.failures.append(
                f"consumer #{consumer.number} exited {code} after SIGTERM: {consumer.tail(2)}"
            )
        self.events.add("consumer-stop", f"#{consumer.number} SIGTERM: exit code {code}")
        self._check_left(consumer, "after SIGTERM and exit")
        self.consumer = None

    def _verdict(self) -> Report:
        assert self.feeder is not None
        ledger = self.feeder.ledger
        report = Report(self.o.seed, self.o.seconds, str(self.o.workdir))
        report.ledger = ledger.summary("rabbitmq")
        report.ledger.pop("workers", None)
        report.ledger["by_kind"] = self.feeder.by_kind()
        report.producer = self.feeder.summary()
        report.consumer = consumer_summary(self.consumers, len(self.exits))
        depths = self._queue_stats()
        report.queues = {q: n for q, n in depths.items() if n}
        elsewhere = {
            q: [body for body, _ in chaos_amqp.peek(self.node.url, q, limit=1000)]
            for q in self._unsettled(depths)
        }
        dlq = chaos_amqp.peek(self.node.url, f"{self.queue}.dlq")
        self.failures += chaos_hostile.locate(self.hostile, dlq, elsewhere)
        report.hostile = [h.as_dict() for h in self.hostile]
        lost = [i for i in ledger.sent if ledger.fate(i) is Fate.LOST]
        if lost:
            queued = Counter(
                queue
                for i in lost
                for queue, bodies in elsewhere.items()
                if any(i.encode() in body for body in bodies)
            )
            sample = ", ".join(f"{i[:8]} ({self.feeder.kinds.get(i)})" for i in lost[:5])
            self.failures.append(
                f"{len(lost)} confirmed tasks lost (no result), e.g. {sample}; of them still "
                f"queued: {dict(queued) or 'none'}"
            )
        if self.exits:
            self.failures.append(
                f"the consumer exited by itself {len(self.exits)} times: {self.exits[0]}"
            )
        for queue, n in self._unsettled(depths).items():
            self.failures.append(f"{n} messages still in {queue} after the drain")
        if self.feeder.error is not None:
            report.harness_error = f"feeder: {self.feeder.error!r}"
        report.failures = self.failures
        return report

    # -- cleanup -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and reap everything this run started; add a failure for anything left."""
        if self.feeder is not None:
            self.feeder.stopping.set()
        for _ends, procs in self.loads:
            stop_busy(procs)
        stop_busy(self.background)
        for consumer in self.consumers:
            if consumer.proc.poll() is None:
                consumer.kill_group()
            self._check_left(consumer, "at the end", within=5)
        if self.feeder is not None:
            self.feeder.join(15)
        try:
            self.node.close()
        finally:
            for pgid in self.node_groups:
                if left := group_members(pgid):
                    self.failures.append(f"broker left behind: {[describe(p) for p in left]}")
                    with contextlib.suppress(OSError):
                        os.killpg(pgid, signal.SIGKILL)

    def emergency_kill(self) -> None:
        """From the watchdog thread, when the main thread is stuck: SIGKILL everything."""
        groups = {c.pgid for c in self.consumers} | self.node_groups
        groups |= {p.pid for _e, procs in self.loads for p in procs}
        groups |= {p.pid for p in self.background}
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
