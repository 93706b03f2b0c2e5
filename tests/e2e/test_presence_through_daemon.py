"""Kazoo presence updates on RabbitMQ -> the daemon's routes -> Kamailio -> NOTIFY at a watcher.

The whole path of the C module's presence role, with nothing faked:

    pika (plays Kazoo) --AMQP--> RabbitMQ --> kazoo-amqp daemon (worker runs the event route)
        --> kz.pua_publish_* writes the presentity row in Kamailio's SQLite DB
        --> presence.refreshWatchers over jsonrpcs --> Kamailio 5.6 --> NOTIFY --> SIPp watcher

Payloads are the corpus shapes (``shared/corpus/0[1-8]*.json``) re-targeted at the watcher's
presentity ``sip:1000@example.net``. Each test starts its own Kamailio (fixture) and daemon,
bounds every wait, and stops everything it started.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kamailio.harness import KamailioPresence, Watcher

from tests.e2e.daemon_presence import (
    DIALOG_ROUTE,
    MWI_ROUTE,
    PRESENCE_ROUTE,
    BurstWatcher,
    PresenceDaemon,
    corpus_payload,
    presence_daemon,
)

pytestmark = [pytest.mark.kamailio, pytest.mark.broker, pytest.mark.timeout(120)]

USER = "1000"
DOMAIN = "example.net"
URI = f"sip:{USER}@{DOMAIN}"


@pytest.fixture
def rabbitmq_up() -> None:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")


@pytest.fixture
def pd(
    kamailio_presence: KamailioPresence,
    tmp_path: Path,
    rabbitmq_up: None,
    request: pytest.FixtureRequest,
) -> Iterator[PresenceDaemon]:
    """The daemon in front of the test's Kamailio; stopped (exit code 0) at teardown."""
    d = presence_daemon(kamailio_presence, tmp_path / "daemon")
    try:
        yield d
    finally:
        code = d.daemon.stop()
        rep = getattr(request.node, "_e2e_rep_call", None)
        if rep is None or rep.failed or code != 0:
            print(d.diagnostics())
    assert code == 0, f"daemon exit code {code}:\n{d.daemon.logs()[-3000:]}"


def _subscribed(kam: KamailioPresence, w: Watcher) -> None:
    initial = w.wait_subscribed(timeout=10)
    assert initial.body == "", "no presentity row yet, so the initial NOTIFY has no body"
    kam.wait_watchers(URI, w.event, count=1, timeout=5)


def _route_ok(pd: PresenceDaemon, route: str, count: int) -> list[dict[str, object]]:
    """The route results, each a written row that Kamailio was asked to announce."""
    got = pd.wait_results(count, route=route, timeout=15)
    assert len(got) >= count, pd.diagnostics()
    for e in got:
        assert "error" not in e, pd.diagnostics()
        res = e["result"]
        assert isinstance(res, dict)
        assert res["written"] is True and res["presentity"] == URI, res
        # a worker commits its batch's rows (and refreshes) after the handlers ran, so the
        # handler may see {"committed": "end of batch"} instead of the refresh outcome
        assert res.get("refreshed", True) is True, res
    return got


def _dialog_state(body: str, call_id: str) -> str:
    """The <state> of the dialog with ``call-id``; fails when that dialog is not in the body."""
    m = re.search(
        rf'<dialog\b[^>]*\bcall-id="{re.escape(call_id)}"[^>]*>\s*<state[^>]*>([^<]+)</state>',
        body,
    )
    assert m, f"no dialog with call-id {call_id} in:\n{body}"
    return m.group(1)


# --------------------------------------------------------------------------- dialog (BLF)


