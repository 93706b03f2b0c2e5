"""Where the shared reference folder (spec, corpus, schemas) is: ``../shared`` next to the repo.

Set ``KAZOO_SHARED_DIR`` to use another copy. Tests that need it take the ``shared_dir`` fixture
and are skipped when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR_MISSING = "../shared not found: set KAZOO_SHARED_DIR to the shared reference folder"


def find_shared_dir() -> Path | None:
    """``$KAZOO_SHARED_DIR`` if set, else ``<repo>/../shared``; ``None`` when it is not a folder."""
    configured = os.environ.get("KAZOO_SHARED_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared reference folder; skips the test when it cannot be found."""
    path = find_shared_dir()
    if path is None:
        pytest.skip(SHARED_DIR_MISSING)
    return path
