"""Two daemons ("two Kamailio nodes") on the 3-node cluster, sharing quorum work queues.

Each daemon lists all three nodes in ``amqp_connection`` (its own order, so they publish through
different nodes), has its own node_hostname, socket and reply queues, and subscribes to the same
quorum queue with ack after the handler.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pika
import pytest

from kazoo_amqp import Client
from tests.cluster.cluster import Cluster
from tests.integration.daemon_harness import DaemonProcess, unique

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WORK_ROUTES = """
import time

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe({{"exchange": "{exchange}", "type": "topic", "queue": "{queue}",
                  "routing": "work.#", "durable": 1, "auto_delete": 0,
                  "exchange-def": {{"type": "topic", "durable": 1, "auto_delete": 0}},
                  "queue-args": {{"x-queue-type": "quorum"}},
                  "no_ack": 0, "wait_for_consumer_ack": 1, "prefetch": {prefetch}}})

@router.route("kazoo:consumer-event-chaos-work")
def work(kz):
    record(kz)
    time.sleep(kz.payload.get("Sleep-MS", 0) / 1000)
"""


class Names:
    def __init__(self) -> None:
        tag = unique("cl")
        self.exchange = f"kzt.{tag}.work"
        self.queue = f"kzt-{tag}-work"
        self.requests = f"kzt-{tag}-req"


@pytest.fixture
def names(cluster: Cluster) -> Iterator[Names]:
    n = Names()
    yield n
    cluster.delete([n.queue, n.requests], [n.exchange])


def _daemon(
    tmp: Path, cluster: Cluster, names: Names, label: str, order: tuple[int, ...], **cfg: Any
) -> DaemonProcess:
    routes = WORK_ROUTES.format(
        exchange=names.exchange, queue=names.queue, prefetch=cfg.pop("prefetch", 20)
    )
    d = tmp / label
    d.mkdir()
    config = {
        "amqp_connection": cluster.urls(order),
        "publish_persistent": True,
        "reconnect_min_ms": 100,
        "reconnect_max_ms": 1000,
        "publish_buffer_timeout_ms": 30000,
        **cfg,
    }
    return DaemonProcess(d, routes, workers=2, config=config, node=f"{label}-{unique('n')}.test")


@pytest.fixture
def two_daemons(
    tmp_path: Path, cluster: Cluster, names: Names
) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    a = _daemon(tmp_path, cluster, names, "sbc1", (1, 2, 3))
    b = _daemon(tmp_path, cluster, names, "sbc2", (2, 3, 1))
    a.start(timeout=60)
    try:
        b.start(timeout=60)
        try:
            yield a, b
        finally:
            _stop(b)
    finally:
        _stop(a)


def _stop(d: DaemonProcess) -> None:
    if d.proc is not None and d.proc.poll() is None:
        assert d.stop(timeout=60) == 0, d.logs()[-3000:]


def _publish_work(cluster: Cluster, names: Names, ids: list[str], sleep_ms: int = 0) -> None:
    conn = cluster.connection(3)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        for msg_id in ids:
            body = {
                "Event-Category": "chaos",
                "Event-Name": "work",
                "Msg-ID": msg_id,
                "Sleep-MS": sleep_ms,
            }
            ch.basic_publish(names.exchange, "work.x", json.dumps(body), props)
    finally:
        conn.close()


def _handled(d: DaemonProcess) -> list[str]:
    return [e["payload"]["Msg-ID"] for e in d.events() if e["route"].endswith("chaos-work")]


def _wait_all(daemons: list[DaemonProcess], ids: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {m for d in daemons for m in _handled(d)}
        if ids <= seen:
            break
        time.sleep(0.1)
    return seen


class Responder:
    """A Kazoo-style service: replies to ``targeted`` with the request's Server-ID as key,
    echoing the request's Msg-ID and Node (so a reply shows which node it was meant for)."""

    def __init__(self, cluster: Cluster, queue: str, node: int = 3) -> None:
        self.conn = cluster.connection(node)
        ch = self.conn.channel()
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(queue, "amq.topic", f"{queue}.#")
        self.key = f"{queue}.req"
        self.count = 0
        self._stop = threading.Event()

        def on_msg(ch: Any, method: Any, props: Any, body: bytes) -> None:
            req = json.loads(body)
            reply = {
                "Msg-ID": req["Msg-ID"],
                "Echo-Node": req["Node"],
                "Echo-Server-ID": req["Server-ID"],
                "Event-Category": "test",
                "Event-Name": "reply",
            }
            ch.basic_publish("targeted", req["Server-ID"], json.dumps(reply))
            self.count += 1

        ch.basic_consume(queue, on_msg, auto_ack=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.1)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        with contextlib.suppress(Exception):
            self.conn.close()


def _kill_daemon(d: DaemonProcess) -> None:
    """SIGKILL the manager and its workers at once (a node's power cut)."""
    workers = [w["pid"] for w in d.status()["workers"]["workers"] if w["pid"]]
    assert d.proc is not None
    for pid in [d.proc.pid, *workers]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    d.proc.wait(10)


# ----------------------------------------------------------------------------------------------


