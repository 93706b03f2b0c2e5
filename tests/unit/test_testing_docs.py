"""docs/testing.md's pytest example runs as printed (its routes.py and test_routes.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_docs_testing_example_passes(tmp_path: Path) -> None:
    text = (REPO / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(# (\S+)\n.*?)```", text, re.S)
    files = {name: body for body, name in blocks}
    assert set(files) == {"routes.py", "test_routes.py"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_routes.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "4 passed" in run.stdout
