"""What a user sees in a terminal: the log flags, the consumer's live table and summary, and
the producer's live "who did what" table; and that none of the live views shows when piped."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope, TaskResult, TaskStatus, utcnow
from common.settings import load_settings
from consumer.inflight import InFlight
from consumer.live import Rates, live_table, summary_table
from consumer.spec import WorkerSpec
from consumer.supervisor import WorkerPool
from consumer.threads import ThreadWorkers
from consumer.worker import WorkerOptions
from producer import output
from tests.helpers import ROOT, program, run, start, stop, wait_for_output, wait_until

pytestmark = pytest.mark.timeout(120)

JSON_KEYS = {"time", "level", "logger", "message", "pid"}
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _rendered(renderable: object, width: int = 200) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _json_lines(text: str) -> list[dict[str, object]]:
    """Every line of `text` as a JSON object (fails on any line that is not one)."""
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        assert line.keys() >= JSON_KEYS, line
    return lines


# --- the log flags -----------------------------------------------------------------------


def _failing_local_run(*flags: str) -> subprocess.CompletedProcess[str]:
    """Two tasks that fail: each is retried once (an INFO task event), then dead-lettered
    (WARNING), by the producer's own worker processes."""
    return run(
        "producer",
        *("--count", "2", "--kind", "fail", "--max-attempts", "2", "--retry-delay", "0.01"),
        *("--workers", "1", "--json", "--quiet", *flags),
    )


def test_json_log_lines_parse_one_by_one_and_come_from_the_workers_too() -> None:
    completed = _failing_local_run("--log-format", "json", "--log-level", "info")
    assert completed.returncode == 0, completed.stderr
    lines = _json_lines(completed.stderr)
    dead = [line for line in lines if str(line["message"]).startswith("dead-lettering")]
    assert len(dead) == 2
    assert {line["level"] for line in dead} == {"WARNING"}
    assert {line["logger"] for line in dead} == {"taskshuttle.worker"}
    summary = json.loads(completed.stdout)
    assert {line["pid"] for line in dead} == {w["pid"] for w in summary["workers"]}


def test_log_level_filters_and_v_is_info() -> None:
    def levels(*flags: str) -> Counter[str]:
        completed = _failing_local_run("--log-format", "json", *flags)
        assert completed.returncode == 0, completed.stderr
        return Counter(str(line["level"]) for line in _json_lines(completed.stderr))

    assert levels("--log-level", "error") == Counter()
    assert levels("--log-level", "warning") == Counter({"WARNING": 2})
    assert levels() == Counter({"WARNING": 2})  # the default
    # INFO: the task events the parent logs for its worker: online, then for each task
    # "received", "retry in", "received" again (its dead letter is the worker's WARNING), offline
    assert levels("--log-level", "info")["INFO"] == 8
    assert levels("-v")["INFO"] == 8


def test_text_is_the_default_log_format() -> None:
    completed = _failing_local_run()
    lines = completed.stderr.splitlines()
    assert len(lines) == 2
    assert all(" WARNING dead-lettering " in line for line in lines)


@pytest.mark.parametrize("prog", ["producer", "consumer"])
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--log-level", "loud"], {}, "'--log-level'"),
        (["--log-format", "xml"], {}, "'--log-format'"),
        ([], {"TASKSHUTTLE_LOG_LEVEL": "loud"}, "'TASKSHUTTLE_LOG_LEVEL'"),
    ],
)
def test_an_invalid_log_flag_is_one_line_and_exit_2(
    prog: str, args: list[str], env: dict[str, str], named: str
) -> None:
    completed = run(prog, *args, env=env, timeout=30)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert completed.stderr.startswith(f"{prog}: error: Invalid value for {named}")
    assert completed.stdout == ""


# --- the consumer's figures and views, from shared memory --------------------------------


def test_the_live_table_shows_what_the_workers_wrote_in_shared_memory() -> None:
    in_flight = InFlight(2)
    first, second = in_flight.record(0), in_flight.record(1)
    first.started(101, 100)
    second.started(102, 100)
    first.take("task-in-hand", redelivered=False, kind="sleep")
    first.count(succeeded=7, retried=2, dead_lettered=1)
    second.count(succeeded=3, retried=0, dead_lettered=0)
    text = _rendered(live_table(in_flight, Rates(), "consumer"))
    row0 = next(line for line in text.splitlines() if "101" in line)
    assert re.search(r"0 │\s+101 │\s+100 │\s+7 │\s+1 │\s+2 │\s+0 │ task-in-hand\s+│ sleep", row0)
    total = next(line for line in text.splitlines() if " all " in line)
    assert re.search(r"all │\s+│\s+│\s+10 │\s+1 │\s+2 │\s+0 │ 1 of 2 busy", total)

    # Slot 1's worker dies and is replaced: its figures stay in the slot's totals.
    in_flight.retire(1, replaced=True)
    in_flight.record(1).started(103, 100)
    text = _rendered(live_table(in_flight, Rates(), "consumer"))
    row1 = next(line for line in text.splitlines() if "103" in line)
    assert re.search(r"1 │\s+103 │\s+100 │\s+3 │\s+0 │\s+0 │\s+1 │ -", row1)
    summary = _rendered(summary_table(in_flight))
    rows = {line.split("│")[2].strip(): line for line in summary.splitlines() if "│" in line}
    assert rows["102"].rstrip(" │").endswith("replaced")
    assert rows["103"].rstrip(" │").endswith("stopped")
    assert rows["101"].rstrip(" │").endswith("stopped")
    assert re.search(r"all │\s+│\s+│\s+10 │\s+1 │\s+2 │ 3 workers, 1 replaced", summary)


