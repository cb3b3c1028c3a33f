"""The incremental step and the full retrain, on a real synthetic world, real Parquet and real training."""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import PartitionOrderError, StoreError
from accrete.pipeline.exports import export_delta, export_version, read_export
from accrete.pipeline.faults import ENV_VAR, InjectedFault
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step, sync_drift_history
from accrete.pipeline.tables import trainable_boundary
from accrete.pipeline.store import Store, sha256_of_array
from accrete.pipeline.synthetic import generate_world

# The SGD path (TFRS, frozen-tail tables); the default iALS path is tested in test_ials_step.py.
SMALL = AccreteConfig().replace(model={"dim": 8, "objective": "auto"},
                                train={"epochs": 1, "retrain_epochs": 2, "batch_size": 256})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("world") / "data"
    generate_world(data, days=6, seed=3, initial_users=300, initial_items=200, new_users_per_day=10,
                   new_items_per_day=5, interactions_per_day=800, initial_interactions=6000)
    return data


@pytest.fixture(scope="module")
def dates(world) -> list[dt.date]:
    return contract.list_partitions(world)


@pytest.fixture(scope="module")
def bootstrapped(world, dates, tmp_path_factory) -> Path:
    """A store after the first full retrain and two incremental steps (read-only for tests: copy it)."""
    store = tmp_path_factory.mktemp("boot") / "store"
    run_full_retrain(world, store, dates[0], config=SMALL)
    run_incremental_step(world, store, config=SMALL)
    run_incremental_step(world, store, config=SMALL)
    return store


@pytest.fixture
def store(bootstrapped, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(bootstrapped, copy)
    return copy


def test_the_first_version_is_a_full_retrain_of_generation_one(bootstrapped, dates):
    manifest = Store(bootstrapped).manifest(1)
    assert manifest["kind"] == "full_retrain" and manifest["generation"] == 1
    assert manifest["partitions"] == [dates[0].isoformat()]


def test_an_empty_store_asks_for_a_retrain_first(world, tmp_path):
    with pytest.raises(StoreError, match="retrain"):
        run_incremental_step(world, tmp_path / "empty", config=SMALL)


def test_incremental_step_keeps_frozen_rows_bit_identical_and_appends_new_rows(bootstrapped):
    store = Store(bootstrapped)
    before, after = store.load(2), store.load(3)
    rows = after.manifest["rows"]
    assert rows["item_trainable_from"] == len(before.item_vocab)  # warmup_days=0: only today's rows train
    assert sha256_of_array(after.item_vectors[:len(before.item_vectors)]) == sha256_of_array(before.item_vectors)
    assert sha256_of_array(after.user_vectors[:len(before.user_vectors)]) == sha256_of_array(before.user_vectors)
    assert rows["item_new"] > 0 and len(after.item_vectors) == len(before.item_vectors) + rows["item_new"]
    assert after.manifest["parent"] == 2 and after.manifest["generation"] == 1
    assert after.manifest["frozen_checksum"]["item"] == sha256_of_array(before.item_vectors)


def test_new_rows_are_trained_after_their_initialization(world, store):
    state = Store(store).load()
    new = slice(state.manifest["rows"]["item_trainable_from"], None)
    # Trained rows differ from the zeros/constant a failed step would leave, and the step logged training.
    assert state.manifest["training"]["examples_new"] > 0
    assert state.manifest["training"]["examples_replayed"] > 0
    assert np.linalg.norm(state.item_vectors[new], axis=1).min() > 0


def test_prequential_metrics_are_recorded_before_training(bootstrapped):
    metrics = Store(bootstrapped).manifest(2)["metrics"]
    for key in ("recall@10", "ndcg@10", "recall@50", "recall@10/existing", "recall@10/new_items",
                "coverage@10", "new_item_exposure@10", "new_item_interaction_share"):
        assert key in metrics
    assert 0.0 <= metrics["recall@10"] <= metrics["recall@50"] <= 1.0


def test_rerunning_an_applied_partition_changes_nothing(world, store, dates):
    before = sorted(p.name for p in (store / "versions").iterdir())
    result = run_incremental_step(world, store, dates[2], config=SMALL)
    assert result.kind == "skipped"
    assert sorted(p.name for p in (store / "versions").iterdir()) == before


def test_force_redoes_the_latest_step_from_its_parent(world, store, dates):
    result = run_incremental_step(world, store, dates[2], config=SMALL, force=True)
    assert result.kind == "incremental" and result.version == 4
    assert result.manifest["parent"] == 2
    with pytest.raises(PartitionOrderError, match="latest"):
        run_incremental_step(world, store, dates[1], config=SMALL, force=True)
    # --force without a date redoes the latest step.
    again = run_incremental_step(world, store, config=SMALL, force=True)
    assert again.kind == "incremental" and again.date == dates[2] and again.version == 5


def test_a_partition_before_an_unapplied_earlier_one_is_rejected(world, store, dates):
    with pytest.raises(PartitionOrderError, match=str(dates[3])):
        run_incremental_step(world, store, dates[4], config=SMALL)


def test_a_missing_partition_is_a_clear_error(world, store):
    with pytest.raises(PartitionOrderError, match="no partition"):
        run_incremental_step(world, store, dt.date(2099, 1, 1), config=SMALL)


@pytest.mark.parametrize("point", ["publish:files-written", "publish:before-rename", "publish:before-pointer"])
def test_a_crash_during_publish_leaves_the_previous_version_current_and_a_rerun_completes(
        world, store, dates, point, monkeypatch):
    previous = Store(store).current_version()
    monkeypatch.setenv(ENV_VAR, point)
    with pytest.raises(InjectedFault):
        run_incremental_step(world, store, config=SMALL)
    assert Store(store).current_version() == previous
    Store(store).load(verify=True)  # still readable and intact
    assert not (store / "LOCK").exists()
    monkeypatch.delenv(ENV_VAR)
    result = run_incremental_step(world, store, config=SMALL)
    assert result.kind == "incremental" and result.version == previous + 1 and result.date == dates[3]
    assert not [p for p in (store / "versions").iterdir() if p.name.startswith(".tmp")]
    assert Store(store).manifest()["partitions"].count(dates[3].isoformat()) == 1


def test_a_crash_after_the_pointer_switch_keeps_the_new_version_and_history_is_resynced(
        world, store, dates, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "publish:after-pointer")
    with pytest.raises(InjectedFault):
        run_incremental_step(world, store, config=SMALL)
    monkeypatch.delenv(ENV_VAR)
    assert Store(store).manifest()["partition"] == dates[3].isoformat()
    assert run_incremental_step(world, store, dates[3], config=SMALL).kind == "skipped"
    assert sync_drift_history(store) == 1
    assert sync_drift_history(store) == 0


def _hold_lock(store: str, ready, release) -> None:
    with Store(store).lock("test holder"):
        ready.set()
        release.wait(30)


def test_a_second_run_fails_fast_while_the_store_is_locked(world, store):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(store), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StoreError, match="locked by another run"):
            run_incremental_step(world, store, config=SMALL)
    finally:
        release.set()
        holder.join(30)


