#!/usr/bin/env python3
"""Run the kazoo-amqp benchmarks (all, or the ones named) and print one summary table.

    .venv/bin/python bench/run_all.py                     # publish query consume presence memory
    .venv/bin/python bench/run_all.py publish query            # a subset
    .venv/bin/python bench/run_all.py --quick --reps 1 --duration 60
    .venv/bin/python bench/run_all.py --profile consume        # + a py-spy rep per script
    .venv/bin/python bench/run_all.py c_module publish consume # + the C harness in the same run
    .venv/bin/python bench/run_all.py --src head               # measure HEAD's src/, not the tree
    .venv/bin/python bench/run_all.py --src DIR --tag fix      # a patched copy -> *-fix.json

Each script starts its own daemon (generated config and routes in a temp dir), uses unique
exchange and queue names and deletes them, and writes ``bench/results/<name>.json``; this writes
``bench/results/summary.json``. Every script is bounded by message counts and deadlines, and run
here under a time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

DEFAULT = ["publish", "query", "consume", "presence", "memory"]
ALL = ["c_module", *DEFAULT]


def _get(doc: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(p)
    return doc


def _med(x: Any) -> float | None:
    return x.get("median") if isinstance(x, dict) else x


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    import _lib as L

    cm = results.get("c_module")
    c_now_pub = _med(_get(cm, "summary", "publish", "p4_publish", "broker_rate_per_s"))
    c_now_noack = _med(_get(cm, "summary", "consume", "cp4_noack", "rate_per_s"))
    c_now_ack = _med(_get(cm, "summary", "consume", "cp4_ack", "rate_per_s"))
    C = L.C_NUMBERS
    rows: list[dict[str, Any]] = []

    def add(measure: str, value: Any, unit: str, target: str, ok: bool | None, c_pub: Any,
            c_now: Any = None, higher_is_better: bool = True,
            min_ratio: float | None = None) -> None:
        v = _med(value)
        ref = c_now if c_now is not None else c_pub
        ratio = None
        if v and ref:
            ratio = round(v / ref if higher_is_better else ref / v, 2)
        if min_ratio is not None and ratio is not None:
            ok = ratio >= min_ratio  # against the C module of this run when it ran
        rows.append({"measure": measure, "value": v, "range": value, "unit": unit,
                     "target": target, "met": ok, "c_published": c_pub, "c_same_run": c_now,
                     "ratio_vs_c": ratio})

    p = results.get("publish")
    if p:
        t = p.get("targets") or {}
        sem = p.get("semantics", "confirm")
        add(f"publish, 4 procs x blocking Client, {sem} (broker-counted)",
            _get(p, "summary", "p4_sync", "broker_msg_s"), "msg/s", ">= 1.0x C",
            _get(t, "p4_sync", "met"), C["publish_p4_broker_msg_s"], c_now_pub, min_ratio=1.0)
        add(f"publish, 4 procs x AsyncClient 256 in flight, {sem} (broker-counted)",
            _get(p, "summary", "p4_async", "broker_msg_s"), "msg/s", ">= 1.0x C",
            _get(t, "p4_async", "met"), C["publish_p4_broker_msg_s"], c_now_pub, min_ratio=1.0)
        if _get(p, "summary", "p4_batch", "broker_msg_s"):
            add(f"publish_batch, 4 procs x 8 calls x 64 in flight, {sem} (broker-counted)",
                _get(p, "summary", "p4_batch", "broker_msg_s"), "msg/s", ">= 1.5x C",
                _get(t, "p4_batch", "met"), C["publish_p4_broker_msg_s"], c_now_pub,
                min_ratio=1.5)
        add(f"publish, 1 proc blocking Client, {sem}, call p50",
            _get(p, "summary", "p1_sync", "latency_p50_ms"), "ms", "<= 0.060",
            _get(t, "p1_sync_p50_us", "met"), 0.060, None, higher_is_better=False)
    q = results.get("query")
    if q:
        # C: kazoo_async_query timed inside the route (0.94 ms); 1.18 ms was the SIP round trip
        add("query c=1 round trip p50 (AsyncClient)", _get(q, "summary", "c1_async", "p50_ms"),
            "ms", "<= 1.0", _get(q, "met", "c1_p50"), C["query_c1_p50_ms_in_route"], None,
            higher_is_better=False)
        add("query c=1 round trip p50 (blocking Client)", _get(q, "summary", "c1_sync", "p50_ms"),
            "ms", "-", None, C["query_c1_p50_ms_in_route"], None, higher_is_better=False)
        conc = _get(q, "args", "concurrency") or 32
        add(f"query c={conc} throughput", _get(q, "summary", f"c{conc}", "req_s"), "queries/s",
            ">= 5,000", _get(q, "met", "c32"), C["query_c32_req_s"], None)
        used = _get(q, "summary", "responder_used")
        add(f"responder capacity alone ({used})",
            _get(q, "summary", "responder_capacity", used, "median"), "replies/s", "-", None,
            C["responder_capacity_pika"], None)
    c = results.get("consume")
    if c:
        add("consume 4 workers, no_ack", _get(c, "summary", "noack", "events_s"), "events/s",
            ">= 30,000", _get(c, "met", "noack"), C["consume_noack_ev_s"], c_now_noack)
        add("consume 4 workers, ack after handler", _get(c, "summary", "ack", "events_s"),
            "events/s", ">= 20,000", _get(c, "met", "ack"), C["consume_ack_ev_s"], c_now_ack)
    m = results.get("memory")
    if m:
        s = m.get("summary", {})
        add(f"memory peak RSS manager+4 workers ({m.get('duration_s', 0):.0f} s mixed load)",
            round(s.get("peak_total_rss_kb", 0) / 1024, 1), "MB", "< 150",
            _get(m, "met", "rss"), C["memory_rss_sum_mb"], None, higher_is_better=False)
        add("memory peak PSS manager+4 workers", round(s.get("peak_total_pss_kb", 0) / 1024, 1),
            "MB", "-", None, C["memory_pss_peak_mb"], None, higher_is_better=False)
        add("memory RSS slope after 60 s", s.get("rss_slope_after_60s_kb_min"), "kB/min",
            "flat", None, None, None)
    pr = results.get("presence")
    if pr:
        add("presence dialog updates -> rows, SQLite", _get(pr, "summary", "sqlite", "rows_s"),
            "rows/s", ">= 5,000", _get(pr, "met", "sqlite"), None, None)
        add("presence dialog updates -> rows, PostgreSQL",
            _get(pr, "summary", "postgres", "rows_s"), "rows/s", "-", None, None, None)
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    import _lib as L

    def f(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, float) and x < 100:
            return f"{x:,.3g}" if x < 10 else f"{x:,.1f}"
        return f"{x:,.0f}" if isinstance(x, int | float) else str(x)

    def rng(x: Any) -> str:
        if isinstance(x, dict) and len(x.get("runs", [])) > 1:
            return f"[{f(x['min'])} .. {f(x['max'])}]"
        return ""

    print(L.table(
        ["measure", "result", "unit", "target", "met", "C (published)", "C (same run)",
         "ratio vs C"],
        [[r["measure"], f"{f(r['value'])} {rng(r['range'])}".strip(), r["unit"], r["target"],
          {True: "yes", False: "NO", None: "-"}[r["met"]], f(r["c_published"]),
          f(r["c_same_run"]), f(r["ratio_vs_c"])] for r in rows]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"any of {ALL} (default: {DEFAULT})")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--duration", type=float, default=None, help="memory run seconds (300)")
    ap.add_argument("--src", default=None,
                    help="kazoo_amqp to measure: live (working tree, default), head, a commit, "
                         "or a directory with kazoo_amqp/")
    ap.add_argument("--tag", default=None,
                    help="write bench/results/<name>-<tag>.json (and read those for the summary)")
    ap.add_argument("--summary-only", action="store_true",
                    help="do not run anything; summarise bench/results/*.json")
    a = ap.parse_args()
    names = a.names or DEFAULT
    unknown = [n for n in names if n not in ALL]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {ALL}")
    names = [n for n in ALL if n in names]  # the C harness first: same-run ratios
    if a.src:
        os.environ["KZBENCH_SRC"] = a.src
    if a.tag:
        os.environ["KZBENCH_TAG"] = a.tag
    import _lib as L  # resolves --src once (a commit is extracted once), for every script

    env = dict(os.environ)
    print(f"measuring kazoo_amqp from {L.SRC}", flush=True)
    ran: dict[str, Any] = {}
    if not a.summary_only:
        for name in names:
            cmd = [sys.executable, str(BENCH / f"{name}.py")]
            if a.reps is not None:
                cmd += ["--reps", str(a.reps)]
            if a.quick:
                cmd.append("--quick")
            if a.profile:
                cmd.append("--profile")
            if name == "memory" and a.duration is not None:
                cmd += ["--duration", str(a.duration)]
            limit = 1800 + ((a.duration or 300) if name == "memory" else 0)
            print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.monotonic()
            try:
                rc = subprocess.run(cmd, env=env, timeout=limit).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            ran[name] = {"rc": rc, "seconds": round(time.monotonic() - t0, 1)}
            print(f"===== {name}: rc={rc} in {ran[name]['seconds']} s", flush=True)
    results: dict[str, Any] = {}
    results_dir = BENCH / "results"
    for name in ALL:
        path = results_dir / f"{L.result_name(name)}.json"
        if name == "c_module":
            # the C harness is the same for every tag: take its latest run (--full or --quick)
            found = [q for q in results_dir.glob("c_module*.json") if q.exists()]
            if found:
                path = max(found, key=lambda q: q.stat().st_mtime)
        if path.exists() and (a.summary_only or name in names or not a.names):
            results[name] = json.loads(path.read_text())
    rows = summary_rows(results)
    print("\n===== summary (medians; [min .. max] over repetitions)")
    print_summary(rows)
    L.save_result("summary", {"tag": a.tag,"ran": ran, "rows": rows, "machine": L.machine_info(),
                              "sources": {k: _get(v, "machine", "date") for k, v in
                                          results.items()}})
    failed = [n for n, r in ran.items() if r["rc"] != 0]
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
