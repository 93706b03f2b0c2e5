"""The Kamailio bridge stack for end-to-end tests and the bridge benchmark.

:class:`Stack` prepares a run directory from ``examples/kamailio`` converted by the real
``kazoo-amqp kamailio-convert`` (``mode="bridge"``) or the original example on the C module
(``mode="c"``),
with unique exchange/queue/node names and free ports, and starts/stops Kamailio and the daemon
by PID. :class:`Responder` plays a Kazoo service (pika), :func:`publish` a Kazoo publisher.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kamailio.harness import (
    _MODULE_DIRS,
    LOCALHOST,
    HarnessError,
    Watcher,
    _stop_process,
    _tail,
    free_udp_ports,
    kamailio_binary,
)

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.daemon_harness import pika_connection  # noqa: E402

__all__ = [
    "AUTH_TIMEOUT_MS",
    "EXAMPLE",
    "REALM",
    "Responder",
    "SipReply",
    "Stack",
    "Watcher",
    "authn",
    "cleanup",
    "collector",
    "convert_cli",
    "encode",
    "free_tcp_port",
    "missing",
    "publish",
]

EXAMPLE = REPO / "examples" / "kamailio"
KAMAILIO_SHARE = Path("/usr/share/kamailio/db_sqlite")
NEEDED = ("kazoo", "xhttp", "app_python3", "htable", "dispatcher", "presence",
          "presence_dialoginfo", "auth", "jsonrpcs", "db_sqlite", "tmx", "cfgutils")  # fmt: skip
AUTH_TIMEOUT_MS = 1000
REALM = "bridge.example.net"


def _mdir() -> str | None:
    for d in _MODULE_DIRS:
        if os.path.isfile(os.path.join(d, "xhttp.so")):
            return d
    return None


def missing() -> str | None:
    if kamailio_binary() is None or shutil.which("sipp") is None:
        return "Kamailio or sipp is not installed: run .ci/install-kamailio.sh"
    mdir = _mdir()
    if mdir is None:
        return "Kamailio's modules are not installed: run .ci/install-kamailio.sh"
    gone = [m for m in NEEDED if not os.path.isfile(os.path.join(mdir, m + ".so"))]
    if gone:
        return (
            f"missing Kamailio modules {', '.join(gone)} (kamailio-kazoo-modules, "
            "-python3-modules, -presence-modules, ...): run .ci/install-kamailio.sh"
        )
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return "RabbitMQ is not running on 127.0.0.1:5672"
    return None


def convert_cli(cfg: Path, out_dir: Path, *options: str) -> str:
    """Run ``kazoo-amqp kamailio-convert CFG --out-dir DIR [options]`` as a user would (a
    subprocess); return what it printed. Fails the test on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "kazoo_amqp", "kamailio-convert", str(cfg),
         "--out-dir", str(out_dir), *options],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the stack


