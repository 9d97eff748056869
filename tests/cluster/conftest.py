"""Fixtures of the cluster suite: the local three-node RabbitMQ cluster of scripts/cluster.sh.

The session fixture ``cluster`` starts it (a no-op when it already runs clustered) and stops it
at the end only when it was not already running healthy before the session. A test that kills
or stops a node starts it again itself; ``healthy_cluster`` also restarts any node left down
before the test that asks for it. Without RabbitMQ's scripts the suite skips, except under
``CI=true``, where that is a failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pika.exceptions import AMQPError

from tests.conftest import delete_queues, note_broker, require_rabbitmq_server
from tests.rabbit_cluster import Cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    require_rabbitmq_server()
    cluster = Cluster()
    was_healthy = cluster.healthy()
    cluster.start()
    addresses = ", ".join(url.rpartition("@")[2].partition("/")[0] for url in cluster.urls)
    note_broker(f"the three Debian nodes of scripts/cluster.sh ({addresses})", suite="cluster")
    try:
        yield cluster
    finally:
        if not was_healthy:
            cluster.stop()


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Cluster:
    """The cluster with all three nodes running (any node left down is started again)."""
    for n, up in cluster.running().items():
        if not up:
            cluster.start_node(n)
    return cluster


@pytest.fixture
def cluster_queue(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[str]:
    """A queue name of this test's own; the queue is deleted afterwards, through whichever
    node answers."""
    name = f"test.cluster.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}"
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    yield name
    for url in cluster.urls:
        try:
            delete_queues(url, name)
            return
        except AMQPError:
            continue
