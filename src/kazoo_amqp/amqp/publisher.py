"""The publisher: the one path every publish takes, from acceptance to the broker's confirm.

Contract
--------
:meth:`Publisher.submit` validates and injects synchronously (``App-Name``, ``Node``,
``Msg-ID``, …) and raises :class:`~kazoo_amqp.errors.BadPayload`,
:class:`~kazoo_amqp.errors.BadRoutingKey`, :class:`~kazoo_amqp.errors.UsageError`,
:class:`~kazoo_amqp.errors.ShuttingDown` or :class:`~kazoo_amqp.errors.BufferFull`. Once it
returned the Msg-ID, the publisher owns the message: it is serialised and written to a broker
later in the same loop iteration (after the caller's reply has left; every message accepted in
that iteration goes out in one write), or waits in the bounded buffer until a broker can take
it, and is written again after any retryable failure, until the broker confirms it or its
deadline (``publish_buffer_timeout_ms`` after acceptance) passes. The outcome is reported
exactly once:

* ``done(result, None)`` on the broker's confirm, ``result = {"msg_id", "server_id"}``;
* ``done(None, error)`` on final failure, when the caller passed ``done``; otherwise the error
  goes to ``on_failed(message, error)`` (the daemon runs ``kazoo:publish-failed``).

Every final failure is also logged with exchange, routing key and Msg-ID, and counted.

Which failures are final
    ``BrokerRefused`` (the broker closed the channel because of *this* publish, e.g. a 404 on a
    missing exchange), ``PublishFailed`` (a mandatory message returned), ``PublishExpired`` (the
    deadline passed). ``NotConnected`` (the connection died, or the channel was closed because
    of *another* publish) is retryable: the message goes back to the front of the buffer and is
    written again, on the same broker once its channel is open again or on the next usable one.
    So delivery is at-least-once.

A ``basic.nack`` (``PublishNacked``) is retried too, after a delay (0.1 s doubling up to 2 s),
    until the deadline; then the caller gets the ``PublishNacked`` itself. RabbitMQ nacks when a
    queue cannot take the message *now*: a quorum queue whose leader is on a node that just
    stopped nacks until a new leader is elected (a second or two, measured by bench/chaos.py),
    a ``reject-publish`` queue until it has room. Failing at once turned a node restart in a
    healthy 3-node cluster into failed publishes for the callers.

Picking a broker
    The first *writable* link of the primary zone in config order, or exactly the server named
    by a ``consumer://<id>/`` key. A link is writable when it is up and its publish channel is
    open, not stopped by ``channel.flow`` and its connection not ``connection.blocked``. So a
    blocked broker is skipped (fail-over to another broker of the zone when there is one,
    otherwise messages wait in the buffer with their deadlines), and traffic fails back to the
    first broker as soon as it is writable again.

Confirm sweeper
    A confirm that takes longer than ``publish_confirm_timeout_ms`` means a hung connection: it is
    aborted, and its unconfirmed messages are sent again. A blocked link is never treated so:
    the broker holds its confirms until the alarm clears.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo_amqp.amqp.channel import Channel, Returned
from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.amqp.links import Link
from kazoo_amqp.core import jsonc
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.headers import parse_headers, rejected_segments
from kazoo_amqp.core.message import (
    check_routing_key,
    check_text,
    inject_common_fields,
    inject_server_id,
    server_id_for,
    split_consumer_prefix,
)
from kazoo_amqp.core.stats import Histogram
from kazoo_amqp.errors import (
    BadRoutingKey,
    BrokerRefused,
    BufferFull,
    NotConnected,
    PublishExpired,
    PublishFailed,
    PublishNacked,
    ShuttingDown,
    UsageError,
)

log = logging.getLogger("kazoo_amqp.publisher")

#: done(result, None) on confirm, done(None, error) on final failure; called exactly once.
Done = Callable[[dict[str, Any] | None, BaseException | None], None]
#: on_failed(message, error): a final failure of a publish accepted without ``done``.
OnFailed = Callable[["Outgoing", BaseException], None]

_MAX_NAME_BYTES = 255
_SWEEP_S = 0.1
#: first delay before a nacked publish is written again; doubles per nack up to the max
_NACK_RETRY_S = 0.1
_NACK_RETRY_MAX_S = 2.0


class Outgoing:
    """One accepted message, owned by the publisher until its outcome is reported."""

    __slots__ = (
        "accepted",
        "deadline",
        "doc",
        "done",
        "exchange",
        "headers",
        "mandatory",
        "msg_id",
        "nacks",
        "persistent",
        "routing_key",
        "sends",
        "target",
    )

    def __init__(
        self,
        *,
        exchange: str,
        routing_key: str,
        doc: dict[str, Any],
        headers: tuple[tuple[str, str], ...],
        target: int | None,
        msg_id: str,
        mandatory: bool,
        persistent: bool,
        done: Done | None,
        deadline: float,
        accepted: float = 0.0,
    ) -> None:
        self.exchange = exchange
        #: the key on the wire (a ``consumer://<id>/`` prefix removed, ``target`` holds the id)
        self.routing_key = routing_key
        self.doc = doc
        self.headers = headers
        self.target = target
        self.msg_id = msg_id
        self.mandatory = mandatory
        self.persistent = persistent
        self.done = done
        self.deadline = deadline
        #: the publisher's clock when it was accepted (confirm latency)
        self.accepted = accepted
        #: how many times it was written to a broker, and how many of those were nacked
        self.sends = 0
        self.nacks = 0

    def __repr__(self) -> str:
        return (
            f"<Outgoing {self.msg_id} exchange={self.exchange!r} "
            f"routing_key={self.routing_key!r} sends={self.sends}>"
        )


class Publisher:
    """Picks a link, buffers, writes, tracks confirms, re-sends; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        links: Sequence[Link],
        *,
        node: str,
        on_failed: OnFailed | None = None,
        clock: Callable[[], float] = time.monotonic,
        describe_links: Callable[[], str] = lambda: "",
        confirm_latency: Histogram | None = None,
    ) -> None:
        self.settings = settings
        #: acceptance -> confirm, in seconds of ``clock`` (None: metrics are off)
        self.confirm_latency = confirm_latency
        self.links = links
        self.node = node
        self.on_failed = on_failed
        self._clock = clock
        self._describe_links = describe_links
        self._buffer = _Buffer()
        self._retry: list[Outgoing] = []  # failed retryably; go back to the front of the buffer
        self._nacked: dict[Outgoing, asyncio.TimerHandle] = {}  # nacked, waiting to be re-sent
        # (deadline, confirm, connection written to, link): what the sweeper watches
        self._confirms: collections.deque[tuple[float, Any, Connection, Link]] = collections.deque()
        self._unconfirmed = 0
        self._flush_scheduled = False
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = MsgIds()
        self._buffer_timeout = settings.publish_buffer_timeout_ms / 1000
        self._confirm_timeout = settings.publish_confirm_timeout_ms / 1000
        self.counters: dict[str, int] = {
            "accepted": 0,
            "published": 0,
            "publish_failed": 0,
            "publish_failed_after_accept": 0,
            "publish_retried": 0,
            "publish_nacked": 0,
            "publish_expired": 0,
            "publish_returned": 0,
            "buffered": 0,
            "buffer_rejected": 0,
        }
        #: final failures by reason (``FAILURE_REASONS`` values, plus "other")
        self.failures: dict[str, int] = dict.fromkeys((*FAILURE_REASONS.values(), "other"), 0)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sweeper (confirm timeouts and buffer deadlines)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="publish-sweeper"
            )

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is buffered or unconfirmed (graceful stop); False on timeout.

        Returns at once when no link can take publishes (nothing would change by waiting).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.backlog() and any(link.writable for link in self.links):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return not self.backlog()

    async def stop(self) -> None:
        """Refuse new publishes; fail every buffered one with ``ShuttingDown``.

        Messages still waiting for a confirm fail with ``ShuttingDown`` when the links close.
        """
        self._closing = True
        tasks = [t for t in (self._sweeper, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sweeper = None
        for handle in self._nacked.values():
            handle.cancel()
        waiting = [*self._nacked, *self._retry, *self._buffer.take_all()]
        self._nacked.clear()
        self._retry.clear()
        for m in waiting:
            self._fail(m, ShuttingDown("the daemon is stopping; the buffered publish was dropped"))

    def backlog(self) -> int:
        """Messages accepted and not yet settled (buffered or waiting for a confirm)."""
        return len(self._buffer) + len(self._retry) + len(self._nacked) + self._unconfirmed

    # -- accepting ------------------------------------------------------------------------
    def submit(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
        persistent: bool | None = None,
        done: Done | None = None,
    ) -> str:
        """Validate, inject and accept one message; return its Msg-ID (see module docstring).

        Raises:
            BadPayload, BadRoutingKey, UsageError: the message cannot be published as given.
            ShuttingDown: the daemon is stopping.
            BufferFull: no broker can take it now and ``publish_buffer_size`` are waiting.
        """
        message = self.prepare(
            exchange,
            routing_key,
            payload,
            headers,
            mandatory=mandatory,
            persistent=persistent,
            done=done,
        )
        self.accept(message)
        return message.msg_id

    def accept(self, m: Outgoing) -> None:
        """Take ownership of ``m`` and write it later in this loop iteration.

        The caller's reply (the socket server's ``{"msg_id"}``) leaves before the body is
        serialised and the AMQP frames are built, and every message accepted in one loop
        iteration, from any number of callers, goes to the broker in one write. Order is kept:
        the message joins the buffer behind everything already waiting for its target.

        Raises:
            ShuttingDown: the daemon is stopping.
            BufferFull: no link can take it now and the buffer is full (the same check as
                :meth:`send`, made now, so the caller learns it synchronously).
        """
        if self._closing:
            raise ShuttingDown("the daemon is stopping; publish refused")
        if self.pick(m.target) is None:
            self._check_room(m)
            self.counters["buffered"] += 1
        self.counters["accepted"] += 1
        self._buffer.append(m)
        self._kick()

    def prepare(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
        persistent: bool | None = None,
        done: Done | None = None,
        timeout: float | None = None,
    ) -> Outgoing:
        """Validate and inject (the first half of :meth:`submit`); nothing is sent.

        ``timeout`` (seconds) shortens the deadline, e.g. to a query's own timeout.
        """
        if self._closing:
            raise ShuttingDown("the daemon is stopping; publish refused")
        doc = dict(payload) if isinstance(payload, dict) else jsonc.loads_object(payload)
        if len(check_text("exchange name", exchange)) > _MAX_NAME_BYTES:
            raise UsageError(
                f"exchange name {exchange[:40]!r}… is over {_MAX_NAME_BYTES} bytes: shorten it"
            )
        check_routing_key(routing_key)
        target, key = split_consumer_prefix(routing_key)
        if (
            target is not None
            and target != 0
            and not any(link.spec.server_id == target for link in self.links)
        ):
            raise BadRoutingKey(
                f"routing key {routing_key!r} targets server {target}, but amqp_connection "
                f"lists servers 1..{len(self.links)}: use the Server-ID of a message received "
                "from that broker"
            )
        hdrs = parse_headers(headers) if headers else ()
        if headers:
            check_text("AMQP headers", headers)
            for bad in rejected_segments(headers):
                log.warning("AMQP header segment %r ignored: write name=value", bad)
        s = self.settings
        msg_id = inject_common_fields(
            doc,
            app_name=s.app_name,
            app_version=s.app_version,
            node=self.node,
            msg_id=self._ids.next(),
        )
        wait = self._buffer_timeout if timeout is None else min(timeout, self._buffer_timeout)
        now = self._clock()
        return Outgoing(
            exchange=exchange,
            routing_key=key,
            doc=doc,
            headers=hdrs,
            target=target,
            msg_id=msg_id,
            mandatory=mandatory,
            persistent=s.publish_persistent if persistent is None else persistent,
            done=done,
            deadline=now + wait,
            accepted=now,
        )

    def send(self, m: Outgoing) -> None:
        """Write ``m`` now when a link can take it, else buffer it (the second half of submit).

        Raises:
            ShuttingDown: the daemon is stopping.
            BufferFull: no link can take it and the buffer is full.
        """
        if self._closing:
            raise ShuttingDown("the daemon is stopping; publish refused")
        link = self.pick(m.target)
        if link is not None and not self._retry and not self._buffer.waiting(m.target):
            self._write(link, m)
            self.counters["accepted"] += 1
            return
        if link is None:
            self._check_room(m)
        self.counters["buffered"] += 1
        self.counters["accepted"] += 1
        self._buffer.append(m)
        if link is not None:
            self._kick()  # older messages are waiting: keep the order

    def _check_room(self, m: Outgoing) -> None:
        """Refuse ``m`` (no link can take it now) when the buffer is already full."""
        if len(self._buffer) >= self.settings.publish_buffer_size:
            self.counters["buffer_rejected"] += 1
            raise BufferFull(
                f"no broker can take the publish to exchange {m.exchange!r} now and the publish "
                f"buffer is full ({self.settings.publish_buffer_size} messages waiting): raise "
                f"publish_buffer_size or check RabbitMQ ({self._describe_links()})"
            )

    # -- links ----------------------------------------------------------------------------
    def pick(self, target: int | None) -> Link | None:
        """The link a message for ``target`` (None/0: the primary zone) goes to now, if any."""
        for link in self.links:
            if not link.writable:
                continue
            if target is None or target == 0:
                if link.spec.primary:
                    return link
            elif link.spec.server_id == target:
                return link
        return None

    async def attach(self, link: Link) -> None:
        """Open ``link``'s publish channel (confirms on) on its fresh control connection."""
        assert link.control is not None
        channel = await link.control.channel(confirms=True, on_return=self._on_return)
        channel.on_flow = lambda active: self._on_flow(link, active)
        channel.closed.add_done_callback(functools.partial(self._channel_closed, link, channel))
        link.channel = channel
        self._kick()

    def link_changed(self, link: Link) -> None:
        """A link went up, down, blocked or unblocked: write what waits when one can take it."""
        if link.writable:
            self._kick()

    def _on_flow(self, link: Link, active: bool) -> None:
        log.warning(
            "%s %s the publish channel (channel.flow)",
            link.spec.redacted,
            "reopened" if active else "stopped",
        )
        self.link_changed(link)

    def _on_return(self, returned: Returned) -> None:
        # The confirm of this message fails with PublishFailed; that path logs and reports it.
        self.counters["publish_returned"] += 1

    def _channel_closed(
        self, link: Link, channel: Channel, fut: asyncio.Future[BaseException | None]
    ) -> None:
        """A broker channel.close (404 on a missing exchange) must not black-hole the link:
        open a fresh publish channel; the messages it failed retryably wait for it."""
        if link.channel is not channel:
            return
        link.channel = None
        control = link.control
        if self._closing or control is None or not control.is_open:
            return
        log.warning(
            "publish channel on %s closed: %s; reopening it", link.spec.redacted, fut.result()
        )
        task = asyncio.get_running_loop().create_task(self._reopen(link, control))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reopen(self, link: Link, control: Connection) -> None:
        try:
            if link.control is control and control.is_open:
                await self.attach(link)
        except Exception as exc:
            log.warning("cannot reopen the publish channel on %s: %r", link.spec.redacted, exc)
            control.abort()  # the supervisor reconnects and attaches again

    # -- writing --------------------------------------------------------------------------
    def _kick(self) -> None:
        if not self._flush_scheduled and (len(self._buffer) or self._retry):
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write every waiting message some link can take, oldest first."""
        self._flush_scheduled = False
        buffer = self._buffer
        if self._retry:
            buffer.push_front(self._retry)
            self._retry = []
        for target in buffer.targets():
            link = self.pick(target)
            if link is None:
                continue
            for m in buffer.take(target):
                try:
                    self._write(link, m)
                except Exception as exc:  # pragma: no cover - prepare() validated everything
                    log.exception("cannot write %r", m)
                    self._fail(m, exc)

    def _write(self, link: Link, m: Outgoing) -> None:
        channel = link.channel
        control = link.control
        assert channel is not None and control is not None
        m.sends += 1
        confirm = channel.publish(
            m.exchange,
            m.routing_key,
            self._body(m.doc, link),
            headers=m.headers or None,
            mandatory=m.mandatory,
            persistent=m.persistent,
            on_confirm=functools.partial(self._confirmed, m, link.spec.server_id),
        )
        self._unconfirmed += 1
        self._confirms.append((self._clock() + self._confirm_timeout, confirm, control, link))

    def _body(self, doc: dict[str, Any], link: Link) -> bytes:
        """The wire body for ``link``: with that broker's Server-ID unless the caller set one.

        The injected Server-ID is removed again, so a re-send on another broker gets its own.
        """
        sid = server_id_for(self.settings.node_hostname, link.spec.server_id)
        injected = inject_server_id(doc, sid)
        body = jsonc.dumps(doc).encode("utf-8", "surrogatepass")
        if injected:
            del doc["Server-ID"]
        return body

    # -- outcomes -------------------------------------------------------------------------
    def _confirmed(self, m: Outgoing, server_id: int, exc: BaseException | None) -> None:
        self._unconfirmed -= 1
        if exc is None:
            self.counters["published"] += 1
            latency = self.confirm_latency
            if latency is not None:
                latency.observe(self._clock() - m.accepted)
            if m.done is not None:
                _call(m.done, {"msg_id": m.msg_id, "server_id": server_id}, None)
            return
        if isinstance(exc, PublishNacked):
            self._on_nack(m, exc)
            return
        if not isinstance(exc, NotConnected):
            self._fail(m, exc)
            return
        if self._closing:
            self._fail(m, ShuttingDown("the daemon is stopping; the publish was not confirmed"))
        elif self._clock() >= m.deadline:
            self._fail(m, self._expired(m, exc))
        else:
            self.counters["publish_retried"] += 1
            log.debug("publish %r not confirmed (%s); sending it again", m, exc)
            self._retry.append(m)
            self._kick()

    def _on_nack(self, m: Outgoing, exc: PublishNacked) -> None:
        """Write a nacked message again after a delay, or fail it with the nack at its deadline."""
        self.counters["publish_nacked"] += 1
        delay = min(_NACK_RETRY_S * 2**m.nacks, _NACK_RETRY_MAX_S)
        m.nacks += 1
        if self._closing or self._clock() + delay >= m.deadline:
            self._fail(m, exc)
            return
        log.info("publish %r nacked (%s); writing it again in %.1f s", m, exc, delay)
        self._nacked[m] = asyncio.get_running_loop().call_later(delay, self._resend_nacked, m)

    def _resend_nacked(self, m: Outgoing) -> None:
        if self._nacked.pop(m, None) is None:
            return
        self.counters["publish_retried"] += 1
        self._retry.append(m)
        self._kick()

    def _expired(self, m: Outgoing, last: BaseException | None) -> PublishExpired:
        self.counters["publish_expired"] += 1
        self.counters["buffer_rejected"] += 1
        detail = f"; last error: {last}" if last is not None else ""
        return PublishExpired(
            f"publish to exchange {m.exchange!r} routing key {m.routing_key!r} (Msg-ID "
            f"{m.msg_id}) was not confirmed by any broker within publish_buffer_timeout_ms = "
            f"{self.settings.publish_buffer_timeout_ms} ({self._describe_links()}){detail}"
        )

    def _fail(self, m: Outgoing, exc: BaseException) -> None:
        self.counters["publish_failed"] += 1
        reason = FAILURE_REASONS.get(type(exc), "other")
        self.failures[reason] += 1
        accepted = m.done is None
        log.warning(
            "publish to exchange %r routing key %r (Msg-ID %s) failed%s: %s: %s",
            m.exchange,
            m.routing_key,
            m.msg_id,
            " after it was accepted" if accepted else "",
            type(exc).__name__,
            exc,
            extra={"exchange": m.exchange, "routing_key": m.routing_key, "msg_id": m.msg_id},
        )
        if m.done is not None:
            _call(m.done, None, exc)
            return
        # accepted without a confirm: nobody waits, so the count and the route are its trace
        self.counters["publish_failed_after_accept"] += 1
        if self.on_failed is not None:
            try:
                self.on_failed(m, exc)
            except Exception:
                log.exception("on_failed hook raised for %r", m)

    async def _sweep(self) -> None:
        """Expire buffered messages past their deadline; abort links whose confirms hang."""
        confirms = self._confirms
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = self._clock()
            for m in self._buffer.expire(now):
                self._fail(m, self._expired(m, None))
            while confirms and (confirms[0][1].done() or confirms[0][0] <= now):
                _, confirm, conn, link = confirms.popleft()
                if confirm.done():
                    continue
                if conn.is_open:
                    if conn.blocked is not None or (link.control is conn and link.blocked):
                        # The broker holds confirms during an alarm or channel.flow: not dead.
                        confirms.append((now + self._confirm_timeout, confirm, conn, link))
                        continue
                    log.warning(
                        "no confirm from %s:%d within publish_confirm_timeout_ms: dropping the "
                        "connection, unconfirmed publishes go out again",
                        conn.host,
                        conn.port,
                    )
                    conn.abort()  # fails every pending confirm with NotConnected
                # A confirm its closed connection or channel never settled would hold the
                # message forever (seen in the chaos soak): settle it here so it goes again.
                confirm.set_exception(
                    NotConnected(
                        f"no confirm from {conn.host}:{conn.port} within "
                        "publish_confirm_timeout_ms and its connection is gone"
                    )
                )

    def status(self) -> dict[str, Any]:
        return {
            "buffered_publishes": len(self._buffer) + len(self._retry) + len(self._nacked),
            "unconfirmed_publishes": self._unconfirmed,
            **self.counters,
        }


#: the ``reason`` label of a final publish failure, by error type
FAILURE_REASONS: dict[type[BaseException], str] = {
    BrokerRefused: "refused",
    PublishNacked: "nacked",
    PublishFailed: "returned",
    PublishExpired: "expired",
    ShuttingDown: "shutdown",
}


class _Buffer:
    """Messages waiting for a link, one queue per target (None: the primary zone), oldest
    first; so messages stuck for a down ``consumer://<id>/`` server never slow the others."""

    __slots__ = ("_queues", "_size")

    def __init__(self) -> None:
        self._queues: dict[int | None, collections.deque[Outgoing]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def waiting(self, target: int | None) -> bool:
        return bool(self._queues.get(target or None))

    def append(self, m: Outgoing) -> None:
        key = m.target or None
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
        queue.append(m)
        self._size += 1

    def push_front(self, messages: list[Outgoing]) -> None:
        """Put re-sends back ahead of everything waiting, keeping their own order."""
        for m in reversed(messages):
            key = m.target or None
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
            queue.appendleft(m)
            self._size += 1

    def targets(self) -> list[int | None]:
        return [key for key, queue in self._queues.items() if queue]

    def take(self, target: int | None) -> collections.deque[Outgoing]:
        queue = self._queues.pop(target, None)
        if queue is None:
            return collections.deque()
        self._size -= len(queue)
        return queue

    def take_all(self) -> list[Outgoing]:
        messages = [m for queue in self._queues.values() for m in queue]
        self._queues.clear()
        self._size = 0
        return messages

    def expire(self, now: float) -> list[Outgoing]:
        """Remove and return the messages whose deadline has passed."""
        expired: list[Outgoing] = []
        if not self._size:
            return expired
        for key, queue in list(self._queues.items()):
            if any(m.deadline <= now for m in queue):
                keep = collections.deque(m for m in queue if m.deadline > now)
                expired.extend(m for m in queue if m.deadline <= now)
                self._queues[key] = keep
        self._size -= len(expired)
        return expired


def _call(done: Done, result: dict[str, Any] | None, exc: BaseException | None) -> None:
    try:
        done(result, exc)
    except Exception:
        log.exception("publish done callback raised")


class MsgIds:
    """Random (version 4) UUID text, about 3x cheaper than ``str(uuid.uuid4())``.

    Randomness comes from ``os.urandom`` in 4 KiB draws instead of one system call per id.
    """

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> str:
        pos = self._pos
        if pos + 16 > len(self._pool):
            self._pool, pos = os.urandom(4096), 0
        self._pos = pos + 16
        h = self._pool[pos : pos + 16].hex()
        # version 4 and the RFC 4122 variant bits, as uuid4() sets them
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"
