"""``amqp_connection`` values: zones, AMQP URLs and TLS (spec §6.1, test vectors §15.8).

A value is ``[zone=NAME;]URL``, at most 512 characters in total. ``URL`` is parsed the way
rabbitmq-c 0.11 parses it (``amqp_parse_url``), walked here token by token:

* the scheme is ``amqp://`` or ``amqps://`` (TLS, default port 5671); ``kazoo://`` is rewritten to
  ``amqp://`` first, as the C module does;
* ``USER[:PASSWORD]@`` is optional; user and password default to ``guest``;
* the host defaults to ``localhost``; an IPv6 address is written in brackets, ``[::1]``;
* ``:PORT`` defaults to 5672 (5671 for ``amqps``);
* ``/VHOST`` is one percent-decoded path segment; no path means vhost ``/``;
* every part is percent-decoded, so ``/ : @ ? # [ ]`` in a password are written ``%2F %3A …``.

Deliberate differences from rabbitmq-c, listed in ``docs/compat-config.md``:

* ``amqp://h/`` gives vhost ``/`` (rabbitmq-c gives the empty vhost, on which every login fails);
* percent escapes of bytes >= 0x80 are decoded as UTF-8 (rabbitmq-c leaves them undecoded);
* a port must be plain digits from 1 to 65535, and only one ``:PORT`` is allowed (rabbitmq-c
  takes ``strtol`` leniency and, for ``h:1:2``, the last one).

A query string (``?heartbeat=…``) or fragment is rejected, exactly as rabbitmq-c rejects it: the
heartbeat and the connect timeout are the ``amqp_heartbeats`` and ``amqp_connect_timeout_*`` keys.
One exception, our own (``docs/compat.md``): a URL may end in ``?auth_mechanism=external`` (or
``plain``, the default) to log in with the TLS client certificate (SASL EXTERNAL, RabbitMQ's
``rabbitmq_auth_mechanism_ssl``) instead of user and password; it needs ``amqps://``.

This module is pure: it reads no files, environment or network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from kazoo_amqp.errors import ConfigError

__all__ = ["MAX_CONNECTION_LENGTH", "BrokerSpec", "parse_connection", "redact_url"]

#: Longest accepted ``amqp_connection`` value, zone prefix included (C buffer size).
MAX_CONNECTION_LENGTH = 512

_ZONE_PREFIX = "zone="
_DEFAULT_USER = "guest"
_DEFAULT_PASSWORD = "guest"
_DEFAULT_HOST = "localhost"
_DEFAULT_VHOST = "/"
_EXAMPLE = "amqp://guest:guest@127.0.0.1:5672"
_SHOWN_MAX = 100  # longest value quoted in an error message
_ENCODE_HINT = (
    "percent-encode / ? # [ ] @ : inside the user name, password and vhost "
    "(%2F %3F %23 %5B %5D %40 %3A)"
)

# the one query parameter we accept, only at the very end of the URL
_AUTH_QUERY = re.compile(r"\?auth_mechanism=(?P<mechanism>[^?#&]*)$", re.IGNORECASE)
_MECHANISMS = ("PLAIN", "EXTERNAL")
# USER:PASSWORD@ at the start of a valid URL's authority (no delimiter inside, rabbitmq-c rules).
_EXACT_USERINFO = re.compile(r"^(?P<head>[a-z]+://[^:@/?#\[\]]*:)(?P<pw>[^:@/?#\[\]]*)(?=@)")
# Best effort for values that did not parse: everything up to the last '@' is user information.
_LOOSE_USERINFO = re.compile(r"^(?P<head>[^:/]*://[^:@]*:)(?P<pw>.*)(?=@)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """One broker from ``amqp_connection``.

    ``server_id`` is 1-based in config order across all zones; ``primary`` tells whether ``zone``
    is the primary zone (publishing, queries and reply queues use primary brokers only). ``url``
    is the URL part of the value (``kazoo://`` rewritten to ``amqp://``); it holds the password,
    so log ``redacted`` instead. ``repr()`` never shows the password.
    """

    server_id: int
    zone: str
    primary: bool
    host: str
    port: int
    user: str
    password: str
    vhost: str
    tls: bool
    url: str
    #: SASL mechanism: "PLAIN" (user and password) or "EXTERNAL" (the TLS client certificate)
    auth_mechanism: str = "PLAIN"

    @property
    def redacted(self) -> str:
        """``url`` with the password replaced by ``***``, for logs and ``check-config``."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        return (
            f"BrokerSpec(server_id={self.server_id!r}, zone={self.zone!r}, "
            f"primary={self.primary!r}, host={self.host!r}, port={self.port!r}, "
            f"user={self.user!r}, password='***', vhost={self.vhost!r}, tls={self.tls!r}, "
            f"url={self.redacted!r}, auth_mechanism={self.auth_mechanism!r})"
        )


