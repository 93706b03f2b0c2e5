"""Payload -> presentity row: the C module's ``kazoo_pua_publish*`` semantics (spec §3.5, §9).

:func:`build_update` is ``kazoo_pua_publish_presence`` / ``_mwi`` / ``_dialoginfo``: it skips the
``Event-Name`` / ``Event-Package`` checks and builds the row for the package it is given.
:func:`dispatch` is ``kazoo_pua_publish``: it acts only when ``Event-Name`` is exactly
``update`` and ``Event-Package`` is exactly one of :data:`PACKAGES`. Both comparisons are
case-sensitive, as in C (``Update`` or ``Dialog`` -> nothing, PUA-12); anything else returns
``None``, the C module's "return 1 and do nothing".

Row rules (per package):

============== ============================ ============ ==================================
package        username / domain            etag         sender
============== ============================ ============ ==================================
presence       From-User / From-Realm       ETag|Call-ID Sender-URI|Switch-URI|From
message-summ.  From-User / From-Realm       ETag|Call-ID Sender-URI|From
dialog         Presentity-User / -Realm (*) ETag|Call-ID Sender-URI|Switch-URI|sip:<Call-ID>
============== ============================ ============ ==================================

(*) all three Presentity fields, or all three From fields (§9.4).

``flush``: presence and message-summary always replace every row of the presentity (C
``reset=1``); dialog upserts on the etag unless ``Flush-Level`` >= 1.

``expires`` is absolute: ``now + Expires`` when ``Expires`` > 0, otherwise ``now +
default_expires`` (C writes 0, which Kamailio 5.6 with its default ``startup_mode=1`` never
serves). Deliberate differences from C are listed in ``docs/compat-presence.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kazoo_amqp.core.presence import xml
from kazoo_amqp.core.presence.dialoginfo import build_dialog_info, dialog_presentity
from kazoo_amqp.core.presence.fields import INT32_MAX, get_int, get_str
from kazoo_amqp.core.presence.model import PACKAGES, FlushScope, PresentityUpdate
from kazoo_amqp.core.presence.mwi import build_message_summary
from kazoo_amqp.core.presence.pidf import build_pidf
from kazoo_amqp.errors import MissingField, UsageError

__all__ = ["DEFAULT_EXPIRES", "build_update", "dispatch"]

#: Lifetime given to a row whose payload has no positive ``Expires``.
DEFAULT_EXPIRES = 3600

_CONTEXT_FIELDS = ("Event-Name", "Event-Package", "Call-ID", "From-User", "Msg-ID")

_DESCRIPTIONS = {
    "From": "the SIP URI of the party whose dialog this is",
    "To": "the SIP URI of the other party of the dialog",
    "From-User": "the user part of the presentity",
    "From-Realm": "the SIP domain of the presentity",
    "To-User": "the user part of the other party",
    "State": "the call state: early, confirmed, terminated, offline, ...",
}
_DIALOG_DESCRIPTIONS = {
    "From-User": "the user part of the presentity, used when Presentity, Presentity-User and"
    " Presentity-Realm are not all set",
    "From-Realm": "the SIP domain of the presentity, used when Presentity, Presentity-User and"
    " Presentity-Realm are not all set",
}


def build_update(
    package: str,
    payload: Mapping[str, Any],
    *,
    now: int,
    include_entity: bool = True,
    default_expires: int = DEFAULT_EXPIRES,
) -> PresentityUpdate:
    """The presentity row a ``package`` update payload produces.

    ``now`` is the current unix time (seconds); ``include_entity`` is ``pua_include_entity``
    (dialog ``<target>`` elements). Raises :class:`~kazoo_amqp.errors.MissingField` when a field
    the package needs is absent or empty, :class:`~kazoo_amqp.errors.UsageError` for an unknown
    package or a ``default_expires`` that is not positive.
    """
    builder = _BUILDERS.get(package)
    if builder is None:
        raise UsageError(f"unknown presence package {package!r}: use one of {', '.join(PACKAGES)}")
    if default_expires <= 0:
        raise UsageError(
            f"default_expires must be a positive number of seconds, got {default_expires}"
        )
    return builder(payload, now, include_entity, default_expires)


def dispatch(
    payload: Mapping[str, Any],
    *,
    now: int,
    include_entity: bool = True,
    default_expires: int = DEFAULT_EXPIRES,
) -> PresentityUpdate | None:
    """``kazoo_pua_publish``: the update for an ``Event-Name=update`` payload, else ``None``.

    ``Event-Name`` must be exactly ``update`` and ``Event-Package`` exactly ``presence``,
    ``dialog`` or ``message-summary`` (case-sensitive, as in C).
    """
    if get_str(payload, "Event-Name") != "update":
        return None
    package = get_str(payload, "Event-Package")
    if package not in PACKAGES:
        return None
    return build_update(
        package, payload, now=now, include_entity=include_entity, default_expires=default_expires
    )


def _presence(
    payload: Mapping[str, Any], now: int, include_entity: bool, default_expires: int
) -> PresentityUpdate:
    _require("presence", payload, ("From-User", "To-User", "State", "From-Realm"))
    return PresentityUpdate(
        event="presence",
        username=xml.clean(get_str(payload, "From-User")),
        domain=xml.clean(get_str(payload, "From-Realm")),
        etag=xml.clean(_etag(payload)),
        sender=xml.clean(_first(payload, "Sender-URI", "Switch-URI", "From")),
        body=build_pidf(payload),
        expires=_expires(payload, now, default_expires),
        received_time=now,
        flush=FlushScope.PRESENTITY,
    )


def _message_summary(
    payload: Mapping[str, Any], now: int, include_entity: bool, default_expires: int
) -> PresentityUpdate:
    _require("message-summary", payload, ("From-User", "From-Realm"))
    return PresentityUpdate(
        event="message-summary",
        username=xml.clean(get_str(payload, "From-User")),
        domain=xml.clean(get_str(payload, "From-Realm")),
        etag=xml.clean(_etag(payload)),
        sender=xml.clean(_first(payload, "Sender-URI", "From")),
        body=build_message_summary(payload),
        expires=_expires(payload, now, default_expires),
        received_time=now,
        flush=FlushScope.PRESENTITY,
    )


def _dialog(
    payload: Mapping[str, Any], now: int, include_entity: bool, default_expires: int
) -> PresentityUpdate:
    _require("dialog", payload, ("From", "To", "State"))
    _uri, user, realm = dialog_presentity(payload)
    missing = [name for name, value in (("From-User", user), ("From-Realm", realm)) if not value]
    if missing:
        raise _missing("dialog", payload, missing, _DIALOG_DESCRIPTIONS)
    sender = _first(payload, "Sender-URI", "Switch-URI") or "sip:" + get_str(payload, "Call-ID")
    return PresentityUpdate(
        event="dialog",
        username=xml.clean(user),
        domain=xml.clean(realm),
        etag=xml.clean(_etag(payload)),
        sender=xml.clean(sender),
        body=build_dialog_info(payload, include_entity=include_entity),
        expires=_expires(payload, now, default_expires),
        received_time=now,
        flush=FlushScope.PRESENTITY if get_int(payload, "Flush-Level") >= 1 else FlushScope.ETAG,
    )


_BUILDERS: dict[str, Callable[[Mapping[str, Any], int, bool, int], PresentityUpdate]] = {
    "presence": _presence,
    "dialog": _dialog,
    "message-summary": _message_summary,
}


def _first(payload: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = get_str(payload, key)
        if value:
            return value
    return ""


def _etag(payload: Mapping[str, Any]) -> str:
    return _first(payload, "ETag", "Call-ID")


def _expires(payload: Mapping[str, Any], now: int, default_expires: int) -> int:
    seconds = get_int(payload, "Expires")
    lifetime = seconds if seconds > 0 else default_expires
    # The column is a 32-bit INTEGER in all three databases.
    return min(now + lifetime, INT32_MAX)


def _require(package: str, payload: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    missing = [name for name in fields if not get_str(payload, name)]
    if missing:
        raise _missing(package, payload, missing, {})


def _missing(
    package: str,
    payload: Mapping[str, Any],
    fields: list[str],
    descriptions: Mapping[str, str],
) -> MissingField:
    named = [
        f"{name!r} ({descriptions.get(name) or _DESCRIPTIONS.get(name, 'required')})"
        for name in fields
    ]
    wanted = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return MissingField(
        f"{package} update needs {wanted}; got payload with {_context(payload)}",
        field=fields[0],
    )


def _context(payload: Mapping[str, Any]) -> str:
    parts = []
    for key in _CONTEXT_FIELDS:
        if key in payload:
            value = get_str(payload, key)
            shown = value if len(value) <= 60 else value[:57] + "..."
            parts.append(f"{key}={shown!r}")
    return ", ".join(parts) if parts else f"{len(payload)} member(s) and none of the key fields"
