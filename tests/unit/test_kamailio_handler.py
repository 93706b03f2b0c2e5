"""The Kamailio edge module (kazoo_amqp.kamailio) against a fake KSR and a fake client.

The real thing runs in tests/e2e/test_kamailio_bridge.py; these pin the call-table semantics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp.errors import BadPayload, NotConnected, QueryTimeout
from kazoo_amqp.kamailio.handler import BridgeHandler


class _Ns:
    def __init__(self, **fns: Any) -> None:
        self.__dict__.update(fns)


class FakeKSR:
    """Enough of KSR: pv, pvx.evalx ($var/$avp substitution), tmx, htable, cfgutils, xhttp."""

    def __init__(self) -> None:
        self.vars: dict[str, Any] = {}
        self.sht: dict[str, Any] = {}
        self.expires: dict[str, int] = {}
        self.routes: dict[str, Any] = {}
        self.ran: list[str] = []
        self.replies: list[tuple[int, str, str, str]] = []
        self.errors: list[str] = []
        self.suspended = 0
        self.pv = _Ns(get=self.vars.get, sets=self._set, seti=self._set, unset=self._unset)
        self.pvx = _Ns(evalx=self._evalx)
        self.tmx = _Ns(t_suspend=self._suspend)
        self.htable = _Ns(
            sht_sets=lambda t, k, v: self.sht.__setitem__(k, v),
            sht_setex=lambda t, k, e: self.expires.__setitem__(k, e),
            sht_is_null=lambda t, k: 1 if k not in self.sht else -1,
            sht_rm=lambda t, k: self.sht.pop(k, None),
        )
        self.cfgutils = _Ns(
            check_route_exists=lambda n: 1 if n in self.routes else -1,
            route_if_exists=self._route,
        )
        self.xhttp = _Ns(xhttp_reply=lambda *a: self.replies.append(a))
        self.err = self.errors.append

    def _set(self, name: str, value: Any) -> int:
        self.vars[name] = value
        return 1

    def _unset(self, name: str) -> int:
        self.vars.pop(name, None)
        return 1

    def _evalx(self, dst: str, fmt: str) -> int:
        self.vars[dst] = re.sub(r"\$(var|avp)\(([^)]+)\)",
                                lambda m: str(self.vars.get(m.group(0), "")), fmt)  # fmt: skip
        return 1

    def _suspend(self) -> int:
        self.suspended += 1
        self.vars["$T(id_index)"] = 42
        self.vars["$T(id_label)"] = 7
        return 1

    def _route(self, name: str) -> int:
        if name not in self.routes:
            return -1
        self.ran.append(name)
        self.routes[name](self)
        return 1


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail: Exception | None = None
        self.reply = '{ "Event-Name": "authn_resp" }'

    def _record(self, op: str, *args: Any, **kw: Any) -> None:
        self.calls.append((op, args, kw))
        if self.fail is not None:
            raise self.fail

    late: list[Exception] = []

    def publish_nowait(self, *args: Any, **kw: Any) -> None:
        self._record("publish", *args, **kw)

    def late_errors(self) -> list[Exception]:
        errors, self.late = self.late, []
        return errors

    def publish(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self._record("publish", *args, **kw)
        return {}

    def query(self, *args: Any, **kw: Any) -> str:
        self._record("query", *args, **kw)
        return self.reply

    def async_query(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self._record("async_query", *args, **kw)
        return {"accepted": True}

    def pua_publish(self, *args: Any, **kw: Any) -> dict[str, Any]:
        self._record("pua_publish", *args, **kw)
        return {}


CALLS = """
[kamailio.calls."kp-1"]
op = "publish"
args = ["callmgr", "reg.success.$var(realm)", "$var(payload)", "a=1;b=$var(realm)"]
where = "roles.cfg:10"

[kamailio.calls."kq-1"]
op = "query"
args = ["callmgr", "q.$var(realm)", "$var(payload)"]
target = "$var(answer)"
where = "roles.cfg:20"

[kamailio.calls."kaq-1"]
op = "async_query"
args = ["registrar", "authn.req", "$var(payload)", "REPLY", "TIMEOUT"]
where = "roles.cfg:30"

[kamailio.calls."ks-1"]
op = "subscribe"
args = ["{'exchange':'presence','queue':'q-$var(realm)'}"]
where = "roles.cfg:40"

[kamailio.calls."ks-2"]
op = "subscribe"
args = ["ex", "topic", "q", "rk.#"]

