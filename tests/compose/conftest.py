"""The Compose stack of docker-compose.yml, run for real: a compose project of the tests' own
(`taskshuttle-e2e`, broker published on 127.0.0.1:5674 and 15674), brought up once per module
and taken down with its volume at the end.

Images: those of scripts/containers.sh when it has built them (so no registry is needed),
else the file's defaults. Without a Docker engine the tests skip, except under CI=true, where
that is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pika
import pytest
from pika.exceptions import AMQPError

from tests.conftest import IN_CI, note_broker
from tests.helpers import ROOT

PROJECT = "taskshuttle-e2e"
AMQP_PORT = 5674
MANAGEMENT_PORT = 15674
USER = PASSWORD = "taskshuttle"  # docker-compose.yml's broker user
QUEUE = "tasks"  # the consumer service's default queue
#: Consumers on QUEUE once the stack is up: 3 containers of 2 worker processes, each a consumer.
CONSUMING = 6
#: Seconds Compose may take for one call (an `up` waits for the broker's healthcheck).
COMPOSE_TIMEOUT = 240


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _compose_command() -> list[str]:
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError("a Docker engine answers, but neither docker compose nor docker-compose")


def _image_exists(image: str) -> bool:
    inspected = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    return inspected.returncode == 0


def _images() -> dict[str, str]:
    """The image variables of docker-compose.yml: the environment's, else the local builds of
    scripts/containers.sh when they exist (built here when the Docker engine has none)."""
    local = dict(
        line.split("=", 1)
        for line in subprocess.run(
            ["bash", str(ROOT / "scripts/containers.sh"), "env"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )
    if "RABBITMQ_IMAGE" in os.environ:
        return {name: os.environ.get(name, value) for name, value in local.items()}
    if not all(_image_exists(image) for image in local.values()):
        subprocess.run(["bash", str(ROOT / "scripts/containers.sh"), "images"], check=True)
    return local


class Stack:
    """One compose project of docker-compose.yml, driven the way a user drives it."""

    def __init__(self) -> None:
        self.command = [*_compose_command(), "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml")]
        self.images = _images()
        self.env = {
            **os.environ,
            **self.images,
            "TASKSHUTTLE_AMQP_PORT": str(AMQP_PORT),
            "TASKSHUTTLE_MANAGEMENT_PORT": str(MANAGEMENT_PORT),
        }
        self.url = f"amqp://{USER}:{PASSWORD}@127.0.0.1:{AMQP_PORT}/%2F"

    def compose(
        self, *args: str, timeout: float = COMPOSE_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            [*self.command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.env,
        )
        if check and completed.returncode != 0:
            said = f"exit {completed.returncode}\n{completed.stderr}"
            raise AssertionError(f"compose {' '.join(args)}: {said}")
        return completed

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=self.env,
        )

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    @staticmethod
    def inspect(container: str, template: str) -> str:
        return subprocess.run(
            ["docker", "inspect", "-f", template, container],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()

    def hostnames(self, service: str) -> set[str]:
        return {self.inspect(c, "{{.Config.Hostname}}") for c in self.containers(service)}

    def running(self, service: str) -> list[str]:
        ids = self.containers(service)
        return [c for c in ids if self.inspect(c, "{{.State.Running}}") == "true"]

    def wait_healthy(self, timeout: float = 180) -> float:
        """Seconds until Docker calls the broker healthy (its healthcheck: AMQP answers)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            ids = self.containers("rabbitmq")
            if ids and self.inspect(ids[0], "{{.State.Health.Status}}") == "healthy":
                return time.monotonic() - started
            time.sleep(0.25)
        logs = self.compose("logs", "--tail", "30", "rabbitmq", check=False).stdout
        raise AssertionError(f"the broker was not healthy within {timeout}s\n{logs}")

    def _declared(self, queue: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of `queue`, by a passive declare from the host through
        the published port; None when the queue or the broker is not there."""
        params = pika.URLParameters(self.url)
        params.socket_timeout = params.blocked_connection_timeout = 10
        params.connection_attempts = 1
        try:
            connection = pika.BlockingConnection(params)
        except AMQPError:
            return None
        try:
            method = connection.channel().queue_declare(queue, passive=True).method
            return int(method.message_count), int(method.consumer_count)
        except AMQPError:  # 404: not declared (yet)
            return None
        finally:
            if connection.is_open:
                connection.close()

    def ready(self, queue: str) -> int | None:
        """Messages ready in `queue`; None when the queue or the broker is not there."""
        declared = self._declared(queue)
        return None if declared is None else declared[0]

    def wait_consuming(self, queue: str, consumers: int, timeout: float = 180) -> float:
        """Seconds until `queue` has `consumers` consumers: a container is started long before
        its workers have connected, above all on a busy machine."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            declared = self._declared(queue)
            if declared is not None and declared[1] >= consumers:
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"{queue} did not reach {consumers} consumers within {timeout}s")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The broker and three consumer containers (`up -d --scale consumer=3`), healthy."""
    if not _docker_answers():
        reason = "no Docker engine answers (as root, `bash scripts/containers.sh setup` makes one)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    stack = Stack()
    stack.compose("down", "-v", "-t", "10")  # whatever an interrupted run left behind
    started = time.monotonic()
    try:
        # Compose starts the consumers only once the broker's healthcheck passes.
        stack.compose("up", "-d", "--scale", "consumer=3", "consumer")
        stack.wait_healthy()
        healthy = time.monotonic() - started
        stack.wait_consuming(QUEUE, CONSUMING)
        consuming = time.monotonic() - started
        image = stack.images["RABBITMQ_IMAGE"]
        note_broker(
            suite="compose",
            description=f"compose project {PROJECT} ({image}, 127.0.0.1:{AMQP_PORT}):"
            f" after `up`, the broker healthy in {healthy:.1f}s, the 3 consumers' 6 workers"
            f" consuming in {consuming:.1f}s",
        )
        yield stack
    finally:
        stack.compose("down", "-v", "-t", "45", check=False)
