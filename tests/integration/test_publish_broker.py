"""The publish path against real RabbitMQ: refused publishes, nacks, durability, back-pressure.

The AMQP facade (``amqp.manager.Manager``) runs in the test's event loop with the real protocol.
Resource alarms are only ever raised on private nodes (``rabbit_nodes.RabbitNode``), never on the
shared broker on 127.0.0.1:5672.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from kazoo_amqp.amqp.manager import Manager
from kazoo_amqp.amqp.publisher import Outgoing
from kazoo_amqp.core.broker_url import BrokerSpec
from kazoo_amqp.core.config import Settings, load_config, settings_from_mapping
from kazoo_amqp.core.message import server_id_for
from kazoo_amqp.core.subscription import Subscription, parse_subscription
from kazoo_amqp.daemon import Daemon
from kazoo_amqp.errors import BrokerRefused, PublishNacked
from tests.integration.daemon_harness import AMQP_URL, DaemonProcess, unique
from tests.integration.rabbit_nodes import RabbitNode

pytestmark = [pytest.mark.broker]

needs_nodes = pytest.mark.skipif(
    not RabbitNode.available(), reason="rabbitmq-server is not installed (scripts/services)"
)


def _settings(url: str, **extra: Any) -> Settings:
    data = {
        "node_hostname": unique("pub") + ".example.net",
        "amqp_connection": [url],
        "reconnect_min_ms": 100,
        "reconnect_max_ms": 1000,
        **extra,
    }
    return settings_from_mapping(data, base_dir="/tmp", default_app_version="test")


class Recorder:
    """A Dispatcher that keeps the frames, plus event and failure sinks."""

    def __init__(self) -> None:
        self.seq = 0
        self.frames: list[bytes] = []
        self.events: list[tuple[str, int]] = []
        self.failed: list[tuple[Outgoing, BaseException]] = []
        self.on_done = lambda token, outcome: None

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def pick(self, key: bytes | None = None) -> int:
        return 0

    def dispatch(self, index: int, seq: int, frame: bytes, token: Any) -> None:
        self.frames.append(frame)

    def on_event(self, state: str, spec: BrokerSpec) -> None:
        self.events.append((state, spec.server_id))


def _manager(
    settings: Settings, rec: Recorder, subscriptions: list[Subscription] | None = None
) -> Manager:
    return Manager(
        settings,
        subscriptions=subscriptions or [],
        dispatcher=rec,
        on_event=rec.on_event,
        on_failed=lambda m, e: rec.failed.append((m, e)),
    )


def _sink(url: str, exchange: str, queue: str, **queue_args: Any) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(exchange, "topic", auto_delete=True)
    ch.queue_declare(queue, arguments=queue_args or None)
    ch.queue_bind(queue, exchange, "#")
    conn.close()


def _drain(url: str, queue: str, *, delete: bool = True) -> list[tuple[str, Any]]:
    """(Msg-ID, delivery_mode) of every message in ``queue``, in order."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    got: list[tuple[str, Any]] = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append((json.loads(body)["Msg-ID"], props.delivery_mode))
    if delete:
        ch.queue_delete(queue)
    conn.close()
    return got


async def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_one_refused_publish_among_hundreds_in_flight_fails_only_itself(
    rabbitmq: dict[str, object],
) -> None:
    """500 publishes in flight, one to a missing exchange: only that one fails (404); all the
    others are confirmed and in the queue (re-sent on the reopened channel, at-least-once)."""
    exchange, queue = unique("kzt.ref"), unique("kzt-ref")
    _sink(AMQP_URL, exchange, queue)
    rec = Recorder()
    manager = _manager(_settings(AMQP_URL), rec)
    await manager.start()
    try:
        assert await manager.wait_connected(10)
        results: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}

        def done_for(key: str) -> Any:
            def done(result: dict[str, Any] | None, exc: BaseException | None) -> None:
                assert key not in results and key not in errors
                if exc is None:
                    results[key] = result
                else:
                    errors[key] = exc

            return done

        for i in range(500):
            target = unique("kzt.missing") if i == 250 else exchange
            manager.submit(target, "k", {"Msg-ID": f"ref-{i}"}, done=done_for(f"ref-{i}"))
        await _until(lambda: len(results) + len(errors) == 500, 30)
        assert set(errors) == {"ref-250"}, {k: str(v) for k, v in list(errors.items())[:3]}
        assert isinstance(errors["ref-250"], BrokerRefused)
        assert errors["ref-250"].reply_code == 404
        stored = [msg_id for msg_id, _ in _drain(AMQP_URL, queue)]
        assert set(stored) == set(results)  # every confirmed one arrived (maybe twice)
        assert manager.status()["connects"] == 1 and rec.events == [("open", 1)]
    finally:
        await manager.stop()


