"""The cfg converter (core/kamailio/convert.py): table tests on cfg snippets.

Each case writes a tiny cfg tree in memory (``/cfg/...``), converts it and checks the new text,
the call table rows, the report, or the problems (``file:line: construct: why (fix)``).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from kazoo_amqp.core.kamailio.convert import Conversion, ConversionFailed, convert

HEAD = (
    "#!KAMAILIO\n"
    'loadmodule "tm.so"\n'
    'loadmodule "kazoo.so"\n'
    'modparam("kazoo", "node_hostname", "sip1.example.net")\n'
)


def run(files: dict[str, str], main: str = "kamailio.cfg") -> Conversion:
    tree = {f"/cfg/{name}": text for name, text in files.items()}
    return convert(f"/cfg/{main}", tree.get)


def run_route(body: str, extra: str = "") -> tuple[str, dict[str, Any], Conversion]:
    """Convert a request_route holding ``body``; return its new text, the TOML, the result."""
    result = run({"kamailio.cfg": HEAD + extra + "request_route {\n" + body + "\n}\n"})
    text = result.files["kamailio.cfg"]
    route = text[text.index("request_route {\n") + 16 : text.rindex("\n}\n")]
    return route, tomllib.loads(result.files["kazoo-amqp.toml"]), result


def problems(files: dict[str, str]) -> list[str]:
    with pytest.raises(ConversionFailed) as info:
        run(files)
    return [str(p) for p in info.value.problems]


def calls(toml: dict[str, Any]) -> list[dict[str, Any]]:
    return list(toml["kamailio"]["calls"].values())


CALL = r'python_exec\("kazoo_call", "(k[a-z]-[0-9a-f]{6}-\d+)"\)'

# (id, route body, expected new body as a regex, expected rows without "where")
REWRITES: list[tuple[str, str, str, list[dict[str, Any]]]] = [
    (
        "kzE-json-transformation",
        'xlog("$(kzE{kz.json,Event-Name})");',
        re.escape('xlog("$(var(kzE){kz.json,Event-Name})");'),
        [],
    ),
    (
        "kzR-two-transformations",
        "$var(p) = $(kzR{kz.json,Auth-Password}{s.tolower});",
        re.escape("$var(p) = $(var(kzR){kz.json,Auth-Password}{s.tolower});"),
        [],
    ),
    (
        "bare-pvs-and-escaped-dollar",
        'xlog("$kzE $kzRK $kzR $$kzE $kzEx");',
        re.escape('xlog("$var(kzE) $var(kzRK) $var(kzR) $$kzE $kzEx");'),
        [],
    ),
    (
        "pv-inside-pv",
        "$sht(n=>$(kzE{kz.json,Node})) = $kzE;",
        re.escape("$sht(n=>$(var(kzE){kz.json,Node})) = $var(kzE);"),
        [],
    ),
    (
        "query-3-args-in-condition",
        'if (kazoo_query("channels", "query.status", $var(q))) { exit; }',
        r"if \(" + CALL + r"\) \{ exit; \}",
        [{"op": "query", "args": ["channels", "query.status", "$var(q)"]}],
    ),
    (
        "query-4-args-negated-target",
        'if (!kazoo_query("frontier", "sbc_config", $var(q), "$var(acl-response)")) { exit; }',
        r"if \(!" + CALL + r"\) \{ exit; \}",
        [
            {
                "op": "query",
                "args": ["frontier", "sbc_config", "$var(q)"],
                "target": "$var(acl-response)",
            }
        ],
    ),
    (
        "query-4-args-bare-target",
        'kazoo_query("a", "b", $var(q), $avp(r));',
        CALL + ";",
        [{"op": "query", "args": ["a", "b", "$var(q)"], "target": "$avp(r)"}],
    ),
    (
        "query-5-args-headers",
        'kazoo_query("a", "b", $var(q), $var(r), "k1=v1;k2=v2");',
        CALL + ";",
        [{"op": "query", "args": ["a", "b", "$var(q)", "k1=v1;k2=v2"], "target": "$var(r)"}],
    ),
    (
        "query-4th-arg-flags-ignored",
        'if (kazoo_query("trusted", $var(rk), $var(p), "2048") != 1) { exit; }',
        r"if \(" + CALL + r" != 1\) \{ exit; \}",
        [{"op": "query", "args": ["trusted", "$var(rk)", "$var(p)"]}],
    ),
    (
        "publish-with-headers-and-kz-in-args",
        'kazoo_publish("targeted", "$(kzE{kz.json,Server-ID})", $kzE, "a=1");',
        CALL + ";",
        [
            {
                "op": "publish",
                "args": ["targeted", "$(var(kzE){kz.json,Server-ID})", "$var(kzE)", "a=1"],
            }
        ],
    ),
    (
        "publish-json-with-parens-and-escaped-quotes",
        r'kazoo_publish("x", "y", "{\"a\": \"(b)\", \"c\": \"\\\"q\\\"\", \"d\": \")\"}");',
        CALL + ";",
        [{"op": "publish", "args": ["x", "y", r'{"a": "(b)", "c": "\"q\"", "d": ")"}']}],
    ),
    (
        "publish-assigned",
        '$var(r) = kazoo_publish("x", "y", $var(p));',
        r"\$var\(r\) = " + CALL + ";",
        [{"op": "publish", "args": ["x", "y", "$var(p)"]}],
    ),
    (
        "call-in-string-and-comments-untouched",
        'xlog("kazoo_publish(\\"a\\", \\"b\\", \\"c\\")"); # kazoo_query("a", "b", "c")\n'
        '/* kazoo_publish("a",\n "b", "c") */ // kazoo_subscribe("x")',
        re.escape(
            'xlog("kazoo_publish(\\"a\\", \\"b\\", \\"c\\")"); # kazoo_query("a", "b", "c")'
            '\n/* kazoo_publish("a",\n "b", "c") */ // kazoo_subscribe("x")'
        ),
        [],
    ),
    (
        "multi-line-call-keeps-line-count",
        'kazoo_publish("x",\n    "y",\n    $var(p));\nxlog("after");',
        CALL[:-2] + r'\n\n\);\nxlog\("after"\);',
        [{"op": "publish", "args": ["x", "y", "$var(p)"]}],
    ),
    (
        "async-query-flags-dropped",
        'kazoo_async_query("registrar", $var(rk), $var(p), "R", "T", "2048");',
        CALL + ";",
        [{"op": "async_query", "args": ["registrar", "$var(rk)", "$var(p)", "R", "T"]}],
    ),
    (
        "pua-publishers",
        "kazoo_pua_publish($kzE); kazoo_pua_publish_dialoginfo($var(j));\n"
        "kazoo_pua_publish_mwi($kzE); kazoo_pua_publish_presence($kzE);",
        CALL + "; " + CALL + r";\n" + CALL + "; " + CALL + ";",
        [
            {"op": "pua_publish", "args": ["$var(kzE)"]},
            {"op": "pua_publish_dialoginfo", "args": ["$var(j)"]},
            {"op": "pua_publish_mwi", "args": ["$var(kzE)"]},
            {"op": "pua_publish_presence", "args": ["$var(kzE)"]},
        ],
    ),
    (
        "define-and-substdef-arguments",
        'kazoo_publish(EXCH, "MY_HOST.$fU", $var(p));',
        CALL + ";",
        [{"op": "publish", "args": ["callmgr", "sip1.$fU", "$var(p)"]}],
    ),
    (
        "json-and-kazoo-fields-keep-kz-transformations",
        "if ($(kzE{kz.json.count,Channels}) > 0) { $var(x) = $(kzR{kz.encode}); }",
        re.escape(
            "if ($(var(kzE){kz.json.count,Channels}) > 0) { $var(x) = $(var(kzR){kz.encode}); }"
        ),
        [],
    ),
    (
        "kazoo-json-functions-untouched",
        'kazoo_json($var(j), "a.b", "$var(v)"); kazoo_encode($fU, "$var(e)");',
        re.escape('kazoo_json($var(j), "a.b", "$var(v)"); kazoo_encode($fU, "$var(e)");'),
        [],
    ),
]


@pytest.mark.parametrize(
    ("body", "expected", "rows"), [r[1:] for r in REWRITES], ids=[r[0] for r in REWRITES]
)
def test_rewrites(body: str, expected: str, rows: list[dict[str, Any]]) -> None:
    extra = '#!define EXCH "callmgr"\n#!substdef "!MY_HOST!sip1!g"\n'
    new, toml, _ = run_route(body, extra)
    assert re.fullmatch(expected, new), new
    got = [{k: v for k, v in row.items() if k != "where"} for row in calls(toml)]
    assert got == rows
    assert new.count("\n") == body.count("\n")
    ids = re.findall(r'"kazoo_call", "([^"]+)"', new)
    assert ids == list(toml["kamailio"]["calls"])


def test_rows_name_file_and_line_and_ids_are_stable() -> None:
    body = 'kazoo_publish("a", "b", $var(p));\nkazoo_publish("a", "b", $var(p));'
    _, toml, _ = run_route(body)
    ids = list(toml["kamailio"]["calls"])
    assert [row["where"] for row in calls(toml)] == ["kamailio.cfg:6", "kamailio.cfg:7"]
    assert ids[0][:-1] == ids[1][:-1] and ids[0].endswith("-1") and ids[1].endswith("-2")
    assert list(run_route(body)[1]["kamailio"]["calls"]) == ids


def test_query_with_flags_argument_warns() -> None:
    _, _, result = run_route('kazoo_query("a", "b", $var(q), "2048");')
    assert any("4th argument '2048' is not a variable" in w for w in result.warnings)


def test_subscribe_json_and_four_argument_forms_in_mod_init() -> None:
    cfg = HEAD + (
        "event_route[kazoo:mod-init]\n{\n"
        '    kazoo_subscribe("{\\"exchange\\": \\"presence\\", \\"routing\\": [\\"a.*\\"]}");\n'
        '    kazoo_subscribe("dialoginfo", "direct", "BLF-MY_HOST", "BLF-MY_HOST");\n'
        '    $var(payload) = $_s({"exchange": "nodes", "type": "fanout"});\n'
        '    kazoo_subscribe("$var(payload)");\n'
        "}\n"
    )
    result = run({"kamailio.cfg": '#!substdef "!MY_HOST!sbc1!g"\n' + cfg})
    toml = tomllib.loads(result.files["kazoo-amqp.toml"])
    assert [row["args"] for row in calls(toml)] == [
        ['{"exchange": "presence", "routing": ["a.*"]}'],
        ["dialoginfo", "direct", "BLF-sbc1", "BLF-sbc1"],
        ["$var(payload)"],
    ]
    assert 'route["kazoo:mod-init"]\n{' in result.files["kamailio.cfg"]
    assert toml["kamailio"]["routes"] == ["kazoo:mod-init"]


def test_event_routes_become_named_routes_and_xhttp_is_kept_aside() -> None:
    cfg = HEAD + (
        "event_route[kazoo:consumer-event-presence-update] { xlog($kzE); }\n"
        "event_route[kazoo:consumer-event-connection-open] { exit; }\n"
        'event_route[xhttp:request] { xhttp_reply("200", "OK", "text/plain", ""); }\n'
        "event_route[htable:mod-init] { exit; }\n"
    )
    result = run({"kamailio.cfg": cfg})
    text = result.files["kamailio.cfg"]
    assert 'route["kazoo:consumer-event-presence-update"] { xlog($var(kzE)); }' in text
    assert 'route["kazoo:consumer-event-connection-open"] { exit; }' in text
    assert "route[KZ_XHTTP_ORIGINAL] { xhttp_reply(" in text
    assert "event_route[htable:mod-init] { exit; }" in text
    toml = tomllib.loads(result.files["kazoo-amqp.toml"])
    assert toml["kamailio"]["routes"] == [
        "kazoo:consumer-event-presence-update",
        "kazoo:consumer-event-connection-open",
    ]
    assert "route[KZ_XHTTP_ORIGINAL]: 1" in "\n".join(result.report)


def test_async_reply_and_timeout_blocks_become_route_blocks() -> None:
    cfg = HEAD + (
        "request_route {\n"
        '  kazoo_async_query("registrar", $var(rk), $var(p), "KZ_REPLY", "KZ_TIMEOUT");\n'
        "}\n"
        'onreply_route[KZ_REPLY] { t_reply("200", "$(kzR{kz.json,Event-Name})"); }\n'
        "failure_route[KZ_TIMEOUT] { t_drop(); }\n"
        "onreply_route[OTHER] { exit; }\n"
    )
    text = run({"kamailio.cfg": cfg}).files["kamailio.cfg"]
    assert 'route[KZ_REPLY] { t_reply("200", "$(var(kzR){kz.json,Event-Name})"); }' in text
    assert "route[KZ_TIMEOUT] { t_drop(); }" in text
    assert "onreply_route[OTHER]" in text


def test_routes_prefix_expands_in_definition_order_across_ifdef_and_includes() -> None:
    main = HEAD + (
        "#!define A_ROLE\n"
        'request_route {\n    routes(KZ_INIT);\n    routes("KZ_LAST");\n'
        "    routes(NOTHING);\n}\n"
        "route[KZ_INIT] { routes(KZ_INIT); }\n"
        "route[KZ_INIT_ONE] { exit; }\n"
        "#!ifdef B_ROLE\nroute[KZ_INIT_B] { exit; }\n#!endif\n"
        'include_file "more.cfg"\n'
    )
    more = 'route["KZ_INIT-x"] { exit; }\nroute[KZ_LAST_1] { exit; }\n'
    result = run({"kamailio.cfg": main, "more.cfg": more})
    text = result.files["kamailio.cfg"]
    expand = 'route(KZ_INIT_ONE); route(KZ_INIT_B); route("KZ_INIT-x")'
    assert f"    {expand};\n    route(KZ_LAST_1);\n" in text
    assert "    /* kazoo-amqp: routes(NOTHING) matched no route */;\n" in text
    assert f"route[KZ_INIT] {{ {expand}; }}" in text
    assert "more.cfg" in result.links


def test_modparams_move_to_the_toml_with_defines_resolved() -> None:
    cfg = (
        '#!KAMAILIO\n#!define HEARTBEATS 5\n#!trydef ZONE_NAME "local"\n'
        '#!substdef "!MY_URL!amqp://u:p@rabbit:5672!g"\n'
        "#!ifdef NOT_DEFINED\n#!define HEARTBEATS_B 7\n#!endif\n"
        'loadmodule "tm.so"\nloadmodule "kazoo.so"\n'
        'modparam("kazoo", "node_hostname", "sip1.example.net") # keep\n'
        'modparam("kazoo", "amqp_heartbeats", HEARTBEATS)\n'
        'modparam("kazoo", "amqp_primary_zone", ZONE_NAME)\n'
        'modparamx("kazoo", "app_name", $def(ZONE_NAME))\n'
        'modparam("kazoo", "amqp_connection", "MY_URL")\n'
        'modparam("kazoo", "amqp_connection", "zone=b;amqp://u:p@rabbit2:5672");\n'
        '#!ifdef NOT_DEFINED\nmodparam("kazoo", "pua_mode", 0)\n#!endif\n'
        'modparam("kazoo", "amqp_query_timeout_micro", 500000) modparam("tm", "x", 1)\n'
    )
    result = run({"kamailio.cfg": cfg})
    toml = tomllib.loads(result.files["kazoo-amqp.toml"])
    assert {k: v for k, v in toml.items() if k != "kamailio"} == {
        "node_hostname": "sip1.example.net",
        "amqp_heartbeats": 5,
        "amqp_primary_zone": "local",
        "app_name": '"local"',
        "amqp_connection": ["amqp://u:p@rabbit:5672", "zone=b;amqp://u:p@rabbit2:5672"],
        "amqp_query_timeout_micro": 500000,
    }
    text = result.files["kamailio.cfg"]
    assert (
        '# kazoo-amqp: modparam("kazoo", "node_hostname", ...) moved to kazoo-amqp.toml # keep'
        in text
    )
    assert (
        '# kazoo-amqp: modparam("kazoo", "amqp_connection", ...) moved to kazoo-amqp.toml\n' in text
    )
    assert '# kazoo-amqp: modparam("kazoo", "pua_mode", ...) moved to kazoo-amqp.toml\n' in text
    assert (
        '/* kazoo-amqp: modparam("kazoo", "amqp_query_timeout_micro", ...) moved to '
        'kazoo-amqp.toml */ modparam("tm", "x", 1)'
    ) in text
    assert "rabbit2" not in text  # modparam values (passwords) do not stay in the cfg
    assert any('"pua_mode"): inside an #!ifdef not taken' in w for w in result.warnings)
    assert text.count("\n") == cfg.count("\n") + 2


def test_modules_include_follows_loadmodule_kazoo_in_its_include_file() -> None:
    main = '#!KAMAILIO\nloadmodule "tm.so"\ninclude_file "sub/kz.cfg"\nrequest_route { exit; }'
    sub = 'loadmodule "kazoo.so" # the C module\nmodparam("kazoo", "node_hostname", "a.example")\n'
    result = run({"kamailio.cfg": main, "sub/kz.cfg": sub})
    assert result.files["sub/kz.cfg"].startswith(
        'loadmodule "kazoo.so" # the C module\ninclude_file "../kazoo-amqp-modules.cfg"\n#'
    )
    assert result.files["kamailio.cfg"].endswith(
        'request_route { exit; }\ninclude_file "kazoo-amqp-routes.cfg"\n'
    )
    assert set(result.files) >= {
        "kazoo-amqp-modules.cfg",
        "kazoo-amqp-routes.cfg",
        "kazoo_amqp_kemi.py",
        "kazoo-amqp.toml",
    }


def test_everything_else_keeps_its_bytes() -> None:
    body = (
        '#!ifdef X\n  xlog("L_INFO", "a\\tb $var(x)");\n#!else\n  exit;\n#!endif\n'
        '  /* comment */ $var(a) = \'single $kzE\';\n  sl_send_reply("200", "OK");'
    )
    new, _, _ = run_route(body)
    assert new == body.replace("'single $kzE'", "'single $var(kzE)'")


def test_include_following_missing_include_file_is_an_error() -> None:
    found = problems({"kamailio.cfg": HEAD + '\n\ninclude_file "missing.cfg"\n'})
    assert found == [
        'kamailio.cfg:7: include_file "missing.cfg": the file does not exist (Kamailio refuses '
        "to start) (create it or fix the path; import_file is the form that may be missing)"
    ]


def test_include_following_missing_import_file_and_inactive_include_are_skipped() -> None:
    cfg = HEAD + 'import_file "local.cfg"\n#!ifdef NO\ninclude_file "role.cfg"\n#!endif\n'
    result = run({"kamailio.cfg": cfg})
    assert len(result.warnings) == 2


def test_preprocessor_include_forms_are_followed() -> None:
    cfg = HEAD + '#!include_file "a.cfg"\n#!import_file "b.cfg"\n'
    files = {"kamailio.cfg": cfg, "a.cfg": "xlog($kzE);\n", "b.cfg": "#!define Q 1\n"}
    result = run(files)
    assert result.files["a.cfg"] == "xlog($var(kzE));\n"
    assert result.links == {"b.cfg": "/cfg/b.cfg"}


ERRORS: list[tuple[str, str, str]] = [
    ("knode", 'kazoo_publish("nodes", "$knode", $var(p));', "kamailio.cfg:6: $knode: "),
    ("knode-in-string", 'xlog("node $knode\\n");', "kamailio.cfg:6: $knode: "),
    (
        "amqpc",
        "if ($xavp(amqpc=>default::local) == 0) { drop; }",
        "kamailio.cfg:6: $xavp(amqpc=>...): ",
    ),
    ("kz-filename", "$var(f) = $(var(p){kz.filename});", "kamailio.cfg:6: {kz.filename}: "),
    ("routes-non-literal", 'routes("KZ_$(rm)_START");', 'kamailio.cfg:6: routes("KZ_$(rm)_START")'),
    (
        "expression-argument",
        'kazoo_publish("a" + $var(x), "b", "c");',
        "kamailio.cfg:6: kazoo_publish(...): argument 1: ",
    ),
    (
        "wrong-arity",
        'kazoo_publish("a", "b");',
        "kamailio.cfg:6: kazoo_publish(...): takes 3 or 4 arguments, not 2",
    ),
    (
        "async-route-variable",
        'kazoo_async_query("a", "b", "c", $var(r), "T");',
        "kamailio.cfg:6: kazoo_async_query(...): route name '$var(r)' is not a literal name",
    ),
    ("import-files", 'import_files "local.d/*.cfg"', "kamailio.cfg:6: import_files: "),
    (
        "undefined-id-argument",
        'kazoo_publish(NOT_DEFINED, "b", "c");',
        "is not #!define'd in the cfg",
    ),
]


@pytest.mark.parametrize(("body", "expected"), [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS])
def test_what_stock_kamailio_cannot_express_is_an_error(body: str, expected: str) -> None:
    found = problems({"kamailio.cfg": HEAD + "request_route {\n" + body + "\n}\n"})
    assert any(expected in p for p in found), found
    assert all(re.match(r"^[^:]+:\d+: .+: .+ \(.+\)$", p, re.S) for p in found)


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (
            HEAD + 'modparam("kazoo", "amqp_heartbeats", NOPE)\n',
            'kamailio.cfg:5: modparam("kazoo", "amqp_heartbeats"): the value cannot be known',
        ),
        (
            HEAD + 'modparam("kazoo", "no_such_param", 1)\n',
            'kamailio.cfg:5: modparam("kazoo", "no_such_param"): the kazoo module has no such',
        ),
        (
            HEAD + 'modparam("kazoo", "amqp_consumer_workers", -1)\n',
            'kamailio.cfg:5: modparam("kazoo", "amqp_consumer_workers"): config key',
        ),
        (
            'loadmodule "tm.so"\nrequest_route { exit; }\n',
            'kamailio.cfg:1: loadmodule "kazoo.so": the cfg never loads the kazoo module',
        ),
        (
            HEAD + "onreply_route[R] { exit; }\nroute[R] { exit; }\nrequest_route {\n"
            ' kazoo_async_query("a", "b", "c", "R", "T");\n}\n',
            "kamailio.cfg:5: onreply_route[R]: kazoo_async_query resumes into it",
        ),
        (
            HEAD + 'request_route {\n xlog("unclosed);\n}\n',
            'kamailio.cfg:6: "..." string: the string is never closed',
        ),
    ],
    ids=["undefined-value", "unknown-param", "invalid-value", "no-kazoo", "resume-clash", "syntax"],
)
def test_modparam_and_structure_problems(cfg: str, expected: str) -> None:
    found = problems({"kamailio.cfg": cfg})
    assert any(p.startswith(expected) for p in found), found


def test_converting_the_output_again_changes_nothing() -> None:
    files = {
        "main.cfg": HEAD.replace("#!KAMAILIO\n", '#!KAMAILIO\n#!substdef "!H!x!g"\n')
        + 'include_file "role.cfg"\ninclude_file "defs.cfg"\n'
        "request_route {\n  routes(KZ_R);\n"
        '  if (!kazoo_query("a", "b.H", $var(q), "$var(r)")) { exit; }\n'
        '  kazoo_async_query("a", "b", $var(q), "REPLY", "TIMEOUT");\n}\n'
        "onreply_route[REPLY] { xlog($kzR); }\nfailure_route[TIMEOUT] { t_drop(); }\n"
        'event_route[xhttp:request] { xhttp_reply("200", "OK", "text/plain", ""); }\n',
        "role.cfg": 'route[KZ_R_1] { kazoo_publish("x", "y", $kzE); }\n'
        'event_route[kazoo:mod-init] { kazoo_subscribe("a", "topic", "q", "k"); }\n',
        "defs.cfg": "#!trydef X 1\n",
    }
    first = run(files, main="main.cfg")
    second_tree = {name: text for name, text in first.files.items()}
    second_tree["defs.cfg"] = files["defs.cfg"]
    second = run(second_tree)
    assert second.report == ()
    for name, text in second.files.items():
        assert first.files[name] == text, name
    assert set(second.links) == {"role.cfg", "defs.cfg"}


def test_a_converted_cfg_without_its_toml_is_an_error() -> None:
    first = run({"kamailio.cfg": HEAD + 'request_route { kazoo_publish("a", "b", "c"); }\n'})
    tree = dict(first.files)
    del tree["kazoo-amqp.toml"]
    found = problems(tree)
    assert "no row [kamailio.calls." in found[0]


def test_other_modules_parameters_are_walked_like_any_text() -> None:
    cfg = (
        HEAD + 'modparam("rtimer", "exec", "timer=t;route=R") # $kzE\nmodparam("x", "y", "$kzE")\n'
    )
    assert 'modparam("x", "y", "$var(kzE)")' in run({"kamailio.cfg": cfg}).files["kamailio.cfg"]


def test_a_kazoo_call_inside_a_define_is_an_error() -> None:
    found = problems({"kamailio.cfg": HEAD + '#!define PUB kazoo_publish("a", "b", "c")\n'})
    assert found[0].startswith("kamailio.cfg:5: #!define ... kazoo_publish(: a call inside")


def test_substdef_strings_see_earlier_substdefs_like_kamailio() -> None:
    cfg = (
        '#!substdef "!DATA_DIR!/var/lib/kz!g"\n#!substdef "!DB_URL!sqlite:///DATA_DIR/p.db!g"\n'
        + HEAD
        + 'modparam("kazoo", "db_url", "DB_URL")\n'
    )
    toml = tomllib.loads(run({"kamailio.cfg": cfg}).files["kazoo-amqp.toml"])
    assert toml["db_url"] == "sqlite:////var/lib/kz/p.db"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('include_file "db_$def(DB).cfg"', 'include_file "db_$def(DB).cfg": stock Kamailio'),
        ("bflags\n    FLB_NATB,\n    FLB_KA;", "bflags: only the 2600hz Kamailio build"),
    ],
)
def test_more_2600hz_only_forms(line: str, expected: str) -> None:
    found = problems({"kamailio.cfg": HEAD + line + "\n"})
    assert found[0].startswith("kamailio.cfg:5: " + expected), found


def test_consumer_processes_is_left_out_when_workers_differs() -> None:
    cfg = HEAD + (
        'modparam("kazoo", "amqp_consumer_processes", 4)\n'
        'modparam("kazoo", "amqp_consumer_workers", 16)\n'
        '#!ifdef A\nmodparam("kazoo", "amqp_connection", "x")\n#!endif\n'
        '#!ifdef B\nmodparam("kazoo", "amqp_connection", "y")\n#!endif\n'
    )
    result = run({"kamailio.cfg": cfg})
    toml = tomllib.loads(result.files["kazoo-amqp.toml"])
    assert "amqp_consumer_processes" not in toml and toml["amqp_consumer_workers"] == 16
    assert result.warnings[0].startswith('kamailio.cfg:8,11: modparam("kazoo", "amqp_connection")')
    assert result.warnings[1].startswith("kamailio.cfg:5: amqp_consumer_processes = 4 left out")


def test_converted_again_when_only_an_include_calls_kazoo() -> None:
    files = {
        "kamailio.cfg": '#!KAMAILIO\nloadmodule "tm.so"\ninclude_file "kz.cfg"\n',
        "kz.cfg": 'loadmodule "kazoo.so"\nmodparam("kazoo", "node_hostname", "a")\n'
        'route[X] { kazoo_publish("a", "b", "c"); }\n',
    }
    first = run(files)
    second = run(dict(first.files))
    assert second.files["kazoo-amqp.toml"] == first.files["kazoo-amqp.toml"]
    assert second.report == ()
