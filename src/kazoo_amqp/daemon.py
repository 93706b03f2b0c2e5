"""The composition root: config -> routes, worker pool, manager, local socket; start and stop.

Start order
    1. import the routes and run ``kazoo:mod-init`` here, once, collecting subscriptions;
    2. listen on ``http_listen`` when set (metrics, health, status page), so a bad address or a
       port in use stops the start before anything else happens;
    3. open the local socket (workers use it for ``kz.publish``/``kz.query``);
    4. start the worker processes;
    5. start the broker links (they declare the subscriptions on every connect);
    6. tell systemd ``READY=1`` (``$NOTIFY_SOCKET``, ``Type=notify``).

SIGHUP reloads the routes file: it is checked first in a separate process (``check-config``),
then the workers are replaced one at a time (``WorkerPool.reload``), so no delivery is lost or
run twice. Subscriptions (``kazoo:mod-init``) and the config file are not reloaded. With
``[kamailio]`` there are no workers and SIGHUP only logs so.

Stop order (first SIGTERM/SIGINT; a second one exits at once)
    1. cancel the consumers: no new deliveries;
    2. let the workers finish what they hold, up to ``shutdown_grace`` s; deliveries still unacked
       go back to the broker when its channel closes;
    3. stop the local socket: finish in-flight requests, fail the rest with ``ShuttingDown``;
    4. fail waiting queries with ``ShuttingDown``, close the broker connections;
    5. close the presence writer, then the HTTP listener; exit 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import inspect
import logging
import os
import signal
import sys
from typing import Any

from kazoo_amqp import __version__
from kazoo_amqp.amqp.manager import Manager
from kazoo_amqp.amqp.publisher import Outgoing
from kazoo_amqp.core import jsonc
from kazoo_amqp.core.broker_url import BrokerSpec
from kazoo_amqp.core.config import Settings
from kazoo_amqp.core.message import connection_event_text, publish_failed_body
from kazoo_amqp.core.pipe import encode_event, encode_named_event
from kazoo_amqp.core.route_names import MOD_INIT, PUBLISH_FAILED
from kazoo_amqp.core.stats import Recorder
from kazoo_amqp.core.subscription import (
    AckMode,
    Subscription,
    parse_subscription,
    subscription_from_args,
)
from kazoo_amqp.errors import ConfigError, KazooError, UsageError
from kazoo_amqp.ipc.server import IpcServer
from kazoo_amqp.kamailio_sink.sink import KamailioSink
from kazoo_amqp.obs import systemd
from kazoo_amqp.obs.service import Observer
from kazoo_amqp.workers.context import Kz
from kazoo_amqp.workers.pool import WorkerPool, default_env
from kazoo_amqp.workers.router import (
    Router,
    find_callback,
    find_router,
    has_router,
    load_routes_module,
)

log = logging.getLogger("kazoo_amqp.daemon")


class ModInitServices:
    """``Kz`` services during ``kazoo:mod-init``: subscribe records, broker calls are refused."""

    def __init__(self, settings: Settings) -> None:
        self.escape_char = settings.json_escape_char
        self.encode_high_bytes = settings.encode_high_bytes
        self.subscriptions: list[Subscription] = []

    def subscribe(self, subscription: Subscription) -> None:
        for warning in getattr(subscription, "warnings", ()):
            log.warning("kazoo:mod-init subscribe: %s", warning)
        self.subscriptions.append(subscription)

    def _refuse(self, *args: Any) -> Any:
        raise UsageError(
            "publish/query are not available in kazoo:mod-init (no broker is connected yet); "
            "do it in event route kazoo:consumer-event-connection-open instead"
        )

    publish = query = pua_publish = _refuse

    async def apublish(self, *args: Any) -> Any:
        return self._refuse()

    async def aquery(self, *args: Any) -> Any:
        return self._refuse()


def run_mod_init(settings: Settings) -> list[Subscription]:
    """Import the routes and run ``kazoo:mod-init`` (or the callback) once; return subscriptions."""
    if not settings.routes:
        log.warning("no 'routes' in the config: nothing is subscribed and no event route runs")
        return []
    module = load_routes_module(settings.routes)
    router: Router = find_router(module)
    if settings.event_callback:
        handler = find_callback(module, settings.event_callback)
    else:
        if not has_router(module):
            raise ConfigError(
                f"routes {settings.routes!r} defines no Router, so no event route would ever "
                "run: add `from kazoo_amqp import Router` and `router = Router()` with "
                "@router.route(...) handlers, or set event_callback to a function of it",
                key="routes",
            )
        if not len(router):
            log.warning(
                "routes %r: its Router has no routes, so nothing is subscribed and no event "
                "route runs; add @router.route('kazoo:mod-init') and event routes",
                settings.routes,
            )
        handler = router.get(MOD_INIT)
    route = settings.event_callback or MOD_INIT
    try:
        subscriptions = mod_init(handler, settings)
    except KazooError as exc:
        raise ConfigError(
            f"{route} in {settings.routes!r} failed: {type(exc).__name__}: {exc}",
            key="routes",
        ) from None
    except (Exception, SystemExit) as exc:
        raise ConfigError(
            f"{route} in {settings.routes!r} raised {type(exc).__name__}: {exc}{_where(exc)}",
            key="routes",
        ) from None
    log.info("kazoo:mod-init declared %d subscriptions", len(subscriptions))
    return subscriptions


def mod_init(handler: Any, settings: Settings) -> list[Subscription]:
    """Run one ``kazoo:mod-init`` handler (or the event callback) once; return subscriptions.

    Also used by ``kazoo_amqp.testing``, so a test bus declares what the daemon declares.
    """
    services = ModInitServices(settings)
    if handler is not None:
        result = handler(Kz(services, event_name=MOD_INIT))  # type: ignore[arg-type]
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    return services.subscriptions


def _where(exc: BaseException) -> str:
    """`` at routes.py:12`` for the innermost frame of the exception (one line, no traceback)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


