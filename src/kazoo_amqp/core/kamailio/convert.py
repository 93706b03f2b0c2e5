"""Convert a kamailio.cfg written for the C ``kazoo`` module into one for stock Kamailio.

The contract with the bridge runtime is docs/kamailio-bridge-design.md; the user guide is
docs/kamailio.md. In short, :func:`convert` reads the main file and every file it includes
(through the injected ``read`` function: this module does no I/O), and returns the new files:

* ``modparam("kazoo", NAME, VALUE)`` -> a one-line comment, and ``NAME = VALUE`` in the TOML
  (values written as ``#!define`` names, ``#!substdef`` strings or ``$def()``/``$defn()`` are
  resolved with the cfg's own defines);
* calls that need the daemon -> ``python_exec("kazoo_call", "<id>")`` plus a row of the call
  table ``[kamailio.calls."<id>"]`` holding the operation and the arguments' unexpanded text;
* ``$kzR``/``$kzE``/``$kzRK`` -> ``$var(kzR)``/``$var(kzE)``/``$var(kzRK)`` in every form;
* ``event_route[kazoo:...]`` -> ``route["kazoo:..."]``; ``event_route[xhttp:request]`` ->
  ``route[KZ_XHTTP_ORIGINAL]``; the ``onreply_route``/``failure_route`` blocks that
  ``kazoo_async_query`` resumes into -> ``route`` blocks (``t_continue`` runs route blocks);
* the 2600hz build's ``routes(PREFIX)`` -> ``route(X); route(Y)`` for every ``route[]`` whose
  name starts with PREFIX (except PREFIX itself), in the order the cfg defines them;
* ``include_file`` lines for the two generated includes.

Everything else keeps its bytes. What stock Kamailio cannot express is a :class:`Problem`; any
problem makes :func:`convert` raise :class:`ConversionFailed` with all of them, so the caller
writes nothing. Converting the output again gives the same files: a cfg that already includes
``kazoo-amqp-modules.cfg`` is recognised and its call table is read back from the
``kazoo-amqp.toml`` next to it.
"""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kazoo_amqp.core.config import KNOWN_KEYS, settings_from_mapping
from kazoo_amqp.core.kamailio import bridge_cfg
from kazoo_amqp.core.kamailio.lexer import (
    ROUTE_KEYWORDS,
    CfgSyntaxError,
    Token,
    decode_string,
    directive_parts,
    tokenize,
)
from kazoo_amqp.core.kamailio.preproc import Preprocessor
from kazoo_amqp.core.kamailio.settings import (
    DEFAULT_BRIDGE,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_SOCKET_WORKERS,
    bridge_from_mapping,
)
from kazoo_amqp.core.kamailio.toml_writer import dumps
from kazoo_amqp.errors import ConfigError, UsageError

__all__ = [
    "CALLS",
    "DEFAULT_BRIDGE",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_SOCKET_WORKERS",
    "MAIN_NAME",
    "MODULES_INCLUDE",
    "ROUTES_INCLUDE",
    "TOML_NAME",
    "XHTTP_ORIGINAL",
    "Conversion",
    "ConversionFailed",
    "Problem",
    "Reader",
    "convert",
]

#: ``read(absolute_path)`` -> the file's text, or None when it does not exist.
Reader = Callable[[str], "str | None"]

MAIN_NAME = "kamailio.cfg"
TOML_NAME = "kazoo-amqp.toml"
MODULES_INCLUDE = bridge_cfg.MODULES_NAME
ROUTES_INCLUDE = bridge_cfg.ROUTES_NAME
KEMI_SCRIPT = bridge_cfg.KEMI_NAME
XHTTP_ORIGINAL = bridge_cfg.ORIGINAL_XHTTP_ROUTE
_MAX_INCLUDE_DEPTH = 10  # Kamailio's own limit
_GENERATED = (MODULES_INCLUDE, ROUTES_INCLUDE)
# Modules the bridge's generated include may load (a second load stops Kamailio).
_BRIDGE_MODULES = frozenset(bridge_cfg.BRIDGE_MODULES)


@dataclass(frozen=True, slots=True)
class _CallKind:
    op: str
    prefix: str
    arities: tuple[int, ...]


#: cfg function -> what it becomes in the call table (op, id prefix, accepted argument counts).
CALLS: dict[str, _CallKind] = {
    "kazoo_publish": _CallKind("publish", "kp", (3, 4)),
    "kazoo_query": _CallKind("query", "kq", (3, 4, 5)),
    "kazoo_async_query": _CallKind("async_query", "ka", (5, 6)),
    "kazoo_query_async": _CallKind("async_query", "ka", (5, 6)),
    "kazoo_subscribe": _CallKind("subscribe", "ks", (1, 4)),
    "kazoo_pua_publish": _CallKind("pua_publish", "ku", (1,)),
    "kazoo_pua_publish_dialoginfo": _CallKind("pua_publish_dialoginfo", "ku", (1,)),
    "kazoo_pua_publish_mwi": _CallKind("pua_publish_mwi", "ku", (1,)),
    "kazoo_pua_publish_presence": _CallKind("pua_publish_presence", "ku", (1,)),
}

