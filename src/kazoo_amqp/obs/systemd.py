"""systemd's notification protocol (``Type=notify``), with the standard library only.

:func:`notify` sends one datagram such as ``READY=1`` to ``$NOTIFY_SOCKET`` (a path, or an
abstract socket written with a leading ``@``). Without the variable it does nothing, so the
daemon behaves the same outside systemd. A failure to send is logged, never raised: the
daemon's work does not depend on the service manager hearing about it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]

log = logging.getLogger("kazoo_amqp.systemd")


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``"READY=1"``, ``"RELOADING=1"``, ``"STOPPING=1"``, ``"STATUS=…"``,
    several joined by newlines); True when a service manager socket took it."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at NOTIFY_SOCKET=%r (%s): %s", address, state, exc)
        return False
    return True
