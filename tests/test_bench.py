"""The benchmark runs end to end (`--quick`): a smoke test, no timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_bench_quick_runs_both_servers(tmp_path: Path) -> None:
    """bench.py --quick exits 0 and reports every workload for Roost (and the peer when npm
    can install it; in CI the peer is required)."""
    out = tmp_path / "bench.json"
    peer = shutil.which("npm") is not None and (ROOT.parent / "shared").exists()
    args = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)]
    if not peer and not os.environ.get("CI"):
        args.append("--roost-only")
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    text = json.dumps(doc)
    assert "append-64x1" in text and "history-10k" in text
    assert "roost" in text
    if peer:
        assert "workerd" in text
