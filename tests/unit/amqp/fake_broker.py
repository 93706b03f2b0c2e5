"""An in-memory RabbitMQ for unit tests of amqp/: brokers, connections, channels, confirms.

It implements the part of ``amqp.connection`` and ``amqp.channel`` (``Connection``,
``Channel``) that links, publisher, replies and consumers use, with RabbitMQ's observable behaviour:

* publisher confirms are sent on a later loop iteration; a publish to an exchange that does not
  exist closes the channel with 404 after ``basic.publish``: that publish fails with
  ``BrokerRefused``, every other unconfirmed one on the channel with ``NotConnected``;
* an exchange in ``nack_exchanges`` answers ``basic.nack`` (``PublishNacked``);
* ``block()`` sends ``connection.blocked`` to every connection and holds confirms (and
  stops taking publishes) until ``unblock()``; ``flow(False)`` stops publish channels;
* ``kill()`` drops every connection (pending confirms fail with ``NotConnected``); ``down``
  refuses new connections.

Confirms reuse ``protocol.ConfirmCallback``, the object production code gets back.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo_amqp.amqp.channel import ConfirmCallback, Delivery, Returned
from kazoo_amqp.errors import BrokerRefused, NotConnected, PublishFailed, PublishNacked

_BUILTIN = {"", "amq.direct", "amq.topic", "amq.fanout", "amq.headers"}


@dataclass
class Published:
    """One message the broker took (confirmed or not yet)."""

    broker: str
    exchange: str
    routing_key: str
    body: bytes
    persistent: bool
    headers: Any
    mandatory: bool = False
    confirmed: bool = False


@dataclass
class FakeBroker:
    """One broker node."""

    name: str
    port: int
    exchanges: set[str] = field(default_factory=lambda: set(_BUILTIN))
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    bindings: list[tuple[str, str, str]] = field(default_factory=list)
    #: every declare / bind / consume in order: ("exchange", name, args) …
    declarations: list[tuple[Any, ...]] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    nack_exchanges: set[str] = field(default_factory=set)
    #: routing keys no queue is bound to: a mandatory publish with one is returned
    unroutable: set[str] = field(default_factory=set)
    connections: list[FakeConnection] = field(default_factory=list)
    down: bool = False
    #: a hung broker: takes publishes but never confirms them (no block, no flow)
    hang: bool = False
    blocked_reason: str | None = None
    connects: int = 0

    # -- failures -------------------------------------------------------------------------
    def kill(self) -> None:
        for conn in list(self.connections):
            conn._lose(NotConnected(f"{self.name} went away"))

    def block(self, reason: str = "low on memory") -> None:
        self.blocked_reason = reason
        for conn in self.open_connections():
            conn.blocked = reason
            if conn.on_blocked is not None:
                conn.on_blocked(reason)

    def unblock(self) -> None:
        self.blocked_reason = None
        for conn in self.open_connections():
            conn.blocked = None
            if conn.on_unblocked is not None:
                conn.on_unblocked()
            for ch in list(conn.channels):
                ch._release()

    def flow(self, active: bool) -> None:
        for conn in self.open_connections():
            for ch in list(conn.channels):
                if ch.confirms:
                    ch.flow_active = active
                    if ch.on_flow is not None:
                        ch.on_flow(active)
                    if active:
                        ch._release()

    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.connections if c.is_open]

    def deliver(self, queue: str, body: bytes, routing_key: str = "rk") -> int:
        """Deliver ``body`` to the consumers of ``queue``; returns how many got it."""
        n = 0
        for conn in self.open_connections():
            for ch in list(conn.channels):
                for tag, (q, callback) in list(ch.consumers.items()):
                    if q == queue:
                        ch.next_delivery += 1
                        callback(
                            Delivery(
                                ch, tag, ch.next_delivery, False, "ex", routing_key, body,
                                None, None, None,
                            )
                        )  # fmt: skip
                        n += 1
        return n


class FakeNet:
    """Brokers by port; ``connect`` has ``Connection.connect``'s keywords."""

    def __init__(self, *names: str) -> None:
        self.brokers = {name: FakeBroker(name, 20000 + i) for i, name in enumerate(names)}

    def __getitem__(self, name: str) -> FakeBroker:
        return self.brokers[name]

    def urls(self) -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{b.port}" for b in self.brokers.values()]

    async def connect(self, *, port: int, name: str = "", **_: Any) -> FakeConnection:
        await asyncio.sleep(0)
        broker = next(b for b in self.brokers.values() if b.port == port)
        if broker.down:
            raise NotConnected(f"cannot reach {broker.name}")
        conn = FakeConnection(broker, name)
        broker.connections.append(conn)
        broker.connects += 1
        conn.blocked = broker.blocked_reason
        return conn


