"""The request side of the local socket protocol, without I/O (shared by both clients).

:class:`~kazoo_amqp.ipc.client.Client` (blocking) and
:class:`~kazoo_amqp.ipc.aclient.AsyncClient` are thin I/O shells around this module:

* a *call builder* per operation (:func:`publish`, :func:`publish_batch`, :func:`query`,
  :func:`pua_publish`, :func:`status`, :func:`ping`) checks the caller's arguments, raising
  :class:`~kazoo_amqp.errors.UsageError` / :class:`~kazoo_amqp.errors.BadPayload` before
  anything is sent, and returns a :class:`Call`: the op, the request fields, how long the client
  waits for the answer, and how to turn the daemon's result into the return value;
* :class:`Stream` numbers and encodes requests and turns received bytes into
  :class:`~kazoo_amqp.core.wire.Response` objects (raising
  :class:`~kazoo_amqp.errors.ProtocolError` when the daemon's bytes are not the protocol);
* :meth:`Call.outcome` turns the response into the value or raises its typed error;
* the error builders (:func:`connect_error`, :func:`lost`, :func:`no_answer`) word the
  failures of the transport the same way for both clients.

Standard library only, no asyncio: it is imported by ``Client`` inside Kamailio's app_python3.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from kazoo_amqp.core.framing import DEFAULT_MAX_FRAME, FrameDecoder
from kazoo_amqp.core.wire import (
    MAX_TIMEOUT_MS,
    PUA_PACKAGES,
    RESUME_FIELDS,
    Response,
    batch_results,
    decode_response,
    encode_publish,
    encode_request,
)
from kazoo_amqp.errors import (
    BadPayload,
    KazooError,
    NotConnected,
    OutcomeUnknown,
    ProtocolError,
    QueryTimeout,
    UsageError,
)

__all__ = [
    "CONFIRM_WAIT",
    "DEFAULT_QUERY_WAIT",
    "QUERY_WAIT_MARGIN",
    "Call",
    "Payload",
    "Stream",
    "async_query",
    "connect_error",
    "lost",
    "no_answer",
    "ping",
    "pua_publish",
    "publish",
    "publish_batch",
    "query",
    "status",
]

T = TypeVar("T")

#: What ``payload`` may be: a dict (sent as a JSON object inside the request) or JSON text.
Payload = dict[str, Any] | str | bytes | bytearray

#: Seconds added to a query's ``timeout_ms`` before the client gives up on the daemon.
QUERY_WAIT_MARGIN = 2.0
#: Seconds the client waits for a query reply when ``timeout_ms`` is None or 0 (the daemon
#: applies its own default then, 2 s unless configured).
DEFAULT_QUERY_WAIT = 10.0

#: Seconds the client waits for the answer to a publish with ``confirm=True``: longer than the
#: daemon's default deadline for it (``publish_buffer_timeout_ms`` 10 s, then
#: ``publish_confirm_timeout_ms`` 5 s), so a publish held through a broker outage or a memory
#: alarm gets the daemon's verdict, not a client-side guess. A daemon configured with longer
#: deadlines may be outlasted; the client then raises ``OutcomeUnknown`` (never NotConnected).
CONFIRM_WAIT = 20.0

_ID_MASK = 0x7FFFFFFF


def _reply_parser() -> Callable[[str], Any]:
    try:
        from kazoo_amqp.core import jsonc
    except ImportError:  # pragma: no cover - jsonc ships with the package
        return json.loads
    loads: Callable[[str], Any] = getattr(jsonc, "loads", json.loads)
    return loads


_parse_reply = _reply_parser()


class Call(Generic[T]):
    """One request to make: ``op`` and ``fields``, the client-side ``wait`` (seconds, or None
    for the client's default timeout) and ``finish`` (daemon result -> return value)."""

    __slots__ = ("fields", "finish", "op", "wait")

    def __init__(
        self,
        op: str,
        fields: dict[str, Any],
        finish: Callable[[Any], T],
        wait: float | None = None,
    ) -> None:
        self.op = op
        self.fields = fields
        self.finish = finish
        self.wait = wait

    def wait_with(self, default: float) -> float:
        """Seconds to wait for the answer with a client whose ``timeout`` is ``default``: a
        query's own wait; for a confirmed publish the longer of the two (it must outlast the
        daemon's buffer deadline); else ``default``."""
        wait = self.wait
        if wait is None:
            return default
        if self.op == "query":
            return wait
        return max(wait, default)

    def outcome(self, response: Response) -> T:
        """The return value for ``response``, or raise the typed error it carries."""
        if response.ok:
            return self.finish(response.result)
        raise response.error()


class Stream:
    """The client end of one connection: request ids, framing, response decoding."""

    __slots__ = ("_decoder", "_next_id")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._decoder = FrameDecoder(max_frame)
        self._next_id = 0

    def reset(self) -> None:
        """Forget partial input (a new connection); ids keep counting."""
        self._decoder = FrameDecoder(self._decoder.max_frame)

    def encode(self, call: Call[Any]) -> tuple[int, bytes]:
        """A fresh request id and the framed request for ``call``.

        Raises:
            BadPayload: a payload dict is not JSON-serialisable or holds a lone surrogate.
        """
        self._next_id = request_id = (self._next_id + 1) & _ID_MASK
        fields = call.fields
        if call.op == "publish" and len(fields) == 3 and type(fields["payload"]) is str:
            # The common publish (text payload, no option): formatted without a dict walk.
            return request_id, encode_publish(
                request_id, fields["exchange"], fields["routing_key"], fields["payload"]
            )
        try:
            return request_id, encode_request(request_id, call.op, **fields)
        except (TypeError, ValueError) as exc:
            raise BadPayload(f"payload cannot be serialised to JSON: {exc}") from None
        except RecursionError:
            raise BadPayload("payload nests objects too deeply to serialise to JSON") from None

    def feed(self, data: bytes) -> list[Response]:
        """The responses completed by ``data``, oldest first.

        Raises:
            ProtocolError: the bytes are not the socket protocol (the connection is unusable).
        """
        return [decode_response(frame) for frame in self._decoder.feed(data)]


# --------------------------------------------------------------------------------------
# argument checks


def _payload(payload: object) -> str | dict[str, Any]:
    """Text goes unparsed; a dict travels as a JSON object inside the request (the daemon then
    parses it once, with the request)."""
    if type(payload) is str or type(payload) is dict:
        return payload
    if isinstance(payload, str):
        return str(payload)
    if isinstance(payload, dict):
        return dict(payload)
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            return bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadPayload(
                f"payload is not valid UTF-8 at byte {exc.start} ({exc.reason}); "
                "pass a dict, a str, or UTF-8 encoded JSON bytes"
            ) from None
    raise BadPayload(
        f"payload must be a dict or JSON text (str or UTF-8 bytes), not {type(payload).__name__}"
    )


def _text(name: str, value: object) -> str:
    if type(value) is str:
        return value
    raise UsageError(f"{name} must be a str, not {type(value).__name__}")


def _flag(name: str, value: object) -> bool:
    if type(value) is bool:
        return value
    raise UsageError(f"{name} must be True or False, not {value!r}")


def _publish_fields(
    exchange: object,
    routing_key: object,
    payload: object,
    headers: object,
    mandatory: object,
    confirm: object,
    persistent: object,
) -> dict[str, Any]:
    """The fields of one publish; optional ones only when set, so requests stay small."""
    fields: dict[str, Any] = {
        "exchange": _text("exchange", exchange),
        "routing_key": _text("routing_key", routing_key),
        "payload": _payload(payload),
    }
    if headers is not None:
        fields["headers"] = _text("headers", headers)
    if mandatory is not False and _flag("mandatory", mandatory):
        fields["mandatory"] = True
    if confirm is not False and _flag("confirm", confirm):
        fields["confirm"] = True
    if persistent is not None:
        fields["persistent"] = _flag("persistent", persistent)
    return fields


# --------------------------------------------------------------------------------------
# results


def _dict_result(op: str) -> Callable[[Any], dict[str, Any]]:
    def finish(result: Any) -> dict[str, Any]:
        if type(result) is not dict:
            raise ProtocolError(
                f"the daemon answered {op} with {type(result).__name__}, not an object"
            )
        return result

    return finish


_publish_result = _dict_result("publish")
_pua_result = _dict_result("pua_publish")
_status_result = _dict_result("status")
_async_result = _dict_result("async_query")


def _text_result(result: Any) -> str:
    if type(result) is not str:
        raise ProtocolError(f"the daemon answered a query with {type(result).__name__}, not text")
    return result


def _batch_result(result: Any) -> list[dict[str, Any] | KazooError]:
    if type(result) is not list:
        raise ProtocolError(f"publish_batch: the daemon answered {result!r:.80}, not a list")
    return batch_results(result)


def _query_result(result: Any) -> dict[str, Any]:
    if type(result) is not str:
        raise ProtocolError(f"the daemon answered a query with {type(result).__name__}, not text")
    try:
        reply = _parse_reply(result)
    except ValueError as exc:
        raise BadPayload(f"the query reply is not JSON: {exc}") from None
    if type(reply) is not dict:
        raise BadPayload(f"the query reply is JSON {type(reply).__name__}, not an object")
    return reply


def _ping_result(result: Any) -> bool:
    return result is True


# --------------------------------------------------------------------------------------
# call builders (one per op; both clients' methods are one line around them)


def publish(
    exchange: str,
    routing_key: str,
    payload: Payload,
    headers: str | None = None,
    *,
    mandatory: bool = False,
    confirm: bool = False,
    persistent: bool | None = None,
) -> Call[dict[str, Any]]:
    """A publish. The daemon answers ``{"msg_id"}`` once it accepted the message; with
    ``confirm`` it answers ``{"msg_id", "server_id"}`` after the broker's confirm, or the error.
    ``persistent``: delivery mode 2 (True) or 1 (False); None takes the daemon's default."""
    fields = _publish_fields(
        exchange, routing_key, payload, headers, mandatory, confirm, persistent
    )
    return Call("publish", fields, _publish_result, CONFIRM_WAIT if confirm else None)


def publish_batch(
    messages: Iterable[Any], *, confirm: bool = False
) -> Call[list[dict[str, Any] | KazooError]]:
    """Many publishes in one request. ``messages``: dicts with ``exchange``, ``routing_key``,
    ``payload`` and optional ``headers``, ``mandatory``, ``confirm``, ``persistent``, or tuples
    ``(exchange, routing_key, payload[, headers])``. ``confirm`` is the default of messages that
    do not say. The result lists each message's result dict or error, in order."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, dict):
            item = _publish_fields(
                m.get("exchange"),
                m.get("routing_key"),
                m.get("payload"),
                m.get("headers"),
                m.get("mandatory", False),
                m.get("confirm", False),
                m.get("persistent"),
            )
            if "confirm" in m and item.get("confirm") is None:
                item["confirm"] = False  # says no even when the batch default says yes
        elif isinstance(m, tuple | list) and len(m) in (3, 4):
            item = _publish_fields(
                m[0], m[1], m[2], m[3] if len(m) == 4 else None, False, False, None
            )
        else:
            raise UsageError(
                "publish_batch messages are dicts {exchange, routing_key, payload[, headers]} "
                f"or tuples (exchange, routing_key, payload[, headers]), not {m!r:.80}"
            )
        items.append(item)
    if not items:
        raise UsageError("publish_batch needs at least one message")
    fields: dict[str, Any] = {"messages": items}
    if _flag("confirm", confirm):
        fields["confirm"] = True
    confirmed = bool(fields.get("confirm")) or any(item.get("confirm") for item in items)
    return Call("publish_batch", fields, _batch_result, CONFIRM_WAIT if confirmed else None)


def query(
    exchange: str,
    routing_key: str,
    payload: Payload,
    timeout_ms: int | None = None,
    headers: str | None = None,
    *,
    mandatory: bool = False,
    raw: bool = False,
) -> Call[Any]:
    """A query: the parsed reply (``timeout_ms`` None or 0: the daemon's default); with
    ``raw``, the reply's JSON text as the daemon sent it."""
    wait = _query_wait(timeout_ms)
    fields = _publish_fields(exchange, routing_key, payload, headers, mandatory, False, None)
    fields["timeout_ms"] = timeout_ms
    return Call("query", fields, _text_result if raw else _query_result, wait)


def async_query(
    exchange: str,
    routing_key: str,
    payload: Payload,
    resume: dict[str, Any],
    timeout_ms: int | None = None,
    headers: str | None = None,
) -> Call[dict[str, Any]]:
    """A query whose answer goes elsewhere (the Kamailio bridge: ``resume`` names the suspended
    transaction and its reply/timeout routes, see ``core.wire.RESUME_FIELDS``). The daemon
    answers ``{"accepted": true}`` once it published the query."""
    _query_wait(timeout_ms)
    if type(resume) is not dict or any(
        type(resume.get(name)) is not kind for name, kind in RESUME_FIELDS
    ):
        raise UsageError(
            "resume must be a dict with int tindex and tlabel and str reply_route and "
            f"timeout_route, not {resume!r:.120}"
        )
    fields = _publish_fields(exchange, routing_key, payload, headers, False, False, None)
    fields["timeout_ms"] = timeout_ms
    fields["resume"] = resume
    return Call("async_query", fields, _async_result)


def _query_wait(timeout_ms: object) -> float:
    """How long the client waits for a query's reply (checks ``timeout_ms``)."""
    if timeout_ms is None or timeout_ms == 0:
        wait = DEFAULT_QUERY_WAIT
    elif type(timeout_ms) is not int or not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        raise UsageError(
            f"timeout_ms must be None or an int from 0 to {MAX_TIMEOUT_MS} (MAX_TIMEOUT_MS, "
            f"10 minutes), not {timeout_ms!r}"
        )
    else:
        wait = timeout_ms / 1000.0 + QUERY_WAIT_MARGIN
    return wait


def pua_publish(payload: Payload, package: str | None = None) -> Call[dict[str, Any]]:
    """A presentity update (``package``: None, "presence", "dialog" or "message-summary")."""
    if not (package is None or (type(package) is str and package in PUA_PACKAGES)):
        raise UsageError(
            f"package must be None, 'presence', 'dialog' or 'message-summary', not {package!r}"
        )
    return Call("pua_publish", {"payload": _payload(payload), "package": package}, _pua_result)


def status() -> Call[dict[str, Any]]:
    """The daemon's status snapshot."""
    return Call("status", {}, _status_result)


def ping() -> Call[bool]:
    """True when the daemon answers."""
    return Call("ping", {}, _ping_result)


# --------------------------------------------------------------------------------------
# transport failures, worded once


def not_listening(path: str) -> NotConnected:
    return NotConnected(
        f"kazoo-amqp daemon is not listening on {path}: start it with "
        "`kazoo-amqp run --config FILE`"
    )


def connect_error(path: str, exc: OSError) -> NotConnected:
    """Why connecting to ``path`` failed, and what to do."""
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return not_listening(path)
    if isinstance(exc, PermissionError):
        return NotConnected(
            f"no permission to connect to the kazoo-amqp daemon on {path}: the socket is mode "
            "0660, so run as the daemon's user or add this user to its group"
        )
    if isinstance(exc, TimeoutError):
        return NotConnected(f"the kazoo-amqp daemon on {path} did not accept a connection in time")
    return NotConnected(f"cannot connect to the kazoo-amqp daemon on {path}: {exc}")


def lost(path: str, op: str) -> NotConnected:
    """The connection closed after the request was sent."""
    return NotConnected(
        f"the connection to the kazoo-amqp daemon on {path} closed before it answered the {op}; "
        "it may or may not have been carried out"
    )


def no_answer(path: str, op: str, wait: float) -> KazooError:
    """No answer within ``wait`` seconds: QueryTimeout for a query, else OutcomeUnknown (the
    daemon was reached and may still carry the request out: not NotConnected)."""
    if op == "query":
        return QueryTimeout(
            f"the kazoo-amqp daemon on {path} gave no answer to the query within {wait:g} s",
            timeout_ms=wait * 1000.0,
        )
    return OutcomeUnknown(
        f"timed out, may have been carried out: the kazoo-amqp daemon on {path} did not answer "
        f"the {op} within {wait:g} s (for a publish with confirm=True the daemon may still "
        "deliver it; raise the client's timeout= above the daemon's publish_buffer_timeout_ms + "
        "publish_confirm_timeout_ms)"
    )
