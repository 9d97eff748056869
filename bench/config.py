"""What one sub-benchmark is asked to do (`CaseConfig`), how it says it could not, and the
message bodies it sends.

Clocks: every timestamp in the harness is `time.perf_counter()`, which on Linux is
``CLOCK_MONOTONIC``, one clock for the whole machine, so a worker's stamp and the case
process's stamp compare.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from common.defaults import QueueType


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
    #: One broker URL, or a cluster's comma-separated node URLs (taskshuttle takes them all;
    #: raw pika and the harness's own connections the first).
    amqp_url: str
    queue: str
    #: Seconds the case may spend waiting on anything; the parent kills it a bit later.
    time_limit: float
    #: The broker's OS processes (a cluster's nodes), to tell their CPU use apart from the
    #: clients' (empty: unknown).
    broker_pids: list[int] = field(default_factory=list)
    #: The work queue's type, for raw pika and taskshuttle on RabbitMQ (None: the others).
    queue_type: QueueType | None = None
    #: `Client.send` calls timed one at a time (after a warm-up), and as many raw publishes.
    send_count: int = 2000

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CaseConfig:
        fields: dict[str, Any] = json.loads(text)
        if fields.get("queue_type"):
            fields["queue_type"] = QueueType(fields["queue_type"])
        return cls(**fields)

    def deadline(self) -> float:
        return time.perf_counter() + self.time_limit


class CaseError(Exception):
    """A sub-benchmark could not produce its figure (the message says why)."""


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
