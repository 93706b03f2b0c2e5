"""A small HTTP/1.1 server on asyncio streams for ``/metrics``, ``/health``, ``/ready``, ``/``.

Contract
--------
* ``GET`` and ``HEAD`` only (others: 405); the path (query string ignored) selects a handler in
  the table given to :class:`HttpServer`; an unknown path is 404. One request per connection
  (``Connection: close``), so no keep-alive state is kept.
* Handlers are plain functions returning a :class:`Response`; they must not block (they read
  in-memory state of the daemon). A handler that raises gives a 500 and a log line.
* Limits against slow or malformed clients: the request head must arrive within
  ``HEAD_TIMEOUT_S`` and fit in ``MAX_HEAD_BYTES`` (else 408 / 431, or the connection is just
  closed when nothing useful came); a response must be taken within ``WRITE_TIMEOUT_S``; at most
  ``MAX_CONNECTIONS`` are served at once (more are closed at once). A bad request line is 400.
* Every connection task is owned by the server and cancelled by :meth:`HttpServer.stop`.

It is not a general web server: there are no request bodies, no chunked encoding, no TLS (bind
it to a local or management address; see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo_amqp.errors import ConfigError

log = logging.getLogger("kazoo_amqp.http")

MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, doc: Any) -> Response:
    body = json.dumps(doc, separators=(",", ":"), default=str).encode()
    return Response(status, body, "application/json", {"Cache-Control": "no-store"})


Handler = Callable[[], Response]


class HttpServer:
    """Serves a fixed table of ``path -> handler`` on one TCP address."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], *, key: str) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.key = key  # the config key, for start-up errors
        self.address: tuple[str, int] | None = None
        self.counters = {"requests": 0, "not_found": 0, "bad_requests": 0, "refused": 0}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen; a bad address or a port in use is a ``ConfigError`` naming the key."""
        try:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, limit=MAX_HEAD_BYTES, reuse_address=True
            )
        except OSError as exc:
            raise ConfigError(
                f'config key {self.key!r} = "{_join(self.host, self.port)}": cannot listen '
                f"there ({exc.strerror or exc}); choose a free port and an address of this "
                'host, e.g. http_listen = "127.0.0.1:9494", or remove the key',
                key=self.key,
            ) from None
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))

    @property
    def url(self) -> str:
        assert self.address is not None
        return f"http://{_join(*self.address)}/"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # -- one connection -------------------------------------------------------------------
    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= MAX_CONNECTIONS:
            self.counters["refused"] += 1
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response, head_only = await self._respond(reader)
            if response is not None:
                writer.write(_encode(response, head_only))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read gets no more time
            else:
                writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response | None, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            self.counters["bad_requests"] += 1
            return _text(431, "request head too large\n"), False
        except TimeoutError:
            self.counters["bad_requests"] += 1
            return _text(408, "request head not received in time\n"), False
        except asyncio.IncompleteReadError:
            return None, False  # the client went away
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.counters["bad_requests"] += 1
            return _text(400, "bad request line\n"), False
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            self.counters["bad_requests"] += 1
            r = _text(405, "only GET and HEAD\n")
            r.headers["Allow"] = "GET, HEAD"
            return r, False
        self.counters["requests"] += 1
        path = target.split(b"?", 1)[0].decode("latin-1")
        handler = self.routes.get(path)
        if handler is None:
            self.counters["not_found"] += 1
            return _text(404, f"no such page; try {', '.join(sorted(self.routes))}\n"), False
        try:
            return handler(), method == b"HEAD"
        except Exception:
            log.exception("HTTP handler for %s raised", path)
            return _text(500, "internal error; see the daemon's log\n"), False


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode())


def _encode(r: Response, head_only: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {r.status} {_REASONS.get(r.status, 'Unknown')}",
        f"Content-Type: {r.content_type}",
        f"Content-Length: {len(r.body)}",
        "Connection: close",
        "X-Content-Type-Options: nosniff",
    ]
    lines.extend(f"{k}: {v}" for k, v in r.headers.items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + r.body


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
