"""Extra RabbitMQ nodes for failover tests: own name, port, data dir; started and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class RabbitNode:
    """One throw-away RabbitMQ node listening on 127.0.0.1:<port>."""

    def __init__(self, base: Path, name: str, port: int | None = None,
                 *, tls: tuple[Path, Path, Path] | None = None,
                 extra_conf: str = "", plugins: tuple[str, ...] = ()) -> None:
        """``tls`` = (ca, cert, key) files: listen with TLS on ``tls_port`` as well.

        ``extra_conf`` is appended to rabbitmq.conf (later keys win); ``plugins`` are enabled.
        """
        self.extra_conf = extra_conf
        self.plugins = plugins
        self.dir = base / name
        self.name = name
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else 0
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}"

    @staticmethod
    def available() -> bool:
        return os.path.exists(SERVER) and shutil.which("erl") is not None

    def start(self, timeout: float = 60.0) -> RabbitNode:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "rabbitmq.conf"
        text = f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        if self.tls:
            ca, cert, key = self.tls
            text += (
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\n"
                f"ssl_options.keyfile = {key}\nssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        conf.write_text(text + self.extra_conf)
        (self.dir / "env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        env = dict(os.environ)
        env.update(
            {
                "RABBITMQ_NODENAME": f"{self.name}@localhost",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
                "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                "RABBITMQ_PID_FILE": str(self.dir / "pid"),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                "HOME": env.get("HOME", "/root"),
            }
        )
        self._log = open(self.dir / "console.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [SERVER], env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {self.name} exited:\n{self.console()}")
            if port_open(self.port) and (not self.tls or port_open(self.tls_port)):
                time.sleep(0.3)
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"RabbitMQ node {self.name} did not listen in {timeout}s")

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <this node> ARGS`` (only ever against this private node)."""
        env = dict(os.environ)
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        proc = subprocess.run(
            [CTL, "-n", f"{self.name}@localhost", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def set_memory_alarm(self, on: bool) -> None:
        """Raise or clear this node's memory alarm (publishers get connection.blocked)."""
        alarm = "{resource_limit, memory, node()}"
        call = f"set_alarm({{{alarm}, []}})" if on else f"clear_alarm({alarm})"
        self.ctl("eval", f"rabbit_alarm:{call}.")

    def console(self) -> str:
        p = self.dir / "console.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self, *, hard: bool = False, timeout: float = 30.0) -> None:
        """Stop the node by PID: SIGKILL with ``hard``, else SIGTERM (graceful)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
