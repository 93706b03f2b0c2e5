"""PresentityWriter against real databases: SQLite (a temp file), PostgreSQL and MariaDB.

The same behaviour tests run on every database. PostgreSQL (``postgres`` marker) is the local
server at 127.0.0.1:5432, user ``postgres``, trust auth; MariaDB (``mysql`` marker) is
127.0.0.1:3306, ``root`` with an empty password. Each test creates its own database
``kazoo_amqp_test_<random>`` and drops it afterwards; an unreachable server skips its tests.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kazoo_amqp.core.presence.model import FlushScope, PresentityUpdate
from kazoo_amqp.errors import ConfigError, DatabaseError, SchemaError, UsageError
from kazoo_amqp.presence.dburl import DbUrl, parse_db_url
from kazoo_amqp.presence.schema import check_schema, ddl_script, render_ddl
from kazoo_amqp.presence.writer import PresentityWriter, connect, init_database

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
MY_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
NOW = 1_700_000_000
KAMAILIO_SQLITE = Path("/usr/share/kamailio/db_sqlite")
KAMAILIO_PG = Path("/usr/share/kamailio/postgres")


# ---------------------------------------------------------------------------- database fixtures


def _pg_admin() -> Any:
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(**PG_ADMIN, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 as postgres (trust): {exc}")


def _my_admin() -> Any:
    pymysql = pytest.importorskip("pymysql")
    try:
        return pymysql.connect(**MY_ADMIN, connect_timeout=2, autocommit=True)
    except pymysql.MySQLError as exc:
        pytest.skip(f"MariaDB not reachable at 127.0.0.1:3306 as root (no password): {exc}")


@contextlib.contextmanager
def _server_db(kind: str, password: str = "") -> Iterator[str]:
    name = f"kazoo_amqp_test_{uuid.uuid4().hex[:12]}"
    if kind == "postgres":
        admin = _pg_admin()
        admin.execute(f"CREATE DATABASE {name}")
        auth = f"postgres:{password}" if password else "postgres"
        try:
            yield f"postgres://{auth}@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.close()
    else:
        admin = _my_admin()
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        try:
            yield f"mysql://root@127.0.0.1:3306/{name}"
        finally:
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A db_url of an empty database (for SQLite: an existing, empty file)."""
    if request.param == "sqlite":
        path = tmp_path / "presence.db"
        sqlite3.connect(path).close()
        yield f"sqlite://{path}"
    else:
        with _server_db(request.param) as url:
            yield url


@pytest.fixture
def db(empty_db: str) -> str:
    """A db_url with the schema created."""
    assert init_database(empty_db) is True
    return empty_db


@pytest.fixture
def writer(db: str) -> Iterator[PresentityWriter]:
    w = PresentityWriter.open(db)
    yield w
    w.close()


def _query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    u = parse_db_url(url)
    conn = connect(u)
    try:
        cur = conn.cursor()
        cur.execute(sql if u.kind != "sqlite" else sql.replace("%s", "?"), params)
        rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def rows(url: str, table: str = "presentity") -> list[tuple[Any, ...]]:
    got = _query(
        url,
        "SELECT username, domain, event, etag, sender, body, received_time, expires, priority "
        f"FROM {table}",
    )
    return sorted((*r[:5], bytes(r[5]), *r[6:]) for r in got)


def upd(
    username: str = "1000",
    etag: str = "e1",
    body: str = "<x/>",
    *,
    event: str = "dialog",
    domain: str = "example.com",
    flush: FlushScope = FlushScope.ETAG,
    sender: Any = "sip:fs1@example.com",
    expires: int = NOW + 3600,
    received_time: int = NOW,
    priority: int = 0,
) -> PresentityUpdate:
    return PresentityUpdate(
        event=event,
        username=username,
        domain=domain,
        etag=etag,
        sender=sender,
        body=body,
        expires=expires,
        received_time=received_time,
        flush=flush,
        priority=priority,
    )


def keys(url: str) -> list[tuple[str, str, str, str, bytes]]:
    return [(r[0], r[1], r[2], r[3], r[5]) for r in rows(url)]


# ---------------------------------------------------------------------------- schema