async def test_nacks_of_a_reject_publish_queue_reach_the_caller_typed(
    rabbitmq: dict[str, object],
) -> None:
    """A full queue with x-overflow reject-publish nacks: the publish is sent again until its
    deadline (the queue may drain), then the caller gets the PublishNacked."""
    exchange, queue = unique("kzt.nack"), unique("kzt-nack")
    _sink(AMQP_URL, exchange, queue, **{"x-max-length": 2, "x-overflow": "reject-publish"})
    rec = Recorder()
    manager = _manager(_settings(AMQP_URL, publish_buffer_timeout_ms=700), rec)
    await manager.start()
    try:
        assert await manager.wait_connected(10)
        outcomes: list[Any] = []
        for i in range(5):
            try:
                outcomes.append(await manager.publish(exchange, "k", {"Msg-ID": f"n-{i}"}))
            except PublishNacked as exc:
                outcomes.append(exc)
        assert [isinstance(o, dict) for o in outcomes] == [True, True, False, False, False]
        assert "basic.nack" in str(outcomes[2])
        # Without a confirm request the nack reaches on_failed (kazoo:publish-failed).
        msg_id = manager.submit(exchange, "k", {"Msg-ID": "n-silent"})
        await _until(lambda: bool(rec.failed), 10)
        message, error = rec.failed[0]
        assert message.msg_id == msg_id == "n-silent" and isinstance(error, PublishNacked)
        assert len(_drain(AMQP_URL, queue)) == 2
        assert manager.status()["publish_nacked"] >= 2 * 4  # each one was re-sent, then failed
    finally:
        await manager.stop()


async def test_queue_args_declare_a_quorum_queue_and_persistent_publishes_are_delivery_mode_2(
    rabbitmq: dict[str, object],
) -> None:
    exchange, queue = unique("kzt.dur"), unique("kzt-dur")
    sub = parse_subscription(
        {
            "exchange": exchange,
            "type": "topic",
            "queue": queue,
            "routing": "#",
            "durable": 1,
            "auto_delete": 0,
            "queue-args": {"x-queue-type": "quorum"},
        }
    )
    rec = Recorder()
    manager = _manager(_settings(AMQP_URL), rec, [sub])
    await manager.start()
    try:
        assert await manager.wait_connected(10)
        await _until(lambda: manager.links[0].up, 10)
        await manager.stop_consuming()  # keep the messages in the queue for basic_get
        await manager.publish(exchange, "k", {"Msg-ID": "p-1"}, persistent=True)
        await manager.publish(exchange, "k", {"Msg-ID": "p-2"})
    finally:
        await manager.stop()
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-queue-type"):
        ch.queue_declare(queue, durable=True)  # inequivalent: it is a quorum queue
    conn.close()
    got = dict(_drain(AMQP_URL, queue))
    assert got == {"p-1": 2, "p-2": None}  # persistent vs the C module's transient default
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    conn.channel().exchange_delete(exchange)
    conn.close()


@pytest.fixture
def private_node(tmp_path: Path) -> Iterator[RabbitNode]:
    node = RabbitNode(tmp_path / "rabbit", "kztalarm" + unique("")[1:7]).start()
    try:
        yield node
    finally:
        node.stop(hard=True)


