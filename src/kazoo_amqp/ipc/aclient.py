"""``AsyncClient``: the local socket API for asyncio programs.

Same methods as ``kazoo_amqp.ipc.client.Client`` but as coroutines, with one connection shared by
concurrent callers: requests are pipelined with ids, writes made in one loop iteration leave in
one ``write`` (:class:`~kazoo_amqp.aio.WriteCoalescer`), and replies resolve futures by id. The
protocol itself (arguments, encoding, decoding, typed errors) is :mod:`kazoo_amqp.ipc.request`,
shared with ``Client``; neither client imports the other. Kept apart
from ``Client`` so that blocking users (Kamailio's app_python3, worker processes) never import
asyncio, which costs about 10 MB per process.
"""

from __future__ import annotations

import asyncio
import heapq
import os
from types import TracebackType
from typing import Any, TypeVar, cast

from kazoo_amqp.aio import WriteCoalescer
from kazoo_amqp.core.wire import Response
from kazoo_amqp.errors import KazooError, NotConnected, ProtocolError
from kazoo_amqp.ipc import request as rq
from kazoo_amqp.ipc.request import Call, Payload

__all__ = ["AsyncClient"]

T = TypeVar("T")

#: How often a connection checks its requests' client-side deadlines (they are a backstop:
#: the daemon answers a query timeout itself), in seconds.
_SWEEP_S = 0.1

#: Requests in flight above which writes are gathered for a fraction of a millisecond.
_BUSY = 32