def test_a_lock_left_by_a_killed_run_is_cleared(world, store):
    ctx = multiprocessing.get_context("spawn")
    dead = ctx.Process(target=os.getpid)
    dead.start()
    dead.join()
    (store / "LOCK").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "x",
                                            "command": "killed"}))
    result = run_incremental_step(world, store, config=SMALL)
    assert result.kind == "incremental"
    assert not (store / "LOCK").exists()


def test_a_damaged_version_file_is_detected(store):
    segment = Store(store).part_segments(Store(store).current_version(), "item_vectors")[-1]
    with open(segment, "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x00\x00\x80\x7f")
    with pytest.raises(StoreError, match="checksum"):
        Store(store).load()


def test_full_export_round_trips_every_row(store, tmp_path):
    out = tmp_path / "all.parquet"
    export_version(store, out)
    table = read_export(out)
    state = Store(store).load()
    items = table.filter(pc.equal(table["entity"], "item"))
    assert items.num_rows == len(state.item_vocab) - 1
    rows = items["row"].to_numpy()
    vectors = np.stack(items["vector"].to_numpy(zero_copy_only=False))
    assert np.array_equal(vectors, state.item_vectors[rows])
    assert np.array_equal(items["bias"].to_numpy(), state.item_bias[rows])
    assert items["id"].to_pylist() == state.item_vocab.id_of(rows).to_pylist()


def test_delta_export_applied_to_the_old_export_gives_the_new_export(store, tmp_path):
    export_version(store, tmp_path / "v2.parquet", version=2)
    export_version(store, tmp_path / "v3.parquet", version=3)
    summary = export_delta(store, tmp_path / "delta.parquet", since=2, version=3)
    old = {(e, i): (v, b) for e, i, v, b in _rows(read_export(tmp_path / "v2.parquet"))}
    new = {(e, i): (v, b) for e, i, v, b in _rows(read_export(tmp_path / "v3.parquet"))}
    delta = read_export(tmp_path / "delta.parquet")
    patched = dict(old)
    for (e, i, v, b), change in zip(_rows(delta), delta["change"].to_pylist()):
        if change == "removed":
            patched.pop((e, i))
        else:
            patched[(e, i)] = (v, b)
    assert patched.keys() == new.keys()
    assert all(np.array_equal(patched[k][0], new[k][0]) and patched[k][1] == new[k][1] for k in new)
    assert summary["item"]["added"] == Store(store).manifest(3)["rows"]["item_new"]
    # Frozen vectors are not in the delta unless their bias moved (bias_policy="trainable").
    assert summary["item"]["unchanged_verified"] + summary["item"]["changed"] == len(Store(store).load(2).item_vocab) - 1


