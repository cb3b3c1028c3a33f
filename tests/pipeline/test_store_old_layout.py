"""A store written before parts existed (`tests/fixtures/main_store`: every file copied into each version) is read
as it is; the next step writes parts (its first version a full copy and the interactions by row, from the
string-ID history files), and from then on versions share bytes. Old and new versions verify, export, and gc
collects both kinds."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.exports import export_delta, read_export
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.maintenance import collect_garbage, verify_store
from accrete.pipeline.store import Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "main_store"


@pytest.fixture
def old_store(tmp_path) -> tuple[Path, Path]:
    shutil.copytree(FIXTURE, tmp_path / "main_store")
    return tmp_path / "main_store" / "data", tmp_path / "main_store" / "store"


def test_an_old_store_takes_two_steps_then_shares_bytes_and_gc_collects_both_layouts(old_store, tmp_path):
    data, store = old_store
    s = Store(store)
    assert "files" in s.manifest(3) and not (store / "segments").exists()
    old = s.load(3)
    run_incremental_step(data, store, config=AccreteConfig())
    run_incremental_step(data, store, config=AccreteConfig())
    first, second = s.manifest(4)["parts"], s.manifest(5)["parts"]
    # The first new version copies the old one once; the next shares its segments.
    assert len(first["item_vectors"]["segments"]) == 1
    assert second["item_vectors"]["segments"][0] == first["item_vectors"]["segments"][0]
    assert second["history/base"] == first["history/base"] and "history/date=2024-01-05" in second
    new = s.load(4)
    frozen = s.manifest(4)["rows"]["item_trainable_from"]
    assert new.item_vectors[:frozen].tobytes() == old.item_vectors[:frozen].tobytes()
    assert verify_store(store).ok

    # The interactions by row equal the string-ID history of all five partitions, mapped to rows.
    state = s.load()
    history = s.read_history(state.partitions)
    users, items = state.user_vocab.lookup(history["user_id"]), state.item_vocab.lookup(history["item_id"])
    rows = np.arange(1, len(state.user_vocab))
    found = s.user_interactions(rows)
    assert sorted(zip(found["user_row"].to_pylist(), found["item_row"].to_pylist())) == \
        sorted(zip(users.tolist(), items.tolist()))

    delta = export_delta(store, tmp_path / "delta.parquet", since=3)  # an old version against a new one
    assert delta["item"]["added"] > 0 and read_export(delta["out"]).num_rows == delta["rows"]
    summary = collect_garbage(store, keep=1)
    assert summary["removed"] == [1, 2, 3] and summary["kept"] == [4, 5]
    assert sorted(p.name for p in (store / "versions").iterdir()) == ["v000004", "v000005"]
    assert verify_store(store).ok
    assert s.load().item_vectors.tobytes() == state.item_vectors.tobytes()
