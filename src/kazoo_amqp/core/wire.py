"""The request/response schema of the local socket (and nothing about sockets).

Every message is one frame (:mod:`kazoo_amqp.core.framing`) holding one compact UTF-8 JSON
object.

Requests: ``{"id": <int>, "op": <str>, ...fields}``

==============  ==========================================================================
op              fields
==============  ==========================================================================
``publish``     ``exchange`` str, ``routing_key`` str, ``payload`` str (JSON text) or object,
                ``headers`` str or null (``k1=v1;k2=v2``), ``mandatory`` bool,
                ``confirm`` bool, ``persistent`` bool or null (all four may be left out)
``publish_batch`` ``messages``: 1 to ``MAX_BATCH`` objects shaped like ``publish`` (without
                ``id``/``op``); ``confirm`` bool: the default of messages that do not say
``query``       as ``publish`` (no ``confirm``/``persistent``), plus ``timeout_ms`` int
                0..``MAX_TIMEOUT_MS`` or null (may be left out)
``async_query`` as ``query``, plus ``resume``: ``{"tindex": int, "tlabel": int,
                "reply_route": str, "timeout_route": str}`` (the Kamailio bridge: the daemon
                answers ``{"accepted": true}`` at once and sends the reply, or the timeout,
                to Kamailio's suspended transaction)
``pua_publish`` ``payload`` str (JSON text), ``package`` null, ``"presence"``,
                ``"dialog"`` or ``"message-summary"`` (may be left out)
``status``      none
``ping``        none
==============  ==========================================================================

Fields not listed are ignored, so an older daemon can serve a newer client.

Publish results. Without ``confirm`` (or ``false``) the daemon answers as soon as it has
validated and accepted the message: ``{"msg_id": "..."}``; what happens later (confirm, buffer,
retries, failover) is the daemon's job, and a failure it learns after accepting is logged,
counted and sent to ``kazoo:publish-failed``, not to the caller. With ``"confirm": true`` it
answers after the broker's confirm: ``{"msg_id": "...", "server_id": "..."}``, or the error.
A daemon older than the ``confirm`` field always answers after the confirm, which is what a
caller asking for it wants anyway. ``persistent``: true sends the message with delivery mode 2,
false with 1, null/absent takes the daemon's configured default.

Responses: ``{"id": n, "ok": true, "result": <any JSON>}`` or
``{"id": n, "ok": false, "error": {"type": "<errors class name>", "message": "..."}}``.
``id`` is ``null`` only in the error response to a frame whose id could not be read.
``error.type`` is the name of a class in :mod:`kazoo_amqp.errors`; the receiver rebuilds it with
:func:`kazoo_amqp.errors.error_from_name`.

The payload travels as a JSON *string* inside the request, unparsed: the daemon validates it
once, where it is published.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from kazoo_amqp.core.framing import encode_frame
from kazoo_amqp.errors import (
    ERRORS_BY_NAME,
    BadPayload,
    KazooError,
    ProtocolError,
    error_attrs,
    error_from_name,
)

__all__ = [
    "MAX_BATCH",
    "MAX_TIMEOUT_MS",
    "OPS",
    "PUA_PACKAGES",
    "RESUME_FIELDS",
    "BadRequest",
    "Op",
    "PublishItem",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_publish",
    "encode_request",
    "encode_response_error",
    "encode_response_ok",
    "error_object",
    "error_type_name",
]

Op = Literal["publish", "publish_batch", "query", "async_query", "pua_publish", "status", "ping"]
OPS: Final = frozenset(
    {"publish", "publish_batch", "query", "async_query", "pua_publish", "status", "ping"}
)

#: Most messages one ``publish_batch`` request may carry.
MAX_BATCH: Final = 10000
#: Largest ``timeout_ms`` a request may carry (10 minutes): a longer wait is a bug of the caller.
MAX_TIMEOUT_MS: Final = 600_000
PUA_PACKAGES: Final = frozenset({"presence", "dialog", "message-summary"})

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: JSON string literal of a str, non-ASCII kept (the C helper behind ``_dumps``).
_quote: Callable[[str], str] = json.encoder.encode_basestring
_loads = json.loads


class BadRequest(ProtocolError):
    """A request frame that does not follow the schema.

    It is a :class:`~kazoo_amqp.errors.ProtocolError` that also carries the request id when it
    could be read, so the server can answer the request it belongs to. On the wire it travels
    as ``ProtocolError`` (see :func:`error_type_name`).
    """

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(slots=True)
class Request:
    """One decoded request. Fields an op does not use keep their defaults.

    Treat it as immutable; it is not ``frozen`` only because a frozen dataclass costs a
    microsecond more to build, once per request on the daemon's hot path.
    """

    id: int
    op: Op
    exchange: str = ""
    routing_key: str = ""
    payload: str | dict[str, Any] = ""
    headers: str | None = None
    timeout_ms: int | None = None
    package: str | None = None
    mandatory: bool = False
    messages: tuple[PublishItem, ...] = ()
    confirm: bool = False
    persistent: bool | None = None
    resume: dict[str, Any] | None = None  # async_query: where the answer goes (Kamailio bridge)


class PublishItem(NamedTuple):
    """One message of a ``publish_batch`` (a tuple: batches are decoded per message)."""

    exchange: str
    routing_key: str
    payload: str | dict[str, Any]
    headers: str | None
    mandatory: bool
    confirm: bool = False
    persistent: bool | None = None


@dataclass(slots=True)
class Response:
    """One decoded response: ``result`` when ``ok``, else ``error_type`` and ``error_message``."""

    id: int | None
    ok: bool
    result: Any = None
    error_type: str = ""
    error_message: str = ""
    error_attrs: dict[str, Any] | None = None

    def error(self) -> KazooError:
        """The error this response carries, rebuilt as its :mod:`kazoo_amqp.errors` class."""
        if self.ok:
            raise ValueError("error() called on a successful response")
        return error_from_name(self.error_type, self.error_message, self.error_attrs)


# --------------------------------------------------------------------------------------
# encoding


def _frame_json(obj: dict[str, Any]) -> bytes:
    try:
        return encode_frame(_dumps(obj).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadPayload(
            f"text is not valid Unicode (a lone surrogate at position {exc.start}); "
            "it cannot be sent as UTF-8"
        ) from None


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadPayload(
            f"text is not valid Unicode (a lone surrogate at position {exc.start}); "
            "it cannot be sent as UTF-8"
        ) from None


def encode_publish(id: int, exchange: str, routing_key: str, payload: str) -> bytes:
    """The framed ``publish`` request of the common shape (no optional field, text payload):
    the same bytes as :func:`encode_request` would give, built without a dict (the hot path of
    every blocking caller).

    Raises:
        BadPayload: a string holds a lone surrogate.
    """
    return encode_frame(
        _utf8(
            f'{{"id":{id:d},"op":"publish","exchange":{_quote(exchange)},'
            f'"routing_key":{_quote(routing_key)},"payload":{_quote(payload)}}}'
        )
    )


def encode_request(id: int, op: str, **fields: Any) -> bytes:
    """Return the framed request ``{"id": id, "op": op, **fields}``.

    No schema check is made here (the daemon does it); values must be JSON-serialisable.

    Raises:
        BadPayload: a string holds a lone surrogate, so it cannot be UTF-8 encoded.
        TypeError: a value is not JSON-serialisable.
    """
    return _frame_json({"id": id, "op": op, **fields})


def error_type_name(exc: BaseException) -> str:
    """The wire name of ``exc``: its nearest class listed in ``errors.ERRORS_BY_NAME``.

    A subclass defined elsewhere (like :class:`BadRequest`) travels under the name of the public
    class it extends; an exception that is not a :class:`KazooError` travels as ``KazooError``.
    """
    for cls in type(exc).__mro__:
        name = cls.__name__
        if ERRORS_BY_NAME.get(name) is cls:
            return name
    return "KazooError"


def error_object(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message"[, "attrs"]}`` describing ``exc`` on the wire."""
    if not isinstance(exc, KazooError):
        return {"type": "KazooError", "message": f"internal error: {type(exc).__name__}: {exc}"}
    error: dict[str, Any] = {"type": error_type_name(exc), "message": str(exc)}
    attrs = error_attrs(exc)
    if attrs:
        error["attrs"] = attrs
    return error


