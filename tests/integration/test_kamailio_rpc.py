"""KamailioRpc against tiny fake jsonrpcs servers (UDP, unix datagram, HTTP) run in the test.

They answer the way Kamailio 5.6's jsonrpcs does: datagram replies go to the sender's address,
``{"jsonrpc": "2.0", "result": {}, "id": <same id>}``.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp.errors import ConfigError, KazooError
from kazoo_amqp.presence.notify import KamailioRpc

URI = "sip:1000@example.com"

Reply = Callable[[dict[str, Any], int], list[dict[str, Any]] | None]


def ok(req: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return [{"jsonrpc": "2.0", "result": {}, "id": req["id"]}]


def silent(req: dict[str, Any], n: int) -> None:
    return None


def error_500(req: dict[str, Any], n: int) -> list[dict[str, Any]]:
    return [
        {"jsonrpc": "2.0", "error": {"code": 500, "message": "Execution failed"}, "id": req["id"]}
    ]


class DgramServer:
    """Records every raw request; answers each with what ``reply`` returns (0..n datagrams)."""

    def __init__(self, sock: socket.socket, reply: Reply) -> None:
        self.sock = sock
        self.reply = reply
        self.raw: list[bytes] = []
        self.peers: list[Any] = []
        self.peer_existed: list[bool] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = False
        self.sock.settimeout(0.05)
        self._thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.raw]

    def _run(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.raw.append(data)
            self.peers.append(peer)
            if isinstance(peer, str):
                self.peer_existed.append(os.path.exists(peer))
            for answer in self.reply(json.loads(data), len(self.raw)) or []:
                self.sock.sendto(json.dumps(answer).encode(), peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def udp_server() -> Iterator[Callable[[Reply], tuple[DgramServer, str]]]:
    servers: list[DgramServer] = []

    def start(reply: Reply) -> tuple[DgramServer, str]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        server = DgramServer(sock, reply)
        servers.append(server)
        return server, f"udp:127.0.0.1:{sock.getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Callable[[Reply], tuple[DgramServer, str]]]:
    servers: list[DgramServer] = []

    def start(reply: Reply) -> tuple[DgramServer, str]:
        path = str(tmp_path / f"kamailio_rpc{len(servers)}.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        server = DgramServer(sock, reply)
        servers.append(server)
        return server, f"unix:{path}"

    yield start
    for s in servers:
        s.close()


def assert_refresh_request(raw: bytes, event: str = "dialog") -> None:
    req = json.loads(raw)
    assert set(req) == {"jsonrpc", "method", "params", "id"}
    assert req["jsonrpc"] == "2.0"
    assert req["method"] == "presence.refreshWatchers"
    assert req["params"] == [URI, event, 1]
    assert type(req["params"][2]) is int  # the JSON number 1, not "1", not true
    assert isinstance(req["id"], int)
    assert raw.endswith(b',1],"id":' + str(req["id"]).encode() + b"}")


# ---------------------------------------------------------------------------- UDP


def test_udp_refresh_watchers_sends_the_exact_request(udp_server: Any) -> None:
    server, target = udp_server(ok)
    with KamailioRpc(target, timeout=1.0) as rpc:
        rpc.refresh_watchers(URI, "dialog")
        rpc.refresh_watchers(URI, "message-summary")
    assert len(server.raw) == 2
    assert_refresh_request(server.raw[0])
    assert_refresh_request(server.raw[1], "message-summary")
    ids = [r["id"] for r in server.requests]
    assert ids[0] != ids[1]
    # one socket, reused: both requests came from the same port
    assert server.peers[0] == server.peers[1]


def test_udp_timeout_names_target_and_fix(udp_server: Any) -> None:
    server, target = udp_server(silent)
    rpc = KamailioRpc(target, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(KazooError) as info:
        rpc.refresh_watchers(URI, "dialog")
    elapsed = time.monotonic() - start
    rpc.close()
    assert 0.15 < elapsed < 1.0
    assert str(info.value).startswith(
        f"Kamailio RPC at {target} did not answer presence.refreshWatchers within 0.2 s: "
        "is jsonrpcs loaded with transport 4"
    )
    assert len(server.raw) == 1  # a timeout is not retried


def test_udp_late_reply_of_an_earlier_call_is_ignored(udp_server: Any) -> None:
    def stale_then_right(req: dict[str, Any], n: int) -> list[dict[str, Any]]:
        return [{"jsonrpc": "2.0", "result": {}, "id": req["id"] + 1000}, *ok(req, n)]

    server, target = udp_server(stale_then_right)
    with KamailioRpc(target, timeout=1.0) as rpc:
        rpc.refresh_watchers(URI, "presence")
    assert len(server.raw) == 1


def test_error_500_is_retried_once_then_reported(udp_server: Any) -> None:
    def fail_first(req: dict[str, Any], n: int) -> list[dict[str, Any]]:
        return error_500(req, n) if n == 1 else ok(req, n)

    server, target = udp_server(fail_first)
    with KamailioRpc(target, timeout=1.0, retry_delay=0.01) as rpc:
        rpc.refresh_watchers(URI, "dialog")
    assert len(server.raw) == 2

    server, target = udp_server(error_500)
    with (
        KamailioRpc(target, timeout=1.0, retry_delay=0.01) as rpc,
        pytest.raises(KazooError) as info,
    ):
        rpc.refresh_watchers(URI, "dialog")
    assert len(server.raw) == 2
    assert str(info.value) == (
        f'Kamailio RPC at {target} answered presence.refreshWatchers("{URI}", "dialog", 1) '
        "with error 500 Execution failed"
    )


def test_udp_nothing_listening(udp_server: Any) -> None:
    server, target = udp_server(ok)
    server.close()  # the port is now closed: ICMP port unreachable
    with KamailioRpc(target, timeout=1.0) as rpc, pytest.raises(KazooError) as info:
        rpc.refresh_watchers(URI, "dialog")
    assert "nothing listens there" in str(info.value) or "did not answer" in str(info.value)


# ---------------------------------------------------------------------------- unix datagram


def test_unix_refresh_watchers_binds_a_reply_path_and_cleans_it(
    unix_server: Any, tmp_path: Path
) -> None:
    reply_dir = tmp_path / "replies"
    reply_dir.mkdir()
    server, target = unix_server(ok)
    rpc = KamailioRpc(target, timeout=1.0, reply_dir=str(reply_dir))
    rpc.refresh_watchers(URI, "dialog")
    assert_refresh_request(server.raw[0])
    peer = server.peers[0]
    assert isinstance(peer, str) and peer.startswith(str(reply_dir))
    assert server.peer_existed == [True]
    assert os.stat(peer).st_mode & 0o777 == 0o666
    rpc.close()
    assert not os.path.exists(peer)
    assert list(reply_dir.iterdir()) == []


def test_unix_reply_path_removed_when_garbage_collected(unix_server: Any, tmp_path: Path) -> None:
    server, target = unix_server(ok)
    rpc = KamailioRpc(target, timeout=1.0, reply_dir=str(tmp_path))
    rpc.refresh_watchers(URI, "dialog")
    peer = server.peers[0]
    assert os.path.exists(peer)
    del rpc
    import gc

    gc.collect()
    assert not os.path.exists(peer)


def test_unix_timeout(unix_server: Any, tmp_path: Path) -> None:
    _, target = unix_server(silent)
    with (
        KamailioRpc(target, timeout=0.2, reply_dir=str(tmp_path)) as rpc,
        pytest.raises(KazooError, match=r"did not answer presence\.refreshWatchers within 0\.2 s"),
    ):
        rpc.refresh_watchers(URI, "dialog")


def test_unix_no_server_socket(tmp_path: Path) -> None:
    target = f"unix:{tmp_path / 'absent.sock'}"
    with (
        KamailioRpc(target, timeout=0.2, reply_dir=str(tmp_path)) as rpc,
        pytest.raises(KazooError, match=r"cannot send presence\.refreshWatchers"),
    ):
        rpc.refresh_watchers(URI, "dialog")
    assert [p.name for p in tmp_path.iterdir()] == []


# ---------------------------------------------------------------------------- HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]]
    mode = "ok"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Content-Type", ""), body))
        if self.mode == "slow":
            time.sleep(0.5)
        if self.mode == "404":
            self.send_response(404)
            self.end_headers()
            return
        req = json.loads(body)
        out = json.dumps({"jsonrpc": "2.0", "result": {}, "id": req["id"]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        except OSError:  # the client gave up (the timeout test)
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[Callable[[str], tuple[list[tuple[str, str, bytes]], str]]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(mode: str) -> tuple[list[tuple[str, str, bytes]], str]:
        seen: list[tuple[str, str, bytes]] = []
        handler = type("H", (_Handler,), {"seen": seen, "mode": mode})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return seen, f"http://127.0.0.1:{srv.server_address[1]}/RPC"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_http_refresh_watchers(http_server: Any) -> None:
    seen, target = http_server("ok")
    with KamailioRpc(target, timeout=1.0) as rpc:
        rpc.refresh_watchers(URI, "dialog")
    assert len(seen) == 1
    path, ctype, body = seen[0]
    assert path == "/RPC"
    assert ctype == "application/json"
    assert_refresh_request(body)


def test_http_timeout(http_server: Any) -> None:
    _, target = http_server("slow")
    with (
        KamailioRpc(target, timeout=0.2) as rpc,
        pytest.raises(
            KazooError, match=r"did not answer presence\.refreshWatchers within 0\.2 s: is xhttp"
        ),
    ):
        rpc.refresh_watchers(URI, "dialog")


def test_http_status_error(http_server: Any) -> None:
    _, target = http_server("404")
    with KamailioRpc(target, timeout=1.0) as rpc, pytest.raises(KazooError, match="HTTP 404"):
        rpc.refresh_watchers(URI, "dialog")


# ---------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    "target",
    [
        "tcp:127.0.0.1:8090",
        "udp:127.0.0.1",
        "udp:127.0.0.1:0",
        "udp::8090",
        "unix:relative.sock",
        "http:///RPC",
        "kamailio_rpc.sock",
    ],
)
def test_bad_targets(target: str) -> None:
    with pytest.raises(ConfigError, match="Kamailio RPC target"):
        KamailioRpc(target)


@pytest.mark.parametrize(
    "target",
    [
        "udp:127.0.0.1:8090",
        "udp:[::1]:8090",
        "unix:/run/kamailio/kamailio_rpc.sock",
        "/run/kamailio/kamailio_rpc.sock",
        "http://127.0.0.1:5060/RPC",
        "https://kam.example.com/RPC",
    ],
)
def test_good_targets(target: str) -> None:
    KamailioRpc(target).close()
