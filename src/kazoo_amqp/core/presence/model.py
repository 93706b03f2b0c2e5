"""What the presence core hands to the presentity writer: one row and how to store it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CONTENT_TYPES", "PACKAGES", "FlushScope", "PresentityUpdate", "presentity_key"]

#: The event packages the PUA writes, in the C module's dispatch order (§3.5).
PACKAGES: tuple[str, ...] = ("presence", "dialog", "message-summary")

#: Content type of the body stored for each package.
CONTENT_TYPES: dict[str, str] = {
    "presence": "application/pidf+xml",
    "dialog": "application/dialog-info+xml",
    "message-summary": "application/simple-message-summary",
}


class FlushScope(enum.Enum):
    """Which existing ``presentity`` rows an update replaces.

    No scope ever touches another presentity. The C module's ``reset`` argument (``Flush-Level``
    for dialog) also has levels 2, 3 and 4 that delete every row of the domain, of the event, or
    of the whole table before inserting (§9.1); one BLF update could wipe everybody's state. Here
    ``Flush-Level`` >= 1 maps to :attr:`PRESENTITY` (see ``docs/compat-presence.md``).
    """

    #: Upsert keyed on ``(username, domain, event, etag)``: other etags of the presentity stay.
    ETAG = "etag"
    #: Delete every row of this ``(username, domain, event)``, then insert (C ``reset=1``).
    PRESENTITY = "presentity"


@dataclass(frozen=True, slots=True)
class PresentityUpdate:
    """One row of Kamailio's ``presentity`` table (schema version 5) and its flush scope.

    Every string is valid XML 1.0 text and encodes as UTF-8 (lone surrogates and control
    characters from the payload are replaced with U+FFFD).
    """

    event: str  # 'presence' | 'dialog' | 'message-summary'
    username: str
    domain: str
    etag: str
    sender: str
    body: str
    expires: int  # ABSOLUTE unix time the row expires
    received_time: int
    flush: FlushScope
    priority: int = 0

    @property
    def presentity_uri(self) -> str:
        """``sip:user@domain``, the URI Kamailio's ``presence.refreshWatchers`` expects."""
        return f"sip:{self.username}@{self.domain}"

    @property
    def content_type(self) -> str:
        """The MIME type of :attr:`body`."""
        return CONTENT_TYPES[self.event]


def presentity_key(update: PresentityUpdate) -> tuple[str, str, str]:
    """``(username, domain, event)``: the unit the writer must keep in order.

    Updates of one presentity and event must be applied in the order they were received (early
    then terminated for one call must not be swapped: operator-issues §4.1, a BLF stuck in
    "early"). Route every update with the same key to the same serial queue; different keys may
    be written concurrently.
    """
    return (update.username, update.domain, update.event)
