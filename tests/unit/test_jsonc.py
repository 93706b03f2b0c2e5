"""json-c compatible parsing, serialisation and getters (spec §8.2, §8.4, §8.5, §15.2, §15.3)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest

from kazoo_amqp.core import jsonc
from kazoo_amqp.core.jsonc import (
    JsonNumber,
    c_atoi,
    dumps,
    get_int,
    get_str,
    loads,
    loads_object,
    render,
)
from kazoo_amqp.errors import BadPayload

DOC_D = (
    '{"Channels":[{"switch_url":"sip:a@b","n":1},{"switch_url":"sip:c@d"}],\n'
    ' "a":{"b.c":"dot","x":{"y":true}},"n":42,"f":1.50,"e":1e3,"t":true,"z":null,\n'
    ' "s":"x/y\\"q","arr":[1,2,[3,4]],"emp":{},"ea":[],"u":"\\u00e9"}'
)
DOC_D_SERIALISED = (
    '{ "Channels": [ { "switch_url": "sip:a@b", "n": 1 }, { "switch_url": "sip:c@d" } ], '
    '"a": { "b.c": "dot", "x": { "y": true } }, "n": 42, "f": 1.50, "e": 1e3, "t": true, '
    '"z": null, "s": "x\\/y\\"q", "arr": [ 1, 2, [ 3, 4 ] ], "emp": { }, "ea": [ ], "u": "é" }'
)

# (id, input, json-c spaced re-serialisation) - §15.3 plus the rest of §8.4
ACCEPTED = [
    (
        "single-quoted-strings",
        "{'Event-Category' : 'call_event', 'Active-Only' : false }",
        '{ "Event-Category": "call_event", "Active-Only": false }',
    ),
    ("trailing-comma-object", '{"a":1,}', '{ "a": 1 }'),
    ("trailing-comma-array", "[1,2,]", "[ 1, 2 ]"),
    ("trailing-garbage-word", '{"a":1} trailing', '{ "a": 1 }'),
    ("trailing-garbage-brace", '{"a":1}}', '{ "a": 1 }'),
    ("block-comment-before", '/* c */ {"a":1}', '{ "a": 1 }'),
    ("line-comment-after", '{"a": "x"} // c', '{ "a": "x" }'),
    ("nan", '{"a":NaN}', '{ "a": NaN }'),
    ("true-capitalised", '{"a":True}', '{ "a": true }'),
    ("leading-zero", '{"a":01}', '{ "a": 1 }'),
    ("dot-without-fraction", '{"a":1.}', '{ "a": 1. }'),
    ("minus-zero", '{"a":-0}', '{ "a": 0 }'),
    ("duplicate-last-wins-first-position", '{"a":1,"b":2,"a":3}', '{ "a": 3, "b": 2 }'),
    ("int-above-uint64-clamped", '{"a":100000000000000000000}', '{ "a": 18446744073709551615 }'),
    (
        "string-escapes",
        '{"s":"a\\u0001b\\u001fc\\\\e/f\\bg\\fh\\ri"}',
        '{ "s": "a\\u0001b\\u001fc\\\\e\\/f\\bg\\fh\\ri" }',
    ),
    ("document-D", DOC_D, DOC_D_SERIALISED),
    (
        "booleans-any-case",
        "[TRUE, tRuE, FALSE, False, NULL, Null]",
        "[ true, true, false, false, null, null ]",
    ),
    (
        "nan-and-infinity-any-case",
        "[nan, NAN, Infinity, infinity, -Infinity, -INFINITY]",
        "[ NaN, NaN, Infinity, Infinity, -Infinity, -Infinity ]",
    ),
    ("comments-everywhere", '{/*a*/"a"/*b*/:/*c*/1/*d*/,//e\n"b":2}', '{ "a": 1, "b": 2 }'),
    ("c-whitespace-vt-ff", '\v\f{"a":\v1\f}', '{ "a": 1 }'),
    ("single-quote-holds-double-quote", "{'a':'say \"hi\"'}", '{ "a": "say \\"hi\\"" }'),
    ("escaped-single-quote", "{'a':'it\\'s'}", '{ "a": "it\'s" }'),
    ("raw-control-char-in-string", '{"a":"x\ty\nz"}', '{ "a": "x\\ty\\nz" }'),
    ("int-below-int64-clamped", '{"a":-100000000000000000000}', '{ "a": -9223372036854775808 }'),
    ("uint64-range-kept", '{"a":18446744073709551615}', '{ "a": 18446744073709551615 }'),
    ("leading-zero-negative", "[-007]", "[ -7 ]"),
    ("many-leading-zeros-not-clamped", "[" + "0" * 50 + "1]", "[ 1 ]"),
    ("huge-int-clamped-in-lenient-path", "[01" + "9" * 5000 + "]", "[ 18446744073709551615 ]"),
    ("huge-negative-clamped-in-lenient-path", "[-" + "9" * 5000 + ",]", "[ -9223372036854775808 ]"),
    ("leading-zero-double-lexeme-kept", "[00.50]", "[ 00.50 ]"),
    ("dot-then-exponent", "[1.e5]", "[ 1.e5 ]"),
    ("dangling-exponent-trimmed", "[1e+]", "[ 1 ]"),
    ("minus-dot-five", "[-.5]", "[ -.5 ]"),
    ("exponent-lexeme-kept", "[1E+05, -1.25e-2]", "[ 1E+05, -1.25e-2 ]"),
    ("surrogate-pair-escape", '["\\ud83d\\ude00"]', '[ "\U0001f600" ]'),
    ("empty-containers", '{"o":{},"a":[]}', '{ "o": { }, "a": [ ] }'),
    ("empty-containers-with-spaces", '{ "o" : { } , "a" : [ ] }', '{ "o": { }, "a": [ ] }'),
    ("top-level-array-trailing-garbage", "[1] [2]", "[ 1 ]"),
    ("top-level-number-then-junk", "12abc", "12"),
    ("top-level-literal-then-junk", "truex", "true"),
    ("top-level-string-then-junk", '"a/b" x', '"a\\/b"'),
    ("unicode-raw", '{"k":"日本"}', '{ "k": "日本" }'),
]


@pytest.mark.parametrize(
    ("text", "expected"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_loads_accepts_json_c_leniency_and_dumps_spaced(text: str, expected: str) -> None:
    """json-c non-strict input round-trips to json-c's spaced text (§15.3)."""
    assert dumps(loads(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_loads_accepts_utf8_bytes_like_str(text: str, expected: str) -> None:
    """Bytes are decoded as UTF-8 and parsed the same way."""
    assert dumps(loads(text.encode())) == expected


# (id, input, message pattern) - §15.3 "invalid" row plus the §8.4 rejections
REJECTED = [
    ("unquoted-key", "{a:1}", r"expected a quoted key or '\}' at offset 1"),
    ("incomplete-object", '{"a":1', r"unexpected end of input, expected ',' or '\}' at offset 6"),
    ("empty", "", "empty or only whitespace"),
    ("whitespace-only", " \t\n ", "empty or only whitespace"),
    ("hex-number", '{"a":0x10}', "invalid number at offset 5"),
    ("plus-sign", '{"a":+1}', "unexpected character '\\+' at offset 5"),
    ("leading-dot", '{"a":.5}', "unexpected character '\\.' at offset 5"),
    ("missing-comma", "[1 2]", "expected ',' or ']' at offset 3"),
    ("missing-colon", '{"a" 1}', "expected ':' after object key at offset 5"),
    ("missing-comma-object", '{"a":1 "b":2}', r"expected ',' or '\}' at offset 7"),
    ("empty-element", "[1,,2]", "unexpected character ',' at offset 3"),
    (
        "lone-comma-object",
        "{,}",
        "expected a quoted key",
    ),
    ("unterminated-string", '{"a":"x', "unterminated string at offset 5"),
    ("unterminated-comment", '/* {"a":1}', "unterminated /\\* comment at offset 0"),
    ("comment-only", "// nothing", "unexpected end of input, expected a value"),
    ("lone-slash", '{"a":1 / }', "expected '\\*' or '/' after '/'"),
    ("bad-escape", '{"a":"\\x"}', "invalid escape '\\\\x' in string at offset 6"),
    ("bad-unicode-escape", '{"a":"\\u12G4"}', "invalid \\\\u escape in string at offset 6"),
    ("lone-minus", "[-]", "invalid number at offset 1"),
    ("double-minus", "[--1]", "invalid number at offset 1"),
    ("sign-after-dot-invalid", "[1.+5]", "invalid number at offset 1"),
    ("junk-after-number-in-container", "[1x]", "invalid number at offset 1"),
    ("misspelt-literal", "[tru]", "unexpected character 't' at offset 1"),
    ("literal-followed-by-junk-in-container", "[truex]", r"expected ',' or '\]' at offset 5"),
    ("partial-infinity", "[-Inf]", "invalid number at offset 1"),
    ("bom-is-not-whitespace", '\ufeff{"a":1}', "unexpected character"),
]


@pytest.mark.parametrize(
    ("text", "message"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_loads_rejects_what_json_c_rejects_with_offset(text: str, message: str) -> None:
    """Invalid documents raise BadPayload saying what is wrong and where."""
    with pytest.raises(BadPayload, match=message) as info:
        loads(text)
    assert str(info.value).startswith("payload is not JSON: ")


def test_loads_reports_invalid_utf8_byte_offset() -> None:
    """Bytes that are not UTF-8 are rejected with the offending byte's offset."""
    with pytest.raises(BadPayload, match=r"^payload is not valid UTF-8 at byte 6$"):
        loads(b'{"a":"\xff"}')


def test_loads_does_not_sniff_utf16() -> None:
    """Only UTF-8 is accepted, even where the stdlib would detect UTF-16."""
    with pytest.raises(BadPayload, match="not valid UTF-8"):
        loads('{"a":1}'.encode("utf-16"))


def test_loads_keeps_double_lexeme_as_json_number() -> None:
    """Doubles are JsonNumber floats that remember their text."""
    value = loads('{"f":1.50}')["f"]
    assert type(value) is JsonNumber and value == 1.5 and value.lexeme == "1.50"


def test_loads_integers_are_python_ints() -> None:
    """Integers (no dot or exponent) are plain ints; -0 is 0."""
    assert loads("[42, -0, 01]") == [42, 0, 1]
    assert all(type(x) is int for x in loads("[42, -0, 01]"))


def test_loads_top_level_scalars_are_values() -> None:
    """Any JSON value may be the document; null gives None."""
    assert loads("null") is None
    assert loads('"x"') == "x"
    assert loads(" 1.5 ").lexeme == "1.5"
    assert loads("01") == 1


def test_loads_deep_nesting_is_bad_payload_not_recursion_error() -> None:
    """Pathological nesting is refused cleanly on both parse paths."""
    with pytest.raises(BadPayload, match="nested too deeply"):
        loads("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadPayload, match="nested too deeply"):
        loads("['lenient', " + "[" * 100_000)


def test_loads_lenient_path_handles_large_documents() -> None:
    """The fallback parser copes with big inputs (linear scanning)."""
    text = "[" + "'x/y', " * 200_000 + "]"
    assert len(loads(text)) == 200_000


STRICT_SAMPLES = [
    DOC_D,
    '{"a": [1, 2.5, -3e2, true, false, null, "s\\u00e9\\n"], "b": {"c": {}}}',
    "[]",
    '"str"',
    '{"x": -0.0, "y": 1E400}',
]


@pytest.mark.parametrize("text", STRICT_SAMPLES)
def test_lenient_parser_agrees_with_fast_path_on_strict_json(text: str) -> None:
    """The fallback parser gives the same values and lexemes as the fast path."""
    fast = loads(text)
    slow = jsonc._LenientParser(text).parse()
    assert dumps(slow) == dumps(fast)
    assert slow == fast or (isinstance(fast, float) and math.isnan(fast))


# (id, value, payload type named)
NON_OBJECTS: list[tuple[str, str, str]] = [
    ("null", "null", "null"),
    ("array", "[1,2,]", "array"),
    ("string", '"x"', "string"),
    ("number", "42", "number"),
    ("boolean", "true", "boolean"),
]


@pytest.mark.parametrize(
    ("text", "type_name"), [n[1:] for n in NON_OBJECTS], ids=[n[0] for n in NON_OBJECTS]
)
def test_loads_object_names_the_type_found(text: str, type_name: str) -> None:
    """A valid non-object payload is refused, naming what was found."""
    with pytest.raises(BadPayload, match=f"^payload must be a JSON object, got {type_name}$"):
        loads_object(text)


def test_loads_object_returns_the_dict() -> None:
    """An object payload is returned as a dict in document order."""
    assert list(loads_object('{"b":1,"a":2}')) == ["b", "a"]


# (id, value, serialisation)
DUMPS = [
    ("empty-object", {}, "{ }"),
    ("empty-array", [], "[ ]"),
    ("nested", {"a": 1, "b": [1, 2]}, '{ "a": 1, "b": [ 1, 2 ] }'),
    ("slash-escaped", "a/b", '"a\\/b"'),
    ("quote-and-backslash", 'a"b\\c', '"a\\"b\\\\c"'),
    ("named-control-escapes", "\b\f\n\r\t", '"\\b\\f\\n\\r\\t"'),
    ("other-controls-lowercase-hex", "\x00\x01\x1f\x1b", '"\\u0000\\u0001\\u001f\\u001b"'),
    ("del-raw", "\x7f", '"\x7f"'),
    ("non-ascii-raw", "é日\U0001f600", '"é日\U0001f600"'),
    ("keys-escaped-too", {"a/b": 1}, '{ "a\\/b": 1 }'),
    ("true-false-null", [True, False, None], "[ true, false, null ]"),
    ("int", 42, "42"),
    ("negative-int", -7, "-7"),
    ("int-above-uint64", 2**64, "18446744073709551615"),
    ("uint64-max", 2**64 - 1, "18446744073709551615"),
    ("int64-min", -(2**63), "-9223372036854775808"),
    ("int-below-int64", -(2**63) - 1, "-9223372036854775808"),
    ("json-number-lexeme", JsonNumber("1.50"), "1.50"),
    ("json-number-exponent", JsonNumber("1e3"), "1e3"),
    ("python-float-repr", 0.1, "0.1"),
    ("python-float-integral", 2.0, "2.0"),
    ("python-float-nan", float("nan"), "NaN"),
    ("python-float-infinities", [float("inf"), float("-inf")], "[ Infinity, -Infinity ]"),
    ("tuple-as-array", (1, "x"), '[ 1, "x" ]'),
    ("string-in-array", ["a", "b/c"], '[ "a", "b\\/c" ]'),
    ("insertion-order", {"z": 1, "a": 2}, '{ "z": 1, "a": 2 }'),
]


@pytest.mark.parametrize(("value", "expected"), [d[1:] for d in DUMPS], ids=[d[0] for d in DUMPS])
def test_dumps_writes_json_c_spaced_format(value: Any, expected: str) -> None:
    """Serialisation matches json-c JSON_C_TO_STRING_SPACED (§8.5)."""
    assert dumps(value) == expected


def test_dumps_handles_subclasses_by_their_json_type() -> None:
    """str/int/dict subclasses serialise as their base JSON type; bool stays boolean."""
    from collections import OrderedDict
    from enum import IntEnum

    class Code(IntEnum):
        OK = 200

    class Name(str):
        pass

    value = OrderedDict([("c", Code.OK), ("n", Name("x/y")), ("b", True)])
    assert dumps(value) == '{ "c": 200, "n": "x\\/y", "b": true }'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1: "x"}, "object key 1 is not a string"),
        ({"a": [{"b": {2: 1}}]}, "object key 2 is not a string"),
        ({"a": object()}, "object value"),
        ({"a": {1, 2}}, "set value"),
        (b"bytes", "bytes value"),
    ],
    ids=["int-key", "nested-int-key", "object", "set", "bytes"],
)
def test_dumps_refuses_non_json_values_with_bad_payload(value: Any, message: str) -> None:
    """Values JSON cannot express raise BadPayload naming the culprit."""
    with pytest.raises(BadPayload, match=message):
        dumps(value)


def test_dumps_refuses_circular_structure_with_bad_key() -> None:
    """The slow, checked path also turns runaway recursion into BadPayload."""
    loop: dict[Any, Any] = {1: "x"}
    loop["self"] = loop
    with pytest.raises(BadPayload):
        dumps(loop)


def test_dumps_refuses_circular_structures() -> None:
    """A self-containing list is refused instead of recursing forever."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(BadPayload, match="nested too deeply or circular"):
        dumps(loop)


# (id, value, get_string rendering) - §8.2
RENDER = [
    ("string-raw", 'x/y"q', 'x/y"q'),
    ("int", 42, "42"),
    ("int-clamped", 10**30, "18446744073709551615"),
    ("double-lexeme", JsonNumber("1.50"), "1.50"),
    ("double-lexeme-dot", JsonNumber("1."), "1."),
    ("nan", JsonNumber("NaN"), "NaN"),
    ("python-float", 1.25, "1.25"),
    ("true", True, "true"),
    ("false", False, "false"),
    ("object-spaced", {"y": True}, '{ "y": true }'),
    ("array-spaced", [3, 4], "[ 3, 4 ]"),
    ("empty-object", {}, "{ }"),
    ("empty-array", [], "[ ]"),
    ("object-escapes-slash", {"u": "a/b"}, '{ "u": "a\\/b" }'),
    ("null-as-json", None, "null"),
]


@pytest.mark.parametrize(("value", "expected"), [r[1:] for r in RENDER], ids=[r[0] for r in RENDER])
def test_render_is_json_c_get_string(value: Any, expected: str) -> None:
    """Strings raw, numbers as text, doubles as written, containers as spaced JSON."""
    assert render(value) == expected


# (id, value, default, result) - json-c get_int leniency (§3.4)
GET_INT = [
    ("true", True, 7, 1),
    ("false", False, 7, 0),
    ("int", 5, 7, 5),
    ("string-digits", "1", 7, 1),
    ("string-leading-space-and-sign", "  -12", 7, -12),
    ("string-plus-sign", "+3", 7, 3),
    ("string-junk-ends-number", "12abc", 7, 12),
    ("string-no-digits", "abc", 7, 0),
    ("string-empty", "", 7, 0),
    ("double-truncated", 1.9, 7, 1),
    ("negative-double-truncated", -1.9, 7, -1),
    ("json-number", JsonNumber("2.50"), 7, 2),
    ("none-is-default", None, 7, 7),
    ("int-clamped-to-int32-max", 2**40, 7, 2**31 - 1),
    ("int-clamped-to-int32-min", -(2**40), 7, -(2**31)),
    ("double-clamped", 1e300, 7, 2**31 - 1),
    ("string-clamped", "99999999999", 7, 2**31 - 1),
    ("nan-is-zero", float("nan"), 7, 0),
    ("object-is-zero", {"a": 1}, 7, 0),
    ("array-is-zero", [1], 7, 0),
]


@pytest.mark.parametrize(
    ("value", "default", "expected"), [g[1:] for g in GET_INT], ids=[g[0] for g in GET_INT]
)
def test_get_int_is_json_c_lenient(value: Any, default: int, expected: int) -> None:
    """true 1, false 0, strings via atoi, doubles truncated, null keeps the default."""
    assert get_int(value, default) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("", ""),
        ("x", "x"),
        (3, "3"),
        (JsonNumber("1e3"), "1e3"),
        (False, "false"),
        ({"a": [1]}, '{ "a": [ 1 ] }'),
    ],
    ids=["none", "empty", "string", "int", "double", "bool", "object"],
)
def test_get_str_renders_or_gives_empty_for_none(value: Any, expected: str) -> None:
    """get_str: missing/null -> "", everything else as render()."""
    assert get_str(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        (" \t\n\v\f\r 42", 42),
        ("-3", -3),
        ("+4", 4),
        ("x", 0),
        ("", 0),
        ("7]", 7),
        ("- 1", 0),
        ("\u00a01", 0),
    ],
    ids=[
        "digit",
        "c-spaces",
        "minus",
        "plus",
        "junk",
        "empty",
        "trailing-junk",
        "space-after-sign",
        "unicode-space-not-skipped",
    ],
)
def test_c_atoi_follows_c_semantics(text: str, expected: int) -> None:
    """Leading C spaces, one sign, digits; anything else ends it; no digits -> 0."""
    assert c_atoi(text) == expected


def test_json_number_survives_pickle_and_keeps_lexeme() -> None:
    """JsonNumber pickles (worker hand-off) with its lexeme."""
    value = pickle.loads(pickle.dumps(JsonNumber("1.50")))
    assert type(value) is JsonNumber and value.lexeme == "1.50" and value == 1.5


def test_json_number_text_is_its_lexeme() -> None:
    """str() gives the lexeme, repr() says what it is."""
    number = JsonNumber("1e3")
    assert str(number) == "1e3" and repr(number) == "JsonNumber('1e3')" and number == 1000.0
