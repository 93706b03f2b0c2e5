"""The TOML config: every ``kazoo`` module parameter of spec §2 plus kazoo-amqp's own keys.

The keys are the module's parameter names (``modparam("kazoo", "NAME", VALUE)`` becomes
``NAME = VALUE``), with the same defaults, plus our own keys (``routes``, ``socket``,
``publish_buffer_size``, …). :func:`settings_from_mapping` turns the parsed TOML table into one
frozen :class:`Settings`; it is pure. :func:`load_config` is the one function that reads a file.

Every key's type, default, range, meaning and ignored-why live in ONE table,
``core/config_keys.py`` (how to add a key is described there); this module parses with it.

Rules (the deliberate differences from C are listed in ``docs/compat.md``):

* An unknown key is an error, with a "did you mean" suggestion.
* Every error names the key, the value and the fix::

      config key 'amqp_consumer_processes' = -1: must be a positive integer (number of worker
      processes running event routes), e.g. amqp_consumer_processes = 4

* Integers are TOML integers; ``true``/``false`` are accepted for them as 1/0. Flags (the C
  module's 0/1 ints) take ``true``/``false`` or ``1``/``0``.
* Timer pairs ``NAME_sec`` / ``NAME_micro`` become one float field ``NAME`` in seconds. ``NAME``
  itself (seconds, may be fractional) is accepted instead of the pair. ``_micro`` must be
  0..999999 and ``_sec`` non-negative; ``amqp_query_timeout`` and ``amqp_connect_timeout`` must
  not be 0 (C would wait forever or fail every connect; we never block forever).
* ``amqp_connection`` is a string or a list of strings, in failover order; server ids are 1..n in
  that order. ``amqp_primary_zone`` applies whatever the key order (C only honours it when set
  before the first ``amqp_connection``). At least one broker must be in the primary zone.
* ``amqp_consumer_processes`` is the number of worker processes that run event routes (default
  4, the meaning and default of the module's documentation); ``amqp_consumer_workers`` is a
  synonym. Both may be given only with the same value.
* Keys that are accepted but have no effect here (§2.2 and a few of §2.1) are validated like the
  others and, when the file sets them, produce one line each in :attr:`Settings.notes`.
* Relative paths (``routes`` when it is a path, ``socket``, sqlite ``db_url``, ``unix:``
  ``kamailio_rpc``) are resolved against the directory of the config file.
* ``db_url`` uses Kamailio's form: ``sqlite://`` followed by the file's path (so
  ``sqlite:///var/lib/kazoo.db`` is absolute), ``postgres://``, ``postgresql://`` or
  ``mysql://USER:PASSWORD@HOST[:PORT]/DATABASE``. A sqlite URL is stored with an absolute path
  (``sqlite://`` + ``/abs/path``); :func:`sqlite_path` returns that path.
"""

from __future__ import annotations

import difflib
import json
import math
import os.path
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from kazoo_amqp.core.broker_url import BrokerSpec, parse_connection, redact_url
from kazoo_amqp.core.config_keys import EFFECTIVE, KEY, KEYS, ignored_reason, known_keys
from kazoo_amqp.core.kamailio.settings import BridgeSettings, bridge_from_mapping
from kazoo_amqp.errors import ConfigError

__all__ = [
    "DEFAULT_CONNECTION",
    "KNOWN_KEYS",
    "EncodeHighBytes",
    "LateReplies",
    "Settings",
    "describe",
    "listen_address",
    "load_config",
    "settings_from_mapping",
    "sqlite_path",
]

EncodeHighBytes = Literal["utf8", "x86"]
LateReplies = Literal["drop", "route"]
LogFormat = Literal["text", "json"]
#: choice keys whose values are accepted in any case
_CASELESS = ("log_level", "log_format")

