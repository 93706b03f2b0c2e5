"""Length-prefixed frames (core/framing.py)."""

from __future__ import annotations

import random
import struct

import pytest

from kazoo_amqp.core.framing import FrameDecoder, encode_frame
from kazoo_amqp.errors import ProtocolError

PAYLOADS = [
    b"",
    b"a",
    b"abc",
    b'{"id":1,"op":"ping"}',
    bytes(range(256)),
    b"\x00\x00\x00\x05",  # a payload that looks like a length prefix
    b"x" * 70_000,  # larger than a typical read
]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def test_encode_frame_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"x" * 258)[:4] == b"\x00\x00\x01\x02"


def test_whole_stream_in_one_feed() -> None:
    assert FrameDecoder().feed(STREAM) == PAYLOADS


def test_byte_at_a_time_equals_whole_feeding() -> None:
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for i in range(len(STREAM)):
        frames += decoder.feed(STREAM[i : i + 1])
    assert frames == PAYLOADS
    assert decoder.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_equal_whole_feeding(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), 30))
    pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for piece in pieces:
        frames += decoder.feed(piece)
    assert frames == PAYLOADS


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_accepts_bytearray_and_memoryview(kind: type) -> None:
    decoder = FrameDecoder()
    out = decoder.feed(kind(STREAM[:10])) + decoder.feed(kind(STREAM[10:]))
    assert out == PAYLOADS
    assert all(type(f) is bytes for f in out)


def test_frames_are_independent_copies() -> None:
    data = bytearray(encode_frame(b"abc"))
    [frame] = FrameDecoder().feed(data)
    data[4:7] = b"zzz"
    assert frame == b"abc"


def test_partial_frame_is_kept_until_complete() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    assert decoder.feed(frame[:2]) == []
    assert decoder.feed(frame[2:6]) == []
    assert decoder.buffered == 6
    assert decoder.feed(frame[6:] + encode_frame(b"x")[:3]) == [b"hello"]
    assert decoder.feed(b"") == []
    assert decoder.feed(encode_frame(b"x")[3:]) == [b"x"]


def test_many_small_frames_in_one_chunk() -> None:
    payload = b"y" * 496
    chunk = encode_frame(payload) * 131
    assert FrameDecoder().feed(chunk) == [payload] * 131


def test_frame_at_the_limit_is_accepted() -> None:
    assert FrameDecoder(max_frame=5).feed(encode_frame(b"12345")) == [b"12345"]


@pytest.mark.parametrize(
    ("prefix", "limit"),
    [
        (struct.pack(">I", 6), 5),
        (b"\xff\xff\xff\xff", 64 * 1024 * 1024),  # 4 GiB
        (b"GET ", 1024 * 1024),  # an HTTP client on the socket
    ],
)
def test_oversize_raises_protocol_error_and_breaks_the_decoder(prefix: bytes, limit: int) -> None:
    decoder = FrameDecoder(max_frame=limit)
    size = struct.unpack(">I", prefix)[0]
    with pytest.raises(ProtocolError, match=f"frame of {size} bytes exceeds the limit of {limit}"):
        decoder.feed(prefix + b"rest")
    assert decoder.broken
    with pytest.raises(ProtocolError, match="unusable"):
        decoder.feed(encode_frame(b"ok"))


def test_oversize_detected_after_a_held_back_partial_header() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_frame(b"ok") + b"\x00\x00") == [b"ok"]
    with pytest.raises(ProtocolError, match="is the peer speaking the kazoo-amqp socket protocol"):
        decoder.feed(b"\x01\x00")
    assert decoder.broken


def test_encode_frame_rejects_a_payload_the_prefix_cannot_describe() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return 2**32

    with pytest.raises(ProtocolError, match="at most"):
        encode_frame(Huge(b""))


def test_max_frame_must_fit_the_prefix() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=2**32)
