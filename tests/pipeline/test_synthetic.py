"""Specification of the synthetic world (`pipeline.synthetic.generate_world`)."""
import datetime
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from accrete.pipeline.contract import data_frequency, list_partitions, read_partition
from accrete.pipeline.errors import DataContractError
from accrete.pipeline.synthetic import generate_world

SMALL = dict(initial_users=300, initial_items=200, new_users_per_day=10, new_items_per_day=5,
             interactions_per_day=3000, initial_interactions=6000, dim=4, categories=5)
START = datetime.date(2024, 1, 1)


def item_counts(data_dir, dates) -> dict[str, int]:
    ids = pa.chunked_array([read_partition(data_dir, d).interactions.column("item_id") for d in dates])
    counts = pc.value_counts(ids)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def popularity_psi(reference: dict[str, int], current: dict[str, int], bins: int = 10, floor: float = 1e-4) -> float:
    """PSI of the current item distribution vs the reference, over equal-mass bins of reference items.

    Reference items sorted by count are cut into `bins` groups of equal interaction mass; items absent from the
    reference are ignored. PSI = sum (q - p) ln(q / p), shares floored at `floor`.
    """
    items = sorted(reference, key=lambda k: -reference[k])
    mass = np.array([reference[k] for k in items], float)
    bin_of = np.minimum((np.cumsum(mass) / mass.sum() * bins - 1e-9).astype(int), bins - 1)
    p = np.bincount(bin_of, weights=mass, minlength=bins) / mass.sum()
    index = dict(zip(items, bin_of))
    known = [(index[k], v) for k, v in current.items() if k in index]
    q = np.bincount([b for b, _ in known], weights=[v for _, v in known], minlength=bins)
    p, q = np.maximum(p, floor), np.maximum(q / q.sum(), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def test_the_world_is_contract_valid_with_the_announced_counts(tmp_path):
    summary = generate_world(tmp_path, days=4, seed=3, **SMALL)
    dates = list_partitions(tmp_path)
    assert dates == [START + datetime.timedelta(days=d) for d in range(5)]
    assert data_frequency(tmp_path) == "day"
    parts = [read_partition(tmp_path, d) for d in dates]
    assert all(p.quarantine.num_rows == 0 for p in parts)
    assert [p.interactions.num_rows for p in parts] == [6000, 3000, 3000, 3000, 3000]
    assert [p.users.num_rows for p in parts] == [300, 10, 10, 10, 10]
    assert [p.items.num_rows for p in parts] == [200, 5, 5, 5, 5]
    assert summary["interactions"] == 18000 and summary["users"] == 340 and summary["items"] == 220
    assert parts[0].users.column_names == ["user_id", "segment"]
    assert parts[0].items.column_names == ["item_id", "category"]
    meta = json.loads((tmp_path / "_accrete.json").read_text())
    assert meta["params"]["seed"] == 3 and meta["partitions"] == 5
    json.dumps(summary)


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path):
    generate_world(tmp_path / "a", days=2, seed=7, **SMALL)
    generate_world(tmp_path / "b", days=2, seed=7, **SMALL)
    generate_world(tmp_path / "c", days=2, seed=8, **SMALL)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert len(files) == 3 * 3 + 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    first = "interactions/date=2024-01-02/part-0.parquet"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_entities_appear_on_their_arrival_day_and_interactions_use_only_existing_ones(tmp_path):
    generate_world(tmp_path, days=6, seed=1, **SMALL)
    arrival_user, arrival_item = {}, {}
    for date in list_partitions(tmp_path):
        part = read_partition(tmp_path, date)
        arrival_user |= {u: date for u in part.users.column("user_id").to_pylist()}
        arrival_item |= {i: date for i in part.items.column("item_id").to_pylist()}
        users = set(part.interactions.column("user_id").to_pylist())
        items = part.interactions.column("item_id").to_pylist()
        assert all(arrival_user[u] <= date for u in users)
        assert all(arrival_item[i] <= date for i in items)
        if date > START:
            todays = {i for i, d in arrival_item.items() if d == date}
            share = np.mean([i in todays for i in items])
            assert 0.04 < share < 0.15, (date, share)


