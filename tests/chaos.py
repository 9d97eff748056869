"""The chaos run: faults at random (seeded) times while real tasks flow; nothing may be lost.

    python -m tests.chaos --seconds 120 --seed 7 [--workers 4] [--rate 20] [--busy 3] [--json]

It starts a RabbitMQ node of its own (never the shared broker on 5672) on a free port, in a
temporary folder; a consumer (``python -m consumer --handlers tests.chaos_tasks``) with
``--workers`` worker processes; and a producer, in this process, that sends ``--rate`` tasks
a second (echo, short sleeps, small CPU tasks, and a kind that fails on its first attempt
and succeeds on its second), through the project's library, recording each task id once
the broker has confirmed it. The seed is printed first; the same seed plans the same faults:

    kill-worker      SIGKILL one worker process of the consumer (at most 2 a minute)
    kill-supervisor  SIGKILL the consumer's supervisor, then start a new consumer
    restart-broker   stop the node gracefully, leave it down a few seconds, start it
    kill-broker      SIGKILL the node's Erlang VM, leave it down a few seconds, start it
    garbage          publish bodies that are not tasks (raw pika, as any client could)
    forged           publish task bodies with forged attempt counts (2000 of 3000, 1 of 3000)
    oversized        publish a body over 1 MB
    cpu-load         run one busy loop per CPU for 5-15 s

Every kind happens at least once when the run is long enough (about 60 s). ``--busy N``
also keeps N busy loops running for the whole run. At the end it stops sending, waits up
to ``--drain`` seconds for every confirmed task's result and for the queues to empty, stops
the consumer with SIGTERM, prints the table of events and the delivery ledger, and fails
(exit 1, one line per reason) when:

- a confirmed task has no result at all (lost);
- a garbage, forged or oversized message is anywhere but the DLQ, or there without x-reason;
- work is still queued after the drain;
- a process is left behind (a worker that outlives its supervisor, anything after the end);
- the consumer exited by itself, or did not exit 0 within 60 s of SIGTERM.

Exit codes: 0 passed, 1 the product failed a check, 2 cannot run here (no RabbitMQ server
scripts), 3 the harness itself failed (its message says it is not a verdict), 130 Ctrl-C.
Every process it started is stopped and reaped, and the node closed, in every case; the run
is bounded by ``--seconds + --drain + 300`` s, after which a watchdog kills everything.
Files (consumer logs, the node's logs, ``harness.log``) stay in the work folder when the run
fails or with ``--keep``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from common.settings import LOG_FORMAT
from tests.chaos_plan import Options, make_plan
from tests.chaos_report import Events, Report
from tests.chaos_run import ChaosRun, HarnessError
from tests.rabbit_node import RABBITMQ_BIN, rabbitmq_available


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Faults at seeded random times while tasks flow; exit 1 if anything is lost.",
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="length of the fault phase")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--workers", type=int, default=4, help="the consumer's worker processes")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks sent per second")
    parser.add_argument("--prefetch", type=int, default=10, help="the consumer's prefetch")
    parser.add_argument("--busy", type=int, default=0, help="busy loops for the whole run")
    parser.add_argument("--drain", type=float, default=90.0, help="seconds to wait for results")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder on success")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.workers < 1 or args.drain <= 0:
        parser.error("--seconds, --rate, --drain must be > 0 and --workers >= 1")
    return args


def _watchdog(run: ChaosRun, after: float) -> threading.Event:
    """Kill everything and exit 3 if the run is still going `after` seconds from now."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(after):
            print(f"chaos: still running after {after:g}s; killing everything", file=sys.stderr)
            run.emergency_kill()
            os._exit(3)

    threading.Thread(target=watch, name="chaos-watchdog", daemon=True).start()
    return done


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _cleaning_up(signum: int, _frame: object) -> None:
    print("chaos: stopping what the run started; a moment", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"chaos: seed {seed} (run it again with --seed {seed})", file=sys.stderr, flush=True)
    if not rabbitmq_available():
        print(f"chaos: error: {RABBITMQ_BIN / 'rabbitmq-server'} is absent", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=workdir / "harness.log", level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    options = Options(
        seconds=args.seconds,
        seed=seed,
        workers=args.workers,
        rate=args.rate,
        prefetch=args.prefetch,
        busy=args.busy,
        drain=args.drain,
        workdir=workdir,
    )
    events = Events()
    run = ChaosRun(options, events)
    finished = _watchdog(run, options.deadline + 60)
    # Set both: a background job starts with SIGINT ignored, and Ctrl-C must still clean up.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    report: Report | None = None
    problem: str | None = None
    interrupted = False
    try:
        report = run.run(make_plan(seed, args.seconds))
    except KeyboardInterrupt:
        interrupted = True
        problem = "interrupted"
    except HarnessError as exc:
        problem = str(exc)
    except Exception as exc:
        logging.getLogger("chaos").exception("the harness failed")
        problem = f"{type(exc).__name__}: {exc} ({traceback.extract_tb(exc.__traceback__)[-1]})"
    finally:
        signal.signal(signal.SIGINT, _cleaning_up)
        signal.signal(signal.SIGTERM, _cleaning_up)
        try:
            run.close()
        except Exception as exc:
            problem = problem or f"cleaning up failed: {type(exc).__name__}: {exc}"
        finished.set()
    if report is None:
        report = Report(seed, args.seconds, str(workdir), failures=run.failures)
    report.events = list(events.rows)
    report.harness_error = report.harness_error or problem
    print(report.as_json() if args.json else report.as_text(), flush=True)
    if report.passed and args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not args.json:
        print(f"files: {workdir}", file=sys.stderr)
    if interrupted:
        return 130
    if report.harness_error:
        return 3
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
