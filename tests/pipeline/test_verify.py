"""`verify_store`: every kind of damage is found and named (version, file); crash leftovers are not damage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from accrete.pipeline.errors import StoreError
from accrete.pipeline.maintenance import verify_store
from accrete.pipeline import parts
from accrete.pipeline.store import Store


@pytest.fixture
def store(gen_store):
    return gen_store


def _flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _only_problem(store) -> str:
    report = verify_store(store)
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def test_an_intact_store_verifies_and_says_what_it_checked(store):
    report = verify_store(store)
    assert report.ok, report.problems
    assert (report.current, report.versions, report.drift_records) == (6, 6, 4)
    assert report.history_files == 5 + 1  # five consumed partitions and the bootstrap's consolidated base
    assert report.summary().startswith(f"store {store}: OK (6 version(s), CURRENT v000006")


def test_a_corrupted_table_is_named_by_segment_part_and_version(store):
    segment = Store(store).part_segments(3, "item_vectors")[-1]  # v3's own patch (v4 is a full retrain)
    _flip_last_byte(segment)
    problem = _only_problem(store)
    assert problem == f"{segment}: checksum mismatch (part item_vectors of version 3)"


def test_a_missing_segment_is_named_for_every_version_that_uses_it_and_a_damaged_manifest_too(store):
    segment = Store(store).part_segments(2, "item_vectors")[-1]  # v2's patch; v3's chain starts with it
    assert segment in Store(store).part_segments(3, "item_vectors")
    segment.unlink()
    (store / "versions" / "v000005" / "manifest.json").write_text("{ not json")
    problems = verify_store(store).problems
    assert len(problems) == 3, problems
    assert problems[0] == f"{segment}: missing (part item_vectors of version 2)"
    assert problems[1] == f"{segment}: missing (part item_vectors of version 3)"
    assert problems[2].startswith(f"{store / 'versions' / 'v000005' / 'manifest.json'}: damaged manifest")


def test_frozen_rows_rewritten_with_consistent_checksums_are_caught_by_the_frozen_block_check(store):
    """A table rewritten together with its manifest's checksums (a bug, or a hand edit) passes the segment and
    content checks; the frozen-block checksums (the manifest's, and the parent's rows) still catch it."""
    s = Store(store)
    directory = store / "versions" / "v000006"
    vectors = s.read_array(6, "item_vectors")
    vectors[1, 0] += 1.0  # row 1 is frozen in every incremental step
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["parts"]["item_vectors"] = parts.write_array(s.segments, vectors, None)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    Store(store).load()  # the per-part check alone is satisfied
    problems = verify_store(store).problems
    assert len(problems) == 2, problems
    assert "does not match the manifest's frozen_checksum" in problems[0]
    assert "frozen item rows" in problems[1] and "differ from parent version 5's" in problems[1]
    assert all(p.startswith(str(directory / "part item_vectors")) for p in problems)


def test_a_segment_chain_that_rebuilds_other_content_than_the_manifest_says_is_named(store):
    s = Store(store)
    path = store / "versions" / "v000006" / "manifest.json"
    manifest = json.loads(path.read_text())
    chain = manifest["parts"]["item_vectors"]["segments"]
    assert len(chain) > 1  # a base and the steps' patches of new rows
    manifest["parts"]["item_vectors"]["segments"] = chain[:-1]
    path.write_text(json.dumps(manifest))
    problem = _only_problem(store)
    assert problem.startswith(f"{s.version_dir(6)}: part item_vectors: its segments hold ")


@pytest.mark.parametrize("text, fragment", [("v000009\n", "points at v000009, which does not exist"),
                                            ("garbage\n", "damaged pointer 'garbage'")])
def test_a_damaged_current_pointer_is_named(store, text, fragment):
    (store / "CURRENT").write_text(text)
    problem = _only_problem(store)
    assert problem.startswith(f"{store / 'CURRENT'}: ") and fragment in problem


def test_missing_current_with_versions_present_is_damage_and_an_empty_directory_is_not_a_store(store, tmp_path):
    (store / "CURRENT").unlink()
    assert "CURRENT: missing (6 version directories exist)" in _only_problem(store)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a store"):
        verify_store(tmp_path / "empty")


def test_damaged_history_and_drift_log_are_named(store):
    (store / "history" / "date=2024-01-04.parquet").write_bytes(b"not parquet")
    (store / "history" / "date=2024-01-02.parquet").unlink()
    drift_file = sorted((store / "drift").glob("*.parquet"))[0]
    drift_file.write_bytes(b"PAR1 broken")
    problems = verify_store(store).problems
    assert len(problems) == 3, problems
    assert any(p.startswith(f"{store / 'history' / 'date=2024-01-02.parquet'}: missing") for p in problems)
    assert any(p.startswith(f"{store / 'history' / 'date=2024-01-04.parquet'}: unreadable history") for p in problems)
    assert any(p.startswith(f"{drift_file}: damaged drift history file") for p in problems)


def test_crash_leftovers_are_not_damage(store):
    (store / "versions" / ".tmp-v000007-123").mkdir()
    (store / "versions" / "v000007").mkdir()  # written, never made current
    (store / "versions" / ".trash-v000001-9").mkdir()
    (store / "drift" / ".2024-01-09_v000007.parquet.abc.tmp").write_bytes(b"partial")
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.leftovers == [".tmp-v000007-123", ".trash-v000001-9", "v000007"]
    assert "3 crash leftover(s) the next run removes" in report.summary()


def test_a_run_refuses_to_build_on_a_damaged_current_version(store, gen_world):
    from accrete.pipeline.incremental import run_incremental_step

    from tests.pipeline.conftest import IALS_SMALL

    segment = Store(store).part_segments(6, "user_vectors")[-1]
    _flip_last_byte(segment)
    with pytest.raises(StoreError, match=f"{segment.name}: checksum mismatch \\(part user_vectors of version 6\\), "
                                         f"version 6 is damaged"):
        run_incremental_step(gen_world, store, config=IALS_SMALL)
    assert Store(store).current_version() == 6 and not (store / "LOCK").exists()


def test_a_damaged_current_manifest_is_named_not_raised(store):
    (store / "versions" / "v000006" / "manifest.json").write_text("{ not json")
    problem = _only_problem(store)
    assert problem.startswith(f"{store / 'versions' / 'v000006' / 'manifest.json'}: damaged manifest")
