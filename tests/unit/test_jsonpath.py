"""JSON paths: kazoo_json, {kz.json}, {kz.json.count}, kazoo_json_keys (spec §8, vectors §15.2)."""

from __future__ import annotations

from typing import Any

import pytest

from kazoo_amqp.core.jsonc import loads
from kazoo_amqp.core.jsonpath import (
    MISSING,
    json_keys,
    kazoo_json,
    kz_json,
    kz_json_count,
    lookup,
)

DOC_D = (
    '{"Channels":[{"switch_url":"sip:a@b","n":1},{"switch_url":"sip:c@d"}],\n'
    ' "a":{"b.c":"dot","x":{"y":true}},"n":42,"f":1.50,"e":1e3,"t":true,"z":null,\n'
    ' "s":"x/y\\"q","arr":[1,2,[3,4]],"emp":{},"ea":[],"u":"\\u00e9"}'
)
CHANNELS = '[ { "switch_url": "sip:a@b", "n": 1 }, { "switch_url": "sip:c@d" } ]'

# (id, path, kazoo_json result, kz.json.count result) - §15.2 table for document D
D_VECTORS: list[tuple[str, str, str | None, int]] = [
    ("first-channel-url", "Channels[0].switch_url", "sip:a@b", 0),
    ("second-channel-url", "Channels[1].switch_url", "sip:c@d", 0),
    ("index-past-end", "Channels[2].switch_url", None, 0),
    ("negative-index", "Channels[-1].switch_url", None, 0),
    ("junk-index-is-atoi-zero", "Channels[x].switch_url", "sip:a@b", 0),
    ("spaces-inside-index", "Channels[ 1 ].switch_url", "sip:c@d", 0),
    ("array-rendered-spaced", "Channels", CHANNELS, 2),
    ("empty-brackets-no-index", "Channels[]", CHANNELS, 2),
    ("array-element-object", "Channels[0]", '{ "switch_url": "sip:a@b", "n": 1 }', 0),
    ("escape-char-is-dot-in-key", "a.b%c", "dot", 0),
    ("nested-boolean", "a.x.y", "true", 0),
    ("nested-object", "a.x", '{ "y": true }', 0),
    ("trailing-dot-allowed", "a.", '{ "b.c": "dot", "x": { "y": true } }', 0),
    ("integer", "n", "42", 0),
    ("index-ignored-on-number", "n[0]", "42", 0),
    ("double-lexeme", "f", "1.50", 0),
    ("exponent-lexeme", "e", "1e3", 0),
    ("boolean", "t", "true", 0),
    ("null-is-missing", "z", None, 0),
    ("string-unescaped", "s", 'x/y"q', 0),
    ("nested-array", "arr[2]", "[ 3, 4 ]", 2),
    ("one-index-per-segment", "arr[2][1]", "[ 3, 4 ]", 2),
    ("empty-object", "emp", "{ }", 0),
    ("empty-array", "ea", "[ ]", 0),
    ("unicode", "u", "é", 0),
    ("missing", "missing", None, 0),
    ("missing-deeper", "a.missing.deeper", None, 0),
    ("index-ignored-on-object", "a[0].x", '{ "y": true }', 0),
    ("case-sensitive", "N", None, 0),
    # C aborts or is undefined on these; we find nothing (recommended behaviour)
    ("doubled-dots", "a..x", None, 0),
    ("leading-dot", ".a", None, 0),
    ("empty-path", "", None, 0),
    ("only-dots", "..", None, 0),
    ("single-dot", ".", None, 0),
    ("two-trailing-dots", "a..", None, 0),
    ("root-index", "[0]", None, 0),
    ("segment-starting-with-bracket", "Channels.[0]", None, 0),
]


@pytest.mark.parametrize(
    ("path", "expected", "count"), [v[1:] for v in D_VECTORS], ids=[v[0] for v in D_VECTORS]
)
def test_kazoo_json_on_document_d(path: str, expected: str | None, count: int) -> None:
    """kazoo_json renders the value at the path, or None (§15.2)."""
    assert kazoo_json(DOC_D, path) == expected


@pytest.mark.parametrize(
    ("path", "expected", "count"), [v[1:] for v in D_VECTORS], ids=[v[0] for v in D_VECTORS]
)
def test_kz_json_gives_empty_string_where_kazoo_json_gives_none(
    path: str, expected: str | None, count: int
) -> None:
    """{kz.json} is kazoo_json with None turned into ""."""
    assert kz_json(DOC_D, path) == ("" if expected is None else expected)


@pytest.mark.parametrize(
    ("path", "expected", "count"), [v[1:] for v in D_VECTORS], ids=[v[0] for v in D_VECTORS]
)
def test_kz_json_count_is_array_length_else_zero(
    path: str, expected: str | None, count: int
) -> None:
    """{kz.json.count} is the array length at the path, else 0."""
    assert kz_json_count(DOC_D, path) == count


@pytest.mark.parametrize(
    ("path", "expected", "count"), [v[1:] for v in D_VECTORS], ids=[v[0] for v in D_VECTORS]
)
def test_parsed_document_gives_same_results_as_text(
    path: str, expected: str | None, count: int
) -> None:
    """An already-parsed document is accepted and gives the same answers."""
    doc = loads(DOC_D)
    assert kazoo_json(doc, path) == expected
    assert kz_json_count(doc, path) == count


