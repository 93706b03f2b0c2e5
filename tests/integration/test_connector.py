"""Behaviour of the daemon against the real RabbitMQ: publish, query, subscribe, event routes."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp import BadPayload, BadRoutingKey, Client, QueryTimeout
from tests.integration.daemon_harness import (
    DaemonProcess,
    drain,
    iter_corpus,
    pika_connection,
    unique,
)

pytestmark = pytest.mark.broker


class Responder:
    """A Kazoo-style responder: replies to ``targeted`` with routing key = the request Server-ID."""

    def __init__(
        self, exchange: str, routing_key: str, *, delay: float = 0.0, echo_msg_id: bool = True
    ) -> None:
        self.exchange, self.routing_key, self.delay = exchange, routing_key, delay
        self.echo_msg_id = echo_msg_id
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Responder:
        self.thread.start()
        assert self._ready.wait(10), "responder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        conn = pika_connection()
        ch = conn.channel()
        ch.exchange_declare(self.exchange, "topic", auto_delete=True)
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, self.exchange, self.routing_key)
        self._ready.set()
        pending: list[tuple[float, dict[str, Any]]] = []
        while not self._stop.is_set():
            method, _props, body = ch.basic_get(q, auto_ack=True)
            if method is not None:
                req = json.loads(body)
                self.requests.append(req)
                pending.append((time.monotonic() + self.delay, req))
            now = time.monotonic()
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                req = item[1]
                reply = {
                    "Event-Category": "test",
                    "Event-Name": "reply",
                    "Echo": req.get("Question"),
                    "Server-ID": "kazoo_apps@kz2-<0.1.0>",
                }
                if self.echo_msg_id:
                    reply["Msg-ID"] = req["Msg-ID"]
                ch.basic_publish("targeted", req["Server-ID"], json.dumps(reply))
            if method is None:
                conn.sleep(0.002)
        conn.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    routes = """
    @router.route("kazoo:consumer-event")
    def anything(kz):
        record(kz)
    """
    with DaemonProcess(
        tmp_path,
        routes,
        config={
            "amqp_query_timeout_sec": 0,
            "amqp_query_timeout_micro": 300000,
        },
    ) as d:
        yield d


def test_publish_injects_kazoo_fields(daemon: DaemonProcess) -> None:
    """A publish carries App-Name/App-Version/Node/Msg-ID/Server-ID, JSON content type, headers."""
    ex, q = unique("kzt.pub"), unique("kzt.q")
    conn = pika_connection()
    ch = conn.channel()
    ch.exchange_declare(ex, "topic", auto_delete=True)
    ch.queue_declare(q, auto_delete=True)
    ch.queue_bind(q, ex, "a.#")
    with daemon.client() as c:
        result = c.publish(
            ex,
            "a.b",
            '{"Event-Category": "directory", "Event-Name": "reg_success", "x": "a/b", "n": 1.50}',
            headers="k1=v1;k2=v2",
        )
    [(_method, props, body)] = drain(ch, q, 1)
    conn.close()
    doc = json.loads(body)
    assert props.content_type == "application/json"
    assert props.headers == {"k1": "v1", "k2": "v2"}
    assert list(doc)[:4] == ["Event-Category", "Event-Name", "x", "n"]
    assert doc["App-Name"] == "kamailio"
    assert doc["Node"] == f"kamailio@{daemon.node}"
    assert doc["Msg-ID"] == result["msg_id"]
    assert doc["Server-ID"] == f"kamailio@{daemon.node}-<1>-targeted-0"
    assert b'"x": "a\\/b"' in body and b'"n": 1.50' in body  # json-c spaced form, lexeme kept


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("not json", BadPayload),
        ("[1, 2]", BadPayload),
        ("null", BadPayload),
        ('"text"', BadPayload),
    ],
)
def test_publish_rejects_bad_payloads_with_typed_errors(
    daemon: DaemonProcess, payload: str, error: type[Exception]
) -> None:
    """Non-JSON and non-object payloads are refused with BadPayload; the daemon keeps serving."""
    with daemon.client() as c:
        with pytest.raises(error):
            c.publish("amq.topic", "x", payload)
        assert c.ping()


def test_publish_rejects_routing_key_over_255_bytes(daemon: DaemonProcess) -> None:
    """A routing key over 255 bytes is refused with BadRoutingKey (C returns -1)."""
    with daemon.client() as c, pytest.raises(BadRoutingKey):
        c.publish("amq.topic", "k" * 256, {"a": 1})


def test_query_returns_the_correlated_reply(daemon: DaemonProcess) -> None:
    """A query publishes with our Server-ID and returns the reply carrying its Msg-ID."""
    ex = unique("kzt.query")
    with Responder(ex, "q.#") as responder, daemon.client() as c:
        reply = c.query(
            ex,
            "q.ask",
            {"Event-Category": "test", "Event-Name": "ask", "Question": 42},
            timeout_ms=2000,
        )
    assert reply["Echo"] == 42
    assert reply["AMQP-Broker-Zone"] == "local"
    assert isinstance(reply["AMQP-Received"], int)
    assert reply["Server-ID"] == "consumer://1/kazoo_apps@kz2-<0.1.0>"
    assert responder.requests[0]["Server-ID"] == f"kamailio@{daemon.node}-<1>-targeted-0"


def test_query_with_caller_supplied_msg_id_is_correlated(daemon: DaemonProcess) -> None:
    """Unlike C, a caller's own Msg-ID is the correlation key, so the query still works."""
    ex = unique("kzt.query")
    with Responder(ex, "q.#"), daemon.client() as c:
        reply = c.query(ex, "q.ask", {"Msg-ID": "my-own-id-1", "Question": "x"}, timeout_ms=2000)
    assert reply["Msg-ID"] == "my-own-id-1"


