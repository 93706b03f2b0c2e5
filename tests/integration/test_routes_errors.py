"""Issue 8: a routes file that raises, exits or declares nothing gives one clear line (exit 2).

Run through the real CLI (``check-config`` and ``run``, which both import the routes and run
``kazoo:mod-init`` before anything connects), so no broker is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kazoo_amqp.cli import EXIT_BAD_INPUT
from tests.integration.test_cli import run_cli

MOD_INIT_RAISES = """
from kazoo_amqp import Router
router = Router()

@router.route("kazoo:mod-init")
def init(kz):
    helper()

def helper():
    raise ValueError("no such table: subscriptions")
"""


def _config(tmp_path: Path, routes: str, **extra: object) -> Path:
    (tmp_path / "routes.py").write_text(routes)
    keys = {
        "node_hostname": "h",
        "routes": "routes.py",
        "socket": str(tmp_path / "kz.sock"),
        "amqp_connection": "amqp://guest:guest@127.0.0.1:1/",
        **extra,
    }
    path = tmp_path / "k.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))
    return path


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_mod_init_raising_is_one_line_naming_the_route_and_the_exception(
    tmp_path: Path, command: str
) -> None:
    cfg = _config(tmp_path, MOD_INIT_RAISES, log_level="error")
    proc = run_cli(command, "--config", str(cfg), cwd=tmp_path, timeout=30)
    assert proc.returncode == EXIT_BAD_INPUT
    line = _one_line_error(proc.stderr)
    assert "kazoo:mod-init" in line and "routes.py" in line
    assert "ValueError: no such table: subscriptions" in line and "routes.py:10" in line


def test_routes_file_calling_sys_exit_is_a_clear_error_not_a_silent_exit(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "import sys\nsys.exit(3)\n")
    proc = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    line = _one_line_error(proc.stderr)
    assert "called sys.exit(3)" in line and "routes.py" in line


def test_mod_init_calling_sys_exit_is_a_clear_error(tmp_path: Path) -> None:
    routes = (
        "import sys\nfrom kazoo_amqp import Router\nrouter = Router()\n"
        "@router.route('kazoo:mod-init')\ndef init(kz):\n    sys.exit(3)\n"
    )
    proc = run_cli("check-config", "--config", str(_config(tmp_path, routes)), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "kazoo:mod-init" in _one_line_error(proc.stderr)


def test_routes_file_without_a_router_is_an_error_naming_the_file_and_the_fix(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, "def init(kz):\n    pass\n")
    proc = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    line = _one_line_error(proc.stderr)
    assert "routes.py" in line and "defines no Router" in line and "router = Router()" in line


def test_routes_file_with_an_event_callback_needs_no_router(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "def on_event(kz):\n    pass\n", event_callback="on_event")
    proc = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_an_empty_router_is_a_warning(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "from kazoo_amqp import Router\nrouter = Router()\n")
    proc = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0
    assert "has no routes" in proc.stderr
