"""The presence write API: ``Client``/``AsyncClient.pua_publish``, the CLI, ``kz.pua_publish_*``.

Everything runs against the real daemon (``daemon_harness.DaemonProcess``) and the real RabbitMQ;
no Kamailio (no ``kamailio_rpc``: rows are written, nobody is asked to refresh). Rows are read
back with each database's own driver.

* ``Client.pua_publish`` / ``AsyncClient.pua_publish`` return ``{written, package, presentity,
  etag, expires, ...}``, raise ``MissingField`` naming the field, and return ``written: False``
  for a payload ``kazoo_pua_publish`` does not handle (``Event-Name`` is not ``update``).
* ``kazoo-amqp pua-publish PAYLOAD --config FILE`` through the daemon and without one (direct DB
  write); ``kazoo-amqp db init --config FILE`` creates the schema and is idempotent.
* A route calling ``kz.pua_publish_dialoginfo()`` on a message consumed from RabbitMQ writes the
  row, on SQLite, PostgreSQL (127.0.0.1:5432, user postgres) and MariaDB (127.0.0.1:3306, root
  without password); an unreachable server skips its case.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from kazoo_amqp import AsyncClient, BadPayload, MissingField, UsageError
from tests.integration.daemon_harness import (
    DIALOG_ROUTE,
    REPO,
    DaemonProcess,
    pika_connection,
    presence_routes,
    unique,
)

pytestmark = pytest.mark.timeout(120)
broker = pytest.mark.broker

USER, REALM = "1000", "example.net"
URI = f"sip:{USER}@{REALM}"


def dialog(state: str = "confirmed", call_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Kazoo dialog update for ``URI`` (corpus 02's shape), ``Event-Name: update``."""
    p: dict[str, Any] = {
        "Event-Category": "presence", "Event-Name": "update", "Event-Package": "dialog",
        "Presence-ID": f"{USER}@{REALM}", "From": URI, "From-User": USER, "From-Realm": REALM,
        "From-Tag": "8aK2Hc0rQ1mNe", "To": f"sip:1001@{REALM}", "To-User": "1001",
        "To-Realm": REALM, "To-Tag": "ZpQ4r7N2c9K0y", "To-URI": URI, "Direction": "recipient",
        "State": state, "Call-ID": call_id or uuid.uuid4().hex, "Switch-URI": "sip:10.0.1.21:11000",
        "Expires": 0, "Msg-ID": uuid.uuid4().hex[:16],
    }  # fmt: skip
    p.update({k.replace("_", "-"): v for k, v in extra.items()})
    return {k: v for k, v in p.items() if v is not None}


def mwi(new: int = 2, saved: int = 5) -> dict[str, Any]:
    """Corpus 07's shape for ``URI``."""
    return {
        "Event-Category": "presence", "Event-Name": "mwi_update", "From": URI,
        "From-User": USER, "From-Realm": REALM, "To": URI, "To-User": USER, "To-Realm": REALM,
        "Message-Account": URI, "Messages-Waiting": "yes" if new else "no",
        "Messages-New": new, "Messages-Saved": saved, "Messages-Urgent": 0,
        "Messages-Urgent-Saved": 0, "Call-ID": uuid.uuid4().hex, "Msg-ID": uuid.uuid4().hex[:16],
    }  # fmt: skip


def presence(state: str = "confirmed") -> dict[str, Any]:
    """Corpus 05's shape for ``URI``."""
    return {
        "Event-Category": "presence", "Event-Name": "update", "Presence-ID": f"{USER}@{REALM}",
        "From": URI, "From-User": USER, "From-Realm": REALM, "To": URI, "To-User": USER,
        "To-Realm": REALM, "State": state, "Call-ID": uuid.uuid4().hex,
        "Msg-ID": uuid.uuid4().hex[:16],
    }  # fmt: skip