def batch_results(items: list[Any]) -> list[dict[str, Any] | KazooError]:
    """Decode a ``publish_batch`` result: one result dict or rebuilt error per message."""
    out: list[dict[str, Any] | KazooError] = []
    for item in items:
        if type(item) is dict and item.get("ok") is True:
            out.append(item.get("result") or {})
        elif type(item) is dict and type(item.get("error")) is dict:
            err = item["error"]
            attrs = err.get("attrs")
            out.append(
                error_from_name(
                    str(err.get("type")),
                    str(err.get("message")),
                    attrs if type(attrs) is dict else None,
                )
            )
        else:
            out.append(KazooError(f"malformed publish_batch result item: {item!r}"))
    return out


def encode_response_ok(id: int, result: Any, dumps: Callable[[Any], bytes] | None = None) -> bytes:
    """Return the framed success response for request ``id``.

    ``dumps``: a faster serialiser to try first (bytes out, compact, UTF-8); on any error the
    standard one runs and says what is wrong. The accepted-publish result ``{"msg_id": str}``
    is formatted directly (one per publish on the daemon's hot path).

    Raises:
        TypeError, ValueError: ``result`` is not JSON-serialisable.
    """
    if type(result) is dict and len(result) == 1:
        msg_id = result.get("msg_id")
        if type(msg_id) is str:
            return encode_frame(
                _utf8(f'{{"id":{id:d},"ok":true,"result":{{"msg_id":{_quote(msg_id)}}}}}')
            )
    if dumps is not None:
        try:
            return encode_frame(dumps({"id": id, "ok": True, "result": result}))
        except Exception:
            pass  # the standard serialiser below says what is wrong
    return _frame_json({"id": id, "ok": True, "result": result})