def test_init_creates_schema_version_5_and_is_idempotent(empty_db: str) -> None:
    assert init_database(empty_db) is True
    versions = dict(_query(empty_db, "SELECT table_name, table_version FROM version"))
    assert versions == {"version": 1, "presentity": 5}
    assert init_database(empty_db) is False
    assert dict(_query(empty_db, "SELECT table_name, table_version FROM version")) == versions
    with PresentityWriter.open(empty_db) as w:
        w.write([upd()])
    assert len(rows(empty_db)) == 1


def test_open_with_init_creates_the_schema(empty_db: str) -> None:
    with PresentityWriter.open(empty_db, init=True) as w:
        w.write([upd()])
    assert len(rows(empty_db)) == 1


def test_missing_table_refused(empty_db: str) -> None:
    with pytest.raises(SchemaError) as info:
        PresentityWriter.open(empty_db)
    msg = str(info.value)
    assert "table 'presentity' not found in" in msg
    assert str(parse_db_url(empty_db)) in msg
    assert "kazoo-amqp db init --config FILE" in msg


def test_wrong_version_refused(db: str) -> None:
    _query(db, "UPDATE version SET table_version = 4 WHERE table_name = %s", ("presentity",))
    with pytest.raises(
        SchemaError,
        match=r"presentity table version is 4, kazoo-amqp writes "
        r"Kamailio 5\.6's version 5 schema",
    ):
        PresentityWriter.open(db)


def test_missing_version_row_refused(db: str) -> None:
    _query(db, "DELETE FROM version WHERE table_name = %s", ("presentity",))
    with pytest.raises(SchemaError, match="no row for 'presentity' in the `version` table"):
        PresentityWriter.open(db)


def test_custom_table_name(empty_db: str) -> None:
    assert init_database(empty_db, table="kz_presentity") is True
    with pytest.raises(SchemaError, match="table 'presentity' not found"):
        PresentityWriter.open(empty_db)
    with PresentityWriter.open(empty_db, table="kz_presentity") as w:
        w.write([upd(), upd(etag="e2", flush=FlushScope.PRESENTITY)])
        assert w.delete_expired(NOW + 7200) == 1
    assert rows(empty_db, "kz_presentity") == []
    assert ("kz_presentity", 5) in _query(empty_db, "SELECT table_name, table_version FROM version")


def test_bad_table_name_refused(db: str) -> None:
    with pytest.raises(ConfigError, match="not a plain table name"):
        PresentityWriter.open(db, table="presentity; DROP TABLE version")


# ---------------------------------------------------------------------------- writes


def test_etag_upsert_replaces_one_row_and_keeps_other_etags(
    writer: PresentityWriter, db: str
) -> None:
    writer.write([upd(etag="call-a", body="<a1/>"), upd(etag="call-b", body="<b1/>")])
    writer.write(
        [
            upd(
                etag="call-a",
                body="<a2/>",
                sender="sip:fs2@example.com",
                expires=NOW + 60,
                received_time=NOW + 5,
                priority=3,
            )
        ]
    )
    assert rows(db) == [
        (
            "1000",
            "example.com",
            "dialog",
            "call-a",
            "sip:fs2@example.com",
            b"<a2/>",
            NOW + 5,
            NOW + 60,
            3,
        ),
        (
            "1000",
            "example.com",
            "dialog",
            "call-b",
            "sip:fs1@example.com",
            b"<b1/>",
            NOW,
            NOW + 3600,
            0,
        ),
    ]


def test_presentity_flush_touches_only_this_presentity_and_event(
    writer: PresentityWriter, db: str
) -> None:
    writer.write(
        [
            upd("1000", "a1"),
            upd("1000", "a2"),
            upd("1000", "p1", event="presence"),
            upd("1001", "b1"),
            upd("1000", "o1", domain="other.com"),
            upd("1000", "m1", event="message-summary"),
        ]
    )
    writer.write([upd("1000", "new", "<new/>", flush=FlushScope.PRESENTITY)])
    assert [k[:4] for k in keys(db)] == [
        ("1000", "example.com", "dialog", "new"),
        ("1000", "example.com", "message-summary", "m1"),
        ("1000", "example.com", "presence", "p1"),
        ("1000", "other.com", "dialog", "o1"),
        ("1001", "example.com", "dialog", "b1"),
    ]


