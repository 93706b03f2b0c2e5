"""The identity of the message being handled, for log lines (``log_format = "json"``).

A worker sets it before an event route runs and clears it afterwards, so every log line written
meanwhile (ours, and the route author's own ``logging`` calls) carries the exchange, routing key,
Msg-ID, Call-ID, route and worker without any message text being parsed. Code that logs about a
message outside a route passes the same field names in ``extra=`` instead.

Setting it costs one context-variable write; the fields are only read when a record is
formatted (``obs.logs``).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["FIELDS", "clear", "current", "set_message"]

#: the identity fields, in the order a JSON log line shows them
FIELDS: tuple[str, ...] = ("exchange", "routing_key", "msg_id", "call_id", "route", "worker")

# (exchange, routing_key, payload, route, worker) of the message being handled
_current: ContextVar[tuple[str | None, str | None, Any, str | None, int | None] | None] = (
    ContextVar("kazoo_amqp_message", default=None)
)


def set_message(
    *,
    exchange: str | None,
    routing_key: str | None,
    payload: Any,
    route: str | None,
    worker: int | None,
) -> None:
    """Remember the message being handled (``payload`` is read lazily for Msg-ID/Call-ID)."""
    _current.set((exchange, routing_key, payload, route, worker))


def clear() -> None:
    _current.set(None)


def current() -> dict[str, Any]:
    """The known identity fields of the message being handled (empty outside a route)."""
    value = _current.get()
    if value is None:
        return {}
    exchange, routing_key, payload, route, worker = value
    out: dict[str, Any] = {}
    if exchange is not None:
        out["exchange"] = exchange
    if routing_key is not None:
        out["routing_key"] = routing_key
    if isinstance(payload, dict):
        for name, field in (("msg_id", "Msg-ID"), ("call_id", "Call-ID")):
            v = payload.get(field)
            if isinstance(v, str | int):
                out[name] = v
    if route is not None:
        out["route"] = route
    if worker is not None:
        out["worker"] = worker
    return out