def test_task_ids_and_kinds_are_shown_as_text_not_markup() -> None:
    in_flight = InFlight(1)
    record = in_flight.record(0)
    record.started(101, 100)
    record.take("[bold]x[/]\x1b[2J", redelivered=False, kind="[/]")
    text = _rendered(live_table(in_flight, Rates(), "queue '[/]'"))
    assert "[bold]x[/]\\x1b[2J" in text and "│ [/]" in text and "queue '[/]'" in text


def test_rates_are_tasks_per_second_over_the_window() -> None:
    rates = Rates(window=5.0)
    assert rates.rate(0, 0, now=100.0) == 0.0
    assert rates.rate(0, 10, now=101.0) == 10.0
    assert rates.rate(0, 30, now=102.0) == 15.0
    for second in range(3, 12):
        rates.rate(0, 30 + 4 * (second - 2), now=100.0 + second)
    assert rates.rate(0, 70, now=112.0) == pytest.approx(4.0)  # the first burst is forgotten


def _slot(result: TaskResult) -> int:
    return int(result.worker_name.rsplit("worker-", 1)[1])  # "worker-0", "MainProcess/worker-1"


@pytest.mark.broker
@pytest.mark.parametrize("pool_kind", ["process", "thread"])
def test_the_supervisors_figures_equal_what_the_workers_did(
    broker_url: str, queue_name: str, pool_kind: str
) -> None:
    done, failing = 30, 6
    settings = load_settings(amqp_url=broker_url, queue=queue_name, workers=2, prefetch=5)
    options = WorkerOptions(max_attempts=2, retry_base_delay=0.05, retry_max_delay=0.1)
    spec = WorkerSpec(settings, options)
    pool = ThreadWorkers(spec, 2) if pool_kind == "thread" else WorkerPool(spec, 2)
    results: list[TaskResult] = []
    pool.start()
    try:
        assert pool.wait_ready()
        with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
            tasks = [TaskEnvelope(kind="echo", payload={"n": n}) for n in range(done)]
            tasks += [TaskEnvelope(kind="fail", payload={}) for _ in range(failing)]
            producer.publish(tasks)

            def collected() -> bool:
                while (result := producer.receive_result(0.05)) is not None:
                    results.append(result)
                pool.check()
                return len(results) >= done + failing

            assert wait_until(collected, timeout=60)
        in_flight = pool.in_flight
        # Each attempt but a task's last was sent to retry (a fail task's first, unless the
        # broker refused its retry: then it is dead-lettered at once as worker-error).
        retried = sum(r.attempt - 1 for r in results)
        assert retried <= failing
        # The last counts are written just after the acks: wait for them, briefly.
        settled = len(results) + retried
        assert wait_until(
            lambda: sum(in_flight.totals(s).settled for s in range(2)) == settled, timeout=5
        )
        for slot in range(2):
            figures = in_flight.totals(slot)
            mine = [r for r in results if _slot(r) == slot]
            assert figures.succeeded == sum(r.status is TaskStatus.DONE for r in mine)
            assert figures.dead_lettered == sum(r.status is TaskStatus.FAILED for r in mine)
            assert {figures.pid} == {r.worker_pid for r in mine} or not mine
            assert figures.task_id is None and figures.running_for is None
        assert sum(in_flight.totals(s).retried for s in range(2)) == retried
    finally:
        pool.stop(timeout=10)


