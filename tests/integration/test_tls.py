"""amqps:// with the TLS parameters, against a RabbitMQ node with a TLS listener."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemon_harness import DaemonProcess, unique
from tests.integration.rabbit_nodes import RabbitNode

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(
        not RabbitNode.available() or shutil.which("openssl") is None,
        reason="needs rabbitmq-server and openssl (scripts/services installs RabbitMQ)",
    ),
]

ROUTES = """
@router.route("kazoo:consumer-event-connection-open")
def opened(kz):
    record(kz)
"""


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    key.chmod(0o644)
    return cert, key


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitNode, Path]]:
    base = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(base, "server")
    node = RabbitNode(base / "rabbit", "kzttls" + unique("")[1:7], tls=(cert, cert, key)).start()
    try:
        yield node, cert
    finally:
        node.stop(hard=True)


def test_amqps_with_the_ca_certificate_connects_and_publishes(
    tmp_path: Path, tls_node: tuple[RabbitNode, Path]
) -> None:
    """amqps:// + amqps_ca_cert verifies the broker certificate and works end to end."""
    node, ca = tls_node
    config = {"amqp_connection": [f"amqps://guest:guest@localhost:{node.tls_port}"],
              "amqps_ca_cert": str(ca)}
    with DaemonProcess(tmp_path, ROUTES, workers=1, config=config) as d:
        with d.client() as c:
            assert c.publish("amq.topic", "tls.test", {"a": 1}, confirm=True)["server_id"] == 1
        assert d.wait_events(1, route="kazoo:consumer-event-connection-open")


def test_amqps_with_an_unknown_ca_is_refused_with_a_clear_error(
    tmp_path: Path, tls_node: tuple[RabbitNode, Path]
) -> None:
    """A broker certificate that does not verify keeps the link down and says why."""
    node, _ = tls_node
    other, _ = _self_signed(tmp_path, "other")
    config = {"amqp_connection": [f"amqps://guest:guest@localhost:{node.tls_port}"],
              "amqps_ca_cert": str(other), "reconnect_max_ms": 500}
    d = DaemonProcess(tmp_path, ROUTES, workers=1, config=config).start(wait_broker=False)
    try:
        import time

        time.sleep(1.5)
        [broker] = d.status()["manager"]["brokers"]
        assert not broker["up"]
        assert "certificate" in broker["last_error"].lower(), broker["last_error"]
    finally:
        assert d.stop() == 0


def test_amqps_without_peer_verification_connects(
    tmp_path: Path, tls_node: tuple[RabbitNode, Path]
) -> None:
    """amqps_verify_peer = 0 accepts any certificate (as the C module's switch does)."""
    node, _ = tls_node
    config = {"amqp_connection": [f"amqps://guest:guest@127.0.0.1:{node.tls_port}"],
              "amqps_verify_peer": 0, "amqps_verify_hostname": 0}
    with DaemonProcess(tmp_path, ROUTES, workers=1, config=config) as d, d.client() as c:
        assert c.publish("amq.topic", "tls.test", {"a": 1}, confirm=True)["server_id"] == 1
