"""Hostile messages: what any client with publish rights can put on the work queue.

Three categories, each body unique (so it can be found again, byte for byte, in the DLQ):

- garbage: not JSON, random bytes, JSON of the wrong shape;
- forged: well-formed task bodies with numbers no honest producer sends (``attempt`` 2000
  of ``max_attempts`` 3000 for a kind that always fails; a first attempt claiming 3000
  tries, which the consumer's own cap must overrule);
- oversized: over 1 MB (the schema's limit is 1,000,000 bytes).

Forged bodies are written as plain JSON, not through `TaskEnvelope`, so they stay forged
when the schema learns to refuse them.
"""

from __future__ import annotations

import hashlib
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
    published: bool = False
    #: Filled in by `locate`: "DLQ", or which queue, or "nowhere".
    where: str = "not checked"
    reason: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

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
        if rng.random() < 0.6:
            return [Hostile(n, category, "attempt 2000 of 3000", _forged_task(n, 2000, 3000))]
        return [Hostile(n, category, "attempt 1 of 3000", _forged_task(n, 1, 3000))]
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
    in_dlq: dict[str, list[dict[str, Any]]] = {}
    for body, headers in dlq:
        in_dlq.setdefault(hashlib.sha256(body).hexdigest(), []).append(headers)
    seen_in: dict[str, list[str]] = {}
    for queue, bodies in elsewhere.items():
        for body in bodies:
            seen_in.setdefault(hashlib.sha256(body).hexdigest(), []).append(queue)
    failures = []
    for h in hostile:
        if not h.published:
            h.where = "never published"
            continue
        letters = in_dlq.get(h.digest, [])
        others = seen_in.get(h.digest, [])
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