def encode_response_error(id: int | None, exc: BaseException) -> bytes:
    """Return the framed error response for request ``id`` (``None``: the id was unreadable).

    A :class:`KazooError` is sent under its :func:`error_type_name` with ``str(exc)``; any
    other exception is sent as ``KazooError`` with ``"internal error: <Class>: <text>"``.
    """
    error = error_object(exc)
    try:
        text = _dumps({"id": id, "ok": False, "error": error})
        return encode_frame(text.encode("utf-8"))
    except UnicodeEncodeError:
        # A message holding a lone surrogate must still be sendable: escape it visibly.
        safe = {
            k: v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v
            for k, v in error.items()
            if k != "attrs"
        }
        text = _dumps({"id": id, "ok": False, "error": safe})
        return encode_frame(text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# decoding


def _parse_object(frame: bytes, what: str, error: type[ProtocolError]) -> dict[str, Any]:
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} frame is not valid UTF-8 (byte {exc.start}); frames hold UTF-8 JSON objects"
        ) from None
    try:
        obj = _loads(text)
    except ValueError as exc:
        raise error(f"{what} frame is not JSON: {exc}") from None
    except RecursionError:
        raise error(
            f"{what} frame nests JSON arrays/objects too deeply to parse; flatten the payload"
        ) from None
    if type(obj) is not dict:
        raise error(f"{what} frame is JSON {_json_kind(obj)}, not an object")
    return obj


#: The fields of an ``async_query``'s ``resume`` object and their JSON types.
RESUME_FIELDS: Final = (
    ("tindex", int),
    ("tlabel", int),
    ("reply_route", str),
    ("timeout_route", str),
)


def _resume_field(obj: dict[str, Any], request_id: int) -> dict[str, Any]:
    resume = obj.get("resume")
    if type(resume) is not dict or any(
        type(resume.get(name)) is not kind for name, kind in RESUME_FIELDS
    ):
        raise BadRequest(
            f"async_query request {request_id}: 'resume' must be an object with integer "
            "tindex and tlabel and string reply_route and timeout_route (where the answer "
            f"goes), not {resume!r:.200}",
            request_id=request_id,
        )
    return resume


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _field(obj: dict[str, Any], name: str, request_id: int, op: str) -> str:
    value = obj.get(name)
    if type(value) is str:
        return value
    if name not in obj:
        raise BadRequest(f"{op} request {request_id} has no {name!r} field", request_id=request_id)
    raise BadRequest(
        f"{op} request {request_id}: {name!r} must be a string, not {_json_kind(value)}",
        request_id=request_id,
    )


def _payload_field(obj: dict[str, Any], request_id: int, op: str) -> str | dict[str, Any]:
    """``payload``: JSON text, or the JSON object itself (saves parsing the text twice)."""
    value = obj.get("payload")
    if type(value) is str or type(value) is dict:
        return value
    if "payload" not in obj:
        raise BadRequest(f"{op} request {request_id} has no 'payload' field", request_id=request_id)
    raise BadRequest(
        f"{op} request {request_id}: 'payload' must be JSON text or an object, "
        f"not {_json_kind(value)}",
        request_id=request_id,
    )


