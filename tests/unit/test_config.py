"""The TOML config: every spec §2 parameter plus our own keys (core/config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp.core.config import (
    KNOWN_KEYS,
    Settings,
    describe,
    load_config,
    settings_from_mapping,
    sqlite_path,
)
from kazoo_amqp.errors import ConfigError

BASE = "/etc/kazoo-amqp"
VERSION = "0.1.0"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kazoo-amqp.toml"


def settings(**data: Any) -> Settings:
    """Settings from a minimal valid config plus ``data``."""
    return settings_from_mapping(
        {"node_hostname": "sip1.example.com", **data}, base_dir=BASE, default_app_version=VERSION
    )


def config_error(**data: Any) -> ConfigError:
    """The ConfigError raised for a minimal config plus ``data``."""
    with pytest.raises(ConfigError) as info:
        settings(**data)
    return info.value


# --------------------------------------------------------------------------------------------
# Defaults


DEFAULTS: list[tuple[str, object]] = [
    ("amqp_primary_zone", "local"),
    ("amqp_max_channels", 50),
    ("workers", 4),
    ("amqp_consumer_event_key", "Event-Category"),
    ("amqp_consumer_event_subkey", "Event-Name"),
    ("amqp_query_timeout", 2.0),
    ("amqp_query_timeout_avp", None),
    ("amqp_connect_timeout", 1.0),
    ("amqp_heartbeats", 30),
    ("amqps_ca_cert", None),
    ("amqps_cert", None),
    ("amqps_key", None),
    ("amqps_verify_peer", True),
    ("amqps_verify_hostname", True),
    ("amqp_waitframe_timeout", 0.1),
    ("amqp_command_hashtable_size", 2048),
    ("json_escape_char", "%"),
    ("app_name", "kamailio"),
    ("event_callback", None),
    ("pua_mode", True),
    ("db_url", "sqlite:///etc/kazoo-amqp/kazoo-amqp.db"),
    ("presentity_table", "presentity"),
    ("pua_include_entity", True),
    ("pua_lock_type", 1),
    ("amqp_timer_process_interval", 200),
    ("amqp_consumer_ack_timeout", 0.1),
    ("amqp_interprocess_timeout", 0.1),
    ("amqp_internal_loop_count", 5),
    ("amqp_consumer_loop_count", 10),
    ("amqp_consumer_ack_loop_count", 20),
    ("consume_messages_on_reconnect", True),
    ("single_consumer_on_reconnect", True),
    ("use_federated_exchange", False),
    ("federated_exchange", "federation"),
    ("presence_use_full_entity", False),
    ("amqp_result_avp", "$avp(amqp_result)"),
    ("routes", None),
    ("socket", "/etc/kazoo-amqp/kazoo-amqp.sock"),
    ("app_version", "0.1.0"),
    ("publish_buffer_size", 10000),
    ("publish_buffer_timeout_ms", 10000),
    ("publish_confirm_timeout_ms", 5000),
    ("publish_persistent", False),
    ("prefetch", 256),
    ("handler_timeout_ms", 30000),
    ("max_message_bytes", 16 * 1024 * 1024),
    ("max_redeliveries", 2),
    ("reconnect_min_ms", 100),
    ("reconnect_max_ms", 10000),
    ("socket_mode", 0o660),
    ("socket_group", None),
    ("socket_pending_bytes", 64 * 1024 * 1024),
    ("encode_high_bytes", "utf8"),
    ("late_replies", "drop"),
    ("kamailio_rpc", None),
    ("log_level", "info"),
    ("log_format", "text"),
    ("http_listen", None),
    ("kamailio", None),
]


@pytest.mark.parametrize(("field", "default"), DEFAULTS)
def test_minimal_config_gets_the_documented_default(field: str, default: object) -> None:
    """With only node_hostname set, every other setting has its documented default."""
    assert getattr(settings(), field) == default


def test_every_settings_field_has_a_default_test() -> None:
    """The defaults table above covers every field except the derived ones."""
    derived = {"node_hostname", "brokers", "notes"}
    assert {f.name for f in dataclasses.fields(Settings)} - derived == {f for f, _ in DEFAULTS}


def test_settings_class_defaults_match_the_config_defaults() -> None:
    """Building Settings directly gives the same defaults as an (almost) empty config."""
    parsed = settings()
    direct = Settings(
        node_hostname=parsed.node_hostname,
        brokers=parsed.brokers,
        socket=parsed.socket,
        db_url=parsed.db_url,
        app_version=parsed.app_version,
        notes=parsed.notes,
    )
    assert direct == parsed


def test_default_broker_is_local_guest_with_a_note() -> None:
    """Without amqp_connection the broker is guest@127.0.0.1:5672, and a note says so."""
    result = settings()
    (broker,) = result.brokers
    assert (broker.host, broker.port, broker.user, broker.vhost) == (
        "127.0.0.1",
        5672,
        "guest",
        "/",
    )
    assert result.notes == ("amqp_connection is not set; using amqp://guest:***@127.0.0.1:5672",)


# Every parameter name of spec §2.1 and §2.2 (timer pairs by their _sec/_micro names).
SPEC_PARAMETERS = [
    "node_hostname",
    "amqp_connection",
    "amqp_primary_zone",
    "amqp_max_channels",
    "amqp_consumer_processes",
    "amqp_consumer_workers",
    "amqp_consumer_event_key",
    "amqp_consumer_event_subkey",
    "amqp_query_timeout_sec",
    "amqp_query_timeout_micro",
    "amqp_query_timeout_avp",
    "amqp_connect_timeout_sec",
    "amqp_connect_timeout_micro",
    "amqp_heartbeats",
    "amqps_ca_cert",
    "amqps_cert",
    "amqps_key",
    "amqps_verify_peer",
    "amqps_verify_hostname",
    "amqp_waitframe_timeout_sec",
    "amqp_waitframe_timeout_micro",
    "amqp_command_hashtable_size",
    "json_escape_char",
    "app_name",
    "event_callback",
    "pua_mode",
    "db_url",
    "presentity_table",
    "pua_include_entity",
    "pua_lock_type",
    "amqp_timer_process_interval",
    "amqp_timmer_process_interval",
    "amqp_consumer_ack_timeout_sec",
    "amqp_consumer_ack_timeout_micro",
    "amqp_interprocess_timeout_sec",
    "amqp_interprocess_timeout_micro",
    "amqp_internal_loop_count",
    "amqp_consumer_loop_count",
    "amqp_consumer_ack_loop_count",
    "consume_messages_on_reconnect",
    "single_consumer_on_reconnect",
    "use_federated_exchange",
    "federated_exchange",
    "presence_use_full_entity",
    "amqp_result_avp",
]


def test_every_spec_parameter_is_a_known_key() -> None:
    """Every module parameter of spec §2 is accepted under its own name."""
    assert set(SPEC_PARAMETERS) <= KNOWN_KEYS


# --------------------------------------------------------------------------------------------
# The example file


def test_example_config_file_parses() -> None:
    """examples/kazoo-amqp.toml is valid, names sbc1.example.net and resolves its paths."""
    result = load_config(str(EXAMPLE), default_app_version=VERSION)
    examples = str(EXAMPLE.parent)
    assert result.node_hostname == "sbc1.example.net"
    assert [b.redacted for b in result.brokers] == ["amqp://guest:***@127.0.0.1:5672"]
    assert result.routes == f"{examples}/routes.py"
    assert result.socket == f"{examples}/kazoo-amqp.sock"
    assert result.db_url == f"sqlite://{examples}/kazoo-amqp.db"
    # the C defaults it shows are not used as given (config_keys.EFFECTIVE): one note each
    assert [n.split(":")[0] for n in result.notes] == [
        "amqp_heartbeats = 0",
        "amqp_connect_timeout = 0.2",
    ]


def test_example_config_file_shows_the_defaults() -> None:
    """Apart from node_hostname, routes and the broker list, the example sets only defaults."""
    from_file = load_config(str(EXAMPLE), default_app_version=VERSION)
    base = settings_from_mapping(
        {"node_hostname": "sbc1.example.net", "routes": "routes.py"},
        base_dir=str(EXAMPLE.parent),
        default_app_version=VERSION,
    )
    assert dataclasses.replace(from_file, brokers=base.brokers, notes=()) == dataclasses.replace(
        base, notes=()
    )


# --------------------------------------------------------------------------------------------
# node_hostname


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "config key 'node_hostname' is missing: it is required"),
        ({"node_hostname": ""}, "config key 'node_hostname' = \"\": must not be empty"),
        ({"node_hostname": 5}, "config key 'node_hostname' = 5: must be a string"),
    ],
)
def test_node_hostname_is_required_and_non_empty(data: dict[str, Any], fragment: str) -> None:
    """node_hostname must be a non-empty string; the message gives an example."""
    with pytest.raises(ConfigError, match=fragment) as info:
        settings_from_mapping(data, base_dir=BASE, default_app_version=VERSION)
    assert 'e.g. node_hostname = "' in str(info.value)
    assert info.value.key == "node_hostname"


# --------------------------------------------------------------------------------------------
# Brokers


def test_brokers_keep_config_order_with_server_ids_from_one() -> None:
    """Spec §15.8: a, zone=b;b, c give ids 1 (primary), 2 (zone b), 3 (primary)."""
    result = settings(amqp_connection=["amqp://a", "zone=b;amqp://b", "amqp://c"])
    assert [(b.server_id, b.host, b.zone, b.primary) for b in result.brokers] == [
        (1, "a", "local", True),
        (2, "b", "b", False),
        (3, "c", "local", True),
    ]
    assert result.notes == ()


def test_single_string_connection_is_one_broker() -> None:
    """amqp_connection may be one string instead of a list."""
    (broker,) = settings(amqp_connection="amqps://u:p@h/v").brokers
    assert (broker.host, broker.port, broker.tls, broker.vhost) == ("h", 5671, True, "v")


@pytest.mark.parametrize(
    "order",
    [
        {"amqp_primary_zone": "east", "amqp_connection": ["zone=east;amqp://a", "amqp://b"]},
        {"amqp_connection": ["zone=east;amqp://a", "amqp://b"], "amqp_primary_zone": "east"},
    ],
)
def test_primary_zone_applies_whatever_the_key_order(order: dict[str, Any]) -> None:
    """amqp_primary_zone works before or after amqp_connection (C needs it before)."""
    result = settings(**order)
    assert [(b.zone, b.primary) for b in result.brokers] == [("east", True), ("east", True)]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "needs at least one broker URL"),
        (5, "must be a URL string or a list of them"),
        (["amqp://a", 5], "must be a string"),
        (["amqp://a", "amqp://h:abc"], "port 'abc' is not a number"),
        ("zone=east", "needs a ';'"),
        (["zone=b;amqp://b"], "no broker is in the primary zone 'local'"),
    ],
)
def test_bad_amqp_connection_is_a_config_error(value: object, fragment: str) -> None:
    """An empty list, a wrong type, a bad URL or no primary-zone broker is refused."""
    error = config_error(amqp_connection=value)
    assert fragment in str(error)
    assert error.key == "amqp_connection"


def test_broker_password_is_not_in_error_messages() -> None:
    """Errors about amqp_connection redact the password."""
    error = config_error(amqp_connection=["amqp://u:hunter2@h:x"])
    assert "hunter2" not in str(error)


def test_primary_zone_must_be_a_non_empty_name_without_semicolon() -> None:
    """amqp_primary_zone cannot be empty or contain ';'."""
    assert "must not be empty" in str(config_error(amqp_primary_zone=""))
    assert "must not contain ';'" in str(config_error(amqp_primary_zone="a;b"))


# --------------------------------------------------------------------------------------------
# Workers


@pytest.mark.parametrize(
    ("data", "workers"),
    [
        ({}, 4),
        ({"amqp_consumer_processes": 8}, 8),
        ({"amqp_consumer_workers": 6}, 6),
        ({"amqp_consumer_processes": 2, "amqp_consumer_workers": 2}, 2),
        ({"amqp_consumer_processes": True}, 1),
    ],
)
def test_workers_come_from_amqp_consumer_processes_or_its_synonym(
    data: dict[str, Any], workers: int
) -> None:
    """amqp_consumer_processes (default 4) sets the workers; amqp_consumer_workers is a synonym."""
    assert settings(**data).workers == workers


def test_different_processes_and_workers_is_a_config_error() -> None:
    """Both keys with different values cannot be reconciled; the message says to keep one."""
    error = config_error(amqp_consumer_processes=1, amqp_consumer_workers=8)
    assert error.key == "amqp_consumer_workers"
    assert "Keep only one of the two keys" in str(error)


def test_error_message_names_key_value_meaning_and_example() -> None:
    """The house format: key, value, what it must be and why, then an example."""
    assert str(config_error(amqp_consumer_processes=-1)) == (
        "config key 'amqp_consumer_processes' = -1: must be an integer from 1 to 1024 "
        "(number of worker processes running event routes), e.g. amqp_consumer_processes = 4"
    )


# --------------------------------------------------------------------------------------------
# Types and ranges


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("amqp_max_channels", "50", "must be an integer from 1 to 65535"),
        ("amqp_max_channels", 0, "must be an integer from 1 to 65535"),
        ("amqp_max_channels", 2.5, "must be an integer from 1 to 65535"),
        ("amqp_heartbeats", -1, "must be an integer from 0 to 65535"),
        ("amqp_command_hashtable_size", 0, "must be a positive integer"),
        ("pua_lock_type", 3, "must be an integer from 0 to 2"),
        ("prefetch", 0, "must be an integer from 1 to 65535"),
        ("publish_buffer_size", -1, "must be a non-negative integer"),
        ("publish_buffer_timeout_ms", 0, "must be an integer from 1 to 86400000"),
        ("publish_confirm_timeout_ms", 0, "must be an integer from 1 to 86400000"),
        ("handler_timeout_ms", 0, "must be an integer from 1 to 86400000"),
        ("max_message_bytes", 0, "must be a positive integer"),
        ("max_redeliveries", -1, "must be a non-negative integer"),
        ("amqp_internal_loop_count", 0, "must be a positive integer"),
        ("amqp_consumer_loop_count", -3, "must be a positive integer"),
        ("amqp_consumer_ack_loop_count", 0, "must be a positive integer"),
        ("amqp_timer_process_interval", 0, "must be a positive integer"),
        ("amqps_verify_peer", 2, "must be true or false, or 1 or 0"),
        ("pua_mode", "yes", "must be true or false, or 1 or 0"),
        ("app_name", 1, "must be a string"),
        ("amqp_consumer_event_key", "", "must not be empty"),
        ("encode_high_bytes", "latin1", 'must be one of "utf8", "x86"'),
        ("late_replies", "keep", 'must be one of "drop", "route"'),
        ("log_level", "verbose", 'must be one of "debug", "info"'),
        ("event_callback", "not a name", "must be a Python function name"),
        ("presentity_table", "presentity; drop", "must be a plain SQL table name"),
        ("routes", "my-routes", "neither a .py file path nor a Python module name"),
        ("socket", "", "must not be empty"),
        ("app_version", "", "must not be empty"),
    ],
)
def test_wrong_type_or_range_is_a_config_error(key: str, value: object, fragment: str) -> None:
    """Each key refuses values of the wrong type or range, naming the key, value and fix."""
    error = config_error(**{key: value})
    message = str(error)
    assert message.startswith(f"config key {key!r} = ")
    assert fragment in message
    assert f", e.g. {key} = " in message
    assert error.key == key


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("amqp_max_channels", True, 1),
        ("amqps_verify_peer", 0, False),
        ("amqps_verify_hostname", False, False),
        ("pua_mode", 0, False),
        ("pua_include_entity", 0, False),
        ("consume_messages_on_reconnect", False, False),
        ("use_federated_exchange", 1, True),
        ("log_level", "DEBUG", "debug"),
        ("encode_high_bytes", "x86", "x86"),
        ("late_replies", "route", "route"),
        ("event_callback", "ksr_kazoo_event", "ksr_kazoo_event"),
        ("event_callback", "", None),
        ("amqps_ca_cert", "", None),
        ("presentity_table", "kamailio.presentity", "kamailio.presentity"),
        ("publish_buffer_size", 0, 0),
        ("amqp_heartbeats", 30, 30),
        ("app_version", "9.9", "9.9"),
    ],
)
def test_accepted_values_are_normalised(key: str, value: object, expected: object) -> None:
    """Booleans stand for 0/1, flags become bools, log levels are lower-cased, "" means unset."""
    assert getattr(settings(**{key: value}), key) == expected


@pytest.mark.parametrize(("value", "expected"), [("%", "%"), ("", ""), ("#!", "#")])
def test_json_escape_char_keeps_only_the_first_character(value: str, expected: str) -> None:
    """Only the first character is used; an empty string means no escape."""
    assert settings(json_escape_char=value).json_escape_char == expected


def test_long_json_escape_char_gets_a_note() -> None:
    """A longer value is accepted as in C, with a note saying what is used."""
    assert any("only the first character '#'" in n for n in settings(json_escape_char="#!").notes)


def test_reconnect_max_below_min_is_a_config_error() -> None:
    """reconnect_max_ms must not be less than reconnect_min_ms."""
    error = config_error(reconnect_min_ms=5000, reconnect_max_ms=1000)
    assert error.key == "reconnect_max_ms"


@pytest.mark.parametrize(
    ("data", "key"),
    [({"amqps_cert": "/c.pem"}, "amqps_cert"), ({"amqps_key": "/k.pem"}, "amqps_key")],
)
def test_client_certificate_needs_both_cert_and_key(data: dict[str, Any], key: str) -> None:
    """One of amqps_cert / amqps_key without the other is refused (C silently ignores it)."""
    error = config_error(**data)
    assert error.key == key and "needs both" in str(error)


def test_hostname_check_without_peer_check_gets_a_note() -> None:
    """amqps_verify_hostname has no effect without amqps_verify_peer; a note says so."""
    assert any(
        "amqps_verify_hostname has no effect" in n for n in settings(amqps_verify_peer=0).notes
    )


# --------------------------------------------------------------------------------------------
# Timers


@pytest.mark.parametrize(
    ("data", "field", "seconds"),
    [
        ({"amqp_query_timeout_sec": 5}, "amqp_query_timeout", 5.0),
        ({"amqp_query_timeout_micro": 500000}, "amqp_query_timeout", 2.5),
        ({"amqp_query_timeout_sec": 0, "amqp_query_timeout_micro": 1}, "amqp_query_timeout", 1e-6),
        ({"amqp_query_timeout": 1.5}, "amqp_query_timeout", 1.5),
        ({"amqp_query_timeout": 3}, "amqp_query_timeout", 3.0),
        ({"amqp_connect_timeout_sec": 1}, "amqp_connect_timeout", 1.2),
        (
            {"amqp_connect_timeout_micro": 0, "amqp_connect_timeout_sec": 2},
            "amqp_connect_timeout",
            2.0,
        ),
        ({"amqp_waitframe_timeout_micro": 0}, "amqp_waitframe_timeout", 0.0),
        ({"amqp_consumer_ack_timeout_sec": 1}, "amqp_consumer_ack_timeout", 1.1),
        ({"amqp_interprocess_timeout_micro": 0}, "amqp_interprocess_timeout", 0.0),
        ({"amqp_query_timeout_sec": True}, "amqp_query_timeout", 1.0),
    ],
)
def test_timer_pair_becomes_seconds(data: dict[str, Any], field: str, seconds: float) -> None:
    """NAME_sec + NAME_micro / 1e6 (each defaulting separately), or NAME in seconds."""
    assert getattr(settings(**data), field) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"amqp_query_timeout_micro": 1_000_000}, "amqp_query_timeout_micro", "from 0 to 999999"),
        ({"amqp_query_timeout_micro": -1}, "amqp_query_timeout_micro", "from 0 to 999999"),
        ({"amqp_query_timeout_sec": -1}, "amqp_query_timeout_sec", "an integer from 0 to 86400"),
        ({"amqp_query_timeout_sec": 1.5}, "amqp_query_timeout_sec", "an integer from 0 to 86400"),
        ({"amqp_query_timeout_sec": "2"}, "amqp_query_timeout_sec", "an integer from 0 to 86400"),
        ({"amqp_query_timeout_sec": 0}, "amqp_query_timeout_sec", "never waits forever"),
        (
            {"amqp_query_timeout_sec": 0, "amqp_query_timeout_micro": 0},
            "amqp_query_timeout_sec",
            "e.g. amqp_query_timeout_sec = 2 and amqp_query_timeout_micro = 0",
        ),
        ({"amqp_connect_timeout_micro": 0}, "amqp_connect_timeout_micro", "every connection"),
        ({"amqp_query_timeout": 0}, "amqp_query_timeout", "positive number of seconds"),
        ({"amqp_query_timeout": -1.0}, "amqp_query_timeout", "positive number of seconds"),
        ({"amqp_query_timeout": float("inf")}, "amqp_query_timeout", "positive number"),
        ({"amqp_query_timeout": "2"}, "amqp_query_timeout", "positive number of seconds"),
        ({"amqp_waitframe_timeout": -1}, "amqp_waitframe_timeout", "non-negative number"),
        (
            {"amqp_query_timeout": 2, "amqp_query_timeout_micro": 5},
            "amqp_query_timeout",
            "not both",
        ),
        ({"amqp_consumer_ack_timeout_micro": 10**6}, "amqp_consumer_ack_timeout_micro", "999999"),
    ],
)
def test_bad_timer_is_a_config_error(data: dict[str, Any], key: str, fragment: str) -> None:
    """_micro outside 0..999999, negative or non-integer parts, and a zero query timeout fail."""
    error = config_error(**data)
    assert error.key == key
    assert str(error).startswith(f"config key {key!r} = ")
    assert fragment in str(error)


# --------------------------------------------------------------------------------------------
# Unknown and ignored keys


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("amqp_consumer_proceses", "did you mean 'amqp_consumer_processes'?"),
        ("node_host_name", "did you mean 'node_hostname'?"),
        ("amqp_conection", "did you mean 'amqp_connection'?"),
        ("zzz", "remove it"),
    ],
)
def test_unknown_key_is_a_config_error_with_a_suggestion(key: str, suggestion: str) -> None:
    """Unknown keys are refused (C has no such check at all), with the closest known key."""
    error = config_error(**{key: 4})
    assert str(error).startswith(f"config key {key!r} = 4: unknown key; {suggestion}")
    assert error.key == key


def test_all_unknown_keys_are_reported_at_once() -> None:
    """Every unknown key is listed, one per line."""
    error = config_error(prefech=1, sockett="x")
    assert str(error).splitlines() == [
        "config key 'prefech' = 1: unknown key; did you mean 'prefetch'?",
        "config key 'sockett' = \"x\": unknown key; did you mean 'socket'?",
    ]


def test_unknown_key_message_redacts_urls() -> None:
    """A misspelt amqp_connection does not print its password."""
    assert "hunter2" not in str(config_error(amqp_connections="amqp://u:hunter2@h"))


IGNORED = [
    ("amqp_query_timeout_avp", "$avp(kz_timeout)", "pass timeout_ms to kz.query"),
    ("amqp_waitframe_timeout_sec", 1, "reads frames as they arrive"),
    ("amqp_waitframe_timeout_micro", 5, "reads frames as they arrive"),
    ("amqp_command_hashtable_size", 4096, "dict keyed by Msg-ID"),
    ("amqp_timer_process_interval", 100, "no timer process"),
    ("amqp_timmer_process_interval", 100, "no timer process"),
    ("amqp_consumer_ack_timeout_sec", 1, "ack sub-loop"),
    ("amqp_consumer_ack_timeout_micro", 1, "ack sub-loop"),
    ("amqp_interprocess_timeout_sec", 1, "command sub-loop"),
    ("amqp_interprocess_timeout_micro", 1, "command sub-loop"),
    ("amqp_internal_loop_count", 5, "command sub-loop"),
    ("amqp_consumer_loop_count", 10, "prefetch"),
    ("amqp_consumer_ack_loop_count", 20, "ack sub-loop"),
    ("consume_messages_on_reconnect", 1, "resume at once"),
    ("single_consumer_on_reconnect", 1, "consistent-worker"),
    ("use_federated_exchange", 0, "federate"),
    ("federated_exchange", "federation", "federate"),
    ("presence_use_full_entity", 0, "never read"),
    ("amqp_result_avp", "$avp(amqp_result)", "no pseudo-variables"),
]


@pytest.mark.parametrize(("key", "value", "reason"), IGNORED)
def test_ignored_key_is_accepted_with_one_note(key: str, value: object, reason: str) -> None:
    """Each accepted-but-ignored key the file sets gives one note naming it and why."""
    result = settings(amqp_connection="amqp://h", **{key: value})
    (note,) = result.notes
    assert note.startswith(f"{key} is accepted and ignored: ")
    assert reason in note


def test_notes_follow_the_order_of_the_file() -> None:
    """Notes for ignored keys come in the order the keys appear."""
    result = settings(
        amqp_connection="amqp://h", amqp_result_avp="$avp(x)", amqp_internal_loop_count=1
    )
    assert [n.split()[0] for n in result.notes] == ["amqp_result_avp", "amqp_internal_loop_count"]


def test_both_timer_interval_spellings_must_agree() -> None:
    """amqp_timer_process_interval and amqp_timmer_process_interval are one key."""
    assert (
        settings(
            amqp_timer_process_interval=300, amqp_timmer_process_interval=300
        ).amqp_timer_process_interval
        == 300
    )
    assert settings(amqp_timmer_process_interval=7).amqp_timer_process_interval == 7
    error = config_error(amqp_timer_process_interval=100, amqp_timmer_process_interval=200)
    assert error.key == "amqp_timmer_process_interval"


# --------------------------------------------------------------------------------------------
# Paths


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("routes.py", "/etc/kazoo-amqp/routes.py"),
        ("sub/dir/handlers.py", "/etc/kazoo-amqp/sub/dir/handlers.py"),
        ("../lib/routes.py", "/etc/lib/routes.py"),
        ("/opt/app/routes.py", "/opt/app/routes.py"),
        ("pkg/routes", "/etc/kazoo-amqp/pkg/routes"),
        ("myapp.routes", "myapp.routes"),
        ("routes", "routes"),
    ],
)
def test_routes_is_a_path_relative_to_the_config_or_a_module(value: str, expected: str) -> None:
    """A .py name or a value with a slash is a path; anything else is a module name."""
    assert settings(routes=value).routes == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("kazoo-amqp.sock", "/etc/kazoo-amqp/kazoo-amqp.sock"),
        ("run/k.sock", "/etc/kazoo-amqp/run/k.sock"),
        ("/run/kazoo-amqp.sock", "/run/kazoo-amqp.sock"),
    ],
)
def test_socket_is_resolved_against_the_config_directory(value: str, expected: str) -> None:
    """A relative socket path is relative to the config file's directory."""
    assert settings(socket=value).socket == expected


