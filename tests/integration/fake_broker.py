"""A scriptable AMQP 0-9-1 broker over real TCP, for what a shared RabbitMQ cannot be made to do.

It answers the handshake (mechanisms, tune and the login outcome are parameters), opens channels,
puts them in confirm mode, and records every frame it receives. A test pushes any bytes it likes
(``send``/``send_method``: blocked, channel.flow, garbage, truncated frames) and can make the
broker go silent. One client connection at a time; ``port`` is chosen by the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pframe
from pamqp.base import Frame as Method


class FakeBroker:
    def __init__(
        self,
        *,
        mechanisms: str = "PLAIN AMQPLAIN",
        tune: spec.Connection.Tune | None = None,
        refuse_login: bool = False,
        heartbeat_every: float = 0.0,
    ) -> None:
        self.mechanisms = mechanisms
        self.tune = tune or spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=0)
        self.refuse_login = refuse_login
        #: >0: send a heartbeat frame this often, until ``silent`` is set
        self.heartbeat_every = heartbeat_every
        self.silent = False
        self.port = 0
        self.start_ok: spec.Connection.StartOk | None = None
        self.received: list[tuple[int, Any]] = []
        self.heartbeats = 0
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ test side

    def send(self, data: bytes) -> None:
        assert self._writer is not None, "no client connected"
        self._writer.write(data)

    def send_method(self, channel: int, method: Method) -> None:
        self.send(pframe.marshal(method, channel))

    async def wait_for(self, match: Callable[[int, Any], bool], timeout: float = 5.0) -> Any:
        """The first received frame (channel, value) for which ``match`` is true."""
        async with asyncio.timeout(timeout):
            while True:
                for channel, value in self.received:
                    if match(channel, value):
                        return value
                self._changed.clear()
                await self._changed.wait()

    # ------------------------------------------------------------------ broker side

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writer = writer
        beat: asyncio.Task[None] | None = None
        try:
            assert await reader.readexactly(8) == b"AMQP\x00\x00\x09\x01"
            self.connected.set()
            self.send_method(
                0, spec.Connection.Start(mechanisms=self.mechanisms, locales="en_US")
            )
            _, start_ok = await _read_frame(reader)
            assert isinstance(start_ok, spec.Connection.StartOk)
            self.start_ok = start_ok
            if self.refuse_login:
                self.send_method(0, spec.Connection.Close(403, "ACCESS_REFUSED - login refused"))
                await reader.read()
                return
            self.send_method(0, self.tune)
            while True:
                channel, value = await _read_frame(reader)
                self.received.append((channel, value))
                self._changed.set()
                if isinstance(value, spec.Connection.Open):
                    self.send_method(0, spec.Connection.OpenOk())
                    if self.heartbeat_every:
                        beat = asyncio.get_running_loop().create_task(self._beat())
                        self._tasks.add(beat)
                elif type(value).__name__ == "Heartbeat":
                    self.heartbeats += 1
                elif self.silent:
                    continue
                elif isinstance(value, spec.Channel.Open):
                    self.send_method(channel, spec.Channel.OpenOk())
                elif isinstance(value, spec.Confirm.Select):
                    self.send_method(channel, spec.Confirm.SelectOk())
                elif isinstance(value, spec.Channel.Close):
                    self.send_method(channel, spec.Channel.CloseOk())
                elif isinstance(value, spec.Connection.Close):
                    self.send_method(0, spec.Connection.CloseOk())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if beat is not None:
                beat.cancel()
            writer.close()
            self.disconnected.set()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            if not self.silent and self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.write(b"\x08\x00\x00\x00\x00\x00\x00\xce")


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = await reader.readexactly(7)
    size = struct.unpack(">I", head[3:7])[0]
    rest = await reader.readexactly(size + 1)
    _, channel, value = pframe.unmarshal(head + rest)
    return channel, value
