"""A real Kamailio 5.6 presence server and SIPp watchers for end-to-end tests.

The harness runs the piece of the system that kazoo-amqp talks to: a Kamailio
``presence`` server that serves rows from the ``presentity`` table, plus SIPp
watchers that SUBSCRIBE to it and record the NOTIFYs they get.  A test (or the
kazoo-amqp daemon under test) writes ``presentity`` rows and then calls the
jsonrpcs method ``presence.refreshWatchers(uri, event, 1)``; the watcher must
then receive a NOTIFY whose body carries the new state.

Typical use::

    with KamailioPresence(tmp_path / "kam") as kam:
        with Watcher(kam, "dialog", "1000") as w:
            w.wait_subscribed()                       # initial NOTIFY received
            kam.write_presentity("1000", "dialog", body)   # or: let the daemon do it
            kam.refresh_watchers("sip:1000@example.net", "dialog")
            bodies = w.wait_notify_bodies(timeout=10)
            assert "<state>confirmed</state>" in bodies[-1]

Everything listens on 127.0.0.1 on free ports, everything Kamailio and SIPp
write goes below the run directory, every wait is bounded, and the processes
are stopped by PID (SIGTERM, then SIGKILL) when the context managers exit,
also when the test fails.

The Kamailio settings that make externally written rows work (``publ_cache 0``,
``subs_db_mode 1``, ``startup_mode 1`` with an ABSOLUTE future ``expires``,
``presence_xml force_active 1``) and their pitfalls are described in
``shared/spec/kamailio-presence.md``; the config is ``kamailio.cfg.tmpl``
beside this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CFG_TEMPLATE = HERE / "kamailio.cfg.tmpl"
SIPP_DIR = HERE / "sipp"

#: scenario file for each supported event package
SCENARIOS = {
    "dialog": SIPP_DIR / "subscribe_dialog.xml",
    "message-summary": SIPP_DIR / "subscribe_mwi.xml",
    "presence": SIPP_DIR / "subscribe_presence.xml",
}

#: where Debian installs the SQL schema files Kamailio ships
KAMAILIO_SHARE = Path("/usr/share/kamailio")

_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)
_REQUIRED_MODULES = (
    "tm", "sl", "rr", "pv", "maxfwd", "textops", "siputils", "xlog", "sanity", "kex",
    "jsonrpcs", "db_sqlite", "presence", "presence_xml", "presence_dialoginfo", "presence_mwi",
)  # fmt: skip

LOCALHOST = "127.0.0.1"


class HarnessError(RuntimeError):
    """Kamailio or SIPp could not be started, or did not answer in time."""


# --------------------------------------------------------------------------- discovery


def kamailio_binary() -> str | None:
    """Path of the ``kamailio`` binary (also found in /usr/sbin when not on PATH)."""
    return shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin:/usr/local/sbin")


def sipp_binary() -> str | None:
    """Path of the ``sipp`` binary."""
    return shutil.which("sipp") or shutil.which("sipp", path="/usr/bin:/usr/local/bin")


def module_dir() -> str | None:
    """Directory holding Kamailio's modules (the one with ``presence.so``)."""
    for d in _MODULE_DIRS:
        if os.path.isfile(os.path.join(d, "presence.so")):
            return d
    return None


def missing_requirements() -> str | None:
    """Why the harness cannot run here, or ``None`` when everything is installed."""
    missing = [name for name, path in (("kamailio", kamailio_binary()), ("sipp", sipp_binary()))
               if path is None]  # fmt: skip
    if missing:
        return "missing binaries: " + ", ".join(missing)
    mdir = module_dir()
    if mdir is None:
        return "Kamailio presence modules not found"
    mods = [m for m in _REQUIRED_MODULES if not os.path.isfile(os.path.join(mdir, m + ".so"))]
    if mods:
        return "missing Kamailio modules: " + ", ".join(mods)
    for f in ("standard-create.sql", "presence-create.sql"):
        if not (KAMAILIO_SHARE / "db_sqlite" / f).is_file():
            return f"missing {KAMAILIO_SHARE / 'db_sqlite' / f}"
    return None


