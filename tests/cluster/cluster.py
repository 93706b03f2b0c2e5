"""The 3-node RabbitMQ cluster of ``scripts/rabbit-cluster``, driven from Python for the tests.

Every method is one call of the script (the one implementation of starting, stopping and
clustering the nodes); this class only adds the node URLs and a pika helper. Nodes are numbered
1..3 like the script (kzc1..kzc3@localhost on 127.0.0.1:5681..5683 by default).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pika

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "rabbit-cluster"
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
NODES = (1, 2, 3)


class Cluster:
    """Start/stop the cluster or one node, raise alarms, pause nodes; URLs of the nodes."""

    def __init__(self) -> None:
        base = int(os.environ.get("KZ_CLUSTER_PORT_BASE", "5680"))
        self.ports = {n: base + n for n in NODES}

    @staticmethod
    def available() -> bool:
        return os.path.exists(SERVER) and shutil.which("erl") is not None

    def url(self, node: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.ports[node]}"

    def urls(self, order: tuple[int, ...] = NODES) -> list[str]:
        """``amqp_connection`` for a daemon: every node, the first one preferred."""
        return [self.url(n) for n in order]

    def _run(self, *args: str, timeout: float = 180.0) -> str:
        proc = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"scripts/rabbit-cluster {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}"
            )
        return proc.stdout.strip()

    def running(self) -> bool:
        """All three nodes up and clustered."""
        return (
            subprocess.run(
                [str(SCRIPT), "status"], capture_output=True, timeout=60, check=False
            ).returncode
            == 0
        )

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def stop_node(self, node: int) -> None:
        self._run("stop-node", str(node))

    def start_node(self, node: int) -> None:
        self._run("start-node", str(node))

    def ensure_all_up(self) -> None:
        """Start whatever node a test left stopped (``start`` only starts what is down)."""
        if not self.running():
            self.start()

    def pid(self, node: int) -> int:
        return int(self._run("pid", str(node)))

    def pause(self, node: int, seconds: float) -> None:
        """SIGSTOP the node's Erlang VM for ``seconds``, then SIGCONT (always)."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def alarm(self, node: int, on: bool) -> None:
        self._run("alarm", str(node), "on" if on else "off")

    def connection(self, node: int) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url(node) + "?heartbeat=0"))

    def first_up(self) -> int:
        for n in NODES:
            try:
                self.connection(n).close()
                return n
            except pika.exceptions.AMQPError:
                continue
        raise RuntimeError("no cluster node answers")

    def declare_quorum(self, exchange: str, queue: str, key: str = "#", node: int = 0) -> None:
        """A durable topic exchange and a quorum queue bound to it (test-side sinks)."""
        conn = self.connection(node or self.first_up())
        try:
            ch = conn.channel()
            ch.exchange_declare(exchange, "topic", durable=True)
            ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            ch.queue_bind(queue, exchange, key)
        finally:
            conn.close()

    def delete(self, queues: Sequence[str] = (), exchanges: Sequence[str] = ()) -> None:
        """Best-effort cleanup of what a test declared (quorum queues outlive restarts)."""
        try:
            conn = self.connection(self.first_up())
        except Exception:
            return
        try:
            for q in queues:
                ch = conn.channel()
                try:
                    ch.queue_delete(q)
                except pika.exceptions.AMQPError:
                    pass
            for e in exchanges:
                ch = conn.channel()
                try:
                    ch.exchange_delete(e)
                except pika.exceptions.AMQPError:
                    pass
        finally:
            try:
                conn.close()
            except Exception:
                pass

    def drain(self, queue: str, *, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every message left in ``queue`` as parsed JSON (basic_get with ack until empty)."""
        import json

        deadline = time.monotonic() + timeout
        out: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                conn = self.connection(self.first_up())
                ch = conn.channel()
                while time.monotonic() < deadline:
                    method, _, body = ch.basic_get(queue, auto_ack=True)
                    if method is None:
                        break
                    out.append(json.loads(body))
                conn.close()
                return out
            except pika.exceptions.AMQPError:
                time.sleep(0.5)  # a queue whose leader moves answers again shortly
        raise TimeoutError(f"could not drain {queue} in {timeout}s ({len(out)} read)")
