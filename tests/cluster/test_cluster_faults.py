"""Faults on the three-node cluster (scripts/cluster.sh), with quorum queues, the default.

Each test leaves every node running (``healthy_cluster`` restarts any a failed test left
down). The producers that wait for results connect to nodes that survive: a reply queue is a
classic queue on its producer's node (see the README, "When one machine is not enough").
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from common.errors import BrokerError
from common.rabbitmq import RabbitBackend
from common.schemas import TaskEnvelope, decode_task
from common.settings import redact_url
from tests.helpers import finish, output_of, result_for, start, stop, wait_for_output
from tests.rabbit_cluster import NODES, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

#: A quorum queue killed less than ~1 s after its declaration can come back empty.
SETTLE_AFTER_DECLARE = 1.5


def _declare_on(cluster: Cluster, node: int, queue: str) -> int:
    """Declare the queue (and its companions) through `node` (a quorum queue's first leader
    is the node its declaring client is connected to); the node that leads it."""
    with RabbitBackend(cluster.url_of(node), queue):
        pass
    time.sleep(SETTLE_AFTER_DECLARE)
    return cluster.leader_of(queue)


def _started_on(
    cluster: Cluster, node: int, urls: str, queue: str, **options: Any
) -> RabbitBackend:
    """A backend on `urls` that started on `node`: the node a backend starts on is random,
    so backends are opened until one is there (at most 40)."""
    for _ in range(40):
        backend = RabbitBackend(urls, queue, **options)
        if backend.connected_to == redact_url(cluster.url_of(node)):
            return backend
        backend.close()
    raise AssertionError(f"40 backends on {urls}, none started on node {node}")


def _others(node: int) -> list[int]:
    return [n for n in NODES if n != node]


def _urls(cluster: Cluster, nodes: list[int]) -> str:
    return ",".join(cluster.url_of(n) for n in nodes)


def test_a_worker_whose_node_is_killed_goes_on_on_another_node(
    healthy_cluster: Cluster, cluster_queue: str
) -> None:
    cluster = healthy_cluster
    leader = _declare_on(cluster, 1, cluster_queue)
    on_leader = _started_on(cluster, leader, cluster.url, cluster_queue, wait_for_broker=60)
    tasks = [TaskEnvelope(kind="echo", payload={"i": i}) for i in range(200)]
    with RabbitBackend(_urls(cluster, _others(leader)), cluster_queue) as producer:
        producer.publish(tasks)
    seen: Counter[str] = Counter()
    try:
        for _ in range(50):
            delivery = on_leader.receive(10)
            assert delivery is not None
            seen[decode_task(delivery.body).id] += 1
            on_leader.ack(delivery)
        cluster.kill(leader)
        killed_at = time.monotonic()
        longest_gap, last = 0.0, time.monotonic()
        while len(seen) < len(tasks) and time.monotonic() - killed_at < 120:
            delivery = on_leader.receive(1.0)
            if delivery is None:
                continue
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now
            seen[decode_task(delivery.body).id] += 1
            on_leader.ack(delivery)
        assert on_leader.receive(2.0) is None
    finally:
        on_leader.close()
        cluster.start_node(leader)
    print(
        f"\n[worker on the killed leader] sent=200 received={len(seen)} "
        f"twice={sum(1 for c in seen.values() if c > 1)} reconnects={on_leader.reconnects} "
        f"longest pause={longest_gap:.1f}s"
    )
    assert set(seen) == {t.id for t in tasks}  # none lost
    assert on_leader.reconnects >= 1
    assert on_leader.connected_to != redact_url(cluster.url_of(leader))


def test_killing_the_work_queue_s_leader_while_5000_tasks_flow_loses_none(
    healthy_cluster: Cluster, cluster_queue: str
) -> None:
    cluster = healthy_cluster
    leader = _declare_on(cluster, 1, cluster_queue)
    consumers = [
        start("consumer", "--queue", cluster_queue, "--workers", "2", "--url", cluster.url)
        for _ in range(2)
    ]
    try:
        for consumer in consumers:
            wait_for_output(consumer, "consuming", timeout=120)
        producer = start(
            "producer", "--backend", "rabbitmq", "--queue", cluster_queue,
            "--url", _urls(cluster, _others(leader)), "--count", "5000", "--rate", "400",
            "--wait", "--json", "--timeout", "300",
        )  # fmt: skip
        time.sleep(4)  # tasks are flowing
        cluster.kill(leader)
        code, out, err = finish(producer, timeout=360)
        for consumer in consumers:
            assert consumer.poll() is None, output_of(consumer)[1]
    finally:
        ends = [stop(consumer, timeout=90) for consumer in consumers]
        cluster.start_node(leader)
    assert code == 0, err
    summary = json.loads(out)
    ledger = summary["ledger"]
    moved = sum(err.count("reconnected to") for _, _, err in ends)
    print(
        f"\n[leader killed] sent={summary['sent']} ledger={json.dumps(ledger)} "
        f"workers that moved to another node: {moved} of 4, "
        f"worst task latency {summary['latency_ms']['max']} ms"
    )
    assert summary["sent"] == 5000 and ledger["lost"] == 0
    assert summary["done"] == 5000
    for consumer_code, _, consumer_err in ends:
        assert consumer_code == 0, consumer_err
        assert "died with exit code" not in consumer_err, consumer_err  # no restarts


def test_a_follower_stopped_and_started_again_catches_up(
    healthy_cluster: Cluster, cluster_queue: str
) -> None:
    cluster = healthy_cluster
    leader = _declare_on(cluster, 1, cluster_queue)
    follower, other = _others(leader)
    tasks = [TaskEnvelope(kind="echo", payload={"i": i}) for i in range(1000)]
    with RabbitBackend(cluster.url_of(leader), cluster_queue) as producer:
        cluster.stop_node(follower)
        try:
            producer.publish(tasks)  # confirmed by a majority: the leader and `other`
        finally:
            cluster.start_node(follower)
    assert sorted(cluster.members_of(cluster_queue)) == list(NODES)
    # The follower caught up: with the leader and the other follower gone after it, the
    # queue still holds all 1000 once the leader is back (a majority needs the follower).
    cluster.stop_node(other)
    try:
        with RabbitBackend(cluster.url_of(follower), cluster_queue, wait_for_broker=60) as b:
            deadline = time.monotonic() + 60
            while b.pending() < len(tasks) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert b.pending() == len(tasks)
    finally:
        cluster.start_node(other)


def test_with_two_of_three_nodes_down_nothing_is_stored_and_work_resumes_after(
    healthy_cluster: Cluster, cluster_queue: str
) -> None:
    """Quorum lost: the broker takes publishes but confirms none, so the producer fails with
    its one-line reason after its timeout; nothing confirmed before is lost, and the work
    goes on once a second node is back."""
    cluster = healthy_cluster
    _declare_on(cluster, 1, cluster_queue)
    survivor = 1
    before = [TaskEnvelope(kind="echo", payload={"i": i}) for i in range(100)]
    with RabbitBackend(cluster.url_of(survivor), cluster_queue) as producer:
        producer.publish(before)
    down = _others(survivor)
    for n in down:
        cluster.stop_node(n)
    try:
        with (
            RabbitBackend(cluster.url_of(survivor), cluster_queue) as producer,
            pytest.raises(BrokerError) as refused,
        ):
            producer.publish([TaskEnvelope(kind="echo")], timeout=5)
        assert "did not confirm within 5s" in str(refused.value)
        assert "most of its nodes are down" in str(refused.value)
    finally:
        cluster.start_node(down[0])
    with RabbitBackend(cluster.url, cluster_queue, wait_for_broker=60) as worker:
        got: set[str] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not {t.id for t in before} <= got:
            delivery = worker.receive(1.0)
            if delivery is not None:
                got.add(decode_task(delivery.body).id)
                worker.ack(delivery)
    cluster.start_node(down[1])
    assert {t.id for t in before} <= got  # the unconfirmed one may be there too


def test_a_producer_whose_node_dies_waits_for_its_reply_queue_and_gets_every_result(
    healthy_cluster: Cluster, cluster_queue: str
) -> None:
    """A reply queue is a classic queue on its producer's node: the producer, moved to
    another node, is refused it (404, its node is down) and waits for that node, as for a
    broker that is away, instead of failing for good."""
    cluster = healthy_cluster
    _declare_on(cluster, 1, cluster_queue)
    home, other = 2, 3
    producer = _started_on(
        cluster, home, _urls(cluster, [home, other]), cluster_queue,
        want_results=True, wait_for_broker=120,
    )  # fmt: skip
    tasks = [TaskEnvelope(kind="echo", payload={"i": i}) for i in range(20)]
    try:
        cluster.kill(home)
        restart = threading.Timer(8.0, cluster.start_node, args=(home,))
        restart.start()
        started = time.monotonic()
        producer.publish(tasks)  # moves to `other`, waits there for `home`'s reply queue
        waited = time.monotonic() - started
        restart.join()
        with RabbitBackend(cluster.url_of(1), cluster_queue) as worker:
            for _ in tasks:
                delivery = worker.receive(10)
                assert delivery is not None
                task = decode_task(delivery.body)
                worker.ack(delivery, result_for(task, value=task.payload))
        results = {r.task_id for r in iter(lambda: producer.receive_result(10), None)}
    finally:
        producer.close()
        if not cluster.running()[home]:
            cluster.start_node(home)
    print(f"\n[producer's node killed] waited {waited:.1f}s, {len(results)} of 20 results")
    assert waited >= 5
    assert results == {t.id for t in tasks}
