"""``/metrics``: the daemon's counters and histograms in Prometheus text format.

Nothing here runs on a hot path. The counters are the ones the parts keep anyway (the status
dict of ``kazoo-amqp status``) and are read when Prometheus scrapes, by :class:`DaemonCollector`;
the histograms are ``core.stats`` histograms recorded by the parts and converted at scrape time.
The Prometheus client library (``prometheus_client``) renders the text format.

Cardinality is bounded by construction: labels are outcome and reason words from fixed lists,
route names (the routes file's registered names), worker indexes, and broker host:port / zone /
server id from the config. Routing keys, Msg-IDs and other message values are never labels.

The metric names are listed, with their meaning, in docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from kazoo_amqp.core.stats import Histogram, Recorder

__all__ = ["CONTENT_TYPE", "DaemonCollector", "Snapshot", "build_registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
P = "kazoo_amqp_"

#: the daemon's status: ``{"version", "node", "manager": Manager.status(), "workers":
#: WorkerPool.status(), ...}`` (the same dict ``kazoo-amqp status`` prints)
Snapshot = Callable[[], dict[str, Any]]

# pool counter -> delivery outcome label
_DELIVERY_OUTCOMES = (
    ("done", "done"),
    ("handler_error", "handler_error"),
    ("bad_message", "bad_message"),
    ("no_route", "no_route"),
    ("gave_up", "gave_up"),
)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(P + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, value=value)


def _histogram(
    family: HistogramMetricFamily, labels: list[str], h: Histogram
) -> HistogramMetricFamily:
    family.add_metric(labels, h.cumulative(), h.sum)
    return family


class DaemonCollector:
    """A ``prometheus_client`` collector reading a :data:`Snapshot` and a :class:`Recorder`."""

    def __init__(self, snapshot: Snapshot, recorder: Recorder) -> None:
        self.snapshot = snapshot
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        st = self.snapshot()
        m: dict[str, Any] = st.get("manager", {})
        w: dict[str, Any] = st.get("workers", {})
        rec = self.recorder

        info = GaugeMetricFamily(P + "info", "Version and node name", labels=["version", "node"])
        info.add_metric([str(st.get("version", "")), str(st.get("node", ""))], 1)
        yield info

        # -- publishing ------------------------------------------------------------------
        yield _counter(
            "publishes", "Publishes accepted (socket, routes, queries)", m.get("accepted", 0)
        )
        yield _counter("publish_confirms", "Publishes the broker confirmed", m.get("published", 0))
        failures = CounterMetricFamily(
            P + "publish_failures",
            "Accepted publishes that finally failed, by reason "
            "(refused: channel closed by the broker, nacked: still nacked at its deadline, "
            "returned: mandatory and unroutable, "
            "expired: no confirm within publish_buffer_timeout_ms, shutdown, other)",
            labels=["reason"],
        )
        for reason, n in sorted(m.get("publish_failures", {}).items()):
            failures.add_metric([reason], n)
        yield failures
        yield _counter(
            "publish_returns", "basic.return frames received (mandatory, unroutable)",
            m.get("publish_returned", 0),
        )  # fmt: skip
        yield _counter(
            "publish_retries", "Publishes written again after a lost connection or a nack",
            m.get("publish_retried", 0),
        )  # fmt: skip
        yield _counter(
            "publish_nacks", "basic.nack confirms (sent again after a backoff until the deadline)",
            m.get("publish_nacked", 0),
        )  # fmt: skip
        yield _counter(
            "publish_buffer_rejected",
            "Publishes refused at once because the buffer was full, or expired in it",
            m.get("buffer_rejected", 0),
        )
        yield _gauge(
            "publish_buffer_depth", "Publishes waiting in the buffer for a writable broker",
            m.get("buffered_publishes", 0),
        )  # fmt: skip
        yield _gauge(
            "publish_unconfirmed", "Publishes written and waiting for the broker's confirm",
            m.get("unconfirmed_publishes", 0),
        )  # fmt: skip
        yield _histogram(
            HistogramMetricFamily(
                P + "publish_confirm_seconds",
                "Time from a publish's acceptance to the broker's confirm",
                labels=[],
            ),
            [],
            rec.confirm,
        )

        # -- queries ---------------------------------------------------------------------
        queries = CounterMetricFamily(
            P + "queries", "Queries by outcome (ok, timeout, error)", labels=["outcome"]
        )
        latency = HistogramMetricFamily(
            P + "query_seconds",
            "Time from sending a query to its reply, timeout or error, by outcome",
            labels=["outcome"],
        )
        for outcome, h in rec.query.items():
            queries.add_metric([outcome], h.count)
            latency.add_metric([outcome], h.cumulative(), h.sum)
        yield queries
        yield latency
        yield _gauge(
            "queries_waiting", "Queries waiting for their reply", m.get("pending_queries", 0)
        )
        dropped = CounterMetricFamily(
            P + "replies_unmatched",
            "Replies that matched no waiting query (late: after its timeout or foreign; bad: "
            "not a JSON object)",
            labels=["reason"],
        )
        dropped.add_metric(["late"], m.get("late_replies", 0))
        dropped.add_metric(["bad"], m.get("bad_replies", 0))
        yield dropped

        # -- consuming -------------------------------------------------------------------
        yield _counter("consumed", "Deliveries received from the brokers", m.get("deliveries", 0))
        yield _counter(
            "consumed_oversize", "Deliveries rejected for exceeding max_message_bytes",
            m.get("oversize", 0),
        )  # fmt: skip
        deliveries = CounterMetricFamily(
            P + "deliveries",
            "Deliveries and events finished by the workers, by outcome",
            labels=["outcome"],
        )
        for key, label in _DELIVERY_OUTCOMES:
            deliveries.add_metric([label], w.get(key, 0))
        yield deliveries
        handler = HistogramMetricFamily(
            P + "handler_seconds",
            "Run time of event routes in the workers, by route name and outcome (ok, error)",
            labels=["route", "outcome"],
        )
        for (route, outcome), h in rec.handler:
            handler.add_metric([route, outcome], h.cumulative(), h.sum)
        yield handler
        yield _gauge(
            "consumers_paused", "1 while reading deliveries is paused (workers behind)",
            1 if m.get("consumers_paused") else 0,
        )  # fmt: skip
        yield _counter(
            "subscription_errors", "Subscriptions a broker refused to declare",
            m.get("declare_errors", 0),
        )  # fmt: skip
        yield _counter(
            "consumer_restarts", "Consumers cancelled or closed by a broker and declared again",
            m.get("consumer_restarts", 0),
        )  # fmt: skip

        # -- workers ---------------------------------------------------------------------
        handles: list[dict[str, Any]] = w.get("workers", [])
        yield _gauge("workers", "Configured worker processes", len(handles))
        yield _gauge(
            "workers_up", "Worker processes running", sum(1 for h in handles if h.get("alive"))
        )
        yield _gauge(
            "workers_busy", "Worker processes holding at least one delivery",
            sum(1 for h in handles if h.get("inflight")),
        )  # fmt: skip
        yield _gauge(
            "inflight", "Deliveries handed to workers and not finished", w.get("inflight", 0)
        )
        yield _counter(
            "worker_restarts", "Worker processes replaced after they died or hung",
            w.get("worker_restarts", 0),
        )  # fmt: skip
        yield _counter(
            "workers_hung", "Workers killed for making no progress within handler_timeout_ms",
            w.get("hung_workers", 0),
        )  # fmt: skip
        yield _counter("reloads", "Routes reloads (SIGHUP) completed", w.get("reloads", 0))

        # -- brokers ---------------------------------------------------------------------
        labels = ["broker", "zone", "server_id"]
        up = GaugeMetricFamily(P + "broker_up", "1 while the broker is connected", labels=labels)
        blocked = GaugeMetricFamily(
            P + "broker_blocked",
            "1 while the broker blocks publishing (connection.blocked or channel.flow)",
            labels=labels,
        )
        primary = GaugeMetricFamily(
            P + "broker_primary", "1 for a broker of the primary zone", labels=labels
        )
        reconnects = CounterMetricFamily(
            P + "broker_reconnects", "Connections made again after the first", labels=labels
        )
        losses = CounterMetricFamily(
            P + "broker_disconnects", "Connections lost after they were up", labels=labels
        )
        blocks = CounterMetricFamily(
            P + "broker_blocks", "connection.blocked notifications received", labels=labels
        )
        for b in m.get("brokers", []):
            lv = [str(b.get("host_port") or b.get("url", "")), str(b.get("zone", "")),
                  str(b.get("server_id", ""))]  # fmt: skip
            up.add_metric(lv, 1 if b.get("up") else 0)
            blocked.add_metric(lv, 1 if b.get("up") and b.get("blocked") else 0)
            primary.add_metric(lv, 1 if b.get("primary") else 0)
            reconnects.add_metric(lv, max(int(b.get("connects", 0)) - 1, 0))
            losses.add_metric(lv, b.get("disconnects", 0))
            blocks.add_metric(lv, b.get("blocks", 0))
        yield from (up, blocked, primary, reconnects, losses, blocks)


def build_registry(snapshot: Snapshot, recorder: Recorder) -> CollectorRegistry:
    """A registry with the daemon's collector and the manager process's CPU/memory/fds."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(snapshot, recorder))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition of every metric in ``registry``."""
    return generate_latest(registry)
