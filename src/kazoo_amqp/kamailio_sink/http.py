"""A minimal HTTP/1.1 keep-alive client over asyncio streams, for Kamailio's xhttp socket.

Requests may be pipelined (:meth:`HttpConnection.send` several, then :meth:`receive` their
answers in the same order): Kamailio reads one connection's requests one after the other, in
one process at a time, and answers each before it reads the next. Every failure to reach
Kamailio or to read its complete answer is :class:`BridgeDown`; the caller decides whether to
send again.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["BridgeDown", "HttpConnection"]

_MAX_HEAD = 65536


class BridgeDown(Exception):
    """Kamailio's bridge socket did not take the request or did not answer it completely."""


def _clean(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


class HttpConnection:
    """One keep-alive connection to ``host:port``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> HttpConnection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            raise BridgeDown(f"cannot connect to Kamailio's bridge {host}:{port}: {exc}") from None
        return cls(reader, writer)

    async def request(
        self, path: str, headers: list[tuple[str, str]], body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``; return (status, body) of the answer."""
        self.send(path, headers, body)
        return await self.receive(timeout)

    def send(self, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write one POST (no wait; :meth:`receive` reads the answers in order)."""
        head = [f"POST {path} HTTP/1.1", "Host: kazoo-amqp", f"Content-Length: {len(body)}"]
        head += [f"{name}: {_clean(value)}" for name, value in headers]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
        try:
            self.writer.write(data)
        except (OSError, RuntimeError) as exc:
            self.close()
            raise BridgeDown(f"the connection to Kamailio's bridge was lost: {exc!r}") from None

    async def receive(self, timeout: float) -> tuple[int, bytes]:
        """The next answer: (status, body). ``TimeoutError`` after ``timeout`` s (the
        connection is closed then: later answers could not be matched any more)."""
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                raw = await self.reader.readuntil(b"\r\n\r\n")
                status, length, close = _parse_head(raw)
                payload = await self.reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.close()
            raise BridgeDown(f"the connection to Kamailio's bridge was lost: {exc!r}") from None
        except TimeoutError:
            self.close()
            raise
        if close:
            self.close()
        return status, payload

    async def wait_closed(self) -> None:
        """Return when the peer closes the connection (used to notice a Kamailio restart)."""
        with contextlib.suppress(Exception):
            while await self.reader.read(4096):
                pass
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


def _parse_head(raw: bytes) -> tuple[int, int, bool]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError(f"not an HTTP response: {lines[0][:80]!r}")
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip() or 0)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    return int(parts[1]), length, close
