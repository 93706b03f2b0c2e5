"""The observability listener: ``/metrics``, ``/health``, ``/ready``, ``/`` and ``/status.json``.

Built by the daemon when ``http_listen`` is set, started after the worker pool and the broker
links, stopped first. It owns the HTTP server and one sampler task that reads the counters once
a second into a five-minute history for the status page's plots (rates, query latency
percentiles). Everything it serves is read from the daemon's in-memory state on request.

Health semantics (docs/operations.md):

* ``/health``: 200 while the process runs and serves; 503 once it is stopping.
* ``/ready``: 200 when a primary-zone broker is connected and every worker process is up
  (a worker being replaced by a routes reload counts as up); else 503 with the reasons.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kazoo_amqp.core.config import listen_address
from kazoo_amqp.core.stats import QUERY_BUCKETS, Recorder, quantile
from kazoo_amqp.obs import page
from kazoo_amqp.obs.http import HttpServer, Response, json_response
from kazoo_amqp.obs.metrics import CONTENT_TYPE, Snapshot, build_registry, render

log = logging.getLogger("kazoo_amqp.obs")

#: seconds between two samples of the status page's history, and how many are kept
SAMPLE_S = 1.0
HISTORY = 300
#: rates are averaged, and query-latency percentiles taken, over this many samples
RATE_WINDOW = 3
LATENCY_WINDOW = 5

# (series name, where the counter is in the status dict)
_RATES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("publish", ("manager", "published")),
    ("consume", ("manager", "deliveries")),
    ("handled", ("workers", "done")),
)


class Observer:
    """The HTTP listener and the status page's history; see the module docstring."""

    def __init__(
        self,
        listen: str,
        *,
        snapshot: Snapshot,
        recorder: Recorder,
        ready: Callable[[], list[str]],
        describe: Callable[[], dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        host, port = listen_address(listen)
        self.snapshot = snapshot
        self.recorder = recorder
        self._ready = ready
        self._describe = describe
        self._clock = clock
        self.started = clock()
        self.stopping = False
        self.registry = build_registry(snapshot, recorder)
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RATE_WINDOW)
        self._query_window: collections.deque[list[int]] = collections.deque(maxlen=LATENCY_WINDOW)
        self._sampler: asyncio.Task[None] | None = None
        self.server = HttpServer(
            host,
            port,
            {
                "/": self._page,
                "/metrics": self._metrics,
                "/health": self._health,
                "/ready": self._ready_response,
                "/status.json": self._status,
            },
            key="http_listen",
        )

    async def start(self) -> None:
        await self.server.start()
        self._sample()
        self._sampler = asyncio.get_running_loop().create_task(
            self._sample_forever(), name="status-sampler"
        )
        log.info("metrics, health and status page on %s", self.server.url)

    async def stop(self) -> None:
        self.stopping = True
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        await self.server.stop()

    # -- handlers --------------------------------------------------------------------------
    def _metrics(self) -> Response:
        return Response(200, render(self.registry), CONTENT_TYPE)

    def _health(self) -> Response:
        if self.stopping:
            return json_response(503, {"status": "stopping", "reasons": ["the daemon is stopping"]})
        return json_response(
            200, {"status": "ok", "uptime_s": round(self._clock() - self.started, 1)}
        )

    def _ready_response(self) -> Response:
        reasons = ["the daemon is stopping"] if self.stopping else self._ready()
        if reasons:
            return json_response(503, {"status": "not ready", "reasons": reasons})
        return json_response(200, {"status": "ready", "reasons": []})

    def _page(self) -> Response:
        return Response(
            200,
            page.HTML,
            "text/html; charset=utf-8",
            {"Cache-Control": "no-store", "Content-Security-Policy": page.CSP},
        )

    def _status(self) -> Response:
        st = self.snapshot()
        reasons = self._ready()
        return json_response(
            200,
            {
                "now": self._clock(),
                "started": self.started,
                "ready": not reasons,
                "reasons": reasons,
                "version": st.get("version"),
                "node": st.get("node"),
                "brokers": st.get("manager", {}).get("brokers", []),
                "workers": st.get("workers", {}).get("workers", []),
                "totals": _totals(st),
                **self._describe(),
                "sample_s": SAMPLE_S,
                "history": list(self.history),
            },
        )

    # -- history ---------------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            try:
                self._sample()
            except Exception:  # a bug here must not stop the page from updating
                log.exception("status sampler failed")

    def _sample(self) -> None:
        """Append one point: rates since the last sample and recent query latency."""
        now = self._clock()
        st = self.snapshot()
        counts: dict[str, float] = {}
        for name, (part, key) in _RATES:
            counts[name] = float(st.get(part, {}).get(key, 0))
        # the rate counts every query; the latency percentiles only answered ones (a timeout's
        # "latency" is its timeout)
        counts["query"] = float(sum(h.count for h in self.recorder.query.values()))
        queries = list(self.recorder.query["ok"].counts)
        recent = self._recent
        last = recent[-1] if recent else None
        first = recent[0] if recent else None
        recent.append({"t": now, "counts": counts, "queries": queries})
        if last is None or first is None:
            return
        dt = max(now - first["t"], 1e-3)
        point: dict[str, Any] = {"t": round(now, 3)}
        for name, value in counts.items():
            point[name] = round(max(value - first["counts"][name], 0.0) / dt, 2)
        self._query_window.append([a - b for a, b in zip(queries, last["queries"], strict=True)])
        window = [sum(col) for col in zip(*self._query_window, strict=True)]
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            seconds = quantile(q, QUERY_BUCKETS, window)
            point[f"query_{label}_ms"] = None if seconds is None else round(seconds * 1000, 3)
        self.history.append(point)


def _totals(st: dict[str, Any]) -> dict[str, Any]:
    m = st.get("manager", {})
    w = st.get("workers", {})
    return {
        "published": m.get("published", 0),
        "publish_failed": m.get("publish_failed", 0),
        "buffered": m.get("buffered_publishes", 0),
        "unconfirmed": m.get("unconfirmed_publishes", 0),
        "queries": m.get("queries", 0),
        "query_timeouts": m.get("query_timeouts", 0),
        "pending_queries": m.get("pending_queries", 0),
        "consumed": m.get("deliveries", 0),
        "handled": w.get("done", 0),
        "handler_errors": w.get("handler_error", 0),
        "inflight": w.get("inflight", 0),
        "paused": bool(m.get("consumers_paused")),
    }
