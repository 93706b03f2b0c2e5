"""The one exception hierarchy of kazoo-amqp, grouped by who has to act.

Every message names the thing that is wrong and, where there is one, the fix.
This module imports nothing of ours, so every layer (and the stdlib-only
``Client`` inside Kamailio's app_python3) can import it.

    KazooError
    ├── ConfigError            the operator: a bad config key or value
    ├── UsageError             the caller: bad arguments to an API call
    │   ├── BadPayload         not JSON, not an object, invalid UTF-8, too big
    │   ├── BadRoutingKey      over 255 bytes, malformed consumer:// prefix
    │   └── BadPath            a JSON path that cannot be parsed (strict callers only)
    ├── BrokerError            RabbitMQ or the way to it
    │   ├── NotConnected       no broker reachable and the publish buffer cannot take it
    │   │   ├── BufferFull         the bounded publish buffer is full (publish refused)
    │   │   ├── FrameError         the peer broke AMQP framing; the connection was closed
    │   │   ├── HeartbeatTimeout   nothing from the broker for 2 heartbeat intervals
    │   │   └── ChannelClosedRetry the channel closed for another publish: send this again
    │   ├── PublishFailed      nacked, returned (mandatory), buffer deadline passed
    │   │   ├── PublishNacked      the broker answered basic.nack (e.g. x-overflow reject-publish)
    │   │   └── PublishExpired     accepted, not confirmed before publish_buffer_timeout_ms
    │   │                          (also a NotConnected: what callers caught before it existed)
    │   └── BrokerRefused      the broker closed a channel or connection (reply code)
    ├── QueryTimeout           no correlated reply within the timeout
    ├── OutcomeUnknown         the daemon did not answer in time: the call may have been carried out
    ├── ProtocolError          a malformed frame on the local socket or a worker pipe
    ├── ShuttingDown           the daemon is stopping; the call was not carried out
    └── PresenceError          writing presentity state
        ├── MissingField       a required payload field is absent or empty
        ├── SchemaError        the presentity table is missing or has the wrong version
        └── DatabaseError      the database refused the write
"""

from __future__ import annotations

from typing import Any


class KazooError(Exception):
    """Base of every error raised on purpose by kazoo-amqp."""


class ConfigError(KazooError):
    """A configuration key or value is wrong; the message names the key, the value and the fix."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UsageError(KazooError):
    """An API or CLI call got arguments it cannot use."""


class BadPayload(UsageError):
    """A message body is not a JSON object (not JSON, not an object, invalid UTF-8, too big)."""


class BadRoutingKey(UsageError):
    """A routing key is over 255 bytes or its ``consumer://<id>/`` prefix is malformed."""


class BadPath(UsageError):
    """A JSON path cannot be parsed (raised only by strict callers; lookups return absent)."""


class BrokerError(KazooError):
    """Something went wrong between us and RabbitMQ."""


class NotConnected(BrokerError):
    """No broker is reachable and the message could not be buffered (buffer full or disabled)."""


class PublishFailed(BrokerError):
    """The broker did not confirm a publish: nack, return of a mandatory message, or deadline."""


class BufferFull(NotConnected):
    """The publish buffer already holds ``publish_buffer_size`` messages; this one was refused.

    Raised synchronously, so the caller still owns the message and may try again later.
    """


class PublishExpired(PublishFailed, NotConnected):
    """An accepted publish was not confirmed by any broker within ``publish_buffer_timeout_ms``.

    It may still have reached the broker (a confirm lost with its connection): at-least-once.
    Also a :class:`NotConnected`, the error this case raised before the class existed.
    """


class BrokerRefused(BrokerError):
    """The broker closed a channel or the connection with an AMQP reply code.

    ``exchange`` is set when the refusal names the exchange of a publish (404 no exchange).
    """

    def __init__(self, message: str, *, reply_code: int = 0, exchange: str = "") -> None:
        super().__init__(message)
        self.reply_code = reply_code
        self.exchange = exchange


class FrameError(NotConnected):
    """The broker (or whatever answers on its port) sent bytes that are not AMQP 0-9-1 framing.

    The connection is closed; like any lost connection the work on it can go to another one.
    """


class HeartbeatTimeout(NotConnected):
    """Nothing arrived from the broker for two heartbeat intervals: the connection was aborted."""


class ChannelClosedRetry(NotConnected):
    """The broker closed the channel because of *another* publish (or an RPC) on it.

    This publish was not refused: it may or may not have reached the broker, so the publisher
    sends it again on a new channel (at-least-once).
    """


class PublishNacked(PublishFailed):
    """The broker answered a publish with ``basic.nack`` (for example a queue with
    ``x-overflow: reject-publish`` at its ``x-max-length``): it did not take the message."""


class QueryTimeout(KazooError):
    """No reply carrying the query's Msg-ID arrived before its timeout."""

    def __init__(self, message: str, *, msg_id: str = "", timeout_ms: float = 0.0) -> None:
        super().__init__(message)
        self.msg_id = msg_id
        self.timeout_ms = timeout_ms


class OutcomeUnknown(KazooError):
    """The daemon took the request but gave no answer within the client's wait.

    The request may still be carried out (a confirmed publish may yet reach the broker): do
    not treat it as failed, and do not blindly send it again unless duplicates are harmless.
    Not a :class:`NotConnected`: the daemon was reached.
    """


class ProtocolError(KazooError):
    """A frame on the local API socket or a worker pipe is malformed."""


class ShuttingDown(KazooError):
    """The daemon is stopping; the request was not carried out."""


class PresenceError(KazooError):
    """Writing presence state failed."""


class MissingField(PresenceError):
    """A field the presence package needs is absent or empty in the payload."""

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class SchemaError(PresenceError):
    """The presentity table is missing or is not Kamailio's schema version the writer supports."""


class DatabaseError(PresenceError):
    """The database refused a presentity write."""


#: Name -> class, used to carry typed errors across the local socket.
ERRORS_BY_NAME: dict[str, type[KazooError]] = {
    cls.__name__: cls
    for cls in (
        KazooError,
        ConfigError,
        UsageError,
        BadPayload,
        BadRoutingKey,
        BadPath,
        BrokerError,
        NotConnected,
        PublishFailed,
        BrokerRefused,
        BufferFull,
        PublishExpired,
        FrameError,
        HeartbeatTimeout,
        ChannelClosedRetry,
        PublishNacked,
        QueryTimeout,
        OutcomeUnknown,
        ProtocolError,
        ShuttingDown,
        PresenceError,
        MissingField,
        SchemaError,
        DatabaseError,
    )
}


#: Extra attributes some errors carry; they travel with the error over the local socket.
ERROR_ATTRS = ("key", "field", "reply_code", "exchange", "msg_id", "timeout_ms")


def error_attrs(exc: BaseException) -> dict[str, Any]:
    """The extra attributes of ``exc`` worth sending along (those that are set)."""
    return {
        name: value
        for name in ERROR_ATTRS
        if (value := getattr(exc, name, None)) not in (None, "", 0, 0.0)
        and isinstance(value, (str, int, float))
    }


def error_from_name(name: str, message: str, attrs: dict[str, Any] | None = None) -> KazooError:
    """Rebuild an error sent over the local socket; unknown names become ``KazooError``."""
    cls = ERRORS_BY_NAME.get(name, KazooError)
    try:
        exc = cls(message)
    except TypeError:  # pragma: no cover - every class above accepts one positional message
        exc = KazooError(message)
    for attr, value in (attrs or {}).items():
        if attr in ERROR_ATTRS and hasattr(exc, attr):
            setattr(exc, attr, value)
    return exc
