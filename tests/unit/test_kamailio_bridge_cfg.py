"""The generated cfg includes and the [kamailio] table (core/kamailio, pure)."""

from __future__ import annotations

import pytest

from kazoo_amqp.core.config import settings_from_mapping
from kazoo_amqp.core.kamailio.bridge_cfg import (
    KEMI_NAME,
    MODULES_NAME,
    RESUME_ROUTE,
    ROUTES_NAME,
    WATCHDOG_TABLE,
    render_includes,
)
from kazoo_amqp.core.kamailio.settings import CallSite, bridge_from_mapping
from kazoo_amqp.errors import ConfigError


def _render(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "bridge": "127.0.0.1:5091",
        "socket_workers": 4,
        "max_event_bytes": 1048576,
        "loaded_modules": ["tm.so", "/usr/lib/kamailio/modules/sl.so", "htable"],
        "original_xhttp_route": None,
        "resume_routes": ["R1", "T1"],
        "toml_name": "kazoo-amqp.toml",
    }
    args.update(kw)
    return render_includes(**args)  # type: ignore[arg-type]


def test_render_includes_gives_the_three_files_the_converter_writes() -> None:
    assert set(_render()) == {MODULES_NAME, ROUTES_NAME, KEMI_NAME}


def test_modules_include_listens_on_the_bridge_with_its_own_workers() -> None:
    text = _render(socket_workers=6)[MODULES_NAME]
    assert "socket_workers=6\nlisten=tcp:127.0.0.1:5091\n" in text
    assert "tcp_rd_buf_size=" in text
    size = int(text.split("tcp_rd_buf_size=")[1].split()[0])
    assert size > 1048576


def test_modules_include_loads_only_what_the_cfg_does_not() -> None:
    text = _render()[MODULES_NAME]
    for name in ("tmx", "xhttp", "app_python3", "cfgutils", "pv"):
        assert f'loadmodule "{name}.so"' in text
    for name in ("tm", "sl", "htable"):
        assert f'loadmodule "{name}.so"' not in text


def test_kazoo_so_gets_the_host_name_it_needs_to_load_without_amqp() -> None:
    text = _render(node_hostname="sip1.example.net")[MODULES_NAME]
    assert 'modparam("kazoo", "node_hostname", "sip1.example.net")' in text
    assert 'modparam("kazoo", "pua_mode", 0)' in text


def test_the_kemi_script_path_is_absolute_when_the_out_dir_is_known() -> None:
    assert 'modparam("app_python3", "load", "/etc/kz/kazoo_amqp_kemi.py")' in _render(
        out_dir="/etc/kz"
    )[MODULES_NAME]


def test_dispatcher_sends_other_http_requests_to_the_original_route() -> None:
    assert "route(KZ_XHTTP_ORIGINAL);" in _render(original_xhttp_route=True)[ROUTES_NAME]
    assert "route(MY_HTTP);" in _render(original_xhttp_route="MY_HTTP")[ROUTES_NAME]
    no_original = _render()[ROUTES_NAME]
    assert 'xhttp_reply("404"' in no_original and "$Rp == 5091" in no_original


def test_routes_include_has_the_resume_route_and_the_watchdog() -> None:
    text = _render()[ROUTES_NAME]
    assert f"route[{RESUME_ROUTE}]" in text
    assert f"event_route[htable:expired:{WATCHDOG_TABLE}]" in text
    assert text.count('t_continue("$var(kzTI)", "$var(kzTL)", "$var(kzRN)")') == 2


def test_kemi_script_is_python_that_returns_the_edge_handler() -> None:
    text = _render(package_dir="/opt/kz/src")[KEMI_NAME]
    compile(text, KEMI_NAME, "exec")
    assert "'/opt/kz/src'" in text and "'kazoo-amqp.toml'" in text
    assert "BridgeHandler" in text and "def mod_init" in text


def test_bad_bridge_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        _render(bridge="localhost")


def test_kamailio_table_builds_the_call_table() -> None:
    bridge = bridge_from_mapping(
        {
            "bridge": "127.0.0.1:6000",
            "routes": ["kazoo:consumer-event-x"],
            "calls": {"kp-1": {"op": "publish", "args": ["ex", "rk", "$var(p)"], "where": "a:1"}},
        }
    )
    assert bridge is not None
    assert (bridge.host, bridge.port, bridge.socket_workers) == ("127.0.0.1", 6000, 4)
    assert bridge.calls["kp-1"] == CallSite("publish", ("ex", "rk", "$var(p)"), "a:1")
    assert bridge_from_mapping(None) is None


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"bridgee": "x"}, "unknown key"),
        ({"calls": {"a": {"op": "publishh", "args": []}}}, "must be one of"),
        ({"calls": {"a": {"op": "publish", "args": ["x"]}}}, "3 to 4 arguments"),
        ({"calls": {"a": {"op": "query", "args": [1, 2, 3]}}}, "list of strings"),
        ({"socket_workers": 0}, "at least 1"),
        ({"routes": "kazoo:x"}, "list of route names"),
    ],
)
def test_a_wrong_kamailio_table_names_the_key(table: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        bridge_from_mapping(table)


def test_the_daemon_config_carries_the_kamailio_table() -> None:
    settings = settings_from_mapping(
        {"node_hostname": "h", "kamailio": {"bridge": "127.0.0.1:5091"}},
        base_dir="/tmp",
        default_app_version="1",
    )
    assert settings.kamailio is not None and settings.kamailio.bridge == "127.0.0.1:5091"
