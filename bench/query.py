#!/usr/bin/env python3
"""Query round trips through the daemon against a fast Kazoo-style responder.

    .venv/bin/python bench/query.py                  # capacity, c=1, c=32; 3 reps each
    .venv/bin/python bench/query.py --quick --reps 1
    .venv/bin/python bench/query.py --profile        # + one c=32 rep under py-spy

Phases:

1. **responder capacity** (no daemon): ``--capacity-count`` requests (20k) are prefilled into the
   request queue with ``Server-ID`` pointing at a sink queue bound to ``targeted``; then the
   responder (``bench/responder.py``) is started. Rate = replies / (first -> last request it saw),
   checked against the sink's depth. Both implementations (our asyncio protocol client and pika
   ``BlockingConnection``) are measured; the faster one answers the daemon's queries (``--impl``
   overrides), so we know the responder is not the bottleneck.
2. **c=1**: one ``AsyncClient`` process, one query at a time (``--c1-count``, 2,000); round trip
   measured in the client around ``await client.query()``; p50/p90/p99. Also ``c1_sync``: the same
   with the blocking ``Client`` (what a Kamailio SIP worker uses).
3. **c=32**: one ``AsyncClient`` process with 32 queries in flight (``--c32-count``, 20,000);
   queries/s = answered / (first request -> last reply).

Request: the C harness's Kazoo dialog event (~300 B) to a topic exchange; the daemon adds
App-Name/App-Version/Node/Msg-ID/Server-ID. Reply: ``targeted`` / ``Server-ID``, echoing Msg-ID.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L
import loadclient

RESPONDER = str(Path(__file__).resolve().parent / "responder.py")
RK = "bench.query.route"
TARGET_P50_MS = 1.0
TARGET_C32 = 5000
ROUTES = """
# query bench: no subscriptions, the workers stay idle
"""


def start_responder(impl: str, queue: str, max_messages: int = 0) -> L.Child:
    args = [RESPONDER, "--impl", impl, "--queue", queue, "--max-seconds", "900"]
    if max_messages:
        args += ["--max-messages", str(max_messages)]
    child = L.Child(args, f"responder-{impl}")
    child.wait_ready()
    return child


def capacity(broker: L.Broker, exchange: str, queue: str, impl: str, n: int) -> dict:
    """Responder alone: prefilled requests, replies counted on a sink bound to targeted."""
    sink_rk = L.unique("sink")
    sink = broker.queue(sink_rk, exchange=None)
    broker.exchange_targeted()
    broker.bind(sink, "targeted", sink_rk)
    broker.purge(queue)
    bodies = []
    for i in range(1000):
        doc = L.kazoo_event(i, "bench", "query")
        doc.update({"App-Name": "kamailio", "App-Version": "5.6.3", "Node": "kamailio@bench",
                    "Msg-ID": f"{i:08d}-0f1e2d3c4b5a", "Server-ID": sink_rk})
        bodies.append(L.compact(doc).encode())
    L.bulk_publish(exchange, RK, bodies, n)
    t, d = broker.wait_depth(queue, n, timeout=60)
    if t is None:
        raise RuntimeError(f"prefill reached {d} of {n}")
    resp = L.Child([RESPONDER, "--impl", impl, "--queue", queue, "--max-seconds", "120",
                    "--max-messages", str(n)], f"responder-{impl}")
    rpid = resp.pid
    sampler = L.Sampler({"responder": [rpid], "rabbitmq": [L.rabbit_pid()]}, mem_groups=())
    sampler.start()
    resp.wait_ready()
    _, depth = broker.wait_depth(sink, n, timeout=120)
    st = resp.result(timeout=60)
    cpu = sampler.stop()
    L.add_reported_cpu(cpu, "responder", [st["cpu_s"]])
    rate = st["replies"] / (st["last"] - st["first"]) if st["last"] and st["first"] else None
    broker.purge(sink)
    return {"impl": impl, "n": n, "replies": st["replies"], "sink_depth": depth,
            "replies_s": round(rate, 1) if rate else None,
            "responder_cpu_us_per_reply": round(st["cpu_s"] * 1e6 / max(1, st["replies"]), 1),
            "cpu": cpu}


def run_clients(daemon: L.Daemon, responder: L.Child, exchange: str, *, n: int,
                concurrency: int, sync: bool, profile: bool) -> dict:
    client = loadclient.spawn(daemon.socket, "query", exchange, RK, n, concurrency=concurrency,
                              sync=sync, event="bench.query", timeout_ms=2000, deadline=150)
    client.wait_ready()
    workers = daemon.worker_pids()
    sampler = L.Sampler({"manager": [daemon.pid], "workers": workers, "clients": [client.pid],
                         "responder": [responder.pid], "rabbitmq": [L.rabbit_pid()]})
    profs = []
    if profile:
        est = max(3, int(n / 3000))
        profs = [L.Profiler(daemon.pid, "manager", est), L.Profiler(client.pid, "client", est)]
        time.sleep(0.5)
    status0 = daemon.status()["manager"]
    sampler.start()
    client.go()
    r = client.result(timeout=200)
    sampler.sample_peak()
    cpu = sampler.stop()
    L.add_reported_cpu(cpu, "clients", [r["cpu_s"]])
    status1 = daemon.status()["manager"]
    done = r["done"]
    out = {
        "n": n, "concurrency": concurrency, "sync": sync, "answered": done,
        "errors": r["errors"],
        "req_s": round(done / (r["end"] - r["start"]), 1) if r["end"] > r["start"] else None,
        "rtt_ms": L.lat_summary(r["lat_ms"]),
        "daemon": {k: status1.get(k, 0) - status0.get(k, 0)
                   for k in ("queries", "query_timeouts", "replies", "late_replies")},
        "cpu": cpu, "cpu_us_per_query": L.per_op_us(cpu, done),
        "mem_peak": {"total_rss_kb": sampler.peak.get("total_rss_kb"),
                     "total_pss_kb": sampler.peak.get("total_pss_kb")},
    }
    if profs:
        out["profile"] = [p.summary() for p in profs]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=("auto", "asyncio", "pika"), default="auto",
                    help="responder used for the daemon runs (auto: the faster one)")
    ap.add_argument("--capacity-count", type=int, default=None)
    ap.add_argument("--c1-count", type=int, default=None)
    ap.add_argument("--c32-count", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=32)
    L.common_args(ap)
    a = ap.parse_args()
    n_cap = a.capacity_count or (5000 if a.quick else 20000)
    n_c1 = a.c1_count or (500 if a.quick else 2000)
    n_c32 = a.c32_count or (5000 if a.quick else 20000)
    info = L.machine_info()
    L.log(f"query: capacity {n_cap}, c=1 {n_c1}, c={a.concurrency} {n_c32}; {a.reps} reps")
    broker = L.Broker()
    exchange = broker.exchange(L.unique("query"))
    queue = broker.queue(exchange + ".requests", exchange=exchange, keys=[RK])
    cap_runs: dict[str, list[dict]] = {"asyncio": [], "pika": []}
    runs: dict[str, list[dict]] = {"c1_async": [], "c1_sync": [], f"c{a.concurrency}": []}
    profile = None
    daemon: L.Daemon | None = None
    responder: L.Child | None = None
    impl = a.impl
    status: dict = {}
    try:
        for rep in range(a.reps):
            for name in ("asyncio", "pika"):
                r = capacity(broker, exchange, queue, name, n_cap)
                cap_runs[name].append(r)
                L.log(f"  responder capacity {name} rep {rep + 1}: {L.fmt(r['replies_s'])} "
                      f"replies/s, {r['responder_cpu_us_per_reply']} µs CPU/reply")
        cap = {k: L.mmm([r["replies_s"] for r in v]) for k, v in cap_runs.items()}
        if impl == "auto":
            impl = max(cap, key=lambda k: (cap[k] or {}).get("median", 0))
        L.log(f"responder for the daemon runs: {impl}")
        broker.purge(queue)
        daemon = L.Daemon(ROUTES, workers=a.workers, name="query").start()
        responder = start_responder(impl, queue)
        L.log("daemon up; warm-up 500 queries at c=8")
        run_clients(daemon, responder, exchange, n=500, concurrency=8, sync=False, profile=False)
        for rep in range(a.reps):
            r1 = run_clients(daemon, responder, exchange, n=n_c1, concurrency=1, sync=False,
                             profile=False)
            runs["c1_async"].append(r1)
            rs = run_clients(daemon, responder, exchange, n=n_c1, concurrency=1, sync=True,
                             profile=False)
            runs["c1_sync"].append(rs)
            rc = run_clients(daemon, responder, exchange, n=n_c32, concurrency=a.concurrency,
                             sync=False, profile=False)
            runs[f"c{a.concurrency}"].append(rc)
            L.log(f"  rep {rep + 1}: c1 async p50 {r1['rtt_ms'].get('p50')} ms "
                  f"({L.fmt(r1['req_s'])}/s), c1 sync p50 {rs['rtt_ms'].get('p50')} ms, "
                  f"c{a.concurrency} {L.fmt(rc['req_s'])}/s p50 {rc['rtt_ms'].get('p50')} ms "
                  f"errors {rc['errors']} busy {rc['cpu']['machine_busy_pct']}%")
        if a.profile:
            L.log("profiling rep (not counted): c=1 then c=32")
            p1 = run_clients(daemon, responder, exchange, n=max(n_c1, 3000), concurrency=1,
                             sync=False, profile=True)
            pc = run_clients(daemon, responder, exchange, n=n_c32, concurrency=a.concurrency,
                             sync=False, profile=True)
            profile = {"c1": p1.pop("profile", []), f"c{a.concurrency}": pc.pop("profile", []),
                       "runs": {"c1": p1, f"c{a.concurrency}": pc}}
        status = daemon.status()["manager"]
    finally:
        if responder is not None:
            responder.stop()
        code = None
        errors: list[str] = []
        if daemon is not None:
            code = daemon.stop()
            errors = daemon.log_errors()
            daemon.remove()
        broker.cleanup()
        broker.close()

    def med(run: str, path: list[str]) -> dict | None:
        vals = []
        for r in runs[run]:
            v = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            vals.append(v)
        return L.mmm(vals)

    groups = ("manager", "workers", "clients", "responder", "rabbitmq")
    summary = {
        "responder_capacity": {k: v | {"cpu_us_per_reply": L.mmm(
            [r["responder_cpu_us_per_reply"] for r in cap_runs[k]])} if v else None
            for k, v in cap.items()},
        "responder_used": impl,
    }
    for run in runs:
        summary[run] = {
            "req_s": med(run, ["req_s"]),
            "p50_ms": med(run, ["rtt_ms", "p50"]), "p90_ms": med(run, ["rtt_ms", "p90"]),
            "p99_ms": med(run, ["rtt_ms", "p99"]),
            "cpu_us_per_query": {g: med(run, ["cpu_us_per_query", g]) for g in groups},
            "machine_busy_pct": med(run, ["cpu", "machine_busy_pct"]),
            "timeouts": [r["daemon"]["query_timeouts"] for r in runs[run]],
            "errors": [r["errors"] for r in runs[run]],
        }
    cname = f"c{a.concurrency}"
    p50 = summary["c1_async"]["p50_ms"]
    thr = summary[cname]["req_s"]
    result = {
        "bench": "query", "machine": info, "args": vars(a),
        "target": {"c1_p50_ms": TARGET_P50_MS, "c32_req_s": TARGET_C32},
        "c_module": {"c1_p50_ms_rtt": L.C_NUMBERS["query_c1_p50_ms_rtt"],
                     "c1_p50_ms_in_route": L.C_NUMBERS["query_c1_p50_ms_in_route"],
                     "c32_req_s": L.C_NUMBERS["query_c32_req_s"],
                     "responder_capacity_pika": L.C_NUMBERS["responder_capacity_pika"]},
        "summary": summary, "runs": runs, "capacity_runs": cap_runs, "profile": profile,
        "daemon_counters": {k: status.get(k) for k in
                            ("queries", "query_timeouts", "replies", "late_replies")},
        "daemon_exit": code, "daemon_errors": errors,
        "met": {"c1_p50": bool(p50 and p50["median"] <= TARGET_P50_MS),
                "c32": bool(thr and thr["median"] >= TARGET_C32)},
    }
    path = L.save_result("query", result)

    print()
    print(L.table(["responder alone", "replies/s", "CPU µs/reply"],
                  [[k, L.fmt(v), L.fmt(summary["responder_capacity"][k]["cpu_us_per_reply"], 1)
                    if summary["responder_capacity"][k] else "-"] for k, v in cap.items()]))
    print()
    rows = []
    for run, tgt, c in (("c1_async", f"p50 <= {TARGET_P50_MS} ms", "p50 1.18 ms (0.94 in-route)"),
                        ("c1_sync", "-", "sync kazoo_query crashes"),
                        (cname, f">= {TARGET_C32:,}/s", "1,882/s")):
        s = summary[run]
        rows.append([run, L.fmt(s["req_s"]), L.fmt(s["p50_ms"], 3), L.fmt(s["p90_ms"], 3),
                     L.fmt(s["p99_ms"], 3), sum(s["timeouts"]), tgt, c])
    print(L.table(["run", "queries/s", "p50 ms", "p90 ms", "p99 ms", "timeouts", "target",
                   "C module"], rows))
    print()
    print(L.table(["CPU µs/query", *groups],
                  [[run, *(L.fmt(summary[run]["cpu_us_per_query"][g], 1) for g in groups)]
                   for run in runs]))
    if profile:
        for key in ("c1", cname):
            for p in profile[key]:
                p["label"] = f"{key} {p.get('label')}"
                L.print_profile(p)
    ok = {k: "MET" if v else "MISSED" for k, v in result["met"].items()}
    print(f"\ntargets: c1 p50 <= {TARGET_P50_MS} ms {ok['c1_p50']}; c{a.concurrency} >= "
          f"{TARGET_C32:,}/s {ok['c32']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
