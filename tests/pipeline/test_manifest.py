"""The typed manifest: every manifest earlier code wrote loads, and reading then writing back changes nothing.

`tests/fixtures/main_store` is a store (and its data) written by the code before the typed manifest existed
(main at 9ac9481: a full retrain, then two incremental steps; partitions 2024-01-04 and -05 not applied yet).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import StoreError
from accrete.pipeline.exports import export_version, read_export
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.maintenance import verify_store
from accrete.pipeline.manifest import SCHEMA_VERSION, DriftState, Manifest, RowCounts
from accrete.pipeline.policy import applied_partitions, owed_retrain, pending_partitions
from accrete.pipeline.status import store_status
from accrete.pipeline.store import MANIFEST, Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "main_store"


@pytest.fixture
def old_store(tmp_path) -> tuple[Path, Path]:
    """A writable copy of the fixture's data and store."""
    shutil.copytree(FIXTURE, tmp_path / "main_store")
    return tmp_path / "main_store" / "data", tmp_path / "main_store" / "store"


def _raw_manifests(store: Path) -> dict[int, dict]:
    return {int(p.parent.name[1:]): json.loads(p.read_text()) for p in sorted(store.glob(f"versions/*/{MANIFEST}"))}


def test_every_manifest_of_a_store_written_before_the_typed_manifest_reads_and_writes_back_unchanged():
    raws = _raw_manifests(FIXTURE / "store")
    assert sorted(raws) == [1, 2, 3]
    for raw in raws.values():
        manifest = Manifest.from_dict(copy.deepcopy(raw))
        assert manifest.to_dict() == raw and list(manifest.to_dict()) == list(raw)
        assert manifest.format == SCHEMA_VERSION
    first, step = Manifest.from_dict(raws[1]), Manifest.from_dict(raws[3])
    assert (first.kind, first.parent, first.generation, first.reason) == ("full_retrain", None, 1, "bootstrap")
    assert (step.kind, step.parent, step.partition) == ("incremental", 2, "2024-01-03")
    assert step.partitions == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert step.rows.item == raws[3]["rows"]["item"] and step.rows.item_new == raws[3]["rows"]["item_new"]
    assert step.drift_state.interactions_total == raws[3]["drift_state"]["interactions_total"]
    assert "recall@10" in step.metrics and step.retrain_due is False and step.reasons == []
    assert step.quarantined_rows == 0 and step.config["model"]["objective"] == "ials"


def test_manifests_of_older_shapes_load_with_defaults_and_still_write_back_unchanged():
    raw = _raw_manifests(FIXTURE / "store")[3]
    oldest = {k: v for k, v in raw.items() if k not in ("quarantined_rows", "format", "timings")}
    oldest["drift"] = {**raw["drift"], "retrain": True, "reasons": ["psi above 0.2", "waiting: recall"]}
    oldest["drift_state"] = {"recall_history": [0.2]}  # before the streaks and counters were kept
    oldest["ingest"] = {**raw["ingest"], "quarantined": {"missing_id": 2, "duplicate_row": 1}}
    manifest = Manifest.from_dict(copy.deepcopy(oldest))
    assert manifest.to_dict() == oldest and list(manifest.to_dict()) == list(oldest)
    assert manifest.quarantined_rows == 3  # counted from the ingest report
    assert manifest.retrain_due and manifest.reasons == ["psi above 0.2", "waiting: recall"]
    assert manifest.drift_state.streaks == {} and manifest.drift_state.interactions_total == 0
    assert manifest.timings == {} and manifest.format == SCHEMA_VERSION


def test_a_manifest_without_its_identity_is_refused_and_the_store_names_the_file(old_store):
    for key in ("version", "generation", "kind"):
        with pytest.raises(ValueError, match=key):
            Manifest.from_dict({k: v for k, v in {"version": 1, "generation": 1, "kind": "incremental"}.items()
                                if k != key})
    with pytest.raises(ValueError, match="kind"):
        Manifest.from_dict({"version": 1, "generation": 1, "kind": "nightly"})
    _, store = old_store
    path = store / "versions" / "v000003" / MANIFEST
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "kind"}))
    with pytest.raises(StoreError, match=f"{path}: damaged manifest"):
        Store(store).read_manifest()


def test_a_new_manifest_writes_every_typed_key_and_its_extras():
    manifest = Manifest(version=4, generation=2, kind="full_retrain", reason="manual",
                        rows=RowCounts(user=11, item=7), drift_state=DriftState(interactions_total=30),
                        extra={"config": {"model": {"dim": 8}}})
    written = manifest.to_dict()
    assert written["rows"]["user"] == 11 and written["drift_state"]["interactions_total"] == 30
    assert written["config"] == {"model": {"dim": 8}} and written["format"] == SCHEMA_VERSION
    assert Manifest.from_dict(written).to_dict() == written
    assert manifest.replace(partition="2024-01-09").to_dict()["partition"] == "2024-01-09"


def test_a_store_written_before_the_typed_manifest_keeps_working(old_store, tmp_path):
    """Status, the nightly policy, verify, export, and the next nightly step on top of it."""
    data, store = old_store
    status = store_status(store)
    assert status["current"] == 3 and status["last_partition"] == "2024-01-03"
    assert [v["kind"] for v in status["versions"]] == ["full_retrain", "incremental", "incremental"]
    assert owed_retrain(store) is None
    assert [d.isoformat() for d in pending_partitions(data, store)] == ["2024-01-04", "2024-01-05"]
    assert verify_store(store).ok
    export = read_export(export_version(store, tmp_path / "full.parquet")["out"])
    assert export.num_rows > 0

    before = Store(store).load(3)
    result = run_incremental_step(data, store, config=AccreteConfig())
    assert (result.kind, result.version) == ("incremental", 4)
    after = Store(store).read_manifest()
    assert after.parent == 3 and after.partition == "2024-01-04" and after.format == SCHEMA_VERSION
    frozen = after.rows.item_trainable_from
    assert (Store(store).load().item_vectors[:frozen] == before.item_vectors[:frozen]).all()
    assert [d.isoformat() for d in applied_partitions(store)][-1] == "2024-01-04"
    assert verify_store(store).ok
