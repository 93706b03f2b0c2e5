"""ipc/request.py: the sans-IO request side shared by Client and AsyncClient (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.wire import (
    MAX_TIMEOUT_MS,
    Response,
    decode_request,
    encode_response_error,
    encode_response_ok,
)
from kazoo_amqp.errors import (
    BadPayload,
    BrokerRefused,
    KazooError,
    ProtocolError,
    QueryTimeout,
    UsageError,
)
from kazoo_amqp.ipc import request as rq

CALLS = [
    (
        rq.publish("e", "r", {"a": 1}),
        "publish",
        {"exchange": "e", "routing_key": "r", "payload": {"a": 1}},
    ),
    (
        rq.publish("e", "r", b"{}", "k=v", mandatory=True, confirm=True, persistent=False),
        "publish",
        {
            "exchange": "e",
            "routing_key": "r",
            "payload": "{}",
            "headers": "k=v",
            "mandatory": True,
            "confirm": True,
            "persistent": False,
        },
    ),
    (
        rq.publish_batch(
            [
                ("e", "r", "{}"),
                {"exchange": "x", "routing_key": "y", "payload": {}, "confirm": False},
            ],
            confirm=True,
        ),
        "publish_batch",
        {
            "messages": [
                {"exchange": "e", "routing_key": "r", "payload": "{}"},
                {"exchange": "x", "routing_key": "y", "payload": {}, "confirm": False},
            ],
            "confirm": True,
        },
    ),
    (
        rq.query("e", "r", "{}", 500),
        "query",
        {"exchange": "e", "routing_key": "r", "payload": "{}", "timeout_ms": 500},
    ),
    (rq.pua_publish("{}", "dialog"), "pua_publish", {"payload": "{}", "package": "dialog"}),
    (rq.status(), "status", {}),
    (rq.ping(), "ping", {}),
]


@pytest.mark.parametrize(("call", "op", "fields"), CALLS, ids=[c[1] for c in CALLS])
def test_call_builders_send_only_what_is_set(
    call: rq.Call[Any], op: str, fields: dict[str, Any]
) -> None:
    assert (call.op, call.fields) == (op, fields)
    _, frame = rq.Stream().encode(call)
    [payload] = FrameDecoder().feed(frame)
    assert decode_request(payload).op == op  # what the daemon accepts


BAD_ARGUMENTS = [
    (lambda: rq.publish("e", 5, {}), UsageError, "routing_key must be a str"),  # type: ignore[arg-type]
    (lambda: rq.publish("e", "r", {}, confirm=1), UsageError, "confirm must be True or False"),  # type: ignore[arg-type]
    (lambda: rq.publish("e", "r", {}, persistent="y"), UsageError, "persistent must be"),  # type: ignore[arg-type]
    (lambda: rq.publish("e", "r", b"\xff"), BadPayload, "not valid UTF-8"),
    (lambda: rq.publish("e", "r", [1]), BadPayload, "not list"),  # type: ignore[arg-type]
    (lambda: rq.publish_batch([]), UsageError, "at least one message"),
    (lambda: rq.publish_batch(["x"]), UsageError, "publish_batch messages are dicts"),
    (lambda: rq.query("e", "r", {}, -1), UsageError, "timeout_ms must be None"),
    (lambda: rq.query("e", "r", {}, MAX_TIMEOUT_MS + 1), UsageError, "MAX_TIMEOUT_MS"),
    (lambda: rq.pua_publish("{}", "bogus"), UsageError, "package must be None"),
]


@pytest.mark.parametrize(("build", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments_fail_before_anything_is_sent(
    build: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_a_payload_that_cannot_be_serialised_is_bad_payload() -> None:
    with pytest.raises(BadPayload, match="cannot be serialised"):
        rq.Stream().encode(rq.publish("e", "r", {"x": object()}))


def test_query_waits_its_timeout_plus_the_margin() -> None:
    assert rq.query("e", "r", {}, 1500).wait == 1.5 + rq.QUERY_WAIT_MARGIN
    assert rq.query("e", "r", {}).wait == rq.DEFAULT_QUERY_WAIT
    assert rq.publish("e", "r", {}).wait is None  # the client's own timeout


def test_stream_numbers_requests_and_decodes_split_responses() -> None:
    stream = rq.Stream()
    first, _ = stream.encode(rq.ping())
    second, _ = stream.encode(rq.ping())
    assert second == first + 1
    data = encode_response_ok(first, True) + encode_response_error(second, QueryTimeout("late"))
    assert stream.feed(data[:5]) == []
    responses = stream.feed(data[5:])
    assert [(r.id, r.ok) for r in responses] == [(first, True), (second, False)]


def test_stream_refuses_bytes_that_are_not_the_protocol() -> None:
    with pytest.raises(ProtocolError):
        rq.Stream().feed(b"\x00\x00\x00\x02[]")


OUTCOMES = [
    (rq.publish("e", "r", {}), Response(1, True, {"msg_id": "m"}), {"msg_id": "m"}),
    (rq.query("e", "r", {}), Response(1, True, '{"a": 1}'), {"a": 1}),
    (rq.ping(), Response(1, True, True), True),
    (
        rq.publish_batch([("e", "r", "{}")] * 2),
        Response(
            1,
            True,
            [
                {"ok": True, "result": {"msg_id": "m"}},
                {
                    "ok": False,
                    "error": {
                        "type": "BrokerRefused",
                        "message": "404",
                        "attrs": {"reply_code": 404},
                    },
                },
            ],
        ),
        [{"msg_id": "m"}, BrokerRefused("404", reply_code=404)],
    ),
]


@pytest.mark.parametrize(("call", "response", "value"), OUTCOMES)
def test_outcome_turns_results_into_values(
    call: rq.Call[Any], response: Response, value: Any
) -> None:
    got = call.outcome(response)
    if isinstance(value, list):
        assert [type(v) for v in got] == [type(v) for v in value]
        assert got[1].reply_code == 404
    else:
        assert got == value


@pytest.mark.parametrize(
    ("call", "result", "error"),
    [
        (rq.publish("e", "r", {}), "text", ProtocolError),
        (rq.query("e", "r", {}), {"not": "text"}, ProtocolError),
        (rq.query("e", "r", {}), "[1]", BadPayload),
        (rq.publish_batch([("e", "r", "{}")]), {}, ProtocolError),
    ],
)
def test_outcome_refuses_results_of_the_wrong_shape(
    call: rq.Call[Any], result: Any, error: type[KazooError]
) -> None:
    with pytest.raises(error):
        call.outcome(Response(1, True, result))


def test_outcome_raises_the_typed_error_with_its_attributes() -> None:
    with pytest.raises(QueryTimeout) as info:
        rq.query("e", "r", {}).outcome(
            Response(1, False, None, "QueryTimeout", "no reply", {"timeout_ms": 800})
        )
    assert info.value.timeout_ms == 800


def test_client_imports_only_the_standard_library_and_this_package() -> None:
    """Kamailio's app_python3 has only this package on sys.path (no site-packages): Client,
    and the request module it shares with AsyncClient, must import without asyncio or any
    third-party module."""
    import subprocess
    import sys
    from pathlib import Path

    import kazoo_amqp

    src = str(Path(kazoo_amqp.__file__).resolve().parents[1])
    code = (
        f"import sys; sys.path.insert(0, {src!r}); from kazoo_amqp import Client; Client('/x'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'orjson', 'uvloop', 'pamqp')]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_payload_nested_too_deeply_to_serialise_is_bad_payload() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):
        node["a"] = node = {}
    with pytest.raises(BadPayload, match="too deeply"):
        rq.Stream().encode(rq.publish("e", "r", deep))
