"""``Kz``: what an event-route handler receives (the script side of the C module).

    kz.payload       the consumed message as a dict ($kzE, parsed once)
    kz.body          its text in json-c spaced form ($kzE), rendered on first use
    kz.routing_key   $kzRK (None for synthetic connection events and mod-init)
    kz.event_name    the route name that matched (or kazoo:consumer-event / kazoo:mod-init)
    kz.publish(...)  kazoo_publish         kz.query(...)   kazoo_query (dict, or QueryTimeout)
    kz.encode(...)   kazoo_encode          kz.json(...)    {kz.json,PATH}
    kz.reply(...)    answer the query being handled (to its Server-ID through ``targeted``,
                     Msg-ID copied); ``await kz.areply(...)`` in ``async def`` routes; a route
                     may also ``return`` a dict to reply (sent after any kz.reply calls)
    kz.subscribe(...)                      only in kazoo:mod-init
    kz.pua_publish(...)                    kazoo_pua_publish and the per-package variants

Everything that talks to the daemon goes through an injected ``Services`` object, so the same
``Kz`` works in a worker process, in ``kazoo:mod-init`` inside the manager, and in tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from kazoo_amqp.core import encode as _encode
from kazoo_amqp.core import jsonc, jsonpath
from kazoo_amqp.core.message import TARGETED_EXCHANGE, build_reply, reply_to
from kazoo_amqp.core.subscription import (
    Subscription,
    parse_subscription,
    subscription_from_args,
)
from kazoo_amqp.errors import UsageError

Payload = Mapping[str, Any] | str | bytes


class Services(Protocol):
    """What ``Kz`` needs from its surroundings."""

    escape_char: str
    encode_high_bytes: str

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
    ) -> dict[str, Any]: ...

    def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None,
        headers: str | None,
    ) -> dict[str, Any]: ...

    async def apublish(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None,
        *,
        confirm: bool = False,
        persistent: bool | None = None,
    ) -> dict[str, Any]: ...

    async def aquery(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None,
        headers: str | None,
    ) -> dict[str, Any]: ...

    def subscribe(self, subscription: Subscription) -> None: ...

    def pua_publish(self, payload: Payload, package: str | None) -> dict[str, Any]: ...


def _publish_options(mandatory: bool, confirm: bool, persistent: bool | None) -> dict[str, Any]:
    """The publish keywords that are set (services written before an option existed still
    work for callers that do not use it)."""
    options: dict[str, Any] = {}
    if mandatory:
        options["mandatory"] = True
    if confirm:
        options["confirm"] = True
    if persistent is not None:
        options["persistent"] = persistent
    return options


class Kz:
    """The per-event context handed to a route handler."""

    __slots__ = (
        "_body",
        "_services",
        "event_name",
        "exchange",
        "payload",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        services: Services,
        *,
        payload: dict[str, Any] | None = None,
        body: str | None = None,
        routing_key: str | None = None,
        exchange: str | None = None,
        event_name: str = "",
        redelivered: bool = False,
    ) -> None:
        self._services = services
        self.payload: dict[str, Any] = payload if payload is not None else {}
        self._body = body
        self.routing_key = routing_key
        self.exchange = exchange
        self.event_name = event_name
        self.redelivered = redelivered

    @property
    def body(self) -> str:
        """The message text ($kzE): json-c spaced serialisation of ``payload``."""
        if self._body is None:
            self._body = jsonc.dumps(self.payload)
        return self._body

    # -- talking to the broker -------------------------------------------------------------
    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None = None,
        *,
        mandatory: bool = False,
        confirm: bool = False,
        persistent: bool | None = None,
    ) -> dict[str, Any]:
        """kazoo_publish: returns ``{"msg_id"}`` once the daemon accepted the message.

        ``confirm=True``: return after the broker's confirm (``{"msg_id", "server_id"}``) or
        raise its typed error. ``mandatory=True``: fail with ``PublishFailed`` when no queue is
        bound for the routing key (seen only with ``confirm=True``; otherwise the daemon logs
        and counts it). ``persistent``: delivery mode 2 (True) or 1 (False); None: the
        daemon's default.
        """
        return self._services.publish(
            exchange,
            routing_key,
            payload,
            headers,
            **_publish_options(mandatory, confirm, persistent),
        )

    def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None = None,
        headers: str | None = None,
    ) -> dict[str, Any]:
        """kazoo_query: the correlated reply as a dict; raises ``QueryTimeout``."""
        return self._services.query(exchange, routing_key, payload, timeout_ms, headers)

    async def apublish(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        headers: str | None = None,
        *,
        confirm: bool = False,
        persistent: bool | None = None,
    ) -> dict[str, Any]:
        """``publish`` for ``async def`` handlers (same ``confirm`` and ``persistent``)."""
        return await self._services.apublish(
            exchange, routing_key, payload, headers, **_publish_options(False, confirm, persistent)
        )

    async def aquery(
        self,
        exchange: str,
        routing_key: str,
        payload: Payload,
        timeout_ms: int | None = None,
        headers: str | None = None,
    ) -> dict[str, Any]:
        """``query`` for ``async def`` handlers."""
        return await self._services.aquery(exchange, routing_key, payload, timeout_ms, headers)

    def subscribe(
        self,
        description: Mapping[str, Any] | str,
        exchange_type: str | None = None,
        queue: str | None = None,
        routing: str | None = None,
    ) -> None:
        """kazoo_subscribe, JSON form ``subscribe({...})`` or ``subscribe(ex, type, queue, rk)``.

        Only valid in ``kazoo:mod-init``; elsewhere raises ``UsageError``.
        """
        if exchange_type is None and queue is None and routing is None:
            sub = parse_subscription(description)
        else:
            if not isinstance(description, str):
                raise UsageError(
                    "subscribe(exchange, type, queue, routing) takes four strings; "
                    "for a description dict call subscribe({...}) alone"
                )
            sub = subscription_from_args(
                description, exchange_type or "", queue or "", routing or ""
            )
        self._services.subscribe(sub)

    # -- answering a query ----------------------------------------------------------------
    def _reply(self, payload: Payload) -> tuple[str, dict[str, Any]]:
        doc = payload if isinstance(payload, Mapping) else jsonc.loads_object(payload)
        key, _ = reply_to(self.payload)
        services = self._services
        return key, build_reply(
            self.payload,
            doc,
            key=getattr(services, "event_key", "Event-Category"),
            subkey=getattr(services, "event_subkey", "Event-Name"),
        )

    def reply(
        self, payload: Payload, headers: str | None = None, *, confirm: bool = False
    ) -> dict[str, Any]:
        """Answer the query being handled, the way Kazoo answers.

        Published to the ``targeted`` exchange with the request's ``Server-ID`` as routing key
        (its ``consumer://<sid>/`` form keeps the reply on the broker the request came from),
        ``Msg-ID`` copied from the request, ``Event-Category`` copied and ``Event-Name``
        derived (``authn_req`` -> ``authn_resp``) unless ``payload`` sets them, and
        ``App-Name``/``App-Version``/``Node``/``Server-ID`` injected like any publish. May be
        called several times (Kazoo's ``search_partial_resp`` ... ``search_resp``). Returns
        what ``publish`` returns.

        Raises:
            UsageError: the message has no ``Server-ID`` or ``Msg-ID`` (it is not a query), or
                ``payload`` carries another ``Msg-ID``; BadPayload: ``payload`` text is not a
                JSON object.
        """
        key, doc = self._reply(payload)
        return self._services.publish(
            TARGETED_EXCHANGE, key, doc, headers, **_publish_options(False, confirm, None)
        )

    async def areply(
        self, payload: Payload, headers: str | None = None, *, confirm: bool = False
    ) -> dict[str, Any]:
        """``reply`` for ``async def`` handlers."""
        key, doc = self._reply(payload)
        return await self._services.apublish(
            TARGETED_EXCHANGE, key, doc, headers, **_publish_options(False, confirm, None)
        )

    # -- presence ------------------------------------------------------------------------------
    def pua_publish(self, payload: Payload | None = None) -> dict[str, Any]:
        """kazoo_pua_publish: dispatch on Event-Name=update and Event-Package."""
        return self._services.pua_publish(self._pick(payload), None)

    def pua_publish_presence(self, payload: Payload | None = None) -> dict[str, Any]:
        return self._services.pua_publish(self._pick(payload), "presence")

    def pua_publish_dialoginfo(self, payload: Payload | None = None) -> dict[str, Any]:
        return self._services.pua_publish(self._pick(payload), "dialog")

    def pua_publish_mwi(self, payload: Payload | None = None) -> dict[str, Any]:
        return self._services.pua_publish(self._pick(payload), "message-summary")

    def _pick(self, payload: Payload | None) -> Payload:
        return self.payload if payload is None else payload

    # -- pure helpers ----------------------------------------------------------------------
    def encode(self, text: str | bytes) -> str:
        """{kz.encode}: routing-key word encoding (output capped like C at ~255 chars)."""
        return _encode.encode(text, high_bytes=self._services.encode_high_bytes)  # type: ignore[arg-type]

    def json(self, source: Any, path: str | None = None) -> str:
        """{kz.json,PATH}: ``kz.json(path)`` reads this message; ``kz.json(doc, path)`` any doc.

        Missing values give ``""`` like the transformation.
        """
        doc, p = (self.payload, source) if path is None else (source, path)
        return jsonpath.kz_json(doc, p, escape=self._services.escape_char)

    def json_count(self, source: Any, path: str | None = None) -> int:
        """{kz.json.count,PATH}."""
        doc, p = (self.payload, source) if path is None else (source, path)
        return jsonpath.kz_json_count(doc, p, escape=self._services.escape_char)

    def json_keys(self, source: Any, path: str | None = None) -> list[str]:
        """kazoo_json_keys: object keys at PATH in document order (``[]`` when not an object)."""
        doc, p = (self.payload, source) if path is None else (source, path)
        return jsonpath.json_keys(doc, p, escape=self._services.escape_char)

    def __repr__(self) -> str:
        return f"<Kz {self.event_name} rk={self.routing_key!r}>"
