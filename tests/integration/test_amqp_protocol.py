"""Connection and Channel against the real RabbitMQ (and a tiny fake broker for timing cases)."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pamqp import commands as spec
from pamqp import frame as pframe

from kazoo_amqp.amqp.channel import Channel, Delivery, Returned
from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.errors import (
    BadRoutingKey,
    BrokerRefused,
    ChannelClosedRetry,
    NotConnected,
    PublishFailed,
    PublishNacked,
    UsageError,
)

Params = dict[str, Any]


def uid(prefix: str) -> str:
    return f"test-amqp-{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def conn(rabbitmq: Params) -> AsyncIterator[Connection]:
    c = await Connection.connect(**rabbitmq, name=uid("conn"))
    yield c
    await c.close()


@pytest.fixture
async def cleanup(rabbitmq: Params) -> AsyncIterator[Callable[[str, str], None]]:
    """Register queues/exchanges to delete after the test, on a connection of its own."""
    names: list[tuple[str, str]] = []
    yield lambda kind, name: names.append((kind, name))
    c = await Connection.connect(**rabbitmq, name=uid("cleanup"))
    try:
        for kind, name in names:
            ch = await c.channel()
            if kind == "queue":
                await ch.queue_delete(name)
            else:
                await ch.exchange_delete(name)
            await ch.close()
    finally:
        await c.close()


async def temp_queue(ch: Channel, cleanup: Callable[[str, str], None], **kw: Any) -> str:
    name = uid("q")
    await ch.queue_declare(name, **kw)
    cleanup("queue", name)
    return name


class Collector:
    """A consumer callback that records deliveries and wakes a waiter at a count."""

    def __init__(self, ack: bool = False) -> None:
        self.items: list[Delivery] = []
        self.ack = ack
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self, d: Delivery) -> None:
        self.items.append(d)
        if self.ack:
            d.channel.ack(d.delivery_tag)
        for n, fut in self._waiters:
            if len(self.items) >= n and not fut.done():
                fut.set_result(None)

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Delivery]:
        if len(self.items) < n:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append((n, fut))
            await asyncio.wait_for(fut, timeout)
        return self.items


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def connection_pid(name: str) -> str:
    """The broker's pid of our connection, found by its connection_name client property."""
    out = rabbitmqctl("list_connections", "pid", "client_properties", "--silent")
    for line in out.splitlines():
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in props:
            return pid
    raise AssertionError(f"connection {name!r} not listed by rabbitmqctl:\n{out}")


# --------------------------------------------------------------------------- connect


async def test_connect_refused_names_host_and_port() -> None:
    with pytest.raises(NotConnected) as info:
        await Connection.connect(host="127.0.0.1", port=5673, user="guest", password="guest")
    assert str(info.value) == "cannot reach RabbitMQ at 127.0.0.1:5673: connection refused"


@pytest.mark.broker
async def test_wrong_password_is_a_clear_login_refusal(rabbitmq: Params) -> None:
    params = {**rabbitmq, "password": "not-the-password"}
    with pytest.raises(BrokerRefused) as info:
        await Connection.connect(**params)
    assert info.value.reply_code == 403
    assert str(info.value) == (
        "RabbitMQ at 127.0.0.1:5672 refused login for user 'guest' on vhost '/': "
        "check the user/password in amqp_connection"
    )


@pytest.mark.broker
async def test_unknown_vhost_is_refused(rabbitmq: Params) -> None:
    vhost = uid("vhost")
    with pytest.raises(BrokerRefused) as info:
        await Connection.connect(**rabbitmq, vhost=vhost)
    assert info.value.reply_code == 530
    assert f"refused vhost '{vhost}'" in str(info.value)


@pytest.mark.broker
async def test_limits_are_negotiated_down_to_the_broker(rabbitmq: Params) -> None:
    c = await Connection.connect(
        **rabbitmq, channel_max=60000, frame_max=10_000_000, heartbeat=3600
    )
    try:
        # the broker here runs with channel_max 2047, frame_max 131072, heartbeat 60
        assert (c.channel_max, c.frame_max, c.heartbeat) == (2047, 131072, 60)
    finally:
        await c.close()
    c = await Connection.connect(**rabbitmq, channel_max=16, frame_max=8192, heartbeat=0)
    try:
        assert (c.channel_max, c.frame_max, c.heartbeat) == (16, 8192, 0)
    finally:
        await c.close()


