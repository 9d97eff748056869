"""The dashboard's server over plain HTTP, against the real broker: who may do what, the
stream, and how it fails to start. (The page itself: test_dashboard_browser.py.)"""

from __future__ import annotations

import socket
import urllib.request

import pytest

from common.rabbitmq import RabbitBackend
from tests.conftest import url_with
from tests.dashboard.conftest import TOKEN_HEADER, Running, request
from tests.helpers import run

pytestmark = pytest.mark.broker


def make_dead_letters(broker_url: str, queue_name: str, count: int) -> None:
    """`count` tasks that fail once and are dead-lettered (max-attempts), by the real
    programs."""
    common = ("--url", broker_url, "--queue", queue_name, "--max-attempts", "1")
    sent = run(
        "producer", "--backend", "rabbitmq", *common, "--kind", "fail", "--count", str(count)
    )
    assert sent.returncode == 0, sent.stderr
    drained = run("consumer", *common, "--burst", "--workers", "1", timeout=60)
    assert drained.returncode == 0, drained.stderr


def dead_letters_in(broker_url: str, queue_name: str) -> int:
    """The DLQ's length as the broker says it now (not as the dashboard last saw it)."""
    with RabbitBackend(broker_url, queue_name) as admin:
        return admin.dead_letter_count()


@pytest.mark.timeout(90)
def test_state_changing_requests_need_the_token_and_the_own_origin(
    dashboard: Running, broker_url: str, queue_name: str
) -> None:
    make_dead_letters(broker_url, queue_name, 2)
    dashboard.wait_for("the 2 dead letters", lambda s: s["dlq"]["count"] == 2)
    replay = f"{dashboard.base}api/dlq/replay"
    good = {TOKEN_HEADER: dashboard.token, "Content-Type": "application/json"}
    refused = [
        ("no token", {}, replay),
        ("the token in the query, not the header", {}, f"{replay}?token={dashboard.token}"),
        ("a wrong token", {TOKEN_HEADER: dashboard.token[:-1] + "x"}, replay),
        ("another site's origin", {**good, "Origin": "http://evil.example"}, replay),
        ("another port's origin", {**good, "Origin": dashboard.origin + "1"}, replay),
        ("a sandboxed page's origin", {**good, "Origin": "null"}, replay),
    ]
    for why, headers, url in refused:
        status, body = request(url, method="POST", headers=headers, body={})
        assert status == 403, (why, status, body)
        status, body = request(
            f"{dashboard.base}api/dlq/purge", method="POST", headers=headers, body={}
        )
        assert status == 403, (why, "purge", status, body)
    assert dead_letters_in(broker_url, queue_name) == 2, "a refused request changed the DLQ"

    # The same request from the page's own origin, with the token, does replay them.
    status, body = request(
        replay, method="POST", headers={**good, "Origin": dashboard.origin}, body={}
    )
    assert (status, body) == (200, {"replayed": 2})
    assert dead_letters_in(broker_url, queue_name) == 0
    with RabbitBackend(broker_url, queue_name) as admin:
        assert admin.pending() == 2  # back in the work queue


@pytest.mark.timeout(90)
def test_purge_empties_the_dlq(dashboard: Running, broker_url: str, queue_name: str) -> None:
    make_dead_letters(broker_url, queue_name, 1)
    dashboard.wait_for("the dead letter", lambda s: s["dlq"]["count"] == 1)
    headers = {TOKEN_HEADER: dashboard.token, "Origin": dashboard.origin}
    status, body = request(f"{dashboard.base}api/dlq/purge", method="POST", headers=headers)
    assert (status, body) == (200, {"purged": 1})
    assert dead_letters_in(broker_url, queue_name) == 0


@pytest.mark.timeout(60)
def test_reading_needs_the_token_but_the_page_files_do_not(dashboard: Running) -> None:
    assert request(dashboard.base)[0] == 403
    assert request(f"{dashboard.base}?token=wrong")[0] == 403
    assert request(f"{dashboard.base}api/state")[0] == 403
    assert request(f"{dashboard.base}events?token=wrong")[0] == 403

    with urllib.request.urlopen(dashboard.url, timeout=10) as page:
        assert page.status == 200
        assert "taskshuttle" in page.read().decode()
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["referrer-policy"] == "no-referrer"  # the URL holds the token
    # The chart library comes from the package itself (the page works offline), token-free.
    status, library = request(f"{dashboard.base}static/vendor/uPlot.iife.min.js")
    assert status == 200 and "uPlot" in library

    # The stream: a whole picture of the queue, as the page gets it.
    stream_url = f"{dashboard.base}events?token={dashboard.token}"
    with urllib.request.urlopen(stream_url, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.readline() == b"event: picture\n"
        assert stream.readline().startswith(b"data: {")


def _one_line_error(completed: object, code: int, *texts: str) -> None:
    assert completed.returncode == code, completed.stderr  # type: ignore[attr-defined]
    lines = completed.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("consumer: error: "), lines
    for text in texts:
        assert text in lines[0], lines[0]


@pytest.mark.timeout(60)
def test_a_wrong_password_is_one_line_before_anything_listens(
    broker_url: str, queue_name: str
) -> None:
    wrong = url_with(broker_url, password="not-the-password")
    completed = run("tests.dashboard.launch", "--url", wrong, "--queue", queue_name, "--port", "0")
    _one_line_error(completed, 1)
    assert "not-the-password" not in completed.stderr
    assert "dashboard: http" not in completed.stdout


@pytest.mark.timeout(60)
def test_a_port_in_use_is_one_line(broker_url: str, queue_name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        completed = run(
            "tests.dashboard.launch", "--url", broker_url, "--queue", queue_name, "--port", port
        )
    _one_line_error(completed, 2, "'--port'", "cannot listen on 127.0.0.1:")


@pytest.mark.timeout(30)
def test_the_local_backend_is_refused() -> None:
    completed = run("tests.dashboard.launch", "--backend", "local")
    _one_line_error(completed, 2, "'--backend'")