def test_batch_order_is_preserved(writer: PresentityWriter, db: str) -> None:
    writer.write([upd(etag="c1", body="early"), upd(etag="c1", body="terminated")])
    assert keys(db) == [("1000", "example.com", "dialog", "c1", b"terminated")]

    many = [upd(etag="c2", body=f"v{i}") for i in range(300)]
    writer.write(many)
    assert ("1000", "example.com", "dialog", "c2", b"v299") in keys(db)

    # an ETAG upsert followed by a PRESENTITY flush: the flush wins ...
    writer.write([upd(etag="c3", body="x"), upd(etag="c4", body="y", flush=FlushScope.PRESENTITY)])
    assert keys(db) == [("1000", "example.com", "dialog", "c4", b"y")]
    # ... and the other way round both rows stay
    writer.write([upd(etag="c5", body="z", flush=FlushScope.PRESENTITY), upd(etag="c6", body="w")])
    assert keys(db) == [
        ("1000", "example.com", "dialog", "c5", b"z"),
        ("1000", "example.com", "dialog", "c6", b"w"),
    ]
    # mixed runs, flush in the middle of upserts of another presentity
    writer.write(
        [
            upd("2000", "a", "1"),
            upd("2000", "a", "2"),
            upd("1000", "f", "3", flush=FlushScope.PRESENTITY),
            upd("2000", "a", "4"),
            upd("2000", "b", "5"),
        ]
    )
    assert keys(db) == [
        ("1000", "example.com", "dialog", "f", b"3"),
        ("2000", "example.com", "dialog", "a", b"4"),
        ("2000", "example.com", "dialog", "b", b"5"),
    ]
    assert writer.stats["batches"] == 5
    assert writer.stats["rows"] == 2 + 300 + 2 + 2 + 5


def test_run_of_presentity_flushes_keeps_the_last_of_each(
    writer: PresentityWriter, db: str
) -> None:
    writer.write([upd("1000", "old"), upd("1001", "old"), upd("1002", "other")])
    P = FlushScope.PRESENTITY
    writer.write(
        [
            upd("1000", "e1", "1", flush=P),
            upd("1001", "e1", "2", flush=P),
            upd("1000", "e2", "3", flush=P),
            upd("1000", "e3", "4", flush=P),
            upd("1001", "e5", "5", flush=P),
            upd("1000", "e3", "6", flush=P),
        ]
    )
    assert keys(db) == [
        ("1000", "example.com", "dialog", "e3", b"6"),
        ("1001", "example.com", "dialog", "e5", b"5"),
        ("1002", "example.com", "dialog", "other", b"<x/>"),
    ]
    assert writer.stats["rows"] == 9


def test_key_comparison_follows_the_database(writer: PresentityWriter, db: str) -> None:
    """SQLite/PostgreSQL compare keys byte-wise; MySQL by collation (case-insensitive)."""
    P = FlushScope.PRESENTITY
    writer.write([upd("Alice", "e1", "1", flush=P), upd("alice", "e2", "2", flush=P)])
    got = [(k[0], k[3], k[4]) for k in keys(db)]
    if db.startswith("mysql"):
        assert got == [("alice", "e2", b"2")]  # as applied one by one on MySQL
    else:
        assert got == [("Alice", "e1", b"1"), ("alice", "e2", b"2")]


def test_bodies_round_trip_byte_exact(writer: PresentityWriter, db: str) -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\r\n<presence entity="sip:1000@example.com">'
        "<note>Ünïcödé 😀 — Tom &amp; \"Jerry\" 'quoted' &lt;x&gt; & raw</note>\t\n</presence>"
    )
    mwi = (
        "Messages-Waiting: yes\r\nMessage-Account: sip:1000@example.com\r\n"
        "Voice-Message: 2/8 (0/0)\r\n"
    )
    writer.write([upd(body=body, event="presence"), upd(body=mwi, event="message-summary")])
    got = {r[2]: r[5] for r in rows(db)}
    assert got == {"presence": body.encode("utf-8"), "message-summary": mwi.encode("utf-8")}


