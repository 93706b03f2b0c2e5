"""Kamailio 5.6 app_python3 (KEMI) -> ``kazoo_amqp.Client`` -> the daemon -> RabbitMQ.

The use the blocking Client exists for, with nothing faked:

    test (plain UDP SIP MESSAGE, JSON body) --> Kamailio 5.6, 2 forked SIP workers running the
    Python KEMI script ``app_python3/kemi.py`` (Debian's system Python 3.11, embedded)
        --> kazoo_amqp.Client (one per worker, created after the fork) --> daemon's Unix socket
        --> kazoo-amqp daemon --> RabbitMQ --> pika (the test plays Kazoo)

The KEMI script answers the MESSAGE with the outcome: ``200`` (publish confirmed / query
answered, the reply's ``Echo`` in ``X-Echo``), ``408`` on ``QueryTimeout``, ``500 <error class>``
on another ``KazooError``. Every reply names the worker (``X-Worker-Pid``) and its Client
(``X-Client: <pid that created it>/<Clients created there>``), so the tests can tell that both
forked workers used their own Client, and that the same Client object reconnects after a daemon
restart.

What is checked: publishes from both SIP workers arrive with the injected Kazoo fields; a query
answered by a pika responder returns its echo; an unanswered query (300 ms) gives 408 within
about a second; with the daemon stopped a publish gives ``500 NotConnected`` and Kamailio keeps
running, and after the daemon restarts on the same socket the same Clients reconnect (also from a
connection that went stale while idle), without restarting Kamailio.

Each test starts its own daemon (trivial routes) and Kamailio (free UDP port, everything under
the test's tmp dir), bounds every wait, stops the processes by PID and deletes what it declared
on the broker. Skipped when Kamailio or app_python3.so is missing (``.ci/install-kamailio.sh``);
being marked ``kamailio``, ``tests/e2e/conftest.py`` also skips it without sipp / the presence
modules, which the same script installs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from kamailio.harness import (
    _MODULE_DIRS,
    LOCALHOST,
    HarnessError,
    _stop_process,
    _tail,
    free_udp_ports,
    kamailio_binary,
)

from tests.integration.daemon_harness import REPO, DaemonProcess, drain, pika_connection, unique

pytestmark = [pytest.mark.kamailio, pytest.mark.broker, pytest.mark.timeout(120)]

HERE = Path(__file__).resolve().parent / "app_python3"
CFG_TEMPLATE = HERE / "kamailio.cfg.tmpl"
KEMI_TEMPLATE = HERE / "kemi.py"
SRC_DIR = REPO / "src"

#: modules the cfg loads
KEMI_MODULES = ("tm", "sl", "pv", "textops", "siputils", "xlog", "app_python3")
#: SIP worker processes (``children``)
CHILDREN = 2
#: the Client's own timeout inside Kamailio (connect, publish round trip)
CLIENT_TIMEOUT = 5.0


# --------------------------------------------------------------------------- requirements


def kemi_module_dir() -> str | None:
    """The Kamailio module directory that has ``app_python3.so``."""
    for d in _MODULE_DIRS:
        if os.path.isfile(os.path.join(d, "app_python3.so")):
            return d
    return None


def missing_kemi() -> str | None:
    """Why Kamailio + app_python3 cannot run here, or ``None``."""
    if kamailio_binary() is None:
        return "kamailio is not installed: run .ci/install-kamailio.sh"
    mdir = kemi_module_dir()
    if mdir is None:
        return (
            "Kamailio's app_python3 module (app_python3.so, Debian package "
            "kamailio-python3-modules) is not installed: run .ci/install-kamailio.sh"
        )
    mods = [m for m in KEMI_MODULES if not os.path.isfile(os.path.join(mdir, m + ".so"))]
    if mods:
        return f"missing Kamailio modules in {mdir}: {', '.join(mods)}"
    return None


@pytest.fixture
def kemi_ready() -> None:
    why = missing_kemi()
    if why is not None:
        pytest.skip(why)


@pytest.fixture
def rabbitmq_up() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_e2e_rep_call", None)  # set by tests/e2e/conftest.py
    return rep is None or rep.failed


# --------------------------------------------------------------------------- SIP over UDP


@dataclass
class SipResponse:
    code: int
    reason: str
    headers: dict[str, str]
    elapsed: float
    call_id: str

    @property
    def worker_pid(self) -> int:
        return int(self.headers["x-worker-pid"])

    @property
    def client_tag(self) -> str:
        return self.headers.get("x-client", "")

    def __str__(self) -> str:
        hdrs = {k: v for k, v in self.headers.items() if k.startswith("x-")}
        return f"{self.code} {self.reason} ({self.elapsed * 1000:.0f} ms, {self.call_id}) {hdrs}"


def _sip_request(method: str, kam_port: int, local_port: int, call_id: str, body: str) -> bytes:
    data = body.encode()
    lines = [
        f"{method} sip:kemi@{LOCALHOST}:{kam_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {LOCALHOST}:{local_port};branch=z9hG4bK-{uuid.uuid4().hex};rport",
        "Max-Forwards: 70",
        f"From: <sip:test@{LOCALHOST}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:kemi@{LOCALHOST}>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
    ]
    if data:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _parse_response(data: bytes, elapsed: float) -> SipResponse | None:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    m = re.match(r"SIP/2\.0 (\d{3}) ?(.*)", lines[0])
    if m is None:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return SipResponse(int(m.group(1)), m.group(2), headers, elapsed, headers.get("call-id", ""))


# --------------------------------------------------------------------------- Kamailio


class KamailioKemi:
    """Kamailio 5.6 whose request route is ``app_python3/kemi.py`` (rendered into ``run_dir``)."""

    START_ATTEMPTS = 3

    def __init__(
        self,
        run_dir: Path,
        daemon_socket: str,
        *,
        children: int = CHILDREN,
        debug: int = 2,
        start_timeout: float = 15.0,
    ) -> None:
        self.run_dir = run_dir.resolve()
        self.daemon_socket = daemon_socket
        self.children = children
        self.debug = debug
        self.start_timeout = start_timeout
        self.cfg_path = self.run_dir / "kamailio.cfg"
        self.kemi_path = self.run_dir / "kemi.py"
        self.log_path = self.run_dir / "kamailio.log"
        self.pid_path = self.run_dir / "kamailio.pid"
        self.sip_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> KamailioKemi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _render(self, mdir: str) -> None:
        values = {
            "DEBUG": str(self.debug),
            "CHILDREN": str(self.children),
            "SIP_PORT": str(self.sip_port),
            "MPATH": mdir.rstrip("/") + "/",
            "KEMI_SCRIPT": str(self.kemi_path),
            "SRC_DIR": str(SRC_DIR),
            "SOCKET": self.daemon_socket,
            "CLIENT_TIMEOUT": repr(CLIENT_TIMEOUT),
        }
        for src, dst in ((CFG_TEMPLATE, self.cfg_path), (KEMI_TEMPLATE, self.kemi_path)):
            text = re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], src.read_text())
            dst.write_text(text)

    def start(self) -> None:
        """Render the cfg and the KEMI script, start Kamailio, wait until OPTIONS is answered.

        Retries on a new port when the chosen one was taken in between.
        """
        if self.proc is not None:
            raise HarnessError("already started")
        binary, mdir = kamailio_binary(), kemi_module_dir()
        if binary is None or mdir is None:
            raise HarnessError(missing_kemi() or "kamailio not installed")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(self.START_ATTEMPTS):
            (self.sip_port,) = free_udp_ports(1)
            self._render(mdir)
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            args = [
                binary, "-DD", "-E",
                "-f", str(self.cfg_path),
                "-Y", str(self.run_dir),
                "-P", str(self.pid_path),
                "-w", str(self.run_dir),
                "-m", "64", "-M", "16",
            ]  # fmt: skip
            with open(self.log_path, "ab") as logf:
                logf.write(f"=== test: starting {' '.join(args)}\n".encode())
                logf.flush()
                self.proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    cwd=self.run_dir, start_new_session=True,
                )  # fmt: skip
            try:
                self._wait_ready()
                return
            except HarnessError as e:
                last_error = str(e)
                _stop_process(self.proc, grace=5)
                self.proc = None
                if "address already in use" not in last_error.lower():
                    break
        raise HarnessError(last_error)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.running():
                assert self.proc is not None
                raise HarnessError(
                    f"kamailio exited with rc={self.proc.returncode}; log tail:\n"
                    + _tail(self.log_path)
                )
            try:
                (r,) = self.send([("OPTIONS", "")], timeout=0.3)
            except TimeoutError:
                continue
            if r.code == 200:
                return
        raise HarnessError(
            f"kamailio on udp:{LOCALHOST}:{self.sip_port} did not answer OPTIONS in "
            f"{self.start_timeout}s; log tail:\n" + _tail(self.log_path)
        )

    def stop(self) -> None:
        """Stop Kamailio by PID (SIGTERM; SIGKILL after 5 s; then its private process group)."""
        if self.proc is not None:
            _stop_process(self.proc, grace=5)
            self.proc = None

    def child_pids(self) -> set[int]:
        """PIDs of the processes Kamailio's main process forked (SIP workers among them)."""
        out = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == self.pid:
                out.add(int(entry))
        return out

    # ---- SIP

    def send(self, requests: list[tuple[str, str]], timeout: float = 10.0) -> list[SipResponse]:
        """Send requests ``(method, body)`` at once, each from its own UDP socket (own source
        port, own Call-ID), and return their final responses in order.

        Raises ``TimeoutError`` when any final response is missing after ``timeout`` s.
        """
        socks: list[socket.socket] = []
        sent: list[tuple[socket.socket, str, float]] = []
        try:
            for method, body in requests:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((LOCALHOST, 0))
                call_id = f"kemi-{uuid.uuid4().hex}@{LOCALHOST}"
                data = _sip_request(method, self.sip_port, s.getsockname()[1], call_id, body)
                sent.append((s, call_id, time.monotonic()))
                s.sendto(data, (LOCALHOST, self.sip_port))
            deadline = time.monotonic() + timeout
            out = []
            for s, call_id, t0 in sent:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no final SIP response to {call_id} in {timeout}s")
                    s.settimeout(remaining)
                    try:
                        data, _ = s.recvfrom(65535)
                    except TimeoutError:
                        raise TimeoutError(
                            f"no final SIP response to {call_id} in {timeout}s"
                        ) from None
                    r = _parse_response(data, time.monotonic() - t0)
                    if r is not None and r.call_id == call_id and r.code >= 200:
                        out.append(r)
                        break
            return out
        finally:
            for s in socks:
                s.close()

    def message(self, body: dict[str, Any], timeout: float = 10.0) -> SipResponse:
        (r,) = self.send([("MESSAGE", json.dumps(body))], timeout=timeout)
        return r