def _rows(table):
    return zip(table["entity"].to_pylist(), table["id"].to_pylist(),
               (np.asarray(v, np.float32) for v in table["vector"].to_pylist()), table["bias"].to_pylist())


def test_full_retrain_starts_a_new_generation_and_keeps_row_numbers(world, store, dates):
    before = Store(store).load()
    result = run_full_retrain(world, store, dates[2], config=SMALL, reason="test")
    after = Store(store).load()
    assert result.kind == "full_retrain" and after.manifest["generation"] == 2
    assert after.item_vocab.id_of(np.arange(1, len(before.item_vocab))).to_pylist() == \
        before.item_vocab.id_of(np.arange(1, len(before.item_vocab))).to_pylist()
    assert not np.array_equal(after.item_vectors, before.item_vectors)
    assert after.manifest["drift_state"]["recall_history"] == []
    # The next nightly step continues after the retrain's as-of date.
    assert run_incremental_step(world, store, config=SMALL).date == dates[3]


def test_full_retrain_can_compact_inactive_ids(world, store, dates):
    config = SMALL.replace(retrain={"compact_inactive_days": 1})
    before = Store(store).load()
    run_full_retrain(world, store, dates[2], config=config)
    after = Store(store).load()
    assert len(after.user_vocab) < len(before.user_vocab)
    assert after.manifest["compaction"]["user"]["dropped"] > 0
    mapping = after.user_vocab.mapping_from(before.user_vocab)
    assert (mapping[1:] > 0).all()  # every kept ID comes from the old vocabulary


def test_trainable_boundary_follows_the_warmup_policy(bootstrapped, dates):
    state = Store(bootstrapped).load()
    applied = state.partitions
    today = trainable_boundary(state.user_vocab, dates[2], applied[:-1], warmup_days=0)
    warm = trainable_boundary(state.user_vocab, dates[2], applied[:-1], warmup_days=1)
    assert warm < today
    created = state.user_vocab.created
    assert (created[today:] >= np.datetime64(dates[2])).all()
    assert (created[1:today] < np.datetime64(dates[2])).all()


def test_recommend_ranks_unseen_items_and_similar_finds_neighbours(store):
    from accrete.pipeline.recommend import UnknownIdError, recommend, similar

    state = Store(store).load()
    history = Store(store).read_history(state.partitions)
    user = history["user_id"][0].as_py()
    seen = set(history.filter(pc.equal(history["user_id"], user))["item_id"].to_pylist())
    answer = recommend(store, user, k=10)
    assert len(answer) == 10 and not seen & {row["item_id"] for row in answer}
    assert [row["rank"] for row in answer] == list(range(1, 11))
    scores = [row["score"] for row in answer]
    assert scores == sorted(scores, reverse=True)
    item = answer[0]["item_id"]
    neighbours = similar(store, item, k=5)
    assert len(neighbours) == 5 and item not in {row["item_id"] for row in neighbours}
    fallback = recommend(store, "nobody", k=5)  # an unknown user gets the time-aware popular list
    assert fallback.fallback and len(fallback) == 5
    with pytest.raises(UnknownIdError, match="nobody"):
        similar(store, "nobody", k=5)


def test_history_read_through_the_retrain_base_equals_the_per_partition_files(store):
    s = Store(store)
    dates = s.load().partitions
    assert list((store / "history").glob("base-until=*.parquet"))
    through_base = s.read_history(dates).sort_by([("user_id", "ascending"), ("item_id", "ascending"), ("timestamp", "ascending")])
    per_file = s._read_history_files(dates).sort_by([("user_id", "ascending"), ("item_id", "ascending"), ("timestamp", "ascending")])
    assert through_base.equals(per_file)
    # A set of partitions that lacks one the base covers never reads the base.
    assert s.read_history(dates[1:]).num_rows == s._read_history_files(dates[1:]).num_rows


@pytest.mark.parametrize("model", [{"init": "mean", "bias_policy": "trainable"},
                                   {"init": "metadata", "warmup_days": 1}])
def test_other_policies_keep_frozen_rows_bit_identical(world, store, model):
    before = Store(store).load()
    result = run_incremental_step(world, store, config=SMALL.replace(model=model))
    after = Store(store).load()
    frozen = result.manifest["rows"]["item_trainable_from"]
    assert sha256_of_array(after.item_vectors[:frozen]) == sha256_of_array(before.item_vectors[:frozen])
    assert not np.array_equal(after.item_vectors[frozen:len(before.item_vectors)],
                              before.item_vectors[frozen:]) or frozen == len(before.item_vectors)
    if model.get("bias_policy") == "trainable":
        assert not np.array_equal(after.item_bias[:frozen], before.item_bias[:frozen])  # old biases moved
