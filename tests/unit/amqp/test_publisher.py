"""The one publish path (Publisher.submit) against the in-memory broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kazoo_amqp.errors import (
    BadPayload,
    BadRoutingKey,
    BrokerRefused,
    BufferFull,
    NotConnected,
    PublishExpired,
    PublishFailed,
    PublishNacked,
    ShuttingDown,
    UsageError,
)
from tests.unit.amqp.harness import Outcomes, Rig, msg_ids, until


async def test_submit_returns_the_msg_id_and_done_gets_the_confirm() -> None:
    """submit returns at once with the Msg-ID; done gets {msg_id, server_id} after the ack."""
    async with Rig("a") as rig:
        out = Outcomes()
        msg_id = rig.manager.submit("amq.topic", "k", {"A": 1}, done=out.done_for("m"))
        assert out.calls == 0  # nothing waited on the broker
        await until(lambda: out.settled == 1)
        assert out.results["m"] == {"msg_id": msg_id, "server_id": 1}
        [sent] = rig.net["a"].published
        doc = json.loads(sent.body)
        assert doc["Msg-ID"] == msg_id and doc["Server-ID"] == "kamailio@kz.test-<1>-targeted-0"


async def test_accepted_publish_without_done_is_confirmed_silently() -> None:
    async with Rig("a") as rig:
        for i in range(50):
            rig.manager.submit("amq.topic", "k", {"I": i})
        await until(lambda: len(rig.net["a"].published) == 50)
        await until(lambda: rig.manager.publisher.backlog() == 0)
        assert rig.failed == [] and rig.manager.status()["published"] == 50


async def test_validation_errors_raise_synchronously_and_nothing_is_sent() -> None:
    async with Rig("a") as rig:
        with pytest.raises(BadPayload):
            rig.manager.submit("amq.topic", "k", "[1, 2]")
        with pytest.raises(BadRoutingKey):
            rig.manager.submit("amq.topic", "k" * 256, {})
        with pytest.raises(BadRoutingKey):
            rig.manager.submit("amq.topic", "consumer://9/k", {})
        await asyncio.sleep(0.01)
        assert rig.net["a"].published == []


async def test_a_refused_publish_fails_only_itself_and_the_others_are_sent_again() -> None:
    """One publish to a missing exchange among 300 in flight: only it fails (BrokerRefused);
    the channel is reopened and every other message is confirmed (at-least-once)."""
    async with Rig("a") as rig:
        out = Outcomes()
        for i in range(300):
            exchange = "no-such-exchange" if i == 150 else "amq.topic"
            rig.manager.submit(exchange, "k", {"I": i}, done=out.done_for(str(i)))
        await until(lambda: out.settled == 300)
        assert set(out.errors) == {"150"}
        error = out.errors["150"]
        assert isinstance(error, BrokerRefused) and error.reply_code == 404
        assert "no-such-exchange" in str(error)
        assert set(msg_ids(rig.net["a"].published)) == {r["msg_id"] for r in out.results.values()}
        assert rig.manager.status()["publish_retried"] > 0
        assert rig.manager.links[0].channel is not None and rig.manager.links[0].channel.is_open
        assert rig.events == [("open", 1)]  # no reconnect for a channel error


async def test_a_refused_publish_without_done_reaches_on_failed_with_its_identity() -> None:
    async with Rig("a") as rig:
        msg_id = rig.manager.submit("missing", "the.key", {"X": 1})
        await until(lambda: len(rig.failed) == 1)
        message, error = rig.failed[0]
        assert message.msg_id == msg_id and message.exchange == "missing"
        assert message.routing_key == "the.key" and isinstance(error, BrokerRefused)
        rig.manager.submit("amq.topic", "k", {})  # the link still publishes
        await until(lambda: len(rig.net["a"].published) == 1)


async def test_a_nack_that_persists_reaches_the_caller_as_publish_nacked_at_the_deadline() -> None:
    """A queue that keeps nacking (full, reject-publish): re-sent with growing delays, then the
    caller gets the PublishNacked itself once publish_buffer_timeout_ms has passed."""
    async with Rig("a", publish_buffer_timeout_ms=500) as rig:
        rig.net["a"].exchanges.add("full")
        rig.net["a"].nack_exchanges.add("full")
        out = Outcomes()
        started = asyncio.get_running_loop().time()
        rig.manager.submit("full", "k", {}, done=out.done_for("n"))
        await until(lambda: out.settled == 1, timeout=5)
        elapsed = asyncio.get_running_loop().time() - started
        assert isinstance(out.errors["n"], PublishNacked)
        assert 0.25 < elapsed < 1.0  # 0.1 + 0.2 s of delays fit in 0.5 s, 0.4 more do not
        status = rig.manager.status()
        assert status["publish_nacked"] == 3 and status["publish_failed"] == 1
        assert len(rig.net["a"].published) == 0 and rig.manager.publisher.backlog() == 0


async def test_a_transient_nack_is_sent_again_and_confirmed() -> None:
    """A quorum queue whose leader's node stopped nacks until a new leader is elected: the
    publish is written again after a delay and confirmed; the caller sees no error (issue 8's
    chaos soak: 159 presence updates failed during a node restart in a healthy cluster)."""
    async with Rig("a") as rig:
        broker = rig.net["a"]
        broker.exchanges.add("q")
        broker.nack_exchanges.add("q")
        out = Outcomes()
        rig.manager.submit("q", "k", {}, done=out.done_for("n"))
        rig.manager.submit("amq.topic", "k", {}, done=out.done_for("other"))
        await until(lambda: rig.manager.status()["publish_nacked"] >= 1)
        broker.nack_exchanges.discard("q")  # the new leader takes messages again
        await until(lambda: out.settled == 2, timeout=5)
        assert out.errors == {}
        assert out.results["n"]["server_id"] == 1 and "other" in out.results
        assert rig.manager.status()["publish_failed"] == 0
        assert rig.manager.publisher.backlog() == 0


async def test_a_nacked_publish_waiting_to_be_resent_fails_with_shutting_down_on_stop() -> None:
    async with Rig("a", publish_buffer_timeout_ms=60000) as rig:
        rig.net["a"].exchanges.add("full")
        rig.net["a"].nack_exchanges.add("full")
        out = Outcomes()
        rig.manager.submit("full", "k", {}, done=out.done_for("n"))
        await until(lambda: rig.manager.status()["publish_nacked"] >= 1)
        assert rig.manager.publisher.backlog() == 1
        await rig.manager.publisher.stop()
        assert isinstance(out.errors["n"], ShuttingDown)
        assert rig.manager.publisher.backlog() == 0


async def test_a_returned_mandatory_publish_fails_with_publish_failed() -> None:
    async with Rig("a") as rig:
        rig.net["a"].unroutable.add("nobody")
        out = Outcomes()
        rig.manager.submit("amq.topic", "nobody", {}, mandatory=True, done=out.done_for("m"))
        rig.manager.submit("amq.topic", "nobody", {}, done=out.done_for("plain"))
        await until(lambda: out.settled == 2)
        assert isinstance(out.errors["m"], PublishFailed) and "plain" in out.results
        assert rig.manager.status()["publish_returned"] == 1


async def test_blocked_broker_keeps_publishes_buffered_without_reconnecting() -> None:
    """connection.blocked: nothing is written, nothing reconnects, no closed event; after
    unblocked every message is confirmed exactly once."""
    async with Rig("a", publish_confirm_timeout_ms=50) as rig:
        broker = rig.net["a"]
        out = Outcomes()
        broker.block()
        for i in range(200):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
        await asyncio.sleep(0.3)  # several sweeps of a 50 ms confirm timeout
        assert out.settled == 0 and broker.published == []
        assert rig.manager.status()["buffered_publishes"] == 200
        assert broker.connects == 2 and rig.events == [("open", 1)]
        assert rig.manager.status()["brokers"][0]["blocked"]
        broker.unblock()
        await until(lambda: out.settled == 200)
        assert out.errors == {}
        assert sorted(msg_ids(broker.published)) == sorted(
            r["msg_id"] for r in out.results.values()
        )
        assert broker.connects == 2 and rig.events == [("open", 1)]


async def test_confirms_held_by_a_blocked_broker_do_not_count_as_a_dead_link() -> None:
    """Messages written just before the block wait for their confirm past the confirm timeout."""
    async with Rig("a", publish_confirm_timeout_ms=50) as rig:
        broker = rig.net["a"]
        out = Outcomes()
        for i in range(20):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
        broker.block()  # before the confirms: RabbitMQ holds them
        await asyncio.sleep(0.3)
        assert out.settled == 0 and broker.connects == 2
        broker.unblock()
        await until(lambda: out.settled == 20)
        assert out.errors == {} and len(broker.published) == 20


async def test_blocked_broker_fails_over_to_another_of_the_zone_and_back() -> None:
    async with Rig("a", "b") as rig:
        a = rig.net["a"]
        out = Outcomes()
        a.block()
        for i in range(10):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(f"x{i}"))
        await until(lambda: out.settled == 10)
        assert {r["server_id"] for r in out.results.values()} == {2} and a.published == []
        a.unblock()
        rig.manager.submit("amq.topic", "k", {}, done=out.done_for("back"))
        await until(lambda: out.settled == 11)
        assert out.results["back"]["server_id"] == 1  # fail-back
        assert sorted(rig.events) == [("open", 1), ("open", 2)]  # no reconnect


async def test_channel_flow_stops_and_resumes_publishing() -> None:
    async with Rig("a") as rig:
        broker = rig.net["a"]
        out = Outcomes()
        broker.flow(False)
        for i in range(5):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
        await asyncio.sleep(0.05)
        assert broker.published == [] and out.settled == 0
        broker.flow(True)
        await until(lambda: out.settled == 5)
        assert out.errors == {} and len(broker.published) == 5


async def test_confirms_held_by_channel_flow_do_not_count_as_a_dead_link() -> None:
    async with Rig("a", publish_confirm_timeout_ms=50) as rig:
        broker = rig.net["a"]
        out = Outcomes()
        for i in range(5):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
        broker.flow(False)
        await asyncio.sleep(0.3)
        assert out.settled == 0 and broker.connects == 2
        broker.flow(True)
        await until(lambda: out.settled == 5)
        assert out.errors == {}


async def test_a_hung_broker_is_dropped_after_the_confirm_timeout_and_messages_go_again() -> None:
    """No confirm within publish_confirm_timeout_ms on a link that is not blocked: the
    connection is aborted, the link reconnects and the messages are sent again."""
    async with Rig("a", publish_confirm_timeout_ms=100) as rig:
        broker = rig.net["a"]
        broker.hang = True
        out = Outcomes()
        for i in range(5):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
        await until(lambda: broker.connects > 2, 3.0)
        broker.hang = False
        await until(lambda: out.settled == 5)
        assert out.errors == {} and rig.manager.status()["publish_retried"] >= 5
        assert ("closed", 1) in rig.events


async def test_a_confirm_its_lost_connection_never_settled_is_sent_again() -> None:
    """Regression (chaos soak): a connection that closes without failing a pending confirm
    must not hold that message forever; the sweeper settles it and it goes out again."""
    async with Rig("a", publish_confirm_timeout_ms=100) as rig:
        broker = rig.net["a"]
        broker.hang = True
        out = Outcomes()
        rig.manager.submit("amq.topic", "k", {"I": 1}, done=out.done_for("orphan"))

        def holding() -> list[Any]:
            return [c for c in broker.open_connections() if any(ch._pending for ch in c.channels)]

        await until(lambda: len(holding()) == 1)
        [conn] = holding()
        conn.is_open = False  # lost without terminating its channels: the confirm is orphaned
        conn.closed.set_result(None)
        broker.hang = False
        await until(lambda: out.settled == 1, 3.0)
        assert out.errors == {} and rig.manager.status()["publish_retried"] >= 1


async def test_lost_broker_fails_over_and_unconfirmed_messages_are_sent_again() -> None:
    async with Rig("a", "b") as rig:
        a, b = rig.net["a"], rig.net["b"]
        out = Outcomes()
        a.down = True
        for i in range(100):
            rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
        a.kill()  # before any confirm: all 100 fail retryably
        await until(lambda: out.settled == 100)
        assert out.errors == {}
        assert {r["server_id"] for r in out.results.values()} == {2}
        assert len(b.published) == 100
        assert ("closed", 1) in rig.events
        a.down = False
        await until(lambda: rig.manager.links[0].up)
        rig.manager.submit("amq.topic", "k", {}, done=out.done_for("back"))
        await until(lambda: "back" in out.results)
        assert out.results["back"]["server_id"] == 1


async def test_a_publish_for_a_down_server_waits_without_holding_up_the_others() -> None:
    """consumer://2/ targets broker 2 exactly: it waits for it; primary traffic flows meanwhile."""
    async with Rig("a", "b") as rig:
        b = rig.net["b"]
        b.down = True
        b.kill()
        await until(lambda: not rig.manager.links[1].up)
        out = Outcomes()
        rig.manager.submit("amq.topic", "consumer://2/k", {}, done=out.done_for("to-b"))
        rig.manager.submit("amq.topic", "k", {}, done=out.done_for("any"))
        await until(lambda: "any" in out.results)
        assert out.results["any"]["server_id"] == 1 and "to-b" not in out.results
        assert rig.manager.status()["buffered_publishes"] == 1
        b.down = False
        await until(lambda: "to-b" in out.results)
        assert out.results["to-b"]["server_id"] == 2
        assert [p.routing_key for p in b.published] == ["k"]


