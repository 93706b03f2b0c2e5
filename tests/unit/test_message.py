"""Kazoo message conventions (core/message.py; spec §3.1, §6.5, §6.6; vectors §15.4/5/8)."""

from __future__ import annotations

from typing import Any

import pytest

from kazoo_amqp.core import jsonc
from kazoo_amqp.core.message import (
    CONSUMER_PREFIX,
    MAX_ROUTING_KEY_BYTES,
    TARGETED_EXCHANGE,
    augment_received,
    check_routing_key,
    connection_event_body,
    inject_common_fields,
    inject_server_id,
    node_name,
    publish_failed_body,
    reply_queue_name,
    server_id_for,
    split_consumer_prefix,
)
from kazoo_amqp.errors import BadRoutingKey, UsageError

HOST = "sip1.example.com"
UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
COMMON = {"app_name": "kamailio", "app_version": "5.6.3", "node": f"kamailio@{HOST}"}
NOW = 1700000000


def _table(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """parametrize keywords for (id, *values) rows."""
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


def _publish_body(text: str, *, server_id: int = 1, index: int = 0) -> tuple[str, str]:
    """What the publisher does to `text`: parse, inject fields and Server-ID, serialise."""
    doc = jsonc.loads_object(text)
    msg_id = inject_common_fields(doc, msg_id=UUID, **COMMON)
    inject_server_id(doc, server_id_for(HOST, server_id, index))
    return jsonc.dumps(doc), msg_id


def _received_body(text: str, *, zone: str, server_id: int) -> str:
    """What a worker does to a received body (§6.6): parse, augment, serialise."""
    doc = jsonc.loads_object(text)
    augment_received(doc, zone=zone, server_id=server_id, now=NOW, render=jsonc.render)
    return jsonc.dumps(doc)


# ---------------------------------------------------------------------------------------------
# Names: Node, Server-ID, reply queue (§3.1 step 6, §6.5, §15.8)


def test_constants_match_the_c_module() -> None:
    """The 255-byte limit, the consumer:// prefix and the `targeted` exchange are C's."""
    assert (MAX_ROUTING_KEY_BYTES, CONSUMER_PREFIX, TARGETED_EXCHANGE) == (
        255,
        "consumer://",
        "targeted",
    )


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("sip1.example.com", "kamailio@sip1.example.com"),
        ("sbc1", "kamailio@sbc1"),
        ("", "kamailio@"),
    ],
    ids=["fqdn", "short", "empty"],
)
def test_node_name_is_kamailio_at_hostname(hostname: str, expected: str) -> None:
    """Node is `kamailio@<node_hostname>` verbatim."""
    assert node_name(hostname) == expected


# (id, hostname, server id, channel index or None for the default, Server-ID, reply queue)
ADDRESSING: list[tuple[str, str, int, int | None, str, str]] = [
    (
        "server1-default-index",
        HOST,
        1,
        None,
        "kamailio@sip1.example.com-<1>-targeted-0",
        "kamailio@sip1.example.com-<1-0>",
    ),
    (
        "server1-index0",
        HOST,
        1,
        0,
        "kamailio@sip1.example.com-<1>-targeted-0",
        "kamailio@sip1.example.com-<1-0>",
    ),
    (
        "spec-15.8-server3-channel7",
        HOST,
        3,
        7,
        "kamailio@sip1.example.com-<3>-targeted-7",
        "kamailio@sip1.example.com-<3-7>",
    ),
    ("two-digit-ids", "h", 12, 49, "kamailio@h-<12>-targeted-49", "kamailio@h-<12-49>"),
]


@pytest.mark.parametrize(
    ("hostname", "sid", "index", "server_id", "queue"),
    **_table(ADDRESSING),
)
def test_server_id_for_names_the_reply_routing_key(
    hostname: str, sid: int, index: int | None, server_id: str, queue: str
) -> None:
    """Server-ID is `kamailio@<host>-<<sid>>-targeted-<idx>` with literal angle brackets (§6.5)."""
    args = (hostname, sid) if index is None else (hostname, sid, index)
    assert server_id_for(*args) == server_id


