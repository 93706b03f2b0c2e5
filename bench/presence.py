#!/usr/bin/env python3
"""Presence: Kazoo dialog updates consumed from RabbitMQ -> presentity rows committed, per second.

    .venv/bin/python bench/presence.py                       # sqlite and postgres, 3 reps each
    .venv/bin/python bench/presence.py --dbs sqlite --quick --reps 1
    .venv/bin/python bench/presence.py --profile

Per run: ``--count`` (20k) dialog updates shaped like
``/work/shared/corpus/02-presence-dialog-update-confirmed.json`` (From-User/Presence-ID over
``--users`` (1000) users, a fresh Call-ID per update so every update is one row) are prefilled
into a queue (durable=0, auto_delete=0) bound ``dialog.*.*`` to a topic exchange, BEFORE the
daemon starts. The subscription is what production uses: ``consistent-worker`` keyed on
``Call-ID``, ``no_ack: 0`` + ``wait_for_consumer_ack: 1``; the route
``kazoo:consumer-event-presence-dialog-update`` calls ``kz.pua_publish_dialoginfo()``.

* SQLite: a fresh file, schema by ``kazoo-amqp db init --config FILE``.
* PostgreSQL: a throwaway database ``kzbench_<hex>`` created here, schema by ``kazoo-amqp db
  init``, dropped at the end.

Rows/s = N / (first event handled -> ``SELECT count(*)`` reaches N; polled every 20 ms).
CPU per update: manager, workers, RabbitMQ and (PostgreSQL) the 4 backends serving the workers.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L

TARGET_SQLITE = 5000
REALM = "acme.sip.example.net"
REC = struct.Struct("<qddd")

ROUTES = '''
import json, mmap
SUB = json.loads(%(sub)r)
_REC = struct.Struct("<qddd")
_st = {"n": 0, "mm": None, "first": 0.0}
_mono = time.monotonic

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe(SUB)

def _count():
    st = _st
    n = st["n"] = st["n"] + 1
    now = _mono()
    if st["mm"] is None:
        os.makedirs(os.path.join(HERE, "counters"), exist_ok=True)
        path = os.path.join(HERE, "counters", "%%d.bin" %% os.getpid())
        with open(path, "wb") as f:
            f.write(bytes(_REC.size))
        f = open(path, "r+b")
        st["mm"] = mmap.mmap(f.fileno(), _REC.size)
        st["first"] = now
    _REC.pack_into(st["mm"], 0, n, st["first"], now, 0.0)

@router.route("kazoo:consumer-event-presence-dialog-update")
def dialog_update(kz):
    kz.pua_publish_dialoginfo()
    _count()
'''


def dialog_update(i: int, users: int) -> tuple[str, bytes]:
    """One Kazoo dialog update (the corpus message's shape); returns (routing key, body)."""
    user = str(1000 + i % users)
    peer = str(1000 + (i + 1) % users)
    call_id = str(uuid.uuid4())
    state = ("early", "confirmed", "confirmed", "terminated")[i % 4]
    doc = {
        "Presence-ID": f"{user}@{REALM}", "From": f"sip:{user}@{REALM}", "From-User": user,
        "From-Realm": REALM, "From-Tag": uuid.uuid4().hex[:13], "To": f"sip:{peer}@{REALM}",
        "To-User": peer, "To-Realm": REALM, "To-Tag": uuid.uuid4().hex[:13],
        "To-URI": f"sip:{user}@{REALM}", "Direction": "recipient", "State": state,
        "Call-ID": call_id, "Switch-URI": "sip:10.0.1.21:11000", "Expires": 0,
        "Event-Package": "dialog", "Event-Category": "presence", "Event-Name": "dialog_update",
        "App-Name": "ecallmgr", "App-Version": "5.0.0", "Node": "ecallmgr@kz1.example.net",
        "Msg-ID": uuid.uuid4().hex[:16],
    }
    rk = f"dialog.{REALM.replace('.', '%2E')}.{call_id}"
    return rk, L.compact(doc).encode()


def subscription(exchange: str, queue: str) -> dict:
    return {"exchange": exchange, "type": "topic", "queue": queue, "routing": "dialog.*.*",
            "durable": 0, "auto_delete": 0, "consistent-worker": 1,
            "consistent-worker-key": "Call-ID", "no_ack": 0, "wait_for_consumer_ack": 1}


def prefill(exchange: str, msgs: list[tuple[str, bytes]]) -> float:
    """Publish with varying routing keys (bulk_publish takes one key): group by nothing, one
    publish per message, pipelined with confirms."""
    import asyncio

    from kazoo_amqp.amqp.connection import Connection

    async def run() -> float:
        conn = await Connection.connect(host=L.AMQP_HOST, port=L.AMQP_PORT, user=L.AMQP_USER,
                                        password=L.AMQP_PASSWORD, name="kzbench prefill")
        try:
            ch = await conn.channel(confirms=True)
            t0 = time.perf_counter()
            window: list[Any] = []
            async with asyncio.timeout(120):
                for rk, body in msgs:
                    window.append(ch.publish(exchange, rk, body))
                    if len(window) >= 2000:
                        await asyncio.gather(*window)
                        window.clear()
                if window:
                    await asyncio.gather(*window)
            return time.perf_counter() - t0
        finally:
            await conn.close()

    return asyncio.run(run())


class Db:
    """The database under test: creation, row counting, backend pids, removal."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.name = ""
        self.conn: Any = None
        if kind == "sqlite":
            self.path = directory / "presence.db"
            self.url = f"sqlite:///{self.path}"
        else:
            import psycopg

            self.name = "kzbench_" + uuid.uuid4().hex[:10]
            with psycopg.connect(L.PG_DSN, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.name}"')
            self.url = f"postgres://postgres@127.0.0.1:5432/{self.name}"

    def open(self) -> None:
        if self.kind == "sqlite":
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        else:
            import psycopg

            self.conn = psycopg.connect(L.PG_DSN.replace("dbname=postgres", f"dbname={self.name}"),
                                        autocommit=True)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM presentity").fetchone()[0])

    def distinct_users(self) -> int:
        return int(self.conn.execute(
            "SELECT count(DISTINCT username) FROM presentity").fetchone()[0])

    def backend_pids(self) -> list[int]:
        if self.kind != "postgres":
            return []
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,)).fetchall()
        return [int(r[0]) for r in rows]

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.kind == "postgres" and self.name:
            import psycopg

            with psycopg.connect(L.PG_DSN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def read_counters(directory: Path) -> list[tuple[int, float, float]]:
    out = []
    d = directory / "counters"
    if d.exists():
        for f in d.iterdir():
            data = f.read_bytes()[:REC.size]
            if len(data) == REC.size:
                n, first, last, _ = REC.unpack(data)
                if n:
                    out.append((n, first, last))
    return out


def run_once(kind: str, n: int, users: int, workers: int, profile: bool,
             stall_timeout: float = 10.0, keep: bool = False) -> dict:
    broker = L.Broker()
    exchange = broker.exchange(L.unique("presence"))
    queue = broker.queue(exchange + ".q", exchange=exchange, keys=["dialog.*.*"])
    daemon: L.Daemon | None = None
    db: Db | None = None
    try:
        msgs = [dialog_update(i, users) for i in range(n)]
        t_fill = prefill(exchange, msgs)
        t, depth = broker.wait_depth(queue, n, timeout=60)
        if t is None:
            raise RuntimeError(f"prefill reached {depth} of {n}")
        sub = subscription(exchange, queue)
        daemon = L.Daemon(ROUTES % {"sub": json.dumps(sub)}, workers=workers, name=f"pres-{kind}",
                          keep=keep)
        db = Db(kind, daemon.dir)
        daemon.config["db_url"] = db.url
        daemon.config_path.write_text(L._toml(daemon.config))
        init = daemon.cli("db", "init", "--config", str(daemon.config_path))
        if init.returncode != 0:
            raise RuntimeError(f"db init failed: {init.stdout} {init.stderr}")
        db.open()
        daemon.launch()
        wpids = daemon.children(workers)
        groups: dict[str, list[int]] = {"manager": [daemon.pid], "workers": wpids,
                                        "rabbitmq": [L.rabbit_pid()]}
        sampler = L.Sampler(groups)
        sampler.start()
        manager_cpu0 = sampler.c0[daemon.pid]
        deadline = time.monotonic() + 180
        started = False
        t_first_row = t_done = None
        rows = 0
        last_rows, last_progress, stalled = -1, time.monotonic(), False
        profs: list[L.Profiler] = []
        polls = 0
        while time.monotonic() < deadline:
            rows = db.count()
            now = time.monotonic()
            if not started and (rows > 0 or read_counters(daemon.dir)):
                if kind == "postgres":
                    sampler.groups["postgres"] = db.backend_pids()
                sampler.start()
                sampler.c0[daemon.pid] = manager_cpu0
                started = True
                if profile:
                    est = max(3, int(n / 4000) + 1)
                    profs = [L.Profiler(daemon.pid, "manager", est),
                             L.Profiler(wpids[0], "worker", est)]
            if started and kind == "postgres" and len(sampler.groups["postgres"]) < workers:
                for pid in db.backend_pids():  # workers connect at their first commit
                    if pid not in sampler.groups["postgres"]:
                        sampler.groups["postgres"].append(pid)
                        sampler.c0[pid] = L.cpu_seconds(pid)
            if rows > 0 and t_first_row is None:
                t_first_row = now
            if rows >= n:
                t_done = now
                break
            if rows != last_rows:
                last_rows, last_progress = rows, now
            elif started and now - last_progress > stall_timeout:
                stalled = True
                L.log(f"  STALLED at {rows} of {n} rows (queue consumers "
                      f"{broker.consumers(queue)})")
                break
            polls += 1
            if started and polls % 10 == 0:
                sampler.sample_peak()
            if daemon.proc is not None and daemon.proc.poll() is not None:
                raise RuntimeError(f"daemon died:\n{daemon.logs()[-3000:]}")
            time.sleep(0.02)
        sampler.sample_peak()
        cpu = sampler.stop() if started else None
        cnt = read_counters(daemon.dir)
        first = min((c[1] for c in cnt), default=0.0)
        status = daemon.status()
        res: dict[str, Any] = {
            "db": kind, "n": n, "users": users, "rows": rows, "stalled": stalled,
            "distinct_users": db.distinct_users(),
            "handled_per_worker": sorted(c[0] for c in cnt),
            "rows_s": round(n / (t_done - first), 1) if t_done and first else None,
            "rows_s_from_first_row": round(n / (t_done - t_first_row), 1)
            if t_done and t_first_row and t_done > t_first_row else None,
            "first_event_to_done_s": round(t_done - first, 3) if t_done and first else None,
            "prefill_s": round(t_fill, 2),
            "cpu": cpu, "cpu_us_per_row": L.per_op_us(cpu, rows) if cpu else {},
            "mem_peak": {"total_rss_kb": sampler.peak.get("total_rss_kb"),
                         "total_pss_kb": sampler.peak.get("total_pss_kb")},
            "pool": {k: status["workers"].get(k) for k in
                     ("dispatched", "done", "handler_error", "no_route", "bad_message")},
        }
        if profs:
            res["profile"] = [p.summary() for p in profs]
        res["daemon_exit"] = daemon.stop()
        res["daemon_errors"] = daemon.log_errors()
        res["left_in_queue"] = broker.depth(queue)
        return res
    finally:
        if daemon is not None:
            daemon.stop()
            daemon.remove()
        if db is not None:
            db.drop()
        broker.cleanup()
        broker.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=None, help="updates per run (default 20k)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--dbs", default="sqlite,postgres")
    ap.add_argument("--keep", action="store_true")
    L.common_args(ap)
    a = ap.parse_args()
    n = a.count or (5000 if a.quick else 20000)
    dbs = [d for d in a.dbs.split(",") if d]
    info = L.machine_info()
    L.log(f"presence: {n} dialog updates over {a.users} users, dbs {dbs}, {a.reps} reps, "
          f"{a.workers} workers")
    runs: dict[str, list[dict]] = {d: [] for d in dbs}
    profile: dict[str, Any] = {}
    for rep in range(a.reps):
        for kind in dbs:
            r = run_once(kind, n, a.users, a.workers, False, keep=a.keep)
            runs[kind].append(r)
            L.log(f"  {kind} rep {rep + 1}: {L.fmt(r['rows_s'])} rows/s, rows {r['rows']}"
                  f"{' STALLED' if r['stalled'] else ''}, users {r['distinct_users']}, per worker "
                  f"{r['handled_per_worker']}, CPU µs/row {r['cpu_us_per_row']}")
    if a.profile:
        for kind in dbs:
            L.log(f"profiling {kind} (not counted)")
            r = run_once(kind, n, a.users, a.workers, True, keep=a.keep)
            profile[kind] = {"profiles": r.pop("profile", []), "run": r}

    def med(kind: str, path: list[str]) -> dict | None:
        vals = []
        for r in runs[kind]:
            v: Any = r
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            vals.append(v)
        return L.mmm(vals)

    groups = ("manager", "workers", "rabbitmq", "postgres")
    summary = {d: {
        "rows_s": med(d, ["rows_s"]),
        "rows_s_from_first_row": med(d, ["rows_s_from_first_row"]),
        "cpu_us_per_row": {g: med(d, ["cpu_us_per_row", g]) for g in groups},
        "cpu_pct": {g: med(d, ["cpu", "cpu_pct", g]) for g in groups},
        "machine_busy_pct": med(d, ["cpu", "machine_busy_pct"]),
        "mem_peak_rss_kb": med(d, ["mem_peak", "total_rss_kb"]),
    } for d in dbs}
    met = bool("sqlite" in summary and summary["sqlite"]["rows_s"]
               and summary["sqlite"]["rows_s"]["median"] >= TARGET_SQLITE)
    result = {"bench": "presence", "machine": info, "args": vars(a), "n": n,
              "target": {"sqlite_rows_s": TARGET_SQLITE}, "c_module": None,
              "summary": summary, "runs": runs, "profile": profile or None,
              "met": {"sqlite": met}}
    path = L.save_result("presence", result)
    print()
    print(L.table(["db", "rows/s (first event -> N rows)", "rows/s (first row -> N)", "target",
                   *(f"{g} µs/row" for g in groups), "peak RSS kB"],
                  [[d, L.fmt(summary[d]["rows_s"]), L.fmt(summary[d]["rows_s_from_first_row"]),
                    f">= {TARGET_SQLITE:,}" if d == "sqlite" else "-",
                    *(L.fmt(summary[d]["cpu_us_per_row"][g], 1) for g in groups),
                    L.fmt(summary[d]["mem_peak_rss_kb"])] for d in dbs]))
    for kind, p in profile.items():
        for prof in p["profiles"]:
            prof["label"] = f"{kind} {prof.get('label')}"
            L.print_profile(prof)
    print(f"\nsqlite >= {TARGET_SQLITE:,} rows/s: {'MET' if met else 'MISSED'}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