def sqlite_rows(db: Path, event: str | None = None) -> list[dict[str, Any]]:
    con = sqlite3.connect(db, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        sql = "SELECT * FROM presentity" + (" WHERE event = ?" if event else "") + " ORDER BY id"
        rows = [dict(r) for r in con.execute(sql, (event,) if event else ())]
    finally:
        con.close()
    for r in rows:
        if isinstance(r["body"], bytes):
            r["body"] = r["body"].decode()
    return rows


def assert_written(result: dict[str, Any], package: str, etag: str) -> None:
    assert result["written"] is True, result
    assert result["package"] == package, result
    assert result["presentity"] == URI, result
    assert result["etag"] == etag, result
    assert result["expires"] > time.time(), result  # absolute, in the future


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m kazoo_amqp ARGS`` with PYTHONPATH=src, as an operator would run it."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run(
        [sys.executable, "-m", "kazoo_amqp", *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO,
    )  # fmt: skip


@pytest.fixture
def daemon(tmp_path: Path, rabbitmq: dict[str, object]) -> Iterator[DaemonProcess]:
    """A daemon with no routes of interest, SQLite ``presence.db`` in its directory."""
    d = DaemonProcess(tmp_path, "", workers=1)
    with d:
        yield d


def _db_path(d: DaemonProcess) -> Path:
    return d.dir / "presence.db"


# ------------------------------------------------------------------------------ Client


@broker
def test_client_pua_publish_returns_what_was_written(daemon: DaemonProcess) -> None:
    payload = dialog("confirmed")
    with daemon.client() as c:
        result = c.pua_publish(payload)  # kazoo_pua_publish: dispatch on Event-Package
        early = dialog("early", Event_Name=None)  # per-package call: no Event-Name needed
        result2 = c.pua_publish(json.dumps(early), "dialog")  # JSON text works too
    assert_written(result, "dialog", payload["Call-ID"])
    assert_written(result2, "dialog", early["Call-ID"])
    assert result.get("refreshed") is False  # no kamailio_rpc configured
    rows = {r["etag"]: r for r in sqlite_rows(_db_path(daemon), "dialog")}
    assert set(rows) == {payload["Call-ID"], early["Call-ID"]}
    row = rows[payload["Call-ID"]]
    assert (row["username"], row["domain"], row["sender"]) == (USER, REALM, "sip:10.0.1.21:11000")
    assert row["expires"] == result["expires"]
    assert "<state>confirmed</state>" in row["body"] and f'entity="{URI}"' in row["body"]
    assert "<state>early</state>" in rows[early["Call-ID"]]["body"]


@broker
@pytest.mark.parametrize(
    ("package", "payload", "expect"),
    [
        ("presence", presence("offline"), "<basic>closed</basic>"),
        ("message-summary", mwi(3, 1), "Voice-Message: 3/1 (0/0)\r\n"),
    ],
    ids=["presence", "message-summary"],
)
def test_client_per_package(
    daemon: DaemonProcess, package: str, payload: dict[str, Any], expect: str
) -> None:
    with daemon.client() as c:
        result = c.pua_publish(payload, package)
    assert_written(result, package, payload["Call-ID"])
    (row,) = sqlite_rows(_db_path(daemon), package)
    assert expect in row["body"]


@broker
def test_client_missing_from_raises_missing_field(daemon: DaemonProcess) -> None:
    bad = dialog(From=None)
    with daemon.client() as c:
        with pytest.raises(MissingField) as per_package:
            c.pua_publish(bad, "dialog")
        with pytest.raises(MissingField) as dispatched:
            c.pua_publish(bad)  # Event-Name update + Event-Package dialog
        with pytest.raises(BadPayload):
            c.pua_publish("[1, 2]", "dialog")  # not a JSON object
        with pytest.raises(UsageError, match="package"):
            c.pua_publish(dialog(), "Dialog")  # packages are case-sensitive, as in C
        assert c.ping()  # the connection is still usable
    for exc in (per_package.value, dispatched.value):
        assert "'From'" in str(exc), str(exc)
        assert "dialog" in str(exc)
    assert not _db_path(daemon).exists() or sqlite_rows(_db_path(daemon)) == []


@broker
def test_client_missing_field_attribute_survives_the_socket(daemon: DaemonProcess) -> None:
    with daemon.client() as c, pytest.raises(MissingField) as exc:
        c.pua_publish(dialog(From=None), "dialog")
    assert exc.value.field == "From"


@broker
def test_client_not_an_update_is_not_written(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        result = c.pua_publish(dialog(Event_Name="dialog_update"))
        result2 = c.pua_publish(dialog(Event_Package="Dialog"))  # case-sensitive, as C
    for r in (result, result2):
        assert r["written"] is False, r
        assert "Event-Name" in r["reason"]
    assert not _db_path(daemon).exists() or sqlite_rows(_db_path(daemon)) == []


@broker
async def test_async_client_pua_publish(daemon: DaemonProcess) -> None:
    payload = dialog("confirmed")
    async with AsyncClient(daemon.socket, timeout=10) as c:
        result = await c.pua_publish(payload)
        mwi_result = await c.pua_publish(mwi(), "message-summary")
        with pytest.raises(MissingField) as exc:
            await c.pua_publish(dialog(From=None), "dialog")
        skipped = await c.pua_publish(dialog(Event_Name="dialog_update"))
    assert_written(result, "dialog", payload["Call-ID"])
    assert mwi_result["written"] is True and mwi_result["package"] == "message-summary"
    assert "'From'" in str(exc.value)
    assert skipped["written"] is False
    assert [r["etag"] for r in sqlite_rows(_db_path(daemon), "dialog")] == [payload["Call-ID"]]


# ------------------------------------------------------------------------------ CLI


@broker
def test_cli_pua_publish_through_the_daemon(daemon: DaemonProcess) -> None:
    payload = dialog("confirmed")
    proc = cli("pua-publish", json.dumps(payload), "--config", str(daemon.config_path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert_written(result, "dialog", payload["Call-ID"])
    (row,) = sqlite_rows(_db_path(daemon), "dialog")
    assert row["etag"] == payload["Call-ID"]


@broker
def test_cli_pua_publish_bad_payload_names_the_field(daemon: DaemonProcess) -> None:
    proc = cli("pua-publish", json.dumps(dialog(From=None)), "--package", "dialog",
               "--config", str(daemon.config_path))  # fmt: skip
    assert proc.returncode != 0
    assert "MissingField" in proc.stderr or "'From'" in proc.stderr
    assert "'From'" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def _no_daemon_config(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "direct.db"
    cfg = tmp_path / "direct.toml"
    cfg.write_text(
        'node_hostname = "direct.example.net"\n'
        f'db_url = "sqlite://{db}"\n'
        f'socket = "{tmp_path / "nobody-listens.sock"}"\n'
    )
    return cfg, db


def test_cli_pua_publish_without_a_daemon_writes_directly(tmp_path: Path) -> None:
    cfg, db = _no_daemon_config(tmp_path)
    payload = dialog("early")
    proc = cli("pua-publish", json.dumps(payload), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert_written(json.loads(proc.stdout), "dialog", payload["Call-ID"])
    (row,) = sqlite_rows(db, "dialog")
    assert row["etag"] == payload["Call-ID"] and "<state>early</state>" in row["body"]

    proc = cli("pua-publish", json.dumps(mwi(1, 0)), "--package", "message-summary",
               "--config", str(cfg))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["package"] == "message-summary"

    proc = cli("pua-publish", json.dumps(dialog(Event_Name="x")), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["written"] is False

    proc = cli("pua-publish", json.dumps(dialog(From=None)), "--package", "dialog",
               "--config", str(cfg))  # fmt: skip
    assert proc.returncode != 0 and "'From'" in proc.stderr, proc.stderr
    assert len(sqlite_rows(db)) == 2


def test_cli_pua_publish_missing_field_exits_2(tmp_path: Path) -> None:
    cfg, _db = _no_daemon_config(tmp_path)
    proc = cli("pua-publish", json.dumps(dialog(From=None)), "--package", "dialog",
               "--config", str(cfg))  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "'From'" in proc.stderr


def test_cli_pua_publish_not_json_exits_2(tmp_path: Path) -> None:
    cfg, _db = _no_daemon_config(tmp_path)
    proc = cli("pua-publish", "{not json", "--package", "dialog", "--config", str(cfg))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("kazoo-amqp:")


def test_cli_db_init_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    cfg, db = _no_daemon_config(tmp_path)
    assert not db.exists()
    first = cli("db", "init", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    con = sqlite3.connect(db)
    try:
        (version,) = con.execute(
            "SELECT table_version FROM version WHERE table_name = 'presentity'"
        ).fetchone()
        cols = {r[1] for r in con.execute("PRAGMA table_info(presentity)")}
    finally:
        con.close()
    assert version == 5
    assert {"username", "domain", "event", "etag", "expires", "received_time", "body",
            "sender", "priority", "ruid"} <= cols  # fmt: skip

    second = cli("db", "init", "--config", str(cfg))
    assert second.returncode == 0, second.stderr
    assert "already present" in second.stdout
    # and the schema works for a write afterwards
    proc = cli("pua-publish", json.dumps(dialog()), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ route writes

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
MY_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@contextlib.contextmanager
def _database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A db_url of a fresh database of ``kind`` (dropped afterwards); skips when unreachable."""
    if kind == "sqlite":
        yield f"sqlite://{tmp_path / 'route.db'}"
        return
    name = f"kazoo_amqp_api_{uuid.uuid4().hex[:12]}"
    if kind == "postgres":
        psycopg = pytest.importorskip("psycopg")
        try:
            admin = psycopg.connect(**PG_ADMIN, autocommit=True, connect_timeout=2)
        except psycopg.Error as exc:
            pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 as postgres (trust): {exc}")
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgres://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.close()
    else:
        pymysql = pytest.importorskip("pymysql")
        try:
            admin = pymysql.connect(**MY_ADMIN, connect_timeout=2, autocommit=True)
        except pymysql.MySQLError as exc:
            pytest.skip(f"MariaDB not reachable at 127.0.0.1:3306 as root (no password): {exc}")
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        try:
            yield f"mysql://root@127.0.0.1:3306/{name}"
        finally:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.close()


def _rows(kind: str, db_url: str) -> list[dict[str, Any]]:
    """``presentity`` rows via the database's own driver (not via kazoo_amqp)."""
    keys = ("username", "domain", "event", "etag", "expires", "body", "sender")
    sql = f"SELECT {', '.join(keys)} FROM presentity ORDER BY id"
    if kind == "sqlite":
        con = sqlite3.connect(db_url[len("sqlite://") :], timeout=5)
        try:
            rows = list(con.execute(sql))
        finally:
            con.close()
    elif kind == "postgres":
        import psycopg

        with psycopg.connect(db_url.replace("postgres://", "postgresql://", 1),
                             connect_timeout=2) as con:  # fmt: skip
            rows = list(con.execute(sql))
    else:
        import pymysql

        name = db_url.rsplit("/", 1)[1]
        con = pymysql.connect(**MY_ADMIN, database=name, connect_timeout=2)
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                rows = list(cur.fetchall())
        finally:
            con.close()
    out = []
    for r in rows:
        d = dict(zip(keys, r, strict=True))
        if isinstance(d["body"], bytes | bytearray | memoryview):
            d["body"] = bytes(d["body"]).decode()
        out.append(d)
    return out


def _wait_consumer(queue: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    conn = pika_connection()
    try:
        while True:
            ch = conn.channel()
            try:
                if ch.queue_declare(queue, passive=True).method.consumer_count >= 1:
                    return
                ch.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass
            assert time.monotonic() < deadline, f"no consumer on {queue} after {timeout}s"
            time.sleep(0.1)
    finally:
        conn.close()


def _publish(exchange: str, messages: list[tuple[str, dict[str, Any]]]) -> None:
    conn = pika_connection()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for rk, payload in messages:
            ch.basic_publish(exchange, rk, json.dumps(payload).encode(),
                             pika.BasicProperties(content_type="application/json"),
                             mandatory=True)  # fmt: skip
    finally:
        conn.close()


@broker
@pytest.mark.parametrize(
    "kind",
    ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
     pytest.param("mysql", marks=pytest.mark.mysql)],
)  # fmt: skip
def test_route_pua_publish_writes_the_row(
    kind: str, tmp_path: Path, rabbitmq: dict[str, object]
) -> None:
    with _database(kind, tmp_path) as db_url:
        exchange, queue = unique("kzt.presence"), unique("kzt.presence-api")
        (tmp_path / "d").mkdir()
        d = DaemonProcess(
            tmp_path / "d",
            presence_routes(exchange, queue, "pua_publish"),  # kazoo_pua_publish dispatch
            config={"db_url": db_url},
            workers=2,
        )
        init = cli("db", "init", "--config", str(d.config_path))
        assert init.returncode == 0, init.stderr
        assert "created" in init.stdout, init.stdout
        call_id = uuid.uuid4().hex
        realm_rk = REALM.replace(".", "%2E")
        confirmed = dialog("confirmed", call_id, Event_Name="dialog_update")
        generic = dialog("early", Event_Package="dialog")  # Event-Name: update
        not_update = presence("offline")  # Kazoo's presence update: no Event-Package
        box = mwi(4, 2)
        # same Call-ID as `confirmed`: same worker, likely the same batch; its handler raises
        bad = dialog("terminated", call_id, Event_Name="dialog_update", From=None)
        with d:
            _wait_consumer(queue)
            _publish(exchange, [
                (f"dialog.{realm_rk}.{call_id}", confirmed),
                (f"dialog.{realm_rk}.{call_id}", bad),
                (f"update.{realm_rk}.{generic['Call-ID']}", generic),
                (f"update.{realm_rk}.{not_update['Call-ID']}", not_update),
                (f"mwi_updates.{realm_rk}.{USER}", box),
            ])  # fmt: skip
            events = d.wait_events(5, timeout=20)
            assert len(events) == 5, d.logs()[-3000:]
            by_msg = {e["payload"]["Msg-ID"]: e for e in events}
            # the typed error reaches the route, naming the field
            failed = by_msg.pop(bad["Msg-ID"])
            assert failed["error"] == "MissingField", failed
            assert "'From'" in failed["message"], failed
            for e in by_msg.values():
                assert "error" not in e, e
            assert by_msg[confirmed["Msg-ID"]]["route"] == DIALOG_ROUTE
            assert_written(by_msg[confirmed["Msg-ID"]]["result"], "dialog", call_id)
            assert_written(by_msg[generic["Msg-ID"]]["result"], "dialog", generic["Call-ID"])
            assert by_msg[not_update["Msg-ID"]]["result"]["written"] is False
            assert by_msg[box["Msg-ID"]]["result"]["package"] == "message-summary"

            # the worker may commit after the handler returned (end of its batch); the
            # deliveries are acked only after that, so wait for the queue to drain
            deadline = time.monotonic() + 10
            rows = _rows(kind, db_url)
            while len(rows) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
                rows = _rows(kind, db_url)
        by_etag = {r["etag"]: r for r in rows}
        assert set(by_etag) == {call_id, generic["Call-ID"], box["Call-ID"]}, rows
        row = by_etag[call_id]
        assert (row["username"], row["domain"], row["event"]) == (USER, REALM, "dialog")
        assert row["sender"] == "sip:10.0.1.21:11000"
        assert "<state>confirmed</state>" in row["body"]
        assert row["expires"] > time.time()
        assert "<state>early</state>" in by_etag[generic["Call-ID"]]["body"]
        assert by_etag[box["Call-ID"]]["body"] == (
            f"Messages-Waiting: yes\r\nMessage-Account: {URI}\r\nVoice-Message: 4/2 (0/0)\r\n"
        )
