"""Our asyncio AMQP 0-9-1 client, built for throughput.

Rules of this file:

* One ``asyncio.Protocol`` per connection; no streams. ``data_received`` parses frames out of
  the received bytes in one tight loop.
* The hot paths are written by hand with ``struct``: inbound ``basic.deliver`` + content header
  + body frames, inbound publisher-confirm ``basic.ack``/``basic.nack``, outbound
  ``basic.publish`` (method, content header and body frames) and outbound ``basic.ack``/
  ``basic.nack``/``basic.reject``. Everything else (the handshake, declarations, qos, consume,
  cancel, confirm.select, closes, returns) goes through ``pamqp``.
* Writes are collected in one list per connection and written with a single
  ``transport.write`` per event-loop iteration (``loop.call_soon``), so a burst of publishes or
  acks becomes one ``send()``.
* Every future this module hands out (RPC replies, publisher confirms) is owned by its channel
  or connection and is failed with a typed error when the channel or connection goes away:
  ``NotConnected`` for connection loss (with the reason), ``BrokerRefused`` (with the AMQP reply
  code) when the broker closes the channel. Nothing is left hanging.
* Consumer callbacks run synchronously inside ``data_received``. An exception in a callback is
  logged on ``kazoo_amqp.amqp`` and does not touch the connection.

Wire format reminders (AMQP 0-9-1 §2.3.5, §4.2.3): a frame is ``type:u8 channel:u16 size:u32
payload[size] 0xCE``; method payloads start with ``class:u16 method:u16``; a content header
payload is ``class:u16 weight:u16 body_size:u64 flags:u16 properties...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import struct
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pamqp import commands as spec
from pamqp import decode as pdecode
from pamqp import encode as pencode
from pamqp import exceptions as pexc
from pamqp import frame as pframe
from pamqp.base import Frame as Method

from kazoo_amqp.errors import (
    BadRoutingKey,
    BrokerError,
    BrokerRefused,
    NotConnected,
    PublishFailed,
    PublishNacked,
    UsageError,
)

__all__ = ["Channel", "Connection", "Delivery", "Returned"]

log = logging.getLogger("kazoo_amqp.amqp")

_M = TypeVar("_M", bound=Method)

# --------------------------------------------------------------------------- wire constants

_FRAME_METHOD = 1
_FRAME_HEADER = 2
_FRAME_BODY = 3
_FRAME_HEARTBEAT = 8
_FRAME_END = 0xCE
_FRAME_END_B = b"\xce"

_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# class << 16 | method
_BASIC_DELIVER = 0x003C003C
_BASIC_ACK = 0x003C0050
_BASIC_NACK = 0x003C0078

_FRAME_HDR = struct.Struct(">BHI")  # type, channel, size
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64_U8 = struct.Struct(">QB")  # delivery tag + bits
_CONTENT_HDR = struct.Struct(">HHQH")  # class, weight, body size, property flags
# a whole basic.ack / basic.nack / basic.reject method frame
_ACK_FRAME = struct.Struct(">BHIHHQBB")
# content header frame up to and including the flags word, then the properties follow
_HDR_FRAME = struct.Struct(">BHIHHQH")
_BODY_FRAME_HDR = struct.Struct(">BHI")

_CONTENT_TYPE_JSON = b"\x10application/json"
# header frame with only content_type = application/json, its end byte and the next body frame
# header, for the common publish: type, ch, size, class, weight, body size, flags, props, end,
# body frame type, ch, body size
_PLAIN_HDR_AND_BODY = struct.Struct(">BHIHHQH17sBBHI")
_PLAIN_HDR_SIZE = 14 + len(_CONTENT_TYPE_JSON)

# property flags (AMQP 0-9-1 basic class, §1.8 / pamqp Basic.Properties.flags)
_P_CONTENT_TYPE = 0x8000
_P_CONTENT_ENCODING = 0x4000
_P_HEADERS = 0x2000
_P_DELIVERY_MODE = 0x1000
_P_PRIORITY = 0x0800
_P_CORRELATION_ID = 0x0400
_P_REPLY_TO = 0x0200
_P_EXPIRATION = 0x0100
_P_MESSAGE_ID = 0x0080

_MIN_FRAME_MAX = 4096  # AMQP 0-9-1 frame-min-size
_PUBLISH_CACHE_MAX = 4096

_CLIENT_CAPABILITIES = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
    "publisher_confirms": True,
}

# content kinds a channel can be assembling
_KIND_DELIVER = 1
_KIND_RETURN = 2

# connection states
_ST_CONNECTING = 0  # protocol header sent, waiting for connection.start
_ST_AUTH = 1  # start-ok sent, waiting for connection.tune
_ST_OPENING = 2  # tune-ok + open sent, waiting for connection.open-ok
_ST_OPEN = 3
_ST_CLOSING = 4  # we sent connection.close
_ST_CLOSED = 5


# --------------------------------------------------------------------------- public records


@dataclass(slots=True)
class Delivery:
    """One ``basic.deliver``: built per message, so it only holds what the daemon reads."""

    channel: Channel
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] | None
    message_id: str | None
    correlation_id: str | None


@dataclass(slots=True)
class Returned:
    """A ``basic.return``: a mandatory message the broker could not route."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None


# --------------------------------------------------------------------------- helpers


def _negotiate(ours: int, theirs: int) -> int:
    """The smaller of two limits where 0 means "no limit"."""
    if theirs == 0:
        return ours
    if ours == 0:
        return theirs
    return min(ours, theirs)


def _clone_error(exc: BaseException) -> BaseException:
    """A fresh copy of a close reason, so futures do not share one traceback."""
    if isinstance(exc, BrokerRefused):
        return BrokerRefused(str(exc), reply_code=exc.reply_code)
    try:
        return type(exc)(str(exc))
    except TypeError:  # pragma: no cover - our errors all take one message
        return NotConnected(str(exc))


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class ConfirmCallback:
    """A publisher confirm delivered to a plain callback instead of a future.

    It quacks like the part of a future the confirm bookkeeping uses (``done``, ``set_result``,
    ``set_exception``, ``exception``), so acks, nacks, returns and connection loss all reach it,
    but without creating a future and scheduling its callbacks for every message.
    ``callback(None)`` means confirmed; ``callback(exc)`` carries the failure. It runs inside
    the connection's data handling, so it must be quick and must not raise.
    """

    __slots__ = ("_callback", "_done")

    def __init__(self, callback: Callable[[BaseException | None], None]) -> None:
        self._callback = callback
        self._done = False

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> None:
        return None

    def set_result(self, _: object) -> None:
        self._finish(None)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._callback(exc)
        except Exception:
            log.exception("publish confirm callback raised")


