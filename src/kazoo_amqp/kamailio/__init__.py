"""The Kamailio side of the bridge: the app_python3 handler behind ``python_exec`` (issue 6).

Runs inside Kamailio (Debian's system Python 3.11, embedded by app_python3): standard library
and this package only. See :mod:`kazoo_amqp.kamailio.handler`.
"""

from kazoo_amqp.kamailio.handler import BridgeHandler

__all__ = ["BridgeHandler"]
