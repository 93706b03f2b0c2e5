"""The daemon side of the local socket: many clients, many pipelined requests each.

Every accepted connection is one :class:`_Connection` (an :class:`asyncio.Protocol`, not a
stream: the request path is a callback and a dict lookup). Rules of this file:

* **One publish path.** Every publish, alone or in a ``publish_batch``, goes through
  :meth:`_Connection._submit_item`, which calls :meth:`Backend.submit` (the publisher). Without
  ``confirm`` the reply (``{"msg_id"}``) is written as soon as ``submit`` returns: no task, no
  future, no wait on the broker. With ``confirm`` the reply is written from the publisher's
  ``done`` callback (``{"msg_id", "server_id"}`` or the typed error). A batch answers once,
  with one result or error per message, when its last message is settled.
* **Pipelining.** A client may send any number of requests before reading a reply. Confirmed
  publishes, ``query`` and ``pua_publish`` are answered when they finish, in whatever order
  that happens (queries and presence writes run as tasks owned by the server); the ``id``
  matches replies to requests. Accepted publishes, ``async_query`` (the Kamailio bridge),
  ``ping`` and ``status`` are answered inline.
* **Bounded.** At most ``max_inflight_per_connection`` requests wait per connection. Requests
  past that wait in the connection's backlog and reading of that transport is paused until the
  count drops; reading is also paused while the client is not reading its replies (the
  transport's write buffer is over its high-water mark). Memory per connection stays bounded.
* **Coalesced writes.** Replies produced while handling one read, or finished in the same loop
  iteration, leave in one ``write`` (:class:`~kazoo_amqp.aio.WriteCoalescer`).
* **Bounded held bytes.** Bytes of unfinished frames (a length prefix announcing more than has
  arrived) count against ``max_pending_bytes`` over all connections together; one connection
  holds at most ``max_frame`` of them (the decoder's limit). The connection whose read would
  push the total over the budget gets a ``ProtocolError`` reply naming ``socket_pending_bytes``
  and is closed; it is logged and counted (``dropped_for_memory``).
* **Never crash on a peer.** A frame that is not a valid request (not UTF-8, not JSON, nested
  too deeply, wrong fields, a ``timeout_ms`` over the limit) gets a ``ProtocolError`` reply
  (``"id": null`` when the id could not be read), is counted and logged with the peer's pid,
  and the connection goes on. A broken length prefix loses the frame boundaries: the frames
  before it are still served, the error is sent, reading stops, and the connection closes
  once every request already received has been answered.
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
import grp
import logging
import os
import socket
import stat
import struct
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from kazoo_amqp.aio import WriteCoalescer
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


def _fast_json() -> tuple[Callable[[bytes], Any] | None, Callable[[Any], bytes] | None]:
    """orjson's parser and serialiser when installed (see docs/performance.md: 3.7 -> 0.5 us
    per publish request, 2.7 -> 0.7 us per query reply). ``core/wire.py`` uses them only where
    the result cannot differ from the standard ``json`` module's, and falls back to it for
    everything else (payload objects, big integers, lone surrogates, every error message).
    """
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency; kept optional for safety
        return None, None
    loads: Callable[[bytes], Any] = orjson.loads
    dumps: Callable[[Any], bytes] = orjson.dumps
    return loads, dumps


_loads, _dumps = _fast_json()

#: Malformed frames logged per connection; later ones are only counted.
_MALFORMED_LOG_LIMIT = 10
#: How long stop() waits for cancelled requests to send their ShuttingDown reply.
_CANCEL_WAIT = 1.0
#: How long start() waits for an existing socket to accept a probe connection.
_PROBE_TIMEOUT = 1.0
_SOCKET_MODE = 0o660
_CONFIG_KEY = "socket"


#: ``done(result, error)`` of :meth:`Backend.submit`: called once, with one of the two None.
Done = Callable[[Any, BaseException | None], None]


class Backend(Protocol):
    """What the server calls; the daemon wires the publisher, queries and presence behind it."""

    def submit(
        self,
        exchange: str,
        routing_key: str,
        payload: str | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
        persistent: bool | None = None,
        done: Done | None = None,
    ) -> str:
        """Validate and accept one publish; return its Msg-ID.

        Raises the typed error (``BadPayload``, ``BadRoutingKey``, ``ShuttingDown``, buffer
        full, ...) when the message is not accepted. With ``done``, calls it exactly once
        later: ``done({"msg_id", "server_id"}, None)`` on the broker's confirm or
        ``done(None, error)`` on the final failure. Without ``done`` the backend owns
        failures after acceptance (logged, counted, ``kazoo:publish-failed``).
        """
        ...

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: str | dict[str, Any],
        headers: str | None,
        timeout_ms: int | None,
        *,
        mandatory: bool = False,
    ) -> str:
        """Publish a query and return the reply's JSON text."""
        ...

    async def pua_publish(
        self, payload: str | dict[str, Any], package: str | None
    ) -> dict[str, Any]:
        """Write the presentity update described by ``payload``."""
        ...

    def async_query(
        self,
        exchange: str,
        routing_key: str,
        payload: str | dict[str, Any],
        headers: str | None,
        timeout_ms: int | None,
        resume: dict[str, Any],
    ) -> dict[str, Any]:
        """Publish a query whose reply goes to a suspended Kamailio transaction (``resume``,
        see ``core.wire.RESUME_FIELDS``); return ``{"accepted": true}`` at once, or raise the
        typed error (no bridge configured, bad payload, ...)."""
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
    pending_bytes: int = 0
    """Bytes of unfinished frames held now, over all connections."""
    dropped_for_memory: int = 0
    """Connections closed because their unfinished frames pushed ``pending_bytes`` over the
    budget (``socket_pending_bytes``)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "connections": self.connections,
            "open_connections": self.open_connections,
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "malformed_frames": self.malformed_frames,
            "pending_bytes": self.pending_bytes,
            "dropped_for_memory": self.dropped_for_memory,
        }


#: Requests in flight on one connection above which replies are gathered for a fraction of a
#: millisecond (see :class:`~kazoo_amqp.aio.WriteCoalescer`).
_BUSY = 32


class IpcServer:
    """Serve :class:`Backend` on the Unix socket ``path``."""

    def __init__(
        self,
        path: str,
        backend: Backend,
        *,
        max_frame: int,
        max_inflight_per_connection: int = 1024,
        max_pending_bytes: int = 64 * 1024 * 1024,
        socket_mode: int = _SOCKET_MODE,
        socket_group: str | int | None = None,
    ) -> None:
        if max_inflight_per_connection < 1:
            raise ValueError("max_inflight_per_connection must be at least 1")
        if max_pending_bytes < 1:
            raise ValueError("max_pending_bytes must be at least 1")
        self._path = path
        self._backend = backend
        self._max_frame = max_frame
        self._max_inflight = max_inflight_per_connection
        self._max_pending = max_pending_bytes
        self._socket_mode = socket_mode
        self._socket_group = socket_group
        self._stats = IpcStats()
        self._server: asyncio.Server | None = None
        self._socket_ident: tuple[int, int] | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Future[None]] = set()
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
            ConfigError: another daemon answers on the socket, the path is not a socket, the
                socket cannot be created there, its directory is writable by others without
                the sticky bit, or ``socket_group`` cannot be applied.
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
        _check_directory(parent, path)
        gid = _resolve_group(self._socket_group)
        await self._clear_stale_socket()

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            try:
                if gid is not None:
                    os.chown(path, -1, gid)
                os.chmod(path, self._socket_mode)
            except OSError as exc:
                raise ConfigError(
                    f"cannot give socket {path} group {self._socket_group!r} / mode "
                    f"{self._socket_mode:#o}: {exc.strerror or exc}; the daemon's user must be "
                    "a member of socket_group (or run as root)",
                    key="socket_group" if gid is not None else "socket_mode",
                ) from exc
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
                    task.cancel()  # each answers its client with ShuttingDown
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


def _check_directory(parent: str, path: str) -> None:
    """Refuse a socket directory others may write to without the sticky bit: another local
    user could then replace the socket and read the requests of Kamailio's processes."""
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot check the directory {parent} of socket {path}: {exc.strerror or exc}",
            key=_CONFIG_KEY,
        ) from exc
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"the directory {parent} of socket {path} is writable by every user (mode "
            f"{stat.S_IMODE(st.st_mode):#o}) without the sticky bit, so another user could "
            f"replace the socket: chmod o-w {parent} (or +t), or set socket = ... to a "
            "directory of the daemon's own, e.g. /run/kazoo-amqp/",
            key=_CONFIG_KEY,
        )


