"""`accrete status` on a real store: the version table and the retrain reasons, whatever shape a manifest stores."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.status import format_status, store_status
from accrete.pipeline.store import MANIFEST, Store
from accrete.pipeline.synthetic import generate_world

# An age cap of one day: the first incremental step already asks for a full retrain, for a known reason.
TINY = AccreteConfig().replace(model={"dim": 8}, train={"epochs": 1, "retrain_epochs": 1, "batch_size": 256},
                               drift={"max_days_since_full_retrain": 1})
AGE_REASON = "age: 1 days since last full retrain >= 1"


@pytest.fixture(scope="module")
def due_store(tmp_path_factory) -> Path:
    """A full retrain, then one incremental step whose decision says a retrain is due (read-only: copy it)."""
    root = tmp_path_factory.mktemp("status")
    data, store = root / "data", root / "store"
    generate_world(data, days=3, seed=5, initial_users=120, initial_items=80, new_users_per_day=5,
                   new_items_per_day=3, interactions_per_day=300, initial_interactions=1500)
    dates = contract.list_partitions(data)
    run_full_retrain(data, store, dates[0], config=TINY)
    result = run_incremental_step(data, store, config=TINY)
    assert result.retrain_due
    return store


@pytest.fixture
def store(due_store, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(due_store, copy)
    return copy


def _set_reasons(store: Path, reasons: str | list[str]) -> None:
    """Rewrite the current manifest's reasons in the given shape (older manifests hold a list)."""
    path = Store(store).version_dir(Store(store).current_version()) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["drift"]["reasons"] = reasons
    path.write_text(json.dumps(manifest))


def _notes(text: str) -> str:
    """The notes column of the last version row of `format_status`'s table."""
    return text.splitlines()[-1].split("  ")[-1].strip()


def test_a_manifest_written_by_the_pipeline_stores_its_reasons_as_one_string(due_store):
    assert Store(due_store).manifest()["drift"]["reasons"] == AGE_REASON


def test_status_shows_the_retrain_reason_as_written_not_one_character_per_item(due_store):
    status = store_status(due_store)
    assert status["retrain_due"] and status["versions"][-1]["reasons"] == [AGE_REASON]
    text = format_status(status)
    assert "RETRAIN DUE" in text
    assert _notes(text) == AGE_REASON
    assert "a; g; e" not in text


@pytest.mark.parametrize("stored", [
    "age: 1 days since last full retrain >= 1; waiting: psi_item_popularity 0.4 > 0.25 for 1 step (patience 2)",
    ["age: 1 days since last full retrain >= 1", "waiting: psi_item_popularity 0.4 > 0.25 for 1 step (patience 2)"],
], ids=["joined-string", "list"])
def test_status_reads_reasons_stored_as_a_string_or_as_a_list(store, stored):
    _set_reasons(store, stored)
    status = store_status(store)
    assert status["versions"][-1]["reasons"] == [
        "age: 1 days since last full retrain >= 1",
        "waiting: psi_item_popularity 0.4 > 0.25 for 1 step (patience 2)"]
    assert _notes(format_status(status)) == ("age: 1 days since last full retrain >= 1; "
                                             "waiting: psi_item_popularity 0.4 > 0.25 for 1 step (patience 2)")


@pytest.mark.parametrize("stored", ["", []], ids=["empty-string", "empty-list"])
def test_status_lists_no_reasons_when_none_were_stored(store, stored):
    _set_reasons(store, stored)
    assert store_status(store)["versions"][-1]["reasons"] == []


def test_status_describes_every_version_of_the_store(due_store):
    status = store_status(due_store)
    assert status["current"] == 2 and status["generation"] == 1
    assert [(v["version"], v["kind"]) for v in status["versions"]] == [(1, "full_retrain"), (2, "incremental")]
    assert status["versions"][0]["reasons"] == []  # a full retrain has no drift decision


def test_a_retrain_version_shows_its_own_reason(store, due_store):
    data = due_store.parent / "data"
    run_full_retrain(data, store, contract.list_partitions(data)[1], config=TINY, reason=AGE_REASON)
    status = store_status(store)
    head = status["versions"][-1]
    assert head["kind"] == "full_retrain" and head["retrain_reason"] == AGE_REASON
    assert _notes(format_status(status)) == f"retrained: {AGE_REASON}"
    assert status["versions"][0]["retrain_reason"] == "manual"


def test_status_counts_the_rows_each_version_quarantined(store, due_store, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(due_store.parent / "data", data)
    day = contract.list_partitions(data)[2]
    noon = int(dt.datetime.combine(day, dt.time(12), dt.timezone.utc).timestamp())
    bad = pa.table({"user_id": pa.array([None, "u-x"], pa.string()), "item_id": ["i-x", None],
                    "timestamp": pa.array([noon, noon], pa.int64())})
    pq.write_table(bad, data / "interactions" / f"date={day.isoformat()}" / "bad-rows.parquet")
    run_incremental_step(data, store, config=TINY)
    status = store_status(store)
    assert [v["quarantined"] for v in status["versions"]] == [0, 0, 2] and status["quarantined_rows"] == 2
    text = format_status(status)
    assert "2 input rows quarantined in all" in text
    assert text.splitlines()[-1].split()[12] == "2"  # the quar. column of the new version
    assert pq.read_table(Store(store).version_dir(3) / "quarantine.parquet").num_rows == 2
