"""The one table of config keys: name, type, default, range, meaning, and why a key is ignored.

Everything a user reads about a key comes from :data:`KEYS`:

* ``core/config.py`` parses with it: the set of known keys, every default, minimum, maximum and
  choice, the wording of the error messages ("must be ... (<meaning>)") and the notes logged for
  keys that are accepted and ignored (``ignored``);
* ``kazoo-amqp check-config --describe`` prints it (:func:`describe_table`);
* ``examples/kazoo-amqp.toml`` is generated from it (:func:`render_example`;
  ``scripts/gen-config-example`` or ``kazoo-amqp check-config --example``), and
  ``tests/unit/test_config_keys.py`` fails when the file and the table disagree.

Adding a key (the pattern for ``http_listen``, ``log_format``, ``socket_mode``,
``socket_group``, a ``[kamailio]`` table, ...):

1. add a :class:`Key` row to :data:`KEYS` in its section (the example file follows the order);
   ``kind`` is one of ``int``, ``flag``, ``str``, ``choice``, ``seconds`` (a ``NAME`` /
   ``NAME_sec`` / ``NAME_micro`` timer) or ``special`` (parsed by its own function in
   ``core/config.py``: URLs, paths, tables, cross-key rules);
2. add the ``Settings`` field of the same name (its default must equal the row's; a test
   checks every row against ``Settings``);
3. for the simple kinds that is all: ``settings_from_mapping`` reads every non-special key with
   :meth:`~kazoo_amqp.core.config._Reader.key`; a ``special`` key gets a parse function that
   takes its default and meaning from the row (``KEY["name"]``);
4. regenerate the example: ``scripts/gen-config-example``.

``default`` is the TOML value the example writes (``None``: not set by default, the example
shows ``example`` commented out); ``effective`` says what a value means when kazoo-amqp does not
use it as given (the drift the table fixes: ``amqp_heartbeats = 0`` means 30 s, the connect
timeout is at least 1 s). Pure data and text: no I/O.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "EFFECTIVE",
    "KEY",
    "KEYS",
    "SECTIONS",
    "Key",
    "describe_table",
    "ignored_reason",
    "known_keys",
    "render_example",
]


@dataclass(frozen=True, slots=True)
class Key:
    """One config key."""

    name: str
    kind: str  # int | flag | str | choice | seconds | special
    default: Any  # TOML value; None = unset
    meaning: str
    section: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: tuple[str, ...] = ()
    #: non-empty: accepted for compatibility and ignored, and why (one note when the file sets it)
    ignored: str = ""
    #: what a value means when it is not used as given (shown in the table and the example)
    effective: str = ""
    #: other spellings of the same key
    aliases: tuple[str, ...] = ()
    #: shown commented out in the example when ``default`` is None
    example: str | None = None
    #: a parameter of Kamailio's C kazoo module (spec §2)
    c_module: bool = True
    #: ``seconds`` keys: whether 0 is allowed
    zero_ok: bool = False
    #: ``str`` keys: whether "" is refused
    nonempty: bool = False

    @property
    def type(self) -> str:
        return {
            "int": "integer",
            "flag": "flag (true/false/1/0)",
            "str": "string",
            "choice": "string",
            "seconds": "seconds (or _sec + _micro)",
        }.get(self.kind, _SPECIAL_TYPES.get(self.name, "string"))

    @property
    def range(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f">= {self.minimum}"
        if self.kind == "seconds":
            return ">= 0" if self.zero_ok else "> 0"
        return ""

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every top-level key this row accepts."""
        names = (self.name, *self.aliases)
        if self.kind == "seconds":
            names = (*names, f"{self.name}_sec", f"{self.name}_micro")
        return names


_SPECIAL_TYPES: Final = {
    "amqp_connection": "URL or list of URLs",
    "kamailio": "table",
}

NODE, BROKERS, PUBLISH, CONSUME, PRESENCE, DAEMON, KAMAILIO, IGNORED = (
    "This node",
    "Brokers",
    "Publishing and queries",
    "Consuming and event routes",
    "Presence (kz.pua_publish)",
    "This daemon",
    "The Kamailio bridge",
    "Accepted for compatibility with Kamailio configs, and ignored (the daemon logs a note for "
    "each one that is set). Shown with the module's defaults.",
)
SECTIONS: Final = (NODE, BROKERS, PUBLISH, CONSUME, PRESENCE, DAEMON, KAMAILIO, IGNORED)