@pytest.mark.parametrize(
    ("hostname", "sid", "index", "server_id", "queue"),
    **_table(ADDRESSING),
)
def test_reply_queue_name_is_host_with_sid_dash_index_in_brackets(
    hostname: str, sid: int, index: int | None, server_id: str, queue: str
) -> None:
    """The reply queue is `kamailio@<host>-<<sid>-<idx>>` (§6.5, §15.8)."""
    args = (hostname, sid) if index is None else (hostname, sid, index)
    assert reply_queue_name(*args) == queue


# ---------------------------------------------------------------------------------------------
# Routing-key length (§3.1 step 2, P-8)

# (id, routing key, accepted)
ROUTING_KEY_LENGTHS: list[tuple[str, str, bool]] = [
    ("empty", "", True),
    ("ascii-255", "a" * 255, True),
    ("ascii-256", "a" * 256, False),
    ("two-byte-chars-254-bytes", "é" * 127, True),
    ("two-byte-chars-256-bytes-128-chars", "é" * 128, False),
    ("three-byte-chars-255-bytes", "€" * 85, True),
    ("three-byte-chars-258-bytes-86-chars", "€" * 86, False),
    ("four-byte-chars-252-bytes", "😀" * 63, True),
    ("four-byte-chars-256-bytes-64-chars", "😀" * 64, False),
    ("mixed-255-bytes", "a" * 253 + "é", True),
    ("mixed-256-bytes", "a" * 254 + "é", False),
    ("consumer-prefix-counts", "consumer://1/" + "a" * 242, True),
    ("consumer-prefix-counts-over", "consumer://1/" + "a" * 243, False),
]


@pytest.mark.parametrize(("key", "accepted"), **_table(ROUTING_KEY_LENGTHS))
def test_check_routing_key_counts_utf8_bytes_not_characters(key: str, accepted: bool) -> None:
    """Keys up to 255 UTF-8 bytes (prefix included) pass and come back as bytes; longer raise."""
    if accepted:
        assert check_routing_key(key) == key.encode("utf-8")
    else:
        with pytest.raises(BadRoutingKey, match=rf"{len(key.encode())} bytes.*255"):
            check_routing_key(key)


def test_check_routing_key_error_is_a_usage_error_that_shows_the_start_of_the_key() -> None:
    """The error is a UsageError and quotes the key's first 40 characters, not all of it."""
    with pytest.raises(UsageError) as info:
        check_routing_key("x" * 40 + "y" * 300)
    assert repr("x" * 40) in str(info.value)
    assert "y" not in str(info.value).split("starts with")[1]


# ---------------------------------------------------------------------------------------------
# consumer://<id>/<key> (§3.1 step 7, P-4..P-7)

# (id, routing key, server id, real routing key)
CONSUMER_PREFIXES: list[tuple[str, str, int | None, str]] = [
    ("plain-key", "presence.update.1000", None, "presence.update.1000"),
    ("empty-key", "", None, ""),
    ("P-4", "consumer://2/kamailio@other-<1>-targeted-3", 2, "kamailio@other-<1>-targeted-3"),
    ("P-7-non-numeric-id-is-primary", "consumer://abc/rk", 0, "rk"),
    ("atoi-stops-at-junk", "consumer://12abc/rk", 12, "rk"),
    ("atoi-leading-space", "consumer:// 3/rk", 3, "rk"),
    ("atoi-plus-sign", "consumer://+4/rk", 4, "rk"),
    ("atoi-negative", "consumer://-1/rk", -1, "rk"),
    ("id-zero", "consumer://0/rk", 0, "rk"),
    ("split-at-first-slash", "consumer://2/a/b/c", 2, "a/b/c"),
    ("empty-key-after-id", "consumer://2/", 2, ""),
    ("prefix-is-case-sensitive", "Consumer://2/rk", None, "Consumer://2/rk"),
    ("single-slash-is-no-prefix", "consumer:/2/rk", None, "consumer:/2/rk"),
    ("prefix-elsewhere-is-no-prefix", "x.consumer://2/rk", None, "x.consumer://2/rk"),
]


