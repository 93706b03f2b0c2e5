#!/usr/bin/env python3
"""CPU cost of recording metrics on the hot paths, measured in-process (no broker; CPU time of
this process, so a busy machine slows it less than wall-clock figures).

    .venv/bin/python bench/metrics_micro.py

* worker: ``Worker.handle_frames`` (the pipe loop) on ~500-byte Kazoo events with a route that
  returns at once, with handler stats off and on (and JSON-log identity on), µs per delivery;
* manager: one confirm-latency observation as the publisher makes it, and one query-latency
  observation (``Histogram.observe`` after a clock read), µs each.

The end-to-end comparison (daemon, broker, load clients) is ``bench/metrics_overhead.py``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import timeit
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _lib as L  # noqa: E402

sys.path.insert(0, str(L.SRC))

from kazoo_amqp.core import pipe  # noqa: E402
from kazoo_amqp.core.config import settings_from_mapping  # noqa: E402
from kazoo_amqp.core.stats import (  # noqa: E402
    CONFIRM_BUCKETS,
    HANDLER_BUCKETS,
    Histogram,
    HistogramSet,
)
from kazoo_amqp.workers.child import Worker  # noqa: E402
from kazoo_amqp.workers.router import Router  # noqa: E402


class _Services:
    escape_char = "%"
    encode_high_bytes = "utf8"
    batching = True
    current_seq = 0
    loop: Any = None

    def flush(self) -> set[int]:
        return set()

    def discard(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


def _worker(stats: bool, log_format: str = "text") -> Worker:
    router = Router()

    @router.route("kazoo:consumer-event-bench-consume")
    def route(kz: Any) -> None:
        return None

    settings = settings_from_mapping(
        {"node_hostname": "bench", "log_format": log_format}, base_dir="/tmp",
        default_app_version="1",
    )  # fmt: skip
    w = Worker(index=0, settings=settings, router=router, callback=None,
               services=_Services(), stats=HistogramSet(HANDLER_BUCKETS) if stats else None)  # type: ignore[arg-type]  # fmt: skip
    w.bindings = [(None, None)]
    w.zones = {1: "local"}
    return w


def per_delivery_us(workers: list[Worker], n: int = 2000, reps: int = 31) -> list[float]:
    """Least CPU µs per delivery (as timeit: the least disturbed rep) of each worker through
    ``Worker.handle_frames`` (the pipe loop's body; outcomes written to a socketpair drained by
    a thread), measured in turns so load drifts hit all alike."""
    body = L.wire_body(1)
    frames = [
        pipe.encode_delivery(seq, 0, 1, False, "bench.consume", "ex", body)[4:]
        for seq in range(1, n + 1)
    ]
    ours, theirs = socket.socketpair()
    drain = threading.Thread(target=lambda: all(iter(lambda: theirs.recv(1 << 16), b"")),
                             daemon=True)  # fmt: skip
    drain.start()
    times: list[list[float]] = [[] for _ in workers]
    for _ in range(reps):
        for i, worker in enumerate(workers):
            t = time.process_time()  # CPU time: waiting for a busy CPU does not count
            worker.handle_frames(frames, ours)
            times[i].append((time.process_time() - t) / n * 1e6)
    ours.close()
    drain.join(5)
    theirs.close()
    return [min(t) for t in times]


def main() -> int:
    rows = []
    off, on, js = per_delivery_us([_worker(False), _worker(True), _worker(False, "json")])
    rows.append(["worker: one delivery, metrics off", f"{off:.2f}", "-"])
    rows.append(["worker: one delivery, metrics on", f"{on:.2f}", f"+{on - off:.2f}"])
    rows.append(["worker: one delivery, JSON-log identity", f"{js:.2f}", f"+{js - off:.2f}"])
    h = Histogram(CONFIRM_BUCKETS)
    accepted = time.monotonic()
    mono = time.monotonic
    n = 200000
    confirm = (
        min(
            timeit.repeat(
                lambda: h.observe(mono() - accepted), number=n, repeat=5, timer=time.process_time
            )
        )
        / n
    )
    rows.append(["manager: one confirm/query latency observation", f"{confirm * 1e6:.2f}",
                 f"+{confirm * 1e6:.2f}"])  # fmt: skip
    w = _worker(True)
    record = min(
        timeit.repeat(
            lambda: w._observe("kazoo:consumer-event-bench-consume", 0, 0.0001),
            number=n, repeat=5, timer=time.process_time,
        )
    ) / n  # fmt: skip
    rows.append(["worker: recording one delivery (Worker._observe)", f"{record * 1e6:.2f}",
                 f"+{record * 1e6:.2f}"])  # fmt: skip
    print(L.table(["operation", "µs", "added by metrics"], rows))
    L.save_result("metrics_micro", {"rows": rows, "machine": L.machine_info()})
    print(
        json.dumps({"worker_added_us": round(on - off, 3), "observe_us": round(confirm * 1e6, 3)})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
