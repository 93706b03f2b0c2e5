"""kazoo_subscribe descriptions -> declarations (spec §3.4, §6.4, test vectors §15.11)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kazoo_amqp.core.subscription import (
    AckMode,
    ExchangeBinding,
    ExchangeDecl,
    QueueDecl,
    Subscription,
    parse_subscription,
    subscription_from_args,
)
from kazoo_amqp.errors import BadRoutingKey, UsageError

BLF = {"exchange": "dialoginfo", "type": "direct", "queue": "BLF-QUEUE-h", "routing": "BLF-h"}

# §15.11, row by row: description -> (exchange, queue, routing keys, exchange bindings, ack mode)
SPEC_15_11: list[tuple[str, dict[str, Any], Subscription]] = [
    (
        "defaults",
        BLF,
        Subscription(
            exchange=ExchangeDecl("dialoginfo", "direct"),
            queue=QueueDecl("BLF-QUEUE-h", durable=False, exclusive=False, auto_delete=True),
            routing_keys=("BLF-h",),
            ack_mode=AckMode.BROKER,
        ),
    ),
    (
        # C acks on receipt here; we ack after the handler (compat difference).
        "root durable/auto_delete apply to exchange and queue",
        {**BLF, "durable": 1, "auto_delete": 0, "no_ack": 0},
        Subscription(
            exchange=ExchangeDecl("dialoginfo", "direct", durable=True, auto_delete=False),
            queue=QueueDecl("BLF-QUEUE-h", durable=True, auto_delete=False),
            routing_keys=("BLF-h",),
            ack_mode=AckMode.AFTER_HANDLER,
        ),
    ),
    (
        "-def objects",
        {
            "exchange": "x",
            "exchange-def": {"type": "topic", "durable": True},
            "queue": "q",
            "queue-def": {"exclusive": True},
            "routing": ["a.*", "b.#"],
        },
        Subscription(
            exchange=ExchangeDecl("x", "topic", durable=True),
            queue=QueueDecl("q", exclusive=True, auto_delete=True, durable=False),
            routing_keys=("a.*", "b.#"),
        ),
    ),
    (
        "no routing",
        {"exchange": "x", "type": "topic", "queue": "q"},
        Subscription(ExchangeDecl("x", "topic"), QueueDecl("q"), routing_keys=("",)),
    ),
    (
        "non-string non-array routing",
        {"exchange": "x", "type": "topic", "queue": "q", "routing": 5},
        Subscription(ExchangeDecl("x", "topic"), QueueDecl("q"), routing_keys=("",)),
    ),
    (
        "array items through get_string",
        {"exchange": "x", "type": "topic", "queue": "q", "routing": [5, "a"]},
        Subscription(ExchangeDecl("x", "topic"), QueueDecl("q"), routing_keys=("5", "a")),
    ),
    (
        # C keeps only src1 (bug); we keep every entry (compat difference).
        "exchange-bindings all kept",
        {
            "exchange": "dst",
            "type": "topic",
            "queue": "q",
            "routing": "k",
            "exchange-bindings": {
                "src1": {"type": "topic", "routing": "r1"},
                "src2": {"type": "topic", "routing": "r2"},
            },
        },
        Subscription(
            ExchangeDecl("dst", "topic"),
            QueueDecl("q"),
            routing_keys=("k",),
            exchange_bindings=(
                ExchangeBinding(ExchangeDecl("src1", "topic"), ("r1",)),
                ExchangeBinding(ExchangeDecl("src2", "topic"), ("r2",)),
            ),
        ),
    ),
]


@pytest.mark.parametrize(("name", "desc", "expected"), SPEC_15_11, ids=[r[0] for r in SPEC_15_11])
def test_description_gives_the_declarations_of_spec_15_11(
    name: str, desc: dict[str, Any], expected: Subscription
) -> None:
    """Each §15.11 row gives its exchange, queue, routing keys, exchange bindings and ack mode."""
    assert parse_subscription(desc) == expected


def test_four_argument_form_matches_spec_15_11() -> None:
    """kazoo_subscribe("ex","fanout","q","") declares ex/fanout, q auto_delete, key "", no_ack 1."""
    assert subscription_from_args("ex", "fanout", "q", "") == Subscription(
        exchange=ExchangeDecl("ex", "fanout", False, False, False, False),
        queue=QueueDecl("q", False, False, False, True),
        routing_keys=("",),
        ack_mode=AckMode.BROKER,
        federate=False,
        consistent_worker=False,
    )


def test_json_text_and_mapping_give_the_same_subscription() -> None:
    """A description may be given as JSON text or as a mapping."""
    assert parse_subscription(json.dumps(BLF)) == parse_subscription(BLF)


def test_json_text_is_read_with_json_c_leniency() -> None:
    """Single quotes, comments and trailing commas are accepted, as json-c accepts them."""
    text = "{'exchange': 'x', /* c */ 'queue': 'q', 'routing': ['a',],}"
    assert parse_subscription(text).routing_keys == ("a",)


@pytest.mark.parametrize(
    ("desc", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ("null", "must be a JSON object, got null"),
        ('"x"', "must be a JSON object, got a string"),
    ],
)
def test_description_that_is_not_a_json_object_is_a_usage_error(desc: str, fragment: str) -> None:
    """Text that is not a JSON object is rejected (C returns -1)."""
    with pytest.raises(UsageError, match=fragment):
        parse_subscription(desc)


@pytest.mark.parametrize(
    ("value", "durable"),
    [
        (True, True),
        (False, False),
        ("1", True),
        ("0", False),
        ("12x", True),
        ("x", False),
        (1.9, True),
        (0.5, False),
        (None, False),
        ([1], False),
        ({"a": 1}, False),
        (-1, True),
    ],
)
def test_integer_fields_use_json_c_get_int(value: object, durable: bool) -> None:
    """true->1, "1"->1, "12x"->12, 1.9->1, 0.5->0, containers->0, null keeps the default."""
    sub = parse_subscription({"exchange": "x", "queue": "q", "durable": value})
    assert (sub.exchange.durable, sub.queue.durable) == (durable, durable)


def test_null_keeps_the_default_of_an_integer_field() -> None:
    """A JSON null auto_delete leaves the queue's default 1 in place."""
    assert parse_subscription(
        {"exchange": "x", "queue": "q", "auto_delete": None}
    ).queue.auto_delete


