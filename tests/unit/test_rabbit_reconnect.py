"""The reconnect schedule, driven by a `ManualClock`: no broker, no sleeping.

`connect` here is any callable that raises as `RabbitBackend._connect` does when the broker
is away (`BrokerUnreachable`), so the policy is tested without pika at all.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.clock import ManualClock
from common.errors import AuthenticationFailed, BrokerUnreachable, ConnectionLost, QueueMismatch
from common.rabbitmq.backend import Reconnect

pytestmark = pytest.mark.timeout(10)

LOST = ConnectionLost("connection to broker lost")


def _broker_back_after(failures: int, clock: ManualClock) -> Callable[[], float]:
    """A connect that fails `failures` times, then returns the time it succeeded."""
    left = [failures]

    def connect() -> float:
        if left[0]:
            left[0] -= 1
            raise BrokerUnreachable("cannot reach broker: Connection refused")
        return clock.monotonic()

    return connect


def test_the_first_try_is_at_once_then_pauses_double_up_to_the_cap() -> None:
    clock = ManualClock()
    reconnect = Reconnect(attempts=None, max_delay=1.0, clock=clock)
    start = clock.monotonic()
    assert reconnect.run(_broker_back_after(6, clock), LOST, wait=None) == pytest.approx(
        start + 0.2 + 0.4 + 0.8 + 1.0 + 1.0 + 1.0
    )
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert reconnect.attempt == 0


def test_a_success_starts_the_schedule_over() -> None:
    clock = ManualClock()
    reconnect = Reconnect(attempts=None, max_delay=10.0, clock=clock)
    reconnect.run(_broker_back_after(3, clock), LOST, wait=None)
    clock.sleeps.clear()
    clock.advance(60)  # the link lives a minute, then drops again
    reconnect.run(_broker_back_after(2, clock), LOST, wait=None)
    assert clock.sleeps == pytest.approx([0.2, 0.4])


def test_spent_attempts_raise_the_last_error() -> None:
    clock = ManualClock()
    reconnect = Reconnect(attempts=3, max_delay=10.0, clock=clock)
    with pytest.raises(BrokerUnreachable, match="Connection refused"):
        reconnect.run(_broker_back_after(99, clock), LOST, wait=None)
    assert reconnect.attempt == 3
    assert clock.sleeps == pytest.approx([0.2, 0.4])


def test_with_a_wait_it_gives_up_at_the_deadline_and_resumes_the_schedule() -> None:
    clock = ManualClock()
    reconnect = Reconnect(attempts=None, max_delay=10.0, clock=clock)
    connect = _broker_back_after(3, clock)
    start = clock.monotonic()
    # Tries at +0 and +0.2; the next is due at +0.6, after the deadline: wait it out, None.
    assert reconnect.run(connect, LOST, wait=0.5) is None
    assert clock.monotonic() == pytest.approx(start + 0.5)
    # The next call picks the schedule up where it was: +0.6 fails, +1.4 succeeds.
    assert reconnect.run(connect, LOST, wait=5) == pytest.approx(start + 1.4)
    assert clock.sleeps == pytest.approx([0.2, 0.3, 0.1, 0.8])


@pytest.mark.parametrize(
    "error",
    [AuthenticationFailed("refused the credentials"), QueueMismatch("other arguments")],
    ids=["wrong-password", "queue-mismatch"],
)
def test_an_error_a_retry_cannot_fix_is_raised_at_once(error: Exception) -> None:
    clock = ManualClock()
    tried: list[int] = []
    reconnect = Reconnect(attempts=None, max_delay=10.0, clock=clock)
    with pytest.raises(type(error)):
        reconnect.run(lambda: tried.append(1), error, wait=None)  # type: ignore[arg-type]
    assert tried == [] and clock.sleeps == []


def test_no_attempts_allowed_raises_the_loss_at_once() -> None:
    clock = ManualClock()
    reconnect = Reconnect(attempts=0, max_delay=10.0, clock=clock)
    with pytest.raises(ConnectionLost):
        reconnect.run(_broker_back_after(0, clock), LOST, wait=None)
    assert clock.sleeps == []


def test_a_wrong_password_while_reconnecting_is_not_retried() -> None:
    clock = ManualClock()
    reconnect = Reconnect(attempts=None, max_delay=10.0, clock=clock)

    def connect() -> None:
        raise AuthenticationFailed("refused the credentials")

    with pytest.raises(AuthenticationFailed):
        reconnect.run(connect, LOST, wait=None)
    assert reconnect.attempt == 1 and clock.sleeps == []
