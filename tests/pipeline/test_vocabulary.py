"""Specification of `pipeline.vocabulary`: append-only rows, OOV row 0, persistence and compaction."""
import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accrete.pipeline.errors import VocabularyError
from accrete.pipeline.vocabulary import Vocabulary, carry_rows

D0 = datetime.date(2024, 1, 1)
ids_strategy = st.lists(st.text(alphabet="abcdefgh", min_size=0, max_size=4) | st.none(), max_size=30)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_empty_vocabulary_holds_only_the_oov_row():
    vocab = Vocabulary.empty("item")
    assert len(vocab) == 1
    assert vocab.ids.to_pylist() == [None]
    assert np.isnat(vocab.created[0])
    assert vocab.lookup(["anything", None, ""]).tolist() == [0, 0, 0]


def test_extend_appends_unseen_ids_sorted_and_deduplicated_whatever_the_input_order():
    a, b = Vocabulary.empty("user"), Vocabulary.empty("user")
    rows_a = a.extend(["c", "a", "b", "a", None, ""], D0)
    rows_b = b.extend(pa.array(["b", "c", "a"]), D0)
    assert rows_a.tolist() == [1, 2, 3] and rows_b.tolist() == [1, 2, 3]
    assert a.ids.to_pylist() == [None, "a", "b", "c"] == b.ids.to_pylist()
    assert a.extend(["b", "a"], D0).tolist() == []
    assert a.extend(["d", "a"], D0 + datetime.timedelta(days=1)).tolist() == [4]
    assert a.created[1:].tolist() == [D0, D0, D0, D0 + datetime.timedelta(days=1)]


def test_integer_and_dictionary_encoded_ids_are_looked_up_as_strings():
    vocab = Vocabulary.empty("item")
    vocab.extend(np.array([10, 2, 33]), D0)
    assert vocab.ids.to_pylist() == [None, "10", "2", "33"]
    assert vocab.lookup(pa.array([33, 10, 5])).tolist() == [3, 1, 0]
    encoded = pa.array(["33", None, "2", "zz", "33"]).dictionary_encode()
    assert vocab.lookup(encoded).tolist() == [3, 0, 2, 0, 3]
    assert vocab.lookup(pa.chunked_array([encoded, encoded])).tolist() == [3, 0, 2, 0, 3] * 2
    vocab.extend(pa.chunked_array([pa.array(["b", "a", "b"]).dictionary_encode()]), D0)
    assert vocab.ids.to_pylist()[4:] == ["a", "b"]


def test_float_ids_are_rejected():
    with pytest.raises(VocabularyError, match="strings or integers"):
        Vocabulary.empty("item").lookup(np.array([1.5, 2.0]))


@SETTINGS
@given(batches=st.lists(ids_strategy, min_size=1, max_size=6))
def test_any_sequence_of_extends_keeps_every_earlier_row_and_every_id_finds_its_row(batches):
    vocab = Vocabulary.empty("item")
    seen: dict[str, int] = {}
    for day, batch in enumerate(batches):
        before = vocab.ids.to_pylist()
        new_rows = vocab.extend(batch, D0 + datetime.timedelta(days=day))
        assert vocab.ids.to_pylist()[: len(before)] == before
        expected_new = sorted({x for x in batch if x} - set(seen))
        assert vocab.id_of(new_rows).to_pylist() == expected_new
        for row in new_rows:
            seen[vocab.ids[int(row)].as_py()] = int(row)
        assert vocab.lookup(list(seen)).tolist() == list(seen.values())
        assert vocab.lookup(batch).tolist() == [seen.get(x, 0) if x else 0 for x in batch]
    assert len(vocab) == len(seen) + 1


@SETTINGS
@given(batches=st.lists(ids_strategy, min_size=1, max_size=4))
def test_save_load_round_trip_preserves_rows_ids_and_creation_dates(tmp_path, batches):
    vocab = Vocabulary.empty("user")
    for day, batch in enumerate(batches):
        vocab.extend(batch, D0 + datetime.timedelta(days=day))
    vocab.save(tmp_path / "users.parquet")
    loaded = Vocabulary.load(tmp_path / "users.parquet", "user")
    assert loaded == vocab
    assert loaded.ids.to_pylist() == vocab.ids.to_pylist()
    assert np.array_equal(loaded.created, vocab.created, equal_nan=True)


@SETTINGS
@given(ids=st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), max_size=25, unique=True),
       keep_seed=st.integers(0, 2**31))
def test_compaction_keeps_masked_rows_in_order_and_its_mapping_carries_their_embeddings(ids, keep_seed):
    vocab = Vocabulary.empty("item")
    vocab.extend(ids, D0)
    keep = np.random.default_rng(keep_seed).random(len(vocab)) < 0.5
    compacted, old_rows = vocab.compact(keep)
    assert old_rows[0] == 0 and np.all(np.diff(old_rows) > 0)
    assert compacted.ids.to_pylist() == vocab.id_of(old_rows).to_pylist()
    assert set(old_rows[1:]) == set(np.flatnonzero(keep[1:]) + 1)
    # mapping_from agrees with the compaction's old rows, and -1 marks IDs absent from the old vocabulary.
    assert np.array_equal(compacted.mapping_from(vocab), old_rows)
    back = vocab.mapping_from(compacted)
    assert back[0] == 0
    assert all((back[r] == -1) == (not keep[r]) for r in range(1, len(vocab)))
    old_table = np.random.default_rng(1).normal(size=(len(vocab), 3)).astype(np.float32)
    carried = carry_rows(old_table, compacted.mapping_from(vocab), np.zeros((len(compacted), 3), np.float32))
    assert np.array_equal(carried, old_table[old_rows])


