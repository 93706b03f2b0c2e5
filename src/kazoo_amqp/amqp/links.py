"""Broker links: one per ``amqp_connection`` entry; connect, reconnect, replay declarations.

Theory of operation
-------------------
A :class:`Link` is one broker and its two AMQP connections:

* **control**: the publish channel (owned by :class:`~kazoo_amqp.amqp.publisher.Publisher`) and,
  on the primary zone, the node's reply queue (owned by :mod:`kazoo_amqp.amqp.replies`);
* **consume**: one channel per subscription (owned by :mod:`kazoo_amqp.amqp.consumers`).

The :class:`LinkSupervisor` runs one task per link: open both connections, then ask every
:class:`Attachment` in order to declare what it needs on them (this is the replay of exchange,
queue, binding and consumer declarations, done again on every connect), mark the link up and
wait until one connection closes. It then reconnects with jittered exponential backoff
(``reconnect_min_ms`` .. ``reconnect_max_ms``). Failover and fail-back are the publisher's pick
(first usable link of the primary zone in config order); the supervisor only keeps every link
connected.

A broker's ``connection.blocked`` (memory or disk alarm) is not a failure: the link stays up,
nothing reconnects, no ``closed`` event is sent; the attachments are told so the publisher stops
writing to that broker until ``connection.unblocked``.

Connection events (``open`` / ``closed``) go to ``on_event`` like the C module's synthetic
events; ``closed`` only for a link that was up, and never while stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from kazoo_amqp.amqp.channel import Channel
from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.core.broker_url import BrokerSpec
from kazoo_amqp.core.config import Settings
from kazoo_amqp.errors import KazooError

log = logging.getLogger("kazoo_amqp.links")

#: ``Connection.connect`` or a test double with the same keywords.
ConnectFn = Callable[..., Awaitable[Connection]]
#: on_event(state, spec): ``"open"`` or ``"closed"`` for a broker (the daemon makes it an event).
EventSink = Callable[[str, BrokerSpec], None]


class Link:
    """One broker: its connections, the publish channel, and whether it is usable."""

    __slots__ = ("channel", "connects", "consume", "control", "last_error", "spec", "task", "up")

    def __init__(self, spec: BrokerSpec) -> None:
        self.spec = spec
        self.control: Connection | None = None
        self.consume: Connection | None = None
        #: the publish channel (confirms on); set and replaced by the publisher
        self.channel: Channel | None = None
        self.up = False
        self.task: asyncio.Task[None] | None = None
        self.connects = 0
        self.last_error = ""

    @property
    def blocked(self) -> str | None:
        """Why the broker does not take publishes right now (alarm, channel.flow), else None."""
        control = self.control
        if control is not None and control.blocked is not None:
            return f"connection.blocked: {control.blocked}"
        channel = self.channel
        if channel is not None and channel.is_open and not channel.flow_active:
            return "channel.flow stopped the publish channel"
        return None

    @property
    def writable(self) -> bool:
        """Up, with an open publish channel that is neither blocked nor flow-stopped."""
        channel = self.channel
        return self.up and channel is not None and channel.writable

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        if self.up and self.blocked:
            state = "blocked"
        return f"<Link {self.spec.server_id} {self.spec.redacted} zone={self.spec.zone} {state}>"


class Attachment(Protocol):
    """A part that declares things on every fresh connection of a link and follows its state."""

    async def attach(self, link: Link) -> None:
        """Declare what this part needs on ``link``'s new connections (both are open)."""

    def link_changed(self, link: Link) -> None:
        """``link`` went up or down, or was blocked or unblocked; called synchronously."""