@pytest.mark.parametrize(
    ("value", "text"),
    [(5, "5"), (True, "true"), (None, ""), ({"a": "/"}, '{ "a": "\\/" }'), ([1, 2], "[ 1, 2 ]")],
)
def test_string_fields_use_json_c_get_string(value: object, text: str) -> None:
    """Numbers and booleans become their text, objects their spaced JSON, null an empty string."""
    assert parse_subscription({"exchange": value, "queue": "q"}).exchange.name == text


def test_double_keeps_its_lexeme_in_string_fields() -> None:
    """A double read as a string keeps the text it was written with, as json-c does."""
    sub = parse_subscription('{"exchange": "x", "queue": "q", "routing": [1.50, 1e3]}')
    assert sub.routing_keys == ("1.50", "1e3")


def test_root_passive_applies_to_exchange_and_queue_without_def_objects() -> None:
    """Without -def objects root passive is read for both declarations; internal/exclusive too."""
    sub = parse_subscription(
        {"exchange": "x", "queue": "q", "passive": 1, "internal": 1, "exclusive": 1}
    )
    assert sub.exchange == ExchangeDecl("x", "", passive=True, internal=True)
    assert sub.queue == QueueDecl("q", passive=True, exclusive=True)


def test_def_object_replaces_the_root_for_its_declaration_only() -> None:
    """With only exchange-def, the exchange ignores root flags and the queue still reads them."""
    sub = parse_subscription(
        {
            "exchange": "x",
            "type": "fanout",
            "durable": 1,
            "auto_delete": 0,
            "queue": "q",
            "exchange-def": {"type": "topic"},
        }
    )
    assert sub.exchange == ExchangeDecl("x", "topic")
    assert sub.queue == QueueDecl("q", durable=True, auto_delete=False)


def test_null_def_object_means_read_from_the_root() -> None:
    """A JSON null exchange-def counts as absent."""
    sub = parse_subscription({"exchange": "x", "type": "topic", "queue": "q", "exchange-def": None})
    assert sub.exchange.type == "topic"