async def test_buffered_publish_is_sent_when_a_broker_comes_up() -> None:
    async with Rig("a", publish_buffer_timeout_ms=5000) as rig:
        a = rig.net["a"]
        a.down = True
        a.kill()
        await until(lambda: not rig.manager.links[0].up)
        out = Outcomes()
        rig.manager.submit("amq.topic", "k", {}, done=out.done_for("m"))
        assert rig.manager.status()["buffered_publishes"] == 1
        a.down = False
        await until(lambda: out.settled == 1)
        assert "m" in out.results and len(a.published) == 1


async def test_buffer_deadline_fails_with_publish_expired_and_a_full_buffer_refuses() -> None:
    async with Rig("a", publish_buffer_timeout_ms=150, publish_buffer_size=3) as rig:
        a = rig.net["a"]
        a.down = True
        a.kill()
        await until(lambda: not rig.manager.links[0].up)
        out = Outcomes()
        for i in range(3):
            rig.manager.submit("amq.topic", "k", {}, done=out.done_for(str(i)))
        with pytest.raises(BufferFull, match="publish_buffer_size"):
            rig.manager.submit("amq.topic", "k", {})
        await until(lambda: out.settled == 3)
        for error in out.errors.values():
            assert isinstance(error, PublishExpired) and isinstance(error, NotConnected)
            assert "publish_buffer_timeout_ms" in str(error)
        status = rig.manager.status()
        assert status["publish_expired"] == 3 and status["buffer_rejected"] == 4


