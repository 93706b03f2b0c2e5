"""Link supervision, declaration replay, consumers and queries against the in-memory broker."""

from __future__ import annotations

import asyncio
import json

import pytest

from kazoo_amqp.amqp.consumers import AckToken
from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.message import reply_queue_name
from kazoo_amqp.core.pipe import decode_to_worker
from kazoo_amqp.core.stats import Recorder
from kazoo_amqp.core.subscription import parse_subscription
from kazoo_amqp.errors import BrokerRefused, QueryTimeout, ShuttingDown
from tests.unit.amqp.harness import HOST, Outcomes, Rig, until

SUB = parse_subscription(
    {
        "exchange": "presence",
        "type": "topic",
        "queue": "BLF-q",
        "routing": ["a.*", "b.*"],
        "exchange-bindings": {"upstream": {"type": "fanout", "routing": "x"}},
        "queue-args": {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"},
        "exchange-args": {"alternate-exchange": "ae"},
        "durable": 1,
        "auto_delete": 0,
        "wait_for_consumer_ack": 1,
    }
)


def _topology(declarations: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [d for d in declarations if d[0] != "exchange" or d[1] != "targeted"]


async def test_every_connect_replays_reply_queue_and_subscription_declarations() -> None:
    async with Rig("a", subscriptions=[SUB]) as rig:
        broker = rig.net["a"]
        first = list(broker.declarations)
        reply_q = reply_queue_name(HOST, 1)
        assert ("queue", reply_q, None) in first
        assert ("consume", reply_q, True) in first
        assert _topology(first)[-7:] == [
            ("exchange", "presence", "topic", {"alternate-exchange": "ae"}),
            ("exchange", "upstream", "fanout", None),
            ("exchange_bind", "presence", "upstream", "x"),
            ("queue", "BLF-q", {"x-queue-type": "quorum", "x-dead-letter-exchange": "dlx"}),
            ("bind", "BLF-q", "presence", "a.*"),
            ("bind", "BLF-q", "presence", "b.*"),
            ("consume", "BLF-q", False),
        ]
        broker.declarations.clear()
        broker.kill()
        await until(lambda: rig.manager.links[0].connects == 2 and rig.manager.links[0].up)
        assert broker.declarations == first  # the same declarations, in the same order
        assert rig.events == [("open", 1), ("closed", 1), ("open", 1)]


async def test_a_broker_that_refuses_connections_is_retried_with_backoff() -> None:
    rig = Rig("a")
    rig.net["a"].down = True
    await rig.manager.start()
    try:
        assert not await rig.manager.wait_connected(0.2, give_up_when_all_failed=True)
        await asyncio.sleep(0.2)
        rig.net["a"].down = False
        assert await rig.manager.wait_connected(2.0)
        assert rig.manager.status()["brokers"][0]["up"]
    finally:
        await rig.manager.stop()
    assert rig.events == [("open", 1)]  # no closed event while stopping


async def test_ack_after_handler_acks_on_done_and_rejects_on_failure() -> None:
    async with Rig("a", subscriptions=[SUB]) as rig:
        broker = rig.net["a"]
        assert broker.deliver("BLF-q", b'{"Event-Category": "c"}') == 1
        assert broker.deliver("BLF-q", b'{"Event-Category": "c"}') == 1
        [(_, _, frame1, token1), (_, _, _, token2)] = rig.dispatcher.frames
        [decoded] = [decode_to_worker(f) for f in FrameDecoder().feed(frame1)]
        assert decoded.body == b'{"Event-Category": "c"}'  # type: ignore[union-attr]
        assert isinstance(token1, AckToken) and isinstance(token2, AckToken)
        rig.manager.on_done(token1, 0)
        rig.manager.on_done(token2, 1)
        assert token1.channel.acked == [token1.tag]  # type: ignore[attr-defined]
        assert token2.channel.rejected == [token2.tag]  # type: ignore[attr-defined]


async def test_a_cancelled_consumer_makes_the_link_declare_everything_again() -> None:
    async with Rig("a", subscriptions=[SUB]) as rig:
        broker = rig.net["a"]
        consume = next(c for c in broker.connections if c.name.endswith("consume"))
        channel = next(ch for ch in consume.channels if ch.consumers)
        assert channel.on_cancel is not None
        channel.on_cancel("ctag")
        await until(lambda: rig.manager.links[0].connects == 2 and rig.manager.links[0].up)
        assert rig.manager.status()["consumer_restarts"] == 1
        assert broker.deliver("BLF-q", b"{}") == 1


async def test_paused_consumers_stay_paused_across_a_reconnect() -> None:
    async with Rig("a", subscriptions=[SUB]) as rig:
        rig.manager.pause_consumers(True)
        broker = rig.net["a"]
        broker.kill()
        await until(lambda: rig.manager.links[0].connects == 2 and rig.manager.links[0].up)
        consume = next(c for c in broker.open_connections() if c.name.endswith("consume"))
        assert not consume.reading
        rig.manager.pause_consumers(False)
        assert consume.reading


async def test_stop_consuming_cancels_consumers_but_keeps_their_channels() -> None:
    async with Rig("a", subscriptions=[SUB]) as rig:
        broker = rig.net["a"]
        await rig.manager.stop_consuming()
        consume = next(c for c in broker.connections if c.name.endswith("consume"))
        assert all(not ch.consumers for ch in consume.channels)
        assert consume.is_open


async def _reply_to_last_query(rig: Rig, body: dict[str, object]) -> None:
    broker = rig.net["a"]
    await until(lambda: bool(broker.published))
    msg_id = json.loads(broker.published[-1].body)["Msg-ID"]
    broker.deliver(reply_queue_name(HOST, 1), json.dumps({"Msg-ID": msg_id, **body}).encode())


async def test_query_gets_the_reply_carrying_its_msg_id() -> None:
    async with Rig("a") as rig:
        task = asyncio.create_task(rig.manager.query("callmgr", "q", {"Q": 1}, timeout_ms=1000))
        rig.net["a"].exchanges.add("callmgr")
        await _reply_to_last_query(rig, {"Answer": 42})
        reply = json.loads(await task)
        assert reply["Answer"] == 42 and reply["AMQP-Broker-Zone"] == "local"
        assert rig.manager.pending == {}


async def test_query_times_out_and_a_late_reply_is_counted() -> None:
    async with Rig("a") as rig:
        with pytest.raises(QueryTimeout) as info:
            await rig.manager.query("amq.topic", "q", {"Q": 1}, timeout_ms=50)
        assert info.value.msg_id
        await _reply_to_last_query(rig, {})
        assert rig.manager.status()["late_replies"] == 1


async def test_query_to_a_missing_exchange_fails_at_once() -> None:
    async with Rig("a") as rig:
        with pytest.raises(BrokerRefused):
            await rig.manager.query("gone", "q", {}, timeout_ms=2000)


async def test_stop_fails_waiting_queries_with_shutting_down() -> None:
    rig = Rig("a")
    await rig.__aenter__()
    task = asyncio.create_task(rig.manager.query("amq.topic", "q", {}, timeout_ms=5000))
    await until(lambda: bool(rig.manager.pending))
    await rig.manager.stop()
    with pytest.raises(ShuttingDown):
        await task


async def test_query_replies_keep_flowing_while_the_broker_blocks_publishes() -> None:
    """connection.blocked only stops publishes: the reply queue keeps delivering."""
    async with Rig("a") as rig:
        out = Outcomes()
        task = asyncio.create_task(rig.manager.query("amq.topic", "q", {}, timeout_ms=2000))
        await until(lambda: bool(rig.net["a"].published))
        rig.net["a"].block()
        rig.manager.submit("amq.topic", "k", {}, done=out.done_for("held"))
        await _reply_to_last_query(rig, {"Ok": True})
        assert json.loads(await task)["Ok"] is True
        assert out.settled == 0
        rig.net["a"].unblock()
        await until(lambda: out.settled == 1)


async def test_every_query_outcome_is_recorded_once_by_outcome() -> None:
    """reply -> ok, timer -> timeout; refused publish, cancel and shutdown -> error."""
    rec = Recorder()
    rig = Rig("a")
    rig.manager.replies.latency = rec.query
    await rig.__aenter__()
    rig.net["a"].exchanges.add("callmgr")
    answered = asyncio.create_task(rig.manager.query("callmgr", "q", {}, timeout_ms=2000))
    await _reply_to_last_query(rig, {})
    await answered
    with pytest.raises(QueryTimeout):
        await rig.manager.query("amq.topic", "q", {}, timeout_ms=50)
    with pytest.raises(BrokerRefused):
        await rig.manager.query("gone", "q", {}, timeout_ms=2000)
    cancelled = rig.manager.start_query("amq.topic", "q", {}, timeout_ms=5000)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert rig.manager.pending == {}
    stopped = asyncio.create_task(rig.manager.query("amq.topic", "q", {}, timeout_ms=5000))
    await until(lambda: bool(rig.manager.pending))
    await rig.manager.stop()
    with pytest.raises(ShuttingDown):
        await stopped
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert {k: h.count for k, h in rec.query.items()} == {"ok": 1, "timeout": 1, "error": 3}
    status = rig.manager.status()
    assert (status["queries"], status["query_timeouts"], status["query_errors"]) == (5, 1, 3)
