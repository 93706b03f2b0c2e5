"""``presence`` bodies: RFC 3863 PIDF with RFC 4479 data-model and RFC 4480 RPID (spec §9.2).

The body is the C module's one-line template (§15.9 PUA-1) with three changes that make it a
valid PIDF document (``docs/compat-presence.md``):

* ``entity`` is the URI ``sip:<From-User>@<From-Realm>`` instead of the bare ``From-User``;
* the ``<tuple>`` ``id`` (an ``xs:ID``) is the Call-ID only when that is an NCName, otherwise a
  valid id derived from it (:func:`tuple_id`);
* the ``<dm:person>`` ``id`` (an ``xs:ID``) is ``p1`` instead of ``1``.

Every value is escaped (:mod:`kazoo_amqp.core.presence.xml`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kazoo_amqp.core.presence import xml
from kazoo_amqp.core.presence.fields import get_str

__all__ = [
    "NO_CALL_TUPLE_ID",
    "PERSON_ID",
    "STATE_MAP",
    "build_pidf",
    "pidf_entity",
    "presence_state",
    "tuple_id",
]

#: ``State`` -> (note, rpid activity element, basic), exact and case-sensitive as in C.
STATE_MAP: dict[str, tuple[str, str, str]] = {
    "early": ("Busy", "<rpid:busy/>", "open"),
    "confirmed": ("On the Phone", "<rpid:on-the-phone/>", "open"),
    "offline": ("Offline", "", "closed"),
}
#: Any other ``State`` (``terminated``, ``online``, ...).
DEFAULT_STATE: tuple[str, str, str] = ("Available", "", "open")

#: ``<tuple id>`` used when the payload has no Call-ID (C writes the invalid ``id=""``).
NO_CALL_TUPLE_ID = "no-call-id"
#: ``<dm:person id>`` (C writes the invalid ``id="1"``).
PERSON_ID = "p1"

#: Characters kept in the user part of the entity URI (RFC 3261 ``user``).
_USER_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/"
)
#: Characters kept in the host part (a domain name, optionally ``:port``).
_HOST_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:")


def presence_state(state: str) -> tuple[str, str, str]:
    """(note, activity element, basic) for a ``State`` value, as the C module maps it."""
    return STATE_MAP.get(state, DEFAULT_STATE)


def pidf_entity(user: str, realm: str) -> str:
    """``sip:user@realm`` with both parts percent-encoded where a URI needs it."""
    user_part = xml.percent_encode(user, safe=_USER_SAFE)
    return f"sip:{user_part}@{xml.percent_encode(realm, safe=_HOST_SAFE)}"


def tuple_id(call_id: str) -> str:
    """A valid ``xs:ID`` for the tuple: the Call-ID itself when it is an NCName.

    Otherwise ``t`` + the Call-ID with bytes outside ``[A-Za-z0-9.-]`` written as ``_XX``
    (``abc123@host`` -> ``tabc123_40host``); :data:`NO_CALL_TUPLE_ID` when there is no Call-ID.
    """
    return xml.xml_id(call_id, prefix="t", empty=NO_CALL_TUPLE_ID)


def build_pidf(payload: Mapping[str, Any]) -> str:
    """The PIDF body for a ``presence`` update (reads From-User, From-Realm, Call-ID, State)."""
    note, activity, basic = presence_state(get_str(payload, "State"))
    tid = tuple_id(get_str(payload, "Call-ID"))
    person_id = PERSON_ID if tid != PERSON_ID else "p2"  # ids are unique within a document
    entity = pidf_entity(get_str(payload, "From-User"), get_str(payload, "From-Realm"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf"'
        ' xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        ' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"'
        ' xmlns:c="urn:ietf:params:xml:ns:pidf:cipid"'
        f' entity="{xml.attr(entity)}">'
        f' <tuple xmlns="urn:ietf:params:xml:ns:pidf" id="{tid}">'
        f"<status><basic>{basic}</basic></status></tuple>"
        f'<note xmlns="urn:ietf:params:xml:ns:pidf">{note}</note>'
        '<dm:person xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"'
        f' xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" id="{person_id}">'
        f"<rpid:activities>{activity}</rpid:activities>"
        f"<dm:note>{note}</dm:note></dm:person></presence>"
    )
