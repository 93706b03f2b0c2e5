"""The daemon side of the local socket: many clients, many pipelined requests each.

Every accepted connection is one :class:`_Connection` (an :class:`asyncio.Protocol`, not a
stream: the request path is a callback, a dict lookup and one task). Rules of this file:

* **Pipelining.** A client may send any number of requests before reading a reply. Each
  ``publish`` / ``query`` / ``pua_publish`` runs as its own task, owned by the server, and is
  answered when it finishes, in whatever order that happens; the ``id`` matches replies to
  requests. ``ping`` and ``status`` are answered inline.
* **Bounded.** At most ``max_inflight_per_connection`` tasks run per connection. Requests past
  that wait in the connection's backlog and reading of that transport is paused until the count
  drops; reading is also paused while the client is not reading its replies (the transport's
  write buffer is over its high-water mark). Memory per connection stays bounded either way.
* **Coalesced writes.** Replies finished in the same loop iteration leave in one ``write``.
* **Never crash on a peer.** A frame that is not a valid request gets a ``ProtocolError``
  reply (``"id": null`` when the id could not be read) and is counted and logged with the peer's
  pid; a broken length prefix also closes that connection, since its frame boundaries are lost.
* **Errors keep their type.** A :class:`KazooError` from the backend goes back under its class
  name; anything else is a bug: it is logged with its traceback and goes back as
  ``KazooError("internal error: ...")``.
* **A request received is carried out.** If its client disconnects, the task still runs to the
  end; only the reply is dropped.
* **Stopping.** :meth:`IpcServer.stop` stops accepting, answers new requests with
  ``ShuttingDown``, gives running ones ``grace`` seconds, cancels the rest (their clients get
  ``ShuttingDown``), closes every connection and removes the socket file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import stat
import struct
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.wire import (
    BadRequest,
    PublishItem,
    Request,
    decode_request,
    encode_response_error,
    encode_response_ok,
    error_object,
    error_type_name,
)
from kazoo_amqp.errors import ConfigError, KazooError, ProtocolError, ShuttingDown

__all__ = ["Backend", "IpcServer", "IpcStats"]

log = logging.getLogger(__name__)

#: Malformed frames logged per connection; later ones are only counted.
_MALFORMED_LOG_LIMIT = 10
#: How long stop() waits for cancelled requests to send their ShuttingDown reply.
_CANCEL_WAIT = 1.0
#: How long start() waits for an existing socket to accept a probe connection.
_PROBE_TIMEOUT = 1.0
_SOCKET_MODE = 0o660
_CONFIG_KEY = "socket"


class Backend(Protocol):
    """What the server calls; the daemon wires the AMQP manager and presence writer behind it."""

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: str,
        headers: str | None,
        *,
        mandatory: bool = False,
    ) -> dict[str, Any]:
        """Publish ``payload``; return once confirmed or buffered (result goes to the client).

        ``mandatory``: fail with ``PublishFailed`` when no queue is bound for it.
        """
        ...

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: str,
        headers: str | None,
        timeout_ms: int | None,
        *,
        mandatory: bool = False,
    ) -> str:
        """Publish a query and return the reply's JSON text."""
        ...

    async def pua_publish(self, payload: str, package: str | None) -> dict[str, Any]:
        """Write the presentity update described by ``payload``."""
        ...

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the daemon's state."""
        ...


