"""Specification of the data contract (`pipeline.contract`), with real Parquet files in tmp_path."""
import datetime
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accrete.pipeline import contract
from accrete.pipeline.contract import (
    QUARANTINE_SCHEMA, data_frequency, item_attribute_tokens, list_partitions, period_end, read_partition,
)
from accrete.pipeline.errors import DataContractError

DAY = datetime.date(2024, 3, 1)
T0 = int(datetime.datetime(2024, 3, 1, tzinfo=datetime.timezone.utc).timestamp())


def write(data_dir, entity, day, table, name="part-0.parquet"):
    directory = data_dir / entity / f"date={day.isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(table, dict):
        table = pa.table(table)
    pq.write_table(table, directory / name)
    return directory / name


def interactions(**overrides):
    base = {"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i3"], "timestamp": [T0, T0 + 60, T0 + 3600]}
    return {**base, **overrides}


def reasons(partition):
    return partition.quarantine.column("reason").to_pylist()


def test_a_clean_partition_reads_into_the_documented_schemas(tmp_path):
    write(tmp_path, "interactions", DAY, interactions(rating=[4.0, 3.5, 5.0]))
    write(tmp_path, "users", DAY, {"user_id": ["u1", "u2"], "age": [31, 40]})
    write(tmp_path, "items", DAY, {"item_id": ["i1"], "category": ["books"]})
    part = read_partition(tmp_path, DAY)
    assert part.interactions.schema == contract.INTERACTIONS_SCHEMA
    assert part.interactions.column("timestamp").to_pylist() == [T0, T0 + 60, T0 + 3600]
    assert part.interactions.column("rating").to_pylist() == [4.0, 3.5, 5.0]
    assert part.has_ratings
    assert part.users.column_names == ["user_id", "age"] and part.users.num_rows == 2
    assert part.items.column("category").to_pylist() == ["books"]
    assert part.quarantine.schema == QUARANTINE_SCHEMA and part.quarantine.num_rows == 0
    assert part.report["rows_read"] == {"interactions": 3, "users": 2, "items": 1}
    assert part.report["rows_kept"] == {"interactions": 3, "users": 2, "items": 1}
    json.dumps(part.report)


def test_implicit_feedback_gets_rating_one(tmp_path):
    write(tmp_path, "interactions", DAY, interactions())
    part = read_partition(tmp_path, DAY)
    assert not part.has_ratings
    assert part.interactions.column("rating").to_pylist() == [1.0, 1.0, 1.0]
    assert part.interactions.column("weight").to_pylist() == [1.0, 1.0, 1.0]


