"""The Kamailio bridge end to end: a kamailio.cfg written for the C kazoo module, converted, on
stock Kamailio 5.6 with the kazoo-amqp daemon, RabbitMQ, sipp and test responders (issue 6).

    SIP (UDP, the test / sipp)  <-->  Kamailio 5.6 (converted examples/kamailio/kamailio.cfg +
        kazoo-roles.cfg; python_exec -> kazoo_amqp.kamailio edge module -> daemon socket)
    daemon  --HTTP (xhttp bridge socket)-->  Kamailio routes (events, mod-init, async resumes)
    daemon  <-->  RabbitMQ  <-->  pika (the test plays Kazoo: responders, publishers, queues)

The cfg is ``examples/kamailio/`` with this run's ``#!define`` values, converted at test start by
the real ``kazoo-amqp kamailio-convert`` (a subprocess, as a user runs it); the ``c`` runs take
the same example unconverted, on the C module.

Each module run gets unique exchange names, node name and queue names, free ports, and its own
SQLite presence database; every process is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kamailio.bridge import (
    AUTH_TIMEOUT_MS,
    EXAMPLE,
    REALM,
    Responder,
    SipReply,
    Stack,
    Watcher,
    authn,
    cleanup,
    collector,
    encode,
    free_tcp_port,
    missing,
    publish,
)
from kamailio.harness import free_udp_ports

from tests.e2e.daemon_presence import corpus_payload
from tests.integration.daemon_harness import REPO, pika_connection, unique

pytestmark = [pytest.mark.kamailio, pytest.mark.broker, pytest.mark.timeout(240)]

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["bridge", "c"])
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """The example on the bridge, then the original example on the C module (same tests)."""
    why = missing()
    if why:
        pytest.skip(why)
    s = Stack(tmp_path_factory.mktemp(request.param), request.param)
    s.prepare()
    try:
        s.start_kamailio()
        s.start_daemon()
        yield s
    except BaseException:
        print(s.diagnostics())
        raise
    finally:
        code = s.stop_daemon()
        s.stop_kamailio()
        cleanup(s)
        if code != 0:
            print(s.diagnostics())


@pytest.fixture
def diag(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield stack
    rep = getattr(request.node, "_e2e_rep_call", None)
    if rep is None or rep.failed:
        print(stack.diagnostics())


# --------------------------------------------------------------------------- tests


def test_register_is_challenged_then_authenticated_by_an_async_query(diag: Stack) -> None:
    s = diag
    user = unique("alice")
    key = f"authn.endpoint.req.{encode(REALM)}"
    with (
        Responder(s.ex["registrar"], key, authn({user: "s3cret"})) as r,
        collector(s.ex["registrar"], "registration.success.#") as published,
    ):
        reply = s.register(user, "s3cret")
        assert reply.code == 200, (reply, s.diagnostics())
        assert f"sip:{user}@" in reply.headers.get("contact", ""), reply.headers
        (req,) = [q for q in r.requests if q.get("Auth-User") == user]
        assert req["Event-Name"] == "authn_req" and req["Auth-Realm"] == REALM
        assert req["Node"] == f"kamailio@{s.node}" and req["Msg-ID"] and req["Server-ID"]
        # reg_success went out with the injected fields and the cfg's AMQP headers
        (props, doc), *_ = published(10)
        assert doc["Event-Name"] == "reg_success" and doc["Username"] == user, doc
        assert doc["Node"] == f"kamailio@{s.node}" and doc["App-Name"] and doc["Msg-ID"], doc
        assert props.headers == {"x-kazoo-role": "registrar", "x-node": s.node}, props.headers
    s.assert_no_transaction_lingers()


def test_wrong_password_gets_403(diag: Stack) -> None:
    s = diag
    user = unique("bob")
    key = f"authn.endpoint.req.{encode(REALM)}"
    with Responder(s.ex["registrar"], key, authn({user: "right"})):
        reply = s.register(user, "wrong")
    assert reply.code == 403, (reply, s.diagnostics())


def test_no_responder_runs_the_timeout_route_in_time(diag: Stack) -> None:
    s = diag
    user = unique("carol")
    key = f"authn.endpoint.req.{encode(REALM)}"
    # a queue is bound (the query is routable) but nobody answers
    with Responder(s.ex["registrar"], key, lambda req: None):
        first = s.sip("REGISTER", user=user)
        assert first.code == 401
        s.responder_answers = False
        try:
            reply = s.register(user, "whatever", timeout=AUTH_TIMEOUT_MS / 1000 + 3)
        finally:
            s.responder_answers = True
    assert reply.code == 500 and reply.reason == "Directory Timeout", reply
    assert reply.elapsed < AUTH_TIMEOUT_MS / 1000 + 0.2, reply
    s.assert_no_transaction_lingers()


def test_reg_flush_event_clears_the_cached_password(diag: Stack) -> None:
    s = diag
    user = unique("dave")
    key = f"authn.endpoint.req.{encode(REALM)}"
    with Responder(s.ex["registrar"], key, authn({user: "pw"})) as r:
        assert s.register(user, "pw").code == 200
        assert s.register(user, "pw").code == 200  # from the cache: no second query
        assert len([q for q in r.requests if q.get("Auth-User") == user]) == 1
        got = s.rpc("htable.get", "auth_cache", f"{user}@{REALM}")
        assert got["result"]["item"]["value"] == "pw", got
        publish(s.ex["registrar"], "topic", f"registration.flush.{encode(REALM)}",
                {"Event-Category": "directory", "Event-Name": "reg_flush",
                 "Username": user, "Realm": REALM})  # fmt: skip
        deadline = time.monotonic() + 10
        while "error" not in s.rpc("htable.get", "auth_cache", f"{user}@{REALM}"):
            assert time.monotonic() < deadline, s.diagnostics()
            time.sleep(0.05)
        assert s.register(user, "pw").code == 200  # asks the directory again
        assert len([q for q in r.requests if q.get("Auth-User") == user]) == 2


def test_nodes_event_updates_the_htable_and_reloads_dispatcher(diag: Stack) -> None:
    s = diag
    (s.dir / "dispatcher.list").write_text("1 sip:127.0.0.1:5080\n1 sip:127.0.0.1:5082\n")
    node = unique("media") + "@fs1"
    publish(s.ex["nodes"], "fanout", "", {"Event-Category": "nodes", "Event-Name": "advertise",
                                          "Node": node, "Expires": 15000})  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        got = s.rpc("htable.get", "nodes", node)
        if "result" in got:
            break
        assert time.monotonic() < deadline, s.diagnostics()
        time.sleep(0.05)
    assert str(got["result"]["item"]["value"]) == "15000"
    listing = json.dumps(s.rpc("dispatcher.list"))
    assert "127.0.0.1:5082" in listing, listing


def test_dialog_update_gives_one_notify_at_a_sipp_watcher(diag: Stack) -> None:
    s = diag
    user = unique("1000")
    call_id = f"kzb-{uuid.uuid4().hex}"
    # Expires 0 in the corpus case: C then writes a row that expired already (no body in the
    # NOTIFY); kazoo-amqp reads 0 as "no expiry" (docs/compat.md). A real expiry for both.
    rk, payload = corpus_payload("02-", user=user, realm=REALM, call_id=call_id, Expires=3600)
    # bodies=2: the watcher stays subscribed, so a second NOTIFY would be seen
    with Watcher(s, "dialog", user, REALM, bodies=2, max_notifies=3, recv_timeout=6) as w:  # type: ignore[arg-type]
        w.wait_subscribed(timeout=10)
        publish(s.ex["presence"], "topic", rk, payload)
        bodies = w.wait_notify_bodies(timeout=15, count=1)
        assert len(bodies) == 1, w.diagnostics() + s.diagnostics()
        assert call_id in bodies[0] and "confirmed" in bodies[0], bodies[0]
        time.sleep(1.5)
        assert len(w.wait_notify_bodies(timeout=0, count=2)) == 1, "a second NOTIFY came"


def test_connection_events_reach_their_cfg_route(diag: Stack) -> None:
    s = diag
    deadline = time.monotonic() + 10
    while True:
        got = s.rpc("stats.get_statistics", "kazoo:connections").get("result") or ["= 0"]
        if int(str(got[0]).rpartition("=")[2].strip() or 0) >= 1:
            break
        assert time.monotonic() < deadline, (got, s.diagnostics())
        time.sleep(0.1)
    assert "AMQP connection open to 127.0.0.1 (zone local)" in s.kam_log.read_text()


def test_sync_query_decides_the_invite_reply(diag: Stack) -> None:
    s = diag
    if s.mode == "c":
        pytest.skip("Kamailio 5.6.3's kazoo_query crashes the SIP worker (spec 3.2, PR #4002)")

    def answer(req: dict[str, Any]) -> Any:
        busy = req["Callee"].startswith("busy")
        code, reason = (486, "Busy Here") if busy else (404, "Nobody")
        return {"Event-Category": "call", "Event-Name": "route_check_resp",
                "Code": code, "Reason": reason}  # fmt: skip

    with Responder(s.ex["callmgr"], f"route.check.{encode(REALM)}", answer):
        busy = s.sip("INVITE", user="caller", ruri_user="busy-1")
        other = s.sip("INVITE", user="caller", ruri_user="free-1")
    assert (busy.code, busy.reason) == (486, "Busy Here"), busy
    assert (other.code, other.reason) == (404, "Nobody"), other
    nobody = s.sip("INVITE", user="caller", ruri_user="x", timeout=5)
    assert nobody.code == 503, nobody


def test_events_without_a_route_or_too_large_are_rejected_and_counted(diag: Stack) -> None:
    s = diag
    if s.mode == "c":
        pytest.skip("the C module acks on receipt and drops them")
    before = s.status()["workers"]
    rk = f"registration.flush.{encode(REALM)}"
    publish(s.ex["registrar"], "topic", rk, {"Event-Category": "nobody", "Event-Name": "home"})
    huge = {"Event-Category": "directory", "Event-Name": "reg_flush", "Pad": "x" * 1100000}
    publish(s.ex["registrar"], "topic", rk, huge)
    deadline = time.monotonic() + 10
    while True:
        now = s.status()["workers"]
        if now["no_route"] > before["no_route"] and now["too_large"] > before["too_large"]:
            break
        assert time.monotonic() < deadline, (now, s.diagnostics())
        time.sleep(0.05)
    log = s.daemon_log.read_text()
    assert "no event route for the message from exchange" in log
    assert "over kamailio.max_event_bytes" in log


def test_daemon_and_kamailio_restarts_recover_without_a_manual_step(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    why = missing()
    if why:
        pytest.skip(why)
    s = Stack(tmp_path / "restart")
    s.prepare()
    key = f"authn.endpoint.req.{encode(REALM)}"
    user = unique("erin")
    try:
        # Kamailio first, then the daemon; then restart each side
        s.start_kamailio()
        s.start_daemon()
        with Responder(s.ex["registrar"], key, authn({user: "pw"})):
            assert s.register(user, "pw").code == 200
            assert s.stop_daemon() == 0
            s.start_daemon()
            user2 = user + "-2"
        with Responder(s.ex["registrar"], key, authn({user2: "pw"})):
            assert s.register(user2, "pw").code == 200
        # Kamailio restarts: the daemon notices, asks mod-init again, events keep flowing;
        # one published while Kamailio is down waits in the queue.
        s.stop_kamailio()
        node = unique("media")
        publish(s.ex["nodes"], "fanout", "", {"Event-Category": "nodes", "Event-Name": "advertise",
                                              "Node": node, "Expires": 1000})  # fmt: skip
        time.sleep(0.5)
        s.start_kamailio()
        deadline = time.monotonic() + 20
        while "result" not in s.rpc("htable.get", "nodes", node):
            assert time.monotonic() < deadline, s.diagnostics()
            time.sleep(0.1)
        # The restarted Kamailio's mod-init subscribes differently (its cfg names its queues
        # after MY_NODE, changed here): the daemon follows it without a restart of its own.
        s.stop_kamailio()
        cfg = s.dir / "kamailio.cfg"
        renamed = f"{s.node}b"
        text, n = re.subn(r"^#!define MY_NODE .*$", f"#!define MY_NODE {renamed}",
                          cfg.read_text(), flags=re.M)  # fmt: skip
        assert n == 1
        cfg.write_text(text)
        mod_inits = s.status()["workers"]["mod_inits"]
        s.start_kamailio()
        deadline = time.monotonic() + 20
        while s.status()["workers"]["mod_inits"] <= mod_inits:
            assert time.monotonic() < deadline, s.diagnostics()
            time.sleep(0.1)
        node2 = unique("media")
        conn = pika_connection()
        try:
            while True:  # the consumers were declared again with the new names
                ch = conn.channel()
                try:
                    ch.queue_declare(f"nodes-{renamed}", passive=True)
                    break
                except Exception:
                    assert time.monotonic() < deadline, s.diagnostics()
                    time.sleep(0.1)
            # the old queue is no longer consumed; the new one is
            conn.channel().queue_delete(f"nodes-{s.node}")
            publish(s.ex["nodes"], "fanout", "", {"Event-Category": "nodes",
                                                  "Event-Name": "advertise", "Node": node2,
                                                  "Expires": 1000})  # fmt: skip
            while "result" not in s.rpc("htable.get", "nodes", node2):
                assert time.monotonic() < deadline, s.diagnostics()
                time.sleep(0.1)
            assert "now declares" in s.daemon_log.read_text()
            for q in ("registrar-flush", "presence-dialog", "nodes"):
                conn.channel().queue_delete(f"{q}-{renamed}")
        finally:
            conn.close()
        user3 = user + "-3"
        with Responder(s.ex["registrar"], key, authn({user3: "pw"})):
            assert s.register(user3, "pw").code == 200
    except BaseException:
        print(s.diagnostics())
        raise
    finally:
        s.stop_daemon()
        s.stop_kamailio()
        cleanup(s)


def test_suspended_transactions_reach_their_timeout_route_when_the_daemon_dies(
    tmp_path: Path,
) -> None:
    why = missing()
    if why:
        pytest.skip(why)
    from kazoo_amqp.kamailio.handler import WATCHDOG_GRACE_S

    s = Stack(tmp_path / "watchdog")
    s.prepare()
    key = f"authn.endpoint.req.{encode(REALM)}"
    try:
        s.start_kamailio()
        s.start_daemon()
        replies: list[SipReply] = []
        with Responder(s.ex["registrar"], key, lambda req: None) as r:
            users = [unique("frank") for _ in range(3)]
            threads = [
                threading.Thread(target=lambda u=u: replies.append(s.register(u, "x", 10)))
                for u in users
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 5
            while len(r.requests) < len(users):
                assert time.monotonic() < deadline, s.diagnostics()
                time.sleep(0.02)
            assert s.daemon is not None
            s.daemon.kill()  # no goodbye: the queries die with it
            s.daemon.wait()
            s.daemon = None
            for t in threads:
                t.join(15)
        assert [(x.code, x.reason) for x in replies] == [(500, "Directory Timeout")] * 3, replies
        # the watchdog's entry expires in whole seconds on a timer that ticks every second
        limit = math.ceil(AUTH_TIMEOUT_MS / 1000) + WATCHDOG_GRACE_S + 2.2
        assert all(x.elapsed < limit for x in replies), replies
        s.assert_no_transaction_lingers()
    except BaseException:
        print(s.diagnostics())
        raise
    finally:
        s.stop_daemon()
        s.stop_kamailio()
        cleanup(s)


def test_a_kemi_script_gets_events_and_suspending_queries(tmp_path: Path) -> None:
    why = missing()
    if why:
        pytest.skip(why)
    s = Stack(tmp_path / "kemi", "kemi")
    d = s.dir
    d.mkdir(parents=True)
    for f in (EXAMPLE / "kemi").iterdir():
        shutil.copy(f, d / f.name)
    s.sip_port, s.rpc_port = free_udp_ports(2)
    s.bridge_port = free_tcp_port()
    exchange = s.ex["registrar"]
    cfg = (d / "kamailio.cfg").read_text()
    for name, value in {
        "BRIDGE_LISTEN": f"tcp:127.0.0.1:{s.bridge_port}",
        "SIP_LISTEN": f"udp:127.0.0.1:{s.sip_port}",
        "RPC_SOCKET": f'"udp:127.0.0.1:{s.rpc_port}"',
        "KEMI_SCRIPT": f'"{d}/kazoo_kemi.py"',
    }.items():
        cfg, n = re.subn(rf"^#!define {name} .*$", f"#!define {name} {value}", cfg, flags=re.M)
        assert n == 1, name
    (d / "kamailio.cfg").write_text(cfg.replace("log_stderror=no", "log_stderror=yes"))
    script = (d / "kazoo_kemi.py").read_text()
    constants = {"SRC_DIR": repr(str(REPO / "src")), "EXCHANGE": repr(exchange),
                 "NODE": repr(s.node), "BRIDGE_PORT": str(s.bridge_port)}  # fmt: skip
    for name, value in constants.items():
        script, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", script, flags=re.M)
        assert n == 1, name
    (d / "kazoo_kemi.py").write_text(script)
    toml = (d / "kazoo-amqp.toml").read_text().replace("5091", str(s.bridge_port))
    (d / "kazoo-amqp.toml").write_text(toml.replace("kamailio1.example.net", s.node))
    try:
        s.start_kamailio()
        s.start_daemon()
        with Responder(exchange, "kemi.ask", lambda q: {"Say": "hello " + q["Question"]}):
            answered = s.sip("MESSAGE", user="kemi")
        assert (answered.code, answered.reason) == (200, "hello "), answered
        with Responder(exchange, "kemi.ask", lambda q: None):
            silent = s.sip("MESSAGE", user="kemi")
        assert silent.code == 504 and silent.elapsed < 1.2, silent
        publish(exchange, "topic", "kemi.note.x", {"Event-Category": "kemi",
                                                   "Event-Name": "note", "Key": "k1",
                                                   "Value": "v1"})  # fmt: skip
        deadline = time.monotonic() + 10
        while "result" not in (got := s.rpc("htable.get", "notes", "k1")):
            assert time.monotonic() < deadline, s.diagnostics()
            time.sleep(0.05)
        assert got["result"]["item"]["value"] == "v1"
        s.assert_no_transaction_lingers()
    except BaseException:
        print(s.diagnostics())
        raise
    finally:
        s.stop_daemon()
        s.stop_kamailio()
        cleanup(s)
        with contextlib.suppress(Exception):
            conn = pika_connection()
            conn.channel().queue_delete(f"kemi-notes-{s.node}")
            conn.close()
