"""The history-read benchmark measures both ways on a tiny store and finds the same seen items."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_history_read_bench_smoke_run_compares_both_ways():
    run = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "history_read.py"), "--smoke"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    header, row = run.stdout.strip().splitlines()[-2:]
    assert "by row: s" in header and row.startswith("store-smoke") and row.endswith("x")
