"""The ``[kamailio]`` table of the daemon config: where the bridge listens and the call table.

Written by ``kazoo-amqp kamailio-convert`` (see ``docs/kamailio-bridge-design.md``)::

    [kamailio]
    bridge = "127.0.0.1:5091"
    socket_workers = 4
    max_event_bytes = 1048576
    routes = ["kazoo:consumer-event-presence-update", ...]

    [kamailio.calls.kp-3f9a1c-1]
    op = "publish"
    args = ["callmgr", "reg.success.$var(realm)", "$var(payload)"]
    where = "registrar-role.cfg:123"

    [kamailio.calls.kq-0b12ef-1]
    op = "query"
    args = ["callmgr", "route.check", "$var(payload)"]     # + headers as a 4th item
    target = "$var(answer)"                                 # the cfg's 4th argument, if a PV
    where = "kamailio.cfg:88"

The one parser of this table, used by all three readers: the daemon (lanes, routes), the
Kamailio edge module (the call table) and ``kamailio-convert`` (it validates what it writes).
Pure: :func:`bridge_from_mapping` validates an already parsed table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kazoo_amqp.errors import ConfigError

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_SOCKET_WORKERS",
    "OPS",
    "BridgeSettings",
    "CallSite",
    "bridge_from_mapping",
    "parse_hostport",
]

DEFAULT_BRIDGE: Final = "127.0.0.1:5091"
DEFAULT_SOCKET_WORKERS: Final = 4
DEFAULT_MAX_EVENT_BYTES: Final = 1048576

#: Operations a call site may name, with the number of ``args`` they take (min, max):
#: publish ``[exchange, routing_key, payload, headers?]``; query the same (the cfg's 4th
#: argument, a target PV, is the row's ``target``); async_query ``[exchange, routing_key,
#: payload, reply_route, timeout_route]``; subscribe ``[json]`` or ``[exchange, type, queue,
#: routing_key]``; pua_* ``[json]``.
OPS: Final[dict[str, tuple[int, int]]] = {
    "publish": (3, 4),
    "query": (3, 4),
    "async_query": (5, 5),
    "subscribe": (1, 4),
    "pua_publish": (1, 1),
    "pua_publish_dialoginfo": (1, 1),
    "pua_publish_mwi": (1, 1),
    "pua_publish_presence": (1, 1),
}

_KEYS: Final = (
    "bridge",
    "socket_workers",
    "max_event_bytes",
    "routes",
    "calls",
    "request_timeout_ms",
)
_CALL_KEYS: Final = ("op", "args", "target", "where")


@dataclass(frozen=True, slots=True)
class CallSite:
    """One rewritten ``kazoo_*`` call: its operation and the arguments' unexpanded cfg text."""

    op: str
    args: tuple[str, ...]
    where: str = ""
    #: ``query`` only: the PV that also receives the reply (``$var(x)``), or ""
    target: str = ""


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """The validated ``[kamailio]`` table."""

    host: str
    port: int
    socket_workers: int = DEFAULT_SOCKET_WORKERS
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    routes: tuple[str, ...] = ()
    calls: Mapping[str, CallSite] = field(default_factory=dict)
    request_timeout_ms: int = 30000

    @property
    def bridge(self) -> str:
        return f"{self.host}:{self.port}"


def parse_hostport(text: str, key: str = "kamailio.bridge") -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` too) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"config key {key!r} = {text!r}: must be HOST:PORT of the bridge's xhttp socket, "
            'e.g. bridge = "127.0.0.1:5091"',
            key=key,
        )
    return host, int(port)


def _int(table: Mapping[str, Any], name: str, default: int, minimum: int, meaning: str) -> int:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"config key 'kamailio.{name}' = {value!r}: must be an integer of at least "
            f"{minimum} ({meaning}), e.g. {name} = {default}",
            key=f"kamailio.{name}",
        )
    return value


def _call(name: str, value: Any) -> CallSite:
    key = f"kamailio.calls.{name}"
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"config key {key!r}: must be a table with op and args, e.g. "
            '{ op = "publish", args = ["callmgr", "rk", "$var(payload)"] }',
            key=key,
        )
    op = value.get("op")
    if op not in OPS:
        raise ConfigError(
            f"config key '{key}.op' = {op!r}: must be one of {', '.join(sorted(OPS))}", key=key
        )
    args = value.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"config key '{key}.args': must be a list of strings", key=key)
    low, high = OPS[op]
    if not low <= len(args) <= high:
        raise ConfigError(
            f"config key '{key}.args': {op} takes {low} to {high} arguments, not {len(args)}",
            key=key,
        )
    where = value.get("where", "")
    if not isinstance(where, str):
        raise ConfigError(f"config key '{key}.where': must be a string (file:line)", key=key)
    target = value.get("target", "")
    if not isinstance(target, str) or (target and (op != "query" or not target.startswith("$"))):
        raise ConfigError(
            f"config key '{key}.target' = {target!r}: only a query has a target, and it is a "
            'variable, e.g. target = "$var(answer)"',
            key=key,
        )
    for name in value:
        if name not in _CALL_KEYS:
            raise ConfigError(
                f"config key '{key}.{name}': unknown key; a call row takes {', '.join(_CALL_KEYS)}",
                key=key,
            )
    return CallSite(op, tuple(args), where, target)


def bridge_from_mapping(table: Any) -> BridgeSettings | None:
    """Validate the ``[kamailio]`` table (``None`` when the config has none).

    Raises:
        ConfigError: an unknown key or a wrong value; the message names the key and the fix.
    """
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ConfigError(
            "config key 'kamailio' must be a table ([kamailio] with bridge = \"HOST:PORT\")",
            key="kamailio",
        )
    for key in table:
        if key not in _KEYS:
            raise ConfigError(
                f"config key 'kamailio.{key}': unknown key; the [kamailio] table takes "
                f"{', '.join(_KEYS)}",
                key=f"kamailio.{key}",
            )
    bridge = table.get("bridge", DEFAULT_BRIDGE)
    if not isinstance(bridge, str):
        raise ConfigError(
            "config key 'kamailio.bridge' must be a string HOST:PORT", key="kamailio.bridge"
        )
    host, port = parse_hostport(bridge)
    routes = table.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
        raise ConfigError(
            "config key 'kamailio.routes' must be a list of route names", key="kamailio.routes"
        )
    calls = table.get("calls", {})
    if not isinstance(calls, Mapping):
        raise ConfigError("config key 'kamailio.calls' must be a table", key="kamailio.calls")
    return BridgeSettings(
        host=host,
        port=port,
        socket_workers=_int(
            table, "socket_workers", DEFAULT_SOCKET_WORKERS, 1, "Kamailio processes on the bridge"
        ),
        max_event_bytes=_int(
            table,
            "max_event_bytes",
            DEFAULT_MAX_EVENT_BYTES,
            1024,
            "largest event sent to Kamailio",
        ),
        routes=tuple(routes),
        calls={str(name): _call(str(name), value) for name, value in calls.items()},
        request_timeout_ms=_int(
            table, "request_timeout_ms", 30000, 100, "longest wait for Kamailio to run a route"
        ),
    )
