"""json-c compatible JSON: lenient parse (spec §8.4), spaced serialisation (§8.5), getters (§8.2).

Parsing takes a fast path first (the stdlib C scanner, with doubles kept as :class:`JsonNumber` so
their original text survives) and falls back to a small recursive-descent parser that reproduces
json-c's non-strict mode only when the fast path refuses the input.

Serialisation is json-c's ``JSON_C_TO_STRING_SPACED`` format: ``{ "a": 1, "b": [ 1, 2 ] }``, with
``/`` escaped as ``\\/``. It runs for every published message, so it is written for speed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from kazoo_amqp.errors import BadPayload

__all__ = [
    "JsonNumber",
    "c_atoi",
    "dumps",
    "get_int",
    "get_str",
    "loads",
    "loads_object",
    "render",
    "type_name",
]

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

_C_SPACE = " \t\n\v\f\r"  # C isspace() in the C locale


class JsonNumber(float):
    """A JSON double that remembers its original text, serialised back exactly as written.

    ``lexeme`` is written verbatim into JSON output, so it must be a number as json-c reads it
    (``1.50``, ``1.``, ``-.5``, ``1e3``) or ``NaN`` / ``Infinity`` / ``-Infinity``.
    """

    __slots__ = ("lexeme",)

    lexeme: str

    def __new__(cls, lexeme: str) -> JsonNumber:
        obj = super().__new__(cls, lexeme)
        obj.lexeme = lexeme
        return obj

    def __repr__(self) -> str:
        return f"JsonNumber({self.lexeme!r})"

    def __str__(self) -> str:
        return self.lexeme

    def __reduce__(self) -> tuple[type[JsonNumber], tuple[str]]:
        return (JsonNumber, (self.lexeme,))


# json-c prints parsed NaN/Infinity through its own double formatter, whatever their case in the
# input (`nan` -> `NaN`), so the lexeme of these constants is the canonical spelling.
_NAN = "NaN"
_INF = "Infinity"
_NEG_INF = "-Infinity"


def _constant(name: str) -> JsonNumber:
    """Map the stdlib's NaN/Infinity/-Infinity constants to JsonNumber."""
    return JsonNumber(name)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_DECODER = json.JSONDecoder(parse_float=JsonNumber, parse_constant=_constant, strict=False)
_raw_decode = _DECODER.raw_decode
_JSON_WS = re.compile(r"[ \t\n\r]*")


def type_name(value: Any) -> str:
    """Name the JSON type of a parsed value (object, array, string, number, boolean, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _to_text(data: str | bytes | bytearray | memoryview) -> str:
    """Decode a payload as strict UTF-8 (no BOM sniffing, no UTF-16/32 detection)."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadPayload(f"payload is not valid UTF-8 at byte {exc.start}") from None


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """Parse JSON like json-c non-strict mode; BadPayload says what is wrong and where."""
    text = _to_text(data)
    start = _JSON_WS.match(text).end()  # type: ignore[union-attr]
    try:
        value, end = _raw_decode(text, start)
    except ValueError:
        pass
    except RecursionError:
        raise BadPayload("payload is not JSON: nested too deeply") from None
    else:
        # Containers and strings end unambiguously, so whatever follows them is ignored, as
        # json-c does. A top-level scalar must be followed by whitespace only: the stdlib reads
        # `01` or `1.` differently from json-c, so anything else goes to the lenient parser.
        if end == len(text) or type(value) in (dict, list, str):
            return value
        if _JSON_WS.match(text, end).end() == len(text):  # type: ignore[union-attr]
            return value
    return _LenientParser(text).parse()


