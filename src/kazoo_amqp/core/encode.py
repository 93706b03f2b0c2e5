"""Routing-key encoding of ``kazoo_encode`` and ``{kz.encode}`` (spec §7).

Safe bytes ``A-Z a-z 0-9 - ~ _`` are kept, space becomes ``+``, ``.`` becomes ``%2E`` and every
other byte becomes ``%XX``. A lone ``#`` or ``*`` (an AMQP topic wildcard) is kept. Output stops
once it holds 255 characters or more, checked before each input byte, so it can reach 257.

Bytes >= 0x80: by default they are ``%XX`` of each UTF-8 byte (``é`` -> ``%C3%A9``);
``high_bytes="x86"`` reproduces the C module's signed-char quirk (``é`` -> ``%,3%*9``).
"""

from __future__ import annotations

from typing import Final, Literal

from kazoo_amqp.errors import BadRoutingKey

__all__ = ["MAX_INPUT_BYTES", "MAX_OUTPUT_CHARS", "HighBytes", "encode", "encode_checked"]

HighBytes = Literal["utf8", "x86"]

#: kazoo_encode refuses longer inputs; {kz.encode} truncates instead.
MAX_INPUT_BYTES: Final = 255
#: Output stops once it holds this many characters (checked before each input byte).
MAX_OUTPUT_CHARS: Final = 255

_HEX = "0123456789ABCDEF"
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-~_")


def _piece(b: int, high_bytes: HighBytes) -> str:
    """The encoding of one input byte."""
    if b in _SAFE:
        return chr(b)
    if b == 0x20:
        return "+"
    if b < 0x80 or high_bytes == "utf8":
        return "%" + _HEX[b >> 4] + _HEX[b & 15]  # `.` gives %2E like any other byte
    return "%" + chr(0x20 + (b >> 4)) + _HEX[b & 15]  # x86-64 signed char: 8..F -> ( ) * + , - . /


_TABLES: Final[dict[str, dict[int, str]]] = {
    mode: {b: _piece(b, mode) for b in range(256)} for mode in ("utf8", "x86")
}
# Up to this many input bytes the cap can never be reached (each piece is at most 3 chars).
_UNCAPPED_LEN = MAX_OUTPUT_CHARS // 3


def _to_bytes(data: str | bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, str):
        try:
            return data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return data.encode("utf-8", "surrogatepass")
    return bytes(data)


def _encode_bytes(raw: bytes, high_bytes: HighBytes) -> str:
    if raw == b"#" or raw == b"*":
        return raw.decode("ascii")
    try:
        table = _TABLES[high_bytes]
    except KeyError:
        raise ValueError(f"high_bytes must be 'utf8' or 'x86', not {high_bytes!r}") from None
    if len(raw) <= _UNCAPPED_LEN:
        return raw.decode("latin-1").translate(table)
    out: list[str] = []
    length = 0
    for b in raw:
        if length >= MAX_OUTPUT_CHARS:
            break
        piece = table[b]
        out.append(piece)
        length += len(piece)
    return "".join(out)


def encode(data: str | bytes | bytearray | memoryview, *, high_bytes: HighBytes = "utf8") -> str:
    """`{kz.encode}`: encode for a routing key; long inputs are cut at about 255 output chars."""
    return _encode_bytes(_to_bytes(data), high_bytes)


def encode_checked(
    data: str | bytes | bytearray | memoryview, *, high_bytes: HighBytes = "utf8"
) -> str:
    """`kazoo_encode`: like encode(), but an input over 255 bytes raises BadRoutingKey."""
    raw = _to_bytes(data)
    if len(raw) > MAX_INPUT_BYTES:
        raise BadRoutingKey(
            f"input to encode is {len(raw)} bytes; kazoo_encode accepts at most {MAX_INPUT_BYTES}"
        )
    return _encode_bytes(raw, high_bytes)
