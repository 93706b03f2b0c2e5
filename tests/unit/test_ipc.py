"""The local socket API: IpcServer with a fake backend, Client and AsyncClient, on real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kazoo_amqp.core.framing import FrameDecoder, encode_frame
from kazoo_amqp.core.wire import Response, decode_response, encode_request
from kazoo_amqp.errors import (
    BadPayload,
    BadRoutingKey,
    ConfigError,
    KazooError,
    NotConnected,
    OutcomeUnknown,
    ProtocolError,
    PublishFailed,
    QueryTimeout,
    ShuttingDown,
    UsageError,
)
from kazoo_amqp.ipc import request as request_module
from kazoo_amqp.ipc.client import AsyncClient, Client
from kazoo_amqp.ipc.server import IpcServer

T = TypeVar("T")
MAX_FRAME = 1024 * 1024


class FakeBackend:
    """A publisher with the ``submit`` contract, answering by routing key:

    ``bad.sync`` is refused at once (BadRoutingKey); ``fail.bug`` raises RuntimeError at once;
    otherwise the message is accepted (recorded in ``published``, Msg-ID returned) and its
    confirm arrives later: ``fail.typed`` fails with PublishFailed, ``sleep.<s>`` confirms after
    s seconds, ``block`` when ``release`` is set, anything else on the next loop iteration.
    Failures after acceptance without ``done`` are counted in ``failed_after_accept``.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Any, str | None]] = []
        self.options: list[dict[str, Any]] = []
        self.failed_after_accept: list[tuple[str, BaseException]] = []
        self.started = threading.Event()
        self.release: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        exchange: str,
        routing_key: str,
        payload: str | dict[str, Any],
        headers: str | None = None,
        *,
        mandatory: bool = False,
        persistent: bool | None = None,
        done: Callable[[Any, BaseException | None], None] | None = None,
    ) -> str:
        if routing_key == "bad.sync":
            raise BadRoutingKey("routing key 'bad.sync' refused: pick another")
        if routing_key == "fail.bug":
            raise RuntimeError("boom")
        self.published.append((exchange, routing_key, payload, headers))
        self.options.append(
            {"mandatory": mandatory, "persistent": persistent, "confirm": done is not None}
        )
        msg_id = f"m-{len(self.published)}"

        async def confirm() -> None:
            try:
                await self._behave(routing_key)
            except BaseException as exc:
                if done is None:
                    self.failed_after_accept.append((msg_id, exc))
                else:
                    done(None, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            if done is not None:
                done(
                    {
                        "msg_id": msg_id,
                        "server_id": "zone-local",
                        "confirmed": True,
                        "exchange": exchange,
                        "routing_key": routing_key,
                    },
                    None,
                )

        task = asyncio.get_running_loop().create_task(confirm())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return msg_id

    async def _behave(self, routing_key: str) -> None:
        await asyncio.sleep(0)
        if routing_key == "fail.typed":
            raise PublishFailed("nacked by the broker (zone local)")
        if routing_key.startswith("sleep."):
            await asyncio.sleep(float(routing_key[6:]))
        if routing_key == "block":
            self.release = asyncio.Event()
            self.started.set()
            await self.release.wait()

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: str,
        headers: str | None,
        timeout_ms: int | None,
        *,
        mandatory: bool = False,
    ) -> str:
        if routing_key == "fail.bug":
            raise RuntimeError("boom")
        await self._behave(routing_key)
        if routing_key == "no-reply":
            raise QueryTimeout(f"no reply within {timeout_ms} ms", timeout_ms=timeout_ms or 0)
        echo = payload if isinstance(payload, dict) else json.loads(payload)
        return json.dumps({"Echo": echo, "Timeout": timeout_ms, "Headers": headers})

    async def pua_publish(self, payload: str, package: str | None) -> dict[str, Any]:
        return {"package": package, "rows": 1, "size": len(payload)}

    def status(self) -> dict[str, Any]:
        return {"brokers": [{"zone": "local", "state": "open"}]}


