"""Fuzzing of the I/O edges (issue 8): the local socket protocol end to end, the AMQP frame
decoder, a real Connection against a broker sending garbage, config files.

Every rejection must be a typed error (or a connection closed with a typed reason); nothing
escapes into the event loop, nothing hangs, the server keeps serving and holds no memory for
finished connections. ``KAZOO_FUZZ_EXAMPLES=20000`` raises the example counts (the TCP tests
run a tenth of that: each example is a real connection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kazoo_amqp.amqp.codec import FrameDecoder as AmqpDecoder
from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.core.config import load_config
from kazoo_amqp.core.framing import FrameDecoder, encode_frame
from kazoo_amqp.core.subscription import parse_subscription
from kazoo_amqp.core.wire import decode_response
from kazoo_amqp.errors import ERRORS_BY_NAME, FrameError, KazooError, MissingField
from kazoo_amqp.ipc.server import IpcServer
from tests.fuzz.test_core_properties import SUB_KEYS, json_values, nasty_text
from tests.integration.fake_broker import FakeBroker
from tests.unit.amqp.harness import Rig
from tests.unit.test_amqp_codec import STREAM, Sink

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("KAZOO_FUZZ_EXAMPLES", "300"))
TCP_EXAMPLES = max(EXAMPLES // 10, 20)


def _settings(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# ================================================================ the local socket, end to end


class FuzzBackend:
    """The real publish path (Manager.submit on the in-memory broker) and real queries (capped
    at 50 ms so an example never waits long); presence is refused with a typed error."""

    def __init__(self, rig: Rig) -> None:
        self.manager = rig.manager
        self.submit = rig.manager.submit

    async def query(
        self,
        exchange: str,
        routing_key: str,
        payload: Any,
        headers: str | None,
        timeout_ms: int | None,
        *,
        mandatory: bool = False,
    ) -> str:
        return await self.manager.query(
            exchange, routing_key, payload, headers, min(timeout_ms or 50, 50), mandatory=mandatory
        )

    async def pua_publish(self, payload: Any, package: str | None) -> dict[str, Any]:
        raise MissingField("fuzz: no presence writer here", field="Event-Package")

    def status(self) -> dict[str, Any]:
        return dict(self.manager.status())


class Served:
    """An IpcServer on the real publisher, in its own loop thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _l, ctx: self.loop_errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rig = Rig("a", publish_buffer_size=1000)
        self.server: IpcServer | None = None
        self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> None:
        await self.rig.__aenter__()
        self.server = IpcServer(
            self.path,
            FuzzBackend(self.rig),  # type: ignore[arg-type]
            max_frame=64 * 1024,
            max_pending_bytes=256 * 1024,
        )
        await self.server.start()

    async def _stop(self) -> None:
        assert self.server is not None
        await self.server.stop(1.0)
        await self.rig.__aexit__()

    def stop(self) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = str(tmp_path_factory.mktemp("fz") / "s.sock")
    s = Served(path)
    yield s
    s.stop()


OPS = ["publish", "publish_batch", "query", "pua_publish", "status", "ping"]
FIELDS = [
    "exchange", "routing_key", "payload", "headers", "timeout_ms", "mandatory", "confirm",
    "persistent", "messages", "package",
]  # fmt: skip
field_values = st.one_of(
    json_values,
    st.sampled_from(["amq.topic", "", "consumer://1/k", "consumer://x", "k" * 300, "\ud800"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([1e30, -1, 0, 600_000, 600_001, float("inf")]),
)
request_objects = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(min_value=-5, max_value=2**40), json_values),
        "op": st.one_of(st.sampled_from(OPS), nasty_text),
    },
    optional={name: field_values for name in FIELDS},
)
batch_objects = st.fixed_dictionaries(
    {"id": st.integers(0, 100), "op": st.just("publish_batch"), "messages": st.lists(
        st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6), max_size=4)},
)  # fmt: skip


