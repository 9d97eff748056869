"""One sub-benchmark in a process of its own: ``python -m bench.case CONFIG_JSON OUT_FILE``.

The harness starts this as the leader of a new process group and kills the whole group if
it overruns, so a hung broker or worker can never hang the run. The figures go to OUT_FILE
as JSON, with ``status`` ``ok`` or ``error`` (and a reason). The case's queues are deleted
on the way out.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import baselines, external, systems
from bench.broker import delete_prefixed
from bench.config import CaseConfig, CaseError

Case = Callable[[CaseConfig], dict[str, Any]]

CASES: dict[tuple[str, str], Case] = {
    ("raw-mp", "e2e"): baselines.mp_e2e,
    ("raw-mp", "drain"): baselines.mp_drain,
    ("raw-mp", "latency"): baselines.mp_latency,
    ("raw-pika", "publish+drain"): baselines.pika_publish_drain,
    ("raw-pika", "e2e"): baselines.pika_e2e,
    ("raw-pika", "e2e-replies"): baselines.pika_e2e_replies,
    ("raw-pika", "latency"): baselines.pika_latency,
    ("local", "drain"): systems.local_drain,
    ("local", "e2e"): systems.local_e2e,
    ("local", "latency"): systems.local_latency,
    ("rabbitmq", "publish+drain"): systems.rabbit_publish_drain,
    ("rabbitmq", "e2e"): systems.rabbit_e2e,
    ("rabbitmq", "e2e-noresults"): systems.rabbit_e2e_noresults,
    ("rabbitmq", "latency"): systems.rabbit_latency,
    ("rabbitmq", "send"): systems.client_send,
    ("rabbitmq", "send-many"): systems.client_send_many,
    ("celery", "publish+drain"): external.external_publish_drain,
    ("celery", "e2e"): external.external_e2e,
    ("dramatiq", "publish+drain"): external.external_publish_drain,
    ("dramatiq", "e2e"): external.external_e2e,
}

#: Systems whose cases talk to the broker (the others need none).
BROKER_SYSTEMS = frozenset({"raw-pika", "rabbitmq", "celery", "dramatiq"})


def run_case(cfg: CaseConfig) -> dict[str, Any]:
    case = CASES[(cfg.system, cfg.measure)]
    started = time.perf_counter()
    try:
        result = case(cfg)
        result["status"] = "ok"
    except CaseError as exc:
        result = {"status": "error", "reason": str(exc)}
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc} ({where})"}
    finally:
        if cfg.system in BROKER_SYSTEMS:
            delete_prefixed(cfg.amqp_url, cfg.queue, known=known_queues(cfg))
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def known_queues(cfg: CaseConfig) -> list[str]:
    """The queues a case may create (for clean-up where no management API lists them):
    taskshuttle's, Dramatiq's, and the raw pika queue (`.raw`) of the ``send`` case."""
    from common.rabbitmq.topology import QueueNames

    names = QueueNames(cfg.queue).with_companions()
    return [*names, f"{cfg.queue}.DQ", f"{cfg.queue}.XQ", f"{cfg.queue}.raw"]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m bench.case CONFIG_JSON OUT_FILE", file=sys.stderr)
        return 2
    cfg = CaseConfig.from_json(argv[1])
    result = run_case(cfg)
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