def test_quotes_in_values_are_harmless(writer: PresentityWriter, db: str) -> None:
    evil = "o'brien'); DELETE FROM presentity; --"
    writer.write([upd("victim", "v1")])
    writer.write(
        [upd(evil, "e'1", flush=FlushScope.PRESENTITY, domain="ex'ample.com", sender="sip:'x'@y")]
    )
    writer.write([upd(evil, "e'1", "<again/>", domain="ex'ample.com")])
    got = rows(db)
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in got] == [
        (evil, "ex'ample.com", "e'1", "sip:fs1@example.com", b"<again/>"),
        ("victim", "example.com", "v1", "sip:fs1@example.com", b"<x/>"),
    ]
    assert _query(
        db, "SELECT table_version FROM version WHERE table_name = %s", ("presentity",)
    ) == [(5,)]


def test_expires_and_received_time_stored_as_given(writer: PresentityWriter, db: str) -> None:
    writer.write(
        [
            upd(etag="future", expires=2_000_000_000, received_time=1_234_567_890, priority=7),
            upd(etag="zero", expires=0, received_time=0),
            upd(etag="negative", expires=-5, received_time=NOW),
        ]
    )
    assert {r[3]: (r[6], r[7], r[8]) for r in rows(db)} == {
        "future": (1_234_567_890, 2_000_000_000, 7),
        "zero": (0, 0, 0),
        "negative": (NOW, -5, 0),
    }


def test_delete_expired(writer: PresentityWriter, db: str) -> None:
    writer.write(
        [
            upd(etag="static", expires=0),
            upd(etag="negative", expires=-1),
            upd(etag="past", expires=NOW - 1),
            upd(etag="now", expires=NOW),
            upd(etag="future", expires=NOW + 1),
        ]
    )
    assert writer.delete_expired(NOW) == 1
    assert sorted(r[3] for r in rows(db)) == ["future", "negative", "now", "static"]
    assert writer.delete_expired(NOW) == 0


def test_driver_error_rolls_back_the_whole_batch(writer: PresentityWriter, db: str) -> None:
    writer.write([upd(etag="kept", body="<before/>")])
    bad = upd("1001", "bad", sender=None, flush=FlushScope.PRESENTITY)  # NOT NULL violation
    with pytest.raises(DatabaseError) as info:
        writer.write([upd(etag="kept", body="<changed/>"), upd("1002", "new"), bad])
    msg = str(info.value)
    assert str(parse_db_url(db)) in msg
    assert "sip:1001@example.com (event dialog, etag 'bad')" in msg
    assert "rolled back" in msg
    assert info.value.__cause__ is not None
    assert keys(db) == [("1000", "example.com", "dialog", "kept", b"<before/>")]
    assert writer.stats["errors"] == 1
    # the writer is usable afterwards
    writer.write([upd("1003", "after")])
    assert len(rows(db)) == 2


def test_driver_error_inside_a_run_of_upserts_names_the_run(
    writer: PresentityWriter, db: str
) -> None:
    with pytest.raises(DatabaseError) as info:
        writer.write([upd("1000", "a"), upd("1001", "b", sender=None)])
    assert "sip:1001@example.com" in str(info.value)
    assert rows(db) == []


def test_closed_writer_refuses(db: str) -> None:
    w = PresentityWriter.open(db)
    w.close()
    w.close()
    with pytest.raises(UsageError, match="closed"):
        w.write([upd()])


@pytest.mark.parametrize("lock_type", [0, 1, 2])
def test_lock_types_accepted(db: str, lock_type: int) -> None:
    with PresentityWriter.open(db, lock_type=lock_type) as w:
        w.write([upd()])
        assert w.lock_type == lock_type


@pytest.mark.parametrize("lock_type", [3, -1, True])
def test_bad_lock_type_refused(lock_type: Any) -> None:
    with pytest.raises(ConfigError, match="pua_lock_type"):
        PresentityWriter.open("sqlite:///nonexistent/x.db", lock_type=lock_type)


# ---------------------------------------------------------------------------- server specifics