def _fail_quietly(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail a future that its caller may have dropped, without 'never retrieved' log noise."""
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # marks it retrieved; an awaiting caller still gets the exception


def _shortstr(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        if what == "routing key":
            raise BadRoutingKey(
                f"routing key is {len(raw)} bytes, the AMQP limit is 255: {value!r}"
            )
        raise UsageError(f"{what} is {len(raw)} bytes, the AMQP limit is 255: {value!r}")
    return bytes((len(raw),)) + raw


def _encode_headers(headers: Sequence[tuple[str, str]] | Mapping[str, Any]) -> bytes:
    """A field table; string values are written by hand as long strings ('S')."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    parts: list[bytes] = []
    append = parts.append
    for key, value in items:
        append(_shortstr(key, "header name"))
        if isinstance(value, str):
            raw = value.encode("utf-8")
            append(b"S" + _U32.pack(len(raw)) + raw)
        else:
            try:
                append(pencode.encode_table_value(value))
            except (TypeError, ValueError) as exc:
                raise UsageError(
                    f"header {key!r}: cannot encode {value!r} in AMQP: {exc}"
                ) from None
    payload = b"".join(parts)
    return _U32.pack(len(payload)) + payload


def _parse_properties(
    data: bytes, q: int, flags: int
) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Headers, message_id and correlation_id from the properties starting at ``data[q]``.

    The other properties are skipped without decoding.
    """
    headers: dict[str, Any] | None = None
    message_id: str | None = None
    correlation_id: str | None = None
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
        headers = dict(pdecode.field_table(data[q : q + 4 + size])[1])
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
    return headers, message_id, correlation_id


def _method_name(class_id: int | None, method_id: int | None) -> str:
    if not class_id:
        return ""
    cls = spec.INDEX_MAPPING.get((class_id << 16) | (method_id or 0))
    name = getattr(cls, "name", None)
    return str(name).lower() if name else f"method {class_id}.{method_id}"


# --------------------------------------------------------------------------- the protocol


class _Protocol(asyncio.Protocol):
    """Thin adapter: asyncio calls land on the owning ``Connection``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def data_received(self, data: bytes) -> None:
        self._conn._on_data(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn._on_connection_made(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._on_connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn._writing_paused = True

    def resume_writing(self) -> None:
        self._conn._on_resume_writing()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows


class _Rpc:
    __slots__ = ("expect", "future", "on_reply")

    def __init__(
        self,
        future: asyncio.Future[Any],
        expect: type[Method] | tuple[type[Method], ...],
        on_reply: Callable[[Any], None] | None,
    ) -> None:
        self.future = future
        self.expect = expect
        self.on_reply = on_reply


def allow_any_name() -> None:
    """Let pamqp encode every name RabbitMQ accepts.

    pamqp validates queue and exchange names against a narrow pattern that rejects ``<`` and
    ``>``, but Kazoo's reply queues are named ``kamailio@host-<1-0>`` and RabbitMQ accepts any
    UTF-8 short string. Length is still checked by pamqp.
    """
    import re

    from pamqp import constants

    anything = re.compile(r"^.*$", re.DOTALL)
    constants.DOMAIN_REGEX["queue-name"] = anything
    constants.DOMAIN_REGEX["exchange-name"] = anything


class Connection:
    """One AMQP connection. Create it with ``await Connection.connect(...)``."""

    closed: asyncio.Future[BaseException | None]
    is_open: bool

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        vhost: str,
        heartbeat: int,
        frame_max: int,
        channel_max: int,
        name: str,
    ) -> None:
        """Use :meth:`connect`; this only sets up state."""
        self._loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.user = user
        self.vhost = vhost
        self.name = name
        self._password = password
        self._want_heartbeat = max(0, heartbeat)
        self._want_frame_max = frame_max
        self._want_channel_max = channel_max
        #: negotiated values (valid once open)
        self.heartbeat = 0
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.server_properties: dict[str, Any] = {}
        # STUB (pub branch, replaced by the proto rewrite): the interface amqp/publisher.py uses.
        #: the broker's reason while it blocks publishing (connection.blocked), else None
        self.blocked: str | None = None
        #: called with the reason on connection.blocked / without arguments on unblocked
        self.on_blocked: Callable[[str], None] | None = None
        self.on_unblocked: Callable[[], None] | None = None

        self.closed = self._loop.create_future()
        self.is_open = False
        self._state = _ST_CONNECTING
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._close_ok: asyncio.Future[None] = self._loop.create_future()
        self._channels: dict[int, Channel] = {}
        self._next_channel = 1

        # outbound: one list, one write per loop iteration
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._ack_channels: list[Channel] = []  # channels with acks batched this iteration
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

        # inbound: bytes of an incomplete frame
        self._rest: list[bytes] = []
        self._rest_len = 0
        self._need = 0
        self._halt = False  # stop parsing (paused or closed)
        self._paused = False

        # heartbeats
        self._rx = False
        self._tx = False
        self._missed = 0
        self._hb_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connect / close

    @classmethod
    async def connect(
        cls,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        vhost: str = "/",
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        heartbeat: int = 0,
        connect_timeout: float = 5.0,
        frame_max: int = 131072,
        channel_max: int = 2047,
        name: str = "kazoo-amqp",
    ) -> Connection:
        """Open a TCP (or TLS) connection and run the AMQP handshake.

        ``channel_max``, ``frame_max`` and ``heartbeat`` are negotiated down to the broker's limits;
        ``heartbeat=0`` turns heartbeats off. Raises ``NotConnected`` when the broker cannot be
        reached in ``connect_timeout`` seconds, ``BrokerRefused`` when it refuses the login or the
        vhost.
        """
        allow_any_name()
        conn = cls(
            host=host,
            port=port,
            user=user,
            password=password,
            vhost=vhost,
            heartbeat=heartbeat,
            frame_max=frame_max,
            channel_max=channel_max,
            name=name,
        )
        where = f"RabbitMQ at {host}:{port}"
        loop = conn._loop
        try:
            async with asyncio.timeout(connect_timeout):
                try:
                    await loop.create_connection(
                        lambda: _Protocol(conn),
                        host,
                        port,
                        ssl=ssl,
                        server_hostname=(server_hostname or host) if ssl is not None else None,
                    )
                except ConnectionRefusedError:
                    raise NotConnected(f"cannot reach {where}: connection refused") from None
                except socket.gaierror as exc:
                    raise NotConnected(
                        f"cannot reach {where}: cannot resolve host name {host!r} ({exc.strerror})"
                    ) from None
                except _ssl.SSLError as exc:
                    raise NotConnected(
                        f"cannot reach {where}: TLS handshake failed ({exc.reason or exc})"
                    ) from None
                except OSError as exc:
                    raise NotConnected(f"cannot reach {where}: {exc.strerror or exc}") from None
                await conn._opened
        except TimeoutError:
            stage = "TCP connect" if conn._transport is None else "the AMQP handshake"
            conn._finish(None, NotConnected("connect timed out"))
            raise NotConnected(
                f"cannot reach {where}: {stage} did not complete within {connect_timeout:g} s"
            ) from None
        except BaseException:
            conn._finish(None, NotConnected("connect failed"))
            raise
        return conn

    async def close(self, timeout: float = 2.0) -> None:
        """Graceful ``connection.close``; waits up to ``timeout`` s for close-ok, then closes."""
        if self._state >= _ST_CLOSING:
            if self._state == _ST_CLOSING:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            return
        if self._state != _ST_OPEN:
            self.abort()
            return
        self._state = _ST_CLOSING
        self.is_open = False
        for chan in list(self._channels.values()):
            chan._consumers.clear()
            chan._closing = True  # no new publishes; confirms still settle until close-ok
        self._flush()  # batched acks go out before the close
        self._write_method(0, spec.Connection.Close(200, "Normal shutdown", 0, 0))
        self._flush()
        with contextlib.suppress(TimeoutError, NotConnected):
            await asyncio.wait_for(asyncio.shield(self._close_ok), timeout)
        self._finish(
            None, NotConnected(f"the connection to {self._where} was closed by the client")
        )

    def abort(self) -> None:
        """Close the transport now, without the AMQP close handshake."""
        self._finish(
            None, NotConnected(f"the connection to {self._where} was aborted by the client")
        )

    @property
    def _where(self) -> str:
        return f"RabbitMQ at {self.host}:{self.port}"

    def _finish(self, reason: BaseException | None, pending_error: BaseException) -> None:
        """The connection is gone: fail everything it owns, exactly once."""
        if self._state == _ST_CLOSED:
            return
        self._state = _ST_CLOSED
        self.is_open = False
        self._halt = True
        self._rest = []
        self._out.clear()
        if self._hb_handle is not None:
            self._hb_handle.cancel()
            self._hb_handle = None
        transport = self._transport
        if transport is not None:
            transport.abort()
        channels = list(self._channels.values())
        self._channels.clear()
        for chan in channels:
            chan._terminate(reason, pending_error)
        _fail_quietly(self._opened, _clone_error(pending_error if reason is None else reason))
        if not self._close_ok.done():
            _fail_quietly(self._close_ok, _clone_error(pending_error))
        for waiter in self._drain_waiters:
            _fail_quietly(waiter, _clone_error(pending_error))
        self._drain_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(reason)

    # ------------------------------------------------------------------ channels

    async def channel(
        self, *, confirms: bool = False, on_return: Callable[[Returned], None] | None = None
    ) -> Channel:
        """Open a new channel; ``confirms=True`` puts it in publisher-confirm mode."""
        self._check_open()
        number = self._allocate_channel()
        chan = Channel(self, number, on_return)
        self._channels[number] = chan
        try:
            await chan._rpc(spec.Channel.Open, spec.Channel.OpenOk)
            chan.is_open = True
            if confirms:
                await chan._rpc(spec.Confirm.Select, spec.Confirm.SelectOk)
                chan._confirm = True
        except BaseException:
            if self._state == _ST_OPEN and not chan._closing:
                # cancelled half-way: close it so the number is only reused after close-ok
                chan._closing = True
                chan.is_open = False
                chan._fail_pending(NotConnected(f"channel {number} was not opened"))
                self._write_method(number, spec.Channel.Close(200, "Normal shutdown", 0, 0))
            raise
        return chan

    def _allocate_channel(self) -> int:
        limit = self.channel_max
        n = self._next_channel
        for _ in range(limit):
            if n > limit:
                n = 1
            if n not in self._channels:
                self._next_channel = n + 1
                return n
            n += 1
        raise BrokerError(
            f"all {limit} channels of the connection to {self._where} are in use (channel_max)"
        )

    def _check_open(self) -> None:
        if self._state != _ST_OPEN:
            raise NotConnected(f"the connection to {self._where} is closed")

    # ------------------------------------------------------------------ back-pressure

    def pause_reading(self) -> None:
        """Stop reading from the socket (and stop dispatching already read deliveries)."""
        if self._paused:
            return
        self._paused = True
        self._halt = True
        if self._transport is not None and self._state != _ST_CLOSED:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`; deliveries already read are dispatched first."""
        if not self._paused:
            return
        self._paused = False
        if self._state == _ST_CLOSED:
            return
        self._halt = False
        self._missed = 0
        if self._transport is not None:
            self._transport.resume_reading()
        if self._rest:
            self._loop.call_soon(self._on_data, b"")

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        self._flush()
        if not self._writing_paused:
            return
        self._check_open()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _on_resume_writing(self) -> None:
        self._writing_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ output

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._ack_channels:
            channels, self._ack_channels = self._ack_channels, []
            for chan in channels:
                chan._emit_acks()
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is None or self._state == _ST_CLOSED:
            out.clear()
            return
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        transport.write(data)
        self._tx = True

    def _write_method(self, channel: int, method: Method) -> None:
        self._out.append(pframe.marshal(method, channel))
        self._schedule_flush()

    # ------------------------------------------------------------------ transport events

    def _on_connection_made(self, transport: asyncio.Transport) -> None:
        if self._state == _ST_CLOSED:
            transport.abort()
            return
        self._transport = transport
        transport.write(_PROTOCOL_HEADER)

    def _on_connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._state == _ST_CLOSED:
            return
        where = self._where
        if self._state == _ST_AUTH:
            err: BaseException = self._login_refused(0)
        elif self._state < _ST_OPEN:
            detail = f": {exc}" if exc else ""
            err = NotConnected(f"{where} closed the connection during the AMQP handshake{detail}")
        elif self._state == _ST_CLOSING:
            self._finish(None, NotConnected(f"the connection to {where} was closed by the client"))
            return
        elif exc is not None:
            err = NotConnected(f"lost the connection to {where}: {exc}")
        else:
            err = NotConnected(f"{where} closed the connection")
        self._finish(err, err)

    def _on_data(self, data: bytes) -> None:
        """Parse every complete frame in ``data`` (plus what was left over last time)."""
        self._rx = True
        if self._rest:
            if data:
                self._rest.append(data)
                self._rest_len += len(data)
            if self._halt or self._rest_len < self._need:
                return
            data = b"".join(self._rest) if len(self._rest) > 1 else self._rest[0]
            self._rest = []
        elif self._halt:
            if data and self._state != _ST_CLOSED:
                self._rest = [data]
                self._rest_len = len(data)
                self._need = 0
            return
        if self._state == _ST_CONNECTING and data[:4] == b"AMQP":
            self._protocol_error(
                f"{self._where} does not speak AMQP 0-9-1 (it answered with {bytes(data[:8])!r})"
            )
            return

        unpack_hdr = _FRAME_HDR.unpack_from
        unpack_u32 = _U32.unpack_from
        unpack_tag = _U64_U8.unpack_from
        chans = self._channels
        pos = 0
        end = len(data)
        need = 8
        try:
            while not self._halt:
                if end - pos < 8:
                    need = 8
                    break
                ftype, ch, size = unpack_hdr(data, pos)
                fend = pos + 7 + size
                if fend >= end:
                    need = size + 8
                    break
                if data[fend] != _FRAME_END:
                    self._protocol_error(f"frame without end marker from {self._where}")
                    return
                p = pos + 7
                pos = fend + 1

                if ftype == _FRAME_METHOD:
                    cm = unpack_u32(data, p)[0]
                    if cm == _BASIC_DELIVER:
                        q = p + 5 + data[p + 4]
                        ctag = data[p + 5 : q]
                        dtag, bits = unpack_tag(data, q)
                        q += 9
                        n = data[q]
                        exchange = data[q + 1 : q + 1 + n].decode("utf-8", "replace")
                        q += 1 + n
                        n = data[q]
                        rk = data[q + 1 : q + 1 + n].decode("utf-8", "replace")
                        chan = chans.get(ch)
                        if chan is not None:
                            chan._content = (_KIND_DELIVER, ctag, dtag, bits & 1 == 1, exchange, rk)
                    elif cm in (_BASIC_ACK, _BASIC_NACK):
                        dtag, bits = unpack_tag(data, p + 4)
                        chan = chans.get(ch)
                        if chan is not None and chan._confirm:
                            chan._on_confirm(dtag, bits & 1 == 1, cm == _BASIC_ACK)
                    else:
                        self._on_method_frame(ch, data[p - 7 : pos])

                elif ftype == _FRAME_HEADER:
                    chan = chans.get(ch)
                    if chan is None or chan._content is None:
                        continue
                    body_size = _CONTENT_HDR.unpack_from(data, p)[2]
                    flags = _U16.unpack_from(data, p + 12)[0]
                    if flags & 0xFFFE == _P_CONTENT_TYPE or flags == 0:
                        chan._props = (None, None, None)
                    else:
                        chan._props = _parse_properties(data, p + 14, flags)
                    if body_size == 0:
                        chan._complete(b"")
                    else:
                        chan._remaining = body_size
                        chan._parts = None

                elif ftype == _FRAME_BODY:
                    chan = chans.get(ch)
                    if chan is None or chan._content is None:
                        continue
                    parts = chan._parts
                    if parts is None:
                        if size >= chan._remaining:
                            # the whole body in one frame: the common case
                            c = chan._content
                            if c[0] == _KIND_DELIVER:
                                chan._content = None
                                entry = chan._consumers.get(c[1])
                                if entry is None:
                                    continue
                                h = chan._props
                                delivery = Delivery(
                                    chan, entry[0], c[2], c[3], c[4], c[5],
                                    data[p:fend], h[0], h[1], h[2],
                                )  # fmt: skip
                                try:
                                    entry[1](delivery)
                                except Exception:
                                    log.exception(
                                        "consumer callback for %r raised; delivery %d on channel "
                                        "%d dropped by the callback",
                                        entry[0], c[2], ch,
                                    )  # fmt: skip
                            else:
                                chan._complete(data[p:fend])
                        else:
                            chan._parts = [data[p:fend]]
                            chan._remaining -= size
                    else:
                        parts.append(data[p:fend])
                        chan._remaining -= size
                        if chan._remaining <= 0:
                            chan._parts = None
                            chan._complete(b"".join(parts))

                elif ftype == _FRAME_HEARTBEAT:
                    pass
                else:
                    self._protocol_error(f"unknown frame type {ftype} from {self._where}")
                    return
            else:
                need = 0  # halted: keep the rest for resume_reading
        except Exception as exc:
            log.exception("malformed data from %s", self._where)
            self._protocol_error(f"malformed frame from {self._where}: {exc}")
            return
        if pos < end and self._state != _ST_CLOSED:
            self._rest = [data[pos:] if pos else data]
            self._rest_len = end - pos
            self._need = need

    def _protocol_error(self, message: str) -> None:
        err = NotConnected(message)
        if self._transport is not None and self._state == _ST_OPEN:
            with contextlib.suppress(Exception):
                self._transport.write(
                    pframe.marshal(spec.Connection.Close(501, "FRAME_ERROR", 0, 0), 0)
                )
        self._finish(err, err)

    def _on_method_frame(self, ch: int, raw: bytes) -> None:
        try:
            method = pframe.unmarshal(raw)[2]
        except pexc.UnmarshalingException as exc:
            self._protocol_error(f"cannot decode a method from {self._where}: {exc}")
            return
        if ch == 0:
            self._on_connection_method(method)  # type: ignore[arg-type]
            return
        chan = self._channels.get(ch)
        if chan is None:
            log.debug("method %s for unknown channel %d ignored", type(method).__name__, ch)
            return
        chan._on_method(method)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ connection methods

    def _on_connection_method(self, method: Method) -> None:
        if isinstance(method, spec.Connection.Start):
            self._on_start(method)
        elif isinstance(method, spec.Connection.Tune):
            self._on_tune(method)
        elif isinstance(method, spec.Connection.OpenOk):
            self._state = _ST_OPEN
            self.is_open = True
            self._start_heartbeat()
            if not self._opened.done():
                self._opened.set_result(None)
        elif isinstance(method, spec.Connection.Close):
            self._on_broker_close(method)
        elif isinstance(method, spec.Connection.CloseOk):
            if not self._close_ok.done():
                self._close_ok.set_result(None)
        elif isinstance(method, spec.Connection.Blocked):
            self.blocked = str(method.reason or "resource alarm")
            log.warning("%s blocked publishing: %s", self._where, method.reason)
            if self.on_blocked is not None:
                self.on_blocked(self.blocked)
        elif isinstance(method, spec.Connection.Unblocked):
            self.blocked = None
            log.info("%s unblocked publishing", self._where)
            if self.on_unblocked is not None:
                self.on_unblocked()
        else:
            log.warning("unexpected %s on channel 0 from %s", method.name, self._where)

    def _on_start(self, start: spec.Connection.Start) -> None:
        self.server_properties = dict(start.server_properties or {})
        mechanisms = str(start.mechanisms).split()
        if "PLAIN" not in mechanisms:
            self._protocol_error(
                f"{self._where} does not offer PLAIN authentication (it offers {mechanisms})"
            )
            return
        props: dict[str, Any] = {
            "product": "kazoo-amqp",
            "platform": f"Python {sys.version.split()[0]}",
            "connection_name": self.name,
            "capabilities": dict(_CLIENT_CAPABILITIES),
        }
        self._state = _ST_AUTH
        self._write_method(
            0,
            spec.Connection.StartOk(
                client_properties=props,
                mechanism="PLAIN",
                response=f"\0{self.user}\0{self._password}",
                locale="en_US",
            ),
        )

    def _on_tune(self, tune: spec.Connection.Tune) -> None:
        channel_max = _negotiate(self._want_channel_max, tune.channel_max or 0) or 2047
        frame_max = _negotiate(self._want_frame_max, tune.frame_max or 0) or 131072
        frame_max = max(frame_max, _MIN_FRAME_MAX)
        heartbeat = 0
        if self._want_heartbeat > 0:
            heartbeat = _negotiate(self._want_heartbeat, tune.heartbeat or 0)
        self.channel_max = min(channel_max, 65535)
        self.frame_max = frame_max
        self.heartbeat = heartbeat
        self._state = _ST_OPENING
        self._write_method(
            0,
            spec.Connection.TuneOk(
                channel_max=self.channel_max, frame_max=frame_max, heartbeat=heartbeat
            ),
        )
        self._write_method(0, spec.Connection.Open(virtual_host=self.vhost))

    def _login_refused(self, code: int) -> BrokerRefused:
        return BrokerRefused(
            f"{self._where} refused login for user {self.user!r} on vhost {self.vhost!r}: "
            "check the user/password in amqp_connection",
            reply_code=code or 403,
        )

    def _on_broker_close(self, close: spec.Connection.Close) -> None:
        code = close.reply_code or 0
        text = close.reply_text or ""
        # answer, then drop the transport
        if self._transport is not None:
            with contextlib.suppress(Exception):
                self._transport.write(pframe.marshal(spec.Connection.CloseOk(), 0))
        if self._state == _ST_AUTH or (self._state < _ST_OPEN and code == 403):
            err: BaseException = self._login_refused(code)
        elif self._state == _ST_OPENING:
            err = BrokerRefused(
                f"{self._where} refused vhost {self.vhost!r} for user {self.user!r}: "
                f"{code} {text}; check the vhost in amqp_connection and the user's permissions",
                reply_code=code,
            )
        elif self._state < _ST_OPEN:
            err = BrokerRefused(
                f"{self._where} closed the connection during the handshake: {code} {text}",
                reply_code=code,
            )
        elif self._state == _ST_CLOSING:
            self._finish(None, NotConnected(f"the connection to {self._where} was closed"))
            return
        else:
            during = _method_name(close.class_id, close.method_id)
            suffix = f" (after {during})" if during else ""
            err = NotConnected(f"{self._where} closed the connection: {code} {text}{suffix}")
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._finish(err, err)

    # ------------------------------------------------------------------ heartbeats

    def _start_heartbeat(self) -> None:
        if self.heartbeat > 0:
            self._rx = True
            self._tx = False
            self._hb_handle = self._loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    def _heartbeat_tick(self) -> None:
        self._hb_handle = None
        if self._state == _ST_CLOSED:
            return
        if self._rx or self._paused:
            self._rx = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= 4:  # 4 ticks of heartbeat/2 = 2 heartbeats
                err = NotConnected(
                    f"no traffic from RabbitMQ for 2 heartbeats ({2 * self.heartbeat} s) on "
                    f"the connection to {self.host}:{self.port}"
                )
                self._finish(err, err)
                return
        if not self._tx and self._transport is not None:
            self._transport.write(_HEARTBEAT_FRAME)
        self._tx = False
        self._hb_handle = self._loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Connection {self.name!r} to {self.host}:{self.port}{self.vhost} {state}>"


class Channel:
    """One AMQP channel of a :class:`Connection`. Create with ``await conn.channel()``."""

    number: int
    is_open: bool
    closed: asyncio.Future[BaseException | None]

    def __init__(
        self,
        conn: Connection,
        number: int,
        on_return: Callable[[Returned], None] | None,
    ) -> None:
        """Use :meth:`Connection.channel`."""
        self.number = number
        self.is_open = False
        self.closed = conn._loop.create_future()
        self.on_return = on_return
        #: called with the consumer tag when the broker cancels a consumer (queue deleted)
        self.on_cancel: Callable[[str], None] | None = None
        # STUB (pub branch, replaced by the proto rewrite): channel.flow state and callback.
        self.flow_active = True
        self.on_flow: Callable[[bool], None] | None = None
        self._exchange_of: dict[int, str] = {}
        self._conn = conn
        self._loop = conn._loop
        self._closing = False
        self._close_reason: BaseException | None = None
        self._rpcs: deque[_Rpc] = deque()
        # raw consumer tag -> (tag, callback)
        self._consumers: dict[bytes, tuple[str, Callable[[Delivery], None]]] = {}
        # content being assembled
        self._content: tuple[Any, ...] | None = None
        self._props: tuple[dict[str, Any] | None, str | None, str | None] = (None, None, None)
        self._remaining = 0
        self._parts: list[bytes] | None = None
        # consumer acks: plain acks of one loop iteration are batched in _ack_batch; a run of
        # consecutive tags right above _ack_floor (every tag <= floor is settled by us) goes out
        # as one multiple=True ack. Only while the channel has no no_ack consumer, whose
        # deliveries also use up delivery tags.
        self._ack_batch: list[int] = []
        self._ack_floor = 0
        self._settled_above: set[int] = set()
        self._coalesce_acks = True
        # publisher confirms
        self._confirm = False
        self._next_tag = 1
        self._low = 1  # every tag below this is settled
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._mandatory: dict[int, tuple[str, str, bytes]] = {}
        # outbound publish frames cache
        self._publish_cache: dict[tuple[str, str, bool], bytes] = {}
        self._body_max = conn.frame_max - 8

    # ------------------------------------------------------------------ RPC

    @property
    def writable(self) -> bool:
        """Open, not stopped by channel.flow, and its connection is not blocked."""
        return (
            self.is_open and not self._closing and self.flow_active and self._conn.blocked is None
        )

    def _check_open(self) -> None:
        if not self.is_open or self._closing:
            reason = self._close_reason
            detail = f": {reason}" if reason is not None else ""
            raise NotConnected(f"channel {self.number} is closed{detail}")

    async def _rpc(
        self,
        make: Callable[[], Method],
        expect: type[_M],
        on_reply: Callable[[Any], None] | None = None,
    ) -> _M:
        """Send a synchronous method (built by ``make``) and wait for its reply.

        One RPC at a time per channel: callers queue on the previous reply. If a caller is
        cancelled, its reply is still matched (and dropped) in order. pamqp's argument checks
        (name syntax, lengths) become ``UsageError``.
        """
        while self._rpcs:
            last = self._rpcs[-1].future
            if last.done():
                break  # its caller gave up; its reply is still matched (and dropped) in order
            await asyncio.wait((last,))
        self._conn._check_open()
        if self._closing:
            self._check_open()
        try:
            raw = pframe.marshal(make(), self.number)
        except (ValueError, TypeError) as exc:
            what = expect.name.removesuffix("Ok").lower()
            raise UsageError(f"{what}: {exc}") from None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._rpcs.append(_Rpc(fut, expect, on_reply))
        conn = self._conn
        conn._out.append(raw)
        conn._schedule_flush()
        return await fut  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ declarations

    async def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: spec.Exchange.Declare(
                exchange=exchange,
                exchange_type=type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.DeclareOk,
        )

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: spec.Exchange.Bind(
                destination=destination,
                source=source,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.BindOk,
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: spec.Exchange.Unbind(
                destination=destination,
                source=source,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Exchange.UnbindOk,
        )

    async def exchange_delete(self, exchange: str) -> None:
        await self._rpc(lambda: spec.Exchange.Delete(exchange=exchange), spec.Exchange.DeleteOk)

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> tuple[str, int, int]:
        """Declare a queue; returns (name, message_count, consumer_count)."""
        ok = await self._rpc(
            lambda: spec.Queue.Declare(
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.DeclareOk,
        )
        return str(ok.queue), int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: spec.Queue.Bind(
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.BindOk,
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self._rpc(
            lambda: spec.Queue.Unbind(
                queue=queue,
                exchange=exchange,
                routing_key=routing_key,
                arguments=dict(arguments) if arguments else None,
            ),
            spec.Queue.UnbindOk,
        )

    async def queue_delete(self, queue: str) -> None:
        await self._rpc(lambda: spec.Queue.Delete(queue=queue), spec.Queue.DeleteOk)

    async def queue_purge(self, queue: str) -> int:
        """Remove every ready message; returns how many were removed."""
        ok = await self._rpc(lambda: spec.Queue.Purge(queue=queue), spec.Queue.PurgeOk)
        return int(ok.message_count or 0)

    # ------------------------------------------------------------------ consuming

    async def basic_qos(self, prefetch_count: int) -> None:
        """Limit unacked deliveries per consumer started after this call (RabbitMQ semantics)."""
        await self._rpc(lambda: spec.Basic.Qos(prefetch_count=prefetch_count), spec.Basic.QosOk)

    async def basic_consume(
        self,
        queue: str,
        on_delivery: Callable[[Delivery], None],
        *,
        no_ack: bool,
        consumer_tag: str = "",
        exclusive: bool = False,
    ) -> str:
        """Start a consumer; ``on_delivery`` runs synchronously per message. Returns the tag."""

        def register(ok: spec.Basic.ConsumeOk) -> None:
            tag = str(ok.consumer_tag)
            self._consumers[tag.encode("utf-8")] = (tag, on_delivery)

        if no_ack:
            self._stop_coalescing()

        ok = await self._rpc(
            lambda: spec.Basic.Consume(
                queue=queue, consumer_tag=consumer_tag, no_ack=no_ack, exclusive=exclusive
            ),
            spec.Basic.ConsumeOk,
            register,
        )
        return str(ok.consumer_tag)

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Stop a consumer. Deliveries already on the wire for it are dropped."""
        await self._rpc(lambda: spec.Basic.Cancel(consumer_tag=consumer_tag), spec.Basic.CancelOk)
        self._consumers.pop(consumer_tag.encode("utf-8"), None)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """Acknowledge; buffered and written with everything else of this loop iteration.

        Acks of consecutive delivery tags written in one iteration become one ``multiple=True``
        ack when that acks exactly the same messages. On a closed channel this does nothing:
        the broker has already requeued the message.
        """
        if not self.is_open:
            return
        if self._coalesce_acks and not multiple:
            batch = self._ack_batch
            if not batch:
                conn = self._conn
                conn._ack_channels.append(self)
                if not conn._flush_scheduled:
                    conn._flush_scheduled = True
                    conn._loop.call_soon(conn._flush)
            batch.append(delivery_tag)
            return
        self._write_settle(80, delivery_tag, 1 if multiple else 0, multiple)

    def nack(self, delivery_tag: int, *, requeue: bool = True, multiple: bool = False) -> None:
        """Negative acknowledge (RabbitMQ extension); no-op on a closed channel."""
        if not self.is_open:
            return
        bits = (1 if multiple else 0) | (2 if requeue else 0)
        self._write_settle(120, delivery_tag, bits, multiple)

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """Reject one delivery; no-op on a closed channel."""
        if not self.is_open:
            return
        self._write_settle(90, delivery_tag, 1 if requeue else 0, False)

    def _write_settle(self, method_id: int, tag: int, bits: int, multiple: bool) -> None:
        """Write a basic.ack/nack/reject now (after the acks batched before it)."""
        if self._ack_batch:
            self._emit_acks()
        if self._coalesce_acks:
            self._settle_tag(tag, multiple)
        conn = self._conn
        conn._out.append(_ACK_FRAME.pack(1, self.number, 13, 60, method_id, tag, bits, _FRAME_END))
        conn._schedule_flush()

    def _settle_tag(self, tag: int, multiple: bool) -> None:
        """Record that ``tag`` (or every tag up to it) is settled, advancing the floor."""
        above = self._settled_above
        if multiple:
            if tag > self._ack_floor:
                self._ack_floor = tag
                if above:
                    self._settled_above = {t for t in above if t > tag}
        elif tag > self._ack_floor:
            above.add(tag)
        floor = self._ack_floor
        while above and floor + 1 in above:
            floor += 1
            above.remove(floor)
        self._ack_floor = floor
        if len(above) > 65536:  # a tag that is never settled: stop tracking
            self._stop_coalescing()

    def _stop_coalescing(self) -> None:
        if self._ack_batch:
            self._emit_acks()
        self._coalesce_acks = False
        self._settled_above = set()

    def _emit_acks(self) -> None:
        """Turn the batched plain acks into frames: runs right above the floor become one."""
        tags = self._ack_batch
        if not tags:
            return
        self._ack_batch = []
        if not self.is_open:
            return
        pack = _ACK_FRAME.pack
        number = self.number
        out = self._conn._out
        above = self._settled_above
        floor = self._ack_floor
        run = 0  # batched tags in the pending run
        first = last = 0  # first and last batched tag of the run
        for tag in tags:
            if tag == floor + 1:
                if not run:
                    first = tag
                run += 1
                last = floor = tag
                while above and floor + 1 in above:  # acked one by one before
                    floor += 1
                    above.remove(floor)
                continue
            if run:
                # A multiple ack names the run's last *batched* tag: never one the broker no
                # longer holds (that is a 406 PRECONDITION_FAILED closing the channel).
                if run == 1:
                    out.append(pack(1, number, 13, 60, 80, first, 0, _FRAME_END))
                else:
                    out.append(pack(1, number, 13, 60, 80, last, 1, _FRAME_END))
                run = 0
            out.append(pack(1, number, 13, 60, 80, tag, 0, _FRAME_END))
            if tag > floor:
                above.add(tag)
        if run:
            if run == 1:
                out.append(pack(1, number, 13, 60, 80, first, 0, _FRAME_END))
            else:
                out.append(pack(1, number, 13, 60, 80, last, 1, _FRAME_END))
        self._ack_floor = floor
        if len(above) > 65536:
            self._stop_coalescing()

    # ------------------------------------------------------------------ publishing

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Sequence[tuple[str, str]] | Mapping[str, Any] | None = None,
        mandatory: bool = False,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        persistent: bool = False,
        on_confirm: Callable[[BaseException | None], None] | None = None,
    ) -> asyncio.Future[None] | None:
        """Queue one message for writing in this loop iteration (no await).

        Content type is always ``application/json``. With confirms on, returns a future that
        resolves on ``basic.ack`` and fails with ``PublishFailed`` on nack or return (mandatory),
        ``BrokerRefused``/``NotConnected`` if the channel or connection dies first. With
        ``on_confirm``, that callback gets the same outcome (None or the error) and the
        returned object is a ``ConfirmCallback`` (``done()`` tells whether it has fired): the
        cheap form for high rates.
        """
        if not self.is_open or self._closing:
            self._check_open()
        conn = self._conn
        number = self.number
        key = (exchange, routing_key, mandatory)
        method = self._publish_cache.get(key)
        if method is None:
            method = self._publish_frame(exchange, routing_key, mandatory)
        out = conn._out
        out.append(method)
        n = len(body)
        if (
            headers is None
            and message_id is None
            and correlation_id is None
            and reply_to is None
            and not persistent
            and 0 < n <= self._body_max
        ):
            out.append(
                _PLAIN_HDR_AND_BODY.pack(
                    _FRAME_HEADER,
                    number,
                    _PLAIN_HDR_SIZE,
                    60,
                    0,
                    n,
                    _P_CONTENT_TYPE,
                    _CONTENT_TYPE_JSON,
                    _FRAME_END,
                    _FRAME_BODY,
                    number,
                    n,
                )
            )
            out.append(body)
            out.append(_FRAME_END_B)
        else:
            flags = _P_CONTENT_TYPE
            props = [_CONTENT_TYPE_JSON]
            if headers:
                flags |= _P_HEADERS
                props.append(_encode_headers(headers))
            if persistent:
                flags |= _P_DELIVERY_MODE
                props.append(b"\x02")
            if correlation_id is not None:
                flags |= _P_CORRELATION_ID
                props.append(_shortstr(correlation_id, "correlation_id"))
            if reply_to is not None:
                flags |= _P_REPLY_TO
                props.append(_shortstr(reply_to, "reply_to"))
            if message_id is not None:
                flags |= _P_MESSAGE_ID
                props.append(_shortstr(message_id, "message_id"))
            raw_props = b"".join(props)
            out.append(_HDR_FRAME.pack(_FRAME_HEADER, number, 14 + len(raw_props), 60, 0, n, flags))
            out.append(raw_props)
            out.append(_FRAME_END_B)
            chunk = self._body_max
            if n <= chunk:
                if n:
                    out.append(_BODY_FRAME_HDR.pack(_FRAME_BODY, number, n))
                    out.append(body)
                    out.append(_FRAME_END_B)
            else:
                view = memoryview(body)
                for start in range(0, n, chunk):
                    part = view[start : start + chunk]
                    out.append(_BODY_FRAME_HDR.pack(_FRAME_BODY, number, len(part)))
                    out.append(part)
                    out.append(_FRAME_END_B)
        if not conn._flush_scheduled:
            conn._flush_scheduled = True
            conn._loop.call_soon(conn._flush)
        if not self._confirm:
            return None
        tag = self._next_tag
        self._next_tag = tag + 1
        if mandatory:
            self._mandatory[tag] = (exchange, routing_key, body)
        self._exchange_of[tag] = exchange
        if on_confirm is not None:
            confirm = ConfirmCallback(on_confirm)
            self._pending[tag] = confirm  # type: ignore[assignment]
            return confirm  # type: ignore[return-value]
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending[tag] = fut
        return fut

    def _publish_frame(self, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        payload = b"".join(
            (
                b"\x00\x3c\x00\x28\x00\x00",  # basic.publish, ticket 0
                _shortstr(exchange, "exchange name"),
                _shortstr(routing_key, "routing key"),
                b"\x01" if mandatory else b"\x00",
            )
        )
        raw = _FRAME_HDR.pack(_FRAME_METHOD, self.number, len(payload)) + payload + _FRAME_END_B
        cache = self._publish_cache
        if len(cache) >= _PUBLISH_CACHE_MAX:
            cache.clear()
        cache[(exchange, routing_key, mandatory)] = raw
        return raw

    def _on_confirm(self, tag: int, multiple: bool, ok: bool) -> None:
        pending = self._pending
        mandatory = self._mandatory
        if multiple:
            low = self._low
            if tag < low:
                return
            exchange_of = self._exchange_of
            for t in range(low, tag + 1):
                exchange_of.pop(t, None)
                fut = pending.pop(t, None)
                if fut is not None:
                    self._settle(fut, t, ok)
            if mandatory:
                for t in range(low, tag + 1):
                    mandatory.pop(t, None)
            self._low = tag + 1
        else:
            self._exchange_of.pop(tag, None)
            fut = pending.pop(tag, None)
            if fut is not None:
                self._settle(fut, tag, ok)
            if mandatory:
                mandatory.pop(tag, None)
            if tag == self._low:
                low = tag + 1
                nxt = self._next_tag
                while low < nxt and low not in pending:
                    low += 1
                self._low = low

    @staticmethod
    def _settle(fut: asyncio.Future[None], tag: int, ok: bool) -> None:
        if fut.done():
            return
        if ok:
            fut.set_result(None)
        else:
            fut.set_exception(
                PublishNacked(
                    f"RabbitMQ refused the message (basic.nack, delivery tag {tag}): the broker "
                    "could not take responsibility for it (a full queue with x-overflow "
                    "reject-publish, or an internal error)"
                )
            )

    def _on_returned(self, ret: Returned) -> None:
        if self._confirm and self._mandatory:
            # Returns arrive in publish order and before the message's ack; the earliest pending
            # mandatory publish with the same exchange, routing key and body is the one.
            found = None
            for tag, (ex, rk, body) in self._mandatory.items():
                if ex == ret.exchange and rk == ret.routing_key and body == ret.body:
                    found = tag
                    break
            if found is not None:
                del self._mandatory[found]
                fut = self._pending.pop(found, None)
                if fut is not None and not fut.done():
                    fut.set_exception(
                        PublishFailed(
                            f"no queue bound to exchange {ret.exchange!r} with routing key "
                            f"{ret.routing_key!r} (returned {ret.reply_code} {ret.reply_text})"
                        )
                    )
                if found == self._low:
                    self._on_confirm_advance()
        if self.on_return is not None:
            try:
                self.on_return(ret)
            except Exception:
                log.exception("on_return callback raised on channel %d", self.number)
        elif not self._confirm:
            log.warning(
                "message to exchange %r with routing key %r returned: %d %s",
                ret.exchange, ret.routing_key, ret.reply_code, ret.reply_text,
            )  # fmt: skip

    def _on_confirm_advance(self) -> None:
        low, nxt, pending = self._low, self._next_tag, self._pending
        while low < nxt and low not in pending:
            low += 1
        self._low = low

    # ------------------------------------------------------------------ inbound

    def _complete(self, body: bytes) -> None:
        """A content (deliver or return) is complete."""
        c = self._content
        self._content = None
        if c is None:
            return
        h = self._props
        if c[0] == _KIND_DELIVER:
            entry = self._consumers.get(c[1])
            if entry is None:
                log.debug("delivery for unknown consumer %r on channel %d", c[1], self.number)
                return
            delivery = Delivery(self, entry[0], c[2], c[3], c[4], c[5], body, h[0], h[1], h[2])
            try:
                entry[1](delivery)
            except Exception:
                log.exception(
                    "consumer callback for %r raised; delivery %d on channel %d dropped by the "
                    "callback",
                    entry[0], c[2], self.number,
                )  # fmt: skip
        else:
            m: spec.Basic.Return = c[1]
            self._on_returned(
                Returned(
                    int(m.reply_code or 0),
                    str(m.reply_text or ""),
                    str(m.exchange or ""),
                    str(m.routing_key or ""),
                    body,
                    h[1],
                )
            )

    def _on_method(self, method: Method) -> None:
        if isinstance(method, spec.Basic.Return):
            self._content = (_KIND_RETURN, method)
            return
        if isinstance(method, spec.Channel.Close):
            self._on_broker_close(method)
            return
        if isinstance(method, spec.Channel.CloseOk):
            self._terminate(None, NotConnected(f"channel {self.number} was closed by the client"))
            return
        if self._closing:
            return  # after channel.close, everything but close/close-ok is discarded
        if isinstance(method, spec.Basic.Cancel):
            tag = str(method.consumer_tag)
            self._consumers.pop(tag.encode("utf-8"), None)
            if not method.nowait:  # RabbitMQ sends nowait=True; answer anyone else
                self._conn._write_method(self.number, spec.Basic.CancelOk(consumer_tag=tag))
            log.info("RabbitMQ cancelled consumer %r on channel %d", tag, self.number)
            if self.on_cancel is not None:
                try:
                    self.on_cancel(tag)
                except Exception:
                    log.exception("on_cancel callback raised on channel %d", self.number)
            return
        if isinstance(method, spec.Channel.Flow):
            self.flow_active = bool(method.active)
            self._conn._write_method(self.number, spec.Channel.FlowOk(active=method.active))
            if self.on_flow is not None:
                self.on_flow(self.flow_active)
            return
        rpcs = self._rpcs
        if rpcs and isinstance(method, rpcs[0].expect):
            rpc = rpcs.popleft()
            if rpc.on_reply is not None:
                rpc.on_reply(method)
            if not rpc.future.done():
                rpc.future.set_result(method)
            return
        log.warning("unexpected %s on channel %d ignored", method.name, self.number)

    def _on_broker_close(self, close: spec.Channel.Close) -> None:
        code = int(close.reply_code or 0)
        text = close.reply_text or ""
        during = _method_name(close.class_id, close.method_id)
        suffix = f" (after {during})" if during else ""
        err = BrokerRefused(
            f"RabbitMQ closed channel {self.number}: {code} {text}{suffix}", reply_code=code
        )
        self._conn._write_method(self.number, spec.Channel.CloseOk())
        culprit = self._culprit(close, text)
        if culprit is not None:
            # STUB (pub branch): only the publish the close names fails with BrokerRefused;
            # every other unconfirmed one fails retryably (NotConnected) so it is sent again.
            fut = self._pending.pop(culprit, None)
            if fut is not None:
                _fail_quietly(fut, err)
            retry = NotConnected(
                f"channel {self.number} was closed by RabbitMQ because of another publish "
                f"({code} {text}); this one was not confirmed"
            )
            self._terminate(err, retry)
            return
        self._terminate(err, err)

    def _culprit(self, close: spec.Channel.Close, text: str) -> int | None:
        """The delivery tag of the publish a broker channel.close names, if it names one."""
        if not self._confirm or (close.class_id, close.method_id) != (60, 40):
            return None
        start = text.find("exchange '")
        if start < 0:
            return None
        name = text[start + 10 : text.find("'", start + 10)]
        for tag in sorted(self._pending):
            if self._exchange_of.get(tag) == name:
                return tag
        return None

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """``channel.close``: pending RPCs and confirms fail, then wait for close-ok."""
        if self.closed.done():
            return
        if self._closing or self._conn._state != _ST_OPEN:
            await asyncio.shield(self.closed)
            return
        self._emit_acks()  # acks batched in this iteration go out before the close
        self._closing = True
        self._consumers.clear()
        err = NotConnected(f"channel {self.number} was closed by the client")
        self._fail_pending(err)
        self._conn._write_method(self.number, spec.Channel.Close(200, "Normal shutdown", 0, 0))
        await asyncio.shield(self.closed)

    def _fail_pending(self, err: BaseException) -> None:
        rpcs, self._rpcs = self._rpcs, deque()
        for rpc in rpcs:
            _fail_quietly(rpc.future, _clone_error(err))
        pending, self._pending = self._pending, {}
        self._mandatory = {}
        self._exchange_of = {}
        for fut in pending.values():
            _fail_quietly(fut, _clone_error(err))
        self._low = self._next_tag

    def _terminate(self, reason: BaseException | None, pending_error: BaseException) -> None:
        """The channel is gone (broker close, close-ok, or connection loss)."""
        if self.closed.done():
            return
        self.is_open = False
        self._closing = True
        self._close_reason = reason if reason is not None else pending_error
        self._consumers.clear()
        self._content = None
        self._parts = None
        self._fail_pending(pending_error)
        conn = self._conn
        if conn._channels.get(self.number) is self:
            del conn._channels[self.number]
        self.closed.set_result(reason)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Channel {self.number} {state}{' confirms' if self._confirm else ''}>"
