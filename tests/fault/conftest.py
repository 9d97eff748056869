from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.rabbit_node import RABBITMQ_BIN, RabbitNode, free_port, rabbitmq_available


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test's own, to stop, restart or kill (never the shared one)."""
    if not rabbitmq_available():
        reason = f"{RABBITMQ_BIN / 'rabbitmq-server'} is absent (scripts/broker.sh installs it)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    with RabbitNode(free_port(), f"ts-restart-{os.getpid()}", tmp_path) as node:
        node.start(timeout=60)
        yield node
