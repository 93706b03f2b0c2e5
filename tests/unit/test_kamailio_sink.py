"""The daemon's Kamailio sink against a small local HTTP server standing in for xhttp."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from kazoo_amqp.core import pipe
from kazoo_amqp.core.kamailio.settings import BridgeSettings
from kazoo_amqp.errors import QueryTimeout
from kazoo_amqp.kamailio_sink.sink import KamailioSink

ROUTES = ("kazoo:consumer-event-presence-update", "kazoo:consumer-event-directory")


class FakeKamailio:
    """Answers each POST with ``status(path, headers, body)``; records what it got."""

    def __init__(self, status: Callable[[str, dict[str, str], bytes], tuple[int, bytes]]) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        #: seconds to hold each answer (a slow route), from the request's headers
        self.delay: Callable[[dict[str, str]], float] = lambda headers: 0.0
        self.busy = 0
        self.most_busy = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:  # a stopping Kamailio closes its connections
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                path = lines[0].split()[1]
                headers = {
                    k.strip(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
                }
                body = await reader.readexactly(int(headers.get("Content-Length", 0)))
                self.requests.append((path, headers, body))
                self.busy += 1
                self.most_busy = max(self.most_busy, self.busy)
                await asyncio.sleep(self.delay(headers))
                self.busy -= 1
                code, answer = self.status(path, headers, body)
                writer.write(
                    f"HTTP/1.1 {code} X\r\nContent-Length: {len(answer)}\r\n\r\n".encode() + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def _sink(port: int, done: list[tuple[Any, int]], **kw: Any) -> KamailioSink:
    bridge = BridgeSettings(host="127.0.0.1", port=port, socket_workers=2, routes=ROUTES,
                            max_event_bytes=kw.pop("max_event_bytes", 1048576))  # fmt: skip
    return KamailioSink(bridge, on_done=lambda t, o: done.append((t, o)), reconnect_min=0.01,
                        reconnect_max=0.05, **kw)  # fmt: skip


def _delivery(
    sink: KamailioSink, body: dict[str, Any] | bytes, token: Any, rk: str = "a.b"
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    seq = sink.next_seq()
    frame = pipe.encode_delivery(seq, 0, 1, False, rk, "ex", raw)
    sink.dispatch(sink.pick(None), seq, frame, token)


async def _until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_events_run_in_the_chosen_route_and_are_acked_after_the_answer() -> None:
    kam = FakeKamailio(lambda p, h, b: (200, b""))
    await kam.start()
    done: list[tuple[Any, int]] = []
    sink = _sink(kam.port, done)
    sink.zones = {1: "local"}
    await sink.start()
    _delivery(sink, {"Event-Category": "presence", "Event-Name": "update", "Server-ID": "x"}, "t1")
    _delivery(sink, {"Event-Category": "directory", "Event-Name": "reg_flush"}, "t2")
    await _until(lambda: len(done) == 2)
    assert sorted(done) == [("t1", 0), ("t2", 0)]
    by_route = {h["X-Kazoo-Route"]: (h, json.loads(b)) for _, h, b in kam.requests}
    h, doc = by_route["kazoo:consumer-event-presence-update"]
    assert h["X-Kazoo-Routing-Key"] == "a.b"
    assert doc["AMQP-Broker-Zone"] == "local" and doc["Server-ID"] == "consumer://1/x"
    assert "kazoo:consumer-event-directory" in by_route  # the category-only fallback
    assert await sink.stop(1) == []
    await kam.stop()


async def test_no_route_bad_json_and_too_large_events_are_rejected_without_a_request() -> None:
    kam = FakeKamailio(lambda p, h, b: (200, b""))
    await kam.start()
    done: list[tuple[Any, int]] = []
    sink = _sink(kam.port, done, max_event_bytes=200)
    await sink.start()
    _delivery(sink, {"Event-Category": "nothing", "Event-Name": "here"}, "norule")
    _delivery(sink, b"not json", "bad")
    _delivery(sink, {"Event-Category": "directory", "Big": "x" * 300}, "big")
    assert done == [("norule", 2), ("bad", 2), ("big", 2)]
    assert sink.counters["no_route"] == 1 and sink.counters["too_large"] == 1
    await asyncio.sleep(0.05)
    assert kam.requests == []
    await sink.stop(0)
    await kam.stop()


async def test_a_404_from_kamailio_rejects_the_event() -> None:
    kam = FakeKamailio(lambda p, h, b: (404, b""))
    await kam.start()
    done: list[tuple[Any, int]] = []
    sink = _sink(kam.port, done)
    await sink.start()
    _delivery(sink, {"Event-Category": "directory"}, "t")
    await _until(lambda: bool(done))
    assert done == [("t", 1)]
    await sink.stop(0)
    await kam.stop()


async def test_nothing_is_acked_while_kamailio_is_down_and_it_is_sent_when_it_is_back() -> None:
    kam = FakeKamailio(lambda p, h, b: (200, b""))
    await kam.start()
    port = kam.port
    await kam.stop()
    done: list[tuple[Any, int]] = []
    sink = _sink(port, done)
    await sink.start()
    _delivery(sink, {"Event-Category": "directory"}, "t")
    await asyncio.sleep(0.3)
    assert done == [] and not sink.up
    await kam.start(port)
    await _until(lambda: bool(done))
    assert done == [("t", 0)] and len(kam.requests) == 1
    await sink.stop(0)
    await kam.stop()


def test_consistent_worker_keys_keep_their_lane() -> None:
    sink = _sink(1, [])
    assert {sink.pick(b"same-key") for _ in range(5)} == {sink.pick(b"same-key")}


async def test_mod_init_is_asked_again_after_kamailio_restarts() -> None:
    kam = FakeKamailio(lambda p, h, b: (200, b'[{"json": "{}", "where": "a:1"}]'))
    await kam.start()
    got: list[Any] = []
    sink = _sink(kam.port, [])
    sink.watch_mod_init(got.append)
    await _until(lambda: len(got) == 1)
    port = kam.port
    await kam.stop()
    await kam.start(port)
    await _until(lambda: len(got) == 2)
    assert got[0] == [{"json": "{}", "where": "a:1"}]
    await sink.stop(0)
    await kam.stop()


async def test_async_answers_continue_into_the_reply_or_the_timeout_route() -> None:
    kam = FakeKamailio(lambda p, h, b: (200, b""))
    await kam.start()
    sink = _sink(kam.port, [])
    await sink.start()
    resume = {"tindex": 5, "tlabel": 9, "reply_route": "R", "timeout_route": "T"}

    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()
    timeout: asyncio.Future[str] = loop.create_future()
    sink.answer_later(reply, resume)
    sink.answer_later(timeout, resume)
    reply.set_result('{ "ok": true }')
    timeout.set_exception(QueryTimeout("no reply", timeout_ms=1))
    await _until(lambda: len(kam.requests) == 2)
    got = sorted((h["X-Kazoo-Resume-Route"], b) for p, h, b in kam.requests)
    assert got == [("R", b'{ "ok": true }'), ("T", b"")]
    assert {(h["X-Kazoo-TIndex"], h["X-Kazoo-TLabel"]) for _, h, _ in kam.requests} == {("5", "9")}
    await sink.stop(0)
    await kam.stop()



async def test_events_of_one_consistent_worker_key_arrive_in_order_over_parallel_lanes() -> None:
    import random

    kam = FakeKamailio(lambda p, h, b: (200, b""))
    kam.delay = lambda headers: random.random() * 0.004  # routes of uneven length
    await kam.start()
    done: list[tuple[Any, int]] = []
    bridge = BridgeSettings(host="127.0.0.1", port=kam.port, socket_workers=4, routes=ROUTES)
    sink = KamailioSink(bridge, on_done=lambda t, o: done.append((t, o)))
    await sink.start()
    keys = [f"call-{n}" for n in range(6)]
    for i in range(40):
        for key in keys:  # as Consumers does for a consistent-worker subscription
            body = json.dumps({"Event-Category": "directory", "Key": key, "N": i}).encode()
            seq = sink.next_seq()
            frame = pipe.encode_delivery(seq, 0, 1, False, key, "ex", body)
            sink.dispatch(sink.pick(key.encode()), seq, frame, (key, i))
    await _until(lambda: len(done) == 240, timeout=20)
    arrived: dict[str, list[int]] = {}
    for _, _, body in kam.requests:
        doc = json.loads(body)
        arrived.setdefault(doc["Key"], []).append(doc["N"])
    assert arrived == {key: list(range(40)) for key in keys}
    assert kam.most_busy > 1  # the lanes did run in parallel
    assert sorted(o for _, o in done) == [0] * 240
    await sink.stop(1)
    await kam.stop()
