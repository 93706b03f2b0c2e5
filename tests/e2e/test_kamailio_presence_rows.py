"""A real Kamailio 5.6 serves presentity rows written by an external program.

These tests prove the e2e harness (tests/e2e/kamailio/) without kazoo-amqp:
the test itself plays the external writer -- a plain ``sqlite3`` upsert into
Kamailio's ``presentity`` table, COMMIT, then one UDP JSON-RPC datagram
``presence.refreshWatchers(uri, event, 1)`` -- and a SIPp watcher must receive
a NOTIFY carrying the stored state.  Tests that go through RabbitMQ and the
daemon reuse the same fixtures and ``Watcher``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time

import pytest
from kamailio.harness import KamailioPresence, Notify, Watcher, parse_notify_log

USER = "1000"
DOMAIN = "example.net"
URI = f"sip:{USER}@{DOMAIN}"

DIALOG_CONFIRMED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="7" state="full"'
    f' entity="{URI}">\n'
    '  <dialog id="e2e-call-1" call-id="e2e-call-1@pbx.example.net" local-tag="lt1"'
    ' remote-tag="rt1" direction="recipient">\n'
    "    <state>confirmed</state>\n"
    f"    <local><identity>{URI}</identity></local>\n"
    "    <remote><identity>sip:2002@example.net</identity></remote>\n"
    "  </dialog>\n"
    "</dialog-info>\n"
)

MWI = "Messages-Waiting: yes\r\nVoice-Message: 2/5 (0/1)\r\n"


def pidf(basic: str, note: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{URI}">\n'
        f'  <tuple id="e2e-tuple-1"><status><basic>{basic}</basic></status></tuple>\n'
        f"  <note>{note}</note>\n"
        "</presence>\n"
    )


# ---------------------------------------------------------------- the external writer


def write_row(db_path: str, event: str, body: str, etag: str) -> None:
    """Upsert one presentity row with an ABSOLUTE future expires, and COMMIT."""
    con = sqlite3.connect(db_path, timeout=5)
    try:
        now = int(time.time())
        with con:
            con.execute(
                "INSERT INTO presentity (username, domain, event, etag, expires, received_time,"
                " body, sender, priority) VALUES (?, ?, ?, ?, ?, ?, ?, '', 0)"
                " ON CONFLICT (username, domain, event, etag) DO UPDATE SET"
                " expires = excluded.expires, received_time = excluded.received_time,"
                " body = excluded.body",
                (USER, DOMAIN, event, etag, now + 3600, now, body.encode()),
            )
    finally:
        con.close()


def refresh_watchers(rpc_port: int, event: str) -> dict[str, object]:
    """One JSON-RPC datagram; the reply comes back to this socket's port."""
    req = {
        "jsonrpc": "2.0", "method": "presence.refreshWatchers", "params": [URI, event, 1], "id": 1,
    }  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        s.sendto(json.dumps(req).encode(), ("127.0.0.1", rpc_port))
        reply: dict[str, object] = json.loads(s.recv(65535))
    return reply


def notify_after_write(kam: KamailioPresence, w: Watcher, event: str, body: str, etag: str) -> None:
    assert kam.db_path is not None
    write_row(str(kam.db_path), event, body, etag)
    reply = refresh_watchers(kam.rpc_port, event)
    assert reply.get("result") == {}, reply


def the_notifies(w: Watcher) -> list[Notify]:
    """Wait for SIPp to finish (un-subscribe included) and return every NOTIFY."""
    rc = w.wait(timeout=30)
    assert rc == 0, w.diagnostics()
    return w.notifies()


# ---------------------------------------------------------------- tests


