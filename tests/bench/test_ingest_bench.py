"""The ingest benchmark still runs end to end at a tiny size and reports every rate it promises."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_ingest_bench_smoke_run_times_every_path_and_states_its_target(tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, str(REPO_ROOT / "bench" / "ingest.py"), "--work", str(tmp_path / "work"),
               "--days", "3", "--per-day", "2000", "--repeat", "1", "--json", str(out)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "target: validate + lookup + extend >= 5,000,000 rows/s" in run.stdout
    result = json.loads(out.read_text())
    assert result["partitions"] == 4 and result["interactions"] > 3 * 2000 and result["quarantined"] == 0
    for key in ("read", "validate", "extend_lookup", "encode", "combined", "combined_encode"):
        assert result[f"{key}_seconds"] > 0
    assert result["combined_rows_per_second"] == result["interactions"] / result["combined_seconds"]
