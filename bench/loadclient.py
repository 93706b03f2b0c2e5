#!/usr/bin/env python3
"""Load client process of the benchmarks: publishes or queries through the daemon's socket.

Started by the bench scripts, not by hand. It connects, prints ``READY``, waits for ``GO`` on
stdin (unless ``--no-go``), runs ``--count`` operations with ``--concurrency`` in flight
(``AsyncClient``; ``--sync`` uses the blocking ``Client``, one at a time; publishes return on
the daemon's accept unless ``--confirm``), optionally paced to
``--rate`` operations per second, and prints one JSON line: start/end on the monotonic clock,
operations done, errors by type, its own CPU seconds, and per-call latencies in ms.
Bounded by ``--count`` and ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _lib as L


def _bodies(a: argparse.Namespace) -> list[str]:
    cat, _, name = a.event.partition(".")
    return [L.compact(L.kazoo_event(a.offset + i, cat, name or "publish")) for i in range(1000)]


def _result(t0: float, t1: float, done: int, errors: dict[str, int], c0: float,
            lat: list[float], every: int) -> str:
    return json.dumps({"start": t0, "end": t1, "done": done, "errors": errors,
                       "cpu_s": time.process_time() - c0,
                       "lat_ms": [round(x, 4) for x in lat[::every]]})


def _opts(a: argparse.Namespace) -> dict[str, bool]:
    # Only when asked, so the same client also drives a tree from before the option existed.
    return {"confirm": True} if a.confirm else {}


def run_sync(a: argparse.Namespace) -> None:
    from kazoo_amqp import Client

    opts = _opts(a)
    bodies = _bodies(a)
    client = Client(a.socket, timeout=30.0)
    client.ping()
    if not a.no_go:
        L.wait_go()
    c0 = time.process_time()
    lat: list[float] = []
    errors: dict[str, int] = {}
    perf = time.perf_counter
    deadline = time.monotonic() + a.deadline
    t0 = time.monotonic()
    for i in range(a.count):
        if time.monotonic() > deadline:
            break
        if a.rate:
            delay = t0 + i / a.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        t = perf()
        try:
            if a.op == "publish":
                client.publish(a.exchange, a.rk, bodies[i % 1000], **opts)
            else:
                client.query(a.exchange, a.rk, bodies[i % 1000], timeout_ms=a.timeout_ms)
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            continue
        lat.append((perf() - t) * 1000)
    t1 = time.monotonic()
    client.close()
    print(_result(t0, t1, len(lat), errors, c0, lat, a.lat_every), flush=True)


async def run_async(a: argparse.Namespace) -> None:
    from kazoo_amqp import AsyncClient

    bodies = _bodies(a)
    client = AsyncClient(a.socket, timeout=30.0)
    await client.connect()
    await client.ping()
    if not a.no_go:
        L.wait_go()
    c0 = time.process_time()
    lat: list[float] = []
    errors: dict[str, int] = {}
    state = {"next": 0}
    perf = time.perf_counter
    mono = time.monotonic
    deadline = mono() + a.deadline
    call = functools.partial(client.publish, **_opts(a)) if a.op == "publish" else None
    t0 = mono()

    done = [0]

    async def batch_lane() -> None:
        batch = a.batch
        while state["next"] < a.count and mono() < deadline:
            i = state["next"]
            k = min(batch, a.count - i)
            state["next"] = i + k
            msgs = [(a.exchange, a.rk, bodies[(i + j) % 1000]) for j in range(k)]
            t = perf()
            try:
                results = await client.publish_batch(msgs, **_opts(a))
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + k
                continue
            for res in results:
                if isinstance(res, Exception):
                    errors[type(res).__name__] = errors.get(type(res).__name__, 0) + 1
                else:
                    done[0] += 1
            lat.append((perf() - t) * 1000)

    async def lane() -> None:
        while state["next"] < a.count and mono() < deadline:
            i = state["next"]
            state["next"] = i + 1
            if a.rate:
                delay = t0 + i / a.rate - mono()
                if delay > 0:
                    await asyncio.sleep(delay)
            t = perf()
            try:
                if call is not None:
                    await call(a.exchange, a.rk, bodies[i % 1000])
                else:
                    await client.query(a.exchange, a.rk, bodies[i % 1000],
                                       timeout_ms=a.timeout_ms)
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            lat.append((perf() - t) * 1000)

    one = batch_lane if a.op == "publish_batch" else lane
    await asyncio.gather(*(one() for _ in range(a.concurrency)))
    t1 = mono()
    await client.close()
    n_done = done[0] if a.op == "publish_batch" else len(lat)
    print(_result(t0, t1, n_done, errors, c0, lat, a.lat_every), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--op", choices=("publish", "publish_batch", "query"), required=True)
    ap.add_argument("--batch", type=int, default=64, help="messages per publish_batch call")
    ap.add_argument("--exchange", required=True)
    ap.add_argument("--rk", required=True)
    ap.add_argument("--event", default="bench.publish", help="Event-Category.Event-Name")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--sync", action="store_true")
    ap.add_argument("--confirm", action="store_true",
                    help="publishes wait for the broker's confirm (default: the daemon's accept)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="event loop of the AsyncClient process")
    ap.add_argument("--rate", type=float, default=0.0, help="ops/s for this process (0: no pacing)")
    ap.add_argument("--timeout-ms", type=int, default=2000)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--lat-every", type=int, default=1, help="keep every k-th latency")
    ap.add_argument("--no-go", action="store_true")
    a = ap.parse_args()
    if a.sync:
        run_sync(a)
    elif a.loop == "uvloop":
        import uvloop

        uvloop.run(run_async(a))
    else:
        asyncio.run(run_async(a))
    return 0


def spawn(socket_path: str, op: str, exchange: str, rk: str, count: int, *, concurrency: int = 1,
          sync: bool = False, rate: float = 0.0, offset: int = 0, deadline: float = 120.0,
          event: str = "bench.publish", timeout_ms: int = 2000, lat_every: int = 1,
          no_go: bool = False, batch: int = 64, confirm: bool = False,
          loop: str = "asyncio") -> L.Child:
    args = [str(Path(__file__).resolve()), "--socket", socket_path, "--op", op, "--exchange",
            exchange, "--rk", rk, "--count", str(count), "--concurrency", str(concurrency),
            "--rate", str(rate), "--offset", str(offset), "--deadline", str(deadline),
            "--event", event, "--timeout-ms", str(timeout_ms), "--lat-every", str(lat_every),
            "--batch", str(batch), "--loop", loop]
    if confirm:
        args.append("--confirm")
    if sync:
        args.append("--sync")
    if no_go:
        args.append("--no-go")
    return L.Child(args, f"{op}-client")


if __name__ == "__main__":
    sys.exit(main())