@pytest.mark.parametrize(
    ("key", "sid", "real_key"),
    **_table(CONSUMER_PREFIXES),
)
def test_split_consumer_prefix_gives_server_id_and_real_key(
    key: str, sid: int | None, real_key: str
) -> None:
    """`consumer://<atoi id>/<key>` names a server; any other key has no server (None)."""
    assert split_consumer_prefix(key) == (sid, real_key)


# Deliberate difference from C: where C returns 1 and publishes nothing, we raise.
MALFORMED_CONSUMER_PREFIXES: list[tuple[str, str]] = [
    ("P-5-no-slash", "consumer://abc"),
    ("P-6-empty-id", "consumer:///rk"),
    ("prefix-only", "consumer://"),
    ("digits-no-slash", "consumer://2"),
]


@pytest.mark.parametrize(("key",), **_table(MALFORMED_CONSUMER_PREFIXES))
def test_split_consumer_prefix_refuses_what_c_silently_drops(key: str) -> None:
    """No `/` after the prefix, or an empty id, raises BadRoutingKey naming the expected form."""
    with pytest.raises(BadRoutingKey, match=r"consumer://<id>/<routing key>") as info:
        split_consumer_prefix(key)
    assert repr(key) in str(info.value)


@pytest.mark.parametrize("junk", ["\u00a0", "\x1c"], ids=["nbsp", "file-separator"])
def test_split_consumer_prefix_skips_only_c_whitespace_like_atoi(junk: str) -> None:
    """atoi skips only C isspace characters; anything else ends the number (-> server 0)."""
    assert split_consumer_prefix(f"consumer://{junk}3/rk") == (0, "rk")


# ---------------------------------------------------------------------------------------------
# Field injection on publish (§3.1 step 6, §6.3, P-1..P-3)

P1_IN = (
    '{"Event-Category":"directory","Event-Name":"reg_success","Contact":"<sip:1000@10.0.0.1:5060>"}'
)
P1_OUT = (
    '{ "Event-Category": "directory", "Event-Name": "reg_success", '
    '"Contact": "<sip:1000@10.0.0.1:5060>", "App-Name": "kamailio", "App-Version": "5.6.3", '
    '"Node": "kamailio@sip1.example.com", "Msg-ID": "0f8fad5b-d9cb-469f-a165-70867728950e", '
    '"Server-ID": "kamailio@sip1.example.com-<1>-targeted-0" }'
)
P2_IN = (
    "{'Event-Category' : 'call_event' , 'Event-Name' : 'query_user_channels_req', "
    "'Realm' : 'example.com', 'Username' : '1000', 'Active-Only' : false }"
)
P2_OUT = (
    '{ "Event-Category": "call_event", "Event-Name": "query_user_channels_req", '
    '"Realm": "example.com", "Username": "1000", "Active-Only": false, "App-Name": "kamailio", '
    '"App-Version": "5.6.3", "Node": "kamailio@sip1.example.com", '
    '"Msg-ID": "0f8fad5b-d9cb-469f-a165-70867728950e", '
    '"Server-ID": "kamailio@sip1.example.com-<1>-targeted-0" }'
)
P3_IN = '{"App-Name":"myapp","Msg-ID":"m-1","Server-ID":"","x":"a/b"}'
P3_OUT = (
    '{ "App-Name": "myapp", "Msg-ID": "m-1", "Server-ID": "", "x": "a\\/b", '
    '"App-Version": "5.6.3", "Node": "kamailio@sip1.example.com" }'
)

# (id, input text, published body, Msg-ID returned)
PUBLISH_VECTORS: list[tuple[str, str, str, str]] = [
    ("P-1", P1_IN, P1_OUT, UUID),
    ("P-2-single-quotes", P2_IN, P2_OUT, UUID),
    ("P-3-caller-values-kept", P3_IN, P3_OUT, "m-1"),
]


@pytest.mark.parametrize(("text", "body", "msg_id"), **_table(PUBLISH_VECTORS))
def test_publish_vectors_give_the_exact_published_body(text: str, body: str, msg_id: str) -> None:
    """inject_common_fields + inject_server_id + jsonc.dumps reproduce §15.4 byte for byte."""
    assert _publish_body(text) == (body, msg_id)


