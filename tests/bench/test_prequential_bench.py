"""The prequential benchmark runs end to end on real MovieLens and the real online-retail log (two tuning weeks,
two scored weeks)."""
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
               "--variants", "accrete,accrete_fixed,no_decay", "--json-out", str(out)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "TUNING RANGE (2016-01-04" in run.stdout and "SCORED RANGE (2017-01-02" in run.stdout
    result = json.loads(out.read_text())
    assert result["tuning"]["recency_weight"] in (1.0, 5.0)
    scored = result["scored"]["summary"]
    assert {"accrete", "no_decay", "pop_all_time", "pop_last_8w"} <= set(scored)
    assert all(0.0 <= scored[name]["recall@10"] <= 1.0 for name in ("accrete", "pop_all_time"))
    identical = [t for t in result["targets"] if "byte-identical" in t["target"]]
    assert len(identical) == 3 and all(t["pass"] for t in identical)


@pytest.mark.slow
@pytest.mark.online_retail
def test_the_prequential_bench_replays_the_online_retail_log_with_young_items_and_retrieval(online_retail_dir,
                                                                                              tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "prequential.py"), "--dataset", "online-retail",
               "--online-retail", str(online_retail_dir), "--work", str(tmp_path / "work"), "--tune-weeks", "2",
               "--max-steps", "2", "--weights", "1", "--retrieval-grid", "0.1,1", "--variants",
               "accrete,full_retrain,retrieval", "--json-out", str(out)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "TUNING RANGE (2010-12-06" in run.stdout and "SCORED RANGE (2011-04-04" in run.stdout
    result = json.loads(out.read_text())
    assert result["dataset"] == "online-retail"
    assert result["tuning"]["retrieval"] == {"learning_rate": 0.1, "temperature": 1.0}
    scored = result["scored"]["summary"]
    assert {"accrete", "full_retrain", "retrieval", "pop_all_time"} <= set(scored)
    assert any(name.startswith("pop_decayed_") for name in scored)
    assert all("recall@10/young_items" in scored[name] for name in ("accrete", "retrieval", "pop_all_time"))
    targets = {t["target"].split(" (")[0]: t for t in result["targets"]}
    assert {"recall@10 >= 1.4 x tuned decayed popularity", "ndcg@10 >= 0.97 x full retrain every step",
            "young-item recall@10 above tuned decayed popularity's"} <= set(targets)
    assert all(t["pass"] for t in result["targets"] if "byte-identical" in t["target"])