def test_dialog_confirmed_reaches_the_watcher(
    kamailio_presence: KamailioPresence, pd: PresenceDaemon
) -> None:
    kam = kamailio_presence
    call_id = f"e2e-{uuid.uuid4().hex}"
    rk, payload = corpus_payload("02-", user=USER, realm=DOMAIN, call_id=call_id)
    assert payload["State"] == "confirmed" and payload["From"] == URI

    with Watcher(kam, "dialog", USER, DOMAIN) as w:
        _subscribed(kam, w)
        pd.publish(rk, payload)

        bodies = w.wait_notify_bodies(timeout=15)
        assert len(bodies) == 1, w.diagnostics() + pd.diagnostics()
        assert w.wait(timeout=30) == 0, w.diagnostics()
    body = bodies[0]
    assert _dialog_state(body, call_id) == "confirmed"
    assert f'entity="{URI}"' in body
    assert 'direction="recipient"' in body
    assert "sip:1001@example.net" in body  # the other party (corpus To)

    notify = w.notifies()[1]
    assert notify.content_type == "application/dialog-info+xml"
    assert notify.header("event") == "dialog"

    (res,) = _route_ok(pd, DIALOG_ROUTE, 1)
    assert res["result"]["package"] == "dialog"  # type: ignore[index]
    assert res["result"]["etag"] == call_id  # type: ignore[index]
    rows = kam.presentity_rows(USER, "dialog")
    assert [(r["etag"], r["domain"]) for r in rows] == [(call_id, DOMAIN)]
    assert rows[0]["expires"] > time.time()  # absolute and in the future: Kamailio serves it


def test_dialog_early_confirmed_terminated_arrive_in_order(
    kamailio_presence: KamailioPresence, pd: PresenceDaemon
) -> None:
    """Three updates of one call published back to back: handled in order, the last NOTIFY
    says terminated.

    consistent-worker on Call-ID sends them to one worker, which handles them in order. A
    worker commits the rows of one batch of deliveries together and refreshes each presentity
    once after the commit, so the watcher sees one to three NOTIFYs depending on how the
    deliveries were batched; whatever it sees must follow the order of the call (a later NOTIFY
    never goes back to an earlier state) and end in ``terminated``.
    """
    kam = kamailio_presence
    call_id = f"e2e-seq-{uuid.uuid4().hex}"
    messages = [
        corpus_payload("01-", user=USER, realm=DOMAIN, call_id=call_id),
        corpus_payload(
            "03-", user=USER, realm=DOMAIN, call_id=call_id, State="confirmed", Expires=0
        ),
        corpus_payload("03-", user=USER, realm=DOMAIN, call_id=call_id),
    ]
    order = ["early", "confirmed", "terminated"]
    assert [p["State"] for _, p in messages] == order

    # the NOTIFYs may come microseconds apart: a watcher that absorbs bursts
    with BurstWatcher(kam, "dialog", USER, DOMAIN, total_timeout=60) as w:
        _subscribed(kam, w)
        pd.publish_many(messages)

        results = _route_ok(pd, DIALOG_ROUTE, 3)
        assert [e["payload"]["State"] for e in results] == order
        assert len({e["pid"] for e in results}) == 1  # one worker handled the whole call

        def states() -> list[str]:
            return [_dialog_state(b, call_id) for b in w.wait_notify_bodies(timeout=0, count=3)]

        deadline = time.monotonic() + 15
        while "terminated" not in states() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # a NOTIFY that overtook would arrive within this
        seen = states()
        diag = w.diagnostics() + pd.diagnostics()
    assert seen and seen[-1] == "terminated", diag
    assert seen == sorted(seen, key=order.index), f"NOTIFYs out of order: {seen}\n{diag}"
    assert len(seen) == len(set(seen)), seen  # each state announced at most once
    # one row per call: the etag is the Call-ID, each update replaced the previous one
    last = w.wait_notify_bodies(timeout=0, count=3)[-1]
    assert len(re.findall(r"<dialog\s", last)) == 1, last
    rows = kam.presentity_rows(USER, "dialog")
    assert len(rows) == 1 and "<state>terminated</state>" in rows[0]["body"], rows
    assert rows[0]["etag"] == call_id


# --------------------------------------------------------------------------- MWI