@pytest.mark.postgres
def test_postgres_lost_connection_is_reopened_and_retried_once() -> None:
    with _server_db("postgres") as url:
        init_database(url)
        with PresentityWriter.open(url) as w:
            w.write([upd(etag="a")])
            pid = w._conn.info.backend_pid
            admin = _pg_admin()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            admin.close()
            time.sleep(0.1)
            w.write([upd(etag="b")])
            assert w.stats["reconnects"] == 1
            assert w.stats["errors"] == 0
        assert [k[3] for k in keys(url)] == ["a", "b"]


@pytest.mark.mysql
def test_mysql_lost_connection_is_reopened_and_retried_once() -> None:
    with _server_db("mysql") as url:
        init_database(url)
        with PresentityWriter.open(url) as w:
            w.write([upd(etag="a")])
            thread_id = w._conn.thread_id()
            admin = _my_admin()
            with admin.cursor() as cur:
                cur.execute(f"KILL {int(thread_id)}")
            admin.close()
            time.sleep(0.1)
            w.write([upd(etag="b")])
            assert w.stats["reconnects"] == 1
        assert [k[3] for k in keys(url)] == ["a", "b"]


@pytest.mark.mysql
def test_mysql_oversized_body_is_refused_not_truncated() -> None:
    with _server_db("mysql") as url:
        init_database(url)
        with PresentityWriter.open(url) as w, pytest.raises(DatabaseError, match="too long"):
            w.write([upd(body="x" * 70_000)])
        assert rows(url) == []


@pytest.mark.postgres
def test_postgres_password_never_shown() -> None:
    with _server_db("postgres", password="s3cretpw") as url:
        init_database(url)
        with PresentityWriter.open(url) as w:
            assert "s3cretpw" not in repr(w)
            with pytest.raises(DatabaseError) as info:
                w.write([upd(sender=None)])
            assert "s3cretpw" not in str(info.value)
            assert "postgres:***@127.0.0.1:5432" in str(info.value)


def test_unreachable_server_is_a_database_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(
        DatabaseError, match=r"cannot connect to postgres://u:\*\*\*@127\.0\.0\.1:1/x"
    ):
        PresentityWriter.open("postgres://u:pw@127.0.0.1:1/x", connect_timeout=1)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgres://u@127.0.0.1/x", "psycopg", "postgres"),
        ("mysql://u@127.0.0.1/x", "pymysql", "mysql"),
    ],
)
def test_missing_driver_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    kind = parse_db_url(url).kind
    with pytest.raises(ConfigError) as info:
        PresentityWriter.open(url)
    assert str(info.value) == (
        f"db_url uses {kind} but {module} is not installed: pip install 'kazoo-amqp[{extra}]'"
    )


# ---------------------------------------------------------------------------- SQLite specifics


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'kz.db'}"
    init_database(url)
    return url


def test_sqlite_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(SchemaError, match=r"does not exist: run `kazoo-amqp db init"):
        PresentityWriter.open(f"sqlite://{path}")
    assert not path.exists()


def test_sqlite_wal_and_pragmas(sqlite_db: str) -> None:
    with PresentityWriter.open(sqlite_db) as w:
        assert w._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert w._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert w._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert w._conn.isolation_level is None
    # WAL persists in the file: a plain connection (Kamailio's) sees it too
    plain = sqlite3.connect(parse_db_url(sqlite_db).path or "")
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plain.close()