# (id, input document, keys in order afterwards, values that differ from the input)
INJECTIONS: list[tuple[str, dict[str, Any], list[str], dict[str, Any]]] = [
    (
        "empty-doc-gets-all-four-in-order",
        {},
        ["App-Name", "App-Version", "Node", "Msg-ID"],
        {
            "App-Name": "kamailio",
            "App-Version": "5.6.3",
            "Node": f"kamailio@{HOST}",
            "Msg-ID": UUID,
        },
    ),
    (
        "new-keys-appended-after-callers",
        {"z": 1, "a": 2},
        ["z", "a", "App-Name", "App-Version", "Node", "Msg-ID"],
        {},
    ),
    (
        "null-replaced-in-place",
        {"a": 1, "Node": None, "b": 2, "App-Name": None},
        ["a", "Node", "b", "App-Name", "App-Version", "Msg-ID"],
        {"Node": f"kamailio@{HOST}", "App-Name": "kamailio"},
    ),
    (
        "null-msg-id-replaced-in-place",
        {"Msg-ID": None, "a": 1},
        ["Msg-ID", "a", "App-Name", "App-Version", "Node"],
        {"Msg-ID": UUID},
    ),
    (
        "callers-values-kept-even-empty-or-odd-types",
        {"App-Name": "", "App-Version": 7, "Node": False, "Msg-ID": "m-9"},
        ["App-Name", "App-Version", "Node", "Msg-ID"],
        {"App-Name": "", "App-Version": 7, "Node": False, "Msg-ID": "m-9"},
    ),
    (
        "other-fields-untouched",
        {"Server-ID": None, "Event-Name": "x"},
        ["Server-ID", "Event-Name", "App-Name", "App-Version", "Node", "Msg-ID"],
        {"Server-ID": None},
    ),
]


@pytest.mark.parametrize(("doc", "keys", "changed"), **_table(INJECTIONS))
def test_inject_common_fields_adds_absent_keys_in_c_order(
    doc: dict[str, Any], keys: list[str], changed: dict[str, Any]
) -> None:
    """App-Name, App-Version, Node, Msg-ID are added only where absent/null, new ones at the end."""
    before = dict(doc)
    inject_common_fields(doc, msg_id=UUID, **COMMON)
    assert list(doc) == keys
    expected = {
        "App-Name": "kamailio",
        "App-Version": "5.6.3",
        "Node": f"kamailio@{HOST}",
        "Msg-ID": UUID,
        **{k: v for k, v in before.items() if v is not None},
        **changed,
    }
    assert doc == expected


# (id, Msg-ID in the document or absent, value returned)
MSG_ID_RETURNS: list[tuple[str, dict[str, Any], str]] = [
    ("absent-returns-generated", {}, UUID),
    ("null-returns-generated", {"Msg-ID": None}, UUID),
    ("callers-string-returned", {"Msg-ID": "m-1"}, "m-1"),
    # Deliberate (undocumented in docs/compat-core.md): an empty id could never be correlated.
    ("empty-string-kept-as-c-does", {"Msg-ID": ""}, ""),
    ("callers-number-returned-as-text", {"Msg-ID": 42}, "42"),
]


@pytest.mark.parametrize(("doc", "returned"), **_table(MSG_ID_RETURNS))
def test_inject_common_fields_returns_the_msg_id_the_message_carries(
    doc: dict[str, Any], returned: str
) -> None:
    """The returned Msg-ID is the caller's when it set one, else the generated one."""
    assert inject_common_fields(doc, msg_id=UUID, **COMMON) == returned
    assert jsonc.render(doc["Msg-ID"]) == returned


def test_inject_common_fields_returns_a_boolean_msg_id_as_json_text() -> None:
    """A boolean caller Msg-ID comes back as its JSON text, the way the body carries it."""
    doc: dict[str, Any] = {"Msg-ID": True}
    assert inject_common_fields(doc, msg_id=UUID, **COMMON) == "true"


