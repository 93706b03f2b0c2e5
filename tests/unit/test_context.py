"""``Kz``, the handler context, against a fake Services object (workers/context.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kazoo_amqp.core import jsonc
from kazoo_amqp.core.subscription import (
    AckMode,
    ExchangeDecl,
    QueueDecl,
    Subscription,
    parse_subscription,
    subscription_from_args,
)
from kazoo_amqp.errors import UsageError
from kazoo_amqp.workers.context import Kz

# Document D of spec §15.2.
D_TEXT = (
    '{"Channels":[{"switch_url":"sip:a@b","n":1},{"switch_url":"sip:c@d"}],'
    '"a":{"b.c":"dot","x":{"y":true}},"n":42,"f":1.50,"e":1e3,"t":true,"z":null,'
    '"s":"x/y\\"q","arr":[1,2,[3,4]],"emp":{},"ea":[],"u":"\\u00e9"}'
)
D_DUMPED = (
    '{ "Channels": [ { "switch_url": "sip:a@b", "n": 1 }, { "switch_url": "sip:c@d" } ], '
    '"a": { "b.c": "dot", "x": { "y": true } }, "n": 42, "f": 1.50, "e": 1e3, "t": true, '
    '"z": null, "s": "x\\/y\\"q", "arr": [ 1, 2, [ 3, 4 ] ], "emp": { }, "ea": [ ], "u": "é" }'
)


def _table(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """parametrize keywords for (id, *values) rows."""
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


@dataclass
class FakeServices:
    """Records every call Kz makes; returns a marker naming the call."""

    escape_char: str = "%"
    encode_high_bytes: str = "utf8"
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    subscriptions: list[Subscription] = field(default_factory=list)

    def publish(
        self, exchange: str, routing_key: str, payload: Any, headers: str | None, **options: Any
    ) -> dict[str, Any]:
        self.calls.append(("publish", exchange, routing_key, payload, headers, *options.items()))
        return {"call": "publish"}

    def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Any,
        timeout_ms: int | None,
        headers: str | None,
    ) -> dict[str, Any]:
        self.calls.append(("query", exchange, routing_key, payload, timeout_ms, headers))
        return {"call": "query"}

    async def apublish(
        self, exchange: str, routing_key: str, payload: Any, headers: str | None, **options: Any
    ) -> dict[str, Any]:
        self.calls.append(("apublish", exchange, routing_key, payload, headers, *options.items()))
        return {"call": "apublish"}

    async def aquery(
        self,
        exchange: str,
        routing_key: str,
        payload: Any,
        timeout_ms: int | None,
        headers: str | None,
    ) -> dict[str, Any]:
        self.calls.append(("aquery", exchange, routing_key, payload, timeout_ms, headers))
        return {"call": "aquery"}

    def subscribe(self, subscription: Subscription) -> None:
        self.subscriptions.append(subscription)

    def pua_publish(self, payload: Any, package: str | None) -> dict[str, Any]:
        self.calls.append(("pua_publish", payload, package))
        return {"call": "pua_publish"}


def _kz(payload: dict[str, Any] | None = None, **kwargs: Any) -> tuple[Kz, FakeServices]:
    services = FakeServices(
        **{k: kwargs.pop(k) for k in ("escape_char", "encode_high_bytes") if k in kwargs}
    )
    return Kz(services, payload=payload, **kwargs), services  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Attributes and body


def test_defaults_describe_an_empty_event() -> None:
    """Without arguments: empty payload, body `{ }`, no routing key, exchange or name."""
    kz, _ = _kz()
    assert (kz.payload, kz.body, kz.routing_key, kz.exchange, kz.event_name, kz.redelivered) == (
        {},
        "{ }",
        None,
        None,
        "",
        False,
    )


def test_attributes_are_kept_as_given() -> None:
    """routing_key, exchange, event_name and redelivered are exposed unchanged."""
    kz, _ = _kz(
        {"a": 1},
        routing_key="presence.update",
        exchange="presence",
        event_name="kazoo:consumer-event-presence-update",
        redelivered=True,
    )
    assert (kz.routing_key, kz.exchange, kz.event_name, kz.redelivered) == (
        "presence.update",
        "presence",
        "kazoo:consumer-event-presence-update",
        True,
    )
    assert repr(kz) == "<Kz kazoo:consumer-event-presence-update rk='presence.update'>"


# (id, payload text parsed with jsonc, body)
BODIES: list[tuple[str, str, str]] = [
    ("spec-15.2-document-D", D_TEXT, D_DUMPED),
    (
        "R-1-received",
        '{"Event-Category":"presence","Msg-ID":"abc","AMQP-Received":1700000000,'
        '"Server-ID":"consumer://2/kamailio@x-<1>-targeted-3"}',
        '{ "Event-Category": "presence", "Msg-ID": "abc", "AMQP-Received": 1700000000, '
        '"Server-ID": "consumer:\\/\\/2\\/kamailio@x-<1>-targeted-3" }',
    ),
    (
        "connection-event",
        '{"Event-Category":"connection","Event-Name":"open","host":"h","zone":"local"}',
        '{ "Event-Category": "connection", "Event-Name": "open", "host": "h", "zone": "local" }',
    ),
]


@pytest.mark.parametrize(("text", "body"), **_table(BODIES))
def test_body_is_the_payload_in_json_c_spaced_form(text: str, body: str) -> None:
    """kz.body ($kzE) is jsonc.dumps of the payload: spaced, `/` escaped, numbers as written."""
    kz, _ = _kz(jsonc.loads_object(text))
    assert kz.body == body


def test_body_is_rendered_lazily_once() -> None:
    """The body is built on first use, so payload changes before that show; later ones do not."""
    payload: dict[str, Any] = {"a": 1}
    kz, _ = _kz(payload)
    payload["b"] = "x/y"
    assert kz.body == '{ "a": 1, "b": "x\\/y" }'
    payload["c"] = 3
    assert kz.body == '{ "a": 1, "b": "x\\/y" }'


def test_body_given_explicitly_is_returned_verbatim() -> None:
    """A body passed in (e.g. already rendered by the worker) is used as is."""
    kz, _ = _kz({"a": 1}, body='{"a":1}')
    assert kz.body == '{"a":1}'


# ---------------------------------------------------------------------------------------------
# Publish and query delegate to the services

DOC = {"Event-Category": "test"}

# (id, method, args, kwargs, expected recorded call)
SYNC_CALLS: list[tuple[str, str, tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = [
    ("publish-defaults", "publish", ("ex", "rk", DOC), {}, ("publish", "ex", "rk", DOC, None)),
    (
        "publish-headers",
        "publish",
        ("ex", "rk", '{"a":1}'),
        {"headers": "k=v"},
        ("publish", "ex", "rk", '{"a":1}', "k=v"),
    ),
    (
        "publish-positional-headers",
        "publish",
        ("ex", "rk", b"{}", "a=1;b=2"),
        {},
        ("publish", "ex", "rk", b"{}", "a=1;b=2"),
    ),
    ("query-defaults", "query", ("ex", "rk", DOC), {}, ("query", "ex", "rk", DOC, None, None)),
    (
        "query-timeout-and-headers",
        "query",
        ("ex", "rk", DOC),
        {"timeout_ms": 250, "headers": "k=v"},
        ("query", "ex", "rk", DOC, 250, "k=v"),
    ),
    (
        "query-positional",
        "query",
        ("ex", "consumer://2/rk", DOC, 10, "h=1"),
        {},
        ("query", "ex", "consumer://2/rk", DOC, 10, "h=1"),
    ),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "call"), **_table(SYNC_CALLS))
def test_publish_and_query_delegate_with_the_same_arguments(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any], call: tuple[Any, ...]
) -> None:
    """kz.publish/kz.query pass exchange, key, payload, timeout and headers through unchanged."""
    kz, services = _kz()
    assert getattr(kz, method)(*args, **kwargs) == {"call": method}
    assert services.calls == [call]
    assert services.calls[0][3] is args[2]


ASYNC_CALLS: list[tuple[str, str, tuple[Any, ...], dict[str, Any], tuple[Any, ...]]] = [
    ("apublish-defaults", "apublish", ("ex", "rk", DOC), {}, ("apublish", "ex", "rk", DOC, None)),
    (
        "apublish-headers",
        "apublish",
        ("ex", "rk", DOC),
        {"headers": "k=v"},
        ("apublish", "ex", "rk", DOC, "k=v"),
    ),
    ("aquery-defaults", "aquery", ("ex", "rk", DOC), {}, ("aquery", "ex", "rk", DOC, None, None)),
    (
        "aquery-timeout-and-headers",
        "aquery",
        ("ex", "rk", DOC),
        {"timeout_ms": 200, "headers": "k=v"},
        ("aquery", "ex", "rk", DOC, 200, "k=v"),
    ),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "call"), **_table(ASYNC_CALLS))
async def test_async_publish_and_query_delegate_with_the_same_arguments(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any], call: tuple[Any, ...]
) -> None:
    """kz.apublish/kz.aquery await the services' coroutines with the same arguments."""
    kz, services = _kz()
    assert await getattr(kz, method)(*args, **kwargs) == {"call": method}
    assert services.calls == [call]