@pytest.mark.kamailio
def test_dialog_row_is_notified(kamailio_presence: KamailioPresence) -> None:
    kam = kamailio_presence
    with Watcher(kam, "dialog", USER, DOMAIN) as w:
        initial = w.wait_subscribed(timeout=10)
        assert initial.body == ""  # no row yet
        assert initial.subscription_state.startswith("active")
        assert [r["presentity_uri"] for r in kam.active_watchers(event="dialog")] == [URI]

        notify_after_write(kam, w, "dialog", DIALOG_CONFIRMED, "e2e-dialog-1")

        bodies = w.wait_notify_bodies(timeout=10)
        assert len(bodies) == 1, w.diagnostics()
        body = bodies[0]
        assert "<state>confirmed</state>" in body
        assert 'id="e2e-call-1"' in body
        assert f'entity="{URI}"' in body
        assert "sip:2002@example.net" in body

        notifies = the_notifies(w)
    refreshed = notifies[1]
    assert refreshed.content_type == "application/dialog-info+xml"
    assert refreshed.header("event") == "dialog"
    assert refreshed.subscription_state.startswith("active")
    # the un-SUBSCRIBE's NOTIFY still carries the state and terminates the subscription
    assert notifies[-1].terminated
    assert "<state>confirmed</state>" in notifies[-1].body
    assert kam.active_watchers() == []


@pytest.mark.kamailio
def test_message_summary_row_is_notified_byte_for_byte(kamailio_presence: KamailioPresence) -> None:
    kam = kamailio_presence
    with Watcher(kam, "message-summary", USER, DOMAIN) as w:
        assert w.wait_subscribed(timeout=10).body == ""
        notify_after_write(kam, w, "message-summary", MWI, "e2e-mwi-1")
        bodies = w.wait_notify_bodies(timeout=10)
        assert bodies == [MWI], w.diagnostics()  # CRLFs intact
        notifies = the_notifies(w)
    assert notifies[1].content_type == "application/simple-message-summary"
    assert "Messages-Waiting: yes" in notifies[1].body
    assert "Voice-Message: 2/5 (0/1)" in notifies[1].body


@pytest.mark.kamailio
def test_presence_rows_open_then_closed(kamailio_presence: KamailioPresence) -> None:
    kam = kamailio_presence
    with Watcher(kam, "presence", USER, DOMAIN, bodies=2) as w:
        assert w.wait_subscribed(timeout=10).body == ""

        notify_after_write(kam, w, "presence", pidf("open", "On the phone"), "e2e-pres-1")
        assert len(w.wait_notify_bodies(timeout=10, count=1)) == 1, w.diagnostics()

        # same etag: the row is replaced, the watcher sees the new state only
        notify_after_write(kam, w, "presence", pidf("closed", "Gone home"), "e2e-pres-1")
        bodies = w.wait_notify_bodies(timeout=10, count=2)
        assert len(bodies) == 2, w.diagnostics()
        notifies = the_notifies(w)

    assert "<basic>open</basic>" in bodies[0]
    assert "On the phone" in bodies[0]
    assert "<basic>closed</basic>" in bodies[1]
    assert "<basic>open</basic>" not in bodies[1]
    assert notifies[1].content_type == "application/pidf+xml"
    assert notifies[2].cseq > notifies[1].cseq


@pytest.mark.kamailio
def test_three_packages_at_once_via_harness_helpers(kamailio_presence: KamailioPresence) -> None:
    """Three watchers at once; rows and refreshes through the harness helpers.

    unsubscribe=False: an un-SUBSCRIBE is a DB write in Kamailio's SIP worker,
    which on SQLite can collide ("database is locked") with the next refresh
    running in the jsonrpcs process.
    """
    kam = kamailio_presence
    events = ("dialog", "message-summary", "presence")
    watchers = [kam.watcher(ev, USER, unsubscribe=False).start() for ev in events]
    try:
        for w in watchers:
            w.wait_subscribed(timeout=10)
        for ev in events:
            assert len(kam.wait_watchers(URI, ev, count=1, timeout=5)) == 1
        kam.write_presentity(USER, "dialog", DIALOG_CONFIRMED)
        kam.write_presentity(USER, "message-summary", MWI)
        kam.write_presentity(USER, "presence", pidf("open", "here"))
        assert {r["event"] for r in kam.presentity_rows(USER)} == set(events)
        for ev in events:
            reply = kam.refresh_watchers(kam.presentity_uri(USER), ev)
            assert reply.get("result") == {}, reply
        got = {w.event: w.wait_notify_bodies(timeout=10) for w in watchers}
        assert "<state>confirmed</state>" in got["dialog"][0]
        assert got["message-summary"] == [MWI]
        assert "<basic>open</basic>" in got["presence"][0]
        for w in watchers:
            assert w.wait(timeout=30) == 0, w.diagnostics()
        assert len(kam.active_watchers()) == 3  # nobody un-subscribed
    finally:
        for w in watchers:
            w.stop()


