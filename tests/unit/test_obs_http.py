"""The HTTP listener (obs/http.py, obs/service.py), the collector and systemd notification."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kazoo_amqp.core.stats import Recorder
from kazoo_amqp.errors import ConfigError
from kazoo_amqp.obs import http as obs_http
from kazoo_amqp.obs import systemd
from kazoo_amqp.obs.http import HttpServer, Response
from kazoo_amqp.obs.service import Observer


async def _request(
    port: int, raw: bytes, *, read_timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), read_timeout)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@pytest.fixture
async def server() -> Any:
    calls: list[str] = []

    def hello() -> Response:
        calls.append("hello")
        return Response(200, b"hello\n")

    def broken() -> Response:
        raise RuntimeError("bug")

    srv = HttpServer("127.0.0.1", 0, {"/hello": hello, "/broken": broken}, key="http_listen")
    await srv.start()
    assert srv.address is not None
    srv.calls = calls  # type: ignore[attr-defined]
    yield srv
    await srv.stop()


# (id, raw request, status)
REQUESTS = [
    ("known-path", _get("/hello"), 200),
    ("query-string-ignored", _get("/hello?x=1"), 200),
    ("unknown-path", _get("/nope"), 404),
    ("post-refused", _get("/hello", "POST"), 405),
    ("http-0.9-style", b"GET /hello\r\n\r\n", 400),
    ("garbage", b"\x00\x01\x02 junk\r\n\r\n", 400),
    ("not-http", b"GET /hello SPDY/3\r\n\r\n", 400),
    ("head-too-large", b"GET /hello HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ("handler-raises", _get("/broken"), 500),
]


@pytest.mark.parametrize(("raw", "status"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS])
async def test_requests_get_the_right_status(server: HttpServer, raw: bytes, status: int) -> None:
    assert server.address is not None
    got, headers, _ = await _request(server.address[1], raw)
    assert got == status
    assert headers.get("connection") == "close"


async def test_head_sends_headers_only(server: HttpServer) -> None:
    assert server.address is not None
    status, headers, body = await _request(server.address[1], _get("/hello", "HEAD"))
    assert status == 200
    assert headers["content-length"] == "6"
    assert body == b""


async def test_a_slow_client_gets_408_and_the_loop_keeps_serving(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(obs_http, "HEAD_TIMEOUT_S", 0.3)
    assert server.address is not None
    port = server.address[1]
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_writer.write(b"GET /hel")  # and then nothing
    # meanwhile other clients are served at once
    status, _, body = await _request(port, _get("/hello"))
    assert (status, body) == (200, b"hello\n")
    data = await asyncio.wait_for(slow_reader.read(), 3.0)
    assert data.startswith(b"HTTP/1.1 408 ")
    slow_writer.close()


async def test_a_client_that_goes_away_mid_request_does_no_harm(server: HttpServer) -> None:
    assert server.address is not None
    for _ in range(20):
        _, writer = await asyncio.open_connection("127.0.0.1", server.address[1])
        writer.write(b"GET /hello HT")
        writer.transport.abort()
    status, _, _ = await _request(server.address[1], _get("/hello"))
    assert status == 200
    await asyncio.sleep(0.05)
    assert not server._tasks or len(server._tasks) <= 1


async def test_connections_beyond_the_limit_are_closed(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(obs_http, "MAX_CONNECTIONS", 2)
    assert server.address is not None
    port = server.address[1]
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/hello"))
    assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed without an answer
    assert server.counters["refused"] == 1
    for _, w in idle:
        w.close()


async def test_a_port_in_use_is_a_start_error_naming_the_key() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        srv = HttpServer("127.0.0.1", busy.getsockname()[1], {}, key="http_listen")
        with pytest.raises(ConfigError) as err:
            await srv.start()
        assert err.value.key == "http_listen"
        assert "http_listen" in str(err.value) and "cannot listen" in str(err.value)
    finally:
        busy.close()


async def test_an_address_of_another_host_is_a_start_error() -> None:
    srv = HttpServer("192.0.2.1", 0, {}, key="http_listen")  # TEST-NET-1, not ours
    with pytest.raises(ConfigError, match="http_listen"):
        await srv.start()


# -- the observer over a fake daemon ----------------------------------------------------------
def _status(*, up: bool = True, alive: bool = True) -> dict[str, Any]:
    return {
        "version": "9.9",
        "node": "kamailio@n1",
        "manager": {
            "brokers": [
                {
                    "server_id": 1,
                    "url": "amqp://u:***@b1:5672",
                    "host_port": "b1:5672",
                    "zone": "local",
                    "primary": True,
                    "up": up,
                    "blocked": "",
                    "connects": 3,
                    "disconnects": 2,
                    "blocks": 1,
                    "last_error": "",
                },
            ],
            "accepted": 10,
            "published": 9,
            "publish_failures": {"refused": 1, "expired": 0},
            "buffered_publishes": 4,
            "deliveries": 7,
            "pending_queries": 0,
        },
        "workers": {
            "workers": [{"index": 0, "pid": 1, "alive": alive, "inflight": 2, "restarts": 0}],
            "done": 5,
            "handler_error": 1,
            "inflight": 2,
        },
    }


async def test_metrics_reflect_counters_and_histograms_with_bounded_labels() -> None:
    rec = Recorder()
    rec.confirm.observe(0.002)
    rec.query["ok"].observe(0.001)
    rec.query["timeout"].observe(2.0)
    rec.handler.observe(("kazoo:consumer-event-a-b", "ok"), 0.01)
    obs = Observer("127.0.0.1:0", snapshot=_status, recorder=rec, ready=lambda: [], describe=dict)
    await obs.start()
    try:
        assert obs.server.address is not None
        status, headers, body = await _request(obs.server.address[1], _get("/metrics"))
    finally:
        await obs.stop()
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("kazoo_amqp_publishes_total", ())] == 10
    assert samples[("kazoo_amqp_publish_confirms_total", ())] == 9
    assert samples[("kazoo_amqp_publish_failures_total", (("reason", "refused"),))] == 1
    assert samples[("kazoo_amqp_publish_buffer_depth", ())] == 4
    assert samples[("kazoo_amqp_publish_confirm_seconds_count", ())] == 1
    assert samples[("kazoo_amqp_queries_total", (("outcome", "timeout"),))] == 1
    assert samples[("kazoo_amqp_deliveries_total", (("outcome", "handler_error"),))] == 1
    route = (("outcome", "ok"), ("route", "kazoo:consumer-event-a-b"))
    assert samples[("kazoo_amqp_handler_seconds_count", route)] == 1
    broker = (("broker", "b1:5672"), ("server_id", "1"), ("zone", "local"))
    assert samples[("kazoo_amqp_broker_up", broker)] == 1
    assert samples[("kazoo_amqp_broker_reconnects_total", broker)] == 2
    assert samples[("kazoo_amqp_workers_busy", ())] == 1
    label_names = {name for (_, labels) in samples for name, _ in labels}
    assert label_names <= {"reason", "outcome", "route", "broker", "zone", "server_id", "le",
                           "version", "node"}  # fmt: skip


# (id, status, ready reasons, /health, /ready)
HEALTH = [
    ("ready", _status(), [], 200, 200),
    ("broker-down", _status(up=False), ["no primary-zone broker is connected"], 200, 503),
    ("worker-down", _status(alive=False), ["worker(s) 0 not running"], 200, 503),
]


@pytest.mark.parametrize(
    ("st", "reasons", "health", "ready"), [r[1:] for r in HEALTH], ids=[r[0] for r in HEALTH]
)
async def test_health_and_ready_answer_with_a_json_reason(
    st: dict[str, Any], reasons: list[str], health: int, ready: int
) -> None:
    obs = Observer(
        "127.0.0.1:0", snapshot=lambda: st, recorder=Recorder(), ready=lambda: reasons,
        describe=dict,
    )  # fmt: skip
    await obs.start()
    try:
        assert obs.server.address is not None
        port = obs.server.address[1]
        h_status, _, h_body = await _request(port, _get("/health"))
        r_status, r_headers, r_body = await _request(port, _get("/ready"))
        obs.stopping = True
        s_status, _, _ = await _request(port, _get("/health"))
    finally:
        await obs.stop()
    assert (h_status, r_status) == (health, ready)
    assert json.loads(h_body)["status"] == "ok"
    assert r_headers["content-type"] == "application/json"
    assert json.loads(r_body)["reasons"] == reasons
    assert s_status == 503


async def test_the_status_page_is_self_contained_and_its_json_has_history() -> None:
    counts = {"n": 0}

    def snapshot() -> dict[str, Any]:
        counts["n"] += 100
        st = _status()
        st["manager"]["published"] = counts["n"]
        return st

    obs = Observer(
        "127.0.0.1:0", snapshot=snapshot, recorder=Recorder(), ready=lambda: [],
        describe=lambda: {"subscriptions": [{"exchange": "e", "queue": "q"}]},
    )  # fmt: skip
    await obs.start()
    try:
        for _ in range(3):
            obs._sample()
        assert obs.server.address is not None
        port = obs.server.address[1]
        p_status, p_headers, page = await _request(port, _get("/"))
        j_status, _, body = await _request(port, _get("/status.json"))
    finally:
        await obs.stop()
    assert p_status == 200 and p_headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in p_headers["content-security-policy"]
    assert b"http://" not in page and b"https://" not in page and b"src=" not in page
    doc = json.loads(body)
    assert j_status == 200
    assert doc["subscriptions"] == [{"exchange": "e", "queue": "q"}]
    assert len(doc["history"]) >= 2
    assert all(point["publish"] > 0 for point in doc["history"])


# -- systemd ----------------------------------------------------------------------------------
def test_notify_sends_a_datagram_to_the_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        assert systemd.notify("READY=1\nSTATUS=running", {"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=running"
    finally:
        sock.close()


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"kz-obs-test-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()


def test_notify_without_systemd_does_nothing_and_a_dead_socket_only_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert "cannot notify systemd" in caplog.text


def test_the_example_grafana_dashboard_uses_only_exported_metric_names() -> None:
    import re

    from prometheus_client import generate_latest

    from kazoo_amqp.obs.metrics import build_registry

    rec = Recorder()
    rec.handler.observe(("kazoo:consumer-event-a-b", "ok"), 0.01)
    text = generate_latest(build_registry(_status, rec)).decode()
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    dashboard = Path(__file__).resolve().parents[2] / "examples/grafana/kazoo-amqp-dashboard.json"
    exprs = [
        t["expr"]
        for panel in json.loads(dashboard.read_text())["panels"]
        for t in panel.get("targets", [])
    ]
    used = {name for e in exprs for name in re.findall(r"kazoo_amqp_[a-z_]+", e)}
    assert used and used <= exported, used - exported