class Stack:
    """The converted cfg in a run directory, Kamailio and the daemon (each restartable).

    ``mode="c"`` runs the original example instead, on the C module (kazoo.so with its own
    AMQP connection) and no daemon, to compare.
    """

    def __init__(self, run_dir: Path, mode: str = "bridge", *, socket_workers: int = 4) -> None:
        self.mode = mode
        self.socket_workers = socket_workers
        self.dir = run_dir
        self.tag = uuid.uuid4().hex[:8]
        self.node = f"kzb-{self.tag}"
        self.ex = {
            name: f"kzb-{name}-{self.tag}" for name in ("registrar", "callmgr", "presence", "nodes")
        }
        self.kam: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.sip_port = self.rpc_port = self.bridge_port = 0
        self.kam_log = run_dir / "kamailio.log"
        self.daemon_log = run_dir / "daemon.log"
        self._watchers: list[Watcher] = []
        self.run_dir = run_dir  # for sipp Watchers
        self.domain = REALM
        self.log_path = self.kam_log
        self.convert_output = ""
        #: False while a test's responder stays silent on purpose (no retry on C then)
        self.responder_answers = True

    # ---- files
    def prepare(self) -> None:
        """The example with this run's #!define values; on the bridge, converted with the real
        ``kazoo-amqp kamailio-convert`` (``self.convert_output`` holds what it printed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        d = self.dir
        source = d / "original" if self.mode == "bridge" else d
        source.mkdir(exist_ok=True)
        for f in EXAMPLE.iterdir():
            if f.is_file():
                shutil.copy(f, source / f.name)
        self.sip_port, self.rpc_port = free_udp_ports(2)
        self.bridge_port = free_tcp_port()
        defines = {
            "MY_HOSTNAME": f'"{self.node}"',
            "MY_SIP_LISTEN": f"udp:{LOCALHOST}:{self.sip_port}",
            "MY_RPC_SOCKET": f'"udp:{LOCALHOST}:{self.rpc_port}"',
            "MY_DB_URL": f'"sqlite:///{d}/kazoo.db"',
            "MY_DISPATCHER_LIST": f'"{d}/dispatcher.list"',
            "MY_DOMAIN": f'"{REALM}"',
            "MY_NODE": self.node,
            "REGISTRAR_EXCHANGE": self.ex["registrar"],
            "CALLMGR_EXCHANGE": self.ex["callmgr"],
            "PRESENCE_EXCHANGE": self.ex["presence"],
            "NODES_EXCHANGE": self.ex["nodes"],
            "AUTH_TIMEOUT_MS": str(AUTH_TIMEOUT_MS),
        }
        cfg = (source / "kamailio.cfg").read_text()
        for name, value in defines.items():
            cfg, n = re.subn(rf"^#!define {name} .*$", f"#!define {name} {value}", cfg, flags=re.M)
            assert n == 1, name
        cfg = cfg.replace("log_stderror=no", "log_stderror=yes")
        (source / "kamailio.cfg").write_text(cfg)
        self._database()
        if self.mode == "c":
            return
        self.convert_output = convert_cli(
            source / "kamailio.cfg",
            d,
            "--bridge",
            f"127.0.0.1:{self.bridge_port}",
            "--socket-workers",
            str(self.socket_workers),
        )

    def _database(self) -> None:
        d = self.dir
        (d / "dispatcher.list").write_text("1 sip:127.0.0.1:5080\n")
        db = sqlite3.connect(d / "kazoo.db")
        for f in ("standard-create.sql", "presence-create.sql"):
            db.executescript((KAMAILIO_SHARE / f).read_text())
        db.commit()
        db.close()

    # ---- processes
    def start_kamailio(self) -> None:
        binary = kamailio_binary()
        assert binary is not None
        d = str(self.dir)
        args = [binary, "-DD", "-E", "-f", f"{d}/kamailio.cfg", "-Y", d,
                "-P", f"{d}/kamailio.pid", "-w", d, "-m", "64", "-M", "32"]  # fmt: skip
        with open(self.kam_log, "ab") as log:
            self.kam = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.kam.poll() is not None:
                raise HarnessError(f"kamailio exited: {_tail(self.kam_log)}")
            with contextlib.suppress(TimeoutError, OSError):
                if self.sip("OPTIONS", timeout=0.3).code == 200:
                    return
        raise HarnessError(f"kamailio did not answer OPTIONS: {_tail(self.kam_log)}")

    def stop_kamailio(self) -> None:
        for w in list(self._watchers):
            w.stop()
        if self.kam is not None:
            _stop_process(self.kam, grace=5)
            self.kam = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:  # for sipp Watchers
        return self.kam

    def start_daemon(self, wait_subscribed: bool = True) -> None:
        if self.mode == "c":
            self.wait_c_consuming()
            return
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        with open(self.daemon_log, "ab") as log:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "kazoo_amqp", "run", "--config",
                 str(self.dir / "kazoo-amqp.toml")],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
            )  # fmt: skip
        if wait_subscribed:
            self.wait_consuming()

    def status(self) -> dict[str, Any]:
        from kazoo_amqp import Client

        with Client(str(self.dir / "kazoo-amqp.sock"), timeout=2) as c:
            result: dict[str, Any] = c.status()
            return result

    def wait_consuming(self, timeout: float = 20) -> None:
        """Until the daemon got Kamailio's mod-init and a broker is up with its consumers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.daemon is not None and self.daemon.poll() is None, self.daemon_tail()
            with contextlib.suppress(Exception):
                st = self.status()
                if st["workers"]["mod_inits"] and any(b["up"] for b in st["manager"]["brokers"]):
                    return
            time.sleep(0.1)
        raise HarnessError(f"the daemon is not consuming: {self.daemon_tail()}")

    def wait_c_consuming(self, timeout: float = 20) -> None:
        """The C module: until its consumers declared the node's queues."""
        deadline = time.monotonic() + timeout
        conn = pika_connection()
        try:
            for q in ("registrar-flush", "presence-dialog", "nodes"):
                while True:
                    ch = conn.channel()
                    try:
                        ch.queue_declare(f"{q}-{self.node}", passive=True)
                        break
                    except Exception:
                        assert time.monotonic() < deadline, _tail(self.kam_log)
                        time.sleep(0.1)
                    finally:
                        with contextlib.suppress(Exception):
                            ch.close()
        finally:
            conn.close()

    def stop_daemon(self) -> int:
        if self.daemon is None:
            return 0
        self.daemon.terminate()
        try:
            code = self.daemon.wait(20)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            code = self.daemon.wait()
        self.daemon = None
        return code

    def daemon_tail(self, n: int = 60) -> str:
        return _tail(self.daemon_log, n)

    def diagnostics(self) -> str:
        return f"===== daemon log\n{self.daemon_tail()}\n===== kamailio log\n" + _tail(
            self.kam_log, 80
        )

    # ---- SIP and RPC
    def sip(self, method: str, *, user: str = "probe", headers: tuple[str, ...] = (),
            timeout: float = 5.0, ruri_user: str | None = None) -> SipReply:  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCALHOST, 0))
            port = s.getsockname()[1]
            call_id = f"kzb-{uuid.uuid4().hex}"
            ruri = f"sip:{ruri_user or user}@{REALM}"
            if method == "REGISTER":
                ruri = f"sip:{REALM}"
            lines = [
                f"{method} {ruri} SIP/2.0",
                f"Via: SIP/2.0/UDP {LOCALHOST}:{port};branch=z9hG4bK-{uuid.uuid4().hex};rport",
                "Max-Forwards: 70",
                f"From: <sip:{user}@{REALM}>;tag={uuid.uuid4().hex[:8]}",
                f"To: <sip:{user if method == 'REGISTER' else ruri_user or user}@{REALM}>",
                f"Call-ID: {call_id}",
                f"CSeq: 1 {method}",
                f"Contact: <sip:{user}@{LOCALHOST}:{port}>",
                *headers,
                "Content-Length: 0",
            ]
            s.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), (LOCALHOST, self.sip_port))
            t0 = time.monotonic()
            deadline = t0 + timeout
            while True:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                data, _ = s.recvfrom(65535)  # TimeoutError when nothing final comes
                head = data.split(b"\r\n\r\n", 1)[0].decode()
                status = head.split("\r\n", 1)[0]
                m = re.match(r"SIP/2\.0 (\d+) ?(.*)", status)
                if m and int(m.group(1)) >= 200:
                    hdrs: dict[str, str] = {}
                    for line in head.split("\r\n")[1:]:
                        k, _, v = line.partition(":")
                        hdrs[k.strip().lower()] = v.strip()
                    return SipReply(int(m.group(1)), m.group(2), hdrs, time.monotonic() - t0)

    def register(self, user: str, password: str, timeout: float = 5.0) -> SipReply:
        """REGISTER, expect a 401 challenge, answer it with ``password``.

        On the C module a "Directory Timeout" is tried once more: 5.6.3 now and then hands the
        async reply to its consumers as an event ("kazoo:consumer-event not found") and the
        query times out (1-3 % of REGISTERs in bench/kamailio_bridge.py; docs/kamailio.md)."""
        reply = self._register(user, password, timeout)
        if self.mode == "c" and reply.code == 500 and self.responder_answers:
            reply = self._register(user, password, timeout)
        return reply

    def _register(self, user: str, password: str, timeout: float) -> SipReply:
        first = self.sip("REGISTER", user=user, timeout=timeout)
        assert first.code == 401, first
        chal = first.headers["www-authenticate"]
        nonce = re.search(r'nonce="([^"]+)"', chal).group(1)  # type: ignore[union-attr]
        realm = re.search(r'realm="([^"]+)"', chal).group(1)  # type: ignore[union-attr]
        uri = f"sip:{REALM}"
        ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
        resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        auth = (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{resp}", algorithm=MD5')  # fmt: skip
        return self.sip("REGISTER", user=user, headers=(auth, "Expires: 300"), timeout=timeout)

    def rpc(self, method: str, *params: Any) -> Any:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCALHOST, 0))
            s.settimeout(3)
            req = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
            s.sendto(json.dumps(req).encode(), (LOCALHOST, self.rpc_port))
            return json.loads(s.recvfrom(65535)[0])

    def tm_stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.rpc("tm.stats")["result"]
        return result

    def assert_no_transaction_lingers(self, timeout: float = 8.0) -> None:
        """tm.stats current drops to 0 (replied ones leave after tm's 5 s wait timer)."""
        deadline = time.monotonic() + timeout
        while (stats := self.tm_stats())["current"]:
            assert time.monotonic() < deadline, stats
            time.sleep(0.2)


