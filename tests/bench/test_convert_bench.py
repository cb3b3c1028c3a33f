"""The conversion benchmark still runs end to end at a tiny size (a few thousand ratings)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_convert_bench_smoke_run_times_the_dat_reader_and_both_converters(tmp_path):
    command = [sys.executable, str(REPO_ROOT / "bench" / "convert.py"), "--ratings", "3000", "--repeat", "1",
               "--work", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["ratings"] == 3000
    for key in ("dat_read", "movielens", "generic_csv"):
        assert result[f"{key}_s"] >= 0 and result[f"{key}_rows_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "out" / "interactions").iterdir())[0].startswith("date=")