_LEGACY = "legacy (Kamailio <= 4.3) "

KEYS: Final[tuple[Key, ...]] = (
    # ---- this node
    Key("node_hostname", "str", None, "Required. Used in Node = \"kamailio@<node_hostname>\" "
        "and in the names of the reply queues.", NODE, example='"sbc1.example.net"', nonempty=True),
    Key("app_name", "str", "kamailio", "Injected as App-Name in every message published.", NODE),
    Key("app_version", "special", None, "Injected as App-Version in every message published "
        "(default: kazoo-amqp's version).", NODE, example='"1.0"', c_module=False),
    # ---- brokers
    Key("amqp_connection", "special", ["amqp://guest:guest@127.0.0.1:5672"],
        "Brokers in failover order: publishing uses the first reachable broker of the primary "
        "zone and comes back to it when it returns; consuming uses every broker at once. Forms: "
        "amqp://USER:PASSWORD@HOST:PORT/VHOST, amqps://... (TLS, port 5671), kazoo://... (= "
        "amqp), and \"zone=NAME;URL\" for a broker of another zone (only \"federate\" "
        "subscriptions go there). Percent-encode / ? # [ ] @ : in passwords and vhosts.", BROKERS),
    Key("amqp_primary_zone", "str", "local", "Brokers without a zone= prefix are in this zone "
        "(whatever the order of the keys).", BROKERS, nonempty=True),
    Key("amqp_max_channels", "int", 50, "Channels per broker connection, and reply queues per "
        "primary-zone broker.", BROKERS, minimum=1, maximum=65535),
    Key("amqp_heartbeats", "int", 0, "AMQP heartbeat interval in seconds.", BROKERS,
        minimum=0, maximum=65535,
        effective="0 (the C default, off) means 30 s: a half-open connection is always detected"),
    Key("amqp_connect_timeout", "seconds", 0.2, "TCP connect timeout per broker.", BROKERS,
        effective="at least 1 s is used (C: the value as given, 200 ms by default)"),
    Key("amqps_ca_cert", "str", None, "CA bundle file (PEM) for amqps:// brokers.", BROKERS,
        example='"/etc/ssl/certs/ca-certificates.crt"'),
    Key("amqps_cert", "str", None, "Client certificate file (PEM); needs amqps_key.", BROKERS,
        example='"/etc/kazoo-amqp/client.pem"'),
    Key("amqps_key", "str", None, "Client private key file (PEM); needs amqps_cert.", BROKERS,
        example='"/etc/kazoo-amqp/client.key"'),
    Key("amqps_verify_peer", "flag", True, "Verify the broker's certificate.", BROKERS),
    Key("amqps_verify_hostname", "flag", True, "Check the broker's host name in its "
        "certificate.", BROKERS),
    Key("reconnect_min_ms", "int", 100, "First delay between reconnect attempts, in "
        "milliseconds.", BROKERS, minimum=1, maximum=86_400_000, c_module=False),
    Key("reconnect_max_ms", "int", 10000, "Longest delay between reconnect attempts, in "
        "milliseconds (not less than reconnect_min_ms).", BROKERS, minimum=1,
        maximum=86_400_000, c_module=False),
    # ---- publishing and queries
    Key("amqp_query_timeout", "seconds", 2.0, "Default reply timeout of kz.query; a call can "
        "pass its own timeout_ms. 0 is refused (kazoo-amqp never waits forever).", PUBLISH),
    Key("publish_buffer_size", "int", 10000, "Messages kept while no broker is reachable "
        "(0 = none).", PUBLISH, minimum=0, c_module=False),
    Key("publish_buffer_timeout_ms", "int", 10000, "How long a buffered message may wait for a "
        "broker, in milliseconds.", PUBLISH, minimum=1, maximum=86_400_000, c_module=False),
    Key("publish_confirm_timeout_ms", "int", 5000, "How long to wait for the broker's publish "
        "confirm, in milliseconds.", PUBLISH, minimum=1, maximum=86_400_000, c_module=False),
    Key("publish_persistent", "flag", False, "Default delivery mode of published messages: "
        "false = transient (delivery_mode 1, like the C module), true = persistent "
        "(delivery_mode 2). A publish can choose per call.", PUBLISH, c_module=False),
    Key("late_replies", "choice", "drop", "A query reply that arrives after its timeout: "
        "\"drop\" it, or \"route\" it like any message.", PUBLISH, choices=("drop", "route"),
        c_module=False),
    Key("max_message_bytes", "int", 16777216, "Largest message body accepted, in bytes.",
        PUBLISH, minimum=1, c_module=False),
    Key("encode_high_bytes", "choice", "utf8", "kz.encode of bytes >= 0x80: \"utf8\" gives %XX "
        "per byte (é -> %C3%A9); \"x86\" reproduces the C module's signed-char quirk (é -> "
        "%,3%*9) for routing keys that must match Kamailio's.", PUBLISH,
        choices=("utf8", "x86"), c_module=False),
    Key("json_escape_char", "special", "%", "In JSON paths, this character inside a segment "
        "stands for a literal \".\" (\"\" = no escape; only the first character is used).",
        PUBLISH),
    # ---- consuming and event routes
    Key("routes", "special", None, "The event routes: a .py file (relative to this file) or an "
        "importable module name.", CONSUME, example='"routes.py"', c_module=False),
    Key("event_callback", "special", None, "Name of a function in the routes module called for "
        "every event instead of the route-name resolution (the KEMI event_callback).", CONSUME,
        example='"ksr_kazoo_event"'),
    Key("amqp_consumer_processes", "special", 4, "Number of worker processes running event "
        "routes (amqp_consumer_workers is a synonym; set only one).", CONSUME, minimum=1,
        maximum=1024, aliases=("amqp_consumer_workers",)),
    Key("amqp_consumer_event_key", "str", "Event-Category", "JSON field naming the event "
        "category: kazoo:consumer-event-<category>-<name>.", CONSUME, nonempty=True),
    Key("amqp_consumer_event_subkey", "str", "Event-Name", "JSON field naming the event name.",
        CONSUME, nonempty=True),
    Key("prefetch", "int", 256, "Unacknowledged deliveries per consumer (a subscription may set "
        "its own \"prefetch\").", CONSUME, minimum=1, maximum=65535, c_module=False),
    Key("handler_timeout_ms", "int", 30000, "Longest run of one event route, in milliseconds.",
        CONSUME, minimum=1, maximum=86_400_000, c_module=False),
    Key("max_redeliveries", "int", 2, "Times a delivery is retried after its worker died.",
        CONSUME, minimum=0, c_module=False),
    # ---- presence
    Key("pua_mode", "flag", True, "1 enables the presentity writes (kz.pua_publish); 0 disables "
        "them.", PRESENCE),
    Key("db_url", "special", None, "Database of the presentity table (default: kazoo-amqp.db, a "
        "SQLite file next to this file). sqlite:// followed by the file's path, postgres://, "
        "postgresql:// or mysql://USER:PASSWORD@HOST[:PORT]/DATABASE.", PRESENCE,
        example='"sqlite:///var/lib/kazoo-amqp/kazoo-amqp.db"'),
    Key("presentity_table", "special", "presentity", "Table of presence state (a plain SQL name, "
        "optionally schema.table).", PRESENCE),
    Key("pua_include_entity", "flag", True, "Dialog bodies: 1 adds <target uri=.../> inside "
        "<local>/<remote>.", PRESENCE),
    Key("pua_lock_type", "int", 1, "Table lock for presentity writes: 0 none, 1 write, 2 full.",
        PRESENCE, minimum=0, maximum=2),
    # ---- this daemon
    Key("socket", "special", "kazoo-amqp.sock", "The local API socket that Kamailio "
        "(app_python3), the CLI and handlers use (relative to this file).", DAEMON,
        c_module=False),
    Key("socket_mode", "special", "0660", "Permission bits of the socket file (chmod after "
        "bind), as 0o660 or \"0660\"; owner read/write is required. Whoever can connect can "
        "publish and query.", DAEMON, c_module=False),
    Key("socket_group", "special", None, "Group of the socket file (chown after bind), a name "
        "or a gid: the group of Kamailio's user. The daemon's user must be a member (or root). "
        "The socket's directory must not be writable by others without the sticky bit.",
        DAEMON, example='"kamailio"', c_module=False),
    Key("socket_pending_bytes", "int", 64 * 1024 * 1024, "Bytes of unfinished request frames "
        "held over all socket connections; the connection that would pass it is closed "
        "(logged, counted in status ipc.dropped_for_memory).", DAEMON, minimum=1,
        c_module=False),
    Key("log_level", "choice", "info", "Log level.", DAEMON,
        choices=("debug", "info", "warning", "error", "critical"), c_module=False),
    Key("log_format", "choice", "text", "\"text\" (readable lines) or \"json\" (one object per "
        "line with time, level, logger, message and, when known, exchange, routing_key, msg_id, "
        "call_id, route, worker); see docs/operations.md.", DAEMON, choices=("text", "json"),
        c_module=False),
    Key("http_listen", "special", None, "Metrics (/metrics, Prometheus), health (/health, "
        "/ready) and the status page (/) on HOST:PORT; off when unset. It has no authentication: "
        "bind it to a local or management address.", DAEMON, example='"127.0.0.1:9494"',
        c_module=False),
    Key("kamailio_rpc", "special", None, "Kamailio's JSON-RPC, as http://HOST:PORT/PATH, "
        "udp:HOST:PORT or unix:/PATH: watchers are refreshed after presentity writes.", DAEMON,
        example='"http://127.0.0.1:5060/RPC"', c_module=False),
    # ---- the Kamailio bridge
    Key("kamailio", "special", None, "The [kamailio] table written by kazoo-amqp "
        "kamailio-convert (docs/kamailio.md); do not edit by hand.", KAMAILIO, c_module=False),
    # ---- accepted and ignored
    Key("amqp_query_timeout_avp", "str", None, "AVP holding a per-query timeout.", IGNORED,
        ignored="there are no pseudo-variables to read a timeout from; pass timeout_ms to "
        "kz.query instead", example='"$avp(kz_timeout)"'),
    Key("amqp_waitframe_timeout", "seconds", 0.1, "Frame wait of the C consumer loop.", IGNORED,
        zero_ok=True, ignored="our AMQP client reads frames as they arrive; nothing waits on one"),
    Key("amqp_command_hashtable_size", "int", 2048, "Size of the C pending-query table.",
        IGNORED, minimum=1, ignored="pending queries are kept in a dict keyed by Msg-ID"),
    Key("amqp_timer_process_interval", "special", 200, "Tick of the C timer process.", IGNORED,
        minimum=1, aliases=("amqp_timmer_process_interval",),
        ignored="query deadlines are timers in the manager; there is no timer process "
        "(C never starts one either)"),
    Key("amqp_consumer_ack_timeout", "seconds", 0.1, "Legacy ack sub-loop timeout.", IGNORED,
        zero_ok=True, ignored=_LEGACY + "ack sub-loop; acks go out as soon as a delivery's "
        "outcome is known"),
    Key("amqp_interprocess_timeout", "seconds", 0.1, "Legacy command sub-loop timeout.",
        IGNORED, zero_ok=True,
        ignored=_LEGACY + "command sub-loop; socket requests are served as they arrive"),
    Key("amqp_internal_loop_count", "int", 5, "Legacy command sub-loop count.", IGNORED,
        minimum=1, ignored=_LEGACY + "command sub-loop; socket requests are served as they "
        "arrive"),
    Key("amqp_consumer_loop_count", "int", 10, "Legacy consume sub-loop count.", IGNORED,
        minimum=1, ignored=_LEGACY + "consume sub-loop; the flow of deliveries is bounded by "
        "prefetch"),
    Key("amqp_consumer_ack_loop_count", "int", 20, "Legacy ack sub-loop count.", IGNORED,
        minimum=1, ignored=_LEGACY + "ack sub-loop; acks go out as outcomes arrive"),
    Key("consume_messages_on_reconnect", "flag", True, "Legacy reconnect behaviour.", IGNORED,
        ignored=_LEGACY.rstrip() + "; after a reconnect deliveries resume at once, bounded by "
        "prefetch"),
    Key("single_consumer_on_reconnect", "flag", True, "Legacy reconnect behaviour.", IGNORED,
        ignored=_LEGACY.rstrip() + "; to keep per-key order use consistent-worker in a "
        "subscription"),
    Key("use_federated_exchange", "flag", False, "Federation switch.", IGNORED,
        ignored="never read by the C module either; use federate in a subscription"),
    Key("federated_exchange", "str", "federation", "Federation exchange.", IGNORED,
        ignored="never read by the C module either; use federate in a subscription"),
    Key("presence_use_full_entity", "flag", False, "Presence entity form.", IGNORED,
        ignored="never read by the C module either"),
    Key("amqp_result_avp", "str", "$avp(amqp_result)", "AVP receiving a query result.", IGNORED,
        ignored="there are no pseudo-variables; kz.query returns the reply"),
)  # fmt: skip

