"""The prequential benchmark runs end to end on real MovieLens (two tuning weeks, two scored weeks)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.movielens
def test_the_prequential_bench_tunes_before_it_scores_and_checks_its_targets(movielens_dir, tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "prequential.py"), "--movielens", str(movielens_dir),
               "--work", str(tmp_path / "work"), "--tune-weeks", "2", "--max-steps", "2", "--weights", "1,5",
               "--variants", "accrete,no_decay", "--json-out", str(out)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "TUNING RANGE (2016-01-04" in run.stdout and "SCORED RANGE (2017-01-02" in run.stdout
    result = json.loads(out.read_text())
    assert result["tuning"]["recency_weight"] in (1.0, 5.0)
    scored = result["scored"]["summary"]
    assert {"accrete", "no_decay", "pop_all_time", "pop_last_8w"} <= set(scored)
    assert all(0.0 <= scored[name]["recall@10"] <= 1.0 for name in ("accrete", "pop_all_time"))
    identical = [t for t in result["targets"] if "byte-identical" in t["target"]]
    assert len(identical) == 2 and all(t["pass"] for t in identical)