def free_udp_ports(n: int = 1) -> list[int]:
    """``n`` distinct UDP ports on 127.0.0.1 that are free right now.

    All sockets are held open until every port is chosen so the ports differ;
    there is still a small race with other programs, which the callers handle
    by retrying a failed start.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_media_port(attempts: int = 50) -> int:
    """A UDP port ``p`` on 127.0.0.1 with ``p`` and ``p + 2`` free (SIPp's ``-mp``)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind((LOCALHOST, 0))
            port = a.getsockname()[1]
            if port + 2 > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind((LOCALHOST, port + 2))
                except OSError:
                    continue
                return int(port)
    raise HarnessError("no free UDP port pair for SIPp media")


def _stop_process(proc: subprocess.Popen[bytes], grace: float, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` by its PID: ``sig``, wait ``grace`` s, then SIGKILL.

    ``proc`` was started with ``start_new_session=True``, so its process group
    id is its PID; leftover children of that group (only ours) are killed too.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    # children that outlived the main process (same, private process group)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- kamailio


class KamailioPresence:
    """A Kamailio 5.6 presence server, started for one test (or one module).

    Args:
        run_dir: directory for everything of this instance (created): the
            rendered ``kamailio.cfg``, ``kamailio.log``, ``kamailio.pid``, the
            runtime dir, the ctl socket, ``presence.db`` (SQLite) and the
            watchers' SIPp files.
        db: ``"sqlite"`` (default: a fresh SQLite file, WAL mode, created from
            Kamailio's own ``standard-create.sql`` + ``presence-create.sql``), or
            a PostgreSQL URL ``postgres://user:password@host:port/dbname``.  For
            PostgreSQL the schema is created when the ``version`` table is
            missing; otherwise the ``presentity``, ``active_watchers`` and
            ``watchers`` rows are deleted so each instance starts clean.
            Needs ``psycopg`` (3.x).
        domain: the presence domain used by default (``example.net``).
        debug: Kamailio log level (2 = info; 3 = debug, very verbose).
        clean_period: presence ``clean_period`` in seconds (expired-row timer).
        children: SIP worker processes.  Keep 1 with SQLite: Kamailio 5.6's
            db_sqlite has no busy timeout, so two workers writing
            ``active_watchers`` at once fail with "database is locked".
        start_timeout: seconds to wait for the JSON-RPC port to answer.
        extra_defines: more ``#!define`` names for the template.

    Attributes (valid once started):
        sip_port: UDP port of the SIP listener on 127.0.0.1.
        rpc_port: UDP port of the jsonrpcs datagram socket on 127.0.0.1.
        rpc_url: ``"udp:127.0.0.1:<rpc_port>"`` (the daemon's refresh target).
        db_path: the SQLite file (``None`` for PostgreSQL).
        db_url: the ``db_url`` Kamailio uses.
        pid: PID of Kamailio's main process.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    START_ATTEMPTS = 3

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        db: str = "sqlite",
        *,
        domain: str = "example.net",
        debug: int = 2,
        clean_period: int = 100,
        children: int = 1,
        start_timeout: float = 15.0,
        extra_defines: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.domain = domain
        self.debug = debug
        self.clean_period = clean_period
        self.children = children
        self.start_timeout = start_timeout
        self.extra_defines = tuple(extra_defines)
        if db == "sqlite":
            self.db_kind = "sqlite"
            self.db_path: Path | None = self.run_dir / "presence.db"
            # Kamailio drops the "/" after the (empty) host: sqlite:///a/b opens the
            # RELATIVE path a/b (only right when the cwd is /).  Four slashes = absolute.
            self.db_url = f"sqlite:///{self.db_path}"
            self.pg_dsn: str | None = None
        elif db.startswith(("postgres://", "postgresql://")):
            self.db_kind = "postgres"
            self.db_path = None
            self.pg_dsn = db
            self.db_url = "postgres://" + db.split("://", 1)[1]
        else:
            raise ValueError(f"db must be 'sqlite' or a postgres:// URL, not {db!r}")
        self.cfg_path = self.run_dir / "kamailio.cfg"
        self.log_path = self.run_dir / "kamailio.log"
        self.pid_path = self.run_dir / "kamailio.pid"
        self.ctl_socket: Path | None = self.run_dir / "kamailio_ctl"
        if len(str(self.ctl_socket)) > 100:  # sun_path is 108 bytes: skip ctl then
            self.ctl_socket = None
        self.sip_port = 0
        self.rpc_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._watchers: list[Watcher] = []
        self._rpc_id = 0

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> KamailioPresence:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def rpc_url(self) -> str:
        """jsonrpcs datagram address, ``udp:127.0.0.1:<port>``."""
        return f"udp:{LOCALHOST}:{self.rpc_port}"

    @property
    def rpc_addr(self) -> tuple[str, int]:
        return (LOCALHOST, self.rpc_port)

    @property
    def sip_addr(self) -> tuple[str, int]:
        return (LOCALHOST, self.sip_port)

    def presentity_uri(self, user: str, domain: str | None = None) -> str:
        """``sip:<user>@<domain>``: the exact URI Kamailio stores for a watcher."""
        return f"sip:{user}@{domain or self.domain}"

    def start(self) -> None:
        """Create the DB, render the config and start Kamailio; wait for its RPC.

        Retries with new ports when a port was taken in between (rare race).
        Raises :class:`HarnessError` with the log tail when it does not come up.
        """
        if self.proc is not None:
            raise HarnessError("already started")
        binary = kamailio_binary()
        mdir = module_dir()
        if binary is None or mdir is None:
            raise HarnessError(missing_requirements() or "kamailio not installed")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._create_db()
        last_error = ""
        for _attempt in range(self.START_ATTEMPTS):
            self.sip_port, self.rpc_port = free_udp_ports(2)
            self._render_cfg(mdir)
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            if self.ctl_socket is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.ctl_socket.unlink()
            args = [
                binary, "-DD", "-E",
                "-f", str(self.cfg_path),
                "-Y", str(self.run_dir),      # runtime dir: nothing in /var/run
                "-P", str(self.pid_path),
                "-w", str(self.run_dir),
                "-m", "64", "-M", "8",
            ]  # fmt: skip
            with open(self.log_path, "ab") as logf:
                logf.write(f"=== harness: starting {' '.join(args)}\n".encode())
                logf.flush()
                self.proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    cwd=self.run_dir, start_new_session=True,
                )  # fmt: skip
            try:
                self._wait_ready()
                return
            except HarnessError as e:
                last_error = str(e)
                _stop_process(self.proc, grace=5)
                self.proc = None
                if "address already in use" not in last_error.lower():
                    break  # a real error: do not retry
        raise HarnessError(last_error)

    def stop(self) -> None:
        """Stop the watchers, then Kamailio by PID (SIGTERM; SIGKILL after 5 s)."""
        for w in list(self._watchers):
            w.stop()
        if self.proc is not None:
            _stop_process(self.proc, grace=5)
            self.proc = None

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"kamailio exited with rc={self.proc.returncode}; log tail:\n"
                    + _tail(self.log_path)
                )
            try:
                reply = self.rpc("core.version", timeout=0.3)
            except (TimeoutError, OSError):
                continue
            if "result" in reply:
                return
        raise HarnessError(
            f"kamailio RPC on {self.rpc_url} did not answer in {self.start_timeout}s; log tail:\n"
            + _tail(self.log_path)
        )

    def _render_cfg(self, mdir: str) -> None:
        defines = ["WITH_SQLITE" if self.db_kind == "sqlite" else "WITH_POSTGRES"]
        if self.ctl_socket is not None:
            defines.append("WITH_CTL")
        defines.extend(self.extra_defines)
        values = {
            "DEFINES": "\n".join(f"#!define {d}" for d in defines),
            "DEBUG": str(self.debug),
            "SIP_PORT": str(self.sip_port),
            "RPC_PORT": str(self.rpc_port),
            "DOMAIN": self.domain,
            "MPATH": mdir.rstrip("/") + "/",
            "DB_URL": self.db_url,
            "CTL_SOCKET": str(self.ctl_socket or ""),
            "CLEAN_PERIOD": str(self.clean_period),
            "CHILDREN": str(self.children),
        }
        text = CFG_TEMPLATE.read_text()
        text = re.sub(r"@@([A-Z_]+)@@", lambda m: values[m.group(1)], text)
        self.cfg_path.write_text(text)

    # ----------------------------------------------------------------- database

    def _create_db(self) -> None:
        if self.db_kind == "sqlite":
            assert self.db_path is not None
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(self.db_path) + suffix).unlink()
            con = sqlite3.connect(self.db_path)
            try:
                con.execute("PRAGMA journal_mode=WAL")  # persists in the file
                for f in ("standard-create.sql", "presence-create.sql"):
                    con.executescript((KAMAILIO_SHARE / "db_sqlite" / f).read_text())
                con.commit()
            finally:
                con.close()
            return
        psycopg = _import_psycopg()
        with psycopg.connect(self.pg_dsn, connect_timeout=5, autocommit=True) as con:
            exists = con.execute("SELECT to_regclass('version') IS NOT NULL").fetchone()[0]
            if not exists:
                for f in ("standard-create.sql", "presence-create.sql"):
                    con.execute((KAMAILIO_SHARE / "postgres" / f).read_text())
            else:
                for table in ("presentity", "active_watchers", "watchers"):
                    con.execute(f"DELETE FROM {table}")

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        """A DB-API connection to Kamailio's database, committed on success.

        SQLite: ``sqlite3`` with a 5 s busy timeout (so *we* wait for Kamailio,
        never the other way round; Kamailio 5.6's db_sqlite has no busy timeout).
        PostgreSQL: a ``psycopg`` connection.  Keep transactions short.
        """
        if self.db_kind == "sqlite":
            con = sqlite3.connect(self.db_path, timeout=5)  # type: ignore[arg-type]
            try:
                with con:
                    yield con
            finally:
                con.close()
        else:
            psycopg = _import_psycopg()
            with psycopg.connect(self.pg_dsn, connect_timeout=5) as con:
                yield con

    def _ph(self, sql: str) -> str:
        return sql if self.db_kind == "sqlite" else sql.replace("?", "%s")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders) and return all rows."""
        with self.db() as con:
            cur = con.execute(self._ph(sql), tuple(params))
            return list(cur.fetchall()) if cur.description else []

    def write_presentity(
        self,
        user: str,
        event: str,
        body: str | bytes,
        *,
        domain: str | None = None,
        etag: str | None = None,
        expires_in: int = 3600,
        received_time: int | None = None,
        sender: str = "",
    ) -> None:
        """Upsert one ``presentity`` row the way an external writer must.

        ``expires`` is stored as an ABSOLUTE unix time ``now + expires_in``
        (startup_mode 1 serves only rows with ``expires > now``); the same
        ``etag`` replaces the row, another etag adds a document.  The write is
        committed before returning, so a following refresh sees it.
        """
        now = int(time.time())
        data = body.encode() if isinstance(body, str) else body
        sql = (
            "INSERT INTO presentity (username, domain, event, etag, expires, received_time,"
            " body, sender, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
            " ON CONFLICT (username, domain, event, etag) DO UPDATE SET"
            " expires = excluded.expires, received_time = excluded.received_time,"
            " body = excluded.body, sender = excluded.sender"
        )
        params = (
            user, domain or self.domain, event, etag or f"e2e-{event}-{user}",
            now + expires_in, now if received_time is None else received_time, data, sender,
        )  # fmt: skip
        with self.db() as con:
            con.execute(self._ph(sql), params)

    def presentity_rows(
        self, user: str | None = None, event: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``presentity`` (optionally filtered), as dicts; body decoded as UTF-8."""
        keys = ("username", "domain", "event", "etag", "expires", "received_time", "body", "sender")
        sql = "SELECT " + ", ".join(keys) + " FROM presentity"
        where, params = self._filters(("username", user), ("event", event))
        rows = self.query(sql + where + " ORDER BY received_time, id", params)
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            if isinstance(d["body"], bytes | bytearray | memoryview):
                d["body"] = bytes(d["body"]).decode("utf-8", "replace")
            out.append(d)
        return out

    def active_watchers(
        self, presentity_uri: str | None = None, event: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of ``active_watchers`` (subs_db_mode 1 writes them at SUBSCRIBE time)."""
        keys = ("presentity_uri", "event", "watcher_username", "watcher_domain", "callid",
                "to_tag", "from_tag", "contact", "expires", "status")  # fmt: skip
        sql = "SELECT " + ", ".join(keys) + " FROM active_watchers"
        where, params = self._filters(("presentity_uri", presentity_uri), ("event", event))
        return [dict(zip(keys, r, strict=True)) for r in self.query(sql + where, params)]

    def wait_watchers(
        self, presentity_uri: str, event: str, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` subscriptions for (uri, event) are stored."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.active_watchers(presentity_uri, event)
            if len(rows) >= count or time.monotonic() >= deadline:
                if len(rows) < count:
                    raise TimeoutError(
                        f"{len(rows)} watcher(s) of {presentity_uri} {event} after {timeout}s"
                    )
                return rows
            time.sleep(0.05)

    @staticmethod
    def _filters(*pairs: tuple[str, Any]) -> tuple[str, list[Any]]:
        conds = [(col, val) for col, val in pairs if val is not None]
        if not conds:
            return "", []
        return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in conds), [v for _, v in conds]

    # ----------------------------------------------------------------- JSON-RPC

    def rpc(self, method: str, params: Sequence[Any] | dict[str, Any] | None = None,
            timeout: float = 5.0) -> dict[str, Any]:  # fmt: skip
        """Send one JSON-RPC 2.0 request as a UDP datagram; return the reply object.

        The reply (``{"result": ...}`` or ``{"error": {...}}``) comes back to our
        socket's port.  Raises ``TimeoutError`` when nothing answers.
        """
        self._rpc_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._rpc_id}
        if params is not None:
            req["params"] = params
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((LOCALHOST, 0))
            s.settimeout(timeout)
            s.sendto(json.dumps(req).encode(), self.rpc_addr)
            deadline = time.monotonic() + timeout
            while True:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                try:
                    data, _ = s.recvfrom(65535)
                except TimeoutError as e:
                    raise TimeoutError(f"no JSON-RPC reply to {method} from {self.rpc_url}") from e
                reply: dict[str, Any] = json.loads(data)
                if reply.get("id") == self._rpc_id:
                    return reply

    def refresh_watchers(
        self, uri: str, event: str, type_: int = 1, retries: int = 3
    ) -> dict[str, Any]:
        """``presence.refreshWatchers(uri, event, type_)``; returns the reply.

        ``type_`` must be the JSON number 1 for "presentity table changed".
        A 500 (e.g. SQLite ``database is locked``) is retried ``retries`` times.
        Note ``{"result": {}}`` does NOT prove a NOTIFY went out: it is also the
        answer when the URI matches no watcher (it must be byte-identical).
        """
        reply: dict[str, Any] = {}
        for attempt in range(retries + 1):
            reply = self.rpc("presence.refreshWatchers", [uri, event, type_])
            if "error" not in reply:
                return reply
            if attempt < retries:
                time.sleep(0.1)
        return reply

    # ----------------------------------------------------------------- logs

    def logs(self) -> str:
        """The whole Kamailio log so far (stdout+stderr, ``-E``)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self) -> list[str]:
        """Log lines at ERROR/CRITICAL/ALERT level."""
        return [line for line in self.logs().splitlines()
                if re.search(r"\b(ERROR|CRITICAL|ALERT|BUG):", line)]  # fmt: skip

    def watcher(self, event: str, user: str, domain: str | None = None, **kwargs: Any) -> Watcher:
        """Shorthand for ``Watcher(self, event, user, domain, **kwargs)`` (not started)."""
        return Watcher(self, event, user, domain, **kwargs)


def _import_psycopg() -> Any:
    try:
        import psycopg  # type: ignore[import-not-found,unused-ignore]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise HarnessError("PostgreSQL mode needs psycopg 3 (pip install 'psycopg[binary]')") from e
    return psycopg


# --------------------------------------------------------------------------- sipp watcher


@dataclass
class Notify:
    """One NOTIFY as received by a SIPp watcher."""

    start_line: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; last one wins
    body: str = ""
    raw: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def content_type(self) -> str:
        return self.header("content-type")

    @property
    def subscription_state(self) -> str:
        return self.header("subscription-state")

    @property
    def cseq(self) -> int:
        m = re.match(r"\s*(\d+)", self.header("cseq"))
        return int(m.group(1)) if m else -1

    @property
    def terminated(self) -> bool:
        return self.subscription_state.startswith("terminated")


_BEGIN = b"=== SIPP NOTIFY BEGIN ===\n"
_END = b"=== SIPP NOTIFY END ==="


def parse_notify_log(data: bytes) -> list[Notify]:
    """Parse a watcher's ``-log_file``: every complete BEGIN/END block is one NOTIFY."""
    out: list[Notify] = []
    pos = 0
    while True:
        b = data.find(_BEGIN, pos)
        if b < 0:
            break
        e = data.find(_END, b)
        if e < 0:
            break  # still being written
        raw = data[b + len(_BEGIN) : e]
        pos = e + len(_END)
        sep = raw.find(b"\r\n\r\n")
        seplen = 4
        if sep < 0:
            sep, seplen = raw.find(b"\n\n"), 2
        head = raw[:sep] if sep >= 0 else raw
        rest = raw[sep + seplen :] if sep >= 0 else b""
        lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if _:
                headers[name.strip().lower()] = value.strip()
        try:
            clen = int(headers.get("content-length", headers.get("l", "")))
        except ValueError:
            clen = len(rest.rstrip(b"\n"))  # sipp's <log> adds one "\n"
        body = rest[:clen].decode("utf-8", "replace")
        out.append(Notify(start_line=lines[0], headers=headers, body=body, raw=raw))
    return out