class SipReply:
    def __init__(self, code: int, reason: str, headers: dict[str, str], elapsed: float) -> None:
        self.code, self.reason, self.headers, self.elapsed = code, reason, headers, elapsed

    def __repr__(self) -> str:
        return f"<{self.code} {self.reason} after {self.elapsed * 1000:.0f} ms>"


# --------------------------------------------------------------------------- Kazoo side


class Responder:
    """A pika thread answering queries on ``exchange``/``key`` with ``answer(request)``."""

    def __init__(self, exchange: str, key: str, answer: Callable[[dict[str, Any]], Any]) -> None:
        self.exchange, self.key, self.answer = exchange, key, answer
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Responder:
        self._thread.start()
        assert self._ready.wait(10), "responder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        conn = pika_connection()
        ch = conn.channel()
        ch.exchange_declare(self.exchange, exchange_type="topic")
        q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        ch.queue_bind(q, self.exchange, routing_key=self.key)
        self._ready.set()
        try:
            for method, _props, body in ch.consume(q, inactivity_timeout=0.1):
                if self._stop.is_set():
                    break
                if method is None:
                    continue
                request = json.loads(body)
                self.requests.append(request)
                reply = self.answer(request)
                ch.basic_ack(method.delivery_tag)
                if reply is None:
                    continue
                reply["Msg-ID"] = request["Msg-ID"]
                ch.basic_publish("targeted", request["Server-ID"], json.dumps(reply).encode())
            ch.cancel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()


