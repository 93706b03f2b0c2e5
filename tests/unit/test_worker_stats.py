"""A worker's handler-duration reports and log identity (workers/child.py over a socketpair)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import pytest

from kazoo_amqp.core import pipe
from kazoo_amqp.core.config import settings_from_mapping
from kazoo_amqp.core.framing import FrameDecoder
from kazoo_amqp.core.stats import HANDLER_BUCKETS, HistogramSet
from kazoo_amqp.obs.logs import JsonFormatter
from kazoo_amqp.workers import child
from kazoo_amqp.workers.child import Worker
from kazoo_amqp.workers.router import Router


class FakeServices:
    escape_char = "%"
    encode_high_bytes = "utf8"
    batching = False
    current_seq = 0
    loop: Any = None

    def flush(self) -> set[int]:
        return set()

    def discard(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


def _router() -> Router:
    router = Router()
    handler_log = logging.getLogger("user.routes")

    @router.route("kazoo:consumer-event-t-ok")
    def ok(kz: Any) -> None:
        handler_log.warning("handled %s", kz.payload["N"])

    @router.route("kazoo:consumer-event-t-bad")
    def bad(kz: Any) -> None:
        raise RuntimeError("bad on purpose")

    return router


def _delivery(seq: int, name: str) -> bytes:
    body = json.dumps({"Event-Category": "t", "Event-Name": name, "N": seq, "Msg-ID": f"m{seq}",
                       "Call-ID": f"c{seq}"}).encode()  # fmt: skip
    return pipe.encode_delivery(seq, 0, 1, False, f"t.{name}", "tex", body)


def _serve(
    settings_extra: dict[str, Any], stats: HistogramSet | None
) -> tuple[socket.socket, threading.Thread, list[str]]:
    settings = settings_from_mapping(
        {"node_hostname": "n", **settings_extra}, base_dir="/tmp", default_app_version="1"
    )
    worker = Worker(
        index=7, settings=settings, router=_router(), callback=None,
        services=FakeServices(), stats=stats,  # type: ignore[arg-type]
    )  # fmt: skip
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=worker.serve, args=(theirs,), daemon=True)
    thread.start()
    ours.sendall(pipe.encode_init([(None, None)], {1: "local"}))
    return ours, thread


def _read_frames(sock: socket.socket, until: float) -> list[bytes]:
    decoder = FrameDecoder()
    frames: list[bytes] = []
    sock.settimeout(0.05)
    while time.monotonic() < until:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        frames.extend(decoder.feed(data))
    return frames


def test_a_worker_reports_route_durations_by_outcome_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(child, "STATS_EVERY", 0.2)
    sock, thread = _serve({"http_listen": "127.0.0.1:0"}, HistogramSet(HANDLER_BUCKETS))
    sock.sendall(b"".join(_delivery(i, "ok") for i in range(1, 6)) + _delivery(6, "bad")
                 + _delivery(7, "nothing"))  # fmt: skip
    frames = _read_frames(sock, time.monotonic() + 1.0)  # idle after the batch: stats still come
    sock.sendall(pipe.encode_stop())
    thread.join(5)
    sock.close()
    outcomes = [o for f in frames if f[:1] == b"O" for o in pipe.decode_outcomes(f)]
    assert outcomes == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 1), (7, 3)]
    rows = [r for f in frames if f[:1] == b"M" for r in pipe.decode_stats(f).rows]
    merged = HistogramSet(HANDLER_BUCKETS)
    for route, outcome, counts, total in rows:
        merged.merge((route, outcome), counts, total)
    counts = {labels: h.count for labels, h in merged}
    assert counts == {
        ("kazoo:consumer-event-t-ok", "ok"): 5,
        ("kazoo:consumer-event-t-bad", "error"): 1,
    }


def test_without_metrics_a_worker_sends_only_outcomes() -> None:
    sock, thread = _serve({}, None)
    sock.sendall(_delivery(1, "ok") + _delivery(2, "bad"))
    frames = _read_frames(sock, time.monotonic() + 0.5)
    sock.sendall(pipe.encode_stop())
    thread.join(5)
    sock.close()
    assert frames and all(f[:1] == b"O" for f in frames)


def test_with_json_logs_a_route_authors_log_line_carries_the_message_identity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    formatter = JsonFormatter()
    formatted: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatted.append(json.loads(formatter.format(record)))

    handler = Capture()
    logging.getLogger().addHandler(handler)
    try:
        sock, thread = _serve({"log_format": "json"}, None)
        sock.sendall(_delivery(3, "ok") + _delivery(4, "bad"))
        _read_frames(sock, time.monotonic() + 0.5)
        sock.sendall(pipe.encode_stop())
        thread.join(5)
        sock.close()
    finally:
        logging.getLogger().removeHandler(handler)
    user = next(line for line in formatted if line["logger"] == "user.routes")
    assert user["message"] == "handled 3"
    assert (user["msg_id"], user["call_id"], user["routing_key"], user["exchange"]) == (
        "m3", "c3", "t.ok", "tex"
    )  # fmt: skip
    assert user["route"] == "kazoo:consumer-event-t-ok" and user["worker"] == 7
    error = next(line for line in formatted if line["logger"] == "kazoo_amqp.worker")
    assert error["msg_id"] == "m4" and error["route"] == "kazoo:consumer-event-t-bad"
