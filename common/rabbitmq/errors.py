"""pika's exceptions, as this project's errors: `translate` is the one place this happens.

pika nests the reason a connection could not open: an ``AMQPConnectionError`` may carry an
``AMQPConnectionWorkflowFailed``, whose last attempt carries the socket's or the handshake's
own exception. The innermost one decides, so a refused password is `AuthenticationFailed`
however deep it sits, even though pika's `AuthenticationError` and
`ProbableAuthenticationError` are subclasses of `AMQPConnectionError`, the class that
otherwise means "no broker there".
"""

from __future__ import annotations

import pika.exceptions
from pika.adapters.utils.connection_workflow import (
    AMQPConnectionWorkflowFailed,
    AMQPConnectorPhaseErrorBase,
)

from common.errors import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConnectionLost,
    QueueMismatch,
)

#: The credentials were refused (pika says "probable" when the broker just hung up at login).
_REFUSED_LOGIN = (pika.exceptions.AuthenticationError, pika.exceptions.ProbableAuthenticationError)


def translate(exc: BaseException, safe_url: str) -> BrokerError:
    """pika's exception, as this project's error (a `BrokerError` passes through as it is)."""
    if isinstance(exc, BrokerError):
        return exc
    cause = innermost(exc)
    if isinstance(exc, _REFUSED_LOGIN) or isinstance(cause, _REFUSED_LOGIN):
        return AuthenticationFailed(f"broker at {safe_url} refused the credentials")
    if isinstance(cause, pika.exceptions.ProbableAccessDeniedError):
        return AuthenticationFailed(f"broker at {safe_url} refused access to the virtual host")
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return _channel_closed(exc)
    text = str(exc)
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker | pika.exceptions.StreamLostError):
        return ConnectionLost(f"connection to {safe_url} lost: {text}")
    if isinstance(exc, AMQPConnectionWorkflowFailed | pika.exceptions.AMQPConnectionError):
        detail = text if cause is exc else str(cause)
        return BrokerUnreachable(f"cannot reach broker at {safe_url}: {detail or text}")
    return BrokerError(f"broker error at {safe_url}: {type(exc).__name__}: {text}")


def innermost(exc: BaseException) -> BaseException:
    """The exception pika wrapped, unwrapped down to the one that says what happened."""
    for _ in range(8):  # pika nests three deep at most; the bound only guards against cycles
        if isinstance(exc, AMQPConnectionWorkflowFailed) and exc.exceptions:
            inner: object = exc.exceptions[-1]
        elif isinstance(exc, AMQPConnectorPhaseErrorBase):
            inner = exc.exception
        elif isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args:
            inner = exc.args[0]
        else:
            inner = None
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
    return exc


def _channel_closed(exc: pika.exceptions.ChannelClosedByBroker) -> BrokerError:
    if exc.reply_code == 406 and "inequivalent arg" in exc.reply_text:
        return QueueMismatch(
            f"queue exists with other arguments ({exc.reply_text}); "
            "delete it or choose another --queue"
        )
    if exc.reply_code == 403:
        return AuthenticationFailed(f"access refused: {exc.reply_text}")
    return BrokerError(f"broker closed the channel: {exc.reply_code} {exc.reply_text}")
