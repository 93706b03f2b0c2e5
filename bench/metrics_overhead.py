#!/usr/bin/env python3
"""What serving metrics costs: publish, query and consume with ``http_listen`` off and on.

    .venv/bin/python bench/metrics_overhead.py                     # 3 reps of each, ~15 min
    .venv/bin/python bench/metrics_overhead.py --quick --reps 3    # smaller counts, ~6 min
    .venv/bin/python bench/metrics_overhead.py publish consume     # a subset

Each repetition runs the existing scripts (bench/publish.py, query.py, consume.py, one rep each)
twice in the same run, once with metrics off and once on (``KZBENCH_METRICS=1``: the listener,
its status sampler, and a /metrics scrape every 5 s), alternating which goes first so a drift
of the machine's load hits both alike. Reported: the medians of the headline figures and of the
manager's and workers' CPU per message (the steadier measure on a shared machine), and the
on/off change in percent. Writes ``bench/results/metrics_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _lib as L  # noqa: E402

# script -> (extra args, [(figure name, path in the result json, higher is better)])
FIGURES: dict[str, tuple[list[str], list[tuple[str, list[str], bool]]]] = {
    "publish": (
        ["--batch", "0"],
        [
            ("publish 4x256 msg/s", ["summary", "p4_async", "broker_msg_s", "median"], True),
            ("publish manager us/msg", ["summary", "p4_async", "cpu_us_per_msg", "manager",
                                        "median"], False),
            ("publish 1 proc p50 ms", ["summary", "p1_sync", "latency_p50_ms", "median"], False),
        ],
    ),
    "query": (
        ["--impl", "asyncio"],
        [
            ("query c=32 req/s", ["summary", "c32", "req_s", "median"], True),
            ("query c=32 manager us/query", ["summary", "c32", "cpu_us_per_query", "manager",
                                             "median"], False),
            ("query c=1 p50 ms", ["summary", "c1_async", "p50_ms", "median"], False),
        ],
    ),
    "consume": (
        [],
        [
            ("consume no_ack ev/s", ["summary", "noack", "events_s", "median"], True),
            ("consume ack ev/s", ["summary", "ack", "events_s", "median"], True),
            ("consume no_ack workers us/ev", ["summary", "noack", "cpu_us_per_msg", "workers",
                                              "median"], False),
            ("consume no_ack manager us/ev", ["summary", "noack", "cpu_us_per_msg", "manager",
                                              "median"], False),
        ],
    ),
}


def _get(doc: Any, path: list[str]) -> float | None:
    for p in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(p)
    return float(doc) if isinstance(doc, int | float) else None


def run_one(script: str, metrics: bool, rep: int, quick: bool) -> dict[str, Any]:
    tag = f"metrics-{'on' if metrics else 'off'}-{rep}"
    env = {**os.environ, "KZBENCH_METRICS": "1" if metrics else "0", "KZBENCH_TAG": tag}
    args, _ = FIGURES[script]
    cmd = [sys.executable, str(BENCH / f"{script}.py"), "--reps", "1", *args]
    if quick:
        cmd.append("--quick")
    L.log(f"metrics_overhead: {script} metrics={'on' if metrics else 'off'} rep {rep + 1}")
    subprocess.run(cmd, env=env, check=True, timeout=1800, stdout=subprocess.DEVNULL)
    path = L.RESULTS / f"{script}-{tag}.json"
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scripts", nargs="*", help=f"a subset of {', '.join(FIGURES)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    unknown = set(a.scripts) - set(FIGURES)
    if unknown:
        ap.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    values: dict[str, dict[bool, list[float]]] = {}
    better: dict[str, bool] = {}
    for rep in range(a.reps):
        for script in a.scripts or list(FIGURES):
            order = (False, True) if rep % 2 == 0 else (True, False)
            for metrics in order:
                result = run_one(script, metrics, rep, a.quick)
                for name, path, higher in FIGURES[script][1]:
                    v = _get(result, path)
                    better[name] = higher
                    if v is not None:
                        values.setdefault(name, {False: [], True: []})[metrics].append(v)
    rows = []
    out: dict[str, Any] = {"machine": L.machine_info(), "reps": a.reps, "quick": a.quick,
                           "figures": {}}
    for name, by in values.items():
        off = statistics.median(by[False]) if by[False] else None
        on = statistics.median(by[True]) if by[True] else None
        change = None
        if off and on:
            # positive = worse with metrics on
            change = (off - on) / off * 100 if better[name] else (on - off) / off * 100
        out["figures"][name] = {"off": by[False], "on": by[True], "off_median": off,
                                "on_median": on, "cost_pct": change}
        rows.append([name, L.fmt(off, 2), L.fmt(on, 2),
                     "-" if change is None else f"{change:+.1f} %",
                     " ".join(L.fmt(v, 1) for v in by[False]),
                     " ".join(L.fmt(v, 1) for v in by[True])])
    path = L.save_result("metrics_overhead", out)
    print(L.table(["figure", "off (median)", "on (median)", "cost of metrics", "off runs",
                   "on runs"], rows))
    print(f"\n(cost: positive = slower with metrics on) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
