"""The project's error hierarchy.

Every failure a user can cause or meet has its own class, so a caller (and the CLI, which
turns each into one line on stderr) can tell a broker that is down from a wrong password.
Backends translate their library's exceptions into these at the one place they happen.
"""

from __future__ import annotations


class TaskshuttleError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(TaskshuttleError):
    """A setting or command-line value is invalid (bad URL, bad payload, unknown kind...)."""

    exit_code = 2


class BadMessage(TaskshuttleError):
    """A message body is not a valid task or result: not JSON, wrong schema, too large.

    `reason` is a short machine-readable word (``not-json``, ``schema``, ``too-large``,
    ``unknown-kind``) recorded with the message when it is dead-lettered.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(TaskshuttleError):
    """Something went wrong talking to the broker."""


class BrokerUnreachable(BrokerError):
    """No broker answered at the address (refused, timed out, name not resolved)."""


class AuthenticationFailed(BrokerError):
    """The broker answered but refused the credentials or the virtual host."""


class QueueMismatch(BrokerError):
    """The queue already exists with other arguments (e.g. declared as a quorum queue)."""


class ConnectionLost(BrokerError):
    """An established connection dropped (broker restart, network cut)."""


class PublishFailed(BrokerError):
    """The broker nacked or returned a message, so it does not count as sent."""