#: The broker used when the config has no ``amqp_connection``.
DEFAULT_CONNECTION = "amqp://guest:guest@127.0.0.1:5672"
_MAX_WORKERS = 1024
_MAX_SOCKET_PATH_BYTES = 107  # sun_path is 108 bytes including the NUL
#: Upper bound of every duration key (24 h): a longer one is a typo, and some event loops
#: overflow on timers of 1e30 s (issue 8: every caller-supplied duration is bounded).
_MAX_DURATION_MS = 86_400_000
#: ``amqp_query_timeout`` may not exceed a query's own largest ``timeout_ms`` (10 minutes).
_MAX_QUERY_TIMEOUT_S = 600.0
_SHOWN_MAX = 100  # longest value quoted in an error message
_DB_SCHEMES = ("sqlite", "postgres", "postgresql", "mysql")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs from the config file, validated.

    Field names are the module's parameter names; timer pairs are one float in seconds.
    ``workers`` comes from ``amqp_consumer_processes`` (or its synonym ``amqp_consumer_workers``).
    ``notes`` are lines for the log: keys the file set that are accepted but have no effect, and
    defaults worth knowing about.
    """

    # --- §2.1: parameters with an effect --------------------------------------------------
    node_hostname: str
    brokers: tuple[BrokerSpec, ...]
    socket: str
    db_url: str
    app_version: str
    amqp_primary_zone: str = "local"
    amqp_max_channels: int = 50
    workers: int = 4
    amqp_consumer_event_key: str = "Event-Category"
    amqp_consumer_event_subkey: str = "Event-Name"
    amqp_query_timeout: float = 2.0
    amqp_query_timeout_avp: str | None = None  # read by the Kamailio bridge only
    amqp_connect_timeout: float = 1.0  # effective value (config_keys.EFFECTIVE)
    amqp_heartbeats: int = 30  # effective value (config_keys.EFFECTIVE)
    amqps_ca_cert: str | None = None
    amqps_cert: str | None = None
    amqps_key: str | None = None
    amqps_verify_peer: bool = True
    amqps_verify_hostname: bool = True
    amqp_waitframe_timeout: float = 0.1  # accepted; no effect
    amqp_command_hashtable_size: int = 2048  # accepted; no effect
    json_escape_char: str = "%"
    app_name: str = "kamailio"
    event_callback: str | None = None
    pua_mode: bool = True
    presentity_table: str = "presentity"
    pua_include_entity: bool = True
    pua_lock_type: int = 1
    # --- §2.2: accepted, no effect ----------------------------------------------------------
    amqp_timer_process_interval: int = 200
    amqp_consumer_ack_timeout: float = 0.1
    amqp_interprocess_timeout: float = 0.1
    amqp_internal_loop_count: int = 5
    amqp_consumer_loop_count: int = 10
    amqp_consumer_ack_loop_count: int = 20
    consume_messages_on_reconnect: bool = True
    single_consumer_on_reconnect: bool = True
    use_federated_exchange: bool = False
    federated_exchange: str = "federation"
    presence_use_full_entity: bool = False
    amqp_result_avp: str = "$avp(amqp_result)"
    # --- kazoo-amqp's own keys --------------------------------------------------------------
    routes: str | None = None
    publish_buffer_size: int = 10000
    publish_buffer_timeout_ms: int = 10000
    publish_confirm_timeout_ms: int = 5000
    publish_persistent: bool = False
    prefetch: int = 256
    handler_timeout_ms: int = 30000
    max_message_bytes: int = 16 * 1024 * 1024
    max_redeliveries: int = 2
    reconnect_min_ms: int = 100
    reconnect_max_ms: int = 10000
    socket_mode: int = 0o660
    socket_group: str | int | None = None
    socket_pending_bytes: int = 64 * 1024 * 1024
    encode_high_bytes: EncodeHighBytes = "utf8"
    late_replies: LateReplies = "drop"
    kamailio_rpc: str | None = None
    log_level: str = "info"
    log_format: LogFormat = "text"
    #: ``HOST:PORT`` of the metrics/health/status HTTP listener, None = off
    http_listen: str | None = None
    #: the Kamailio bridge (``[kamailio]``): events run inside Kamailio, not in worker processes
    kamailio: BridgeSettings | None = None
    notes: tuple[str, ...] = ()


# Timer pairs: Settings field -> (default seconds, 0 allowed), from the key table.
_TIMERS: dict[str, tuple[float, bool]] = {
    k.name: (float(k.default), k.zero_ok) for k in KEYS if k.kind == "seconds"
}


def _timer_keys(name: str) -> tuple[str, str, str]:
    return name, f"{name}_sec", f"{name}_micro"


#: Every key a config file may contain (the table's names, aliases and timer halves).
KNOWN_KEYS: frozenset[str] = known_keys()


def load_config(path: str, *, default_app_version: str) -> Settings:
    """Read the TOML file at ``path`` and return its validated :class:`Settings`.

    Relative paths inside the file are resolved against the file's directory.

    Raises:
        ConfigError: the file cannot be read, is not TOML (the message gives line and column),
            or a key is wrong; messages start with the file name.
    """
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            f"config file {path!r} cannot be read ({exc.strerror or exc}); "
            "pass an existing file with --config FILE"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path!r} is not valid TOML: not UTF-8 text (byte {exc.start})"
        ) from None
    base_dir = os.path.dirname(os.path.abspath(path))
    try:
        return settings_from_mapping(
            data, base_dir=base_dir, default_app_version=default_app_version
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", key=exc.key) from None


def settings_from_mapping(
    data: Mapping[str, Any], *, base_dir: str, default_app_version: str
) -> Settings:
    """Validate a parsed config table and build :class:`Settings`.

    Args:
        data: the TOML document as a mapping (key -> value).
        base_dir: directory that relative paths are resolved against (the config file's).
        default_app_version: ``app_version`` when the file does not set it.

    Raises:
        ConfigError: an unknown key, a wrong type or value, or a missing ``node_hostname``;
            the message names the key, the value and the fix.
    """
    _reject_unknown(data)
    kamailio = bridge_from_mapping(data.get("kamailio"))  # the one parser of [kamailio]
    r = _Reader(data)
    notes: list[str] = []
    # Every key of a simple kind is read from the table alone (type, default, range, meaning).
    values: dict[str, Any] = {k.name: r.key(k.name) for k in KEYS if k.kind != "special"}
    for name, effective in EFFECTIVE.items():
        given = values[name]
        values[name] = effective(given)
        if values[name] != given and any(r.given(s) for s in KEY[name].spellings):
            notes.append(f"{name} = {given:g}: {KEY[name].effective}")

    primary_zone = values["amqp_primary_zone"]
    if ";" in primary_zone:
        raise r.error("amqp_primary_zone", "must not contain ';'", '"local"')
    brokers = _brokers(data, primary_zone, notes)
    workers = _workers(r)

    amqps_cert, amqps_key = values["amqps_cert"], values["amqps_key"]
    if (amqps_cert is None) != (amqps_key is None):
        given, missing = ("amqps_cert", "amqps_key") if amqps_cert else ("amqps_key", "amqps_cert")
        raise r.error(
            given,
            f"is set but {missing} is not; a client certificate needs both "
            "(the C module silently ignores one without the other)",
            f'"/etc/kazoo-amqp/client.pem" and {missing} = "…"',
        )
    if values["amqps_verify_hostname"] and not values["amqps_verify_peer"]:
        notes.append(
            "amqps_verify_hostname has no effect while amqps_verify_peer = 0: "
            "an unverified certificate's host name is not checked"
        )

    escape = r.string(
        "json_escape_char", KEY["json_escape_char"].default, meaning=_what("json_escape_char")
    )
    if len(escape) > 1:
        notes.append(
            f"json_escape_char = {_show(escape)}: only the first character {escape[0]!r} is used"
        )

    event_callback = r.optional_string("event_callback", meaning=_what("event_callback"))
    if event_callback is not None and not event_callback.isidentifier():
        raise r.error("event_callback", "must be a Python function name", '"ksr_kazoo_event"')

    if values["reconnect_max_ms"] < values["reconnect_min_ms"]:
        raise r.error(
            "reconnect_max_ms",
            f"must not be less than reconnect_min_ms ({values['reconnect_min_ms']})",
            str(max(values["reconnect_min_ms"], 10000)),
        )

    ignored = [
        f"{key} is accepted and ignored: {reason}"
        for key in data
        if (reason := ignored_reason(key)) is not None
        # the Kamailio bridge's edge module reads the per-query timeout from that AVP
        and not (key == "amqp_query_timeout_avp" and kamailio is not None)
    ]
    return Settings(
        brokers=brokers,
        socket=_socket(r, base_dir),
        socket_mode=_socket_mode(r),
        socket_group=_socket_group(r),
        db_url=_db_url(r, base_dir),
        app_version=r.string(
            "app_version", default_app_version, meaning=_what("app_version"), nonempty=True
        ),
        workers=workers,
        json_escape_char=escape[:1],
        event_callback=event_callback,
        presentity_table=_presentity_table(r),
        amqp_timer_process_interval=_timer_process_interval(r),
        routes=_routes(r, base_dir),
        kamailio_rpc=_kamailio_rpc(r, base_dir),
        http_listen=_http_listen(r),
        kamailio=kamailio,
        notes=tuple(ignored + notes),
        **values,
    )


def describe(settings: Settings) -> list[tuple[str, str]]:
    """Return (key, value) rows for ``check-config``: every setting, passwords redacted.

    Keys are the config key names (``amqp_consumer_processes`` for ``workers``; one
    ``amqp_connection`` row per broker); timers are shown in seconds.
    """
    rows: list[tuple[str, str]] = []
    for field in fields(settings):
        name = field.name
        value = getattr(settings, name)
        if name == "notes":
            continue
        if name == "brokers":
            rows.extend(("amqp_connection", _describe_broker(b)) for b in value)
        elif name == "workers":
            rows.append(("amqp_consumer_processes", str(value)))
        elif name == "db_url":
            rows.append((name, _show(value)))
        elif name in _TIMERS:
            rows.append((name, f"{value:g} s"))
        elif value is None:
            rows.append((name, "(not set)"))
        else:
            rows.append((name, _show(value)))
    return rows


def sqlite_path(db_url: str) -> str | None:
    """The database file of a ``sqlite://PATH`` URL as stored in :class:`Settings`, else None."""
    if not db_url.startswith("sqlite://"):
        return None
    return db_url[len("sqlite://") :]


# --------------------------------------------------------------------------------------------
# Reading and checking values


class _Reader:
    """Typed access to the config table; every failure is a ConfigError in the house format."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def given(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str, problem: str, example: str) -> ConfigError:
        return ConfigError(
            f"config key {key!r} = {_show(self.data.get(key))}: {problem}, e.g. {key} = {example}",
            key=key,
        )

    def key(self, name: str) -> Any:
        """Read key ``name`` as its row of the key table says (a non-special kind)."""
        k = KEY[name]
        meaning = _what(name)
        if k.kind == "int":
            high = None if k.maximum is None else int(k.maximum)
            return self.integer(
                name, k.default, minimum=int(k.minimum or 0), maximum=high, meaning=meaning
            )
        if k.kind == "flag":
            return self.flag(name, k.default, meaning=meaning)
        if k.kind == "choice":
            return self.choice(
                name, k.default, k.choices, meaning=meaning, lower=name in _CASELESS
            )
        if k.kind == "seconds":
            return self.timer(name, float(k.default), zero_ok=k.zero_ok)
        if k.kind == "str":
            if k.default is None and not k.nonempty:
                return self.optional_string(name, meaning=meaning)
            return self.string(
                name, k.default, meaning=meaning, nonempty=k.nonempty, example=k.example
            )
        raise AssertionError(f"config key {name} has kind {k.kind!r}: parse it by hand")

    def integer(
        self,
        key: str,
        default: int,
        *,
        minimum: int,
        maximum: int | None = None,
        meaning: str,
    ) -> int:
        if key not in self.data:
            return default
        value = self.data[key]
        example = str(default if default >= minimum else minimum)
        if isinstance(value, bool):
            value = int(value)
        if (
            not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise self.error(key, f"must be {_range(minimum, maximum)} ({meaning})", example)
        return value

    def flag(self, key: str, default: bool, *, meaning: str) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.error(key, f"must be true or false, or 1 or 0 ({meaning})", _show(default))

    def string(
        self,
        key: str,
        default: str | None,
        *,
        meaning: str,
        nonempty: bool = False,
        example: str | None = None,
    ) -> str:
        example = example or (_show(default) if default else '"…"')
        if key not in self.data:
            if default is None:
                raise ConfigError(
                    f"config key {key!r} is missing: it is required ({meaning}), "
                    f"e.g. {key} = {example}",
                    key=key,
                )
            return default
        value = self.data[key]
        if not isinstance(value, str):
            raise self.error(key, f"must be a string ({meaning})", example)
        if nonempty and not value:
            raise self.error(key, f"must not be empty ({meaning})", example)
        return value

    def optional_string(self, key: str, *, meaning: str) -> str | None:
        if key not in self.data:
            return None
        value = self.data[key]
        if not isinstance(value, str):
            raise self.error(key, f"must be a string ({meaning})", '"…"')
        return value or None

    def choice(
        self,
        key: str,
        default: str,
        choices: tuple[str, ...],
        *,
        meaning: str,
        lower: bool = False,
    ) -> str:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, str) and lower:
            value = value.lower()
        if not isinstance(value, str) or value not in choices:
            listed = ", ".join(f'"{c}"' for c in choices)
            raise self.error(key, f"must be one of {listed} ({meaning})", f'"{default}"')
        return value

    def timer(self, name: str, default: float, *, zero_ok: bool) -> float:
        """``NAME`` in seconds, or ``NAME_sec`` + ``NAME_micro`` / 1e6."""
        whole, sec_key, micro_key = _timer_keys(name)
        default_sec = int(default)
        default_micro = round((default - default_sec) * 1_000_000)
        if self.given(whole):
            if self.given(sec_key) or self.given(micro_key):
                other = sec_key if self.given(sec_key) else micro_key
                raise self.error(
                    whole,
                    f"is also given as {other}; set either {whole} (seconds) or the pair "
                    f"{sec_key} / {micro_key}, not both",
                    f"{default:g}",
                )
            value = self.data[whole]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and not zero_ok)
            ):
                kind = "a non-negative" if zero_ok else "a positive"
                raise self.error(whole, f"must be {kind} number of seconds", f"{default:g}")
            return self._bounded_timer(whole, name, float(value), default)
        sec = self.integer(
            sec_key,
            default_sec,
            minimum=0,
            maximum=_MAX_DURATION_MS // 1000,
            meaning=f"whole seconds of {name}",
        )
        micro = self.integer(
            micro_key,
            default_micro,
            minimum=0,
            maximum=999_999,
            meaning=(
                f"microseconds of {name}; put whole seconds in {sec_key}. The C module does not "
                "normalise larger values and its timer then fails"
            ),
        )
        total = sec + micro / 1_000_000
        if total == 0 and not zero_ok:
            key = sec_key if self.given(sec_key) else micro_key
            what = (
                "the C module then never times out a query, but kazoo-amqp never waits forever"
                if name == "amqp_query_timeout"
                else "a zero timeout would make every connection attempt fail"
            )
            raise ConfigError(
                f"config key {key!r} = {_show(self.data[key])}: makes {name} 0 s ({sec_key} = "
                f"{sec}, {micro_key} = {micro}); {what}. Set a positive timeout, e.g. "
                f"{sec_key} = {default_sec} and {micro_key} = {default_micro}",
                key=key,
            )
        return self._bounded_timer(sec_key, name, total, default)

    def _bounded_timer(self, key: str, name: str, seconds: float, default: float) -> float:
        limit = _MAX_QUERY_TIMEOUT_S if name == "amqp_query_timeout" else _MAX_DURATION_MS / 1000
        if seconds > limit:
            raise self.error(
                key, f"makes {name} {seconds:g} s, over its limit of {limit:g} s", f"{default:g}"
            )
        return seconds


def _what(name: str) -> str:
    """The table's meaning of ``name``, as the parenthesis of an error message."""
    first = KEY[name].meaning.split(". ")[0].rstrip(".")
    if first.startswith("Required"):
        first = KEY[name].meaning.split(". ")[1].rstrip(".")
    first = first.split(" (")[0].split(": ")[0]
    return first[:1].lower() + first[1:]


def _range(minimum: int, maximum: int | None) -> str:
    if maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer of at least {minimum}"


def _reject_unknown(data: Mapping[str, Any]) -> None:
    problems: list[str] = []
    first: str | None = None
    for key in data:
        if key in KNOWN_KEYS:
            continue
        first = first or str(key)
        close = difflib.get_close_matches(str(key), sorted(KNOWN_KEYS), n=1, cutoff=0.6)
        fix = (
            f"did you mean {close[0]!r}?"
            if close
            else "remove it (the keys are the kazoo module's parameter names plus routes, "
            "socket and the others in examples/kazoo-amqp.toml)"
        )
        problems.append(f"config key {key!r} = {_show(data[key])}: unknown key; {fix}")
    if problems:
        raise ConfigError("\n".join(problems), key=first)


def _brokers(
    data: Mapping[str, Any], primary_zone: str, notes: list[str]
) -> tuple[BrokerSpec, ...]:
    key = "amqp_connection"
    example = f'["{DEFAULT_CONNECTION}"]'
    if key not in data:
        notes.append(f"amqp_connection is not set; using {redact_url(DEFAULT_CONNECTION)}")
        values: list[Any] = [DEFAULT_CONNECTION]
    elif isinstance(data[key], str):
        values = [data[key]]
    elif isinstance(data[key], list):
        values = list(data[key])
        if not values:
            raise ConfigError(
                f"config key {key!r} = []: needs at least one broker URL, e.g. {key} = {example}",
                key=key,
            )
    else:
        raise ConfigError(
            f"config key {key!r} = {_show(data[key])}: must be a URL string or a list of them "
            f"(brokers in failover order), e.g. {key} = {example}",
            key=key,
        )
    brokers = tuple(
        parse_connection(value, server_id=index, primary_zone=primary_zone, key=key)
        for index, value in enumerate(values, start=1)
    )
    if not any(b.primary for b in brokers):
        zones = ", ".join(sorted({b.zone for b in brokers}))
        raise ConfigError(
            f"config key {key!r}: no broker is in the primary zone {primary_zone!r} (zones: "
            f"{zones}); publishing and queries use primary-zone brokers only. Add a broker "
            f'without a zone= prefix, or set e.g. amqp_primary_zone = "{brokers[0].zone}"',
            key=key,
        )
    return brokers


def _workers(r: _Reader) -> int:
    k = KEY["amqp_consumer_processes"]
    meaning = _what(k.name)
    low, high, default = int(k.minimum or 1), int(k.maximum or _MAX_WORKERS), int(k.default)
    processes = r.integer(k.name, default, minimum=low, maximum=high, meaning=meaning)
    workers = r.integer(
        "amqp_consumer_workers", default, minimum=low, maximum=high, meaning=meaning
    )
    if r.given("amqp_consumer_processes") and r.given("amqp_consumer_workers"):
        if processes != workers:
            raise r.error(
                "amqp_consumer_workers",
                f"differs from amqp_consumer_processes = {processes}; both set the number of "
                "worker processes running event routes (kazoo-amqp keeps one consume "
                "connection per broker, so the C meaning of amqp_consumer_processes, "
                "connections per broker, does not apply). Keep only one of the two keys",
                str(processes),
            )
        return processes
    return workers if r.given("amqp_consumer_workers") else processes


def _timer_process_interval(r: _Reader) -> int:
    k = KEY["amqp_timer_process_interval"]
    meaning, default, low = _what(k.name), int(k.default), int(k.minimum or 1)
    new = r.integer(k.name, default, minimum=low, meaning=meaning)
    old = r.integer("amqp_timmer_process_interval", default, minimum=low, meaning=meaning)
    both = r.given("amqp_timer_process_interval") and r.given("amqp_timmer_process_interval")
    if both and new != old:
        raise r.error(
            "amqp_timmer_process_interval",
            f"differs from amqp_timer_process_interval = {new}; they are two spellings "
            "of one key. Keep only one",
            str(new),
        )
    return old if r.given("amqp_timmer_process_interval") else new


def _resolve(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, path))