[kamailio.calls."kpd-1"]
op = "pua_publish_dialoginfo"
args = ["$var(kzE)"]
"""


@pytest.fixture
def env(tmp_path: Path) -> tuple[BridgeHandler, FakeKSR, FakeClient]:
    config = tmp_path / "kazoo-amqp.toml"
    config.write_text(
        'node_hostname = "h"\namqp_query_timeout_sec = 3\n[kamailio]\n'
        'bridge = "127.0.0.1:5091"\n' + CALLS
    )
    ksr, client = FakeKSR(), FakeClient()
    handler = BridgeHandler(str(config), ksr=ksr, client_factory=lambda path: client)
    ksr.vars.update({"$var(realm)": "example.net", "$var(payload)": '{"a": 1}'})
    return handler, ksr, client


def test_publish_expands_every_argument_with_kamailios_format_engine(env: Any) -> None:
    handler, _ksr, client = env
    assert handler.kazoo_call(None, "kp-1") == 1
    assert client.calls == [
        ("publish", ("callmgr", "reg.success.example.net", '{"a": 1}', "a=1;b=example.net"), {})
    ]


def test_a_publish_the_daemon_refused_later_is_logged_at_the_next_call(env: Any) -> None:
    handler, ksr, client = env
    client.late = [BadPayload("payload is not a JSON object")]
    assert handler.kazoo_call(None, "kp-1") == 1
    assert len(ksr.errors) == 1 and "refused an earlier publish" in ksr.errors[0]


def test_a_failed_call_is_one_log_line_and_a_negative_return(env: Any) -> None:
    handler, ksr, client = env
    client.fail = NotConnected("the daemon is not listening")
    assert handler.kazoo_call(None, "kp-1") == -1
    assert len(ksr.errors) == 1 and "roles.cfg:10" in ksr.errors[0]
    assert handler.kazoo_call(None, "nope") == -1
    assert "call table" in ksr.errors[1]


def test_query_sets_kzr_and_the_target_and_takes_the_timeout_avp(env: Any) -> None:
    handler, ksr, client = env
    ksr.vars["$avp(kz_timeout)"] = 800
    assert handler.kazoo_call(None, "kq-1") == 1
    assert ksr.vars["$var(kzR)"] == ksr.vars["$var(answer)"] == client.reply
    assert client.calls[0][2]["timeout_ms"] == 800 and client.calls[0][2]["raw"] is True
    del ksr.vars["$avp(kz_timeout)"]
    handler.kazoo_call(None, "kq-1")
    assert client.calls[1][2]["timeout_ms"] == 3000  # amqp_query_timeout


def test_query_timeout_returns_minus_one_with_kzr_an_empty_string(env: Any) -> None:
    handler, ksr, client = env
    ksr.vars["$var(kzR)"] = "old"
    client.fail = QueryTimeout("no reply", timeout_ms=3000)
    assert handler.kazoo_call(None, "kq-1") == -1
    assert ksr.vars["$var(kzR)"] == ""  # a string, never the 0 an unset $var reads as


def test_async_query_suspends_registers_the_watchdog_and_stops_the_script(env: Any) -> None:
    handler, ksr, client = env
    ksr.vars["$avp(kz_timeout)"] = 2500
    assert handler.kazoo_call(None, "kaq-1") == 0
    assert ksr.suspended == 1
    assert ksr.sht == {"42:7": "TIMEOUT"} and ksr.expires == {"42:7": 3}
    op, args, kw = client.calls[0]
    assert op == "async_query" and args[:3] == ("registrar", "authn.req", '{"a": 1}')
    resume = {"tindex": 42, "tlabel": 7, "reply_route": "REPLY", "timeout_route": "TIMEOUT"}
    assert args[3] == resume
    assert kw == {"timeout_ms": 2500}


def test_async_query_without_the_daemon_lets_the_watchdog_time_out_at_once(env: Any) -> None:
    handler, ksr, client = env
    client.fail = NotConnected("down")
    assert handler.kazoo_call(None, "kaq-1") == 0
    assert ksr.expires["42:7"] == 1 and len(ksr.errors) == 1


def test_subscribe_only_during_mod_init(env: Any) -> None:
    handler, ksr, _client = env
    assert handler.kazoo_call(None, "ks-1") == -1

    def mod_init(k: FakeKSR) -> None:
        handler.kazoo_call(None, "ks-1")
        handler.kazoo_call(None, "ks-2")

    ksr.routes["kazoo:mod-init"] = mod_init
    ksr.vars["$hu"] = "/kazoo/mod-init"
    handler.kazoo_http(None)
    code, _, ctype, body = ksr.replies[-1]
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == [
        {"json": "{'exchange':'presence','queue':'q-example.net'}", "where": "roles.cfg:40"},
        {"args": ["ex", "topic", "q", "rk.#"], "where": ""},
    ]


def test_pua_calls_go_to_the_daemon_with_their_package(env: Any) -> None:
    handler, ksr, client = env
    ksr.vars["$var(kzE)"] = '{"From": "sip:1@x"}'
    assert handler.kazoo_call(None, "kpd-1") == 1
    assert client.calls == [("pua_publish", ('{"From": "sip:1@x"}', "dialog"), {})]


def test_event_runs_the_route_with_kze_and_answers_after_it(env: Any) -> None:
    handler, ksr, _client = env
    seen: list[tuple[Any, Any, int]] = []
    ksr.routes["kazoo:consumer-event-a-b"] = lambda k: seen.append(
        (k.vars.get("$var(kzE)"), k.vars.get("$var(kzRK)"), len(k.replies))
    )
    ksr.vars.update({"$hu": "/kazoo/event", "$rb": '{ "x": 1 }',
                     "$hdr(X-Kazoo-Route)": "kazoo:consumer-event-a-b",
                     "$hdr(X-Kazoo-Routing-Key)": "a.b"})  # fmt: skip
    assert handler.kazoo_http(None) == 1
    assert seen == [('{ "x": 1 }', "a.b", 0)]  # no answer before the route returned
    assert ksr.replies == [(200, "OK", "text/plain", "")]
    assert "$var(kzE)" not in ksr.vars


def test_event_for_a_missing_route_is_404(env: Any) -> None:
    handler, ksr, _client = env
    ksr.vars.update({"$hu": "/kazoo/event", "$hdr(X-Kazoo-Route)": "kazoo:consumer-event-x"})
    handler.kazoo_http(None)
    assert ksr.replies[0][0] == 404 and ksr.ran == []


def test_event_runs_the_first_candidate_route_the_cfg_really_has(env: Any) -> None:
    # kamailio.routes lists routes inside #!ifdef branches not taken too; Kamailio decides.
    handler, ksr, _client = env
    ran: list[str] = []
    ksr.routes["kazoo:consumer-event-a"] = lambda k: ran.append("a")
    wanted = "kazoo:consumer-event-a-b,kazoo:consumer-event-a"
    ksr.vars.update({"$hu": "/kazoo/event", "$rb": "{}", "$hdr(X-Kazoo-Route)": wanted})
    handler.kazoo_http(None)
    handler.kazoo_http(None)  # the existence check is cached per process
    assert ran == ["a", "a"] and [r[0] for r in ksr.replies] == [200, 200]


def test_resume_of_a_timeout_sets_kzr_to_an_empty_string(env: Any) -> None:
    handler, ksr, _client = env
    ksr.sht["42:7"] = "TIMEOUT"
    ksr.vars["$var(kzR)"] = "old"
    ksr.routes["KAZOO_AMQP_RESUME"] = lambda k: None
    ksr.vars.update({"$hu": "/kazoo/resume", "$rb": "", "$hdr(X-Kazoo-TIndex)": "42",
                     "$hdr(X-Kazoo-TLabel)": "7",
                     "$hdr(X-Kazoo-Resume-Route)": "TIMEOUT"})  # fmt: skip
    handler.kazoo_http(None)
    assert ksr.vars["$var(kzR)"] == "" and ksr.vars["$var(kzRN)"] == "TIMEOUT"


def test_resume_continues_into_the_route_once(env: Any) -> None:
    handler, ksr, _client = env
    ksr.sht["42:7"] = "TIMEOUT"
    got: list[Any] = []
    ksr.routes["KAZOO_AMQP_RESUME"] = lambda k: got.append(
        (k.vars["$var(kzTI)"], k.vars["$var(kzTL)"], k.vars["$var(kzRN)"], k.vars["$var(kzR)"])
    )
    ksr.vars.update({"$hu": "/kazoo/resume", "$rb": '{"r": 1}',
                     "$hdr(X-Kazoo-TIndex)": "42", "$hdr(X-Kazoo-TLabel)": "7",
                     "$hdr(X-Kazoo-Resume-Route)": "REPLY"})  # fmt: skip
    handler.kazoo_http(None)
    assert got == [(42, 7, "REPLY", '{"r": 1}')] and ksr.sht == {}
    handler.kazoo_http(None)  # the watchdog's entry is gone: a second resume is refused
    assert [r[0] for r in ksr.replies] == [200, 410] and len(got) == 1
