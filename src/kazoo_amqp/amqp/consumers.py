"""Consumers: the subscriptions declared on every consume connection, feeding a Dispatcher.

Every subscription recorded in ``kazoo:mod-init`` is declared in the order of §6.4 on every
(re)connect of a link (all of them on the primary zone, ``federate`` ones elsewhere), with its
own channel. Each delivery becomes one pipe frame handed to the :class:`Dispatcher` (the worker
pool, or the Kamailio bridge): ``next_seq()``, ``pick(key)``, ``dispatch(index, seq, frame,
token)``. When the subscription acks after the handler, ``token`` is what :meth:`on_done`
needs to ack or reject it when the dispatcher reports the outcome.

A consumer the broker cancels, or whose channel it closes, must not go quiet: the consume
connection is dropped so the supervisor reconnects and declares everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from kazoo_amqp.amqp.channel import Channel, Delivery
from kazoo_amqp.amqp.links import Link
from kazoo_amqp.core import jsonc
from kazoo_amqp.core.broker_url import BrokerSpec
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.pipe import encode_delivery
from kazoo_amqp.core.subscription import AckMode, ExchangeDecl, Subscription
from kazoo_amqp.errors import BadPayload, BrokerRefused

log = logging.getLogger("kazoo_amqp.consumers")

#: outcome codes reported by the dispatcher that ack the delivery (pipe.Outcome DONE, NO_ROUTE)
ACK_OUTCOMES = frozenset({0, 3})


class AckToken:
    """What ``on_done`` needs to settle one delivery: its channel and delivery tag."""

    __slots__ = ("channel", "tag")

    def __init__(self, channel: Channel, tag: int) -> None:
        self.channel = channel
        self.tag = tag


#: on_done(token, outcome): the callback a Dispatcher reports outcomes to.
OutcomeSink = Callable[[Any, int], None]


class Dispatcher(Protocol):
    """Where deliveries go (workers/pool.py ``WorkerPool``; the Kamailio bridge).

    ``on_done`` is the outcome callback the implementation was built with (the daemon wires it
    to :meth:`Consumers.on_done` / ``Manager.on_done``): it is called once per dispatched
    frame, with the frame's token and a ``core.pipe.Outcome`` value (or ``GAVE_UP``). Only
    tokens that are not None (ack-after-handler deliveries) must be reported; a delivery whose
    outcome never comes stays unacked until its channel closes, and the broker redelivers it.
    """

    on_done: OutcomeSink

    def next_seq(self) -> int:
        """A fresh sequence number for the next frame."""
        ...

    def pick(self, key: bytes | None = None) -> int:
        """The worker index for a delivery (``key``: consistent-worker hash input, or None)."""
        ...

    def dispatch(self, index: int, seq: int, frame: bytes, token: Any) -> None:
        """Hand ``frame`` to worker ``index``; ``token`` comes back with its outcome."""
        ...


class Consumers:
    """Declares the subscriptions on each link (an attachment) and settles their deliveries."""

    def __init__(
        self,
        settings: Settings,
        subscriptions: list[Subscription],
        dispatcher: Dispatcher | None,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.dispatcher = dispatcher
        self.paused = False
        self._stopped = False
        self._closing = False
        self._channels: dict[int, list[Channel]] = {}  # server id -> consumer channels
        self._tags: dict[int, list[tuple[Channel, str]]] = {}
        self.counters: dict[str, int] = {
            "deliveries": 0,
            "oversize": 0,
            "declare_errors": 0,
            "consumer_restarts": 0,
        }

    # -- attachment -----------------------------------------------------------------------
    async def attach(self, link: Link) -> None:
        """Declare every applicable subscription on ``link``'s consume connection and consume."""
        consume = link.consume
        assert consume is not None
        sid = link.spec.server_id
        channels: list[Channel] = []
        tags: list[tuple[Channel, str]] = []
        self._channels[sid] = channels
        self._tags[sid] = tags
        if self.paused:
            consume.pause_reading()
        if self.dispatcher is None:
            return
        for index, sub in enumerate(self.subscriptions):
            if not (link.spec.primary or sub.federate):
                continue
            try:
                ch = await consume.channel()
                queue = await declare_subscription(ch, sub)
                if sub.ack_mode is not AckMode.BROKER:
                    await ch.basic_qos(sub.prefetch or self.settings.prefetch)
                tag = await ch.basic_consume(
                    queue,
                    self._consumer(index, sub, link.spec),
                    no_ack=sub.ack_mode is AckMode.BROKER,
                )
                channels.append(ch)
                tags.append((ch, tag))
                self._watch(link, ch, sub)
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

    def link_changed(self, link: Link) -> None:
        """Forget a lost link's channels (their deliveries are requeued by the broker)."""
        if not link.up:
            self._channels.pop(link.spec.server_id, None)
            self._tags.pop(link.spec.server_id, None)

    def _watch(self, link: Link, ch: Channel, sub: Subscription) -> None:
        consume = link.consume
        sid = link.spec.server_id

        def restart(reason: object) -> None:
            if self._closing or self._stopped or consume is None or not consume.is_open:
                return
            if ch not in self._channels.get(sid, ()):
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

    # -- deliveries -----------------------------------------------------------------------
    def _consumer(
        self, index: int, sub: Subscription, spec: BrokerSpec
    ) -> Callable[[Delivery], None]:
        dispatcher = self.dispatcher
        assert dispatcher is not None
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
            key = hash_key(body, hash_field, d.routing_key) if hashed else None
            seq = dispatcher.next_seq()
            frame = encode_delivery(seq, index, sid, d.redelivered, d.routing_key, d.exchange, body)
            dispatcher.dispatch(
                dispatcher.pick(key),
                seq,
                frame,
                AckToken(d.channel, d.delivery_tag) if after else None,
            )

        return on_delivery

    def on_done(self, token: Any, outcome: int) -> None:
        """The dispatcher finished a delivery: ack it, or reject it without requeue on failure."""
        if not isinstance(token, AckToken):
            return
        channel = token.channel
        if not channel.is_open:
            return  # the broker requeues it; the next connection will deliver it again
        if outcome in ACK_OUTCOMES:
            channel.ack(token.tag)
        else:  # handler error, bad message, gave up after worker deaths: dead-letter it
            channel.reject(token.tag, requeue=False)

    def pause(self, paused: bool, links: list[Link]) -> None:
        """Back-pressure from the dispatcher: stop or resume reading deliveries."""
        self.paused = paused
        for link in links:
            consume = link.consume
            if consume is not None and consume.is_open:
                if paused:
                    consume.pause_reading()
                else:
                    consume.resume_reading()

    async def stop_consuming(self) -> None:
        """Cancel every consumer so no new deliveries arrive (first step of shutdown).

        The channels stay open, so the deliveries still being handled can be acked when they
        finish; closing the links closes them afterwards.
        """
        self._stopped = True
        for tags in self._tags.values():
            for ch, tag in tags:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ch.basic_cancel(tag), 1.0)
            tags.clear()

    def stop(self) -> None:
        self._closing = True