@pytest.mark.parametrize("key", ["exchange-def", "queue-def", "exchange-bindings"])
def test_def_or_bindings_that_is_not_an_object_is_a_usage_error(key: str) -> None:
    """A -def or exchange-bindings value that is not an object is rejected, naming the key."""
    with pytest.raises(UsageError, match=key):
        parse_subscription({"exchange": "x", "queue": "q", key: [1]})


def test_null_items_in_routing_are_skipped() -> None:
    """JSON null items in a routing array are skipped (the C module crashes)."""
    sub = parse_subscription({"exchange": "x", "queue": "q", "routing": ["a", None, "b"]})
    assert sub.routing_keys == ("a", "b")


def test_empty_routing_array_gives_no_binding() -> None:
    """An empty routing array means no queue.bind at all, as in C."""
    assert parse_subscription({"exchange": "x", "queue": "q", "routing": []}).routing_keys == ()


def test_exchange_binding_entry_without_routing_is_dropped_with_a_warning() -> None:
    """Entries without routing (or not objects) are dropped, as C drops them, with a warning."""
    sub = parse_subscription(
        {
            "exchange": "dst",
            "queue": "q",
            "exchange-bindings": {
                "nor": {"type": "topic"},
                "bad": 5,
                "ok": {"type": "direct", "durable": 1, "routing": ["a", "b"]},
            },
        }
    )
    assert sub.exchange_bindings == (
        ExchangeBinding(ExchangeDecl("ok", "direct", durable=True), ("a", "b")),
    )
    assert len(sub.warnings) == 2
    assert "'nor'" in sub.warnings[0] and "'bad'" in sub.warnings[1]


@pytest.mark.parametrize(
    ("fields", "mode", "warned"),
    [
        ({}, AckMode.BROKER, False),
        ({"no_ack": 1}, AckMode.BROKER, False),
        ({"no_ack": True}, AckMode.BROKER, False),
        ({"no_ack": 0}, AckMode.AFTER_HANDLER, False),
        ({"no_ack": False}, AckMode.AFTER_HANDLER, False),
        ({"no_ack": "0"}, AckMode.AFTER_HANDLER, False),
        ({"no_ack": 0, "wait_for_consumer_ack": 1}, AckMode.AFTER_HANDLER, False),
        ({"no_ack": 0, "wait_for_consumer_ack": True}, AckMode.AFTER_HANDLER, False),
        ({"no_ack": 0, "wait_for_consumer_ack": 0}, AckMode.ON_RECEIPT, False),
        ({"no_ack": 0, "wait_for_consumer_ack": False}, AckMode.ON_RECEIPT, False),
        ({"wait_for_consumer_ack": 1}, AckMode.AFTER_HANDLER, False),
        ({"wait_for_consumer_ack": 0}, AckMode.BROKER, False),
        ({"no_ack": 1, "wait_for_consumer_ack": 1}, AckMode.BROKER, True),
        ({"no_ack": 1, "wait_for_consumer_ack": 0}, AckMode.BROKER, False),
        ({"no_ack": None, "wait_for_consumer_ack": None}, AckMode.BROKER, False),
    ],
)
def test_ack_mode_follows_no_ack_and_wait_for_consumer_ack(
    fields: dict[str, Any], mode: AckMode, warned: bool
) -> None:
    """no_ack=1 -> broker; no_ack=0 -> after handler unless wait_for_consumer_ack=0 (on receipt)."""
    sub = parse_subscription({"exchange": "x", "queue": "q", **fields})
    assert sub.ack_mode is mode
    assert sub.warnings == (("wait_for_consumer_ack ignored because no_ack=1",) if warned else ())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"event_key": "Cat", "event_subkey": "Name"}, ("Cat", "Name")),
        ({"event_key": "", "event_subkey": ""}, (None, None)),
        ({"event_key": None}, (None, None)),
        ({}, (None, None)),
    ],
)
def test_empty_event_key_means_unset(fields: dict[str, Any], expected: tuple[object, ...]) -> None:
    """event_key/event_subkey override the module defaults; an empty string means not set."""
    sub = parse_subscription({"exchange": "x", "queue": "q", **fields})
    assert (sub.event_key, sub.event_subkey) == expected


def test_federate_and_consistent_worker_fields_are_read() -> None:
    """federate, consistent-worker and consistent-worker-key are carried over."""
    sub = parse_subscription(
        {
            "exchange": "x",
            "queue": "q",
            "federate": True,
            "consistent-worker": "1",
            "consistent-worker-key": "Call-ID",
        }
    )
    assert (sub.federate, sub.consistent_worker, sub.consistent_worker_key) == (
        True,
        True,
        "Call-ID",
    )


