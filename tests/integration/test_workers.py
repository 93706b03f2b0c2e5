"""Worker-pool behaviour on the real RabbitMQ: acks, crashes, hangs, bad input, routing modes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.daemon_harness import DaemonProcess, pika_connection, unique

pytestmark = pytest.mark.broker


def _routes(exchange: str, queue: str, extra_sub: str = "", body: str = "") -> str:
    return f"""
import time
@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe({{"exchange": {exchange!r}, "type": "topic", "queue": {queue!r},
                  "routing": "#", "auto_delete": 1{extra_sub}}})
{body}
"""


def _publish(exchange: str, messages: list[bytes], routing_key: str = "k") -> None:
    conn = pika_connection()
    ch = conn.channel()
    for m in messages:
        ch.basic_publish(exchange, routing_key, m)
    conn.close()


def _queue_depth(queue: str) -> tuple[int, int]:
    conn = pika_connection()
    ch = conn.channel()
    ok = ch.queue_declare(queue, passive=True).method
    conn.close()
    return ok.message_count, ok.consumer_count


def test_worker_killed_mid_handler_loses_no_message(tmp_path: Path) -> None:
    """With wait_for_consumer_ack, a SIGKILLed worker's messages are handled again, none lost."""
    ex, q = unique("kzt.kill"), unique("kzt.killq")
    body = """
@router.route("kazoo:consumer-event-test-slow")
def slow(kz):
    record(kz, phase="start")
    time.sleep(kz.payload["Sleep"])
    record(kz, phase="done")
"""
    routes = _routes(ex, q, ', "no_ack": 0, "wait_for_consumer_ack": 1', body)
    with DaemonProcess(tmp_path, routes, workers=2) as d:
        msgs = [
            json.dumps(
                {"Event-Category": "test", "Event-Name": "slow", "Msg-ID": f"m{i}", "Sleep": 0.15}
            ).encode()
            for i in range(12)
        ]
        _publish(ex, msgs)
        started = d.wait_events(1, route="kazoo:consumer-event-test-slow")
        os.kill(started[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        done: set[str] = set()
        while time.monotonic() < deadline and len(done) < len(msgs):
            done = {e["payload"]["Msg-ID"] for e in d.events() if e.get("phase") == "done"}
            time.sleep(0.1)
        assert done == {f"m{i}" for i in range(12)}, d.logs()[-2000:]
        status = d.status()["workers"]
        assert status["worker_restarts"] >= 1
        time.sleep(0.3)
        assert _queue_depth(q)[0] == 0  # everything acked


def test_handler_that_raises_is_logged_counted_and_the_next_message_still_runs(
    tmp_path: Path,
) -> None:
    """A raising route does not kill the worker; the message is rejected (not requeued)."""
    ex, q = unique("kzt.raise"), unique("kzt.raiseq")
    body = """
@router.route("kazoo:consumer-event-test-boom")
def boom(kz):
    raise ValueError("handler bug " + kz.payload["Msg-ID"])

@router.route("kazoo:consumer-event-test-ok")
def ok(kz):
    record(kz)
"""
    routes = _routes(ex, q, ', "no_ack": 0', body)
    with DaemonProcess(tmp_path, routes, workers=1) as d:
        _publish(
            ex,
            [
                json.dumps(
                    {"Event-Category": "test", "Event-Name": "boom", "Msg-ID": "b1"}
                ).encode(),
                json.dumps(
                    {"Event-Category": "test", "Event-Name": "ok", "Msg-ID": "ok1"}
                ).encode(),
            ],
        )
        assert d.wait_events(1, route="kazoo:consumer-event-test-ok")
        time.sleep(0.3)
        st = d.status()["workers"]
        assert st["handler_error"] == 1 and st["worker_restarts"] == 0
        assert "handler bug b1" in d.logs()
        assert _queue_depth(q)[0] == 0


def test_hung_handler_is_killed_after_handler_timeout_and_others_continue(tmp_path: Path) -> None:
    """A handler that never returns gets its worker replaced after handler_timeout_ms."""
    ex, q = unique("kzt.hang"), unique("kzt.hangq")
    body = """
@router.route("kazoo:consumer-event-test-hang")
def hang(kz):
    record(kz, phase="start")
    time.sleep(3600)

@router.route("kazoo:consumer-event-test-ok")
def ok(kz):
    record(kz)
"""
    routes = _routes(ex, q, ', "no_ack": 0', body)
    config = {"handler_timeout_ms": 1000, "max_redeliveries": 1}
    with DaemonProcess(tmp_path, routes, workers=2, config=config) as d:
        _publish(
            ex,
            [json.dumps({"Event-Category": "test", "Event-Name": "hang", "Msg-ID": "h1"}).encode()],
        )
        d.wait_events(1, route="kazoo:consumer-event-test-hang")
        _publish(
            ex,
            [
                json.dumps(
                    {"Event-Category": "test", "Event-Name": "ok", "Msg-ID": f"ok{i}"}
                ).encode()
                for i in range(4)
            ],
        )
        assert len(d.wait_events(4, route="kazoo:consumer-event-test-ok")) == 4
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and d.status()["workers"]["gave_up"] < 1:
            time.sleep(0.2)
        st = d.status()["workers"]
        assert st["hung_workers"] == 2 and st["gave_up"] == 1, st
        assert "no progress" in d.logs()
        time.sleep(0.3)
        assert _queue_depth(q)[0] == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b"null",
        b'"a string"',
        b"\xff\xfe{bad utf-8}",
        b"",
        b'{"a": "'
        + b"x" * (3 * 1024 * 1024)
        + b'", "Event-Category": "test", "Event-Name": "big"}',
    ],
    ids=["not-json", "array", "null", "string", "invalid-utf8", "empty", "3MB"],
)
def test_bad_bodies_never_crash_and_are_counted(tmp_path: Path, bad: bytes) -> None:
    """Bad bodies are logged with their identity and counted; the next good message is routed."""
    ex, q = unique("kzt.bad"), unique("kzt.badq")
    body = """
@router.route("kazoo:consumer-event-test-ok", "kazoo:consumer-event-test-big")
def ok(kz):
    record(kz, size=len(kz.body))
"""
    with DaemonProcess(tmp_path, _routes(ex, q, ', "no_ack": 0', body), workers=1) as d:
        _publish(
            ex,
            [
                bad,
                json.dumps(
                    {"Event-Category": "test", "Event-Name": "ok", "Msg-ID": "after"}
                ).encode(),
            ],
        )
        assert d.wait_events(1, route="kazoo:consumer-event-test-ok")
        time.sleep(0.2)
        st = d.status()["workers"]
        if bad.startswith(b'{"a"'):
            assert d.wait_events(1, route="kazoo:consumer-event-test-big")
        else:
            assert st["bad_message"] == 1, st
            assert "dropped message from exchange" in d.logs()
        assert st["worker_restarts"] == 0
        assert _queue_depth(q)[0] == 0


