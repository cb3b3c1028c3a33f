"""The CLI cost benchmark still runs end to end on a tiny world: first run, warm nightlies, a retrain, the small
store, and stops the Prefect server it started."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from accrete.flows.local_server import read_record
from accrete.pipeline.synthetic import generate_world

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # starts a Prefect server and runs a dozen CLI processes
def test_the_cli_cost_bench_smoke_run_prints_every_number_and_stops_its_server(tmp_path):
    generate_world(tmp_path / "data", days=4, seed=0, initial_users=200, initial_items=100, new_users_per_day=5,
                   new_items_per_day=3, interactions_per_day=300, initial_interactions=2000)
    work = tmp_path / "work"
    command = [sys.executable, str(REPO_ROOT / "bench" / "cli_cost.py"), "--data", str(tmp_path / "data"),
               "--work", str(work), "--steps", "2", "--small-days", "3"]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for line in ("first run (retrain on an empty store", "warm runner ready", "nightly median", "ratio",
                 "small store (4 days): warm nightly median", "in-process (ACCRETE_WARM_RUNNER=0"):
        assert line in run.stdout, run.stdout
    assert read_record(work / "prefect-home") is None  # stopped
