"""Clients of the daemon's local socket: :class:`Client` (blocking) and :class:`AsyncClient`.

This module imports only the standard library and ``kazoo_amqp.errors`` / ``core.framing`` /
``core.wire`` (and ``core.jsonc`` when present), because :class:`Client` runs inside Kamailio's
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

:class:`AsyncClient` shares one connection between any number of concurrent callers: requests
are pipelined with ids, writes made in the same loop iteration leave in one ``write``, and the
protocol's ``data_received`` resolves each caller's future by id. No lock is held across a
round trip.

Typed errors sent by the daemon are raised as the same :mod:`kazoo_amqp.errors` class.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.wire import (
    PUA_PACKAGES,
    Response,
    batch_results,
    decode_response,
    encode_request,
)
from kazoo_amqp.errors import (
    BadPayload,
    KazooError,
    NotConnected,
    ProtocolError,
    QueryTimeout,
    UsageError,
)

__all__ = ["DEFAULT_QUERY_WAIT", "QUERY_WAIT_MARGIN", "Client", "Payload"]

#: What ``payload`` may be: a dict (serialised here) or JSON text.
Payload = dict[str, Any] | str | bytes | bytearray

#: Seconds added to a query's ``timeout_ms`` before the client gives up on the daemon.
QUERY_WAIT_MARGIN = 2.0
#: Seconds the client waits for a query reply when ``timeout_ms`` is None or 0 (the daemon
#: applies its own default then, 2 s unless configured).
DEFAULT_QUERY_WAIT = 10.0

_RECV_SIZE = 65536
_ID_MASK = 0x7FFFFFFF
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE instead of SIGPIPE killing Kamailio


def _reply_parser() -> Callable[[str], Any]:
    try:
        from kazoo_amqp.core import jsonc
    except ImportError:  # pragma: no cover - jsonc ships with the package
        return json.loads
    loads: Callable[[str], Any] = getattr(jsonc, "loads", json.loads)
    return loads


_parse_reply = _reply_parser()


# --------------------------------------------------------------------------------------
# shared argument handling


def _payload_text(payload: Payload) -> str | dict[str, Any]:
    """The payload for the request: text is passed on unparsed, a dict travels as a JSON object
    inside the request (the daemon then parses it once, with the request)."""
    if isinstance(payload, str):
        return payload
    if isinstance(payload, dict):
        return payload
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            return bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadPayload(
                f"payload is not valid UTF-8 at byte {exc.start} ({exc.reason}); "
                "pass a dict, a str, or UTF-8 encoded JSON bytes"
            ) from None
    raise BadPayload(
        f"payload must be a dict or JSON text (str or UTF-8 bytes), not {type(payload).__name__}"
    )


def _text_arg(name: str, value: Any, *, optional: bool = False) -> Any:
    if type(value) is str or (optional and value is None):
        return value
    wanted = "a str or None" if optional else "a str"
    raise UsageError(f"{name} must be {wanted}, not {type(value).__name__}")


def _package_arg(package: Any) -> str | None:
    if package is None or (type(package) is str and package in PUA_PACKAGES):
        return package
    raise UsageError(
        f"package must be None, 'presence', 'dialog' or 'message-summary', not {package!r}"
    )


def _mandatory(mandatory: bool) -> dict[str, bool]:
    """The optional ``mandatory`` field: sent only when set, so requests stay small."""
    if type(mandatory) is not bool:
        raise UsageError(f"mandatory must be True or False, not {mandatory!r}")
    return {"mandatory": True} if mandatory else {}


def _encode(request_id: int, op: str, fields: dict[str, Any]) -> bytes:
    """The framed request; a payload dict that is not JSON-serialisable is a BadPayload."""
    try:
        return encode_request(request_id, op, **fields)
    except (TypeError, ValueError) as exc:
        raise BadPayload(f"payload cannot be serialised to JSON: {exc}") from None


def _batch_items(messages: Any) -> list[dict[str, Any]]:
    """``publish_batch`` messages: dicts with exchange, routing_key, payload (headers, mandatory
    optional) or tuples ``(exchange, routing_key, payload[, headers])``."""
    items: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, dict):
            exchange, routing_key, payload = (
                m.get("exchange"),
                m.get("routing_key"),
                m.get("payload"),
            )
            headers, mandatory = m.get("headers"), m.get("mandatory", False)
        elif isinstance(m, tuple | list) and len(m) in (3, 4):
            exchange, routing_key, payload = m[0], m[1], m[2]
            headers, mandatory = (m[3] if len(m) == 4 else None), False
        else:
            raise UsageError(
                "publish_batch messages are dicts {exchange, routing_key, payload[, headers]} "
                f"or tuples (exchange, routing_key, payload[, headers]), not {m!r:.80}"
            )
        item = {
            "exchange": _text_arg("exchange", exchange),
            "routing_key": _text_arg("routing_key", routing_key),
            "payload": _payload_text(payload),
            **_mandatory(mandatory),
        }
        if headers is not None:
            item["headers"] = _text_arg("headers", headers)
        items.append(item)
    if not items:
        raise UsageError("publish_batch needs at least one message")
    return items


def _batch_result(result: Any) -> list[dict[str, Any] | KazooError]:
    if not isinstance(result, list):
        raise ProtocolError(f"publish_batch: the daemon answered {result!r:.80}, not a list")
    return batch_results(result)


def _query_wait(timeout_ms: int | None) -> float:
    if timeout_ms is None or timeout_ms == 0:
        return DEFAULT_QUERY_WAIT
    if type(timeout_ms) is not int or timeout_ms < 0:
        raise UsageError(f"timeout_ms must be a non-negative int or None, not {timeout_ms!r}")
    return timeout_ms / 1000.0 + QUERY_WAIT_MARGIN


def _query_result(result: Any) -> dict[str, Any]:
    if type(result) is not str:
        raise ProtocolError(f"the daemon answered a query with {type(result).__name__}, not text")
    try:
        reply = _parse_reply(result)
    except ValueError as exc:
        raise BadPayload(f"the query reply is not JSON: {exc}") from None
    if type(reply) is not dict:
        raise BadPayload(f"the query reply is JSON {type(reply).__name__}, not an object")
    return reply


def _dict_result(op: str, result: Any) -> dict[str, Any]:
    if type(result) is not dict:
        raise ProtocolError(f"the daemon answered {op} with {type(result).__name__}, not an object")
    return result


def _not_listening(path: str) -> NotConnected:
    return NotConnected(
        f"kazoo-amqp daemon is not listening on {path}: start it with "
        "`kazoo-amqp run --config FILE`"
    )


def _connect_error(path: str, exc: OSError) -> NotConnected:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return _not_listening(path)
    if isinstance(exc, PermissionError):
        return NotConnected(
            f"no permission to connect to the kazoo-amqp daemon on {path}: the socket is mode "
            "0660, so run as the daemon's user or add this user to its group"
        )
    if isinstance(exc, TimeoutError):
        return NotConnected(f"the kazoo-amqp daemon on {path} did not accept a connection in time")
    return NotConnected(f"cannot connect to the kazoo-amqp daemon on {path}: {exc}")


def _lost(path: str, op: str) -> NotConnected:
    return NotConnected(
        f"the connection to the kazoo-amqp daemon on {path} closed before it answered the {op}; "
        "it may or may not have been carried out"
    )


def _no_answer(path: str, op: str, wait: float) -> KazooError:
    if op == "query":
        return QueryTimeout(
            f"the kazoo-amqp daemon on {path} gave no answer to the query within {wait:g} s",
            timeout_ms=wait * 1000.0,
        )
    return NotConnected(
        f"the kazoo-amqp daemon on {path} did not answer the {op} within {wait:g} s; "
        "it may or may not have been carried out"
    )


# --------------------------------------------------------------------------------------
# blocking client


class Client:
    """Blocking client, safe to create before Kamailio forks its SIP workers.

    >>> kz = Client("/run/kazoo-amqp/kazoo-amqp.sock")          # doctest: +SKIP
    >>> kz.publish("callmgr", "route.req", {"Event-Name": "x"})  # doctest: +SKIP
    """

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._pid = -1
        self._decoder = FrameDecoder()
        self._frames: deque[bytes] = deque()
        self._next_id = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> str:
        return self._path

    # ---- API

    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None = None,
        *,
        mandatory: bool = False,
    ) -> dict[str, Any]:
        """Publish ``payload``; return the daemon's result once the broker confirmed it or the
        daemon buffered it (the daemon decides which)."""
        result = self._call(
            "publish",
            self._timeout,
            exchange=_text_arg("exchange", exchange),
            routing_key=_text_arg("routing_key", routing_key),
            payload=_payload_text(payload),
            headers=_text_arg("headers", headers, optional=True),
            **_mandatory(mandatory),
        )
        return _dict_result("publish", result)

    def publish_batch(self, messages: Any) -> list[dict[str, Any] | KazooError]:
        """Publish many messages in one round trip (pipelined confirms on the daemon side).

        Returns, in order, each message's result dict or the error it failed with (returned,
        not raised, so one bad message does not hide the others' outcome).
        """
        items = _batch_items(messages)
        return _batch_result(self._call("publish_batch", self._timeout, messages=items))

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
        result = self._call(
            "query",
            _query_wait(timeout_ms),
            exchange=_text_arg("exchange", exchange),
            routing_key=_text_arg("routing_key", routing_key),
            payload=_payload_text(payload),
            headers=_text_arg("headers", headers, optional=True),
            timeout_ms=timeout_ms,
            **_mandatory(mandatory),
        )
        if raw and type(result) is str:
            return result
        return _query_result(result)

    def async_query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        resume: dict[str, Any],
        timeout_ms: int | None = None,
        headers: str | None = None,
    ) -> dict[str, Any]:
        """Hand a query to the daemon and return once it accepted it; the daemon sends the
        answer (or the timeout) elsewhere, as ``resume`` says (the Kamailio bridge)."""
        result = self._call(
            "async_query",
            self._timeout,
            exchange=_text_arg("exchange", exchange),
            routing_key=_text_arg("routing_key", routing_key),
            payload=_payload_text(payload),
            headers=_text_arg("headers", headers, optional=True),
            timeout_ms=timeout_ms,
            resume=resume,
        )
        return _dict_result("async_query", result)

    def pua_publish(self, payload: Payload, package: str | None = None) -> dict[str, Any]:
        """Write the presentity update in ``payload`` (``package``: None, ``"presence"``,
        ``"dialog"`` or ``"message-summary"``)."""
        result = self._call(
            "pua_publish",
            self._timeout,
            payload=_payload_text(payload),
            package=_package_arg(package),
        )
        return _dict_result("pua_publish", result)

    def status(self) -> dict[str, Any]:
        """The daemon's status snapshot."""
        return _dict_result("status", self._call("status", self._timeout))

    def ping(self) -> bool:
        """True when the daemon answers; False (never an exception) when it does not."""
        try:
            return self._call("ping", self._timeout) is True
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

    def _call(self, op: str, wait: float, **fields: Any) -> Any:
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            self._next_id = request_id = (self._next_id + 1) & _ID_MASK
            frame = _encode(request_id, op, fields)
            sock = self._connected()
            try:
                sock.sendall(frame, _SEND_FLAGS)
            except OSError as exc:
                # The frame did not (completely) reach the daemon, so it cannot have been
                # carried out. The daemon may have said why before closing (frame too big).
                early = self._read_early_error(request_id)
                self._drop()
                if early is not None:
                    raise early from None
                if isinstance(exc, TimeoutError):
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
                    raise _lost(self._path, op) from None
            response = self._wait(request_id, op, wait)
        if response.ok:
            return response.result
        raise response.error()

    def _wait(self, request_id: int, op: str, wait: float) -> Response:
        sock = self._sock
        assert sock is not None
        frames = self._frames
        deadline = time.monotonic() + wait
        if sock.gettimeout() != wait:
            sock.settimeout(wait)  # a syscall: only when the wait changes (mostly it does not)
        first = True
        while True:
            while frames:
                try:
                    response = decode_response(frames.popleft())
                except ProtocolError:
                    self._drop()
                    raise
                if response.id == request_id:
                    return response
                if response.id is None and not response.ok:
                    # The daemon could not read the id of a frame; ours is the only one in flight.
                    return response
                # else: a reply to a request abandoned earlier; not ours.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drop()
                raise _no_answer(self._path, op, wait)
            try:
                if first:
                    first = False
                else:
                    sock.settimeout(remaining)
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                self._drop()
                raise _no_answer(self._path, op, wait) from None
            except OSError:
                self._drop()
                raise _lost(self._path, op) from None
            if not data:
                self._drop()
                raise _lost(self._path, op)
            try:
                frames.extend(self._decoder.feed(data))
            except ProtocolError:
                self._drop()
                raise

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
            frames = self._decoder.feed(b"".join(chunks))
            for frame in frames:
                response = decode_response(frame)
                if not response.ok and response.id in (None, request_id):
                    return response.error()
        except ProtocolError:
            pass
        return None

    def _connected(self) -> socket.socket:
        sock = self._sock
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout)
            sock.connect(self._path)
        except OSError as exc:
            sock.close()
            raise _connect_error(self._path, exc) from None
        self._sock = sock
        self._decoder = FrameDecoder()
        self._frames.clear()
        return sock

    def _drop(self) -> None:
        sock = self._sock
        self._sock = None
        self._frames.clear()
        if sock is not None:
            sock.close()

    def _after_fork(self) -> None:
        # Runs first thing in a child: the lock may have been held by a thread of the parent, and
        # the connection belongs to the parent (closing our copy of the fd does not affect it).
        self._lock = threading.Lock()
        self._drop()
        self._pid = os.getpid()


# --------------------------------------------------------------------------------------
# asyncio client


def __getattr__(name: str) -> Any:
    # ``from kazoo_amqp.ipc.client import AsyncClient`` keeps working without importing asyncio
    # for blocking users.
    if name == "AsyncClient":
        from kazoo_amqp.ipc.aclient import AsyncClient

        return AsyncClient
    raise AttributeError(name)
