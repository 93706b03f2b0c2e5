#!/usr/bin/env python3
"""Consume -> event route throughput with 4 workers, a prefilled queue, as the C harness did it.

    .venv/bin/python bench/consume.py                  # noack and ack, 3 reps of 100k each
    .venv/bin/python bench/consume.py --quick --reps 1
    .venv/bin/python bench/consume.py --modes ack --profile

Per run: a topic exchange and a queue (durable=0, auto_delete=0, the properties the subscription
declares too) are created and ``--count`` (100k) ~500-byte Kazoo-style messages (the C harness's
wire shape: json-c spacing plus App-Name/App-Version/Node/Msg-ID/Server-ID) are prefilled BEFORE
the daemon starts. The daemon's ``kazoo:mod-init`` subscribes to the queue with

* ``noack``: ``no_ack: 1`` (broker auto-ack; back-pressure by pausing the socket read);
* ``ack``: ``no_ack: 0`` + ``wait_for_consumer_ack: 1`` (acked after the handler; prefetch from
  the config, 256 by default).

The route ``kazoo:consumer-event-bench-consume`` increments a counter, keeps (count, first, last
event time) in a 32-byte mmap per worker, and every 10,000 messages appends a line to
``events.log``. Rate = N / (first event in any worker -> last event in any worker).
CPU per message per process group: /proc snapshots at the first and the last event (10 ms polls).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L

TARGETS = {"noack": 30000, "ack": 20000}
C_NUM = {"noack": L.C_NUMBERS["consume_noack_ev_s"], "ack": L.C_NUMBERS["consume_ack_ev_s"]}
RK = "bench.consume.event"
REC = struct.Struct("<qddd")  # count, first event, last event (monotonic), cpu at last 256-mark

ROUTES = '''
import json, mmap
SUB = json.loads(%(sub)r)
LOG_EVERY = 10000
_REC = struct.Struct("<qddd")
_st = {"n": 0, "mm": None, "first": 0.0, "cpu": 0.0}
_mono = time.monotonic

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe(SUB)

def _open(now):
    os.makedirs(os.path.join(HERE, "counters"), exist_ok=True)
    path = os.path.join(HERE, "counters", "%%d.bin" %% os.getpid())
    with open(path, "wb") as f:
        f.write(bytes(_REC.size))
    f = open(path, "r+b")
    _st["mm"] = mmap.mmap(f.fileno(), _REC.size)
    _st["first"] = now

@router.route("kazoo:consumer-event-bench-consume")
def on_event(kz):
    st = _st
    n = st["n"] = st["n"] + 1
    now = _mono()
    if st["mm"] is None:
        _open(now)
    _REC.pack_into(st["mm"], 0, n, st["first"], now, 0.0)
    if n %% LOG_EVERY == 0:
        with open(os.path.join(HERE, "events.log"), "a") as f:
            f.write("%%d %%d %%.6f\\n" %% (os.getpid(), n, now))
'''


def read_counters(directory: Path) -> list[tuple[int, float, float]]:
    out = []
    d = directory / "counters"
    if not d.exists():
        return out
    for f in d.iterdir():
        try:
            with open(f, "rb") as fh:
                data = fh.read(REC.size)
        except OSError:
            continue
        if len(data) == REC.size:
            n, first, last, _ = REC.unpack(data)
            if n:
                out.append((n, first, last))
    return out


def subscription(exchange: str, queue: str, mode: str) -> dict:
    sub = {"exchange": exchange, "type": "topic", "queue": queue, "routing": "bench.consume.#",
           "durable": 0, "auto_delete": 0}
    if mode == "noack":
        sub["no_ack"] = 1
    else:
        sub["no_ack"] = 0
        sub["wait_for_consumer_ack"] = 1
    return sub


def run_once(mode: str, n: int, workers: int, bodies: list[bytes], profile: bool,
             prefetch: int | None, keep: bool = False, a_deadline: float = 120.0,
             stall_timeout: float = 10.0, perf: bool = False) -> dict:
    broker = L.Broker()
    exchange = broker.exchange(L.unique("consume"))
    queue = broker.queue(exchange + ".q", exchange=exchange, keys=["bench.consume.#"])
    daemon: L.Daemon | None = None
    try:
        t_fill = L.bulk_publish(exchange, RK, bodies, n)
        t, depth = broker.wait_depth(queue, n, timeout=60)
        if t is None:
            raise RuntimeError(f"prefill reached {depth} of {n}")
        sub = subscription(exchange, queue, mode)
        cfg = {"prefetch": prefetch} if prefetch else {}
        daemon = L.Daemon(ROUTES % {"sub": json.dumps(sub)}, workers=workers, name="consume",
                          config=cfg, keep=keep)
        daemon.launch()
        wpids = daemon.children(workers)
        rabbit = L.rabbit_pid()
        groups = {"manager": [daemon.pid], "workers": wpids, "rabbitmq": [rabbit]}
        sampler = L.Sampler(groups)
        sampler.start()  # the manager's baseline: workers exist, the broker is not yet connected
        manager_cpu0 = sampler.c0[daemon.pid]
        deadline = time.monotonic() + a_deadline
        started = False
        profs: list[L.Profiler] = []
        perfs: list[L.PerfStat] = []
        t_drained = None
        total = 0
        polls = 0
        last_total, last_progress, stalled = -1, time.monotonic(), False
        while time.monotonic() < deadline:
            cnt = read_counters(daemon.dir)
            total = sum(c[0] for c in cnt)
            if not started and total > 0:
                sampler.start()
                sampler.c0[daemon.pid] = manager_cpu0
                started = True
                if perf:
                    perfs = [L.PerfStat([daemon.pid], "manager"), L.PerfStat(wpids, "workers")]
                if profile:
                    est = max(3, int(n / TARGETS[mode]) + 1)
                    profs = [L.Profiler(daemon.pid, "manager", est),
                             L.Profiler(wpids[0], "worker", est)]
            if total >= n:
                break
            now = time.monotonic()
            if total != last_total:
                last_total, last_progress = total, now
            elif started and now - last_progress > stall_timeout:
                stalled = True
                L.log(f"  STALLED at {total} of {n} events: no progress for {stall_timeout:.0f} s"
                      f" (queue consumers: {broker.consumers(queue)})")
                break
            polls += 1
            if started and polls % 10 == 0:
                sampler.sample_peak()
                if t_drained is None and broker.depth(queue) == 0:
                    t_drained = time.perf_counter()
            if daemon.proc is not None and daemon.proc.poll() is not None:
                raise RuntimeError(f"daemon died:\n{daemon.logs()[-3000:]}")
            time.sleep(0.01)
        sampler.sample_peak()
        cpu = sampler.stop() if started else None
        perf_counts = [p.stop() for p in perfs]
        cnt = read_counters(daemon.dir)
        total = sum(c[0] for c in cnt)
        first = min((c[1] for c in cnt), default=0.0)
        last = max((c[2] for c in cnt), default=0.0)
        status = daemon.status()
        result = {
            "mode": mode, "n": n, "handled": total, "stalled": stalled,
            "workers_used": len(cnt),
            "per_worker": sorted(c[0] for c in cnt),
            "events_s": round(total / (last - first), 1) if last > first and not stalled
            else None,
            "events_s_until_stall": round(total / (last - first), 1) if stalled and last > first
            else None,
            "first_to_last_s": round(last - first, 3),
            "start_to_first_event_s": round(first - daemon.started_mono, 3),
            "body_bytes": len(bodies[0]), "prefill_s": round(t_fill, 2),
            "cpu": cpu, "cpu_us_per_msg": L.per_op_us(cpu, total) if cpu else {},
            "mem_peak": {"total_rss_kb": sampler.peak.get("total_rss_kb"),
                         "total_pss_kb": sampler.peak.get("total_pss_kb"),
                         "manager_rss_kb": sampler.peak.get("manager", {}).get("rss_kb"),
                         "workers_rss_kb": sampler.peak.get("workers", {}).get("rss_kb")},
            "pool": {k: status["workers"].get(k) for k in
                     ("dispatched", "done", "handler_error", "no_route", "bad_message")},
            "paused_events": daemon.logs().count("pausing reading"),
        }
        if profs:
            result["profile"] = [p.summary() for p in profs]
        if perf_counts:
            result["perf"] = {c["label"]: {k: round(v / max(1, total), 3) for k, v in c.items()
                                           if isinstance(v, int) and k != "pids"}
                              | {"per": "message"} for c in perf_counts if "label" in c}
        code = daemon.stop()
        result["daemon_exit"] = code
        result["daemon_errors"] = daemon.log_errors()
        result["left_in_queue"] = broker.depth(queue)
        return result
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.remove()
        broker.cleanup()
        broker.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=None, help="messages per run (default 100k)")
    ap.add_argument("--modes", default="noack,ack")
    ap.add_argument("--prefetch", type=int, default=None, help="config prefetch (default 256)")
    ap.add_argument("--keep", action="store_true", help="keep the daemon's temp dirs")
    L.common_args(ap)
    a = ap.parse_args()
    n = a.count or (20000 if a.quick else 100000)
    modes = [m for m in a.modes.split(",") if m]
    info = L.machine_info()
    bodies = [L.wire_body(i) for i in range(1000)]
    L.log(f"consume: {n} msgs of {len(bodies[0])} B, modes {modes}, {a.reps} reps, "
          f"{a.workers} workers")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    profile: dict[str, dict] = {}
    for rep in range(a.reps):
        for mode in modes:
            r = run_once(mode, n, a.workers, bodies, False, a.prefetch, a.keep, perf=a.perf)
            runs[mode].append(r)
            cpu = r["cpu_us_per_msg"]
            if r.get("perf"):
                L.log(f"  {mode} rep {rep + 1} syscalls/context switches per message: {r['perf']}")
            L.log(f"  {mode} rep {rep + 1}: {L.fmt(r['events_s'])} ev/s, handled {r['handled']}"
                  f"{' STALLED' if r['stalled'] else ''}, "
                  f"workers {r['per_worker']}, CPU µs/msg {cpu}, "
                  f"busy {r['cpu']['machine_busy_pct'] if r['cpu'] else None}%")
    if a.profile:
        for mode in modes:
            L.log(f"profiling {mode} (not counted)")
            r = run_once(mode, n, a.workers, bodies, True, a.prefetch, a.keep)
            profile[mode] = {"profiles": r.pop("profile", []), "run": r}

    def med(mode: str, path: list[str]) -> dict | None:
        vals = []
        for r in runs[mode]:
            v = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            vals.append(v)
        return L.mmm(vals)

    groups = ("manager", "workers", "rabbitmq")
    summary = {m: {
        "events_s": med(m, ["events_s"]),
        "cpu_us_per_msg": {g: med(m, ["cpu_us_per_msg", g]) for g in groups},
        "cpu_pct": {g: med(m, ["cpu", "cpu_pct", g]) for g in groups},
        "machine_busy_pct": med(m, ["cpu", "machine_busy_pct"]),
        "mem_peak_rss_kb": med(m, ["mem_peak", "total_rss_kb"]),
        "mem_peak_pss_kb": med(m, ["mem_peak", "total_pss_kb"]),
        "perf_per_msg": {f"{g} {e}": med(m, ["perf", g, e]) for g in ("manager", "workers")
                         for e in ("raw_syscalls:sys_enter", "context-switches")}
        if any(r.get("perf") for r in runs[m]) else None,
    } for m in modes}
    met = {m: bool(summary[m]["events_s"] and summary[m]["events_s"]["median"] >= TARGETS[m])
           for m in modes}
    result = {"bench": "consume", "machine": info, "args": vars(a), "n": n,
              "target": {m: TARGETS[m] for m in modes}, "c_module": {m: C_NUM[m] for m in modes},
              "summary": summary, "runs": runs, "profile": profile or None, "met": met}
    path = L.save_result("consume", result)
    print()
    print(L.table(["mode", "events/s", "target", "C (4 procs)", "ratio vs C",
                   *(f"{g} µs/msg" for g in groups), "peak RSS kB", "peak PSS kB"],
                  [[m, L.fmt(summary[m]["events_s"]), f">= {TARGETS[m]:,}", f"{C_NUM[m]:,}",
                    f"{summary[m]['events_s']['median'] / C_NUM[m]:.2f}"
                    if summary[m]["events_s"] else "-",
                    *(L.fmt(summary[m]["cpu_us_per_msg"][g], 1) for g in groups),
                    L.fmt(summary[m]["mem_peak_rss_kb"]), L.fmt(summary[m]["mem_peak_pss_kb"])]
                   for m in modes]))
    for m in modes:
        if summary[m]["perf_per_msg"]:
            print(f"{m}: per message " + ", ".join(
                f"{k} {L.fmt(v, 2)}" for k, v in summary[m]["perf_per_msg"].items()))
    for mode, p in profile.items():
        for prof in p["profiles"]:
            prof["label"] = f"{mode} {prof.get('label')}"
            L.print_profile(prof)
    print("\n" + "; ".join(f"{m} >= {TARGETS[m]:,}/s {'MET' if met[m] else 'MISSED'}"
                           for m in modes) + f"; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