def test_without_a_shift_item_popularity_is_stationary_and_a_shift_makes_it_drift(tmp_path):
    # Catalogue and traffic proportioned like the defaults (a tiny catalogue lets one late blockbuster move PSI).
    common = dict(days=16, seed=5, initial_users=800, initial_items=600, new_users_per_day=20, new_items_per_day=9,
                  interactions_per_day=5000, initial_interactions=10000, dim=4, categories=6)
    generate_world(tmp_path / "still", **common)
    generate_world(tmp_path / "shift", shift_day=14, **common)
    dates = list_partitions(tmp_path / "still")
    for day in (14, 15, 16):
        still = popularity_psi(item_counts(tmp_path / "still", dates[day - 14:day]),
                               item_counts(tmp_path / "still", [dates[day]]))
        drifted = popularity_psi(item_counts(tmp_path / "shift", dates[day - 14:14]),
                                 item_counts(tmp_path / "shift", [dates[day]]))
        assert still < 0.05 and drifted > 0.25, (day, still, drifted)
    # Before the shift the two worlds are the same bytes.
    day = "interactions/date=2024-01-14/part-0.parquet"
    assert (tmp_path / "still" / day).read_bytes() == (tmp_path / "shift" / day).read_bytes()


def test_truth_factors_explain_choices_and_the_shift_makes_old_tastes_useless(tmp_path):
    generate_world(tmp_path, days=6, seed=2, shift_day=4, **SMALL)
    users = pq.read_table(tmp_path / "_truth" / "user_factors.parquet").to_pandas()
    items = pq.read_table(tmp_path / "_truth" / "item_factors.parquet").to_pandas()
    assert set(users.regime) == {0, 1} and len(users) == 2 * 360 and len(items) == 2 * 230
    factor_cols = [f"f{k}" for k in range(4)]

    def mean_rank_percentile(regime: int, date: datetime.date) -> float:
        """Average percentile of the chosen item among existing items, scored by a regime's truth."""
        u = users[users.regime == regime].set_index("user_id")
        i = items[(items.regime == regime) & (items.created <= date)].set_index("item_id")
        part = read_partition(tmp_path, date).interactions.to_pandas()
        scores = u.loc[part.user_id, factor_cols].to_numpy() @ i[factor_cols].to_numpy().T \
            + i.log_popularity.to_numpy()[None, :]
        chosen = scores[np.arange(len(part)), i.index.get_indexer(part.item_id)]
        return float(np.mean((scores < chosen[:, None]).mean(axis=1)))

    before, after = START + datetime.timedelta(days=3), START + datetime.timedelta(days=5)
    assert mean_rank_percentile(0, before) > 0.85
    assert mean_rank_percentile(1, after) > 0.85
    assert mean_rank_percentile(0, after) < 0.7


def test_item_factors_cluster_by_category(tmp_path):
    generate_world(tmp_path, days=1, seed=4, **SMALL)
    items = pq.read_table(tmp_path / "_truth" / "item_factors.parquet").to_pandas()
    factors = items[[f"f{k}" for k in range(4)]].to_numpy()
    centroids = items.groupby("category")[[f"f{k}" for k in range(4)]].transform("mean").to_numpy()
    within = np.sum((factors - centroids) ** 2)
    total = np.sum((factors - factors.mean(axis=0)) ** 2)
    assert within / total < 0.35


def test_ratings_are_stars_that_rise_with_affinity(tmp_path):
    generate_world(tmp_path, days=1, seed=6, with_ratings=True, **SMALL)
    part = read_partition(tmp_path, START)
    assert part.has_ratings and part.quarantine.num_rows == 0
    ratings = part.interactions.column("rating").to_numpy()
    assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0} and len(np.unique(ratings)) >= 4
    users = pq.read_table(tmp_path / "_truth" / "user_factors.parquet").to_pandas().set_index("user_id")
    items = pq.read_table(tmp_path / "_truth" / "item_factors.parquet").to_pandas().set_index("item_id")
    cols = [f"f{k}" for k in range(4)]
    table = part.interactions.to_pandas()
    affinity = np.einsum("ij,ij->i", users.loc[table.user_id, cols].to_numpy(), items.loc[table.item_id, cols].to_numpy())
    assert np.corrcoef(affinity, ratings)[0, 1] > 0.5


def test_a_non_empty_output_directory_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataContractError, match="not empty"):
        generate_world(tmp_path, days=1, **SMALL)
    generate_world(tmp_path, days=1, overwrite=True, **SMALL)
    generate_world(tmp_path, days=0, overwrite=True, **SMALL)
    assert list_partitions(tmp_path) == [START]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(DataContractError, match="shift_day"):
        generate_world(tmp_path / "x", days=3, shift_day=9)
