"""The chaos soak's 60-second version: bench/chaos.py on the cluster, invariants asserted.

The soak measures the machine's capacity first and runs at a fraction of it (0.3 here, so a busy
CI machine keeps up; the 10-minute soak of docs/reliability.md runs at 0.5). Every fault of the
schedule is injected once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.cluster import REPO, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.mark.timeout(1500)
def test_chaos_soak_60s_keeps_every_invariant(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--duration", "60",
         "--capacity-s", "5", "--load", "0.3", "--json", str(out)],
        capture_output=True, text=True, timeout=1400, check=False,
    )  # fmt: skip
    log = proc.stderr[-4000:] + proc.stdout[-6000:]
    assert out.exists(), f"no result (exit {proc.returncode}):\n{log}"
    result = json.loads(out.read_text())
    # Late queries are a known, documented defect (docs/reliability.md, "a query taken up late
    # is answered late": the daemon counts the timeout from when it reads the request; the fix
    # is a deadline in the socket request). Here they are bounded, the rest is strict.
    late = "no query answered past its deadline + 50 ms"
    failed = [name for name, ok in result["checks"].items() if not ok and name != late]
    assert not failed, f"{failed}:\n{log}"
    q = result["query"]
    assert q["late"] <= max(5, (q["answered"] + q["timeouts"]) // 200), q["late_sample"]
    assert len(result["faults"]) == 7
    assert not [f for f in result["faults"] if f["detail"].startswith("FAILED")], result["faults"]
    assert result["publish"]["lost"] == 0 and result["acked_after"]["lost"] == 0
    assert result["query"]["wrong_waiter"] == 0
