"""The cfg lexer and the static preprocessor (core/kamailio/lexer.py, preproc.py)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from kazoo_amqp.core.kamailio.lexer import CfgSyntaxError, decode_string, tokenize
from kazoo_amqp.core.kamailio.preproc import Preprocessor
from kazoo_amqp.core.kamailio.toml_writer import dumps


def kinds(text: str) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in tokenize(text) if t.kind != "ws"]


# (id, source, the non-blank tokens)
TOKENS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("hash-comment", "# kazoo_publish(\n", [("comment", "# kazoo_publish(")]),
    ("slash-comment", "x // kazoo_query(\n", [("id", "x"), ("comment", "// kazoo_query(")]),
    (
        "nested-block-comment",
        "/* a /* kazoo_publish( */ still */ y",
        [("comment", "/* a /* kazoo_publish( */ still */"), ("id", "y")],
    ),
    ("define-is-directive", "#!define X 1\n", [("directive", "#!define X 1")]),
    ("trydef-is-directive", "#!trydef X\n", [("directive", "#!trydef X")]),
    (
        "substdef-is-directive",
        '#!substdef "!A!b!g"\n',
        [("directive", '#!substdef "!A!b!g"')],
    ),
    (
        "ifdef-is-directive",
        "#!ifdef A\n#!endif\n",
        [("directive", "#!ifdef A"), ("directive", "#!endif")],
    ),
    ("bang-bang-prefix", "!!define X 1\n", [("directive", "!!define X 1")]),
    ("shebang-is-comment", "#!KAMAILIO\n", [("comment", "#!KAMAILIO")]),
    (
        "define-continues-after-backslash",
        "#!define X a \\\n b\ny",
        [("directive", "#!define X a \\\n b"), ("id", "y")],
    ),
    (
        "include-directive",
        '#!include_file "a.cfg"\n',
        [("directive", '#!include_file "a.cfg"')],
    ),
    ("string-escaped-quote", r'"a\"b" c', [("string", r'"a\"b"'), ("id", "c")]),
    ("single-quoted-no-escapes", r"'a\' b", [("sqstring", r"'a\'"), ("id", "b")]),
    ("pv-simple", "$kzE;", [("pv", "$kzE"), ("punct", ";")]),
    ("pv-parens", "$var(x) ", [("pv", "$var(x)")]),
    (
        "pv-transformation-with-quotes",
        '$(kzE{re.subst,/"a"/b/}) x',
        [("pv", '$(kzE{re.subst,/"a"/b/})'), ("id", "x")],
    ),
    (
        "pv-nested",
        "$sht(n=>$(kzE{kz.json,Node})::track)",
        [("pv", "$sht(n=>$(kzE{kz.json,Node})::track)")],
    ),
    (
        "event-route-name",
        "event_route[kazoo:consumer-event-a-b] {",
        [("id", "event_route"), ("blockname", "[kazoo:consumer-event-a-b]"), ("punct", "{")],
    ),
    (
        "quoted-route-name",
        'route["kazoo:mod-init"]{',
        [("id", "route"), ("blockname", '["kazoo:mod-init"]'), ("punct", "{")],
    ),
    (
        "index-is-not-a-block-name",
        "a[1]",
        [("id", "a"), ("punct", "["), ("number", "1"), ("punct", "]")],
    ),
]


@pytest.mark.parametrize(
    ("source", "expected"), [r[1:] for r in TOKENS], ids=[r[0] for r in TOKENS]
)
def test_tokens_of_each_construct(source: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(source) == expected
    assert "".join(t.text for t in tokenize(source)) == source


def test_tokens_carry_line_numbers() -> None:
    tokens = [t for t in tokenize('a\n/* x\ny */\n"s\n" b') if t.kind != "ws"]
    assert [(t.text.split("\n")[0], t.line) for t in tokens] == [
        ("a", 1),
        ("/* x", 2),
        ('"s', 4),
        ("b", 5),
    ]


@pytest.mark.parametrize(
    ("source", "construct"),
    [
        ('x = "abc', '"..." string'),
        ("/* abc", "/* comment"),
        ("$(kzE{a}", "$(kzE{a}"),
        ("x = 'abc", "'...' string"),
        ("event_route[kazoo:x", "event_route["),
    ],
)
def test_unclosed_constructs_are_errors_with_a_line(source: str, construct: str) -> None:
    with pytest.raises(CfgSyntaxError) as info:
        tokenize("\n" + source)
    assert info.value.line == 2
    assert info.value.construct == construct


@pytest.mark.parametrize(
    ("token", "value"),
    [
        (r'"a\nb"', "a\nb"),
        (r'"\"q\" \\ \t"', '"q" \\ \t'),
        (r'"\x41\101"', "AA"),
        (r'"keep \d and \$"', r"keep \d and \$"),
        ('"joined \\\nline"', "joined line"),
        (r"'raw \n'", r"raw \n"),
    ],
)
def test_strings_decode_like_kamailio(token: str, value: str) -> None:
    assert decode_string(token) == value


def run_directives(*lines: str) -> Preprocessor:
    pre = Preprocessor()
    for line in lines:
        assert pre.directive(line) is None
    return pre


def test_trydef_keeps_the_first_value_and_redefine_replaces_it() -> None:
    pre = run_directives("#!define A 1", "#!trydef A 2", "#!trydef B 3", "#!redefine B 4")
    assert (pre.defines["A"], pre.defines["B"]) == ("1", "4")


def test_ifdef_branches_follow_the_cfg_defines() -> None:
    pre = run_directives(
        "#!define A",
        "#!ifdef A",
        "#!define IN_A 1",
        "#!else",
        "#!define NOT_A 1",
        "#!endif",
        "#!ifndef Z",
        "#!define NO_Z 1",
    )
    assert "IN_A" in pre.defines and "NOT_A" not in pre.defines and "NO_Z" in pre.defines
    assert pre.active and pre.conditional


def test_substdef_substitutes_strings_and_defines_the_name() -> None:
    pre = run_directives('#!substdef "!MY_HOST!sip1.example.net!g"', '#!subst "/a(b)/x\\1/"')
    assert pre.substitute("q-MY_HOST-MY_HOST") == "q-sip1.example.net-sip1.example.net"
    assert pre.substitute("abab") == "xbab"
    assert pre.defines["MY_HOST"] == "sip1.example.net"


def test_a_malformed_subst_is_reported() -> None:
    assert Preprocessor().directive('#!substdef "!only-two!"') is not None


def test_loaded_modules_define_mod_names() -> None:
    pre = Preprocessor()
    pre.module_loaded("auth")
    assert "MOD_auth" in pre.defines


TOML_CASES: list[tuple[str, dict[str, Any]]] = [
    ("scalars", {"a": 'x"y\\z\n', "b": 1, "c": 2.5, "d": True, "e": ["p", "q"]}),
    (
        "nested-quoted-keys",
        {
            "k": {
                "calls": {"kp-1a2b3c-1": {"op": "publish", "args": []}},
                "routes": ["kazoo:mod-init"],
            }
        },
    ),
    ("control-chars", {"s": "\x01\t"}),
]


@pytest.mark.parametrize("data", [c[1] for c in TOML_CASES], ids=[c[0] for c in TOML_CASES])
def test_toml_writer_reads_back_to_the_same_data(data: dict[str, Any]) -> None:
    text = dumps(data, header="a header")
    assert text.startswith("# a header\n")
    assert tomllib.loads(text) == data
    assert dumps(tomllib.loads(text), header="a header") == text
