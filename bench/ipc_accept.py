#!/usr/bin/env python3
"""The socket layer alone: the accept path of a publish, without RabbitMQ or a publisher.

    .venv/bin/python bench/ipc_accept.py                       # asyncio and uvloop, 3 reps
    .venv/bin/python bench/ipc_accept.py --loop uvloop --reps 5 --profile

A server process runs ``IpcServer`` with a backend whose ``submit`` only counts and returns a
Msg-ID (what the daemon does per accepted publish minus the publisher's own work), and client
processes send publishes of the bench's ~320-byte Kazoo event:

* ``p1_sync``: one blocking ``Client``, one publish at a time: call latency p50/p99;
* ``p4_sync``: 4 blocking ``Client`` processes: calls/s;
* ``p4_async``: 4 ``AsyncClient`` processes x 256 in flight: calls/s.

Reports calls/s and CPU µs per call of the server and of the clients (``/proc/PID/stat``), the
numbers to compare between event loops and between versions of ``ipc/`` and ``core/wire.py``:
this is the part of a publish's cost the socket layer owns. Bounded by counts and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L

HERE = Path(__file__).resolve()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- server process
def serve(path: str, loop: str) -> None:
    from kazoo_amqp.ipc.server import IpcServer

    class NullPublisher:
        def __init__(self) -> None:
            self.n = 0

        def submit(self, exchange: str, routing_key: str, payload: Any, headers: Any = None,
                   *, mandatory: bool = False, persistent: Any = None, done: Any = None) -> str:
            self.n += 1
            return f"{self.n:032x}"

        async def query(self, *a: Any, **k: Any) -> str:
            raise NotImplementedError

        async def pua_publish(self, *a: Any, **k: Any) -> dict[str, Any]:
            raise NotImplementedError

        def status(self) -> dict[str, Any]:
            return {"submitted": self.n}

    async def main() -> None:
        server = IpcServer(path, NullPublisher(), max_frame=1 << 20)  # type: ignore[arg-type]
        await server.start()
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await server.stop(1.0)

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# --------------------------------------------------------------------------- client process
def client(path: str, mode: str, count: int, concurrency: int, loop: str) -> None:
    body = L.compact(L.kazoo_event(1, "bench", "publish"))
    perf = time.perf_counter
    lat: list[float] = []
    if mode == "sync":
        from kazoo_amqp import Client

        c = Client(path)
        c.ping()
        print("READY", flush=True)
        sys.stdin.readline()
        c0 = time.process_time()
        t0 = perf()
        for _ in range(count):
            t = perf()
            c.publish("bench", "bench.publish.dialog", body)
            lat.append(perf() - t)
        t1 = perf()
    else:
        from kazoo_amqp import AsyncClient

        async def run() -> tuple[float, float, float]:
            c = AsyncClient(path)
            await c.ping()
            print("READY", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            c0 = time.process_time()
            t0 = perf()
            left = [count]

            async def lane() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await c.publish("bench", "bench.publish.dialog", body)

            await asyncio.gather(*(lane() for _ in range(concurrency)))
            t1 = perf()
            await c.close()
            return c0, t0, t1

        if loop == "uvloop":
            import uvloop

            c0, t0, t1 = uvloop.run(run())
        else:
            c0, t0, t1 = asyncio.run(run())
    lat.sort()
    print(json.dumps({"n": count, "s": t1 - t0, "cpu_s": time.process_time() - c0,
                      "p50_us": lat[len(lat) // 2] * 1e6 if lat else None,
                      "p99_us": lat[int(len(lat) * 0.99)] * 1e6 if lat else None}), flush=True)


# --------------------------------------------------------------------------- driver
def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=L.child_env())


def run_once(path: str, server_pid: int, mode: str, procs: int, count: int, concurrency: int,
             loop: str) -> dict[str, Any]:
    kids = [_spawn("--client", path, mode, str(count), str(concurrency), loop)
            for _ in range(procs)]
    for k in kids:
        assert k.stdout is not None and k.stdout.readline().strip() == "READY"
    s0 = _cpu_s(server_pid)
    t0 = time.perf_counter()
    for k in kids:
        assert k.stdin is not None
        k.stdin.write("GO\n")
        k.stdin.flush()
    results = [json.loads(k.communicate(timeout=300)[0]) for k in kids]
    wall = time.perf_counter() - t0
    n = count * procs
    return {
        "calls_s": round(n / max(r["s"] for r in results), 1),
        "wall_calls_s": round(n / wall, 1),
        "server_us_per_call": round((_cpu_s(server_pid) - s0) / n * 1e6, 2),
        "clients_us_per_call": round(sum(r["cpu_s"] for r in results) / n * 1e6, 2),
        "p50_us": results[0]["p50_us"] and round(results[0]["p50_us"], 1),
        "p99_us": results[0]["p99_us"] and round(results[0]["p99_us"], 1),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--count", type=int, default=20000, help="calls per client process")
    a = ap.parse_args()
    loops = ["asyncio", "uvloop"] if a.loop == "both" else [a.loop]
    runs = {"p1_sync": (1, "sync", 1), "p4_sync": (4, "sync", 1), "p4_async": (4, "async", 256)}
    out: dict[str, Any] = {}
    for rep in range(a.reps):
        for loop in loops:  # alternate, so drift on a shared machine hits both alike
            path = os.path.join(tempfile.mkdtemp(prefix="kzipc-"), "s.sock")
            server = _spawn("--serve", path, loop)
            assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            try:
                for name, (procs, mode, conc) in runs.items():
                    r = run_once(path, server.pid, mode, procs, a.count, conc, loop)
                    out.setdefault(loop, {}).setdefault(name, []).append(r)
                    L.log(f"rep {rep + 1} {loop:7} {name:8} {r}")
            finally:
                assert server.stdin is not None
                server.stdin.write("\n")
                server.stdin.flush()
                server.wait(10)
    rows = []
    for loop, by_run in out.items():
        for name, rs in by_run.items():
            def med(k: str, rs: list[dict[str, Any]] = rs) -> Any:
                vals = [r[k] for r in rs if r[k] is not None]
                return round(statistics.median(vals), 1) if vals else None
            rows.append([loop, name, L.fmt(med("calls_s")), med("server_us_per_call"),
                         med("clients_us_per_call"), med("p50_us"), med("p99_us")])
    print()
    print(L.table(["loop", "run", "calls/s", "server µs/call", "clients µs/call", "p50 µs",
                   "p99 µs"], rows))
    L.save_result("ipc_accept", {"bench": "ipc_accept", "args": vars(a), "runs": out,
                                 "machine": L.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
