"""The local three-node RabbitMQ cluster of `scripts/cluster.sh`, driven from tests.

Every method calls the script (or, through its ``cli`` verb, a RabbitMQ CLI tool with the
nodes' own environment); nothing here starts, stops or configures a node by itself.

    cluster = Cluster()
    cluster.start()  # idempotent: a running cluster is left alone
    conn = pika.BlockingConnection(pika.URLParameters(cluster.urls[0]))
    ...
    cluster.kill(cluster.leader_of("my.queue"))  # SIGKILL the leader's Erlang VM
    cluster.start_node(n)  # it comes back into the same cluster

Nodes are numbered 1, 2 and 3 (``ts-c1@localhost`` .. ``ts-c3@localhost``, AMQP on
127.0.0.1:5681-5683). Every call is bounded in time; a failure raises `ClusterError` with the
script's output (which ends with the failing node's log tail).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cluster.sh"
NODES = (1, 2, 3)
#: The node names that scripts/cluster.sh gives (its `node_name`); checked by the cluster tests.
NODE_NAME = "ts-c{}@localhost"
_NODE_NUMBER = re.compile(r"^ts-c(\d+)@localhost$")


class ClusterError(RuntimeError):
    """scripts/cluster.sh failed or did not finish in time."""


class Cluster:
    """The three-node cluster; ``state_dir`` and ``wait`` become CLUSTER_DIR and CLUSTER_WAIT."""

    def __init__(self, state_dir: Path | str | None = None, wait: int = 120) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.wait = wait
        self._urls: list[str] | None = None

    # --- addresses -------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The AMQP URLs of nodes 1, 2 and 3, in that order."""
        if self._urls is None:
            self._urls = self._check("urls", timeout=30).strip().split(",")
        return list(self._urls)

    @property
    def url(self) -> str:
        """The comma-joined URLs (what a multi-node AMQP_URL looks like)."""
        return ",".join(self.urls)

    def url_of(self, n: int) -> str:
        return self.urls[self._index(n)]

    @staticmethod
    def node_name(n: int) -> str:
        Cluster._index(n)
        return NODE_NAME.format(n)

    @staticmethod
    def node_number(name: str) -> int:
        match = _NODE_NUMBER.match(name)
        if not match or int(match.group(1)) not in NODES:
            raise ValueError(f"{name!r} is not a node of the cluster")
        return int(match.group(1))

    # --- the whole cluster -----------------------------------------------------------------------

    def start(self) -> str:
        """Start what is down, join what is not a member, wait until three run clustered.

        Returns the script's output (``already running`` when nothing needed doing)."""
        # The script may wait for another caller's lock, then up to `wait` for the nodes.
        return self._check("start", timeout=2 * self.wait + 120)

    def stop(self) -> None:
        """Stop all three nodes; nothing of the cluster runs afterwards."""
        self._check("stop", timeout=self.wait + 120)

    def status(self) -> tuple[bool, str]:
        """(all three run clustered, the script's one line per node)."""
        proc = self._run("status", timeout=4 * 60)
        return proc.returncode == 0, proc.stdout

    def healthy(self) -> bool:
        return self.status()[0]

    def running(self) -> dict[int, bool]:
        """Node number -> whether it answers AMQP (probes only: fast)."""
        result: dict[int, bool] = {}
        for line in self._check("running", timeout=30).splitlines():
            n, state = line.split()
            result[int(n)] = state == "up"
        return result

    # --- one node --------------------------------------------------------------------------------

    def kill(self, n: int) -> None:
        """SIGKILL node n's Erlang VM (a crash); returns once it is gone."""
        self._check("kill", str(self._number(n)), timeout=90)

    def stop_node(self, n: int) -> None:
        """Stop node n gracefully."""
        self._check("stop-node", str(self._number(n)), timeout=self.wait + 120)

    def start_node(self, n: int) -> None:
        """Start node n again and wait until it runs in the cluster."""
        self._check("start-node", str(self._number(n)), timeout=2 * self.wait + 120)

    def cli(self, n: int, tool: str, *args: str, timeout: float = 90) -> str:
        """The output of a RabbitMQ CLI tool run against node n (as the script runs it)."""
        return self._check("cli", str(self._number(n)), tool, *args, timeout=timeout)

    # --- queues ----------------------------------------------------------------------------------

    def queue_info(self, queue: str, vhost: str = "/") -> dict[str, Any]:
        """`list_queues` fields of one queue (name, type, leader, members, online), asked of the
        first node that answers."""
        errors = []
        for n in self._answering_first():
            try:
                out = self.cli(
                    n,
                    "rabbitmqctl",
                    "-q",
                    "list_queues",
                    "-p",
                    vhost,
                    "name",
                    "type",
                    "leader",
                    "members",
                    "online",
                    "--formatter",
                    "json",
                    timeout=60,
                )
            except ClusterError as exc:
                errors.append(f"node {n}: {exc}")
                continue
            for row in json.loads(out or "[]"):
                if row.get("name") == queue:
                    return dict(row)
            raise ClusterError(f"no queue {queue!r} in vhost {vhost!r} (asked node {n})")
        raise ClusterError(f"no node answered list_queues: {'; '.join(errors)}")

    def leader_of(self, queue: str, vhost: str = "/") -> int:
        """The number of the node that leads quorum queue ``queue``."""
        leader = self.queue_info(queue, vhost).get("leader")
        if not isinstance(leader, str) or not leader:
            raise ClusterError(f"queue {queue!r} has no leader (is it a quorum queue?)")
        return self.node_number(leader)

    def members_of(self, queue: str, vhost: str = "/") -> list[int]:
        """The numbers of the nodes that hold a replica of quorum queue ``queue``, sorted."""
        members = self.queue_info(queue, vhost).get("members") or []
        return sorted(self.node_number(m) for m in members)

    # --- plumbing --------------------------------------------------------------------------------

    def _answering_first(self) -> list[int]:
        up = self.running()
        return [n for n in NODES if up.get(n)] + [n for n in NODES if not up.get(n)]

    @staticmethod
    def _index(n: int) -> int:
        if n not in NODES:
            raise ValueError(f"node number must be one of {NODES}, got {n!r}")
        return NODES.index(n)

    def _number(self, n: int) -> int:
        self._index(n)
        return n

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CLUSTER_WAIT"] = str(self.wait)
        if self.state_dir is not None:
            env["CLUSTER_DIR"] = str(self.state_dir)
        return env

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["bash", str(SCRIPT), *args],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout) + _text(exc.stderr)
            raise ClusterError(
                f"scripts/cluster.sh {' '.join(args)} took over {timeout:.0f}s\n{out}"
            ) from None

    def _check(self, *args: str, timeout: float) -> str:
        proc = self._run(*args, timeout=timeout)
        if proc.returncode != 0:
            raise ClusterError(
                f"scripts/cluster.sh {' '.join(args)} exited {proc.returncode}\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc.stdout


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
