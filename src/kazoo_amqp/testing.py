"""An in-memory bus for testing event routes: no broker, no daemon, no database.

    from kazoo_amqp.testing import MemoryBus

    bus = MemoryBus.from_routes("routes.py")             # or MemoryBus(router)
    bus.answer("callevt", "call.status_req.*", {"Status": "active"})   # a fake Kazoo answer
    seen = bus.deliver({"Event-Category": "presence", "Event-Name": "update", ...},
                       routing_key="update.example%2Enet.abc", exchange="presence")
    assert seen.route == "kazoo:consumer-event-presence-update"
    seen.published, seen.queries, seen.replies, seen.presence, seen.error

    reply = bus.query("registrar", "authn.endpoint.req.example%2Enet", {...})  # ask a route

What runs is the production code of a worker process, not a twin of it: the delivery is the
worker's pipe frame (``core.pipe``), parsed and augmented (§6.6), routed (``core.route_names``,
``workers.router``) and handled with the real ``Kz`` by ``workers.child.Worker``; ``kazoo:mod-init``
runs through the daemon's ``mod_init``; ``kz.publish``/``kz.query``/``kz.reply`` go through the
worker's ``SocketServices`` and the client's request builders (``ipc.request``: the same argument
checks and typed errors); presence rows are built by ``core.presence`` through
``presence.service`` and committed at the end of the delivery like a worker's batch (a route that
raises writes nothing). Only the daemon behind the socket is replaced: publishes are validated and
given App-Name/App-Version/Node/Msg-ID/Server-ID with the core functions the publisher uses,
recorded instead of sent, and queries are answered by the answers the test registered.

Differences from a running daemon: one worker, deliveries handled one at a time in the calling
thread; no acks, prefetch, redelivery or worker restarts; a query without a registered answer
raises ``QueryTimeout`` at once instead of after its timeout; broker-side failures
(``PublishFailed``, ``mandatory`` returns, buffering) are not simulated.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo_amqp.core import jsonc
from kazoo_amqp.core.config import Settings, settings_from_mapping
from kazoo_amqp.core.headers import parse_headers
from kazoo_amqp.core.message import (
    TARGETED_EXCHANGE,
    augment_received,
    check_routing_key,
    connection_event_text,
    correlation_key,
    inject_common_fields,
    inject_server_id,
    node_name,
    server_id_for,
    split_consumer_prefix,
)
from kazoo_amqp.core.pipe import NO_BINDING, DeliveryFrame, EventFrame, Outcome
from kazoo_amqp.core.presence.model import PresentityUpdate
from kazoo_amqp.core.route_names import MOD_INIT
from kazoo_amqp.core.subscription import Subscription
from kazoo_amqp.daemon import mod_init
from kazoo_amqp.errors import BadPayload, KazooError, QueryTimeout, UsageError
from kazoo_amqp.ipc import request as rq
from kazoo_amqp.presence.service import PresenceService
from kazoo_amqp.worker_main import SocketServices
from kazoo_amqp.workers.child import Worker
from kazoo_amqp.workers.router import Router, find_callback, find_router, load_routes_module

__all__ = ["Answer", "Delivered", "MemoryBus", "Message", "Query"]

#: A registered answer: the reply dict, a function of the request (dict or None = no answer),
#: or an exception instance to raise from ``kz.query``.
Answer = Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any] | None] | BaseException


@dataclass
class Message:
    """One publish as it would leave for the broker."""

    exchange: str
    routing_key: str  # the key on the wire (a consumer://<id>/ prefix removed)
    payload: dict[str, Any]  # with App-Name, App-Version, Node, Msg-ID, Server-ID
    headers: dict[str, str] = field(default_factory=dict)
    server: int | None = None  # the broker a consumer://<id>/ key asked for
    mandatory: bool = False
    persistent: bool | None = None


@dataclass
class Query:
    """One ``kz.query``: the request as published, and the reply text or the error."""

    request: Message
    reply: dict[str, Any] | None = None
    error: KazooError | None = None


@dataclass
class Delivered:
    """What one delivery (or event) did."""

    route: str | None  # the route that ran; None: no route matched
    outcome: str  # "done", "handler_error", "bad_message" or "no_route"
    error: BaseException | None  # what the route raised
    subscription: Subscription | None  # the mod-init subscription that would receive it
    published: list[Message]  # everything published (replies included)
    queries: list[Query]
    presence: list[PresentityUpdate]  # rows committed (none when the route failed)

    @property
    def replies(self) -> list[Message]:
        """Publishes to the ``targeted`` exchange (``kz.reply`` and returned dicts)."""
        return [m for m in self.published if m.exchange == TARGETED_EXCHANGE]


def _topic_match(pattern: str, key: str) -> bool:
    """RabbitMQ topic matching: ``*`` one word, ``#`` zero or more words."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def _binds(sub: Subscription, exchange: str, routing_key: str) -> bool:
    if sub.exchange.name != exchange:
        return False
    kind = sub.exchange.type
    keys = sub.routing_keys or ("",)
    if kind == "fanout":
        return True
    if kind == "topic":
        return any(_topic_match(k, routing_key) for k in keys)
    return routing_key in keys


