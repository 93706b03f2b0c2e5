"""Connection/Channel against a scripted broker over real TCP: back-pressure signals, heartbeats
while paused, EXTERNAL login, and garbage from the broker. (What the shared RabbitMQ can show is
proven in test_amqp_protocol.py.)"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import pytest
from pamqp import commands as spec

from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.errors import BrokerRefused, FrameError, HeartbeatTimeout, NotConnected
from tests.integration.fake_broker import FakeBroker


async def connect(fake: FakeBroker, **kw: Any) -> Connection:
    return await Connection.connect(host="127.0.0.1", port=fake.port, user="u", password="p", **kw)


class LoopErrors:
    """Records what reaches the event loop's exception handler (must stay empty)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: self.seen.append(ctx))


# --------------------------------------------------------------------------- handshake


async def test_start_ok_advertises_connection_blocked_and_logs_in_with_plain() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        assert fake.start_ok is not None
        assert fake.start_ok.mechanism == "PLAIN"
        assert fake.start_ok.response == "\0u\0p"
        caps = fake.start_ok.client_properties["capabilities"]
        assert caps["connection.blocked"] is True
        assert caps["basic.nack"] is True
        conn.abort()


async def test_external_login_sends_the_empty_response_the_certificate_stands_for() -> None:
    async with FakeBroker(mechanisms="PLAIN EXTERNAL AMQPLAIN") as fake:
        conn = await connect(fake, auth_mechanism="external")
        assert fake.start_ok is not None
        assert (fake.start_ok.mechanism, fake.start_ok.response) == ("EXTERNAL", "")
        assert conn.is_open
        await conn.close()


async def test_external_not_offered_by_the_broker_names_the_plugin() -> None:
    async with FakeBroker(mechanisms="PLAIN AMQPLAIN") as fake:
        with pytest.raises(BrokerRefused, match="rabbitmq_auth_mechanism_ssl"):
            await connect(fake, auth_mechanism="EXTERNAL")


async def test_a_refused_certificate_login_says_what_to_check() -> None:
    async with FakeBroker(mechanisms="EXTERNAL", refuse_login=True) as fake:
        with pytest.raises(BrokerRefused, match="refused the TLS client certificate") as info:
            await connect(fake, auth_mechanism="EXTERNAL")
    assert info.value.reply_code == 403


# --------------------------------------------------------------------------- back-pressure


async def test_connection_blocked_is_surfaced_with_its_reason_and_not_acted_on() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        ch = await conn.channel(confirms=True)
        events: list[Any] = []
        conn.on_blocked = lambda reason: events.append(("blocked", reason))
        conn.on_unblocked = lambda: events.append("unblocked")
        assert conn.blocked is None and ch.writable

        fake.send_method(0, spec.Connection.Blocked(reason="low on memory"))
        await asyncio.sleep(0.1)
        assert conn.blocked == "low on memory"
        assert events == [("blocked", "low on memory")]
        assert not ch.writable
        assert conn.is_open  # nothing else happens: the owner decides
        ch.publish("", "q", b"{}")  # and publish still writes: the owner decides that too
        await fake.wait_for(lambda _c, v: isinstance(v, spec.Basic.Publish))

        fake.send_method(0, spec.Connection.Unblocked())
        await asyncio.sleep(0.1)
        assert conn.blocked is None
        assert events[-1] == "unblocked"
        assert ch.writable
        conn.abort()


async def test_channel_flow_is_answered_and_surfaced() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        ch = await conn.channel()
        seen: list[bool] = []
        ch.on_flow = seen.append

        fake.send_method(ch.number, spec.Channel.Flow(active=False))
        ok = await fake.wait_for(lambda c, v: isinstance(v, spec.Channel.FlowOk))
        assert ok.active is False
        assert (ch.flow_active, ch.writable, seen) == (False, False, [False])

        fake.send_method(ch.number, spec.Channel.Flow(active=True))
        await fake.wait_for(lambda c, v: isinstance(v, spec.Channel.FlowOk) and v.active)
        assert (ch.flow_active, ch.writable, seen) == (True, True, [False, True])
        conn.abort()


# --------------------------------------------------------------------------- heartbeats


def _tune(heartbeat: int) -> spec.Connection.Tune:
    return spec.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=heartbeat)


async def test_a_silent_broker_is_declared_dead_while_reading_is_paused() -> None:
    async with FakeBroker(tune=_tune(1), heartbeat_every=0.2) as fake:
        conn = await connect(fake, heartbeat=1)
        await asyncio.sleep(0.5)
        fake.silent = True
        await asyncio.sleep(0.3)  # what was on the way is read; the socket is empty
        conn.pause_reading()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reason = await asyncio.wait_for(asyncio.shield(conn.closed), 5)
        elapsed = loop.time() - t0
    assert isinstance(reason, HeartbeatTimeout)
    assert "reading paused" in str(reason)
    assert 1.4 <= elapsed <= 3.5


async def test_a_live_broker_keeps_a_paused_connection_up() -> None:
    async with FakeBroker(tune=_tune(1), heartbeat_every=0.3) as fake:
        conn = await connect(fake, heartbeat=1)
        conn.pause_reading()
        await asyncio.sleep(3.5)  # > 2 heartbeat intervals, nothing read
        assert conn.is_open
        conn.resume_reading()
        ch = await conn.channel()  # and it still works
        assert ch.is_open
        await conn.close()


