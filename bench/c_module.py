#!/usr/bin/env python3
"""The C kazoo module's harness, run on this machine now, for same-run ratios.

    .venv/bin/python bench/c_module.py                  # publish consume, --reps 1 --quick

Needs ``kamailio`` with ``kamailio-kazoo-modules`` and ``kamailio-python3-modules`` (and
``sip-tester``) from apt; without ``kazoo.so`` it says so and writes nothing. It copies
``/work/shared/bench/c-module`` to a fresh ``/tmp/c-module`` (the harness writes beside itself)
and runs ``run_all.sh --reps N --quick SECTIONS`` (its own 15-minute limit; it creates
``/tmp/.venv`` with aiormq and pika on first use). One change to the copy: its broker cleanup
would delete the exchange ``targeted``, which every Kazoo node on the broker shares (other
daemons' reply bindings would vanish), so ``targeted`` is taken off its delete list.

Writes ``bench/results/c_module.json`` with the C harness's summaries (its medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L

SHARED = Path("/work/shared/bench/c-module")
COPY = Path("/tmp/c-module")
KAZOO_SO = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/kazoo.so")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="without --quick (100k messages)")
    ap.add_argument("--sections", default="publish,consume")
    ap.add_argument("--quick", action="store_true", help="(default; accepted for run_all)")
    ap.add_argument("--profile", action="store_true", help="ignored")
    ap.add_argument("--workers", type=int, default=4, help="ignored")
    a = ap.parse_args()
    if not KAZOO_SO.exists() or not shutil.which("kamailio"):
        print(f"C module not installed ({KAZOO_SO}); apt-get install kamailio-kazoo-modules "
              "kamailio-python3-modules sip-tester. Skipped.")
        return 0
    if COPY.exists():
        shutil.rmtree(COPY)
    shutil.copytree(SHARED, COPY, ignore=shutil.ignore_patterns("runs"))
    common = COPY / "lib" / "common.py"
    text = common.read_text()
    text = text.replace("ALL_EXCHANGES = [EX_PUB, EX_QUERY, EX_EVENTS, EX_TARGETED,",
                        "ALL_EXCHANGES = [EX_PUB, EX_QUERY, EX_EVENTS,")
    common.write_text(text)
    args = ["bash", str(COPY / "run_all.sh"), "--reps", str(a.reps)]
    if not a.full:
        args.append("--quick")
    args += [s for s in a.sections.split(",") if s]
    L.log("running", " ".join(args))
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ))
    took = time.monotonic() - t0
    print(proc.stdout[-4000:])
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        print(f"C harness failed (rc={proc.returncode}) after {took:.0f} s")
        return 1
    out: dict = {"bench": "c_module", "machine": L.machine_info(), "args": vars(a),
                 "command": " ".join(args), "seconds": round(took, 1), "summary": {}}
    for sec in a.sections.split(","):
        path = COPY / "results" / f"{sec}.json"
        if path.exists():
            out["summary"][sec] = json.loads(path.read_text()).get("summary")
    pub = (out["summary"].get("publish") or {}).get("p4_publish", {})
    con = out["summary"].get("consume") or {}
    rows = []
    if pub:
        rows.append(["publish p4 broker msg/s", L.fmt(pub.get("broker_rate_per_s")),
                     f"{L.C_NUMBERS['publish_p4_broker_msg_s']:,}"])
    for key, ref in (("cp4_noack", "consume_noack_ev_s"), ("cp4_ack", "consume_ack_ev_s")):
        if key in con:
            rows.append([f"consume {key} ev/s", L.fmt(con[key].get("rate_per_s")),
                         f"{L.C_NUMBERS[ref]:,}"])
    path = L.save_result("c_module", out)
    print(L.table(["C module, this run", "measured now", "published RESULTS.md"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
