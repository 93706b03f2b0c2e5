"""Kamailio's ``core_hash`` and the worker choice of ``consistent-worker`` bindings (spec §5.4)."""

from __future__ import annotations

import struct

__all__ = ["core_hash", "pick_worker"]

_MASK32 = 0xFFFFFFFF


def core_hash(data: bytes) -> int:
    """Kamailio master core_hash of one string: unsigned bytes, 32-bit unsigned arithmetic."""
    full = len(data) & ~3
    h = 0
    if full:
        for v in struct.unpack(f">{full // 4}I", data[:full]):
            h += v ^ (v >> 3)
    v = 0
    for b in data[full:]:
        v = (v << 8) | b
    h = (h + (v ^ (v >> 3))) & _MASK32
    return ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & _MASK32


def pick_worker(key: bytes, workers: int) -> int:
    """Worker index for `key`: hash & (N-1) when N is a power of two (as C), else hash % N."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    h = core_hash(key)
    if workers & (workers - 1) == 0:
        return h & (workers - 1)
    # C masks with N-1 for any N, which leaves workers unused (N=6 uses only 0, 1, 4, 5).
    return h % workers
