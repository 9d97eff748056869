"""Settings shared by both programs: values given explicitly override the environment.

Each setting is declared once, in `common.defaults.SettingFields` (type, bounds, default,
variable, flag, help); `Settings` validates those fields. `load_settings()` reads the
environment (``AMQP_URL``, ``TASKSHUTTLE_QUEUE``, ``TASKSHUTTLE_WORKERS``...) when it is
called, never at import time; `Settings(...)` is exactly the values given plus the defaults.
The command line reads the same variables through click and builds `Settings(...)` from what
it read (`common.cli.settings`).

`Settings` is a plain pydantic model: a worker process unpickles one, and should not have to
import an environment-reading library (pydantic-settings) to do so.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import ErrorDetails

from common.defaults import (
    DEFAULT_AMQP_URL,
    ENVIRONMENT,
    LOG_FORMAT,
    BackendName,
    QueueType,
    SettingFields,
)
from common.errors import ConfigError

__all__ = [
    "DEFAULT_AMQP_URL",
    "ENVIRONMENT",
    "LOG_FORMAT",
    "BackendName",
    "QueueType",
    "Settings",
    "check_amqp_url",
    "describe_error",
    "load_settings",
    "redact_url",
    "split_urls",
]


#: Characters that end the user-and-password part of a URL when left unencoded: a password
#: holding one cannot be told apart from the host, path, query or fragment.
_UNSAFE_IN_USERINFO = "/?#"


def split_urls(urls: str) -> list[str]:
    """The broker URLs of a comma-separated list (one cluster's nodes), blanks dropped. A
    comma inside a URL's password or query must be written ``%2C``."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def redact_url(url: str) -> str:
    """The URL (or each of a comma-separated list) with its password replaced by ``***``,
    for logs and error messages.

    The credentials are everything between ``//`` and the last ``@``. When they hold an
    unencoded ``/``, ``?`` or ``#``, which part is the user cannot be known safely, so all
    of them become ``***``: a password is never printed, whole or in part.
    """
    if "," in url:
        urls = split_urls(url)
        if not all("://" in one for one in urls):
            return "***"  # a comma inside the credentials: no part of it is safe to print
        return ",".join(redact_url(one) for one in urls)
    scheme, slashes, rest = url.partition("//")
    credentials, at, host = rest.rpartition("@")
    if not slashes or not at:
        return url  # no credentials at all
    if any(c in credentials for c in _UNSAFE_IN_USERINFO):
        return f"{scheme}//***@{host}"
    user, colon, _password = credentials.partition(":")
    return f"{scheme}//{user}:***@{host}" if colon else url


def check_amqp_url(url: str) -> str:
    """Reject what pika would choke on later with a cryptic error (or a traceback): the
    URL (each URL of a comma-separated list) is parsed here by pika's own `URLParameters`,
    query values included."""
    urls = split_urls(url)
    if not urls:
        raise ValueError("no AMQP URL given")
    if len(urls) > 1:
        if not all("://" in one for one in urls):
            raise ValueError(
                "malformed AMQP URL list: each comma-separated item must be a whole URL "
                "(a comma in a password is written %2C)"
            )
        for one in urls:
            check_amqp_url(one)
        return ",".join(urls)
    url = urls[0]
    safe = redact_url(url)
    credentials = url.partition("//")[2].rpartition("@")[0]
    if any(c in credentials for c in _UNSAFE_IN_USERINFO):
        raise ValueError(
            f"malformed AMQP URL {safe!r}: the user or password holds an unencoded "
            "'/', '?' or '#' (write them %2F, %3F, %23)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed AMQP URL {safe!r}: {_scrub(str(exc), url)}") from None
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(
            f"malformed AMQP URL {redact_url(url)!r}: scheme must be amqp:// or amqps://"
        )
    if not parts.hostname:
        raise ValueError(f"malformed AMQP URL {redact_url(url)!r}: no host")
    if port == 0:
        raise ValueError(f"malformed AMQP URL {redact_url(url)!r}: port 0")
    import pika  # only a broker URL needs it

    try:
        pika.URLParameters(url)
    except Exception as exc:  # ValueError mostly; a bad ssl_options is a SyntaxError
        raise ValueError(f"malformed AMQP URL {safe!r}: {_scrub(str(exc), url)}") from None
    return url


def _scrub(text: str, url: str) -> str:
    """`text` without the URL's password, raw or decoded, wherever an error quotes it as a
    whole (not inside a longer word: a password ``g`` leaves "string" alone)."""
    password = urlsplit(url).password or ""
    for secret in {password, unquote(password)} - {""}:
        text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
    return text


class Settings(SettingFields, BaseModel):
    """The settings of `SettingFields`, validated: a field's default is
    ``Settings.model_fields[name].default``."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("amqp_url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_amqp_url(url)

    @property
    def safe_url(self) -> str:
        return redact_url(self.amqp_url)

    def __repr_args__(self) -> Any:
        # The URL may hold a password: a repr (a log line, a traceback) never shows it.
        return [(name, value) for name, value in super().__repr_args__() if name != "amqp_url"]


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus the given (non-None) overrides, which win.

    Raises `ConfigError` with one readable line instead of pydantic's multi-line report,
    naming the variable when the bad value came from the environment.
    """
    found = {field: os.environ[name] for field, name in ENVIRONMENT.items() if os.environ.get(name)}
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**(found | given))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        name = ENVIRONMENT.get(field, field) if field not in given else field
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
