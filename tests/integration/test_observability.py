"""Metrics, health, the status page, JSON logs and systemd readiness of a real daemon.

One daemon (real RabbitMQ, two workers) serves ``http_listen`` on a free port; its routes answer
queries (by publishing to ``targeted`` with the request's Server-ID and Msg-ID), handle events
and fail on purpose, so every family of metrics sees traffic. The status page is loaded in
Debian's headless Chromium; the screenshot is kept in ``$KAZOO_TEST_ARTIFACTS`` (default: a
``kazoo-amqp-artifacts`` folder in the system temp dir) and its path printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.daemon_harness import REPO, DaemonProcess, unique

pytestmark = [pytest.mark.broker]

ROUTES = """
EXCHANGE = {exchange!r}

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe({{"exchange": EXCHANGE, "type": "topic", "queue": {queue!r},
                  "routing": "obs.#", "wait_for_consumer_ack": 1}})

@router.route("kazoo:consumer-event-obs-req")
def answer(kz):
    kz.publish("targeted", kz.payload["Server-ID"],
               {{"Msg-ID": kz.payload["Msg-ID"], "Event-Category": "obs", "Event-Name": "resp"}})

@router.route("kazoo:consumer-event-obs-event")
def event(kz):
    pass

@router.route("kazoo:consumer-event-obs-fail")
def fail(kz):
    raise RuntimeError("failing on purpose")
