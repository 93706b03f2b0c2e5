#!/usr/bin/env python3
"""Print the py-spy profiles stored in benchmark results (runs made with ``--profile``).

    .venv/bin/python bench/profile_report.py                       # every bench/results/*.json
    .venv/bin/python bench/profile_report.py bench/results/publish.json --top 15

For each profiled process: the top functions by self time and the top kazoo_amqp / json /
asyncio functions by inclusive time (entry frames left out), as shares of py-spy's "busy" samples
(samples whose leaf is an epoll wait or the worker's pipe ``recv`` are left out: py-spy's idle
detection misses part of that waiting under load), and converted to CPU µs per message with the
CPU the process group used per message in the same run (/proc), when the run recorded it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L

_SKIP = ("<frozen runpy>", "kazoo_amqp/cli.py", "kazoo_amqp/__main__.py", "asyncio/runners.py",
         "loadclient.py:main", "loadclient.py:<module>", "kazoo_amqp/worker_main.py:main",
         "kazoo_amqp/worker_main.py:<module>", "asyncio/base_events.py:BaseEventLoop.run_")


def profiles(doc: Any, where: str = "", run: Any = None) -> list[tuple[str, dict[str, Any], Any]]:
    """Every profile summary in ``doc``, where it was found, and the run it was taken in."""
    out: list[tuple[str, dict[str, Any], Any]] = []
    if isinstance(doc, dict):
        if "samples" in doc and "self" in doc:
            return [(where, doc, run)]
        runs = doc.get("runs") if isinstance(doc.get("runs"), dict) else None
        here = doc.get("run", run)
        for k, v in doc.items():
            if k in ("runs", "run", "stacks"):
                continue
            r = here
            if runs and k in runs:
                r = runs[k]
            out += profiles(v, f"{where}/{k}" if where else k, r)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += profiles(v, f"{where}[{i}]", run)
    return out


def cpu_per_op(run: Any, label: str) -> tuple[float | None, str]:
    """The measured CPU µs per operation of the profiled process's group in that run."""
    if not isinstance(run, dict):
        return None, ""
    group = {"manager": "manager", "worker": "workers", "client": "clients"}.get(
        label.split()[-1] if label else "", "")
    for key, unit in (("cpu_us_per_msg", "msg"), ("cpu_us_per_query", "query"),
                      ("cpu_us_per_row", "row")):
        per = run.get(key)
        if isinstance(per, dict) and per.get(group):
            return float(per[group]), unit
    return None, ""


def busy_view(p: dict[str, Any]) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """Self and inclusive shares of the samples whose leaf is not a wait (epoll/recv)."""
    stacks: dict[str, int] = p.get("stacks") or {}
    self_c: dict[str, int] = {}
    inc: dict[str, int] = {}
    busy = 0
    for stack, count in stacks.items():
        frames = stack.split(";")
        if frames[-1] in L.WAIT_LEAVES:
            continue
        busy += count
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + count
        for frame in set(frames):
            inc[frame] = inc.get(frame, 0) + count
    if not busy:
        return 0, [], []

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, 100 * v / busy) for k, v in sorted(d.items(), key=lambda kv: -kv[1])]

    return busy, share(self_c), [(k, v) for k, v in share(inc) if not k.startswith(_SKIP)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    files = [Path(f) for f in a.files] or sorted(L.RESULTS.glob("*.json"))
    for f in files:
        doc = json.loads(f.read_text())
        found = profiles(doc.get("profile"))
        if not found:
            continue
        print(f"\n#### {f.name} ({doc.get('machine', {}).get('date')}, "
              f"src {doc.get('machine', {}).get('git', {}).get('src_measured')})")
        for where, p, run in found:
            per, unit = cpu_per_op(run, p.get("label", ""))
            busy, self_s, inc = busy_view(p)
            print(f"\n{where or 'profile'}: {p.get('label')} pid {p.get('pid')}, {p['samples']} "
                  f"samples, {p.get('wait_leaf_pct', '?')}% with an epoll/recv leaf (left out "
                  f"below: waiting or wake-up, py-spy cannot always tell them apart)"
                  + (f"; this process group used {per:g} µs CPU per {unit}" if per else ""))
            if not busy:
                rows = [[f"{share:.1f}%", name] for name, share in p["self"][:a.top]]
                print(L.table(["self (all samples)", "function"], rows))
                continue

            def us(share: float, per: float | None = per) -> str:
                return f"{per * share / 100:.1f}" if per else "-"

            print(L.table([f"self % of {busy} busy samples", f"µs/{unit or 'op'}", "function"],
                          [[f"{v:.1f}%", us(v), n] for n, v in self_s[:a.top]]))
            keep = ("kazoo_amqp", "json/", "asyncio/selector", "psycopg", "sqlite3", "routes.py")
            inc = [(n, v) for n, v in inc if n.startswith(keep)]
            print(L.table(["inclusive %", f"µs/{unit or 'op'}", "function"],
                          [[f"{v:.1f}%", us(v), n] for n, v in inc[:a.top + 5]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
