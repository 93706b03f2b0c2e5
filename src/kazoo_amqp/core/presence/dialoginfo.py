"""``dialog`` bodies: RFC 4235 dialog-info (spec §9.4).

The body is the C module's one-line template (§15.9 PUA-6) whenever that is valid RFC 4235,
including the C spacing between the optional tag attributes (``local-tag="a"  direction=...``
when there is no remote tag). Differences, all to stay valid (``docs/compat-presence.md``):

* no ``direction`` attribute unless ``Direction`` is exactly ``initiator`` or ``recipient``
  (C writes ``direction=""``);
* ``<state>`` is ``State`` when it is one of the RFC 4235 states, otherwise ``terminated``
  (C copies e.g. ``offline``);
* without a Call-ID the C module writes a fixed dummy dialog with no ``id`` and a hard-coded
  ``call-id``; here the normal dialog is written from the payload's own data, without a
  ``call-id`` attribute and with ``id`` = Dialog-ID, else :data:`NO_CALL_DIALOG_ID`;
* ``entity``, ``<identity>`` and ``<target uri>`` are percent-encoded where a URI needs it, and
  every value is XML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kazoo_amqp.core.presence import xml
from kazoo_amqp.core.presence.fields import get_str

__all__ = [
    "DIALOG_STATES",
    "DIRECTIONS",
    "NO_CALL_DIALOG_ID",
    "build_dialog_info",
    "dialog_presentity",
    "dialog_state",
]

#: RFC 4235 §4.1.2 dialog states. Matched exactly (case-sensitive), like the C State mapping.
DIALOG_STATES = frozenset({"trying", "proceeding", "early", "confirmed", "terminated"})
#: The ``direction`` enumeration of the schema.
DIRECTIONS = frozenset({"initiator", "recipient"})
#: ``<dialog id>`` when the payload has neither Dialog-ID nor Call-ID.
NO_CALL_DIALOG_ID = "no-call-id"


def dialog_presentity(payload: Mapping[str, Any]) -> tuple[str, str, str]:
    """(URI, user, realm) of the watched presentity.

    ``Presentity``, ``Presentity-User`` and ``Presentity-Realm`` when all three are non-empty;
    otherwise all three come from ``From``, ``From-User`` and ``From-Realm`` (C rule).
    """
    presentity = (
        get_str(payload, "Presentity"),
        get_str(payload, "Presentity-User"),
        get_str(payload, "Presentity-Realm"),
    )
    if all(presentity):
        return presentity
    return (get_str(payload, "From"), get_str(payload, "From-User"), get_str(payload, "From-Realm"))


def dialog_state(state: str) -> str:
    """The ``<state>`` text: ``state`` when RFC 4235 defines it, else ``terminated``."""
    return state if state in DIALOG_STATES else "terminated"


def build_dialog_info(payload: Mapping[str, Any], *, include_entity: bool = True) -> str:
    """The dialog-info body for a ``dialog`` update.

    ``include_entity`` is the C module's ``pua_include_entity``: when false the two
    ``<target uri=.../>`` elements are left out.
    """
    entity, _user, _realm = dialog_presentity(payload)
    from_uri = get_str(payload, "From")
    to_uri = get_str(payload, "To")
    call_id = get_str(payload, "Call-ID")
    dialog_id = get_str(payload, "Dialog-ID") or call_id or NO_CALL_DIALOG_ID
    from_tag = get_str(payload, "From-Tag")
    to_tag = get_str(payload, "To-Tag")
    direction = get_str(payload, "Direction")

    local_tag = f'local-tag="{xml.attr(from_tag)}"' if from_tag else ""
    remote_tag = f'remote-tag="{xml.attr(to_tag)}"' if to_tag else ""
    direction_attr = f'direction="{direction}"' if direction in DIRECTIONS else ""
    if call_id:
        # The C template: one space before each slot, even when the slot is empty.
        head = f'<dialog id="{xml.attr(dialog_id)}" call-id="{xml.attr(call_id)}"'
        head += f" {local_tag} {remote_tag}"
        head = head + f" {direction_attr}" if direction_attr else head.rstrip(" ")
    else:
        attributes = (f'id="{xml.attr(dialog_id)}"', local_tag, remote_tag, direction_attr)
        head = "<dialog " + " ".join(a for a in attributes if a)

    local = _participant(
        "local",
        display=get_str(payload, "From-User"),
        identity=from_uri,
        target=get_str(payload, "From-URI") or from_uri,
        include_target=include_entity,
    )
    remote = _participant(
        "remote",
        display=get_str(payload, "To-User"),
        identity=to_uri,
        target=get_str(payload, "To-URI") or to_uri,
        include_target=include_entity,
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="1" state="full"'
        f' entity="{xml.attr(xml.uri(entity))}">'
        f"{head}><state>{dialog_state(get_str(payload, 'State'))}</state>"
        f"{local}{remote}</dialog></dialog-info>"
    )


def _participant(
    element: str, *, display: str, identity: str, target: str, include_target: bool
) -> str:
    body = f'<identity display="{xml.attr(display)}">{xml.text(xml.uri(identity))}</identity>'
    if include_target:
        body += f'<target uri="{xml.attr(xml.uri(target))}"/>'
    return f"<{element}>{body}</{element}>"