# --------------------------------------------------------------------------- bad bytes

GARBAGE = {
    "http answer": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "unknown frame type": b"\x07\x00\x00\x00\x00\x00\x00\xce",
    "no frame end": b"\x08\x00\x00\x00\x00\x00\x00\x00",
    "oversize frame": struct.pack(">BHI", 1, 1, 10_000_000) + b"\x00" * 64,
    "truncated deliver": struct.pack(">BHI", 1, 1, 8) + b"\x00\x3c\x00\x3c\x09abc\xce",
    "body without header": struct.pack(">BHI", 3, 1, 2) + b"{}\xce",
    "bad method id": struct.pack(">BHI", 1, 0, 4) + b"\x00\x0a\x00\x63\xce",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
async def test_garbage_from_the_broker_closes_the_connection_with_a_frame_error(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    loop_errors = LoopErrors()
    async with FakeBroker() as fake:
        conn = await connect(fake)
        ch = await conn.channel(confirms=True)
        pending = ch.publish("", "q", b"{}")
        assert pending is not None
        with caplog.at_level(logging.ERROR, logger="kazoo_amqp.amqp"):
            fake.send(GARBAGE[name])
            reason = await asyncio.wait_for(asyncio.shield(conn.closed), 5)
        assert isinstance(reason, FrameError)
        assert f"RabbitMQ at 127.0.0.1:{fake.port} sent invalid AMQP" in str(reason)
        with pytest.raises(NotConnected):
            await pending  # what was in flight fails with a retryable error
        await asyncio.wait_for(fake.disconnected.wait(), 5)  # and the socket is closed
    errors = [r for r in caplog.records if r.name == "kazoo_amqp.amqp" and r.levelno >= 40]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].exc_info is None  # one line, no traceback
    assert loop_errors.seen == []


async def test_a_broker_that_hangs_up_in_the_middle_of_a_frame_is_a_frame_error() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        fake.send(struct.pack(">BHI", 1, 0, 100) + b"\x00\x0a")
        await asyncio.sleep(0.1)
        assert fake._writer is not None
        fake._writer.close()
        reason = await asyncio.wait_for(asyncio.shield(conn.closed), 5)
    assert isinstance(reason, FrameError)
    assert "in the middle of a frame" in str(reason)


# --------------------------------------------------------------------------- refusals


async def _publishes(fake: FakeBroker, conn: Connection, exchanges: list[str]) -> list[Any]:
    ch = await conn.channel(confirms=True)
    futures = [ch.publish(ex, "rk", b"{}") for ex in exchanges]
    await fake.wait_for(
        lambda _c, v: sum(isinstance(x, spec.Basic.Publish) for _, x in fake.received)
        == len(exchanges)
    )
    return [ch, *futures]


async def test_a_403_naming_an_exchange_refuses_only_the_publishes_to_it() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        ch, *futures = await _publishes(fake, conn, ["a", "secret", "b", "secret", "a"])
        fake.send_method(ch.number, spec.Channel.Close(
            403, "ACCESS_REFUSED - access to exchange 'secret' in vhost '/' refused for user 'u'",
            60, 40,
        ))  # fmt: skip
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        kinds = [(type(o).__name__, getattr(o, "exchange", None)) for o in outcomes]
        assert kinds == [
            ("ChannelClosedRetry", None),
            ("BrokerRefused", "secret"),
            ("ChannelClosedRetry", None),
            ("BrokerRefused", "secret"),
            ("ChannelClosedRetry", None),
        ]
        assert outcomes[1].reply_code == 403
        assert isinstance(outcomes[0], NotConnected)  # retryable by the publisher as it is
        await fake.wait_for(lambda _c, v: isinstance(v, spec.Channel.CloseOk))
        assert conn.is_open
        conn.abort()


async def test_a_close_that_names_no_exchange_sends_every_publish_back() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        ch, *futures = await _publishes(fake, conn, ["a", "b"])
        fake.send_method(ch.number, spec.Channel.Close(
            406, "PRECONDITION_FAILED - message size 200 is larger than configured max size 100",
            60, 40,
        ))  # fmt: skip
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert [type(o).__name__ for o in outcomes] == ["ChannelClosedRetry"] * 2
        conn.abort()


async def test_nacks_single_and_multiple_are_publish_nacked() -> None:
    async with FakeBroker() as fake:
        conn = await connect(fake)
        ch, *futures = await _publishes(fake, conn, ["x", "x", "x", "y"])
        fake.send_method(ch.number, spec.Basic.Ack(delivery_tag=1))
        fake.send_method(ch.number, spec.Basic.Nack(delivery_tag=3, multiple=True))
        fake.send_method(ch.number, spec.Basic.Nack(delivery_tag=4))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert outcomes[0] is None
        assert [type(o).__name__ for o in outcomes[1:]] == ["PublishNacked"] * 3
        assert "exchange 'y'" in str(outcomes[3])
        assert ch.is_open
        conn.abort()
