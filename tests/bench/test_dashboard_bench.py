"""The dashboard benchmark script still runs end to end (its smoke mode: a tiny world, one build)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_dashboard_bench_smoke_run_builds_a_dashboard_and_reuses_its_store(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "bench" / "dashboard.py"), "--smoke", "--work", str(tmp_path)]
    first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "history: 8 incremental steps" in first.stdout and "PASS" in first.stdout
    (html,) = tmp_path.glob("smoke-*/dashboard.html")
    assert html.stat().st_size > 0

    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "backfilled" not in again.stdout  # the cached store is complete: nothing to apply