DOC_2 = '{"a":[10,20,30],"a b":[5,6,7],"x.y":{"z":1},"k":"v"}'
DOC_2_VECTORS: list[tuple[str, str, str | None]] = [
    ("missing-close-bracket-tolerated", "a[1", "20"),
    ("junk-after-bracket-ignored", "a[1]xyz", "20"),
    ("last-element", "a[2]", "30"),
    ("space-in-key", "a b[2]", "7"),
    ("escaped-dot-key", "x%y.z", "1"),
    ("index-ignored-on-string", "k[0]", "v"),
    ("key-under-number-missing", "a[1].q", None),
]


@pytest.mark.parametrize(
    ("path", "expected"), [v[1:] for v in DOC_2_VECTORS], ids=[v[0] for v in DOC_2_VECTORS]
)
def test_kazoo_json_bracket_and_escape_edge_cases(path: str, expected: str | None) -> None:
    """Index parsing tolerates a missing `]`, ignores trailing junk; `%` stands for `.` (§15.2)."""
    assert kazoo_json(DOC_2, path) == expected


@pytest.mark.parametrize(
    "doc", ["not json", "", "null", b"\xff"], ids=["garbage", "empty", "null", "bad-utf8"]
)
def test_invalid_document_gives_none_empty_and_zero(doc: str | bytes) -> None:
    """Invalid JSON: kazoo_json None, {kz.json} "", count 0, no keys."""
    assert kazoo_json(doc, "a") is None
    assert kz_json(doc, "a") == ""
    assert kz_json_count(doc, "a") == 0
    assert json_keys(doc, "a") == []


def test_lenient_document_text_is_parsed_like_json_c() -> None:
    """Text goes through the json-c compatible parser (single quotes, comments)."""
    assert kazoo_json("{'a': {'b': 1.0}} // x", "a.b") == "1.0"


def test_bytes_document_is_accepted() -> None:
    """UTF-8 bytes are parsed like text."""
    assert kazoo_json(DOC_D.encode(), "u") == "é"


# (id, escape, path, expected)
ESCAPES: list[tuple[str, str, str, str | None]] = [
    ("custom-escape", "#", "a.b#c", "dot"),
    ("default-percent-not-special-with-custom", "#", "a.b%c", None),
    ("empty-escape-means-none", "", "a.b%c", None),
    ("only-first-char-counts", "#!", "a.b#c", "dot"),
]


@pytest.mark.parametrize(
    ("escape", "path", "expected"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES]
)
def test_escape_char_is_configurable(escape: str, path: str, expected: str | None) -> None:
    """json_escape_char stands for `.` inside segments; empty means no escape."""
    assert kazoo_json(DOC_D, path, escape=escape) == expected


def test_percent_key_cannot_be_addressed_with_default_escape() -> None:
    """A key with a real `%` is unreachable while `%` is the escape char."""
    assert kazoo_json('{"50%":1}', "50%") is None
    assert kazoo_json('{"50%":1}', "50%", escape="") == "1"


# (id, path, keys)
KEYS: list[tuple[str, str, list[str]]] = [
    ("object-keys-in-document-order", "a", ["b.c", "x"]),
    ("root-via-array-element", "Channels[0]", ["switch_url", "n"]),
    ("empty-object", "emp", []),
    ("array-gives-no-keys", "Channels", []),
    ("scalar-gives-no-keys", "n", []),
    ("string-gives-no-keys", "s", []),
    ("missing-gives-no-keys", "nope", []),
    ("null-gives-no-keys", "z", []),
    ("bad-path-gives-no-keys", "a..x", []),
]


@pytest.mark.parametrize(("path", "keys"), [k[1:] for k in KEYS], ids=[k[0] for k in KEYS])
def test_json_keys_lists_object_keys_else_nothing(path: str, keys: list[str]) -> None:
    """kazoo_json_keys: an object's keys in order; arrays, scalars and misses give [] (§3.7)."""
    assert json_keys(DOC_D, path) == keys


def test_json_keys_duplicate_key_keeps_first_position() -> None:
    """Duplicate keys appear once, where they first occurred."""
    assert json_keys('{"K":{"b":1,"a":2,"b":3}}', "K") == ["b", "a"]


# (id, document, path, value found)
LOOKUPS: list[tuple[str, Any, str, Any]] = [
    ("found-value-is-raw", {"a": {"b": [1, 2]}}, "a.b", [1, 2]),
    ("null-array-element-is-missing", {"a": [None, 1]}, "a[0]", MISSING),
    ("root-not-object", [1, 2], "a", MISSING),
    ("walk-through-scalar", {"a": 1}, "a.b", MISSING),
    ("false-is-found", {"a": False}, "a", False),
    ("zero-is-found", {"a": 0}, "a", 0),
    ("empty-string-is-found", {"a": ""}, "a", ""),
    ("tuple-indexed-like-array", {"a": (5, 6)}, "a[1]", 6),
]


@pytest.mark.parametrize(
    ("doc", "path", "expected"), [x[1:] for x in LOOKUPS], ids=[x[0] for x in LOOKUPS]
)
def test_lookup_returns_value_or_missing(doc: Any, path: str, expected: Any) -> None:
    """lookup returns the raw value found, or MISSING; it never raises."""
    found = lookup(doc, path)
    if expected is MISSING:
        assert found is MISSING
    else:
        assert found == expected


def test_missing_sentinel_is_falsy_and_named() -> None:
    """MISSING is falsy and prints as MISSING."""
    assert not MISSING and repr(MISSING) == "MISSING"


def test_kazoo_json_empty_string_value_is_found() -> None:
    """An empty string value is found (kazoo_json gives "", not None)."""
    assert kazoo_json('{"a":""}', "a") == ""
