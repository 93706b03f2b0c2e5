"""Create and check Kamailio 5.6's ``presentity`` table (schema version 5).

The DDL lives in ``sql/<kind>-version.sql`` and ``sql/<kind>-presentity.sql`` with a ``${table}``
placeholder for the configured table name. Column for column it is what Kamailio 5.6.3 installs
(``/usr/share/kamailio/{db_sqlite,postgres}/presence-create.sql``; the MySQL variant follows
``utils/kamctl/mysql``), so Kamailio's ``presence`` module accepts the table as its own.

Both functions take a DB-API connection opened by :func:`kazoo_amqp.presence.writer.connect`
(SQLite with ``isolation_level=None``; psycopg 3 or PyMySQL with autocommit off) and leave no
transaction open behind them.
"""

from __future__ import annotations

import re
from importlib import resources
from string import Template
from typing import Any

from kazoo_amqp.errors import ConfigError, SchemaError
from kazoo_amqp.presence.dburl import DbKind

#: The presentity schema version of Kamailio 5.6 (``P_TABLE_VERSION`` in presence.c).
PRESENTITY_VERSION = 5

#: The columns the writer reads or writes; they must all exist.
COLUMNS = (
    "username",
    "domain",
    "event",
    "etag",
    "sender",
    "body",
    "received_time",
    "expires",
    "priority",
)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_KINDS = ("sqlite", "postgres", "mysql")


def check_table_name(table: str) -> str:
    """Return ``table`` if it is a plain SQL identifier (it is put into SQL text), else raise."""
    if not isinstance(table, str) or not _IDENT.fullmatch(table):
        raise ConfigError(
            f"presentity_table {table!r} is not a plain table name: use letters, digits and "
            "'_' (at most 63, not starting with a digit), e.g. presentity",
            key="presentity_table",
        )
    return table


def _kind(kind: str) -> DbKind:
    if kind not in _KINDS:
        raise ConfigError(f"unknown database kind {kind!r}: expected one of {', '.join(_KINDS)}")
    return kind  # type: ignore[return-value]


def _param(kind: str) -> str:
    return "?" if kind == "sqlite" else "%s"


def render_ddl(kind: str, table: str = "presentity") -> tuple[list[str], list[str]]:
    """The DDL statements as ``(version_table, presentity_table)`` for ``kind`` and ``table``."""
    kind = _kind(kind)
    check_table_name(table)

    def load(name: str) -> list[str]:
        text = (resources.files("kazoo_amqp.presence") / "sql" / name).read_text("utf-8")
        text = Template(text).substitute(table=table)
        lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

    return load(f"{kind}-version.sql"), load(f"{kind}-presentity.sql")


def ddl_script(kind: str, table: str = "presentity") -> str:
    """A complete script (both tables, the version rows) for operators who run it by hand."""
    version_ddl, presentity_ddl = render_ddl(kind, table)
    rows = [
        "INSERT INTO version (table_name, table_version) VALUES ('version', 1)",
        f"INSERT INTO version (table_name, table_version) VALUES ('{table}', {PRESENTITY_VERSION})",
    ]
    return ";\n".join([*version_ddl, rows[0], *presentity_ddl, rows[1]]) + ";\n"


def _table_exists(cur: Any, kind: str, table: str) -> bool:
    if kind == "sqlite":
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    elif kind == "postgres":
        cur.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
    else:
        cur.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )
    return cur.fetchone() is not None


def _begin(conn: Any, kind: str) -> None:
    if kind == "sqlite":
        conn.execute("BEGIN IMMEDIATE")
    elif kind == "mysql":
        conn.begin()
    # psycopg (autocommit off) opens a transaction with the first statement.


def _rollback_quietly(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection may be gone; the caller reports the first error
        pass


def init_schema(conn: Any, kind: str, table: str = "presentity") -> bool:
    """Create the ``version`` table and ``table`` where missing; return whether anything was made.

    SQLite and PostgreSQL do it in one transaction (all or nothing). MySQL commits every DDL
    statement implicitly, so there a failure can leave the table without its version row;
    :func:`check_schema` then says so. An existing ``table`` is never altered.
    """
    kind = _kind(kind)
    version_ddl, presentity_ddl = render_ddl(kind, table)
    p = _param(kind)
    created = False
    cur = conn.cursor()
    try:
        _begin(conn, kind)
        if not _table_exists(cur, kind, "version"):
            for stmt in version_ddl:
                cur.execute(stmt)
            cur.execute(
                f"INSERT INTO version (table_name, table_version) VALUES ({p}, {p})",
                ("version", 1),
            )
            created = True
        if not _table_exists(cur, kind, table):
            for stmt in presentity_ddl:
                cur.execute(stmt)
            cur.execute(f"DELETE FROM version WHERE table_name = {p}", (table,))
            cur.execute(
                f"INSERT INTO version (table_name, table_version) VALUES ({p}, {p})",
                (table, PRESENTITY_VERSION),
            )
            created = True
        conn.commit()
    except BaseException:
        _rollback_quietly(conn)
        raise
    finally:
        cur.close()
    return created


def check_schema(conn: Any, kind: str, table: str = "presentity", *, db: str = "") -> None:
    """Raise :class:`SchemaError` unless ``table`` exists with all columns and version 5.

    ``db`` names the database in messages (pass the redacted URL).
    """
    kind = _kind(kind)
    check_table_name(table)
    where = db or f"the {kind} database"
    fix = "run `kazoo-amqp db init --config FILE`"
    p = _param(kind)
    cur = conn.cursor()
    try:
        if not _table_exists(cur, kind, table):
            raise SchemaError(f"table {table!r} not found in {where}: {fix}")
        if not _table_exists(cur, kind, "version"):
            raise SchemaError(
                f"table {table!r} exists in {where} but the `version` table does not, so its "
                f"schema version is unknown: create it with Kamailio's standard-create.sql and "
                f"insert ('{table}', {PRESENTITY_VERSION}) if the table is Kamailio 5.6's, "
                f"or drop the table and {fix}"
            )
        cur.execute(f"SELECT table_version FROM version WHERE table_name = {p}", (table,))
        row = cur.fetchone()
        if row is None:
            raise SchemaError(
                f"no row for {table!r} in the `version` table of {where}: insert "
                f"('{table}', {PRESENTITY_VERSION}) if the table is Kamailio 5.6's, "
                f"or drop the table and {fix}"
            )
        version = int(row[0])
        if version != PRESENTITY_VERSION:
            raise SchemaError(
                f"{table} table version is {version}, kazoo-amqp writes Kamailio 5.6's version "
                f"{PRESENTITY_VERSION} schema: migrate the table with the presence-create.sql "
                f"of Kamailio 5.6 (or point db_url at a 5.6 database) in {where}"
            )
        try:
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {table} WHERE 1 = 0")
            cur.fetchall()
        except Exception as exc:
            raise SchemaError(
                f"table {table!r} in {where} says version {PRESENTITY_VERSION} but lacks "
                f"columns the writer needs ({', '.join(COLUMNS)}): {exc}"
            ) from exc
    finally:
        cur.close()
        _rollback_quietly(conn)