_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _routes(r: _Reader, base_dir: str) -> str | None:
    value = r.optional_string("routes", meaning=_what("routes"))
    if value is None:
        return None
    if value.endswith(".py") or "/" in value:
        return _resolve(base_dir, value)
    if not _MODULE_NAME.match(value):
        raise r.error(
            "routes",
            "is neither a .py file path nor a Python module name",
            '"routes.py" or routes = "mypackage.routes"',
        )
    return value


def _socket(r: _Reader, base_dir: str) -> str:
    value = r.string("socket", KEY["socket"].default, meaning=_what("socket"), nonempty=True)
    path = _resolve(base_dir, value)
    if len(path.encode("utf-8", "surrogateescape")) > _MAX_SOCKET_PATH_BYTES:
        raise r.error(
            "socket",
            f"resolves to a path of {len(path.encode('utf-8', 'surrogateescape'))} bytes, "
            f"longer than the {_MAX_SOCKET_PATH_BYTES} a Unix socket path may have; "
            "choose a shorter path",
            '"/run/kazoo-amqp/kazoo-amqp.sock"',
        )
    return path


def _socket_mode(r: _Reader) -> int:
    """``socket_mode``: permission bits of the socket file, an integer (TOML ``0o660``) or an
    octal string (``"0660"``); owner read/write is required (the daemon's own CLI uses it)."""
    key = "socket_mode"
    if key not in r.data:
        return 0o660
    value = r.data[key]
    mode: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if text and len(text) <= 4 and all(c in "01234567" for c in text):
            mode = int(text, 8)
    if mode is None or not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise r.error(
            key,
            "must be permission bits from 0o600 to 0o777 with owner read/write, as 0o660 or "
            '"0660" (who may connect to the local socket)',
            "0o660",
        )
    return mode


