"""The composition root of one worker process.

Started by ``workers.pool`` as ``python -m kazoo_amqp.worker_main --config F --fd N --index I``
with one end of a socketpair. It loads the config and the routes, builds the ``Kz`` services of a
worker (the daemon's local socket for ``kz.publish``/``kz.query``, a presentity writer for
``kz.pua_publish*``) and hands them to ``workers.child.Worker``, which runs the pipe loop. Like
``daemon.py`` it is the only place that wires I/O packages together; ``workers`` itself knows
neither the socket client nor the database.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any

from kazoo_amqp.core.config import Settings, load_config
from kazoo_amqp.core.subscription import Subscription
from kazoo_amqp.errors import KazooError, UsageError
from kazoo_amqp.workers.child import Worker
from kazoo_amqp.workers.context import Payload
from kazoo_amqp.workers.router import Router, find_callback, find_router, load_routes_module

log = logging.getLogger("kazoo_amqp.worker")


class SocketServices:
    """``Kz`` services inside a worker process: the daemon's socket and a presentity writer."""

    def __init__(self, settings: Settings, *, version: str) -> None:
        self.settings = settings
        self.escape_char = settings.json_escape_char
        self.encode_high_bytes = settings.encode_high_bytes
        # the fields a reply's Event-Category / Event-Name defaults go to (Kz.reply)
        self.event_key = settings.amqp_consumer_event_key
        self.event_subkey = settings.amqp_consumer_event_subkey
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
        confirm: bool = False,
        persistent: bool | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._sync().publish(
            exchange,
            routing_key,
            payload,
            headers,
            mandatory=mandatory,
            confirm=confirm,
            persistent=persistent,
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
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None,
        *,
        confirm: bool = False,
        persistent: bool | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._async().publish(
            exchange, routing_key, payload, headers, confirm=confirm, persistent=persistent
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
    services = SocketServices(settings, version=__version__)
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