@dataclass
class IpcStats:
    """Counters of one :class:`IpcServer` since it was built."""

    connections: int = 0
    """Connections accepted."""
    open_connections: int = 0
    """Connections open now."""
    requests: Counter[str] = field(default_factory=Counter)
    """Well-formed requests received, by op."""
    errors: Counter[str] = field(default_factory=Counter)
    """Error replies sent, by error class name."""
    malformed_frames: int = 0
    """Frames that were not a valid request (including broken length prefixes)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "connections": self.connections,
            "open_connections": self.open_connections,
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "malformed_frames": self.malformed_frames,
        }


#: Requests in flight on one connection above which replies are gathered for ``_GATHER_S``.
_BUSY = 32
_GATHER_S = 0.0005


def _mandatory(req: Request | PublishItem) -> dict[str, bool]:
    # Passed only when set, so a Backend written before the flag existed keeps working.
    return {"mandatory": True} if req.mandatory else {}


class IpcServer:
    """Serve :class:`Backend` on the Unix socket ``path``."""

    def __init__(
        self,
        path: str,
        backend: Backend,
        *,
        max_frame: int,
        max_inflight_per_connection: int = 1024,
    ) -> None:
        if max_inflight_per_connection < 1:
            raise ValueError("max_inflight_per_connection must be at least 1")
        self._path = path
        self._backend = backend
        self._publish_cb = getattr(self._backend, "publish_cb", None)
        self._max_frame = max_frame
        self._max_inflight = max_inflight_per_connection
        self._stats = IpcStats()
        self._server: asyncio.Server | None = None
        self._socket_ident: tuple[int, int] | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def stats(self) -> IpcStats:
        """Live counters (see :class:`IpcStats`)."""
        return self._stats

    @property
    def serving(self) -> bool:
        return self._server is not None and not self._stopping

    @property
    def inflight(self) -> int:
        """Requests running now, over all connections (including those of gone clients)."""
        return len(self._tasks)

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Bind the socket and start accepting.

        Raises:
            ConfigError: another daemon answers on the socket, the path is not a socket, or the
                socket cannot be created there.
        """
        if self._server is not None:
            raise RuntimeError("IpcServer.start() called twice")
        path = self._path
        parent = os.path.dirname(path) or "."
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the directory {parent} for socket {path}: {exc.strerror}; "
                "create it or set socket = ... in the config",
                key=_CONFIG_KEY,
            ) from exc
        await self._clear_stale_socket()

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, _SOCKET_MODE)
            st = os.stat(path)
            self._socket_ident = (st.st_dev, st.st_ino)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: _Connection(self), sock=sock, backlog=1024
            )
        except OSError as exc:
            sock.close()
            self._unlink_socket()
            raise ConfigError(
                f"cannot listen on socket {path}: {exc.strerror or exc}; "
                "check the directory's permissions or set socket = ... in the config",
                key=_CONFIG_KEY,
            ) from exc
        self._stopping = False
        log.info("listening on %s", path)

    async def _clear_stale_socket(self) -> None:
        path = self._path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(
                f"{path} exists and is not a socket; remove it or set socket = ... in the config",
                key=_CONFIG_KEY,
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(probe, path), _PROBE_TIMEOUT)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: a stale file left by a daemon that died
        except TimeoutError:
            raise self._in_use() from None  # someone listens but does not accept fast enough
        except OSError as exc:
            raise ConfigError(
                f"cannot check whether socket {path} is in use: {exc.strerror or exc}",
                key=_CONFIG_KEY,
            ) from exc
        else:
            raise self._in_use()
        finally:
            probe.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        log.info("removed the stale socket file %s", path)

    def _in_use(self) -> ConfigError:
        return ConfigError(
            f"socket {self._path} is in use by a running daemon; stop it or set socket = ... "
            "in the config",
            key=_CONFIG_KEY,
        )

    # ------------------------------------------------------------------ stop

    async def stop(self, grace: float) -> None:
        """Stop accepting, let running requests finish for ``grace`` s, fail the rest, clean up.

        Requests that are cancelled, or that arrive while stopping, are answered with
        :class:`~kazoo_amqp.errors.ShuttingDown`. Safe to call twice.
        """
        server = self._server
        if server is None:
            return
        self._stopping = True
        server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.refuse_backlog()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=max(grace, 0.0))
            if pending:
                log.warning(
                    "%d request(s) still running after the %.1f s grace period; failing them "
                    "with ShuttingDown",
                    len(pending),
                    grace,
                )
                for task in pending:
                    task.cancel()
                for conn in list(self._connections):
                    conn.refuse_cancelled()
                await asyncio.wait(pending, timeout=_CANCEL_WAIT)
        for conn in list(self._connections):
            conn.close()
        try:
            await asyncio.wait_for(server.wait_closed(), _CANCEL_WAIT)
        except TimeoutError:  # pragma: no cover - only when a peer never drains its replies
            log.warning("some connections on %s did not close in time", self._path)
        self._unlink_socket()
        self._server = None
        log.info("stopped listening on %s", self._path)

    def _unlink_socket(self) -> None:
        """Remove the socket file, unless another process has replaced it since we bound it."""
        ident = self._socket_ident
        self._socket_ident = None
        if ident is None:
            return
        try:
            st = os.lstat(self._path)
            if (st.st_dev, st.st_ino) == ident:
                os.unlink(self._path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove socket file %s: %s", self._path, exc)


def _describe_peer(transport: asyncio.BaseTransport) -> str:
    """``"pid 1234 (kamailio, uid 0)"`` from SO_PEERCRED, for log lines."""
    sock = transport.get_extra_info("socket")
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if sock is None or so_peercred is None:
        return "an unknown peer"
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except OSError:
        return "an unknown peer"
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            name = f.read().strip()
    except OSError:
        return f"pid {pid} (uid {uid})"
    return f"pid {pid} ({name}, uid {uid})"


class _Connection(asyncio.Protocol):
    """One client connection: decode, dispatch, answer."""

    def __init__(self, server: IpcServer) -> None:
        self._server = server
        self._backend = server._backend
        self._publish_cb = server._publish_cb
        self._cb_requests: dict[asyncio.Future[None], Request] = {}
        self._stats = server._stats
        self._max_inflight = server._max_inflight
        self._decoder = FrameDecoder(server._max_frame)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer_name: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[Request] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._write_paused = False
        self._read_paused = False
        self._malformed_logged = 0
        self._reading = False
        self._eof = False
        self._closed = False

    @property
    def _peer(self) -> str:
        """Who is on the other end, for log lines (looked up on first use only)."""
        if self._peer_name is None:
            transport = self._transport
            self._peer_name = "an unknown peer" if transport is None else _describe_peer(transport)
        return self._peer_name

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)
        self._stats.connections += 1
        self._stats.open_connections += 1
        if self._server._stopping:  # accepted just before close(): nothing will be served
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._connections.discard(self)
        self._stats.open_connections -= 1
        self._out.clear()
        self._transport = None
        # Running tasks are left to finish, and the backlog keeps draining into new ones: every
        # request received is carried out, only the replies are dropped.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self._malformed(str(exc))
            self._send_error(None, exc)
            self.close()
            return
        # Replies produced while handling this read (ping, status, errors) leave in one write.
        self._reading = True
        try:
            for frame in frames:
                self._handle(frame)
        finally:
            self._reading = False
        if self._out:
            self._flush()

    def eof_received(self) -> bool | None:
        # The client has shut down its sending side. Keep the transport open until the replies
        # to what it already sent are written (``_task_done`` closes it), then close.
        if self._tasks or self._backlog:
            self._eof = True
            return True
        return None

    # ---- requests

    def _handle(self, frame: bytes) -> None:
        try:
            req = decode_request(frame)
        except BadRequest as exc:
            self._malformed(str(exc))
            self._send_error(exc.request_id, exc)
            return
        op = req.op
        self._stats.requests[op] += 1
        if op == "ping":
            self._send(encode_response_ok(req.id, True))
        elif op == "status":
            self._answer_status(req.id)
        elif self._server._stopping:
            self._refuse(req)
        elif len(self._tasks) >= self._max_inflight or self._backlog:
            self._backlog.append(req)
            self._update_reading()
        else:
            self._start(req)
            if len(self._tasks) >= self._max_inflight:
                self._update_reading()

    def _answer_status(self, request_id: int) -> None:
        try:
            status = dict(self._backend.status())
            status.setdefault("ipc", self._stats.as_dict())
            data = encode_response_ok(request_id, status)
        except Exception as exc:
            self._send_error(request_id, self._internal(exc, "status"))
            return
        self._send(data)

    def _start(self, req: Request) -> None:
        if req.op == "publish" and self._publish_cb is not None:
            self._start_cb(req)
            return
        if req.op == "publish_batch":
            self._start_batch(req)
            return
        task = self._loop.create_task(self._run(req))
        self._tasks.add(task)
        self._server._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _start_cb(self, req: Request) -> None:
        """A publish answered from the backend's confirm callback: no task, no callback hop."""
        token: asyncio.Future[None] = self._loop.create_future()  # stop() waits on it

        def done(value: Any, exc: BaseException | None) -> None:
            if token.done():
                return
            if exc is None:
                try:
                    self._send(encode_response_ok(req.id, value))
                except Exception as err:
                    self._send_error(req.id, self._internal(err, req.op))
            elif isinstance(exc, KazooError):
                self._send_error(req.id, exc)
            else:
                self._send_error(req.id, self._internal(exc, req.op))  # type: ignore[arg-type]
            self._cb_requests.pop(token, None)
            token.set_result(None)
            self._task_done(token)  # type: ignore[arg-type]

        try:
            self._publish_cb(
                req.exchange,
                req.routing_key,
                req.payload,
                req.headers,
                **_mandatory(req),
                done=done,
            )
        except KazooError as exc:
            self._send_error(req.id, exc)
            return
        except Exception as exc:
            self._send_error(req.id, self._internal(exc, req.op))
            return
        if not token.done():
            self._cb_requests[token] = req
            self._tasks.add(token)  # type: ignore[arg-type]
            self._server._tasks.add(token)  # type: ignore[arg-type]

    def refuse_cancelled(self) -> None:
        """Answer callback publishes cancelled by ``stop()`` with ShuttingDown."""
        for token, req in list(self._cb_requests.items()):
            if token.cancelled():
                del self._cb_requests[token]
                self._send_error(
                    req.id, ShuttingDown(f"the daemon is stopping; the {req.op} was interrupted")
                )
                self._task_done(token)  # type: ignore[arg-type]

    def _start_batch(self, req: Request) -> None:
        """Start every publish of a batch; one reply with a result or error per message."""
        items = req.messages
        results: list[dict[str, Any] | None] = [None] * len(items)
        remaining = len(items)
        done: asyncio.Future[list[Any]] = self._loop.create_future()

        def settle(index: int, value: Any, exc: BaseException | None) -> None:
            nonlocal remaining
            if exc is None:
                results[index] = {"ok": True, "result": value}
            else:
                results[index] = {"ok": False, "error": error_object(exc)}
            remaining -= 1
            if remaining == 0 and not done.done():
                done.set_result(results)

        def from_future(index: int, fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                settle(index, None, ShuttingDown("the daemon is stopping"))
            else:
                exc = fut.exception()
                settle(index, None if exc else fut.result(), exc)

        publish_cb = self._publish_cb
        backend = self._backend
        for index, item in enumerate(items):
            try:
                if publish_cb is not None:
                    publish_cb(
                        item.exchange,
                        item.routing_key,
                        item.payload,
                        item.headers,
                        **_mandatory(item),
                        done=functools.partial(settle, index),
                    )
                    continue
                fut = asyncio.ensure_future(
                    backend.publish(
                        item.exchange,
                        item.routing_key,
                        item.payload,
                        item.headers,
                        **_mandatory(item),
                    )
                )
            except Exception as exc:
                if not isinstance(exc, KazooError):
                    exc = self._internal(exc, "publish_batch")
                settle(index, None, exc)
                continue
            fut.add_done_callback(functools.partial(from_future, index))
        self._tasks.add(done)  # type: ignore[arg-type]
        self._server._tasks.add(done)  # type: ignore[arg-type]
        done.add_done_callback(functools.partial(self._fast_done, req))

    def _fast_done(self, req: Request, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._send_error(
                req.id, ShuttingDown(f"the daemon is stopping; the {req.op} was interrupted")
            )
        else:
            exc = fut.exception()
            if exc is None:
                try:
                    self._send(encode_response_ok(req.id, fut.result()))
                except Exception as err:
                    self._send_error(req.id, self._internal(err, req.op))
            elif isinstance(exc, KazooError):
                self._send_error(req.id, exc)
            else:
                self._send_error(req.id, self._internal(exc, req.op))  # type: ignore[arg-type]
        self._task_done(fut)  # type: ignore[arg-type]

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._server._tasks.discard(task)
        backlog = self._backlog
        if backlog:
            if self._server._stopping:
                self.refuse_backlog()
            else:
                while backlog and len(self._tasks) < self._max_inflight:
                    self._start(backlog.popleft())
        if self._read_paused:
            self._update_reading()
        if self._eof and not self._tasks and not self._backlog:
            self.close()

    async def _run(self, req: Request) -> None:
        backend = self._backend
        try:
            op = req.op
            result: Any
            if op == "publish":
                result = await backend.publish(
                    req.exchange,
                    req.routing_key,
                    req.payload,
                    req.headers,
                    **_mandatory(req),
                )
            elif op == "query":
                result = await backend.query(
                    req.exchange,
                    req.routing_key,
                    req.payload,
                    req.headers,
                    req.timeout_ms,
                    **_mandatory(req),
                )
            elif op == "async_query":  # the Kamailio bridge: answered on acceptance
                result = await backend.async_query(  # type: ignore[attr-defined]
                    req.exchange,
                    req.routing_key,
                    req.payload,
                    req.headers,
                    req.timeout_ms,
                    req.resume or {},
                )
            else:  # "pua_publish": the only other op that reaches a task
                result = await backend.pua_publish(req.payload, req.package)
            data = encode_response_ok(req.id, result)
        except asyncio.CancelledError:
            if not self._server._stopping:
                raise
            self._send_error(
                req.id, ShuttingDown(f"the daemon is stopping; the {req.op} was interrupted")
            )
            return
        except KazooError as exc:
            self._send_error(req.id, exc)
            return
        except Exception as exc:
            self._send_error(req.id, self._internal(exc, req.op))
            return
        self._send(data)

    def _refuse(self, req: Request) -> None:
        self._send_error(
            req.id, ShuttingDown(f"the daemon is stopping; the {req.op} was not carried out")
        )

    def refuse_backlog(self) -> None:
        """Answer every request that has not started yet with ShuttingDown."""
        backlog = self._backlog
        while backlog:
            self._refuse(backlog.popleft())
        if self._read_paused:
            self._update_reading()

    def _internal(self, exc: Exception, op: str) -> KazooError:
        log.error("internal error while serving %s for %s: %r", op, self._peer, exc, exc_info=exc)
        return KazooError(f"internal error: {type(exc).__name__}: {exc}")

    def _malformed(self, reason: str) -> None:
        self._stats.malformed_frames += 1
        if self._malformed_logged < _MALFORMED_LOG_LIMIT:
            self._malformed_logged += 1
            suffix = ""
            if self._malformed_logged == _MALFORMED_LOG_LIMIT:
                suffix = " (further malformed frames from this connection are only counted)"
            log.warning(
                "malformed frame from %s on %s: %s%s", self._peer, self._server.path, reason, suffix
            )

    # ---- output

    def _send_error(self, request_id: int | None, exc: BaseException) -> None:
        self._stats.errors[error_type_name(exc)] += 1
        self._send(encode_response_error(request_id, exc))

    def _send(self, data: bytes) -> None:
        if self._closed:
            return
        out = self._out
        if self._reading or out or self._flush_scheduled or len(self._tasks) > 1:
            # Other replies may join this one: write once, at the end of this read or loop turn.
            out.append(data)
            if not self._reading and not self._flush_scheduled:
                self._flush_scheduled = True
                if len(self._tasks) > _BUSY:
                    # Many requests in flight on this connection: gather replies for a fraction
                    # of a millisecond instead of one write (and one client wake-up) per reply.
                    self._loop.call_later(_GATHER_S, self._flush)
                else:
                    self._loop.call_soon(self._flush)
            return
        # The only request in flight: nothing to coalesce with, so no extra loop turn.
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        transport = self._transport
        if not out or transport is None or transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport.write(data)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        want_paused = (
            self._write_paused or bool(self._backlog) or len(self._tasks) >= self._max_inflight
        )
        if want_paused and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not want_paused and self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    def close(self) -> None:
        """Send what is queued, then close (the transport drains its buffer first)."""
        if self._transport is None:
            return
        self._flush()
        self._transport.close()
