"""AMQP header strings ``k1=v1;k2=v2`` with the C module's strtok semantics (spec §6.3, §15.7).

Segments are split on ``;`` (empty ones vanish), then on runs of ``=`` (leading ones skipped): the
first token is the name, the second the value, any third is ignored. A segment without a second
token is skipped. Whitespace is kept; values stay strings; duplicates are all kept.
"""

from __future__ import annotations

__all__ = ["parse_headers", "rejected_segments"]


def _tokens(segment: str) -> list[str]:
    """strtok(segment, "="): the non-empty pieces between runs of `=`."""
    return [t for t in segment.split("=") if t]


def _segments(text: str | None) -> list[str]:
    """strtok(text, ";"): the non-empty pieces between runs of `;`."""
    if not text:
        return []
    return [s for s in text.split(";") if s]


def parse_headers(text: str | None) -> tuple[tuple[str, str], ...]:
    """Parse `k1=v1;k2=v2` into (name, value) pairs; segments without a value are skipped."""
    pairs: list[tuple[str, str]] = []
    for segment in _segments(text):
        tokens = _tokens(segment)
        if len(tokens) >= 2:
            pairs.append((tokens[0], tokens[1]))
    return tuple(pairs)


def rejected_segments(text: str | None) -> tuple[str, ...]:
    """The segments parse_headers skips (no second token, e.g. `k=`, `=v`, `novalue`)."""
    return tuple(s for s in _segments(text) if len(_tokens(s)) < 2)