async def _await(awaitable: Any) -> None:
    await awaitable


class DaemonBackend:
    """What the local socket serves: the manager, plus presence writes in a writer thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        # The publisher's own method: the socket server calls it once per publish, so no
        # forwarding frame in between (Backend.submit's contract is the manager's).
        self.submit = daemon.manager.submit
        self._presence: Any = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="presence")

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: str | dict[str, Any],
        headers: str | None,
        timeout_ms: int | None,
        *,
        mandatory: bool = False,
    ) -> str:
        return await self.daemon.manager.query(
            exchange, routing_key, payload, headers, timeout_ms, mandatory=mandatory
        )

    async def pua_publish(
        self, payload: str | dict[str, Any], package: str | None
    ) -> dict[str, Any]:
        if self._presence is None:
            from kazoo_amqp.presence.service import PresenceService

            self._presence = PresenceService.from_settings(self.daemon.settings)
        loop = asyncio.get_running_loop()
        result: dict[str, Any] = await loop.run_in_executor(
            self._executor, self._presence.publish, payload, package
        )
        return result

    def async_query(
        self,
        exchange: str,
        routing_key: str,
        payload: str | dict[str, Any],
        headers: str | None,
        timeout_ms: int | None,
        resume: dict[str, Any],
    ) -> dict[str, Any]:
        """A Kamailio ``kazoo_async_query``: published now and answered ``{"accepted": true}``;
        the reply (or the timeout, or a returned query) continues the suspended transaction
        ``resume`` names through the bridge. Bad input raises its typed error at once."""
        sink = self.daemon.sink
        if sink is None:
            raise UsageError(
                "async_query needs the Kamailio bridge: the config has no [kamailio] table "
                "(convert the cfg with kazoo-amqp kamailio-convert)"
            )
        try:
            outcome = self.daemon.manager.start_query(
                exchange, routing_key, payload, headers, timeout_ms, mandatory=True
            )
        except Exception as exc:
            # The caller does not wait for this answer: the transaction goes to its timeout
            # route now, and the error is logged here.
            log.warning(
                "async query to exchange %r routing key %r refused: %s; running %s",
                exchange,
                routing_key,
                exc,
                resume.get("timeout_route"),
            )
            outcome = asyncio.get_running_loop().create_future()
            outcome.set_exception(exc)
            sink.answer_later(outcome, resume)
            raise
        sink.answer_later(outcome, resume)
        return {"accepted": True}

    def status(self) -> dict[str, Any]:
        d = self.daemon
        return {
            "version": __version__,
            "node": d.manager.node,
            "manager": d.manager.status(),
            "workers": d.pool.status(),
            "http": d.observer.server.url if d.observer and d.observer.server.address else None,
        }

    def close(self) -> None:
        if self._presence is not None:
            self._executor.submit(self._presence.close).result(timeout=5)
        self._executor.shutdown(wait=True)


#: Allocations between two young-generation collections (CPython's default is 700).
_GC_GEN0_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Collect cycles less often: per message the daemon allocates a few dozen objects that
    reference counting frees at once (request, payload dict, reply), so the default gen-0
    threshold of 700 runs a collection every few messages for nothing (measured in
    docs/performance.md). Objects built at start (config, routes, modules) are frozen out of
    every later collection."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0_THRESHOLD, gen1, gen2)


class Daemon:
    """Builds and runs everything for one config file."""

    def __init__(
        self, settings: Settings, config_path: str, *, shutdown_grace: float = 10.0
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.shutdown_grace = shutdown_grace
        self.sink: KamailioSink | None = None
        self.pool: WorkerPool | KamailioSink
        self._manager_start: asyncio.Task[None] | None = None
        #: hot-path histograms, only when metrics are served
        self.recorder = Recorder() if settings.http_listen else None
        if settings.kamailio is not None:
            # Events run inside Kamailio; the subscriptions come from its kazoo:mod-init.
            self.subscriptions = []
            self.pool = self.sink = KamailioSink(
                settings.kamailio,
                on_done=self._on_done,
                on_pressure=self._on_pressure,
                event_key=settings.amqp_consumer_event_key,
                event_subkey=settings.amqp_consumer_event_subkey,
                max_redeliveries=settings.max_redeliveries,
                reconnect_min=settings.reconnect_min_ms / 1000,
                reconnect_max=settings.reconnect_max_ms / 1000,
            )
        else:
            self.subscriptions = run_mod_init(settings)
            self.pool = WorkerPool(
                size=settings.workers,
                config_path=config_path,
                on_done=self._on_done,
                on_pressure=self._on_pressure,
                handler_timeout=settings.handler_timeout_ms / 1000,
                max_redeliveries=settings.max_redeliveries,
                env=default_env(),
                handler_stats=self.recorder.handler if self.recorder is not None else None,
            )
        self.manager = Manager(
            settings,
            subscriptions=self.subscriptions,
            dispatcher=self.pool,
            on_event=self._on_connection_event,
            on_failed=self._on_publish_failed,
            recorder=self.recorder,
        )
        self.backend = DaemonBackend(self)
        self.observer = (
            Observer(
                settings.http_listen,
                snapshot=self.backend.status,
                recorder=self.recorder,
                ready=self.not_ready,
                describe=lambda: {"subscriptions": describe_subscriptions(self.subscriptions)},
            )
            if settings.http_listen and self.recorder is not None
            else None
        )
        self.ipc = IpcServer(
            settings.socket,
            self.backend,
            max_frame=settings.max_message_bytes + 65536,
            max_pending_bytes=settings.socket_pending_bytes,
            socket_mode=settings.socket_mode,
            socket_group=settings.socket_group,
        )
        self._stop = asyncio.Event()
        self._stopping = False
        self._started = False
        self._reload: asyncio.Task[None] | None = None

    def _on_done(self, token: Any, outcome: int) -> None:
        self.manager.on_done(token, outcome)

    def _on_pressure(self, paused: bool) -> None:
        log.info(
            "workers %s; %s reading from the brokers",
            "are behind" if paused else "caught up",
            "pausing" if paused else "resuming",
        )
        self.manager.pause_consumers(paused)

    def _on_publish_failed(self, message: Outgoing, error: BaseException) -> None:
        """A publish accepted without a confirm request failed: run ``kazoo:publish-failed``.

        The publisher has already logged and counted it; the route is optional (a worker
        without it reports NO_ROUTE). Nothing is dispatched once the pool is stopping.
        """
        if self._stopping:
            return
        body = publish_failed_body(
            message.doc,
            exchange=message.exchange,
            routing_key=message.routing_key,
            error=type(error).__name__,
            reason=str(error),
        )
        seq = self.pool.next_seq()
        frame = encode_named_event(
            seq, PUBLISH_FAILED, jsonc.dumps(body).encode("utf-8", "surrogatepass")
        )
        self.pool.dispatch(self.pool.pick(None), seq, frame, None)

    def _on_connection_event(self, state: str, spec: BrokerSpec) -> None:
        s = self.settings
        text = connection_event_text(
            key=s.amqp_consumer_event_key,
            subkey=s.amqp_consumer_event_subkey,
            state=state,
            host=spec.host,
            zone=spec.zone,
        )
        seq = self.pool.next_seq()
        frame = encode_event(seq, text.encode())
        self.pool.dispatch(self.pool.pick(None), seq, frame, None)

    def _on_kamailio_subscriptions(self, entries: list[dict[str, Any]]) -> None:
        """Kamailio answered /kazoo/mod-init: declare what it subscribed (at start, and again
        when a restarted Kamailio subscribes differently)."""
        subs: list[Subscription] = []
        for entry in entries:
            try:
                if "args" in entry:
                    subs.append(subscription_from_args(*entry["args"]))
                else:
                    subs.append(parse_subscription(entry.get("json", "")))
            except (KazooError, TypeError) as exc:
                log.error("kazoo_subscribe at %s: %s; skipped", entry.get("where", "?"), exc)
        assert self.sink is not None
        self.sink.bindings = [(sub.event_key, sub.event_subkey) for sub in subs]
        if self._manager_start is None:
            log.info("Kamailio's kazoo:mod-init declared %d subscriptions", len(subs))
            self.subscriptions[:] = subs
            self._manager_start = asyncio.get_running_loop().create_task(self.manager.start())
        elif subs != self.subscriptions:
            log.warning(
                "Kamailio's kazoo:mod-init now declares %d subscriptions (was %d); "
                "reconnecting the consumers",
                len(subs),
                len(self.subscriptions),
            )
            self.subscriptions[:] = subs
            self.manager.replace_subscriptions(self.subscriptions)

    def request_stop(self) -> None:
        self._stop.set()

    def not_ready(self) -> list[str]:
        """Why the daemon is not ready (``/ready``): empty when a primary-zone broker is
        connected and every worker process is up (or being replaced by a reload)."""
        if not self._started:
            return ["starting"]
        reasons: list[str] = []
        if not any(link.up and link.spec.primary for link in self.manager.links):
            reasons.append(f"no primary-zone broker is connected ({self.manager.describe_links()})")
        workers = self.pool.workers if isinstance(self.pool, WorkerPool) else []
        down = [h.index for h in workers if not (h.alive or h.recycling)]
        if down:
            reasons.append(f"worker(s) {', '.join(map(str, down))} not running")
        return reasons

    # -- SIGHUP: reload the routes ---------------------------------------------------------
    def request_reload(self) -> None:
        """Start a routes reload unless one runs or the daemon stops (the SIGHUP handler)."""
        if self._stopping or not self._started:
            return
        if self._reload is not None and not self._reload.done():
            log.warning("SIGHUP: a reload is already running; ignored")
            return
        self._reload = asyncio.get_running_loop().create_task(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Check the routes file in a fresh process, then replace the workers one at a time.

        Returns False (and keeps the running workers) when the check fails, or when events
        run inside Kamailio (``[kamailio]``: there are no workers and no routes file to reload).
        """
        if not isinstance(self.pool, WorkerPool):
            log.warning("SIGHUP: events run inside Kamailio ([kamailio]); nothing to reload")
            return False
        log.info("SIGHUP: checking the routes file %s", self.settings.routes)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kazoo_amqp",
            "check-config",
            "--config",
            self.config_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=default_env(),
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            log.error(
                "SIGHUP: routes not reloaded, the workers keep the old ones; the check said: %s",
                text.strip().splitlines()[-1] if text.strip() else f"exit {proc.returncode}",
            )
            return False
        declared = f"declares {len(self.subscriptions)} subscriptions"
        if self.settings.routes and declared not in text:
            log.warning(
                "SIGHUP: kazoo:mod-init of the new routes declares other subscriptions; "
                "subscriptions only change on a restart"
            )
        systemd.notify("RELOADING=1\nSTATUS=reloading the routes")
        try:
            replaced = await self.pool.reload()
        finally:
            systemd.notify("READY=1\nSTATUS=running")
        log.info("SIGHUP: routes reloaded, %d workers replaced", replaced)
        return True

    async def start(self) -> None:
        for note in getattr(self.settings, "notes", ()):
            log.info("config: %s", note)
        bindings = [(sub.event_key, sub.event_subkey) for sub in self.subscriptions]
        zones = {spec.server_id: spec.zone for spec in self.settings.brokers}
        if self.observer is not None:
            await self.observer.start()
        await self.ipc.start()
        if self.sink is not None:
            self.sink.zones = zones
            await self.sink.start()
            # The brokers are started when Kamailio answered kazoo:mod-init.
            self.sink.watch_mod_init(self._on_kamailio_subscriptions)
            log.info("waiting for Kamailio's bridge at %s", self.sink.bridge.bridge)
        else:
            assert isinstance(self.pool, WorkerPool)
            await self.pool.start(bindings, zones)
            await self.manager.start()
        _tune_gc()
        log.info(
            "kazoo-amqp %s running: node %s, %d workers, socket %s, brokers: %s",
            __version__,
            self.manager.node,
            self.settings.workers,
            self.settings.socket,
            ", ".join(b.redacted for b in self.settings.brokers),
        )
        self._started = True
        systemd.notify(f"READY=1\nSTATUS=running, node {self.manager.node}")

    async def stop(self) -> None:
        log.info("stopping: cancelling consumers")
        self._stopping = True
        systemd.notify("STOPPING=1")
        if self.observer is not None:
            self.observer.stopping = True  # /health and /ready answer 503 from now on
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reload
        await self.manager.stop_consuming()
        leftovers = await self.pool.stop(self.shutdown_grace)
        if leftovers:
            log.warning(
                "%d deliveries were not finished; unacked ones return to the broker", len(leftovers)
            )
        await self.ipc.stop(grace=2.0)
        await self.manager.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.backend.close)
        if self.observer is not None:
            await self.observer.stop()
        log.info("stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals > 1:
                log.warning("second signal: exiting at once")
                raise SystemExit(1)
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, on_signal)
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()
        return 0


def describe_subscriptions(subscriptions: list[Subscription]) -> list[dict[str, Any]]:
    """Subscriptions as rows for the status page (names and options, no arguments)."""
    ack = {
        AckMode.BROKER: "broker (no_ack)",
        AckMode.ON_RECEIPT: "on receipt",
        AckMode.AFTER_HANDLER: "after the route",
    }
    rows: list[dict[str, Any]] = []
    for sub in subscriptions:
        options = []
        if sub.queue.durable:
            options.append("durable")
        if sub.federate:
            options.append("federate")
        if sub.consistent_worker:
            options.append(f"consistent-worker {sub.consistent_worker_key or 'routing key'}")
        if sub.prefetch:
            options.append(f"prefetch {sub.prefetch}")
        rows.append(
            {
                "exchange": sub.exchange.name,
                "type": sub.exchange.type,
                "queue": sub.queue.name,
                "routing_keys": list(sub.routing_keys),
                "ack": ack.get(sub.ack_mode, str(sub.ack_mode)),
                "options": ", ".join(options),
            }
        )
    return rows
