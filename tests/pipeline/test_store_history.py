"""User-addressable history: `Store.user_interactions` returns exactly what reading all of history and keeping the
given users returns, from the retrain's base plus one segment per partition since, and `upto` cuts by partition."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from accrete.pipeline.errors import StoreError
from accrete.pipeline.store import Store


def _pairs(table: pa.Table) -> list[tuple[int, int, int]]:
    return sorted(zip(table["user_row"].to_pylist(), table["item_row"].to_pylist(), table["timestamp"].to_pylist()))


def _from_all_history(store: Store, version: int, dates, rows: np.ndarray, by: str = "user") -> pa.Table:
    """The slow, obvious answer: every partition's string-ID history, mapped to the version's rows, filtered."""
    state = store.load(version)
    history = store.read_history(dates)
    users = state.user_vocab.lookup(history["user_id"])
    items = state.item_vocab.lookup(history["item_id"])
    keep = np.isin(users if by == "user" else items, rows) & (users > 0) & (items > 0)
    return pa.table({"user_row": users[keep], "item_row": items[keep],
                     "timestamp": history["timestamp"].to_numpy()[keep]})


def test_user_interactions_equal_all_of_history_filtered_to_those_users(gen_store):
    s = Store(gen_store)
    state = s.load()
    names = sorted(s.history_parts())
    # The bootstrap's base, then one segment per partition since (the v4 retrain kept every row: it built on them).
    assert names == ["history/base", *(f"history/date={d.isoformat()}" for d in state.partitions[1:])]
    rows = np.array([1, 5, 17, 200, len(state.user_vocab) - 1, len(state.user_vocab) - 1])
    found = s.user_interactions(rows)
    assert found.num_rows > 0 and found.column_names[:3] == ["user_row", "item_row", "timestamp"]
    assert found["user_row"].type == pa.int64() and (np.diff(found["user_row"].to_numpy()) >= 0).all()
    assert _pairs(found) == _pairs(_from_all_history(s, 6, state.partitions, rows))
    assert s.user_interactions([]).num_rows == 0


def test_upto_keeps_the_partitions_up_to_a_date_inside_the_base_too(gen_store, gen_dates):
    s = Store(gen_store)
    rows = np.arange(1, 60)
    for upto in (gen_dates[1], gen_dates[2], gen_dates[3]):
        expected = _from_all_history(s, 6, [d for d in gen_dates[:5] if d <= upto], rows)
        assert _pairs(s.user_interactions(rows, upto=upto)) == _pairs(expected)


def test_item_interactions_equal_all_of_history_filtered_to_those_items(gen_store):
    s = Store(gen_store)
    rows = np.array([2, 3, 150])
    assert _pairs(s.item_interactions(rows)) == _pairs(_from_all_history(s, 6, s.load().partitions, rows, by="item"))


def test_an_older_version_answers_in_its_own_rows(gen_store):
    s = Store(gen_store)
    rows = np.array([4, 9])
    assert _pairs(s.user_interactions(rows, version=2)) == _pairs(_from_all_history(s, 2, s.load(2).partitions, rows))


def test_a_store_written_before_row_addressed_history_says_what_to_do(tmp_path):
    import shutil
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "main_store" / "store"
    shutil.copytree(fixture, tmp_path / "store")
    with pytest.raises(StoreError, match="written before row-addressed history; the next step or retrain adds it"):
        Store(tmp_path / "store").user_interactions([1])


def test_a_retrain_that_renumbers_rows_writes_a_fresh_base_in_its_new_rows(gen_store, gen_world, gen_dates):
    from accrete.pipeline.retrain import run_full_retrain

    from tests.pipeline.conftest import IALS_SMALL

    s = Store(gen_store)
    result = run_full_retrain(gen_world, gen_store, gen_dates[5], config=IALS_SMALL.replace(retrain={"compact_inactive_days": 2}))
    manifest = s.manifest(result.version)
    assert manifest["compaction"]["user"]["dropped"] > 0
    assert sorted(s.history_parts()) == ["history/base"]
    assert manifest["parts"]["history/base"]["until"] == gen_dates[5].isoformat()
    state = s.load()
    rows = np.arange(1, len(state.user_vocab))
    assert _pairs(s.user_interactions(rows)) == _pairs(_from_all_history(s, result.version, state.partitions, rows))