def test_mwi_update_reaches_the_watcher(
    kamailio_presence: KamailioPresence, pd: PresenceDaemon
) -> None:
    kam = kamailio_presence
    rk, payload = corpus_payload("07-", user=USER, realm=DOMAIN)
    assert rk.startswith("mwi_updates.example%2Enet.")
    assert (payload["Messages-New"], payload["Messages-Saved"]) == (2, 5)

    with Watcher(kam, "message-summary", USER, DOMAIN) as w:
        _subscribed(kam, w)
        pd.publish(rk, payload)
        bodies = w.wait_notify_bodies(timeout=15)
        assert len(bodies) == 1, w.diagnostics() + pd.diagnostics()
        assert w.wait(timeout=30) == 0, w.diagnostics()

    # the corpus' body_exact, re-targeted; byte for byte, CRLFs intact
    assert bodies[0] == (
        f"Messages-Waiting: yes\r\nMessage-Account: {URI}\r\nVoice-Message: 2/5 (0/0)\r\n"
    )
    assert w.notifies()[1].content_type == "application/simple-message-summary"
    (res,) = _route_ok(pd, MWI_ROUTE, 1)
    assert res["result"]["package"] == "message-summary"  # type: ignore[index]


# --------------------------------------------------------------------------- presence


def test_presence_open_then_closed(kamailio_presence: KamailioPresence, pd: PresenceDaemon) -> None:
    kam = kamailio_presence
    # corpus 05: manual presence "confirmed" -> open (On the Phone);
    # corpus 06: probe reply "offline" -> closed
    rk_open, busy = corpus_payload("05-", user=USER, realm=DOMAIN)
    rk_closed, offline = corpus_payload("06-", user=USER, realm=DOMAIN)
    assert rk_open.startswith("update.example%2Enet.")

    with Watcher(kam, "presence", USER, DOMAIN, bodies=2) as w:
        _subscribed(kam, w)
        pd.publish(rk_open, busy)
        first = w.wait_notify_bodies(timeout=15, count=1)
        assert len(first) == 1, w.diagnostics() + pd.diagnostics()

        pd.publish(rk_closed, offline)
        bodies = w.wait_notify_bodies(timeout=15, count=2)
        assert len(bodies) == 2, w.diagnostics() + pd.diagnostics()
        assert w.wait(timeout=30) == 0, w.diagnostics()

    assert "<basic>open</basic>" in bodies[0] and "On the Phone" in bodies[0]
    assert "<basic>closed</basic>" in bodies[1] and "Offline" in bodies[1]
    # presence replaces every row of the presentity: the open tuple is gone
    assert "<basic>open</basic>" not in bodies[1]
    assert f'entity="{URI}"' in bodies[1]
    notifies = w.notifies()
    assert notifies[1].content_type == "application/pidf+xml"
    assert notifies[2].cseq > notifies[1].cseq
    _route_ok(pd, PRESENCE_ROUTE, 2)
    assert len(kam.presentity_rows(USER, "presence")) == 1


# --------------------------------------------------------------------------- db_url forms


def test_kamailio_four_slash_db_url_names_the_same_file(
    kamailio_presence: KamailioPresence, tmp_path: Path
) -> None:
    """Kamailio's ``sqlite:////abs`` and our ``sqlite:///abs`` resolve to the same file."""
    from kazoo_amqp.core.config import load_config
    from kazoo_amqp.presence.dburl import parse_db_url

    kam = kamailio_presence
    assert kam.db_url == f"sqlite:///{kam.db_path}"  # four slashes (db_path is absolute)
    cfg = tmp_path / "four.toml"
    cfg.write_text(f'node_hostname = "t.example.net"\ndb_url = "{kam.db_url}"\n')
    settings = load_config(str(cfg), default_app_version="0")
    assert settings.db_url == f"sqlite://{kam.db_path}"
    assert Path(parse_db_url(settings.db_url).path or "").samefile(str(kam.db_path))
