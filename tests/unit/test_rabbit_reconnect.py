"""The reconnect schedule, driven by a `ManualClock`: no broker, no sleeping.

`connect` here is any callable that raises as `RabbitBackend._connect` does when the broker
is away (`BrokerUnreachable`), so the policy is tested without pika at all. Jitter comes from
an injected `rand`: 1.0 gives the full pause, so the schedules below are exact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

from common.clock import ManualClock
from common.errors import AuthenticationFailed, BrokerUnreachable, ConnectionLost, QueueMismatch
from common.rabbitmq.reconnect import Reconnect

pytestmark = pytest.mark.timeout(10)

LOST = ConnectionLost("connection to broker lost")
REFUSED = BrokerUnreachable("cannot reach broker at amqp://u:***@h/: Connection refused")


def _broker_back_after(failures: int, clock: ManualClock) -> Callable[[], float]:
    """A connect that fails `failures` times, then returns the time it succeeded."""
    left = [failures]

    def connect() -> float:
        if left[0]:
            left[0] -= 1
            raise REFUSED
        return clock.monotonic()

    return connect


def _policy(clock: ManualClock, give_up_after: float | None = None, **kw: object) -> Reconnect:
    return Reconnect(give_up_after, 1.0, clock, rand=lambda: 1.0, **kw)  # type: ignore[arg-type]


def test_the_first_try_is_at_once_then_pauses_double_up_to_the_cap() -> None:
    clock = ManualClock()
    reconnect = _policy(clock)
    start = clock.monotonic()
    assert reconnect.run(_broker_back_after(6, clock), LOST, wait=None) == pytest.approx(
        start + 0.2 + 0.4 + 0.8 + 1.0 + 1.0 + 1.0
    )
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert reconnect.attempt == 0


def test_pauses_are_jittered_between_half_and_all_of_the_step() -> None:
    clock = ManualClock()
    draws = iter([0.0, 0.5, 1.0])
    reconnect = Reconnect(None, 10.0, clock, rand=lambda: next(draws))
    reconnect.run(_broker_back_after(3, clock), LOST, wait=None)
    assert clock.sleeps == pytest.approx([0.2 * 0.5, 0.4 * 0.75, 0.8 * 1.0])


def test_each_failed_attempt_logs_one_line_with_the_delay_and_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    with caplog.at_level(logging.WARNING, logger="taskshuttle.rabbitmq"):
        _policy(clock).run(_broker_back_after(2, clock), LOST, wait=None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"broker unreachable, retrying in 0.2s: {REFUSED}",
        f"broker unreachable, retrying in 0.4s: {REFUSED}",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_success_starts_the_schedule_over() -> None:
    clock = ManualClock()
    reconnect = _policy(clock)
    reconnect.run(_broker_back_after(3, clock), LOST, wait=None)
    clock.sleeps.clear()
    clock.advance(60)  # the link lives a minute, then drops again
    reconnect.run(_broker_back_after(2, clock), LOST, wait=None)
    assert clock.sleeps == pytest.approx([0.2, 0.4])


def test_an_outage_longer_than_the_bound_raises_the_last_error_at_the_bound() -> None:
    clock = ManualClock()
    reconnect = _policy(clock, give_up_after=3.0)
    start = clock.monotonic()
    with pytest.raises(BrokerUnreachable, match="Connection refused"):
        reconnect.run(_broker_back_after(99, clock), LOST, wait=None)
    # 0.2 + 0.4 + 0.8 + 1.0, then the last try waits only what is left of the 3 s: 0.6.
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.0, 0.6])
    assert clock.monotonic() == pytest.approx(start + 3.0)


def test_the_bound_is_per_outage_not_per_life() -> None:
    clock = ManualClock()
    reconnect = _policy(clock, give_up_after=3.0)
    reconnect.run(_broker_back_after(4, clock), LOST, wait=None)  # 2.4 s of a 3 s bound
    clock.advance(600)
    reconnect.run(_broker_back_after(4, clock), LOST, wait=None)  # a new outage: 3 s again


def test_a_failed_first_connect_is_an_attempt_the_next_one_waits() -> None:
    # At start-up there is no "at once": the failed first connect already was one.
    clock = ManualClock()
    reconnect = _policy(clock, give_up_after=None)
    reconnect.failed(REFUSED)
    start = clock.monotonic()
    assert reconnect.run(_broker_back_after(1, clock), REFUSED, wait=None) == pytest.approx(
        start + 0.2 + 0.4
    )


def test_with_a_wait_it_gives_up_at_the_deadline_and_resumes_the_schedule() -> None:
    clock = ManualClock()
    reconnect = _policy(clock)
    reconnect.max_delay = 10.0
    connect = _broker_back_after(3, clock)
    start = clock.monotonic()
    # Tries at +0 and +0.2; the next is due at +0.6, after the deadline: wait it out, None.
    assert reconnect.run(connect, LOST, wait=0.5) is None
    assert clock.monotonic() == pytest.approx(start + 0.5)
    # The next call picks the schedule up where it was: +0.6 fails, +1.4 succeeds.
    assert reconnect.run(connect, LOST, wait=5) == pytest.approx(start + 1.4)
    assert clock.sleeps == pytest.approx([0.2, 0.3, 0.1, 0.8])


def test_a_stop_flag_ends_the_wait_with_the_last_error() -> None:
    clock = ManualClock()
    stop = threading.Event()
    calls = [0]

    def connect() -> None:
        calls[0] += 1
        if calls[0] == 3:
            stop.set()  # a signal arrives while the broker is away
        raise REFUSED

    reconnect = _policy(clock, stop=stop)
    with pytest.raises(BrokerUnreachable):
        reconnect.run(connect, LOST, wait=None)
    assert calls[0] == 3


@pytest.mark.parametrize(
    "error",
    [AuthenticationFailed("refused the credentials"), QueueMismatch("other arguments")],
    ids=["wrong-password", "queue-mismatch"],
)
def test_an_error_a_retry_cannot_fix_is_raised_at_once(error: Exception) -> None:
    clock = ManualClock()
    tried: list[int] = []
    reconnect = _policy(clock)
    with pytest.raises(type(error)):
        reconnect.run(lambda: tried.append(1), error, wait=None)  # type: ignore[arg-type]
    with pytest.raises(type(error)):
        reconnect.failed(error)  # type: ignore[arg-type]
    assert tried == [] and clock.sleeps == []


def test_no_wait_allowed_raises_the_loss_at_once() -> None:
    clock = ManualClock()
    reconnect = _policy(clock, give_up_after=0.0)
    with pytest.raises(ConnectionLost):
        reconnect.run(_broker_back_after(0, clock), LOST, wait=None)
    with pytest.raises(BrokerUnreachable):
        reconnect.failed(REFUSED)
    assert clock.sleeps == []


def test_a_wrong_password_while_reconnecting_is_not_retried() -> None:
    clock = ManualClock()
    reconnect = _policy(clock)

    def connect() -> None:
        raise AuthenticationFailed("refused the credentials")

    with pytest.raises(AuthenticationFailed):
        reconnect.run(connect, LOST, wait=None)
    assert clock.sleeps == []
