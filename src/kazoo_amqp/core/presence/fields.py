"""Reading payload fields the way the C module's PUA code does (spec §8.2, §9).

Every PUA field is read top-level only with json-c ``get_string`` (:func:`get_str`); a missing
member and JSON ``null`` both read as ``""``. ``Expires`` and ``Flush-Level`` use json-c
``get_int`` (:func:`get_int`, 32-bit, 0 when missing), so ``"3600"`` works. Both delegate to
:mod:`kazoo_amqp.core.jsonc`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kazoo_amqp.core import jsonc

__all__ = ["INT32_MAX", "INT32_MIN", "get_int", "get_str"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

_C_SPACE = " \t\n\v\f\r"


def get_str(payload: Mapping[str, Any], key: str) -> str:
    """json-c ``get_string`` of top-level member ``key``; ``""`` when missing or null."""
    return jsonc.get_str(payload.get(key))


def get_int(payload: Mapping[str, Any], key: str) -> int:
    """json-c ``get_int`` of top-level member ``key`` (``" 42abc"`` -> 42, ``"abc"`` -> 0)."""
    value = payload.get(key)
    try:
        return jsonc.get_int(value, 0)
    except ValueError:
        # A decimal string too long for int(): strtoll saturates, then json-c clamps to int32.
        text = value.lstrip(_C_SPACE) if isinstance(value, str) else ""
        return INT32_MIN if text.startswith("-") else INT32_MAX
