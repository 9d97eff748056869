"""Settings shared by both programs: command-line flags override the environment.

Environment variables: ``AMQP_URL``, ``TASKSHUTTLE_QUEUE``, ``TASKSHUTTLE_PREFETCH``,
``TASKSHUTTLE_WORKERS``, ``TASKSHUTTLE_MAX_ATTEMPTS``, ``TASKSHUTTLE_TASK_TIMEOUT``,
``TASKSHUTTLE_RETRY_BASE_DELAY``, ``TASKSHUTTLE_RETRY_MAX_DELAY``,
``TASKSHUTTLE_BROKER_CONSUMER_TIMEOUT``.
Nothing is read at import time: `Settings()` reads the environment when it is built.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from common import defaults
from common.defaults import DEFAULT_AMQP_URL, LOG_FORMAT, BackendName
from common.errors import ConfigError

__all__ = [
    "DEFAULT_AMQP_URL",
    "LOG_FORMAT",
    "BackendName",
    "GivenSettings",
    "Settings",
    "check_amqp_url",
    "describe_error",
    "load_settings",
    "redact_url",
]


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
        defaults.QUEUE
    )
    prefetch: Annotated[int, Field(ge=1, le=65535)] = defaults.PREFETCH
    workers: Annotated[int, Field(ge=1, le=256)] = defaults.WORKERS
    #: Tries per task before it is dead-lettered (a task may carry its own).
    max_attempts: Annotated[int, Field(ge=1, le=100)] = defaults.MAX_ATTEMPTS
    #: Seconds a task may run before it is stopped; 0 means no limit.
    task_timeout: Annotated[float, Field(ge=0)] = defaults.TASK_TIMEOUT
    #: The broker's `consumer_timeout` in seconds (RabbitMQ's default: 30 minutes). A
    #: delivery left unacked longer closes its channel, so a longer task timeout is useless.
    broker_consumer_timeout: Annotated[float, Field(gt=0)] = defaults.BROKER_CONSUMER_TIMEOUT
    #: First retry delay in seconds; doubles per attempt, with jitter, capped at retry_max_delay.
    retry_base_delay: Annotated[float, Field(ge=0)] = defaults.RETRY_BASE_DELAY
    retry_max_delay: Annotated[float, Field(ge=0)] = defaults.RETRY_MAX_DELAY

    @field_validator("amqp_url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_amqp_url(url)

    @property
    def safe_url(self) -> str:
        return redact_url(self.amqp_url)


class GivenSettings(Settings):
    """`Settings` from the values given and the defaults, reading no environment: for the
    command line, where click has already read each variable (so a flag wins over the
    environment, which wins over the default, by one rule)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


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
        raise ConfigError(f"invalid {name}: {describe_error(first)}") from None


#: pydantic's bounds, as the one wording both the library and the command line use.
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "greater_than": ("gt", "must be more than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
    "string_too_short": ("min_length", "must be at least {} characters long"),
    "string_too_long": ("max_length", "must be at most {} characters long"),
    "string_pattern_mismatch": ("pattern", "must match {}"),
}


def describe_error(error: ErrorDetails) -> str:
    """One short phrase for a pydantic validation error, without the field's name."""
    bound = _BOUNDS.get(error["type"])
    context: dict[str, Any] = dict(error.get("ctx") or {})
    if bound is not None and bound[0] in context:
        limit = context[bound[0]]
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # "at least 0", not "at least 0.0"
        return bound[1].format(limit)
    return error["msg"].removeprefix("Value error, ")