"""


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Traffic:
    """Publishes, queries and failing events from a thread until stopped."""

    def __init__(self, daemon: DaemonProcess, exchange: str) -> None:
        self.daemon = daemon
        self.exchange = exchange
        self.stop = threading.Event()
        self.counts = {"publish": 0, "query": 0, "timeout": 0}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from kazoo_amqp import QueryTimeout

        with self.daemon.client() as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                event = {"Event-Category": "obs", "Event-Name": "event", "Call-ID": f"c{i}"}
                c.publish(self.exchange, "obs.event", event)
                self.counts["publish"] += 1
                if i % 2 == 0:
                    request = {"Event-Category": "obs", "Event-Name": "req"}
                    c.query(self.exchange, "obs.req", request, timeout_ms=2000)
                    self.counts["query"] += 1
                if i % 50 == 0:
                    failing = {"Event-Category": "obs", "Event-Name": "fail", "Call-ID": f"f{i}"}
                    c.publish(self.exchange, "obs.fail", failing)
                    try:
                        c.query(self.exchange, "nobody.listens", {"X": 1}, timeout_ms=50)
                    except QueryTimeout:
                        self.counts["timeout"] += 1
                time.sleep(0.004)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture(scope="module")
def notify_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path_factory.mktemp("notify") / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, notify_socket: tuple[str, socket.socket]
) -> Iterator[tuple[DaemonProcess, str, str]]:
    exchange = unique("kzt-obs")
    tmp = tmp_path_factory.mktemp("obs")
    d = DaemonProcess(
        tmp,
        ROUTES.format(exchange=exchange, queue=unique("kzt-obs-q")),
        config={"http_listen": "127.0.0.1:0", "log_format": "json"},
    )
    os.environ["NOTIFY_SOCKET"] = notify_socket[0]
    try:
        d.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    base = d.status()["http"]
    assert base and base.startswith("http://127.0.0.1:")
    try:
        with Traffic(d, exchange) as traffic:
            time.sleep(8)  # several samples of the status page's history
        assert traffic.counts["query"] > 20, traffic.counts
        time.sleep(1.5)  # the workers' handler stats arrive within a second
        yield d, base, exchange
    finally:
        code = d.stop()
        assert code == 0, d.logs()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_the_traffic_by_route_and_outcome(
    daemon: tuple[DaemonProcess, str, str],
) -> None:
    _, base, _ = daemon
    status, headers, body = _get(base + "metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    text = body.decode()
    s = _samples(text)
    assert s[("kazoo_amqp_publishes_total", ())] >= 100
    assert s[("kazoo_amqp_publish_confirms_total", ())] >= 100
    assert s[("kazoo_amqp_publish_confirm_seconds_count", ())] >= 100
    assert s[("kazoo_amqp_queries_total", (("outcome", "ok"),))] >= 20
    assert s[("kazoo_amqp_queries_total", (("outcome", "timeout"),))] >= 1
    assert s[("kazoo_amqp_query_seconds_count", (("outcome", "ok"),))] >= 20
    ok = (("outcome", "ok"), ("route", "kazoo:consumer-event-obs-event"))
    err = (("outcome", "error"), ("route", "kazoo:consumer-event-obs-fail"))
    assert s[("kazoo_amqp_handler_seconds_count", ok)] >= 100
    assert s[("kazoo_amqp_handler_seconds_count", err)] >= 1
    assert s[("kazoo_amqp_deliveries_total", (("outcome", "handler_error"),))] >= 1
    assert s[("kazoo_amqp_workers_up", ())] == 2
    broker = [v for (name, _), v in s.items() if name == "kazoo_amqp_broker_up"]
    assert broker == [1.0]
    # bounded cardinality: no routing key, Msg-ID or Call-ID in any label
    assert "obs.event" not in text and "obs.req" not in text and "Call-ID" not in text
    label_values = {v for (_, labels) in s for _, v in labels}
    assert not any(v.startswith(("c", "f")) and v[1:].isdigit() for v in label_values)


def test_health_ready_and_unknown_paths(daemon: tuple[DaemonProcess, str, str]) -> None:
    _, base, _ = daemon
    status, headers, body = _get(base + "health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = _get(base + "ready")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ready", "reasons": []}
    status, _, _ = _get(base + "no/such/page")
    assert status == 404


def test_readiness_was_notified_to_systemd(
    daemon: tuple[DaemonProcess, str, str], notify_socket: tuple[str, socket.socket]
) -> None:
    _, sock = notify_socket
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    assert any(m.startswith("READY=1") for m in messages), messages


def test_json_logs_carry_the_message_identity(daemon: tuple[DaemonProcess, str, str]) -> None:
    d, _, exchange = daemon
    lines = [json.loads(line) for line in d.logs().splitlines() if line.startswith("{")]
    assert lines, d.logs()[:2000]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    failures = [line for line in lines if line.get("route") == "kazoo:consumer-event-obs-fail"]
    assert failures, "no log line of the failing route"
    line = failures[0]
    assert line["level"] == "error"
    assert line["exchange"] == exchange
    assert line["routing_key"] == "obs.fail"
    assert line["msg_id"] and line["call_id"].startswith("f")
    assert isinstance(line["worker"], int)
    assert "RuntimeError" in line["exc"]
    # nothing but JSON objects on the daemon's output
    assert all(ln.startswith("{") for ln in d.logs().splitlines() if ln.strip())


def _artifacts() -> Path:
    folder = Path(os.environ.get("KAZOO_TEST_ARTIFACTS")
                  or Path(tempfile.gettempdir()) / "kazoo-amqp-artifacts")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (bash .ci/install-chromium.sh)")


def _browser(url: str, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--no-proxy-server",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1150",
        "--virtual-time-budget=6000",
        *args,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_the_status_page_plots_live_data_in_headless_chromium(
    daemon: tuple[DaemonProcess, str, str], tmp_path: Path
) -> None:
    d, base, exchange = daemon
    with Traffic(d, exchange):
        time.sleep(3)
        dom = ""
        for _ in range(3):  # Chromium's first start on a loaded machine can miss the page
            done = _browser(base, "--dump-dom", profile=tmp_path / "profile-dom")
            dom = done.stdout
            if 'data-updates="' in dom:
                break
            time.sleep(1)
        shot = _artifacts() / f"status-page-{int(time.time())}.png"
        for _ in range(3):
            _browser(base, f"--screenshot={shot}", profile=tmp_path / "profile-shot")
            if shot.exists() and shot.stat().st_size > 10_000:
                break
            time.sleep(1)
    print(f"\nstatus page screenshot: {shot}", file=sys.stderr)
    assert 'data-updates="' in dom, dom[:3000]
    assert "READY" in dom
    for plot in ("pl-pub", "pl-con", "pl-q", "pl-lat"):
        marker = f'id="{plot}" data-points="'
        assert marker in dom, plot
        points = int(dom.split(marker, 1)[1].split('"', 1)[0])
        assert points >= 3, (plot, points)
    assert exchange in dom  # the subscriptions table
    assert "127.0.0.1:5672" in dom  # the brokers table
    assert shot.exists() and shot.stat().st_size > 10_000, "no screenshot"


def test_a_port_in_use_stops_the_start_with_an_error_naming_the_key(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cfg = tmp_path / "kazoo-amqp.toml"
        cfg.write_text(
            f'node_hostname = "{unique("obs")}"\n'
            f'socket = "{tmp_path / "kz.sock"}"\n'
            f'http_listen = "127.0.0.1:{busy.getsockname()[1]}"\n'
        )
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        done = subprocess.run(
            [sys.executable, "-m", "kazoo_amqp", "run", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
    finally:
        busy.close()
    assert done.returncode == 2, done.stderr
    assert "http_listen" in done.stderr and "cannot listen" in done.stderr
    assert not (tmp_path / "kz.sock").exists()  # nothing else was started


def test_a_bad_http_listen_value_is_refused_by_check_config(tmp_path: Path) -> None:
    cfg = tmp_path / "kazoo-amqp.toml"
    cfg.write_text('node_hostname = "n"\nhttp_listen = "9494"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "kazoo_amqp", "check-config", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 2
    assert "http_listen" in done.stderr and "HOST:PORT" in done.stderr


def test_ready_is_503_with_the_reason_while_no_broker_is_connected(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    d = DaemonProcess(
        tmp_path,
        "",
        config={
            "http_listen": "127.0.0.1:0",
            "amqp_connection": [f"amqp://guest:guest@127.0.0.1:{port}"],
            "routes": "",  # no routes: nothing to subscribe
        },
    )
    d.start(wait_broker=False)
    try:
        base = d.status()["http"]
        status, _, body = _get(base + "ready")
        health, _, _ = _get(base + "health")
    finally:
        assert d.stop() == 0, d.logs()
    assert status == 503 and health == 200
    doc = json.loads(body)
    assert doc["status"] == "not ready"
    assert any("no primary-zone broker is connected" in r for r in doc["reasons"]), doc
    assert any(f"127.0.0.1:{port}" in r for r in doc["reasons"]), doc