@pytest.mark.parametrize(("timeout_ms", "expected_ms"), [(None, 300), (150, 150), (700, 700)])
def test_query_times_out_within_50_ms_of_its_timeout(
    daemon: DaemonProcess, timeout_ms: int | None, expected_ms: int
) -> None:
    """No reply: QueryTimeout at the default (300 ms here) or the per-call timeout, +-50 ms."""
    with daemon.client() as c:
        c.ping()
        started = time.monotonic()
        with pytest.raises(QueryTimeout):
            c.query("amq.topic", unique("nobody"), {"a": 1}, timeout_ms=timeout_ms)
        elapsed = (time.monotonic() - started) * 1000
    assert expected_ms - 5 <= elapsed <= expected_ms + 50, elapsed


def test_late_reply_reaches_no_other_waiter(daemon: DaemonProcess) -> None:
    """A reply arriving after its query timed out is counted and dropped, given to no one."""
    slow, fast = unique("kzt.slow"), unique("kzt.fast")
    with Responder(slow, "s.#", delay=0.4), Responder(fast, "f.#", delay=0.6):
        results: dict[str, Any] = {}

        def waiter() -> None:
            with Client(daemon.socket) as c2:
                results["fast"] = c2.query(fast, "f.x", {"Question": "fast"}, timeout_ms=3000)

        t = threading.Thread(target=waiter)
        t.start()
        with daemon.client() as c, pytest.raises(QueryTimeout):
            c.query(slow, "s.x", {"Question": "slow"}, timeout_ms=100)
        t.join(10)
        time.sleep(0.5)
    assert results["fast"]["Echo"] == "fast"
    assert daemon.status()["manager"]["late_replies"] >= 1
    # Late replies are not routed by default (the only event is the connection-open one).
    assert [e for e in daemon.events() if e["rk"] is not None] == []


def _corpus_body(case: dict[str, Any]) -> bytes:
    if case.get("payload_raw_b64"):
        return base64.b64decode(case["payload_raw_b64"])
    if case.get("payload_raw"):
        return str(case["payload_raw"]).encode()
    return json.dumps(case["payload"]).encode()


