"""Fixtures for the end-to-end tests.

Kamailio tests are marked ``@pytest.mark.kamailio``; they are skipped (with a
pointer to ``.ci/install-kamailio.sh``) when Kamailio 5.6 with the presence
modules or SIPp is not installed.

Fixtures:
    kamailio_presence   a started KamailioPresence on SQLite (function scope);
                        its log tail is printed when the test fails.
    make_kamailio       factory: make_kamailio(db="sqlite" | "postgres://...",
                        name="...", **kwargs) -> started KamailioPresence; all
                        instances are stopped at teardown.
    kamailio_pg_dsn     a PostgreSQL URL from $KAZOO_E2E_PG_DSN (skips if unset).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/e2e on sys.path, so tests can `from kamailio.harness import ...`
# whatever pytest's rootdir/import mode is.
_E2E_DIR = str(Path(__file__).resolve().parent)
if _E2E_DIR not in sys.path:
    sys.path.insert(0, _E2E_DIR)

from kamailio.harness import KamailioPresence, missing_requirements  # noqa: E402

KAMAILIO_SKIP_REASON = "Kamailio 5.6 and sipp are not installed: run .ci/install-kamailio.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kamailio: needs a real Kamailio 5.6 and sipp")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = [item for item in items if item.get_closest_marker("kamailio") is not None]
    if not marked:
        return
    why = missing_requirements()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"{KAMAILIO_SKIP_REASON} ({why})")
    for item in marked:
        item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # remember each phase's report so fixtures can tell whether the test failed
    report = yield
    setattr(item, f"_e2e_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_e2e_rep_call", None)
    return rep is None or rep.failed


def _dump(kam: KamailioPresence) -> None:
    print(f"\n===== Kamailio run dir {kam.run_dir} (sip {kam.sip_port}, rpc {kam.rpc_url})")
    print("\n".join(kam.logs().splitlines()[-80:]))


@pytest.fixture
def make_kamailio(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., KamailioPresence]]:
    """Factory for started Kamailio presence servers, all stopped at teardown."""
    started: list[KamailioPresence] = []

    def make(db: str = "sqlite", name: str | None = None, **kwargs: Any) -> KamailioPresence:
        kam = KamailioPresence(tmp_path / (name or f"kamailio{len(started)}"), db, **kwargs)
        started.append(kam)
        kam.start()
        return kam

    try:
        yield make
    finally:
        failed = _failed(request)
        for kam in started:
            kam.stop()
            if failed:
                _dump(kam)


@pytest.fixture
def kamailio_presence(
    make_kamailio: Callable[..., KamailioPresence],
) -> KamailioPresence:
    """A running Kamailio presence server on a fresh SQLite DB (domain example.net)."""
    return make_kamailio(name="kamailio")


@pytest.fixture
def kamailio_pg_dsn() -> str:
    """``postgres://user:pass@127.0.0.1:5432/db`` from $KAZOO_E2E_PG_DSN, else skip."""
    dsn = os.environ.get("KAZOO_E2E_PG_DSN", "")
    if not dsn:
        pytest.skip("set KAZOO_E2E_PG_DSN=postgres://user:pass@127.0.0.1:5432/db for PostgreSQL")
    return dsn