def test_socket_path_longer_than_sun_path_is_a_config_error() -> None:
    """A Unix socket path over 107 bytes cannot be bound; say so at check time."""
    error = config_error(socket="/run/" + "x" * 110 + ".sock")
    assert "longer than the 107 a Unix socket path may have" in str(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sqlite:///var/lib/k.db", "sqlite:///var/lib/k.db"),
        ("sqlite:////var/lib/k.db", "sqlite:///var/lib/k.db"),
        ("sqlite://k.db", "sqlite:///etc/kazoo-amqp/k.db"),
        ("sqlite://data/k.db", "sqlite:///etc/kazoo-amqp/data/k.db"),
        ("postgres://kamailio:pw@127.0.0.1/kamailio", "postgres://kamailio:pw@127.0.0.1/kamailio"),
        ("postgresql://u@db:5433/k", "postgresql://u@db:5433/k"),
        ("mysql://kamailio:pw@[::1]:3306/kamailio", "mysql://kamailio:pw@[::1]:3306/kamailio"),
    ],
)
def test_db_url_is_validated_and_sqlite_paths_made_absolute(value: str, expected: str) -> None:
    """sqlite:// is followed by the file path (Kamailio form); relative paths use the config dir."""
    assert settings(db_url=value).db_url == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("oracle://u:pw@h/db", "must start with one of sqlite://"),
        ("/var/lib/k.db", "must start with one of"),
        ("sqlite://", "needs the database file's path"),
        ("postgres://u:pw@h", "needs a host and a database name"),
        ("mysql:///db", "needs a host and a database name"),
        ("mysql://u:pw@h:99999/db", "port that is not a number"),
        ("", "must not be empty"),
    ],
)
def test_bad_db_url_is_a_config_error(value: str, fragment: str) -> None:
    """Unsupported schemes, missing parts and bad ports are refused; passwords are redacted."""
    error = config_error(db_url=value)
    assert fragment in str(error)
    assert ":pw@" not in str(error)
    assert error.key == "db_url"


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///var/k.db", "/var/k.db"), ("postgres://u@h/k", None)],
)
def test_sqlite_path_gives_the_file_of_a_sqlite_url(url: str, path: str | None) -> None:
    """sqlite_path() is the path after sqlite://, or None for other databases."""
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://127.0.0.1:5060/RPC", "http://127.0.0.1:5060/RPC"),
        ("http://[::1]:5060/RPC", "http://[::1]:5060/RPC"),
        ("http://kamailio", "http://kamailio"),
        ("udp:127.0.0.1:8090", "udp:127.0.0.1:8090"),
        ("udp:[::1]:8090", "udp:[::1]:8090"),
        ("unix:/run/kamailio/rpc.sock", "unix:/run/kamailio/rpc.sock"),
        ("unix:rpc.sock", "unix:/etc/kazoo-amqp/rpc.sock"),
    ],
)
def test_kamailio_rpc_accepts_http_udp_and_unix(value: str, expected: str) -> None:
    """kamailio_rpc is http://HOST:PORT/PATH, udp:HOST:PORT or unix:/PATH."""
    assert settings(kamailio_rpc=value).kamailio_rpc == expected