def loads_object(data: str | bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse a payload that must be a JSON object; anything else (null included) is BadPayload."""
    value = loads(data)
    if type(value) is not dict:
        raise BadPayload(f"payload must be a JSON object, got {type_name(value)}")
    return value


class _ParseError(Exception):
    """Internal: a lenient-parser failure with its character offset."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


_WS = re.compile(r"[ \t\n\v\f\r]*")
_DQ_RUN = re.compile(r'[^"\\]*')
_SQ_RUN = re.compile(r"[^'\\]*")
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
# What strtod() consumes entirely, restricted to the characters json-c collects for a number.
_C_DOUBLE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "'": "'",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_NUMBER_END = frozenset(",]}/Ii" + _C_SPACE)


class _LenientParser:
    """Recursive-descent parser reproducing json-c 0.16 non-strict mode (§8.4); linear time."""

    __slots__ = ("n", "s")

    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def parse(self) -> Any:
        """Parse the first complete value; whatever follows it is ignored (json-c behaviour)."""
        if _WS.match(self.s).end() == self.n:  # type: ignore[union-attr]
            raise BadPayload("payload is not JSON: it is empty or only whitespace")
        try:
            value, _end = self._value(0, 0)
        except _ParseError as exc:
            raise BadPayload(f"payload is not JSON: {exc.message} at offset {exc.offset}") from None
        except RecursionError:
            raise BadPayload("payload is not JSON: nested too deeply") from None
        return value

    def _fail(self, message: str, offset: int) -> NoReturn:
        raise _ParseError(message, offset)

    def _skip(self, i: int) -> int:
        """Skip whitespace (C isspace) and /* */ or // comments."""
        s = self.s
        while True:
            i = _WS.match(s, i).end()  # type: ignore[union-attr]
            if i >= self.n or s[i] != "/":
                return i
            nxt = s[i + 1 : i + 2]
            if nxt == "*":
                close = s.find("*/", i + 2)
                if close < 0:
                    self._fail("unterminated /* comment", i)
                i = close + 2
            elif nxt == "/":
                eol = s.find("\n", i + 2)
                if eol < 0:
                    return self.n
                i = eol + 1
            else:
                self._fail("expected '*' or '/' after '/'", i)

    def _value(self, i: int, depth: int) -> tuple[Any, int]:
        s = self.s
        i = self._skip(i)
        if i >= self.n:
            self._fail("unexpected end of input, expected a value", i)
        c = s[i]
        if c == "{":
            return self._object(i, depth + 1)
        if c == "[":
            return self._array(i, depth + 1)
        if c == '"' or c == "'":
            return self._string(i)
        if c == "-" or "0" <= c <= "9":
            return self._number(i, depth)
        low = s[i : i + 8].lower()
        if low.startswith("true"):
            return True, i + 4
        if low.startswith("false"):
            return False, i + 5
        if low.startswith("null"):
            return None, i + 4
        if low.startswith("nan"):
            return JsonNumber(_NAN), i + 3
        if low == "infinity":
            return JsonNumber(_INF), i + 8
        self._fail(f"unexpected character {c!r}", i)

    def _object(self, i: int, depth: int) -> tuple[dict[str, Any], int]:
        s = self.s
        obj: dict[str, Any] = {}
        i = self._skip(i + 1)
        if i < self.n and s[i] == "}":
            return obj, i + 1
        while True:
            if i >= self.n:
                self._fail("unexpected end of input, expected a string key or '}'", i)
            if s[i] != '"' and s[i] != "'":
                self._fail("expected a quoted key or '}'", i)
            key, i = self._string(i)
            i = self._skip(i)
            if i >= self.n or s[i] != ":":
                self._fail("expected ':' after object key", i)
            obj[key], i = self._value(i + 1, depth)
            i = self._skip(i)
            if i >= self.n:
                self._fail("unexpected end of input, expected ',' or '}'", i)
            c = s[i]
            if c == "}":
                return obj, i + 1
            if c != ",":
                self._fail("expected ',' or '}'", i)
            i = self._skip(i + 1)
            if i < self.n and s[i] == "}":  # trailing comma
                return obj, i + 1

    def _array(self, i: int, depth: int) -> tuple[list[Any], int]:
        s = self.s
        arr: list[Any] = []
        i = self._skip(i + 1)
        if i < self.n and s[i] == "]":
            return arr, i + 1
        while True:
            value, i = self._value(i, depth)
            arr.append(value)
            i = self._skip(i)
            if i >= self.n:
                self._fail("unexpected end of input, expected ',' or ']'", i)
            c = s[i]
            if c == "]":
                return arr, i + 1
            if c != ",":
                self._fail("expected ',' or ']'", i)
            i = self._skip(i + 1)
            if i < self.n and s[i] == "]":  # trailing comma
                return arr, i + 1

    def _string(self, i: int) -> tuple[str, int]:
        s = self.s
        quote = s[i]
        run = _DQ_RUN if quote == '"' else _SQ_RUN
        start = i
        i += 1
        parts: list[str] = []
        while True:
            m = run.match(s, i)
            parts.append(m.group())  # type: ignore[union-attr]
            i = m.end()  # type: ignore[union-attr]
            if i >= self.n:
                self._fail("unterminated string", start)
            if s[i] == quote:
                return "".join(parts), i + 1
            # a backslash escape
            esc = s[i + 1 : i + 2]
            simple = _SIMPLE_ESCAPES.get(esc)
            if simple is not None:
                parts.append(simple)
                i += 2
                continue
            if esc != "u":
                if not esc:
                    self._fail("unterminated string", start)
                self._fail(f"invalid escape '\\{esc}' in string", i)
            code = self._hex4(i)
            i += 6
            if 0xD800 <= code <= 0xDBFF and s[i : i + 2] == "\\u":
                low = self._hex4(i)
                if 0xDC00 <= low <= 0xDFFF:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            parts.append(chr(code))

    def _hex4(self, i: int) -> int:
        """Read the 4 hex digits of the \\u escape at offset i."""
        m = _HEX4.match(self.s, i + 2)
        if m is None:
            self._fail("invalid \\u escape in string", i)
        return int(m.group(), 16)

    def _number(self, i: int, depth: int) -> tuple[Any, int]:
        """Collect a number exactly like json-c's tokener, then validate it like strtoll/strtod."""
        s = self.s
        n = self.n
        j = i
        is_exp = is_double = False
        neg_ok, pos_ok = True, False
        while j < n:
            c = s[j]
            if "0" <= c <= "9":
                neg_ok = pos_ok = False
            elif c == "." and not is_double:
                is_double = True
                neg_ok = pos_ok = True
            elif (c == "e" or c == "E") and not is_exp:
                is_exp = is_double = True
                neg_ok = pos_ok = True
            elif (c == "-" and neg_ok) or (c == "+" and pos_ok):
                neg_ok = pos_ok = False
            else:
                break
            j += 1
        if depth > 0 and j < n and s[j] not in _NUMBER_END:
            self._fail("invalid number", i)
        buf = s[i:j]
        if buf == "-" and j < n and s[j] in "iI":
            if s[j : j + 8].lower() == "infinity":
                return JsonNumber(_NEG_INF), j + 8
            self._fail("invalid number", i)
        if not is_double:
            digits = buf[1:] if buf.startswith("-") else buf
            if not digits:
                self._fail("invalid number", i)
            digits = digits.lstrip("0") or "0"  # leading zeros are allowed (`01` is 1)
            # strtoll/strtoull clamp; skipping int() on huge texts keeps this linear.
            value = int(digits) if len(digits) <= 20 else UINT64_MAX + 1
            if buf.startswith("-"):
                return max(-value, INT64_MIN), j
            return min(value, UINT64_MAX), j
        # json-c trims a dangling exponent or sign ("123e+" parses as 123).
        lexeme = buf
        while len(lexeme) > 1 and lexeme[-1] in "eE+-":
            lexeme = lexeme[:-1]
        if _C_DOUBLE.fullmatch(lexeme) is None:
            self._fail("invalid number", i)
        return JsonNumber(lexeme), j


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------

_enc = json.encoder.encode_basestring  # C-accelerated; escapes " \ \b \f \n \r \t, < 0x20 as \u00xx


def _int_text(v: int) -> str:
    """Decimal text of an integer, clamped to json-c's range [-2^63, 2^64-1]."""
    if v > UINT64_MAX:
        return "18446744073709551615"
    if v < INT64_MIN:
        return "-9223372036854775808"
    return int.__repr__(v)


def _float_text(v: float) -> str:
    """Text of a double not parsed from JSON (shortest repr; json-c's spelling of NaN/Infinity)."""
    if v != v:
        return _NAN
    if v in (float("inf"), float("-inf")):
        return _INF if v > 0 else _NEG_INF
    return float.__repr__(v)


def _dump_fast(v: Any) -> str:
    # `/` is escaped once, on the whole document, by dumps(): only string content contains it.
    t = type(v)
    if t is str:
        return _enc(v)
    if t is int:
        if INT64_MIN <= v <= UINT64_MAX:
            return int.__repr__(v)
        return _int_text(v)
    if t is dict:
        if not v:
            return "{ }"
        return (
            "{ "
            + ", ".join(
                [
                    _enc(k) + ": " + (_enc(x) if type(x) is str else _dump_fast(x))
                    for k, x in v.items()
                ]
            )
            + " }"
        )
    if t is list:
        if not v:
            return "[ ]"
        return "[ " + ", ".join([_enc(x) if type(x) is str else _dump_fast(x) for x in v]) + " ]"
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    if t is JsonNumber:
        return v.lexeme  # type: ignore[no-any-return]
    return _dump_other(v)


def _dump_other(v: Any, child: Callable[[Any], str] = _dump_fast) -> str:
    """Subclasses and the less common types, in isinstance order (bool before int)."""
    if isinstance(v, str):
        return _enc(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return _int_text(int(v))
    if isinstance(v, JsonNumber):
        return v.lexeme
    if isinstance(v, float):
        return _float_text(v)
    if isinstance(v, Mapping):
        if not v:
            return "{ }"
        return "{ " + ", ".join([_dump_key(k) + ": " + child(x) for k, x in v.items()]) + " }"
    if isinstance(v, list | tuple):
        if not v:
            return "[ ]"
        return "[ " + ", ".join([child(x) for x in v]) + " ]"
    raise BadPayload(f"payload is not JSON-serialisable: {type(v).__name__} value {v!r:.80}")


def _dump_slow(v: Any) -> str:
    """Checked serialisation, used to name the culprit when the fast path hits a TypeError."""
    return _dump_other(v, _dump_slow)


def _dump_key(k: Any) -> str:
    if isinstance(k, str):
        return _enc(k)
    raise BadPayload(f"payload is not JSON-serialisable: object key {k!r:.80} is not a string")


def dumps(value: Any) -> str:
    """Serialise in json-c spaced format: `{ "a": 1, "b": [ 1, 2 ] }`, `/` escaped as `\\/`."""
    try:
        try:
            text = _dump_fast(value)
        except TypeError:
            # encode_basestring refuses a non-str dict key; redo slowly to name the culprit.
            text = _dump_slow(value)
    except RecursionError:
        raise BadPayload(
            "payload is not JSON-serialisable: nested too deeply or circular"
        ) from None
    return text.replace("/", "\\/")


# --------------------------------------------------------------------------------------------
# json-c getters
# --------------------------------------------------------------------------------------------


def render(value: Any) -> str:
    """json-c get_string: strings raw, numbers as text (doubles as lexeme), containers spaced."""
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is int:
        return _int_text(value)
    if t is bool:
        return "true" if value else "false"
    if t is JsonNumber:
        return value.lexeme  # type: ignore[no-any-return]
    if isinstance(value, str):
        return str.__str__(value)
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return _dump_other(value)
    return dumps(value)


def c_atoi(text: str) -> int:
    """C strtol/atoi: skip C spaces, optional sign, decimal digits; junk ends it; no digits -> 0."""
    i = 0
    n = len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    sign = 1
    if i < n and text[i] in "+-":
        if text[i] == "-":
            sign = -1
        i += 1
    start = i
    while i < n and "0" <= text[i] <= "9":
        i += 1
    if i == start:
        return 0
    return sign * int(text[start:i])


def _clamp32(v: int | float) -> int:
    if v <= INT32_MIN:
        return INT32_MIN
    if v >= INT32_MAX:
        return INT32_MAX
    return int(v)


def get_int(value: Any, default: int) -> int:
    """json-c get_int: true 1, false 0, "12x" 12, 1.9 1, clamped to int32; null -> default."""
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return _clamp32(value)
    if isinstance(value, float):
        if value != value:  # NaN: undefined in C
            return 0
        return _clamp32(value)
    if isinstance(value, str):
        return _clamp32(c_atoi(value))
    return 0  # objects and arrays


def get_str(value: Any) -> str:
    """json-c get_string for a field read: missing or null -> "", otherwise render()."""
    if value is None:
        return ""
    return render(value)
