"""Any rating scale works without configuration: a full retrain learns the drift histogram's edges from its data."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

CONFIG = AccreteConfig().replace(model={"dim": 8})


def _rescale(data, factor: float, *, dates=None) -> None:
    """Multiply every rating of the given partitions (all by default) by `factor`, in place."""
    for path in sorted((data / "interactions").glob("date=*/*.parquet")):
        if dates is None or path.parent.name[5:] in dates:
            table = pq.read_table(path)
            column = table.schema.get_field_index("rating")
            pq.write_table(table.set_column(column, "rating", pc.multiply(table["rating"], pa.scalar(factor, pa.float32()))),
                           path)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def ten_point_world(tmp_path):
    data = tmp_path / "data"
    generate_world(data, days=3, seed=2, initial_users=150, initial_items=80, new_users_per_day=4, new_items_per_day=2,
                   interactions_per_day=400, initial_interactions=2000, with_ratings=True)
    _rescale(data, 2.0)  # the generator's 0.5..5 half stars become 1..10
    return data


def test_a_1_to_10_scale_is_learned_at_the_retrain_and_measured_every_night(ten_point_world, tmp_path):
    dates, store = contract.list_partitions(ten_point_world), tmp_path / "store"
    run_full_retrain(ten_point_world, store, dates[0], config=CONFIG)
    edges = Store(store).load().reference["rating_edges"]
    assert edges[0] >= 0.0 and edges[-1] > 10.0  # covers 10, unlike the default 0.25..5.25
    step = run_incremental_step(ten_point_world, store, dates[1], config=CONFIG)
    assert math.isfinite(step.manifest["drift"]["metrics"]["rating_js_divergence"])
    np.testing.assert_array_equal(Store(store).load().reference["rating_edges"], edges)  # kept for the generation


def test_ratings_outside_the_learned_scale_are_quarantined_with_a_warning_naming_the_fix(ten_point_world, tmp_path):
    dates, store = contract.list_partitions(ten_point_world), tmp_path / "store"
    run_full_retrain(ten_point_world, store, dates[0], config=CONFIG)
    _rescale(ten_point_world, 10.0, dates={dates[1].isoformat()})  # now 10..100: all but the 10s off the scale
    edges = Store(store).load().reference["rating_edges"]
    ratings = pq.read_table(ten_point_world / "interactions" / f"date={dates[1]}")["rating"].to_numpy()
    off_scale = int((ratings > edges[-1]).sum())
    assert off_scale > 0
    before = _digest(store)
    step = run_incremental_step(ten_point_world, store, dates[1], config=CONFIG)
    assert step.manifest["ingest"]["quarantined"] == {"rating_outside_scale": off_scale}
    assert [w for w in step.manifest["warnings"] if "outside the scale" in w] == [
        f"{off_scale:,} rating(s) of partition {dates[1]} outside the scale [{edges[0]:g}, {edges[-1]:g}] learned at the last full "
        f"retrain were quarantined; if the rating scale changed, run `accrete retrain` (it learns the scale from the "
        f"data), or set drift.rating_edges"]
    assert {k: v for k, v in _digest(store).items() if k in before and k != "CURRENT"} == {
        k: v for k, v in before.items() if k != "CURRENT"}  # nothing stored before was touched
    run_full_retrain(ten_point_world, store, dates[1], config=CONFIG)  # the documented fix: learn the new scale
    assert Store(store).load().reference["rating_edges"][-1] > 100.0