#: What a value means where kazoo-amqp does not use it as given (``Key.effective`` says why).
EFFECTIVE: Final[dict[str, Any]] = {
    "amqp_heartbeats": lambda value: value or 30,
    "amqp_connect_timeout": lambda value: max(value, 1.0),
}

#: The rows by name.
KEY: Final = {k.name: k for k in KEYS}


def known_keys() -> frozenset[str]:
    """Every top-level key a config file may contain (names, aliases, timer halves)."""
    return frozenset(name for k in KEYS for name in k.spellings)


def ignored_reason(spelling: str) -> str | None:
    """Why the key ``spelling`` (any accepted form) is ignored, or None when it has an effect."""
    for k in KEYS:
        if k.ignored and spelling in k.spellings:
            return k.ignored
    return None


# ---------------------------------------------------------------------------------------------
# Rendering


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _flag_int(k: Key, value: Any) -> str:
    # C module flags are 0/1 ints in Kamailio configs; the example keeps that form for them
    if k.kind == "flag" and k.c_module and isinstance(value, bool):
        return "1" if value else "0"
    return _toml(value)


def _assignments(k: Key, value: Any) -> list[str]:
    if k.kind == "seconds":
        sec = int(value)
        micro = round((value - sec) * 1_000_000)
        return [f"{k.name}_sec = {sec}", f"{k.name}_micro = {micro}"]
    return [f"{k.name} = {_flag_int(k, value)}"]