# (id, document, Server-ID afterwards, set here, keys in order afterwards)
SERVER_IDS: list[tuple[str, dict[str, Any], Any, bool, list[str]]] = [
    ("absent-appended", {"a": 1}, "SID", True, ["a", "Server-ID"]),
    ("null-replaced-in-place", {"Server-ID": None, "a": 1}, "SID", True, ["Server-ID", "a"]),
    ("P-3-empty-kept", {"Server-ID": "", "a": 1}, "", False, ["Server-ID", "a"]),
    ("callers-kept", {"a": 1, "Server-ID": "mine"}, "mine", False, ["a", "Server-ID"]),
    ("non-string-kept", {"Server-ID": 0}, 0, False, ["Server-ID"]),
]


@pytest.mark.parametrize(("doc", "value", "set_here", "keys"), **_table(SERVER_IDS))
def test_inject_server_id_sets_only_absent_or_null(
    doc: dict[str, Any], value: Any, set_here: bool, keys: list[str]
) -> None:
    """Server-ID is added at the end (or in place of null) and the call says whether it did."""
    assert inject_server_id(doc, "SID") is set_here
    assert doc["Server-ID"] == value
    assert list(doc) == keys


# ---------------------------------------------------------------------------------------------
# Receive augmentation (§6.6, R-1, R-2)

R1_IN = (
    '{"Event-Category":"presence","Event-Name":"update",'
    '"Server-ID":"kamailio@x-<1>-targeted-3","Msg-ID":"abc"}'
)
R1_OUT = (
    '{ "Event-Category": "presence", "Event-Name": "update", "Msg-ID": "abc", '
    '"AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000, '
    '"Server-ID": "consumer:\\/\\/2\\/kamailio@x-<1>-targeted-3" }'
)
R2_IN = '{"Event-Category":"presence","Server-ID":"","AMQP-Broker-Zone":"old"}'
R2_OUT = '{ "Event-Category": "presence", "AMQP-Broker-Zone": "east", "AMQP-Received": 1700000000 }'

# (id, body received, zone, server id, $kzE text)
RECEIVE_VECTORS: list[tuple[str, str, str, int, str]] = [
    ("R-1", R1_IN, "local", 2, R1_OUT),
    ("R-2-empty-server-id-deleted-zone-replaced-in-place", R2_IN, "east", 2, R2_OUT),
    (
        "no-server-id-only-zone-and-time-added",
        '{"a":1}',
        "local",
        1,
        '{ "a": 1, "AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000 }',
    ),
    (
        "received-time-replaced-in-place",
        '{"AMQP-Received":"yesterday","a":1}',
        "z",
        1,
        '{ "AMQP-Received": 1700000000, "a": 1, "AMQP-Broker-Zone": "z" }',
    ),
    (
        "numeric-server-id-rendered-as-json-c-text",
        '{"Server-ID":1.50,"a":1}',
        "local",
        3,
        '{ "a": 1, "AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000, '
        '"Server-ID": "consumer:\\/\\/3\\/1.50" }',
    ),
    (
        "boolean-server-id-rendered-lowercase",
        '{"Server-ID":true}',
        "local",
        1,
        '{ "AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000, '
        '"Server-ID": "consumer:\\/\\/1\\/true" }',
    ),
    (
        "object-server-id-rendered-spaced",
        '{"Server-ID":{"a":1}}',
        "local",
        1,
        '{ "AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000, '
        '"Server-ID": "consumer:\\/\\/1\\/{ \\"a\\": 1 }" }',
    ),
    (
        "already-prefixed-server-id-prefixed-again",
        '{"Server-ID":"consumer://1/k"}',
        "local",
        2,
        '{ "AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000, '
        '"Server-ID": "consumer:\\/\\/2\\/consumer:\\/\\/1\\/k" }',
    ),
    (
        "null-server-id-deleted",
        '{"Server-ID":null,"a":1}',
        "local",
        1,
        '{ "a": 1, "AMQP-Broker-Zone": "local", "AMQP-Received": 1700000000 }',
    ),
]