def test_every_consumed_corpus_message_runs_its_expected_event_route(
    tmp_path: Path, shared_dir: Path
) -> None:
    """Each `consume` case of ../shared/corpus, sent through RabbitMQ, runs its expected route."""
    cases = [(name, c) for name, c in iter_corpus(shared_dir, "consume") if not c.get("synthetic")]
    assert cases, "no consume cases in the corpus"
    prefix = unique("kzt.corpus")
    expected_routes = sorted(
        {c["expected_event_route"] for _, c in cases if c.get("expected_event_route")}
    )
    # One queue per production queue name, bound with every key the corpus uses for it.
    by_queue: dict[str, dict[str, Any]] = {}
    for name, case in cases:
        binding = case.get("binding") or {}
        etype = case.get("exchange_type") or "topic"
        queue = f"{prefix}.{binding.get('queue', name)}"
        sub = by_queue.setdefault(
            queue,
            {
                "exchange": f"{prefix}.{case['exchange']}",
                "type": etype,
                "queue": queue,
                "routing": [],
                "no_ack": 0 if binding.get("no_ack") is False else 1,
                "auto_delete": 1,
            },
        )
        key = "" if etype == "fanout" else binding.get("binding_key", "#")
        if key not in sub["routing"]:
            sub["routing"].append(key)
    uniq_subs = list(by_queue.values())
    routes = "SUBS = " + repr(uniq_subs) + "\n"
    routes += (
        "@router.route('kazoo:mod-init')\ndef init(kz):\n"
        "    for s in SUBS:\n        kz.subscribe(s)\n"
    )
    for i, route in enumerate(expected_routes):
        routes += f"@router.route({route!r})\ndef h{i}(kz):\n    record(kz)\n"
    with DaemonProcess(tmp_path, routes, workers=2) as d:
        conn = pika_connection()
        ch = conn.channel()
        for _, case in cases:
            ch.basic_publish(
                f"{prefix}.{case['exchange']}", case["routing_key"], _corpus_body(case)
            )
        conn.close()
        routed = [c for _, c in cases if c.get("expected_event_route")]
        d.wait_events(len(routed) + 1, timeout=15)
        time.sleep(0.3)  # anything extra (a duplicate) would show up now
        events = [e for e in d.events() if e["rk"] is not None]  # not connection events
        by_msg = {e["payload"].get("Msg-ID"): e["route"] for e in events}
        for name, case in cases:
            expected = case.get("expected_event_route")
            msg_id = (case.get("payload") or {}).get("Msg-ID")
            if expected and msg_id:
                assert by_msg.get(msg_id) == expected, (name, by_msg.get(msg_id), expected)
        assert len(events) == len(routed), d.logs()[-3000:]


def test_mandatory_publish_without_a_bound_queue_fails_at_once(daemon: DaemonProcess) -> None:
    """mandatory=True turns RabbitMQ's NO_ROUTE return into PublishFailed (C only logs it)."""
    from kazoo_amqp import PublishFailed

    with daemon.client() as c:
        with pytest.raises(PublishFailed, match="NO_ROUTE"):
            c.publish("amq.topic", unique("nobody.bound"), {"a": 1}, mandatory=True, confirm=True)
        assert c.publish("amq.topic", unique("nobody.bound"), {"a": 1})["msg_id"]


def test_mandatory_query_without_a_consumer_fails_before_its_timeout(
    daemon: DaemonProcess,
) -> None:
    """A mandatory query nobody can receive fails fast instead of waiting for the timeout."""
    from kazoo_amqp import PublishFailed

    with daemon.client() as c:
        started = time.monotonic()
        with pytest.raises(PublishFailed, match="NO_ROUTE"):
            c.query("amq.topic", unique("nobody.bound"), {"a": 1}, timeout_ms=5000,
                    mandatory=True)
        assert time.monotonic() - started < 1.0