async def declare_exchange(ch: Channel, decl: ExchangeDecl) -> None:
    """``exchange.declare`` from a subscription's description (arguments included)."""
    await ch.exchange_declare(
        decl.name,
        decl.type or "direct",
        passive=decl.passive,
        durable=decl.durable,
        auto_delete=decl.auto_delete,
        internal=decl.internal,
        arguments=decl.arguments or None,
    )


async def declare_subscription(ch: Channel, sub: Subscription) -> str:
    """Declare one subscription's topology in the order of §6.4; return the queue name."""
    ex = sub.exchange
    if ex.name:
        await declare_exchange(ch, ex)
    for binding in sub.exchange_bindings:
        src = binding.source
        await declare_exchange(ch, src)
        for key in binding.routing_keys:
            await ch.exchange_bind(ex.name, src.name, key)
    q = sub.queue
    name, _, _ = await ch.queue_declare(
        q.name,
        passive=q.passive,
        durable=q.durable,
        exclusive=q.exclusive,
        auto_delete=q.auto_delete,
        arguments=q.arguments or None,
    )
    if ex.name:
        for key in sub.routing_keys:
            await ch.queue_bind(name, ex.name, key)
    return name


def hash_key(body: bytes, field: str | None, routing_key: str) -> bytes:
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
