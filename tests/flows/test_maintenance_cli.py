"""`accrete gc` and `accrete verify` as a user runs them, and the runs that refuse a damaged store before any
Prefect API starts."""
from __future__ import annotations

import json

import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.store import Store


@pytest.fixture
def three_versions(world, make_store, config_path):
    store = make_store(world)
    for _ in range(2):
        run_incremental_step(world, store, config=AccreteConfig.load(config_path))
    return store


def _damage(store, version: int, part: str):
    """Flip a byte of the newest segment of a version's part; returns the segment."""
    path = Store(store).part_segments(version, part)[-1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_verify_exits_0_on_an_intact_store_and_2_naming_each_damaged_file(run_cli, three_versions):
    store = three_versions
    ok = run_cli("verify", "--store", store)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == (f"store {store}: OK (3 version(s), CURRENT v000003, 4 history file(s), "
                                 f"2 drift record(s))")
    damaged = _damage(store, 3, "item_vectors")
    partition = "history/date=" + Store(store).manifest(3)["partition"]  # v3's own interactions by row
    missing = Store(store).part_segments(3, partition)[-1]
    missing.unlink()
    bad = run_cli("verify", "--store", store)
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert lines == [
        f"accrete verify: damaged: {missing}: missing (part {partition} of version 3)",
        f"accrete verify: damaged: {damaged}: checksum mismatch (part item_vectors of version 3)",
        f"accrete verify: error: store {store} is damaged: 2 problem(s) (3 version(s), CURRENT v000003, "
        f"4 history file(s), 2 drift record(s))"]
    as_json = json.loads(run_cli("verify", "--store", store, "--json").stdout)
    assert as_json["ok"] is False and len(as_json["problems"]) == 2


@pytest.mark.parametrize("command", ["nightly", "backfill", "retrain"])
def test_a_run_refuses_a_damaged_current_version_in_one_line_before_prefect_starts(
        command, run_cli, world, three_versions, config_path, tmp_path):
    store = three_versions
    damaged = _damage(store, 3, "user_vectors")
    dates = [d.isoformat() for d in list_partitions(world)]
    extra = {"nightly": [], "backfill": ["--start", dates[3], "--end", dates[4]], "retrain": ["--as-of", dates[3]]}
    home = tmp_path / "prefect-home"
    proc = run_cli(command, "--data", world, "--store", store, "--config", config_path, *extra[command],
                   PREFECT_HOME=str(home))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"accrete {command}: error: {damaged}: checksum mismatch (part user_vectors of "
                                   f"version 3), version 3 is damaged (`accrete verify` lists every problem)")
    assert not (home / "prefect.db").exists()
    assert sorted(p.name for p in (store / "versions").iterdir()) == ["v000001", "v000002", "v000003"]


def test_gc_prints_what_it_freed_and_a_dry_run_what_it_would(run_cli, three_versions):
    store = three_versions
    dry = run_cli("gc", "--store", store, "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would free 1 version(s) (v000001) and ")  # ... and the segments only v1 used
    assert (store / "versions" / "v000001").exists()
    done = run_cli("gc", "--store", store, "--keep", "1", "--json")
    summary = json.loads(done.stdout)
    assert summary["removed"] == [1] and summary["kept"] == [2, 3] and summary["freed_bytes"] > 0
    assert not (store / "versions" / "v000001").exists()
    assert run_cli("verify", "--store", store).returncode == 0
    zero = run_cli("gc", "--store", store, "--keep", "0")
    assert zero.returncode == 2 and "must be positive" in zero.stderr