class LinkSupervisor:
    """Keeps every link connected and its declarations in place (one owned task per link)."""

    def __init__(
        self,
        settings: Settings,
        *,
        node: str,
        channel_max: int,
        on_event: EventSink,
        connect: ConnectFn = Connection.connect,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.node = node
        self.links = [Link(spec) for spec in settings.brokers]
        self.attachments: list[Attachment] = []
        self.counters = {"connects": 0, "disconnects": 0, "blocked": 0}
        #: set whenever a link changes state (used by ``wait_for``)
        self.changed = asyncio.Event()
        self._on_event = on_event
        self._connect = connect
        self._rng = rng
        self._channel_max = channel_max
        self._ssl: ssl.SSLContext | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start one supervision task per link."""
        loop = asyncio.get_running_loop()
        for link in self.links:
            link.task = loop.create_task(
                self._supervise(link), name=f"broker-{link.spec.server_id}"
            )

    async def wait_for(self, ready: Callable[[], bool], timeout: float, *, give_up: bool) -> bool:
        """Wait until ``ready()``; with ``give_up`` return False once every link failed once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closing:
                return False
            if give_up and all(link.last_error and not link.up for link in self.links):
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
        return True

    async def stop(self) -> None:
        """Cancel the supervision tasks and close every connection (no ``closed`` events)."""
        self._closing = True
        self.changed.set()
        for link in self.links:
            if link.task is not None:
                link.task.cancel()
        for link in self.links:
            if link.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
                link.task = None

    # -- supervision ----------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            s = self.settings
            ctx = ssl.create_default_context(cafile=s.amqps_ca_cert or None)
            if s.amqps_cert and s.amqps_key:
                ctx.load_cert_chain(s.amqps_cert, s.amqps_key)
            if not s.amqps_verify_hostname:
                ctx.check_hostname = False
            if not s.amqps_verify_peer:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    async def _open(self, spec: BrokerSpec, name: str) -> Connection:
        s = self.settings
        return await self._connect(
            host=spec.host,
            port=spec.port,
            user=spec.user,
            password=spec.password,
            vhost=spec.vhost,
            ssl=self._ssl_context() if spec.tls else None,
            server_hostname=spec.host if spec.tls else None,
            # effective values: the key table (core/config_keys.py) says what 0 / 0.2 s mean
            heartbeat=s.amqp_heartbeats,
            connect_timeout=s.amqp_connect_timeout,
            frame_max=131072,
            channel_max=self._channel_max,
            name=f"kazoo-amqp {self.node} {name}",
            auth_mechanism=spec.auth_mechanism,
        )

    def _notify(self, link: Link) -> None:
        self.changed.set()
        for part in self.attachments:
            try:
                part.link_changed(link)
            except Exception:  # a bug in one part must not stop the others hearing about it
                log.exception("link_changed of %r raised for %r", part, link)

    def _on_blocked(self, link: Link, reason: str) -> None:
        self.counters["blocked"] += 1
        log.warning(
            "%s blocked publishing (%s): publishes wait in the buffer or go to another broker "
            "of zone %s until it unblocks",
            link.spec.redacted,
            reason,
            link.spec.zone,
        )
        self._notify(link)

    def _on_unblocked(self, link: Link) -> None:
        log.info("%s unblocked publishing", link.spec.redacted)
        self._notify(link)

    async def _supervise(self, link: Link) -> None:
        s = self.settings
        backoff = s.reconnect_min_ms / 1000
        while not self._closing:
            was_up = False
            try:
                control = link.control = await self._open(link.spec, "control")
                control.on_blocked = lambda reason: self._on_blocked(link, reason)
                control.on_unblocked = lambda: self._on_unblocked(link)
                link.consume = await self._open(link.spec, "consume")
                for part in self.attachments:
                    await part.attach(link)
                link.up = was_up = True
                link.connects += 1
                link.last_error = ""
                self.counters["connects"] += 1
                backoff = s.reconnect_min_ms / 1000
                log.info("connected to %s (zone %s)", link.spec.redacted, link.spec.zone)
                self._notify(link)
                self._on_event("open", link.spec)
                waits: list[asyncio.Future[Any]] = [control.closed, link.consume.closed]
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                reason = next(iter(done)).result()
                link.last_error = str(reason or "closed")
                log.warning("lost %s: %s", link.spec.redacted, link.last_error)
            except asyncio.CancelledError:
                raise
            except (KazooError, OSError, TimeoutError) as exc:
                link.last_error = str(exc)
                log.warning("cannot use %s: %s", link.spec.redacted, exc)
            except Exception as exc:  # a bug: keep the link alive, but say so loudly
                link.last_error = repr(exc)
                log.exception("unexpected error on %s", link.spec.redacted)
            finally:
                link.up = False
                for conn in (link.control, link.consume):
                    if conn is not None:
                        if self._closing:
                            with contextlib.suppress(Exception):
                                await asyncio.wait_for(conn.close(), 2.0)
                        conn.abort()
                link.control = link.consume = None
                link.channel = None
                self._notify(link)
                if was_up:
                    self.counters["disconnects"] += 1
                    if not self._closing:
                        self._on_event("closed", link.spec)
            if self._closing:
                return
            delay = backoff * (0.5 + self._rng())
            backoff = min(backoff * 2, s.reconnect_max_ms / 1000)
            await asyncio.sleep(delay)

    def describe(self) -> str:
        """One line per link for error messages: URL, up/down/blocked, last error."""
        parts = []
        for link in self.links:
            state = ("blocked" if link.blocked else "up") if link.up else "down"
            text = f"{link.spec.redacted}: {state}"
            if link.last_error and not link.up:
                text += f" ({link.last_error})"
            parts.append(text)
        return "; ".join(parts)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "server_id": link.spec.server_id,
                "url": link.spec.redacted,
                "zone": link.spec.zone,
                "primary": link.spec.primary,
                "up": link.up,
                "blocked": link.blocked or "",
                "connects": link.connects,
                "last_error": link.last_error,
            }
            for link in self.links
        ]
