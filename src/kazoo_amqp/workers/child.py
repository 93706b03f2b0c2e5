"""The worker process: reads deliveries from its pipe, runs event routes, reports outcomes.

Started by ``workers.pool`` as ``python -m kazoo_amqp.workers.child --config F --fd N --index I``
with one end of a socketpair. It never touches RabbitMQ: ``kz.publish``/``kz.query`` go through
the daemon's local socket like any other client, and the manager acks after the outcome when the
subscription asks for it.

Rules of the loop:
* a delivery is parsed once (``core.jsonc``), augmented (§6.6), routed (§4.3) and handled;
* a bad body is logged with its identity and reported ``BAD_MESSAGE``, never routed;
* a handler that raises is logged with the message identity and reported ``HANDLER_ERROR``;
* outcomes are written at the end of each batch, and at least every 50 ms during a long batch,
  so the manager can tell a slow handler from a hung one;
* EOF on the pipe (the manager is gone) or a stop frame ends the process.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from kazoo_amqp.core import jsonc, pipe
from kazoo_amqp.core.config import Settings, load_config
from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.message import augment_received
from kazoo_amqp.core.route_names import CONSUMER_EVENT, candidates
from kazoo_amqp.core.subscription import Subscription
from kazoo_amqp.errors import BadPayload, KazooError, UsageError
from kazoo_amqp.workers.context import Kz, Payload
from kazoo_amqp.workers.router import Router, find_callback, find_router, load_routes_module

log = logging.getLogger("kazoo_amqp.worker")

_FLUSH_EVERY = 0.05


class WorkerServices:
    """``Kz`` services inside a worker: the daemon's socket, and the presence writer."""

    def __init__(self, settings: Settings, *, version: str) -> None:
        self.settings = settings
        self.escape_char = settings.json_escape_char
        self.encode_high_bytes = settings.encode_high_bytes
        self._version = version
        self._client: Any = None
        self._aclient: Any = None
        self._presence: Any = None
        self.loop: Any = None
        # Presence writes made while a batch of deliveries runs are committed together at the
        # end of the batch (one short transaction, in order), before those deliveries are acked.
        self.batching = False
        self.current_seq = 0
        self._pending: list[tuple[int, Any]] = []

    def _sync(self) -> Any:
        if self._client is None:
            from kazoo_amqp.ipc.client import Client

            self._client = Client(self.settings.socket, timeout=30.0)
        return self._client

    def _async(self) -> Any:
        if self._aclient is None:
            from kazoo_amqp.ipc.aclient import AsyncClient

            self._aclient = AsyncClient(self.settings.socket)
        return self._aclient

    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None,
        *,
        mandatory: bool = False,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._sync().publish(
            exchange, routing_key, payload, headers, mandatory=mandatory
        )
        return result

    def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None,
        headers: str | None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._sync().query(
            exchange, routing_key, payload, timeout_ms=timeout_ms, headers=headers
        )
        return result

    async def apublish(
        self, exchange: str, routing_key: str, payload: Payload, headers: str | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._async().publish(
            exchange, routing_key, payload, headers
        )
        return result

    async def aquery(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None,
        headers: str | None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._async().query(
            exchange, routing_key, payload, timeout_ms=timeout_ms, headers=headers
        )
        return result

    def subscribe(self, subscription: Subscription) -> None:
        raise UsageError(
            "kz.subscribe() only works in kazoo:mod-init: subscriptions are declared once at "
            "start-up (and re-declared on every reconnect); move the call there"
        )

    def _presence_service(self) -> Any:
        if self._presence is None:
            from kazoo_amqp.presence.service import PresenceService

            self._presence = PresenceService.from_settings(self.settings)
        return self._presence

    def pua_publish(self, payload: Payload, package: str | None) -> dict[str, Any]:
        service = self._presence_service()
        if not self.batching:
            result: dict[str, Any] = service.publish(payload, package)
            return result
        update = service.build(payload, package)
        if update is None:
            return service.publish(payload, package)  # type: ignore[no-any-return]
        self._pending.append((self.current_seq, update))
        return {
            "written": True,
            "package": update.event,
            "presentity": update.presentity_uri,
            "etag": update.etag,
            "expires": update.expires,
            "committed": "end of batch",
        }

    def discard(self, seq: int) -> None:
        """Forget the presence writes of a delivery whose route failed (it is rejected)."""
        if self._pending and self._pending[-1][0] == seq:
            self._pending = [item for item in self._pending if item[0] != seq]

    def flush(self) -> set[int]:
        """Commit the batch's presence writes; return the seqs whose write failed."""
        if not self._pending:
            return set()
        pending, self._pending = self._pending, []
        try:
            self._presence.write([u for _, u in pending])
        except KazooError as exc:
            log.error(
                "presence batch of %d updates failed, their deliveries are rejected: %s",
                len(pending),
                exc,
            )
            return {seq for seq, _ in pending}
        refreshed: set[tuple[str, str]] = set()
        for _, update in pending:
            key = (update.presentity_uri, update.event)
            if key not in refreshed and self._presence.rpc is not None:
                refreshed.add(key)
                self._presence.refresh(update)
        return set()

    def close(self) -> None:
        for obj in (self._client, self._presence):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # pragma: no cover - best effort at exit
                    log.debug("close failed", exc_info=True)


class Worker:
    """One worker's dispatch logic, independent of the pipe (tests drive ``handle_*``)."""

    def __init__(
        self,
        *,
        index: int,
        settings: Settings,
        router: Router,
        callback: Callable[[Any], Any] | None,
        services: WorkerServices,
    ) -> None:
        self.index = index
        self.settings = settings
        self.router = router
        self.callback = callback
        self.services = services
        self.bindings: list[tuple[str | None, str | None]] = []
        self.zones: dict[int, str] = {}
        self.default_key = settings.amqp_consumer_event_key
        self.default_subkey = settings.amqp_consumer_event_subkey
        self.counters = {o.name.lower(): 0 for o in pipe.Outcome}
        self._loop: Any = None  # an asyncio loop, created for the first async route

    # -- one message ------------------------------------------------------------------
    def handle_delivery(self, d: pipe.DeliveryFrame, now: int) -> int:
        self.services.current_seq = d.seq
        try:
            doc = jsonc.loads_object(d.body)
        except BadPayload as exc:
            log.warning(
                "worker %d: dropped message from exchange %r routing key %r (%d bytes): %s",
                self.index,
                d.exchange,
                d.routing_key,
                len(d.body),
                exc,
            )
            return self._count(pipe.Outcome.BAD_MESSAGE)
        augment_received(
            doc,
            zone=self.zones.get(d.server_id, ""),
            server_id=d.server_id,
            now=now,
            render=jsonc.render,
        )
        if d.binding < len(self.bindings):
            bkey, bsub = self.bindings[d.binding]
        else:
            bkey = bsub = None
        return self._run(doc, d.routing_key, d.exchange, d.redelivered, bkey, bsub)

    def handle_event(self, e: pipe.EventFrame) -> int:
        self.services.current_seq = e.seq
        try:
            doc = jsonc.loads_object(e.body)
        except BadPayload as exc:  # pragma: no cover - we build these ourselves
            log.error("worker %d: bad synthetic event: %s", self.index, exc)
            return self._count(pipe.Outcome.BAD_MESSAGE)
        return self._run(doc, None, None, False, None, None, body=e.body.decode())

    def _run(
        self,
        doc: dict[str, Any],
        routing_key: str | None,
        exchange: str | None,
        redelivered: bool,
        binding_key: str | None,
        binding_subkey: str | None,
        body: str | None = None,
    ) -> int:
        if self.callback is not None:
            name, handler = CONSUMER_EVENT, self.callback
        else:
            names = candidates(
                doc,
                key=binding_key or self.default_key,
                subkey=binding_subkey or self.default_subkey,
                binding_key=binding_key,
                binding_subkey=binding_subkey,
            )
            hit = self.router.first(names)
            if hit is None:
                log.debug("worker %d: kazoo:consumer-event not found for %s", self.index, names[0])
                return self._count(pipe.Outcome.NO_ROUTE)
            name, handler = hit
        kz = Kz(
            self.services,
            payload=doc,
            routing_key=routing_key,
            exchange=exchange,
            event_name=name,
            redelivered=redelivered,
            body=body,
        )
        try:
            result = handler(kz)
            if inspect.isawaitable(result):
                self._event_loop().run_until_complete(result)
        except Exception as exc:
            self.services.discard(self.services.current_seq)
            level = logging.WARNING if isinstance(exc, KazooError) else logging.ERROR
            log.log(
                level,
                "worker %d: route %s raised %s: %s (exchange %r, routing key %r, Msg-ID %r)",
                self.index,
                name,
                type(exc).__name__,
                exc,
                exchange,
                routing_key,
                doc.get("Msg-ID"),
                exc_info=not isinstance(exc, KazooError),
            )
            return self._count(pipe.Outcome.HANDLER_ERROR)
        return self._count(pipe.Outcome.DONE)

    def _count(self, outcome: pipe.Outcome) -> int:
        self.counters[outcome.name.lower()] += 1
        return int(outcome)

    def _event_loop(self) -> Any:
        if self._loop is None:
            import asyncio  # only workers with async routes pay for asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self.services.loop = self._loop
        return self._loop

    # -- the pipe loop ----------------------------------------------------------------
    def _send(self, sock: socket.socket, outcomes: list[tuple[int, int]]) -> None:
        failed = self.services.flush()
        if failed:
            error = int(pipe.Outcome.HANDLER_ERROR)
            outcomes = [(seq, error if seq in failed else code) for seq, code in outcomes]
        sock.sendall(pipe.encode_outcomes(outcomes))

    def serve(self, sock: socket.socket) -> None:
        decoder = FrameDecoder()
        self.services.batching = True
        while True:
            try:
                data = sock.recv(1 << 18)
            except InterruptedError:  # pragma: no cover
                continue
            except OSError:
                return
            if not data:
                return
            outcomes: list[tuple[int, int]] = []
            last_flush = time.monotonic()
            now = int(time.time())
            for frame in decoder.feed(data):
                msg = pipe.decode_to_worker(frame)
                if isinstance(msg, pipe.DeliveryFrame):
                    outcomes.append((msg.seq, self.handle_delivery(msg, now)))
                elif isinstance(msg, pipe.EventFrame):
                    outcomes.append((msg.seq, self.handle_event(msg)))
                elif isinstance(msg, pipe.InitFrame):
                    self.bindings, self.zones = msg.bindings, msg.zones
                    continue
                else:
                    if outcomes:
                        self._send(sock, outcomes)
                    return
                mono = time.monotonic()
                if mono - last_flush > _FLUSH_EVERY:
                    self._send(sock, outcomes)
                    outcomes = []
                    last_flush = mono
                    now = int(time.time())
            if outcomes:
                self._send(sock, outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kazoo-amqp-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    # The manager owns shutdown: a Ctrl-C on the terminal must not kill workers mid-handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from kazoo_amqp import __version__

    settings = load_config(args.config, default_app_version=__version__)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format=f"%(asctime)s worker-{args.index}[{os.getpid()}] %(levelname)s %(name)s: "
        "%(message)s",
        stream=sys.stderr,
    )
    router = Router()
    callback = None
    if settings.routes:
        module = load_routes_module(settings.routes)
        router = find_router(module)
        if settings.event_callback:
            callback = find_callback(module, settings.event_callback)
    services = WorkerServices(settings, version=__version__)
    worker = Worker(
        index=args.index, settings=settings, router=router, callback=callback, services=services
    )
    sock = socket.socket(fileno=args.fd)
    try:
        worker.serve(sock)
    finally:
        services.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
