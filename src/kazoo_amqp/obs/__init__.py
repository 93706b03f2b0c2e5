"""Observability: metrics, health, the status page, log formats and systemd notification.

An I/O package like ``amqp/`` or ``workers/``: it imports only ``core`` and ``errors``; the daemon
hands it what it reads (a status snapshot, the ``core.stats.Recorder``, readiness).
"""
