"""AMQP header strings with strtok semantics (spec §6.3, vectors §15.7)."""

from __future__ import annotations

import pytest

from kazoo_amqp.core.headers import parse_headers, rejected_segments

# (id, input, accepted pairs, rejected segments)
VECTORS: list[tuple[str, str | None, list[tuple[str, str]], list[str]]] = [
    ("two-pairs", "k1=v1;k2=v2", [("k1", "v1"), ("k2", "v2")], []),
    ("empty-segments-vanish", "k1=v1;;k2=v2;", [("k1", "v1"), ("k2", "v2")], []),
    ("leading-semicolon", ";k=v", [("k", "v")], []),
    ("empty-value-skipped", "k1=;k2=v2", [("k2", "v2")], ["k1="]),
    ("leading-equals-makes-name-only", "=v;k=v", [("k", "v")], ["=v"]),
    ("third-token-ignored", "k=a=b", [("k", "a")], []),
    ("equals-run-is-one-separator", "k==v", [("k", "v")], []),
    ("whitespace-kept", " k = v ", [(" k ", " v ")], []),
    ("no-value-no-headers", "novalue", [], ["novalue"]),
    ("empty-string", "", [], []),
    ("none", None, [], []),
    ("numbers-stay-strings", "x-delay=5000", [("x-delay", "5000")], []),
    ("duplicates-all-kept", "a=1;a=2", [("a", "1"), ("a", "2")], []),
]


@pytest.mark.parametrize(
    ("text", "pairs", "rejected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_parse_headers_matches_vector(
    text: str | None, pairs: list[tuple[str, str]], rejected: list[str]
) -> None:
    """strtok on ';' then on '=': first token name, second value, else skipped (§15.7)."""
    assert parse_headers(text) == tuple(pairs)


@pytest.mark.parametrize(
    ("text", "pairs", "rejected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_rejected_segments_lists_what_parse_headers_skipped(
    text: str | None, pairs: list[tuple[str, str]], rejected: list[str]
) -> None:
    """Every non-empty segment without a second token is reported, in order."""
    assert rejected_segments(text) == tuple(rejected)


def test_parse_headers_only_semicolons_gives_no_headers() -> None:
    """A string of separators yields nothing, so no headers property is sent."""
    assert parse_headers(";;;") == ()
    assert rejected_segments(";;;") == ()


def test_parse_headers_only_equals_is_rejected() -> None:
    """A segment of only '=' has no token at all and is skipped."""
    assert parse_headers("==;a=b") == (("a", "b"),)
    assert rejected_segments("==;a=b") == ("==",)
