"""Sans-IO AMQP 0-9-1 frame codec: bytes in, events out; frames out. No asyncio, no sockets.

Inbound, :class:`FrameDecoder` takes the bytes read from the socket in any split
(``feed``), reassembles frames, assembles content (method + content header + body frames)
per channel and hands every complete event to a :class:`FrameSink`:

* ``on_deliver``: a ``basic.deliver`` with its body and the three properties the daemon reads
  (headers, message_id, correlation_id) -- parsed by hand with ``struct``, the consume hot path;
* ``on_confirm``: a publisher-confirm ``basic.ack``/``basic.nack`` -- by hand, the confirm path;
* ``on_return``: a ``basic.return`` with its body;
* ``on_method``: every other method, decoded by pamqp.

Anything that is not valid framing raises :class:`~kazoo_amqp.errors.FrameError` naming what was
wrong (truncated or oversize frame, missing frame-end octet, unknown frame type or method,
content frames out of order, fields running past their frame); never ``IndexError`` or
``struct.error``. After a ``FrameError`` the decoder is unusable: the connection must close.

A sink may set :attr:`FrameDecoder.paused` from inside a callback: dispatching stops after that
event and the rest of the bytes is kept until ``paused`` is cleared and ``feed`` is called again.

Outbound, the functions below build frames: :func:`encode_method` for every method (our own
marshalling of pamqp's method classes, so any exchange/queue name of up to 255 UTF-8 bytes can be
sent -- pamqp's own ``marshal`` checks names against a narrow pattern that rejects Kazoo's
``kamailio@host-<1-0>`` reply queues); :func:`publish_method_frame` and :func:`append_publish`
for ``basic.publish`` (by hand, the publish hot path); :data:`ACK_FRAME` for consumer acks.

Wire format (AMQP 0-9-1 §2.3.5, §4.2.3): a frame is ``type:u8 channel:u16 size:u32
payload[size] 0xCE``; method payloads start with ``class:u16 method:u16``; a content header
payload is ``class:u16 weight:u16 body_size:u64 flags:u16 properties...``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pamqp import commands as spec
from pamqp import decode as pdecode
from pamqp import encode as pencode
from pamqp.base import Frame as Method

from kazoo_amqp.errors import BadRoutingKey, FrameError, UsageError

__all__ = [
    "ACK_FRAME",
    "CONTENT_TYPE_JSON",
    "FRAME_END_B",
    "HEARTBEAT_FRAME",
    "MIN_FRAME_MAX",
    "PLAIN_CONTENT",
    "PLAIN_HDR_SIZE",
    "PROTOCOL_HEADER",
    "P_CONTENT_TYPE",
    "FrameDecoder",
    "FrameSink",
    "Method",
    "Props",
    "append_publish",
    "append_publish_with_properties",
    "build_method",
    "encode_method",
    "method_name",
    "publish_method_frame",
]

# --------------------------------------------------------------------------- wire constants

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_B = b"\xce"
_FRAME_TYPES = (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
#: AMQP 0-9-1 frame-min-size: every peer must accept frames this large
MIN_FRAME_MAX = 4096

# class << 16 | method
_BASIC_DELIVER = 0x003C003C
_BASIC_RETURN = 0x003C0032
_BASIC_ACK = 0x003C0050
_BASIC_NACK = 0x003C0078

_FRAME_HDR = struct.Struct(">BHI")  # type, channel, size
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64_U8 = struct.Struct(">QB")  # delivery tag + bits
_CONTENT_HDR = struct.Struct(">HHQH")  # class, weight, body size, property flags
#: a whole basic.ack / basic.nack / basic.reject method frame:
#: (1, channel, 13, 60, method id, delivery tag, bits, 0xCE)
ACK_FRAME = struct.Struct(">BHIHHQBB")
# content header frame up to and including the flags word; the properties follow
_HDR_FRAME = struct.Struct(">BHIHHQH")
_BODY_FRAME_HDR = struct.Struct(">BHI")

_CONTENT_TYPE_JSON = b"\x10application/json"
CONTENT_TYPE_JSON = _CONTENT_TYPE_JSON
# header frame with only content_type = application/json, its end byte and the next body frame
# header, for the common publish: type, ch, size, class, weight, body size, flags, props, end,
# body frame type, ch, body size
PLAIN_CONTENT = struct.Struct(">BHIHHQH17sBBHI")
PLAIN_HDR_SIZE = _PLAIN_HDR_SIZE = 14 + len(_CONTENT_TYPE_JSON)
_HDR_OVERHEAD = 8 + 14  # frame header + end octet + class/weight/size/flags

# property flags (AMQP 0-9-1 basic class, §1.8 / pamqp Basic.Properties.flags)
P_CONTENT_TYPE = _P_CONTENT_TYPE = 0x8000
_P_CONTENT_ENCODING = 0x4000
_P_HEADERS = 0x2000
_P_DELIVERY_MODE = 0x1000
_P_PRIORITY = 0x0800
_P_CORRELATION_ID = 0x0400
_P_REPLY_TO = 0x0200
_P_EXPIRATION = 0x0100
_P_MESSAGE_ID = 0x0080

#: (headers, message_id, correlation_id) of a content header
Props = tuple[dict[str, Any] | None, str | None, str | None]

_KIND_DELIVER = 1
_KIND_RETURN = 2

# the method classes pamqp knows, by class << 16 | method
_METHODS: dict[int, type[Method]] = dict(spec.INDEX_MAPPING)


# --------------------------------------------------------------------------- events


class FrameSink(Protocol):
    """Receives what :class:`FrameDecoder` decodes; callbacks run inside ``feed``."""

    def on_method(self, channel: int, method: Method) -> None:
        """Any method but deliver/return/publisher-confirm acks and nacks."""

    def on_deliver(self, channel: int, content: list[Any], body: bytes) -> None:
        """A complete ``basic.deliver`` (method, header and every body frame).

        ``content`` is the decoder's own record, read by position for speed: ``[3]`` consumer
        tag (bytes), ``[4]`` delivery tag, ``[5]`` redelivered, ``[6]`` exchange, ``[7]``
        routing key, ``[8]`` headers, ``[9]`` message_id, ``[10]`` correlation_id (see
        ``D_*``). It is not reused by the decoder; the sink may keep it.
        """

    def on_return(
        self, channel: int, method: spec.Basic.Return, body: bytes, message_id: str | None
    ) -> None:
        """A complete ``basic.return``."""

    def on_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        """A ``basic.ack`` (``ack``) or ``basic.nack`` from the broker."""


# A content being assembled on one channel is a flat list (cheaper to make and read than an
# object): [0 kind, 1 remaining (-1 until the content header arrived), 2 body parts or None,
# 3..7 the method's fields (deliver: consumer tag, delivery tag, redelivered, exchange, routing
# key; return: the method), 8 headers, 9 message_id, 10 correlation_id]
_Content = list[Any]
D_CONSUMER_TAG = 3
D_DELIVERY_TAG = 4
D_REDELIVERED = 5
D_EXCHANGE = 6
D_ROUTING_KEY = 7
D_HEADERS = 8
D_MESSAGE_ID = 9
D_CORRELATION_ID = 10


# --------------------------------------------------------------------------- decoding


class FrameDecoder:
    """Incremental AMQP 0-9-1 frame decoder (see the module docstring)."""

    __slots__ = (
        "_content",
        "_max_payload",
        "_need",
        "_on_deliver",
        "_rest",
        "_rest_len",
        "_sink",
        "_started",
        "paused",
    )

    def __init__(self, sink: FrameSink, frame_max: int = 131072) -> None:
        self._sink = sink
        self._on_deliver = sink.on_deliver
        self._max_payload = max(frame_max, MIN_FRAME_MAX) - 8
        #: set by the sink (or the owner) to stop dispatching; clear it and call ``feed(b"")``
        self.paused = False
        self._rest: list[bytes] = []
        self._rest_len = 0
        self._need = 0
        self._started = False
        self._content: dict[int, _Content] = {}

    @property
    def frame_max(self) -> int:
        """Largest frame accepted, frame header and end octet included."""
        return self._max_payload + 8

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        self._max_payload = max(value, MIN_FRAME_MAX) - 8

    @property
    def buffered(self) -> int:
        """Bytes received but not yet dispatched (an incomplete frame, or held while paused)."""
        return self._rest_len

    @property
    def partial_frame(self) -> bool:
        """True when the bytes kept end in the middle of a frame."""
        return 0 < self._rest_len < self._need

    def reset_channel(self, channel: int) -> None:
        """Forget a half-assembled content of a channel that has closed."""
        self._content.pop(channel, None)

    def feed(
        self,
        data: bytes,
        *,
        # bound once at definition: a feed of one or two frames is common and each local
        # set-up costs on the consume path
        unpack_hdr: Callable[[bytes, int], tuple[int, int, int]] = _FRAME_HDR.unpack_from,
        unpack_u32: Callable[[bytes, int], tuple[int]] = _U32.unpack_from,
        unpack_tag: Callable[[bytes, int], tuple[int, int]] = _U64_U8.unpack_from,
        unpack_content: Callable[[bytes, int], tuple[int, int, int, int]] = (
            _CONTENT_HDR.unpack_from
        ),
    ) -> None:
        """Decode ``data`` (after what was kept from earlier calls) and dispatch every event.

        Raises ``FrameError`` on anything that is not valid AMQP framing. (The keyword
        arguments are implementation details; never pass them.)
        """
        if self._rest:
            if data:
                self._rest.append(data)
                self._rest_len += len(data)
            if self.paused or self._rest_len < self._need:
                return
            data = b"".join(self._rest) if len(self._rest) > 1 else self._rest[0]
            self._rest = []
            self._rest_len = 0
        elif not data:
            return
        elif self.paused:
            self._rest = [data]
            self._rest_len = len(data)
            self._need = 0
            return
        if not self._started:
            if data[:1] == b"A":
                if len(data) < 8:
                    self._keep(data, 0, 8)
                    return
                raise FrameError(
                    "the peer does not speak AMQP 0-9-1: it answered with the protocol header "
                    f"{bytes(data[:8])!r}; check the port is a RabbitMQ AMQP 0-9-1 listener"
                )
            self._started = True

        sink = self._sink
        on_deliver = self._on_deliver
        content = self._content
        max_payload = self._max_payload
        pos = 0
        end = len(data)
        # only a callback can pause: the flag is checked after each one
        while True:
            if end - pos < 8:
                if pos < end:
                    self._keep(data, pos, 8)
                return
            ftype, ch, size = unpack_hdr(data, pos)
            if size > max_payload:
                if ftype not in _FRAME_TYPES:
                    raise FrameError(f"unknown frame type {ftype} (channel {ch}, {size} bytes)")
                raise FrameError(
                    f"frame of {size + 8} bytes (type {ftype}, channel {ch}) is larger than "
                    f"frame_max {max_payload + 8}"
                )
            fend = pos + 7 + size
            if fend >= end:
                self._keep(data, pos, size + 8)
                return
            if data[fend] != FRAME_END:
                raise FrameError(
                    f"frame (type {ftype}, channel {ch}, {size} bytes) does not end with 0xCE"
                )
            p = pos + 7
            pos = fend + 1

            if ftype == FRAME_METHOD:
                if size < 4:
                    raise FrameError(f"method frame of {size} bytes on channel {ch}")
                cm = unpack_u32(data, p)[0]
                if cm == _BASIC_DELIVER:
                    try:
                        q = p + 5 + data[p + 4]
                        ctag = data[p + 5 : q]
                        dtag, bits = unpack_tag(data, q)
                        q += 9
                        n = data[q]
                        exchange = data[q + 1 : q + 1 + n].decode("utf-8", "replace")
                        q += 1 + n
                        n = data[q]
                        rk = data[q + 1 : q + 1 + n].decode("utf-8", "replace")
                        q += 1 + n
                    except (IndexError, struct.error):
                        q = -1
                    if q != fend:
                        raise FrameError(f"malformed basic.deliver on channel {ch}")
                    rec = [
                        _KIND_DELIVER, -1, None, ctag, dtag, bits & 1 == 1, exchange, rk,
                        None, None, None,
                    ]  # fmt: skip
                    if content.setdefault(ch, rec) is not rec:
                        raise _mid_content(ch)
                elif ch in content:
                    raise _mid_content(ch)
                elif cm in (_BASIC_ACK, _BASIC_NACK):
                    if size != 13:
                        raise FrameError(f"malformed basic.ack/nack on channel {ch}")
                    dtag, bits = unpack_tag(data, p + 4)
                    sink.on_confirm(ch, dtag, bits & 1 == 1, cm == _BASIC_ACK)
                    if self.paused:
                        break
                else:
                    method = _decode_method(cm, data[p + 4 : fend], ch)
                    if cm == _BASIC_RETURN:
                        content[ch] = [
                            _KIND_RETURN, -1, None, method, None, None, None, None,
                            None, None, None,
                        ]  # fmt: skip
                    else:
                        sink.on_method(ch, method)
                        if self.paused:
                            break

            elif ftype == FRAME_HEADER:
                c = content.get(ch)
                if c is None or c[1] >= 0:
                    raise FrameError(f"content header on channel {ch} without a content method")
                if size < 14:
                    raise FrameError(f"content header of {size} bytes on channel {ch}")
                _, _, body_size, flags = unpack_content(data, p)
                if flags == 0:
                    if size != 14:
                        raise FrameError(f"content header on channel {ch} has trailing bytes")
                elif flags == _P_CONTENT_TYPE:
                    if p + 15 + data[p + 14] != fend:
                        raise FrameError(f"malformed content header on channel {ch}")
                else:
                    c[8:11] = _parse_properties(data, p + 14, flags, fend, ch)
                if body_size == 0:
                    del content[ch]
                    self._complete(ch, c, b"")
                    if self.paused:
                        break
                else:
                    c[1] = body_size

            elif ftype == FRAME_BODY:
                c = content.pop(ch, None)
                if c is None or c[1] < 0:
                    raise FrameError(f"body frame on channel {ch} without a content header")
                remaining = c[1]
                if size > remaining:
                    raise FrameError(
                        f"body frames on channel {ch} carry more than the {remaining} bytes "
                        "left of the size the content header announced"
                    )
                parts = c[2]
                if parts is None and size == remaining:
                    # the whole body in one frame: the common case
                    if c[0] == _KIND_DELIVER:
                        on_deliver(ch, c, data[p:fend])
                    else:
                        self._complete(ch, c, data[p:fend])
                    if self.paused:
                        break
                    continue
                if parts is None:
                    parts = c[2] = []
                parts.append(data[p:fend])
                remaining -= size
                if remaining == 0:
                    self._complete(ch, c, b"".join(parts))
                    if self.paused:
                        break
                else:
                    c[1] = remaining
                    content[ch] = c

            elif ftype == FRAME_HEARTBEAT:
                if ch != 0 or size != 0:
                    raise FrameError(f"heartbeat frame on channel {ch} with {size} bytes")
            else:
                raise FrameError(f"unknown frame type {ftype} (channel {ch}, {size} bytes)")
        if pos < end:
            self._keep(data, pos, 0)

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        if pos < len(data):
            self._rest = [data[pos:] if pos else data]
            self._rest_len = len(data) - pos
        self._need = need

    def _complete(self, ch: int, c: _Content, body: bytes) -> None:
        if c[0] == _KIND_DELIVER:
            self._sink.on_deliver(ch, c, body)
        else:
            self._sink.on_return(ch, c[3], body, c[D_MESSAGE_ID])


def _mid_content(ch: int) -> FrameError:
    return FrameError(f"method frame on channel {ch} in the middle of a content")


def _decode_method(cm: int, payload: bytes, ch: int) -> Method:
    cls = _METHODS.get(cm)
    if cls is None:
        raise FrameError(f"unknown method {cm >> 16}.{cm & 0xFFFF} on channel {ch}")
    try:
        method = cls()
        method.unmarshal(payload)
    except Exception as exc:  # pamqp raises several types on short or bad fields
        raise FrameError(f"cannot decode {cls.name} on channel {ch}: {exc}") from None
    return method


def _parse_properties(data: bytes, q: int, flags: int, end: int, ch: int) -> Props:
    """Headers, message_id and correlation_id of the properties at ``data[q:end]``.

    The other properties are skipped without decoding; every length is checked against ``end``.
    """
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    try:
        more = flags
        while more & 1:  # continuation flag words (never seen from RabbitMQ, but legal)
            more = _U16.unpack_from(data, q)[0]
            q += 2
        if flags & _P_CONTENT_TYPE:
            q += 1 + data[q]
        if flags & _P_CONTENT_ENCODING:
            q += 1 + data[q]
        if flags & _P_HEADERS:
            size = _U32.unpack_from(data, q)[0]
            if q + 4 + size > end:
                raise FrameError(f"the headers table of a content header on channel {ch} "
                                 "runs past its frame")  # fmt: skip
            try:
                headers = dict(pdecode.field_table(data[q : q + 4 + size])[1])
            except Exception as exc:
                raise FrameError(
                    f"cannot decode the headers of a content header on channel {ch}: {exc}"
                ) from None
            q += 4 + size
        if flags & _P_DELIVERY_MODE:
            q += 1
        if flags & _P_PRIORITY:
            q += 1
        if flags & _P_CORRELATION_ID:
            n = data[q]
            correlation_id = data[q + 1 : q + 1 + n].decode("utf-8", "replace")
            q += 1 + n
        if flags & _P_MESSAGE_ID:  # nothing after message_id is needed
            if flags & _P_REPLY_TO:
                q += 1 + data[q]
            if flags & _P_EXPIRATION:
                q += 1 + data[q]
            n = data[q]
            message_id = data[q + 1 : q + 1 + n].decode("utf-8", "replace")
            q += 1 + n
    except (IndexError, struct.error):
        q = end + 1
    if q > end:
        raise FrameError(f"the properties of a content header on channel {ch} run past its frame")
    return headers, message_id, correlation_id


def method_name(class_id: int | None, method_id: int | None) -> str:
    """``basic.publish`` for (60, 40); empty for class 0 (no method named)."""
    if not class_id:
        return ""
    cls = _METHODS.get((class_id << 16) | (method_id or 0))
    name = getattr(cls, "name", None)
    return str(name).lower() if name else f"method {class_id}.{method_id}"


# --------------------------------------------------------------------------- encoding


def shortstr(value: str, what: str) -> bytes:
    """An AMQP short string; longer than 255 UTF-8 bytes is a ``UsageError`` naming ``what``."""
    raw = value.encode("utf-8")
    if len(raw) > 255:
        if what == "routing key":
            raise BadRoutingKey(
                f"routing key is {len(raw)} bytes, the AMQP limit is 255: {value!r}"
            )
        raise UsageError(f"{what} is {len(raw)} bytes, the AMQP limit is 255: {value!r}")
    return bytes((len(raw),)) + raw


_NAME_FIELDS = ("exchange", "queue", "destination", "source")
_T = TypeVar("_T", bound=Method)


def build_method(cls: type[_T], **fields: Any) -> _T:
    """``cls(**fields)``, but exchange and queue names are set after pamqp's checks.

    pamqp's constructors check names against a pattern narrower than what RabbitMQ (and the C
    module) accept, such as Kazoo's ``kamailio@host-<1-0>`` reply queues. The names are set
    afterwards and :func:`encode_method` checks them for AMQP's own limit (255 UTF-8 bytes),
    so no global pamqp state is changed.
    """
    names = {key: fields.pop(key) for key in _NAME_FIELDS if key in fields}
    method = cls(**fields)
    for key, value in names.items():
        setattr(method, key, value)
    return method


def encode_method(channel: int, method: Method) -> bytes:
    """One method frame. Names are checked only for AMQP's limit (255 UTF-8 bytes).

    Our own walk over the method's fields instead of pamqp's ``marshal``, which first checks
    queue and exchange names against a pattern narrower than what RabbitMQ accepts. Bad field
    values raise ``UsageError`` naming the field.
    """
    parts: list[bytes] = []
    bits = 0
    nbits = 0
    amqp_type = method.amqp_type
    for name in method.__slots__:
        kind = amqp_type(name)
        value = getattr(method, name, None)
        if kind == "bit":
            if nbits == 8:
                parts.append(bytes((bits,)))
                bits = nbits = 0
            if value:
                bits |= 1 << nbits
            nbits += 1
            continue
        if nbits:
            parts.append(bytes((bits,)))
            bits = nbits = 0
        what = name.replace("_", " ")
        if kind == "shortstr":
            if not isinstance(value, str):
                value = "" if value is None else str(value)
            parts.append(shortstr(value, f"{method.name.lower()} {what}"))
            continue
        try:
            parts.append(pencode.by_type(value if value is not None else _ZERO[kind], kind))
        except (TypeError, ValueError, struct.error) as exc:
            raise UsageError(
                f"{method.name.lower()}: cannot encode {what} = {value!r}: {exc}"
            ) from None
    if nbits:
        parts.append(bytes((bits,)))
    payload = _U32.pack(method.index) + b"".join(parts)
    return _FRAME_HDR.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_B


_ZERO: dict[str, Any] = {
    "octet": 0,
    "short": 0,
    "long": 0,
    "longlong": 0,
    "timestamp": 0,
    "longstr": "",
    "table": {},
}


def publish_method_frame(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The ``basic.publish`` method frame (ticket 0, immediate off)."""
    payload = b"".join(
        (
            b"\x00\x3c\x00\x28\x00\x00",  # basic.publish, ticket 0
            shortstr(exchange, "exchange name"),
            shortstr(routing_key, "routing key"),
            b"\x01" if mandatory else b"\x00",
        )
    )
    return _FRAME_HDR.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_B


