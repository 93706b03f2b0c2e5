"""``kazoo-amqp kamailio-convert`` as a subprocess, and its output checked by real Kamailio.

The fixture (tests/fixtures/kamailio_convert/) is a cfg in the style of kazoo-configs-kamailio
(registrar, presence and nodes roles) written for the C module; examples/kamailio is the shipped
example (run end to end by tests/e2e/test_kamailio_bridge.py). The converted cfg uses the
generated includes of ``core/kamailio/bridge_cfg.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "kamailio_convert"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MPATH = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
needs_kamailio = pytest.mark.skipif(
    not (os.path.exists(KAMAILIO) and os.path.exists(MPATH + "kazoo.so")),
    reason="needs Kamailio 5.6 with kazoo.so and app_python3.so (Debian packages)",
)

FIXTURE_REPORT = [
    'modparam("kazoo", ...) -> kazoo-amqp.toml: 10',
    "kazoo_publish -> python_exec: 2",
    "kazoo_query -> python_exec: 2",
    "kazoo_async_query -> python_exec: 1",
    "kazoo_subscribe -> python_exec: 4",
    "kazoo_pua_publish_dialoginfo -> python_exec: 1",
    "kazoo_pua_publish_mwi -> python_exec: 1",
    "$kzE -> $var(kzE): 21",
    "$kzR -> $var(kzR): 7",
    "$kzRK -> $var(kzRK): 1",
    'event_route[kazoo:...] -> route["kazoo:..."]: 8',
    "event_route[xhttp:request] -> route[KZ_XHTTP_ORIGINAL]: 1",
    "onreply_route/failure_route -> route (async resume): 2",
    "routes(PREFIX) -> route(...): 3",
    'include_file "kazoo-amqp-modules.cfg" / "kazoo-amqp-routes.cfg" added: 2',
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAZOO_AMQP_CONFIG"}
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.run(
        [sys.executable, "-m", "kazoo_amqp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def convert_fixture(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    done = run_cli(
        "kamailio-convert", str(FIXTURE / "kamailio.cfg"), "--out-dir", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    return out


def test_fixture_converts_and_prints_one_line_per_kind_of_rewrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "kamailio-convert", str(FIXTURE / "kamailio.cfg"), "--out-dir", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[: len(FIXTURE_REPORT)] == FIXTURE_REPORT
    assert lines[-1] == f"wrote {out}: 9 files, 2 links to unchanged includes"
    written = {p.name for p in out.iterdir()}
    assert written == {
        "kamailio.cfg",
        "kazoo-bindings.cfg",
        "registrar-role.cfg",
        "presence-role.cfg",
        "nodes-role.cfg",
        "kazoo-amqp.toml",
        "kazoo-amqp-modules.cfg",
        "kazoo-amqp-routes.cfg",
        "kazoo_amqp_kemi.py",
        "local.cfg",
        "defs.cfg",
    }
    for name in ("local.cfg", "defs.cfg"):  # unchanged includes: links, not copies
        assert (out / name).is_symlink()
        assert os.path.realpath(out / name) == str(FIXTURE / name)
    toml = tomllib.loads((out / "kazoo-amqp.toml").read_text())
    assert toml["node_hostname"] == "proxy1.example.net"
    assert toml["amqp_connection"] == ["amqp://guest:guest@127.0.0.1:5672"]
    assert len(toml["kamailio"]["calls"]) == 11


def test_generated_toml_passes_check_config(tmp_path: Path) -> None:
    out = convert_fixture(tmp_path)
    done = run_cli("check-config", "--config", str(out / "kazoo-amqp.toml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "config OK"


GENERATED = ("kazoo-amqp-modules.cfg", "kazoo-amqp-routes.cfg", "kazoo_amqp_kemi.py")


EXAMPLE = REPO / "examples" / "kamailio" / "kamailio.cfg"


@pytest.mark.parametrize("source", [FIXTURE / "kamailio.cfg", EXAMPLE], ids=["fixture", "example"])
def test_converting_the_output_again_changes_nothing(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "out"
    done = run_cli("kamailio-convert", str(source), "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = tmp_path / "again"
    for target in (out, again):  # in place, and into another folder
        done = run_cli(
            "kamailio-convert", str(out / "kamailio.cfg"), "--out-dir", str(target), cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "nothing to rewrite: the cfg is converted already"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    for name, data in before.items():
        if name in GENERATED:  # they name their own folder (app_python3 needs absolute paths)
            data = data.replace(str(out).encode(), str(again).encode())
        assert (again / name).read_bytes() == data, name


def test_an_error_names_file_line_and_construct_and_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    role = src / "nodes-role.cfg"
    role.write_text(role.read_text().replace('"kamailio@MY_HOSTNAME"', '"$knode"'))
    main = src / "kamailio.cfg"
    main.write_text(main.read_text().replace('routes("KZ_ROUTE_EXTERNAL")', 'routes("KZ_$rm")'))
    out = tmp_path / "out"
    done = run_cli("kamailio-convert", str(main), "--out-dir", str(out), cwd=tmp_path)
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert errors[0].startswith("nodes-role.cfg:13: $knode: only the 2600hz Kamailio build")
    assert errors[1].startswith('kamailio.cfg:93: routes("KZ_$rm"): only the 2600hz')
    assert errors[-1] == "kazoo-amqp: 2 problem(s); nothing written"
    assert done.stdout == ""
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_out_dir_may_not_be_the_input_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    done = run_cli(
        "kamailio-convert", str(src / "kamailio.cfg"), "--out-dir", str(src), cwd=tmp_path
    )
    assert done.returncode == 1
    assert "is the input folder" in done.stderr
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


@needs_kamailio
def test_original_fixture_does_not_pass_stock_kamailio_but_the_converted_one_does(
    tmp_path: Path,
) -> None:
    def check(cfg: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KAMAILIO, "-c", "-L", MPATH, "-f", str(cfg)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    original = check(FIXTURE / "kamailio.cfg")
    assert original.returncode != 0
    assert "failed to find command routes" in original.stderr
    converted = check(convert_fixture(tmp_path) / "kamailio.cfg")
    assert converted.returncode == 0, converted.stderr
    assert "config file ok" in converted.stderr


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_kamailio
def test_converted_cfg_starts_on_stock_kamailio_with_kazoo_so_and_no_broker(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "kamailio.cfg").write_text(
        "#!KAMAILIO\n"
        f'mpath="{MPATH}"\n'
        f"listen=udp:127.0.0.1:{_free_udp_port()}\n"
        "children=1\ndisable_tcp=yes\n"
        'loadmodule "tm.so"\nloadmodule "pv.so"\nloadmodule "xlog.so"\nloadmodule "sl.so"\n'
        'loadmodule "kazoo.so"\n'
        'modparam("kazoo", "node_hostname", "sip1.example.net")\n'
        'modparam("kazoo", "amqp_connection", "amqp://guest:guest@127.0.0.1:1")\n'
        "request_route {\n"
        '    if (kazoo_publish("callmgr", "a.b", "{\\"x\\": \\"$(rU{kz.encode})\\"}") != 1) {\n'
        '        sl_send_reply("500", "no");\n'
        "    }\n"
        "    exit;\n"
        "}\n"
        'event_route[kazoo:consumer-event] { xlog("L_INFO", "$(kzE{kz.json,a})\\n"); }\n'
    )
    out = tmp_path / "out"
    done = run_cli(
        "kamailio-convert", str(src / "kamailio.cfg"), "--out-dir", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = (tmp_path / "kamailio.log").open("w")
    proc = subprocess.Popen(
        [KAMAILIO, "-DD", "-E", "-f", str(out / "kamailio.cfg"), "-Y", str(run_dir)],
        cwd=out,  # app_python3 resolves the generated script relative to the working folder
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(3)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
    text = (tmp_path / "kamailio.log").read_text(errors="replace")
    assert alive, text[-3000:]
    assert " ERROR: " not in text and "CRITICAL" not in text, text[-3000:]