def test_oversize_message_is_rejected_by_the_manager(tmp_path: Path) -> None:
    """A body over max_message_bytes never reaches a worker; it is rejected and counted."""
    ex, q = unique("kzt.big"), unique("kzt.bigq")
    body = """
@router.route("kazoo:consumer-event")
def any_(kz):
    record(kz)
"""
    config = {"max_message_bytes": 100000}
    with DaemonProcess(
        tmp_path, _routes(ex, q, ', "no_ack": 0', body), workers=1, config=config
    ) as d:
        _publish(ex, [b'{"x": "' + b"y" * 200000 + b'"}', b'{"Event-Category": "t"}'])
        evs = d.wait_events(2)  # connection open + the small one
        assert any(e["payload"].get("Event-Category") == "t" for e in evs)
        assert d.status()["manager"]["oversize"] == 1
        assert "over max_message_bytes" in d.logs()


def test_consistent_worker_keeps_one_key_on_one_worker(tmp_path: Path) -> None:
    """consistent-worker hashes the named field: every message of one Call-ID meets one worker."""
    ex, q = unique("kzt.cw"), unique("kzt.cwq")
    body = """
@router.route("kazoo:consumer-event-test-cw")
def cw(kz):
    record(kz)
"""
    extra = ', "consistent-worker": 1, "consistent-worker-key": "Call-ID"'
    with DaemonProcess(tmp_path, _routes(ex, q, extra, body), workers=4) as d:
        msgs = [
            json.dumps(
                {"Event-Category": "test", "Event-Name": "cw", "Call-ID": f"c{i % 5}", "Seq": i}
            ).encode()
            for i in range(60)
        ]
        _publish(ex, msgs)
        evs = d.wait_events(60, route="kazoo:consumer-event-test-cw")
        assert len(evs) == 60
        pids: dict[str, set[int]] = {}
        order: dict[str, list[int]] = {}
        for e in evs:
            pids.setdefault(e["payload"]["Call-ID"], set()).add(e["pid"])
            order.setdefault(e["payload"]["Call-ID"], []).append(e["payload"]["Seq"])
        assert all(len(p) == 1 for p in pids.values()), pids
        assert all(seqs == sorted(seqs) for seqs in order.values())  # per-key order kept