def _socket_group(r: _Reader) -> str | int | None:
    """``socket_group``: the group (name or gid) given to the socket file, e.g. Kamailio's."""
    key = "socket_group"
    if key not in r.data:
        return None
    value = r.data[key]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
        return value
    if isinstance(value, str) and value and "\x00" not in value and len(value) <= 256:
        return value
    raise r.error(
        key, "must be a group name or a numeric gid (the group of Kamailio's user)", '"kamailio"'
    )


def _db_url(r: _Reader, base_dir: str) -> str:
    key = "db_url"
    if not r.given(key):
        return "sqlite://" + _resolve(base_dir, "kazoo-amqp.db")
    value = r.string(key, None, meaning=_what(key), nonempty=True)
    example = '"sqlite:///var/lib/kazoo-amqp/presence.db"'
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in _DB_SCHEMES:
        listed = ", ".join(f"{s}://" for s in _DB_SCHEMES)
        raise _db_error(key, value, f"must start with one of {listed}", example)
    if scheme == "sqlite":
        if not rest:
            raise _db_error(key, value, "needs the database file's path after sqlite://", example)
        path = "/" + rest.lstrip("/") if rest.startswith("/") else _resolve(base_dir, rest)
        return "sqlite://" + os.path.normpath(path)
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _db_error(
            key, value, "has a port that is not a number from 0 to 65535", example
        ) from None
    if not parts.hostname or not parts.path.strip("/"):
        raise _db_error(
            key,
            value,
            f"needs a host and a database name: {scheme}://USER:PASSWORD@HOST[:PORT]/DATABASE",
            f'"{scheme}://kamailio:secret@127.0.0.1/kamailio"',
        )
    return value


