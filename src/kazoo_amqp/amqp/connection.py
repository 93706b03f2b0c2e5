"""One AMQP 0-9-1 connection over asyncio: the handshake, heartbeats, channels, back-pressure.

Rules of this module:

* One ``asyncio.Protocol`` per connection; no streams. Received bytes go straight into the
  sans-IO :class:`~kazoo_amqp.amqp.codec.FrameDecoder`; the connection is its
  :class:`~kazoo_amqp.amqp.codec.FrameSink` and routes events to channels.
* Writes are collected in one list per connection and written with a single
  ``transport.write`` per event-loop iteration (``loop.call_soon``), so a burst of publishes or
  acks becomes one ``send()``. Everything that writes goes through :meth:`Connection._outbox`.
* Every future this module hands out is owned by its channel or connection and is failed with a
  typed error when the channel or connection goes away (``NotConnected`` with the reason, or
  one of its subclasses: ``FrameError``, ``HeartbeatTimeout``). Nothing is left hanging and no
  exception escapes into the event loop: bad bytes from the broker close the connection with a
  ``FrameError``, logged once, and the owner sees it as the result of :attr:`Connection.closed`.
* Consumer callbacks run synchronously inside ``data_received``. An exception in a callback is
  logged on ``kazoo_amqp.amqp`` and does not touch the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import ssl as _ssl
import struct
import sys
import termios
from collections.abc import Callable
from typing import Any, cast

from pamqp import commands as spec
from pamqp.base import Frame as Method

from kazoo_amqp.amqp import codec
from kazoo_amqp.amqp.channel import Channel, Delivery, Returned, clone_error, fail_quietly
from kazoo_amqp.errors import (
    BrokerError,
    BrokerRefused,
    FrameError,
    HeartbeatTimeout,
    NotConnected,
    UsageError,
)

__all__ = ["Connection"]

log = logging.getLogger("kazoo_amqp.amqp")

_CLIENT_CAPABILITIES = {
    "authentication_failure_close": True,
    "basic.nack": True,
    "connection.blocked": True,
    "consumer_cancel_notify": True,
    "exchange_exchange_bindings": True,
    "per_consumer_qos": True,
    "publisher_confirms": True,
}

_MECHANISMS = ("PLAIN", "EXTERNAL")

# connection states
_ST_CONNECTING = 0  # protocol header sent, waiting for connection.start
_ST_AUTH = 1  # start-ok sent, waiting for connection.tune
_ST_OPENING = 2  # tune-ok + open sent, waiting for connection.open-ok
_ST_OPEN = 3
_ST_CLOSING = 4  # we sent connection.close
_ST_CLOSED = 5

_INT = struct.Struct("i")


def _negotiate(ours: int, theirs: int) -> int:
    """The smaller of two limits where 0 means "no limit"."""
    if theirs == 0:
        return ours
    if ours == 0:
        return theirs
    return min(ours, theirs)


class _Protocol(asyncio.Protocol):
    """Thin adapter: asyncio calls land on the owning ``Connection``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def data_received(self, data: bytes) -> None:
        self._conn._on_data(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only structurally alike
        transport = cast(asyncio.Transport, transport)
        self._conn._on_connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn._on_connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn._writing_paused = True

    def resume_writing(self) -> None:
        self._conn._on_resume_writing()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows


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
        auth_mechanism: str = "PLAIN",
    ) -> None:
        """Use :meth:`connect`; this only sets up state."""
        self._loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.user = user
        self.vhost = vhost
        self.name = name
        self._password = password
        self.auth_mechanism = auth_mechanism.upper()
        if self.auth_mechanism not in _MECHANISMS:
            raise UsageError(
                f"auth_mechanism {auth_mechanism!r} is not supported: use PLAIN or EXTERNAL"
            )
        self._want_heartbeat = max(0, heartbeat)
        self._want_frame_max = frame_max
        self._want_channel_max = channel_max
        #: negotiated values (valid once open)
        self.heartbeat = 0
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.server_properties: dict[str, Any] = {}
        #: the broker's reason while it blocks publishing (connection.blocked: a memory or disk
        #: alarm), else None. Publishing is not stopped here: the owner decides.
        self.blocked: str | None = None
        #: owner-set: called with the reason on connection.blocked
        self.on_blocked: Callable[[str], None] | None = None
        #: owner-set: called on connection.unblocked
        self.on_unblocked: Callable[[], None] | None = None

        self.closed = self._loop.create_future()
        self.is_open = False
        self._state = _ST_CONNECTING
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._close_ok: asyncio.Future[None] = self._loop.create_future()
        self._channels: dict[int, Channel] = {}
        self._next_channel = 1
        self._decoder = codec.FrameDecoder(self, max(frame_max, 131072))
        self._feed = self._decoder.feed

        # outbound: one list, one write per loop iteration (see _outbox)
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._ack_channels: list[Channel] = []  # channels with acks batched this iteration
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

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
        auth_mechanism: str = "PLAIN",
    ) -> Connection:
        """Open a TCP (or TLS) connection and run the AMQP handshake.

        ``auth_mechanism`` is ``"PLAIN"`` (``user`` and ``password``) or ``"EXTERNAL"``: the
        broker takes the identity from the TLS client certificate of ``ssl`` (RabbitMQ's
        rabbitmq_auth_mechanism_ssl plugin); ``user`` and ``password`` are then not sent.

        ``channel_max``, ``frame_max`` and ``heartbeat`` are negotiated down to the broker's limits;
        ``heartbeat=0`` turns heartbeats off. Raises ``NotConnected`` when the broker cannot be
        reached in ``connect_timeout`` seconds, ``BrokerRefused`` when it refuses the login or the
        vhost.
        """
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
            auth_mechanism=auth_mechanism,
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
        self._decoder.paused = True
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
        fail_quietly(self._opened, clone_error(pending_error if reason is None else reason))
        if not self._close_ok.done():
            fail_quietly(self._close_ok, clone_error(pending_error))
        for waiter in self._drain_waiters:
            fail_quietly(waiter, clone_error(pending_error))
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

    def _forget_channel(self, chan: Channel) -> None:
        if self._channels.get(chan.number) is chan:
            del self._channels[chan.number]
            self._decoder.reset_channel(chan.number)

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
        """Stop reading from the socket (and stop dispatching already read deliveries).

        Heartbeats still detect a dead broker while paused: bytes waiting unread in the socket
        count as a sign of life.
        """
        if self._paused:
            return
        self._paused = True
        self._decoder.paused = True
        if self._transport is not None and self._state != _ST_CLOSED:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`; deliveries already read are dispatched first."""
        if not self._paused:
            return
        self._paused = False
        if self._state == _ST_CLOSED:
            return
        self._decoder.paused = False
        self._missed = 0
        if self._transport is not None:
            self._transport.resume_reading()
        if self._decoder.buffered:
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

    # ------------------------------------------------------------------ write coalescing
    # The one place that batches writes; kazoo_amqp.aio's shared coalescer replaces it.

    def _outbox(self) -> list[bytes | memoryview]:
        """The frames written at the end of this loop iteration; appending to it is sending."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return self._out

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
        self._outbox().append(codec.encode_method(channel, method))

    # ------------------------------------------------------------------ transport events

    def _on_connection_made(self, transport: asyncio.Transport) -> None:
        if self._state == _ST_CLOSED:
            transport.abort()
            return
        self._transport = transport
        transport.write(codec.PROTOCOL_HEADER)

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
        elif exc is None and self._decoder.partial_frame:
            err = FrameError(
                f"{where} closed the connection in the middle of a frame "
                f"({self._decoder.buffered} bytes of it received)"
            )
            log.error("connection lost: %s", err)
        elif exc is not None:
            err = NotConnected(f"lost the connection to {where}: {exc}")
        else:
            err = NotConnected(f"{where} closed the connection")
        self._finish(err, err)

    def _on_data(self, data: bytes) -> None:
        """Bytes from the socket: decode and dispatch; nothing raised escapes to asyncio.

        (After the connection is finished its decoder is paused, so late bytes are only kept.)
        """
        self._rx = True
        try:
            self._feed(data)
        except FrameError as exc:
            self._protocol_error(FrameError(f"{self._where} sent invalid AMQP: {exc}"))
        except Exception as exc:  # a bug in our dispatch: close rather than leave a hole
            log.exception("unexpected error handling data from %s", self._where)
            self._protocol_error(NotConnected(f"internal error on the connection to "
                                              f"{self._where}: {exc!r}"))  # fmt: skip

    def _protocol_error(self, err: NotConnected) -> None:
        """Close the connection for bad input: one log line, the owner sees ``closed``."""
        if self._state == _ST_CLOSED:
            return
        log.error("closing the connection: %s", err)
        if self._transport is not None and self._state == _ST_OPEN:
            with contextlib.suppress(Exception):
                self._transport.write(
                    codec.encode_method(0, spec.Connection.Close(501, "FRAME_ERROR", 0, 0))
                )
        self._finish(err, err)

    # ------------------------------------------------------------------ frame sink

    def on_method(self, channel: int, method: Method) -> None:
        """Codec event: a method frame (not deliver/return/confirm)."""
        if channel == 0:
            self._on_connection_method(method)
            return
        chan = self._channels.get(channel)
        if chan is None:
            log.debug("method %s for unknown channel %d ignored", method.name, channel)
            return
        chan._on_method(method)

    def on_deliver(self, channel: int, content: list[Any], body: bytes) -> None:
        """Codec event: a complete delivery; the consumer callback runs right here.

        ``content`` is read by position (codec.D_*): the consume hot path.
        """
        chan = self._channels.get(channel)
        if chan is None:
            return
        entry = chan._consumers.get(content[3])
        if entry is None:
            log.debug("delivery for unknown consumer %r on channel %d", content[3], channel)
            return
        delivery = Delivery(
            chan, entry[0], content[4], content[5], content[6], content[7],
            body, content[8], content[9], content[10],
        )  # fmt: skip
        try:
            entry[1](delivery)
        except Exception:
            log.exception(
                "consumer callback for %r raised; delivery %d on channel %d dropped by the "
                "callback",
                entry[0], content[4], channel,
            )  # fmt: skip

    def on_return(
        self, channel: int, method: spec.Basic.Return, body: bytes, message_id: str | None
    ) -> None:
        """Codec event: a complete basic.return."""
        chan = self._channels.get(channel)
        if chan is None or chan._closing:
            return
        chan._on_returned(
            Returned(
                int(method.reply_code or 0),
                str(method.reply_text or ""),
                str(method.exchange or ""),
                str(method.routing_key or ""),
                body,
                message_id,
            )
        )

    def on_confirm(self, channel: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        """Codec event: a publisher confirm (basic.ack / basic.nack)."""
        chan = self._channels.get(channel)
        if chan is not None and chan._confirm:
            chan._on_confirm(delivery_tag, multiple, ack)

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
            self._on_blocked(str(method.reason or "no reason given"))
        elif isinstance(method, spec.Connection.Unblocked):
            self._on_unblocked()
        else:
            log.warning("unexpected %s on channel 0 from %s", method.name, self._where)

    def _on_blocked(self, reason: str) -> None:
        self.blocked = reason
        log.warning("%s blocked publishing: %s", self._where, reason)
        if self.on_blocked is not None:
            try:
                self.on_blocked(reason)
            except Exception:
                log.exception("on_blocked callback raised")

    def _on_unblocked(self) -> None:
        self.blocked = None
        log.info("%s unblocked publishing", self._where)
        if self.on_unblocked is not None:
            try:
                self.on_unblocked()
            except Exception:
                log.exception("on_unblocked callback raised")

    def _on_start(self, start: spec.Connection.Start) -> None:
        self.server_properties = dict(start.server_properties or {})
        mechanisms = str(start.mechanisms).split()
        mechanism = self.auth_mechanism
        if mechanism not in mechanisms:
            fix = (
                "enable the rabbitmq_auth_mechanism_ssl plugin and add EXTERNAL to the broker's "
                "auth_mechanisms, or drop ?auth_mechanism=external to log in with a password"
                if mechanism == "EXTERNAL"
                else "add PLAIN to the broker's auth_mechanisms"
            )
            err = BrokerRefused(
                f"{self._where} does not offer {mechanism} authentication (it offers "
                f"{' '.join(mechanisms)}): {fix}",
                reply_code=0,
            )
            log.error("closing the connection: %s", err)
            self._finish(err, err)
            return
        props: dict[str, Any] = {
            "product": "kazoo-amqp",
            "platform": f"Python {sys.version.split()[0]}",
            "connection_name": self.name,
            "capabilities": dict(_CLIENT_CAPABILITIES),
        }
        # PLAIN: authzid NUL user NUL password (RFC 4616); EXTERNAL: empty, the certificate is
        # the credential (RFC 4422 appendix A)
        response = f"\0{self.user}\0{self._password}" if mechanism == "PLAIN" else ""
        self._state = _ST_AUTH
        self._write_method(
            0,
            spec.Connection.StartOk(
                client_properties=props, mechanism=mechanism, response=response, locale="en_US"
            ),
        )

    def _on_tune(self, tune: spec.Connection.Tune) -> None:
        channel_max = _negotiate(self._want_channel_max, tune.channel_max or 0) or 2047
        frame_max = _negotiate(self._want_frame_max, tune.frame_max or 0) or 131072
        frame_max = max(frame_max, codec.MIN_FRAME_MAX)
        heartbeat = 0
        if self._want_heartbeat > 0:
            heartbeat = _negotiate(self._want_heartbeat, tune.heartbeat or 0)
        self.channel_max = min(channel_max, 65535)
        self.frame_max = frame_max
        self._decoder.frame_max = frame_max
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
        if self.auth_mechanism == "EXTERNAL":
            return BrokerRefused(
                f"{self._where} refused the TLS client certificate (EXTERNAL login) on vhost "
                f"{self.vhost!r}: check that a RabbitMQ user named like the certificate's "
                "subject (ssl_cert_login_from) exists and may use the vhost",
                reply_code=code or 403,
            )
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
                self._transport.write(codec.encode_method(0, spec.Connection.CloseOk()))
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
            during = codec.method_name(close.class_id, close.method_id)
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
        if self._rx or (self._paused and self._unread_bytes() > 0):
            # while reading is paused, bytes waiting in the socket are the broker's sign of life
            self._rx = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= 4:  # 4 ticks of heartbeat/2 = 2 heartbeats
                err = HeartbeatTimeout(
                    f"no traffic from RabbitMQ for 2 heartbeats ({2 * self.heartbeat} s) on "
                    f"the connection to {self.host}:{self.port}"
                    + (" (reading paused, nothing waiting in the socket)" if self._paused else "")
                )
                log.warning("aborting: %s", err)
                self._finish(err, err)
                return
        if not self._tx and self._transport is not None:
            self._transport.write(codec.HEARTBEAT_FRAME)
        self._tx = False
        self._hb_handle = self._loop.call_later(self.heartbeat / 2, self._heartbeat_tick)

    def _unread_bytes(self) -> int:
        """Bytes the kernel holds for us unread (FIONREAD); 0 when it cannot be asked."""
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return 0
        try:
            raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, _INT.pack(0))
        except (OSError, ValueError):
            return 0
        return int(_INT.unpack(raw)[0])

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Connection {self.name!r} to {self.host}:{self.port}{self.vhost} {state}>"