@pytest.mark.parametrize(
    "value",
    [
        "https://h:1/RPC",
        "tcp:h:1",
        "udp:h",
        "udp::8090",
        "udp:h:0",
        "udp:h:x",
        "unix:",
        "http://:5060/RPC",
        "http://h:x/RPC",
        "http://u:p@h:1/RPC",
        "http://h:1/RPC?x=1",
    ],
)
def test_bad_kamailio_rpc_is_a_config_error(value: str) -> None:
    """Other schemes and malformed addresses are refused with the accepted forms listed."""
    error = config_error(kamailio_rpc=value)
    assert "http://HOST:PORT/PATH" in str(error)


# --------------------------------------------------------------------------------------------
# describe()


def test_describe_lists_every_setting_with_passwords_redacted() -> None:
    """check-config rows: config key names, one row per broker, timers in seconds, no secrets."""
    result = settings(
        amqp_connection=["amqp://u:hunter2@a/v", "zone=b;amqps://b"],
        db_url="postgres://k:dbsecret@db/kamailio",
        amqp_consumer_processes=3,
    )
    rows = describe(result)
    text = "\n".join(f"{k} = {v}" for k, v in rows)
    assert "hunter2" not in text and "dbsecret" not in text
    assert ("amqp_consumer_processes", "3") in rows
    assert ("amqp_query_timeout", "2 s") in rows
    assert ("amqp_connect_timeout", "1 s") in rows  # the effective value (config_keys)
    assert ("amqp_query_timeout_avp", "(not set)") in rows
    assert ("node_hostname", '"sip1.example.com"') in rows
    assert ("db_url", '"postgres://k:***@db/kamailio"') in rows
    assert [v for k, v in rows if k == "amqp_connection"] == [
        "amqp://u:***@a/v (server 1, zone local, primary, vhost 'v')",
        "amqps://b (server 2, zone b, vhost '/', TLS)",
    ]
    keys = {k for k, _ in rows}
    assert "notes" not in keys and "workers" not in keys and "brokers" not in keys
    # Every field but notes and brokers has one row; each of the two brokers has one.
    assert len(rows) == len(dataclasses.fields(Settings)) - 2 + 2


