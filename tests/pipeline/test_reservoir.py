"""Specification of the replay reservoir (pipeline/reservoir.py)."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from accrete.pipeline.errors import DataContractError, StoreError
from accrete.pipeline.reservoir import RESERVOIR_SCHEMA, ReplayReservoir


def interactions(start: int, stop: int) -> pa.Table:
    """Interactions numbered start..stop-1; the number is the timestamp, so each row is identifiable."""
    t = np.arange(start, stop, dtype=np.int64)
    return pa.table(
        {
            "user_id": pa.array([f"u{i % 7}" for i in t], pa.string()),
            "item_id": pa.array([f"i{i}" for i in t], pa.string()),
            "timestamp": pa.array(t, pa.int64()),
            "rating": pa.array((t % 5 + 1).astype(np.float32) / 2, pa.float32()),
            "weight": pa.array((t % 3 + 1).astype(np.float32), pa.float32()),
        }
    )


def test_rows_without_a_weight_are_held_with_weight_one(tmp_path):
    """Tables, and reservoir files saved, before the contract had `weight`."""
    reservoir = ReplayReservoir(capacity=10, seed=3)
    reservoir.add(interactions(0, 4).drop_columns(["weight"]))
    assert reservoir.table().column("weight").to_pylist() == [1.0] * 4
    old = reservoir.table().drop_columns(["weight"]).replace_schema_metadata(
        {b"accrete.reservoir": b'{"format": 1, "capacity": 10, "seed": 3, "n_seen": 4}'})
    pq.write_table(old, tmp_path / "old.parquet")
    assert ReplayReservoir.load(tmp_path / "old.parquet").table().equals(reservoir.table())


def held_numbers(reservoir: ReplayReservoir) -> np.ndarray:
    return reservoir.table().column("timestamp").to_numpy()


def test_fills_up_to_capacity_then_stays_there():
    reservoir = ReplayReservoir(capacity=10, seed=3)
    reservoir.add(interactions(0, 4))
    assert (reservoir.size, reservoir.n_seen) == (4, 4)
    np.testing.assert_array_equal(held_numbers(reservoir), [0, 1, 2, 3])
    reservoir.add(interactions(4, 9))
    assert (reservoir.size, reservoir.n_seen) == (9, 9)
    reservoir.add(interactions(9, 40))
    assert (reservoir.size, reservoir.n_seen) == (10, 40)
    reservoir.add(interactions(40, 1000))
    assert (reservoir.size, reservoir.n_seen) == (10, 1000)
    numbers = held_numbers(reservoir)
    assert len(set(numbers.tolist())) == 10 and numbers.min() >= 0 and numbers.max() < 1000
    # Held rows are the offered rows, unchanged.
    offered = interactions(0, 1000).take(pa.array(numbers))
    assert reservoir.table().equals(offered)
    assert reservoir.table().schema.equals(RESERVOIR_SCHEMA)


def test_a_zero_capacity_reservoir_counts_but_holds_nothing():
    reservoir = ReplayReservoir(capacity=0)
    reservoir.add(interactions(0, 50))
    assert (reservoir.size, reservoir.n_seen) == (0, 50)
    assert reservoir.sample(10, seed=1).num_rows == 0


def test_the_same_batches_give_an_identical_reservoir():
    def build(seed):
        reservoir = ReplayReservoir(capacity=25, seed=seed)
        for start, stop in ((0, 10), (10, 200), (200, 230), (230, 900)):
            reservoir.add(interactions(start, stop))
        return reservoir

    assert build(7).table().equals(build(7).table())
    assert not np.array_equal(held_numbers(build(7)), held_numbers(build(8)))


def test_the_reservoir_does_not_depend_on_how_the_rows_are_batched():
    one_batch = ReplayReservoir(capacity=25, seed=5)
    one_batch.add(interactions(0, 600))
    uneven = ReplayReservoir(capacity=25, seed=5)
    for start, stop in ((0, 3), (3, 25), (25, 26), (26, 101), (101, 102), (102, 600)):
        uneven.add(interactions(start, stop))
    one_at_a_time = ReplayReservoir(capacity=25, seed=5)
    for start in range(600):
        one_at_a_time.add(interactions(start, start + 1))
    assert uneven.table().equals(one_batch.table())
    assert one_at_a_time.table().equals(one_batch.table())


def test_every_interaction_is_kept_with_probability_capacity_over_n():
    # Over many independent seeds, item t's inclusion count is Binomial(S, p), p = capacity / N. The
    # counts sum to S * capacity, so X = sum (c_t - S p)^2 / (S p (1 - p)) ~ N / (N - 1) * chi2(N - 1).
    n_items, capacity, n_runs = 24, 6, 2500
    rows = interactions(0, n_items)
    counts = np.zeros(n_items)
    for seed in range(n_runs):
        reservoir = ReplayReservoir(capacity, seed=seed)
        for start, length in ((0, 3), (3, 10), (13, 11)):  # crosses the fill boundary mid-batch
            reservoir.add(rows.slice(start, length))
        counts[held_numbers(reservoir)] += 1
    p = capacity / n_items
    statistic = ((counts - n_runs * p) ** 2).sum() / (n_runs * p * (1 - p))
    scale = n_items / (n_items - 1)
    assert scale * stats.chi2.ppf(1e-4, n_items - 1) < statistic < scale * stats.chi2.ppf(1 - 1e-4, n_items - 1)
    # The rows that filled the empty slots, and the latest rows, are kept at the same rate as any
    # (an off-by-one in j ~ U{0..t} shows up here first). Bounds: 5 standard errors of a group mean.
    expected, spread = n_runs * p, np.sqrt(n_runs * p * (1 - p))
    for group in (counts[:capacity], counts[-capacity:]):
        assert abs(group.mean() - expected) < 5 * spread / np.sqrt(group.size)


def test_sample_draws_distinct_rows_deterministically_per_seed_and_state():
    reservoir = ReplayReservoir(capacity=50, seed=1)
    reservoir.add(interactions(0, 300))
    first = reservoir.sample(20, seed=9)
    assert first.num_rows == 20 and first.schema.equals(RESERVOIR_SCHEMA)
    numbers = first.column("timestamp").to_numpy()
    assert len(set(numbers.tolist())) == 20 and set(numbers.tolist()) <= set(held_numbers(reservoir).tolist())
    assert reservoir.sample(20, seed=9).equals(first)
    assert not reservoir.sample(20, seed=10).equals(first)
    everything = reservoir.sample(500, seed=9)
    assert sorted(everything.column("timestamp").to_pylist()) == sorted(held_numbers(reservoir).tolist())
    assert reservoir.sample(0, seed=9).num_rows == 0


def test_save_and_load_round_trip_exactly_and_continue_identically(tmp_path):
    reservoir = ReplayReservoir(capacity=40, seed=11)
    reservoir.add(interactions(0, 123))
    path = tmp_path / "reservoir.parquet"
    reservoir.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["reservoir.parquet"]  # no temporary file left behind
    loaded = ReplayReservoir.load(path)
    assert (loaded.capacity, loaded.seed, loaded.n_seen, loaded.size) == (40, 11, 123, 40)
    assert loaded.table().equals(reservoir.table())
    assert loaded.table().schema.equals(RESERVOIR_SCHEMA, check_metadata=True)
    assert loaded.sample(15, seed=4).equals(reservoir.sample(15, seed=4))
    reservoir.add(interactions(123, 400))
    loaded.add(interactions(123, 400))
    assert loaded.table().equals(reservoir.table())


def test_an_empty_reservoir_round_trips(tmp_path):
    path = tmp_path / "empty.parquet"
    ReplayReservoir(capacity=5, seed=2).save(path)
    loaded = ReplayReservoir.load(path)
    assert (loaded.capacity, loaded.seed, loaded.n_seen, loaded.size) == (5, 2, 0, 0)


def test_a_damaged_or_missing_file_is_a_store_error_naming_it(tmp_path):
    missing = tmp_path / "missing.parquet"
    with pytest.raises(StoreError, match="missing.parquet"):
        ReplayReservoir.load(missing)

    reservoir = ReplayReservoir(capacity=30, seed=0)
    reservoir.add(interactions(0, 100))
    good = tmp_path / "good.parquet"
    reservoir.save(good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StoreError, match="truncated.parquet"):
        ReplayReservoir.load(truncated)

    no_metadata = tmp_path / "plain.parquet"
    pq.write_table(interactions(0, 30), no_metadata)
    with pytest.raises(StoreError, match="plain.parquet.*metadata"):
        ReplayReservoir.load(no_metadata)

    table = pq.read_table(good)
    inconsistent = tmp_path / "inconsistent.parquet"
    pq.write_table(table.slice(0, 29), inconsistent)  # keeps the metadata, loses a row
    with pytest.raises(StoreError, match="inconsistent.parquet.*29 rows"):
        ReplayReservoir.load(inconsistent)

    wrong_column = tmp_path / "wrong_column.parquet"
    pq.write_table(table.drop_columns(["rating"]), wrong_column)
    with pytest.raises(StoreError, match="wrong_column.parquet.*rating"):
        ReplayReservoir.load(wrong_column)


def test_input_breaking_the_contract_is_a_data_contract_error_naming_the_column():
    reservoir = ReplayReservoir(capacity=5)
    with pytest.raises(DataContractError, match="item_id"):
        reservoir.add(interactions(0, 3).drop_columns(["item_id"]))
    bad_type = interactions(0, 3).set_column(2, "timestamp", pa.array(["a", "b", "c"]))
    with pytest.raises(DataContractError, match="timestamp"):
        reservoir.add(bad_type)
    with_null = interactions(0, 3).set_column(0, "user_id", pa.array(["u", None, "v"]))
    with pytest.raises(DataContractError, match="user_id.*null"):
        reservoir.add(with_null)
    assert (reservoir.n_seen, reservoir.size) == (0, 0)


def test_castable_types_and_extra_columns_are_accepted():
    table = interactions(0, 4)
    table = table.set_column(3, "rating", table.column("rating").cast(pa.float64()))
    table = table.append_column("source", pa.array(["x"] * 4))
    reservoir = ReplayReservoir(capacity=10)
    reservoir.add(table)
    assert reservoir.table().schema.equals(RESERVOIR_SCHEMA) and reservoir.size == 4
