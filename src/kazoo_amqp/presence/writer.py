"""Presentity rows on SQLite, PostgreSQL and MySQL/MariaDB (Kamailio 5.6 schema version 5).

:class:`PresentityWriter` applies a batch of :class:`PresentityUpdate` in order, in one short
transaction, with bound parameters only. Per update:

* ``FlushScope.ETAG``: an upsert keyed on ``(username, domain, event, etag)``
  (``INSERT … ON CONFLICT … DO UPDATE`` on SQLite/PostgreSQL, ``INSERT … ON DUPLICATE KEY UPDATE``
  on MySQL/MariaDB); other etags of the presentity are kept.
* ``FlushScope.PRESENTITY``: ``DELETE`` every row of ``(username, domain, event)``, then the same
  upsert. Other presentities and other events are never touched.

The writer is blocking (run it in a thread from asyncio) and serialises its own calls with a lock.
Differences from the C module are in ``docs/compat-writer.md``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kazoo_amqp.core.presence.model import FlushScope
from kazoo_amqp.errors import ConfigError, DatabaseError, PresenceError, SchemaError, UsageError
from kazoo_amqp.presence.dburl import DbUrl, parse_db_url
from kazoo_amqp.presence.schema import check_schema, check_table_name, init_schema

if TYPE_CHECKING:
    from kazoo_amqp.core.presence.model import PresentityUpdate

log = logging.getLogger(__name__)

#: pua_lock_type values Kamailio accepts: 0 none, 1 write, 2 full. See docs/compat-writer.md.
LOCK_TYPES = (0, 1, 2)

_DRIVERS = {"postgres": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql")}

#: PyMySQL error codes that mean the connection is gone (client-side CR_* codes).
_MYSQL_GONE = {2006, 2013, 2014, 2045, 2055}

_COLUMNS = "username, domain, event, etag, sender, body, received_time, expires, priority"
_UPDATED = ("sender", "body", "received_time", "expires", "priority")

_MAX_MESSAGE = 400

Row = tuple[str, str, str, str, str, bytes, int, int, int]


def _import_driver(kind: str) -> Any:
    module, extra = _DRIVERS[kind]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"db_url uses {kind} but {module} is not installed: pip install 'kazoo-amqp[{extra}]'",
            key="db_url",
        ) from exc


def connect(
    url: DbUrl,
    *,
    create: bool = False,
    timeout: float = 5.0,
    busy_timeout_ms: int = 5000,
) -> Any:
    """Open a DB-API connection to ``url`` set up the way the writer needs it.

    SQLite: ``isolation_level=None`` (the writer issues ``BEGIN IMMEDIATE``/``COMMIT`` itself),
    ``busy_timeout``, WAL journal (persists in the file, so Kamailio's connections use it too) and
    ``synchronous=NORMAL``. The file must exist unless ``create``. PostgreSQL (psycopg 3) and
    MySQL/MariaDB (PyMySQL): autocommit off, every write committed explicitly.

    Raises :class:`ConfigError` (driver missing), :class:`SchemaError` (SQLite file missing) or
    :class:`DatabaseError` (cannot connect), each naming the redacted URL.
    """
    if url.kind == "sqlite":
        return _connect_sqlite(url, create=create, busy_timeout_ms=busy_timeout_ms)
    driver = _import_driver(url.kind)
    try:
        if url.kind == "postgres":
            kwargs: dict[str, Any] = {
                "host": url.host,
                "port": url.port,
                "user": url.user,
                "password": url.password,
                "dbname": url.database,
            }
            return driver.connect(
                **{k: v for k, v in kwargs.items() if v is not None},
                connect_timeout=max(1, round(timeout)),
                autocommit=False,
                application_name="kazoo-amqp",
            )
        return driver.connect(
            host=url.host or "localhost",
            port=url.port or 3306,
            user=url.user,
            password=url.password or "",
            database=url.database,
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=timeout,
            read_timeout=max(timeout, 30.0),
            write_timeout=max(timeout, 30.0),
            binary_prefix=True,
            # Refuse (rather than silently truncate) a too-long value, whatever the server default.
            init_command="SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), "
            "'STRICT_TRANS_TABLES')",
        )
    except Exception as exc:
        raise DatabaseError(f"cannot connect to {url}: {_message(exc, url)}") from exc


def _connect_sqlite(url: DbUrl, *, create: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    path = url.path or ""
    if not create and not os.path.exists(path):
        raise SchemaError(
            f"SQLite database file {path} of {url} does not exist: "
            "run `kazoo-amqp db init --config FILE`"
        )
    mode = "rwc" if create else "rw"
    uri = f"file:{urllib.parse.quote(path)}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise DatabaseError(
            f"cannot open {url}: {exc} (does the directory exist and is it writable?)"
        ) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        (journal,) = conn.execute("PRAGMA journal_mode").fetchone()
        if str(journal).lower() != "wal":
            (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(journal).lower() != "wal":
                log.warning("%s: could not switch the journal to WAL (got %s)", url, journal)
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as exc:
        # WAL needs a moment without other connections; not fatal, the next open retries.
        log.warning("%s: could not set WAL/synchronous pragmas: %s", url, exc)
    return conn


def _message(exc: BaseException, url: DbUrl) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if url.password and len(url.password) >= 3:
        text = text.replace(url.password, "***")
    if len(text) > _MAX_MESSAGE:  # PostgreSQL's DETAIL repeats the whole failing row
        text = text[:_MAX_MESSAGE] + "…"
    return text


def _describe(update: Any) -> str:
    return f"{update.presentity_uri} (event {update.event}, etag {update.etag!r})"


class _Failed(Exception):
    """Internal: a statement failed while applying ``what``."""

    def __init__(self, exc: BaseException, what: str) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.what = what


class PresentityWriter:
    """Writes presentity rows; see the module docstring. Build with :meth:`open`."""

    def __init__(
        self,
        url: DbUrl,
        conn: Any,
        *,
        table: str = "presentity",
        lock_type: int = 1,
        connect_timeout: float = 5.0,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.url = url
        self.kind = url.kind
        self.table = check_table_name(table)
        self.lock_type = _check_lock_type(lock_type)
        self.stats: dict[str, int] = {"batches": 0, "rows": 0, "errors": 0, "reconnects": 0}
        self._conn: Any = conn
        self._closed = False
        self._lock = threading.Lock()
        self._timeout = connect_timeout
        self._busy_timeout_ms = busy_timeout_ms
        p = "?" if self.kind == "sqlite" else "%s"
        t = self.table
        insert = f"INSERT INTO {t} ({_COLUMNS}) VALUES ({', '.join([p] * 9)})"
        if self.kind == "mysql":
            sets = ", ".join(f"{c} = VALUES({c})" for c in _UPDATED)
            self._upsert = f"{insert} ON DUPLICATE KEY UPDATE {sets}"
        else:
            sets = ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
            self._upsert = (
                f"{insert} ON CONFLICT (username, domain, event, etag) DO UPDATE SET {sets}"
            )
        self._flush = f"DELETE FROM {t} WHERE username = {p} AND domain = {p} AND event = {p}"
        self._expire = f"DELETE FROM {t} WHERE expires > 0 AND expires < {p}"

    # ------------------------------------------------------------------ construction

    @classmethod
    def open(
        cls,
        db_url: str | DbUrl,
        *,
        table: str = "presentity",
        lock_type: int = 1,
        init: bool = False,
        connect_timeout: float = 5.0,
        busy_timeout_ms: int = 5000,
    ) -> PresentityWriter:
        """Connect, optionally create the schema (``init``), check it, return a writer.

        Raises :class:`ConfigError` (bad URL, table name, lock type or missing driver),
        :class:`SchemaError` (table missing or not version 5) or :class:`DatabaseError`.
        """
        url = db_url if isinstance(db_url, DbUrl) else parse_db_url(db_url)
        check_table_name(table)
        _check_lock_type(lock_type)
        conn = connect(url, create=init, timeout=connect_timeout, busy_timeout_ms=busy_timeout_ms)
        try:
            if init:
                _init(conn, url, table)
            check_schema(conn, url.kind, table, db=str(url))
        except BaseException:
            _close_quietly(conn)
            raise
        return cls(
            url,
            conn,
            table=table,
            lock_type=lock_type,
            connect_timeout=connect_timeout,
            busy_timeout_ms=busy_timeout_ms,
        )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                _close_quietly(conn)

    def __enter__(self) -> PresentityWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PresentityWriter({str(self.url)!r}, table={self.table!r})"

    # ------------------------------------------------------------------ writing

    def write(self, updates: Sequence[PresentityUpdate]) -> None:
        """Apply ``updates`` in order in one transaction; all or nothing.

        Raises :class:`PresenceError` before touching the DB when a body is not valid Unicode
        text, and :class:`DatabaseError` (the transaction rolled back) when the DB refuses a
        statement. A lost connection is reopened once and the whole batch retried once; that is
        safe because a batch is idempotent (same final rows when applied twice).
        """
        if not updates:
            return
        rows = [_row(u) for u in updates]

        steps = self._plan(updates, rows)

        def apply(cur: Any) -> None:
            for sql, params, first, last in steps:
                try:
                    if len(params) == 1:
                        cur.execute(sql, params[0])
                    else:
                        cur.executemany(sql, params)
                except Exception as exc:
                    if first == last:
                        what = _describe(updates[first])
                    else:
                        what = (
                            f"one of updates {first + 1}-{last + 1} ({_describe(updates[first])} "
                            f"... {_describe(updates[last])})"
                        )
                    raise _Failed(exc, what) from exc

        self._transaction(apply, f"batch of {len(updates)} update(s)")
        self.stats["batches"] += 1
        self.stats["rows"] += len(updates)

    def _plan(
        self, updates: Sequence[PresentityUpdate], rows: list[Row]
    ) -> list[tuple[str, list[tuple[Any, ...]], int, int]]:
        """Statements for a batch: ``(sql, parameter rows, first index, last index)``.

        A run of consecutive ETAG updates is one ``executemany`` in order. A PRESENTITY update is
        a DELETE then the upsert. On SQLite and PostgreSQL (binary key comparison) a run of
        consecutive PRESENTITY updates is collapsed to the last update of each
        ``(username, domain, event)``: one ``executemany`` of DELETEs, one of upserts. That gives
        the same rows as applying them one by one (each DELETE wipes what the earlier ones wrote).
        MySQL compares keys by collation (case- and accent-insensitive by default), so there
        they stay one by one.
        """
        steps: list[tuple[str, list[tuple[Any, ...]], int, int]] = []
        i, n = 0, len(updates)
        while i < n:
            scope = updates[i].flush
            j = i
            while j < n and (updates[j].flush is FlushScope.PRESENTITY) == (
                scope is FlushScope.PRESENTITY
            ):
                j += 1
            if scope is not FlushScope.PRESENTITY:
                steps.append((self._upsert, list(rows[i:j]), i, j - 1))
            elif self.kind == "mysql" or j - i == 1:
                for k in range(i, j):
                    u = updates[k]
                    steps.append((self._flush, [(u.username, u.domain, u.event)], k, k))
                    steps.append((self._upsert, [rows[k]], k, k))
            else:
                last: dict[tuple[str, str, str], int] = {}
                for k in range(i, j):
                    u = updates[k]
                    last[(u.username, u.domain, u.event)] = k
                keep = sorted(last.values())
                steps.append((self._flush, list(last), i, j - 1))
                steps.append((self._upsert, [rows[k] for k in keep], i, j - 1))
            i = j
        return steps

    def delete_expired(self, now: int) -> int:
        """Delete rows with ``0 < expires < now`` (as Kamailio's clean timer); return the count."""
        count = 0

        def apply(cur: Any) -> None:
            nonlocal count
            try:
                cur.execute(self._expire, (int(now),))
            except Exception as exc:
                raise _Failed(exc, f"expired rows (expires < {int(now)})") from exc
            count = max(cur.rowcount, 0)

        self._transaction(apply, "delete of expired rows")
        return count

    # ------------------------------------------------------------------ internals

    def _transaction(self, apply: Callable[[Any], None], label: str) -> None:
        with self._lock:
            retried = False
            while True:
                conn = self._ensure_open()
                try:
                    cur = conn.cursor()
                    try:
                        self._begin(conn)
                        apply(cur)
                        conn.commit()
                    finally:
                        _close_quietly(cur)
                    return
                except Exception as exc:
                    failed = exc if isinstance(exc, _Failed) else _Failed(exc, label)
                    _rollback_quietly(conn)
                    if not retried and self._is_disconnect(conn, failed.exc):
                        retried = True
                        log.warning(
                            "%s: connection lost (%s); reconnecting and retrying the %s once",
                            self.url,
                            _message(failed.exc, self.url),
                            label,
                        )
                        self._reopen()
                        continue
                    self.stats["errors"] += 1
                    raise DatabaseError(
                        f"{self.url} refused the write of {failed.what} in table "
                        f"{self.table!r}: {_message(failed.exc, self.url)}; "
                        f"the {label} was rolled back"
                    ) from failed.exc

    def _begin(self, conn: Any) -> None:
        if self.kind == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
        elif self.kind == "mysql":
            conn.begin()
        # psycopg with autocommit off begins with the first statement.

    def _ensure_open(self) -> Any:
        if self._closed:
            raise UsageError(f"{self!r} is closed")
        if self._conn is None:
            try:
                self._conn = connect(
                    self.url, timeout=self._timeout, busy_timeout_ms=self._busy_timeout_ms
                )
            except (ConfigError, SchemaError):
                raise
            except DatabaseError:
                self.stats["errors"] += 1
                raise
        return self._conn

    def _reopen(self) -> None:
        old, self._conn = self._conn, None
        if old is not None:
            _close_quietly(old)
        self.stats["reconnects"] += 1
        try:
            self._ensure_open()
        except DatabaseError as exc:
            raise DatabaseError(f"lost the connection and could not reconnect: {exc}") from exc

    def _is_disconnect(self, conn: Any, exc: BaseException) -> bool:
        if self.kind == "postgres":
            return bool(getattr(conn, "broken", False) or getattr(conn, "closed", False))
        if self.kind == "mysql":
            err = _import_driver("mysql").err
            if isinstance(exc, err.InterfaceError):
                return True
            if isinstance(exc, err.OperationalError) and exc.args and exc.args[0] in _MYSQL_GONE:
                return True
            return not getattr(conn, "open", True)
        return False


def init_database(db_url: str | DbUrl, table: str = "presentity") -> bool:
    """``kazoo-amqp db init``: create the version and presentity tables where missing.

    Returns whether anything was created; the schema is checked afterwards either way.
    """
    url = db_url if isinstance(db_url, DbUrl) else parse_db_url(db_url)
    check_table_name(table)
    conn = connect(url, create=True)
    try:
        created = _init(conn, url, table)
        check_schema(conn, url.kind, table, db=str(url))
        return created
    finally:
        _close_quietly(conn)


def _init(conn: Any, url: DbUrl, table: str) -> bool:
    try:
        return init_schema(conn, url.kind, table)
    except (ConfigError, SchemaError):
        raise
    except Exception as exc:
        raise DatabaseError(
            f"could not create table {table!r} in {url}: {_message(exc, url)}"
        ) from exc


def _check_lock_type(lock_type: int) -> int:
    if isinstance(lock_type, bool) or lock_type not in LOCK_TYPES:
        raise ConfigError(
            f"pua_lock_type {lock_type!r} is not 0 (none), 1 (write) or 2 (full)",
            key="pua_lock_type",
        )
    return int(lock_type)


def _row(u: PresentityUpdate) -> Row:
    body: Any = u.body
    if not isinstance(body, bytes):
        try:
            body = str(body).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PresenceError(
                f"body of {_describe(u)} is not valid Unicode text ({exc.reason} at "
                f"position {exc.start}); nothing of the batch was written"
            ) from exc
    return (
        u.username,
        u.domain,
        u.event,
        u.etag,
        u.sender,
        body,
        int(u.received_time),
        int(u.expires),
        int(u.priority),
    )


def _rollback_quietly(conn: Any) -> None:
    try:
        conn.rollback()
    except Exception:  # the connection may be gone; the first error is what gets reported
        pass


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception:
        pass
