"""Frames on the socketpair between the manager and one worker process.

Every frame is length-prefixed (``core.framing``); its first byte says what it is:

manager -> worker
    ``I`` init: JSON ``{"bindings": [[key|null, subkey|null], ...], "zones": {sid: zone}}``
    ``D`` delivery: header ``>QHHB`` (seq, binding index, server id, flags), then
          ``>HH`` lengths and the routing key and exchange (UTF-8), then the raw body.
          Binding index ``NO_BINDING`` means "no subscription" (an unmatched reply).
    ``E`` synthetic event (connection open/closed): ``>Q`` seq, then the JSON body; no routing key.
    ``R`` event for one named route (``kazoo:publish-failed``): ``>QH`` seq and name length, the
          route name (UTF-8), then the JSON body; no route-name resolution, no routing key.
    ``S`` stop: finish what was received, then exit.

worker -> manager
    ``O`` outcomes: repeated ``>QB`` (seq, outcome code); one frame per batch of work.
    ``M`` metrics (only when the daemon serves metrics): JSON ``[[route, outcome, [bucket
          counts], sum], ...]``, the handler-duration histograms since the last ``M`` frame
          (deltas, buckets of ``core.stats.HANDLER_BUCKETS``); at most about one per second.

Deliveries are batched by the manager (one socket write per worker per read from the broker), so
the parsing here is on the hot path: plain ``struct`` and slicing, nothing else.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from kazoo_amqp.core.framing import encode_frame

NO_BINDING = 0xFFFF
FLAG_REDELIVERED = 0x01

_DELIVERY = struct.Struct(">QHHBHH")
_SEQ = struct.Struct(">Q")
_NAMED = struct.Struct(">QH")
_OUTCOME = struct.Struct(">QB")


class Outcome(enum.IntEnum):
    """What a worker did with one delivery."""

    DONE = 0  # a route ran (or the callback) and returned
    HANDLER_ERROR = 1  # the route raised; logged with the message identity
    BAD_MESSAGE = 2  # not JSON / not an object / invalid UTF-8; logged, never routed
    NO_ROUTE = 3  # no route of any candidate name exists; logged at debug


@dataclass(slots=True)
class DeliveryFrame:
    seq: int
    binding: int
    server_id: int
    redelivered: bool
    routing_key: str
    exchange: str
    body: bytes


@dataclass(slots=True)
class NamedEventFrame:
    seq: int
    route: str
    body: bytes


@dataclass(slots=True)
class EventFrame:
    seq: int
    body: bytes


@dataclass(slots=True)
class StatsFrame:
    """Handler-duration histogram deltas: ``(route, outcome, bucket counts, sum)`` rows."""

    rows: list[tuple[str, str, list[int], float]]


@dataclass(slots=True)
class InitFrame:
    bindings: list[tuple[str | None, str | None]]
    zones: dict[int, str]


class StopFrame:
    pass


def encode_init(bindings: list[tuple[str | None, str | None]], zones: dict[int, str]) -> bytes:
    body = json.dumps({"bindings": bindings, "zones": {str(k): v for k, v in zones.items()}})
    return encode_frame(b"I" + body.encode())


def encode_delivery(
    seq: int,
    binding: int,
    server_id: int,
    redelivered: bool,
    routing_key: str,
    exchange: str,
    body: bytes,
) -> bytes:
    rk = routing_key.encode("utf-8", "surrogateescape")
    ex = exchange.encode("utf-8", "surrogateescape")
    head = _DELIVERY.pack(
        seq, binding, server_id, FLAG_REDELIVERED if redelivered else 0, len(rk), len(ex)
    )
    return encode_frame(b"D" + head + rk + ex + body)


def encode_event(seq: int, body: bytes) -> bytes:
    return encode_frame(b"E" + _SEQ.pack(seq) + body)


def encode_named_event(seq: int, route: str, body: bytes) -> bytes:
    name = route.encode("utf-8")
    return encode_frame(b"R" + _NAMED.pack(seq, len(name)) + name + body)


def encode_stop() -> bytes:
    return encode_frame(b"S")


def encode_outcomes(outcomes: list[tuple[int, int]]) -> bytes:
    return encode_frame(b"O" + b"".join(_OUTCOME.pack(s, o) for s, o in outcomes))


def encode_stats(rows: list[tuple[str, str, list[int], float]]) -> bytes:
    return encode_frame(b"M" + json.dumps(rows, separators=(",", ":")).encode())


def decode_to_worker(
    frame: bytes,
) -> DeliveryFrame | EventFrame | NamedEventFrame | InitFrame | StopFrame:
    kind = frame[:1]
    if kind == b"D":
        seq, binding, sid, flags, rk_len, ex_len = _DELIVERY.unpack_from(frame, 1)
        pos = 1 + _DELIVERY.size
        rk = frame[pos : pos + rk_len].decode("utf-8", "surrogateescape")
        pos += rk_len
        ex = frame[pos : pos + ex_len].decode("utf-8", "surrogateescape")
        pos += ex_len
        return DeliveryFrame(seq, binding, sid, bool(flags & FLAG_REDELIVERED), rk, ex, frame[pos:])
    if kind == b"E":
        (seq,) = _SEQ.unpack_from(frame, 1)
        return EventFrame(seq, frame[1 + _SEQ.size :])
    if kind == b"R":
        seq, size = _NAMED.unpack_from(frame, 1)
        pos = 1 + _NAMED.size
        return NamedEventFrame(seq, frame[pos : pos + size].decode("utf-8"), frame[pos + size :])
    if kind == b"I":
        data: dict[str, Any] = json.loads(frame[1:])
        return InitFrame(
            [(b[0], b[1]) for b in data["bindings"]],
            {int(k): v for k, v in data["zones"].items()},
        )
    if kind == b"S":
        return StopFrame()
    raise ValueError(f"unknown frame type {kind!r} on the worker pipe")


def decode_outcomes(frame: bytes) -> list[tuple[int, int]]:
    if frame[:1] != b"O":
        raise ValueError(f"unknown frame type {frame[:1]!r} from a worker")
    return [_OUTCOME.unpack_from(frame, pos) for pos in range(1, len(frame), _OUTCOME.size)]


def decode_stats(frame: bytes) -> StatsFrame:
    """Parse an ``M`` frame; ValueError when it is not one or its rows are malformed."""
    if frame[:1] != b"M":
        raise ValueError(f"unknown frame type {frame[:1]!r} from a worker")
    data = json.loads(frame[1:])
    rows: list[tuple[str, str, list[int], float]] = []
    if not isinstance(data, list):
        raise ValueError("a metrics frame holds a list of rows")
    for row in data:
        if not (
            isinstance(row, list)
            and len(row) == 4
            and isinstance(row[0], str)
            and isinstance(row[1], str)
            and isinstance(row[2], list)
            and all(type(n) is int and n >= 0 for n in row[2])
            and isinstance(row[3], int | float)
        ):
            raise ValueError(f"malformed metrics row {row!r:.80}")
        rows.append((row[0], row[1], row[2], float(row[3])))
    return StatsFrame(rows)
