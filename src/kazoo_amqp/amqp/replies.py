"""Queries: the node's reply queue on every primary-zone broker, and Msg-ID correlation.

A query is a publish (through the one :class:`~kazoo_amqp.amqp.publisher.Publisher` path) whose
``Msg-ID`` is registered first; the reply queue ``kamailio@<host>-<<sid>-0>`` (bound to
``targeted`` with our Server-ID, declared again on every connect of the control connection)
resolves the waiter carrying the same ``Msg-ID``. A reply that matches no waiter (late, or
foreign) is counted and dropped, or routed to the workers (``late_replies = "route"``).

The reply queue lives on the control connection, so pausing the consume connection for the
workers' back-pressure never delays replies, and a ``connection.blocked`` broker (which only
stops publishes) keeps delivering them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kazoo_amqp.amqp.channel import Delivery
from kazoo_amqp.amqp.consumers import Dispatcher
from kazoo_amqp.amqp.links import Link
from kazoo_amqp.amqp.publisher import Publisher
from kazoo_amqp.core import jsonc
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.message import (
    TARGETED_EXCHANGE,
    augment_received,
    correlation_key,
    reply_queue_name,
    server_id_for,
)
from kazoo_amqp.core.pipe import NO_BINDING, encode_delivery
from kazoo_amqp.errors import BadPayload, QueryTimeout, ShuttingDown, UsageError

log = logging.getLogger("kazoo_amqp.replies")


class Replies:
    """The reply queue (an attachment of every link) and the table of waiting queries."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        *,
        dispatcher: Dispatcher | None,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.dispatcher = dispatcher
        self.clock = clock
        #: correlation key (Msg-ID) -> the waiting query's future
        self.pending: dict[str, asyncio.Future[str]] = {}
        self._closing = False
        self.counters: dict[str, int] = {
            "queries": 0,
            "query_timeouts": 0,
            "replies": 0,
            "late_replies": 0,
            "bad_replies": 0,
        }

    # -- attachment -----------------------------------------------------------------------
    async def attach(self, link: Link) -> None:
        """Declare and consume the node's reply queue on a primary-zone link's control."""
        if not link.spec.primary:
            return
        assert link.control is not None
        ch = await link.control.channel()
        host = self.settings.node_hostname
        queue = reply_queue_name(host, link.spec.server_id)
        await ch.exchange_declare(TARGETED_EXCHANGE, "direct")
        await ch.queue_declare(queue, auto_delete=True)
        await ch.queue_bind(queue, TARGETED_EXCHANGE, server_id_for(host, link.spec.server_id))
        sid, zone = link.spec.server_id, link.spec.zone
        await ch.basic_consume(queue, lambda d: self._on_reply(d, sid, zone), no_ack=True)

    def link_changed(self, link: Link) -> None:
        """Nothing to do: a waiting query outlives a reconnect (its reply may come later)."""

    def stop(self) -> None:
        """Fail every waiting query with ``ShuttingDown``."""
        self._closing = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ShuttingDown("the daemon is stopping; the query was abandoned"))
        self.pending.clear()

    # -- queries --------------------------------------------------------------------------
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
        """kazoo_query: publish, then wait for the reply carrying our Msg-ID; return its text.

        Raises:
            QueryTimeout: no reply within ``timeout_ms`` (default ``amqp_query_timeout``).
            UsageError, BadPayload, BadRoutingKey, BufferFull, ShuttingDown: from the publish;
            any final publish failure (refused exchange, nack, return) ends the wait at once.
        """
        return await self.start_query(
            exchange, routing_key, payload, headers, timeout_ms, mandatory=mandatory
        )

    def start_query(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        timeout_ms: int | None = None,
        *,
        mandatory: bool = False,
    ) -> asyncio.Future[str]:
        """Publish a query now and return the future of its reply's text, without waiting
        (``kazoo_async_query`` through the Kamailio bridge; :meth:`query` awaits it).

        The future fails with ``QueryTimeout`` after the timeout, or with the publish's final
        failure. Cancelling it forgets the query. Bad input raises at once (as :meth:`query`).
        """
        if self._closing:
            raise ShuttingDown("the daemon is stopping; query refused")
        if timeout_ms is not None and timeout_ms <= 0:
            raise UsageError(f"timeout_ms = {timeout_ms}: give a positive number of milliseconds")
        timeout = timeout_ms / 1000 if timeout_ms else self.settings.amqp_query_timeout
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()

        def sent(_: dict[str, Any] | None, exc: BaseException | None) -> None:
            if exc is not None and not fut.done():
                fut.set_exception(exc)

        message = self.publisher.prepare(
            exchange,
            routing_key,
            payload,
            headers,
            mandatory=mandatory,
            done=sent,
            timeout=timeout,
        )
        msg_id = message.msg_id
        if msg_id in self.pending:
            raise UsageError(f"a query with Msg-ID {msg_id!r} is already waiting; use unique ids")
        self.publisher.send(message)
        self.pending[msg_id] = fut
        self.counters["queries"] += 1
        started = loop.time()

        def expire() -> None:
            if fut.done():
                return
            self.counters["query_timeouts"] += 1
            fut.set_exception(
                QueryTimeout(
                    f"no reply with Msg-ID {msg_id} to {exchange}/{routing_key} within "
                    f"{timeout * 1000:.0f} ms",
                    msg_id=msg_id,
                    timeout_ms=(loop.time() - started) * 1000,
                )
            )

        timer = loop.call_later(timeout, expire)

        def finished(_: asyncio.Future[str]) -> None:
            timer.cancel()
            if self.pending.get(msg_id) is fut:
                del self.pending[msg_id]

        fut.add_done_callback(finished)
        return fut

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
        route = self.settings.late_replies == "route" and self.dispatcher is not None
        log.info(
            "reply with Msg-ID %r matches no waiting query (late or foreign); %s",
            msg_id,
            "routing it" if route else "dropped",
        )
        if route and self.dispatcher is not None:
            dispatcher = self.dispatcher
            seq = dispatcher.next_seq()
            frame = encode_delivery(
                seq, NO_BINDING, sid, d.redelivered, d.routing_key, d.exchange, d.body
            )
            dispatcher.dispatch(dispatcher.pick(None), seq, frame, None)