def test_sqlite_reader_does_not_block_the_writer(sqlite_db: str) -> None:
    reader = sqlite3.connect(parse_db_url(sqlite_db).path or "", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM presentity").fetchall()  # holds a read snapshot
    with PresentityWriter.open(sqlite_db, busy_timeout_ms=100) as w:
        start = time.monotonic()
        w.write([upd()])
        assert time.monotonic() - start < 0.09
    assert reader.execute("SELECT count(*) FROM presentity").fetchone() == (0,)  # snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM presentity").fetchone() == (1,)
    reader.close()


def test_sqlite_writer_waits_for_another_writer(sqlite_db: str) -> None:
    other = sqlite3.connect(
        parse_db_url(sqlite_db).path or "", isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    timer.start()
    try:
        with PresentityWriter.open(sqlite_db) as w:
            start = time.monotonic()
            w.write([upd()])
            assert time.monotonic() - start >= 0.2
    finally:
        timer.join()
        other.close()
    assert len(rows(sqlite_db)) == 1


def test_sqlite_busy_timeout_exceeded_is_a_database_error(sqlite_db: str) -> None:
    other = sqlite3.connect(parse_db_url(sqlite_db).path or "", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with PresentityWriter.open(sqlite_db, busy_timeout_ms=100) as w:
            with pytest.raises(DatabaseError, match="database is locked"):
                w.write([upd()])
            assert w.stats["errors"] == 1
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.skipif(
    not (KAMAILIO_SQLITE / "presence-create.sql").exists(),
    reason="Kamailio's SQLite DDL is not installed (apt-get install kamailio-sqlite-modules)",
)
def test_sqlite_ddl_matches_kamailio(tmp_path: Path) -> None:
    def describe(conn: sqlite3.Connection) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for table in ("presentity", "version"):
            out[table] = conn.execute(f"PRAGMA table_info({table})").fetchall()
            out[table + " indexes"] = sorted(
                (
                    name if not name.startswith("sqlite_autoindex") else "auto",
                    unique,
                    tuple(r[2] for r in conn.execute(f"PRAGMA index_info('{name}')")),
                )
                for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})")
            )
        out["versions"] = conn.execute(
            "SELECT table_name, table_version FROM version WHERE table_name IN "
            "('version', 'presentity') ORDER BY table_name"
        ).fetchall()
        return out

    theirs = sqlite3.connect(tmp_path / "kamailio.db")
    for name in ("standard-create.sql", "presence-create.sql"):
        theirs.executescript((KAMAILIO_SQLITE / name).read_text())
    ours_url = f"sqlite://{tmp_path / 'ours.db'}"
    init_database(ours_url)
    ours = sqlite3.connect(tmp_path / "ours.db")
    assert describe(ours) == describe(theirs)
    theirs.close()
    ours.close()


@pytest.mark.postgres
@pytest.mark.skipif(
    not (KAMAILIO_PG / "presence-create.sql").exists(),
    reason="Kamailio's PostgreSQL DDL is not installed (apt-get install kamailio-postgres-modules)",
)
def test_postgres_ddl_matches_kamailio() -> None:
    def describe(url: str) -> list[Any]:
        cols = _query(
            url,
            "SELECT table_name, ordinal_position, column_name, data_type, "
            "character_maximum_length, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_name IN ('presentity', 'version') "
            "ORDER BY 1, 2",
        )
        idx = _query(
            url,
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename IN ('presentity', 'version') ORDER BY 1",
        )
        ver = _query(
            url,
            "SELECT table_name, table_version FROM version "
            "WHERE table_name IN ('version', 'presentity') ORDER BY 1",
        )
        return [cols, idx, ver]

    with _server_db("postgres") as theirs, _server_db("postgres") as ours:
        u = parse_db_url(theirs)
        conn = connect(u)
        for name in ("standard-create.sql", "presence-create.sql"):
            conn.execute((KAMAILIO_PG / name).read_text())
        conn.commit()
        conn.close()
        init_database(ours)
        assert describe(ours) == describe(theirs)


def test_ddl_script_renders_for_every_kind() -> None:
    for kind in ("sqlite", "postgres", "mysql"):
        script = ddl_script(kind, "kz_presentity")
        assert "${" not in script
        assert (
            "INSERT INTO version (table_name, table_version) VALUES ('kz_presentity', 5);" in script
        )
        version_ddl, presentity_ddl = render_ddl(kind)
        assert len(version_ddl) == 1 and len(presentity_ddl) == 3


def test_check_schema_on_a_foreign_connection(sqlite_db: str) -> None:
    conn = sqlite3.connect(parse_db_url(sqlite_db).path or "")
    check_schema(conn, "sqlite", "presentity", db=sqlite_db)
    conn.close()


# ---------------------------------------------------------------------------- db_url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "sqlite:///var/lib/kamailio/presence.db",
            DbUrl("sqlite", path="/var/lib/kamailio/presence.db"),
        ),
        (
            "postgres://kam:pw@db.example.com:5433/kamailio",
            DbUrl(
                "postgres",
                host="db.example.com",
                port=5433,
                user="kam",
                password="pw",
                database="kamailio",
            ),
        ),
        (
            "postgresql://kam@127.0.0.1/kamailio",
            DbUrl("postgres", host="127.0.0.1", user="kam", database="kamailio"),
        ),
        (
            "mysql://root@127.0.0.1:3306/kamailio",
            DbUrl("mysql", host="127.0.0.1", port=3306, user="root", database="kamailio"),
        ),
        (
            "mysql://root:@localhost/kamailio",
            DbUrl("mysql", host="localhost", user="root", password="", database="kamailio"),
        ),
        (
            "mysql://kam:p@ss:w/rd@[::1]:3307/kz",
            DbUrl("mysql", host="::1", port=3307, user="kam", password="p@ss:w/rd", database="kz"),
        ),
        (
            "postgres://kam:p%40ss@h/db",  # verbatim, as Kamailio: no percent-decoding
            DbUrl("postgres", host="h", user="kam", password="p%40ss", database="db"),
        ),
        ("  mysql://h/db  ", DbUrl("mysql", host="h", database="db")),
    ],
)
def test_parse_db_url(value: str, expected: DbUrl) -> None:
    assert parse_db_url(value) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "db_url is empty"),
        ("oracle://u:pw@h/db", "unsupported scheme"),
        ("/var/lib/x.db", "unsupported scheme"),
        (
            "sqlite://presence.db",
            r"relative SQLite path; use three slashes .*sqlite:///var/lib/kamailio/presence\.db",
        ),
        ("sqlite:///var/lib/", "directory"),
        ("postgres://u:pw@h", "no database name"),
        ("postgres://u:pw@h:99999/db", "invalid port '99999'"),
        ("postgres://u:pw@h:x/db", "invalid port 'x'"),
        ("mysql://:pw@h/db", "empty user name"),
        ("mysql://u@::1:3306/db", "IPv6 host without brackets"),
    ],
)
def test_parse_db_url_errors(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_db_url(value)
    assert info.value.key == "db_url"
    assert "pw" not in str(info.value).replace("pwd", "")


def test_db_url_repr_redacts_password() -> None:
    url = parse_db_url("postgres://kam:hunter22@db:5432/kamailio")
    assert "hunter22" not in repr(url)
    assert "hunter22" not in str(url)
    assert str(url) == "postgres://kam:***@db:5432/kamailio"
    assert repr(url) == "DbUrl('postgres://kam:***@db:5432/kamailio')"
    assert url.password == "hunter22"
    assert str(parse_db_url("sqlite:///a/b.db")) == "sqlite:///a/b.db"


# ---------------------------------------------------------------------------- throughput


@pytest.mark.slow
@pytest.mark.parametrize("batch", [100, 1])
def test_sqlite_throughput(sqlite_db: str, batch: int) -> None:
    """Run with ``-m slow -k throughput -s`` to see the numbers (docs/compat-writer.md)."""
    body = (
        '<?xml version="1.0"?><dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" '
        'version="1" state="full" entity="sip:1000@example.com"><dialog id="x" call-id="abc" '
        'direction="initiator"><state>confirmed</state></dialog></dialog-info>'
    )
    count = 20_000
    results = []
    with PresentityWriter.open(sqlite_db) as w:
        for scope in (FlushScope.ETAG, FlushScope.PRESENTITY):
            ups = [
                upd(str(1000 + i % 2000), f"call-{i % 5000}", body, flush=scope)
                for i in range(count)
            ]
            start = time.perf_counter()
            for i in range(0, count, batch):
                w.write(ups[i : i + batch])
            elapsed = time.perf_counter() - start
            results.append((scope.name, count / elapsed, 1000 * elapsed / (count / batch)))
    for name, rate, ms in results:
        print(f"\nsqlite {name:10} batch={batch:<3} {rate:9.0f} rows/s {ms:.3f} ms/transaction")
        assert rate > 1000  # a very lax floor: catches a lost transaction or a per-row fsync
