"""The store-growth benchmark still applies every partition of a tiny world, reports what each version wrote and
the parts of the newest, and runs `gc` at the end."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from accrete.pipeline.synthetic import generate_world
from accrete.pipeline.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_store_growth_bench_smoke_run_records_every_step_and_collects_garbage(tmp_path):
    generate_world(tmp_path / "data", days=4, seed=0, initial_users=200, initial_items=100, new_users_per_day=5,
                   new_items_per_day=3, interactions_per_day=300, initial_interactions=2000)
    command = [sys.executable, str(REPO_ROOT / "bench" / "store_growth.py"), "--data", str(tmp_path / "data"),
               "--work", str(tmp_path / "work"), "--keep", "2", "--layout"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "5 partitions (2024-01-01 .. 2024-01-05)" in run.stdout
    assert "gc --keep 2: freed 3 version(s)" in run.stdout
    assert "bytes written per version vs bytes of changed rows: " in run.stdout
    assert "store after the bootstrap" in run.stdout and "after 4 steps without gc" in run.stdout
    assert "parts of version 5:" in run.stdout and "  item_vectors " in run.stdout
    assert Store(tmp_path / "work" / "store").versions() == [4, 5]