def _flag(obj: dict[str, Any], name: str, request_id: int, op: str) -> bool:
    """An optional boolean field (absent means False)."""
    value = obj.get(name, False)
    if type(value) is not bool:
        raise BadRequest(
            f"{op} request {request_id}: {name!r} must be true or false, not {value!r}",
            request_id=request_id,
        )
    return value


def _persistent(obj: dict[str, Any], request_id: int, op: str) -> bool | None:
    """The optional ``persistent`` field: true, false, or null/absent (the daemon's default)."""
    value = obj.get("persistent")
    if value is None or type(value) is bool:
        return value
    raise BadRequest(
        f"{op} request {request_id}: 'persistent' must be true, false or null, not {value!r}",
        request_id=request_id,
    )


def _optional_field(obj: dict[str, Any], name: str, request_id: int, op: str) -> str | None:
    value = obj.get(name)
    if value is None or type(value) is str:
        return value
    raise BadRequest(
        f"{op} request {request_id}: {name!r} must be a string or null, not {_json_kind(value)}",
        request_id=request_id,
    )


def _publish_item(obj: dict[str, Any], request_id: int, where: str, confirm: bool) -> PublishItem:
    """One publish (a ``publish`` request or a batch message), every field checked."""
    return PublishItem(
        _field(obj, "exchange", request_id, where),
        _field(obj, "routing_key", request_id, where),
        _payload_field(obj, request_id, where),
        _optional_field(obj, "headers", request_id, where),
        _flag(obj, "mandatory", request_id, where),
        _flag(obj, "confirm", request_id, where) if "confirm" in obj else confirm,
        _persistent(obj, request_id, where),
    )


def _has_object_payload(obj: dict[str, Any]) -> bool:
    if type(obj.get("payload")) is dict:
        return True
    messages = obj.get("messages")
    return type(messages) is list and any(
        type(m) is dict and type(m.get("payload")) is dict for m in messages
    )


def decode_request(frame: bytes, fast_loads: Callable[[bytes], Any] | None = None) -> Request:
    """Parse and check one request frame's payload.

    ``fast_loads``: a faster parser taking bytes (orjson's), tried first. Its result is used only
    when it cannot differ from the standard parser's: the request is valid and carries no
    payload *object* (orjson reads integers over 64 bits as floats; payload objects are user
    data, so they are always parsed by ``json``). Anything else is parsed again by ``json``,
    which gives the exact result or words the error.

    Raises:
        BadRequest: (a :class:`~kazoo_amqp.errors.ProtocolError`) the frame is not UTF-8, not
            JSON (or nested too deeply to parse), not an object, has no integer ``id``, a
            missing or unknown ``op``, a field of the wrong type, or a ``timeout_ms`` over
            :data:`MAX_TIMEOUT_MS`. ``request_id`` is set when the id could be read.
    """
    if fast_loads is not None:
        try:
            obj = fast_loads(frame)
        except Exception:
            obj = None
        if type(obj) is dict and not _has_object_payload(obj):
            try:
                return _request_from(obj)
            except BadRequest:
                pass  # the standard parser below reads it exactly and words the error
    return _request_from(_parse_object(frame, "request", BadRequest))