class _Writer:
    """The presentity writer of the bus: keeps the rows a batch committed."""

    def __init__(self, rows: list[PresentityUpdate]) -> None:
        self.rows = rows

    def write(self, updates: list[PresentityUpdate]) -> None:
        self.rows.extend(updates)

    def close(self) -> None:
        pass


class _Daemon:
    """What stands behind the socket: validates, injects and records; answers queries."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.node = node_name(settings.node_hostname)
        self.published: list[Message] = []
        self.queries: list[Query] = []
        self.answers: list[tuple[str, str, Answer]] = []

    def prepare(self, fields: Mapping[str, Any]) -> tuple[Message, str]:
        raw = fields["payload"]
        doc = dict(raw) if isinstance(raw, dict) else jsonc.loads_object(raw)
        routing_key = fields["routing_key"]
        check_routing_key(routing_key)
        target, key = split_consumer_prefix(routing_key)
        s = self.settings
        msg_id = inject_common_fields(
            doc,
            app_name=s.app_name,
            app_version=s.app_version,
            node=self.node,
            msg_id=str(uuid.uuid4()),
        )
        inject_server_id(doc, server_id_for(s.node_hostname, target or 1))
        message = Message(
            exchange=fields["exchange"],
            routing_key=key,
            payload=doc,
            headers=dict(parse_headers(fields.get("headers"))),
            server=target,
            mandatory=bool(fields.get("mandatory", False)),
            persistent=fields.get("persistent"),
        )
        return message, msg_id

    def publish(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        message, msg_id = self.prepare(fields)
        self.published.append(message)
        result: dict[str, Any] = {"msg_id": msg_id}
        if fields.get("confirm"):
            result["server_id"] = message.server or 1
        return result

    def query(self, fields: Mapping[str, Any]) -> str:
        message, msg_id = self.prepare(fields)
        record = Query(message)
        self.queries.append(record)
        try:
            reply = self._answer(message)
        except KazooError as exc:
            record.error = exc
            raise
        if reply is None:
            record.error = QueryTimeout(
                f"no reply with Msg-ID {msg_id} to {message.exchange}/{message.routing_key}: "
                "no answer is registered for it (MemoryBus.answer)",
                msg_id=msg_id,
            )
            raise record.error
        doc = dict(reply)
        doc.setdefault("Msg-ID", message.payload["Msg-ID"])
        augment_received(
            doc,
            zone=self.settings.amqp_primary_zone,
            server_id=1,
            now=int(self.clock()),
            render=jsonc.render,
        )
        record.reply = doc
        return jsonc.dumps(doc)

    def _answer(self, message: Message) -> Mapping[str, Any] | None:
        for exchange, pattern, answer in reversed(self.answers):
            if exchange != message.exchange or not _topic_match(pattern, message.routing_key):
                continue
            if isinstance(answer, BaseException):
                raise answer
            if callable(answer):
                return answer(dict(message.payload))
            return answer
        return None


class _Client:
    """``Client`` without the socket: the same request builders, the daemon in memory."""

    def __init__(self, daemon: _Daemon) -> None:
        self._daemon = daemon

    def _run(self, call: rq.Call[Any]) -> Any:
        try:
            json.dumps(call.fields)
        except (TypeError, ValueError) as exc:
            raise BadPayload(f"payload cannot be serialised to JSON: {exc}") from None
        if call.op == "publish":
            return call.finish(self._daemon.publish(call.fields))
        return call.finish(self._daemon.query(call.fields))

    def publish(self, exchange: str, routing_key: str, payload: Any, headers: Any = None,
                **options: Any) -> Any:  # fmt: skip
        return self._run(rq.publish(exchange, routing_key, payload, headers, **options))

    def query(self, exchange: str, routing_key: str, payload: Any, timeout_ms: Any = None,
              headers: Any = None) -> Any:  # fmt: skip
        return self._run(rq.query(exchange, routing_key, payload, timeout_ms, headers))

    def close(self) -> None:
        pass


class _AsyncClient(_Client):
    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        return super().publish(*args, **kwargs)

    async def query(self, *args: Any, **kwargs: Any) -> Any:
        return super().query(*args, **kwargs)


class _Services(SocketServices):
    """The worker's services with the socket clients and the database replaced."""

    def __init__(self, settings: Settings, daemon: _Daemon, rows: list[PresentityUpdate],
                 clock: Callable[[], float]) -> None:  # fmt: skip
        super().__init__(settings, version=settings.app_version)
        self._client = _Client(daemon)
        self._aclient = _AsyncClient(daemon)
        self._presence = PresenceService(
            open_writer=lambda: _Writer(rows),  # type: ignore[arg-type,return-value]
            rpc=None,
            include_entity=settings.pua_include_entity,
            enabled=settings.pua_mode,
            clock=clock,
        )
        self.batching = True