def _json_frame(obj: Any) -> bytes:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a buggy client would send them
    return encode_frame(json.dumps(obj, ensure_ascii=True, allow_nan=True).encode())


frames = st.lists(
    st.one_of(
        request_objects.map(_json_frame),
        batch_objects.map(_json_frame),
        json_values.map(_json_frame),
        st.binary(max_size=200).map(encode_frame),
        st.binary(max_size=12),  # raw bytes: lengths that announce anything
        st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
        st.integers(1, 100_000).map(lambda d: encode_frame(b"[" * d)),
    ),
    min_size=1,
    max_size=8,
)


def _exchange(path: str, data: bytes) -> list[Any]:
    """Send ``data``, half-close, read every reply until the server closes (or 10 s: a hang)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first (a broken length prefix): its reply is still there
        decoder = FrameDecoder(1 << 24)
        replies = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                pytest.fail("the server neither answered nor closed within 10 s: a hang")
            if not chunk:
                break
            replies += [decode_response(f) for f in decoder.feed(chunk)]
        return replies
    finally:
        sock.close()


@_settings(TCP_EXAMPLES)
@given(frames)
def test_socket_requests_of_any_shape_get_results_or_typed_errors(
    served: Served, chunks: list[bytes]
) -> None:
    replies = _exchange(served.path, b"".join(chunks))
    for reply in replies:
        if not reply.ok:
            assert reply.error_type in ERRORS_BY_NAME, reply
            assert not reply.error_message.startswith("internal error"), reply
    assert served.loop_errors == []
    # the daemon is alive and serving
    [pong] = _exchange(served.path, _json_frame({"id": 1, "op": "ping"}))
    assert pong.ok and pong.result is True


def test_socket_fuzz_left_no_memory_behind(served: Served) -> None:
    """Runs after the fuzz test (same module): every connection closed, nothing held."""
    assert served.server is not None
    stats = served.server.stats

    async def settled() -> bool:
        for _ in range(200):
            if stats.open_connections == 0 and served.server.inflight == 0:  # type: ignore[union-attr]
                return True
            await asyncio.sleep(0.01)
        return False

    assert served._call(settled())
    assert stats.pending_bytes == 0


# ================================================================ the AMQP frame decoder


def _feed_all(data: bytes, cuts: list[int]) -> None:
    dec = AmqpDecoder(Sink(), 4096)
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        dec.feed(data[last:cut])
        last = cut
    dec.feed(data[last:])


@_settings(EXAMPLES)
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=6))
def test_amqp_decoder_random_bytes_give_events_or_frame_error(data: bytes, cuts: list[int]) -> None:
    try:
        _feed_all(data, cuts)
    except FrameError:
        pass


@_settings(EXAMPLES)
@given(
    st.lists(
        st.tuples(st.integers(0, len(STREAM) - 1), st.integers(0, 255), st.sampled_from("xdi")),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, len(STREAM)),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_amqp_decoder_mutated_valid_streams_give_events_or_frame_error(
    edits: list[tuple[int, int, str]], truncate: int, cuts: list[int]
) -> None:
    data = bytearray(STREAM)
    for pos, value, kind in edits:
        pos %= max(len(data), 1)
        if kind == "x" and data:
            data[pos] = value  # flip a byte
        elif kind == "d" and data:
            del data[pos]  # lose a byte
        else:
            data.insert(pos, value)  # add one
    try:
        _feed_all(bytes(data[:truncate] if truncate < len(data) else data), cuts)
    except FrameError:
        pass


# ================================================================ a real Connection vs garbage


garbage = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, len(STREAM)), st.binary(max_size=20)).map(
        lambda t: STREAM[: t[0]] + t[1]
    ),
    st.tuples(st.integers(0, len(STREAM) - 1), st.integers(0, 255)).map(
        lambda t: STREAM[: t[0]] + bytes([t[1]]) + STREAM[t[0] + 1 :]
    ),
)


async def _garbage_run(data: bytes, hang_up: bool) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: loop_errors.append(ctx))
    async with FakeBroker() as fake:
        conn = await Connection.connect(host="127.0.0.1", port=fake.port, user="u", password="p")
        ch = await conn.channel(confirms=True)
        pending = ch.publish("", "q", b"{}")
        fake.send(data)
        await asyncio.sleep(0.01)
        if (hang_up or not conn.closed.done()) and fake._writer is not None:
            fake._writer.close()
        reason = await asyncio.wait_for(asyncio.shield(conn.closed), 5)  # else: a hang
        assert reason is None or isinstance(reason, KazooError), repr(reason)
        if pending is not None:
            try:
                await asyncio.wait_for(pending, 5)
            except KazooError:
                pass
        conn.abort()
    assert loop_errors == [], loop_errors


@_settings(TCP_EXAMPLES)
@given(garbage, st.booleans())
def test_a_broker_sending_garbage_closes_the_connection_with_a_typed_reason(
    data: bytes, hang_up: bool
) -> None:
    asyncio.run(_garbage_run(data, hang_up))


# ================================================================ config files


toml_fragments = st.one_of(
    nasty_text,
    st.sampled_from(
        [
            'node_hostname = "h"\n',
            'amqp_connection = ["amqp://guest:guest@127.0.0.1:5672"]\n',
            "[kamailio]\n",
            "socket_mode = 0o1777\n",
            "socket_group = 5\n",
            "amqp_query_timeout = 1e400\n",
            "publish_buffer_timeout_ms = 99999999999999999999\n",
            "amqp_query_timeout_sec = -1\n",
            'routes = "/nonexistent.py"\n',
            "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
            'x = """\n',
            "\x00",
        ]
    ),
    st.tuples(st.sampled_from([*FIELDS, "workers", "prefetch", "db_url"]), json_values).map(
        lambda kv: f"{kv[0]} = {json.dumps(kv[1], ensure_ascii=True)}\n"
    ),
)


