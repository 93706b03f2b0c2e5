"""The README's first-success walkthrough, run as written (on a copy of ``examples/``).

``scripts/run`` is replaced by the two commands it ends with (``db init`` and ``run`` with the
example config; RabbitMQ is already up and the venv is this interpreter's); every command of the
second terminal is run as the README prints it, with ``.venv/bin/`` pointing at this interpreter
and a unique node name so parallel runs do not share queues.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.daemon_harness import REPO, pika_connection

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


def _wait_consumer(queue: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    conn = pika_connection()
    try:
        while True:
            ch = conn.channel()
            try:
                if ch.queue_declare(queue, passive=True).method.consumer_count >= 1:
                    return
                ch.close()
            except Exception:
                pass
            assert time.monotonic() < deadline, f"no consumer on {queue}"
            time.sleep(0.1)
    finally:
        conn.close()


def _block(text: str, marker: str) -> list[str]:
    start = text.index(f"<!-- walkthrough:{marker} -->")
    body = text[start:].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in body.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_walkthrough_works(tmp_path: Path, rabbitmq: object) -> None:
    readme = (REPO / "README.md").read_text()
    assert _block(readme, "daemon") == ["scripts/run"]
    run_script = (REPO / "scripts" / "run").read_text()
    assert '.venv/bin/kazoo-amqp db init --config "$CONFIG"' in run_script
    assert 'exec .venv/bin/kazoo-amqp run --config "$CONFIG"' in run_script
    assert "CONFIG=${1:-examples/kazoo-amqp.toml}" in run_script
    commands = _block(readme, "commands")

    # the repository as a new user has it: examples/ (with a unique node) and a .venv/bin
    node = f"walk-{uuid.uuid4().hex[:8]}.example.net"
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    for name in ("kazoo-amqp.toml", "routes.py"):
        f = tmp_path / "examples" / name
        f.write_text(f.read_text().replace("sbc1.example.net", node))
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "kazoo-amqp").write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kazoo_amqp "$@"\n'
    )
    (bin_dir / "kazoo-amqp").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))

    def sh(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    config = "examples/kazoo-amqp.toml"
    init = sh(f".venv/bin/kazoo-amqp db init --config {config}")
    assert init.returncode == 0, init.stderr
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(bin_dir / "kazoo-amqp"), "run", "--config", config],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        socket_path = tmp_path / "examples" / "kazoo-amqp.sock"
        deadline = time.monotonic() + 30
        while "running: node" not in log_path.read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert socket_path.exists()
        # the example's consumers are declared after start: wait for them, like a user would
        for queue in (f"presence-dialog-{node}", f"registrar-flush-{node}"):
            _wait_consumer(queue)
        *publishes, select = commands
        for line in publishes:
            out = sh(line)
            assert out.returncode == 0, (line, out.stderr)
            assert re.fullmatch(r'\{"msg_id": ?"[^"]+"\}\n', out.stdout), out.stdout
        deadline = time.monotonic() + 15
        while True:
            out = sh(select)
            assert out.returncode == 0, out.stderr
            rows = ast.literal_eval(out.stdout)
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        ((user, domain, event, body),) = rows
        assert (user, domain, event) == ("1000", "example.net", "dialog")
        assert "<state>confirmed</state>" in body
        while "registration flush for alice@example.net" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        assert daemon.wait(30) == 0, log_path.read_text()
