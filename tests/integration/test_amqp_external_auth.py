"""EXTERNAL login with a TLS client certificate, against a private RabbitMQ node that has the
rabbitmq_auth_mechanism_ssl plugin (the shared broker does not)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kazoo_amqp.amqp.connection import Connection
from kazoo_amqp.errors import BrokerRefused
from tests.integration.daemon_harness import unique
from tests.integration.rabbit_nodes import RabbitNode

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(
        not RabbitNode.available() or shutil.which("openssl") is None,
        reason="needs rabbitmq-server and openssl (scripts/services installs RabbitMQ)",
    ),
]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(d: Path, name: str, cn: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert, ext = (d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem",
                           d / f"{name}.ext")  # fmt: skip
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={cn}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    key.chmod(0o644)
    return cert, key


@pytest.fixture(scope="module")
def pki_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitNode, Path]]:
    d = tmp_path_factory.mktemp("ext")
    ca = (d / "ca.pem", d / "ca.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
             str(ca[1]), "-out", str(ca[0]), "-subj", "/CN=kazoo-amqp test CA")  # fmt: skip
    server = _signed(d, "server", "localhost", ca)
    for name in ("kzclient", "nobody"):
        _signed(d, name, name, ca)
    conf = (
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n"
        "auth_mechanisms.1 = PLAIN\n"
        "auth_mechanisms.2 = EXTERNAL\n"
        "ssl_cert_login_from = common_name\n"
        # the first boot creates this user with every permission on "/": the certificate's CN
        "default_user = kzclient\n"
        "default_pass = not-used-by-external\n"
    )
    node = RabbitNode(d / "rabbit", "kztext" + unique("")[1:7], tls=(ca[0], *server),
                      extra_conf=conf, plugins=("rabbitmq_auth_mechanism_ssl",))  # fmt: skip
    node.start()
    try:
        yield node, d
    finally:
        node.stop(hard=True)


def _context(d: Path, client: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.load_cert_chain(str(d / f"{client}.pem"), str(d / f"{client}.key"))
    return ctx


async def test_external_login_with_a_client_certificate(pki_node: tuple[RabbitNode, Path]) -> None:
    node, d = pki_node
    conn = await Connection.connect(
        host="127.0.0.1", port=node.tls_port, user="ignored", password="ignored",
        ssl=_context(d, "kzclient"), server_hostname="localhost", auth_mechanism="EXTERNAL",
    )  # fmt: skip
    try:
        assert conn.is_open
        ch = await conn.channel(confirms=True)
        queue, _, _ = await ch.queue_declare("", exclusive=True)
        fut = ch.publish("", queue, b"{}")
        assert fut is not None
        await fut
    finally:
        await conn.close()


async def test_a_certificate_without_a_user_is_refused_clearly(
    pki_node: tuple[RabbitNode, Path],
) -> None:
    node, d = pki_node
    with pytest.raises(BrokerRefused, match="refused the TLS client certificate"):
        await Connection.connect(
            host="127.0.0.1", port=node.tls_port, user="x", password="x",
            ssl=_context(d, "nobody"), server_hostname="localhost", auth_mechanism="EXTERNAL",
        )  # fmt: skip
