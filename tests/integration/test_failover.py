"""Failover across several brokers, reconnects, and the publish buffer, with real RabbitMQ nodes.

Extra nodes are started by the tests themselves (own node name, port and data dir) and stopped by
PID, as a broker crash would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from kazoo_amqp import Client, NotConnected
from tests.integration.daemon_harness import AMQP_URL, DaemonProcess, unique
from tests.integration.rabbit_nodes import RabbitNode, free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]

needs_nodes = pytest.mark.skipif(
    not RabbitNode.available(),
    reason="rabbitmq-server is not installed: run scripts/services (installs it from Debian)",
)

RECORD_ROUTES = """
@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe({"exchange": "kzt.fosub", "type": "topic", "queue": "kzt-fo-sub",
                  "routing": "sub.#"})

@router.route("kazoo:consumer-event")
def anything(kz):
    record(kz)
"""


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[RabbitNode, RabbitNode]]:
    a = RabbitNode(tmp_path / "rabbit", "kzta" + unique("")[1:7])
    b = RabbitNode(tmp_path / "rabbit", "kztb" + unique("")[1:7])
    errors: list[BaseException] = []

    def start(node: RabbitNode) -> None:
        try:
            node.start()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield a, b
    finally:
        a.stop(hard=True)
        b.stop(hard=True)


def _declare_sink(url: str, exchange: str, queue: str, *, quorum: bool = True) -> None:
    """A durable sink queue; quorum queues keep (transient) messages across a node crash."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(exchange, "topic", durable=True)
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"} if quorum else None)
    ch.queue_bind(queue, exchange, "#")
    conn.close()


def _drain_ids(url: str, queue: str, timeout: float = 30.0) -> set[str]:
    """Every Msg-ID in ``queue``; retries while a restarted node recovers the queue."""
    deadline = time.monotonic() + timeout
    ids: set[str] = set()
    while True:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url))
            ch = conn.channel()
            expected = ch.queue_declare(queue, passive=True).method.message_count
            while True:
                method, _, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                ids.add(json.loads(body)["Msg-ID"])
            conn.close()
            if expected > 0 or time.monotonic() > deadline:
                return ids
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def test_first_unreachable_broker_means_the_next_is_used(tmp_path: Path) -> None:
    """amqp_connection is tried in order: a dead first URL fails over to the second."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}"
    config = {"amqp_connection": [dead, AMQP_URL], "reconnect_max_ms": 500}
    with DaemonProcess(tmp_path, RECORD_ROUTES, workers=1, config=config) as d:
        with d.client() as c:
            result = c.publish("amq.topic", unique("kzt"), {"a": 1}, confirm=True)
        assert result["server_id"] == 2
        brokers = {b["server_id"]: b for b in d.status()["manager"]["brokers"]}
        assert not brokers[1]["up"] and brokers[2]["up"]
        assert "cannot reach" in brokers[1]["last_error"] or brokers[1]["last_error"]


def test_publish_without_any_broker_fails_clearly_after_the_buffer_deadline(
    tmp_path: Path,
) -> None:
    """With no broker reachable a confirmed publish waits publish_buffer_timeout_ms, then
    NotConnected; an accepted one returns at once and its failure is counted by the daemon."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}"
    config = {"amqp_connection": [dead], "publish_buffer_timeout_ms": 400}
    d = DaemonProcess(tmp_path, RECORD_ROUTES, workers=1, config=config).start(wait_broker=False)
    try:
        with d.client() as c:
            started = time.monotonic()
            with pytest.raises(NotConnected, match="publish_buffer_timeout_ms"):
                c.publish("amq.topic", "x", {"a": 1}, confirm=True)
            assert 0.35 < time.monotonic() - started < 2.0
            started = time.monotonic()
            assert c.publish("amq.topic", "x", {"a": 2})["msg_id"]
            assert time.monotonic() - started < 0.3
            deadline = time.monotonic() + 5
            while d.status()["manager"]["publish_failed_after_accept"] < 1:
                assert time.monotonic() < deadline, d.logs()[-2000:]
                time.sleep(0.05)
        assert d.status()["manager"]["buffer_rejected"] == 2
    finally:
        assert d.stop() == 0