# --------------------------------------------------------------------------------------------
# load_config()


def test_load_config_resolves_paths_against_the_file_directory(tmp_path: Path) -> None:
    """Relative paths in a file are relative to that file, not to the working directory."""
    path = tmp_path / "k.toml"
    path.write_text('node_hostname = "n"\nroutes = "r.py"\nsocket = "s.sock"\n')
    result = load_config(str(path), default_app_version=VERSION)
    assert (result.routes, result.socket) == (str(tmp_path / "r.py"), str(tmp_path / "s.sock"))


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error gives the file name and the line and column."""
    path = tmp_path / "bad.toml"
    path.write_text('node_hostname = "n"\nprefetch = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), default_app_version=VERSION)
    message = str(info.value)
    assert str(path) in message and "not valid TOML" in message
    assert "line 2" in message and "column" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError that says to pass --config."""
    with pytest.raises(ConfigError, match="--config FILE"):
        load_config(str(tmp_path / "absent.toml"), default_app_version=VERSION)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is reported, not a traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'node_hostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(path), default_app_version=VERSION)


def test_value_errors_from_a_file_start_with_the_file_name(tmp_path: Path) -> None:
    """Key errors read from a file are prefixed with its path and keep the key."""
    path = tmp_path / "k.toml"
    path.write_text('node_hostname = "n"\nprefetch = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), default_app_version=VERSION)
    assert str(info.value).startswith(f"{path}: config key 'prefetch' = 0: ")
    assert info.value.key == "prefetch"


def test_nested_table_is_an_unknown_key(tmp_path: Path) -> None:
    """A TOML table such as [amqp] is not a parameter."""
    path = tmp_path / "k.toml"
    path.write_text('node_hostname = "n"\n[amqp]\nheartbeats = 5\n')
    with pytest.raises(ConfigError, match=r"'amqp' = \{heartbeats = 5\}: unknown key"):
        load_config(str(path), default_app_version=VERSION)


def test_settings_are_frozen_and_hashable() -> None:
    """Settings is an immutable value."""
    result = settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.prefetch = 1  # type: ignore[misc]
    assert hash(result) == hash(settings())


# --------------------------------------------------------------------------------------------
# issue 8: every duration bounded; socket permissions


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"publish_buffer_timeout_ms": 10**30}, "publish_buffer_timeout_ms"),
        ({"publish_confirm_timeout_ms": 86_400_001}, "publish_confirm_timeout_ms"),
        ({"handler_timeout_ms": 10**18}, "handler_timeout_ms"),
        ({"reconnect_min_ms": 10**12, "reconnect_max_ms": 10**12}, "reconnect_min_ms"),
        ({"amqp_query_timeout": 1e30}, "amqp_query_timeout"),
        ({"amqp_query_timeout": 601}, "amqp_query_timeout"),
        ({"amqp_query_timeout_sec": 10**9}, "amqp_query_timeout_sec"),
        ({"amqp_connect_timeout": 1e12}, "amqp_connect_timeout"),
    ],
)
def test_a_duration_over_its_upper_bound_is_a_config_error(data: dict[str, Any], key: str) -> None:
    err = config_error(**data)
    assert err.key == key
    assert "limit" in str(err) or "from" in str(err)


@pytest.mark.parametrize(
    ("value", "mode"), [(0o600, 0o600), ("0660", 0o660), ("0o770", 0o770), (0o777, 0o777)]
)
def test_socket_mode_takes_an_integer_or_an_octal_string(value: object, mode: int) -> None:
    assert settings(socket_mode=value).socket_mode == mode


@pytest.mark.parametrize("value", [0o1777, 0o066, "rw", "", True, -1, 1.5])
def test_socket_mode_refuses_what_is_not_owner_readable_permission_bits(value: object) -> None:
    assert config_error(socket_mode=value).key == "socket_mode"


@pytest.mark.parametrize(("value", "group"), [("kamailio", "kamailio"), (115, 115)])
def test_socket_group_is_a_name_or_a_gid(value: object, group: object) -> None:
    assert settings(socket_group=value).socket_group == group


@pytest.mark.parametrize("value", ["", -1, True, ["kamailio"]])
def test_socket_group_refuses_other_values(value: object) -> None:
    assert config_error(socket_group=value).key == "socket_group"