def redact_url(url: str) -> str:
    """Return ``url`` with the password of its ``USER:PASSWORD@`` part replaced by ``***``.

    Works on valid AMQP URLs exactly and on anything else as a best effort (everything between
    the first ``:`` after ``://`` and the last ``@`` counts as the password), so that error
    messages can show a value that failed to parse.
    """
    exact = _EXACT_USERINFO.match(url)
    if exact is not None:
        return f"{exact['head']}***{url[exact.end() :]}"
    loose = _LOOSE_USERINFO.match(url)
    if loose is not None:
        return f"{loose['head']}***{url[loose.end() :]}"
    return url


def parse_connection(
    value: str, *, server_id: int, primary_zone: str, key: str = "amqp_connection"
) -> BrokerSpec:
    """Parse one ``amqp_connection`` value into a :class:`BrokerSpec`.

    Args:
        value: ``[zone=NAME;]URL`` as written in the config.
        server_id: the broker's 1-based position in the config.
        primary_zone: the value of ``amqp_primary_zone``; brokers without ``zone=`` belong to it.
        key: the config key named in error messages.

    Raises:
        ConfigError: the value is too long, the zone prefix is malformed, or the URL does not
            parse; the message shows the value (password redacted) and an example.
    """
    if not isinstance(value, str):
        raise _error(key, value, "must be a string", f'"{_EXAMPLE}"')
    if len(value) > MAX_CONNECTION_LENGTH:
        raise _error(
            key,
            value,
            f"is {len(value)} characters long; at most {MAX_CONNECTION_LENGTH} are accepted",
            f'"{_EXAMPLE}"',
        )
    zone, url = _split_zone(value, primary_zone=primary_zone, key=key)
    if url.startswith("kazoo://"):
        url = "amqp://" + url[len("kazoo://") :]
    mechanism = "PLAIN"
    query = _AUTH_QUERY.search(url)
    if query is not None:
        mechanism = query["mechanism"].upper()
        if mechanism not in _MECHANISMS:
            raise _bad_url(
                key,
                value,
                f"auth_mechanism {query['mechanism']!r} is not supported; use "
                "auth_mechanism=external (TLS client certificate) or plain (the default)",
            )
        url = url[: query.start()]
    host, port, user, password, vhost, tls = _parse_url(url, value=value, key=key)
    if mechanism == "EXTERNAL" and not tls:
        raise _bad_url(
            key,
            value,
            "auth_mechanism=external logs in with the TLS client certificate, so it needs "
            "amqps:// (and amqps_cert / amqps_key)",
        )
    return BrokerSpec(
        server_id=server_id,
        zone=zone,
        primary=zone == primary_zone,
        host=host,
        port=port,
        user=user,
        password=password,
        vhost=vhost,
        tls=tls,
        url=url,
        auth_mechanism=mechanism,
    )


def _split_zone(value: str, *, primary_zone: str, key: str) -> tuple[str, str]:
    if not value.startswith(_ZONE_PREFIX):
        return primary_zone, value
    name, sep, url = value[len(_ZONE_PREFIX) :].partition(";")
    if not sep:
        raise _error(
            key,
            value,
            "the zone prefix needs a ';' between the zone name and the URL",
            f'"zone=east;{_EXAMPLE}"',
        )
    if not name:
        raise _error(
            key,
            value,
            "the zone name after 'zone=' is empty; name the zone or drop the prefix "
            "to use the primary zone",
            f'"zone=east;{_EXAMPLE}"',
        )
    return name, url


def _next_token(text: str, pos: int, *, colon_and_at: bool = True) -> tuple[str, str, int]:
    """Return (raw token, delimiter or "" at the end, position after the delimiter)."""
    delimiters = ":@/?#[]" if colon_and_at else "/?#[]"
    for index in range(pos, len(text)):
        if text[index] in delimiters:
            return text[pos:index], text[index], index + 1
    return text[pos:], "", len(text)