# ---------------------------------------------------------------------------------------------
# PUA publish

EVENT = {"Event-Name": "update", "Event-Package": "dialog", "From": "sip:1000@example.com"}
OTHER = {"From": "sip:2000@example.com"}

# (id, method, explicit payload or None, package passed to the services)
PUA_CALLS: list[tuple[str, str, Any, str | None]] = [
    ("dispatching-default-payload", "pua_publish", None, None),
    ("dispatching-explicit-payload", "pua_publish", OTHER, None),
    ("presence", "pua_publish_presence", None, "presence"),
    ("dialog", "pua_publish_dialoginfo", None, "dialog"),
    ("mwi", "pua_publish_mwi", None, "message-summary"),
    ("presence-explicit", "pua_publish_presence", OTHER, "presence"),
    ("dialog-explicit-text", "pua_publish_dialoginfo", '{"From":"x"}', "dialog"),
    ("mwi-explicit-bytes", "pua_publish_mwi", b'{"From":"x"}', "message-summary"),
]


@pytest.mark.parametrize(("method", "payload", "package"), **_table(PUA_CALLS))
def test_pua_publish_variants_pass_their_package_and_the_events_own_payload_by_default(
    method: str, payload: Any, package: str | None
) -> None:
    """pua_publish* send the given payload (default: this event's payload) and their package."""
    kz, services = _kz(dict(EVENT))
    result = getattr(kz, method)() if payload is None else getattr(kz, method)(payload)
    assert result == {"call": "pua_publish"}
    assert services.calls == [("pua_publish", kz.payload if payload is None else payload, package)]
    assert services.calls[0][1] is (kz.payload if payload is None else payload)


