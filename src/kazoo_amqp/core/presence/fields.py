"""Reading payload fields the way the C module's PUA code does (json-c renderings, spec §8.2, §9).

Every PUA field is read top-level only, as json-c ``get_string`` renders it; a missing member and
JSON ``null`` both read as ``""``. ``Expires`` and ``Flush-Level`` use json-c ``get_int`` (a
32-bit int), so ``"3600"`` works.

This is a local, minimal equivalent of ``kazoo_amqp.core.jsonc`` kept inside the presence core so
the package has no dependency on the (separately written) json-c module. It works on values as
produced by any JSON parser (``json.loads`` or the json-c compatible one). One documented gap: a
JSON double is rendered from the Python ``float`` (``1.5``), not from the original lexeme
(``1.50``); PUA fields are strings and integers in practice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["INT32_MAX", "INT32_MIN", "get_int", "get_str", "render"]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: strtoll(): optional leading whitespace, optional sign, decimal digits.
_STRTOLL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")

_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def render(value: Any) -> str:
    """json-c ``get_string`` of a JSON value; ``None`` (null or missing) renders as ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, Mapping | list | tuple):
        return _serialise(value)
    return str(value)


def get_str(payload: Mapping[str, Any], key: str) -> str:
    """The rendering of top-level member ``key``; ``""`` when missing or null."""
    return render(payload.get(key))


def get_int(payload: Mapping[str, Any], key: str) -> int:
    """json-c ``json_object_get_int`` of top-level member ``key`` (0 when missing or unusable).

    Strings are read like ``strtoll`` (``" 42abc"`` -> 42, ``"abc"`` -> 0), doubles are truncated,
    booleans are 0/1, and every result is clamped to the int32 range.
    """
    value = payload.get(key)
    if value is None or isinstance(value, Mapping | list | tuple):
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return _clamp32(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 0
        if value <= INT32_MIN:
            return INT32_MIN
        if value >= INT32_MAX:
            return INT32_MAX
        return int(value)
    if isinstance(value, str):
        match = _STRTOLL.match(value)
        return _clamp32(int(match.group(1))) if match else 0
    return 0


def _clamp32(value: int) -> int:
    return max(INT32_MIN, min(INT32_MAX, value))


def _render_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _serialise(value: Any) -> str:
    """json-c spaced serialisation (§8.5): ``{ "a": 1 }``, ``[ 1, 2 ]``, ``{ }``, ``[ ]``."""
    if isinstance(value, Mapping):
        if not value:
            return "{ }"
        items = ",".join(f" {_quote(str(k))}: {_serialise(v)}" for k, v in value.items())
        return "{" + items + " }"
    if isinstance(value, list | tuple):
        if not value:
            return "[ ]"
        return "[" + ",".join(f" {_serialise(v)}" for v in value) + " ]"
    if value is None:
        return "null"
    if isinstance(value, str):
        return _quote(value)
    return render(value)


def _quote(text: str) -> str:
    out = []
    for char in text:
        escaped = _JSON_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