@needs_nodes
@pytest.mark.slow
async def test_memory_alarm_holds_publishes_without_reconnects_losses_or_duplicates(
    private_node: RabbitNode,
) -> None:
    """Steady publishing (2,000/s) through a 4 s memory alarm on a private node:
    connection.blocked stops writing, nothing reconnects, no closed event, the reply queue
    stays, every message arrives exactly once and every confirm caller gets its confirm after
    the alarm clears."""
    node = private_node
    _sink(node.url, "kzt.alarm", "kzt-alarm-sink")
    rec = Recorder()
    settings = _settings(node.url, publish_buffer_timeout_ms=60000, publish_confirm_timeout_ms=1000)
    manager = _manager(settings, rec)
    await manager.start()
    try:
        assert await manager.wait_connected(10)
        results: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}
        accepted: list[str] = []
        max_buffered = 0

        def done_for(key: str) -> Any:
            def done(result: dict[str, Any] | None, exc: BaseException | None) -> None:
                if exc is None:
                    results[key] = result
                else:
                    errors[key] = exc

            return done

        async def publish_steadily(seconds: float, rate: int) -> None:
            nonlocal max_buffered
            loop = asyncio.get_running_loop()
            start = loop.time()
            i = 0
            while loop.time() - start < seconds:
                for _ in range(10):
                    msg_id = f"al-{i}"
                    done = done_for(msg_id) if i % 2 == 0 else None
                    manager.submit("kzt.alarm", "k", {"Msg-ID": msg_id}, done=done)
                    accepted.append(msg_id)
                    i += 1
                max_buffered = max(max_buffered, manager.status()["buffered_publishes"])
                await asyncio.sleep(10 / rate)

        publishing = asyncio.create_task(publish_steadily(8.0, 2000))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(node.set_memory_alarm, True)
        await _until(lambda: manager.status()["blocked"] >= 1, 10)
        reply_queue_before = manager.status()["brokers"][0]
        await asyncio.sleep(4.0)
        assert manager.links[0].blocked is not None
        await asyncio.to_thread(node.set_memory_alarm, False)
        await publishing
        await _until(lambda: manager.publisher.backlog() == 0, 30)
        status = manager.status()
        assert max_buffered > 100  # the alarm really held publishes back
        assert status["connects"] == 1 and status["disconnects"] == 0
        assert rec.events == [("open", 1)]  # no closed event reached the routes
        assert errors == {} and rec.failed == []
        assert len(results) == len([m for m in accepted if int(m[3:]) % 2 == 0])
        assert status["brokers"][0]["connects"] == reply_queue_before["connects"] == 1
        stored = [msg_id for msg_id, _ in _drain(node.url, "kzt-alarm-sink")]
        duplicates = [k for k, n in collections.Counter(stored).items() if n > 1]
        assert duplicates == [], duplicates[:5]
        assert set(stored) == set(accepted)
        # The reply queue survived: a query sent to our own Server-ID comes back through it.
        own = server_id_for(settings.node_hostname, 1)
        reply = json.loads(await manager.query("targeted", own, {"Probe": 1}, timeout_ms=3000))
        assert reply["Probe"] == 1
    finally:
        await manager.stop()


PUBLISH_FAILED_ROUTES = """
@router.route("kazoo:publish-failed")
def failed(kz):
    record(kz)
"""


async def test_daemon_runs_kazoo_publish_failed_for_an_accepted_publish_that_fails(
    rabbitmq: dict[str, object], tmp_path: Path
) -> None:
    """A publish accepted without a confirm request and refused by the broker runs the
    kazoo:publish-failed route in a worker, with the message fields plus Error and Reason."""
    files = DaemonProcess(tmp_path, PUBLISH_FAILED_ROUTES, workers=1)  # config + routes only
    settings = load_config(str(files.config_path), default_app_version="test")
    daemon = Daemon(settings, str(files.config_path), shutdown_grace=2.0)
    await daemon.start()
    try:
        assert await daemon.manager.wait_connected(10)
        missing = unique("kzt.gone")
        msg_id = daemon.manager.submit(missing, "some.key", {"Event-Category": "c", "A": 1})
        await _until(lambda: bool(files.events()), 15)
        [event] = files.events()
        assert event["route"] == "kazoo:publish-failed"
        payload = event["payload"]
        assert payload["Msg-ID"] == msg_id and payload["A"] == 1
        assert payload["Error"] == "BrokerRefused" and "404" in payload["Reason"]
        assert payload["Publish-Exchange"] == missing
        assert payload["Publish-Routing-Key"] == "some.key"
        assert daemon.manager.status()["publish_failed"] == 1
    finally:
        await daemon.stop()


@needs_nodes
@pytest.mark.slow
async def test_a_persistent_message_in_a_durable_queue_survives_a_broker_restart(
    private_node: RabbitNode,
) -> None:
    """persistent=True (delivery_mode 2) to a durable queue is still there after the node
    restarts; the transient default (C's) is not."""
    node = private_node
    conn = pika.BlockingConnection(pika.URLParameters(node.url))
    ch = conn.channel()
    ch.exchange_declare("kzt.dur", "topic", durable=True)
    ch.queue_declare("kzt-dur", durable=True)
    ch.queue_bind("kzt-dur", "kzt.dur", "#")
    conn.close()
    rec = Recorder()
    manager = _manager(_settings(node.url), rec)
    await manager.start()
    try:
        assert await manager.wait_connected(10)
        await manager.publish("kzt.dur", "k", {"Msg-ID": "kept"}, persistent=True)
        await manager.publish("kzt.dur", "k", {"Msg-ID": "transient"})
    finally:
        await manager.stop()
    await asyncio.to_thread(node.stop)  # graceful
    await asyncio.to_thread(node.start)
    got = await asyncio.to_thread(_drain, node.url, "kzt-dur")
    assert got == [("kept", 2)]