@pytest.mark.broker
async def test_heartbeats_keep_an_idle_connection_alive(rabbitmq: Params) -> None:
    name = uid("hb")
    c = await Connection.connect(**rabbitmq, heartbeat=1, name=name)
    try:
        assert c.heartbeat == 1
        timeout = rabbitmqctl("list_connections", "client_properties", "timeout", "--silent")
        assert any(name in line and line.rstrip().endswith("\t1") for line in timeout.splitlines())
        await asyncio.sleep(4.5)  # the broker drops a client that misses 2 heartbeats
        assert c.is_open
        ch = await c.channel()
        await ch.queue_declare("", exclusive=True)
    finally:
        await c.close()


# --------------------------------------------------------------------------- round trips


@pytest.mark.broker
async def test_declare_bind_consume_round_trip(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    exchange = uid("x")
    await ch.exchange_declare(exchange, "topic", auto_delete=False)
    cleanup("exchange", exchange)
    await ch.exchange_declare(exchange, "topic", passive=True)
    queue = await temp_queue(ch, cleanup, arguments={"x-message-ttl": 60000, "x-expires": 600000})
    await ch.queue_bind(queue, exchange, "call.*.#")
    name, messages, consumers = await ch.queue_declare(queue, passive=True)
    assert (name, messages, consumers) == (queue, 0, 0)

    got = Collector()
    tag = await ch.basic_consume(queue, got, no_ack=True, consumer_tag="ctag-1")
    assert tag == "ctag-1"
    ch.publish(exchange, "call.CHANNEL_CREATE.abc", b'{"Event-Name":"CHANNEL_CREATE"}')
    ch.publish(exchange, "other.key", b'{"dropped":true}')
    ch.publish(exchange, "call.CHANNEL_DESTROY.abc", b'{"Event-Name":"CHANNEL_DESTROY"}')
    items = await got.wait_for(2)
    await asyncio.sleep(0.1)
    assert [d.routing_key for d in items] == ["call.CHANNEL_CREATE.abc", "call.CHANNEL_DESTROY.abc"]
    first = items[0]
    assert first.channel is ch
    assert (first.consumer_tag, first.delivery_tag, first.redelivered) == ("ctag-1", 1, False)
    assert first.exchange == exchange
    assert first.body == b'{"Event-Name":"CHANNEL_CREATE"}'
    assert (first.headers, first.message_id, first.correlation_id) == (None, None, None)

    await ch.basic_cancel(tag)
    await ch.queue_unbind(queue, exchange, "call.*.#")
    ch.publish(exchange, "call.X.y", b"{}")
    fut = (await conn.channel(confirms=True)).publish("", queue, b"{}")
    assert fut is not None
    await fut
    assert await ch.queue_purge(queue) == 1


@pytest.mark.broker
async def test_exchange_to_exchange_binding(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    source, dest = uid("src"), uid("dst")
    for name in (source, dest):
        await ch.exchange_declare(name, "direct")
        cleanup("exchange", name)
    await ch.exchange_bind(dest, source, "rk")
    queue = await temp_queue(ch, cleanup)
    await ch.queue_bind(queue, dest, "rk")
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=True)
    ch.publish(source, "rk", b'{"via":"e2e"}')
    assert (await got.wait_for(1))[0].body == b'{"via":"e2e"}'


@pytest.mark.broker
async def test_headers_and_ids_round_trip(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=True)
    ch.publish("", queue, b"{}", headers=[("k1", "v1"), ("name", "ünïcode")], message_id="m-1")
    ch.publish(
        "",
        queue,
        b"{}",
        headers={"text": "x", "n": 42, "flag": True, "nested": {"a": "b"}},
        correlation_id="corr-9",
        reply_to="reply-q",
        persistent=True,
    )
    ch.publish("", queue, b"{}", message_id="only-id")
    first, second, third = await got.wait_for(3)
    assert first.headers == {"k1": "v1", "name": "ünïcode"}
    assert (first.message_id, first.correlation_id) == ("m-1", None)
    assert second.headers == {"text": "x", "n": 42, "flag": True, "nested": {"a": "b"}}
    assert (second.message_id, second.correlation_id) == (None, "corr-9")
    assert (third.headers, third.message_id) == (None, "only-id")


@pytest.mark.broker
async def test_all_properties_from_another_client_are_skipped_correctly(
    rabbitmq: Params, conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    pika = pytest.importorskip("pika")
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=True)

    def publish_with_pika() -> None:
        params = pika.ConnectionParameters(
            host=rabbitmq["host"],
            port=rabbitmq["port"],
            credentials=pika.PlainCredentials(rabbitmq["user"], rabbitmq["password"]),
        )
        with pika.BlockingConnection(params) as pc:
            props = pika.BasicProperties(
                content_type="text/plain",
                content_encoding="utf-8",
                headers={"h": "v", "n": 1},
                delivery_mode=2,
                priority=5,
                correlation_id="corr",
                reply_to="reply",
                expiration="60000",
                message_id="mid",
                timestamp=1700000000,
                type="kind",
                user_id="guest",
                app_id="app",
            )
            pc.channel().basic_publish("", queue, b"full", props)
            pc.channel().basic_publish("", queue, b"bare")

    await asyncio.to_thread(publish_with_pika)
    full, bare = await got.wait_for(2)
    assert (full.body, full.headers, full.message_id, full.correlation_id) == (
        b"full",
        {"h": "v", "n": 1},
        "mid",
        "corr",
    )
    assert (bare.body, bare.headers, bare.message_id, bare.correlation_id) == (
        b"bare",
        None,
        None,
        None,
    )


@pytest.mark.broker
@pytest.mark.parametrize("frame_max", [131072, 4096])
async def test_large_bodies_round_trip_intact(
    rabbitmq: Params, cleanup: Callable[[str, str], None], frame_max: int
) -> None:
    c = await Connection.connect(**rabbitmq, frame_max=frame_max)
    try:
        ch = await c.channel(confirms=True)
        queue = await temp_queue(ch, cleanup)
        chunk = c.frame_max - 8
        sizes = [5 * 1024 * 1024, 300 * 1024, chunk - 1, chunk, chunk + 1, 2 * chunk, 0, 1]
        bodies = [os.urandom(n) for n in sizes]
        got = Collector()
        await ch.basic_consume(queue, got, no_ack=True)
        futures = [ch.publish("", queue, b, message_id=str(i)) for i, b in enumerate(bodies)]
        await asyncio.gather(*futures)  # type: ignore[arg-type]
        items = await got.wait_for(len(bodies), timeout=30)
        assert [len(d.body) for d in items] == sizes
        assert all(d.body == b for d, b in zip(items, bodies, strict=True))
        assert [d.message_id for d in items] == [str(i) for i in range(len(bodies))]
    finally:
        await c.close()


@pytest.mark.broker
async def test_publish_with_confirms_is_acked(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel(confirms=True)
    queue = await temp_queue(ch, cleanup)
    fut = ch.publish("", queue, b'{"a":1}')
    assert isinstance(fut, asyncio.Future)
    assert await fut is None
    plain = await conn.channel()
    assert plain.publish("", queue, b'{"a":2}') is None
    await asyncio.sleep(0.1)
    assert (await ch.queue_declare(queue, passive=True))[1] == 2


@pytest.mark.broker
async def test_10k_confirmed_then_consumed_in_order(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel(confirms=True)
    queue = await temp_queue(ch, cleanup)
    n = 10_000

    async def fill() -> None:
        futures = [ch.publish("", queue, b'{"n":%d}' % i) for i in range(n)]
        await asyncio.gather(*futures)  # type: ignore[arg-type]
        assert ch._pending == {} and ch._low == ch._next_tag

    await fill()
    got = Collector()
    tag = await ch.basic_consume(queue, got, no_ack=True)
    items = await got.wait_for(n)
    assert [d.body for d in items] == [b'{"n":%d}' % i for i in range(n)]
    await ch.basic_cancel(tag)

    await fill()
    acker = await conn.channel()
    await acker.basic_qos(500)
    got = Collector(ack=True)
    await acker.basic_consume(queue, got, no_ack=False)
    items = await got.wait_for(n)
    assert [d.body for d in items] == [b'{"n":%d}' % i for i in range(n)]
    assert [d.delivery_tag for d in items] == list(range(1, n + 1))
    await asyncio.sleep(0.2)
    assert (await ch.queue_declare(queue, passive=True))[1:] == (0, 1)  # all acked


@pytest.mark.broker
async def test_qos_prefetch_limits_unacked_deliveries(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    for i in range(20):
        ch.publish("", queue, b"%d" % i)
    await ch.basic_qos(5)
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=False)
    await got.wait_for(5)
    await asyncio.sleep(0.3)
    assert len(got.items) == 5
    ch.ack(got.items[2].delivery_tag, multiple=True)  # acks 1..3
    await got.wait_for(8)
    await asyncio.sleep(0.3)
    assert len(got.items) == 8
    ch.nack(got.items[3].delivery_tag, requeue=False)
    ch.reject(got.items[4].delivery_tag, requeue=False)
    await got.wait_for(10)
    await asyncio.sleep(0.3)
    assert len(got.items) == 10


@pytest.mark.broker
async def test_nack_requeue_redelivers(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    ch.publish("", queue, b"again")
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=False)
    (first,) = await got.wait_for(1)
    ch.nack(first.delivery_tag, requeue=True)
    second = (await got.wait_for(2))[1]
    assert (second.body, second.redelivered) == (b"again", True)
    ch.ack(second.delivery_tag)


@pytest.mark.broker
async def test_coalesced_acks_never_ack_an_unacked_delivery(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    for i in range(12):
        ch.publish("", queue, b"%d" % i)
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=False)
    await got.wait_for(12)
    written: list[bytes] = []
    real_write = conn._transport.write  # type: ignore[union-attr]

    def spy(data: bytes) -> None:
        written.append(bytes(data))
        real_write(data)

    conn._transport.write = spy  # type: ignore[union-attr, method-assign]
    for tag in (2, 3, 4, 5):  # tag 1 stays unacked: no multiple ack may cover it
        ch.ack(tag)
    await asyncio.sleep(0.05)
    for tag in (1, 7, 6, 8, 9, 10):  # now 1..10 are settled: 1 goes out as a run with 6..10
        ch.ack(tag)
    await asyncio.sleep(0.05)
    ch.reject(12, requeue=True)
    await asyncio.sleep(0.2)
    conn._transport.write = real_write  # type: ignore[union-attr, method-assign]

    acks = []
    for chunk in written:
        for i in range(0, len(chunk), 21):
            frame = chunk[i : i + 21]
            cm, tag, bits = struct.unpack(">IQB", frame[7:20])
            acks.append((cm & 0xFFFF, tag, bits))
    assert acks == [
        (80, 2, 0), (80, 3, 0), (80, 4, 0), (80, 5, 0),  # 1 missing: one by one
        (80, 1, 0), (80, 7, 0), (80, 10, 1),  # 1 settles 1..5; 6 settles 6..7; 8..10 a run
        (90, 12, 1),
    ]  # fmt: skip
    assert ch.is_open
    await ch.close()  # 11 (never acked) and 12 (requeued) are ready again
    probe = await conn.channel()
    assert (await probe.queue_declare(queue, passive=True))[1] == 2


@pytest.mark.broker
async def test_acks_are_not_coalesced_next_to_a_no_ack_consumer(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    acked_q, auto_q = await temp_queue(ch, cleanup), await temp_queue(ch, cleanup)
    manual = Collector(ack=True)
    auto = Collector()
    await ch.basic_consume(acked_q, manual, no_ack=False)
    await ch.basic_consume(auto_q, auto, no_ack=True)
    for i in range(300):
        ch.publish("", acked_q if i % 3 else auto_q, b"%d" % i)
    await manual.wait_for(200)
    await auto.wait_for(100)
    await asyncio.sleep(0.2)
    assert ch.is_open
    probe = await conn.channel()
    assert (await probe.queue_declare(acked_q, passive=True))[1] == 0


# --------------------------------------------------------------------------- failures


@pytest.mark.broker
async def test_mandatory_unroutable_publish_fails_with_no_route(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    returned: list[Returned] = []
    ch = await conn.channel(confirms=True, on_return=returned.append)
    queue = await temp_queue(ch, cleanup)
    missing = uid("nobody")
    futures = [
        ch.publish("", queue, b"ok-1", mandatory=True),
        ch.publish("", missing, b"lost", mandatory=True, message_id="m-lost"),
        ch.publish("", queue, b"ok-2", mandatory=True),
        ch.publish("", missing, b"not-mandatory"),
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)  # type: ignore[arg-type]
    assert results[0] is None and results[2] is None and results[3] is None
    err = results[1]
    assert isinstance(err, PublishFailed)
    assert str(err) == (
        f"no queue bound to exchange '' with routing key '{missing}' (returned 312 NO_ROUTE)"
    )
    assert [(r.reply_code, r.routing_key, r.body, r.message_id) for r in returned] == [
        (312, missing, b"lost", "m-lost")
    ]
    assert ch.is_open and ch._pending == {} and ch._mandatory == {}


@pytest.mark.broker
async def test_publish_to_missing_exchange_closes_only_the_channel(conn: Connection) -> None:
    ch = await conn.channel(confirms=True)
    exchange = uid("missing")
    fut = ch.publish(exchange, "rk", b"{}")
    assert fut is not None
    with pytest.raises(BrokerRefused) as info:
        await fut
    assert info.value.reply_code == 404
    assert f"no exchange '{exchange}'" in str(info.value)
    reason = await ch.closed
    assert isinstance(reason, BrokerRefused) and reason.reply_code == 404
    assert not ch.is_open
    with pytest.raises(NotConnected, match=r"channel \d+ is closed"):
        ch.publish("", "x", b"{}")
    ch.ack(1)  # a no-op on a closed channel
    assert conn.is_open
    again = await conn.channel(confirms=True)
    name, _, _ = await again.queue_declare("", exclusive=True)
    fut = again.publish("", name, b"{}")
    assert fut is not None
    await fut


@pytest.mark.broker
async def test_failed_rpc_raises_broker_refused_and_fails_pending_confirms(
    conn: Connection,
) -> None:
    ch = await conn.channel(confirms=True)
    with pytest.raises(BrokerRefused) as info:
        await ch.queue_declare(uid("absent"), passive=True)
    assert info.value.reply_code == 404
    assert isinstance(await ch.closed, BrokerRefused)
    with pytest.raises(NotConnected):
        await ch.queue_declare("", exclusive=True)


@pytest.mark.broker
async def test_bad_arguments_are_usage_errors(conn: Connection) -> None:
    ch = await conn.channel()
    with pytest.raises(BadRoutingKey):
        ch.publish("", "k" * 256, b"{}")
    with pytest.raises(UsageError, match=r"exchange\.declare"):
        await ch.exchange_declare("x" * 300)  # over the AMQP short-string limit
    await ch.exchange_declare("kazoo<names>@are*fine", auto_delete=True)  # any UTF-8 is allowed
    await ch.exchange_delete("kazoo<names>@are*fine")
    assert ch.is_open
    await ch.queue_declare("", exclusive=True)


@pytest.mark.broker
async def test_consumer_exception_is_logged_and_consuming_goes_on(
    conn: Connection, cleanup: Callable[[str, str], None], caplog: pytest.LogCaptureFixture
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    got = Collector()

    def callback(d: Delivery) -> None:
        got(d)
        if d.body == b"boom":
            raise RuntimeError("handler bug")

    await ch.basic_consume(queue, callback, no_ack=True)
    with caplog.at_level(logging.ERROR, logger="kazoo_amqp.amqp"):
        for body in (b"1", b"boom", b"3"):
            ch.publish("", queue, body)
        items = await got.wait_for(3)
    assert [d.body for d in items] == [b"1", b"boom", b"3"]
    assert "handler bug" in caplog.text
    assert conn.is_open and ch.is_open


@pytest.mark.broker
async def test_broker_cancel_calls_on_cancel(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    cancelled: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    ch.on_cancel = cancelled.set_result
    tag = await ch.basic_consume(queue, Collector(), no_ack=True)
    other = await conn.channel()
    await other.queue_delete(queue)
    assert await asyncio.wait_for(cancelled, 5) == tag
    await ch.queue_declare("", exclusive=True)  # the channel is still usable


@pytest.mark.broker
async def test_pause_reading_holds_deliveries_until_resumed(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    got = Collector()

    def pause_at_10(d: Delivery) -> None:
        got(d)
        if len(got.items) == 10:
            conn.pause_reading()

    await ch.basic_consume(queue, pause_at_10, no_ack=True)
    for i in range(200):
        ch.publish("", queue, b"%d" % i)
    await got.wait_for(10)
    await asyncio.sleep(0.3)
    assert len(got.items) == 10  # nothing dispatched while paused, not even bytes already read
    conn.resume_reading()
    items = await got.wait_for(200)
    assert [d.body for d in items] == [b"%d" % i for i in range(200)]


@pytest.mark.broker
async def test_broker_force_close_fails_every_pending_confirm(
    rabbitmq: Params, cleanup: Callable[[str, str], None]
) -> None:
    name = uid("forced")
    c = await Connection.connect(**rabbitmq, name=name)
    ch = await c.channel(confirms=True)
    queue = await temp_queue(ch, cleanup)
    pid = connection_pid(name)
    outcomes: dict[str, int] = {"published": 0, "acked": 0, "NotConnected": 0, "other": 0}

    def count(fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        key = "acked" if exc is None else type(exc).__name__
        outcomes[key if key in outcomes else "other"] += 1

    async def flood() -> None:
        # keep up to 50k confirms outstanding until the close (bounded by time)
        deadline = asyncio.get_running_loop().time() + 30
        while not c.closed.done() and asyncio.get_running_loop().time() < deadline:
            if len(ch._pending) < 50_000:
                for _ in range(2000):
                    fut = ch.publish("", queue, b"{}")
                    assert fut is not None
                    fut.add_done_callback(count)
                    outcomes["published"] += 1
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.01)

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.2)
    await asyncio.to_thread(rabbitmqctl, "close_connection", pid, "test says goodbye")
    reason = await asyncio.wait_for(asyncio.shield(c.closed), 15)
    await flooding
    await asyncio.sleep(0)  # let the done callbacks run
    assert isinstance(reason, NotConnected)
    assert "CONNECTION_FORCED" in str(reason) and "test says goodbye" in str(reason)
    assert not c.is_open
    assert isinstance(await ch.closed, NotConnected)
    assert outcomes["other"] == 0
    assert outcomes["acked"] + outcomes["NotConnected"] == outcomes["published"]
    assert outcomes["NotConnected"] > 0, "expected confirms pending at the time of the close"
    with pytest.raises(NotConnected):
        await c.channel()


@pytest.mark.broker
async def test_abort_and_close_settle_everything(rabbitmq: Params) -> None:
    c = await Connection.connect(**rabbitmq)
    ch = await c.channel(confirms=True)
    fut = ch.publish("", uid("none"), b"{}")  # queued, never written
    assert fut is not None
    c.abort()
    with pytest.raises(NotConnected, match="aborted by the client"):
        await fut
    assert await c.closed is None
    assert await ch.closed is None
    await c.close()  # closing twice is harmless

    c = await Connection.connect(**rabbitmq)
    ch = await c.channel()
    await ch.close()
    assert await ch.closed is None and not ch.is_open
    await c.close()
    assert await c.closed is None and not c.is_open


@pytest.mark.broker
async def test_rpcs_on_one_channel_are_serialised(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel()
    names = [uid(f"q{i}") for i in range(20)]
    for name in names:
        cleanup("queue", name)
    results = await asyncio.gather(*(ch.queue_declare(n) for n in names))
    assert [r[0] for r in results] == names


# --------------------------------------------------------------------------- fake broker


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, Any]:
    head = await reader.readexactly(7)
    size = struct.unpack(">I", head[3:7])[0]
    rest = await reader.readexactly(size + 1)
    _, channel, value = pframe.unmarshal(head + rest)
    return channel, value


class FakeBroker:
    """Answers the handshake with the given Tune, then goes silent (but keeps reading)."""

    def __init__(self, tune: spec.Connection.Tune, *, handshake: bool = True) -> None:
        self.tune = tune
        self.handshake = handshake
        self.tune_ok: spec.Connection.TuneOk | None = None
        self.heartbeats = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[Any]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.add(writer)
        try:
            assert await reader.readexactly(8) == b"AMQP\x00\x00\x09\x01"
            if not self.handshake:
                await reader.read()
                return
            writer.write(pframe.marshal(spec.Connection.Start(), 0))
            _, start_ok = await _read_frame(reader)
            assert isinstance(start_ok, spec.Connection.StartOk)
            writer.write(pframe.marshal(self.tune, 0))
            _, self.tune_ok = await _read_frame(reader)
            _, open_ = await _read_frame(reader)
            assert isinstance(open_, spec.Connection.Open)
            writer.write(pframe.marshal(spec.Connection.OpenOk(), 0))
            while True:
                _, value = await _read_frame(reader)
                if type(value).__name__ == "Heartbeat":
                    self.heartbeats += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_zero_limits_from_the_broker_are_never_echoed() -> None:
    # operator issue 2.2: asking channel_max 0 ("unlimited") is refused by RabbitMQ >= 3.7
    fake = FakeBroker(spec.Connection.Tune(channel_max=0, frame_max=0, heartbeat=0))
    async with fake as port:
        c = await Connection.connect(host="127.0.0.1", port=port, user="u", password="p")
        c.abort()
    assert fake.tune_ok is not None
    assert (fake.tune_ok.channel_max, fake.tune_ok.frame_max) == (2047, 131072)
    assert fake.tune_ok.heartbeat == 0


async def test_silent_broker_is_declared_dead_after_two_heartbeats() -> None:
    fake = FakeBroker(spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60))
    async with fake as port:
        c = await Connection.connect(
            host="127.0.0.1", port=port, user="u", password="p", heartbeat=1
        )
        assert fake.tune_ok is not None and fake.tune_ok.heartbeat == 1
        ch_future: Awaitable[BaseException | None] = asyncio.shield(c.closed)
        t0 = asyncio.get_running_loop().time()
        reason = await asyncio.wait_for(ch_future, 5)
        elapsed = asyncio.get_running_loop().time() - t0
    assert isinstance(reason, NotConnected)
    assert str(reason).startswith("no traffic from RabbitMQ for 2 heartbeats")
    assert 1.9 <= elapsed <= 3.0
    assert fake.heartbeats >= 3  # we sent ours every heartbeat/2 while idle
    assert c._hb_handle is None


async def test_handshake_timeout_is_not_connected() -> None:
    fake = FakeBroker(spec.Connection.Tune(), handshake=False)
    async with fake as port:
        with pytest.raises(NotConnected) as info:
            await Connection.connect(
                host="127.0.0.1", port=port, user="u", password="p", connect_timeout=0.5
            )
    assert str(info.value) == (
        f"cannot reach RabbitMQ at 127.0.0.1:{port}: "
        "the AMQP handshake did not complete within 0.5 s"
    )


@pytest.mark.broker
async def test_out_of_order_acks_never_ack_a_tag_twice(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    """Acks arriving in random order keep the channel open and the prefetch window moving."""
    import random

    ch = await conn.channel()
    queue = await temp_queue(ch, cleanup)
    pub = await conn.channel(confirms=True)
    await asyncio.gather(*(pub.publish("", queue, b"x") for _ in range(400)))  # type: ignore[misc]
    consumer = await conn.channel()
    await consumer.basic_qos(20)
    loop = asyncio.get_running_loop()
    got: list[int] = []
    done = loop.create_future()

    def on(d: Delivery) -> None:
        got.append(d.delivery_tag)
        loop.call_later(random.random() * 0.003, consumer.ack, d.delivery_tag)
        if len(got) == 400 and not done.done():
            done.set_result(None)

    await consumer.basic_consume(queue, on, no_ack=False)
    await asyncio.wait_for(done, 20)
    await asyncio.sleep(0.1)
    assert consumer.is_open
    assert len(got) == 400


# --------------------------------------------------------------------------- issue 7


@pytest.mark.broker
async def test_names_pamqp_refuses_work_end_to_end_without_touching_pamqp(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    import pamqp.constants

    before = dict(pamqp.constants.DOMAIN_REGEX)
    ch = await conn.channel(confirms=True)
    queue = uid("kamailio@host-<1-0>")
    exchange = uid("ex<*>")
    await ch.queue_declare(queue, auto_delete=True)
    cleanup("queue", queue)
    await ch.exchange_declare(exchange, "direct", auto_delete=True)
    cleanup("exchange", exchange)
    await ch.queue_bind(queue, exchange, "rk<1>")
    fut = ch.publish(exchange, "rk<1>", b'{"a":1}')
    assert fut is not None
    await fut
    got = Collector()
    await ch.basic_consume(queue, got, no_ack=True)
    items = await got.wait_for(1)
    assert (items[0].exchange, items[0].routing_key, items[0].body) == (
        exchange, "rk<1>", b'{"a":1}'
    )
    assert before == pamqp.constants.DOMAIN_REGEX


@pytest.mark.broker
async def test_a_content_header_over_frame_max_fails_that_publish_alone(
    rabbitmq: Params, cleanup: Callable[[str, str], None]
) -> None:
    c = await Connection.connect(**rabbitmq, frame_max=4096)
    try:
        assert c.frame_max == 4096
        ch = await c.channel(confirms=True)
        queue = await temp_queue(ch, cleanup)
        with pytest.raises(UsageError, match="send fewer or shorter headers"):
            ch.publish("", queue, b"{}", headers={"big": "x" * 5000})
        big_body = b'{"p":"' + b"y" * 20_000 + b'"}'  # body frames cut at 4088 bytes
        fut = ch.publish("", queue, big_body, headers={"small": "ok"})
        assert fut is not None
        await fut
        assert ch.is_open
        got = Collector()
        await ch.basic_consume(queue, got, no_ack=True)
        items = await got.wait_for(1)
        assert len(items) == 1 and items[0].body == big_body
        assert items[0].headers == {"small": "ok"}
    finally:
        await c.close()


@pytest.mark.broker
async def test_a_paused_connection_to_rabbitmq_outlives_two_heartbeats(rabbitmq: Params) -> None:
    c = await Connection.connect(**rabbitmq, heartbeat=1)
    try:
        assert c.heartbeat == 1
        c.pause_reading()
        await asyncio.sleep(3.5)  # RabbitMQ's heartbeats wait unread in the socket
        assert c.is_open
        c.resume_reading()
        ch = await c.channel()
        await ch.queue_declare("", exclusive=True)
        assert c.is_open
    finally:
        await c.close()


@pytest.mark.broker
async def test_a_publish_to_a_missing_exchange_fails_alone_the_others_are_retryable(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    """One refused publish among 300 in flight: only the publishes to its exchange fail; the
    rest are confirmed or come back as ChannelClosedRetry and succeed when sent again."""
    ch = await conn.channel(confirms=True)
    queue = await temp_queue(ch, cleanup)
    missing = uid("missing")
    futures: list[tuple[int, str, asyncio.Future[None]]] = []
    for i in range(300):
        exchange = missing if i in (100, 200) else ""
        fut = ch.publish(exchange, queue, b'{"i":%d}' % i)
        assert fut is not None
        futures.append((i, exchange, fut))
    outcomes = await asyncio.gather(*(f for _, _, f in futures), return_exceptions=True)
    refused = [i for (i, _, _), r in zip(futures, outcomes, strict=True)
               if isinstance(r, BrokerRefused)]  # fmt: skip
    retry = [i for (i, _, _), r in zip(futures, outcomes, strict=True)
             if isinstance(r, ChannelClosedRetry)]  # fmt: skip
    confirmed = [i for (i, _, _), r in zip(futures, outcomes, strict=True) if r is None]
    assert refused == [100, 200]
    for i in refused:
        err = outcomes[i]
        assert isinstance(err, BrokerRefused)
        assert (err.reply_code, err.exchange) == (404, missing)
        assert f"exchange {missing!r}" in str(err)
    assert sorted(confirmed + retry + refused) == list(range(300))
    # publishes before the bad one may still be unconfirmed at the close: they come back for
    # retry too (and may then be in the queue twice), never as refused
    assert retry and confirmed
    assert isinstance(await ch.closed, BrokerRefused)

    again = await conn.channel(confirms=True)
    resent = [again.publish("", queue, b'{"i":%d}' % i) for i in retry]
    await asyncio.gather(*resent)  # type: ignore[arg-type]
    _, count, _ = await again.queue_declare(queue, passive=True)
    assert count >= 298  # at least once


@pytest.mark.broker
async def test_a_full_reject_publish_queue_nacks_with_publish_nacked(
    conn: Connection, cleanup: Callable[[str, str], None]
) -> None:
    ch = await conn.channel(confirms=True)
    queue = await temp_queue(
        ch, cleanup, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    outcomes = []
    for i in range(4):
        fut = ch.publish("", queue, b'{"n":%d}' % i)
        assert fut is not None
        try:
            await fut
            outcomes.append(None)
        except PublishFailed as exc:
            outcomes.append(exc)
    assert outcomes[:2] == [None, None]
    for exc in outcomes[2:]:
        assert isinstance(exc, PublishNacked)
        assert "basic.nack" in str(exc)
    assert ch.is_open
    _, count, _ = await ch.queue_declare(queue, passive=True)
    assert count == 2