def test_pua_publish_with_an_empty_dict_sends_that_dict_not_the_event() -> None:
    """Only None means 'this event'; an explicit empty payload is passed as is."""
    kz, services = _kz(dict(EVENT))
    kz.pua_publish_presence({})
    assert services.calls == [("pua_publish", {}, "presence")]


# ---------------------------------------------------------------------------------------------
# Subscribe

PRESENCE = {
    "exchange": "presence",
    "type": "topic",
    "queue": "presence-dialog-h",
    "routing": ["dialog.*.*", "update.*.*"],
    "exclusive": False,
    "federate": True,
}

# (id, args to kz.subscribe, expected Subscription)
SUBSCRIBES: list[tuple[str, tuple[Any, ...], Subscription]] = [
    ("json-dict", (PRESENCE,), parse_subscription(PRESENCE)),
    (
        "json-text-lenient",
        ("{'exchange':'dialoginfo','type':'direct','queue':'BLF-QUEUE-h','routing':'BLF-h',}",),
        Subscription(
            exchange=ExchangeDecl("dialoginfo", "direct"),
            queue=QueueDecl("BLF-QUEUE-h", auto_delete=True),
            routing_keys=("BLF-h",),
        ),
    ),
    (
        "json-no-ack-0",
        (
            {
                "exchange": "x",
                "type": "topic",
                "queue": "q",
                "no_ack": 0,
                "durable": 1,
                "auto_delete": 0,
            },
        ),
        Subscription(
            exchange=ExchangeDecl("x", "topic", durable=True),
            queue=QueueDecl("q", durable=True, auto_delete=False),
            routing_keys=("",),
            ack_mode=AckMode.AFTER_HANDLER,
        ),
    ),
    (
        "four-args",
        ("nodes", "fanout", "nodes-h", ""),
        Subscription(
            exchange=ExchangeDecl("nodes", "fanout"), queue=QueueDecl("nodes-h"), routing_keys=("",)
        ),
    ),
    (
        "four-args-routing-key",
        ("ex", "topic", "q", "a.#"),
        subscription_from_args("ex", "topic", "q", "a.#"),
    ),
    (
        "three-args-routing-defaults-empty",
        ("ex", "fanout", "q"),
        subscription_from_args("ex", "fanout", "q", ""),
    ),
]


@pytest.mark.parametrize(("args", "expected"), **_table(SUBSCRIBES))
def test_subscribe_hands_the_parsed_subscription_to_the_services(
    args: tuple[Any, ...], expected: Subscription
) -> None:
    """The JSON form goes through parse_subscription, the 4-argument form subscription_from_args."""
    kz, services = _kz(event_name="kazoo:mod-init")
    assert kz.subscribe(*args) is None
    assert services.subscriptions == [expected]


