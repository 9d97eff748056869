"""pika's exceptions, as ours: each class `translate` handles, built as pika builds it."""

from __future__ import annotations

import socket

import pika.exceptions as px
import pytest
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorAMQPHandshakeError,
    AMQPConnectorSocketConnectError,
)

from common.errors import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConnectionLost,
    QueueMismatch,
)
from common.rabbitmq.errors import refused_declare, translate

pytestmark = pytest.mark.timeout(10)

URL = "amqp://guest:***@broker:5672/%2F"


#: What pika says when RabbitMQ refuses a password: the broker's own close, wrapped.
LOGIN_REFUSED = (
    "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused using "
    "authentication mechanism PLAIN. For details see the broker logfile.'"
)


def _workflow_failed(inner: BaseException) -> px.AMQPConnectionError:
    """How a `SelectConnection` reports a failed open: three wrappers deep."""
    return px.AMQPConnectionError(AMQPConnectionWorkflowFailed([inner]))


def test_pika_authentication_errors_are_connection_errors() -> None:
    # The trap: a check for "broker unreachable" that catches the parent class would take a
    # wrong password for a broker that is down.
    assert issubclass(px.AuthenticationError, px.AMQPConnectionError)
    assert issubclass(px.ProbableAuthenticationError, px.AMQPConnectionError)


@pytest.mark.parametrize(
    "exc",
    [
        px.AuthenticationError("PLAIN"),
        px.ProbableAuthenticationError(
            "ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - Login was refused'"
        ),
        _workflow_failed(AMQPConnectorAMQPHandshakeError(px.AuthenticationError("PLAIN"))),
        AMQPConnectionWorkflowFailed([px.ProbableAuthenticationError(LOGIN_REFUSED)]),
        px.AMQPConnectionError(px.AuthenticationError("PLAIN")),
    ],
    ids=["authentication", "probable", "in-handshake", "in-workflow", "wrapped"],
)
def test_refused_credentials_are_authentication_failed_never_unreachable(
    exc: BaseException,
) -> None:
    error = translate(exc, URL)
    assert type(error) is AuthenticationFailed
    assert str(error) == f"broker at {URL} refused the credentials"


@pytest.mark.parametrize(
    "exc",
    [
        px.ProbableAuthenticationError(
            'ConnectionClosedByBroker: (320) "CONNECTION_FORCED - broker forced connection '
            "closure with reason 'shutdown'\""
        ),
        px.ProbableAuthenticationError("StreamLostError: ('Transport indicated EOF',)"),
        _workflow_failed(
            AMQPConnectorAMQPHandshakeError(
                px.ProbableAccessDeniedError("StreamLostError: ('Transport indicated EOF',)")
            )
        ),
    ],
    ids=["forced-close-at-login", "eof-at-login", "eof-at-vhost"],
)
def test_a_broker_that_hangs_up_during_the_login_is_unreachable_not_a_wrong_password(
    exc: BaseException,
) -> None:
    # pika calls any close during the login a "probable" authentication error; a broker
    # that is stopping or starting does that too, and must be waited for, not given up on.
    error = translate(exc, URL)
    assert type(error) is BrokerUnreachable
    assert "closed the connection during the login" in str(error)


def test_refused_virtual_host_is_authentication_failed() -> None:
    exc = px.ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED'")
    error = translate(exc, URL)
    assert type(error) is AuthenticationFailed
    assert "refused access to the virtual host" in str(error)


def test_refused_connection_is_unreachable_with_the_socket_reason() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    error = translate(_workflow_failed(AMQPConnectorSocketConnectError(refused)), URL)
    assert type(error) is BrokerUnreachable
    assert str(error) == f"cannot reach broker at {URL}: [Errno 111] Connection refused"


def test_unknown_host_is_unreachable_with_the_resolver_reason() -> None:
    unknown = socket.gaierror(-2, "Name or service not known")
    error = translate(AMQPConnectionWorkflowFailed([unknown]), URL)
    assert type(error) is BrokerUnreachable
    assert str(error).endswith("Name or service not known")


def test_a_bare_connection_error_is_unreachable_with_its_text() -> None:
    error = translate(px.AMQPConnectionError("no route"), URL)
    assert type(error) is BrokerUnreachable
    assert str(error) == f"cannot reach broker at {URL}: no route"


@pytest.mark.parametrize(
    "exc",
    [
        px.ConnectionClosedByBroker(320, "CONNECTION_FORCED - broker forced connection closure"),
        px.StreamLostError("Transport indicated EOF"),
    ],
    ids=["closed-by-broker", "stream-lost"],
)
def test_a_dropped_connection_is_connection_lost(exc: BaseException) -> None:
    error = translate(exc, URL)
    assert type(error) is ConnectionLost
    assert str(error).startswith(f"connection to {URL} lost: ")


def test_inequivalent_queue_arguments_are_a_queue_mismatch() -> None:
    text = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'"
    error = translate(px.ChannelClosedByBroker(406, text), URL)
    assert type(error) is QueueMismatch
    assert "x-queue-type" in str(error) and "--queue" in str(error)


def test_a_refused_declare_is_final_unless_the_queue_s_node_is_down() -> None:
    locked = px.ChannelClosedByBroker(405, "RESOURCE_LOCKED - cannot obtain exclusive access")
    error = refused_declare("q", locked, URL)
    assert type(error) is QueueMismatch and str(error).startswith("cannot use queue 'q': 405")
    down = "NOT_FOUND - home node 'rabbit@n1' of durable queue 'q' in vhost '/' is down"
    error = refused_declare("q", px.ChannelClosedByBroker(404, down), URL)
    assert type(error) is ConnectionLost  # retried: the queue is back with its node
    assert "is on a node that is down" in str(error)


def test_a_channel_refused_access_is_authentication_failed() -> None:
    text = "ACCESS_REFUSED - access to queue 'q' refused"
    error = translate(px.ChannelClosedByBroker(403, text), URL)
    assert type(error) is AuthenticationFailed
    assert str(error) == f"access refused: {text}"


def test_a_deleted_queue_closing_the_channel_is_recoverable() -> None:
    error = translate(px.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'q'"), URL)
    assert type(error) is ConnectionLost
    assert str(error) == "broker closed the channel: 404 NOT_FOUND - no queue 'q'"


def test_a_delivery_past_the_consumer_timeout_is_recoverable_and_explained() -> None:
    text = (
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
        "Timeout value used: 3000 ms."
    )
    error = translate(px.ChannelClosedByBroker(406, text), URL)
    assert type(error) is ConnectionLost
    assert text in str(error) and "lower --prefetch" in str(error)


def test_anything_else_is_a_broker_error_that_names_the_class() -> None:
    error = translate(px.ChannelWrongStateError("Channel is closed."), URL)
    assert type(error) is BrokerError
    assert str(error) == f"broker error at {URL}: ChannelWrongStateError: Channel is closed."


def test_our_own_errors_pass_through_unchanged() -> None:
    ours = ConnectionLost("gone")
    assert translate(ours, URL) is ours
