"""Kamailio's preprocessor, evaluated statically: ``#!define`` family, ``#!subst*``, ``#!ifdef``.

The converter needs the values Kamailio would see (a modparam value written as a define name, a
string changed by ``#!substdef``, an include file name). :class:`Preprocessor` follows the
directives in stream order, as Kamailio does, knowing only what the cfg itself defines: names
given on Kamailio's command line (``-A NAME``) are unknown here, so a branch that depends on
them counts as not taken. Kamailio also defines ``MOD_<name>`` for every loaded module
(:meth:`Preprocessor.module_loaded`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kazoo_amqp.core.kamailio.lexer import decode_string, directive_parts

__all__ = ["Preprocessor", "Subst", "parse_subst"]

#: Names Kamailio 5.6 defines before reading the cfg.
_BUILTIN = ("KAMAILIO", "KAMAILIO_5", "KAMAILIO_5_6", "OS_LINUX")


@dataclass(frozen=True, slots=True)
class Subst:
    """One ``#!subst`` rule: a sed-like ``/regex/replacement/flags``."""

    pattern: re.Pattern[str]
    replacement: str  # sed form: \\N is group N, \\c is c
    count: int  # 0 = every match (flag g), 1 = the first only

    def apply(self, text: str) -> str:
        return self.pattern.sub(self._expand, text, count=self.count)

    def _expand(self, m: re.Match[str]) -> str:
        out: list[str] = []
        repl = self.replacement
        i = 0
        while i < len(repl):
            c = repl[i]
            if c == "\\" and i + 1 < len(repl):
                nxt = repl[i + 1]
                if nxt.isdigit():
                    index = int(nxt)
                    group = m.group(index) if index <= (m.re.groups or 0) else None
                    out.append(group or "")
                else:
                    out.append(nxt)
                i += 2
            else:
                out.append(c)
                i += 1
        return "".join(out)


def parse_subst(expression: str) -> tuple[Subst, str] | None:
    """Parse ``/re/repl/flags`` (any delimiter); also return the regex text (the define name).

    Returns None when the expression is malformed or the regex does not compile.
    """
    if len(expression) < 3:
        return None
    delim = expression[0]
    parts: list[str] = []
    current: list[str] = []
    i = 1
    while i < len(expression):
        c = expression[i]
        if c == "\\" and i + 1 < len(expression) and expression[i + 1] == delim:
            current.append(delim)
            i += 2
            continue
        if c == delim:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    if len(parts) != 3:
        return None
    regex, repl, flags = parts
    try:
        pattern = re.compile(regex, re.IGNORECASE if "i" in flags else 0)
    except re.error:
        return None
    return Subst(pattern, repl, 0 if "g" in flags else 1), regex


@dataclass
class Preprocessor:
    """Defines, substitutions and the ``#!ifdef`` stack at the current point of the stream."""

    defines: dict[str, str] = field(default_factory=lambda: dict.fromkeys(_BUILTIN, ""))
    substs: list[Subst] = field(default_factory=list)
    _stack: list[bool] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)  # names the open branches test

    @property
    def active(self) -> bool:
        """Whether Kamailio (with no ``-A`` defines) reads the text at this point."""
        return all(self._stack)

    @property
    def conditional(self) -> bool:
        """Whether this point sits inside any ``#!ifdef``/``#!ifndef`` block."""
        return bool(self._stack)

    def directive(self, token_text: str) -> str | None:
        """Apply one directive token; return a problem text for a malformed one, else None."""
        keyword, rest = directive_parts(token_text)
        if keyword in ("ifdef", "ifndef"):
            name = rest.split()[0] if rest.split() else ""
            taken = (name in self.defines) == (keyword == "ifdef")
            self._stack.append(taken)
            self.conditions.append(name)
            return None
        if keyword == "else":
            if self._stack:
                self._stack[-1] = not self._stack[-1]
            return None
        if keyword == "endif":
            if self._stack:
                self._stack.pop()
                self.conditions.pop()
            return None
        if not self.active:
            return None
        if keyword in ("define", "def", "trydefine", "trydef", "redefine", "redef"):
            name, _, value = rest.partition(" ")
            name = name.split("\t")[0]
            if keyword.startswith("try") and name in self.defines:
                return None
            self.defines[name] = value.strip()
            return None
        if keyword in ("subst", "substdef", "substdefs"):
            if not rest.startswith('"') or not rest.endswith('"') or len(rest) < 2:
                return f"#!{keyword} needs one quoted /regex/replacement/flags expression"
            # The directive's string is itself a cfg string: earlier rules apply to it first.
            parsed = parse_subst(self.substitute(decode_string(rest)))
            if parsed is None:
                return f"#!{keyword} {rest}: not a valid /regex/replacement/flags expression"
            subst, regex = parsed
            self.substs.append(subst)
            if keyword != "subst":
                self.defines[regex] = subst.replacement
            return None
        return None

    def module_loaded(self, name: str) -> None:
        """Record ``loadmodule`` of ``name`` (defines ``MOD_<name>`` as Kamailio does)."""
        self.defines[f"MOD_{name}"] = ""

    def substitute(self, text: str) -> str:
        """Apply every ``#!subst``/``#!substdef`` so far to a string, as Kamailio does."""
        for subst in self.substs:
            text = subst.apply(text)
        return text