def _parse_url(url: str, *, value: str, key: str) -> tuple[str, int, str, str, str, bool]:
    """Split an AMQP URL into (host, port, user, password, vhost, tls)."""
    if url.startswith("amqp://"):
        tls, port = False, 5672
    elif url.startswith("amqps://"):
        tls, port = True, 5671
    else:
        scheme = url.split("://", 1)[0] if "://" in url else url
        raise _error(
            key,
            value,
            f"scheme {scheme!r} is not supported; use amqp://, amqps:// (TLS) or kazoo://",
            f'"{_EXAMPLE}"',
        )
    rest = url[url.index("://") + 3 :]
    user, password, host, vhost = _DEFAULT_USER, _DEFAULT_PASSWORD, _DEFAULT_HOST, _DEFAULT_VHOST

    host_token, delim, pos = _next_token(rest, 0)
    port_token: str | None = None
    if delim == ":":
        port_token, delim, pos = _next_token(rest, pos)
    if delim == "@":
        user = _decode(host_token, "user name", value=value, key=key)
        if port_token is not None:
            password = _decode(port_token, "password", value=value, key=key)
        port_token = None
        host_token, delim, pos = _next_token(rest, pos)
    if delim == "[":
        if host_token or port_token is not None:
            raise _bad_url(key, value, "'[' may only start an IPv6 host, as in amqp://[::1]:5672")
        inner, delim, pos = _next_token(rest, pos, colon_and_at=False)
        if delim != "]" or not inner:
            raise _bad_url(key, value, "an IPv6 host needs a closing ']', as in amqp://[::1]:5672")
        host = _decode(inner, "host", value=value, key=key)
        after, delim, pos = _next_token(rest, pos)
        if after:
            raise _bad_url(key, value, f"unexpected {after!r} after the IPv6 host's ']'")
    elif host_token:
        host = _decode(host_token, "host", value=value, key=key)
    if delim == ":":
        if port_token is not None:
            raise _bad_url(key, value, "there is more than one ':PORT'")
        port_token, delim, pos = _next_token(rest, pos)
    if port_token is not None:
        port = _port(port_token, value=value, key=key, tls=tls, before_at="@" in rest[pos - 1 :])
    if delim == "/":
        vhost_token, delim, pos = _next_token(rest, pos)
        if delim:
            raise _bad_url(key, value, _delimiter_problem(delim, rest[pos:], in_vhost=True))
        vhost = _decode(vhost_token, "vhost", value=value, key=key) or _DEFAULT_VHOST
    elif delim:
        raise _bad_url(key, value, _delimiter_problem(delim, rest[pos:], in_vhost=False))
    return host, port, user, password, vhost, tls


def _delimiter_problem(delim: str, after: str, *, in_vhost: bool) -> str:
    if delim in "?#" and "@" not in after:
        return (
            "query strings and fragments are not supported (set heartbeats with "
            "amqp_heartbeats and the connect timeout with amqp_connect_timeout_sec/_micro); "
            "the one query parameter accepted is ?auth_mechanism=external"
        )
    if delim == "/" and in_vhost and "@" not in after:
        return "the vhost is one path segment; write a '/' inside it as %2F"
    return f"unexpected {delim!r}; {_ENCODE_HINT}"


def _port(token: str, *, value: str, key: str, tls: bool, before_at: bool) -> int:
    if token.isascii() and token.isdigit() and 1 <= int(token) <= 65535:
        return int(token)
    if before_at:
        # Most likely a password with an unencoded delimiter: do not echo any part of it.
        raise _bad_url(
            key,
            value,
            f"the user information does not parse; {_ENCODE_HINT}",
        )
    default = 5671 if tls else 5672
    problem = f"port {token!r} is not a number from 1 to 65535 (default {default})"
    raise _bad_url(key, value, problem)


def _decode(token: str, what: str, *, value: str, key: str) -> str:
    try:
        return unquote(token, errors="strict")
    except UnicodeDecodeError:
        raise _bad_url(
            key, value, f"the {what} has percent escapes that are not valid UTF-8"
        ) from None


def _bad_url(key: str, value: str, problem: str) -> ConfigError:
    return _error(
        key,
        value,
        f"not a valid AMQP URL: {problem}",
        f'"{_EXAMPLE}/%2F"',
    )


def _error(key: str, value: object, problem: str, example: str) -> ConfigError:
    if not isinstance(value, str):
        shown = repr(value)
    elif value.startswith(_ZONE_PREFIX):
        shown = _redact_zoned(value)
    else:
        shown = f'"{redact_url(value)}"'
    if len(shown) > _SHOWN_MAX:
        shown = shown[: _SHOWN_MAX - 4] + '..."'
    return ConfigError(f"config key {key!r} = {shown}: {problem}, e.g. {key} = {example}", key=key)


def _redact_zoned(value: str) -> str:
    prefix, sep, url = value.partition(";")
    return f'"{prefix}{sep}{redact_url(url)}"' if sep else f'"{value}"'
