"""The year-scale benchmark runs end to end in its smoke size and reports every number it promises."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_year_bench_smoke_run_reports_retrain_step_memory_bytes_and_quality(tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "year.py"), "--smoke", "--work", str(tmp_path / "work"),
               "--json-out", str(out)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for phase in ("reading partition", "vocabulary", "iALS iteration", "drift reference", "publishing version"):
        assert phase in run.stdout, f"no progress line for {phase!r}"
    assert "ratio" in run.stdout and "target: full retrain / nightly step >= 40x" in run.stdout
    assert "target: step peak RSS <= 0.5 GB" in run.stdout and "bytes written per step / bytes of changed rows" in run.stdout

    result = json.loads(out.read_text())
    histories = result["histories"]
    assert [h["history_days"] for h in histories] == [8, 16]
    assert histories[0]["interactions"] < histories[1]["interactions"]
    for h in histories:
        assert h["retrain_seconds"] > 0 and h["step_seconds"] > 0
        assert math.isclose(h["ratio"], h["retrain_seconds"] / h["step_seconds"])
        # Peak RSS of a child includes the interpreter and numpy/pyarrow: at least tens of MB.
        assert h["retrain_peak_rss"] > 50e6 and h["step_peak_rss"] > 50e6
        assert h["retrain_version_bytes"] > 0 and len(h["step_version_bytes"]) == 2
        assert all(0.0 <= recall <= 1.0 for recall in h["recall@10"])
        assert {"ingest", "train"} <= set(h["retrain"]["timings"])
    assert result["verdict"] in ("PASS", "MISS")
    assert result["world"]["interactions"] == 2_000 + 400 * 18
