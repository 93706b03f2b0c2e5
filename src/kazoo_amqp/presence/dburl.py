"""Kamailio-style ``db_url`` values for the presentity writer.

Accepted forms (the same strings Kamailio's ``presence``/``kazoo`` modules take):

* ``sqlite:///abs/path/presence.db``: three slashes, an absolute path. A relative path
  (``sqlite://presence.db``) is refused: Kamailio and the daemon run with different working
  directories, so a relative path would name two different files.
* ``postgres://user:password@host:port/database`` (``postgresql://`` is accepted too).
* ``mysql://user:password@host:port/database`` (MySQL or MariaDB).

User and password are taken verbatim, as Kamailio does: there is no percent-decoding, so the
``db_url`` copied from kamailio.cfg works unchanged. The user part ends at the first ``:``, the
password at the **last** ``@``, so a password may contain ``:``, ``@`` and ``/``. Port and
password are optional; a missing port means the driver's default (5432 / 3306).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kazoo_amqp.errors import ConfigError

DbKind = Literal["sqlite", "postgres", "mysql"]

_SCHEMES: dict[str, DbKind] = {
    "sqlite": "sqlite",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
}

_EXAMPLES = (
    "sqlite:///abs/path/presence.db, postgres://user:pass@host:5432/db "
    "or mysql://user:pass@host:3306/db"
)


@dataclass(frozen=True, slots=True)
class DbUrl:
    """A parsed ``db_url``. ``str()`` and ``repr()`` never show the password."""

    kind: DbKind
    path: str | None = None  # sqlite only: the absolute file path
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (for logs and error messages)."""
        if self.kind == "sqlite":
            return f"sqlite://{self.path}"
        auth = ""
        if self.user is not None:
            auth = self.user
            if self.password:
                auth += ":***"
            auth += "@"
        host = self.host or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.kind}://{auth}{host}{port}/{self.database or ''}"

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"DbUrl({self.redacted()!r})"


def _fail(value: str, why: str) -> ConfigError:
    return ConfigError(f"db_url {_redact_raw(value)!r} {why}; expected {_EXAMPLES}", key="db_url")


def _redact_raw(value: str) -> str:
    """Best-effort password redaction of an unparsed URL (for error messages)."""
    scheme, sep, rest = value.partition("://")
    if not sep or "@" not in rest:
        return value
    userinfo, _, hostpart = rest.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}@{hostpart}"


def parse_db_url(value: str) -> DbUrl:
    """Parse a Kamailio ``db_url``; raise :class:`ConfigError` naming the value and the fix."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"db_url is empty; expected {_EXAMPLES}", key="db_url")
    value = value.strip()
    scheme, sep, rest = value.partition("://")
    kind = _SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        raise _fail(value, "has an unsupported scheme (sqlite, postgres, postgresql, mysql)")
    if kind == "sqlite":
        return _parse_sqlite(value, rest)
    return _parse_server(value, kind, rest)


def _parse_sqlite(value: str, rest: str) -> DbUrl:
    if not rest.startswith("/"):
        raise _fail(
            value,
            "has a relative SQLite path; use three slashes and an absolute path, "
            f"e.g. sqlite:///var/lib/kamailio/{rest or 'presence.db'}",
        )
    if rest.rstrip("/") == "" or rest.endswith("/"):
        raise _fail(value, "names a directory, not an SQLite file")
    if "?" in rest or "#" in rest:
        raise _fail(value, "has a query string; SQLite URLs take only a path")
    return DbUrl(kind="sqlite", path=rest)


def _parse_server(value: str, kind: DbKind, rest: str) -> DbUrl:
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
        else:
            user = userinfo
        if not user:
            raise _fail(value, "has an empty user name before '@'")
    else:
        hostpart = rest
    authority, slash, database = hostpart.partition("/")
    if not slash or not database:
        raise _fail(value, "has no database name; add /DATABASE after the host")
    if "/" in database or "?" in database or "#" in database:
        raise _fail(value, f"has an invalid database name {database!r}")
    host: str | None
    port_text = ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _fail(value, "has an unterminated IPv6 address '['")
        host = authority[1:end]
        tail = authority[end + 1 :]
        if tail and not tail.startswith(":"):
            raise _fail(value, f"has junk {tail!r} after the IPv6 address")
        port_text = tail[1:]
    else:
        host, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise _fail(value, "has an IPv6 host without brackets; write [addr]:port")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _fail(value, f"has an invalid port {port_text!r} (1-65535)")
        port = int(port_text)
    return DbUrl(
        kind=kind,
        host=host or None,
        port=port,
        user=user,
        password=password,
        database=database,
    )
