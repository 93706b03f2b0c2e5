#!/usr/bin/env python3
"""Chaos soak: two daemons on the 3-node cluster under mixed load while faults are injected.

    bench/chaos.py                       10 minutes (capacity measured first, load at half of it)
    bench/chaos.py --duration 60         the test suite's version (tests/cluster/test_chaos.py)
    bench/chaos.py --rates 200,100,50,80 skip the measurement: publish,work,presence,query per s

Set-up: ``scripts/rabbit-cluster start`` when the cluster is not running (stopped again at the
end; a running cluster is left running). Two daemons ("sbc1", "sbc2"), each with its own
node_hostname, socket, SQLite presentity database and reply queues, list all three nodes:
sbc1 ``[proxy -> kzc1, kzc2, kzc3]`` (through a TCP proxy this script owns), sbc2
``[kzc2, kzc3, kzc1]``; persistent publishes; subscriptions on quorum queues with ack after
the handler. A responder (pika, in a thread, failing over across the nodes) answers queries.

Load (each kind at ``--load`` x the measured rate, half by default; both daemons alternately):

* publish: to ``chaos.ledger`` -> quorum queue ``chaos-ledger`` (nobody consumes it during the
  run); every Msg-ID the daemon confirmed goes into the ledger;
* work: to ``chaos.work`` -> quorum queue ``chaos-work`` consumed by both daemons, ack after the
  handler, which appends the Msg-ID to ``handled.log``;
* presence: dialog updates to ``chaos.presence`` -> ``chaos-presence``, the route calls
  ``kz.pua_publish`` (SQLite) and then records the Msg-ID;
* query: 8 concurrent (4 per daemon) against the responder, timeout ``--query-timeout-ms``.

Faults, one after another after a warm-up, on a schedule printed at the start (repeated while
``--duration`` allows): SIGKILL a worker of sbc1; SIGKILL sbc2's manager (then, as systemd
with KillMode=control-group would, SIGTERM what is left of it, wait RestartSec=1, start it
again); stop and start kzc1 (sbc1's node), then kzc2 (sbc2's node); memory alarm on kzc3;
SIGSTOP kzc3 for twice the heartbeat, then SIGCONT; cut sbc1's connections at the proxy.

Invariants checked at the end (exit 1 when one fails; the JSON result has all numbers):

* 0 confirmed publishes lost: a ledger consumer reads ``chaos-ledger`` and finds every
  confirmed Msg-ID; duplicates counted;
* 0 acked-after deliveries lost: every confirmed work/presence Msg-ID was handled at least
  once; duplicates counted and explained (broker redelivery after a lost ack, re-run after a
  worker kill, or a publish sent twice after a lost confirm);
* no query answered past its deadline + 50 ms, no reply delivered to the wrong waiter (the
  time is taken by this script around the call, minus its own event loop's lag in the last
  1.5 s, measured by a 10 ms ticker: the raw count is reported as ``late_raw``);
* RSS of each daemon process within 10 % of its level after warm-up;
* both daemons healthy at the end (``kazoo-amqp status`` over their sockets: every broker up,
  every worker alive, nothing buffered or unconfirmed).

All traffic is on 127.0.0.1; every loop is bounded in count and time; every process this
script starts is stopped in ``finally`` (also on Ctrl-C); a node stopped, paused or alarmed by a
fault is started, continued or cleared again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

import _lib as L

SCRIPT = L.REPO / "scripts" / "rabbit-cluster"
PORT_BASE = int(os.environ.get("KZ_CLUSTER_PORT_BASE", "5680"))
NODE_PORTS = {n: PORT_BASE + n for n in (1, 2, 3)}
KINDS = ("publish", "work", "presence", "query")
RSS_TOLERANCE = 0.10
LATE_MS = 50.0


def node_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}"


def say(*args: Any) -> None:
    L.log(*args)


# --------------------------------------------------------------------------- the cluster
class Cluster:
    """``scripts/rabbit-cluster``, called with a bound on every call."""

    def __init__(self) -> None:
        self.started_here = False
        self.stopped_nodes: set[int] = set()
        self.paused: dict[int, int] = {}
        self.alarmed: set[int] = set()

    def run(self, *args: str, timeout: float = 180.0, check: bool = True) -> str:
        proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"rabbit-cluster {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout.strip()

    async def arun(self, *args: str, timeout: float = 180.0) -> str:
        return await asyncio.to_thread(self.run, *args, timeout=timeout)

    def running(self) -> bool:
        return subprocess.run([str(SCRIPT), "status"], capture_output=True, timeout=60,
                              check=False).returncode == 0

    def ensure(self) -> None:
        if not self.running():
            say("starting the 3-node cluster (scripts/rabbit-cluster start)")
            self.started_here = True
            self.run("start", timeout=300)

    def restore(self) -> None:
        """Undo whatever a fault left: SIGCONT, clear alarms, start stopped nodes."""
        for node, pid in list(self.paused.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.paused.pop(node)
        for node in list(self.alarmed):
            with contextlib.suppress(Exception):
                self.run("alarm", str(node), "off", timeout=60)
            self.alarmed.discard(node)
        for node in list(self.stopped_nodes):
            with contextlib.suppress(Exception):
                self.run("start-node", str(node), timeout=180)
            self.stopped_nodes.discard(node)

    def finish(self) -> None:
        self.restore()
        if self.started_here:
            say("stopping the cluster this run started")
            with contextlib.suppress(Exception):
                self.run("stop", timeout=180)


def pika_conn(port: int) -> Any:
    import pika

    return pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=port, heartbeat=0, blocked_connection_timeout=120,
        connection_attempts=1, socket_timeout=5,
        credentials=pika.PlainCredentials("guest", "guest")))


def first_conn(order: tuple[int, ...] = (1, 2, 3)) -> Any:
    last: Exception | None = None
    for n in order:
        try:
            return pika_conn(NODE_PORTS[n])
        except Exception as exc:
            last = exc
    raise RuntimeError(f"no cluster node answers: {last}")


@dataclass
class Names:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def ex(self, kind: str) -> str:
        return f"chaos.{self.tag}.{kind}"

    def q(self, kind: str) -> str:
        return f"chaos-{self.tag}-{kind}"


def declare_topology(names: Names) -> None:
    """The ledger and request quorum queues (the daemons declare work and presence)."""
    conn = first_conn()
    try:
        ch = conn.channel()
        for kind in ("ledger", "req"):
            ch.exchange_declare(names.ex(kind), "topic", durable=True)
            ch.queue_declare(names.q(kind), durable=True,
                             arguments={"x-queue-type": "quorum"})
            ch.queue_bind(names.q(kind), names.ex(kind), "#")
    finally:
        conn.close()


def delete_topology(names: Names) -> None:
    with contextlib.suppress(Exception):
        conn = first_conn()
        for kind in ("ledger", "req", "work", "presence"):
            for op, name in (("queue_delete", names.q(kind)), ("exchange_delete", names.ex(kind))):
                with contextlib.suppress(Exception):
                    getattr(conn.channel(), op)(name)
        conn.close()


def queue_depths(names: Names, kinds: tuple[str, ...]) -> dict[str, int]:
    conn = first_conn((3, 2, 1))
    try:
        ch = conn.channel()
        return {k: int(ch.queue_declare(names.q(k), passive=True).method.message_count)
                for k in kinds}
    finally:
        conn.close()


# --------------------------------------------------------------------------- TCP proxy
class Proxy:
    """A TCP proxy on 127.0.0.1 in front of one node; ``cut()`` drops every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.cuts = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.upstream_port), 5)
        except (OSError, TimeoutError):
            w.transport.abort()
            return
        pair = (w, uw)
        self.pairs.add(pair)
        tasks = [asyncio.create_task(self._pump(r, uw)), asyncio.create_task(self._pump(ur, w))]
        self.tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
                self.tasks.discard(t)
            for x in pair:
                x.transport.abort()
            self.pairs.discard(pair)

    @staticmethod
    async def _pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()

    def cut(self) -> int:
        n = len(self.pairs)
        for pair in list(self.pairs):
            for x in pair:
                x.transport.abort()
        self.cuts += 1
        return n

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        for t in list(self.tasks):
            t.cancel()