def _request_from(obj: dict[str, Any]) -> Request:
    """Check a parsed request object (see :func:`decode_request`)."""
    request_id = obj.get("id")
    if type(request_id) is not int:
        if "id" not in obj:
            raise BadRequest("request has no 'id' field")
        raise BadRequest(f"request 'id' must be an integer, not {_json_kind(request_id)}")
    op = obj.get("op")
    if op == "publish":
        exchange, routing_key, payload = (
            obj.get("exchange"),
            obj.get("routing_key"),
            obj.get("payload"),
        )
        if (
            len(obj) == 5
            and type(exchange) is str
            and type(routing_key) is str
            and (type(payload) is str or type(payload) is dict)
        ):  # the common shape (id, op, exchange, routing_key, payload), checked cheaply
            return Request(request_id, "publish", exchange, routing_key, payload)
        item = _publish_item(obj, request_id, op, False)
        return Request(
            request_id,
            "publish",
            exchange=item.exchange,
            routing_key=item.routing_key,
            payload=item.payload,
            headers=item.headers,
            mandatory=item.mandatory,
            confirm=item.confirm,
            persistent=item.persistent,
        )
    if op == "publish_batch":
        items = obj.get("messages")
        if type(items) is not list or not 0 < len(items) <= MAX_BATCH:
            raise BadRequest(
                f"publish_batch request {request_id}: 'messages' must be a list of 1 to "
                f"{MAX_BATCH} publish objects, not {_json_kind(items)}",
                request_id=request_id,
            )
        confirm = _flag(obj, "confirm", request_id, op)
        messages = []
        for n, item in enumerate(items):
            if type(item) is not dict:
                raise BadRequest(
                    f"publish_batch request {request_id}: message {n} must be an object with "
                    f"exchange, routing_key and payload, not {_json_kind(item)}",
                    request_id=request_id,
                )
            exchange, routing_key, payload = (
                item.get("exchange"),
                item.get("routing_key"),
                item.get("payload"),
            )
            if (
                type(exchange) is str
                and type(routing_key) is str
                and (type(payload) is str or type(payload) is dict)
                and len(item) == 3
            ):  # the common shape, checked cheaply
                messages.append(PublishItem(exchange, routing_key, payload, None, False, confirm))
                continue
            messages.append(
                _publish_item(item, request_id, f"publish_batch message {n} of", confirm)
            )
        return Request(request_id, "publish_batch", messages=tuple(messages), confirm=confirm)
    if op == "query" or op == "async_query":
        timeout_ms = obj.get("timeout_ms")
        if timeout_ms is not None and (
            type(timeout_ms) is not int or not 0 <= timeout_ms <= MAX_TIMEOUT_MS
        ):
            raise BadRequest(
                f"query request {request_id}: 'timeout_ms' must be an integer from 0 to "
                f"MAX_TIMEOUT_MS ({MAX_TIMEOUT_MS}) or null, not {timeout_ms!r}",
                request_id=request_id,
            )
        resume = _resume_field(obj, request_id) if op == "async_query" else None
        return Request(
            request_id,
            op,
            resume=resume,
            exchange=_field(obj, "exchange", request_id, op),
            routing_key=_field(obj, "routing_key", request_id, op),
            payload=_payload_field(obj, request_id, op),
            headers=_optional_field(obj, "headers", request_id, op),
            timeout_ms=timeout_ms,
            mandatory=_flag(obj, "mandatory", request_id, op),
        )
    if op == "pua_publish":
        package = obj.get("package")
        if package is not None and (type(package) is not str or package not in PUA_PACKAGES):
            raise BadRequest(
                f"pua_publish request {request_id}: 'package' must be null, 'presence', "
                f"'dialog' or 'message-summary', not {package!r}",
                request_id=request_id,
            )
        return Request(
            request_id,
            "pua_publish",
            payload=_payload_field(obj, request_id, op),
            package=package,
        )
    if op == "status":
        return Request(request_id, "status")
    if op == "ping":
        return Request(request_id, "ping")
    if op is None:
        raise BadRequest(f"request {request_id} has no 'op' field", request_id=request_id)
    raise BadRequest(
        f"request {request_id} has unknown op {op!r}; expected one of {', '.join(sorted(OPS))}",
        request_id=request_id,
    )


def decode_response(frame: bytes) -> Response:
    """Parse and check one response frame's payload.

    Raises:
        ProtocolError: the frame is not UTF-8 JSON, not an object, or not shaped like a
            response (``id`` int or null, ``ok`` bool, ``error`` with string ``type`` and
            ``message``).
    """
    obj = _parse_object(frame, "response", ProtocolError)
    response_id = obj.get("id")
    if response_id is not None and type(response_id) is not int:
        raise ProtocolError(
            f"response 'id' must be an integer or null, not {_json_kind(response_id)}"
        )
    ok = obj.get("ok")
    if ok is True:
        return Response(response_id, True, obj.get("result"))
    if ok is not False:
        raise ProtocolError(f"response {response_id}: 'ok' must be true or false, not {ok!r}")
    error = obj.get("error")
    if (
        type(error) is not dict
        or type(error.get("type")) is not str
        or type(error.get("message")) is not str
    ):
        raise ProtocolError(
            f"response {response_id}: 'error' must be an object with string 'type' and "
            f"'message', not {error!r}"
        )
    attrs = error.get("attrs")
    return Response(
        response_id,
        False,
        None,
        error["type"],
        error["message"],
        attrs if type(attrs) is dict else None,
    )