def test_four_argument_subscribe_uses_c_defaults() -> None:
    """4-arg form: flags off, queue auto_delete, one key, broker ack, not federated (§3.4)."""
    kz, services = _kz()
    kz.subscribe("ex", "fanout", "q", "")
    (sub,) = services.subscriptions
    assert sub == Subscription(
        exchange=ExchangeDecl(
            "ex", "fanout", passive=False, durable=False, auto_delete=False, internal=False
        ),
        queue=QueueDecl("q", passive=False, durable=False, exclusive=False, auto_delete=True),
        routing_keys=("",),
        exchange_bindings=(),
        event_key=None,
        event_subkey=None,
        ack_mode=AckMode.BROKER,
        federate=False,
        consistent_worker=False,
        consistent_worker_key=None,
        prefetch=None,
    )


# (id, args, message)
BAD_SUBSCRIBES: list[tuple[str, tuple[Any, ...], str]] = [
    ("dict-with-extra-args", (PRESENCE, "topic"), "takes four strings"),
    ("invalid-json-text", ("{not json",), "not valid JSON"),
    ("json-array", ("[1,2]",), "must be a JSON object"),
    ("no-exchange-no-queue", ({"type": "topic"},), "needs an exchange or a queue"),
    ("four-args-both-names-empty", ("", "fanout", "", ""), "needs an exchange or a queue"),
]


@pytest.mark.parametrize(("args", "message"), **_table(BAD_SUBSCRIBES))
def test_subscribe_refuses_unusable_descriptions_before_reaching_the_services(
    args: tuple[Any, ...], message: str
) -> None:
    """Bad subscribe calls raise UsageError and subscribe nothing."""
    kz, services = _kz()
    with pytest.raises(UsageError, match=message):
        kz.subscribe(*args)
    assert services.subscriptions == []


def test_subscribe_outside_mod_init_raises_what_the_services_raise() -> None:
    """Kz does not judge the route itself: a worker's services refuse and the error propagates."""

    class WorkerServices(FakeServices):
        def subscribe(self, subscription: Subscription) -> None:
            raise UsageError("kz.subscribe() only works in kazoo:mod-init")

    kz = Kz(WorkerServices(), event_name="kazoo:consumer-event")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="only works in kazoo:mod-init"):
        kz.subscribe(PRESENCE)


# ---------------------------------------------------------------------------------------------
# Pure helpers: encode, json, json_count, json_keys

# (id, high-bytes mode from the services, input, encoded)
ENCODES: list[tuple[str, str, str | bytes, str]] = [
    ("at-and-dot", "utf8", "user@domain.com", "user%40domain%2Ecom"),
    ("space-is-plus", "utf8", "a b", "a+b"),
    ("lone-wildcard-kept", "utf8", "*", "*"),
    ("utf8-non-ascii", "utf8", "é", "%C3%A9"),
    ("x86-non-ascii", "x86", "é", "%,3%*9"),
    ("bytes-input", "utf8", b"a.b", "a%2Eb"),
    ("long-input-capped-not-refused", "utf8", "a" * 300, "a" * 255),
]


@pytest.mark.parametrize(("mode", "text", "encoded"), **_table(ENCODES))
def test_encode_uses_the_services_high_byte_mode(
    mode: str, text: str | bytes, encoded: str
) -> None:
    """kz.encode is {kz.encode} with the configured encode_high_bytes; long input is cut."""
    kz, _ = _kz(encode_high_bytes=mode)
    assert kz.encode(text) == encoded


# (id, path, kz.json, kz.json_count) on document D (§15.2)
D_PATHS: list[tuple[str, str, str, int]] = [
    ("first-channel", "Channels[0].switch_url", "sip:a@b", 0),
    ("second-channel", "Channels[1].switch_url", "sip:c@d", 0),
    ("index-out-of-range", "Channels[2].switch_url", "", 0),
    ("negative-index", "Channels[-1].switch_url", "", 0),
    ("atoi-index", "Channels[x].switch_url", "sip:a@b", 0),
    (
        "array",
        "Channels",
        '[ { "switch_url": "sip:a@b", "n": 1 }, { "switch_url": "sip:c@d" } ]',
        2,
    ),
    ("escaped-dot", "a.b%c", "dot", 0),
    ("nested-bool", "a.x.y", "true", 0),
    ("trailing-dot", "a.", '{ "b.c": "dot", "x": { "y": true } }', 0),
    ("number", "n", "42", 0),
    ("float-lexeme-kept", "f", "1.50", 0),
    ("exponent-lexeme-kept", "e", "1e3", 0),
    ("null-is-empty", "z", "", 0),
    ("string-unescaped", "s", 'x/y"q', 0),
    ("nested-array", "arr[2]", "[ 3, 4 ]", 2),
    ("empty-object", "emp", "{ }", 0),
    ("empty-array", "ea", "[ ]", 0),
    ("unicode", "u", "é", 0),
    ("missing", "missing", "", 0),
    ("case-sensitive", "N", "", 0),
    ("empty-path", "", "", 0),
]