def test_mapping_from_marks_new_ids_minus_one_and_carry_rows_initializes_them():
    old = Vocabulary.empty("item")
    old.extend(["a", "b", "c"], D0)
    new = Vocabulary.empty("item")
    new.extend(["c", "d", "a"], D0)  # rows: a=1, c=2, d=3
    mapping = new.mapping_from(old)
    assert mapping.tolist() == [0, 1, 3, -1]
    old_table = np.arange(8, dtype=np.float32).reshape(4, 2)
    init = np.full((4, 2), -1.0, np.float32)
    assert carry_rows(old_table, mapping, init).tolist() == [[0, 1], [2, 3], [6, 7], [-1, -1]]
    assert carry_rows(np.arange(4.0), mapping, np.zeros(4)).tolist() == [0, 1, 3, 0]
    with pytest.raises(VocabularyError, match="shape"):
        carry_rows(old_table, mapping, np.zeros((4, 3)))


def test_id_of_rejects_rows_outside_the_vocabulary():
    vocab = Vocabulary.empty("user")
    vocab.extend(["a"], D0)
    assert vocab.id_of([1, 0]).to_pylist() == ["a", None]
    with pytest.raises(VocabularyError, match="row 2"):
        vocab.id_of([2])


def _write(path, rows, ids, created):
    pq.write_table(pa.table({"row": pa.array(rows, pa.int64()), "id": pa.array(ids, pa.string()),
                             "created": pa.array(created, pa.date32())}), path)


@pytest.mark.parametrize("rows, ids, message", [
    ([0, 1, 2], [None, "a", "a"], "id 'a' appears at rows 1 and 2"),
    ([0, 1, 3], [None, "a", "b"], "row 2 is missing"),
    ([0, 1, 1], [None, "a", "b"], "row 1 appears more than once"),
    ([0, 1, 2], ["x", "a", "b"], "row 0 must be the OOV row"),
    ([0, 1, 2], [None, "a", ""], "row 2 has a null or empty id"),
])
def test_a_damaged_vocabulary_file_fails_naming_the_file_and_the_problem(tmp_path, rows, ids, message):
    path = tmp_path / "items.parquet"
    _write(path, rows, ids, [None] + [D0] * (len(rows) - 1))
    with pytest.raises(VocabularyError, match=message) as info:
        Vocabulary.load(path, "item")
    assert str(path) in str(info.value)


def test_rows_stored_out_of_order_load_in_row_order(tmp_path):
    path = tmp_path / "items.parquet"
    _write(path, [2, 0, 1], ["b", None, "a"], [D0, None, D0])
    assert Vocabulary.load(path, "item").ids.to_pylist() == [None, "a", "b"]


def test_missing_garbage_wrong_entity_or_wrong_columns_fail_clearly(tmp_path):
    with pytest.raises(VocabularyError, match="not found"):
        Vocabulary.load(tmp_path / "nope.parquet", "user")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(VocabularyError, match="garbage.parquet"):
        Vocabulary.load(garbage, "user")
    vocab = Vocabulary.empty("user")
    vocab.extend(["u1"], D0)
    vocab.save(tmp_path / "users.parquet")
    with pytest.raises(VocabularyError, match="holds a user vocabulary, expected item"):
        Vocabulary.load(tmp_path / "users.parquet", "item")
    pq.write_table(pa.table({"row": [0], "name": ["x"], "created": pa.array([None], pa.date32())}), tmp_path / "cols.parquet")
    with pytest.raises(VocabularyError, match="missing column 'id'"):
        Vocabulary.load(tmp_path / "cols.parquet", "user")
    _write(tmp_path / "nodate.parquet", [0, 1], [None, "a"], [None, None])
    with pytest.raises(VocabularyError, match="row 1 has no creation date"):
        Vocabulary.load(tmp_path / "nodate.parquet", "user")


@SETTINGS
@given(batches=st.lists(ids_strategy, min_size=1, max_size=5), dictionary=st.booleans())
def test_encode_equals_extend_then_lookup(batches, dictionary):
    by_encode, by_extend = Vocabulary.empty("item"), Vocabulary.empty("item")
    for day, batch in enumerate(batches):
        arr = pa.array(batch, pa.string())
        if dictionary:
            arr = arr.dictionary_encode()
        created = D0 + datetime.timedelta(days=day)
        rows = by_encode.encode(arr, created)
        by_extend.extend(arr, created)
        assert rows.tolist() == by_extend.lookup(arr).tolist()
        assert by_encode == by_extend
