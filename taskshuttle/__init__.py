"""taskshuttle's public API, in one import. The code lives in `common`, `producer` and
`consumer`; this package only names what an application uses.

    from taskshuttle import Client, registry, TaskContext

    @registry.task("add")
    def add(payload: dict, context: TaskContext) -> int:
        return payload["x"] + payload["y"]

    with Client.local(workers=2) as client:
        print(client.send("add", {"x": 2, "y": 2}).result(timeout=10))
"""

from common.backend import MAX_DELAY
from common.errors import (
    AuthenticationFailed,
    BrokerError,
    BrokerUnreachable,
    ConfigError,
    PublishFailed,
    TaskshuttleError,
)
from common.schemas import TaskEnvelope, TaskResult
from common.settings import Settings, load_settings
from consumer.handlers import PayloadError, TaskContext, registry
from producer.client import (
    Client,
    ClientClosed,
    SendRequest,
    TaskExpired,
    TaskFailed,
    TaskHandle,
    TaskRevoked,
    TaskState,
)

__all__ = [
    "MAX_DELAY",
    "AuthenticationFailed",
    "BrokerError",
    "BrokerUnreachable",
    "Client",
    "ClientClosed",
    "ConfigError",
    "PayloadError",
    "PublishFailed",
    "SendRequest",
    "Settings",
    "TaskContext",
    "TaskEnvelope",
    "TaskExpired",
    "TaskFailed",
    "TaskHandle",
    "TaskResult",
    "TaskRevoked",
    "TaskState",
    "TaskshuttleError",
    "load_settings",
    "registry",
]