# --------------------------------------------------------------------------- broker side


@dataclass
class Amqp:
    """A test exchange (topic) with a queue that collects what is published to it."""

    channel: Any
    exchange: str
    queue: str
    routing_key: str

    def publish_request(self, seq: int, tag: str) -> dict[str, Any]:
        return {
            "op": "publish",
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "payload": {
                "Event-Category": "kemi-test",
                "Event-Name": "publish",
                "Seq": seq,
                "Tag": tag,
            },
        }

    def collected(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Up to ``count`` published payloads (waits up to ``timeout`` s for them)."""
        return [json.loads(body) for _, _, body in drain(self.channel, self.queue, count, timeout)]


@pytest.fixture
def amqp(rabbitmq_up: None) -> Iterator[Amqp]:
    conn = pika_connection()
    ch = conn.channel()
    exchange = unique("kemi-ex")
    ch.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
    queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
    ch.queue_bind(queue, exchange, routing_key="kemi.publish")
    try:
        yield Amqp(ch, exchange, queue, "kemi.publish")
    finally:
        with contextlib.suppress(Exception):
            ch.queue_delete(queue)
            ch.exchange_delete(exchange)
        with contextlib.suppress(Exception):
            conn.close()


@dataclass
class EchoResponder:
    """A Kazoo-style responder on its own pika connection and thread: consumes requests from
    ``exchange``/``routing_key`` and replies to ``targeted`` with routing key = the request's
    ``Server-ID``, echoing ``Msg-ID`` and adding ``Echo = "echo:" + Say``."""

    exchange: str
    routing_key: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> EchoResponder:
        self._thread = threading.Thread(target=self._run, name="echo-responder", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            self.stop()
            raise AssertionError(f"echo responder did not start: {self.error!r}")
        return self

    def _run(self) -> None:
        conn = None
        try:
            conn = pika_connection()
            ch = conn.channel()
            queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
            ch.queue_bind(queue, self.exchange, routing_key=self.routing_key)
            self._ready.set()
            for method, _props, body in ch.consume(queue, inactivity_timeout=0.1):
                if self._stop.is_set():
                    break
                if method is None:
                    continue
                request = json.loads(body)
                self.requests.append(request)
                reply = {
                    "Event-Category": "kemi-test",
                    "Event-Name": "echo_resp",
                    "Msg-ID": request["Msg-ID"],
                    "Echo": "echo:" + str(request.get("Say")),
                }
                ch.basic_publish(
                    "targeted",
                    request["Server-ID"],
                    json.dumps(reply).encode(),
                    pika.BasicProperties(content_type="application/json"),
                )
                ch.basic_ack(method.delivery_tag)
            ch.cancel()
            ch.queue_delete(queue)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "echo responder thread did not stop"


# --------------------------------------------------------------------------- processes


@pytest.fixture
def daemon(
    tmp_path: Path, rabbitmq_up: None, kemi_ready: None, request: pytest.FixtureRequest
) -> Iterator[DaemonProcess]:
    """The daemon, trivial routes (nothing consumed); stopped at teardown if still running."""
    d_dir = tmp_path / "daemon"
    d_dir.mkdir()
    d = DaemonProcess(d_dir, "", workers=1)
    d.start()
    try:
        yield d
    finally:
        assert d.proc is not None
        code = d.stop() if d.proc.poll() is None else d.proc.returncode
        if _failed(request) or code != 0:
            print(f"\n===== daemon log ({d.log_path}):\n" + d.logs()[-4000:])
    assert code == 0, f"daemon exit code {code}"


@pytest.fixture
def kam(
    tmp_path: Path, daemon: DaemonProcess, request: pytest.FixtureRequest
) -> Iterator[KamailioKemi]:
    k = KamailioKemi(tmp_path / "kamailio", daemon.socket)
    k.start()
    try:
        yield k
    finally:
        k.stop()
        if _failed(request):
            print(f"\n===== Kamailio log ({k.log_path}), udp port {k.sip_port}:")
            print("\n".join(k.logs().splitlines()[-100:]))


# --------------------------------------------------------------------------- helpers


def _publish_until_both_workers(
    kam: KamailioKemi, amqp: Amqp, tag: str, start_seq: int, expect: int = 200, rounds: int = 10
) -> list[SipResponse]:
    """Batches of 6 concurrent publishes until both SIP workers answered at least 2 each."""
    responses: list[SipResponse] = []
    seq = start_seq
    for _ in range(rounds):
        batch = []
        for _ in range(6):
            batch.append(("MESSAGE", json.dumps(amqp.publish_request(seq, tag))))
            seq += 1
        got = kam.send(batch, timeout=CLIENT_TIMEOUT * 3)
        for r in got:
            assert r.code == expect, f"publish #{len(responses)}: {r}"
        responses += got
        per_pid: dict[int, int] = {}
        for r in responses:
            per_pid[r.worker_pid] = per_pid.get(r.worker_pid, 0) + 1
        if len(per_pid) >= CHILDREN and min(per_pid.values()) >= 2:
            return responses
    raise AssertionError(
        f"{len(responses)} publishes did not reach both SIP workers: "
        f"{sorted({r.worker_pid for r in responses})}"
    )


def _check_injected(doc: dict[str, Any], node: str) -> None:
    assert isinstance(doc.get("Msg-ID"), str) and doc["Msg-ID"], doc
    assert doc.get("Node") == f"kamailio@{node}", doc
    assert re.fullmatch(rf"kamailio@{re.escape(node)}-<[^>]+>-targeted-\d+", doc["Server-ID"]), doc
    assert doc.get("App-Name"), doc


def _query(exchange: str, say: str, timeout_ms: int = 3000) -> dict[str, Any]:
    return {
        "op": "query",
        "exchange": exchange,
        "routing_key": "kemi.echo",
        "payload": {"Event-Category": "kemi-test", "Event-Name": "echo_req", "Say": say},
        "timeout_ms": timeout_ms,
    }


def _worker_view(responses: list[SipResponse]) -> dict[int, set[str]]:
    view: dict[int, set[str]] = {}
    for r in responses:
        view.setdefault(r.worker_pid, set()).add(r.client_tag)
    return view


# --------------------------------------------------------------------------- tests


def test_both_sip_workers_publish_through_their_own_client(
    kam: KamailioKemi, daemon: DaemonProcess, amqp: Amqp
) -> None:
    tag = uuid.uuid4().hex
    responses = _publish_until_both_workers(kam, amqp, tag, start_seq=0)

    # Two forked SIP workers of this Kamailio, each with one Client created in that process.
    children = kam.child_pids()
    view = _worker_view(responses)
    assert len(view) == CHILDREN, view
    for pid, tags in view.items():
        assert pid in children and pid != kam.pid, (pid, kam.pid, children)
        assert tags == {f"{pid}/1"}, f"worker {pid}: not one Client created in it: {tags}"
    for r in responses:
        assert isinstance(json.loads(r.headers["x-result"]), dict), r

    # Every publish arrived once, with the fields the daemon injects.
    docs = amqp.collected(len(responses))
    assert sorted(d["Seq"] for d in docs) == list(range(len(responses)))
    assert {d["Tag"] for d in docs} == {tag}
    for d in docs:
        _check_injected(d, daemon.node)
    assert len({d["Msg-ID"] for d in docs}) == len(docs), "Msg-IDs are not unique"
    assert amqp.collected(1, timeout=0.3) == [], "more messages than publishes"


def test_query_answered_by_a_kazoo_responder(
    kam: KamailioKemi, daemon: DaemonProcess, amqp: Amqp
) -> None:
    responder = EchoResponder(amqp.exchange, "kemi.echo").start()
    says: list[str] = []
    responses: list[SipResponse] = []
    try:
        # Concurrent queries, in rounds until both SIP workers have answered some.
        for _ in range(10):
            batch = [f"hello-{len(says) + i}-{uuid.uuid4().hex[:8]}" for i in range(4)]
            requests = [("MESSAGE", json.dumps(_query(amqp.exchange, say))) for say in batch]
            got = kam.send(requests, timeout=15)
            for say, r in zip(batch, got, strict=True):
                assert r.code == 200, r
                assert r.headers.get("x-echo") == f"echo:{say}", r
            says += batch
            responses += got
            if len({r.worker_pid for r in responses}) == CHILDREN:
                break
    finally:
        responder.stop()
    assert responder.error is None, repr(responder.error)
    assert len({r.worker_pid for r in responses}) == CHILDREN, [str(r) for r in responses]
    assert sorted(q["Say"] for q in responder.requests) == sorted(says)
    for q in responder.requests:
        _check_injected(q, daemon.node)


def test_unanswered_query_times_out_with_408(
    kam: KamailioKemi, daemon: DaemonProcess, amqp: Amqp
) -> None:
    query = {
        "op": "query",
        "exchange": amqp.exchange,
        "routing_key": "kemi.nobody-listens",
        "payload": {"Event-Category": "kemi-test", "Event-Name": "void_req"},
        "timeout_ms": 300,
    }
    t0 = time.monotonic()
    r = kam.message(query, timeout=5)
    elapsed = time.monotonic() - t0
    assert r.code == 408, r
    assert 0.25 <= elapsed < 1.2, f"408 after {elapsed:.3f}s: {r}"
    # The worker is free again and its Client still works.
    ok = kam.message(amqp.publish_request(0, "after-timeout"))
    assert ok.code == 200, ok
    assert [d["Tag"] for d in amqp.collected(1)] == ["after-timeout"]


def test_daemon_down_gives_500_and_client_reconnects_after_restart(
    kam: KamailioKemi, daemon: DaemonProcess, amqp: Amqp
) -> None:
    # Both workers hold an open connection to the daemon.
    before = _publish_until_both_workers(kam, amqp, "before", start_seq=0)
    workers = _worker_view(before)
    kam_pid = kam.pid

    assert daemon.stop() == 0
    shutil.copy(daemon.log_path, daemon.log_path.with_name("daemon-1.log"))

    down = _publish_until_both_workers(kam, amqp, "down", start_seq=1000, expect=500)
    for r in down:
        assert r.reason == "NotConnected", r
        assert r.elapsed < CLIENT_TIMEOUT, f"NotConnected took {r.elapsed:.2f}s: {r}"
    assert kam.running() and kam.pid == kam_pid, "Kamailio did not survive the daemon stop"
    (alive,) = kam.send([("OPTIONS", "")], timeout=5)
    assert alive.code == 200, alive

    # Same socket path, same Kamailio: the Clients reconnect on their own.
    daemon.start()
    after = _publish_until_both_workers(kam, amqp, "after", start_seq=2000)
    assert kam.running() and kam.pid == kam_pid
    assert _worker_view(down) == workers, "not the same workers / Client objects while down"
    assert _worker_view(after) == workers, "not the same workers / Client objects after restart"

    # Restart again while both workers sit on an open connection to the old daemon: their
    # next publish fails to write on it, and is sent once more on a fresh connection.
    assert daemon.stop() == 0
    shutil.copy(daemon.log_path, daemon.log_path.with_name("daemon-2.log"))
    daemon.start()
    idle = _publish_until_both_workers(kam, amqp, "idle-restart", start_seq=3000)
    assert _worker_view(idle) == workers

    docs = amqp.collected(len(before) + len(after) + len(idle))
    got = sorted(d["Seq"] for d in docs)
    want = [*range(len(before)), *range(2000, 2000 + len(after)), *range(3000, 3000 + len(idle))]
    assert got == want, got
    assert amqp.collected(1, timeout=0.3) == [], "a publish made while the daemon was down arrived"
