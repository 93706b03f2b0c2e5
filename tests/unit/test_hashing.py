"""core_hash and consistent-worker choice (spec §5.4)."""

from __future__ import annotations

from collections import Counter

import pytest

from kazoo_amqp.core.hashing import core_hash, pick_worker

# Computed by hand from the §5.4 description:
#   "a"    v=0x61, v^(v>>3)=0x6D=109, no further mixing below 2^11.
#   "abcd" v=0x61626364, v^(v>>3)=0x6D4E2F08=1833840392;
#          + (h>>11)=895429 + (h>>13)=223857 + (h>>23)=218 = 1834959896.
#   "abcde" adds the tail v=0x65: 0x65^0x0C=105 -> h=1833840497 -> 1834960001.
#   8 x 0xFF: each group gives 0xE0000000; two of them wrap to 0xC0000000=3221225472;
#          + 1572864 + 393216 + 384 = 3223191936 (tests the 32-bit wrap).
HASH_VECTORS = [
    ("empty", b"", 0),
    ("one-byte-tail", b"a", 109),
    ("one-full-group", b"abcd", 1834959896),
    ("group-plus-tail", b"abcde", 1834960001),
    ("wraps-32-bits", b"\xff" * 8, 3223191936),
]


@pytest.mark.parametrize(
    ("data", "expected"), [v[1:] for v in HASH_VECTORS], ids=[v[0] for v in HASH_VECTORS]
)
def test_core_hash_matches_hand_computed_vector(data: bytes, expected: int) -> None:
    """core_hash follows the master algorithm with unsigned bytes and 32-bit arithmetic."""
    assert core_hash(data) == expected


def test_core_hash_treats_bytes_as_unsigned() -> None:
    """A high byte contributes its unsigned value (master), not a negative char (5.6.3)."""
    assert core_hash(b"\x80") == 0x80 ^ (0x80 >> 3)


def test_core_hash_stays_within_32_bits() -> None:
    """Results are 32-bit unsigned for any input length."""
    for n in range(0, 64):
        assert 0 <= core_hash(bytes(range(200, 200 + n % 56)) * 7) <= 0xFFFFFFFF


@pytest.mark.parametrize("workers", [1, 2, 4, 8, 16])
def test_pick_worker_masks_like_c_for_powers_of_two(workers: int) -> None:
    """For N a power of two the worker is core_hash & (N-1), as in C."""
    for key in (b"", b"a", b"abcd", b"call-1@example.com"):
        assert pick_worker(key, workers) == core_hash(key) & (workers - 1)


@pytest.mark.parametrize("workers", [3, 5, 6, 7])
def test_pick_worker_uses_modulo_for_other_counts(workers: int) -> None:
    """For other N the worker is core_hash % N (C would mask and leave workers idle)."""
    for key in (b"a", b"abcd", b"call-1@example.com"):
        assert pick_worker(key, workers) == core_hash(key) % workers


@pytest.mark.parametrize("workers", [4, 6])
def test_pick_worker_spreads_1000_keys_over_every_worker(workers: int) -> None:
    """1000 distinct call keys reach every worker."""
    counts = Counter(pick_worker(f"call-{i}@example.com".encode(), workers) for i in range(1000))
    assert sorted(counts) == list(range(workers))


def test_pick_worker_is_stable_for_one_key() -> None:
    """The same key always goes to the same worker."""
    assert len({pick_worker(b"same-call-id", 4) for _ in range(10)}) == 1


@pytest.mark.parametrize("workers", [0, -1])
def test_pick_worker_rejects_no_workers(workers: int) -> None:
    """There must be at least one worker."""
    with pytest.raises(ValueError, match="at least 1"):
        pick_worker(b"k", workers)
