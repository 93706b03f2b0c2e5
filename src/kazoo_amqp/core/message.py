"""Kazoo message conventions: injected fields, reply addressing, ``consumer://``, augmentation.

Everything here follows the C module's wire conventions (spec §3.1, §6.5, §6.6) and does no I/O:
the caller passes the clock reading and the generated ids.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from kazoo_amqp.core.jsonc import c_atoi, dumps, render
from kazoo_amqp.errors import BadRoutingKey, UsageError

#: Longest routing key AMQP allows (shortstr), and the C module's limit.
MAX_ROUTING_KEY_BYTES = 255

CONSUMER_PREFIX = "consumer://"

#: The exchange replies come back through (a direct exchange, routing key = our Server-ID).
TARGETED_EXCHANGE = "targeted"


def node_name(node_hostname: str) -> str:
    """``Node`` as the C module writes it: ``kamailio@<node_hostname>``."""
    return f"kamailio@{node_hostname}"


def server_id_for(node_hostname: str, server_id: int, index: int = 0) -> str:
    """``Server-ID`` (reply routing key) of broker ``server_id``: ``kamailio@h-<1>-targeted-0``."""
    return f"kamailio@{node_hostname}-<{server_id}>-targeted-{index}"


def reply_queue_name(node_hostname: str, server_id: int, index: int = 0) -> str:
    """The node's reply queue on broker ``server_id``: ``kamailio@h-<1-0>`` (literal ``<>``)."""
    return f"kamailio@{node_hostname}-<{server_id}-{index}>"


def check_text(what: str, text: str, error: type[UsageError] = UsageError) -> bytes:
    """``text`` as UTF-8; ``error`` naming ``what`` (e.g. "exchange name") when it holds a lone
    surrogate or anything else UTF-8 cannot carry (AMQP short and long strings are UTF-8)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{what} {text[:40]!r} is not valid Unicode (a lone surrogate at position "
            f"{exc.start}), so it cannot be sent to the broker as UTF-8: fix the text, e.g. "
            "decode bytes with errors='replace'"
        ) from None


def check_routing_key(routing_key: str) -> bytes:
    """Return the key as UTF-8 bytes, or raise ``BadRoutingKey`` when it is over 255 bytes or
    not valid Unicode."""
    raw = check_text("routing key", routing_key, BadRoutingKey)
    if len(raw) > MAX_ROUTING_KEY_BYTES:
        raise BadRoutingKey(
            f"routing key is {len(raw)} bytes; AMQP allows at most {MAX_ROUTING_KEY_BYTES}: "
            f"shorten it (starts with {routing_key[:40]!r})"
        )
    return raw


def split_consumer_prefix(routing_key: str) -> tuple[int | None, str]:
    """Split ``consumer://<id>/<key>`` into (server id, key); other keys give (None, key).

    Non-numeric id text means server 0, i.e. "the primary zone", as in C (§3.1 step 7). Where C
    silently publishes nothing (no ``/`` after the prefix, or an empty id), this raises
    ``BadRoutingKey`` instead.
    """
    if not routing_key.startswith(CONSUMER_PREFIX):
        return None, routing_key
    rest = routing_key[len(CONSUMER_PREFIX) :]
    slash = rest.find("/")
    if slash <= 0:
        raise BadRoutingKey(
            f"routing key {routing_key!r} has a consumer:// prefix without '<server id>/': "
            "write consumer://<id>/<routing key>, e.g. the Server-ID of a received message"
        )
    id_text, key = rest[:slash], rest[slash + 1 :]
    return c_atoi(id_text), key


def correlation_key(msg_id: Any) -> str:
    """The text a Msg-ID is correlated on: strings as they are, other values as json-c renders
    them (so a numeric Msg-ID echoed back by the replier still matches)."""
    return msg_id if isinstance(msg_id, str) else render(msg_id)


def reply_to(request: Mapping[str, Any]) -> tuple[str, str]:
    """The routing key (the request's ``Server-ID``) and ``Msg-ID`` a reply to ``request`` needs.

    ``Server-ID`` is used as it is: after the receive rewrite (§6.6) it is
    ``consumer://<sid>/<requester's Server-ID>``, which the publisher turns into "publish on
    broker <sid> with the requester's key", so the reply leaves through the broker the request
    came from, like a Kamailio script's ``kazoo_publish("targeted", $(kzE{kz.json,Server-ID}),
    reply)``. Any form of the requester's id works (the C module's
    ``kamailio@host-<1>-targeted-0``, the 2600hz listener's queue name, a Kazoo app's queue).

    Raises:
        UsageError: the request has no non-empty ``Server-ID`` or no ``Msg-ID``; it is not a
            query, so there is nobody to answer.
    """
    missing = [name for name in ("Server-ID", "Msg-ID") if request.get(name) in (None, "")]
    if missing:
        raise UsageError(
            f"cannot reply: the message being handled has no {' and no '.join(missing)} "
            "(only a query carries them: Server-ID says where the answer goes, Msg-ID lets the "
            "requester match it); publish with kz.publish instead, or reply only from routes "
            "that handle queries"
        )
    server_id = request["Server-ID"]
    key = server_id if isinstance(server_id, str) else render(server_id)
    return key, correlation_key(request["Msg-ID"])


def reply_name(request_name: str) -> str | None:
    """Kazoo's response name for a request name: ``authn_req`` -> ``authn_resp``, else None."""
    if request_name.endswith("_req"):
        return request_name[: -len("_req")] + "_resp"
    return None


