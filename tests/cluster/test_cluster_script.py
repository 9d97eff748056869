"""scripts/cluster.sh against the real thing: three RabbitMQ nodes on 127.0.0.1:5681-5683.

No mocks. A test that kills or stops a node starts it again before it ends (and
``healthy_cluster`` restarts any node a failed test left down).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError

from tests.chaos_amqp import publish, take
from tests.helpers import wait_until
from tests.rabbit_cluster import NODES, SCRIPT, Cluster

# Each test may first wait for the session's cluster to start (CLUSTER_WAIT, 120 s).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

QUORUM = {"x-queue-type": "quorum"}
#: A quorum queue killed less than ~1 s after its declaration came back empty (BROKER.md).
SETTLE_AFTER_DECLARE = 1.5
MESSAGES = 300


@contextmanager
def channel_on(url: str) -> Iterator[BlockingChannel]:
    params = pika.URLParameters(url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 30
    with pika.BlockingConnection(params) as conn:
        yield conn.channel()


def declare_quorum(url: str, queue: str) -> None:
    with channel_on(url) as ch:
        ch.queue_declare(queue, durable=True, arguments=QUORUM)


def passive_count(url: str, queue: str) -> int | None:
    """The queue's message count asked of one node, or None while it cannot tell."""
    try:
        with channel_on(url) as ch:
            return int(ch.queue_declare(queue, passive=True).method.message_count)
    except AMQPError:
        return None


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_urls_are_the_three_loopback_nodes() -> None:
    proc = run_script("urls", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ",".join(
        f"amqp://guest:guest@127.0.0.1:{5680 + n}/%2F" for n in NODES
    )


def test_cluster_forms_with_three_running_nodes(healthy_cluster: Cluster) -> None:
    healthy, out = healthy_cluster.status()
    assert healthy, out
    lines = out.splitlines()
    assert len(lines) == 3, out
    for n, line in zip(NODES, lines, strict=True):
        assert line.startswith(f"{Cluster.node_name(n)} 127.0.0.1:{5680 + n} running clustered")
        assert "(3/3 nodes running)" in line
    assert healthy_cluster.running() == dict.fromkeys(NODES, True)
    assert len(healthy_cluster.urls) == 3
    assert healthy_cluster.url == ",".join(healthy_cluster.urls)


def test_start_twice_is_idempotent(healthy_cluster: Cluster) -> None:
    t0 = time.monotonic()
    out = healthy_cluster.start()
    elapsed = time.monotonic() - t0
    assert "already running" in out, out
    assert "starting" not in out and "joining" not in out, out
    # About 2 s on a busy 2-core machine: a few probes and one CLI call, no node restarted.
    assert elapsed < 30, f"a second start took {elapsed:.1f}s"
    healthy, status = healthy_cluster.status()
    assert healthy, status


def test_quorum_queue_has_three_members(healthy_cluster: Cluster, cluster_queue: str) -> None:
    declare_quorum(healthy_cluster.urls[0], cluster_queue)
    info = healthy_cluster.queue_info(cluster_queue)
    assert info["type"] == "quorum"
    assert healthy_cluster.members_of(cluster_queue) == list(NODES)
    assert healthy_cluster.leader_of(cluster_queue) in NODES


def test_confirmed_messages_survive_sigkill_of_the_leader(
    healthy_cluster: Cluster, cluster_queue: str
) -> None:
    cluster = healthy_cluster
    declare_quorum(cluster.urls[0], cluster_queue)
    time.sleep(SETTLE_AFTER_DECLARE)
    leader = cluster.leader_of(cluster_queue)
    bodies = {f"task-{i}".encode() for i in range(MESSAGES)}
    # Publish through a node that is not the leader, so the connection outlives the kill.
    survivor = next(n for n in NODES if n != leader)
    # Persistent, mandatory, with confirms: returns once the cluster has stored every one.
    publish(cluster.url_of(survivor), cluster_queue, sorted(bodies), timeout=120)

    cluster.kill(leader)
    try:
        assert cluster.running()[leader] is False
        # A follower takes over: every confirmed message is there, counted on a survivor.
        counts: list[int | None] = []

        def all_there() -> bool:
            counts.append(passive_count(cluster.url_of(survivor), cluster_queue))
            return counts[-1] == MESSAGES

        assert wait_until(all_there, timeout=60, interval=0.5), f"counts seen: {counts[-5:]}"
        got = take(cluster.url_of(survivor), cluster_queue)
        assert got is not None and sorted(got) == sorted(bodies)
        new_leader = cluster.leader_of(cluster_queue)
        assert new_leader != leader
    finally:
        cluster.start_node(leader)

    assert cluster.running() == dict.fromkeys(NODES, True)
    healthy, status = cluster.status()
    assert healthy, status
    assert cluster.members_of(cluster_queue) == list(NODES)


def test_graceful_stop_and_start_of_one_node(healthy_cluster: Cluster) -> None:
    cluster = healthy_cluster
    cluster.stop_node(3)
    try:
        assert cluster.running() == {1: True, 2: True, 3: False}
        healthy, status = cluster.status()
        assert not healthy, status
        assert "down" in status.splitlines()[2], status
        assert "(2/3 nodes running" in status.splitlines()[0], status
    finally:
        cluster.start_node(3)
    healthy, status = cluster.status()
    assert healthy, status
