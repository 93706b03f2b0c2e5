"""The blocking client of the daemon's local socket: :class:`Client`.

This module imports only the standard library, ``kazoo_amqp.errors``, ``core`` and the sans-IO
request module :mod:`kazoo_amqp.ipc.request` (argument checks, encoding, response matching,
typed errors), because :class:`Client` runs inside Kamailio's
app_python3: Debian's system Python 3.11, no event loop, no threads, in SIP worker processes
forked after the script was loaded.

:class:`Client` rules:

* One blocking connection, opened on first use and re-opened in a forked child (the child never
  touches the parent's connection beyond closing its own copy of the descriptor).
* One request at a time. If the connection turns out to be dead while *sending* (the daemon
  restarted), the request cannot have reached the daemon, so it is sent once more on a fresh
  connection. Once a request has been written it is never sent again: if no reply comes, the
  call raises and says the request may or may not have been carried out.
* A daemon that does not answer in time raises :class:`~kazoo_amqp.errors.QueryTimeout` for a
  query and :class:`~kazoo_amqp.errors.NotConnected` otherwise, and the connection is dropped
  (so a late reply can never be taken for the answer to a later request).

``AsyncClient`` lives in :mod:`kazoo_amqp.ipc.aclient` (so blocking users never import
asyncio); it is reachable here by name for old imports.

Typed errors sent by the daemon are raised as the same :mod:`kazoo_amqp.errors` class.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any, TypeVar

from kazoo_amqp.core.wire import Response
from kazoo_amqp.errors import KazooError, NotConnected, ProtocolError
from kazoo_amqp.ipc import request as rq
from kazoo_amqp.ipc.request import DEFAULT_QUERY_WAIT, QUERY_WAIT_MARGIN, Call, Payload

__all__ = ["DEFAULT_QUERY_WAIT", "QUERY_WAIT_MARGIN", "Client", "Payload"]

T = TypeVar("T")

_RECV_SIZE = 65536
#: Errors of requests sent without waiting kept for :meth:`Client.late_errors`.
_LATE_ERRORS = 100
#: Requests sent without waiting between two non-blocking reads of their answers (~40 bytes
#: each: far below the socket buffers).
_DRAIN_EVERY = 64
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE instead of SIGPIPE killing Kamailio
# The socket stays in blocking mode and the kernel enforces the wait (SO_RCVTIMEO/SO_SNDTIMEO):
# a Python socket timeout would add a poll() before every send and every recv, 4 system calls
# per publish instead of 2 (a timed-out call then fails with EAGAIN: BlockingIOError).
_KERNEL_TIMEOUTS = hasattr(socket, "SO_RCVTIMEO") and hasattr(socket, "SO_SNDTIMEO")
_TIMEVAL = struct.Struct("@ll")


def _set_wait(sock: socket.socket, option: int, seconds: float) -> None:
    """Set SO_RCVTIMEO/SO_SNDTIMEO to ``seconds`` (at least 1 us: a zero timeval waits forever)."""
    whole = int(seconds)
    micro = max(int((seconds - whole) * 1_000_000), 0 if whole else 1)
    sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(whole, micro))


# --------------------------------------------------------------------------------------
# blocking client


class Client:
    """Blocking client, safe to create before Kamailio forks its SIP workers.

    >>> kz = Client("/run/kazoo-amqp/kazoo-amqp.sock")          # doctest: +SKIP
    >>> kz.publish("callmgr", "route.req", {"Event-Name": "x"})  # doctest: +SKIP
    {'msg_id': '...'}
    """

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._sock_wait = timeout
        self._pid = -1
        self._stream = rq.Stream()
        self._responses: deque[Response] = deque()
        self._late: deque[KazooError] = deque(maxlen=_LATE_ERRORS)
        self._unread = 0  # answers to requests sent without waiting, not read yet
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self._path

    # ---- API (each method: build the call with ipc.request, run it)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None = None,
        *,
        mandatory: bool = False,
        confirm: bool = False,
        persistent: bool | None = None,
    ) -> dict[str, Any]:
        """Publish ``payload``; return ``{"msg_id"}`` as soon as the daemon accepted it.

        With ``confirm=True``, return ``{"msg_id", "server_id"}`` after the broker's confirm, or
        raise its typed error (``PublishFailed``, ``BrokerRefused``, ...). Without it, a failure
        the daemon learns later is logged, counted and routed to ``kazoo:publish-failed`` there.
        ``persistent``: delivery mode 2 (True) or 1 (False); None: the daemon's default.
        """
        return self._run(
            rq.publish(
                exchange,
                routing_key,
                payload,
                headers,
                mandatory=mandatory,
                confirm=confirm,
                persistent=persistent,
            )
        )

    def publish_batch(
        self, messages: Any, *, confirm: bool = False
    ) -> list[dict[str, Any] | KazooError]:
        """Publish many messages in one round trip.

        Returns, in order, each message's result dict or the error it failed with (returned,
        not raised, so one bad message does not hide the others' outcome). ``confirm``: as for
        :meth:`publish`, the default of messages that do not say.
        """
        return self._run(rq.publish_batch(messages, confirm=confirm))

    def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None = None,
        headers: str | None = None,
        *,
        mandatory: bool = False,
        raw: bool = False,
    ) -> Any:
        """Publish a query and return the parsed reply (the daemon's default timeout if None).

        ``raw=True`` returns the reply's JSON text as the daemon sent it instead (``$kzR``).
        """
        return self._run(
            rq.query(
                exchange, routing_key, payload, timeout_ms, headers, mandatory=mandatory, raw=raw
            )
        )

    def publish_nowait(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None = None,
    ) -> None:
        """Send a publish and return without waiting for the daemon's answer (the Kamailio
        bridge's ``kazoo_publish``: the SIP worker never waits on another process).

        Raises what can be known here (bad arguments, no daemon). The daemon's refusals (bad
        payload, buffer full, stopping) come back later: :meth:`late_errors` returns them."""
        self._post(rq.publish(exchange, routing_key, payload, headers))

    def async_query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        resume: dict[str, Any],
        timeout_ms: int | None = None,
        headers: str | None = None,
    ) -> None:
        """Hand a query to the daemon without waiting; the daemon sends the answer (or the
        timeout, or its refusal of the query) to the suspended transaction ``resume`` names
        (the Kamailio bridge). Raises what can be known here (bad arguments, no daemon)."""
        self._post(rq.async_query(exchange, routing_key, payload, resume, timeout_ms, headers))

    def late_errors(self) -> list[KazooError]:
        """Errors the daemon answered to requests sent without waiting, as read so far (answers
        are read every ``_DRAIN_EVERY`` such requests and by every waiting call), oldest first,
        at most the last ``_LATE_ERRORS``."""
        if not self._late:
            return []
        with self._lock:
            errors = list(self._late)
            self._late.clear()
        return errors

    def pua_publish(self, payload: Payload, package: str | None = None) -> dict[str, Any]:
        """Write the presentity update in ``payload`` (``package``: None, ``"presence"``,
        ``"dialog"`` or ``"message-summary"``)."""
        return self._run(rq.pua_publish(payload, package))

    def status(self) -> dict[str, Any]:
        """The daemon's status snapshot."""
        return self._run(rq.status())

    def ping(self) -> bool:
        """True when the daemon answers; False (never an exception) when it does not."""
        try:
            return self._run(rq.ping())
        except KazooError:
            return False

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        with self._lock:
            self._drop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- machinery

    def _run(self, call: Call[T]) -> T:
        if self._pid != os.getpid():
            self._after_fork()
        op = call.op
        with self._lock:
            request_id, frame = self._stream.encode(call)
            sock = self._send(frame, request_id, op)
            response = self._wait(sock, request_id, op, call.wait_with(self._timeout))
            self._unread = 0  # the answers before ours were read on the way
        return call.outcome(response)

    def _send(self, frame: bytes, request_id: int, op: str) -> socket.socket:
        """Write one framed request (on a fresh connection once when the old one is dead);
        return the socket it went out on. Called with the lock held."""
        sock = self._sock or self._connected()
        try:
            sock.sendall(frame, _SEND_FLAGS)
        except OSError as exc:
            # The frame did not (completely) reach the daemon, so it cannot have been
            # carried out. The daemon may have said why before closing (frame too big).
            early = self._read_early_error(request_id)
            self._drop()
            if early is not None:
                raise early from None
            if isinstance(exc, TimeoutError | BlockingIOError):
                raise NotConnected(
                    f"the kazoo-amqp daemon on {self._path} is not reading requests (the "
                    f"{op} could not be sent in time); it was not carried out"
                ) from None
            sock = self._connected()  # the daemon restarted: one fresh connection
            try:
                sock.sendall(frame, _SEND_FLAGS)
            except OSError:
                early = self._read_early_error(request_id)
                self._drop()
                if early is not None:
                    raise early from None
                raise rq.lost(self._path, op) from None
        return sock

    def _post(self, call: Call[Any]) -> None:
        """Send ``call`` without waiting for its answer (read later, without blocking)."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            self._unread += 1
            if self._unread >= _DRAIN_EVERY:  # a few syscalls, not on every call
                self._unread = 0
                self._drain()
            request_id, frame = self._stream.encode(call)
            self._send(frame, request_id, call.op)

    def _drain(self) -> None:
        """Read the answers already waiting, without blocking; keep the errors among them."""
        sock = self._sock
        if sock is None:
            return
        # A socket with a timeout waits on EAGAIN even with MSG_DONTWAIT: timeout 0 for this.
        sock.settimeout(0.0)
        while True:
            try:
                data = sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop()
                return
            if not data:
                self._drop()
                return
            try:
                self._responses.extend(self._stream.feed(data))
            except ProtocolError:
                self._drop()
                return
        if _KERNEL_TIMEOUTS:
            sock.settimeout(None)  # blocking again; the kernel's SO_*TIMEO bound the waits
        else:  # pragma: no cover - every platform Kamailio runs on has SO_RCVTIMEO
            sock.settimeout(self._timeout)  # sends block (bounded) again
            self._sock_wait = self._timeout
        responses = self._responses
        while responses:
            response = responses.popleft()
            if not response.ok:
                self._late.append(response.error())

    def _wait(self, sock: socket.socket, request_id: int, op: str, wait: float) -> Response:
        responses = self._responses
        deadline = 0.0
        while True:
            while responses:
                response = responses.popleft()
                if response.id == request_id:
                    return response
                if response.id is None and not response.ok:
                    # The daemon could not read the id of a frame; ours is the only one in flight.
                    return response
                # else: a reply to a request abandoned earlier or sent without waiting.
                if not response.ok:
                    self._late.append(response.error())
            if deadline:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._drop()
                    raise rq.no_answer(self._path, op, wait)
                self._wait_for(sock, remaining)
                self._sock_wait = -1.0
            else:
                # First read: the socket's timeout is a syscall to change, so only when the wait
                # differs from the last one (mostly it does not).
                deadline = time.monotonic() + wait
                if self._sock_wait != wait:
                    self._wait_for(sock, wait)
                    self._sock_wait = wait
            try:
                data = sock.recv(_RECV_SIZE)
            except (TimeoutError, BlockingIOError):
                self._drop()
                raise rq.no_answer(self._path, op, wait) from None
            except OSError:
                self._drop()
                raise rq.lost(self._path, op) from None
            if not data:
                self._drop()
                raise rq.lost(self._path, op)
            try:
                responses.extend(self._stream.feed(data))
            except ProtocolError:
                self._drop()
                raise

    @staticmethod
    def _wait_for(sock: socket.socket, seconds: float) -> None:
        """How long the next recv may block."""
        if _KERNEL_TIMEOUTS:
            _set_wait(sock, socket.SO_RCVTIMEO, seconds)
        else:  # pragma: no cover - every platform Kamailio runs on has SO_RCVTIMEO
            sock.settimeout(seconds)

    def _read_early_error(self, request_id: int) -> KazooError | None:
        """An error reply already waiting on a connection we failed to write to, if any."""
        sock = self._sock
        if sock is None:
            return None
        chunks = []
        try:
            sock.setblocking(False)
            while True:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    break
                chunks.append(data)
        except OSError:
            pass
        try:
            for response in self._stream.feed(b"".join(chunks)):
                if not response.ok and response.id in (None, request_id):
                    return response.error()
        except ProtocolError:
            pass
        return None

    def _connected(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout)
            sock.connect(self._path)
            if _KERNEL_TIMEOUTS:
                sock.settimeout(None)
                _set_wait(sock, socket.SO_SNDTIMEO, self._timeout)
                _set_wait(sock, socket.SO_RCVTIMEO, self._timeout)
        except OSError as exc:
            sock.close()
            raise rq.connect_error(self._path, exc) from None
        self._sock = sock
        self._sock_wait = self._timeout
        self._stream.reset()
        self._responses.clear()
        return sock

    def _drop(self) -> None:
        sock = self._sock
        self._sock = None
        self._responses.clear()
        self._unread = 0
        if sock is not None:
            sock.close()

    def _after_fork(self) -> None:
        # Runs first thing in a child: the lock may have been held by a thread of the parent, and
        # the connection belongs to the parent (closing our copy of the fd does not affect it).
        self._lock = threading.Lock()
        self._drop()
        self._pid = os.getpid()


def __getattr__(name: str) -> Any:
    # ``from kazoo_amqp.ipc.client import AsyncClient`` keeps working without importing asyncio
    # for blocking users.
    if name == "AsyncClient":
        from kazoo_amqp.ipc.aclient import AsyncClient

        return AsyncClient
    raise AttributeError(name)