_KZ_PV = re.compile(r"\$(\$)|\$(\()?(kzRK|kzR|kzE)(?![A-Za-z0-9_])")
_ONLY_2600HZ: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (
        re.compile(r"\$\(?knode(?![A-Za-z0-9_])"),
        "$knode",
        "only the 2600hz Kamailio build has this pseudo-variable",
        'write the node name instead, e.g. "kamailio@MY_HOSTNAME" with a #!substdef',
    ),
    (
        re.compile(r"\$\(?xavp\(\s*amqpc\s*=>"),
        "$xavp(amqpc=>...)",
        "only the 2600hz Kamailio build fills this per-zone connection count",
        "drop the check: kazoo-amqp buffers publishes while no broker is reachable and "
        "queries then fail with a negative code",
    ),
    (
        re.compile(r"\{\s*kz\.filename"),
        "{kz.filename}",
        "only the 2600hz Kamailio build has this transformation",
        "use a stock one, e.g. {s.select,-1,/}",
    ),
)
_YES = {"yes": 1, "true": 1, "on": 1, "enable": 1, "no": 0, "false": 0, "off": 0, "disable": 0}
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something stock Kamailio cannot express, or a cfg the converter cannot read."""

    file: str
    line: int
    construct: str
    why: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.construct}: {self.why} ({self.fix})"


class ConversionFailed(UsageError):
    """The cfg cannot be converted; ``problems`` lists every reason, in reading order."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Conversion:
    """The converter's output, for the caller to write under the output folder.

    ``files``: path relative to the output folder -> text (``kamailio.cfg``, the include files
    that changed, ``kazoo-amqp.toml`` and the generated files). ``links``: path relative to the
    output folder -> absolute path of an include file that did not change (the caller makes a
    symbolic link, so the converted cfg finds it under its original relative name).
    ``report``: one line per kind of rewrite with its count. ``warnings``: lines to show.
    """

    files: dict[str, str]
    links: dict[str, str]
    report: tuple[str, ...]
    warnings: tuple[str, ...]


def convert(
    main_path: str,
    read: Reader,
    *,
    out_dir: str | None = None,
    bridge: str | None = None,
    socket_workers: int | None = None,
    max_event_bytes: int | None = None,
    package_dir: str | None = None,
) -> Conversion:
    """Convert the cfg at absolute path ``main_path`` (see the module docstring).

    ``out_dir`` is the absolute path of the output folder: the generated files name the TOML
    (and app_python3 the script) by absolute path, because Kamailio changes to its working
    folder (``/`` by default) before app_python3 loads its script. Without it (tests) they
    use the bare file name.

    ``bridge``, ``socket_workers`` and ``max_event_bytes`` fill ``[kamailio]``; None keeps what
    the input folder's ``kazoo-amqp.toml`` of an already converted cfg says, else the default.
    ``package_dir``: the folder holding the ``kazoo_amqp`` package for Kamailio's Python (the
    generated app_python3 script puts it on ``sys.path``; see ``bridge_cfg.render_includes``).

    Raises:
        ConversionFailed: every problem found, each as ``file:line: construct: why (fix)``.
    """
    converter = _Converter(posixpath.normpath(main_path), read)
    toml_path = posixpath.join(out_dir, TOML_NAME) if out_dir else TOML_NAME
    return converter.run(
        bridge, socket_workers, max_event_bytes, toml_path, out_dir=out_dir, package_dir=package_dir
    )


# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Edit:
    start: int
    end: int
    text: str


@dataclass
class _File:
    path: str  # absolute
    rel: str  # name under the output folder
    shown: str  # name in messages and `where`: relative to the input folder
    text: str
    tokens: list[Token]
    outside: bool
    edits: list[_Edit] = field(default_factory=list)

    def new_text(self) -> str:
        out: list[str] = []
        pos = 0
        for edit in sorted(self.edits, key=lambda e: (e.start, e.end)):
            out.append(self.text[pos : edit.start])
            out.append(edit.text)
            pos = edit.end
        out.append(self.text[pos:])
        return "".join(out)


@dataclass(frozen=True, slots=True)
class _Block:
    file: _File
    keyword: Token
    name: str


@dataclass(frozen=True, slots=True)
class _RoutesCall:
    file: _File
    start: int
    end: int
    prefix: str


class _Unresolved(Exception):
    """An argument or value that cannot be known statically; the message says why."""


_REPORT_ORDER = (
    'modparam("kazoo", ...) -> kazoo-amqp.toml',
    *(f"{name} -> python_exec" for name in CALLS),
    "$kzE -> $var(kzE)",
    "$kzR -> $var(kzR)",
    "$kzRK -> $var(kzRK)",
    'event_route[kazoo:...] -> route["kazoo:..."]',
    f"event_route[xhttp:request] -> route[{XHTTP_ORIGINAL}]",
    "onreply_route/failure_route -> route (async resume)",
    "routes(PREFIX) -> route(...)",
    f'include_file "{MODULES_INCLUDE}" / "{ROUTES_INCLUDE}" added',
    "include path -> absolute (file outside the input folder)",
)