@pytest.mark.parametrize(("body", "zone", "sid", "kze"), **_table(RECEIVE_VECTORS))
def test_augment_received_gives_the_exact_kze_text(
    body: str, zone: str, sid: int, kze: str
) -> None:
    """Zone and time added or replaced, Server-ID moved to the end as consumer://<sid>/<old>."""
    assert _received_body(body, zone=zone, server_id=sid) == kze


def test_augmented_server_id_reads_back_unescaped_and_is_publishable() -> None:
    """$(kzE{kz.json,Server-ID}) of R-1 is consumer://2/… and splits back to server 2 (§6.6)."""
    text = _received_body(R1_IN, zone="local", server_id=2)
    server_id = jsonc.loads_object(text)["Server-ID"]
    assert server_id == "consumer://2/kamailio@x-<1>-targeted-3"
    assert split_consumer_prefix(server_id) == (2, "kamailio@x-<1>-targeted-3")


def test_augment_received_uses_the_given_render_for_non_strings() -> None:
    """A non-string Server-ID goes through `render`; the default is plain str()."""
    doc: dict[str, Any] = {"Server-ID": 7}
    augment_received(doc, zone="z", server_id=1, now=NOW, render=lambda v: f"<{v}>")
    assert doc["Server-ID"] == "consumer://1/<7>"
    doc = {"Server-ID": 7}
    augment_received(doc, zone="z", server_id=1, now=NOW)
    assert doc["Server-ID"] == "consumer://1/7"


def test_augment_received_stores_the_time_as_an_integer() -> None:
    """AMQP-Received is the integer clock reading passed in, serialised without quotes."""
    doc: dict[str, Any] = {}
    augment_received(doc, zone="", server_id=0, now=NOW)
    assert doc == {"AMQP-Broker-Zone": "", "AMQP-Received": NOW}
    assert type(doc["AMQP-Received"]) is int


# ---------------------------------------------------------------------------------------------
# Synthetic connection events (§4.4)

# (id, key, subkey, state, host, zone, document)
CONNECTION_EVENTS: list[tuple[str, str, str, str, str, str, dict[str, str]]] = [
    (
        "R-4-defaults-open",
        "Event-Category",
        "Event-Name",
        "open",
        "localhost",
        "local",
        {
            "Event-Category": "connection",
            "Event-Name": "open",
            "host": "localhost",
            "zone": "local",
        },
    ),
    (
        "closed",
        "Event-Category",
        "Event-Name",
        "closed",
        "rabbit2",
        "east",
        {"Event-Category": "connection", "Event-Name": "closed", "host": "rabbit2", "zone": "east"},
    ),
    (
        "configured-key-names",
        "Category",
        "Name",
        "open",
        "h",
        "z",
        {"Category": "connection", "Name": "open", "host": "h", "zone": "z"},
    ),
]


@pytest.mark.parametrize(
    ("key", "subkey", "state", "host", "zone", "doc"),
    **_table(CONNECTION_EVENTS),
)
def test_connection_event_body_uses_configured_key_names_in_order(
    key: str, subkey: str, state: str, host: str, zone: str, doc: dict[str, str]
) -> None:
    """The body is {key: connection, subkey: state, host, zone}, in that order."""
    body = connection_event_body(key=key, subkey=subkey, state=state, host=host, zone=zone)
    assert body == doc
    assert list(body) == list(doc)


def test_publish_failed_event_is_the_message_plus_why_and_where() -> None:
    """kazoo:publish-failed carries every field of the message plus Error, Reason and target."""
    doc = {"Event-Category": "c", "Msg-ID": "m1", "Error": "caller's own"}
    body = publish_failed_body(
        doc, exchange="ex", routing_key="rk", error="PublishNacked", reason="basic.nack"
    )
    assert body == {
        "Event-Category": "c",
        "Msg-ID": "m1",
        "Error": "PublishNacked",
        "Reason": "basic.nack",
        "Publish-Exchange": "ex",
        "Publish-Routing-Key": "rk",
    }
    assert doc["Error"] == "caller's own"  # the message itself is not changed