def test_round_robin_spreads_messages_over_workers(tmp_path: Path) -> None:
    """Without consistent-worker, deliveries are spread over every worker."""
    ex, q = unique("kzt.rr"), unique("kzt.rrq")
    body = """
@router.route("kazoo:consumer-event-test-rr")
def rr(kz):
    record(kz)
"""
    with DaemonProcess(tmp_path, _routes(ex, q, "", body), workers=3) as d:
        _publish(ex, [json.dumps({"Event-Category": "test", "Event-Name": "rr"}).encode()] * 30)
        evs = d.wait_events(30, route="kazoo:consumer-event-test-rr")
        assert len({e["pid"] for e in evs}) == 3


def test_event_callback_receives_every_event_with_its_name(tmp_path: Path) -> None:
    """With event_callback, one function gets kazoo:mod-init then kazoo:consumer-event."""
    ex, q = unique("kzt.cb"), unique("kzt.cbq")
    routes = f"""
def on_event(kz):
    if kz.event_name == "kazoo:mod-init":
        kz.subscribe({ex!r}, "topic", {q!r}, "#")
    else:
        record(kz)
"""
    with DaemonProcess(tmp_path, routes, workers=1, config={"event_callback": "on_event"}) as d:
        _publish(ex, [b'{"Event-Category": "whatever", "Event-Name": "x"}'], "some.key")
        evs = d.wait_events(2)
        names = {e["route"] for e in evs}
        assert names == {"kazoo:consumer-event"}
        assert {e["rk"] for e in evs} == {None, "some.key"}  # connection event + the message


def test_async_handler_can_query_and_publish_through_the_daemon(tmp_path: Path) -> None:
    """An async route awaits kz.aquery/kz.apublish; a sync route uses kz.query/kz.publish."""
    ex, q = unique("kzt.async"), unique("kzt.asyncq")
    body = f"""
@router.route("kazoo:consumer-event-test-ask")
def answer(kz):
    kz.publish("targeted", kz.payload["Server-ID"],
               {{"Msg-ID": kz.payload["Msg-ID"], "Answer": kz.payload["Q"] * 2}})

@router.route("kazoo:consumer-event-test-go")
async def go(kz):
    reply = await kz.aquery({ex!r}, "ask", {{"Event-Category": "test", "Event-Name": "ask",
                                            "Q": 21}}, timeout_ms=3000)
    await kz.apublish({ex!r}, "done", {{"Event-Category": "test", "Event-Name": "done",
                                        "Answer": reply["Answer"]}})

@router.route("kazoo:consumer-event-test-done")
def done(kz):
    record(kz)
"""
    with DaemonProcess(tmp_path, _routes(ex, q, "", body), workers=2) as d:
        _publish(ex, [b'{"Event-Category": "test", "Event-Name": "go"}'], "go")
        evs = d.wait_events(1, route="kazoo:consumer-event-test-done")
        assert evs and evs[0]["payload"]["Answer"] == 42, d.logs()[-2000:]


def test_subscribe_outside_mod_init_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """kz.subscribe in a consumer route raises UsageError (C corrupts its tables instead)."""
    ex, q = unique("kzt.sub"), unique("kzt.subq")
    body = """
@router.route("kazoo:consumer-event-test-sub")
def sub(kz):
    try:
        kz.subscribe("x", "topic", "y", "#")
    except Exception as exc:
        record(kz, error=type(exc).__name__, message=str(exc))
"""
    with DaemonProcess(tmp_path, _routes(ex, q, "", body), workers=1) as d:
        _publish(ex, [b'{"Event-Category": "test", "Event-Name": "sub"}'])
        [ev] = d.wait_events(1, route="kazoo:consumer-event-test-sub")
        assert ev["error"] == "UsageError" and "mod-init" in ev["message"]


