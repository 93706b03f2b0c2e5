"""Shared fixtures of the integration tests (each helper adds only what it needs)."""

from __future__ import annotations

import socket

import pytest

RABBITMQ_HOST = "127.0.0.1"
RABBITMQ_PORT = 5672


@pytest.fixture
def rabbitmq() -> dict[str, object]:
    """Connection keywords for the local RabbitMQ (guest/guest); skips when it is not running."""
    try:
        socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=1).close()
    except OSError:
        pytest.skip(f"RabbitMQ is not running on {RABBITMQ_HOST}:{RABBITMQ_PORT}")
    return {"host": RABBITMQ_HOST, "port": RABBITMQ_PORT, "user": "guest", "password": "guest"}
