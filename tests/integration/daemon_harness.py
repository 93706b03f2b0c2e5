"""Run the real daemon as a subprocess against the real RabbitMQ, for behaviour tests.

``DaemonProcess`` writes a config and a routes file into a temporary directory, starts
``python -m kazoo_amqp run``, waits until its socket answers and a broker is up, and stops it with
SIGTERM (asserting a clean exit). Routes written by tests record what they saw by appending JSON
lines to ``events.jsonl`` (``record(kz)`` below is prepended to every routes file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika

REPO = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("KAZOO_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")

ROUTES_PRELUDE = """
import json, os
from kazoo_amqp import Router
router = Router()
EVENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "events.jsonl")

def record(kz, **extra):
    line = {"route": kz.event_name, "rk": kz.routing_key, "payload": kz.payload,
            "pid": os.getpid(), **extra}
    with open(EVENTS, "a") as f:
        f.write(json.dumps(line) + "\\n")
"""


DIALOG_ROUTE = "kazoo:consumer-event-presence-dialog-update"
PRESENCE_ROUTE = "kazoo:consumer-event-presence-update"
MWI_ROUTE = "kazoo:consumer-event-presence-mwi-update"

#: The presence routes of examples/routes.py for tests (unique exchange and queue; every handler
#: records what ``kz.pua_publish_*`` returned or raised). ``presence_call`` is the presence-update
#: call: ``pua_publish_presence`` (as the example) or ``pua_publish`` (generic dispatch).
_PRESENCE_ROUTES = """
@router.route("kazoo:mod-init")
def init(kz):
    kz.subscribe({{
        "exchange": {exchange!r}, "type": "topic", "queue": {queue!r},
        "routing": ["dialog.*.*", "update.*.*", "mwi_updates.*.*"],
        "durable": False, "auto_delete": True,
        "no_ack": 0, "wait_for_consumer_ack": 1,
        "consistent-worker": 1, "consistent-worker-key": "Call-ID",
    }})


def _do(kz, call):
    try:
        result = call()
    except Exception as exc:
        record(kz, error=type(exc).__name__, message=str(exc))
        raise
    record(kz, result=result)


@router.route("kazoo:consumer-event-presence-dialog-update")
def dialog_update(kz):
    _do(kz, kz.pua_publish_dialoginfo)


@router.route("kazoo:consumer-event-presence-update")
def presence_update(kz):
    _do(kz, kz.{presence_call})


@router.route("kazoo:consumer-event-presence-mwi-update")
def mwi_update(kz):
    _do(kz, kz.pua_publish_mwi)
"""


def presence_routes(exchange: str, queue: str, presence_call: str = "pua_publish_presence") -> str:
    """The presence routes text (see ``_PRESENCE_ROUTES``), for ``DaemonProcess``."""
    return _PRESENCE_ROUTES.format(exchange=exchange, queue=queue, presence_call=presence_call)


def routes_file(path: Path, routes: str) -> Path:
    """Write ``routes`` with the harness prelude (``router``, ``record``) to ``path``."""
    path.write_text(ROUTES_PRELUDE + textwrap.dedent(routes))
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class DaemonProcess:
    """One daemon under test."""

    def __init__(
        self,
        tmp: Path,
        routes: str,
        *,
        config: dict[str, Any] | None = None,
        workers: int = 2,
        node: str | None = None,
    ) -> None:
        self.dir = tmp
        self.node = node or unique("test") + ".example.net"
        self.routes_path = tmp / "routes.py"
        routes_file(self.routes_path, routes)
        self.events_path = tmp / "events.jsonl"
        self.socket = str(tmp / "kz.sock")
        cfg: dict[str, Any] = {
            "node_hostname": self.node,
            "amqp_connection": [AMQP_URL],
            "amqp_consumer_processes": workers,
            "routes": "routes.py",
            "socket": self.socket,
            "db_url": f"sqlite:///{tmp / 'presence.db'}",
            "log_level": "info",
        }
        cfg.update(config or {})
        self.config_path = tmp / "kazoo-amqp.toml"
        self.config_path.write_text(_toml(cfg))
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_broker: bool = True, timeout: float = 20.0) -> DaemonProcess:
        try:
            return self._start(wait_broker=wait_broker, timeout=timeout)
        except BaseException:
            # Never leave a daemon (and its workers) behind when start-up fails.
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            raise

    def _start(self, *, wait_broker: bool, timeout: float) -> DaemonProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO / "src")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kazoo_amqp", "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )
        deadline = time.monotonic() + timeout
        from kazoo_amqp import Client

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            if os.path.exists(self.socket):
                try:
                    with Client(self.socket, timeout=2.0) as c:
                        st = c.status()
                    up = any(b["up"] for b in st["manager"]["brokers"])
                    alive = all(w["alive"] for w in st["workers"]["workers"])
                    if alive and (up or not wait_broker):
                        return self
                except Exception:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not become ready in {timeout}s:\n{self.logs()}")

    def client(self, timeout: float = 10.0) -> Any:
        from kazoo_amqp import Client

        return Client(self.socket, timeout=timeout)

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            result: dict[str, Any] = c.status()
            return result

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                break  # the last line is still being written (a 3 MB record): read it next time
        return events

    def wait_events(
        self, count: int, timeout: float = 10.0, route: str | None = None
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            evs = [e for e in self.events() if route is None or e["route"] == route]
            if len(evs) >= count or time.monotonic() > deadline:
                return evs
            time.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon did not stop in {timeout}s:\n{self.logs()}") from None
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        code = self.stop()
        if exc[0] is None:
            assert code == 0, f"daemon exit code {code}:\n{self.logs()}"


def _toml(cfg: dict[str, Any]) -> str:
    lines = []
    for key, value in cfg.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# -- an independent AMQP client for the test side (pika) ----------------------------------
def pika_connection(url: str = AMQP_URL) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def drain(
    channel: Any, queue: str, count: int, timeout: float = 10.0
) -> list[tuple[Any, Any, bytes]]:
    """Get up to ``count`` messages from ``queue`` (basic_get loop), waiting up to ``timeout``."""
    out: list[tuple[Any, Any, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.02)
            continue
        out.append((method, props, body))
    return out


def iter_corpus(shared: Path, direction: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((shared / "corpus").glob("*.json")):
        case = json.loads(path.read_text())
        if case.get("direction") == direction:
            yield path.stem, case
