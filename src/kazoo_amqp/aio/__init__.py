"""Small asyncio building blocks shared by the I/O layers (``amqp/``, ``ipc/``, ``workers/``).

This package sits below the I/O layer: it imports nothing of theirs and nothing of the core.
"""

from kazoo_amqp.aio.coalesce import WriteCoalescer

__all__ = ["WriteCoalescer"]
