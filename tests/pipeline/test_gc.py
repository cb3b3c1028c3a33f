"""`collect_garbage`: old versions go, CURRENT and what its lineage and delta exports need stay, and a crash
at any moment leaves a store that loads and verifies."""
from __future__ import annotations

import multiprocessing

import pyarrow.compute as pc
import pytest

from accrete.pipeline.errors import StoreError
from accrete.pipeline.exports import export_delta, read_export
from accrete.pipeline.faults import ENV_VAR, InjectedFault
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.maintenance import _tree_bytes, collect_garbage, format_gc, verify_store
from accrete.pipeline.store import Store, version_name

from tests.pipeline.conftest import IALS_SMALL as SMALL


@pytest.fixture
def store(gen_store):
    return gen_store


@pytest.fixture
def world(gen_world):
    return gen_world


@pytest.fixture
def dates(gen_dates):
    return gen_dates


def _version_dirs(store) -> list[str]:
    return sorted(p.name for p in (store / "versions").iterdir())


def _segments_of(store, versions) -> set[str]:
    s = Store(store)
    return {key for v in versions for record in s.manifest(v)["parts"].values() for key in record.get("segments", [])}


def test_gc_keeps_current_and_its_parent_and_frees_the_bytes_it_reports(store):
    expected = sum(_tree_bytes(store / "versions" / version_name(v)) for v in (1, 2, 3, 4))
    only_removed = _segments_of(store, (1, 2, 3, 4)) - _segments_of(store, (5, 6))
    kept_segments = _segments_of(store, (5, 6))
    expected += sum(Store(store).segments.size(key) for key in only_removed)
    summary = collect_garbage(store, keep=1)
    assert summary["removed"] == [1, 2, 3, 4]
    assert summary["kept"] == [5, 6]  # CURRENT v6 and its parent v5 (`nightly --force` rebuilds from it)
    assert summary["freed_bytes"] == expected > 0
    # The v4 retrain kept every row, so it built on the bootstrap's history base, which CURRENT still reads.
    assert summary["removed_history_files"] == [] and (store / "history" / "base-until=2024-01-01.parquet").exists()
    assert _version_dirs(store) == ["v000005", "v000006"]
    assert summary["removed_segments"] == len(only_removed) > 0
    # A segment goes only when no kept version lists it: every one the kept versions use is still there.
    assert all(Store(store).segments.path(key).is_file() for key in kept_segments)
    assert not any(Store(store).segments.path(key).exists() for key in only_removed)
    assert verify_store(store).ok
    assert format_gc(summary).startswith(f"freed 4 version(s) (v000001..v000004) and {len(only_removed)} unused segment(s)")


def test_after_gc_the_store_keeps_working(store, world, dates):
    collect_garbage(store, keep=1)
    Store(store).load()
    Store(store).load(int(Store(store).manifest()["parent"]))
    result = run_incremental_step(world, store, config=SMALL)
    assert result.kind == "incremental" and result.date == dates[5]
    redone = run_incremental_step(world, store, dates[5], config=SMALL, force=True)  # rebuilds from the kept parent
    assert redone.version == 8 and redone.manifest["parent"] == 6
    assert verify_store(store).ok


def test_a_current_full_retrain_keeps_the_nearest_ancestor_with_quality_metrics(store, world, dates):
    collect_garbage(store, keep=6)  # nothing to free: every version kept
    assert _version_dirs(store) == [version_name(v) for v in range(1, 7)]
    run_full_retrain(world, store, dates[4], config=SMALL)  # v7, a retrain: no metrics of its own
    summary = collect_garbage(store, keep=1)
    assert summary["kept"] == [6, 7]
    assert Store(store).manifest(6)["metrics"]


def test_keep_generations_keeps_every_version_of_the_newest_generations(store):
    assert collect_garbage(store, keep=1, keep_generations=1, dry_run=True)["kept"] == [4, 5, 6]
    assert collect_garbage(store, keep=1, keep_generations=2, dry_run=True)["removed"] == []
    assert collect_garbage(store, keep=1, keep_generations=1)["removed"] == [1, 2, 3]


def test_a_dry_run_changes_nothing_and_reports_what_a_real_run_frees(store):
    before = _version_dirs(store)
    planned = collect_garbage(store, keep=2, dry_run=True)
    assert _version_dirs(store) == before
    done = collect_garbage(store, keep=2)
    assert {k: v for k, v in planned.items() if k != "dry_run"} == {k: v for k, v in done.items() if k != "dry_run"}
    assert format_gc(planned).startswith("would free 4 version(s)")


def test_a_delta_export_between_kept_versions_is_unchanged_by_gc(store, tmp_path):
    before = read_export(export_delta(store, tmp_path / "before.parquet", since=5)["out"])
    collect_garbage(store, keep=2)
    after = read_export(export_delta(store, tmp_path / "after.parquet", since=5)["out"])
    assert after.equals(before)
    assert pc.sum(pc.equal(after["change"], "added")).as_py() > 0


@pytest.mark.parametrize("point", ["gc:renamed-one", "gc:segments-trashed", "gc:before-delete"])
def test_a_crash_during_gc_leaves_a_store_that_loads_and_verifies_and_a_rerun_completes(store, point, monkeypatch):
    monkeypatch.setenv(ENV_VAR, point)
    with pytest.raises(InjectedFault):
        collect_garbage(store, keep=1)
    monkeypatch.delenv(ENV_VAR)
    assert not (store / "LOCK").exists()
    report = verify_store(store)
    assert report.ok and report.leftovers and all(name.startswith(".trash-") for name in report.leftovers)
    Store(store).load()
    summary = collect_garbage(store, keep=1)
    assert summary["removed_leftovers"] == report.leftovers
    assert _version_dirs(store) == ["v000005", "v000006"]
    assert verify_store(store).ok and not verify_store(store).leftovers


def test_the_next_publish_also_removes_a_crashed_gcs_trash(store, world, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gc:before-delete")
    with pytest.raises(InjectedFault):
        collect_garbage(store, keep=1)
    monkeypatch.delenv(ENV_VAR)
    run_incremental_step(world, store, config=SMALL)
    assert not [p for p in (store / "versions").iterdir() if p.name.startswith(".trash-")]


def _hold_lock(root: str, ready, release) -> None:
    with Store(root).lock("test holder"):
        ready.set()
        release.wait(30)


def test_gc_fails_fast_while_a_run_holds_the_lock(store):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(store), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StoreError, match="locked by another run"):
            collect_garbage(store, keep=1)
    finally:
        release.set()
        holder.join(60)
    assert len(_version_dirs(store)) == 6


def test_gc_refuses_a_store_whose_current_version_is_damaged(store):
    path = Store(store).part_segments(6, "item_vectors")[-1]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    for dry_run in (True, False):
        with pytest.raises(StoreError, match=f"{path.name}: checksum mismatch \\(part item_vectors of version 6\\)"):
            collect_garbage(store, keep=1, dry_run=dry_run)
    assert len(_version_dirs(store)) == 6


def test_keep_must_be_positive(store):
    with pytest.raises(StoreError, match="--keep must be at least 1"):
        collect_garbage(store, keep=0)
