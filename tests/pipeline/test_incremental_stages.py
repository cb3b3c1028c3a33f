"""Each stage of an incremental step, called on its own on a real store and the next real partition.

The store is `tests/fixtures/main_store` (a full retrain and two iALS steps; 2024-01-04 is the next partition).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.incremental import Step, add_cold_rows, evaluate_before_training, extend_vocabularies, incremental_step, measure_drift, publish_step, read_generation_settings, run_incremental_step, sample_replay, train_new_rows, warm_start_new_rows
from accrete.pipeline.generation import rating_scale
from accrete.pipeline.store import Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "main_store"


@pytest.fixture
def paths(tmp_path) -> tuple[Path, Path]:
    shutil.copytree(FIXTURE, tmp_path / "main_store")
    return tmp_path / "main_store" / "data", tmp_path / "main_store" / "store"


def _step(data: Path, store_dir: Path, config: AccreteConfig | None = None) -> Step:
    config = config or AccreteConfig()
    store = Store(store_dir)
    state = store.load()
    date = contract.list_partitions(data)[len(state.partitions)]
    partition = contract.read_partition(data, date, "day", rating_range=rating_scale(config, state.reference))
    return Step(config, store, state, partition, state.partitions)


def _through(step: Step, *stages) -> Step:
    for stage in stages:
        stage(step)
    return step


def test_extend_vocabularies_appends_the_new_ids_after_every_old_row(paths):
    step = _step(*paths)
    old_users = step.state.user_vocab.ids.to_pylist()
    extend_vocabularies(step)
    assert step.n_old_users == len(old_users) and step.n_users > step.n_old_users
    assert step.state.user_vocab.ids.to_pylist()[:len(old_users)] == old_users
    assert len(step.users) == step.partition.interactions.num_rows and (step.users > 0).all()
    assert step.items.max() < step.n_items and step.incidence is not None
    assert step.incidence.shape[0] == step.n_items


def test_add_cold_rows_grows_every_table_and_leaves_old_rows_bit_identical(paths):
    step = _step(*paths)
    before = {name: getattr(step.state, name).copy() for name in ("user_vectors", "item_vectors", "item_bias")}
    _through(step, extend_vocabularies, add_cold_rows)
    assert step.state.user_vectors.shape[0] == step.n_users and step.state.item_vectors.shape[0] == step.n_items
    assert step.state.item_bias.shape == (step.n_items,)
    for name, old in before.items():
        assert getattr(step.state, name)[:len(old)].tobytes() == old.tobytes()
    assert np.isfinite(step.state.item_vectors[step.n_old_items:]).all()


def test_read_generation_settings_takes_the_objective_and_time_aware_term_of_the_generation(paths):
    step = _through(_step(*paths), extend_vocabularies, add_cold_rows, read_generation_settings)
    assert step.objective == step.parent["objective"] == "ials"
    assert step.recency == step.parent["recency"] and step.log_counts is not None
    # The fixture store was written before user profiles: it keeps scoring its solved user vectors (and says so).
    assert step.scoring == "dot" and len(step.warnings) == 1 and "user_policy = 'profile'" in step.warnings[0]
    assert _through(_step(*paths, AccreteConfig().replace(model={"user_policy": "refold_active"})),
                    extend_vocabularies, add_cold_rows, read_generation_settings).warnings == []
    changed = _through(_step(*paths, AccreteConfig().replace(model={"dim": 8})), extend_vocabularies, add_cold_rows,
                       read_generation_settings)
    assert any("dim" in warning for warning in changed.warnings)


def test_evaluate_before_training_scores_the_partition_without_moving_a_row(paths):
    step = _through(_step(*paths), extend_vocabularies, add_cold_rows, read_generation_settings)
    vectors = step.state.item_vectors.copy()
    evaluate_before_training(step)
    assert 0.0 <= step.metrics["recall@10"] <= 1.0 and step.metrics["users"] > 0
    assert "recall@10/new_items" in step.metrics and "recall@10/young_items" in step.metrics
    assert step.state.item_vectors.tobytes() == vectors.tobytes()
    assert len(step.history_users) == len(step.history_items) > 0


def test_sample_replay_draws_only_for_the_sgd_objectives(paths):
    step = _through(_step(*paths), extend_vocabularies, add_cold_rows, read_generation_settings)
    sample_replay(step)
    assert len(step.replay_users) == 0  # iALS solves from the partition and the history
    sgd = dataclasses.replace(step, objective="rating", config=step.config.replace(train={"replay_ratio": 0.5}))
    sample_replay(sgd)
    assert len(sgd.replay_users) == round(0.5 * len(step.users)) == len(sgd.replay_items) == len(sgd.replay_ratings)


def test_warm_start_leaves_ials_rows_to_the_solver_and_folds_in_sgd_rows(paths):
    step = _through(_step(*paths), extend_vocabularies, add_cold_rows, read_generation_settings)
    cold = step.state.item_vectors.copy()
    warm_start_new_rows(step)
    assert step.state.item_vectors.tobytes() == cold.tobytes()
    sgd = dataclasses.replace(step, objective="rating")
    warm_start_new_rows(sgd)
    assert sgd.state.item_vectors[:step.n_old_items].tobytes() == cold[:step.n_old_items].tobytes()
    assert not np.array_equal(sgd.state.item_vectors[step.n_old_items:], cold[step.n_old_items:])


def test_train_new_rows_keeps_the_frozen_item_block_and_records_its_checksum(paths):
    step = _through(_step(*paths), extend_vocabularies, add_cold_rows, read_generation_settings,
                    evaluate_before_training, sample_replay, warm_start_new_rows)
    before = step.state.item_vectors.copy()
    train_new_rows(step)
    frozen = step.item_from
    assert 0 < frozen <= step.n_old_items
    assert step.state.item_vectors[:frozen].tobytes() == before[:frozen].tobytes()
    assert not np.array_equal(step.state.item_vectors[step.n_old_items:], before[step.n_old_items:])
    assert set(step.frozen_checksum) == {"item"}  # refold_active users move by design
    assert step.training["examples_new"] == len(step.users) and step.training["items_folded_in"] > 0


def test_measure_drift_decides_and_carries_the_counters_on(paths):
    step = _through(_step(*paths), extend_vocabularies, add_cold_rows, read_generation_settings,
                    evaluate_before_training, sample_replay, warm_start_new_rows, train_new_rows)
    seen_before = step.state.reservoir.n_seen
    parent_state = step.parent["drift_state"]
    measure_drift(step)
    assert step.verdict is not None and step.verdict.retrain is False
    assert step.drift_state["interactions_total"] == parent_state["interactions_total"] + len(step.users)
    assert len(step.drift_state["recall_history"]) == len(parent_state["recall_history"]) + 1
    assert step.state.reservoir.n_seen == seen_before + step.partition.interactions.num_rows
    assert step.state.reference["item_counts"].sum() == step.parent["drift_state"]["interactions_total"] + len(step.users)
    assert set(step.drift_metrics) >= {"psi_item_popularity", "recall_at_10"}


def test_publish_step_publishes_the_next_version_and_the_stages_equal_a_nightly_run(paths, tmp_path):
    data, store_dir = paths
    step = _through(_step(data, store_dir), extend_vocabularies, add_cold_rows, read_generation_settings,
                    evaluate_before_training, sample_replay, warm_start_new_rows, train_new_rows, measure_drift)
    result = publish_step(step)
    store = Store(store_dir)
    assert (result.kind, result.version, store.current_version()) == ("incremental", 4, 4)
    assert store.read_manifest().partition == step.date.isoformat()

    shutil.copytree(FIXTURE, tmp_path / "again")
    nightly = run_incremental_step(tmp_path / "again" / "data", tmp_path / "again" / "store", config=AccreteConfig())
    staged, whole = store.load(4), Store(tmp_path / "again" / "store").load(nightly.version)
    for name in ("user_vectors", "item_vectors", "user_bias", "item_bias"):
        assert getattr(staged, name).tobytes() == getattr(whole, name).tobytes(), name
    assert staged.manifest["metrics"] == whole.manifest["metrics"]


def test_incremental_step_runs_the_stages_in_order_and_times_each(paths):
    step = _step(*paths)
    result = incremental_step(step)
    assert result.version == 4
    assert {"vocabulary", "evaluate", "initialize", "train", "drift", "total", "publish"} <= set(step.timings)
