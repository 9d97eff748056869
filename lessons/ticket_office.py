"""The seed's ticket office: a JSON file of tickets, and buyers who check, wait, then buy.

Between reading the count and writing it back there is a delay (the seed's "network
delay"). Without a guard, two buyers read the same count, both see a ticket, both write
count - 1: one ticket, two sales. That is the race the mutex lesson measures.

Guards:
- ``none``: no lock at all (the unsafe office).
- ``mp-lock``: the seed's `multiprocessing.Lock`. It only works if every buyer got the *same*
  lock from a common parent; a process that could not (a consumer on RabbitMQ) makes its own,
  which excludes nobody else.
- ``flock``: an OS file lock (`fcntl.flock`) on a file next to the store, held from the check
  to the write, plus a conditional update keyed by the purchase id: a purchase already
  recorded is answered from the record and takes no second ticket. That makes a redelivered
  purchase safe, and works for any process that shares the disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any


class Guard(StrEnum):
    NONE = "none"
    MP_LOCK = "mp-lock"
    FLOCK = "flock"


def open_office(directory: Path, tickets: int) -> Path:
    """A fresh store holding `tickets` tickets (the seed's ``data`` file)."""
    store = directory / "data.json"
    _write(store, {"ticket_num": tickets, "sold": {}})
    return store


def search(store: Path) -> int:
    """查票: how many tickets are left (a read, as the seed does before buying)."""
    return int(_read(store)["ticket_num"])


def buy(store: Path, purchase: str, buyer: int, delay: float, guard: Guard, lock: Any) -> dict:
    """买票: check, wait `delay`, then take a ticket if one was there. `lock` is only used by
    the ``mp-lock`` guard."""
    if guard is Guard.MP_LOCK:
        held: contextlib.AbstractContextManager[Any] = lock
    elif guard is Guard.FLOCK:
        held = _file_lock(store)
    else:
        held = contextlib.nullcontext()
    with held:
        data = _read(store)
        if guard is Guard.FLOCK and purchase in data["sold"]:
            # Seen before (a redelivery, a replay): answer as the first time, sell nothing.
            return {"bought": True, "again": True, "buyer": buyer}
        time.sleep(delay)  # the seed's network delay, between the check and the buy
        if data["ticket_num"] <= 0:
            return {"bought": False, "again": False, "buyer": buyer}
        data["ticket_num"] -= 1
        data["sold"][purchase] = buyer
        _write(store, data)
        return {"bought": True, "again": False, "buyer": buyer}


@contextlib.contextmanager
def _file_lock(store: Path) -> Iterator[None]:
    # Lock a separate file: the store itself is replaced on every write (see `_write`), and a
    # lock on a replaced file would guard nothing. (fcntl is Unix only: imported here, so that
    # the other guards work anywhere.)
    import fcntl

    with open(store.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(store: Path) -> dict:
    return json.loads(store.read_text(encoding="utf-8"))


def _write(store: Path, data: dict) -> None:
    # Write a new file, then rename it over the old one: a reader sees the old store or the
    # new one, never a half-written file. (The seed's open('w') can be read while empty.)
    # This keeps the lesson's race a clean "lost update" and nothing else.
    temp = store.with_name(f"{store.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temp, store)