def build_reply(
    request: Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    key: str = "Event-Category",
    subkey: str = "Event-Name",
) -> dict[str, Any]:
    """The reply document for ``request``: ``payload`` plus what a Kazoo responder sets.

    * ``Msg-ID`` is the request's, copied verbatim; a payload carrying a different one is a
      ``UsageError`` (the requester could never match it).
    * ``Event-Category`` (``key``) defaults to the request's, ``Event-Name`` (``subkey``) to
      the Kazoo response name of the request's (``authn_req`` -> ``authn_resp``,
      ``search_req`` -> ``search_resp``) when it ends in ``_req``; values in ``payload`` win.
    * ``App-Name``, ``App-Version``, ``Node`` and our ``Server-ID`` are added by the publish
      path like for any publish.
    """
    _, msg_id = reply_to(request)
    own = payload.get("Msg-ID")
    if own is not None and correlation_key(own) != msg_id:
        raise UsageError(
            f"the reply carries Msg-ID {own!r} but the request's is {msg_id!r}; leave Msg-ID "
            "out of the reply (it is copied from the request)"
        )
    doc: dict[str, Any] = {}
    category = request.get(key)
    if key not in payload and category is not None:
        doc[key] = category
    name = request.get(subkey)
    if subkey not in payload and isinstance(name, str):
        response = reply_name(name)
        if response is not None:
            doc[subkey] = response
    doc.update(payload)
    doc["Msg-ID"] = request["Msg-ID"]
    return doc


def inject_common_fields(
    doc: MutableMapping[str, Any],
    *,
    app_name: str,
    app_version: str,
    node: str,
    msg_id: str,
) -> str:
    """Add ``App-Name``, ``App-Version``, ``Node``, ``Msg-ID`` where absent; return the Msg-ID.

    A key holding JSON null counts as absent and is replaced in place (§3.1 step 6). The returned
    Msg-ID is the one the message carries: the caller's own when it set one, so a query can be
    correlated on it (the C module always waits for its generated id instead).
    """
    for key, value in (("App-Name", app_name), ("App-Version", app_version), ("Node", node)):
        if doc.get(key) is None:
            doc[key] = value
    current = doc.get("Msg-ID")
    if current is None:
        doc["Msg-ID"] = msg_id
        return msg_id
    return correlation_key(current)


def inject_server_id(doc: MutableMapping[str, Any], server_id: str) -> bool:
    """Set ``Server-ID`` when absent (null counts as absent); return whether it was set here."""
    if doc.get("Server-ID") is None:
        doc["Server-ID"] = server_id
        return True
    return False


def augment_received(
    doc: MutableMapping[str, Any],
    *,
    zone: str,
    server_id: int,
    now: int,
    render: Any = str,
) -> None:
    """Apply the receive-side rewrite of §6.6 in place.

    ``AMQP-Broker-Zone`` and ``AMQP-Received`` are added or replaced; a non-empty ``Server-ID``
    moves to the end as ``consumer://<server id>/<old value>``; an empty one is deleted.
    ``render`` turns a non-string Server-ID into text (json-c ``get_string``).
    """
    doc["AMQP-Broker-Zone"] = zone
    doc["AMQP-Received"] = now
    if "Server-ID" in doc:
        old = doc.pop("Server-ID")
        if old is None:
            return
        text = old if isinstance(old, str) else render(old)
        if text:
            doc["Server-ID"] = f"{CONSUMER_PREFIX}{server_id}/{text}"


def connection_event_text(*, key: str, subkey: str, state: str, host: str, zone: str) -> str:
    """The synthetic connection event exactly as the C module writes it ($kzE, §4.4, R-4)."""
    body = connection_event_body(key=key, subkey=subkey, state=state, host=host, zone=zone)
    return "{ " + ", ".join(f"{dumps(k)} : {dumps(v)}" for k, v in body.items()) + " }"


def connection_event_body(
    *, key: str, subkey: str, state: str, host: str, zone: str
) -> dict[str, Any]:
    """The synthetic connection event of §4.4 (``state`` is ``open`` or ``closed``)."""
    return {key: "connection", subkey: state, "host": host, "zone": zone}


def publish_failed_body(
    doc: Mapping[str, Any], *, exchange: str, routing_key: str, error: str, reason: str
) -> dict[str, Any]:
    """The ``kazoo:publish-failed`` event: the message's fields plus why and where it failed.

    ``Error`` is the error class name (``PublishNacked``, ``PublishExpired``, ``BrokerRefused``,
    ``PublishFailed``), ``Reason`` its message; ``Publish-Exchange`` / ``Publish-Routing-Key``
    say where it was going (they replace same-named message fields).
    """
    body = dict(doc)
    body["Error"] = error
    body["Reason"] = reason
    body["Publish-Exchange"] = exchange
    body["Publish-Routing-Key"] = routing_key
    return body
