#!/usr/bin/env python3
"""Publish throughput through the daemon's socket, publisher confirms on, counted at the broker.

    .venv/bin/python bench/publish.py                 # 3 reps of 100k messages from 4 processes
    .venv/bin/python bench/publish.py --quick --reps 1
    .venv/bin/python bench/publish.py --profile       # + one rep under py-spy

    .venv/bin/python bench/publish.py --loop uvloop   # daemon and AsyncClients on uvloop
    .venv/bin/python bench/publish.py --confirm       # every call waits for the broker's confirm

Runs (each repetition), publishes with the default (accept) semantics unless ``--confirm``:

* ``p4_sync``: ``--procs`` (4) processes, each the blocking ``Client`` one publish at a time
  (what Kamailio's SIP workers do), 4 x ``--sync-count`` messages in total.
* ``p1_sync``: one process with the blocking ``Client``: per-call latency (compare with the C
  module's 60 us p50 in-route ``kazoo_publish``).
* ``p4_async``: ``--procs`` processes, each an ``AsyncClient`` with ``--concurrency`` (256)
  single publishes in flight, ``--count`` messages in total.
* ``p4_batch``: as ``p4_async`` with ``publish_batch`` (``--batch`` per call).

**broker msg/s** = N / (GO -> a queue bound ``#`` to the exchange holds N messages; depth polled
every 20 ms with a passive ``queue.declare``), as the C harness measured it; the ratio against
the C module's 14,706 msg/s (4 processes) is the target (>= 1.0x; batch >= 1.5x).
**client msg/s** = N / (first request -> last reply over all clients).

CPU seconds per message per process group (manager, workers, clients, rabbitmq) come from
``/proc/PID/stat``; memory peak (RSS and PSS) of manager + workers from ``smaps_rollup``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L
import loadclient

TARGET = 20000
RK = "bench.publish.dialog"
ROUTES = """
# publish bench: no subscriptions, the workers stay idle
"""


# --------------------------------------------------------------------------- one run
def run_once(daemon: L.Daemon, broker: L.Broker, exchange: str, sink: str, *, n: int, procs: int,
             concurrency: int, sync: bool, profile: bool, batch: int = 0,
             perf: bool = False, confirm: bool = False, loop: str = "asyncio") -> dict:
    broker.purge(sink)
    per = n // procs
    n = per * procs
    op = "publish_batch" if batch else "publish"
    clients = [loadclient.spawn(daemon.socket, op, exchange, RK, per, concurrency=concurrency,
                                offset=k * per, sync=sync, batch=batch or 64, confirm=confirm,
                                loop=loop)
               for k in range(procs)]
    for c in clients:
        c.wait_ready()
    workers = daemon.worker_pids()
    sampler = L.Sampler({"manager": [daemon.pid], "workers": workers,
                         "clients": [c.pid for c in clients], "rabbitmq": [L.rabbit_pid()]})
    profs = []
    if profile:
        est = max(3, int(n / 15000))
        profs = [L.Profiler(daemon.pid, "manager", est), L.Profiler(clients[0].pid, "client", est)]
        time.sleep(0.5)  # let py-spy attach
    perfs = ([L.PerfStat([daemon.pid], "manager"), L.PerfStat([c.pid for c in clients], "clients")]
             if perf else [])
    sampler.start()
    t_go = time.perf_counter()
    t_go_mono = time.monotonic()
    for c in clients:
        c.go()
    deadline = time.monotonic() + 180
    t_broker = None
    depth = 0
    polls = 0
    while time.monotonic() < deadline:
        depth = broker.depth(sink)
        if depth >= n:
            t_broker = time.perf_counter()
            break
        polls += 1
        if polls % 10 == 0:
            sampler.sample_peak()
        if all(c.proc.poll() is not None for c in clients) and polls % 50 == 0:
            # clients are done: keep polling a little for the broker to catch up
            pass
        time.sleep(0.02)
    sampler.sample_peak()
    perf_counts = [p.stop() for p in perfs]
    results = [c.result(timeout=60) for c in clients]
    cpu = sampler.stop()
    L.add_reported_cpu(cpu, "clients", [r["cpu_s"] for r in results])
    prof = [p.summary() for p in profs]
    lat = [x for r in results for x in r["lat_ms"]]
    done = sum(r["done"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        errs = r["errors"] if isinstance(r["errors"], dict) else {"errors": r["errors"]}
        for k, v in errs.items():
            errors[k] = errors.get(k, 0) + v
    start = min(r["start"] for r in results)
    end = max(r["end"] for r in results)
    out = {
        "n": n, "procs": procs, "concurrency": concurrency, "sync": sync, "batch": batch,
        "confirm": confirm,
        "confirmed": done, "errors": errors, "broker_depth": depth,
        "broker_msg_s": round(n / (t_broker - t_go), 1) if t_broker else None,
        "client_msg_s": round(done / (end - start), 1) if end > start else None,
        "go_to_first_s": round(start - t_go_mono, 4),
        "latency_ms": L.lat_summary(lat),
        "cpu": cpu, "cpu_us_per_msg": L.per_op_us(cpu, done),
        "mem_peak": {k: v for k, v in sampler.peak.items() if k.startswith("total")}
                    | {"manager_rss_kb": sampler.peak.get("manager", {}).get("rss_kb"),
                       "workers_rss_kb": sampler.peak.get("workers", {}).get("rss_kb")},
    }
    if prof:
        out["profile"] = prof
    if perf_counts:
        out["perf"] = {c["label"]: {k: round(v / max(1, done), 3) for k, v in c.items()
                                    if isinstance(v, int)} for c in perf_counts if "label" in c}
    return out


#: The runs of one repetition: name -> (procs, concurrency, blocking Client, batch size).
#: Names are what docs/performance.md and run_all.py report.
RUNS = ("p4_sync", "p1_sync", "p4_async", "p4_batch")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=None, help="messages per rep (default 100k)")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=256, help="publishes in flight per process")
    ap.add_argument("--sync-count", type=int, default=None,
                    help="p1_sync messages (default 5k); p4_sync sends 4x this")
    ap.add_argument("--batch", type=int, default=64,
                    help="p4_batch: messages per publish_batch call (0: skip that run)")
    ap.add_argument("--batch-concurrency", type=int, default=8,
                    help="p4_batch: publish_batch calls in flight per process")
    ap.add_argument("--confirm", action="store_true",
                    help="every publish waits for the broker's confirm (the pre-accept semantics)")
    ap.add_argument("--loop", choices=("default", "asyncio", "uvloop"), default="default",
                    help="event loop of the daemon (`run --loop`; default: the daemon's own "
                    "choice) and of the AsyncClient processes (asyncio unless uvloop)")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"subset of {','.join(RUNS)}")
    L.common_args(ap)
    a = ap.parse_args()

    n = a.count or (20000 if a.quick else 100000)
    n_sync = a.sync_count or (2000 if a.quick else 5000)
    wanted = [r for r in a.runs.split(",") if r]
    confirm = a.confirm
    L.log(f"publish: {n} msgs x {a.reps} reps, {a.procs} procs x {a.concurrency} in flight, "
          f"{a.workers} workers, {'confirm' if confirm else 'accept'} semantics, loop {a.loop}, "
          f"runs {wanted}")
    info = L.machine_info()
    broker = L.Broker()
    exchange = broker.exchange(L.unique("pub"))
    sink = broker.queue(exchange + ".sink", exchange=exchange, keys=["#"])
    run_args = () if a.loop == "default" else ("--loop", a.loop)
    daemon = L.Daemon(ROUTES, workers=a.workers, name="publish", run_args=run_args)
    runs: dict[str, list[dict]] = {r: [] for r in RUNS}
    profile: dict | None = None
    client_loop = "uvloop" if a.loop == "uvloop" else "asyncio"
    common = {"profile": False, "confirm": confirm, "loop": client_loop}
    specs = {
        "p4_sync": dict(n=4 * n_sync, procs=a.procs, concurrency=1, sync=True),
        "p1_sync": dict(n=n_sync, procs=1, concurrency=1, sync=True),
        "p4_async": dict(n=n, procs=a.procs, concurrency=a.concurrency, sync=False,
                         perf=a.perf),
        "p4_batch": dict(n=n, procs=a.procs, concurrency=a.batch_concurrency, sync=False,
                         batch=a.batch),
    }
    try:
        daemon.start()
        L.log("daemon up; warm-up 2,000 publishes")
        run_once(daemon, broker, exchange, sink, n=2000, procs=1, concurrency=64, sync=False,
                 **common)
        for rep in range(a.reps):
            for name in RUNS:
                if name not in wanted or (name == "p4_batch" and not a.batch):
                    continue
                r = run_once(daemon, broker, exchange, sink, **specs[name], **common)
                runs[name].append(r)
                L.log(f"  {name} rep {rep + 1}: broker {L.fmt(r['broker_msg_s'])}/s, client "
                      f"{L.fmt(r['client_msg_s'])}/s, p50 {r['latency_ms'].get('p50')} ms, "
                      f"p99 {r['latency_ms'].get('p99')} ms, errors {r['errors']}, machine "
                      f"busy {r['cpu']['machine_busy_pct']}%")
        if a.profile:
            L.log(f"profiling rep of {wanted[0]} (not counted)")
            r = run_once(daemon, broker, exchange, sink, **specs[wanted[0]],
                         **(common | {"profile": True}))
            profile = {"run": {k: v for k, v in r.items() if k != "profile"},
                       "profiles": r.get("profile", [])}
        status = daemon.status()
    finally:
        code = daemon.stop()
        errors = daemon.log_errors()
        daemon.remove()
        broker.cleanup()
        broker.close()

    def med(key: str, path: list[str]) -> dict | None:
        vals = []
        for r in runs[key]:
            v = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            vals.append(v)
        return L.mmm(vals) if vals else None

    groups = ("manager", "workers", "clients", "rabbitmq")
    summary = {
        name: {
            "broker_msg_s": med(name, ["broker_msg_s"]),
            "client_msg_s": med(name, ["client_msg_s"]),
            "latency_p50_ms": med(name, ["latency_ms", "p50"]),
            "latency_p90_ms": med(name, ["latency_ms", "p90"]),
            "latency_p99_ms": med(name, ["latency_ms", "p99"]),
            "cpu_us_per_msg": {g: med(name, ["cpu_us_per_msg", g]) for g in groups},
            "cpu_pct": {g: med(name, ["cpu", "cpu_pct", g]) for g in groups},
            "machine_busy_pct": med(name, ["cpu", "machine_busy_pct"]),
            "mem_peak_rss_kb": med(name, ["mem_peak", "total_rss_kb"]),
        }
        for name in RUNS if runs[name]
    }
    # p1_sync keeps its historical key for run_all.py
    if "p1_sync" in summary:
        summary["p1_sync"]["msg_s"] = summary["p1_sync"]["client_msg_s"]
    c_p4 = L.C_NUMBERS["publish_p4_broker_msg_s"]

    def ratio(name: str) -> float | None:
        v = (summary.get(name) or {}).get("broker_msg_s")
        return round(v["median"] / c_p4, 2) if v and v.get("median") else None

    p1 = (summary.get("p1_sync") or {}).get("latency_p50_ms")
    targets = {
        "p4_sync": {"ratio_vs_c": ratio("p4_sync"), "target": 1.0},
        "p4_async": {"ratio_vs_c": ratio("p4_async"), "target": 1.0},
        "p4_batch": {"ratio_vs_c": ratio("p4_batch"), "target": 1.5},
        "p1_sync_p50_us": {"value": round(p1["median"] * 1000, 1) if p1 else None,
                           "target": 60},
    }
    for k, t in targets.items():
        v = t.get("ratio_vs_c", t.get("value"))
        t["met"] = None if v is None else (v <= t["target"] if k.endswith("_us")
                                           else v >= t["target"])
    result = {
        "bench": "publish", "machine": info, "args": vars(a), "n": n,
        "semantics": "confirm" if confirm else "accept", "loop": a.loop,
        "target": {"broker_msg_s": TARGET}, "c_module": {
            "p4_broker_msg_s": c_p4,
            "p1_broker_msg_s": L.C_NUMBERS["publish_p1_broker_msg_s"],
            "p1_call_p50_us": 60, "p1_call_p99_us": 418},
        "targets": targets,
        "summary": summary, "runs": runs, "profile": profile,
        "daemon_counters": {k: status["manager"].get(k) for k in
                            ("published", "publish_failed", "publish_failed_after_accept",
                             "publish_retried", "buffered")},
        "daemon_exit": code, "daemon_errors": errors,
        "met": all(t["met"] for t in targets.values() if t["met"] is not None),
        "met_single_publishes": bool(targets["p4_async"]["met"]),
    }
    tag = ("-confirm" if confirm else "") + ("-uvloop" if a.loop == "uvloop" else "")
    path = L.save_result("publish" + tag, result)

    rows = []
    for name in RUNS:
        sm = summary.get(name)
        if not sm:
            continue
        t = targets.get(name, {})
        rows.append([name, L.fmt(sm["broker_msg_s"]), L.fmt(sm["client_msg_s"]),
                     L.fmt(sm["latency_p50_ms"], 3), L.fmt(sm["latency_p99_ms"], 3),
                     f"{t.get('ratio_vs_c')}x (>= {t.get('target')}x)" if t else
                     f"p50 {targets['p1_sync_p50_us']['value']} us (<= 60)"])
    print()
    print(L.table(["run", "broker msg/s", "client msg/s", "call p50 ms", "call p99 ms",
                   f"vs C {c_p4:,}/s"], rows))
    print()
    print(L.table(["CPU us/msg", *groups],
                  [[run, *(L.fmt(summary[run]["cpu_us_per_msg"][g], 1) for g in groups)]
                   for run in RUNS if run in summary]))
    print(f"\ndaemon counters {result['daemon_counters']}")
    if profile:
        for p in profile["profiles"]:
            L.print_profile(p)
    print(f"\ntargets: {targets}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
