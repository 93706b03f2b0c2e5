"""The ``kazoo-amqp`` command line, run as a subprocess (cli.py; exit codes 0-5).

Offline commands (encode, json, check-config) run anywhere. publish, query and status run against
a real daemon (``DaemonProcess``) or, without one, directly against the RabbitMQ on
127.0.0.1:5672; those are marked ``broker``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon_harness import DaemonProcess, pika_connection, unique

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "examples" / "kazoo-amqp.toml"
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672"

EXIT_OK, EXIT_ABSENT, EXIT_BAD_INPUT, EXIT_TIMEOUT, EXIT_NO_BROKER = 0, 1, 2, 3, 4


def _table(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """parametrize keywords for (id, *values) rows."""
    return {"argvalues": [r[1:] for r in rows], "ids": [r[0] for r in rows]}


def run_cli(
    *args: str, cwd: Path, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m kazoo_amqp ARGS` with this checkout's sources, in `cwd`."""
    full_env = {k: v for k, v in os.environ.items() if k != "KAZOO_AMQP_CONFIG"}
    full_env["PYTHONPATH"] = str(REPO / "src")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kazoo_amqp", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _broker_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(path: Path, **keys: Any) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return path


class Sink:
    """A unique topic exchange with an exclusive queue bound to `#`, read with pika."""

    def __init__(self) -> None:
        self.exchange = unique("kzt.cli")
        self.conn = pika_connection()
        self.ch = self.conn.channel()
        self.ch.exchange_declare(self.exchange, "topic", auto_delete=True)
        self.queue = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.queue, self.exchange, "#")

    def get(self, timeout: float = 5.0) -> tuple[str, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, _props, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is not None:
                return method.routing_key, json.loads(body)
            self.conn.sleep(0.02)
        return None

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    if not _broker_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module's publish/query/status tests."""
    if not _broker_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    routes = """
    @router.route("kazoo:consumer-event")
    def anything(kz):
        record(kz)
    """
    with DaemonProcess(tmp_path_factory.mktemp("cli-daemon"), routes, workers=1) as d:
        yield d


# ---------------------------------------------------------------------------------------------
# encode

# (id, extra args, text, expected stdout)
ENCODES: list[tuple[str, tuple[str, ...], str, str]] = [
    ("at-and-dot", (), "user@domain.com", "user%40domain%2Ecom"),
    ("space-is-plus", (), "a b", "a+b"),
    ("lone-wildcard-kept", (), "#", "#"),
    ("utf8-default", (), "é", "%C3%A9"),
    ("x86-flag", ("--x86",), "é", "%,3%*9"),
    ("255-bytes-accepted", (), "a" * 255, "a" * 255),
]


@pytest.mark.parametrize(("extra", "text", "out"), **_table(ENCODES))
def test_encode_prints_the_routing_key_word(
    tmp_path: Path, extra: tuple[str, ...], text: str, out: str
) -> None:
    """`encode TEXT` prints the kazoo_encode result and exits 0."""
    proc = run_cli("encode", *extra, text, cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (EXIT_OK, out + "\n", "")


@pytest.mark.parametrize(
    ("text", "size"), [("a" * 256, 256), ("é" * 128, 256)], ids=["256-ascii", "128-two-byte"]
)
def test_encode_over_255_bytes_exits_2_with_the_size(tmp_path: Path, text: str, size: int) -> None:
    """Input over 255 UTF-8 bytes is refused like kazoo_encode: exit 2, size and limit named."""
    proc = run_cli("encode", text, cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stdout == ""
    assert f"input to encode is {size} bytes" in proc.stderr
    assert "at most 255" in proc.stderr


def test_encode_follows_encode_high_bytes_of_the_config(tmp_path: Path) -> None:
    """With encode_high_bytes = "x86" in the config, non-ASCII gets the C form without --x86."""
    cfg = _write_config(tmp_path / "k.toml", node_hostname="h", encode_high_bytes="x86")
    proc = run_cli("encode", "--config", str(cfg), "é", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (EXIT_OK, "%,3%*9\n")


# ---------------------------------------------------------------------------------------------
# json

CHANNELS = '{"Channels":[{"switch_url":"sip:a@b"}]}'

# (id, document, path, exit code, stdout)
JSON_CASES: list[tuple[str, str, str, int, str]] = [
    ("found", CHANNELS, "Channels[0].switch_url", EXIT_OK, "sip:a@b\n"),
    ("array-spaced", CHANNELS, "Channels", EXIT_OK, '[ { "switch_url": "sip:a@b" } ]\n'),
    ("escaped-dot", '{"a":{"b.c":"dot"}}', "a.b%c", EXIT_OK, "dot\n"),
    ("number-lexeme", '{"f":1.50}', "f", EXIT_OK, "1.50\n"),
    ("lenient-json", "{'a' : true, }", "a", EXIT_OK, "true\n"),
    ("absent", CHANNELS, "Channels[1].switch_url", EXIT_ABSENT, ""),
    ("null-is-absent", '{"z":null}', "z", EXIT_ABSENT, ""),
    ("invalid-json-is-absent", "not json", "a", EXIT_ABSENT, ""),
]


@pytest.mark.parametrize(("doc", "path", "code", "out"), **_table(JSON_CASES))
def test_json_prints_the_value_or_exits_1_when_absent(
    tmp_path: Path, doc: str, path: str, code: int, out: str
) -> None:
    """`json DOC PATH` prints kazoo_json's rendering; absent/null/invalid exit 1 with a message."""
    proc = run_cli("json", doc, path, cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (code, out)
    if code == EXIT_ABSENT:
        assert f"path {path!r} is absent" in proc.stderr


# ---------------------------------------------------------------------------------------------
# check-config


def test_check_config_accepts_the_example_and_runs_its_mod_init(tmp_path: Path) -> None:
    """The shipped example is valid: its routes declare 4 subscriptions; ends with `config OK`."""
    proc = run_cli("check-config", "--config", str(EXAMPLE_CONFIG), cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "config OK"
    assert any(line.endswith("kazoo:mod-init declares 4 subscriptions") for line in lines)
    assert 'node_hostname = "sbc1.example.net"' in lines
    assert any(
        line.startswith("amqp_connection = amqp://guest:***@127.0.0.1:5672") for line in lines
    ), "password must be redacted"


def test_check_config_with_an_unknown_key_exits_2_naming_it(tmp_path: Path) -> None:
    """An unknown key is an error (exit 2) that names the key and says to remove it."""
    cfg = _write_config(tmp_path / "k.toml", node_hostname="h", amqp_bogus_key=1)
    proc = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "'amqp_bogus_key'" in proc.stderr
    assert "unknown key" in proc.stderr
    assert "config OK" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("--config", "nope.toml"), {}, "'nope.toml'"),
        ((), {}, "'kazoo-amqp.toml'"),
        ((), {"KAZOO_AMQP_CONFIG": "from-env.toml"}, "'from-env.toml'"),
    ],
    ids=["explicit", "default-name", "environment"],
)
def test_check_config_with_a_missing_file_exits_2_naming_the_fix(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    """A missing config names the file looked for and how to give one (--config, env var)."""
    proc = run_cli("check-config", *args, cwd=tmp_path, env=env)
    assert proc.returncode == EXIT_BAD_INPUT
    assert f"config file {named} not found" in proc.stderr
    assert "pass --config FILE" in proc.stderr
    assert "KAZOO_AMQP_CONFIG" in proc.stderr


def test_check_config_with_routes_that_fail_to_import_exits_2_naming_the_error(
    tmp_path: Path,
) -> None:
    """A routes file raising on import is a config error naming the exception (exit 2)."""
    (tmp_path / "routes.py").write_text("raise RuntimeError('routes are broken')\n")
    cfg = _write_config(tmp_path / "k.toml", node_hostname="h", routes="routes.py")
    proc = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "RuntimeError: routes are broken" in proc.stderr
    assert "config OK" not in proc.stdout


# ---------------------------------------------------------------------------------------------
# publish / query / status through a running daemon


@pytest.mark.broker
def test_publish_through_the_daemon_prints_the_msg_id_and_delivers(
    daemon: DaemonProcess, sink: Sink, tmp_path: Path
) -> None:
    """`publish` exits 0 and prints JSON whose msg_id is the Msg-ID of the message delivered."""
    proc = run_cli(
        "publish",
        "--config",
        str(daemon.config_path),
        sink.exchange,
        "a.b",
        '{"Event-Category":"test","Event-Name":"cli"}',
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result["msg_id"], str) and len(result["msg_id"]) == 36
    got = sink.get()
    assert got is not None, "message not delivered"
    routing_key, body = got
    assert routing_key == "a.b"
    assert body["Msg-ID"] == result["msg_id"]
    assert body["Node"] == f"kamailio@{daemon.node}"
    assert body["Event-Name"] == "cli"


@pytest.mark.broker
def test_publish_confirm_waits_for_the_broker_and_reports_its_refusal(
    daemon: DaemonProcess, sink: Sink, tmp_path: Path
) -> None:
    """--confirm prints the broker's server_id; a refused exchange exits 5 (without --confirm
    the daemon accepted it and exits 0: the refusal is the daemon's to log)."""
    base = ("publish", "--config", str(daemon.config_path))
    ok = run_cli(*base, "--confirm", "--persistent", sink.exchange, "c", '{"a":1}', cwd=tmp_path)
    assert ok.returncode == EXIT_OK, ok.stderr
    assert json.loads(ok.stdout)["server_id"] == 1
    missing = f"kzt.cli.missing.{os.getpid()}.{time.monotonic_ns()}"
    accepted = run_cli(*base, missing, "c", '{"a":1}', cwd=tmp_path)
    assert accepted.returncode == EXIT_OK, accepted.stderr
    refused = run_cli(*base, "--confirm", missing, "c", '{"a":1}', cwd=tmp_path)
    assert refused.returncode == 5, refused.stderr
    assert missing in refused.stderr


@pytest.mark.broker
def test_publish_through_the_daemon_passes_headers(
    daemon: DaemonProcess, sink: Sink, tmp_path: Path
) -> None:
    """--headers 'k1=v1;k2=v2' becomes AMQP headers of the published message."""
    proc = run_cli(
        "publish",
        "--config",
        str(daemon.config_path),
        "--headers",
        "k1=v1;k2=v2",
        sink.exchange,
        "h",
        '{"a":1}',
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    deadline = time.monotonic() + 5
    method = props = None
    while method is None and time.monotonic() < deadline:
        method, props, _ = sink.ch.basic_get(sink.queue, auto_ack=True)
        sink.conn.sleep(0.02)
    assert props is not None
    assert props.headers == {"k1": "v1", "k2": "v2"}


@pytest.mark.broker
def test_query_with_no_responder_exits_3_after_its_timeout(
    daemon: DaemonProcess, sink: Sink, tmp_path: Path
) -> None:
    """`query --timeout-ms 200` to a key nobody answers exits 3 after ~0.2 s, not the default."""
    baseline_start = time.monotonic()
    run_cli("--version", cwd=tmp_path)
    startup = time.monotonic() - baseline_start
    started = time.monotonic()
    proc = run_cli(
        "query",
        "--config",
        str(daemon.config_path),
        "--timeout-ms",
        "200",
        sink.exchange,
        unique("nobody"),
        '{"Event-Category":"test"}',
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == EXIT_TIMEOUT, proc.stderr
    assert "within 200 ms" in proc.stderr
    assert proc.stdout == ""
    assert 0.2 <= elapsed <= startup + 1.0, f"took {elapsed:.2f} s (startup {startup:.2f} s)"


# (id, payload, message)
BAD_PAYLOADS: list[tuple[str, str, str]] = [
    ("not-json", "not json", "not JSON"),
    ("json-array", "[1,2]", "JSON object"),
    ("empty", "", "not JSON"),
]


@pytest.mark.broker
@pytest.mark.parametrize(("payload", "message"), **_table(BAD_PAYLOADS))
def test_publish_with_a_bad_payload_exits_2(
    daemon: DaemonProcess, tmp_path: Path, payload: str, message: str
) -> None:
    """A payload that is not a JSON object is refused with exit 2 and the reason."""
    proc = run_cli(
        "publish", "--config", str(daemon.config_path), "amq.topic", "rk", payload, cwd=tmp_path
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert message in proc.stderr
    assert proc.stdout == ""


# (id, routing key)
BAD_KEYS: list[tuple[str, str]] = [
    ("256-bytes", "é" * 128),
    ("consumer-prefix-without-key", "consumer://abc"),
]


@pytest.mark.broker
@pytest.mark.parametrize(("key",), **_table(BAD_KEYS))
def test_publish_with_a_bad_routing_key_exits_2(
    daemon: DaemonProcess, tmp_path: Path, key: str
) -> None:
    """Over-long keys and malformed consumer:// prefixes are refused with exit 2."""
    proc = run_cli(
        "publish", "--config", str(daemon.config_path), "amq.topic", key, '{"a":1}', cwd=tmp_path
    )
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "routing key" in proc.stderr


@pytest.mark.broker
def test_status_prints_json_with_brokers_and_workers(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`status` prints the daemon's snapshot: node, broker links (up) and live workers."""
    proc = run_cli("status", "--config", str(daemon.config_path), cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    status = json.loads(proc.stdout)
    assert status["node"] == f"kamailio@{daemon.node}"
    brokers = status["manager"]["brokers"]
    assert len(brokers) == 1 and brokers[0]["up"] is True
    workers = status["workers"]["workers"]
    assert len(workers) == 1 and all(w["alive"] for w in workers)


@pytest.mark.broker
def test_status_by_socket_path_needs_no_config(daemon: DaemonProcess, tmp_path: Path) -> None:
    """`status --socket PATH` talks to the daemon without reading any config."""
    proc = run_cli("status", "--socket", daemon.socket, cwd=tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "brokers" in json.loads(proc.stdout)["manager"]


# ---------------------------------------------------------------------------------------------
# Without a daemon


def _no_daemon_config(tmp_path: Path, url: str) -> Path:
    return _write_config(
        tmp_path / "direct.toml",
        node_hostname="cli-direct.example.net",
        amqp_connection=[url],
        socket=str(tmp_path / "no-daemon.sock"),
    )


@pytest.mark.broker
def test_publish_without_a_daemon_connects_to_the_broker_directly(
    sink: Sink, tmp_path: Path
) -> None:
    """No daemon on the socket but a reachable broker in the config: direct publish, exit 0."""
    cfg = _no_daemon_config(tmp_path, BROKER_URL)
    proc = run_cli(
        "publish",
        "--config",
        str(cfg),
        sink.exchange,
        "direct.key",
        '{"Event-Category":"test"}',
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    result = json.loads(proc.stdout)
    got = sink.get()
    assert got is not None, "message not delivered"
    assert got[0] == "direct.key"
    assert got[1]["Msg-ID"] == result["msg_id"]
    assert got[1]["Node"] == "kamailio@cli-direct.example.net"


@pytest.mark.broker
def test_query_without_a_daemon_times_out_directly_with_exit_3(sink: Sink, tmp_path: Path) -> None:
    """Direct mode also runs queries: nobody answers, so exit 3 after the timeout."""
    cfg = _no_daemon_config(tmp_path, BROKER_URL)
    proc = run_cli(
        "query",
        "--config",
        str(cfg),
        "--timeout-ms",
        "200",
        sink.exchange,
        unique("nobody"),
        '{"a":1}',
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_TIMEOUT, proc.stderr
    assert "within 200 ms" in proc.stderr


@pytest.mark.slow
def test_publish_without_daemon_or_reachable_broker_exits_4(tmp_path: Path) -> None:
    """No daemon and an unreachable broker: exit 4, naming the broker and why it is down."""
    port = _closed_port()
    cfg = _no_daemon_config(tmp_path, f"amqp://guest:guest@127.0.0.1:{port}")
    proc = run_cli("publish", "--config", str(cfg), "amq.topic", "rk", '{"a":1}', cwd=tmp_path)
    assert proc.returncode == EXIT_NO_BROKER
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("kazoo-amqp: no broker reachable")
    assert f"127.0.0.1:{port}" in last
    assert "guest:guest" not in proc.stderr, "password must be redacted"


def test_publish_without_daemon_or_config_exits_4_asking_for_a_config(tmp_path: Path) -> None:
    """No --config, no ./kazoo-amqp.toml, no daemon: exit 4 and say to pass --config."""
    proc = run_cli("publish", "amq.topic", "rk", '{"a":1}', cwd=tmp_path)
    assert proc.returncode == EXIT_NO_BROKER
    assert "pass --config FILE" in proc.stderr


def test_status_without_a_daemon_exits_4_naming_the_socket(tmp_path: Path) -> None:
    """`status` has no direct mode: with nothing on the socket it exits 4 naming the socket."""
    cfg = _no_daemon_config(tmp_path, BROKER_URL)
    proc = run_cli("status", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == EXIT_NO_BROKER
    assert str(tmp_path / "no-daemon.sock") in proc.stderr