async def test_persistent_per_publish_and_config_default() -> None:
    async with Rig("a", publish_persistent=True) as rig:
        rig.manager.submit("amq.topic", "k", {})
        rig.manager.submit("amq.topic", "k", {}, persistent=False)
        await until(lambda: len(rig.net["a"].published) == 2)
        assert [p.persistent for p in rig.net["a"].published] == [True, False]
    async with Rig("a") as rig:
        rig.manager.submit("amq.topic", "k", {})
        rig.manager.submit("amq.topic", "k", {}, persistent=True)
        await until(lambda: len(rig.net["a"].published) == 2)
        assert [p.persistent for p in rig.net["a"].published] == [False, True]


async def test_publish_and_publish_batch_go_through_submit() -> None:
    async with Rig("a") as rig:
        result = await rig.manager.publish("amq.topic", "k", {"A": 1})
        assert result["server_id"] == 1
        accepted = await rig.manager.publish("amq.topic", "k", {"A": 2}, confirm=False)
        assert set(accepted) == {"msg_id"}
        batch = await rig.manager.publish_batch(
            [
                {"exchange": "amq.topic", "routing_key": "k", "payload": {"B": 1}},
                {"exchange": "amq.topic", "routing_key": "k", "payload": "not json"},
                {"exchange": "gone", "routing_key": "k", "payload": {"B": 3}},
            ]
        )
        assert [r["ok"] for r in batch] == [True, False, False]
        assert isinstance(batch[1]["error"], BadPayload)
        assert isinstance(batch[2]["error"], BrokerRefused)
        await until(lambda: len(rig.net["a"].published) == 3)