class MemoryBus:
    """Routes of one routes file (or ``Router``) on an in-memory bus; see the module docstring.

    ``config`` holds config-file keys (``amqp_consumer_event_key``, ``pua_mode``,
    ``json_escape_char``, ``app_name``, ...), validated like the file. ``clock`` gives the unix
    time used for ``AMQP-Received`` and presence expiry.
    """

    __test__ = False  # not a pytest test class, whatever a test module imports

    def __init__(
        self,
        router: Router | None = None,
        *,
        callback: Callable[[Any], Any] | None = None,
        node: str = "test.example.net",
        config: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from kazoo_amqp import __version__

        self.settings = settings_from_mapping(
            {"node_hostname": node, **(config or {})},
            base_dir=os.getcwd(),
            default_app_version=__version__,
        )
        self.router = router if router is not None else Router()
        self.clock = clock
        self._daemon = _Daemon(self.settings, clock)
        self.presence: list[PresentityUpdate] = []
        self._services = _Services(self.settings, self._daemon, self.presence, clock)
        self.worker = Worker(
            index=0,
            settings=self.settings,
            router=self.router,
            callback=callback,
            services=self._services,  # type: ignore[arg-type]
        )
        #: what ``kazoo:mod-init`` (or the callback's) subscribed, in order
        self.subscriptions: list[Subscription] = mod_init(
            callback if callback is not None else self.router.get(MOD_INIT), self.settings
        )
        self.worker.bindings = [(s.event_key, s.event_subkey) for s in self.subscriptions]
        self.worker.zones = {b.server_id: b.zone for b in self.settings.brokers}
        self._seq = 0

    @classmethod
    def from_routes(cls, routes: str, **kwargs: Any) -> MemoryBus:
        """The bus for a routes file (``.py`` path) or module, loaded like the daemon loads it.

        ``config={"event_callback": "name"}`` uses that function of the module instead of the
        routes, like the config key.
        """
        module = load_routes_module(routes)
        config = kwargs.get("config") or {}
        name = config.get("event_callback")
        callback = find_callback(module, name) if name else None
        return cls(find_router(module), callback=callback, **kwargs)

    # -- what the test registers -----------------------------------------------------------
    def answer(self, exchange: str, routing_key: str, reply: Answer) -> None:
        """Answer ``kz.query`` calls to ``exchange`` whose key matches ``routing_key`` (a topic
        pattern: ``*`` one word, ``#`` any). The latest registration wins. Without an answer,
        ``kz.query`` raises ``QueryTimeout``."""
        self._daemon.answers.append((exchange, routing_key, reply))

    @property
    def published(self) -> list[Message]:
        """Every publish so far, in order."""
        return list(self._daemon.published)

    # -- driving the routes ------------------------------------------------------------------
    def deliver(
        self,
        payload: Mapping[str, Any] | str | bytes,
        routing_key: str = "",
        exchange: str = "",
        *,
        redelivered: bool = False,
        server_id: int = 1,
    ) -> Delivered:
        """Hand one consumed message to the routes, like a delivery from broker ``server_id``.

        ``payload``: a dict (sent as JSON) or the body text/bytes as it would arrive (a body
        that is not a JSON object gives outcome ``bad_message``).
        """
        body = _body(payload)
        subscription = None
        binding = NO_BINDING
        for index, sub in enumerate(self.subscriptions):
            if _binds(sub, exchange, routing_key):
                subscription, binding = sub, index
                break
        seq = self._next()
        frame = DeliveryFrame(seq, binding, server_id, redelivered, routing_key, exchange, body)
        return self._handle(lambda: self.worker.handle_delivery(frame, int(self.clock())), seq,
                            subscription)  # fmt: skip

    def connection_event(self, state: str = "open", host: str = "127.0.0.1") -> Delivered:
        """The synthetic ``connection`` event (``open`` / ``closed``) the daemon sends."""
        s = self.settings
        text = connection_event_text(
            key=s.amqp_consumer_event_key,
            subkey=s.amqp_consumer_event_subkey,
            state=state,
            host=host,
            zone=s.amqp_primary_zone,
        )
        seq = self._next()
        frame = EventFrame(seq, text.encode())
        return self._handle(lambda: self.worker.handle_event(frame), seq, None)

    def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Mapping[str, Any] | str,
        headers: str | None = None,
    ) -> dict[str, Any]:
        """Ask the routes like another node would: the request gets our Msg-ID and Server-ID,
        is delivered, and the first reply carrying that Msg-ID is returned as the requester
        receives it. Raises ``QueryTimeout`` when no subscription binds the key or no route
        replied, and re-raises what the
        route raised."""
        text = payload if isinstance(payload, str) else dict(payload)
        message, msg_id = self._daemon.prepare(
            {"exchange": exchange, "routing_key": routing_key, "payload": text, "headers": headers}
        )
        if not any(_binds(sub, exchange, message.routing_key) for sub in self.subscriptions):
            raise QueryTimeout(
                f"no reply with Msg-ID {msg_id} to {exchange}/{routing_key}: no subscription "
                "of kazoo:mod-init binds that exchange and key, so no route would receive it",
                msg_id=msg_id,
            )
        seen = self.deliver(message.payload, message.routing_key, exchange)
        if seen.error is not None:
            raise seen.error
        ours = server_id_for(self.settings.node_hostname, 1)
        for reply in seen.replies:
            mid = reply.payload.get("Msg-ID")
            if reply.routing_key == ours and mid is not None and correlation_key(mid) == msg_id:
                doc = dict(reply.payload)
                augment_received(doc, zone=self.settings.amqp_primary_zone, server_id=1,
                                 now=int(self.clock()), render=jsonc.render)  # fmt: skip
                return doc
        raise QueryTimeout(
            f"no reply with Msg-ID {msg_id} to {exchange}/{routing_key}: "
            f"route {seen.route or '(none)'} did not reply (outcome {seen.outcome})",
            msg_id=msg_id,
        )

    # -- internals -------------------------------------------------------------------------
    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _handle(self, run: Callable[[], int], seq: int, sub: Subscription | None) -> Delivered:
        daemon = self._daemon
        start_pub, start_q, start_rows = (
            len(daemon.published),
            len(daemon.queries),
            len(self.presence),
        )
        self._services.current_seq = seq
        code = run()
        ((_, code),) = self.worker.settle([(seq, code)])
        return Delivered(
            route=self.worker.last_route,
            outcome=Outcome(code).name.lower(),
            error=self.worker.last_error,
            subscription=sub,
            published=daemon.published[start_pub:],
            queries=daemon.queries[start_q:],
            presence=self.presence[start_rows:],
        )

    def __repr__(self) -> str:
        return f"<MemoryBus node {self.settings.node_hostname}: {self.router!r}>"


def _body(payload: Mapping[str, Any] | str | bytes) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    if isinstance(payload, Mapping):
        return json.dumps(dict(payload)).encode()
    raise UsageError(f"payload must be a dict, str or bytes, not {type(payload).__name__}")