@pytest.mark.kamailio
@pytest.mark.postgres
def test_postgres_backend(make_kamailio, kamailio_pg_dsn: str) -> None:  # type: ignore[no-untyped-def]
    """Same flow with db_postgres (needs $KAZOO_E2E_PG_DSN; the tables are reset)."""
    kam = make_kamailio(db=kamailio_pg_dsn, name="kamailio-pg")
    with Watcher(kam, "message-summary", USER, DOMAIN) as w:
        w.wait_subscribed(timeout=10)
        assert len(kam.wait_watchers(URI, "message-summary", timeout=5)) == 1
        kam.write_presentity(USER, "message-summary", MWI)
        assert kam.refresh_watchers(URI, "message-summary").get("result") == {}
        assert w.wait_notify_bodies(timeout=10) == [MWI], w.diagnostics()
        assert w.wait(timeout=30) == 0, w.diagnostics()
    assert kam.presentity_rows(USER)[0]["body"] == MWI


@pytest.mark.kamailio
def test_refresh_without_watchers_and_with_a_wrong_type(
    kamailio_presence: KamailioPresence,
) -> None:
    kam = kamailio_presence
    # no watcher: success reply, nothing sent (a {} result proves nothing)
    assert kam.refresh_watchers("sip:9999@example.net", "dialog")["result"] == {}
    # type "1" as a JSON string is read as 0 (authorization refresh) -> 500 for dialog
    reply = kam.rpc("presence.refreshWatchers", [URI, "dialog", "1"])
    assert reply["error"]["code"] == 500


@pytest.mark.kamailio
def test_harness_stops_everything(make_kamailio) -> None:  # type: ignore[no-untyped-def]
    kam = make_kamailio(name="short-lived")
    w = kam.watcher("dialog", USER).start()
    w.wait_subscribed(timeout=10)
    kam_pid, sipp_pid = kam.pid, w.pid
    assert kam_pid is not None and sipp_pid is not None
    kam.stop()  # stops the still-running watcher too
    for pid in (kam_pid, sipp_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", kam.sip_port))  # the SIP port is free again


def test_parse_notify_log() -> None:
    """The log parser keeps CRLFs and uses Content-Length (no Kamailio needed)."""
    msg = (
        b"NOTIFY sip:w@127.0.0.1:5 SIP/2.0\r\nCSeq: 3 NOTIFY\r\n"
        b"Subscription-State: active;expires=300\r\n"
        b"Content-Type: application/simple-message-summary\r\nContent-Length: 20\r\n\r\n"
        b"Messages-Waiting: no\r\n"
    )
    log = (
        b"=== SIPP NOTIFY BEGIN ===\n" + msg + b"\n=== SIPP NOTIFY END ===\n"
        b"=== SIPP NOTIFY BEGIN ===\nNOTIFY sip:w SIP/2.0\r\nContent-Length: 0\r\n\r\n\n"
        b"=== SIPP NOTIFY END ===\n=== SIPP NOTIFY BEGIN ===\npartial"
    )
    ns = parse_notify_log(log)
    assert len(ns) == 2
    assert ns[0].body == "Messages-Waiting: no"
    assert ns[0].cseq == 3 and not ns[0].terminated
    assert ns[0].content_type == "application/simple-message-summary"
    assert ns[1].body == ""