def encode_headers(headers: Sequence[tuple[str, str]] | Mapping[str, Any]) -> bytes:
    """A field table; string values are written by hand as long strings ('S')."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    parts: list[bytes] = []
    append = parts.append
    for key, value in items:
        append(shortstr(key, "header name"))
        if isinstance(value, str):
            raw = value.encode("utf-8")
            append(b"S" + _U32.pack(len(raw)) + raw)
        else:
            try:
                append(pencode.encode_table_value(value))
            except (TypeError, ValueError, struct.error) as exc:
                raise UsageError(
                    f"header {key!r}: cannot encode {value!r} in AMQP: {exc}"
                ) from None
    payload = b"".join(parts)
    return _U32.pack(len(payload)) + payload


def append_publish(
    out: list[bytes | memoryview],
    channel: int,
    method_frame: bytes,
    body: bytes,
    frame_max: int,
    headers: Sequence[tuple[str, str]] | Mapping[str, Any] | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    persistent: bool = False,
) -> None:
    """Append the frames of one ``basic.publish`` (method, content header, body) to ``out``.

    Content type is always ``application/json``. Body frames are cut at ``frame_max - 8``.
    Raises ``UsageError`` (and appends nothing) when a property is too long or the content
    header would not fit in one frame of ``frame_max`` bytes.
    """
    n = len(body)
    body_max = frame_max - 8
    if (
        headers is None
        and message_id is None
        and correlation_id is None
        and reply_to is None
        and not persistent
        and 0 < n <= body_max
    ):
        out.append(method_frame)
        out.append(
            PLAIN_CONTENT.pack(
                FRAME_HEADER, channel, _PLAIN_HDR_SIZE, 60, 0, n, _P_CONTENT_TYPE,
                _CONTENT_TYPE_JSON, FRAME_END, FRAME_BODY, channel, n,
            )
        )  # fmt: skip
        out.append(body)
        out.append(FRAME_END_B)
        return
    append_publish_with_properties(
        out, channel, method_frame, body, frame_max,
        headers, message_id, correlation_id, reply_to, persistent,
    )  # fmt: skip


def append_publish_with_properties(
    out: list[bytes | memoryview],
    channel: int,
    method_frame: bytes,
    body: bytes,
    frame_max: int,
    headers: Sequence[tuple[str, str]] | Mapping[str, Any] | None,
    message_id: str | None,
    correlation_id: str | None,
    reply_to: str | None,
    persistent: bool,
) -> None:
    """:func:`append_publish` for a message with properties (or an empty or large body)."""
    n = len(body)
    body_max = frame_max - 8
    flags = _P_CONTENT_TYPE
    props = [_CONTENT_TYPE_JSON]
    if headers:
        flags |= _P_HEADERS
        props.append(encode_headers(headers))
    if persistent:
        flags |= _P_DELIVERY_MODE
        props.append(b"\x02")
    if correlation_id is not None:
        flags |= _P_CORRELATION_ID
        props.append(shortstr(correlation_id, "correlation_id"))
    if reply_to is not None:
        flags |= _P_REPLY_TO
        props.append(shortstr(reply_to, "reply_to"))
    if message_id is not None:
        flags |= _P_MESSAGE_ID
        props.append(shortstr(message_id, "message_id"))
    raw_props = b"".join(props)
    if _HDR_OVERHEAD + len(raw_props) > frame_max:
        raise UsageError(
            f"the message's properties take {len(raw_props)} bytes, so its content header "
            f"({_HDR_OVERHEAD + len(raw_props)} bytes) does not fit in one frame of the "
            f"negotiated frame_max {frame_max}: send fewer or shorter headers"
        )
    out.append(method_frame)
    out.append(_HDR_FRAME.pack(FRAME_HEADER, channel, 14 + len(raw_props), 60, 0, n, flags))
    out.append(raw_props)
    out.append(FRAME_END_B)
    if n <= body_max:
        if n:
            out.append(_BODY_FRAME_HDR.pack(FRAME_BODY, channel, n))
            out.append(body)
            out.append(FRAME_END_B)
        return
    view = memoryview(body)
    for start in range(0, n, body_max):
        part = view[start : start + body_max]
        out.append(_BODY_FRAME_HDR.pack(FRAME_BODY, channel, len(part)))
        out.append(part)
        out.append(FRAME_END_B)
