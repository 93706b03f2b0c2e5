"""Request/response schema of the local socket (core/wire.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.wire import (
    BadRequest,
    PublishItem,
    Request,
    decode_request,
    decode_response,
    encode_publish,
    encode_request,
    encode_response_error,
    encode_response_ok,
    error_type_name,
)
from kazoo_amqp.errors import (
    BadPayload,
    KazooError,
    ProtocolError,
    PublishFailed,
    QueryTimeout,
    ShuttingDown,
)


def unframe(data: bytes) -> bytes:
    [frame] = FrameDecoder().feed(data)
    return frame


def obj(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


# ------------------------------------------------------------------ requests

ROUND_TRIPS = [
    (
        "publish",
        {"exchange": "callmgr", "routing_key": "rk", "payload": '{"a":1}', "headers": None},
        Request(1, "publish", "callmgr", "rk", '{"a":1}'),
    ),
    (
        "publish",
        {"exchange": "", "routing_key": "rk", "payload": "{}", "headers": "k=v;x=y"},
        Request(1, "publish", "", "rk", "{}", headers="k=v;x=y"),
    ),
    (
        "query",
        {"exchange": "e", "routing_key": "r", "payload": "{}", "headers": None, "timeout_ms": 500},
        Request(1, "query", "e", "r", "{}", timeout_ms=500),
    ),
    (
        "query",
        {"exchange": "e", "routing_key": "r", "payload": "{}", "headers": None, "timeout_ms": None},
        Request(1, "query", "e", "r", "{}"),
    ),
    ("pua_publish", {"payload": "{}", "package": None}, Request(1, "pua_publish", payload="{}")),
    (
        "pua_publish",
        {"payload": "{}", "package": "message-summary"},
        Request(1, "pua_publish", payload="{}", package="message-summary"),
    ),
    ("status", {}, Request(1, "status")),
    ("ping", {}, Request(1, "ping")),
    (
        "publish",
        {"exchange": "e", "routing_key": "r", "payload": "{}", "confirm": True},
        Request(1, "publish", "e", "r", "{}", confirm=True),
    ),
    (
        "publish",
        {"exchange": "e", "routing_key": "r", "payload": "{}", "persistent": True},
        Request(1, "publish", "e", "r", "{}", persistent=True),
    ),
    (
        "publish",
        {"exchange": "e", "routing_key": "r", "payload": {}, "persistent": False, "confirm": False},
        Request(1, "publish", "e", "r", {}, persistent=False),
    ),
    (
        "query",
        {"exchange": "e", "routing_key": "r", "payload": "{}", "timeout_ms": 600_000},
        Request(1, "query", "e", "r", "{}", timeout_ms=600_000),
    ),
    (
        "publish_batch",
        {
            "messages": [
                {"exchange": "a", "routing_key": "1", "payload": "{}"},
                {"exchange": "b", "routing_key": "2", "payload": {}, "confirm": False},
                {"exchange": "c", "routing_key": "3", "payload": "{}", "persistent": True},
            ],
            "confirm": True,
        },
        Request(
            1,
            "publish_batch",
            messages=(
                PublishItem("a", "1", "{}", None, False, True),
                PublishItem("b", "2", {}, None, False, False),
                PublishItem("c", "3", "{}", None, False, True, True),
            ),
            confirm=True,
        ),
    ),
    (
        "publish_batch",
        {"messages": [{"exchange": "a", "routing_key": "1", "payload": "{}", "confirm": True}]},
        Request(
            1,
            "publish_batch",
            messages=(PublishItem("a", "1", "{}", None, False, True),),
        ),
    ),
]


@pytest.mark.parametrize(("op", "fields", "expected"), ROUND_TRIPS)
def test_request_round_trip(op: str, fields: dict[str, Any], expected: Request) -> None:
    assert decode_request(unframe(encode_request(1, op, **fields))) == expected


def test_request_is_compact_utf8_json() -> None:
    frame = unframe(encode_request(3, "publish", exchange="é", routing_key="r", payload="{}"))
    expected = '{"id":3,"op":"publish","exchange":"é","routing_key":"r","payload":"{}"}'
    assert frame == expected.encode()


def test_optional_fields_may_be_left_out_and_unknown_fields_are_ignored() -> None:
    req = decode_request(obj(id=9, op="publish", exchange="e", routing_key="r", payload="{}", x=1))
    assert req == Request(9, "publish", "e", "r", "{}")


def test_a_request_from_an_older_client_decodes_with_the_accept_defaults() -> None:
    # No confirm/persistent fields: accept semantics and the daemon's default delivery mode.
    req = decode_request(obj(id=2, op="publish", exchange="e", routing_key="r", payload="{}"))
    assert (req.confirm, req.persistent, req.mandatory) == (False, None, False)


def test_lone_surrogate_in_a_request_is_bad_payload() -> None:
    with pytest.raises(BadPayload, match="surrogate"):
        encode_request(1, "publish", exchange="e", routing_key="r", payload='{"a":"\ud800"}')


BAD_REQUESTS = [
    ("not-utf8", b'{"id":1,"op":"ping","x":"\xff"}', "not valid UTF-8", None),
    ("not-json", b"{nope", "not JSON", None),
    ("empty", b"", "not JSON", None),
    ("array", b"[1,2]", "JSON an array, not an object", None),
    ("string", b'"x"', "JSON a string, not an object", None),
    ("no-id", obj(op="ping"), "no 'id' field", None),
    ("string-id", obj(id="1", op="ping"), "'id' must be an integer, not a string", None),
    ("bool-id", obj(id=True, op="ping"), "'id' must be an integer, not a boolean", None),
    ("no-op", obj(id=4), "request 4 has no 'op' field", 4),
    ("unknown-op", obj(id=5, op="explode"), "unknown op 'explode'", 5),
    ("op-not-str", obj(id=5, op=1), "unknown op 1", 5),
    (
        "missing-exchange",
        obj(id=6, op="publish", routing_key="r", payload="{}"),
        "publish request 6 has no 'exchange' field",
        6,
    ),
    (
        "payload-array",
        obj(id=7, op="publish", exchange="e", routing_key="r", payload=[]),
        "'payload' must be JSON text or an object, not an array",
        7,
    ),
    (
        "headers-int",
        obj(id=8, op="query", exchange="e", routing_key="r", payload="{}", headers=1),
        "'headers' must be a string or null, not a number",
        8,
    ),
    (
        "timeout-str",
        obj(id=9, op="query", exchange="e", routing_key="r", payload="{}", timeout_ms="5"),
        "'timeout_ms' must be an integer from 0 to MAX_TIMEOUT_MS",
        9,
    ),
    (
        "timeout-negative",
        obj(id=9, op="query", exchange="e", routing_key="r", payload="{}", timeout_ms=-1),
        "'timeout_ms' must be an integer from 0 to MAX_TIMEOUT_MS",
        9,
    ),
    (
        "timeout-over-the-limit",
        obj(id=9, op="query", exchange="e", routing_key="r", payload="{}", timeout_ms=10**12),
        r"'timeout_ms' must be an integer from 0 to MAX_TIMEOUT_MS \(600000\)",
        9,
    ),
    (
        "deeply-nested",
        b'{"id":1,"op":"publish","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nests JSON arrays/objects too deeply",
        None,
    ),
    (
        "confirm-not-bool",
        obj(id=11, op="publish", exchange="e", routing_key="r", payload="{}", confirm=1),
        "'confirm' must be true or false",
        11,
    ),
    (
        "persistent-not-bool",
        obj(id=12, op="publish", exchange="e", routing_key="r", payload="{}", persistent="y"),
        "'persistent' must be true, false or null",
        12,
    ),
    (
        "batch-confirm-not-bool",
        obj(id=13, op="publish_batch", messages=[{}], confirm="yes"),
        "'confirm' must be true or false",
        13,
    ),
    (
        "batch-message-persistent-not-bool",
        obj(
            id=14,
            op="publish_batch",
            messages=[{"exchange": "e", "routing_key": "r", "payload": "{}", "persistent": 2}],
        ),
        "publish_batch message 0 of request 14: 'persistent' must be true, false or null",
        14,
    ),
    (
        "bad-package",
        obj(id=10, op="pua_publish", payload="{}", package="dialog;sla"),
        "'package' must be null, 'presence', 'dialog' or 'message-summary'",
        10,
    ),
]


@pytest.mark.parametrize(
    ("frame", "message", "request_id"),
    [b[1:] for b in BAD_REQUESTS],
    ids=[b[0] for b in BAD_REQUESTS],
)
def test_bad_requests_raise_protocol_error(
    frame: bytes, message: str, request_id: int | None
) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_request(frame)
    assert isinstance(info.value, BadRequest)
    assert info.value.request_id == request_id


# ------------------------------------------------------------------ responses


@pytest.mark.parametrize("result", [True, None, {"confirmed": True}, '{"a": "é"}', [1, 2]])
def test_ok_response_round_trip(result: Any) -> None:
    response = decode_response(unframe(encode_response_ok(12, result)))
    assert (response.id, response.ok, response.result) == (12, True, result)


@pytest.mark.parametrize(
    ("exc", "type_name", "message"),
    [
        (PublishFailed("nacked by the broker"), "PublishFailed", "nacked by the broker"),
        (QueryTimeout("no reply", timeout_ms=5), "QueryTimeout", "no reply"),
        (ShuttingDown("stopping"), "ShuttingDown", "stopping"),
        (BadRequest("bad", request_id=3), "ProtocolError", "bad"),
        (KazooError("base"), "KazooError", "base"),
        (RuntimeError("boom"), "KazooError", "internal error: RuntimeError: boom"),
    ],
)
def test_error_response_round_trip(exc: BaseException, type_name: str, message: str) -> None:
    response = decode_response(unframe(encode_response_error(4, exc)))
    assert (response.id, response.ok, response.error_type) == (4, False, type_name)
    assert response.error_message == message
    rebuilt = response.error()
    assert type(rebuilt).__name__ == type_name
    assert str(rebuilt) == message


def test_error_response_may_have_a_null_id() -> None:
    response = decode_response(unframe(encode_response_error(None, ProtocolError("garbage"))))
    assert response.id is None
    assert isinstance(response.error(), ProtocolError)


def test_error_message_with_a_lone_surrogate_is_still_sendable() -> None:
    response = decode_response(unframe(encode_response_error(1, KazooError("bad \ud800"))))
    assert response.error_message == "bad \\ud800"


def test_error_type_name_uses_the_nearest_public_class() -> None:
    class Private(PublishFailed):
        pass

    assert error_type_name(Private("x")) == "PublishFailed"
    assert error_type_name(ValueError("x")) == "KazooError"


def test_unknown_error_type_becomes_kazoo_error() -> None:
    frame = obj(id=1, ok=False, error={"type": "Whatever", "message": "m"})
    err = decode_response(frame).error()
    assert type(err) is KazooError
    assert str(err) == "m"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xff", "not valid UTF-8"),
        (b"nope", "not JSON"),
        (b"[]", "not an object"),
        (obj(id="1", ok=True), "'id' must be an integer or null"),
        (obj(id=1, ok=1), "'ok' must be true or false"),
        (obj(id=1, ok=False), "'error' must be an object"),
        (obj(id=1, ok=False, error={"type": "X"}), "'error' must be an object"),
    ],
)
def test_bad_responses_raise_protocol_error(frame: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_response(frame)


def test_error_of_an_ok_response_is_a_bug() -> None:
    with pytest.raises(ValueError):
        decode_response(obj(id=1, ok=True, result=1)).error()


# ------------------------------------------------------------------ fast paths give the same bytes

orjson = pytest.importorskip("orjson")


@pytest.mark.parametrize(
    ("exchange", "routing_key", "payload"),
    [
        ("callmgr", "route.req", '{"a":1}'),
        ("é", 'quo"te\\', '{"x": "a\\/b", "n": 1.50, "t": "\\u00e9\\n"}'),
        ("", "", ""),
    ],
)
def test_encode_publish_gives_the_bytes_of_encode_request(
    exchange: str, routing_key: str, payload: str
) -> None:
    assert encode_publish(7, exchange, routing_key, payload) == encode_request(
        7, "publish", exchange=exchange, routing_key=routing_key, payload=payload
    )


def test_encode_publish_refuses_a_lone_surrogate() -> None:
    with pytest.raises(BadPayload, match="surrogate"):
        encode_publish(1, "e", "r", '{"a":"\ud800"}')


@pytest.mark.parametrize(
    "result",
    [{"msg_id": "0123-é"}, {"msg_id": 'q"\\'}, {"msg_id": "m", "server_id": 1}, [1, {"a": None}]],
)
def test_response_fast_paths_give_the_standard_json(result: Any) -> None:
    for dumps in (None, orjson.dumps):
        frame = unframe(encode_response_ok(3, result, dumps))
        assert json.loads(frame) == {"id": 3, "ok": True, "result": result}


@pytest.mark.parametrize(("op", "fields", "expected"), ROUND_TRIPS)
def test_decoding_with_orjson_gives_the_same_requests(
    op: str, fields: dict[str, Any], expected: Request
) -> None:
    assert decode_request(unframe(encode_request(1, op, **fields)), orjson.loads) == expected


@pytest.mark.parametrize(
    ("frame", "message", "request_id"),
    [b[1:] for b in BAD_REQUESTS],
    ids=[b[0] for b in BAD_REQUESTS],
)
def test_decoding_with_orjson_words_errors_the_same(
    frame: bytes, message: str, request_id: int | None
) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        decode_request(frame, orjson.loads)
    assert info.value.request_id == request_id


@pytest.mark.parametrize(
    "frame",
    [
        obj(id=1, op="publish", exchange="e", routing_key="r", payload={"n": 10**30}),
        obj(
            id=1,
            op="publish_batch",
            messages=[{"exchange": "e", "routing_key": "r", "payload": {"n": [10**30]}}],
        ),
        obj(id=10**30, op="ping"),
        b'{"id":1,"op":"publish","exchange":"\\ud800","routing_key":"r","payload":"{}"}',
    ],
    ids=["payload-object", "batch-payload-object", "big-id", "escaped-lone-surrogate"],
)
def test_what_orjson_would_read_differently_is_decoded_by_json(frame: bytes) -> None:
    assert decode_request(frame, orjson.loads) == decode_request(frame)


def test_replies_orjson_refuses_are_still_encoded_like_json() -> None:
    assert encode_response_ok(1, {"n": 10**30}, orjson.dumps) == encode_response_ok(
        1, {"n": 10**30}
    )
    with pytest.raises(BadPayload, match="surrogate"):
        encode_response_ok(1, {"s": "\ud800"}, orjson.dumps)
