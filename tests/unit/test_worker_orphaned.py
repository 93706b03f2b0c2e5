"""Issue 8: after the manager is SIGKILLed, a worker stops running the deliveries it still
holds (their acks could no longer reach the broker) and exits with one log line."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest

from kazoo_amqp.core import pipe
from kazoo_amqp.core.config import settings_from_mapping
from kazoo_amqp.workers.child import Worker
from kazoo_amqp.workers.router import Router


class Services:
    batching = False
    current_seq = 0
    loop: Any = None

    def flush(self) -> set[int]:
        return set()

    def discard(self, seq: int) -> None:
        pass

    def close(self) -> None:
        pass


def _worker(handled: list[int], delay: float) -> Worker:
    router = Router()

    @router.route("kazoo:consumer-event-a-b")
    def handle(kz: Any) -> None:
        handled.append(kz.payload["N"])
        time.sleep(delay)

    settings = settings_from_mapping(
        {"node_hostname": "h"}, base_dir="/tmp", default_app_version="t"
    )
    return Worker(index=7, settings=settings, router=router, callback=None, services=Services())  # type: ignore[arg-type]


def _delivery(n: int) -> bytes:
    body = b'{"Event-Category": "a", "Event-Name": "b", "N": %d}' % n
    return pipe.encode_delivery(n, 0, 1, False, "rk", "ex", body)


def test_worker_stops_running_buffered_deliveries_once_the_manager_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, child = socket.socketpair()
    handled: list[int] = []
    worker = _worker(handled, delay=0.05)
    manager.sendall(b"".join(_delivery(n) for n in range(20)))
    manager.close()  # SIGKILL: the manager's end goes away with 20 deliveries buffered
    with caplog.at_level(logging.WARNING, logger="kazoo_amqp.worker"):
        worker.serve(child)  # returns; no BrokenPipeError escapes
    child.close()
    assert len(handled) <= 2, handled
    records = [r for r in caplog.records if r.name == "kazoo_amqp.worker"]
    assert len(records) == 1 and "the manager is gone" in records[0].getMessage()
    assert records[0].exc_info is None


def test_a_failed_outcome_write_is_the_same_quiet_exit(caplog: pytest.LogCaptureFixture) -> None:
    manager, child = socket.socketpair()
    handled: list[int] = []
    worker = _worker(handled, delay=0.1)
    manager.sendall(_delivery(1))

    def close_soon() -> None:
        time.sleep(0.02)
        manager.close()

    closer = threading.Thread(target=close_soon)
    closer.start()
    with caplog.at_level(logging.WARNING, logger="kazoo_amqp.worker"):
        worker.serve(child)
    closer.join()
    child.close()
    assert handled == [1]
    records = [r for r in caplog.records if r.name == "kazoo_amqp.worker"]
    assert len(records) == 1 and "the manager is gone" in records[0].getMessage()


def test_a_live_manager_gets_every_outcome() -> None:
    manager, child = socket.socketpair()
    handled: list[int] = []
    worker = _worker(handled, delay=0.002)
    manager.sendall(b"".join(_delivery(n) for n in range(10)) + pipe.encode_stop())
    worker.serve(child)
    child.close()
    assert handled == list(range(10))
    got = manager.recv(65536)
    manager.close()
    assert got
