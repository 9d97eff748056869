"""Settings shared by both programs: command-line flags override the environment.

Environment variables: ``AMQP_URL``, ``TASKSHUTTLE_QUEUE``, ``TASKSHUTTLE_PREFETCH``,
``TASKSHUTTLE_WORKERS``, ``TASKSHUTTLE_MAX_ATTEMPTS``, ``TASKSHUTTLE_TASK_TIMEOUT``,
``TASKSHUTTLE_RETRY_BASE_DELAY``, ``TASKSHUTTLE_RETRY_MAX_DELAY``,
``TASKSHUTTLE_BROKER_CONSUMER_TIMEOUT``.
Nothing is read at import time: `Settings()` reads the environment when it is built.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.errors import ConfigError


class BackendName(StrEnum):
    """Where the tasks travel: inside one process tree, or through RabbitMQ."""

    local = "local"
    rabbitmq = "rabbitmq"


DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(message)s"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_amqp_url(url: str) -> str:
    """Reject what pika would choke on later with a cryptic error."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed AMQP URL {redact_url(url)!r}: {exc}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(
            f"malformed AMQP URL {redact_url(url)!r}: scheme must be amqp:// or amqps://"
        )
    if not parts.hostname:
        raise ValueError(f"malformed AMQP URL {redact_url(url)!r}: no host")
    if port == 0:
        raise ValueError(f"malformed AMQP URL {redact_url(url)!r}: port 0")
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKSHUTTLE_", extra="ignore")

    amqp_url: str = Field(
        default=DEFAULT_AMQP_URL,
        validation_alias=AliasChoices("amqp_url", "AMQP_URL", "TASKSHUTTLE_AMQP_URL"),
        repr=False,
    )
    queue: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")] = (
        "tasks"
    )
    prefetch: Annotated[int, Field(ge=1, le=65535)] = 100
    workers: Annotated[int, Field(ge=1, le=256)] = 2
    #: Tries per task before it is dead-lettered (a task may carry its own).
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    #: Seconds a task may run before it is stopped; 0 means no limit.
    task_timeout: Annotated[float, Field(ge=0)] = 0
    #: The broker's `consumer_timeout` in seconds (RabbitMQ's default: 30 minutes). A
    #: delivery left unacked longer closes its channel, so a longer task timeout is useless.
    broker_consumer_timeout: Annotated[float, Field(gt=0)] = 1800
    #: First retry delay in seconds; doubles per attempt, with jitter, capped at retry_max_delay.
    retry_base_delay: Annotated[float, Field(ge=0)] = 1.0
    retry_max_delay: Annotated[float, Field(ge=0)] = 300.0

    @field_validator("amqp_url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_amqp_url(url)

    @property
    def safe_url(self) -> str:
        return redact_url(self.amqp_url)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus the given (non-None) overrides.

    Raises `ConfigError` with one readable line instead of pydantic's multi-line report.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid {name}: {message}") from None