def test_each_daemons_queries_are_answered_to_that_daemon_only(
    cluster: Cluster, names: Names, two_daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    """8 concurrent queries per daemon through one shared responder: every reply carries the
    Msg-ID and Node of the query that waits for it; no daemon sees a foreign reply."""
    responder = Responder(cluster, names.requests)
    try:

        def ask(d: DaemonProcess, i: int) -> tuple[str, dict[str, Any]]:
            msg_id = f"{d.node}-q{i}"
            with Client(d.socket, timeout=15) as c:
                reply = c.query("amq.topic", responder.key, {"Msg-ID": msg_id}, timeout_ms=5000)
            return msg_id, reply

        with ThreadPoolExecutor(16) as pool:
            futures = [(d, pool.submit(ask, d, i)) for i in range(60) for d in two_daemons]
            results = [(d, f.result(60)) for d, f in futures]
        for d, (msg_id, reply) in results:
            assert reply["Msg-ID"] == msg_id
            assert reply["Echo-Node"] == f"kamailio@{d.node}"
        assert responder.count == 120
        for d in two_daemons:
            st = d.status()["manager"]
            assert st["late_replies"] == 0 and st["bad_replies"] == 0, st
            assert st["query_timeouts"] == 0, st
    finally:
        responder.close()


def test_deliveries_of_a_shared_quorum_queue_are_split_between_the_daemons(
    cluster: Cluster, names: Names, two_daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    a, b = two_daemons
    ids = [f"split-{i}" for i in range(400)]
    _publish_work(cluster, names, ids)
    seen = _wait_all([a, b], set(ids), timeout=60)
    assert set(ids) <= seen, f"{len(set(ids) - seen)} deliveries never handled"
    got_a, got_b = _handled(a), _handled(b)
    assert len(got_a) + len(got_b) == len(ids), "no redelivery expected without faults"
    assert min(len(got_a), len(got_b)) >= len(ids) // 5, (len(got_a), len(got_b))


def test_a_killed_daemons_unacked_deliveries_are_taken_over_by_the_other(
    cluster: Cluster, names: Names, two_daemons: tuple[DaemonProcess, DaemonProcess]
) -> None:
    """SIGKILL daemon A (manager and workers) mid-stream: B handles what A had not acked; every
    message is handled at least once; duplicates are only A's handled-but-unacked ones."""
    a, b = two_daemons
    ids = [f"kill-{i}" for i in range(600)]
    _publish_work(cluster, names, ids, sleep_ms=10)
    deadline = time.monotonic() + 60
    while len(_handled(a)) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_daemon(a)
    handled_a = set(_handled(a))
    seen = _wait_all([a, b], set(ids), timeout=90)
    missing = set(ids) - seen
    assert not missing, f"{len(missing)} deliveries lost, e.g. {sorted(missing)[:5]}"
    got_b = _handled(b)
    duplicates = len(handled_a) + len(got_b) - len(ids)
    assert duplicates >= 0
    # a duplicate is a message A ran whose ack never reached the broker: at most its prefetch
    # window on each of its three consume connections
    assert duplicates <= 3 * 20, duplicates
    assert b.status()["manager"]["deliveries"] >= len(ids) - len(handled_a)


def test_a_stopped_cluster_node_fails_the_daemon_over_and_loses_no_confirmed_publish(
    cluster: Cluster, names: Names, tmp_path: Path
) -> None:
    """Stop the node the daemon publishes through while it publishes persistent messages to a
    quorum queue: it goes on through another node; every confirmed Msg-ID is in the queue."""
    sink = names.queue + "-sink"
    cluster.declare_quorum(names.exchange + ".sink", sink, node=2)
    d = _daemon(tmp_path, cluster, names, "sbc1", (1, 2, 3)).start(timeout=60)
    confirmed: list[tuple[str, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def publisher() -> None:
        with Client(d.socket, timeout=60) as c:
            for i in range(20000):
                if stop.is_set():
                    return
                msg_id = f"fo-{i}"
                try:
                    r = c.publish(
                        names.exchange + ".sink", "data.x", {"Msg-ID": msg_id}, confirm=True
                    )
                    confirmed.append((msg_id, r.get("server_id", 0)))
                except Exception as exc:
                    failures.append(f"{msg_id}: {type(exc).__name__}: {exc}")

    t = threading.Thread(target=publisher)
    try:
        t.start()
        deadline = time.monotonic() + 30
        while len(confirmed) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.stop_node(1)
        at_stop = len(confirmed)
        deadline = time.monotonic() + 30
        while len(confirmed) < at_stop + 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(60)
        assert not failures, failures[:5]
        after = {sid for _, sid in confirmed[at_stop + 50 :]}
        assert after and 1 not in after, f"still publishing through node 1: {after}"
        brokers = {x["server_id"]: x for x in d.status()["manager"]["brokers"]}
        assert not brokers[1]["up"] and brokers[2]["up"], brokers
        stored = {m["Msg-ID"] for m in cluster.drain(sink)}
        missing = {m for m, _ in confirmed} - stored
        assert not missing, f"{len(missing)} confirmed publishes lost, e.g. {sorted(missing)[:5]}"
    finally:
        stop.set()
        t.join(60)
        _stop(d)
        cluster.start_node(1)
        cluster.delete([sink], [names.exchange + ".sink"])