@pytest.mark.broker
def test_a_replaced_worker_keeps_its_slot_and_its_figures(broker_url: str, queue_name: str) -> None:
    settings = load_settings(amqp_url=broker_url, queue=queue_name, workers=2)
    pool = WorkerPool(WorkerSpec(settings, WorkerOptions()), 2)
    pool.start()
    try:
        assert pool.wait_ready()
        with RabbitBackend(broker_url, queue_name, want_results=True) as producer:
            producer.publish([TaskEnvelope(kind="echo", payload={}) for _ in range(10)])
            taken: list[TaskResult] = []

            def all_back() -> bool:
                while (result := producer.receive_result(0.05)) is not None:
                    taken.append(result)
                return len(taken) == 10

            assert wait_until(all_back, timeout=30)
        in_flight = pool.in_flight
        assert wait_until(lambda: sum(in_flight.totals(s).succeeded for s in range(2)) == 10, 5)
        before = in_flight.totals(0)
        os.kill(before.pid or 0, signal.SIGKILL)

        def replaced() -> bool:
            pool.check(0.1)
            return in_flight.figures(0).pid not in (None, before.pid)

        assert wait_until(replaced, timeout=30)
        assert in_flight.restarts == [1, 0]
        assert [(f.pid, f.replaced) for f in in_flight.earlier] == [(before.pid, True)]
        after = in_flight.totals(0)
        assert (after.succeeded, after.pid) == (before.succeeded, in_flight.figures(0).pid)
        row = next(
            line
            for line in _rendered(live_table(in_flight, Rates(), "t")).splitlines()
            if f" {after.pid} " in line
        )
        assert re.search(
            rf"0 │\s+{after.pid} │\s+\d+ │\s+{after.succeeded} │\s+0 │\s+0 │\s+1 │", row
        )
    finally:
        pool.stop(timeout=10)


# --- the consumer as a user runs it -----------------------------------------------------


@pytest.mark.broker
def test_the_consumer_says_it_started_and_stopped_at_info_by_default(queue_name: str) -> None:
    consumer = start("consumer", "--queue", queue_name, "--workers", "2")
    wait_for_output(consumer, "consumer started", timeout=60)
    code, out, err = stop(consumer, signal.SIGTERM)
    assert code == 0, err
    assert out == ""  # piped: no live table, no summary table
    started = next(line for line in err.splitlines() if "consumer started" in line)
    assert " INFO consumer started: 2 worker processes (pids " in started
    assert f"consuming queue {queue_name!r} on amqp://" in started
    assert "consumer stopped (on SIGTERM)" in err.splitlines()[-1]
    assert " INFO " in err.splitlines()[-1]


@pytest.mark.broker
def test_the_summary_after_ctrl_c_counts_every_task_sent(queue_name: str) -> None:
    consumer = start("consumer", "--queue", queue_name, "--workers", "2", "--log-format", "json")
    try:
        wait_for_output(consumer, "consumer started", timeout=60)
        for kind, count, tries in (("echo", "30", "3"), ("fail", "4", "1")):
            produced = run(
                "producer",
                *("--backend", "rabbitmq", "--queue", queue_name, "--kind", kind),
                *("--count", count, "--max-attempts", tries, "--wait", "--json", "-q"),
            )
            assert produced.returncode == 0, produced.stderr
    finally:
        code, out, err = stop(consumer, signal.SIGINT)
    assert code == 0, err
    assert out == ""
    lines = _json_lines(err)
    started = next(line for line in lines if "consumer started" in str(line["message"]))
    assert (started["level"], started["logger"]) == ("INFO", "taskshuttle.status")
    dead = [line for line in lines if str(line["message"]).startswith("dead-lettering")]
    assert len(dead) == 4 and all(line["pid"] != started["pid"] for line in dead)
    workers = [line for line in lines if str(line["message"]).startswith("worker slot")]
    assert len(workers) == 2
    in_all = next(str(line["message"]) for line in lines if "in all:" in str(line["message"]))
    assert in_all.startswith("in all: 30 done, 4 failed (dead-lettered), 0 retried, by 2 ")
    done = [int(re.search(r": (\d+) done", str(line["message"]))[1]) for line in workers]  # type: ignore[index]
    assert sum(done) == 30


class _Terminal:
    """A program whose stdin, stdout and stderr are a pseudo-terminal, and what it wrote."""

    def __init__(self, process: subprocess.Popen[bytes], leader: int) -> None:
        self.process = process
        self.leader = leader
        self.written = b""

    def read(self, seconds: float, until: str | None = None) -> str:
        """Read what the program writes for `seconds` (or until `until` shows); all so far,
        without the escape sequences (colours, cursor moves)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.leader], [], [], 0.1)
            if ready:
                try:
                    self.written += os.read(self.leader, 65536)
                except OSError:  # the program closed the terminal
                    break
            if until is not None and until.encode() in self.written:
                break
        return ANSI_ESCAPE.sub("", self.written.decode(errors="replace"))


@contextlib.contextmanager
def _in_a_terminal(*argv: str, stderr: IO[bytes] | None = None) -> Iterator[_Terminal]:
    """Run a program in a pseudo-terminal 160 columns wide (its stderr too, unless given);
    killed, with its process group, at the end if it still runs."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen(
        argv,
        stdin=follower,
        stdout=follower,
        stderr=follower if stderr is None else stderr,
        cwd=ROOT,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    os.close(follower)
    try:
        yield _Terminal(process, leader)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(leader)