class FakeConnection:
    def __init__(self, broker: FakeBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.host = "127.0.0.1"
        self.port = broker.port
        self.is_open = True
        self.closed: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.blocked: str | None = None
        self.on_blocked: Callable[[str], None] | None = None
        self.on_unblocked: Callable[[], None] | None = None
        self.channels: list[FakeChannel] = []
        self.reading = True
        self._numbers = itertools.count(1)

    async def channel(
        self, *, confirms: bool = False, on_return: Callable[[Returned], None] | None = None
    ) -> FakeChannel:
        await asyncio.sleep(0)
        if not self.is_open:
            raise NotConnected("connection closed")
        ch = FakeChannel(self, next(self._numbers), confirms, on_return)
        self.channels.append(ch)
        return ch

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self._lose(None)

    async def close(self) -> None:
        self._lose(None)

    def _lose(self, reason: BaseException | None) -> None:
        if not self.is_open:
            return
        self.is_open = False
        for ch in list(self.channels):
            ch._terminate(None, NotConnected("connection lost"))
        if not self.closed.done():
            self.closed.set_result(reason)


class FakeChannel:
    def __init__(
        self,
        conn: FakeConnection,
        number: int,
        confirms: bool,
        on_return: Callable[[Returned], None] | None,
    ) -> None:
        self.conn = conn
        self.broker = conn.broker
        self.number = number
        self.confirms = confirms
        self.on_return = on_return
        self.is_open = True
        self.closed: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.flow_active = True
        self.on_flow: Callable[[bool], None] | None = None
        self.on_cancel: Callable[[str], None] | None = None
        self.consumers: dict[str, tuple[str, Callable[[Delivery], None]]] = {}
        self.acked: list[int] = []
        self.rejected: list[int] = []
        self.next_delivery = 0
        self._tag = 0
        # tag -> (confirm, message); held while the broker is blocked / flow-stopped
        self._pending: dict[int, tuple[ConfirmCallback, Published]] = {}
        self._held: list[int] = []

    @property
    def writable(self) -> bool:
        return self.is_open and self.flow_active and self.conn.blocked is None

    # -- declarations ---------------------------------------------------------------------
    async def exchange_declare(self, name: str, type: str = "direct", **kw: Any) -> None:
        await asyncio.sleep(0)
        self.broker.exchanges.add(name)
        self.broker.declarations.append(("exchange", name, type, kw.get("arguments")))

    async def exchange_bind(self, destination: str, source: str, routing_key: str = "") -> None:
        await asyncio.sleep(0)
        self.broker.declarations.append(("exchange_bind", destination, source, routing_key))

    async def queue_declare(self, queue: str = "", **kw: Any) -> tuple[str, int, int]:
        await asyncio.sleep(0)
        self.broker.queues[queue] = kw
        self.broker.declarations.append(("queue", queue, kw.get("arguments")))
        return queue, 0, 0

    async def queue_bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        await asyncio.sleep(0)
        self.broker.bindings.append((queue, exchange, routing_key))
        self.broker.declarations.append(("bind", queue, exchange, routing_key))

    async def basic_qos(self, prefetch_count: int) -> None:
        await asyncio.sleep(0)

    async def basic_consume(
        self, queue: str, on_delivery: Callable[[Delivery], None], *, no_ack: bool, **_: Any
    ) -> str:
        await asyncio.sleep(0)
        tag = f"ctag-{self.number}-{len(self.consumers)}"
        self.consumers[tag] = (queue, on_delivery)
        self.broker.declarations.append(("consume", queue, no_ack))
        return tag

    async def basic_cancel(self, consumer_tag: str) -> None:
        await asyncio.sleep(0)
        self.consumers.pop(consumer_tag, None)

    def ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.acked.append(delivery_tag)

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self.rejected.append(delivery_tag)

    async def close(self) -> None:
        self._terminate(None, NotConnected("channel closed by the client"))

    # -- publishing -----------------------------------------------------------------------
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Any = None,
        mandatory: bool = False,
        persistent: bool = False,
        on_confirm: Callable[[BaseException | None], None] | None = None,
        **_: Any,
    ) -> ConfirmCallback:
        if not self.is_open:
            raise NotConnected(f"channel {self.number} is closed")
        assert self.confirms and on_confirm is not None
        self._tag += 1
        tag = self._tag
        confirm = ConfirmCallback(on_confirm)
        message = Published(
            self.broker.name, exchange, routing_key, body, persistent, headers, mandatory
        )
        self._pending[tag] = (confirm, message)
        loop = asyncio.get_running_loop()
        if self.conn.blocked is not None or not self.flow_active:
            self._held.append(tag)  # RabbitMQ stops reading the socket: no confirm until later
        else:
            loop.call_soon(self._process, tag)
        return confirm

    def _release(self) -> None:
        held, self._held = self._held, []
        loop = asyncio.get_running_loop()
        for tag in held:
            loop.call_soon(self._process, tag)

    def _process(self, tag: int) -> None:
        entry = self._pending.get(tag)
        if entry is None or not self.is_open:
            return
        if self.conn.blocked is not None or not self.flow_active:
            self._held.append(tag)
            return
        if self.broker.hang:
            return
        confirm, message = entry
        if message.exchange not in self.broker.exchanges:
            self._close_by_broker(
                tag, 404, f"NOT_FOUND - no exchange '{message.exchange}' in vhost '/'"
            )
            return
        del self._pending[tag]
        if message.exchange in self.broker.nack_exchanges:
            confirm.set_exception(PublishNacked(f"basic.nack of delivery tag {tag}"))
            return
        if message.mandatory and message.routing_key in self.broker.unroutable:
            returned = Returned(312, "NO_ROUTE", message.exchange, message.routing_key, b"", None)
            if self.on_return is not None:
                self.on_return(returned)
            confirm.set_exception(PublishFailed(f"no queue bound for {message.routing_key!r}"))
            return
        self.broker.published.append(message)
        message.confirmed = True
        confirm.set_result(None)

    def _close_by_broker(self, culprit: int, code: int, text: str) -> None:
        err = BrokerRefused(
            f"RabbitMQ closed channel {self.number}: {code} {text}", reply_code=code
        )
        confirm, _ = self._pending.pop(culprit)
        confirm.set_exception(err)
        self._terminate(err, NotConnected(f"channel {self.number} closed by another publish"))

    def _terminate(self, reason: BaseException | None, pending_error: BaseException) -> None:
        if not self.is_open:
            return
        self.is_open = False
        pending, self._pending = self._pending, {}
        for confirm, _ in pending.values():
            confirm.set_exception(pending_error)
        if self in self.conn.channels:
            self.conn.channels.remove(self)
        if not self.closed.done():
            self.closed.set_result(reason)
