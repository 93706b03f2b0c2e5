"""kazoo-amqp: Kazoo-style AMQP (RabbitMQ) messaging for Kamailio and Python services.

Public API (importable with the standard library alone, e.g. in Kamailio's app_python3):

* ``Router`` -- declare event routes in a routes file;
* ``Client`` / ``AsyncClient`` -- talk to a running daemon over its local socket;
* the error classes of ``kazoo_amqp.errors``.
"""

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
    PresenceError,
    ProtocolError,
    PublishFailed,
    QueryTimeout,
    SchemaError,
    ShuttingDown,
    UsageError,
)
from kazoo_amqp.ipc.client import AsyncClient, Client
from kazoo_amqp.workers.router import Router

__version__ = "0.1.0"

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
