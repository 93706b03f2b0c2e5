#!/usr/bin/env python3
"""The Kamailio bridge against the C module, same cfg, same machine, same run (issue 6).

    .venv/bin/python bench/kamailio_bridge.py                   # 3 reps, both modes
    .venv/bin/python bench/kamailio_bridge.py --reps 1 --events 2000 --registers 640

Modes: ``bridge`` (the converted examples/kamailio cfg on stock Kamailio + the daemon) and ``c``
(the original cfg on kazoo.so with its own AMQP connection; skipped without kazoo.so). Each rep
starts a fresh stack (tests/e2e/kamailio/bridge.py: free ports, unique names).

* **events**: ``--events`` reg_flush events published at once into the cfg's
  ``kazoo:consumer-event-directory-reg-flush`` route (it clears an htable entry and counts
  ``update_stat("registrar:flushes", "+1")``); rate = events / (first publish -> the statistic
  reaches N), polled over jsonrpcs every 20 ms. The bridge acks each after its route
  returned; C acks on receipt.
* **register**: ``--callers`` (32) threads REGISTER distinct users (no password cache hit), each
  challenged (401) then authenticated by the ``authn_req`` async query answered by one pika
  responder; throughput = authenticated REGISTERs per second, latency = the authenticated
  REGISTER's round trip (p50/p90).

* **publish**: ``kazoo_publish`` from a SIP route (a small cfg of its own, converted for the
  bridge): a MESSAGE whose route calls ``kazoo_publish`` ``X-Count`` times. Caller cost per
  call = (round trip with N calls - round trip with 0) / N, p50 over ``--publish-requests``
  requests, from one sender (one SIP worker) and from four at once (four SIP workers);
  throughput = calls / wall time with four senders; every message is counted in a bound queue.

Writes ``bench/results/kamailio_bridge.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "src"), str(REPO / "tests" / "e2e"), str(REPO)]

import _lib as L  # noqa: E402
from kamailio.bridge import (  # noqa: E402
    REALM,
    Responder,
    Stack,
    cleanup,
    encode,
    missing,
)
from tests.integration.daemon_harness import pika_connection  # noqa: E402


def _events(stack: Stack, n: int) -> dict[str, Any]:
    conn = pika_connection()
    ch = conn.channel()
    ex = stack.ex["registrar"]
    ch.exchange_declare(ex, exchange_type="topic")
    rk = f"registration.flush.{encode(REALM)}"
    bodies = [
        json.dumps({"Event-Category": "directory", "Event-Name": "reg_flush",
                    "Username": f"u{i}", "Realm": REALM}).encode()
        for i in range(n)
    ]  # fmt: skip
    t0 = time.monotonic()
    for body in bodies:
        ch.basic_publish(ex, rk, body)
    published = time.monotonic() - t0
    conn.close()
    deadline = t0 + 300
    count = 0
    while time.monotonic() < deadline:
        got = stack.rpc("stats.get_statistics", "registrar:flushes").get("result") or ["= 0"]
        count = int(str(got[0]).rpartition("=")[2].strip() or 0)
        if count >= n:
            break
        time.sleep(0.02)
    took = time.monotonic() - t0
    return {"events": n, "done": count, "seconds": round(took, 3),
            "rate_per_s": round(count / took, 1),
            "publish_seconds": round(published, 3)}  # fmt: skip


def _register_once(stack: Stack, user: str) -> float | None:
    first = stack.sip("REGISTER", user=user, timeout=10)
    if first.code != 401:
        return None
    chal = first.headers["www-authenticate"]
    nonce = re.search(r'nonce="([^"]+)"', chal).group(1)  # type: ignore[union-attr]
    uri = f"sip:{REALM}"
    ha1 = hashlib.md5(f"{user}:{REALM}:pw".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    auth = (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5')  # fmt: skip
    reply = stack.sip("REGISTER", user=user, headers=(auth, "Expires: 300"), timeout=10)
    return reply.elapsed if reply.code == 200 else None


def _registers(stack: Stack, total: int, callers: int) -> dict[str, Any]:
    key = f"authn.endpoint.req.{encode(REALM)}"

    def answer(req: dict[str, Any]) -> Any:
        return {"Event-Category": "directory", "Event-Name": "authn_resp",
                "Auth-Password": "pw", "Auth-Method": "password"}  # fmt: skip

    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    per_caller = total // callers

    def caller(index: int) -> None:
        nonlocal failures
        for i in range(per_caller):
            elapsed = _register_once(stack, f"b{index}x{i}-{uuid.uuid4().hex[:6]}")
            with lock:
                if elapsed is None:
                    failures += 1
                else:
                    latencies.append(elapsed * 1000)

    with Responder(stack.ex["registrar"], key, answer):
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        took = time.monotonic() - t0
    latencies.sort()
    return {
        "registers": len(latencies),
        "failures": failures,
        "callers": callers,
        "seconds": round(took, 3),
        "rate_per_s": round(len(latencies) / took, 1),
        "auth_latency_ms": L.lat_summary(latencies),
    }


PUBLISH_CFG = """#!KAMAILIO
#!define EXCHANGE {exchange}
debug=1
log_stderror=yes
max_while_loops=1000000
children=4
auto_aliases=no
listen=udp:127.0.0.1:{sip_port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "jsonrpcs.so"
loadmodule "kazoo.so"
modparam("kazoo", "node_hostname", "{node}")
modparam("kazoo", "amqp_connection", "amqp://guest:guest@127.0.0.1:5672")
modparam("kazoo", "pua_mode", 0)
modparam("jsonrpcs", "transport", 4)
modparam("jsonrpcs", "dgram_socket", "udp:127.0.0.1:{rpc_port}")
request_route {{
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "Alive");
        exit;
    }}
    $var(n) = $(hdr(X-Count){{s.int}});
    $var(i) = 0;
    $var(payload) = $_s({{"Event-Category" : "bench", "Event-Name" : "publish", "N" : "$ci"}});
    while ($var(i) < $var(n)) {{
        kazoo_publish("$def(EXCHANGE)", "bench.publish", $var(payload));
        $var(i) = $var(i) + 1;
    }}
    sl_send_reply("200", "OK");
    exit;
}}
"""


class PublishStack(Stack):
    """Kamailio running PUBLISH_CFG (on the bridge: converted with kamailio-convert)."""

    def prepare(self) -> None:
        from kamailio.bridge import convert_cli, free_tcp_port
        from kamailio.harness import free_udp_ports

        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        self.sip_port, self.rpc_port = free_udp_ports(2)
        self.bridge_port = free_tcp_port()
        source = d / "original" if self.mode == "bridge" else d
        source.mkdir(exist_ok=True)
        (source / "kamailio.cfg").write_text(PUBLISH_CFG.format(
            exchange=self.ex["callmgr"], sip_port=self.sip_port, rpc_port=self.rpc_port,
            node=self.node))  # fmt: skip
        if self.mode == "bridge":
            convert_cli(source / "kamailio.cfg", d, "--bridge", f"127.0.0.1:{self.bridge_port}")

    def wait_c_consuming(self, timeout: float = 20) -> None:
        time.sleep(2)  # the C module's publisher connects on its own


def _publish_round(stack: Stack, count: int, requests: int) -> list[float]:
    return [stack.sip("MESSAGE", headers=(f"X-Count: {count}",), timeout=60).elapsed
            for _ in range(requests)]  # fmt: skip


def _publishes(a: argparse.Namespace, mode: str) -> dict[str, Any]:
    n, reqs = a.publish_calls, a.publish_requests
    with tempfile.TemporaryDirectory(prefix=f"kzb-bench-pub-{mode}-") as tmp:
        stack = PublishStack(Path(tmp), mode)
        stack.prepare()
        conn = pika_connection()
        ch = conn.channel()
        ex = stack.ex["callmgr"]
        ch.exchange_declare(ex, exchange_type="topic")
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, ex, "bench.#")
        try:
            stack.start_kamailio()
            stack.start_daemon(wait_subscribed=False)
            if mode == "bridge":
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    with contextlib.suppress(Exception):
                        if any(b["up"] for b in stack.status()["manager"]["brokers"]):
                            break
                    time.sleep(0.1)
            _publish_round(stack, 50, 3)  # warm up: connections to the daemon/publisher
            empty = statistics.median(_publish_round(stack, 0, reqs))
            one = [(t - empty) / n * 1e6 for t in _publish_round(stack, n, reqs)]
            four: list[float] = []
            lock = threading.Lock()

            def sender() -> None:
                got = [(t - empty) / n * 1e6 for t in _publish_round(stack, n, reqs)]
                with lock:
                    four.extend(got)

            threads = [threading.Thread(target=sender) for _ in range(4)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            wall = time.monotonic() - t0
            expected = (3 * 50) + n * reqs * 5
            deadline = time.monotonic() + 30
            while True:
                arrived = ch.queue_declare(queue, passive=True).method.message_count
                if arrived >= expected or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            return {
                "calls_per_request": n,
                "caller_us_p50_one": round(statistics.median(one), 1),
                "caller_us_p50_four": round(statistics.median(four), 1),
                "throughput_four_per_s": round(4 * n * reqs / wall, 1),
                "expected": expected,
                "arrived": arrived,
            }
        finally:
            with contextlib.suppress(Exception):
                stack.stop_daemon()
            stack.stop_kamailio()
            with contextlib.suppress(Exception):
                ch.exchange_delete(ex)
                conn.close()


def run_mode(mode: str, a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"kzb-bench-{mode}-") as tmp:
        stack = Stack(Path(tmp), mode, socket_workers=a.socket_workers)
        stack.prepare()
        try:
            stack.start_kamailio()
            stack.start_daemon()
            ev = _events(stack, a.events)
            L.log(mode, "events", ev)
            reg = _registers(stack, a.registers, a.callers)
            L.log(mode, "register", {k: v for k, v in reg.items() if k != "auth_latency_ms"},
                  reg["auth_latency_ms"])  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                stack.stop_daemon()
            stack.stop_kamailio()
            cleanup(stack)
    pub = _publishes(a, mode)
    L.log(mode, "publish", pub)
    return {"events": ev, "register": reg, "publish": pub}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--registers", type=int, default=1280)
    ap.add_argument("--callers", type=int, default=32)
    ap.add_argument("--publish-calls", type=int, default=200,
                    help="kazoo_publish calls per SIP request")
    ap.add_argument("--publish-requests", type=int, default=20,
                    help="SIP requests per sender")
    ap.add_argument("--modes", default="bridge,c")
    ap.add_argument("--socket-workers", type=int, default=4,
                    help="Kamailio processes on the bridge socket (and daemon lanes)")
    a = ap.parse_args()
    why = missing()
    if why:
        print(f"skipped: {why}")
        return 0
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(a.reps):
        for mode in a.modes.split(","):
            runs.setdefault(mode, []).append(run_mode(mode, a))

    def med(mode: str, *path: str) -> float | None:
        vals = []
        for r in runs.get(mode, []):
            v: Any = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            if isinstance(v, int | float):
                vals.append(float(v))
        return statistics.median(vals) if vals else None

    rows = []
    for label, path, better in (
        ("events into a cfg route (/s)", ("events", "rate_per_s"), "higher"),
        ("REGISTER via async query (/s)", ("register", "rate_per_s"), "higher"),
        ("REGISTER auth p50 (ms)", ("register", "auth_latency_ms", "p50"), "lower"),
        ("kazoo_publish caller p50, 1 process (us)", ("publish", "caller_us_p50_one"), "lower"),
        ("kazoo_publish caller p50, 4 processes (us)", ("publish", "caller_us_p50_four"),
         "lower"),
        ("kazoo_publish from 4 processes (/s)", ("publish", "throughput_four_per_s"), "higher"),
    ):
        b, c = med("bridge", *path), med("c", *path)
        ratio = round(b / c, 2) if b and c else None
        rows.append([label, L.fmt(b, 1), L.fmt(c, 1), ratio, better])
    print(L.table(["measure (median of reps)", "bridge", "C module", "bridge/C", "better"], rows))
    L.save_result("kamailio_bridge", {"bench": "kamailio_bridge", "machine": L.machine_info(),
                                      "args": vars(a), "runs": runs})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
