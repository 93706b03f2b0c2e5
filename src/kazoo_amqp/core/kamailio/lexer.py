"""A lexer for Kamailio's cfg language, good enough to rewrite a cfg safely.

It cuts a file's text into tokens that, joined, give the text back byte for byte, so a rewriter
can replace chosen tokens and keep everything else. It follows Kamailio 5.6's own scanner
(``core/cfg.lex``) where that matters for rewriting:

* ``#`` and ``//`` start a line comment; ``/* */`` comments nest.
* ``#!`` (or ``!!``) followed by ``define``/``def``/``trydef``/``trydefine``/``redefine``/``redef``
  (and a blank), ``subst``/``substdef``/``substdefs``, ``ifdef``/``ifndef``, ``else``, ``endif``,
  ``include_file``/``import_file`` is a preprocessor directive, not a comment; a define's value
  continues over lines ending in a backslash. Any other ``#!...`` (``#!KAMAILIO``) is a comment.
* ``"..."`` strings take backslash escapes; ``'...'`` strings take none.
* ``$(...)`` and ``$name(...)`` pseudo-variables run to the matching parenthesis, counting
  parentheses only: quotes inside them are not string delimiters (``$(kzE{re.subst,/"a"/b/})``).
* The name of a route block (``event_route[kazoo:mod-init]``, ``route["x"]``) is one token.

Token kinds: ``ws``, ``comment``, ``directive``, ``string`` (double-quoted), ``sqstring``,
``pv``, ``id``, ``number``, ``blockname`` (``[...]`` after a route keyword) and ``punct`` (one
character). The lexer is pure; :func:`tokenize` raises :class:`CfgSyntaxError` for an unclosed
string, comment, pseudo-variable or block name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ROUTE_KEYWORDS",
    "CfgSyntaxError",
    "Token",
    "TokenKind",
    "decode_string",
    "directive_parts",
    "tokenize",
]

TokenKind = Literal[
    "ws", "comment", "directive", "string", "sqstring", "pv", "id", "number", "blockname", "punct"
]

#: Keywords that open a route block (``NAME[...] { ... }``).
ROUTE_KEYWORDS = frozenset(
    {
        "route",
        "request_route",
        "failure_route",
        "onreply_route",
        "reply_route",
        "branch_route",
        "onsend_route",
        "event_route",
    }
)

_DIRECTIVE = re.compile(
    r"(?:#!|!!)(?:"
    r"(?P<define>define|def|trydefine|trydef|redefine|redef)[ \t\r\b]"
    r"|(?P<subst>substdefs|substdef|subst)"
    r"|(?P<cond>ifdef|ifndef)[ \t\r\b]"
    r"|(?P<flow>else|endif)(?![A-Za-z0-9_])"
    r"|(?P<include>include_file|import_file)(?![A-Za-z0-9_])"
    r")"
)
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|[0-9]+")
_WS = re.compile(r"[ \t\r\n\f\v\b]+")


class CfgSyntaxError(Exception):
    """The text cannot be cut into tokens (an unclosed string, comment or pseudo-variable)."""

    def __init__(self, line: int, construct: str, why: str, fix: str) -> None:
        super().__init__(f"{line}: {construct}: {why} ({fix})")
        self.line = line
        self.construct = construct
        self.why = why
        self.fix = fix


@dataclass(frozen=True, slots=True)
class Token:
    """One piece of the source: ``text`` starts at offset ``start`` on 1-based ``line``."""

    kind: TokenKind
    text: str
    start: int
    line: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def tokenize(text: str) -> list[Token]:
    """Cut ``text`` into tokens whose texts, joined, are ``text``.

    Raises:
        CfgSyntaxError: an unclosed string, block comment, pseudo-variable or block name.
    """
    tokens: list[Token] = []
    pos = 0
    line = 1
    n = len(text)
    last_id: str | None = None  # the previous non-blank token, when it was an id
    while pos < n:
        c = text[pos]
        start = pos
        kind: TokenKind
        if c in " \t\r\n\f\v\b":
            m = _WS.match(text, pos)
            assert m is not None
            pos = m.end()
            kind = "ws"
        elif c in "#!" and (m := _DIRECTIVE.match(text, pos)) is not None:
            pos = _directive_end(text, pos, continued=m.group("define") is not None)
            kind = "directive"
        elif c == "#" or text.startswith("//", pos):
            end = text.find("\n", pos)
            pos = n if end < 0 else end
            kind = "comment"
        elif text.startswith("/*", pos):
            pos = _block_comment_end(text, pos, line)
            kind = "comment"
        elif c == '"':
            pos = _string_end(text, pos, line)
            kind = "string"
        elif c == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                raise CfgSyntaxError(
                    line, "'...' string", "the single-quoted string is never closed", "add the '"
                )
            pos = end + 1
            kind = "sqstring"
        elif c == "$":
            pos = _pv_end(text, pos, line)
            kind = "pv" if pos > start + 1 else "punct"
        elif c == "[" and last_id in ROUTE_KEYWORDS:
            end = text.find("]", pos)
            if end < 0:
                raise CfgSyntaxError(
                    line, f"{last_id}[", "the route name is never closed", "add the ]"
                )
            pos = end + 1
            kind = "blockname"
        elif c.isalpha() or c == "_":
            m = _ID.match(text, pos)
            assert m is not None
            pos = m.end()
            kind = "id"
        elif c.isdigit():
            m = _NUMBER.match(text, pos)
            assert m is not None
            pos = m.end()
            kind = "number"
        else:
            pos += 1
            kind = "punct"
        piece = text[start:pos]
        tokens.append(Token(kind, piece, start, line))
        line += piece.count("\n")
        if kind == "id":
            last_id = piece
        elif kind not in ("ws", "comment"):
            last_id = None
    return tokens


def _directive_end(text: str, pos: int, *, continued: bool) -> int:
    """End of a directive line (without its newline); a define continues after ``\\``."""
    while True:
        end = text.find("\n", pos)
        if end < 0:
            return len(text)
        before = end - 1 if text[end - 1 : end] != "\r" else end - 2
        if continued and before >= 0 and text[before] == "\\":
            pos = end + 1
            continue
        return end


def _block_comment_end(text: str, pos: int, line: int) -> int:
    depth = 0
    i = pos
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise CfgSyntaxError(line, "/* comment", "the comment is never closed", "add */")


def _string_end(text: str, pos: int, line: int) -> int:
    i = pos + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1
    raise CfgSyntaxError(
        line, '"..." string', "the string is never closed", 'add the closing " (or escape it: \\")'
    )


def _pv_end(text: str, pos: int, line: int) -> int:
    """End of the pseudo-variable starting at ``$`` (``pos``), or ``pos + 1`` if none."""
    i = pos + 1
    m = _ID.match(text, i)
    if m is not None:
        i = m.end()
        if text[i : i + 1] != "(":
            return i
    elif text[i : i + 1] != "(":
        return pos + 1 if text[i : i + 1] not in ("?",) else i + 1
    depth = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise CfgSyntaxError(
        line,
        text[pos : min(n, pos + 30)].split("\n")[0],
        "the pseudo-variable's parenthesis is never closed",
        "balance its ( and )",
    )


_ESCAPES = {"n": "\n", "r": "\r", "a": "\a", "t": "\t", '"': '"', "\\": "\\"}
_HEX = re.compile(r"x([0-9a-fA-F]{1,2})")
_OCT = re.compile(r"[0-7]{2,3}")


def decode_string(token_text: str) -> str:
    """The value of a ``"..."`` or ``'...'`` token, escapes resolved as Kamailio does.

    ``\\n \\r \\a \\t \\" \\\\``, ``\\xHH``, ``\\ooo`` (2-3 octal digits) and an escaped
    newline (removed); any other backslash is kept with the character after it.
    """
    body = token_text[1:-1]
    if token_text[0] == "'":
        return body
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "\n":
            i += 2
        elif (m := _HEX.match(body, i + 1)) is not None:
            out.append(chr(int(m.group(1), 16)))
            i = m.end()
        elif (m := _OCT.match(body, i + 1)) is not None:
            out.append(chr(int(m.group(0), 8) & 0xFF))
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def directive_parts(token_text: str) -> tuple[str, str]:
    """``(keyword, rest)`` of a directive token: ``("trydef", "X 5")`` for ``#!trydef X 5``.

    Continuation backslash-newlines of a define are removed from ``rest``.
    """
    body = token_text[2:]
    m = _ID.match(body)
    keyword = m.group(0) if m else ""
    rest = body[len(keyword) :].replace("\\\r\n", "").replace("\\\n", "").strip()
    return keyword, rest
