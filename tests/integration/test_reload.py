"""SIGHUP reloads the routes file by replacing workers one at a time (real daemon and broker).

Deliveries flow (ack after the route) while the routes file changes and SIGHUP arrives: every
delivery is handled exactly once, none is lost, and once the reload finished the new route
handles everything. A routes file that does not import keeps the old workers.
"""

from __future__ import annotations

import collections
import json
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.integration.daemon_harness import (
    ROUTES_PRELUDE,
    DaemonProcess,
    pika_connection,
    unique,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ROUTES = """
import time

@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe({{"exchange": {exchange!r}, "type": "topic", "queue": {queue!r},
                  "routing": "rl.#", "wait_for_consumer_ack": 1}})

@router.route("kazoo:consumer-event-rl-tick")
def tick(kz):
    time.sleep(0.002)  # so deliveries are in flight while workers are replaced
    record(kz, version={version}, n=kz.payload["N"], redelivered=kz.redelivered)
"""


def _routes(exchange: str, queue: str, version: int) -> str:
    return textwrap.dedent(ROUTES.format(exchange=exchange, queue=queue, version=version))


def _publisher(exchange: str, numbers: range, rate: float) -> None:
    conn = pika_connection()
    try:
        ch = conn.channel()
        for n in numbers:
            body = json.dumps({"Event-Category": "rl", "Event-Name": "tick", "N": n})
            ch.basic_publish(exchange, "rl.tick", body)
            time.sleep(1 / rate)
    finally:
        conn.close()


def _wait_status(d: DaemonProcess, key: str, value: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.status()["workers"].get(key) == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"workers.{key} did not reach {value}:\n{d.logs()[-4000:]}")


def test_sighup_replaces_workers_without_losing_or_repeating_a_delivery(tmp_path: Path) -> None:
    exchange, queue = unique("kzt-rl"), unique("kzt-rl-q")
    d = DaemonProcess(tmp_path, _routes(exchange, queue, 1), workers=3)
    with d:
        old_pids = {w["pid"] for w in d.status()["workers"]["workers"]}
        first = threading.Thread(target=_publisher, args=(exchange, range(0, 900), 300.0))
        first.start()
        time.sleep(1.0)
        d.routes_path.write_text(ROUTES_PRELUDE + _routes(exchange, queue, 2))
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        first.join(30)
        _wait_status(d, "reloads", 1, 30)
        # after the reload: only the new route runs
        _publisher(exchange, range(900, 1000), 500.0)
        events = d.wait_events(1000, timeout=30)
        status = d.status()
    numbers = collections.Counter(e["n"] for e in events)
    assert len(events) == 1000, f"{len(events)} handled; missing {set(range(1000)) - set(numbers)}"
    assert set(numbers) == set(range(1000))
    assert max(numbers.values()) == 1, [n for n, c in numbers.items() if c > 1]
    assert not any(e["redelivered"] for e in events)
    versions = {e["version"] for e in events if e["n"] >= 900}
    assert versions == {2}
    assert {e["version"] for e in events} == {1, 2}
    new_pids = {w["pid"] for w in status["workers"]["workers"]}
    assert not old_pids & new_pids
    assert status["workers"]["worker_restarts"] == 0
    assert "routes reloaded, 3 workers replaced" in d.logs()


def test_a_routes_file_that_does_not_import_keeps_the_old_workers(tmp_path: Path) -> None:
    exchange, queue = unique("kzt-rl"), unique("kzt-rl-q")
    d = DaemonProcess(tmp_path, _routes(exchange, queue, 1), workers=2)
    with d:
        # every worker has imported the routes once it handled a delivery (round-robin)
        _publisher(exchange, range(2), 100.0)
        assert len(d.wait_events(2)) == 2
        old_pids = {w["pid"] for w in d.status()["workers"]["workers"]}
        d.routes_path.write_text(ROUTES_PRELUDE + "def broken(:\n")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "routes not reloaded" not in d.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "routes not reloaded" in d.logs()
        assert {w["pid"] for w in d.status()["workers"]["workers"]} == old_pids
        d.routes_path.write_text(ROUTES_PRELUDE + _routes(exchange, queue, 1))
        _publisher(exchange, range(2, 5), 100.0)
        assert len(d.wait_events(5)) == 5
