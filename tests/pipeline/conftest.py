"""Fixtures of the pipeline tests shared by several modules: a small store with two generations (real
Parquet, real iALS), used by the gc and verify tests."""
from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.synthetic import generate_world

# young_item_periods = 1: item rows freeze after their first night, so each version's item chain is its parent's
# plus a patch of appended rows (the layout and verify tests follow such chains; young items: test_profile_step.py).
IALS_SMALL = AccreteConfig().replace(model={"dim": 8, "young_item_periods": 1})


@pytest.fixture(scope="module")
def gen_world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("world") / "data"
    generate_world(data, days=7, seed=5, initial_users=300, initial_items=200, new_users_per_day=10,
                   new_items_per_day=5, interactions_per_day=800, initial_interactions=6000)
    return data


@pytest.fixture(scope="module")
def gen_dates(gen_world) -> list[dt.date]:
    return contract.list_partitions(gen_world)


@pytest.fixture(scope="module")
def two_generations(gen_world, gen_dates, tmp_path_factory) -> Path:
    """v1 retrain (generation 1), v2-v3 steps, v4 retrain as of the third day (generation 2), v5-v6 steps.
    Read-only: tests copy it."""
    return build_two_generations(gen_world, tmp_path_factory.mktemp("two-generations") / "store", IALS_SMALL)


def build_two_generations(world: Path, store: Path, config: AccreteConfig) -> Path:
    """v1 retrain as of the first day, two steps, v4 retrain as of the third day, two steps."""
    dates = contract.list_partitions(world)
    for as_of in (dates[0], dates[2]):
        run_full_retrain(world, store, as_of, config=config)
        run_incremental_step(world, store, config=config)
        run_incremental_step(world, store, config=config)
    return store


@pytest.fixture
def gen_store(two_generations, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(two_generations, copy)
    return copy
