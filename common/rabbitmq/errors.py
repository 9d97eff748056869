"""pika's exceptions, as this project's errors: `translate` is the one place this happens.

pika nests the reason a connection could not open: an ``AMQPConnectionError`` may carry an
``AMQPConnectionWorkflowFailed``, whose last attempt carries the socket's or the handshake's
own exception. The innermost one decides, so a refused password is `AuthenticationFailed`
however deep it sits, even though pika's `AuthenticationError` and
`ProbableAuthenticationError` are subclasses of `AMQPConnectionError`, the class that
otherwise means "no broker there".

What a retry can fix and what it cannot is decided here too, by the class returned:
`ConnectionLost` and `BrokerUnreachable` are retried (see `Reconnect`); `AuthenticationFailed`
and `QueueMismatch` are not. pika says "probable" authentication error whenever the broker
hangs up during the login, which a broker that is shutting down or starting also does: only
the broker's own refusal (``ACCESS_REFUSED``, ``NOT_ALLOWED``) is taken for a wrong password
or virtual host. A channel the broker closed is recoverable (a delivery left unacked past
its ``consumer_timeout``, a queue deleted under its consumer): the link is opened again.
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

#: The broker's own words when it refuses a login (403) or a virtual host (530).
_REFUSALS = ("ACCESS_REFUSED", "NOT_ALLOWED", "(403)", "(530)")


def translate(exc: BaseException, safe_url: str) -> BrokerError:
    """pika's exception, as this project's error (a `BrokerError` passes through as it is)."""
    if isinstance(exc, BrokerError):
        return exc
    cause = innermost(exc)
    refused = _refused_login(exc) or _refused_login(cause)
    if refused is not None:
        what = "the credentials" if refused == "login" else "access to the virtual host"
        return AuthenticationFailed(f"broker at {safe_url} refused {what}")
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return _channel_closed(exc)
    text = str(exc)
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker | pika.exceptions.StreamLostError):
        return ConnectionLost(f"connection to {safe_url} lost: {text}")
    if isinstance(exc, AMQPConnectionWorkflowFailed | pika.exceptions.AMQPConnectionError):
        detail = text if cause is exc else str(cause)
        if isinstance(cause, _PROBABLE):  # the broker hung up at login without refusing it
            detail = f"the broker closed the connection during the login ({detail})"
        return BrokerUnreachable(f"cannot reach broker at {safe_url}: {detail or text}")
    return BrokerError(f"broker error at {safe_url}: {type(exc).__name__}: {text}")


#: What pika raises when the connection closes while it logs in or opens the virtual host.
_PROBABLE = (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError)


def _refused_login(exc: BaseException) -> str | None:
    """Which the broker refused, if `exc` says it did: "login", "vhost", or None.

    pika's `AuthenticationError` (no mechanism the broker accepts) is always a refusal; its
    "probable" errors are one only when the broker said so: a connection closed with
    ``CONNECTION_FORCED`` or a lost stream during the login is a broker going away.
    """
    if isinstance(exc, pika.exceptions.AuthenticationError):
        return "login"
    if isinstance(exc, _PROBABLE) and any(word in str(exc) for word in _REFUSALS):
        return "login" if isinstance(exc, pika.exceptions.ProbableAuthenticationError) else "vhost"
    return None


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


def refused_declare(
    name: str, exc: pika.exceptions.ChannelClosedByBroker, safe_url: str
) -> BrokerError:
    """A declare of queue `name` the broker refused for another reason than its arguments:
    not something a retry fixes (an exclusive queue of another connection, 405; a queue
    type or argument this broker does not know, 406 or 540), except a queue whose node is
    down (404), which comes back with its node."""
    if exc.reply_code == 403:
        return translate(exc, safe_url)
    if exc.reply_code == 404:
        # A classic durable queue (a producer's reply queue) whose node is down: it is back
        # with its node, so this is waited for like a broker that is away.
        return ConnectionLost(f"queue {name!r} is on a node that is down: {exc.reply_text}")
    return QueueMismatch(f"cannot use queue {name!r}: {exc.reply_code} {exc.reply_text}")


def _channel_closed(exc: pika.exceptions.ChannelClosedByBroker) -> BrokerError:
    if exc.reply_code == 406 and "inequivalent arg" in exc.reply_text:
        return QueueMismatch(
            f"queue exists with other arguments ({exc.reply_text}); "
            "delete it or choose another --queue"
        )
    if exc.reply_code == 403:
        return AuthenticationFailed(f"access refused: {exc.reply_text}")
    text = f"broker closed the channel: {exc.reply_code} {exc.reply_text}"
    if exc.reply_code == 406 and "acknowledgement" in exc.reply_text:
        text += (
            " (a delivery stayed unacked longer than the broker's consumer_timeout: "
            "lower --prefetch, or raise consumer_timeout)"
        )
    # Recoverable: the unacked deliveries go back to the queue, and a new link resumes.
    return ConnectionLost(text)