async def test_stop_fails_buffered_publishes_with_shutting_down_and_refuses_new_ones() -> None:
    rig = Rig("a", publish_buffer_timeout_ms=60000)
    await rig.__aenter__()
    a = rig.net["a"]
    a.down = True
    a.kill()
    await until(lambda: not rig.manager.links[0].up)
    out = Outcomes()
    rig.manager.submit("amq.topic", "k", {}, done=out.done_for("m"))
    await rig.manager.stop()
    assert isinstance(out.errors["m"], ShuttingDown)
    with pytest.raises(ShuttingDown):
        rig.manager.submit("amq.topic", "k", {})
    assert rig.events == [("open", 1), ("closed", 1)]


async def test_graceful_stop_waits_for_unconfirmed_publishes() -> None:
    rig = Rig("a")
    await rig.__aenter__()
    out = Outcomes()
    for i in range(30):
        rig.manager.submit("amq.topic", "k", {"I": i}, done=out.done_for(str(i)))
    await rig.manager.stop()
    assert len(out.results) == 30


@pytest.mark.parametrize(
    ("exchange", "routing_key", "headers", "error", "field"),
    [
        ("ex\ud800", "k", None, UsageError, "exchange name"),
        ("amq.topic", "k\udc80", None, BadRoutingKey, "routing key"),
        ("amq.topic", "k", "X-A=\ud800", UsageError, "AMQP headers"),
    ],
)
async def test_a_lone_surrogate_in_a_name_is_a_typed_error_naming_the_field(
    exchange: str, routing_key: str, headers: str | None, error: type[Exception], field: str
) -> None:
    """Issue 8: a lone surrogate in an exchange name was an untyped internal error with an
    ERROR traceback (or, buffered, an exception in the event loop)."""
    async with Rig("a") as rig:
        with pytest.raises(error, match=f"{field} .*lone surrogate"):
            rig.manager.submit(exchange, routing_key, {}, headers)
        await asyncio.sleep(0.01)
        assert rig.net["a"].published == []


async def test_submit_returns_before_the_write_and_one_loop_turn_writes_all_in_order() -> None:
    """The caller's reply can leave before the body is serialised: submit only validates and
    takes the message; the write happens later in the same loop iteration, for every message
    accepted meanwhile, in submission order (behind older messages already waiting)."""
    async with Rig("a") as rig:
        channel = rig.manager.links[0].channel
        assert channel is not None
        ids = [rig.manager.submit("amq.topic", "k", {"I": i}) for i in range(5)]
        assert channel._pending == {}  # type: ignore[attr-defined]
        assert rig.manager.publisher.backlog() == 5  # owned: counted as waiting
        await asyncio.sleep(0)
        sent = [m for _, m in channel._pending.values()]  # type: ignore[attr-defined]
        assert [json.loads(m.body)["Msg-ID"] for m in sent] == ids
        await until(lambda: rig.manager.publisher.backlog() == 0)
        assert msg_ids(rig.net["a"].published) == ids
        assert rig.manager.status()["buffered"] == 0  # a link could take them: not "buffered"