class ThreadedServer:
    """An IpcServer running in its own event loop thread, for the blocking Client."""

    def __init__(self, path: str, backend: FakeBackend | None = None, **kwargs: Any) -> None:
        self.backend = backend or FakeBackend()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        kwargs.setdefault("max_frame", MAX_FRAME)
        self.server = IpcServer(path, self.backend, **kwargs)
        self.run(self.server.start)

    def run(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        async def call() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self.thread.is_alive():
            self.run(lambda: self.server.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    path = str(tmp_path / "kz.sock")
    assert len(path.encode()) < 100, "keep test names short: AF_UNIX paths are limited"
    return path


@pytest.fixture
def make_client(sock_path: str) -> Iterator[Callable[..., Client]]:
    """Blocking clients on ``sock_path``, closed after the test."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        made.append(Client(sock_path, **kwargs))
        return made[-1]

    yield make
    for kz in made:
        kz.close()


@pytest.fixture
def threaded(sock_path: str) -> Iterator[ThreadedServer]:
    server = ThreadedServer(sock_path)
    yield server
    server.stop()


@pytest.fixture
async def served(sock_path: str) -> Any:
    backend = FakeBackend()
    server = IpcServer(sock_path, backend, max_frame=MAX_FRAME)
    await server.start()
    yield server, backend
    await server.stop(1.0)


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def read_responses(sock: socket.socket, count: int) -> list[Response]:
    """Read ``count`` responses, or fewer if the server closes the connection first."""
    decoder = FrameDecoder()
    out: list[Response] = []
    while len(out) < count:
        data = sock.recv(65536)
        if not data:
            break
        out += [decode_response(f) for f in decoder.feed(data)]
    return out


async def async_read_responses(sock: socket.socket, count: int) -> list[Response]:
    return await asyncio.to_thread(read_responses, sock, count)


# ====================================================================== blocking Client


def test_client_publish_query_pua_status_ping(threaded: ThreadedServer, sock_path: str) -> None:
    with Client(sock_path) as kz:
        assert kz.ping() is True
        result = kz.publish("callmgr", "route.req", {"Event-Name": "é"}, headers="a=1")
        assert result == {"msg_id": "m-1"}  # accepted: the daemon answers before the confirm
        assert threaded.backend.published[-1] == (
            "callmgr",
            "route.req",
            {"Event-Name": "é"},  # a dict payload travels as a JSON object
            "a=1",
        )
        reply = kz.query("targeted", "rk", '{"Q": 1}', timeout_ms=1500)
        assert reply == {"Echo": {"Q": 1}, "Timeout": 1500, "Headers": None}
        assert kz.pua_publish(b'{"From": "sip:a@b"}', package="dialog") == {
            "package": "dialog",
            "rows": 1,
            "size": 19,
        }
        status = kz.status()
        assert status["brokers"] == [{"zone": "local", "state": "open"}]
        assert status["ipc"]["requests"]["publish"] == 1
    stats = threaded.server.stats
    assert stats.requests == {"ping": 1, "publish": 1, "query": 1, "pua_publish": 1, "status": 1}
    assert stats.connections == 1


def test_client_typed_errors_keep_class_and_message(
    make_client: Callable[..., Client], threaded: ThreadedServer, sock_path: str
) -> None:
    kz = make_client()
    with pytest.raises(PublishFailed, match=r"^nacked by the broker \(zone local\)$"):
        kz.publish("e", "fail.typed", {}, confirm=True)
    with pytest.raises(QueryTimeout, match="no reply within 250 ms"):
        kz.query("e", "no-reply", {}, timeout_ms=250)
    with pytest.raises(KazooError, match="internal error: RuntimeError: boom") as info:
        kz.publish("e", "fail.bug", {})
    assert type(info.value) is KazooError
    # the connection is still fine after errors
    assert kz.publish("e", "ok", "{}", confirm=True)["confirmed"] is True
    with pytest.raises(BadRoutingKey, match="refused: pick another"):
        kz.publish("e", "bad.sync", {})  # refused at acceptance: raised in accept mode too
    assert threaded.server.stats.errors.pop("BadRoutingKey") == 1
    assert threaded.server.stats.errors == {"PublishFailed": 1, "QueryTimeout": 1, "KazooError": 1}
    kz.close()


def test_client_publish_nowait_returns_at_once_and_reports_refusals_later(
    make_client: Callable[..., Client], threaded: ThreadedServer, sock_path: str
) -> None:
    kz = make_client()
    for n in range(50):
        kz.publish_nowait("e", "ok", f'{{"N": {n}}}')
    kz.publish_nowait("e", "bad.sync", "{}")  # the daemon refuses it at acceptance
    kz.publish_nowait("e", "ok", '{"N": 50}')
    assert kz.ping() is True  # a waiting call reads past the answers it did not wait for
    errors = kz.late_errors()
    assert [type(e) for e in errors] == [BadRoutingKey]
    assert [p[2] for p in threaded.backend.published][-1] == '{"N": 50}'
    assert len(threaded.backend.published) == 51
    assert kz.late_errors() == []


def test_client_not_running_daemon(make_client: Callable[..., Client], sock_path: str) -> None:
    kz = make_client(timeout=1)
    with pytest.raises(NotConnected, match=r"is not listening on .*kazoo-amqp run --config FILE"):
        kz.publish("e", "r", {})
    assert kz.ping() is False


def test_client_rejects_bad_payloads_before_connecting(
    make_client: Callable[..., Client], sock_path: str
) -> None:
    kz = make_client()  # no daemon: these must fail before any connection attempt
    with pytest.raises(BadPayload, match="not valid UTF-8 at byte 0"):
        kz.publish("e", "r", b"\xff\xfe{}")
    with pytest.raises(BadPayload, match="cannot be serialised"):
        kz.publish("e", "r", {"x": object()})
    with pytest.raises(BadPayload, match="not list"):
        kz.publish("e", "r", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(BadPayload, match="surrogate"):
        kz.publish("e", "r", '{"a":"\ud800"}')
    with pytest.raises(UsageError, match="routing_key must be a str"):
        kz.publish("e", 5, {})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="timeout_ms"):
        kz.query("e", "r", {}, timeout_ms=-5)


def test_client_reconnects_after_server_restart(
    make_client: Callable[..., Client], sock_path: str
) -> None:
    first = ThreadedServer(sock_path)
    kz = make_client()
    assert kz.publish("e", "before", {})["msg_id"]
    first.stop()
    with pytest.raises(NotConnected):
        kz.publish("e", "while-down", {})
    second = ThreadedServer(sock_path)
    try:
        assert kz.publish("e", "after", {})["msg_id"]
        assert [p[1] for p in second.backend.published] == ["after"]
        # restart again while the client holds an open connection: transparent retry
        second.stop()
        third = ThreadedServer(sock_path)
        try:
            assert kz.publish("e", "third", {})["msg_id"]
            assert kz.query("e", "q", {"n": 1})["Echo"] == {"n": 1}
            assert [p[1] for p in third.backend.published] == ["third"]
        finally:
            third.stop()
    finally:
        second.stop()


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # the server thread; 3.12+
def test_client_works_in_a_forked_child(
    make_client: Callable[..., Client], threaded: ThreadedServer, sock_path: str
) -> None:
    kz = make_client()
    assert kz.publish("e", "parent-1", {})["msg_id"]  # the parent's connection is open
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            if kz.publish("e", "child", {"pid": os.getpid()})["msg_id"]:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert kz.publish("e", "parent-2", {})["msg_id"]  # the parent's connection still works
    keys = [p[1] for p in threaded.backend.published]
    assert keys == ["parent-1", "child", "parent-2"]
    assert threaded.server.stats.connections == 2


def test_client_gives_up_on_a_silent_daemon(
    make_client: Callable[..., Client],
    threaded: ThreadedServer,
    sock_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(request_module, "CONFIRM_WAIT", 0.2)
    kz = make_client(timeout=0.1)
    with pytest.raises(OutcomeUnknown, match=r"may have been carried out.*within 0\.2 s") as info:
        kz.publish("e", "sleep.1", {}, confirm=True)
    # the daemon was reached: the caller must not read this as "no broker, not sent"
    assert not isinstance(info.value, NotConnected)
    # the abandoned connection was dropped; the next call uses a fresh one
    assert kz.publish("e", "ok", {})["msg_id"]


def test_confirmed_publish_waits_longer_than_the_daemons_default_deadline() -> None:
    """Issue 8: a publish held in the daemon's buffer through a memory alarm must get the
    daemon's verdict, not the client's 5 s NotConnected guess."""
    from kazoo_amqp.core.config import Settings

    fields = Settings.__dataclass_fields__
    deadline = (
        fields["publish_buffer_timeout_ms"].default + fields["publish_confirm_timeout_ms"].default
    ) / 1000
    assert isinstance(deadline, float)
    for call in (
        request_module.publish("e", "k", {}, confirm=True),
        request_module.publish_batch(
            [{"exchange": "e", "routing_key": "k", "payload": {}, "confirm": True}]
        ),
    ):
        assert call.wait_with(5.0) > deadline
    assert request_module.publish("e", "k", {}).wait_with(5.0) == 5.0
    assert request_module.query("e", "k", {}, timeout_ms=100).wait_with(5.0) < 5.0


def test_client_query_waits_timeout_plus_margin(
    make_client: Callable[..., Client],
    threaded: ThreadedServer,
    sock_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(request_module, "QUERY_WAIT_MARGIN", 0.1)
    kz = make_client()
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"no answer to the query within 0\.2 s"):
        kz.query("e", "sleep.2", {}, timeout_ms=100)
    assert time.monotonic() - started < 1.5


def test_client_frame_over_the_limit_reports_why(
    make_client: Callable[..., Client], sock_path: str
) -> None:
    server = ThreadedServer(sock_path, max_frame=64 * 1024)
    try:
        kz = make_client()
        with pytest.raises(ProtocolError, match="exceeds the limit of 65536 bytes"):
            kz.publish("e", "r", {"big": "x" * 1_000_000})
        assert kz.publish("e", "r", {"small": 1})["msg_id"]
        assert server.server.stats.malformed_frames == 1
    finally:
        server.stop()


# ====================================================================== AsyncClient


async def test_async_client_round_trips(served: Any, sock_path: str) -> None:
    _, backend = served
    async with AsyncClient(sock_path) as kz:
        assert await kz.ping() is True
        assert (await kz.publish("x", "rk", {"a": 1})) == {"msg_id": "m-1"}
        assert backend.published == [("x", "rk", {"a": 1}, None)]
        assert await kz.query("x", "q", b'{"b": 2}', headers="h=1") == {
            "Echo": {"b": 2},
            "Timeout": None,
            "Headers": "h=1",
        }
        assert (await kz.pua_publish("{}", "presence"))["package"] == "presence"
        assert (await kz.status())["ipc"]["open_connections"] == 1


async def test_async_client_typed_errors(served: Any, sock_path: str) -> None:
    async with AsyncClient(sock_path) as kz:
        with pytest.raises(PublishFailed, match="nacked by the broker"):
            await kz.publish("e", "fail.typed", {}, confirm=True)
        with pytest.raises(QueryTimeout):
            await kz.query("e", "no-reply", {}, timeout_ms=10)
        with pytest.raises(KazooError, match="internal error: RuntimeError: boom") as info:
            await kz.publish("e", "fail.bug", {})
        assert type(info.value) is KazooError
        with pytest.raises(UsageError, match="package must be None, 'presence'"):
            await kz.pua_publish("{}", "bogus")
        with pytest.raises(BadPayload):
            await kz.publish("e", "r", b"\xc3\x28")


@pytest.mark.parametrize("max_inflight", [1024, 8])
async def test_async_client_1000_concurrent(sock_path: str, max_inflight: int) -> None:
    backend = FakeBackend()
    server = IpcServer(
        sock_path, backend, max_frame=MAX_FRAME, max_inflight_per_connection=max_inflight
    )
    await server.start()
    try:
        async with AsyncClient(sock_path) as kz:
            results = await asyncio.gather(
                *(
                    kz.publish(f"ex{i}", "sleep.0.01" if i % 3 else "rk", {"i": i}, confirm=True)
                    for i in range(1000)
                )
            )
        assert [r["exchange"] for r in results] == [f"ex{i}" for i in range(1000)]
        assert len(backend.published) == 1000
        assert server.stats.connections == 1
    finally:
        await server.stop(1.0)


async def test_async_out_of_order_replies_matched_by_id(served: Any, sock_path: str) -> None:
    async with AsyncClient(sock_path) as kz:
        slow = asyncio.create_task(kz.publish("slow", "sleep.0.3", {}, confirm=True))
        medium = asyncio.create_task(kz.publish("medium", "sleep.0.1", {}, confirm=True))
        fast = asyncio.create_task(kz.publish("fast", "rk", {}, confirm=True))
        done_order: list[str] = []
        for task in asyncio.as_completed([slow, medium, fast]):
            done_order.append((await task)["exchange"])
        assert done_order == ["fast", "medium", "slow"]


async def test_raw_pipelined_replies_come_back_out_of_order(served: Any, sock_path: str) -> None:
    sock = raw_connect(sock_path)
    requests = [
        encode_request(
            1, "publish", exchange="a", routing_key="sleep.0.3", payload="{}", confirm=True
        ),
        encode_request(
            2, "publish", exchange="b", routing_key="sleep.0.1", payload="{}", confirm=True
        ),
        encode_request(3, "ping"),
    ]
    sock.sendall(b"".join(requests))
    responses = await async_read_responses(sock, 3)
    assert [r.id for r in responses] == [3, 2, 1]
    assert responses[1].result["exchange"] == "b"
    sock.close()


async def test_async_close_fails_pending_calls(served: Any, sock_path: str) -> None:
    _, backend = served
    kz = AsyncClient(sock_path)
    pending = asyncio.create_task(kz.publish("e", "block", {}, confirm=True))
    await asyncio.to_thread(backend.started.wait, 5)
    await kz.close()
    with pytest.raises(NotConnected, match="was closed"):
        await pending
    with pytest.raises(NotConnected, match="is closed"):
        await kz.status()
    assert await kz.ping() is False
    backend.release.set()


async def test_async_client_reconnects_after_restart(sock_path: str) -> None:
    backend = FakeBackend()
    server = IpcServer(sock_path, backend, max_frame=MAX_FRAME)
    await server.start()
    kz = AsyncClient(sock_path)
    assert await kz.ping()
    await server.stop(0.1)
    assert await kz.ping() is False
    server = IpcServer(sock_path, backend, max_frame=MAX_FRAME)
    await server.start()
    try:
        assert (await kz.publish("e", "again", {}))["msg_id"]
    finally:
        await kz.close()
        await server.stop(0.1)


async def test_async_client_not_running(sock_path: str) -> None:
    async with AsyncClient(sock_path) as kz:
        with pytest.raises(NotConnected, match="is not listening on"):
            await kz.publish("e", "r", {})


# ====================================================================== malformed input


MALFORMED_KEEPS_CONNECTION = [
    ("invalid-utf8", encode_frame(b'{"id":1,"op":"ping","x":"\xff"}'), None, "not valid UTF-8"),
    ("not-json", encode_frame(b"hello"), None, "not JSON"),
    ("non-object", encode_frame(b"[1,2,3]"), None, "not an object"),
    ("unknown-op", encode_frame(b'{"id":7,"op":"explode"}'), 7, "unknown op 'explode'"),
    (
        "wrong-type",
        encode_request(8, "publish", exchange=1, routing_key="r", payload="{}"),
        8,
        "'exchange' must be a string",
    ),
]


@pytest.mark.parametrize(
    ("frame", "request_id", "message"),
    [m[1:] for m in MALFORMED_KEEPS_CONNECTION],
    ids=[m[0] for m in MALFORMED_KEEPS_CONNECTION],
)
async def test_malformed_frame_gets_protocol_error_reply(
    served: Any, sock_path: str, frame: bytes, request_id: int | None, message: str
) -> None:
    server, _ = served
    sock = raw_connect(sock_path)
    sock.sendall(frame + encode_request(99, "ping"))
    first, second = await async_read_responses(sock, 2)
    assert (first.id, first.ok, first.error_type) == (request_id, False, "ProtocolError")
    assert message in first.error_message
    assert (second.id, second.result) == (99, True)  # the connection keeps serving
    assert server.stats.malformed_frames == 1
    assert server.stats.errors["ProtocolError"] == 1
    sock.close()


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff" + b"x" * 10, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["4GiB-length", "garbage-bytes"],
)
async def test_broken_length_prefix_closes_only_that_connection(
    served: Any, sock_path: str, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    bystander = AsyncClient(sock_path)
    assert await bystander.ping()
    sock = raw_connect(sock_path)
    sock.sendall(garbage)
    responses = await async_read_responses(sock, 10)  # stops at EOF
    assert len(responses) == 1
    assert responses[0].id is None
    assert responses[0].error_type == "ProtocolError"
    assert "exceeds the limit of 1048576 bytes" in responses[0].error_message
    assert sock.recv(10) == b""  # closed
    sock.close()
    assert server.stats.malformed_frames == 1
    assert any(f"pid {os.getpid()}" in r.getMessage() for r in caplog.records)
    # the server and the other connection still work
    assert (await bystander.publish("e", "r", {}))["msg_id"]
    async with AsyncClient(sock_path) as fresh:
        assert await fresh.ping()
    await bystander.close()


async def test_requests_before_half_close_are_still_answered(served: Any, sock_path: str) -> None:
    sock = raw_connect(sock_path)
    sock.sendall(
        encode_request(
            5, "publish", exchange="e", routing_key="sleep.0.1", payload="{}", confirm=True
        )
    )
    sock.shutdown(socket.SHUT_WR)
    responses = await async_read_responses(sock, 5)
    assert [(r.id, r.ok) for r in responses] == [(5, True)]
    sock.close()


async def test_requests_of_a_vanished_client_are_carried_out(sock_path: str) -> None:
    backend = FakeBackend()
    server = IpcServer(sock_path, backend, max_frame=MAX_FRAME, max_inflight_per_connection=4)
    await server.start()
    try:
        sock = raw_connect(sock_path)
        sock.sendall(
            b"".join(
                encode_request(
                    i, "publish", exchange="e", routing_key="sleep.0.01", payload="{}", confirm=True
                )
                for i in range(20)
            )
        )
        sock.close()  # gone before any reply: 4 running, 16 in the backlog
        for _ in range(200):
            if len(backend.published) == 20 and server.inflight == 0:
                break
            await asyncio.sleep(0.01)
        assert len(backend.published) == 20
        assert server.inflight == 0
    finally:
        await server.stop(1.0)


def test_client_that_does_not_read_replies_is_throttled(
    threaded: ThreadedServer, sock_path: str
) -> None:
    count = 20_000
    sock = raw_connect(sock_path)
    requests = b"".join(encode_request(i, "ping") for i in range(count))
    sender = threading.Thread(target=sock.sendall, args=(requests,))
    sender.start()
    time.sleep(0.3)  # replies pile up unread; the server must pause reading, not buffer forever
    responses = read_responses(sock, count)
    sender.join(5)
    assert [r.id for r in responses] == list(range(count))
    sock.close()


# ====================================================================== lifecycle


async def test_stop_fails_inflight_with_shutting_down(sock_path: str) -> None:
    backend = FakeBackend()
    server = IpcServer(sock_path, backend, max_frame=MAX_FRAME)
    await server.start()
    assert os.path.exists(sock_path)
    kz = AsyncClient(sock_path)
    blocked = asyncio.create_task(kz.publish("e", "block", {}, confirm=True))
    short = asyncio.create_task(kz.publish("e", "sleep.0.05", {}, confirm=True))
    await asyncio.to_thread(backend.started.wait, 5)
    await server.stop(grace=0.3)
    assert (await short)["confirmed"]  # finished within the grace period
    with pytest.raises(ShuttingDown, match="the daemon is stopping"):
        await blocked
    assert not os.path.exists(sock_path)
    assert server.stats.errors["ShuttingDown"] == 1
    await kz.close()


async def test_requests_during_stop_are_refused(sock_path: str) -> None:
    backend = FakeBackend()
    server = IpcServer(sock_path, backend, max_frame=MAX_FRAME)
    await server.start()
    async with AsyncClient(sock_path) as kz:
        blocked = asyncio.create_task(kz.publish("e", "block", {}, confirm=True))
        await asyncio.to_thread(backend.started.wait, 5)
        stopping = asyncio.create_task(server.stop(grace=0.5))
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown, match="was not carried out"):
            await kz.publish("e", "late", {})
        assert backend.release is not None
        backend.release.set()
        assert (await blocked)["confirmed"]
        await stopping


async def test_start_refuses_a_socket_a_live_server_owns(served: Any, sock_path: str) -> None:
    other = IpcServer(sock_path, FakeBackend(), max_frame=MAX_FRAME)
    with pytest.raises(ConfigError, match=f"socket {sock_path} is in use by a running daemon"):
        await other.start()
    async with AsyncClient(sock_path) as kz:  # the first server is untouched
        assert await kz.ping()


async def test_start_replaces_a_stale_socket_file(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # a socket file nobody listens on: a daemon that died
    server = IpcServer(sock_path, FakeBackend(), max_frame=MAX_FRAME)
    await server.start()
    try:
        async with AsyncClient(sock_path) as kz:
            assert await kz.ping()
    finally:
        await server.stop(0.1)


async def test_start_creates_the_directory_and_sets_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "kz" / "s.sock")
    server = IpcServer(path, FakeBackend(), max_frame=MAX_FRAME)
    await server.start()
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
    finally:
        await server.stop(0.1)
    assert not os.path.exists(path)


async def test_start_refuses_a_path_that_is_not_a_socket(sock_path: str) -> None:
    Path(sock_path).write_text("not a socket")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        await IpcServer(sock_path, FakeBackend(), max_frame=MAX_FRAME).start()
    assert Path(sock_path).read_text() == "not a socket"


async def test_stop_is_idempotent_and_keeps_a_foreign_socket(sock_path: str) -> None:
    server = IpcServer(sock_path, FakeBackend(), max_frame=MAX_FRAME)
    await server.start()
    os.unlink(sock_path)  # someone else took the path over
    replacement = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    replacement.bind(sock_path)
    await server.stop(0.1)
    await server.stop(0.1)
    assert os.path.exists(sock_path)
    replacement.close()


def test_status_includes_ipc_counters(threaded: ThreadedServer, sock_path: str) -> None:
    sock = raw_connect(sock_path)
    sock.sendall(encode_frame(b"junk") + encode_request(1, "status"))
    _, status = read_responses(sock, 2)
    assert status.result["ipc"]["malformed_frames"] == 1
    assert status.result["ipc"]["requests"] == {"status": 1}
    sock.close()


# ====================================================================== publish semantics


async def test_accepted_publish_returns_before_the_confirm(served: Any, sock_path: str) -> None:
    _, backend = served
    async with AsyncClient(sock_path) as kz:
        result = await asyncio.wait_for(kz.publish("e", "block", {"a": 1}), 2)
        assert result == {"msg_id": "m-1"}
        assert backend.started.is_set()  # the confirm is still outstanding
        assert backend.options[-1] == {"mandatory": False, "persistent": None, "confirm": False}
        backend.release.set()  # type: ignore[union-attr]


async def test_confirmed_publish_returns_after_the_confirm(served: Any, sock_path: str) -> None:
    _, backend = served
    async with AsyncClient(sock_path) as kz:
        call = asyncio.create_task(kz.publish("e", "block", {}, confirm=True, persistent=True))
        await asyncio.to_thread(backend.started.wait, 5)
        await asyncio.sleep(0.05)
        assert not call.done()  # waits for the broker
        backend.release.set()  # type: ignore[union-attr]
        result = await asyncio.wait_for(call, 2)
        assert result["msg_id"] == "m-1" and result["server_id"] == "zone-local"
        assert backend.options[-1] == {"mandatory": False, "persistent": True, "confirm": True}


def test_failure_after_acceptance_is_not_raised_to_the_accept_mode_caller(
    make_client: Callable[..., Client], threaded: ThreadedServer
) -> None:
    kz = make_client()
    assert kz.publish("e", "fail.typed", {}) == {"msg_id": "m-1"}
    with pytest.raises(PublishFailed, match="nacked"):
        kz.publish("e", "fail.typed", {}, confirm=True)
    for _ in range(100):
        if threaded.backend.failed_after_accept:
            break
        time.sleep(0.01)
    # the backend (the daemon's publisher) owns it: see test_connector for the counter and log
    [(msg_id, exc)] = threaded.backend.failed_after_accept
    assert msg_id == "m-1" and isinstance(exc, PublishFailed)


async def test_batch_results_per_message(served: Any, sock_path: str) -> None:
    _, backend = served
    messages: list[Any] = [
        ("e", "ok.1", {}),
        ("e", "bad.sync", {}),
        ("e", "fail.bug", {}),
        {"exchange": "e", "routing_key": "fail.typed", "payload": "{}"},
        {"exchange": "e", "routing_key": "fail.typed", "payload": "{}", "confirm": True},
        {"exchange": "e", "routing_key": "sleep.0.05", "payload": {}, "persistent": False},
    ]
    async with AsyncClient(sock_path) as kz:
        results = await kz.publish_batch(messages)
        assert results[0] == {"msg_id": "m-1"}
        assert isinstance(results[1], BadRoutingKey)
        assert type(results[2]) is KazooError and "RuntimeError: boom" in str(results[2])
        assert results[3] == {"msg_id": "m-2"}  # accepted; the nack is the daemon's to log
        assert isinstance(results[4], PublishFailed)  # this one asked for the confirm
        assert results[5] == {"msg_id": "m-4"}
        confirmed = await kz.publish_batch(messages[:1] + messages[5:], confirm=True)
        assert [r["server_id"] for r in confirmed] == ["zone-local", "zone-local"]  # type: ignore[index]
    assert backend.options[3]["persistent"] is False


async def test_typed_errors_and_their_attributes_survive_the_socket(
    served: Any, sock_path: str
) -> None:
    async with AsyncClient(sock_path) as kz:
        with pytest.raises(QueryTimeout) as info:
            await kz.query("e", "no-reply", {}, timeout_ms=250)
        assert info.value.timeout_ms == 250
        with pytest.raises(BadRoutingKey, match="pick another"):
            await kz.publish("e", "bad.sync", {})


def test_timeout_ms_over_the_limit_is_refused_by_name(
    make_client: Callable[..., Client], threaded: ThreadedServer, sock_path: str
) -> None:
    kz = make_client()
    with pytest.raises(UsageError, match=r"MAX_TIMEOUT_MS"):
        kz.query("e", "r", {}, timeout_ms=10**9)
    sock = raw_connect(sock_path)  # a client that skips the check gets the daemon's answer
    sock.sendall(
        encode_request(4, "query", exchange="e", routing_key="r", payload="{}", timeout_ms=10**9)
        + encode_request(5, "ping")
    )
    refused, pong = read_responses(sock, 2)
    assert (refused.id, refused.error_type) == (4, "ProtocolError")
    assert "MAX_TIMEOUT_MS (600000)" in refused.error_message
    assert (pong.id, pong.result) == (5, True)
    sock.close()


async def test_deeply_nested_json_gets_a_typed_error_and_the_connection_goes_on(
    served: Any, sock_path: str
) -> None:
    sock = raw_connect(sock_path)
    deep = b'{"id":3,"op":"publish","payload":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    sock.sendall(encode_frame(deep) + encode_request(4, "ping"))
    nested, pong = await async_read_responses(sock, 2)
    assert nested.error_type == "ProtocolError" and "too deeply" in nested.error_message
    assert (pong.id, pong.result) == (4, True)
    sock.close()


async def test_replies_queued_before_a_broken_length_prefix_are_still_sent(
    served: Any, sock_path: str
) -> None:
    sock = raw_connect(sock_path)
    sock.sendall(
        encode_request(
            1, "publish", exchange="e", routing_key="sleep.0.1", payload="{}", confirm=True
        )
        + encode_request(2, "publish", exchange="e", routing_key="r", payload="{}")
        + b"\xff\xff\xff\xff"
    )
    responses = await async_read_responses(sock, 10)  # until the server closes
    by_id = {r.id: r for r in responses}
    assert by_id[2].result == {"msg_id": "m-2"}
    assert by_id[None].error_type == "ProtocolError"
    assert by_id[1].ok and by_id[1].result["confirmed"]  # answered before the close
    sock.close()


# ====================================================================== issue 8: bad input


async def test_start_refuses_a_directory_others_can_write_without_the_sticky_bit(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    server = IpcServer(str(shared / "s.sock"), FakeBackend(), max_frame=MAX_FRAME)
    with pytest.raises(ConfigError, match=r"writable by every user .*chmod o-w") as info:
        await server.start()
    assert info.value.key == "socket" and not (shared / "s.sock").exists()
    os.chmod(shared, 0o1777)  # /tmp-like: others cannot replace our file
    await server.start()
    await server.stop(0.1)


async def test_socket_mode_and_group_are_applied_after_bind(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    gid = os.getgid()
    server = IpcServer(
        str(path), FakeBackend(), max_frame=MAX_FRAME, socket_mode=0o600, socket_group=gid
    )
    await server.start()
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == gid
    finally:
        await server.stop(0.1)
    import grp

    name = grp.getgrgid(gid).gr_name
    server = IpcServer(str(path), FakeBackend(), max_frame=MAX_FRAME, socket_group=name)
    await server.start()
    try:
        assert os.stat(path).st_gid == gid
    finally:
        await server.stop(0.1)


async def test_an_unknown_socket_group_is_a_config_error(tmp_path: Path) -> None:
    server = IpcServer(
        str(tmp_path / "s.sock"), FakeBackend(), max_frame=MAX_FRAME, socket_group="no-such-grp"
    )
    with pytest.raises(ConfigError, match="no such group") as info:
        await server.start()
    assert info.value.key == "socket_group"


async def test_unfinished_frames_over_the_total_budget_drop_the_connection_that_crosses_it(
    sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 8: 20 connections each holding an unfinished 16 MB frame took the manager to
    343 MB. Each connection stays under the frame limit; the total is what is capped."""
    server = IpcServer(sock_path, FakeBackend(), max_frame=MAX_FRAME, max_pending_bytes=350_000)
    await server.start()
    socks = [await asyncio.to_thread(raw_connect, sock_path) for _ in range(4)]
    try:
        chunk = b"x" * 100_000
        header = (MAX_FRAME - 1).to_bytes(4, "big")  # announces almost 1 MiB, under the limit
        for sock in socks[:3]:
            sock.sendall(header + chunk)
        await asyncio.sleep(0.1)
        assert server.stats.pending_bytes == 3 * (100_004)
        assert server.stats.dropped_for_memory == 0
        socks[3].sendall(header + chunk)
        [reply] = await async_read_responses(socks[3], 1)
        assert reply.error_type == "ProtocolError" and "socket_pending_bytes" in reply.error_message
        assert await asyncio.to_thread(socks[3].recv, 10) == b""  # closed
        assert server.stats.dropped_for_memory == 1
        assert server.stats.pending_bytes == 3 * 100_004
        assert "over socket_pending_bytes = 350000" in caplog.text
        # the others still work once they finish their frame
        socks[0].close()
        await asyncio.sleep(0.1)
        assert server.stats.pending_bytes == 2 * 100_004
        async with AsyncClient(sock_path) as kz:
            assert await kz.ping()
    finally:
        for sock in socks:
            sock.close()
        await server.stop(0.1)
    assert server.stats.pending_bytes == 0