def test_prefetch_bounds_unacked_deliveries_when_workers_are_slow(tmp_path: Path) -> None:
    """With ack-after-handler the broker keeps what the pool cannot take (prefetch)."""
    ex, q = unique("kzt.pf"), unique("kzt.pfq")
    body = """
@router.route("kazoo:consumer-event-test-slow")
def slow(kz):
    time.sleep(0.5)
"""
    routes = _routes(ex, q, ', "no_ack": 0, "prefetch": 5', body)
    with DaemonProcess(tmp_path, routes, workers=1) as d:
        _publish(ex, [b'{"Event-Category": "test", "Event-Name": "slow"}'] * 50)
        time.sleep(1.0)
        ready, _ = _queue_depth(q)
        assert ready >= 40  # at most 5 unacked were taken from the queue
        assert d.status()["workers"]["inflight"] <= 5


def test_ack_after_handler_keeps_flowing_past_the_prefetch_window(tmp_path: Path) -> None:
    """Acks reach the broker, so more messages than `prefetch` are all handled and acked."""
    ex, q = unique("kzt.flow"), unique("kzt.flowq")
    body = """
@router.route("kazoo:consumer-event-test-flow")
def flow(kz):
    if kz.payload["N"] % 100 == 99:
        record(kz)
"""
    routes = _routes(ex, q, ', "no_ack": 0, "prefetch": 20', body)
    with DaemonProcess(tmp_path, routes, workers=3) as d:
        msgs = [json.dumps({"Event-Category": "test", "Event-Name": "flow", "N": i}).encode()
                for i in range(1000)]
        _publish(ex, msgs)
        assert len(d.wait_events(10, route="kazoo:consumer-event-test-flow", timeout=20)) == 10
        time.sleep(0.3)
        assert d.status()["workers"]["done"] == 1000


def test_a_consumer_whose_queue_is_deleted_is_declared_again(tmp_path: Path) -> None:
    """When the broker cancels a consumer (queue deleted), the daemon re-declares and resumes."""
    ex, q = unique("kzt.del"), unique("kzt.delq")
    body = """
@router.route("kazoo:consumer-event-test-del")
def d(kz):
    record(kz)
"""
    with DaemonProcess(tmp_path, _routes(ex, q, "", body), workers=1) as d:
        conn = pika_connection()
        conn.channel().queue_delete(q)
        conn.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if _queue_depth(q)[1] == 1:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        _publish(ex, [b'{"Event-Category": "test", "Event-Name": "del"}'])
        assert d.wait_events(1, route="kazoo:consumer-event-test-del")
        assert d.status()["manager"]["consumer_restarts"] >= 1


def test_graceful_stop_acks_what_the_workers_finish(tmp_path: Path) -> None:
    """SIGTERM while routes run: consumers are cancelled, running routes finish and are acked."""
    ex, q = unique("kzt.stop"), unique("kzt.stopq")
    body = """
@router.route("kazoo:consumer-event-test-stop")
def slow(kz):
    time.sleep(0.3)
    record(kz)
"""
    routes = _routes(ex, q, ', "no_ack": 0, "auto_delete": 0', body)
    d = DaemonProcess(tmp_path, routes, workers=2).start()
    try:
        _publish(ex, [b'{"Event-Category": "test", "Event-Name": "stop"}'] * 4)
        d.wait_events(1, route="kazoo:consumer-event-test-stop")
    finally:
        assert d.stop() == 0
    handled = len(d.events())
    ready, _ = _queue_depth(q)
    # Everything a route finished was acked: only the unhandled rest is back in the queue.
    assert ready == 4 - handled, (ready, handled)
    conn = pika_connection()
    conn.channel().queue_delete(q)
    conn.close()


def test_binding_event_key_and_subkey_choose_the_route_name(tmp_path: Path) -> None:
    """A subscription's event_key/event_subkey name the fields routes are chosen by (ER-6/ER-7)."""
    ex, q = unique("kzt.keys"), unique("kzt.keysq")
    body = """
@router.route("kazoo:consumer-event-blf-flush-all", "kazoo:consumer-event-type-action")
def blf(kz):
    record(kz)
"""
    extra = ', "event_key": "Type", "event_subkey": "Action"'
    with DaemonProcess(tmp_path, _routes(ex, q, extra, body), workers=1) as d:
        _publish(ex, [b'{"Type": "BLF", "Action": "Flush_All"}', b'{"Event-Name": "x"}'])
        evs = d.wait_events(2)
        assert sorted(e["route"] for e in evs) == [
            "kazoo:consumer-event-blf-flush-all",
            "kazoo:consumer-event-type-action",  # empty values fall back to the names (ER-7)
        ]