@pytest.mark.parametrize(("path", "value", "count"), **_table(D_PATHS))
def test_json_and_json_count_read_the_event_payload(path: str, value: str, count: int) -> None:
    """kz.json(path) / kz.json_count(path) read this event's payload like {kz.json} (§15.2)."""
    kz, _ = _kz(jsonc.loads_object(D_TEXT))
    assert kz.json(path) == value
    assert kz.json_count(path) == count


@pytest.mark.parametrize(
    ("source",),
    [(D_TEXT,), (D_TEXT.encode(),), (jsonc.loads_object(D_TEXT),)],
    ids=["text", "bytes", "dict"],
)
@pytest.mark.parametrize(("path", "value", "count"), **_table(D_PATHS[:8]))
def test_json_and_json_count_read_an_explicit_document(
    source: Any, path: str, value: str, count: int
) -> None:
    """kz.json(doc, path) reads a given document (text, bytes or dict), not the payload."""
    kz, _ = _kz({"Channels": "not these"})
    assert kz.json(source, path) == value
    assert kz.json_count(source, path) == count


# (id, source text, path, kz.json) from the second document of §15.2 and the invalid one
OTHER_DOCS: list[tuple[str, str, str, str]] = [
    ("unclosed-index", '{"a":[10,20,30]}', "a[1", "20"),
    ("junk-after-index", '{"a":[10,20,30]}', "a[1]xyz", "20"),
    ("space-in-key", '{"a b":[5,6,7]}', "a b[2]", "7"),
    ("escaped-dot-key", '{"x.y":{"z":1}}', "x%y.z", "1"),
    ("index-on-string-ignored", '{"k":"v"}', "k[0]", "v"),
    ("into-a-number", '{"a":[10,20,30]}', "a[1].q", ""),
    ("invalid-document", "not json", "a", ""),
]


@pytest.mark.parametrize(("text", "path", "value"), **_table(OTHER_DOCS))
def test_json_on_other_spec_documents(text: str, path: str, value: str) -> None:
    """The remaining §15.2 vectors, through kz.json(doc, path)."""
    kz, _ = _kz()
    assert kz.json(text, path) == value


@pytest.mark.parametrize(
    ("escape", "path", "value"),
    [("%", "a.b%c", "dot"), ("", "a.b%c", ""), ("#", "a.b#c", "dot"), ("#", "a.b%c", "")],
    ids=["percent", "no-escape", "hash", "hash-ignores-percent"],
)
def test_json_uses_the_services_escape_char(escape: str, path: str, value: str) -> None:
    """The json_escape_char from the services decides which character means a literal dot."""
    kz, _ = _kz(jsonc.loads_object(D_TEXT), escape_char=escape)
    assert kz.json(path) == value


# (id, path, keys) on document D
D_KEYS: list[tuple[str, str, list[str]]] = [
    ("root-object", "a", ["b.c", "x"]),
    ("nested-object", "a.x", ["y"]),
    ("object-in-array", "Channels[0]", ["switch_url", "n"]),
    ("empty-object", "emp", []),
    ("array-gives-no-keys", "Channels", []),
    ("scalar-gives-no-keys", "n", []),
    ("missing", "missing", []),
]


@pytest.mark.parametrize(("path", "keys"), **_table(D_KEYS))
def test_json_keys_lists_object_keys_in_document_order(path: str, keys: list[str]) -> None:
    """kz.json_keys(path) and kz.json_keys(doc, path): keys in order, [] for non-objects."""
    kz, _ = _kz(jsonc.loads_object(D_TEXT))
    assert kz.json_keys(path) == keys
    assert kz.json_keys(D_TEXT, path) == keys


async def test_publish_passes_confirm_and_persistent_only_when_asked() -> None:
    services = FakeServices()
    kz = Kz(services)
    kz.publish("e", "r", {"a": 1})
    kz.publish("e", "r", {"a": 1}, confirm=True, persistent=False)
    await kz.apublish("e", "r", "{}", "h=1", confirm=True, persistent=True)
    assert services.calls == [
        ("publish", "e", "r", {"a": 1}, None),
        ("publish", "e", "r", {"a": 1}, None, ("confirm", True), ("persistent", False)),
        ("apublish", "e", "r", "{}", "h=1", ("confirm", True), ("persistent", True)),
    ]
