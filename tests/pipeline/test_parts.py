"""`pipeline.parts`: a part written on top of its previous version stores only what changed, reads back exactly,
and a chain is consolidated before loading it would cost more than about two full copies."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from accrete.pipeline import parts
from accrete.pipeline.parts import Segments


def _segments(tmp_path) -> Segments:
    return Segments(tmp_path / "store")


def test_an_array_with_scattered_changed_rows_and_appended_rows_is_a_patch_of_exactly_those_rows(tmp_path):
    segments = _segments(tmp_path)
    rng = np.random.default_rng(0)
    old = rng.normal(size=(1000, 16)).astype(np.float32)
    first = parts.write_array(segments, old, None)
    new = np.concatenate([old, rng.normal(size=(5, 16)).astype(np.float32)])
    moved = np.array([3, 250, 999])
    new[moved] += 1.0
    new[10, 0] = -0.0 if old[10, 0] == 0.0 else old[10, 0]  # unchanged bytes stay out of the patch
    record = parts.write_array(segments, new, (first, old))
    assert record["segments"][0] == first["segments"][0] and len(record["segments"]) == 2
    with np.load(segments.path(record["segments"][1])) as patch:
        assert patch["rows"].tolist() == moved.tolist() and patch["tail"].shape == (5, 16)
        assert patch["values"].tobytes() == new[moved].tobytes()
    assert parts.read_array(segments, record, "test").tobytes() == new.tobytes()
    assert record["sha256"] == parts.array_digest(new)


def test_an_unchanged_array_reuses_its_segments_and_writes_nothing(tmp_path):
    segments = _segments(tmp_path)
    array = np.arange(20, dtype=np.int64)
    first = parts.write_array(segments, array, None)
    written = segments.written_bytes
    again = parts.write_array(segments, array.copy(), (first, array))
    assert again == first and segments.written_bytes == written


def test_a_patch_larger_than_half_a_copy_and_a_heavy_or_long_chain_are_written_as_a_fresh_base(tmp_path):
    segments = _segments(tmp_path)
    array = np.zeros((100, 4), np.float32)
    record = parts.write_array(segments, array, None)
    everything = array + 1.0  # a full retrain moves every row
    assert parts.write_array(segments, everything, (record, array))["segments"] == \
        [parts.write_array(_segments(tmp_path / "other"), everything, None)["segments"][0]]
    current, chains = array, []
    for step in range(200):  # a few rows a night: patches until the chain outweighs its base
        new = current.copy()
        new[step % 100] += 1.0
        record = parts.write_array(segments, new, (record, current))
        chains.append(len(record["segments"]))
        current = new
        patch_bytes = sum(segments.size(key) for key in record["segments"][1:])
        assert patch_bytes <= parts.CHAIN_WEIGHT * current.nbytes + 2_000  # + one patch's zip overhead
        assert len(record["segments"]) <= parts.MAX_CHAIN
    assert 1 in chains[1:] and max(chains) > 1
    assert parts.read_array(segments, record, "test").tobytes() == current.tobytes()


def test_a_table_that_keeps_its_rows_stores_only_its_new_rows_and_a_changed_prefix_is_a_fresh_base(tmp_path):
    segments = _segments(tmp_path)
    old = pa.table({"row": pa.array([0, 1, 2], pa.int64()), "id": pa.array([None, "a", "b"], pa.string())})
    first = parts.write_table(segments, old, None)
    grown = pa.concat_tables([old, pa.table({"row": pa.array([3], pa.int64()), "id": ["c"]})])
    record = parts.write_table(segments, grown, (first, old))
    assert record["segments"][0] == first["segments"][0] and len(record["segments"]) == 2
    assert parts.read_table(segments, record, "test").equals(grown)
    compacted = pa.table({"row": pa.array([0, 1], pa.int64()), "id": pa.array([None, "b"], pa.string())})
    assert len(parts.write_table(segments, compacted, (record, grown))["segments"]) == 1
    assert parts.table_digest(grown) == parts.table_digest(pa.concat_tables([grown.slice(0, 2), grown.slice(2)]))
    assert parts.table_digest(grown) != parts.table_digest(old)


def test_interactions_are_found_by_user_row_without_a_scan(tmp_path):
    segments = _segments(tmp_path)
    rng = np.random.default_rng(1)
    users = rng.integers(1, 50, 2000).astype(np.int32)
    table = pa.table({"user_row": users, "item_row": rng.integers(1, 90, 2000).astype(np.int32),
                      "timestamp": rng.integers(0, 10**6, 2000)})
    record = parts.write_interactions(segments, table, date="2024-01-01")
    mapped = parts.map_interactions(segments, record, "test")
    wanted = np.array([2, 7, 49])
    found = mapped.take(pa.array(parts.rows_of_users(mapped, wanted)))
    expected = np.isin(users, wanted)
    assert found.num_rows == int(expected.sum())
    assert sorted(found["timestamp"].to_pylist()) == sorted(table["timestamp"].to_numpy()[expected].tolist())
    assert (np.diff(found["user_row"].to_numpy()) >= 0).all()
    assert parts.rows_of_users(mapped, np.array([0, 1000])).size == 0