@_settings(EXAMPLES)
@given(st.lists(toml_fragments, max_size=8))
def test_random_toml_files_load_or_raise_config_error(tmp_path: Path, parts: list[str]) -> None:
    path = tmp_path / "k.toml"
    path.write_bytes("".join(parts).encode("utf-8", "surrogatepass"))
    try:
        load_config(str(path), default_app_version="t")
    except KazooError:
        pass


def test_fuzz_inputs_are_reproducible() -> None:
    """The seeds above are hypothesis's; a plain random check keeps the helpers honest."""
    rnd = random.Random(8)
    _feed_all(STREAM, [rnd.randrange(len(STREAM)) for _ in range(5)])


# ================================================================ what is accepted is sendable


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name))


@_settings(EXAMPLES)
@given(st.dictionaries(st.sampled_from(SUB_KEYS), json_values, max_size=10))
def test_an_accepted_subscription_can_be_declared(desc: dict[str, Any]) -> None:
    """Every string of an accepted description encodes as UTF-8: nothing fails later, at
    each connect, in the AMQP layer (issue 8: lone surrogates)."""
    try:
        sub = parse_subscription(desc)
    except KazooError:
        return
    for text in _strings(sub):
        text.encode("utf-8")


_PREPARE_RIG = Rig("a")  # never started: prepare() validates and injects without I/O


@_settings(EXAMPLES)
@given(nasty_text, nasty_text, st.one_of(st.none(), nasty_text))
def test_an_accepted_publish_can_be_encoded(exchange: str, routing_key: str, headers: Any) -> None:
    """Publisher.prepare either refuses with a typed error or gives names the codec can send."""
    from kazoo_amqp.amqp.codec import encode_headers, publish_method_frame

    try:
        m = _PREPARE_RIG.manager.publisher.prepare(exchange, routing_key, {"A": 1}, headers)
    except KazooError:
        return
    publish_method_frame(1, m.exchange, m.routing_key, False)
    encode_headers(m.headers)