def test_integer_ids_are_read_as_strings(tmp_path):
    write(tmp_path, "interactions", DAY, interactions(user_id=[1, 2, 3], item_id=pa.array([10, 20, 30], pa.int32())))
    write(tmp_path, "items", DAY, {"item_id": [10, 20]})
    part = read_partition(tmp_path, DAY)
    assert part.interactions.column("user_id").to_pylist() == ["1", "2", "3"]
    assert part.interactions.column("item_id").to_pylist() == ["10", "20", "30"]
    assert part.items.column("item_id").type == pa.string()


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris"])
def test_parquet_timestamps_of_any_unit_and_timezone_become_epoch_seconds(tmp_path, unit, tz):
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    stamps = pa.array([T0 * per_second, (T0 + 90) * per_second + per_second // 2], pa.timestamp(unit, tz=tz))
    write(tmp_path, "interactions", DAY, {"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": stamps})
    assert read_partition(tmp_path, DAY).interactions.column("timestamp").to_pylist() == [T0, T0 + 90]


def test_a_missing_required_column_names_the_file_and_column(tmp_path):
    path = write(tmp_path, "interactions", DAY, {"user_id": ["a"], "timestamp": [T0]})
    with pytest.raises(DataContractError, match="missing required column 'item_id'") as info:
        read_partition(tmp_path, DAY)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("column, values", [
    ("timestamp", ["2024-03-01 10:00:00"] * 3),
    ("rating", ["4", "5", "3"]),
    ("user_id", [1.5, 2.5, 3.5]),
])
def test_a_column_of_a_type_that_cannot_be_coerced_names_the_file_and_column(tmp_path, column, values):
    path = write(tmp_path, "interactions", DAY, interactions(**{column: values}))
    with pytest.raises(DataContractError, match=f"column '{column}' has type") as info:
        read_partition(tmp_path, DAY)
    assert str(path) in str(info.value)


def test_a_corrupt_parquet_file_names_the_file(tmp_path):
    write(tmp_path, "interactions", DAY, interactions())
    bad = tmp_path / "interactions" / f"date={DAY}" / "part-1.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataContractError, match="unreadable Parquet file") as info:
        read_partition(tmp_path, DAY)
    assert str(bad) in str(info.value)


def test_a_truncated_parquet_file_names_the_file(tmp_path):
    path = write(tmp_path, "items", DAY, {"item_id": [f"i{k}" for k in range(1000)]})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataContractError, match=str(path)):
        read_partition(tmp_path, DAY)


def test_null_and_empty_ids_are_quarantined_with_file_and_row(tmp_path):
    path = write(tmp_path, "interactions", DAY,
                 interactions(user_id=["u1", None, "u3"], item_id=["i1", "i2", ""]))
    part = read_partition(tmp_path, DAY)
    assert part.interactions.column("user_id").to_pylist() == ["u1"]
    q = part.quarantine.to_pylist()
    assert [(r["reason"], r["row"], r["user_id"], r["item_id"]) for r in q] == [
        ("missing_id", 1, None, "i2"), ("missing_id", 2, "u3", "")]
    assert {r["file"] for r in q} == {path.relative_to(tmp_path).as_posix()}
    assert {r["entity"] for r in q} == {"interactions"}


def test_timestamps_before_or_after_the_period_are_quarantined(tmp_path):
    write(tmp_path, "interactions", DAY, interactions(timestamp=[T0 - 1, T0 + 86_399, T0 + 86_400]))
    part = read_partition(tmp_path, DAY)
    assert part.interactions.column("timestamp").to_pylist() == [T0 + 86_399]
    assert reasons(part) == ["timestamp_outside_period"] * 2
    assert part.quarantine.column("timestamp").to_pylist() == [str(T0 - 1), str(T0 + 86_400)]


def test_null_timestamps_are_quarantined(tmp_path):
    write(tmp_path, "interactions", DAY, interactions(timestamp=pa.array([T0, None, T0], pa.int64())))
    assert reasons(read_partition(tmp_path, DAY)) == ["null_timestamp"]


def test_non_finite_or_null_ratings_are_quarantined(tmp_path):
    write(tmp_path, "interactions", DAY,
          {"user_id": list("abcde"), "item_id": list("vwxyz"), "timestamp": [T0] * 5,
           "rating": [4.0, float("nan"), float("inf"), None, 1e300]})
    part = read_partition(tmp_path, DAY)
    assert part.interactions.column("user_id").to_pylist() == ["a"]
    assert reasons(part) == ["non_finite_rating", "non_finite_rating", "null_rating", "non_finite_rating"]
    assert part.quarantine.column("rating").to_pylist()[:2] == ["nan", "inf"]


def test_exact_duplicate_ratings_keep_the_first_even_across_files(tmp_path):
    write(tmp_path, "interactions", DAY,
          interactions(user_id=["a", "a", "a"], item_id=["x", "x", "x"], timestamp=[T0, T0, T0 + 1], rating=[4.0] * 3))
    write(tmp_path, "interactions", DAY, interactions(user_id=["a"], item_id=["x"], timestamp=[T0], rating=[4.0]),
          name="part-1.parquet")
    part = read_partition(tmp_path, DAY)
    assert part.interactions.column("timestamp").to_pylist() == [T0, T0 + 1]
    q = part.quarantine.to_pylist()
    assert [(r["reason"], r["file"].rsplit("/", 1)[1], r["row"]) for r in q] == [
        ("duplicate_row", "part-0.parquet", 1), ("duplicate_row", "part-1.parquet", 0)]
    assert part.report["aggregated"] == {"interactions": 0}


def test_implicit_lines_of_one_user_item_and_time_are_aggregated_with_their_weights_summed(tmp_path):
    write(tmp_path, "interactions", DAY,
          {"user_id": ["a", "b", "a", "a"], "item_id": ["x", "x", "x", "x"], "timestamp": [T0, T0, T0, T0 + 1],
           "weight": [2.0, 1.0, 3.5, 1.0]})
    write(tmp_path, "interactions", DAY, {"user_id": ["a"], "item_id": ["x"], "timestamp": [T0]},
          name="part-1.parquet")  # no weight column: weight 1
    part = read_partition(tmp_path, DAY)
    rows = part.interactions.select(["user_id", "timestamp", "weight"]).to_pylist()
    assert rows == [{"user_id": "a", "timestamp": T0, "weight": 6.5}, {"user_id": "b", "timestamp": T0, "weight": 1.0},
                    {"user_id": "a", "timestamp": T0 + 1, "weight": 1.0}]
    assert part.quarantine.num_rows == 0
    assert part.report["aggregated"] == {"interactions": 2}
    assert part.report["rows_read"]["interactions"] == part.report["rows_kept"]["interactions"] + 2


def test_aggregation_is_exact_on_many_lines(tmp_path):
    rng = np.random.default_rng(1)
    n = 20_000
    users, items = rng.integers(0, 300, n), rng.integers(0, 50, n)
    stamps, weights = T0 + rng.integers(0, 5, n), rng.integers(1, 10, n).astype(np.float32)
    write(tmp_path, "interactions", DAY, {"user_id": users.astype(str), "item_id": items.astype(str),
                                          "timestamp": stamps, "weight": weights})
    part = read_partition(tmp_path, DAY)
    expected = pa.table({"u": users.astype(str), "i": items.astype(str), "t": stamps, "w": weights.astype(np.float64)}) \
        .group_by(["u", "i", "t"]).aggregate([("w", "sum")])
    got = part.interactions
    assert got.num_rows == expected.num_rows
    assert part.report["aggregated"]["interactions"] == n - expected.num_rows
    assert float(np.sum(got["weight"].to_numpy(), dtype=np.float64)) == float(weights.sum(dtype=np.float64))
    key = pa.table({"u": got["user_id"], "i": got["item_id"], "t": got["timestamp"], "w": got["weight"].cast(pa.float64())})
    joined = key.join(expected, ["u", "i", "t"])
    assert joined.num_rows == got.num_rows and np.array_equal(joined["w"].to_numpy(), joined["w_sum"].to_numpy())


def test_weights_default_to_one_and_bad_weights_are_quarantined(tmp_path):
    write(tmp_path, "interactions", DAY,
          {"user_id": list("abcdefg"), "item_id": list("vwxyzst"), "timestamp": [T0] * 7,
           "weight": [2.5, 0.0, -1.0, float("nan"), float("inf"), None, 1e300]})
    part = read_partition(tmp_path, DAY)
    assert part.interactions.schema == contract.INTERACTIONS_SCHEMA
    assert part.interactions.column("weight").to_pylist() == [2.5]
    assert reasons(part) == ["invalid_weight"] * 6
    assert part.quarantine.column("weight").to_pylist()[:2] == ["0", "-1"]
    assert part.report["quarantined"] == {"invalid_weight": 6}


def test_a_string_weight_column_is_a_file_error(tmp_path):
    path = write(tmp_path, "interactions", DAY, interactions(weight=["1", "2", "3"]))
    with pytest.raises(DataContractError, match=f"{path}: column 'weight' has type string"):
        read_partition(tmp_path, DAY)


def test_with_weight_adds_the_default_only_when_missing():
    table = pa.table({"user_id": ["a"], "weight": pa.array([3.0], pa.float32())})
    assert contract.with_weight(table) is table
    added = contract.with_weight(table.drop_columns(["weight"]))
    assert added.column("weight").type == pa.float32() and added.column("weight").to_pylist() == [1.0]


def test_rows_differing_only_in_rating_are_not_duplicates(tmp_path):
    write(tmp_path, "interactions", DAY,
          {"user_id": ["a", "a"], "item_id": ["x", "x"], "timestamp": [T0, T0], "rating": [4.0, 5.0]})
    assert read_partition(tmp_path, DAY).interactions.num_rows == 2


def test_duplicate_detection_is_exact_even_when_every_hash_collides(monkeypatch):
    rng = np.random.default_rng(0)
    columns = [rng.integers(0, 5, 400), rng.integers(0, 5, 400), rng.integers(0, 3, 400)]
    stacked = np.stack(columns, axis=1)
    _, first = np.unique(stacked, axis=0, return_index=True)
    expected = np.ones(400, bool)
    expected[first] = False
    assert np.array_equal(contract._later_duplicates(columns), expected)
    monkeypatch.setattr(contract, "_row_hash", lambda cols: (cols[0] % 2).astype(np.uint64))
    assert np.array_equal(contract._later_duplicates(columns), expected)


def test_users_and_items_with_missing_or_repeated_ids_are_quarantined_keeping_the_first(tmp_path):
    write(tmp_path, "users", DAY, {"user_id": ["u1", None, "u1", "u2"], "segment": ["a", "b", "c", "d"]})
    write(tmp_path, "items", DAY, {"item_id": ["", "i1"], "category": ["x", "y"]})
    part = read_partition(tmp_path, DAY)
    assert part.users.to_pydict() == {"user_id": ["u1", "u2"], "segment": ["a", "d"]}
    assert part.items.column("item_id").to_pylist() == ["i1"]
    assert [(r["entity"], r["reason"], r["row"]) for r in part.quarantine.to_pylist()] == [
        ("users", "missing_id", 1), ("users", "duplicate_id", 2), ("items", "missing_id", 0)]
    assert part.report["quarantined"] == {"missing_id": 2, "duplicate_id": 1}


def test_an_items_only_partition_is_listed_and_read(tmp_path):
    write(tmp_path, "interactions", DAY, interactions())
    later = DAY + datetime.timedelta(days=5)
    write(tmp_path, "items", later, {"item_id": ["new"], "genres": ["Drama|Comedy"]})
    assert list_partitions(tmp_path) == [DAY, later]
    part = read_partition(tmp_path, later)
    assert part.interactions.num_rows == 0 and part.interactions.schema == contract.INTERACTIONS_SCHEMA
    assert part.users.num_rows == 0 and part.items.num_rows == 1


@pytest.mark.parametrize("name", ["2024-03-01", "date=2024-13-01", "date=yesterday"])
def test_a_badly_named_partition_dir_is_named_in_the_error(tmp_path, name):
    write(tmp_path, "interactions", DAY, interactions())
    (tmp_path / "interactions" / name).mkdir()
    with pytest.raises(DataContractError, match=name):
        list_partitions(tmp_path)


def test_hidden_and_underscore_directories_and_files_are_ignored(tmp_path):
    write(tmp_path, "interactions", DAY, interactions())
    (tmp_path / "interactions" / "_temporary").mkdir()
    (tmp_path / "interactions" / ".cache").mkdir()
    (tmp_path / "interactions" / f"date={DAY}" / "_SUCCESS").write_text("")
    (tmp_path / "_truth").mkdir()
    assert list_partitions(tmp_path) == [DAY]
    assert read_partition(tmp_path, DAY).interactions.num_rows == 3


def test_a_missing_data_dir_or_date_is_a_contract_error(tmp_path):
    with pytest.raises(DataContractError, match="nowhere"):
        list_partitions(tmp_path / "nowhere")
    with pytest.raises(DataContractError, match="nowhere"):
        read_partition(tmp_path / "nowhere", DAY)
    write(tmp_path, "interactions", DAY, interactions())
    with pytest.raises(DataContractError, match="date=2024-03-02"):
        read_partition(tmp_path, DAY + datetime.timedelta(days=1))


def test_a_file_without_rating_beside_files_with_rating_is_an_error(tmp_path):
    write(tmp_path, "interactions", DAY, interactions(rating=[1.0, 2.0, 3.0]))
    path = write(tmp_path, "interactions", DAY, interactions(), name="part-1.parquet")
    with pytest.raises(DataContractError, match=f"{path}: missing column 'rating'"):
        read_partition(tmp_path, DAY)


def test_incompatible_attribute_columns_across_files_are_an_error(tmp_path):
    write(tmp_path, "items", DAY, {"item_id": ["a"], "price": [1]})
    write(tmp_path, "items", DAY, {"item_id": ["b"], "price": ["cheap"]}, name="part-1.parquet")
    with pytest.raises(DataContractError, match="incompatible columns"):
        read_partition(tmp_path, DAY)


def test_frequency_comes_from_accrete_json_and_sets_the_period(tmp_path):
    write(tmp_path, "interactions", DAY, interactions(timestamp=[T0, T0 + 6 * 86_400, T0 + 7 * 86_400]))
    assert data_frequency(tmp_path) == "day"
    (tmp_path / "_accrete.json").write_text(json.dumps({"freq": "week", "seed": 3}))
    assert data_frequency(tmp_path) == "week"
    part = read_partition(tmp_path, DAY)
    assert part.interactions.num_rows == 2 and reasons(part) == ["timestamp_outside_period"]
    assert read_partition(tmp_path, DAY, freq="month").interactions.num_rows == 3
    (tmp_path / "_accrete.json").write_text("{broken")
    with pytest.raises(DataContractError, match="_accrete.json"):
        data_frequency(tmp_path)
    (tmp_path / "_accrete.json").write_text(json.dumps({"freq": "hourly"}))
    with pytest.raises(DataContractError, match="hourly"):
        data_frequency(tmp_path)


def test_period_end_is_exclusive_and_follows_calendar_months():
    assert period_end(datetime.date(2024, 2, 28), "day") == datetime.date(2024, 2, 29)
    assert period_end(datetime.date(2024, 1, 1), "week") == datetime.date(2024, 1, 8)
    assert period_end(datetime.date(2024, 1, 1), "month") == datetime.date(2024, 2, 1)
    assert period_end(datetime.date(2024, 12, 1), "month") == datetime.date(2025, 1, 1)
    assert period_end(datetime.date(2024, 1, 31), "month") == datetime.date(2024, 2, 29)
    with pytest.raises(DataContractError):
        period_end(DAY, "year")


def test_item_attribute_tokens_split_multi_valued_genres_and_skip_empty_values():
    items = pa.table({
        "item_id": ["m1", "m2", "m3", "m4"],
        "title": ["Heat (1995)", "Up (2009)", "X", "Y"],
        "genres": ["Action|Crime|Thriller", "(no genres listed)", None, "Comedy|Action"],
        "category": ["film", "film", "short", None],
        "year": [1995, 2009, 2000, 2001],
        "score": [1.5, 2.5, 3.5, 4.5],
    })
    ids, (item_index, tokens) = item_attribute_tokens(items)
    assert ids.to_pylist() == ["m1", "m2", "m3", "m4"]
    pairs = set(zip(item_index.tolist(), tokens.to_pylist()))
    assert pairs == {
        (0, "genres=Action"), (0, "genres=Crime"), (0, "genres=Thriller"), (0, "category=film"), (0, "year=1995"),
        (1, "category=film"), (1, "year=2009"),
        (2, "category=short"), (2, "year=2000"),
        (3, "genres=Comedy"), (3, "genres=Action"), (3, "year=2001"),
    }
    assert item_index.dtype == np.int64 and len(pairs) == len(item_index)
    _, (only_index, only_tokens) = item_attribute_tokens(items, columns=["genres"])
    assert only_tokens.to_pylist() == ["genres=Action", "genres=Crime", "genres=Thriller", "genres=Action",
                                       "genres=Comedy"]
    assert only_index.tolist() == [0, 0, 0, 3, 3]


def test_a_partition_date_may_be_given_as_an_iso_string(tmp_path):
    write(tmp_path, "interactions", DAY, interactions())
    assert read_partition(tmp_path, "2024-03-01").date == DAY
    with pytest.raises(DataContractError, match="not a date"):
        read_partition(tmp_path, "March 1st")
