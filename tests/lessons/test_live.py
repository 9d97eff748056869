"""Live output: each lesson announces each step before it runs it, and draws each result
after. Checked on the order of the captured output, never on timings: every function a step
runs is wrapped, and notes which step line was the last one printed when it was called."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rich.console import Console

from lessons import (
    daemon,
    mutex,
    process_objects,
    producer_consumer,
    queues,
    show,
    threads,
    zombie_orphan,
)
from lessons.i18n import Lang, set_language

STEP = re.compile(r"^» step (\d+): (.*)$")


class Screen:
    """What a lesson printed, and the order things happened in."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        #: (function called, the last step line printed before the call)
        self.calls: list[tuple[str, str]] = []

    def last_step(self) -> str:
        steps = [line for line in self.buffer.getvalue().splitlines() if STEP.match(line)]
        return steps[-1] if steps else ""

    def spy(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(module, name)

        def called(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, self.last_step()))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, called)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def steps(self) -> list[tuple[int, str]]:
        return [(int(m[1]), m[2]) for line in self.lines() if (m := STEP.match(line))]


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Screen]:
    seen = Screen()
    # Not a terminal, as in a pipe: step announcements are plain lines.
    monkeypatch.setattr(show, "console", Console(file=seen.buffer, width=100, highlight=False))
    set_language(Lang.en)
    show.start_live()
    yield seen
    show.stop_live()


def _check(screen: Screen, expected: list[tuple[str, str]], results: list[tuple[str, int]]) -> None:
    """`expected`: each (function, words of the step line that must have come just before its
    call), in order. `results`: each (words of a result's title, the step it must follow)."""
    steps = screen.steps()
    assert [n for n, _ in steps] == list(range(1, len(steps) + 1))  # numbered, in order
    assert len(steps) == len(expected)  # one announcement per step
    assert [name for name, _ in screen.calls] == [name for name, _ in expected]
    for n, ((name, before), (_, words)) in enumerate(zip(screen.calls, expected, strict=True), 1):
        assert before == f"» step {n}: {STEP.match(before)[2]}", (name, before)  # type: ignore[index]
        assert words in before, (name, before, words)
    lines = screen.lines()
    where = {n: i for i, line in enumerate(lines) if (m := STEP.match(line)) for n in [int(m[1])]}
    for words, step in results:
        at = next(i for i, line in enumerate(lines) if words in line and not STEP.match(line))
        assert at > where[step], (words, step)
        if step + 1 in where:
            assert at < where[step + 1], (words, step)