def _db_error(key: str, value: str, problem: str, example: str) -> ConfigError:
    shown = _show(value)
    return ConfigError(f"config key {key!r} = {shown}: {problem}, e.g. {key} = {example}", key=key)


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def _presentity_table(r: _Reader) -> str:
    value = r.string(
        "presentity_table",
        KEY["presentity_table"].default,
        meaning=_what("presentity_table"),
        nonempty=True,
    )
    if not _TABLE_NAME.match(value):
        raise r.error(
            "presentity_table",
            "must be a plain SQL table name, optionally schema.table",
            '"presentity"',
        )
    return value


def _http_listen(r: _Reader) -> str | None:
    key = "http_listen"
    value = r.optional_string(key, meaning=_what(key))
    if value is None:
        return None
    try:
        listen_address(value)
    except ValueError as exc:
        raise r.error(key, str(exc), '"127.0.0.1:9494"') from None
    return value


def listen_address(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` / ``[IPv6]:PORT`` into host and port (0 = any free port).

    Raises:
        ValueError: the text is not of that form; the message says what is wrong.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError("must be HOST:PORT (no port given)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError("brackets are only for IPv6 addresses: write HOST:PORT")
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:9494")
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise ValueError("needs a host name or address before the port")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return host, int(port_text)


def _kamailio_rpc(r: _Reader, base_dir: str) -> str | None:
    key = "kamailio_rpc"
    value = r.optional_string(key, meaning=_what(key))
    if value is None:
        return None
    forms = "http://HOST:PORT/PATH, udp:HOST:PORT or unix:/PATH"
    example = '"http://127.0.0.1:5060/RPC"'
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path:
            raise r.error(
                key,
                f"needs a socket path after unix: ({forms})",
                '"unix:/run/kamailio/kamailio_rpc.sock"',
            )
        return "unix:" + _resolve(base_dir, path)
    if value.startswith("udp:"):
        host, sep, port_text = value[len("udp:") :].rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not bare or not _valid_port(port_text) or "[" in bare or "]" in bare:
            raise r.error(key, f"must look like udp:HOST:PORT ({forms})", '"udp:127.0.0.1:8090"')
        return value
    if value.startswith("http://"):
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = 0
        if (
            not parts.hostname
            or port == 0
            or parts.username is not None
            or parts.query
            or parts.fragment
        ):
            raise r.error(key, f"must look like http://HOST:PORT/PATH ({forms})", example)
        return value
    raise r.error(key, f"must be one of {forms}", example)


def _valid_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _describe_broker(broker: BrokerSpec) -> str:
    zone = f"zone {broker.zone}" + (", primary" if broker.primary else "")
    tls = ", TLS" if broker.tls else ""
    return f"{broker.redacted} (server {broker.server_id}, {zone}, vhost {broker.vhost!r}{tls})"


def _redact(text: str) -> str:
    """Hide the password of anything that looks like a URL with user information."""
    if "://" not in text or text.startswith("sqlite://"):
        return text
    if text.startswith("zone="):
        prefix, sep, url = text.partition(";")
        return prefix + sep + redact_url(url)
    return redact_url(text)


def _show(value: object) -> str:
    """Render a value the way it is written in TOML, shortened for messages."""
    text: str
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        shown = _redact(value)
        if len(shown) > _SHOWN_MAX:
            shown = shown[: _SHOWN_MAX - 3] + "..."
        return json.dumps(shown, ensure_ascii=False)
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."