# --------------------------------------------------------------------------- responder
class Responder:
    """Kazoo-style service in a thread: replies to ``targeted`` with the request's Server-ID,
    echoing its Msg-ID and Node. Fails over across the nodes (3, 2, 1) when its node goes."""

    def __init__(self, queue: str, seconds: float) -> None:
        self.queue = queue
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.count = 0
        self.reconnects = 0
        self.thread = threading.Thread(target=self._run, name="responder", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        import pika

        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                conn = first_conn((3, 2, 1))
            except Exception:
                time.sleep(0.5)
                continue
            try:
                ch = conn.channel()
                ch.basic_qos(prefetch_count=200)

                def on_msg(ch: Any, method: Any, _p: Any, body: bytes) -> None:
                    try:
                        req = json.loads(body)
                        reply = {"Event-Category": "chaos", "Event-Name": "reply",
                                 "Msg-ID": req["Msg-ID"], "Echo-Node": req["Node"]}
                        ch.basic_publish("targeted", req["Server-ID"], json.dumps(reply))
                        self.count += 1
                    finally:
                        ch.basic_ack(method.delivery_tag)

                ch.basic_consume(self.queue, on_msg)
                while not self.stop.is_set() and time.monotonic() < self.deadline:
                    conn.process_data_events(time_limit=0.2)
            except pika.exceptions.AMQPError:
                self.reconnects += 1
                time.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


# --------------------------------------------------------------------------- daemons
ROUTES = '''
HANDLED = os.path.join(HERE, "handled.log")

def _record(kz, kind):
    line = "%s %s %d %d %.3f\\n" % (kind, kz.payload.get("Msg-ID"), int(kz.redelivered),
                                  os.getpid(), time.time())
    fd = os.open(HANDLED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)

def _sub(exchange, queue, key):
    return {{"exchange": exchange, "queue": queue, "routing": key,
            "exchange-def": {{"type": "topic", "durable": 1, "auto_delete": 0}},
            "queue-def": {{"durable": 1, "auto_delete": 0}},
            "queue-args": {{"x-queue-type": "quorum"}},
            "no_ack": 0, "wait_for_consumer_ack": 1, "prefetch": 50}}

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe(_sub("{work_ex}", "{work_q}", "#"))
    kz.subscribe(_sub("{presence_ex}", "{presence_q}", "#"))

@router.route("kazoo:consumer-event-chaos-work")
def work(kz):
    _record(kz, "work")

@router.route("kazoo:consumer-event-presence-update")
def presence(kz):
    kz.pua_publish()
    _record(kz, "presence")
'''


class ChaosDaemon:
    """One daemon in its own session (so Ctrl-C reaches only this script, and the manager and
    its workers are one process group to clean up)."""

    def __init__(self, label: str, urls: list[str], routes: str, cfg: dict[str, Any]) -> None:
        self.label = label
        self.dir = Path(tempfile.mkdtemp(prefix=f"kzchaos-{label}-"))
        self.node = f"{label}-{uuid.uuid4().hex[:6]}.chaos.local"
        self.socket = str(self.dir / "kz.sock")
        (self.dir / "routes.py").write_text(L.ROUTES_PRELUDE + textwrap.dedent(routes))
        config = {
            "node_hostname": self.node,
            "amqp_connection": urls,
            "routes": "routes.py",
            "socket": self.socket,
            "db_url": f"sqlite:///{self.dir / 'presence.db'}",
            "log_level": "info",
            **cfg,
        }
        self.config_path = self.dir / "kazoo-amqp.toml"
        self.config_path.write_text(L._toml(config))
        self.log_path = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_mono = 0.0
        self.all_pids: set[int] = set()

    def db_init(self) -> None:
        """``kazoo-amqp db init``: the presentity table, as an operator creates it once."""
        subprocess.run([L.PY, "-m", "kazoo_amqp", "db", "init", "--config", str(self.config_path)],
                       cwd=self.dir, env=L.child_env(), capture_output=True, timeout=60,
                       check=True)

    def launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [L.PY, "-m", "kazoo_amqp", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=L.child_env(), cwd=self.dir,
                start_new_session=True)
        self.starts += 1
        self.started_mono = time.monotonic()
        self.all_pids.add(self.proc.pid)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited {self.proc.returncode}:\n"
                                   f"{self.logs()[-3000:]}")
            with contextlib.suppress(Exception):
                st = await self.status(2.0)
                if (all(b["up"] for b in st["manager"]["brokers"])
                        and all(w["alive"] for w in st["workers"]["workers"])):
                    self.all_pids.update(self.pids())
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.label} not ready in {timeout}s:\n{self.logs()[-3000:]}")

    async def status(self, timeout: float = 5.0) -> dict[str, Any]:
        from kazoo_amqp import AsyncClient

        client = AsyncClient(self.socket, timeout=timeout)
        try:
            return await asyncio.wait_for(client.status(), timeout)
        finally:
            await client.close()

    def pids(self) -> list[int]:
        """Manager and worker pids (workers found in /proc as the manager's children)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *L.children_of(self.proc.pid)]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.proc.wait(10)
        self.kill_group(signal.SIGKILL)  # nothing of ours may outlive the run
        return self.proc.returncode


# --------------------------------------------------------------------------- load
@dataclass
class Stats:
    ok: Counter[str] = field(default_factory=Counter)
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    #: "kind daemon error" -> count, to tell which daemon's outage a failure belongs to
    by_daemon: Counter[str] = field(default_factory=Counter)
    #: (seconds since the soak started, what went wrong) for the per-fault table
    timeline: list[tuple[float, str]] = field(default_factory=list)
    confirmed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    query_late: list[dict[str, Any]] = field(default_factory=list)
    query_wrong: list[dict[str, Any]] = field(default_factory=list)
    query_timeouts: int = 0
    #: past deadline + 50 ms as this script measured it, its own loop's lag included
    query_late_raw: int = 0
    query_max_ms: float = 0.0


def dialog(i: int, msg_id: str) -> dict[str, Any]:
    user = f"{1000 + i % 50}"
    return {
        "Event-Category": "presence", "Event-Name": "update", "Event-Package": "dialog",
        "Presence-ID": f"{user}@chaos.local", "From": f"sip:{user}@chaos.local",
        "From-User": user, "From-Realm": "chaos.local", "From-Tag": f"ft{i}",
        "To": "sip:2000@chaos.local", "To-User": "2000", "To-Realm": "chaos.local",
        "To-Tag": f"tt{i}", "Direction": "initiator",
        "State": ("early", "confirmed", "terminated")[i % 3], "Call-ID": f"c{i}@chaos",
        "Expires": 120, "Msg-ID": msg_id,
    }


class LoopLag:
    """How late this script's own event loop runs (a 10 ms ticker), so a late answer can be
    told apart from a late measurement."""

    def __init__(self) -> None:
        self.events: list[tuple[float, float]] = []  # (when, lag ms) over 20 ms
        self.max_ms = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(0.01)
            lag = (loop.time() - t - 0.01) * 1000
            self.max_ms = max(self.max_ms, lag)
            if lag > 20:
                self.events.append((time.monotonic(), lag))
                del self.events[:-1000]

    def recent_ms(self, window: float = 1.5) -> float:
        """The largest lag in the last ``window`` seconds."""
        now = time.monotonic()
        return max((lag for when, lag in self.events if now - when <= window), default=0.0)


class Load:
    """Paced load generators through the daemons' sockets (AsyncClient), bounded by time."""

    def __init__(self, daemons: list[ChaosDaemon], names: Names, stats: Stats,
                 query_timeout_ms: int) -> None:
        self.daemons = daemons
        self.names = names
        self.stats = stats
        self.qt = query_timeout_ms
        self.seq = Counter[str]()
        self.t0 = time.monotonic()
        self.lag = LoopLag()

    def _id(self, kind: str, d: ChaosDaemon) -> str:
        self.seq[kind] += 1
        return f"{kind[0]}-{d.label}-{self.seq[kind]}"

    async def op(self, kind: str, d: ChaosDaemon, client: Any) -> None:
        st = self.stats
        if kind == "query":
            msg_id = self._id(kind, d)
            t0 = time.monotonic()
            try:
                reply = await client.query(self.names.ex("req"), "req.x", {"Msg-ID": msg_id},
                                           timeout_ms=self.qt)
            except Exception as exc:
                ms = (time.monotonic() - t0) * 1000
                name = type(exc).__name__
                st.errors[kind][name] += 1
                st.by_daemon[f"{kind} {d.label} {name}"] += 1
                st.timeline.append((time.monotonic() - self.t0, f"{kind} {name} ({d.label})"))
                if name == "QueryTimeout":
                    st.query_timeouts += 1
                    if ms > self.qt + LATE_MS:
                        st.query_late_raw += 1
                    if ms - self.lag.recent_ms() > self.qt + LATE_MS:
                        st.timeline.append((time.monotonic() - self.t0, "query timeout late"))
                        st.query_late.append({
                            "msg_id": msg_id, "ms": round(ms, 1), "outcome": "timeout",
                            "t_s": round(time.monotonic() - self.t0, 1),
                            "daemon_ms": round(getattr(exc, "timeout_ms", 0.0), 1),
                            "driver_lag_ms": round(self.lag.recent_ms(), 1)})
                return
            ms = (time.monotonic() - t0) * 1000
            st.query_max_ms = max(st.query_max_ms, ms)
            if ms > self.qt + LATE_MS:
                st.query_late_raw += 1
            if ms - self.lag.recent_ms() > self.qt + LATE_MS:
                st.timeline.append((time.monotonic() - self.t0, "query answered late"))
                st.query_late.append({"msg_id": msg_id, "ms": round(ms, 1), "outcome": "reply",
                                      "t_s": round(time.monotonic() - self.t0, 1),
                                      "driver_lag_ms": round(self.lag.recent_ms(), 1)})
            if reply.get("Msg-ID") != msg_id or reply.get("Echo-Node") != f"kamailio@{d.node}":
                st.query_wrong.append({"sent": msg_id, "daemon": d.label,
                                       "got": reply.get("Msg-ID"),
                                       "for": reply.get("Echo-Node")})
            st.ok[kind] += 1
            return
        msg_id = self._id(kind, d)
        if kind == "publish":
            ex, payload = self.names.ex("ledger"), {"Msg-ID": msg_id, "Event-Category": "chaos",
                                                    "Event-Name": "ledger"}
        elif kind == "work":
            ex, payload = self.names.ex("work"), {"Msg-ID": msg_id, "Event-Category": "chaos",
                                                  "Event-Name": "work"}
        else:
            ex, payload = self.names.ex("presence"), dialog(self.seq[kind], msg_id)
        try:
            await client.publish(ex, f"{kind}.x", payload, confirm=True)
        except Exception as exc:
            st.errors[kind][type(exc).__name__] += 1
            st.by_daemon[f"{kind} {d.label} {type(exc).__name__}"] += 1
            st.timeline.append((time.monotonic() - self.t0,
                                f"{kind} {type(exc).__name__} ({d.label})"))
            return
        st.confirmed[kind].add(msg_id)
        st.ok[kind] += 1

    async def run(self, kind: str, rate: float | None, concurrency: int, seconds: float) -> None:
        """``concurrency`` tasks per daemon doing ``kind``; ``rate`` ops/s in total (None: as
        fast as they can). Bounded by ``seconds`` and by rate x seconds x 1.1 operations."""
        from kazoo_amqp import AsyncClient

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + seconds
        slot = [0]
        cap = int((rate or 1e9) * seconds * 1.1) + 1

        async def worker(d: ChaosDaemon) -> None:
            client = AsyncClient(d.socket, timeout=90.0)
            try:
                while loop.time() < end and slot[0] < cap:
                    i = slot[0]
                    slot[0] += 1
                    if rate:
                        delay = t0 + i / rate - loop.time()
                        if delay < -1.0:  # after a stall, skip the missed slots: no burst
                            slot[0] = max(slot[0], int((loop.time() - t0) * rate))
                        elif delay > 0:
                            await asyncio.sleep(delay)
                        if loop.time() >= end:
                            return
                    try:
                        await asyncio.wait_for(self.op(kind, d, client), 120)
                    except TimeoutError:
                        self.stats.errors[kind]["client wait over 120 s"] += 1
            finally:
                with contextlib.suppress(Exception):
                    await client.close()

        tasks = [worker(d) for d in self.daemons for _ in range(concurrency)]
        await asyncio.gather(*tasks)