def publish(exchange: str, kind: str, rk: str, payload: dict[str, Any]) -> None:
    conn = pika_connection()
    try:
        ch = conn.channel()
        ch.exchange_declare(exchange, exchange_type=kind)
        ch.basic_publish(exchange, rk, json.dumps(payload).encode())
    finally:
        conn.close()


@contextlib.contextmanager
def collector(exchange: str, key: str) -> Iterator[Callable[[float], list[tuple[Any, Any]]]]:
    conn = pika_connection()
    ch = conn.channel()
    ch.exchange_declare(exchange, exchange_type="topic")
    q = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(q, exchange, routing_key=key)

    def get(timeout: float) -> list[tuple[Any, Any]]:
        out: list[tuple[Any, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not out:
            method, props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                time.sleep(0.02)
                continue
            out.append((props, json.loads(body)))
        return out

    try:
        yield get
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def cleanup(stack: Stack) -> None:
    with contextlib.suppress(Exception):
        conn = pika_connection()
        ch = conn.channel()
        for ex in stack.ex.values():
            ch.exchange_delete(ex)
        for q in ("registrar-flush", "presence-dialog", "nodes"):
            ch.queue_delete(f"{q}-{stack.node}")
        conn.close()


def authn(passwords: dict[str, str]) -> Callable[[dict[str, Any]], Any]:
    def answer(req: dict[str, Any]) -> Any:
        user = req.get("Auth-User")
        if user not in passwords:
            return {"Event-Category": "directory", "Event-Name": "authn_err"}
        return {"Event-Category": "directory", "Event-Name": "authn_resp",
                "Auth-Password": passwords[user], "Auth-Method": "password"}  # fmt: skip

    return answer


def encode(text: str) -> str:
    from kazoo_amqp.core.encode import encode

    return str(encode(text))