def test_typical_2600hz_presence_binding() -> None:
    """The §3.4 example: root exclusive reaches the queue, federate is set, name is ignored."""
    sub = parse_subscription(
        '{"name": "presence", "exchange":"presence","type":"topic",'
        '"queue":"presence-dialog-HOST","routing":["dialog.*.*","update.*.*"],'
        '"exclusive":false,"federate":true}'
    )
    assert sub.exchange == ExchangeDecl("presence", "topic")
    assert sub.queue == QueueDecl("presence-dialog-HOST", exclusive=False)
    assert sub.routing_keys == ("dialog.*.*", "update.*.*")
    assert sub.federate and sub.ack_mode is AckMode.BROKER


@pytest.mark.parametrize(("value", "expected"), [(None, None), (1, 1), (500, 500), (65535, 65535)])
def test_prefetch_is_an_optional_positive_integer(value: object, expected: int | None) -> None:
    """Our own prefetch field: absent or null means the config's prefetch."""
    assert (
        parse_subscription({"exchange": "x", "queue": "q", "prefetch": value}).prefetch == expected
    )


@pytest.mark.parametrize("value", [0, -1, 65536, "10", 1.5, True])
def test_bad_prefetch_is_a_usage_error(value: object) -> None:
    """prefetch must be an integer from 1 to 65535; strings, floats and booleans are refused."""
    with pytest.raises(UsageError, match="prefetch"):
        parse_subscription({"exchange": "x", "queue": "q", "prefetch": value})


@pytest.mark.parametrize(
    "desc",
    [{}, {"exchange": "", "queue": ""}, {"routing": "k", "type": "topic"}],
)
def test_subscription_without_exchange_and_queue_is_a_usage_error(desc: dict[str, Any]) -> None:
    """Neither an exchange nor a queue cannot be declared or consumed."""
    with pytest.raises(UsageError, match="needs an exchange or a queue"):
        parse_subscription(desc)


def test_four_argument_form_without_exchange_and_queue_is_a_usage_error() -> None:
    """The 4-argument form applies the same check."""
    with pytest.raises(UsageError, match="needs an exchange or a queue"):
        subscription_from_args("", "direct", "", "k")


@pytest.mark.parametrize(
    ("desc", "expected"),
    [
        ({"queue": "q"}, ("", "q")),
        ({"exchange": "x"}, ("x", "")),
    ],
)
def test_exchange_or_queue_alone_is_accepted(
    desc: dict[str, Any], expected: tuple[str, str]
) -> None:
    """An empty exchange or an empty (broker-named) queue alone is kept, as in C."""
    sub = parse_subscription(desc)
    assert (sub.exchange.name, sub.queue.name) == expected


def test_four_argument_form_refuses_non_strings() -> None:
    """Every argument of the 4-argument form must be a string."""
    with pytest.raises(UsageError, match="routing_key must be a string"):
        subscription_from_args("x", "topic", "q", 5)  # type: ignore[arg-type]


def test_routing_key_over_255_bytes_is_a_bad_routing_key() -> None:
    """A routing key longer than an AMQP short string is refused before any declaration."""
    with pytest.raises(BadRoutingKey):
        parse_subscription({"exchange": "x", "queue": "q", "routing": "é" * 128})


@pytest.mark.parametrize("field", ["exchange", "queue"])
def test_name_over_255_bytes_is_a_usage_error(field: str) -> None:
    """Exchange and queue names longer than 255 bytes are refused."""
    desc = {"exchange": "x", "queue": "q", field: "n" * 256}
    with pytest.raises(UsageError, match=f"{field} name"):
        parse_subscription(desc)


def test_subscription_is_frozen_and_hashable() -> None:
    """Subscriptions are immutable value objects (usable as dict keys by the declarer)."""
    sub = parse_subscription(BLF)
    with pytest.raises(AttributeError):
        sub.federate = True  # type: ignore[misc]
    assert {sub: 1}[parse_subscription(BLF)] == 1