def _resolve_group(group: str | int | None) -> int | None:
    """The gid of ``socket_group`` (a name or a number), or None when it is not set."""
    if group is None:
        return None
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(
            f"config key 'socket_group' = {group!r}: no such group on this host; give the group "
            "of Kamailio's user (see `id kamailio`) or a numeric gid",
            key="socket_group",
        ) from None


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
        self._submit = server._backend.submit
        self._stats = server._stats
        self._max_inflight = server._max_inflight
        self._decoder = FrameDecoder(server._max_frame)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._writer = WriteCoalescer(self._loop, self._write)
        self._peer_name: str | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._backlog: deque[Request] = deque()
        self._write_paused = False
        self._read_paused = False
        self._malformed_logged = 0
        self._held = 0  # bytes of unfinished frame counted in the server's pending_bytes
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
        # A stream transport (uvloop's is not an asyncio.Transport subclass, so no isinstance).
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)
        self._stats.connections += 1
        self._stats.open_connections += 1
        if self._server._stopping:  # accepted just before close(): nothing will be served
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._held:
            self._stats.pending_bytes -= self._held
            self._held = 0
        self._server._connections.discard(self)
        self._stats.open_connections -= 1
        self._writer.clear()
        self._transport = None
        # Running requests are left to finish, and the backlog keeps draining: every request
        # received is carried out, only the replies are dropped.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        frames, broken = self._decoder.feed_some(data)
        held = self._decoder.buffered
        if held or self._held:
            stats = self._stats
            stats.pending_bytes += held - self._held
            self._held = held
            if held and stats.pending_bytes > self._server._max_pending:
                self._drop_for_memory()
                return
        # Replies produced while handling this read leave in one write, at release().
        writer = self._writer
        writer.hold()
        try:
            for frame in frames:
                self._handle(frame)
            if broken is not None:
                # The frame boundaries are lost: say why, stop reading, and close once every
                # request already received has been answered (nothing queued is discarded).
                self._malformed(str(broken))
                self._send_error(None, broken)
                self._eof = True
                if self._transport is not None:
                    self._transport.pause_reading()
                    self._read_paused = True
        finally:
            writer.release()
        if broken is not None and not self._tasks and not self._backlog:
            self.close()

    def _drop_for_memory(self) -> None:
        """Close this connection: its unfinished frame pushed the total over the budget."""
        stats = self._stats
        held = self._held
        stats.pending_bytes -= held
        self._held = 0
        stats.dropped_for_memory += 1
        server = self._server
        log.warning(
            "closing the connection of %s on %s: it holds %d bytes of an unfinished frame and "
            "all connections together would hold %d, over socket_pending_bytes = %d",
            self._peer,
            server.path,
            held,
            stats.pending_bytes + held,
            server._max_pending,
        )
        self._send_error(
            None,
            ProtocolError(
                f"connection closed: {held} bytes of unfinished frames would put the daemon over "
                f"its socket_pending_bytes budget ({server._max_pending}); send smaller "
                "messages or finish frames promptly"
            ),
        )
        self._decoder = FrameDecoder(0)
        self._eof = True
        if self._transport is not None:
            self._transport.pause_reading()
            self._read_paused = True
        self.close()

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
            req = decode_request(frame, _loads)
        except BadRequest as exc:
            self._malformed(str(exc))
            self._send_error(exc.request_id, exc)
            return
        op = req.op
        self._stats.requests[op] += 1
        if op == "publish" and not req.confirm and not self._backlog and not self._server._stopping:
            # The hot path: validated and accepted synchronously, answered at once.
            self._submit_item(req, functools.partial(self._reply, req.id, op))
        elif op == "ping":
            self._send(encode_response_ok(req.id, True))
        elif op == "status":
            self._answer_status(req.id)
        elif op == "async_query" and not self._server._stopping:
            self._accept_async_query(req)
        elif self._server._stopping:
            self._refuse(req)
        elif len(self._tasks) >= self._max_inflight or self._backlog:
            self._backlog.append(req)
            self._update_reading()
        else:
            self._start(req)
            if len(self._tasks) >= self._max_inflight:
                self._update_reading()

    def _accept_async_query(self, req: Request) -> None:
        """The Kamailio bridge's query: published and answered at once (no task); the reply
        goes to Kamailio's suspended transaction, not to this connection."""
        try:
            result = self._backend.async_query(
                req.exchange,
                req.routing_key,
                req.payload,
                req.headers,
                req.timeout_ms,
                req.resume or {},
            )
        except Exception as exc:
            self._reply(req.id, req.op, None, exc)
            return
        self._reply(req.id, req.op, result, None)

    def _answer_status(self, request_id: int) -> None:
        try:
            status = dict(self._backend.status())
            status.setdefault("ipc", self._stats.as_dict())
        except Exception as exc:
            self._reply(request_id, "status", None, exc)
            return
        self._reply(request_id, "status", status, None)

    def _start(self, req: Request) -> None:
        op = req.op
        if op == "publish":
            self._submit_item(req, self._answer_later(req))
        elif op == "publish_batch":
            self._publish_batch(req)
        else:
            task = self._loop.create_task(self._run(req))
            self._track(task)

    # ---- the one publish path (single publishes and batches)

    def _submit_item(self, item: Request | PublishItem, settle: Done) -> None:
        """Hand one publish to the backend; ``settle(result, error)`` is called exactly once:
        at once when the caller did not ask for the confirm (or the message was refused),
        else when the backend reports the confirm or the final failure."""
        confirm = item.confirm
        try:
            msg_id = self._submit(
                item.exchange,
                item.routing_key,
                item.payload,
                item.headers,
                mandatory=item.mandatory,
                persistent=item.persistent,
                done=settle if confirm else None,
            )
        except Exception as exc:
            settle(None, exc)
            return
        if not confirm:
            settle({"msg_id": msg_id}, None)

    def _publish_batch(self, req: Request) -> None:
        """Every message through :meth:`_submit_item`; one reply, one result or error each."""
        items = req.messages
        results: list[dict[str, Any] | None] = [None] * len(items)
        left = len(items)
        op = req.op
        finish: Done
        if any(item.confirm for item in items):
            finish = self._answer_later(req)
        else:
            finish = functools.partial(self._reply, req.id, op)

        def settle(index: int, value: Any, exc: BaseException | None) -> None:
            nonlocal left
            if exc is None:
                results[index] = {"ok": True, "result": value}
            else:
                if not isinstance(exc, KazooError):
                    exc = self._internal(exc, op)
                results[index] = {"ok": False, "error": error_object(exc)}
            left -= 1
            if left == 0:
                finish(results, None)

        for index, item in enumerate(items):
            self._submit_item(item, functools.partial(settle, index))

    def _answer_later(self, req: Request) -> Done:
        """A ``settle`` for a request answered from a callback; tracked like a task, so
        ``stop()`` waits for it, and answered with ShuttingDown if ``stop()`` cancels it."""
        token: asyncio.Future[None] = self._loop.create_future()

        def settle(value: Any, exc: BaseException | None) -> None:
            if not token.done():
                self._reply(req.id, req.op, value, exc)
                token.set_result(None)

        def finished(fut: asyncio.Future[None]) -> None:
            if fut.cancelled():
                self._send_error(
                    req.id, ShuttingDown(f"the daemon is stopping; the {req.op} was interrupted")
                )
            self._task_done(fut)

        self._tasks.add(token)
        self._server._tasks.add(token)
        token.add_done_callback(finished)
        return settle

    # ---- queries and presence (tasks)

    def _track(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        self._server._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
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
            result: Any
            if req.op == "query":
                result = await backend.query(
                    req.exchange,
                    req.routing_key,
                    req.payload,
                    req.headers,
                    req.timeout_ms,
                    mandatory=req.mandatory,
                )
            else:  # "pua_publish": the only other op that reaches a task
                result = await backend.pua_publish(req.payload, req.package)
        except asyncio.CancelledError:
            if not self._server._stopping:
                raise
            self._send_error(
                req.id, ShuttingDown(f"the daemon is stopping; the {req.op} was interrupted")
            )
            return
        except Exception as exc:
            self._reply(req.id, req.op, None, exc)
            return
        self._reply(req.id, req.op, result, None)

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

    def _internal(self, exc: BaseException, op: str) -> KazooError:
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

    def _reply(self, request_id: int, op: str, value: Any, exc: BaseException | None) -> None:
        """The one outcome-to-reply function: a result, a typed error, or (anything that is
        not a :class:`KazooError`, including a result that cannot be encoded) an internal
        error, logged with its traceback."""
        if exc is None:
            try:
                data = encode_response_ok(request_id, value, _dumps)
            except Exception as err:
                exc = err
            else:
                self._send(data)
                return
        if not isinstance(exc, KazooError):
            exc = self._internal(exc, op)
        self._send_error(request_id, exc)

    def _send_error(self, request_id: int | None, exc: BaseException) -> None:
        self._stats.errors[error_type_name(exc)] += 1
        self._send(encode_response_error(request_id, exc))

    def _send(self, data: bytes) -> None:
        if self._closed:
            return
        n = len(self._tasks)
        if n > 1:
            # Other replies may join this one: write once, at the end of this loop turn (or a
            # fraction of a millisecond later when many requests are in flight).
            self._writer.write(data, busy=n > _BUSY)
        else:
            self._writer.write_now(data)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or (self._eof and self._decoder.broken):
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
        self._writer.flush()
        self._transport.close()