@pytest.mark.timeout(90)
def test_daemon_announces_each_step(screen: Screen, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("course_run", "set_after_start", "run_emperor"):
        screen.spy(monkeypatch, daemon, name)
    daemon.run("local", steward_seconds=0.5)
    _check(
        screen,
        [
            ("course_run", "(p.daemon = True)"),
            ("course_run", "(without p.daemon = True)"),
            ("set_after_start", "after p.start()"),
            ("run_emperor", "(daemon=True)"),
            ("run_emperor", "(daemon=False)"),
        ],
        [("the course's example, run for real", 3), ("taskshuttle, local backend: the", 5)],
    )
    lines = screen.lines()
    # The course's lines are passed on as they come: inside their step, before the next one.
    emperor = [i for i, line in enumerate(lines) if line.endswith("皇帝寿终正寝")]
    dying = [i for i, line in enumerate(lines) if line.endswith("总管正在死亡")]
    step = {int(m[1]): i for i, line in enumerate(lines) if (m := STEP.match(line))}
    assert len(emperor) == 2 and step[1] < emperor[0] < step[2] < emperor[1] < step[3]
    assert len(dying) == 1 and step[2] < dying[0] < step[3]


@pytest.mark.timeout(90)
def test_mutex_announces_each_step(screen: Screen, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("course_office", "ticket_run"):
        screen.spy(monkeypatch, mutex, name)
    mutex.run("local", tickets=5, buyers=20, consumers=2, delay=0.002)
    _check(
        screen,
        [
            ("course_office", "(with mutex = Lock())"),
            ("course_office", "(without the lock)"),
            ("ticket_run", "shared multiprocessing.Lock"),
            ("ticket_run", "no lock"),
        ],
        [("the course's program, run for real", 2), ("taskshuttle, backend local: 5", 4)],
    )
    lines, steps = screen.lines(), screen.steps()
    assert len(steps) == 4
    bought = [i for i, line in enumerate(lines) if "买票成功" in line and "│" not in line]
    assert bought  # the course's buyers' own lines, shown as they came


@pytest.mark.timeout(120)
def test_threads_announces_each_step(screen: Screen, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("basics", "race", "measure"):
        screen.spy(monkeypatch, threads, name)
    threads.run("local", 2, repeat=1, tasks=4, rounds=20_000, nap=0.02)
    _check(
        screen,
        [
            ("basics", "threading.Thread"),
            ("race", "without a lock"),
            ("race", "with a threading.Lock"),
            ("measure", "cpu-bound, as 1 process"),
            ("measure", "cpu-bound, as 2 process"),
            ("measure", "cpu-bound, as 2 thread"),
            ("measure", "sleep-bound, as 1 process"),
            ("measure", "sleep-bound, as 2 process"),
            ("measure", "sleep-bound, as 2 thread"),
        ],
        [("each thread says who it is", 1), ("a shared counter", 3), ("the same Worker", 9)],
    )


@pytest.mark.timeout(120)
def test_zombie_orphan_announces_each_step(screen: Screen, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("zombies", "pool_reaps", "orphan", "machine_home", "guarded"):
        screen.spy(monkeypatch, zombie_orphan, name)
    zombie_orphan.run("local")
    _check(
        screen,
        [
            ("zombies", "3 children exit"),
            ("pool_reaps", "a worker pool (local)"),
            ("orphan", "an orphan:"),
            ("machine_home", "who adopts an orphan"),
            ("guarded", "killed with SIGKILL"),
        ],
        [("children that exited", 1), ("an orphan", 4), ("its children", 5)],
    )


@pytest.mark.timeout(90)
def test_process_objects_announces_each_step(
    screen: Screen, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("child_identity", "terminate_once", "run_local"):
        screen.spy(monkeypatch, process_objects, name)
    process_objects.run("local", tasks=6, tries=1)
    _check(
        screen,
        [
            ("child_identity", "start a child process"),
            ("terminate_once", "p.terminate()"),
            ("run_local", "a job of 6 tasks"),
        ],
        [("who is who", 1), ("who ran the 6 tasks", 3)],
    )


@pytest.mark.timeout(90)
def test_queues_announces_each_step(screen: Screen, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("caveats", "order_run"):
        screen.spy(monkeypatch, queues, name)
    queues.run("local", tasks=20)
    _check(
        screen,
        [
            ("caveats", "queue.Queue and LifoQueue"),
            ("order_run", "1 consumer"),
            ("order_run", "3 consumer"),
        ],
        [("FIFO order of results", 3)],
    )


@pytest.mark.timeout(90)
def test_producer_consumer_announces_each_step(
    screen: Screen, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("with_sentinels", "with_joinable_queue", "fairness", "with_client"):
        screen.spy(monkeypatch, producer_consumer, name)
    producer_consumer.run("local")
    _check(
        screen,
        [
            ("with_sentinels", "one sentinel (None) per consumer"),
            ("with_joinable_queue", "JoinableQueue"),
            ("fairness", "fairness, backend local"),
            ("with_client", "with the client, backend local"),
        ],
        [
            ("how the consumers learn", 2),
            ("fairness: 1 slow task", 3),
            ("each item by its handle", 4),
        ],
    )
    lines = screen.lines()
    step = {int(m[1]): i for i, line in enumerate(lines) if (m := STEP.match(line))}
    shown = next(i for i, line in enumerate(lines) if 'client.send("cpu"' in line)
    assert step[3] < shown < step[4]  # the client's code, before the step that runs it


def test_a_step_of_a_lesson_run_as_a_library_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    show.stop_live()
    with show.step("queues.step.caveats"):
        pass
    show.echo("a line")
    show.part(lambda _: print("drawn"), None)
    assert capsys.readouterr().out == ""
