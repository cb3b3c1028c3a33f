"""The default nightly path (user_policy = profile): item rows byte-identical, only the night's users move (their
profiles), new items solved against the queries, new users get a profile, and every reader scores by cosine."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accrete.pipeline import contract, profiles, scoring
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.recommend import recommend, scorer
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

# young_item_periods = 1: an item's row freezes after its first night, so the kept profiles equal a rebuild (a
# longer window re-solves young items later, after profiles took in their earlier vectors: see the last test).
CONFIG = AccreteConfig().replace(model={"dim": 8, "ials_iterations": 5, "recency_weight_candidates": (),
                                        "young_item_periods": 1})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("profile-world") / "data"
    generate_world(data, days=4, seed=7, initial_users=250, initial_items=150, new_users_per_day=10,
                   new_items_per_day=6, interactions_per_day=600, initial_interactions=5000)
    return data


@pytest.fixture(scope="module")
def store(world, tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("profile-store") / "store"
    run_full_retrain(world, root, contract.list_partitions(world)[0], config=CONFIG)
    run_incremental_step(world, root, config=CONFIG)
    run_incremental_step(world, root, config=CONFIG)
    return Store(root)


def _night(world, store: Store, version: int) -> pa.Table:
    date = store.manifest(version)["partition"]
    return contract.read_partition(world, __import__("datetime").date.fromisoformat(date), "day").interactions


def test_the_default_generation_scores_profiles_by_cosine(store):
    retrain = store.manifest(1)
    assert retrain["objective"] == "ials" and retrain["scoring"] == "cosine"
    assert retrain["recency"]["profile_half_life_days"] == CONFIG.model.profile_half_life_days
    state = store.load(1)
    norms = np.linalg.norm(state.user_vectors[1:], axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-5)  # queries are unit vectors
    assert set(profiles.to_reference(profiles.from_version(state.user_vectors, state.reference))) <= set(state.reference)
    assert all(store.manifest(v)["scoring"] == "cosine" for v in (2, 3))


def test_item_rows_stay_byte_identical_and_only_the_nights_users_move(world, store):
    for version in (2, 3):
        before, after = store.load(version - 1), store.load(version)
        assert after.item_vectors[:len(before.item_vectors)].tobytes() == before.item_vectors.tobytes()
        night = _night(world, store, version)
        active = np.unique(after.user_vocab.lookup(night["user_id"]))
        n_old = len(before.user_vectors)
        moved = np.flatnonzero((after.user_vectors[:n_old] != before.user_vectors).any(axis=1))
        assert set(moved) <= set(active) and len(moved) > 0
        new_users = np.arange(n_old, len(after.user_vectors))
        norms = np.linalg.norm(after.user_vectors[new_users], axis=1)
        np.testing.assert_allclose(norms[np.isin(new_users, active)], 1.0, atol=1e-5)  # those who interacted
        assert (norms[~np.isin(new_users, active)] == 0).all()  # announced only: no profile yet
        training = after.manifest["training"]
        assert training["users_profiled"] == len(set(active) - {0}) and 0 < training["user_cosine_shift"] < 1


def test_the_kept_profile_state_equals_profiles_built_from_the_whole_history(world, store):
    state = store.load(3)
    history = store.read_history(state.partitions)
    users = state.user_vocab.lookup(history["user_id"])
    items = state.item_vocab.lookup(history["item_id"])
    anchor = float(np.datetime64(state.manifest["recency"]["anchor"], "s").astype(np.int64))
    rebuilt = profiles.build(len(state.user_vocab), users, items, history["timestamp"].to_numpy().astype(float),
                             state.item_vectors, anchor_s=anchor,
                             half_life_days=state.manifest["recency"]["profile_half_life_days"])
    np.testing.assert_allclose(state.user_vectors, rebuilt.queries, atol=1e-5)
    np.testing.assert_allclose(state.reference[profiles.GRAM], rebuilt.gram, atol=1e-4)


def test_recommend_and_the_evaluation_share_the_cosine_score(world, store):
    state = store.load()
    user_id = _night(world, store, 3)["user_id"][0].as_py()
    row = int(state.user_vocab.lookup([user_id])[0])
    expected = scoring.of_tables("cosine", state.user_vectors, state.item_vectors, state.item_bias).scores(np.array([row]))[0]
    np.testing.assert_array_equal(scorer(state)(np.array([row]))[0], expected)
    for entry in recommend(store.root, user_id, k=5):
        assert entry["score"] == pytest.approx(float(expected[entry["row"]]), rel=1e-5)


def test_the_step_records_young_items_and_the_popularity_control(store):
    metrics = store.manifest(3)["metrics"]
    for key in ("recall@10/control", "ndcg@10/control", "lift@10", "recall@10/young_items",
                "recall@10/young_items/control"):
        assert key in metrics
    assert metrics["lift@10"] == pytest.approx(metrics["recall@10"] / metrics["recall@10/control"])


def test_items_only_the_nights_interactions_announce_are_not_candidates(world, tmp_path):
    """A partition whose new items are announced in items/ ranks them; one that only names them in interactions
    does not (ranking them would read the answer from the data): the same night, with and without items/. (No
    popularity term, which would bury items without history on this taste-driven world.)"""
    config = CONFIG.replace(model={"recency_weight": 0.0})
    data = tmp_path / "data"
    shutil.copytree(world, data)
    dates = contract.list_partitions(data)
    for directory in (data / "items" / f"date={dates[1]}").glob("*.parquet"):
        directory.unlink()
    pq.write_table(pa.table({"item_id": pa.array([], pa.string())}), data / "items" / f"date={dates[1]}" / "x.parquet")
    run_full_retrain(data, tmp_path / "s", dates[0], config=config)
    silent = run_incremental_step(data, tmp_path / "s", config=config).manifest["metrics"]
    run_full_retrain(world, tmp_path / "t", dates[0], config=config)
    announced = run_incremental_step(world, tmp_path / "t", config=config).manifest["metrics"]
    assert silent["recall@10/new_items"] == 0.0
    assert announced["recall@10/new_items"] > 0.0


def test_young_items_are_re_solved_from_all_their_interactions_then_frozen(world, tmp_path):
    config = CONFIG.replace(model={"young_item_periods": 2})
    dates = contract.list_partitions(world)
    run_full_retrain(world, tmp_path / "s", dates[0], config=config)
    store = Store(tmp_path / "s")
    for _ in range(3):
        run_incremental_step(world, tmp_path / "s", config=config)
    for version in (3, 4):
        before, after = store.load(version - 1), store.load(version)
        frozen_from = after.manifest["rows"]["item_trainable_from"]
        assert frozen_from == before.manifest["rows"]["item"] - before.manifest["rows"]["item_new"]  # yesterday's
        assert after.item_vectors[:frozen_from].tobytes() == before.item_vectors[:frozen_from].tobytes()
        young = profiles.YoungInteractions.from_reference(after.reference)
        assert (young.items >= frozen_from).all() and len(young.items) > 0
        # Yesterday's items that got interactions tonight moved: re-solved from both nights.
        tonight = np.unique(after.item_vocab.lookup(_night(world, store, version)["item_id"]))
        yesterdays = tonight[(tonight >= frozen_from) & (tonight < len(before.item_vectors))]
        moved = (after.item_vectors[yesterdays] != before.item_vectors[yesterdays]).any(axis=1)
        assert moved.all() and len(yesterdays) > 0