def _comment(text: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(text, 95, break_on_hyphens=False)]


_HEADER = """\
# kazoo-amqp example configuration. GENERATED from the key table in
# src/kazoo_amqp/core/config_keys.py: edit the table, then run scripts/gen-config-example.
#
# The keys are the Kamailio kazoo module's parameter names: modparam("kazoo", "NAME", VALUE)
# becomes NAME = VALUE, plus kazoo-amqp's own keys. Every key is shown with its default; a key
# without a default is shown commented out with an example value. Relative paths are relative
# to the directory of this file. Check a file without connecting to anything:
#     kazoo-amqp check-config --config examples/kazoo-amqp.toml
# and list every key with its type, default, range and meaning:
#     kazoo-amqp check-config --describe
"""

#: Values the shipped example sets instead of the default (it runs the example routes).
EXAMPLE_VALUES: Final = {"node_hostname": "sbc1.example.net", "routes": "routes.py"}


def render_example() -> str:
    """The text of ``examples/kazoo-amqp.toml``."""
    out = [_HEADER]
    rule = "# " + "-" * 93
    for section in SECTIONS:
        rows = [k for k in KEYS if k.section == section]
        if not rows:
            continue
        out.append(rule)
        out.extend(_comment(section))
        out.append(rule)
        out.append("")
        for k in rows:
            if k.ignored:
                continue
            note = k.meaning
            if k.range and k.kind not in ("choice",):
                note += f" Range: {k.range}."
            if k.choices:
                note += " One of: " + ", ".join(k.choices) + "."
            if k.effective:
                note += f" Here: {k.effective}."
            if k.aliases:
                note += " Also spelled: " + ", ".join(k.aliases) + "."
            out.extend(_comment(note))
            if k.name in EXAMPLE_VALUES:
                out.extend(_assignments(k, EXAMPLE_VALUES[k.name]))
            elif k.default is None:
                if k.example is not None:
                    out.append(f"# {k.name} = {k.example}")
            else:
                out.extend(_assignments(k, k.default))
            out.append("")
        ignored = [k for k in rows if k.ignored]
        for k in ignored:
            value = k.default if k.default is not None else None
            lines = _assignments(k, value) if value is not None else [f"{k.name} = {k.example}"]
            for line in lines:
                out.append(f"# {line}")
            out.extend("#     " + c[2:] for c in _comment(k.ignored))
        if ignored:
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def describe_table() -> list[tuple[str, str, str, str, str, str]]:
    """Rows (name, type, default, range, meaning, ignored-why) for ``check-config --describe``."""
    rows = []
    for k in KEYS:
        default = "(not set)" if k.default is None else _toml(k.default)
        meaning = k.meaning + (f" Here: {k.effective}." if k.effective else "")
        if k.aliases:
            meaning += " Also: " + ", ".join(k.aliases) + "."
        rows.append((k.name, k.type, default, k.range, meaning, k.ignored))
    return rows
