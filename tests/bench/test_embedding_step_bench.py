"""The frozen-tail embedding benchmark still runs every technique at a tiny size and states its targets."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # TensorFlow's import and five techniques' first traces: about ten seconds
def test_the_embedding_step_bench_smoke_run_measures_every_technique(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "bench" / "embedding_step.py"), "--sizes", "2k", "--dim", "8",
               "--batch", "64", "--steps", "3", "--tail", "100", "--budget", "1"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.strip().startswith("2,000 ")]
    assert [row[1] for row in rows] == ["ours", "concat", "constraint", "switch", "full"]
    ours = next(row for row in rows if row[1] == "ours")
    assert ours[-1] == "800"  # Adagrad's one slot over the 100-row tail of dimension 8, nothing for the frozen block
    assert "target <= 1.2" in run.stdout and "optimizer state at 2,000 rows" in run.stdout
