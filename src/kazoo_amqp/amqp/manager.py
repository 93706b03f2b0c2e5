"""The manager: every broker connection, failover, publishing, queries and consumers.

Theory of operation
-------------------
One ``BrokerLink`` per ``amqp_connection`` entry supervises two AMQP connections to its broker:

* **control**: one publish channel with publisher confirms, and (primary zone only) the node's
  reply queue ``kamailio@<host>-<<sid>-0>`` bound to ``targeted`` with our Server-ID;
* **consume**: one channel per subscription that applies to this broker (all of them on the
  primary zone, ``federate`` ones elsewhere). Its reading is paused when the workers fall behind,
  which never delays query replies because those arrive on the control connection.

A link reconnects with jittered exponential backoff (``reconnect_min_ms`` .. ``reconnect_max_ms``)
and re-declares everything on every connect. Connection events (``connection``/``open`` and
``closed``) are handed to the workers like the C module's synthetic events.

Publishing picks the first *up* broker of the primary zone in config order (or the exact server
of a ``consumer://<id>/`` key), so traffic fails over and fails back by itself. A publish that
finds no broker waits in a bounded buffer (``publish_buffer_size``) until one comes up or
``publish_buffer_timeout_ms`` passes; a publish whose connection dies before the confirm is sent
again on the next broker. Nothing accepted is dropped silently: the caller gets the confirm or a
typed error.

Queries are correlated on the message's ``Msg-ID`` (the caller's own when given). A reply that
matches no waiter (late, or foreign) is counted and dropped, or routed (``late_replies``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from kazoo_amqp.amqp.protocol import Channel, Connection, Delivery, Returned
from kazoo_amqp.core import jsonc
from kazoo_amqp.core.broker_url import BrokerSpec
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.headers import parse_headers, rejected_segments
from kazoo_amqp.core.message import (
    TARGETED_EXCHANGE,
    augment_received,
    check_routing_key,
    correlation_key,
    inject_common_fields,
    inject_server_id,
    node_name,
    reply_queue_name,
    server_id_for,
    split_consumer_prefix,
)
from kazoo_amqp.core.subscription import AckMode, ExchangeDecl, Subscription
from kazoo_amqp.errors import (
    BadPayload,
    BadRoutingKey,
    BrokerError,
    BrokerRefused,
    KazooError,
    NotConnected,
    PublishFailed,
    QueryTimeout,
    ShuttingDown,
    UsageError,
)

log = logging.getLogger("kazoo_amqp.manager")

# Dispatcher: what the manager needs from the worker pool (wired by daemon.py).
#   next_seq() -> int; pick(key: bytes | None) -> int; dispatch(index, seq, frame, token)
Dispatcher = Any
# on_event(state, spec): a connection opened or closed (daemon turns it into a worker event).
EventSink = Callable[[str, BrokerSpec], None]


class BrokerLink:
    """One broker: its connections, channels and state."""

    def __init__(self, spec: BrokerSpec) -> None:
        self.spec = spec
        self.control: Connection | None = None
        self.consume: Connection | None = None
        self.channel: Channel | None = None
        self.up = False
        self.task: asyncio.Task[None] | None = None
        self.consumer_channels: list[Channel] = []
        self.consumer_tags: list[tuple[Channel, str]] = []
        self.connects = 0
        self.last_error = ""

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return (
            f"<BrokerLink {self.spec.server_id} {self.spec.redacted} zone={self.spec.zone} {state}>"
        )


class Manager:
    """Owns the brokers; publishes, queries and feeds consumed deliveries to the dispatcher."""

    def __init__(
        self,
        settings: Settings,
        *,
        subscriptions: list[Subscription],
        dispatcher: Dispatcher,
        on_event: EventSink,
        clock: Callable[[], float] = time.time,
        connect: Callable[..., Any] = Connection.connect,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.dispatcher = dispatcher
        self.on_event = on_event
        self.clock = clock
        self._connect = connect
        self.links = [BrokerLink(spec) for spec in settings.brokers]
        self.node = node_name(settings.node_hostname)
        self.pending: dict[str, asyncio.Future[str]] = {}
        self._up_changed = asyncio.Event()
        self._buffered = 0
        self._closing = False
        self._paused = False
        self._ssl: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._confirm_deadlines: collections.deque[tuple[float, Any, BrokerLink]] = (
            collections.deque()
        )
        self._confirm_timeout = settings.publish_confirm_timeout_ms / 1000
        self._sweeper: asyncio.Task[None] | None = None
        self._ids = _MsgIds()
        self._consumers_stopped = False
        self.counters: dict[str, int] = {
            "published": 0,
            "publish_failed": 0,
            "publish_retried": 0,
            "buffered": 0,
            "buffer_rejected": 0,
            "queries": 0,
            "query_timeouts": 0,
            "replies": 0,
            "late_replies": 0,
            "bad_replies": 0,
            "deliveries": 0,
            "oversize": 0,
            "declare_errors": 0,
            "consumer_restarts": 0,
            "connects": 0,
            "disconnects": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        for link in self.links:
            link.task = asyncio.get_running_loop().create_task(
                self._supervise(link), name=f"broker-{link.spec.server_id}"
            )

    async def wait_connected(
        self, timeout: float, *, give_up_when_all_failed: bool = False
    ) -> bool:
        """Wait until a primary-zone broker is up (used by one-shot commands and tests).

        ``give_up_when_all_failed``: return False as soon as every broker failed once.
        """
        deadline = time.monotonic() + timeout
        while self._pick(None) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if give_up_when_all_failed and all(
                link.last_error and not link.up for link in self.links
            ):
                return False
            self._up_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._up_changed.wait()
        return True

    async def stop_consuming(self) -> None:
        """Cancel every consumer so no new deliveries arrive (first step of shutdown).

        The channels stay open, so the deliveries the workers are still handling can be acked
        when they finish; ``stop()`` closes them afterwards.
        """
        self._consumers_stopped = True
        for link in self.links:
            for ch, tag in link.consumer_tags:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ch.basic_cancel(tag), 1.0)
            link.consumer_tags.clear()

    async def stop(self) -> None:
        """Fail waiting queries with ShuttingDown and close every connection."""
        self._closing = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ShuttingDown("the daemon is stopping; the query was abandoned"))
        self.pending.clear()
        self._up_changed.set()
        for task in [*self._tasks, self._sweeper]:
            if task is not None:
                task.cancel()
        for link in self.links:
            if link.task is not None:
                link.task.cancel()
        for link in self.links:
            if link.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await link.task
            for conn in (link.control, link.consume):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2.0)

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
        conn: Connection = await self._connect(
            host=spec.host,
            port=spec.port,
            user=spec.user,
            password=spec.password,
            vhost=spec.vhost,
            ssl=self._ssl_context() if spec.tls else None,
            server_hostname=spec.host if spec.tls else None,
            heartbeat=s.amqp_heartbeats if s.amqp_heartbeats > 0 else 30,
            connect_timeout=max(s.amqp_connect_timeout, 1.0),
            frame_max=131072,
            channel_max=max(s.amqp_max_channels, len(self.subscriptions) + 4),
            name=f"kazoo-amqp {self.node} {name}",
        )
        return conn

    async def _supervise(self, link: BrokerLink) -> None:
        s = self.settings
        backoff = s.reconnect_min_ms / 1000
        while not self._closing:
            was_up = False
            try:
                link.control = await self._open(link.spec, "control")
                link.channel = await self._open_publish_channel(link)
                if link.spec.primary:
                    await self._declare_reply_queue(link)
                link.consume = await self._open(link.spec, "consume")
                await self._declare_subscriptions(link)
                if self._paused:
                    link.consume.pause_reading()
                link.up = was_up = True
                link.connects += 1
                link.last_error = ""
                self.counters["connects"] += 1
                backoff = s.reconnect_min_ms / 1000
                log.info("connected to %s (zone %s)", link.spec.redacted, link.spec.zone)
                self._up_changed.set()
                self.on_event("open", link.spec)
                waits = [link.control.closed, link.consume.closed]
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
                link.consumer_channels.clear()
                link.consumer_tags.clear()
                for conn in (link.control, link.consume):
                    if conn is not None:
                        conn.abort()
                link.control = link.consume = None
                link.channel = None
                self._up_changed.set()
                if was_up:
                    self.counters["disconnects"] += 1
                    if not self._closing:
                        self.on_event("closed", link.spec)
            if self._closing:
                return
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, s.reconnect_max_ms / 1000)
            await asyncio.sleep(delay)

    async def _open_publish_channel(self, link: BrokerLink) -> Channel:
        assert link.control is not None
        channel = await link.control.channel(confirms=True, on_return=self._on_return)

        def reopen(fut: asyncio.Future[BaseException | None]) -> None:
            # A broker channel.close (404 on a missing exchange) must not black-hole later
            # publishes, unlike the C module (operator issue 2.5): open a fresh channel.
            if link.channel is channel and link.control is not None and link.control.is_open:
                log.warning(
                    "publish channel on %s closed: %s; reopening it",
                    link.spec.redacted,
                    fut.result(),
                )
                link.channel = None
                task = asyncio.get_running_loop().create_task(self._reopen_publish(link))
                self._tasks.add(task)  # owned: cancelled by stop()
                task.add_done_callback(self._tasks.discard)

        channel.closed.add_done_callback(reopen)
        return channel

    async def _reopen_publish(self, link: BrokerLink) -> None:
        try:
            link.channel = await self._open_publish_channel(link)
            self._up_changed.set()
        except Exception as exc:
            log.warning("cannot reopen the publish channel on %s: %r", link.spec.redacted, exc)
            if link.control is not None:
                link.control.abort()

    def _on_return(self, returned: Returned) -> None:
        log.warning(
            "broker returned a message for exchange %r routing key %r: %d %s",
            returned.exchange,
            returned.routing_key,
            returned.reply_code,
            returned.reply_text,
        )

    async def _declare_reply_queue(self, link: BrokerLink) -> None:
        assert link.control is not None
        ch = await link.control.channel()
        host = self.settings.node_hostname
        queue = reply_queue_name(host, link.spec.server_id)
        await ch.exchange_declare(TARGETED_EXCHANGE, "direct")
        await ch.queue_declare(queue, auto_delete=True)
        await ch.queue_bind(queue, TARGETED_EXCHANGE, server_id_for(host, link.spec.server_id))
        sid, zone = link.spec.server_id, link.spec.zone
        await ch.basic_consume(queue, lambda d: self._on_reply(d, sid, zone), no_ack=True)

    async def _declare_subscriptions(self, link: BrokerLink) -> None:
        assert link.consume is not None
        for index, sub in enumerate(self.subscriptions):
            if not (link.spec.primary or sub.federate):
                continue
            try:
                ch = await link.consume.channel()
                queue = await self._declare_one(ch, sub)
                if sub.ack_mode is not AckMode.BROKER:
                    await ch.basic_qos(sub.prefetch or self.settings.prefetch)
                tag = await ch.basic_consume(
                    queue,
                    self._consumer(index, sub, link.spec),
                    no_ack=sub.ack_mode is AckMode.BROKER,
                )
                link.consumer_channels.append(ch)
                link.consumer_tags.append((ch, tag))
                self._watch_consumer(link, ch, sub)
            except BrokerRefused as exc:
                # Like C, one bad subscription does not stop the others; unlike C we say why.
                self.counters["declare_errors"] += 1
                log.error(
                    "subscription %d (exchange %r, queue %r) refused by %s: %s; fix the "
                    "description in kazoo:mod-init or delete the conflicting exchange/queue",
                    index,
                    sub.exchange.name,
                    sub.queue.name,
                    link.spec.redacted,
                    exc,
                )

    def _watch_consumer(self, link: BrokerLink, ch: Channel, sub: Subscription) -> None:
        """A consumer the broker cancels or whose channel it closes must not go quiet: drop
        the consume connection so the link reconnects and declares everything again."""
        consume = link.consume

        def restart(reason: object) -> None:
            if self._closing or self._consumers_stopped or consume is None or not consume.is_open:
                return
            if ch not in link.consumer_channels:
                return  # we closed it ourselves (shutdown)
            self.counters["consumer_restarts"] += 1
            log.error(
                "consumer of queue %r on %s stopped (%s): reconnecting to declare it again",
                sub.queue.name,
                link.spec.redacted,
                reason,
            )
            consume.abort()

        ch.closed.add_done_callback(lambda fut: restart(fut.result()))
        ch.on_cancel = lambda tag: restart(f"the broker cancelled consumer {tag}")

    async def _declare_one(self, ch: Channel, sub: Subscription) -> str:
        """Declare one subscription's topology in the order of §6.4; return the queue name."""
        ex = sub.exchange
        if ex.name:
            await _declare_exchange(ch, ex)
        for binding in sub.exchange_bindings:
            src = binding.source
            await _declare_exchange(ch, src)
            for key in binding.routing_keys:
                await ch.exchange_bind(ex.name, src.name, key)
        q = sub.queue
        name, _, _ = await ch.queue_declare(
            q.name,
            passive=q.passive,
            durable=q.durable,
            exclusive=q.exclusive,
            auto_delete=q.auto_delete,
        )
        if ex.name:
            for key in sub.routing_keys:
                await ch.queue_bind(name, ex.name, key)
        return name

    # -- consuming ------------------------------------------------------------------------
    def _consumer(
        self, index: int, sub: Subscription, spec: BrokerSpec
    ) -> Callable[[Delivery], None]:
        from kazoo_amqp.core.pipe import encode_delivery

        dispatcher = self.dispatcher
        counters = self.counters
        max_bytes = self.settings.max_message_bytes
        mode = sub.ack_mode
        after = mode is AckMode.AFTER_HANDLER
        on_receipt = mode is AckMode.ON_RECEIPT
        sid = spec.server_id
        hashed = sub.consistent_worker
        hash_field = sub.consistent_worker_key

        def on_delivery(d: Delivery) -> None:
            counters["deliveries"] += 1
            body = d.body
            if len(body) > max_bytes:
                counters["oversize"] += 1
                log.error(
                    "rejected a %d-byte message from exchange %r routing key %r: over "
                    "max_message_bytes = %d",
                    len(body),
                    d.exchange,
                    d.routing_key,
                    max_bytes,
                )
                if mode is not AckMode.BROKER:
                    d.channel.reject(d.delivery_tag, requeue=False)
                return
            if on_receipt:
                d.channel.ack(d.delivery_tag)
            key = _hash_key(body, hash_field, d.routing_key) if hashed else None
            seq = dispatcher.next_seq()
            frame = encode_delivery(seq, index, sid, d.redelivered, d.routing_key, d.exchange, body)
            dispatcher.dispatch(
                dispatcher.pick(key), seq, frame, (d.channel, d.delivery_tag) if after else None
            )

        return on_delivery

    def on_done(self, token: Any, outcome: int) -> None:
        """A worker finished a delivery: ack it, or reject it without requeue on failure."""
        if token is None:
            return
        channel, tag = token
        if not channel.is_open:
            return  # the broker requeues it; the next connection will deliver it again
        if outcome in (0, 3):  # DONE, NO_ROUTE
            channel.ack(tag)
        else:  # handler error, bad message, gave up after worker deaths: dead-letter it
            channel.reject(tag, requeue=False)

    def replace_subscriptions(self, subscriptions: list[Subscription]) -> None:
        """Consume ``subscriptions`` from now on: each link's consume connection is dropped, so
        it reconnects and declares them (the Kamailio bridge, after Kamailio's mod-init
        changed)."""
        self.subscriptions = subscriptions
        for link in self.links:
            if link.consume is not None:
                link.consume.abort()

    def pause_consumers(self, paused: bool) -> None:
        """Back-pressure from the worker pool: stop or resume reading deliveries."""
        self._paused = paused
        for link in self.links:
            if link.consume is not None and link.consume.is_open:
                if paused:
                    link.consume.pause_reading()
                else:
                    link.consume.resume_reading()

    def _on_reply(self, d: Delivery, sid: int, zone: str) -> None:
        self.counters["replies"] += 1
        try:
            doc = jsonc.loads_object(d.body)
        except BadPayload as exc:
            self.counters["bad_replies"] += 1
            log.warning("dropped a reply on %s: %s", d.routing_key, exc)
            return
        msg_id = doc.get("Msg-ID")
        fut = self.pending.pop(correlation_key(msg_id), None) if msg_id is not None else None
        augment_received(doc, zone=zone, server_id=sid, now=int(self.clock()), render=jsonc.render)
        if fut is not None and not fut.done():
            fut.set_result(jsonc.dumps(doc))
            return
        self.counters["late_replies"] += 1
        log.info(
            "reply with Msg-ID %r matches no waiting query (late or foreign); %s",
            msg_id,
            "routing it" if self.settings.late_replies == "route" else "dropped",
        )
        if self.settings.late_replies == "route":
            from kazoo_amqp.core.pipe import NO_BINDING, encode_delivery

            seq = self.dispatcher.next_seq()
            frame = encode_delivery(
                seq, NO_BINDING, sid, d.redelivered, d.routing_key, d.exchange, d.body
            )
            self.dispatcher.dispatch(self.dispatcher.pick(None), seq, frame, None)

    # -- publishing -----------------------------------------------------------------------
    def _pick(self, server_id: int | None) -> BrokerLink | None:
        for link in self.links:
            if not link.up or link.channel is None or not link.channel.is_open:
                continue
            if server_id is None or server_id == 0:
                if link.spec.primary:
                    return link
            elif link.spec.server_id == server_id:
                return link
        return None

    def _prepare(
        self, payload: str | bytes | dict[str, Any], routing_key: str, headers: str | None
    ) -> tuple[dict[str, Any], int | None, str, tuple[tuple[str, str], ...], str]:
        doc = dict(payload) if isinstance(payload, dict) else jsonc.loads_object(payload)
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
        return doc, target, key, hdrs, msg_id

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
    ) -> dict[str, Any]:
        """kazoo_publish: returns after the broker confirmed the message (see ``publish_cb``)."""
        result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def done(value: dict[str, Any] | None, exc: BaseException | None) -> None:
            if result.done():
                return
            if exc is None:
                result.set_result(value)  # type: ignore[arg-type]
            else:
                result.set_exception(exc)

        self.publish_cb(exchange, routing_key, payload, headers, mandatory=mandatory, done=done)
        return await result

    def publish_cb(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
        done: Callable[[dict[str, Any] | None, BaseException | None], None],
    ) -> None:
        """Publish and call ``done(result, None)`` once the broker confirmed, or ``done(None,
        error)``; validation errors raise at once. The hot path of the socket server.

        The common case (a broker is up) is handled right here: parse, serialise, write, and a
        confirm callback (no future, no task). When no broker is up, or the confirm fails
        because the connection died or hung, the publish continues as an owned task on the slow
        path (buffering, sending again on the next broker).
        """
        if self._closing:
            raise ShuttingDown("the daemon is stopping; publish refused")
        doc, target, key, hdrs, msg_id = self._prepare(payload, routing_key, headers)
        link = self._pick(target)
        if link is None:
            self._slow_publish(done, exchange, key, doc, hdrs, target, msg_id, mandatory)
            return
        body = self._body(doc, link)
        counters = self.counters
        server_id = link.spec.server_id

        def confirmed(exc: BaseException | None) -> None:
            if exc is None:
                counters["published"] += 1
                done({"msg_id": msg_id, "server_id": server_id}, None)
            elif isinstance(exc, NotConnected):
                counters["publish_retried"] += 1
                self._slow_publish(done, exchange, key, doc, hdrs, target, msg_id, mandatory)
            else:
                counters["publish_failed"] += 1
                done(None, exc)

        assert link.channel is not None
        confirm = link.channel.publish(
            exchange, key, body, headers=hdrs or None, mandatory=mandatory, on_confirm=confirmed
        )
        if confirm is not None:
            self._confirm_deadlines.append(
                (time.monotonic() + self._confirm_timeout, confirm, link)
            )
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(
                    self._sweep_confirms(), name="confirm-sweeper"
                )

    def _body(self, doc: dict[str, Any], link: BrokerLink) -> bytes:
        """The wire body for ``link``: with that broker's Server-ID unless the caller set one.

        The injected Server-ID is removed again, so a retry on another broker gets its own.
        """
        sid = server_id_for(self.settings.node_hostname, link.spec.server_id)
        injected = inject_server_id(doc, sid)
        body = jsonc.dumps(doc).encode("utf-8", "surrogatepass")
        if injected:
            del doc["Server-ID"]
        return body

    def _slow_publish(
        self,
        done: Callable[[dict[str, Any] | None, BaseException | None], None],
        exchange: str,
        key: str,
        doc: dict[str, Any],
        hdrs: tuple[tuple[str, str], ...],
        target: int | None,
        msg_id: str,
        mandatory: bool,
    ) -> None:
        async def run() -> None:
            try:
                link = await self._send(
                    exchange, key, doc, hdrs, target, wait_confirm=True, mandatory=mandatory
                )
            except asyncio.CancelledError:
                done(None, ShuttingDown("the daemon is stopping; the publish was abandoned"))
                raise
            except Exception as exc:
                done(None, exc)
                return
            self.counters["published"] += 1
            done({"msg_id": msg_id, "server_id": link.spec.server_id}, None)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_confirms(self) -> None:
        """Treat a confirm that takes longer than publish_confirm_timeout_ms as a dead link."""
        deadlines = self._confirm_deadlines
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
                _, confirm, link = deadlines.popleft()
                if not confirm.done() and link.control is not None:
                    log.warning(
                        "no confirm from %s within publish_confirm_timeout_ms: "
                        "dropping the connection, unconfirmed publishes go out again",
                        link.spec.redacted,
                    )
                    link.control.abort()  # fails every pending confirm with NotConnected

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        timeout_ms: int | None = None,
        *,
        mandatory: bool = False,
    ) -> str:
        """kazoo_query: publish, then wait for the reply carrying our Msg-ID; returns its text."""
        if self._closing:
            raise ShuttingDown("the daemon is stopping; query refused")
        if timeout_ms is not None and timeout_ms <= 0:
            raise UsageError(f"timeout_ms = {timeout_ms}: give a positive number of milliseconds")
        timeout = timeout_ms / 1000 if timeout_ms else self.settings.amqp_query_timeout
        doc, _, key, hdrs, msg_id = self._prepare(payload, routing_key, headers)
        if msg_id in self.pending:
            raise UsageError(f"a query with Msg-ID {msg_id!r} is already waiting; use unique ids")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self.pending[msg_id] = fut
        self.counters["queries"] += 1
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await self._send(
                    exchange,
                    key,
                    doc,
                    hdrs,
                    None,
                    wait_confirm=False,
                    reply=fut,
                    mandatory=mandatory,
                )
                return await fut
        except TimeoutError:
            self.counters["query_timeouts"] += 1
            elapsed = (loop.time() - started) * 1000
            raise QueryTimeout(
                f"no reply with Msg-ID {msg_id} to {exchange}/{routing_key} within "
                f"{timeout * 1000:.0f} ms",
                msg_id=msg_id,
                timeout_ms=elapsed,
            ) from None
        finally:
            if self.pending.get(msg_id) is fut:
                del self.pending[msg_id]

    async def _send(
        self,
        exchange: str,
        key: str,
        doc: dict[str, Any],
        hdrs: tuple[tuple[str, str], ...],
        target: int | None,
        *,
        wait_confirm: bool,
        reply: asyncio.Future[str] | None = None,
        mandatory: bool = False,
    ) -> BrokerLink:
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.publish_buffer_timeout_ms / 1000
        while True:
            link = self._pick(target)
            if link is None:
                await self._wait_for_broker(target, deadline)
                continue
            body = self._body(doc, link)
            assert link.channel is not None
            confirm = link.channel.publish(
                exchange, key, body, headers=hdrs or None, mandatory=mandatory
            )
            if confirm is None:  # pragma: no cover - our publish channels always confirm
                return link
            if not wait_confirm:
                assert reply is not None
                confirm.add_done_callback(lambda f: _fail_reply(f, reply))
                return link
            try:
                async with asyncio.timeout(s.publish_confirm_timeout_ms / 1000):
                    await confirm
                return link
            except (NotConnected, TimeoutError) as exc:
                # The connection died (or hung) before the confirm: send it again elsewhere.
                self.counters["publish_retried"] += 1
                log.warning(
                    "publish to %s not confirmed (%s); sending it again",
                    link.spec.redacted,
                    exc or "confirm timeout",
                )
                if isinstance(exc, TimeoutError) and link.control is not None:
                    link.control.abort()
                if loop.time() > deadline:
                    self.counters["publish_failed"] += 1
                    raise PublishFailed(
                        f"publish to exchange {exchange!r} routing key {key!r} was not confirmed "
                        f"by any broker within publish_buffer_timeout_ms"
                    ) from None
            except BrokerError:
                self.counters["publish_failed"] += 1
                raise

    async def _wait_for_broker(self, target: int | None, deadline: float) -> None:
        s = self.settings
        if self._closing:
            raise ShuttingDown("the daemon is stopping; publish refused")
        if self._buffered >= s.publish_buffer_size:
            self.counters["buffer_rejected"] += 1
            raise NotConnected(
                f"no broker is connected and the publish buffer is full "
                f"({s.publish_buffer_size} messages waiting): raise publish_buffer_size or "
                f"check RabbitMQ ({self.describe_links()})"
            )
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            self.counters["buffer_rejected"] += 1
            raise NotConnected(
                f"no broker became available within publish_buffer_timeout_ms = "
                f"{s.publish_buffer_timeout_ms} ({self.describe_links()})"
            )
        self._buffered += 1
        self.counters["buffered"] += 1
        try:
            self._up_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._up_changed.wait()
        finally:
            self._buffered -= 1

    def describe_links(self) -> str:
        return "; ".join(
            f"{link.spec.redacted}: {'up' if link.up else 'down'}"
            + (f" ({link.last_error})" if link.last_error and not link.up else "")
            for link in self.links
        )

    def status(self) -> dict[str, Any]:
        return {
            "brokers": [
                {
                    "server_id": link.spec.server_id,
                    "url": link.spec.redacted,
                    "zone": link.spec.zone,
                    "primary": link.spec.primary,
                    "up": link.up,
                    "connects": link.connects,
                    "last_error": link.last_error,
                }
                for link in self.links
            ],
            "pending_queries": len(self.pending),
            "buffered_publishes": self._buffered,
            "consumers_paused": self._paused,
            **self.counters,
        }

    def __repr__(self) -> str:
        up = sum(1 for link in self.links if link.up)
        return f"<Manager {up}/{len(self.links)} brokers up, {len(self.pending)} queries waiting>"


async def _declare_exchange(ch: Channel, decl: ExchangeDecl) -> None:
    await ch.exchange_declare(
        decl.name,
        decl.type or "direct",
        passive=decl.passive,
        durable=decl.durable,
        auto_delete=decl.auto_delete,
        internal=decl.internal,
    )


class _MsgIds:
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


def _fail_reply(confirm: asyncio.Future[None], reply: asyncio.Future[str]) -> None:
    if confirm.cancelled() or reply.done():
        return
    exc = confirm.exception()
    if exc is not None:
        reply.set_exception(exc)


def _hash_key(body: bytes, field: str | None, routing_key: str) -> bytes:
    """The consistent-worker key: a top-level string field, else the routing key (§5.4)."""
    if field:
        try:
            doc = jsonc.loads(body)
        except BadPayload:
            doc = None
        if isinstance(doc, dict):
            value = doc.get(field)
            if isinstance(value, str):
                return value.encode("utf-8", "surrogatepass")
    return routing_key.encode("utf-8", "surrogatepass")