@pytest.mark.broker
def test_on_a_terminal_the_consumer_draws_a_live_table_then_a_summary(queue_name: str) -> None:
    with _in_a_terminal(*program("consumer", "--queue", queue_name, "--workers", "2")) as term:
        assert "consumer started" in term.read(60, until="consumer started")
        for kind, count, payload in (("sleep", "20", '{"seconds": 0.05}'), ("fail", "2", "{}")):
            produced = run(
                "producer",
                *("--backend", "rabbitmq", "--queue", queue_name, "--count", count),
                *("--kind", kind, "--payload", payload, "--max-attempts", "1"),
                *("--wait", "--json", "-q"),
            )
            assert produced.returncode == 0, produced.stderr
        before = term.read(1.5)
        term.process.send_signal(signal.SIGINT)
        text = term.read(30, until="consumer stopped")
        assert term.process.wait(timeout=30) == 0, text
    assert before.count("task in hand") >= 2  # redrawn while it ran
    assert re.search(r"all │\s+│\s+│\s+20 │\s+2 │\s+0 │\s+0 │ 0 of 2 busy", before), before[-3000:]
    summary = text[text.index("what each worker did") :]
    assert re.search(r"all │\s+│\s+│\s+20 │\s+2 │\s+0 │ 2 workers, 0 replaced", summary)
    # The workers' own lines come above the table (after rich erased it to draw it again
    # below them), never glued to a row of it.
    line = rb"(?s)(.)\d{4}-\d\d-\d\d [\d:,]+ worker-\d WARNING dead-lettering"
    worker_lines = re.findall(line, term.written)
    assert len(worker_lines) == 2
    assert set(worker_lines) <= {b"K", b"\n"}, worker_lines  # ESC [2K: the line erased
    assert "consumer stopped (on SIGINT)" in summary


@pytest.mark.broker
def test_a_stderr_sent_to_a_file_keeps_the_log_lines_beside_the_live_table(
    queue_name: str, tmp_path: Path
) -> None:
    argv = program("consumer", "--queue", queue_name, "--workers", "1")
    with (tmp_path / "consumer.log").open("w+b") as log, _in_a_terminal(*argv, stderr=log) as term:
        assert wait_until(lambda: b"consumer started" in log_text(log), 60)
        assert "task in hand" in term.read(1.5)
        term.process.send_signal(signal.SIGINT)
        text = term.read(30, until="what each worker did")
        assert term.process.wait(timeout=30) == 0, text
        logged = log_text(log).decode()
    assert "consumer started" in logged and "consumer stopped (on SIGINT)" in logged
    assert "consumer started" not in text and "consumer stopped" not in text
    assert "what each worker did" in text


def log_text(log: IO[bytes]) -> bytes:
    log.seek(0)
    return log.read()


# --- the producer's live "who did what" ---------------------------------------------------


def _result(pid: int, name: str) -> TaskResult:
    now = utcnow()
    return TaskResult(
        task_id="t",
        kind="echo",
        status=TaskStatus.DONE,
        attempt=1,
        redelivered=False,
        worker_pid=pid,
        worker_ppid=1,
        worker_host="h",
        worker_name=name,
        started_at=now,
        finished_at=now,
        created_at=now,
    )


def test_the_producers_live_table_counts_the_results_as_they_come() -> None:
    bar = output._Bar(10, counting_results=True, who=True)
    for pid, name in [(11, "worker-0")] * 3 + [(12, "worker-1")] * 2:
        bar.result(_result(pid, name))
    bar.done(5)
    text = _rendered(bar._bar.get_renderable())
    assert "who did what" in text
    assert re.search(r"11 │\s+1 │ worker-0 │\s+3 │", text)
    assert re.search(r"12 │\s+1 │ worker-1 │\s+2 │", text)


def test_no_live_view_when_stderr_is_not_a_terminal() -> None:
    with output.progress(10, True, show=True, who=True) as shown:
        assert type(shown) is output.run.Progress  # pytest captures stderr: not a terminal
    completed = run("producer", "--count", "20", "--workers", "2")
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.count("who did what") == 1  # the final summary's only


def test_on_a_terminal_the_producer_redraws_who_did_what_then_prints_the_summary() -> None:
    argv = program(
        "producer",
        *("--count", "30", "--workers", "3", "--kind", "sleep", "--payload", '{"seconds": 0.1}'),
    )
    with _in_a_terminal(*argv) as term:
        text = term.read(60, until="delivery ledger")
        assert term.process.wait(timeout=30) == 0, text
    assert text.count("who did what") >= 3  # live frames, then the summary's table
    summary = text[text.rindex("who did what") :]
    assert sum(map(int, re.findall(r"worker-\d │\s+(\d+) │", summary))) == 30
