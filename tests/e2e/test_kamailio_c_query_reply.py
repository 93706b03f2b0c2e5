"""A Kazoo API served by kazoo-amqp routes, asked by Kamailio's C ``kazoo`` module.

    SIP MESSAGE (the test)  ->  Kamailio 5.6 + kazoo.so: kazoo_async_query(authn_req)
        -> RabbitMQ -> kazoo-amqp daemon: examples/authn_responder.py returns a dict
        -> targeted / the C module's Server-ID -> onreply_route: t_reply with reply fields

Nothing is faked: the requester is the C module of Debian's ``kamailio-kazoo-modules``, the
responder the real daemon with the shipped example routes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kamailio.harness import (
    HERE,
    LOCALHOST,
    _stop_process,
    _tail,
    free_udp_ports,
    kamailio_binary,
    module_dir,
)

from tests.integration.daemon_harness import AMQP_URL, DaemonProcess, unique
from tests.integration.test_replies import responder_routes

pytestmark = [pytest.mark.kamailio, pytest.mark.broker, pytest.mark.timeout(120)]

TEMPLATE = HERE / "async_query.cfg.tmpl"
REALM = "example.net"


class Kamailio:
    def __init__(self, run_dir: Path, exchange: str) -> None:
        self.dir = run_dir
        self.node = unique("kzc") + ".example.net"
        (self.sip_port,) = free_udp_ports(1)
        mdir = module_dir()
        assert mdir is not None
        values = {"MPATH": mdir.rstrip("/") + "/", "SIP_PORT": str(self.sip_port),
                  "NODE": self.node, "AMQP_URL": AMQP_URL, "EXCHANGE": exchange}  # fmt: skip
        cfg = re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], TEMPLATE.read_text())
        self.cfg = run_dir / "kamailio.cfg"
        self.cfg.write_text(cfg)
        self.log = run_dir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = kamailio_binary()
        assert binary is not None and (Path(module_dir() or "") / "kazoo.so").is_file()
        d = str(self.dir)
        args = [binary, "-DD", "-E", "-f", str(self.cfg), "-Y", d, "-P", f"{d}/kamailio.pid",
                "-w", d, "-m", "64", "-M", "16"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=d,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, _tail(self.log)
            with contextlib.suppress(TimeoutError, OSError):
                if self.sip("OPTIONS", "probe", timeout=0.3)[0] == 200:
                    return
        raise AssertionError(f"kamailio did not answer OPTIONS: {_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, grace=5)

    def sip(self, method: str, user: str, timeout: float = 8.0) -> tuple[int, dict[str, str]]:
        """Send one request from ``user@example.net``; the final status and headers."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCALHOST, 0))
            port = s.getsockname()[1]
            tag = uuid.uuid4().hex
            lines = [
                f"{method} sip:service@{REALM} SIP/2.0",
                f"Via: SIP/2.0/UDP {LOCALHOST}:{port};branch=z9hG4bK-{tag};rport",
                "Max-Forwards: 70",
                f"From: <sip:{user}@{REALM}>;tag={tag[:8]}",
                f"To: <sip:service@{REALM}>",
                f"Call-ID: kzc-{tag}",
                f"CSeq: 1 {method}",
                "Content-Length: 0",
            ]
            s.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), (LOCALHOST, self.sip_port))
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                text = s.recv(65535).decode(errors="replace")
                head, *rest = text.split("\r\n")
                code = int(head.split()[1])
                if code >= 200:
                    headers = {}
                    for line in rest:
                        name, sep, value = line.partition(":")
                        if sep:
                            headers[name.strip().lower()] = value.strip()
                    return code, headers


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Kamailio]:
    if kamailio_binary() is None or not (Path(module_dir() or "") / "kazoo.so").is_file():
        pytest.skip("Kamailio 5.6 with kazoo.so (kamailio-kazoo-modules) is not installed")
    exchange, queue = unique("kzc.registrar"), unique("kzc.authn")
    (tmp_path / "daemon").mkdir()
    (tmp_path / "kam").mkdir()
    kam = Kamailio(tmp_path / "kam", exchange)
    with DaemonProcess(tmp_path / "daemon", responder_routes(exchange, queue), workers=1) as d:
        kam.start()
        try:
            yield kam
        except BaseException:
            print(d.logs()[-3000:])
            raise
        finally:
            kam.stop()
            print(_tail(kam.log, 40))


def test_c_module_async_query_is_answered_by_a_route(stack: Kamailio) -> None:
    # the C module connects to RabbitMQ after start-up: retry the first query until then
    deadline = time.monotonic() + 20
    while True:
        code, headers = stack.sip("MESSAGE", "alice")
        if code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 200, (code, headers, _tail(stack.log))
    assert headers["x-auth-password"] == "s3cret"
    assert headers["x-account-id"] == "0a1b2c3d4e5f"
    assert headers["x-reply-msg-id"]  # the C module matched the reply on its Msg-ID
    # authn_err for an unknown user reaches the same reply route
    assert stack.sip("MESSAGE", "mallory")[0] == 403
    assert stack.sip("INVITE", "bob")[1]["x-auth-password"] == "hunter2"
