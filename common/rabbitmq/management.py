"""A client of RabbitMQ's management HTTP API: GET only, through urllib (no pika).

What AMQP cannot tell about a queue (messages delivered and not acked yet, rates, the node
each consumer's channel is on) the management plugin does, from statistics it emits every few
seconds. `consumer status` and the dashboard read it; whoever has no plugin gets
`ManagementUnavailable`, with why in a few words.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from common.settings import redact_url, split_urls

#: The management API's port when only the AMQP URL is known.
MANAGEMENT_PORT = 15672
#: Seconds one management request may take before the API counts as not answering.
MANAGEMENT_TIMEOUT = 3.0


class ManagementUnavailable(Exception):
    """The management API did not answer, or not as one: why, in a few words."""


def default_management_url(amqp_url: str) -> str:
    """The management API of the broker of `amqp_url` (its first node): same host, port
    15672, plain HTTP."""
    host = urlsplit(split_urls(amqp_url)[0]).hostname or "localhost"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"http://{host}:{MANAGEMENT_PORT}"


def check_management_url(url: str) -> str:
    """`url`, if it can be a management API's address (raises `ValueError` otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {redact_url(url)!r}")
    return url


class Management:
    """A client of the management API: GET only, through urllib. The credentials are the
    management URL's own if it has some, else the AMQP URL's."""

    def __init__(self, base_url: str, amqp_url: str, timeout: float = MANAGEMENT_TIMEOUT) -> None:
        parts = urlsplit(check_management_url(base_url))
        amqp = urlsplit(split_urls(amqp_url)[0])
        source = parts if parts.username else amqp
        user, password = unquote(source.username or "guest"), unquote(source.password or "guest")
        netloc = parts.netloc.rpartition("@")[2]
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        self.vhost = unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._timeout = timeout

    def get(self, path: str) -> Any:
        """The JSON at `path`; None for a 404; `ManagementUnavailable` for anything else
        that is not an answer."""
        request = urllib.request.Request(self.base + path, headers={"Authorization": self._auth})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code == 401:
                raise ManagementUnavailable("it refused the credentials (401)") from None
            raise ManagementUnavailable(f"it answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ManagementUnavailable(f"no answer ({reason})") from None
        except ValueError:  # not JSON: some other web server
            raise ManagementUnavailable("its answer is not JSON") from None

    def queues(self, names: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """Each queue's record (None for a queue that does not exist)."""
        vhost = quote(self.vhost, safe="")
        if self.get(f"/api/vhosts/{vhost}") is None:  # also tells a server that is not one
            raise ManagementUnavailable(f"it knows no virtual host {self.vhost!r}")
        return {name: self.get(f"/api/queues/{vhost}/{quote(name, safe='')}") for name in names}

    def queues_matching(self, pattern: str) -> dict[str, dict[str, Any]]:
        """The records of the queues whose name matches the regular expression `pattern`
        (at most 500), by name, in one request."""
        query = urlencode({"name": pattern, "use_regex": "true", "page": 1, "page_size": 500})
        found = self.get(f"/api/queues/{quote(self.vhost, safe='')}?{query}")
        if not isinstance(found, dict) or not isinstance(found.get("items"), list):
            raise ManagementUnavailable(f"it knows no virtual host {self.vhost!r}")
        items = [item for item in found["items"] if isinstance(item, dict) and "name" in item]
        return {item["name"]: item for item in items}