@needs_nodes
def test_publish_accepted_while_the_broker_is_down_is_sent_when_it_returns(
    tmp_path: Path,
) -> None:
    """A publish made during an outage waits in the buffer and is delivered after reconnect."""
    node = RabbitNode(tmp_path / "rabbit", "kztc" + unique("")[1:7]).start()
    try:
        _declare_sink(node.url, "kzt.buf", "kzt-buf-sink", quorum=False)
        config = {
            "amqp_connection": [node.url],
            "publish_buffer_timeout_ms": 60000,
            "reconnect_min_ms": 100,
            "reconnect_max_ms": 500,
        }
        with DaemonProcess(tmp_path, RECORD_ROUTES, workers=1, config=config) as d:
            node.stop(hard=True)
            result: dict[str, object] = {}

            def publish() -> None:
                with Client(d.socket, timeout=90) as c:
                    result.update(
                        c.publish("kzt.buf", "k", {"Msg-ID": "buffered-1"}, confirm=True)
                    )

            t = threading.Thread(target=publish)
            t.start()
            time.sleep(1.0)
            assert t.is_alive()  # waiting in the buffer, not failed
            assert d.status()["manager"]["buffered_publishes"] == 1
            node.start()
            t.join(60)
            assert result.get("msg_id") == "buffered-1", d.logs()[-3000:]
            assert _drain_ids(node.url, "kzt-buf-sink") == {"buffered-1"}
    finally:
        node.stop(hard=True)


@needs_nodes
def test_broker_stopped_mid_run_loses_no_confirmed_publish_and_subscriptions_come_back(
    tmp_path: Path, two_nodes: tuple[RabbitNode, RabbitNode]
) -> None:
    """Stop broker A while publishing: every confirmed publish is on A or B; A is re-subscribed.

    A is stopped by PID with SIGTERM (a quorum queue keeps what it confirmed; after a SIGKILL a
    single-node quorum queue may stay unavailable, which would test RabbitMQ, not us).
    """
    a, b = two_nodes
    for node in (a, b):
        _declare_sink(node.url, "kzt.fo", "kzt-fo-sink")
    config = {
        "amqp_connection": [a.url, b.url],
        "reconnect_min_ms": 100,
        "reconnect_max_ms": 1000,
        "publish_buffer_timeout_ms": 20000,
    }
    with DaemonProcess(tmp_path, RECORD_ROUTES, workers=2, config=config) as d:
        confirmed: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def publisher() -> None:
            with Client(d.socket, timeout=60) as c:
                i = 0
                while not stop.is_set() and i < 3000:
                    msg_id = f"fo-{i}"
                    try:
                        c.publish("kzt.fo", "data.x", {"Msg-ID": msg_id})
                        confirmed.append(msg_id)
                    except Exception as exc:
                        failures.append(f"{msg_id}: {exc}")
                    i += 1

        t = threading.Thread(target=publisher)
        t.start()
        while len(confirmed) < 300 and t.is_alive():
            time.sleep(0.01)
        a.stop()  # stop the preferred broker mid-run
        time.sleep(1.5)
        stop.set()
        t.join(60)
        assert not failures, failures[:5]
        a.start()  # same node name and data dir: its quorum queue comes back
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            brokers = {x["server_id"]: x for x in d.status()["manager"]["brokers"]}
            if brokers[1]["up"] and brokers[1]["connects"] >= 2:
                break
            time.sleep(0.2)
        assert brokers[1]["up"], d.logs()[-3000:]
        stored = _drain_ids(a.url, "kzt-fo-sink") | _drain_ids(b.url, "kzt-fo-sink")
        missing = set(confirmed) - stored
        assert not missing, f"{len(missing)} confirmed publishes lost, e.g. {sorted(missing)[:5]}"
        # The subscription on A was declared again after the reconnect and is consumed.
        conn = pika.BlockingConnection(pika.URLParameters(a.url))
        conn.channel().basic_publish(
            "kzt.fosub",
            "sub.after",
            json.dumps({"Event-Category": "t", "Event-Name": "after", "Msg-ID": "after-restart"}),
        )
        conn.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            e["payload"].get("Msg-ID") == "after-restart" for e in d.events()
        ):
            time.sleep(0.1)
        assert any(e["payload"].get("Msg-ID") == "after-restart" for e in d.events())
        events = [
            (e["payload"].get("Event-Name"), e["payload"].get("host"))
            for e in d.events()
            if e["payload"].get("Event-Category") == "connection"
        ]
        assert ("closed", "127.0.0.1") in events and events.count(("open", "127.0.0.1")) >= 3