class _Converter:
    def __init__(self, main_path: str, read: Reader) -> None:
        self.main_path = main_path
        self.in_dir = posixpath.dirname(main_path)
        self.read = read
        self.pre = Preprocessor()
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self._warned: dict[str, list[int]] = {}
        self.counts: dict[str, int] = dict.fromkeys(_REPORT_ORDER, 0)
        self.files: dict[str, _File] = {}
        self.walking: list[str] = []
        self.converted = False  # the cfg already includes the generated modules include
        self.previous: dict[str, Any] | None = None
        self.daemon_keys: dict[str, Any] = {}
        self.key_where: dict[str, tuple[_File, int]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.reserved_ids: set[str] = set()
        self.id_counters: dict[tuple[str, str], int] = {}
        self.event_routes: list[str] = []
        self.route_names: list[str] = []
        self.blocks: list[_Block] = []
        self.routes_calls: list[_RoutesCall] = []
        self.async_routes: list[tuple[str, str, _File, int]] = []
        self.on_refs: dict[str, set[str]] = {"onreply_route": set(), "failure_route": set()}
        self.kazoo_load: tuple[_File, Token] | None = None
        self.loaded_modules: set[str] = set()
        self.xhttp = False

    # -- driver ------------------------------------------------------------------------------

    def run(
        self,
        bridge: str | None,
        socket_workers: int | None,
        max_event_bytes: int | None,
        toml_path: str,
        *,
        out_dir: str | None,
        package_dir: str | None,
    ) -> Conversion:
        main_text = self.read(self.main_path)
        shown = posixpath.basename(self.main_path)
        if main_text is None:
            raise ConversionFailed(
                [Problem(shown, 0, "cfg", "the file does not exist", "pass an existing file")]
            )
        self._peek_previous(main_text)
        main = self._load(self.main_path, main_text, MAIN_NAME, shown, outside=False)
        if main is not None:
            self._walk(main, 0)
        if main is None or self.problems:
            raise ConversionFailed(self.problems)
        self._finish_routes()
        self._finish_resumes()
        self._finish_includes(main)
        toml_data = self._toml(bridge, socket_workers, max_event_bytes)
        if self.problems:
            raise ConversionFailed(self.problems)
        kamailio = toml_data["kamailio"]
        try:
            checked = bridge_from_mapping(kamailio)  # the runtime's own parser
        except ConfigError as exc:
            raise ConversionFailed(
                [Problem(TOML_NAME, 0, "[kamailio]", str(exc), "convert the original cfg again")]
            ) from None
        assert checked is not None
        node_hostname = toml_data.get("node_hostname")
        generated = bridge_cfg.render_includes(
            bridge=checked.bridge,
            socket_workers=checked.socket_workers,
            max_event_bytes=checked.max_event_bytes,
            loaded_modules=frozenset(self.loaded_modules),
            original_xhttp_route=XHTTP_ORIGINAL if self.xhttp else None,
            resume_routes=self._resume_routes(),
            toml_name=toml_path,
            node_hostname=node_hostname if isinstance(node_hostname, str) else None,
            out_dir=out_dir,
            package_dir=package_dir,
        )
        files, links = self._outputs(main)
        for name, text in [(TOML_NAME, _toml_text(toml_data)), *generated.items()]:
            if name in files or name in links:
                self._problem(
                    main,
                    1,
                    name,
                    "the cfg includes a file of this name, which the converter writes itself",
                    "rename that include",
                )
            files[name] = text
        if self.problems:
            raise ConversionFailed(self.problems)
        report = tuple(f"{kind}: {n}" for kind, n in self.counts.items() if n)
        return Conversion(files, links, report, self._warning_lines())

    def _warning_lines(self) -> tuple[str, ...]:
        lines = []
        for key in self.warnings:
            if key not in self._warned:  # added directly, already a full line
                lines.append(key)
                continue
            shown, text = key.split("\0", 1)
            where = ",".join(str(n) for n in self._warned[key])
            lines.append(f"{shown}:{where}: {text}")
        return tuple(lines)

    def _peek_previous(self, main_text: str) -> None:
        """Read the input folder's kazoo-amqp.toml when the cfg looks converted already."""
        if not any(mark in main_text for mark in (*_GENERATED, 'python_exec("kazoo_call"')):
            return
        path = posixpath.join(self.in_dir, TOML_NAME)
        text = self.read(path)
        if text is None:
            return
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self._problem(None, 0, TOML_NAME, f"not valid TOML ({exc})", "fix or remove it")
            return
        kamailio = data.get("kamailio")
        if not isinstance(kamailio, dict) or not isinstance(kamailio.get("calls", {}), dict):
            self._problem(
                None,
                0,
                TOML_NAME,
                "[kamailio] or its calls table is not a table",
                "convert the original cfg again",
            )
            return
        self.previous = data
        self.reserved_ids.update(kamailio.get("calls", {}))

    def _load(self, path: str, text: str, rel: str, shown: str, *, outside: bool) -> _File | None:
        try:
            tokens = tokenize(text)
        except CfgSyntaxError as exc:
            self._problem(None, exc.line, exc.construct, exc.why, exc.fix, shown=shown)
            return None
        f = _File(path, rel, shown, text, tokens, outside)
        self.files[path] = f
        return f

    def _problem(
        self,
        f: _File | None,
        line: int,
        construct: str,
        why: str,
        fix: str,
        *,
        shown: str | None = None,
    ) -> None:
        name = shown if shown is not None else (f.shown if f else TOML_NAME)
        self.problems.append(Problem(name, line, construct, why, fix))

    def _warn(self, f: _File, line: int, text: str) -> None:
        """Record a warning; the same text again in the same file only adds its line."""
        key = f"{f.shown}\0{text}"
        if key in self._warned:
            self._warned[key].append(line)
        else:
            self._warned[key] = [line]
            self.warnings.append(key)

    # -- the walk ----------------------------------------------------------------------------

    def _walk(self, f: _File, depth: int) -> None:
        self.walking.append(f.path)
        toks = f.tokens
        sig = [i for i, t in enumerate(toks) if t.kind not in ("ws", "comment")]
        k = 0
        while k < len(sig):
            t = toks[sig[k]]
            nxt = toks[sig[k + 1]] if k + 1 < len(sig) else None
            prev = toks[sig[k - 1]] if k > 0 else None
            if t.kind == "directive":
                self._directive(f, t, depth)
            elif t.kind in ("pv", "string", "sqstring"):
                self._plain_text(f, t)
            elif t.kind == "id" and not (prev is not None and prev.text == "."):
                k = self._identifier(f, t, nxt, sig, k, depth)
            k += 1
        self.walking.pop()

    def _directive(self, f: _File, t: Token, depth: int) -> None:
        keyword, rest = directive_parts(t.text)
        if keyword in ("include_file", "import_file"):
            self._include(f, t, rest, mandatory=keyword == "include_file", depth=depth)
            return
        problem = self.pre.directive(t.text)
        if problem is not None:
            self._problem(f, t.line, f"#!{keyword}", problem, "fix the directive")
        if keyword in ("define", "def", "trydefine", "trydef", "redefine", "redef"):
            self._plain_text(f, t)
            try:
                body = [x for x in tokenize(rest) if x.kind not in ("ws", "comment")]
            except CfgSyntaxError:
                body = []  # a define's value need not be cfg text on its own
            for a, b in itertools.pairwise(body):
                if a.kind == "id" and a.text in CALLS and b.text == "(":
                    self._problem(
                        f,
                        t.line,
                        f"#!{keyword} ... {a.text}(",
                        "a call inside a #!define "
                        "cannot be converted (Kamailio pastes it where the name is used)",
                        "write the call out where the define is used",
                    )

    def _plain_text(self, f: _File, t: Token) -> None:
        """Renames and 2600hz checks inside a pseudo-variable, string or define."""
        self._check_2600hz(f, t.line, t.text)
        new = self._rename(t.text)
        if new != t.text:
            f.edits.append(_Edit(t.start, t.end, new))

    def _identifier(
        self, f: _File, t: Token, nxt: Token | None, sig: list[int], k: int, depth: int
    ) -> int:
        """Handle an identifier at ``sig[k]``; return the index of the last token consumed."""
        name = t.text
        toks = f.tokens
        is_call = nxt is not None and nxt.text == "("
        if name in ("include_file", "import_file") and nxt is not None and nxt.kind == "string":
            self._include(f, nxt, nxt.text, mandatory=name == "include_file", depth=depth)
            return k + 1
        if name == "import_files":
            self._problem(
                f,
                t.line,
                "import_files",
                "only the 2600hz Kamailio build reads a glob of files",
                'write one import_file "NAME" line per file',
            )
            return k
        if name == "bflags" and nxt is not None and nxt.kind == "id":
            self._problem(
                f,
                t.line,
                "bflags",
                "only the 2600hz Kamailio build declares branch flags by name",
                "#!define each name as its flag number instead",
            )
            return k
        if name == "loadmodule" and nxt is not None and nxt.kind == "string":
            self._loadmodule(f, t, nxt)
            return k + 1
        if name in ROUTE_KEYWORDS and nxt is not None and nxt.kind == "blockname":
            self._block(f, t, nxt)
            return k + 1
        if not is_call:
            return k
        parsed = self._args(f, t, sig, k + 1)
        if parsed is None:
            return len(sig)
        args, close_k = parsed
        close = toks[sig[close_k]]
        if name in ("modparam", "modparamx"):
            after = toks[sig[close_k + 1]] if close_k + 1 < len(sig) else None
            end = after.end if after is not None and after.text == ";" else close.end
            if self._modparam(f, t, args, end, expand_pvs=name == "modparamx"):
                return close_k
            return k  # another module's parameter: its strings are walked as usual
        if name in CALLS:
            self._call(f, t, args, close)
            return close_k
        if name == "python_exec":
            self._python_exec(f, t, args)
            return close_k
        if name == "routes":
            self._routes(f, t, args, close)
            return close_k
        if name in ("t_on_reply", "t_on_failure") and len(args) == 1:
            kind = "onreply_route" if name == "t_on_reply" else "failure_route"
            try:
                self.on_refs[kind].add(self._literal(args[0], f))
            except _Unresolved:
                pass
        return k  # other calls: their arguments are walked as ordinary tokens

    def _args(
        self, f: _File, t: Token, sig: list[int], open_k: int
    ) -> tuple[list[list[Token]], int] | None:
        """Split the arguments of the call whose ``(`` is ``sig[open_k]``."""
        toks = f.tokens
        args: list[list[Token]] = [[]]
        depth = 0
        for k in range(open_k, len(sig)):
            tok = toks[sig[k]]
            if tok.text == "(" and tok.kind == "punct":
                depth += 1
                if depth == 1:
                    continue
            elif tok.text == ")" and tok.kind == "punct":
                depth -= 1
                if depth == 0:
                    return ([] if args == [[]] else args), k
            elif tok.text == "," and tok.kind == "punct" and depth == 1:
                args.append([])
                continue
            args[-1].append(tok)
        self._problem(f, t.line, f"{t.text}(", "the call's parenthesis is never closed", "add )")
        return None

    # -- values ------------------------------------------------------------------------------

    def _literal(self, arg: list[Token], f: _File, *, depth: int = 0) -> str:
        """The text an argument stands for: strings decoded (+ substitutions), a variable as
        written, a number, or a ``#!define`` name's value."""
        if not arg:
            raise _Unresolved("the argument is empty")
        if all(a.kind in ("string", "sqstring") for a in arg):
            return self.pre.substitute("".join(decode_string(a.text) for a in arg))
        if len(arg) == 1:
            a = arg[0]
            if a.kind in ("pv", "number"):
                return a.text
            if a.kind == "id":
                return self._define_value(a.text, f, depth)
        if len(arg) == 2 and arg[0].text == "-" and arg[1].kind == "number":
            return "-" + arg[1].text
        shown = " ".join(a.text for a in arg)
        raise _Unresolved(f"{shown} is an expression, not a string, a number or a variable")

    def _define_value(self, name: str, f: _File, depth: int) -> str:
        if name not in self.pre.defines:
            raise _Unresolved(f"{name} is not #!define'd in the cfg (a kamailio -A name?)")
        value = self.pre.defines[name]
        if not value:
            raise _Unresolved(f"{name} is #!define'd with no value")
        if depth > 10:
            raise _Unresolved(f"{name}: #!define refers to itself")
        return self._literal(_significant(value), f, depth=depth + 1)

    def _modparam_value(self, arg: list[Token], f: _File, *, expand_pvs: bool) -> str | int:
        sig = [a for a in arg if a.kind not in ("ws", "comment")]
        word = sig[0].text.lower() if len(sig) == 1 and sig[0].kind == "id" else ""
        if word in _YES and sig[0].text not in self.pre.defines:
            return _YES[word]
        if len(sig) == 1 and sig[0].kind == "pv" and expand_pvs:
            m = re.fullmatch(r"\$(defn?)\(\s*([A-Za-z_]\w*)\s*\)", sig[0].text)
            if m is None:
                raise _Unresolved(f"{sig[0].text} has no value before Kamailio runs")
            if m.group(1) == "defn":
                return _as_int(self._define_value(m.group(2), f, 0))
            if m.group(2) not in self.pre.defines:
                raise _Unresolved(f"{m.group(2)} is not #!define'd in the cfg")
            return self.pre.defines[m.group(2)]  # $def() gives the raw text, quotes included
        if len(sig) == 1 and sig[0].kind == "id":
            value = self.pre.defines.get(sig[0].text, "")
            inner = _significant(value)
            if len(inner) == 1 and inner[0].kind in ("string", "sqstring"):
                return self.pre.substitute(decode_string(inner[0].text))
        text = self._literal(sig, f)
        if all(a.kind in ("string", "sqstring") for a in sig):
            return text
        return _as_int(text)

    # -- constructs --------------------------------------------------------------------------

    def _include(self, f: _File, t: Token, quoted: str, *, mandatory: bool, depth: int) -> None:
        keyword = "include_file" if mandatory else "import_file"
        if not (len(quoted) >= 2 and quoted.startswith('"') and quoted.endswith('"')):
            self._problem(
                f,
                t.line,
                keyword,
                "the file name must be between double quotes",
                f'write {keyword} "NAME"',
            )
            return
        name = self.pre.substitute(decode_string(quoted))
        construct = f'{keyword} "{name}"'
        if "$" in name:
            self._problem(
                f,
                t.line,
                construct,
                "stock Kamailio does not expand variables in include "
                "names (only the 2600hz build does)",
                "use a #!substdef name in the file name",
            )
            return
        if posixpath.basename(name) in _GENERATED:
            self.converted = True
            return
        base = posixpath.dirname(f.path)
        path = posixpath.normpath(name if name.startswith("/") else posixpath.join(base, name))
        text = self.read(path)
        if text is None:
            if mandatory and self.pre.active:
                self._problem(
                    f,
                    t.line,
                    construct,
                    "the file does not exist (Kamailio refuses to start)",
                    "create it or fix the path; import_file is the form that may be missing",
                )
            elif mandatory:
                self._warn(f, t.line, f"{construct}: missing, inside an #!ifdef not taken")
            else:
                self._warn(f, t.line, f"{construct}: missing, skipped as Kamailio does")
            return
        if path in self.walking:
            self._problem(f, t.line, construct, "includes itself", "remove the loop")
            return
        if path in self.files:
            self._warn(f, t.line, f"{construct}: included again; converted once")
            return
        if depth + 1 >= _MAX_INCLUDE_DEPTH:
            self._problem(
                f,
                t.line,
                construct,
                f"more than {_MAX_INCLUDE_DEPTH} nested includes",
                "flatten the includes",
            )
            return
        rel = posixpath.relpath(path, self.in_dir)
        outside = rel == ".." or rel.startswith("../")
        child = self._load(path, text, rel, path if outside else rel, outside=outside)
        if child is None:
            return
        if rel == MAIN_NAME and path != self.main_path:
            self._problem(
                f,
                t.line,
                construct,
                f"the converted main file is written as {MAIN_NAME}",
                "rename the include",
            )
        if outside and not name.startswith("/"):
            f.edits.append(_Edit(t.start, t.end, t.text.replace(quoted, _quote(path), 1)))
            self.counts["include path -> absolute (file outside the input folder)"] += 1
        self._walk(child, depth + 1)

    def _loadmodule(self, f: _File, t: Token, name_token: Token) -> None:
        path = self.pre.substitute(decode_string(name_token.text))
        module = posixpath.basename(path)
        module = module[:-3] if module.endswith(".so") else module
        if self.pre.active:
            self.loaded_modules.add(module)
            self.pre.module_loaded(module)
        elif module in _BRIDGE_MODULES and not self.pre.conditions[-1].startswith("MOD_"):
            self._warn(
                f,
                t.line,
                f'loadmodule "{path}" inside an #!ifdef not taken: the bridge\'s '
                "modules include may load it again if you enable that branch",
            )
        if module == "kazoo" and self.kazoo_load is None and self.pre.active:
            if self.pre.conditional:
                self._warn(
                    f,
                    t.line,
                    'loadmodule "kazoo.so" is inside #!ifdef; the bridge '
                    "include follows it and is read only when that branch is taken",
                )
            self.kazoo_load = (f, name_token)

    def _modparam(
        self, f: _File, t: Token, args: list[list[Token]], end: int, *, expand_pvs: bool
    ) -> bool:
        """Handle a ``modparam("kazoo", ...)``; return False for another module's."""
        if len(args) != 3:
            return False
        try:
            module = self._literal(args[0], f)
        except _Unresolved:
            return False
        if module != "kazoo":
            return False
        try:
            key = self._literal(args[1], f)
        except _Unresolved as exc:
            self._problem(f, t.line, 'modparam("kazoo", ...)', str(exc), "name the parameter")
            return True
        construct = f'modparam("kazoo", "{key}")'
        self._replace_with_comment(
            f, t.start, end, f'kazoo-amqp: modparam("kazoo", "{key}", ...) moved to {TOML_NAME}'
        )
        self.counts['modparam("kazoo", ...) -> kazoo-amqp.toml'] += 1
        if key not in KNOWN_KEYS:
            self._problem(
                f,
                t.line,
                construct,
                "the kazoo module has no such parameter",
                "fix the name (spec: the module's parameters)",
            )
            return True
        if not self.pre.active:
            self._warn(
                f,
                t.line,
                f"{construct}: inside an #!ifdef not taken, so not moved to "
                f"{TOML_NAME}; add the key by hand if you enable that branch",
            )
            return True
        try:
            value = self._modparam_value(args[2], f, expand_pvs=expand_pvs)
        except _Unresolved as exc:
            self._problem(
                f,
                t.line,
                construct,
                f"the value cannot be known before Kamailio runs: {exc}",
                f"#!define it in the cfg, or write the value of {key} in the modparam",
            )
            return True
        if key == "amqp_connection":
            previous = self.daemon_keys.get(key, [])
            self.daemon_keys[key] = [*previous, value] if isinstance(previous, list) else [value]
        else:
            self.daemon_keys[key] = value
        self.key_where[key] = (f, t.line)
        return True

    def _replace_with_comment(self, f: _File, start: int, end: int, comment: str) -> None:
        newlines = f.text.count("\n", start, end)
        line_end = f.text.find("\n", end)
        rest = f.text[end : len(f.text) if line_end < 0 else line_end].strip()
        if not rest or rest.startswith("#") or rest.startswith("//"):
            text = f"# {comment}"
        else:
            text = f"/* {comment} */"
        f.edits.append(_Edit(start, end, text + "\n" * newlines))

    def _call(self, f: _File, t: Token, args: list[list[Token]], close: Token) -> None:
        kind = CALLS[t.text]
        construct = f"{t.text}(...)"
        if len(args) not in kind.arities:
            counts = " or ".join(str(n) for n in kind.arities)
            self._problem(
                f, t.line, construct, f"takes {counts} arguments, not {len(args)}", "fix the call"
            )
            return
        texts: list[str] = []
        for number, arg in enumerate(args, start=1):
            try:
                text = self._literal(arg, f)
            except _Unresolved as exc:
                self._problem(
                    f,
                    t.line,
                    construct,
                    f"argument {number}: {exc}",
                    "assign it to a $var first and pass the $var",
                )
                return
            self._check_2600hz(f, t.line, text)
            texts.append(self._rename(text))
        row: dict[str, Any] = {"op": kind.op}
        if kind.op == "query":
            row["args"] = texts[:3] + texts[4:5]
            if len(texts) >= 4:
                if _is_target(texts[3]):
                    row["target"] = texts[3]
                else:
                    self._warn(
                        f,
                        t.line,
                        f"{construct}: 4th argument {texts[3]!r} is not a variable "
                        "(the 2600hz build's flags); ignored, the reply is in $var(kzR)",
                    )
        elif kind.op == "async_query":
            row["args"] = texts[:5]
            reply, timeout = texts[3], texts[4]
            for route in (reply, timeout):
                if not _ROUTE_NAME.match(route):
                    self._problem(
                        f,
                        t.line,
                        construct,
                        f"route name {route!r} is not a literal name",
                        "name the reply and timeout routes literally, so their blocks can "
                        "become route blocks that t_continue runs",
                    )
                    return
            self.async_routes.append((reply, timeout, f, t.line))
        else:
            row["args"] = texts
        row["where"] = f"{f.shown}:{t.line}"
        call_id = self._new_id(f, kind, row)
        self.calls[call_id] = row
        newlines = f.text.count("\n", t.start, close.end)
        f.edits.append(
            _Edit(
                t.start, close.end, f'python_exec("kazoo_call", "{call_id}"' + "\n" * newlines + ")"
            )
        )
        self.counts[f"{t.text} -> python_exec"] += 1

    def _new_id(self, f: _File, kind: _CallKind, row: dict[str, Any]) -> str:
        digest = hashlib.sha1(
            "\0".join([f.shown, kind.op, *row["args"], row.get("target", "")]).encode()
        ).hexdigest()[:6]
        key = (f.shown, f"{kind.prefix}-{digest}")
        while True:
            self.id_counters[key] = self.id_counters.get(key, 0) + 1
            call_id = f"{key[1]}-{self.id_counters[key]}"
            if call_id not in self.reserved_ids and call_id not in self.calls:
                return call_id

    def _python_exec(self, f: _File, t: Token, args: list[list[Token]]) -> None:
        if len(args) != 2:
            return
        try:
            method, call_id = self._literal(args[0], f), self._literal(args[1], f)
        except _Unresolved:
            return
        if method != "kazoo_call":
            return
        rows = (self.previous or {}).get("kamailio", {}).get("calls", {})
        row = rows.get(call_id) if isinstance(rows, dict) else None
        if not isinstance(row, dict):
            self._problem(
                f,
                t.line,
                f'python_exec("kazoo_call", "{call_id}")',
                f'no row [kamailio.calls."{call_id}"] in the {TOML_NAME} next to the cfg',
                "convert the original cfg again",
            )
            return
        self.calls[call_id] = dict(row)
        if row.get("op") == "async_query":
            a = row.get("args", [])
            if isinstance(a, list) and len(a) >= 5:
                self.async_routes.append((str(a[3]), str(a[4]), f, t.line))

    def _routes(self, f: _File, t: Token, args: list[list[Token]], close: Token) -> None:
        construct = "routes(" + " ".join(a.text for arg in args for a in arg) + ")"
        prefix: str | None = None
        if len(args) == 1 and len(args[0]) == 1:
            a = args[0][0]
            if a.kind == "id":
                value = self.pre.defines.get(a.text)
                prefix = value if value and _ROUTE_NAME.match(value) else a.text
            elif a.kind in ("string", "sqstring"):
                prefix = decode_string(a.text)
        if prefix is None or not _ROUTE_NAME.match(prefix):
            self._problem(
                f,
                t.line,
                construct,
                "only the 2600hz Kamailio build runs routes by a prefix known at run time",
                "call the routes one by one with route(NAME), or give "
                "routes() a literal prefix so the converter can expand it",
            )
            return
        self.routes_calls.append(_RoutesCall(f, t.start, close.end, prefix))

    def _block(self, f: _File, t: Token, name_token: Token) -> None:
        raw = name_token.text[1:-1].strip()
        name = decode_string(raw) if raw[:1] in ('"', "'") and len(raw) >= 2 else raw
        if t.text == "event_route" and name.startswith("kazoo:"):
            f.edits.append(_Edit(t.start, name_token.end, f"route[{_quote(name)}]"))
            self.counts['event_route[kazoo:...] -> route["kazoo:..."]'] += 1
            self.event_routes.append(name)
        elif t.text == "event_route" and name == "xhttp:request":
            if self.xhttp:
                self._warn(f, t.line, "a second event_route[xhttp:request]: renamed too")
            f.edits.append(_Edit(t.start, name_token.end, f"route[{XHTTP_ORIGINAL}]"))
            self.counts[f"event_route[xhttp:request] -> route[{XHTTP_ORIGINAL}]"] += 1
            self.xhttp = True
        elif t.text == "route":
            if name.startswith("kazoo:"):
                self.event_routes.append(name)
            elif name == XHTTP_ORIGINAL:
                self.xhttp = True
            self.route_names.append(name)
        elif t.text in ("onreply_route", "failure_route"):
            self.blocks.append(_Block(f, t, name))

    # -- text checks -------------------------------------------------------------------------

    def _check_2600hz(self, f: _File, line: int, text: str) -> None:
        for pattern, construct, why, fix in _ONLY_2600HZ:
            if pattern.search(text):
                self._problem(f, line, construct, why, fix)

    def _rename(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(1):
                return "$$"
            name = m.group(3)
            self.counts[f"${name} -> $var({name})"] += 1
            return f"$(var({name})" if m.group(2) else f"$var({name})"

        return _KZ_PV.sub(sub, text)

    # -- after the walk ----------------------------------------------------------------------

    def _finish_routes(self) -> None:
        names = list(dict.fromkeys(self.route_names))
        for call in self.routes_calls:
            matched = [n for n in names if n.startswith(call.prefix) and n != call.prefix]
            if matched:
                text = "; ".join(f"route({_route_ref(n)})" for n in matched)
            else:
                text = f"/* kazoo-amqp: routes({call.prefix}) matched no route */"
            call.file.edits.append(_Edit(call.start, call.end, text))
            self.counts["routes(PREFIX) -> route(...)"] += 1

    def _finish_resumes(self) -> None:
        wanted = {
            "onreply_route": {r for r, _, _, _ in self.async_routes},
            "failure_route": {e for _, e, _, _ in self.async_routes},
        }
        renamed: dict[str, _Block] = {}
        for block in self.blocks:
            kind = block.keyword.text
            if block.name not in wanted[kind]:
                continue
            construct = f"{kind}[{block.name}]"
            if block.name in self.route_names or block.name in renamed:
                self._problem(
                    block.file,
                    block.keyword.line,
                    construct,
                    "kazoo_async_query resumes into "
                    f"it, so it becomes route[{block.name}], but that name is taken",
                    "give the async reply/timeout route a name of its own",
                )
                continue
            if block.name in self.on_refs[kind]:
                self._problem(
                    block.file,
                    block.keyword.line,
                    construct,
                    "kazoo_async_query resumes into "
                    "it and t_on_reply/t_on_failure also arm it; it cannot be both",
                    "give the async reply/timeout route a block of its own",
                )
                continue
            renamed[block.name] = block
            block.file.edits.append(_Edit(block.keyword.start, block.keyword.end, "route"))
            self.counts["onreply_route/failure_route -> route (async resume)"] += 1
        known = set(self.route_names) | set(renamed)
        for reply, timeout, f, line in self.async_routes:
            for name in (reply, timeout):
                if name not in known:
                    self._warn(
                        f,
                        line,
                        f"kazoo_async_query resumes into {name!r}, which no "
                        "block of the cfg defines",
                    )

    def _resume_routes(self) -> list[str]:
        names: list[str] = []
        for reply, timeout, _, _ in self.async_routes:
            names.extend((reply, timeout))
        return list(dict.fromkeys(names))

    def _finish_includes(self, main: _File) -> None:
        if self.converted:
            return
        if self.kazoo_load is None:
            self._problem(
                main,
                1,
                'loadmodule "kazoo.so"',
                "the cfg never loads the kazoo module",
                "there is nothing to convert; or load kazoo.so outside any #!ifdef not taken",
            )
            return
        f, token = self.kazoo_load
        target = posixpath.relpath(MODULES_INCLUDE, posixpath.dirname(f.rel) or ".")
        at = _line_end_after(f, token)
        lead = "\n" if at == len(f.text) and not f.text.endswith("\n") else ""
        f.edits.append(_Edit(at, at, f'{lead}include_file "{target}"\n'))
        tail = "" if main.text.endswith("\n") or not main.text else "\n"
        main.edits.append(
            _Edit(len(main.text), len(main.text), f'{tail}include_file "{ROUTES_INCLUDE}"\n')
        )
        self.counts[f'include_file "{MODULES_INCLUDE}" / "{ROUTES_INCLUDE}" added'] += 2

    def _toml(
        self, bridge: str | None, socket_workers: int | None, max_event_bytes: int | None
    ) -> dict[str, Any]:
        previous = dict(self.previous or {})
        old_kamailio = previous.pop("kamailio", {})
        old_kamailio = old_kamailio if isinstance(old_kamailio, dict) else {}
        daemon: dict[str, Any] = {**previous, **self.daemon_keys}
        processes, workers = "amqp_consumer_processes", "amqp_consumer_workers"
        if processes in daemon and workers in daemon and daemon[processes] != daemon[workers]:
            # C: processes = consume connections per broker, workers = processes running event
            # routes; kazoo-amqp has one consume connection per broker and only the latter.
            f, line = self.key_where.get(processes, (None, 0))
            self.warnings.append(
                f"{f.shown if f else TOML_NAME}:{line}: {processes} = {daemon[processes]} "
                f"left out of {TOML_NAME}: kazoo-amqp keeps one consume connection per broker; "
                f"{workers} = {daemon[workers]} sets its event workers"
            )
            del daemon[processes]
        try:
            settings_from_mapping(daemon, base_dir="/", default_app_version="0")
        except ConfigError as exc:
            f, line = self.key_where.get(exc.key or "", (None, 1))
            construct = f'modparam("kazoo", "{exc.key}")' if exc.key else TOML_NAME
            self._problem(
                f,
                line,
                construct,
                str(exc),
                "fix the modparam in the cfg",
                shown=None if f else posixpath.basename(self.main_path),
            )
        kamailio: dict[str, Any] = {
            "bridge": bridge or old_kamailio.get("bridge", DEFAULT_BRIDGE),
            "socket_workers": socket_workers
            or old_kamailio.get("socket_workers", DEFAULT_SOCKET_WORKERS),
            "max_event_bytes": max_event_bytes
            or old_kamailio.get("max_event_bytes", DEFAULT_MAX_EVENT_BYTES),
        }
        for key, value in old_kamailio.items():
            if key not in kamailio and key not in ("routes", "calls"):
                kamailio[key] = value
        kamailio["routes"] = list(dict.fromkeys(self.event_routes))
        kamailio["calls"] = self.calls
        return {**daemon, "kamailio": kamailio}

    def _outputs(self, main: _File) -> tuple[dict[str, str], dict[str, str]]:
        files: dict[str, str] = {}
        links: dict[str, str] = {}
        for f in self.files.values():
            new = f.new_text()
            if f is main:
                files[MAIN_NAME] = new
            elif new != f.text:
                if f.outside:
                    self._problem(
                        f,
                        1,
                        f.path,
                        "this included file must be rewritten but lies outside "
                        "the main file's folder",
                        "move it next to the main file",
                    )
                else:
                    files[f.rel] = new
            elif not f.outside:
                links[f.rel] = f.path
        return files, links


def _toml_text(data: Mapping[str, Any]) -> str:
    return dumps(
        data,
        header=(
            "Written by `kazoo-amqp kamailio-convert` (docs/kamailio.md).\n"
            'Daemon keys: the cfg\'s modparam("kazoo", ...) lines. [kamailio]: the bridge;\n'
            '[kamailio.calls]: one row per python_exec("kazoo_call", ID) of the converted cfg.'
        ),
    )


def _significant(text: str) -> list[Token]:
    """The tokens of a define's value without blanks and comments."""
    try:
        return [t for t in tokenize(text) if t.kind not in ("ws", "comment")]
    except CfgSyntaxError as exc:
        raise _Unresolved(f"{text!r} is not cfg text ({exc.why})") from None


def _as_int(text: str) -> int:
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise _Unresolved(f"{text!r} is not a number") from None


def _is_target(text: str) -> bool:
    """Whether a 4th ``kazoo_query`` argument names one writable variable."""
    try:
        tokens = tokenize(text) if text.startswith("$") else []
    except CfgSyntaxError:
        return False
    if len(tokens) != 1 or tokens[0].kind != "pv":
        return False
    return not re.match(r"\$\(?(defn?|env|null)\b", text)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _route_ref(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else _quote(name)


def _line_end_after(f: _File, token: Token) -> int:
    """Where to insert a line after the line of ``token``: just after the next newline that
    is not inside a token (a block comment may span lines)."""
    for t in f.tokens:
        if t.start < token.end:
            continue
        if t.kind == "ws" and "\n" in t.text:
            return t.start + t.text.index("\n") + 1
    return len(f.text)