# "queue-args" / "exchange-args": description -> the arguments tables of the declares
ARGS_TABLE: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("absent: no arguments, like C", {}, {}, {}),
    ("null: no arguments", {"queue-args": None, "exchange-args": None}, {}, {}),
    (
        "quorum queue with a dead-letter exchange",
        {
            "durable": 1,
            "auto_delete": 0,
            "queue-args": {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"},
        },
        {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"},
        {},
    ),
    (
        "numbers, booleans, nested tables and arrays",
        {
            "queue-args": {"x-max-length": 10, "x-overflow": "reject-publish", "x-single": True},
            "exchange-args": {"alternate-exchange": "ae", "x-list": [1, "a"], "x-t": {"k": 1.5}},
        },
        {"x-max-length": 10, "x-overflow": "reject-publish", "x-single": True},
        {"alternate-exchange": "ae", "x-list": [1, "a"], "x-t": {"k": 1.5}},
    ),
]


@pytest.mark.parametrize(
    ("name", "fields", "queue_args", "exchange_args"), ARGS_TABLE, ids=[r[0] for r in ARGS_TABLE]
)
def test_queue_and_exchange_args_are_passed_to_the_declares(
    name: str, fields: dict[str, Any], queue_args: dict[str, Any], exchange_args: dict[str, Any]
) -> None:
    sub = parse_subscription({**BLF, **fields})
    assert dict(sub.queue.arguments) == queue_args
    assert dict(sub.exchange.arguments) == exchange_args


def test_declare_args_are_read_from_json_text_too() -> None:
    text = json.dumps(QUORUM)
    assert dict(parse_subscription(text).queue.arguments) == {"x-queue-type": "quorum"}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"queue-args": "quorum"}, "'queue-args' must be an object"),
        ({"exchange-args": [1]}, "'exchange-args' must be an object"),
        ({"queue-args": {"x-a": None}}, "value of 'x-a'"),
        ({"queue-args": {"": 1}}, "empty or non-string name"),
        ({"queue-args": {"x-" + "a" * 300: 1}}, "over 255 bytes"),
    ],
)
def test_bad_declare_args_are_a_usage_error(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_subscription({**BLF, **fields})


# issue 8: text that cannot be sent as UTF-8 is refused up front, naming the field


@pytest.mark.parametrize(
    ("desc", "field"),
    [
        ({"exchange": "ex\ud800", "queue": "q"}, "'exchange'"),
        ({"queue": "q", "routing": ["a", "b\udcff"]}, "'routing'[1]"),
        ({"queue": "q", "queue-args": {"x-dead-letter-exchange": "\ud800"}}, "x-dead-letter"),
        ('{"queue": "q", "event_key": "\\ud800"}', "'event_key'"),
    ],
)
def test_a_lone_surrogate_in_a_description_is_a_usage_error_naming_the_field(
    desc: object, field: str
) -> None:
    with pytest.raises(UsageError, match="lone surrogate") as info:
        parse_subscription(desc)  # type: ignore[arg-type]
    assert field in str(info.value)


def test_a_description_nested_too_deeply_is_a_usage_error() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(200):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(UsageError, match="nested"):
        parse_subscription({"queue": "q", "queue-args": deep})


QUORUM = {**BLF, "durable": 1, "auto_delete": 0, "queue-args": {"x-queue-type": "quorum"}}


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"durable": 0}, "durable must be 1"),
        ({"auto_delete": 1}, "auto_delete must be 0"),
        ({"exclusive": 1}, "exclusive must be 0"),
        ({"queue-def": {"durable": 1}}, "auto_delete must be 0"),  # queue-def's default applies
        ({"queue-args": {"x-queue-type": "stream"}, "durable": 0}, "stream queue"),
    ],
)
def test_quorum_queue_with_flags_rabbitmq_refuses_is_a_usage_error_naming_the_fix(
    fields: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(UsageError, match=fragment) as info:
        parse_subscription({**QUORUM, **fields})
    assert '"durable": 1, "auto_delete": 0' in str(info.value)


def test_quorum_queue_durable_and_not_auto_delete_is_accepted() -> None:
    sub = parse_subscription(QUORUM)
    assert (sub.queue.durable, sub.queue.auto_delete, sub.queue.exclusive) == (True, False, False)
    classic = parse_subscription({**BLF, "queue-args": {"x-queue-type": "classic"}})
    assert classic.queue.auto_delete  # only replicated types carry the constraint
