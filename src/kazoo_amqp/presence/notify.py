"""Ask Kamailio to send NOTIFYs after a presentity write: ``presence.refreshWatchers`` via jsonrpcs.

Targets (what Kamailio's jsonrpcs listens on):

* ``udp:HOST:PORT`` (``dgram_socket "udp:127.0.0.1:8090"``, jsonrpcs ``transport`` 0, 4 or 6).
  Kamailio answers to the sender's address, so the reply is read on the same socket.
* ``unix:/path/kamailio_rpc.sock`` (or a bare absolute path): a unix datagram socket. The client
  binds its own socket file (in ``reply_dir``, default the temp dir, mode 0666 so a Kamailio
  running as another user can answer) and removes it on :meth:`KamailioRpc.close`.
* ``http://HOST:PORT/RPC`` (or ``https://``): xhttp + ``jsonrpc_dispatch()``, one POST per call.

Every call is one JSON-RPC 2.0 request with positional ``params``. ``refreshWatchers``' ``type``
is the JSON number ``1`` ("published state changed by a direct DB update"); the string ``"1"``
would be read as 0 by Kamailio. A ``{"result": {}}`` reply does not prove that a NOTIFY went out
(Kamailio answers the same when nobody watches or the URI does not match byte for byte).
Call it only after the write has been committed.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref
from typing import Any

from kazoo_amqp.errors import ConfigError, KazooError

#: ``presence.refreshWatchers`` type for "the presentity table was changed directly".
REFRESH_TYPE_DB_UPDATE = 1

_MAX_DGRAM = 65535


def _config_error(target: str, why: str) -> ConfigError:
    return ConfigError(
        f"Kamailio RPC target {target!r} {why}; expected udp:HOST:PORT, unix:/path/to/socket "
        "or http://HOST:PORT/RPC",
        key="kamailio_rpc",
    )


class KamailioRpc:
    """A blocking jsonrpcs client. Thread-safe; reuse one instance (it keeps its socket)."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        retry_delay: float = 0.05,
        reply_dir: str | None = None,
    ) -> None:
        self.target = target.strip()
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.retry_delay = float(retry_delay)
        self._reply_dir = reply_dir
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reply_path: str | None = None
        self._finalizer: weakref.finalize[Any, KamailioRpc] | None = None
        self._parse_target()

    # ------------------------------------------------------------------ public API

    def refresh_watchers(self, uri: str, event: str) -> None:
        """``presence.refreshWatchers(uri, event, 1)``; raise :class:`KazooError` on failure.

        An error reply with code 500 (e.g. Kamailio's SQLite was locked for a moment) is retried
        ``retries`` times after ``retry_delay`` seconds.
        """
        params: list[Any] = [uri, event, REFRESH_TYPE_DB_UPDATE]
        attempt = 0
        while True:
            try:
                self.call("presence.refreshWatchers", params)
                return
            except _RpcErrorReply as exc:
                if exc.code != 500 or attempt >= self.retries:
                    raise KazooError(str(exc)) from None
                attempt += 1
                time.sleep(self.retry_delay)

    def call(self, method: str, params: list[Any]) -> Any:
        """Send one request, return its ``result``; raise :class:`KazooError` otherwise."""
        request_id = next(self._ids)
        payload = json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        with self._lock:
            if self._kind == "http":
                reply = self._call_http(method, payload)
            else:
                reply = self._call_dgram(method, payload, request_id)
        if not isinstance(reply, dict):
            raise KazooError(f"Kamailio RPC at {self.target} answered {method} with {reply!r}")
        if "error" in reply:
            err = reply.get("error") or {}
            code = err.get("code") if isinstance(err, dict) else None
            msg = err.get("message") if isinstance(err, dict) else err
            raise _RpcErrorReply(
                f"Kamailio RPC at {self.target} answered {method}{_show(params)} with error "
                f"{code} {msg}",
                code=code,
            )
        if "result" not in reply:
            raise KazooError(
                f"Kamailio RPC at {self.target} answered {method} without a result: {reply!r}"
            )
        return reply["result"]

    def close(self) -> None:
        """Close the datagram socket and remove the bound unix reply path (idempotent)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
                self._finalizer = None
            self._sock = None
            self._reply_path = None

    def __enter__(self) -> KamailioRpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KamailioRpc({self.target!r})"

    # ------------------------------------------------------------------ targets

    def _parse_target(self) -> None:
        t = self.target
        self._kind = ""
        self._https = False
        self._host = ""
        self._port = 0
        self._path = ""
        lower = t.lower()
        if lower.startswith(("http://", "https://")):
            parts = urllib.parse.urlsplit(t)
            if not parts.hostname:
                raise _config_error(t, "has no host")
            self._kind = "http"
            self._https = parts.scheme.lower() == "https"
            self._host = parts.hostname
            try:
                self._port = parts.port or (443 if self._https else 80)
            except ValueError as exc:
                raise _config_error(t, f"has an invalid port ({exc})") from exc
            self._path = parts.path or "/RPC"
            if parts.query:
                self._path += "?" + parts.query
            return
        if lower.startswith("udp:"):
            rest = t[4:].removeprefix("//")
            host, sep, port = rest.rpartition(":")
            host = host.strip("[]")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise _config_error(t, "needs a host and a port (1-65535)")
            self._kind = "udp"
            self._host, self._port = host, int(port)
            return
        if lower.startswith("unix:") or t.startswith("/"):
            path = t[5:] if lower.startswith("unix:") else t
            path = path.removeprefix("//")
            if not path.startswith("/"):
                raise _config_error(t, "needs an absolute socket path")
            self._kind = "unix"
            self._path = path
            return
        raise _config_error(t, "has an unknown transport")

    # ------------------------------------------------------------------ transports

    def _timeout_error(self, method: str) -> KazooError:
        if self._kind == "http":
            hint = (
                "is xhttp loaded and jsonrpcs' transport 0 or 1, with an event_route[xhttp:"
                "request] calling jsonrpc_dispatch() for this path?"
            )
        else:
            where = self.target if self._kind == "udp" else self._path
            hint = f'is jsonrpcs loaded with transport 4 (or 0/6) and dgram_socket "{where}"?'
        return KazooError(
            f"Kamailio RPC at {self.target} did not answer {method} within "
            f"{self.timeout:.1f} s: {hint}"
        )

    def _call_http(self, method: str, payload: bytes) -> Any:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(
                "POST",
                self._path,
                body=payload,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            body = resp.read()
        except TimeoutError:
            raise self._timeout_error(method) from None
        except OSError as exc:
            raise KazooError(
                f"Kamailio RPC at {self.target} unreachable for {method}: {exc}"
            ) from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise KazooError(
                f"Kamailio RPC at {self.target} answered {method} with HTTP {resp.status} "
                f"{resp.reason}: {body[:200]!r}"
            )
        return self._decode(method, body)

    def _open_dgram(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._kind == "udp":
            infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
            self._finalizer = weakref.finalize(self, _cleanup, sock, None)
        else:
            directory = self._reply_dir or tempfile.gettempdir()
            path = os.path.join(directory, f"kazoo-amqp-rpc-{os.getpid()}-{uuid.uuid4().hex[:12]}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(path)
                os.chmod(path, 0o666)
            except OSError:
                sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            self._reply_path = path
            self._finalizer = weakref.finalize(self, _cleanup, sock, path)
        self._sock = sock
        return sock

    def _call_dgram(self, method: str, payload: bytes, request_id: int) -> Any:
        try:
            sock = self._open_dgram()
            if self._kind == "udp":
                sock.send(payload)
            else:
                sock.sendto(payload, self._path)
        except OSError as exc:
            raise KazooError(
                f"Kamailio RPC at {self.target}: cannot send {method}: {exc} "
                "(is Kamailio running with jsonrpcs' dgram_socket there?)"
            ) from exc
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout_error(method)
            sock.settimeout(left)
            try:
                data = sock.recv(_MAX_DGRAM)
            except TimeoutError:
                raise self._timeout_error(method) from None
            except ConnectionRefusedError:
                raise KazooError(
                    f"Kamailio RPC at {self.target}: nothing listens there ({method} refused): "
                    "is Kamailio running with jsonrpcs' dgram_socket on that address?"
                ) from None
            except OSError as exc:
                raise KazooError(f"Kamailio RPC at {self.target}: {method} failed: {exc}") from exc
            try:
                reply = json.loads(data)
            except ValueError:
                continue  # not ours / garbage: keep waiting until the deadline
            if isinstance(reply, dict) and reply.get("id") == request_id:
                return reply
            # a late reply to an earlier, timed-out request: drop it

    def _decode(self, method: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise KazooError(
                f"Kamailio RPC at {self.target} answered {method} with non-JSON {data[:200]!r}"
            ) from exc


class _RpcErrorReply(KazooError):
    def __init__(self, message: str, *, code: Any) -> None:
        super().__init__(message)
        self.code = code


def _show(params: list[Any]) -> str:
    return "(" + ", ".join(json.dumps(p, ensure_ascii=False) for p in params) + ")"


def _cleanup(sock: socket.socket, path: str | None) -> None:
    sock.close()
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
