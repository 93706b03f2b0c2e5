"""The pure presence core: payload -> presentity row and body (PIDF, dialog-info, MWI).

No I/O and no clock: the caller passes ``now``. The writer (``kazoo_amqp.presence``) stores the
:class:`PresentityUpdate` and must apply updates with the same :func:`presentity_key` in order.
"""

from __future__ import annotations

from kazoo_amqp.core.presence.model import (
    CONTENT_TYPES,
    PACKAGES,
    FlushScope,
    PresentityUpdate,
    presentity_key,
)
from kazoo_amqp.core.presence.presentity import DEFAULT_EXPIRES, build_update, dispatch

__all__ = [
    "CONTENT_TYPES",
    "DEFAULT_EXPIRES",
    "PACKAGES",
    "FlushScope",
    "PresentityUpdate",
    "build_update",
    "dispatch",
    "presentity_key",
]