CONCURRENCY = {"publish": 8, "work": 4, "presence": 2, "query": 4}  # per daemon


async def measure_capacity(load: Load, seconds: float) -> dict[str, float]:
    """Every kind at once, unpaced, for ``seconds``: completed operations per second."""
    before = Counter(load.stats.ok)
    t0 = time.monotonic()
    await asyncio.gather(*(load.run(k, None, CONCURRENCY[k], seconds) for k in KINDS))
    dt = time.monotonic() - t0
    return {k: round((load.stats.ok[k] - before[k]) / dt, 1) for k in KINDS}


# --------------------------------------------------------------------------- faults
@dataclass
class Fault:
    name: str
    run: Callable[[], Awaitable[str]]
    at: float = 0.0


class Chaos:
    def __init__(self, a: ChaosDaemon, b: ChaosDaemon, cluster: Cluster, proxy: Proxy,
                 heartbeat: int) -> None:
        self.a, self.b, self.cluster, self.proxy = a, b, cluster, proxy
        self.heartbeat = heartbeat
        self.killed_workers: set[int] = set()
        self.killed_managers: set[int] = set()
        self.log: list[dict[str, Any]] = []
        self.workers_left_after_manager_kill = 0

    def faults(self) -> list[Fault]:
        return [
            Fault("SIGKILL a worker of sbc1", self.kill_worker),
            Fault("SIGKILL sbc2's manager; restart it like systemd", self.kill_manager),
            Fault("stop kzc1 (sbc1's node), start it again", lambda: self.bounce(1)),
            Fault("memory alarm on kzc3 for 5 s", self.alarm),
            Fault("stop kzc2 (sbc2's node), start it again", lambda: self.bounce(2)),
            Fault(f"SIGSTOP kzc3 for {2 * self.heartbeat} s (2 x heartbeat), SIGCONT",
                  self.pause),
            Fault("cut sbc1's connections at the TCP proxy", self.cut),
        ]

    async def kill_worker(self) -> str:
        pids = self.a.pids()[1:]
        if not pids:
            return "no worker found"
        pid = random.choice(pids)
        os.kill(pid, signal.SIGKILL)
        self.killed_workers.add(pid)
        return f"killed worker pid {pid}"

    async def kill_manager(self) -> str:
        b = self.b
        assert b.proc is not None
        workers = b.pids()[1:]
        manager = b.proc.pid
        self.killed_managers.add(manager)
        self.killed_workers.update(workers)  # their in-flight work is re-run elsewhere
        os.kill(b.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(b.proc.wait, 10)
        await asyncio.sleep(1.0)
        left = [p for p in workers if Path(f"/proc/{p}").exists()]
        self.workers_left_after_manager_kill += len(left)
        b.kill_group(signal.SIGTERM)  # systemd: KillMode=control-group
        await asyncio.sleep(0.5)
        b.kill_group(signal.SIGKILL)
        b.launch()  # RestartSec=1 was the sleep above
        await b.wait_ready(90)
        return (f"killed manager {manager}; {len(left)} of {len(workers)} "
                "workers still alive 1 s later; restarted")

    async def bounce(self, node: int) -> str:
        self.cluster.stopped_nodes.add(node)
        t0 = time.monotonic()
        await self.cluster.arun("stop-node", str(node))
        await asyncio.sleep(3.0)
        await self.cluster.arun("start-node", str(node))
        self.cluster.stopped_nodes.discard(node)
        return f"kzc{node} down and back in {time.monotonic() - t0:.1f} s"

    async def alarm(self) -> str:
        self.cluster.alarmed.add(3)
        await self.cluster.arun("alarm", "3", "on")
        await asyncio.sleep(5.0)
        await self.cluster.arun("alarm", "3", "off")
        self.cluster.alarmed.discard(3)
        return "alarm raised and cleared"

    async def pause(self) -> str:
        pid = int(await self.cluster.arun("pid", "3"))
        self.cluster.paused[3] = pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(2 * self.heartbeat)
        finally:
            os.kill(pid, signal.SIGCONT)
            self.cluster.paused.pop(3, None)
        return f"kzc3 (pid {pid}) stopped for {2 * self.heartbeat} s"

    async def cut(self) -> str:
        return f"dropped {self.proxy.cut()} proxied connections"

    @staticmethod
    def budget(f: Fault, heartbeat: int) -> float:
        """Seconds a fault takes (for the printed schedule)."""
        if "stop kzc" in f.name:
            return 14.0
        if "manager" in f.name:
            return 6.0
        if "alarm" in f.name:
            return 6.0
        if "SIGSTOP" in f.name:
            return 2 * heartbeat + 1.0
        return 1.0

    def schedule(self, warmup: float, duration: float, cooldown: float) -> list[Fault]:
        """One or more rounds of every fault, spread evenly between warm-up and cool-down."""
        base = self.faults()
        need = sum(self.budget(f, self.heartbeat) for f in base)
        window = max(0.0, duration - warmup - cooldown)
        rounds = max(1, int(window // (need + 20 * len(base))) if window > need else 1)
        plan: list[Fault] = []
        for _ in range(rounds):
            plan.extend(Fault(f.name, f.run) for f in self.faults())
        gap = max(2.0, (window - need * rounds) / len(plan))
        t = warmup
        for f in plan:
            f.at = t
            t += self.budget(f, self.heartbeat) + gap
        return plan

    async def play(self, plan: list[Fault], t0: float) -> None:
        for f in plan:
            delay = t0 + f.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            start = time.monotonic() - t0
            say(f"FAULT t={start:5.1f}s {f.name}")
            try:
                detail = await asyncio.wait_for(f.run(), 240)
            except Exception as exc:
                detail = f"FAILED: {type(exc).__name__}: {exc}"
            end = time.monotonic() - t0
            say(f"      t={end:5.1f}s {detail}")
            self.log.append({"fault": f.name, "start_s": round(start, 1),
                             "end_s": round(end, 1), "detail": detail})


# --------------------------------------------------------------------------- RSS
class RssWatch:
    """RSS of every daemon process: baseline once it has run ``warmup`` s, then the latest."""

    def __init__(self, daemons: list[ChaosDaemon], warmup: float) -> None:
        self.daemons = daemons
        self.warmup = warmup
        self.first_seen: dict[int, float] = {}
        self.base: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.label: dict[int, str] = {}

    def sample(self) -> None:
        now = time.monotonic()
        for d in self.daemons:
            for i, pid in enumerate(d.pids()):
                rss, _ = L.mem_kb(pid)
                if rss is None:
                    continue
                self.label.setdefault(pid, f"{d.label} {'manager' if i == 0 else 'worker'}")
                self.first_seen.setdefault(pid, now)
                if pid not in self.base and now - self.first_seen[pid] >= self.warmup:
                    self.base[pid] = rss
                self.last[pid] = rss

    def verdict(self, alive: set[int]) -> list[dict[str, Any]]:
        rows = []
        for pid, base in self.base.items():
            if pid not in alive:
                continue
            last = self.last[pid]
            growth = (last - base) / base
            rows.append({"pid": pid, "process": self.label[pid], "after_warmup_kb": base,
                         "end_kb": last, "growth_pct": round(100 * growth, 1),
                         "ok": growth <= RSS_TOLERANCE})
        return rows


# --------------------------------------------------------------------------- the end
Handled = tuple[str, str, int, int, str, float]  # kind, Msg-ID, redelivered, pid, daemon, time


def read_handled(daemons: list[ChaosDaemon]) -> list[Handled]:
    rows = []
    for d in daemons:
        path = d.dir / "handled.log"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                rows.append((parts[0], parts[1], int(parts[2]), int(parts[3]), d.label,
                             float(parts[4])))
    return rows


def read_ledger(names: Names, timeout: float) -> tuple[Counter[str], int]:
    """Every Msg-ID in ``chaos-ledger`` (auto-ack consume until it is empty), and how many
    messages were still in it when ``timeout`` ran out (0 when it was read to the end)."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    left = -1
    idle = [0.0]

    def on_msg(_ch: Any, _m: Any, _p: Any, body: bytes) -> None:
        seen[json.loads(body)["Msg-ID"]] += 1
        idle[0] = time.monotonic()

    while time.monotonic() < deadline:
        try:
            conn = first_conn((3, 2, 1))
            ch = conn.channel()
            ch.basic_consume(names.q("ledger"), on_msg, auto_ack=True)
            idle[0] = time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - idle[0] < 3.0:
                conn.process_data_events(time_limit=0.5)
            left = int(ch.queue_declare(names.q("ledger"), passive=True).method.message_count)
            conn.close()
            if left == 0:
                return seen, 0
        except Exception as exc:
            say(f"ledger read interrupted ({exc}); again")
            time.sleep(1)
    return seen, left


def presentity_rows(d: ChaosDaemon) -> int:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(d.dir / "presence.db", timeout=10)) as db:
            return int(db.execute("SELECT COUNT(*) FROM presentity").fetchone()[0])
    except sqlite3.Error:
        return -1


def explain_duplicates(rows: list[Handled], killed: set[int]
                       ) -> tuple[dict[str, int], list[tuple[float, str]]]:
    """Why each extra run of a Msg-ID happened; and (wall time, reason) of each."""
    by_id: dict[str, list[Handled]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r[5]):
        by_id[r[1]].append(r)
    why: Counter[str] = Counter()
    when: list[tuple[float, str]] = []
    for runs in by_id.values():
        for prev, again in itertools.pairwise(runs):
            if again[2]:
                reason = "broker redelivery after a lost ack"
            elif prev[3] in killed:
                reason = "re-run after its worker was killed"
            else:
                reason = "published twice (re-sent after a lost confirm)"
            why[reason] += 1
            when.append((again[5], reason))
    return dict(why), when


async def soak(a: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster()
    names = Names()
    daemons: list[ChaosDaemon] = []
    proxy = Proxy(NODE_PORTS[1])
    responder: Responder | None = None
    result: dict[str, Any] = {"duration_s": a.duration, "load": a.load}
    try:
        await asyncio.to_thread(cluster.ensure)
        await asyncio.to_thread(declare_topology, names)
        await proxy.start()
        cfg = {
            "amqp_consumer_processes": a.workers,
            "amqp_heartbeats": a.heartbeat,
            "publish_persistent": True,
            "reconnect_min_ms": 100,
            "reconnect_max_ms": 2000,
            "publish_buffer_timeout_ms": 60000,
            "publish_confirm_timeout_ms": 10000,
            "amqp_query_timeout_sec": 2,
        }
        routes = ROUTES.format(work_ex=names.ex("work"), work_q=names.q("work"),
                               presence_ex=names.ex("presence"), presence_q=names.q("presence"))
        da = ChaosDaemon("sbc1", [node_url(proxy.port), node_url(NODE_PORTS[2]),
                                  node_url(NODE_PORTS[3])], routes, cfg)
        db = ChaosDaemon("sbc2", [node_url(NODE_PORTS[n]) for n in (2, 3, 1)], routes, cfg)
        daemons += [da, db]
        for d in daemons:
            d.db_init()
            d.launch()
        for d in daemons:
            await d.wait_ready(90)
        say(f"daemons up: sbc1 {da.dir}, sbc2 {db.dir}")
        responder = Responder(names.q("req"), a.duration * 3 + 600)
        responder.start()
        stats = Stats()
        load = Load(daemons, names, stats, a.query_timeout_ms)

        if a.rates:
            capacity = dict(zip(KINDS, (float(x) for x in a.rates.split(",")), strict=True))
            say(f"capacity given: {capacity}")
        else:
            say(f"measuring capacity: every kind unpaced for {a.capacity_s} s")
            capacity = await measure_capacity(load, a.capacity_s)
            say(f"measured capacity (ops/s): {capacity}")
        rates = {k: max(1.0, round(v * a.load, 1)) for k, v in capacity.items()}
        result |= {"capacity_ops_s": capacity, "rates_ops_s": rates}
        # settle: let the measurement's backlog drain before the soak's clock starts
        await asyncio.sleep(3)

        chaos = Chaos(da, db, cluster, proxy, a.heartbeat)
        warmup = min(60.0, max(8.0, a.duration * 0.12))
        cooldown = min(60.0, max(10.0, a.duration * 0.1))
        plan = chaos.schedule(warmup, a.duration, cooldown)
        say(f"soak: {a.duration:.0f} s at {rates} ops/s; warm-up {warmup:.0f} s; schedule:")
        for f in plan:
            say(f"   t={f.at:6.1f}s  {f.name}")
        result["schedule"] = [{"at_s": f.at, "fault": f.name} for f in plan]

        rss = RssWatch(daemons, warmup)
        t0 = time.monotonic()
        t0_wall = time.time()
        stop = asyncio.Event()

        async def sampler() -> None:
            while not stop.is_set():
                rss.sample()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

        sampling = asyncio.create_task(sampler())
        load.t0 = t0
        lagging = asyncio.create_task(load.lag.run(stop))
        faults = asyncio.create_task(chaos.play(plan, t0))
        # the load runs until the duration is over and the last fault ended + cool-down
        loads = [asyncio.create_task(load.run(k, rates[k], CONCURRENCY[k], a.duration * 3))
                 for k in KINDS]
        try:
            await asyncio.wait_for(faults, a.duration * 3 + 600)
            end_at = max(t0 + a.duration, time.monotonic() + cooldown)
            while time.monotonic() < end_at:
                await asyncio.sleep(0.5)
        finally:
            for t in loads:
                t.cancel()
            await asyncio.gather(*loads, return_exceptions=True)
        rss.sample()
        stop.set()
        await sampling
        await lagging
        result["driver_loop_max_lag_ms"] = round(load.lag.max_ms, 1)
        result["soak_s"] = round(time.monotonic() - t0, 1)
        result["faults"] = chaos.log
        say("load stopped; waiting for the work queues to drain")

        # ---- drain: every confirmed work/presence message handled, queues empty
        deadline = time.monotonic() + 120
        depths: dict[str, int] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                depths = await asyncio.to_thread(queue_depths, names, ("work", "presence"))
                if not any(depths.values()):
                    break
            await asyncio.sleep(1)
        result["queues_left"] = depths
        await asyncio.sleep(2)  # the last acks

        # ---- health
        health = {}
        for d in daemons:
            proc = await asyncio.create_subprocess_exec(
                L.PY, "-m", "kazoo_amqp", "status", "--socket", d.socket,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=L.child_env())
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            try:
                st = json.loads(out)
                m = st["manager"]
                ok = (all(b["up"] for b in m["brokers"])
                      and all(w["alive"] for w in st["workers"]["workers"])
                      and m["buffered_publishes"] == 0 and m["unconfirmed_publishes"] == 0)
                health[d.label] = {"ok": ok, "brokers_up": [b["up"] for b in m["brokers"]],
                                   "workers_alive": [w["alive"] for w in st["workers"]["workers"]],
                                   "counters": {k: v for k, v in m.items()
                                                if isinstance(v, int | bool)}}
            except Exception as exc:
                health[d.label] = {"ok": False, "error": f"{exc}: {err.decode()[-500:]}"}
        result["health"] = health
        alive = {p for d in daemons for p in d.pids()}
        result["rss"] = rss.verdict(alive)

        # ---- ledgers
        say("reading the ledger queue")
        ledger, unread = await asyncio.to_thread(
            read_ledger, names, 120 + len(stats.confirmed["publish"]) / 200)
        confirmed = stats.confirmed
        lost_pub = confirmed["publish"] - set(ledger)
        handled = read_handled(daemons)
        handled_ids = {r[1] for r in handled}
        acked_after = confirmed["work"] | confirmed["presence"]
        lost_after = acked_after - handled_ids
        killed = chaos.killed_workers | chaos.killed_managers
        result["publish"] = {
            "confirmed": len(confirmed["publish"]), "in_queue": len(ledger),
            "lost": len(lost_pub), "lost_sample": sorted(lost_pub)[:10],
            "duplicates": sum(n - 1 for n in ledger.values() if n > 1),
            "delivered_not_confirmed": len(set(ledger) - confirmed["publish"]),
            "unread_in_queue": unread,
            "failed": dict(stats.errors["publish"]),
        }
        per_kind = Counter(r[0] for r in handled)
        dup_why, dup_when = explain_duplicates(handled, killed)
        for wall, reason in dup_when:
            stats.timeline.append((wall - t0_wall, f"duplicate run: {reason}"))
        result["acked_after"] = {
            "confirmed": len(acked_after), "handled_runs": dict(per_kind),
            "lost": len(lost_after), "lost_sample": sorted(lost_after)[:10],
            "duplicates": len(handled) - len(handled_ids),
            "duplicates_explained": dup_why,
            "failed": {k: dict(stats.errors[k]) for k in ("work", "presence")},
        }
        result["query"] = {
            "answered": stats.ok["query"], "timeouts": stats.query_timeouts,
            "late": len(stats.query_late), "late_sample": stats.query_late[:10],
            "late_raw": stats.query_late_raw,
            "wrong_waiter": len(stats.query_wrong), "wrong_sample": stats.query_wrong[:10],
            "max_answer_ms": round(stats.query_max_ms, 1),
            "errors": dict(stats.errors["query"]),
            "responder_replies": responder.count, "responder_reconnects": responder.reconnects,
        }
        result["client_errors_by_daemon"] = dict(stats.by_daemon)
        result["presentity_rows"] = {d.label: presentity_rows(d) for d in daemons}
        result["workers_left_after_manager_kill"] = chaos.workers_left_after_manager_kill
        result["log_errors"] = {
            d.label: [ln for ln in d.logs().splitlines()
                      if " ERROR " in ln or "Traceback" in ln][:10]
            for d in daemons}
        presence_failed = {d.label: sum("presence batch" in ln and " failed" in ln
                                        for ln in d.logs().splitlines()) for d in daemons}
        result["presence_batches_failed"] = presence_failed
        checks = {
            "0 confirmed publishes lost": not lost_pub and bool(confirmed["publish"]),
            "the ledger queue was read to the end": unread == 0,
            "0 acked-after deliveries lost": not lost_after and bool(acked_after),
            "0 presence writes failed": not any(presence_failed.values()),
            "no query answered past its deadline + 50 ms": not stats.query_late,
            "no reply to the wrong waiter": not stats.query_wrong,
            "RSS within 10 % of after warm-up": all(r["ok"] for r in result["rss"]),
            "daemons healthy at the end": all(h["ok"] for h in health.values()),
        }
        result["checks"] = checks
        result["per_fault"] = per_fault(chaos.log, stats.timeline)
        result["table_md"] = table_md(result)
        result["ok"] = all(checks.values())
        return result
    finally:
        if responder is not None:
            responder.close()
        for d in daemons:
            code = d.stop()
            result.setdefault("exit_codes", {})[d.label] = code
        await proxy.close()
        await asyncio.to_thread(cluster.restore)
        if not a.keep:
            await asyncio.to_thread(delete_topology, names)
        await asyncio.to_thread(cluster.finish)
        result["dirs"] = {d.label: str(d.dir) for d in daemons}
        if result.get("ok") and not a.keep:  # a failed run keeps its logs for the post-mortem
            for d in daemons:
                shutil.rmtree(d.dir, ignore_errors=True)


def per_fault(log: list[dict[str, Any]], timeline: list[tuple[float, str]]
              ) -> list[dict[str, Any]]:
    """What went wrong from each fault's start to the next one's (the window it owns)."""
    rows = []
    starts = [f["start_s"] for f in log] + [1e9]
    before = Counter(what for t, what in timeline if t < (starts[0] if log else 1e9))
    rows.append({"fault": "(none: before the first fault)", "counts": dict(before)})
    for i, f in enumerate(log):
        lo, hi = starts[i], starts[i + 1]
        counts = Counter(what for t, what in timeline if lo <= t < hi)
        rows.append({"fault": f["fault"], "took_s": round(f["end_s"] - f["start_s"], 1),
                     "detail": f["detail"], "counts": dict(counts)})
    return rows


def table_md(r: dict[str, Any]) -> str:
    lines = ["| fault | took | what the callers saw (count) |", "|---|---|---|"]
    for row in r["per_fault"]:
        seen = ", ".join(f"{k}: {v}" for k, v in sorted(row["counts"].items())) or "nothing"
        took = f"{row['took_s']} s" if "took_s" in row else ""
        lines.append(f"| {row['fault']} | {took} | {seen} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    ap.add_argument("--load", type=float, default=0.5, help="fraction of measured capacity")
    ap.add_argument("--capacity-s", type=float, default=10.0, help="measurement seconds")
    ap.add_argument("--rates", help="publish,work,presence,query ops/s: skip the measurement")
    ap.add_argument("--workers", type=int, default=2, help="workers per daemon")
    ap.add_argument("--heartbeat", type=int, default=3, help="amqp_heartbeats (s)")
    ap.add_argument("--query-timeout-ms", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the queues (and daemon dirs)")
    ap.add_argument("--json", help="write the result here too")
    a = ap.parse_args()
    random.seed(a.seed)
    loop = asyncio.new_event_loop()
    task = loop.create_task(soak(a))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)  # the finally blocks clean up
    try:
        result = loop.run_until_complete(task)
    except asyncio.CancelledError:
        say("interrupted: everything this run started was stopped")
        return 130
    finally:
        loop.close()
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    with contextlib.suppress(OSError):
        L.RESULTS.mkdir(exist_ok=True)
        (L.RESULTS / "chaos.json").write_text(text)
    print(result["table_md"])
    for name, ok in result["checks"].items():
        say(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
