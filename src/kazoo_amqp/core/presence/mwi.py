"""``message-summary`` bodies: RFC 3842 simple-message-summary (spec §9.3).

The C template is ``Messages-Waiting: <W>\\r\\nMessage-Account: <A>\\r\\nVoice-Message:
<New>/<Saved> (<Urgent>/<UrgentSaved>)\\r\\n``. With complete, plain values the body is exactly
that. Otherwise (``docs/compat-presence.md``) the body stays valid RFC 3842 and passes
Kamailio's ``presence_mwi`` check (status line ``yes``/``no``, printable ASCII, CRLF):

* ``Messages-Waiting`` is ``yes``/``no`` (``true``/``false`` and any letter case accepted); any
  other or missing value is derived from the counts (``yes`` when there are new messages);
* the ``Message-Account`` line is left out when the value is empty or not an absolute URI, and
  the URI is percent-encoded where needed (so no CR/LF or non-ASCII can reach the body);
* a count that is not a plain decimal number is read as json-c ``get_int`` does, negative
  values become 0 and missing ones 0 (C writes ``/ (/)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kazoo_amqp.core.presence import xml
from kazoo_amqp.core.presence.fields import get_int, get_str

__all__ = ["build_message_summary"]

_DIGITS = re.compile(r"[0-9]+")
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[!-~]+")
_WAITING = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def build_message_summary(payload: Mapping[str, Any]) -> str:
    """The message-summary body for an MWI update."""
    new = _count(payload, "Messages-New")
    saved = _count(payload, "Messages-Saved")
    urgent = _count(payload, "Messages-Urgent")
    urgent_saved = _count(payload, "Messages-Urgent-Saved")
    waiting = _WAITING.get(get_str(payload, "Messages-Waiting").strip().lower())
    if waiting is None:
        waiting = "yes" if new.strip("0") or urgent.strip("0") else "no"
    lines = [f"Messages-Waiting: {waiting}"]
    account = xml.uri(get_str(payload, "Message-Account"))
    if _ABSOLUTE_URI.fullmatch(account):
        lines.append(f"Message-Account: {account}")
    lines.append(f"Voice-Message: {new}/{saved} ({urgent}/{urgent_saved})")
    return "".join(line + "\r\n" for line in lines)


def _count(payload: Mapping[str, Any], key: str) -> str:
    text = get_str(payload, key)
    if _DIGITS.fullmatch(text):
        return text
    return str(max(0, get_int(payload, key)))