class _ClientProtocol(asyncio.Protocol):
    """The connection of one :class:`AsyncClient`: coalesced writes, replies matched by id."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future[Response]] = {}
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.stream = rq.Stream()
        self._writer = WriteCoalescer(self.loop, self._write)
        self._writable: asyncio.Future[None] | None = None
        # (deadline, request id, op, wait): one sweep every 0.1 s instead of a timer per call.
        self.deadlines: list[tuple[float, int, str, float]] = []
        self._sweep_handle: asyncio.TimerHandle | None = None

    def expire_at(self, deadline: float, request_id: int, op: str, wait: float) -> None:
        """Fail request ``request_id`` with a timeout if no reply came by ``deadline``."""
        deadlines = self.deadlines
        heapq.heappush(deadlines, (deadline, request_id, op, wait))
        if len(deadlines) > 2 * len(self.pending) + 1024:
            # Answered requests leave their entries behind until they expire: prune.
            pending = self.pending
            deadlines[:] = [d for d in deadlines if d[1] in pending]
            heapq.heapify(deadlines)
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self.loop.time()
        deadlines, pending = self.deadlines, self.pending
        while deadlines and deadlines[0][0] <= now:
            _, request_id, op, wait = heapq.heappop(deadlines)
            future = pending.get(request_id)
            if future is not None and not future.done():
                future.set_exception(rq.no_answer(self.path, op, wait))
        if pending and deadlines:
            self._sweep_handle = self.loop.call_later(_SWEEP_S, self._sweep)
        elif not pending:
            deadlines.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, so no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        self._writer.clear()
        self.fail_all(None)
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.stream.feed(data)
        except ProtocolError as exc:
            self.fail_all(exc)
            if self.transport is not None:
                self.transport.close()
            return
        pending = self.pending
        for response in responses:
            future = pending.pop(response.id, None) if response.id is not None else None
            if future is not None:
                if not future.done():
                    future.set_result(response)
            elif response.id is None and not response.ok:
                # The daemon could not read one of our frames: it cannot say which, so every
                # request in flight is failed rather than left to time out.
                self.fail_all(response.error())

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writers()

    def _wake_writers(self) -> None:
        writable = self._writable
        self._writable = None
        if writable is not None and not writable.done():
            writable.set_result(None)

    async def writable(self) -> None:
        """Wait while the daemon is not reading (the transport's buffer is full)."""
        while self._writable is not None:
            await asyncio.shield(self._writable)

    def send(self, frame: bytes) -> None:
        n = len(self.pending)
        if n <= 1:
            self._writer.write_now(frame)  # alone in flight: no one to coalesce with
        else:
            # Many requests in flight: their replies pace us anyway, so gather requests for a
            # fraction of a millisecond and save a system call (and a daemon read) each.
            self._writer.write(frame, busy=n > _BUSY)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def fail_all(self, exc: KazooError | None) -> None:
        pending = self.pending
        self.pending = {}
        for request_id, future in pending.items():
            if not future.done():
                future.set_exception(
                    exc if exc is not None else rq.lost(self.path, f"request {request_id}")
                )

    def close(self) -> None:
        if self.transport is not None:
            self._writer.flush()
            self.transport.close()


class AsyncClient:
    """Asyncio client; one pipelined connection shared by every concurrent caller.

    >>> async with AsyncClient("/run/kazoo-amqp/kazoo-amqp.sock") as kz:   # doctest: +SKIP
    ...     await kz.publish("callmgr", "route.req", {"Event-Name": "x"})
    """

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._protocol: _ClientProtocol | None = None
        self._connect_lock = asyncio.Lock()
        self._pid = os.getpid()
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    # ---- API (each method: build the call with ipc.request, run it)

    async def publish(
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
        """As :meth:`Client.publish <kazoo_amqp.ipc.client.Client.publish>`: ``{"msg_id"}`` once
        the daemon accepted it; with ``confirm=True`` after the broker's confirm."""
        return await self._run(
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

    async def publish_batch(
        self, messages: Any, *, confirm: bool = False
    ) -> list[dict[str, Any] | KazooError]:
        """Publish many messages in one round trip; each message's result or error, in order."""
        return await self._run(rq.publish_batch(messages, confirm=confirm))

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None = None,
        headers: str | None = None,
        *,
        mandatory: bool = False,
    ) -> dict[str, Any]:
        """Publish a query and return the parsed reply (the daemon's default timeout if None)."""
        return await self._run(
            rq.query(exchange, routing_key, payload, timeout_ms, headers, mandatory=mandatory)
        )

    async def pua_publish(self, payload: Payload, package: str | None = None) -> dict[str, Any]:
        """Write the presentity update in ``payload``."""
        return await self._run(rq.pua_publish(payload, package))

    async def status(self) -> dict[str, Any]:
        """The daemon's status snapshot."""
        return await self._run(rq.status())

    async def ping(self) -> bool:
        """True when the daemon answers; False (never an exception) when it does not."""
        try:
            return await self._run(rq.ping())
        except KazooError:
            return False

    async def connect(self) -> None:
        """Open the connection now instead of on the first call (raises NotConnected)."""
        await self._connection()

    async def close(self) -> None:
        """Close the connection; calls still waiting get NotConnected. The client is done."""
        self._closed = True
        protocol = self._protocol
        self._protocol = None
        if protocol is not None:
            protocol.fail_all(NotConnected(f"the client of {self._path} was closed"))
            protocol.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- machinery

    async def _connection(self) -> _ClientProtocol:
        if self._pid != os.getpid():  # forked: the connection and its loop are the parent's
            self._protocol = None
            self._connect_lock = asyncio.Lock()
            self._pid = os.getpid()
        async with self._connect_lock:
            if self._closed:
                raise NotConnected(f"the client of {self._path} is closed")
            current = self._protocol
            if current is not None and not current.lost:
                return current
            loop = asyncio.get_running_loop()
            path = self._path
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_unix_connection(lambda: _ClientProtocol(path), path),
                    self._timeout,
                )
            except OSError as exc:  # TimeoutError included
                raise rq.connect_error(path, exc) from None
            self._protocol = protocol
            return protocol

    async def _run(self, call: Call[T]) -> T:
        protocol = self._protocol
        if protocol is None or protocol.lost or self._pid != os.getpid():
            protocol = await self._connection()
        request_id, frame = protocol.stream.encode(call)
        await protocol.writable()
        if protocol.lost:
            raise rq.lost(self._path, call.op)  # lost while waiting to write; nothing was sent
        loop = protocol.loop
        future: asyncio.Future[Response] = loop.create_future()
        protocol.pending[request_id] = future
        protocol.send(frame)
        wait = call.wait_with(self._timeout)
        protocol.expire_at(loop.time() + wait, request_id, call.op, wait)
        try:
            response = await future
        finally:
            protocol.pending.pop(request_id, None)
        return call.outcome(response)
