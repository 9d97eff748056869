"""The dashboard's page in a real headless browser (Debian's chromium, driven by Playwright),
during a real job: what the page shows must be what was done, and its replay button must
bring a dead letter back to be done.

Outside CI the test skips when chromium is missing (``bash scripts/browser.sh`` installs it);
under CI=true that is a failure. ``DASHBOARD_SCREENSHOT=FILE`` saves the page, as it shows
the finished job, to FILE (docs/dashboard.png was made so).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.dashboard.conftest import Running
from tests.helpers import run

pytestmark = [pytest.mark.broker, pytest.mark.browser]

HANDLERS = ("--handlers", "tests.dashboard.dash_tasks")
SUCCEEDING, FAILING = 12, 3
#: Seconds the page has to show a change (it is sent a picture each second).
SHOWN_WITHIN = 20_000  # ms, as Playwright counts


def chromium_path() -> str:
    """Debian's chromium: skip without it (outside CI), fail without it (CI)."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if os.access(found, os.X_OK):
        return found
    reason = "chromium is not installed; `sudo bash scripts/browser.sh` installs Debian's"
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # the test extra has it

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


def shows(page: Any, selector: str, text: str) -> None:
    """Wait until the element's text is exactly `text`."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_text(text, timeout=SHOWN_WITHIN)


def consume(broker_url: str, queue_name: str) -> None:
    """A consumer in --burst mode, with the test's task kinds: it drains the queue and exits."""
    drained = run(
        "consumer",
        *("--url", broker_url, "--queue", queue_name, *HANDLERS),
        *("--workers", "2", "--max-attempts", "2", "--retry-delay", "0.1", "--burst"),
        timeout=90,
    )
    assert drained.returncode == 0, drained.stderr


def publish(broker_url: str, queue_name: str, kind: str, count: int, payload: str = "{}") -> None:
    sent = run(
        "producer",
        *("--backend", "rabbitmq", "--url", broker_url, "--queue", queue_name, *HANDLERS),
        *("--kind", kind, "--count", str(count), "--payload", payload, "--max-attempts", "2"),
    )
    assert sent.returncode == 0, sent.stderr


@pytest.mark.timeout(180)
def test_the_page_shows_the_job_and_replays_a_dead_letter(
    page: Any, dashboard: Running, broker_url: str, queue_name: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(dashboard.url)
    shows(page, "#queue", queue_name)
    shows(page, "#events-status", "events: listening")
    shows(page, "#stream-status", "live")

    flag = tmp_path / "still-broken"
    flag.touch()
    publish(broker_url, queue_name, "echo", SUCCEEDING)
    publish(broker_url, queue_name, "flaky", FAILING, f'{{"flag": "{flag}"}}')
    consume(broker_url, queue_name)

    # What was done, as the page shows it: every success, each failing task tried twice
    # (one retry), then dead-lettered, and the DLQ holding them with why.
    shows(page, "#tile-succeeded", str(SUCCEEDING))
    shows(page, "#tile-failed", str(2 * FAILING))
    shows(page, "#tile-retried", str(FAILING))
    shows(page, "#tile-dead", str(FAILING))
    shows(page, "#tile-dlq", str(FAILING))
    shows(page, "#dlq-count", str(FAILING))
    letters = page.locator("#dlq tbody tr")
    assert letters.count() == FAILING
    assert set(letters.locator("td:nth-child(2)").all_text_contents()) == {"max-attempts"}
    assert "still-broken still exists" in letters.first.text_content()
    assert page.locator("#recent tr.fate-task-succeeded").count() == SUCCEEDING
    assert page.locator("#recent tr.fate-task-dead-lettered").count() == FAILING
    # The workers came and went: each said what it did in its last word (which may come
    # after the other worker's last task event).
    expect(page.locator("#workers tbody tr.status-offline")).to_have_count(2, timeout=SHOWN_WITHIN)
    shows(page, "#workers-count", "2")
    done_by_workers = page.locator("#workers tbody tr td:nth-child(6)").all_text_contents()
    assert sum(map(int, done_by_workers)) == SUCCEEDING
    # The depths' source is named; both sources agree that the queue is empty now.
    assert "depths: " in page.locator("#depth-source").text_content()
    shows(page, "#tile-ready", "0")
    # The charts are drawn by the library served from the package (no network here).
    assert page.locator("#chart-depths canvas").count() == 1
    if screenshot := os.environ.get("DASHBOARD_SCREENSHOT"):
        page.screenshot(path=screenshot, full_page=True)

    # A request from this page without the token, and one from another origin (another
    # name for the same server) with the token, change nothing.
    refused = page.evaluate(
        "fetch('/api/dlq/replay', {method: 'POST', body: '{}'}).then(r => r.status)"
    )
    assert refused == 403
    other_origin = dashboard.url.replace("127.0.0.1", "localhost")
    other = page.context.new_page()
    other.goto(other_origin)
    blocked = other.evaluate(
        """([url, token]) => fetch(url, {method: 'POST', body: '{}',
                headers: {'X-Dashboard-Token': token, 'Content-Type': 'application/json'}})
            .then(r => r.status, e => 'blocked: ' + e.message)""",
        [f"{dashboard.base}api/dlq/replay", dashboard.token],
    )
    other.close()
    assert str(blocked).startswith("blocked") or blocked == 403, blocked
    assert dashboard.state()["dlq"]["count"] == FAILING

    # The handler is fixed; a dead letter is replayed from the page and done.
    flag.unlink()
    task_id = letters.first.get_attribute("data-task-id")
    letters.first.locator("button.replay").click()
    shows(page, "#action-result", "replayed 1 dead letter(s)")
    shows(page, "#tile-dlq", str(FAILING - 1))
    consume(broker_url, queue_name)
    shows(page, "#tile-succeeded", str(SUCCEEDING + 1))
    done = page.locator(f'#recent tr[data-task-id="{task_id}"] td.fate')
    expect(done).to_have_text("succeeded", timeout=SHOWN_WITHIN)

    # What is left is purged from the page, once the user has said yes.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#purge").click()
    shows(page, "#action-result", f"purged {FAILING - 1} dead letter(s)")
    shows(page, "#tile-dlq", "0")