class Watcher:
    """A SIPp UAC that SUBSCRIBEs to ``sip:<user>@<domain>`` and records NOTIFYs.

    Flow (scenario ``sipp/subscribe_<event>.xml``): SUBSCRIBE (Expires 300) ->
    200/202 -> initial NOTIFY -> 200 -> more NOTIFYs (each answered 200) until
    ``bodies`` NOTIFYs *with a body* arrived (or ``max_notifies``) -> un-SUBSCRIBE
    (Expires 0) -> 200 -> final NOTIFY (``Subscription-State: terminated``) ->
    200 -> SIPp exits 0.  Every NOTIFY is logged to ``notify.log``.

    Args:
        harness: the running :class:`KamailioPresence`.
        event: ``"dialog"``, ``"message-summary"`` or ``"presence"``.
        user, domain: the presentity (domain defaults to ``harness.domain``).
        bodies: how many NOTIFYs with a non-empty body to wait for (after the
            initial one) before un-subscribing.
        max_notifies: give up (un-subscribe) after this many NOTIFYs after the
            initial one, with or without body.
        recv_timeout: seconds SIPp waits for any expected message; a missing
            NOTIFY makes SIPp fail the call (exit 1) after this long.
        total_timeout: hard limit for the SIPp process (``-timeout``, and the
            harness kills it shortly after).
        unsubscribe: send the un-SUBSCRIBE (Expires 0) at the end (default).
            With ``False`` SIPp just exits and the subscription stays in
            Kamailio until it expires -- useful when the test keeps refreshing
            while watchers finish (each un-SUBSCRIBE is a DB write in a SIP
            worker that can collide with a refresh on SQLite).
        name: label for the per-watcher directory (default ``<event>-<user>-<n>``).

    Use as a context manager (started on enter, stopped on exit) or call
    :meth:`start` / :meth:`stop`.  The harness stops leftover watchers too.
    """

    _counter = 0

    def __init__(
        self,
        harness: KamailioPresence,
        event: str,
        user: str,
        domain: str | None = None,
        *,
        bodies: int = 1,
        max_notifies: int = 20,
        recv_timeout: float = 20.0,
        total_timeout: float = 60.0,
        unsubscribe: bool = True,
        name: str | None = None,
    ) -> None:
        if event not in SCENARIOS:
            raise ValueError(f"event must be one of {sorted(SCENARIOS)}, not {event!r}")
        if bodies < 1 or max_notifies < bodies:
            raise ValueError("need 1 <= bodies <= max_notifies")
        Watcher._counter += 1
        self.harness = harness
        self.event = event
        self.user = user
        self.domain = domain or harness.domain
        self.bodies = bodies
        self.max_notifies = max_notifies
        self.recv_timeout = recv_timeout
        self.total_timeout = total_timeout
        self.unsubscribe = unsubscribe
        label = name or f"{event}-{user}-{Watcher._counter}"
        self.dir = harness.run_dir / "watchers" / re.sub(r"[^A-Za-z0-9_.-]", "_", label)
        self.scenario_path = self.dir / "scenario.xml"
        self.log_path = self.dir / "notify.log"
        self.msg_path = self.dir / "messages.log"
        self.err_path = self.dir / "errors.log"
        self.out_path = self.dir / "sipp.out"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._deadline = 0.0

    @property
    def presentity_uri(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _render_scenario(self) -> None:
        text = SCENARIOS[self.event].read_text()
        text, n1 = re.subn(
            r'(<!-- WANTED -->\s*<test assign_to="enough" variable="nbodies" '
            r'compare="greater_than_equal" value=")\d+(")',
            rf"\g<1>{self.bodies}\g<2>", text,
        )  # fmt: skip
        text, n2 = re.subn(
            r'(<!-- MAXNOTIFY -->\s*<test assign_to="more" variable="nnotify" '
            r'compare="less_than" value=")\d+(")',
            rf"\g<1>{self.max_notifies}\g<2>", text,
        )  # fmt: skip
        n3 = 1
        if not self.unsubscribe:
            text, n3 = re.subn(r'<send next="unsubscribe">', '<send next="finished">', text)
        if n1 != 1 or n2 != 1 or n3 != 1:
            raise HarnessError(
                f"{SCENARIOS[self.event]}: WANTED/MAXNOTIFY/unsubscribe markers not found"
            )
        self.scenario_path.write_text(text)

    def start(self) -> Watcher:
        """Launch SIPp in the background (own process group); returns self."""
        if self.proc is not None:
            raise HarnessError("watcher already started")
        if self.harness.proc is None:
            raise HarnessError("Kamailio is not running")
        sipp = sipp_binary()
        if sipp is None:
            raise HarnessError("sipp not installed")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self._render_scenario()
        # SIP port, plus the media (-mp, uses mp and mp+2) and control (-cp)
        # ports SIPp always opens: explicit free ports let watchers run in parallel.
        self.port, ctrl = free_udp_ports(2)
        media = free_media_port()
        args = [
            sipp, f"{LOCALHOST}:{self.harness.sip_port}",
            "-sf", str(self.scenario_path),
            "-s", self.user, "-key", "domain", self.domain,
            "-i", LOCALHOST, "-p", str(self.port),
            "-mi", LOCALHOST, "-mp", str(media), "-cp", str(ctrl),
            "-m", "1", "-l", "1",
            "-recv_timeout", str(int(self.recv_timeout * 1000)),
            "-timeout", f"{int(self.total_timeout)}s", "-timeout_error",
            # no BYE on abort (there is no INVITE dialog); fail on unexpected messages
            "-nostdin", "-default_behaviors", "abortunexp,pingreply",
            "-trace_logs", "-log_file", str(self.log_path),
            "-trace_msg", "-message_file", str(self.msg_path),
            "-trace_err", "-error_file", str(self.err_path),
        ]  # fmt: skip
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )  # fmt: skip
        self._deadline = time.monotonic() + self.total_timeout + 5
        self.harness._watchers.append(self)
        return self

    def stop(self) -> None:
        """Stop SIPp by PID (SIGTERM, SIGKILL after 2 s) if it still runs."""
        if self.proc is not None:
            _stop_process(self.proc, grace=2)
        if self in self.harness._watchers:
            self.harness._watchers.remove(self)

    @property
    def returncode(self) -> int | None:
        """SIPp's exit code (0 = scenario completed), ``None`` while running."""
        return None if self.proc is None else self.proc.poll()

    def notifies(self) -> list[Notify]:
        """All NOTIFYs received so far (the initial one first)."""
        try:
            return parse_notify_log(self.log_path.read_bytes())
        except FileNotFoundError:
            return []

    def _wait_for(self, cond: Any, timeout: float) -> bool:
        deadline = min(time.monotonic() + timeout, self._deadline)
        while True:
            if cond():
                return True
            if self.returncode is not None:
                return bool(cond())
            if time.monotonic() >= deadline:
                if time.monotonic() >= self._deadline:
                    self.stop()  # hard limit reached: never leave SIPp behind
                return False
            time.sleep(0.02)

    def wait_subscribed(self, timeout: float = 10.0) -> Notify:
        """Wait for the initial NOTIFY (the subscription is then active and stored).

        Raises :class:`HarnessError` with diagnostics when it does not arrive.
        """
        if not self._wait_for(lambda: len(self.notifies()) >= 1, timeout):
            raise HarnessError(f"{self}: no initial NOTIFY within {timeout}s\n{self.diagnostics()}")
        return self.notifies()[0]

    def wait_notify_bodies(self, timeout: float = 10.0, count: int | None = None) -> list[str]:
        """Wait for NOTIFYs with a body and return their bodies, oldest first.

        Returns once ``count`` (default: the watcher's ``bodies``) non-empty
        bodies were received after the initial NOTIFY, or SIPp ended, or
        ``timeout`` passed -- check the length.  The initial NOTIFY and the
        final ``terminated`` one are not included.
        """
        want = self.bodies if count is None else count

        def bodies() -> list[str]:
            ns = self.notifies()[1:]
            return [n.body for n in ns if n.body and not n.terminated]

        self._wait_for(lambda: len(bodies()) >= want, timeout)
        return bodies()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for SIPp to finish (un-subscribe done); return its exit code.

        Kills SIPp and raises ``TimeoutError`` when it is still running.
        """
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=max(0.0, min(timeout, self._deadline - time.monotonic())))
        except subprocess.TimeoutExpired as e:
            self.stop()
            raise TimeoutError(f"{self}: sipp still running after {timeout}s") from e

    def diagnostics(self) -> str:
        """SIPp's errors, its message trace tail and Kamailio's log tail, for failures."""
        parts = [f"sipp rc={self.returncode} dir={self.dir}"]
        sources = (
            ("sipp errors", self.err_path, 20),
            ("sipp messages", self.msg_path, 60),
            ("kamailio log", self.harness.log_path, 30),
        )
        for title, path, n in sources:
            parts.append(f"--- {title} ({path}):\n{_tail(path, n)}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"Watcher({self.event} {self.presentity_uri} port={self.port} pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None
