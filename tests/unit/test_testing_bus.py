"""``kazoo_amqp.testing.MemoryBus``: routes tested without a broker, on the production worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from kazoo_amqp import QueryTimeout, Router
from kazoo_amqp.errors import MissingField, UsageError
from kazoo_amqp.testing import MemoryBus

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def _router() -> Router:
    router = Router()

    @router.route("kazoo:mod-init")
    def init(kz):  # type: ignore[no-untyped-def]
        kz.subscribe({"exchange": "callevt", "type": "topic", "queue": "q", "routing": "call.*.*",
                      "event_key": "Kind", "event_subkey": "Name"})  # fmt: skip

    @router.route("kazoo:consumer-event-call-status")
    def status(kz):  # type: ignore[no-untyped-def]
        reply = kz.query("callevt", "call.status_req." + kz.encode(kz.json("Call-ID")),
                         {"Call-ID": kz.json("Call-ID")}, timeout_ms=500)  # fmt: skip
        kz.publish("callmgr", "status.out", {"Status": reply["Status"]}, "x-a=1")

    @router.route("kazoo:consumer-event-call")
    def call(kz):  # type: ignore[no-untyped-def]
        raise ValueError("boom")

    return router


def test_delivery_runs_the_route_resolved_from_the_binding_keys() -> None:
    bus = MemoryBus(_router())
    bus.answer("callevt", "call.status_req.*", {"Status": "active"})
    seen = bus.deliver({"Kind": "call", "Name": "status", "Call-ID": "a.b"}, "call.x.y", "callevt")
    assert (seen.route, seen.outcome, seen.error) == ("kazoo:consumer-event-call-status", "done",
                                                      None)  # fmt: skip
    assert seen.subscription is bus.subscriptions[0]
    (q,) = seen.queries
    assert q.request.routing_key == "call.status_req.a%2Eb" and q.reply is not None
    assert q.reply["Status"] == "active" and q.reply["Msg-ID"] == q.request.payload["Msg-ID"]
    (out,) = seen.published
    assert (out.exchange, out.routing_key, out.headers) == ("callmgr", "status.out", {"x-a": "1"})
    assert out.payload["Status"] == "active"
    assert out.payload["Node"] == "kamailio@test.example.net"
    assert out.payload["Server-ID"] == "kamailio@test.example.net-<1>-targeted-0"


def test_query_without_an_answer_times_out_in_the_route() -> None:
    bus = MemoryBus(_router())
    seen = bus.deliver({"Kind": "call", "Name": "status", "Call-ID": "c"}, "call.x.y", "callevt")
    assert seen.outcome == "handler_error" and isinstance(seen.error, QueryTimeout)
    assert seen.queries[0].error is seen.error and not seen.published


def test_fallback_route_error_and_no_route() -> None:
    bus = MemoryBus(_router())
    seen = bus.deliver({"Kind": "call", "Name": "other"}, "call.a.b", "callevt")
    assert seen.route == "kazoo:consumer-event-call" and isinstance(seen.error, ValueError)
    assert bus.deliver({"Kind": "sms"}, "sms", "other").outcome == "no_route"
    assert bus.deliver(b"[1]", "k", "callevt").outcome == "bad_message"


def test_bad_publish_arguments_are_the_clients_typed_errors() -> None:
    router = Router()

    @router.route("kazoo:consumer-event")
    def any_event(kz):  # type: ignore[no-untyped-def]
        kz.publish("ex", "k" * 256, {})

    seen = MemoryBus(router).deliver({}, "k", "ex")
    assert type(seen.error).__name__ == "BadRoutingKey"


def test_example_routes_write_presence_rows() -> None:
    bus = MemoryBus.from_routes(str(EXAMPLES / "routes.py"), clock=lambda: 1_700_000_000)
    assert bus.subscriptions[0].queue.name == "presence-dialog-sbc1.example.net"
    dialog = {"Event-Category": "presence", "Event-Name": "dialog_update", "State": "confirmed",
              "From": "sip:1000@example.net", "From-User": "1000", "From-Realm": "example.net",
              "To": "sip:1001@example.net", "To-User": "1001", "To-Realm": "example.net",
              "Call-ID": "c1", "Direction": "initiator"}  # fmt: skip
    seen = bus.deliver(dialog, "dialog.example%2Enet.c1", "presence")
    assert seen.route == "kazoo:consumer-event-presence-dialog-update", seen.error
    (row,) = seen.presence
    assert (row.event, row.username, row.domain) == ("dialog", "1000", "example.net")
    assert "<state>confirmed</state>" in row.body
    # a route that raises commits nothing (the worker discards its batch writes)
    bad = bus.deliver({**dialog, "From": None}, "dialog.example%2Enet.c1", "presence")
    assert isinstance(bad.error, MissingField) and bad.presence == []
    assert bus.connection_event("open").route == "kazoo:consumer-event-connection-open"


def test_query_asks_the_example_responder() -> None:
    bus = MemoryBus.from_routes(str(EXAMPLES / "authn_responder.py"))
    request = {"Event-Category": "directory", "Event-Name": "authn_req",
               "Auth-User": "alice", "Auth-Realm": "example.net"}  # fmt: skip
    reply = bus.query("registrar", "authn.endpoint.req.example%2Enet", request)
    assert reply["Event-Name"] == "authn_resp" and reply["Auth-Password"] == "s3cret"
    assert reply["Server-ID"].startswith("consumer://1/kamailio@test.example.net")
    err = bus.query("registrar", "authn.req.example%2Enet", {**request, "Auth-User": "x"})
    assert err["Event-Name"] == "authn_err"
    with pytest.raises(QueryTimeout, match="no subscription"):
        bus.query("registrar", "nothing.binds.this", request)
    with pytest.raises(QueryTimeout, match="did not reply"):
        bus.query("registrar", "authn.req.x", {**request, "Event-Name": "other_req"})


def test_returned_value_rules() -> None:
    router = Router()

    @router.route("kazoo:consumer-event-a-b")
    def odd(kz):  # type: ignore[no-untyped-def]
        return ["not", "a", "dict"]

    @router.route("kazoo:consumer-event-a-c")
    def code(kz):  # type: ignore[no-untyped-def]
        return 1  # a Kamailio-style return code is ignored

    @router.route("kazoo:consumer-event-a-d")
    def event_reply(kz):  # type: ignore[no-untyped-def]
        return {"x": 1}  # a reply, but the event is not a query

    bus = MemoryBus(router)
    assert isinstance(bus.deliver({"Event-Category": "a", "Event-Name": "b"}).error, UsageError)
    assert bus.deliver({"Event-Category": "a", "Event-Name": "c"}).outcome == "done"
    seen = bus.deliver({"Event-Category": "a", "Event-Name": "d"})
    assert isinstance(seen.error, UsageError) and "no Server-ID" in str(seen.error)


@pytest.mark.parametrize("presence_call", ["pua_publish_presence", "pua_publish"])
def test_shared_presence_routes_without_a_broker(tmp_path: Path, presence_call: str) -> None:
    """The presence routes the integration and e2e tests run on the daemon, checked here first:
    each package reaches its writer and the rows are what Kamailio will read."""
    from tests.integration.daemon_harness import presence_routes, routes_file

    path = routes_file(tmp_path / "routes.py", presence_routes("presence", "q", presence_call))
    bus = MemoryBus.from_routes(str(path), clock=lambda: 1_700_000_000)
    user = {"From": "sip:1000@example.net", "From-User": "1000", "From-Realm": "example.net",
            "To": "sip:1000@example.net", "To-User": "1000", "To-Realm": "example.net"}  # fmt: skip
    presence = {"Event-Category": "presence", "Event-Name": "update", "Event-Package": "presence",
                "State": "online", "Call-ID": "p1", **user}  # fmt: skip
    mwi = {"Event-Category": "presence", "Event-Name": "mwi_update", "Messages-New": 2,
           "Messages-Saved": 1, "Call-ID": "m1", **user}  # fmt: skip
    seen = [bus.deliver(presence, "update.example%2Enet.p1", "presence"),
            bus.deliver(mwi, "mwi_updates.example%2Enet.1000", "presence")]  # fmt: skip
    assert [s.error for s in seen] == [None, None]
    assert [r.event for s in seen for r in s.presence] == ["presence", "message-summary"]
    assert all(s.subscription is bus.subscriptions[0] for s in seen)
    assert "Messages-Waiting: yes" in seen[1].presence[0].body
