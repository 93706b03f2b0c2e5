"""Frames between the manager and a worker process (core/pipe.py over core/framing.py)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from kazoo_amqp.core.framing import FrameDecoder, encode_frame
from kazoo_amqp.core.pipe import (
    FLAG_REDELIVERED,
    NO_BINDING,
    DeliveryFrame,
    EventFrame,
    InitFrame,
    NamedEventFrame,
    Outcome,
    StopFrame,
    decode_outcomes,
    decode_to_worker,
    encode_delivery,
    encode_event,
    encode_init,
    encode_named_event,
    encode_outcomes,
    encode_stop,
)

BIG_BODY = b'{"k":"' + b"x" * (3 * 1024 * 1024) + b'"}'
U64_MAX = 2**64 - 1


def _table(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """parametrize keywords for (id, *values) rows."""
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


def _payload(frame: bytes) -> bytes:
    """Strip the 4-byte length prefix of one encoded frame (checking it)."""
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


# (id, DeliveryFrame)
DELIVERIES: list[tuple[str, DeliveryFrame]] = [
    ("plain", DeliveryFrame(1, 0, 1, False, "presence.update.1000", "presence", b'{"a":1}')),
    (
        "non-ascii-routing-key-and-exchange",
        DeliveryFrame(2, 3, 2, False, "présence.ünïcode.日本.😀", "échange", b"{}"),
    ),
    (
        "invalid-utf8-routing-key-surrogateescaped",
        DeliveryFrame(3, 0, 1, False, b"bad\xff\xfe".decode("utf-8", "surrogateescape"), "", b"{}"),
    ),
    ("empty-body", DeliveryFrame(4, 0, 1, False, "rk", "ex", b"")),
    ("empty-key-and-exchange", DeliveryFrame(5, 0, 1, False, "", "", b"{}")),
    ("three-megabyte-body", DeliveryFrame(6, 1, 1, False, "big", "ex", BIG_BODY)),
    ("redelivered", DeliveryFrame(7, 0, 1, True, "rk", "ex", b"{}")),
    (
        "no-binding-unmatched-reply",
        DeliveryFrame(8, NO_BINDING, 3, False, "kamailio@h-<3>-targeted-7", "targeted", b"{}"),
    ),
    ("extreme-numbers", DeliveryFrame(U64_MAX, 0xFFFE, 0xFFFF, True, "k", "e", b"\x00\xff")),
    ("255-byte-routing-key", DeliveryFrame(9, 0, 1, False, "é" * 127 + "a", "ex", b"{}")),
    ("body-looks-like-a-frame", DeliveryFrame(10, 0, 1, False, "rk", "ex", encode_stop())),
]


def _encode(d: DeliveryFrame) -> bytes:
    return encode_delivery(
        d.seq, d.binding, d.server_id, d.redelivered, d.routing_key, d.exchange, d.body
    )


@pytest.mark.parametrize(("delivery",), **_table(DELIVERIES))
def test_delivery_round_trips_every_field(delivery: DeliveryFrame) -> None:
    """encode_delivery then decode_to_worker gives back the same DeliveryFrame."""
    assert decode_to_worker(_payload(_encode(delivery))) == delivery


def test_delivery_layout_is_type_header_key_exchange_body() -> None:
    """`D`, >QHHBHH (seq, binding, sid, flags, key len, exchange len), key, exchange, raw body."""
    frame = _payload(encode_delivery(5, NO_BINDING, 2, True, "é", "ex", b"B"))
    assert frame == (
        b"D"
        + struct.pack(">QHHBHH", 5, 0xFFFF, 2, FLAG_REDELIVERED, 2, 2)
        + "é".encode()
        + b"ex"
        + b"B"
    )


@pytest.mark.parametrize(
    ("redelivered", "flags"), [(False, 0), (True, FLAG_REDELIVERED)], ids=["fresh", "redelivered"]
)
def test_redelivered_is_the_low_flag_bit(redelivered: bool, flags: int) -> None:
    """The flags byte is 1 for a redelivery and 0 otherwise."""
    frame = _payload(encode_delivery(1, 0, 1, redelivered, "k", "e", b""))
    assert frame[1 + 8 + 2 + 2] == flags


def test_no_binding_is_the_largest_binding_index() -> None:
    """NO_BINDING (an unmatched reply) is 0xFFFF, never a real subscription index."""
    assert NO_BINDING == 0xFFFF


# (id, seq, body)
EVENTS: list[tuple[str, int, bytes]] = [
    (
        "connection-open",
        1,
        b'{ "Event-Category": "connection", "Event-Name": "open", "host": "h", "zone": "local" }',
    ),
    ("empty-body", 0, b""),
    ("max-seq", U64_MAX, b"{}"),
    ("non-ascii-body", 3, '{"zone":"zürich"}'.encode()),
]


@pytest.mark.parametrize(("seq", "body"), **_table(EVENTS))
def test_event_round_trips_seq_and_body(seq: int, body: bytes) -> None:
    """encode_event then decode_to_worker gives an EventFrame with the same seq and body."""
    assert decode_to_worker(_payload(encode_event(seq, body))) == EventFrame(seq, body)


# (id, bindings, zones)
INITS: list[tuple[str, list[tuple[str | None, str | None]], dict[int, str]]] = [
    ("nothing", [], {}),
    (
        "defaults-and-overrides",
        [(None, None), ("Type", None), (None, "Action"), ("Type", "Action")],
        {1: "local", 2: "east", 3: "local"},
    ),
    ("non-ascii-names", [("Catégorie", "名前")], {7: "zône"}),
]


@pytest.mark.parametrize(("bindings", "zones"), **_table(INITS))
def test_init_round_trips_bindings_and_integer_zone_ids(
    bindings: list[tuple[str | None, str | None]], zones: dict[int, str]
) -> None:
    """Bindings come back as (key, subkey) tuples with None kept; zone ids come back as ints."""
    decoded = decode_to_worker(_payload(encode_init(bindings, zones)))
    assert decoded == InitFrame(bindings, zones)
    assert isinstance(decoded, InitFrame)
    assert all(type(b) is tuple for b in decoded.bindings)
    assert all(type(k) is int for k in decoded.zones)


def test_stop_round_trips_to_a_stop_frame() -> None:
    """A stop frame is the single byte `S` and decodes to StopFrame."""
    assert _payload(encode_stop()) == b"S"
    assert isinstance(decode_to_worker(b"S"), StopFrame)


# (id, outcomes batch)
OUTCOMES: list[tuple[str, list[tuple[int, int]]]] = [
    ("empty-batch", []),
    ("one", [(1, Outcome.DONE)]),
    ("every-outcome", [(i, int(o)) for i, o in enumerate(Outcome)]),
    ("big-batch", [(s, s % 4) for s in range(1000)]),
    ("max-seq", [(U64_MAX, Outcome.NO_ROUTE)]),
]


@pytest.mark.parametrize(("outcomes",), **_table(OUTCOMES))
def test_outcomes_batch_round_trips_in_order(outcomes: list[tuple[int, int]]) -> None:
    """encode_outcomes then decode_outcomes gives the same (seq, code) pairs, in order."""
    frame = _payload(encode_outcomes(outcomes))
    assert len(frame) == 1 + 9 * len(outcomes)
    assert decode_outcomes(frame) == [(s, int(o)) for s, o in outcomes]


def test_outcome_codes_are_stable() -> None:
    """The wire codes of the outcomes never change (manager and worker may differ in version)."""
    assert {o.name: int(o) for o in Outcome} == {
        "DONE": 0,
        "HANDLER_ERROR": 1,
        "BAD_MESSAGE": 2,
        "NO_ROUTE": 3,
    }


# ---------------------------------------------------------------------------------------------
# Through the length-prefixed stream


def _small_stream() -> tuple[bytes, list[Any]]:
    frames = [encode_init([(None, None), ("Type", "Action")], {1: "local", 2: "east"})]
    expected: list[Any] = [InitFrame([(None, None), ("Type", "Action")], {1: "local", 2: "east"})]
    for _, d in DELIVERIES:
        if d.body is not BIG_BODY:
            frames.append(_encode(d))
            expected.append(d)
    for _, seq, body in EVENTS:
        frames.append(encode_event(seq, body))
        expected.append(EventFrame(seq, body))
    frames.append(encode_stop())
    expected.append("stop")
    return b"".join(frames), expected


def _decoded(frames: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for f in frames:
        d = decode_to_worker(f)
        out.append("stop" if isinstance(d, StopFrame) else d)
    return out


def test_stream_fed_one_byte_at_a_time_decodes_like_fed_whole() -> None:
    """Every frame kind survives FrameDecoder byte by byte, identical to a single feed."""
    stream, expected = _small_stream()
    whole = _decoded(FrameDecoder().feed(stream))
    decoder = FrameDecoder()
    pieces: list[bytes] = []
    for i in range(len(stream)):
        pieces += decoder.feed(stream[i : i + 1])
    assert _decoded(pieces) == whole == expected
    assert decoder.buffered == 0


def test_three_megabyte_delivery_survives_split_reads() -> None:
    """A 3 MB delivery between two small ones decodes the same in 64 KiB reads and whole."""
    big = next(d for _, d in DELIVERIES if d.body is BIG_BODY)
    small = DELIVERIES[0][1]
    stream = _encode(small) + _encode(big) + _encode(small)
    decoder = FrameDecoder()
    pieces: list[bytes] = []
    for i in range(0, len(stream), 65536):
        pieces += decoder.feed(stream[i : i + 65536])
    assert _decoded(pieces) == _decoded(FrameDecoder().feed(stream)) == [small, big, small]


def test_outcomes_stream_fed_one_byte_at_a_time_decodes_like_fed_whole() -> None:
    """Outcome batches (including an empty one) survive byte-by-byte feeding."""
    batches = [o for _, o in OUTCOMES]
    stream = b"".join(encode_outcomes(b) for b in batches)
    decoder = FrameDecoder()
    pieces: list[bytes] = []
    for i in range(len(stream)):
        pieces += decoder.feed(stream[i : i + 1])
    whole = FrameDecoder().feed(stream)
    assert [decode_outcomes(f) for f in pieces] == [decode_outcomes(f) for f in whole]
    assert [decode_outcomes(f) for f in pieces] == [[(s, int(o)) for s, o in b] for b in batches]


# ---------------------------------------------------------------------------------------------
# Unknown frame types

# (id, frame payload)
BAD_TO_WORKER: list[tuple[str, bytes]] = [
    ("empty-frame", b""),
    ("unknown-letter", b"X"),
    ("lowercase-d", b"d" + b"\x00" * 16),
    ("outcome-sent-to-worker", encode_outcomes([(1, 0)])[4:]),
]


@pytest.mark.parametrize(("frame",), **_table(BAD_TO_WORKER))
def test_decode_to_worker_refuses_unknown_frame_types(frame: bytes) -> None:
    """A frame whose first byte is not D, E, I or S raises ValueError naming the type."""
    with pytest.raises(ValueError, match="unknown frame type"):
        decode_to_worker(frame)


# (id, frame payload)
BAD_FROM_WORKER: list[tuple[str, bytes]] = [
    ("empty-frame", b""),
    ("delivery-sent-back", b"D"),
    ("stop-sent-back", b"S"),
    ("lowercase-o", b"o"),
]


@pytest.mark.parametrize(("frame",), **_table(BAD_FROM_WORKER))
def test_decode_outcomes_refuses_anything_but_outcomes(frame: bytes) -> None:
    """A frame from a worker that is not `O` raises ValueError naming the type."""
    with pytest.raises(ValueError, match="unknown frame type"):
        decode_outcomes(frame)


def test_every_encoder_writes_a_length_prefixed_frame() -> None:
    """Each encoder's output is exactly encode_frame of its payload."""
    for frame in (
        encode_stop(),
        encode_event(1, b"{}"),
        encode_outcomes([(1, 0)]),
        encode_init([], {}),
        encode_delivery(1, 0, 1, False, "k", "e", b"{}"),
    ):
        assert frame == encode_frame(_payload(frame))


@pytest.mark.parametrize(
    ("seq", "route", "body"),
    [(1, "kazoo:publish-failed", b'{"Error": "PublishNacked"}'), (U64_MAX, "r\u00e9", b"{}")],
)
def test_named_event_round_trips_seq_route_and_body(seq: int, route: str, body: bytes) -> None:
    """encode_named_event then decode_to_worker gives the same seq, route name and body."""
    frame = decode_to_worker(_payload(encode_named_event(seq, route, body)))
    assert frame == NamedEventFrame(seq, route, body)
