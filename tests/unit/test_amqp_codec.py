"""The sans-IO AMQP codec with byte vectors: decoding in any split, bad input, frame building."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp import header as pheader

from kazoo_amqp.amqp import codec
from kazoo_amqp.amqp.codec import FrameDecoder, Method
from kazoo_amqp.errors import BadRoutingKey, FrameError, UsageError


class Sink:
    """Records every event as a tuple; can pause the decoder after N deliveries."""

    def __init__(self, pause_after: int = 0) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.pause_after = pause_after
        self.decoder: FrameDecoder | None = None

    def on_method(self, channel: int, method: Method) -> None:
        self.events.append(("method", channel, method.name))

    def on_deliver(self, channel: int, content: list[Any], body: bytes) -> None:
        c = content
        self.events.append(("deliver", channel, *c[3:8], body, *c[8:11]))
        if self.pause_after and len(self.events) == self.pause_after:
            assert self.decoder is not None
            self.decoder.paused = True

    def on_return(
        self, channel: int, method: spec.Basic.Return, body: bytes, message_id: str | None
    ) -> None:
        self.events.append(("return", channel, method.reply_code, method.exchange, body))

    def on_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        self.events.append(("confirm", channel, delivery_tag, multiple, ack))


def decoder(sink: Sink | None = None, frame_max: int = 131072) -> tuple[FrameDecoder, Sink]:
    sink = sink or Sink()
    dec = FrameDecoder(sink, frame_max)
    sink.decoder = dec
    return dec, sink


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


def shortstr(text: str) -> bytes:
    raw = text.encode()
    return bytes((len(raw),)) + raw


def deliver(channel: int = 1, tag: int = 7, ctag: str = "ctag", rk: str = "rk") -> bytes:
    payload = (
        struct.pack(">HH", 60, 60) + shortstr(ctag) + struct.pack(">QB", tag, 1)
        + shortstr("ex") + shortstr(rk)
    )  # fmt: skip
    return frame(1, channel, payload)


def header(channel: int, size: int, props: spec.Basic.Properties | None = None) -> bytes:
    return pframe.marshal(pheader.ContentHeader(0, size, props or spec.Basic.Properties()), channel)


def body(channel: int, data: bytes) -> bytes:
    return frame(3, channel, data)


PROPS = spec.Basic.Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers={"k": "v", "n": 5},
    delivery_mode=2,
    priority=3,
    correlation_id="corr",
    reply_to="rq",
    expiration="1000",
    message_id="mid",
    timestamp=None,
    message_type="t",
    user_id="guest",
    app_id="app",
)

STREAM = b"".join(
    (
        pframe.marshal(spec.Connection.Tune(channel_max=10, frame_max=4096, heartbeat=5), 0),
        deliver(1, 1),
        header(1, 5, PROPS),
        body(1, b"hello"),
        deliver(2, 2, rk="two"),
        header(2, 6),
        body(2, b"abc"),
        body(2, b"def"),
        pframe.marshal(spec.Basic.Ack(delivery_tag=9, multiple=True), 3),
        pframe.marshal(spec.Basic.Nack(delivery_tag=10), 3),
        pframe.marshal(spec.Basic.Return(312, "NO_ROUTE", "ex", "rk"), 4),
        header(4, 0),
        codec.HEARTBEAT_FRAME,
        deliver(1, 3),
        header(1, 0),
    )
)

EXPECTED: list[tuple[Any, ...]] = [
    ("method", 0, "Connection.Tune"),
    ("deliver", 1, b"ctag", 1, True, "ex", "rk", b"hello", {"k": "v", "n": 5}, "mid", "corr"),
    ("deliver", 2, b"ctag", 2, True, "ex", "two", b"abcdef", None, None, None),
    ("confirm", 3, 9, True, True),
    ("confirm", 3, 10, False, False),
    ("return", 4, 312, "ex", b""),
    ("deliver", 1, b"ctag", 3, True, "ex", "rk", b"", None, None, None),
]


def test_a_stream_decodes_to_events_in_order() -> None:
    dec, sink = decoder()
    dec.feed(STREAM)
    assert sink.events == EXPECTED
    assert dec.buffered == 0


def test_the_same_events_when_split_at_every_byte() -> None:
    dec, sink = decoder()
    for i in range(len(STREAM)):
        dec.feed(STREAM[i : i + 1])
    assert sink.events == EXPECTED


@pytest.mark.parametrize("seed", range(20))
def test_the_same_events_in_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    dec, sink = decoder()
    pos = 0
    while pos < len(STREAM):
        n = rng.randint(1, 60)
        dec.feed(STREAM[pos : pos + n])
        pos += n
    assert sink.events == EXPECTED


def test_a_truncated_stream_waits_for_the_rest() -> None:
    for cut in range(len(STREAM)):
        dec, sink = decoder()
        dec.feed(STREAM[:cut])
        assert sink.events == EXPECTED[: len(sink.events)]
        dec.feed(STREAM[cut:])
        assert sink.events == EXPECTED


def test_pausing_in_a_callback_stops_dispatch_until_resumed() -> None:
    dec, sink = decoder(Sink(pause_after=2))
    dec.feed(STREAM)
    assert sink.events == EXPECTED[:2]
    assert dec.buffered > 0
    dec.feed(b"")
    assert sink.events == EXPECTED[:2]
    dec.paused = False
    dec.feed(b"")
    assert sink.events == EXPECTED


def test_only_the_basic_properties_the_daemon_reads_are_decoded() -> None:
    dec, sink = decoder()
    props = spec.Basic.Properties(message_id="only-id", app_id="x")
    dec.feed(deliver(1, 1) + header(1, 1, props) + body(1, b"x"))
    assert sink.events[0][-3:] == (None, "only-id", None)


# --------------------------------------------------------------------------- bad input

_OK = deliver(1, 1) + header(1, 2) + body(1, b"ok")

BAD: dict[str, tuple[bytes, str]] = {
    "no frame-end octet": (deliver()[:-1] + b"\x00", "does not end with 0xCE"),
    "unknown frame type": (frame(9, 0, b""), "unknown frame type 9"),
    "oversize frame": (struct.pack(">BHI", 1, 1, 5000) + b"x" * 5001, "larger than frame_max"),
    "header without a method": (header(1, 2), "without a content method"),
    "body without a header": (deliver() + body(1, b"x"), "without a content header"),
    "body larger than announced": (
        deliver() + header(1, 2) + body(1, b"xyz"),
        "carry more than the 2 bytes",
    ),
    "method in the middle of a content": (deliver() + deliver(), "in the middle of a content"),
    "two content headers": (deliver() + header(1, 2) + header(1, 2), "without a content method"),
    "deliver with a consumer tag past its frame": (
        frame(1, 1, struct.pack(">HH", 60, 60) + b"\xff" + b"x" * 20),
        "malformed basic.deliver",
    ),
    "deliver cut short": (frame(1, 1, deliver()[7:-6]), "malformed basic.deliver"),
    "deliver with trailing bytes": (
        frame(1, 1, deliver()[7:-1] + b"zz"),
        "malformed basic.deliver",
    ),
    "ack of the wrong size": (frame(1, 1, struct.pack(">HHQ", 60, 80, 1)), "malformed basic.ack"),
    "method frame of 2 bytes": (frame(1, 0, b"\x00\x0a"), "method frame of 2 bytes"),
    "unknown method": (frame(1, 0, struct.pack(">HH", 99, 99)), "unknown method 99.99"),
    "undecodable method": (frame(1, 0, struct.pack(">HH", 10, 10) + b"\x00"), "cannot decode"),
    "header of 10 bytes": (deliver() + frame(2, 1, b"\x00" * 10), "content header of 10 bytes"),
    "properties past their frame": (
        deliver() + frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0x0080) + b"\x09ab"),
        "run past its frame",
    ),
    "headers table past its frame": (
        deliver() + frame(2, 1, struct.pack(">HHQHI", 60, 0, 1, 0x2000, 99) + b"\x00"),
        "headers table",
    ),
    "bad headers table": (
        deliver() + frame(2, 1, struct.pack(">HHQHI", 60, 0, 1, 0x2000, 3) + b"\x01k?"),
        "cannot decode the headers",
    ),
    "content-type-only header with the wrong length": (
        deliver() + frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0x8000) + b"\x05ab"),
        "malformed content header",
    ),
    "flagless header with trailing bytes": (
        deliver() + frame(2, 1, struct.pack(">HHQH", 60, 0, 1, 0) + b"x"),
        "trailing bytes",
    ),
    "heartbeat on a channel": (frame(8, 1, b""), "heartbeat frame on channel 1"),
    "another protocol version": (b"AMQP\x00\x00\x09\x00", "does not speak AMQP 0-9-1"),
    "http": (b"HTTP/1.1 400 Bad Request\r\n\r\n", "unknown frame type 72"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_a_frame_error(name: str) -> None:
    data, message = BAD[name]
    dec, _ = decoder(frame_max=4096)
    with pytest.raises(FrameError, match=message):
        dec.feed(data)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_split_at_every_byte_is_the_same_frame_error(name: str) -> None:
    data, message = BAD[name]
    dec, _ = decoder(frame_max=4096)
    with pytest.raises(FrameError, match=message):
        for i in range(len(data)):
            dec.feed(data[i : i + 1])


@pytest.mark.parametrize("seed", range(300))
def test_corrupted_streams_give_frame_errors_and_nothing_else(seed: int) -> None:
    rng = random.Random(seed)
    data = bytearray(STREAM)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    cut = rng.randint(1, len(data))
    dec, _ = decoder(frame_max=4096)
    try:
        dec.feed(bytes(data[:cut]))
        dec.feed(bytes(data[cut:]))
    except FrameError:
        pass


# --------------------------------------------------------------------------- encoding


def test_names_pamqp_would_refuse_are_encoded_without_touching_pamqp() -> None:
    import pamqp.constants

    before = dict(pamqp.constants.DOMAIN_REGEX)
    method = codec.build_method(spec.Queue.Declare, queue="kamailio@host-<1-0>", durable=True)
    raw = codec.encode_method(5, method)
    channel, decoded = pframe.unmarshal(raw)[1:]
    assert channel == 5
    assert isinstance(decoded, spec.Queue.Declare)
    assert decoded.queue == "kamailio@host-<1-0>"
    assert (decoded.durable, decoded.exclusive) == (True, False)
    assert before == pamqp.constants.DOMAIN_REGEX


@pytest.mark.parametrize(
    "method",
    [
        spec.Exchange.Declare(exchange="ex", exchange_type="topic", arguments={"a": 1}),
        spec.Queue.Bind(queue="q", exchange="ex", routing_key="a.*", arguments={"x-match": "all"}),
        spec.Basic.Consume(queue="q", consumer_tag="t", no_ack=True, exclusive=True),
        spec.Basic.Qos(prefetch_count=10),
        spec.Connection.TuneOk(channel_max=2047, frame_max=131072, heartbeat=30),
        spec.Channel.Close(200, "Normal shutdown", 0, 0),
    ],
)
def test_encode_method_matches_pamqp(method: Method) -> None:
    assert codec.encode_method(3, method) == pframe.marshal(method, 3)


def test_names_over_255_bytes_are_usage_errors_naming_the_method() -> None:
    method = codec.build_method(spec.Exchange.Declare, exchange="é" * 128)
    with pytest.raises(UsageError, match=r"exchange\.declare exchange is 256 bytes"):
        codec.encode_method(1, method)
    with pytest.raises(BadRoutingKey):
        codec.publish_method_frame(1, "", "k" * 256, False)


def _frames(out: list[bytes | memoryview]) -> list[tuple[int, int, Any]]:
    data = b"".join(out)
    frames = []
    while data:
        size = struct.unpack(">I", data[3:7])[0]
        consumed, channel, value = pframe.unmarshal(data[: size + 8])
        frames.append((data[0], channel, value))
        data = data[consumed:]
    return frames


def test_publish_frames_plain_and_with_properties() -> None:
    method = codec.publish_method_frame(2, "ex", "rk", True)
    out: list[bytes | memoryview] = []
    codec.append_publish(out, 2, method, b"{}", 4096)
    codec.append_publish(
        out, 2, method, b"{}", 4096, headers=[("a", "b")], message_id="m", correlation_id="c",
        reply_to="r", persistent=True,
    )  # fmt: skip
    frames = _frames(out)
    assert [f[0] for f in frames] == [1, 2, 3, 1, 2, 3]
    assert frames[0][2].mandatory is True and frames[0][2].exchange == "ex"
    assert frames[1][2].properties.content_type == "application/json"
    props = frames[4][2].properties
    assert (props.headers, props.message_id, props.correlation_id) == ({"a": "b"}, "m", "c")
    assert (props.reply_to, props.delivery_mode) == ("r", 2)
    assert frames[5][2].value == b"{}"


def test_bodies_are_cut_at_frame_max_minus_8() -> None:
    out: list[bytes | memoryview] = []
    body_ = bytes(range(256)) * 40  # 10240 bytes
    codec.append_publish(out, 1, codec.publish_method_frame(1, "", "q", False), body_, 4096,
                         message_id="m")  # fmt: skip
    frames = _frames(out)
    bodies = [f for f in frames if f[0] == 3]
    assert [len(f[2].value) for f in bodies] == [4088, 4088, 2064]
    assert b"".join(f[2].value for f in bodies) == body_
    assert all(len(bytes(part)) <= 4096 for part in out)


def test_a_content_header_that_cannot_fit_fails_that_publish_alone() -> None:
    out: list[bytes | memoryview] = []
    method = codec.publish_method_frame(1, "", "q", False)
    with pytest.raises(UsageError, match="does not fit in one frame of the negotiated frame_max"):
        codec.append_publish(out, 1, method, b"{}", 4096, headers={"h": "x" * 5000})
    assert out == []
    codec.append_publish(out, 1, method, b"{}", 4096, headers={"h": "x" * 4000})
    assert len(_frames(out)) == 3
