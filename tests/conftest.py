"""Shared fixtures. Integration tests need a broker: without one they skip with the reason,
except under CI (``CI=true``), where a missing broker is a failure, never a silent skip.

The run's header names the broker of the contract and integration suites (scripts/test.sh
sets ``TASKSHUTTLE_TEST_BROKER_LABEL``: a container, or Debian's rabbitmq-server), and its
summary lists the brokers each suite really used (`note_broker`)."""

from __future__ import annotations

import os
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from common.backend import ProducerBackend
from common.defaults import QueueType
from common.settings import DEFAULT_AMQP_URL, redact_url
from tests.rabbit_node import RABBITMQ_BIN, rabbitmq_available

IN_CI = os.environ.get("CI", "").lower() == "true"
BROKER_URL = os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)
BROKER_LABEL = os.environ.get(
    "TASKSHUTTLE_TEST_BROKER_LABEL", "the broker of AMQP_URL (scripts/test.sh did not start it)"
)
TESTS_DIR = Path(__file__).resolve().parent

# Which brokers each suite (a folder of tests/, or "top" for tests/test_*.py) connected to,
# and how many times (tests, or nodes started).
_brokers_by_suite: defaultdict[str, Counter[str]] = defaultdict(Counter)
_suite_running = ["?"]


def note_broker(description: str, suite: str | None = None) -> None:
    """Record that the running test (or a fixture of `suite`) uses the broker `description`,
    for the run's summary."""
    _brokers_by_suite[suite or _suite_running[0]][description] += 1


@pytest.fixture(autouse=True)
def _note_suite(request: pytest.FixtureRequest) -> None:
    relative = Path(request.node.path).resolve().relative_to(TESTS_DIR)
    _suite_running[0] = relative.parts[0] if len(relative.parts) > 1 else "top"


def pytest_report_header(config: pytest.Config) -> list[str]:
    where = f"{BROKER_LABEL}, {redact_url(BROKER_URL)}"
    return [f"broker of the contract and integration suites: {where}"]


# Figures a test measured that a reader of the run wants to see (not asserted bounds).
_figures: list[str] = []


def note_figure(line: str) -> None:
    """Print `line` in the run's summary, under "figures"."""
    _figures.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _brokers_by_suite:
        terminalreporter.write_sep("-", "brokers used, by suite")
        for suite in sorted(_brokers_by_suite):
            for description, times in sorted(_brokers_by_suite[suite].items()):
                terminalreporter.write_line(f"{suite}: {description} (x{times})")
    if _figures:
        terminalreporter.write_sep("-", "figures")
        for line in _figures:
            terminalreporter.write_line(line)


def _broker_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def require_broker(url: str = BROKER_URL) -> str:
    """Skip (outside CI) or fail (in CI) unless a broker accepts connections at `url`."""
    if _broker_answers(url):
        note_broker(f"{BROKER_LABEL}, {redact_url(url)}" if url == BROKER_URL else redact_url(url))
        return url
    where = f"{urlsplit(url).hostname}:{urlsplit(url).port or 5672}"
    reason = f"no RabbitMQ answers at {where}; start one with `bash scripts/broker.sh start`"
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def require_rabbitmq_server() -> None:
    """Skip (outside CI) or fail (in CI) unless Debian's RabbitMQ scripts are installed, which
    a node of a test's own (or the local cluster of scripts/cluster.sh) needs."""
    if not rabbitmq_available():
        reason = f"{RABBITMQ_BIN / 'rabbitmq-server'} is absent (scripts/broker.sh installs it)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def url_with(url: str, *, password: str | None = None, vhost: str | None = None) -> str:
    """`url` with another password or virtual host: the test broker's own user and address,
    whichever broker the run uses."""
    parts = urlsplit(url)
    netloc, path = parts.netloc, parts.path
    if password is not None:
        credentials, _, address = netloc.rpartition("@")
        user = credentials.partition(":")[0] or "guest"
        netloc = f"{user}:{quote(password, safe='')}@{address}"
    if vhost is not None:
        path = "/" + quote(vhost, safe="")
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


@pytest.fixture
def broker_url() -> str:
    return require_broker()


#: The test broker's management API: scripts/test.sh sets it (the container's published port),
#: and `consumer status` and `dashboard` read the same variable.
MANAGEMENT_URL = os.environ.get("TASKSHUTTLE_MANAGEMENT_URL", "http://127.0.0.1:15672")