def test_publish_batch_confirms_every_message_and_reports_each_outcome(
    daemon: DaemonProcess,
) -> None:
    """A batch is one round trip; each message gets its own result or error, in order."""
    from kazoo_amqp import BadPayload as _BadPayload

    ex, q = unique("kzt.batch"), unique("kzt.batchq")
    conn = pika_connection()
    ch = conn.channel()
    ch.exchange_declare(ex, "topic", auto_delete=True)
    ch.queue_declare(q, auto_delete=True)
    ch.queue_bind(q, ex, "#")
    messages = [(ex, f"k.{i}", {"Event-Category": "b", "N": i}) for i in range(500)]
    messages.insert(7, (ex, "k.bad", "not json"))
    with daemon.client() as c:
        results = c.publish_batch(messages, confirm=True)
    assert len(results) == 501
    assert isinstance(results[7], _BadPayload)
    good = [r for i, r in enumerate(results) if i != 7]
    assert all(isinstance(r, dict) and r["server_id"] == 1 for r in good)
    got = drain(ch, q, 500)
    conn.close()
    assert [json.loads(b)["N"] for _, _, b in got] == list(range(500))  # order kept


def test_confirmed_publish_returns_the_broker_and_persistent_sets_delivery_mode_2(
    daemon: DaemonProcess,
) -> None:
    """confirm=True answers after the broker's confirm, naming the broker; persistent is
    delivery mode 2, the default stays transient like the C module."""
    ex, q = unique("kzt.dur"), unique("kzt.durq")
    conn = pika_connection()
    ch = conn.channel()
    ch.exchange_declare(ex, "topic", auto_delete=True)
    ch.queue_declare(q, auto_delete=True)
    ch.queue_bind(q, ex, "#")
    with daemon.client() as c:
        confirmed = c.publish(ex, "a", {"n": 1}, confirm=True, persistent=True)
        accepted = c.publish(ex, "b", {"n": 2})
    assert confirmed["server_id"] == 1 and confirmed["msg_id"]
    assert set(accepted) == {"msg_id"}
    got = drain(ch, q, 2)
    conn.close()
    assert [props.delivery_mode for _, props, _ in got] == [2, None]


def test_failure_after_acceptance_is_counted_and_logged_not_raised(
    daemon: DaemonProcess,
) -> None:
    """A publish to a missing exchange: the accept-mode caller gets its Msg-ID, the daemon
    counts and logs the refusal; the confirm-mode caller gets the broker's typed error."""
    from kazoo_amqp import BrokerRefused

    missing = unique("kzt.missing")
    with daemon.client() as c:
        before = c.status()["manager"].get("publish_failed_after_accept", 0)
        msg_id = c.publish(missing, "x", {"a": 1})["msg_id"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = c.status()["manager"]["publish_failed_after_accept"]
            if after > before:
                break
            time.sleep(0.05)
        assert after == before + 1
        with pytest.raises(BrokerRefused, match=missing):
            c.publish(missing, "x", {"a": 1}, confirm=True)
        assert c.ping()
    assert msg_id in daemon.logs() and "failed after it was accepted" in daemon.logs()


async def test_async_publish_batch(daemon: DaemonProcess) -> None:
    """AsyncClient.publish_batch accepts dicts and returns one result per message."""
    from kazoo_amqp import AsyncClient

    async with AsyncClient(daemon.socket) as c:
        results = await c.publish_batch(
            [{"exchange": "amq.topic", "routing_key": unique("x"), "payload": {"a": i}}
             for i in range(50)]
        )
    assert len(results) == 50 and all(isinstance(r, dict) for r in results)


def test_late_reply_is_routed_when_late_replies_is_route(tmp_path: Path) -> None:
    """late_replies = "route" hands a reply nobody waits for to the event routes, like C."""
    routes = """
@router.route("kazoo:consumer-event-test-reply")
def late(kz):
    record(kz)
"""
    ex = unique("kzt.late")
    with DaemonProcess(tmp_path, routes, workers=1, config={"late_replies": "route"}) as d:
        with Responder(ex, "s.#", delay=0.3), d.client() as c:
            with pytest.raises(QueryTimeout):
                c.query(ex, "s.x", {"Question": "late"}, timeout_ms=100)
            [event] = d.wait_events(1, route="kazoo:consumer-event-test-reply", timeout=5)
        assert event["payload"]["Echo"] == "late"
        assert event["rk"] == f"kamailio@{d.node}-<1>-targeted-0"
        assert event["payload"]["Server-ID"].startswith("consumer://1/")
