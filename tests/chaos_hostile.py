"""Hostile messages: what any client with publish rights can put on the work queue.

Three categories, each body unique (so it can be found again, byte for byte, in the DLQ):

- garbage: not JSON, random bytes, JSON of the wrong shape;
- forged: well-formed task bodies with numbers no honest producer sends (``attempt`` 2000
  of ``max_attempts`` 3000 for a kind that always fails; a first attempt claiming 3000
  tries, which the consumer's own cap must overrule);
- oversized: over 1 MB (the schema's limit is 1,000,000 bytes).

Forged bodies are written as plain JSON, not through `TaskEnvelope`, so they stay forged
when the schema learns to refuse them. A forged task that is retried comes back with another
attempt number, so its bytes change: it is found again by its task id instead.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OVERSIZED_BYTES = 1_048_577  # just over 1 MiB, so over the 1,000,000-byte limit too

CATEGORIES = ("garbage", "forged", "oversized")


@dataclass
class Hostile:
    number: int
    category: str
    label: str
    body: bytes
    #: Bytes that mark this message in any later copy (a forged task's quoted id), if any.
    key: bytes | None = None
    published: bool = False
    #: Filled in by `locate`: "DLQ", or which queue, or "nowhere".
    where: str = "not checked"
    reason: str | None = None

    def matches(self, body: bytes) -> bool:
        return body == self.body or (self.key is not None and self.key in body)

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "category": self.category,
            "label": self.label,
            "size": len(self.body),
            "published": self.published,
            "where": self.where,
            "reason": self.reason,
        }


def _forged_task(number: int, attempt: int, max_attempts: int) -> bytes:
    return json.dumps(
        {
            "id": f"chaos-forged-{number}",
            "kind": "fail",
            "payload": {"message": f"forged message {number}"},
            "created_at": datetime.now(UTC).isoformat(),
            "attempt": attempt,
            "max_attempts": max_attempts,
            "producer_host": "chaos",
            "producer_pid": 1,
        }
    ).encode()


def make(category: str, rng: random.Random, first_number: int) -> list[Hostile]:
    """One or two hostile messages of `category`, numbered from `first_number`."""
    n = first_number
    if category == "garbage":
        choices = [
            ("not JSON", f"Hello World! (chaos {n})".encode()),
            ("random bytes", b"\xff" + rng.randbytes(63) + f"#{n}".encode()),
            ("JSON, wrong shape", json.dumps({"kind": 5, "chaos": n}).encode()),
            ("a JSON list", json.dumps(["chaos", n]).encode()),
            ("unknown kind", json.dumps({"id": f"chaos-unknown-{n}", "kind": "no-such"}).encode()),
        ]
        picked = rng.sample(choices, 2)
        return [Hostile(n + i, category, label, body) for i, (label, body) in enumerate(picked)]
    if category == "forged":
        attempt = 2000 if rng.random() < 0.6 else 1
        key = f'"chaos-forged-{n}"'.encode()
        label = f"attempt {attempt} of 3000"
        return [Hostile(n, category, label, _forged_task(n, attempt, 3000), key)]
    if category == "oversized":
        head = f"chaos oversized #{n}:".encode()
        return [Hostile(n, category, "over 1 MB", head + b"x" * (OVERSIZED_BYTES - len(head)))]
    raise ValueError(f"unknown category {category!r}")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def locate(
    hostile: list[Hostile],
    dlq: list[tuple[bytes, dict[str, Any]]],
    elsewhere: dict[str, list[bytes]],
) -> list[str]:
    """Say where each published hostile message ended up; one failure line per message
    that is anywhere but the DLQ, or there without an ``x-reason``."""
    failures = []
    for h in hostile:
        if not h.published:
            h.where = "never published"
            continue
        letters = [headers for body, headers in dlq if h.matches(body)]
        others = [q for q, bodies in elsewhere.items() for body in bodies if h.matches(body)]
        places = (["DLQ"] * len(letters)) + others
        h.where = ", ".join(places) if places else "nowhere"
        h.reason = ", ".join(_text(x.get("x-reason", "")) or "(none)" for x in letters) or None
        what = f"{h.category} message #{h.number} ({h.label})"
        if not letters:
            failures.append(f"{what} is not in the DLQ; found in: {h.where}")
        elif others:
            failures.append(f"{what} is in the DLQ and also in {', '.join(others)}")
        elif any(not x.get("x-reason") for x in letters):
            failures.append(f"{what} is in the DLQ without an x-reason header")
    return failures
