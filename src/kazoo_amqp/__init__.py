"""kazoo-amqp: Kazoo-style AMQP (RabbitMQ) messaging for Kamailio and Python services.

Public API (importable with the standard library alone, e.g. in Kamailio's app_python3):

* ``Router`` -- declare event routes in a routes file;
* ``Client`` / ``AsyncClient`` -- talk to a running daemon over its local socket;
* the error classes of ``kazoo_amqp.errors``.
"""

from typing import TYPE_CHECKING

from kazoo_amqp.errors import (
    BadPath,
    BadPayload,
    BadRoutingKey,
    BrokerError,
    BrokerRefused,
    ConfigError,
    DatabaseError,
    KazooError,
    MissingField,
    NotConnected,
    OutcomeUnknown,
    PresenceError,
    ProtocolError,
    PublishFailed,
    QueryTimeout,
    SchemaError,
    ShuttingDown,
    UsageError,
)

if TYPE_CHECKING:
    from kazoo_amqp.ipc.aclient import AsyncClient
    from kazoo_amqp.ipc.client import Client
    from kazoo_amqp.workers.router import Router

__version__ = "0.1.0"

_LAZY = {
    "Client": "kazoo_amqp.ipc.client",
    "AsyncClient": "kazoo_amqp.ipc.aclient",
    "Router": "kazoo_amqp.workers.router",
}


def __getattr__(name: str) -> object:
    # Imported on first use so that ``import kazoo_amqp`` stays cheap: a Kamailio SIP worker
    # using ``Client`` never loads asyncio (about 10 MB per process).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kazoo_amqp' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncClient",
    "BadPath",
    "BadPayload",
    "BadRoutingKey",
    "BrokerError",
    "BrokerRefused",
    "Client",
    "ConfigError",
    "DatabaseError",
    "KazooError",
    "MissingField",
    "NotConnected",
    "OutcomeUnknown",
    "PresenceError",
    "ProtocolError",
    "PublishFailed",
    "QueryTimeout",
    "Router",
    "SchemaError",
    "ShuttingDown",
    "UsageError",
    "__version__",
]
