"""The AMQP facade: composes links, publisher, replies and consumers for the daemon and the CLI.

* :mod:`kazoo_amqp.amqp.links` keeps every broker connected and replays declarations;
* :mod:`kazoo_amqp.amqp.publisher` is the one publish path (buffer, confirms, re-sends);
* :mod:`kazoo_amqp.amqp.replies` owns the reply queue and query correlation;
* :mod:`kazoo_amqp.amqp.consumers` declares subscriptions and feeds the :class:`Dispatcher`.

The facade adds no behaviour of its own beyond start/stop order and the awaitable ``publish``
for in-process callers; everything it does is a call into one of those parts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.amqp.consumers import Consumers, Dispatcher
from kazoo_amqp.amqp.links import ConnectFn, EventSink, LinkSupervisor
from kazoo_amqp.amqp.publisher import Done, OnFailed, Publisher
from kazoo_amqp.amqp.replies import Replies
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.message import node_name
from kazoo_amqp.core.subscription import Subscription
from kazoo_amqp.errors import KazooError

__all__ = ["Manager"]

#: how long a graceful stop waits for buffered/unconfirmed publishes to be confirmed
DRAIN_S = 2.0


class Manager:
    """Owns the brokers; publishes, queries and feeds consumed deliveries to the dispatcher."""

    def __init__(
        self,
        settings: Settings,
        *,
        subscriptions: list[Subscription],
        dispatcher: Dispatcher | None,
        on_event: EventSink,
        on_failed: OnFailed | None = None,
        clock: Callable[[], float] = time.time,
        connect: ConnectFn = Connection.connect,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.node = node_name(settings.node_hostname)
        self.supervisor = LinkSupervisor(
            settings,
            node=self.node,
            channel_max=max(settings.amqp_max_channels, len(subscriptions) + 4),
            on_event=on_event,
            connect=connect,
        )
        self.links = self.supervisor.links
        self.publisher = Publisher(
            settings,
            self.links,
            node=self.node,
            on_failed=on_failed,
            clock=monotonic,
            describe_links=self.supervisor.describe,
        )
        self.replies = Replies(settings, self.publisher, dispatcher=dispatcher, clock=clock)
        self.consumers = Consumers(settings, subscriptions, dispatcher)
        # declaration order on every connect: publish channel, reply queue, subscriptions
        self.supervisor.attachments = [self.publisher, self.replies, self.consumers]
        self.submit = self.publisher.submit
        self.query = self.replies.query
        self.start_query = self.replies.start_query
        self.on_done = self.consumers.on_done

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.publisher.start()
        self.supervisor.start()

    async def wait_connected(
        self, timeout: float, *, give_up_when_all_failed: bool = False
    ) -> bool:
        """Wait until a primary-zone broker is connected (one-shot commands, tests).

        A connected broker that blocks publishing counts: publishes wait for it in the buffer.
        """
        return await self.supervisor.wait_for(
            lambda: any(link.up and link.spec.primary for link in self.links),
            timeout,
            give_up=give_up_when_all_failed,
        )

    async def stop_consuming(self) -> None:
        await self.consumers.stop_consuming()

    async def stop(self) -> None:
        """Confirm what can be confirmed (``DRAIN_S``), fail the rest, close every connection."""
        await self.publisher.drain(DRAIN_S)
        self.replies.stop()
        self.consumers.stop()
        await self.publisher.stop()
        await self.supervisor.stop()

    # -- publishing -----------------------------------------------------------------------
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: str | bytes | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
        persistent: bool | None = None,
        confirm: bool = True,
    ) -> dict[str, Any]:
        """kazoo_publish for in-process callers, through :meth:`Publisher.submit`.

        ``confirm=True`` returns ``{"msg_id", "server_id"}`` once the broker confirmed, or
        raises the final error; ``confirm=False`` returns ``{"msg_id"}`` once accepted.
        """
        if not confirm:
            msg_id = self.submit(
                exchange, routing_key, payload, headers, mandatory=mandatory, persistent=persistent
            )
            return {"msg_id": msg_id}
        result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.submit(
            exchange,
            routing_key,
            payload,
            headers,
            mandatory=mandatory,
            persistent=persistent,
            done=_settle(result),
        )
        return await result

    async def publish_batch(
        self, messages: Sequence[dict[str, Any]], *, confirm: bool = True
    ) -> list[dict[str, Any]]:
        """Many publishes through the same path; one ``{"ok", "result"|"error"}`` per message.

        Each message is a mapping with ``exchange``, ``routing_key``, ``payload`` and optional
        ``headers``, ``mandatory``, ``persistent``.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[dict[str, Any]]] = []
        for m in messages:
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            futures.append(fut)
            try:
                msg_id = self.submit(
                    m["exchange"],
                    m["routing_key"],
                    m["payload"],
                    m.get("headers"),
                    mandatory=bool(m.get("mandatory", False)),
                    persistent=m.get("persistent"),
                    done=_settle(fut) if confirm else None,
                )
            except KazooError as exc:
                fut.set_exception(exc)
                continue
            if not confirm:
                fut.set_result({"msg_id": msg_id})
        results: list[dict[str, Any]] = []
        for fut in futures:
            try:
                results.append({"ok": True, "result": await fut})
            except KazooError as exc:
                results.append({"ok": False, "error": exc})
        return results

    # -- consuming ------------------------------------------------------------------------
    def replace_subscriptions(self, subscriptions: list[Subscription]) -> None:
        """Consume ``subscriptions`` from now on (the Kamailio bridge, after Kamailio's
        ``kazoo:mod-init`` answered differently): each connected link's consume connection is
        dropped, so it reconnects and declares the new list (queues of the old list that are
        no longer subscribed stop being consumed; their deliveries in flight are requeued)."""
        self.consumers.subscriptions[:] = subscriptions
        for link in self.links:
            if link.consume is not None and link.consume.is_open:
                link.consume.abort()

    def pause_consumers(self, paused: bool) -> None:
        """Back-pressure from the worker pool: stop or resume reading deliveries."""
        self.consumers.pause(paused, self.links)

    # -- introspection --------------------------------------------------------------------
    @property
    def pending(self) -> dict[str, asyncio.Future[str]]:
        return self.replies.pending

    def describe_links(self) -> str:
        return self.supervisor.describe()

    def status(self) -> dict[str, Any]:
        return {
            "brokers": self.supervisor.status(),
            "pending_queries": len(self.replies.pending),
            "consumers_paused": self.consumers.paused,
            **self.publisher.status(),
            **self.supervisor.counters,
            **self.replies.counters,
            **self.consumers.counters,
        }

    def __repr__(self) -> str:
        up = sum(1 for link in self.links if link.up)
        return (
            f"<Manager {up}/{len(self.links)} brokers up, "
            f"{len(self.replies.pending)} queries waiting>"
        )


def _settle(fut: asyncio.Future[dict[str, Any]]) -> Done:
    def done(value: dict[str, Any] | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        elif value is not None:
            fut.set_result(value)

    return done
