"""JSON paths: ``kazoo_json``, ``{kz.json}``, ``{kz.json.count}``, ``kazoo_json_keys`` (spec §8).

Paths are dot-separated keys, each optionally followed by one ``[index]``. Where the C code aborts
or reads undefined memory (empty path, empty segment, a segment starting with ``[``) the lookup
simply finds nothing.
"""

from __future__ import annotations

from typing import Any, Final

from kazoo_amqp.core.jsonc import c_atoi, loads, render
from kazoo_amqp.errors import BadPayload

__all__ = ["MISSING", "json_keys", "kazoo_json", "kz_json", "kz_json_count", "lookup"]


class _Missing:
    """Type of the :data:`MISSING` sentinel."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: Returned by :func:`lookup` when the path finds nothing (JSON null counts as nothing).
MISSING: Final = _Missing()


def _segment(token: str, escape: str) -> tuple[str, str | None] | None:
    """Split one path segment into (name, index text or None); None when the name is empty."""
    if escape:
        token = token.replace(escape, ".")
    bracket = token.find("[")
    if bracket < 0:
        return token, None
    if bracket == 0:
        return None
    name = token[:bracket]
    close = token.find("]", bracket + 1)
    index = token[bracket + 1 :] if close < 0 else token[bracket + 1 : close]
    return name, (index or None)


def lookup(doc: Any, path: str, *, escape: str = "%") -> Any:
    """Walk `path` in `doc`; return the value found or MISSING (null, bad path and misses alike)."""
    if not path:
        return MISSING
    tokens = path.split(".")
    if len(tokens) > 1 and not tokens[-1]:
        tokens.pop()  # one trailing dot is allowed: `a.` means `a`
    escape = escape[:1]  # json_escape_char: only the first character counts
    current = doc
    for token in tokens:
        if not token:
            return MISSING
        seg = _segment(token, escape)
        if seg is None or not isinstance(current, dict):
            return MISSING
        name, index = seg
        current = current.get(name)
        if current is None:
            return MISSING
        if index is not None and isinstance(current, list | tuple):
            i = c_atoi(index)
            if i < 0 or i >= len(current):
                return MISSING
            current = current[i]
            if current is None:
                return MISSING
    return current


def _document(doc_or_text: Any) -> Any:
    """Parse text (str/bytes) with jsonc.loads; return an already-parsed value as is."""
    if isinstance(doc_or_text, str | bytes | bytearray | memoryview):
        try:
            return loads(doc_or_text)
        except BadPayload:
            return MISSING
    return doc_or_text


def kazoo_json(doc_or_text: Any, path: str, *, escape: str = "%") -> str | None:
    """`kazoo_json`: the get_string rendering at `path`; None if missing, null or invalid JSON."""
    value = lookup(_document(doc_or_text), path, escape=escape)
    if value is MISSING:
        return None
    return render(value)


def kz_json(doc_or_text: Any, path: str, *, escape: str = "%") -> str:
    """`{kz.json}`: like kazoo_json but "" where kazoo_json gives None."""
    value = lookup(_document(doc_or_text), path, escape=escape)
    if value is MISSING:
        return ""
    return render(value)


def kz_json_count(doc_or_text: Any, path: str, *, escape: str = "%") -> int:
    """`{kz.json.count}`: the length of the array at `path`, else 0."""
    value = lookup(_document(doc_or_text), path, escape=escape)
    return len(value) if isinstance(value, list | tuple) else 0


def json_keys(doc_or_text: Any, path: str, *, escape: str = "%") -> list[str]:
    """`kazoo_json_keys`: the keys of the object at `path` in document order; otherwise []."""
    value = lookup(_document(doc_or_text), path, escape=escape)
    return [str(k) for k in value] if isinstance(value, dict) else []
