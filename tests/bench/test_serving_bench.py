"""The serving benchmark runs end to end at its smoke size on real MovieLens and a tiny synthetic year."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.movielens
def test_the_serving_bench_measures_latency_publishing_updates_and_agreement(movielens_dir, tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "serving.py"), "--smoke", "--movielens", str(movielens_dir),
               "--work", str(tmp_path / "work"), "--json-out", str(out)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    movielens = result["movielens"]
    assert [level["concurrency"] for level in movielens["levels"]] == [1, 8, 32]
    assert all(level["requests"] > 0 and level["p99_ms"] >= level["p50_ms"] > 0 for level in movielens["levels"])
    publishing = movielens["publishing"]
    assert publishing["published"] == 2 and publishing["failures"] == 0
    assert publishing["service_version"] == publishing["final_version"] == movielens["steps"][-1]["version"]
    assert movielens["service_rss_bytes"] > 50e6
    for part in (movielens, result["year"]):
        assert all(0.0 <= row["agreement"] <= 1.0 and row["rebuild_seconds"] > 0 for row in part["steps"])
        assert set(part["c_grid"]) == {"ann", "exact first stage", "cosine, ann", "ann, term off",
                                     "ms per user (ann)"}
    assert {target["pass"] for target in result["targets"]} <= {True, False} and len(result["targets"]) == 5
    assert "PASS" in run.stdout or "MISS" in run.stdout
