#!/usr/bin/env python3
"""Memory of the daemon (manager + 4 workers) under a steady mixed load, sampled every 10 s.

    .venv/bin/python bench/memory.py                    # 300 s
    .venv/bin/python bench/memory.py --duration 60      # short run

Load, for ``--duration`` seconds (all paced, bounded by count and time):

* publishes through the socket at ``--publish-rate`` (1,000/s, ``AsyncClient``, 16 in flight) to
  a topic exchange whose queue the daemon itself consumes (``no_ack: 0`` +
  ``wait_for_consumer_ack: 1``), so every message is published, consumed, routed and acked;
  the route reads a field and counts;
* queries at ``--query-rate`` (100/s, 4 in flight) answered by ``bench/responder.py``.

Every ``--interval`` (10 s) RSS and PSS (``/proc/PID/smaps_rollup``) of the manager and of each
worker are recorded. Reported: the series, the peak, and the slope (least squares, kB/min) of the
total RSS and PSS over the whole run and after the first minute. Target: RSS total < 150 MB, flat.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L
import loadclient

RESPONDER = str(Path(__file__).resolve().parent / "responder.py")
TARGET_MB = 150
RK = "bench.memory.event"
QRK = "bench.memory.query"
ROUTES = '''
import json
SUB = json.loads(%(sub)r)
_n = [0]

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe(SUB)

@router.route("kazoo:consumer-event-bench-memory")
def on_event(kz):
    _n[0] += 1
    kz.json("Call-ID")
'''


def slope_kb_per_min(ts: list[float], vals: list[float]) -> float | None:
    if len(ts) < 2:
        return None
    n = len(ts)
    mt = sum(ts) / n
    mv = sum(vals) / n
    den = sum((t - mt) ** 2 for t in ts)
    if not den:
        return None
    return round(sum((t - mt) * (v - mv) for t, v in zip(ts, vals, strict=True)) / den * 60, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds of load (default 300; 60 with --quick)")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--publish-rate", type=float, default=1000.0)
    ap.add_argument("--query-rate", type=float, default=100.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="60 s unless --duration is given")
    ap.add_argument("--reps", type=int, default=1, help="ignored (one long run)")
    ap.add_argument("--profile", action="store_true", help="ignored")
    a = ap.parse_args()
    duration = a.duration if a.duration is not None else (60.0 if a.quick else 300.0)
    info = L.machine_info()
    L.log(f"memory: {duration:.0f} s, publish {a.publish_rate:.0f}/s (consumed back), queries "
          f"{a.query_rate:.0f}/s, sample every {a.interval:.0f} s, {a.workers} workers")
    broker = L.Broker()
    exchange = broker.exchange(L.unique("memory"))
    queue = exchange + ".q"
    qexchange = broker.exchange(exchange + ".query")
    qqueue = broker.queue(qexchange + ".requests", exchange=qexchange, keys=[QRK])
    broker.queues.append(queue)  # declared by the daemon; deleted by cleanup
    sub = {"exchange": exchange, "type": "topic", "queue": queue, "routing": "bench.memory.#",
           "durable": 0, "auto_delete": 0, "no_ack": 0, "wait_for_consumer_ack": 1}
    daemon = L.Daemon(ROUTES % {"sub": json.dumps(sub)}, workers=a.workers, name="memory")
    responder = pub = qry = None
    series: list[dict[str, Any]] = []
    try:
        daemon.start()
        responder = L.Child([RESPONDER, "--impl", "asyncio", "--queue", qqueue,
                             "--max-seconds", str(duration + 120)], "responder")
        responder.wait_ready()
        wpids = daemon.worker_pids()
        sampler = L.Sampler({"manager": [daemon.pid], "workers": wpids,
                             "rabbitmq": [L.rabbit_pid()], "responder": [responder.pid]})
        idle = sampler.memory()
        n_pub = int(a.publish_rate * duration)
        n_q = int(a.query_rate * duration)
        pub = loadclient.spawn(daemon.socket, "publish", exchange, RK, n_pub, concurrency=16,
                               rate=a.publish_rate, deadline=duration + 60,
                               event="bench.memory", lat_every=100)
        qry = loadclient.spawn(daemon.socket, "query", qexchange, QRK, max(1, n_q), concurrency=4,
                               rate=a.query_rate, deadline=duration + 60, event="bench.query",
                               lat_every=10)
        pub.wait_ready()
        qry.wait_ready()
        sampler.groups["clients"] = [pub.pid, qry.pid]
        sampler.start()
        t0 = time.monotonic()
        pub.go()
        qry.go()
        next_sample = t0
        end = t0 + duration
        while True:
            now = time.monotonic()
            if now >= next_sample:
                m = sampler.memory()
                st = daemon.status()
                row = {
                    "t_s": round(now - t0, 1),
                    "manager_rss_kb": m["manager"]["rss_kb"],
                    "manager_pss_kb": m["manager"]["pss_kb"],
                    "workers_rss_kb": [p["rss_kb"] for p in m["workers"]["procs"]],
                    "workers_pss_kb": [p["pss_kb"] for p in m["workers"]["procs"]],
                    "total_rss_kb": m["total_rss_kb"], "total_pss_kb": m["total_pss_kb"],
                    "published": st["manager"].get("published"),
                    "deliveries": st["manager"].get("deliveries"),
                    "queries": st["manager"].get("queries"),
                    "pending_queries": st["manager"].get("pending_queries"),
                    "inflight": st["workers"].get("inflight"),
                }
                series.append(row)
                L.log(f"  t={row['t_s']:5.0f}s RSS total {row['total_rss_kb'] / 1024:6.1f} MB "
                      f"(manager {row['manager_rss_kb'] / 1024:5.1f}), PSS total "
                      f"{row['total_pss_kb'] / 1024:6.1f} MB; published {row['published']}, "
                      f"consumed {row['deliveries']}, queries {row['queries']}")
                next_sample += a.interval
            if now > end + 0.5 and len(series) >= int(duration / a.interval) + 1:
                break
            if now > end + 60:
                break
            time.sleep(min(0.5, max(0.05, next_sample - time.monotonic())))
        rp = pub.result(timeout=120)
        rq = qry.result(timeout=120)
        cpu = sampler.stop()
        L.add_reported_cpu(cpu, "clients", [rp["cpu_s"], rq["cpu_s"]])
        status = daemon.status()
    finally:
        for child in (pub, qry, responder):
            if child is not None:
                child.stop()
        code = daemon.stop()
        errors = daemon.log_errors()
        daemon.remove()
        broker.cleanup()
        broker.close()

    ts = [r["t_s"] for r in series]
    after = [r for r in series if r["t_s"] >= 60]
    summary = {
        "idle": {"total_rss_kb": idle["total_rss_kb"], "total_pss_kb": idle["total_pss_kb"],
                 "manager_rss_kb": idle["manager"]["rss_kb"],
                 "workers_rss_kb": [p["rss_kb"] for p in idle["workers"]["procs"]]},
        "peak_total_rss_kb": max(r["total_rss_kb"] for r in series),
        "peak_total_pss_kb": max(r["total_pss_kb"] for r in series),
        "last_total_rss_kb": series[-1]["total_rss_kb"],
        "last_total_pss_kb": series[-1]["total_pss_kb"],
        "rss_slope_kb_min": slope_kb_per_min(ts, [r["total_rss_kb"] for r in series]),
        "pss_slope_kb_min": slope_kb_per_min(ts, [r["total_pss_kb"] for r in series]),
        "rss_slope_after_60s_kb_min": slope_kb_per_min(
            [r["t_s"] for r in after], [r["total_rss_kb"] for r in after]),
        "pss_slope_after_60s_kb_min": slope_kb_per_min(
            [r["t_s"] for r in after], [r["total_pss_kb"] for r in after]),
        "manager_rss_slope_kb_min": slope_kb_per_min(ts, [r["manager_rss_kb"] for r in series]),
        "published": rp["done"], "publish_errors": rp["errors"], "queries": rq["done"],
        "query_errors": rq["errors"],
        "publish_rate_s": round(rp["done"] / (rp["end"] - rp["start"]), 1),
        "query_p50_ms": L.lat_summary(rq["lat_ms"]).get("p50"),
        "cpu": cpu,
    }
    met = summary["peak_total_rss_kb"] < TARGET_MB * 1024
    result = {"bench": "memory", "machine": info, "args": vars(a), "duration_s": duration,
              "target": {"total_rss_mb": TARGET_MB, "flat": True},
              "c_module": {"pss_idle_mb": L.C_NUMBERS["memory_pss_idle_mb"],
                           "pss_peak_mb": L.C_NUMBERS["memory_pss_peak_mb"],
                           "rss_sum_mb": L.C_NUMBERS["memory_rss_sum_mb"]},
              "summary": summary, "series": series,
              "daemon_counters": {k: status["manager"].get(k) for k in
                                  ("published", "deliveries", "queries", "query_timeouts")},
              "daemon_exit": code, "daemon_errors": errors, "met": {"rss": met}}
    path = L.save_result("memory", result)
    print()
    print(L.table(["t s", "manager RSS MB", "workers RSS MB", "total RSS MB", "total PSS MB",
                   "published", "consumed"],
                  [[f"{r['t_s']:.0f}", f"{r['manager_rss_kb'] / 1024:.1f}",
                    " ".join(f"{x / 1024:.1f}" for x in r["workers_rss_kb"]),
                    f"{r['total_rss_kb'] / 1024:.1f}", f"{r['total_pss_kb'] / 1024:.1f}",
                    r["published"], r["deliveries"]] for r in series]))
    print(f"\nidle: RSS {summary['idle']['total_rss_kb'] / 1024:.1f} MB, PSS "
          f"{summary['idle']['total_pss_kb'] / 1024:.1f} MB; peak RSS "
          f"{summary['peak_total_rss_kb'] / 1024:.1f} MB, PSS "
          f"{summary['peak_total_pss_kb'] / 1024:.1f} MB (C module: PSS 16-19 MB, RSS sum "
          f"92-107 MB)")
    print(f"slope: RSS {summary['rss_slope_kb_min']} kB/min "
          f"({summary['rss_slope_after_60s_kb_min']} after 60 s), "
          f"PSS {summary['pss_slope_kb_min']} kB/min "
          f"({summary['pss_slope_after_60s_kb_min']} after 60 s)")
    print(f"load: {summary['published']} published ({summary['publish_rate_s']}/s), "
          f"{summary['queries']} queries (p50 {summary['query_p50_ms']} ms), errors "
          f"{summary['publish_errors']} {summary['query_errors']}")
    print(f"\nRSS < {TARGET_MB} MB: {'MET' if met else 'MISSED'}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