def rabbitmqctl(*args: str) -> list[str]:
    """The command line of the test broker's own ``rabbitmqctl`` with `args` (scripts/test.sh
    says which: ``docker exec <container> rabbitmqctl`` for the container broker)."""
    return [*os.environ.get("TASKSHUTTLE_TEST_RABBITMQCTL", "rabbitmqctl").split(), *args]


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name of this test's own; its queues are deleted afterwards (RabbitMQ)."""
    name = f"test.{request.node.name[:40]}.{uuid.uuid4().hex[:8]}"
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    yield name
    if _broker_answers(BROKER_URL):
        delete_queues(BROKER_URL, name)


def delete_queues(url: str, work_queue: str) -> None:
    """Delete a work queue and its companions, whatever their type or arguments (deleting
    a queue that does not exist is no error in RabbitMQ)."""
    import pika

    from common.rabbitmq.topology import QueueNames

    params = pika.URLParameters(url)
    params.socket_timeout = params.blocked_connection_timeout = 10
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        for name in QueueNames(work_queue).with_companions():
            channel.queue_delete(name)
    finally:
        connection.close()


def _management(method: str, path: str, body: dict[str, object] | None = None) -> Any:
    """One request to the test broker's management API, with the broker URL's credentials;
    its answer's JSON (None for an empty answer)."""
    import base64
    import json
    import urllib.error
    import urllib.request

    parts = urlsplit(BROKER_URL)
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        MANAGEMENT_URL.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            data = answer.read()
    except urllib.error.HTTPError as refused:
        refused.close()  # it holds the connection: left open, it would warn when collected
        raise
    return json.loads(data) if data else None


def management_json(path: str) -> Any:
    """The test broker's management API's answer to GET `path`; skip (outside CI) or fail (in
    CI) when no management API answers."""
    try:
        return _management("GET", path)
    except OSError as exc:
        reason = f"no management API at {MANAGEMENT_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


@pytest.fixture
def own_vhost(broker_url: str) -> Iterator[str]:
    """`broker_url` on a virtual host of this test's own, made through the management API and
    deleted afterwards with all it holds: for a test that would leave long-delayed tasks in
    the delay levels, or change one, which every queue of a virtual host shares."""
    import urllib.error

    vhost = f"taskshuttle-test-{uuid.uuid4().hex[:8]}"
    path = "/" + quote(vhost, safe="")
    user = unquote(urlsplit(broker_url).username or "guest")
    try:
        _management("PUT", f"/api/vhosts{path}", {})
    except (urllib.error.URLError, OSError) as exc:
        reason = f"no management API to make a virtual host at {MANAGEMENT_URL}: {exc}"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    try:
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        _management("PUT", f"/api/permissions{path}/{quote(user, safe='')}", everything)
        yield url_with(broker_url, vhost=vhost)
    finally:
        _management("DELETE", f"/api/vhosts{path}")


@pytest.fixture(params=["local", "rabbitmq-quorum", "rabbitmq-classic"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The contract suite's backends: local, and RabbitMQ on each queue type."""
    return str(request.param)


@pytest.fixture
def make_backend(backend_name: str, queue_name: str) -> Iterator[Callable[..., ProducerBackend]]:
    """Build only the backend this test asked for (local tests never need the broker).

    Local: the broker, the producer's side; `broker.slots.worker_end(slot)` is a worker's.
    RabbitMQ: one object with both sides."""
    built: list[ProducerBackend] = []

    def make(**kwargs: object) -> ProducerBackend:
        backend: ProducerBackend
        if backend_name == "local":
            from common.local import LocalBroker

            backend = LocalBroker(queue_name=queue_name, **kwargs)  # type: ignore[arg-type]
        else:
            from common.rabbitmq import RabbitBackend

            queue_type = QueueType(backend_name.removeprefix("rabbitmq-"))
            backend = RabbitBackend(
                require_broker(),
                queue_name,
                queue_type=queue_type,
                **kwargs,  # type: ignore[arg-type]
            )
        built.append(backend)
        return backend

    yield make
    for backend in built:
        backend.close()


@pytest.fixture(autouse=True)
def _no_program_left_running() -> Iterator[None]:
    """Whatever a test started and did not stop (say, after a failed assert) is killed."""
    yield
    from tests.helpers import kill_leftovers

    kill_leftovers()
