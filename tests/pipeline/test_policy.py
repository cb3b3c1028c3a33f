"""The nightly policy on a real store: what is pending, which retrain is owed, when a run has nothing to do."""
from __future__ import annotations

import datetime as dt
import shutil

import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import DataContractError, StoreError
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.policy import (applied_partitions, check_partitions, missing_period_warning, missing_periods,
                                     nothing_to_do, owed_retrain, partitions_to_read, pending_partitions,
                                     reasons_list, retrain_reason)
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

DUE_NEXT_STEP = AccreteConfig().replace(model={"dim": 8}, drift={"max_days_since_full_retrain": 1})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("policy") / "data"
    generate_world(data, days=4, seed=3, initial_users=100, initial_items=60, new_users_per_day=4,
                   new_items_per_day=2, interactions_per_day=200, initial_interactions=1000)
    return data


def test_a_fresh_store_has_every_later_partition_pending_and_owes_nothing(world, tmp_path):
    dates = contract.list_partitions(world)
    run_full_retrain(world, tmp_path / "store", dates[0], config=DUE_NEXT_STEP)
    assert applied_partitions(tmp_path / "store") == dates[:1]
    assert pending_partitions(world, tmp_path / "store") == dates[1:]
    assert owed_retrain(tmp_path / "store") is None
    assert nothing_to_do(world, tmp_path / "store") is None
    assert nothing_to_do(world, tmp_path / "store", dates[0], dates[0]) == (
        f"nothing to apply: the 1 partition(s) from {dates[0]} to {dates[0]} are already applied (version 1)")
    assert nothing_to_do(world, tmp_path / "store", dates[0], dates[1]) is None


def test_a_step_that_asks_for_a_retrain_leaves_it_owed_until_one_runs(world, tmp_path):
    dates, store = contract.list_partitions(world), tmp_path / "store"
    run_full_retrain(world, store, dates[0], config=DUE_NEXT_STEP)
    step = run_incremental_step(world, store, dates[1], config=DUE_NEXT_STEP)
    assert step.retrain_due
    owed = owed_retrain(store)
    assert owed == {"date": dates[1].isoformat(), "reasons": reasons_list(step.manifest["drift"]["reasons"])}
    assert nothing_to_do(world, store, dates[0], dates[1]) is None  # the owed retrain is work
    run_full_retrain(world, store, dates[1], config=DUE_NEXT_STEP, reason=retrain_reason(owed["reasons"]))
    assert owed_retrain(store) is None


def test_with_every_partition_applied_a_nightly_run_has_nothing_to_do(world, tmp_path):
    dates, store = contract.list_partitions(world), tmp_path / "store"
    run_full_retrain(world, store, dates[-1], config=DUE_NEXT_STEP)
    assert pending_partitions(world, store) == []
    assert nothing_to_do(world, store) == (f"nothing pending: every partition in {world} is applied (last {dates[-1]}, "
                                           f"version 1); use --force to redo the latest step")


def test_reasons_read_from_either_stored_shape_and_a_retrain_states_only_what_fired():
    reasons = ["age: 9 days since last full retrain >= 7", "waiting: psi 0.3 > 0.25 for 1 step (patience 2)"]
    assert reasons_list("; ".join(reasons)) == reasons == reasons_list(reasons)
    assert reasons_list("") == [] == reasons_list(None)
    assert retrain_reason(reasons) == reasons[0]
    assert retrain_reason(reasons[1:]) == reasons[1]  # nothing fired: say what there was


def test_a_missing_or_empty_store_is_a_store_error_naming_it(world, tmp_path):
    with pytest.raises(StoreError, match="no such store directory"):
        pending_partitions(world, tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="accrete retrain --as-of"):
        nothing_to_do(world, tmp_path / "empty")


def test_a_nightly_step_names_the_settings_it_cannot_apply_and_keeps_the_stores(world, tmp_path):
    dates, store = contract.list_partitions(world), tmp_path / "store"
    run_full_retrain(world, store, dates[0], config=DUE_NEXT_STEP)
    changed = DUE_NEXT_STEP.replace(model={"dim": 16, "recency_weight": 2.0})
    step = run_incremental_step(world, store, dates[1], config=changed)
    assert step.manifest["warnings"] == [
        "model.dim = 16 in the configuration, but the store's tables have dim 8: nightly steps keep the store's "
        "value until the next full retrain (`accrete retrain`)",
        "model.recency_weight = 2 in the configuration, but this generation uses 0.2: nightly steps keep the "
        "store's value until the next full retrain (`accrete retrain`)"]
    assert Store(store).load().item_vectors.shape[1] == 8
    assert run_incremental_step(world, store, dates[2], config=DUE_NEXT_STEP).manifest["warnings"] == []


# ----- missing periods (a backfill over a range with a lost period warns) -------------------------------------
def _weeks(*offsets):
    return [dt.date(2011, 1, 3) + dt.timedelta(weeks=k) for k in offsets]


def test_missing_periods_names_the_weeks_between_partitions_and_before_the_range():
    present = _weeks(0, 1, 3, 6, 7)
    assert missing_periods(present, "week", *_weeks(1, 7)) == _weeks(2, 4, 5)
    # The range follows on from the last partition before it: a gap just before `start` is lost all the same.
    assert missing_periods(present, "week", *_weeks(6, 7)) == _weeks(4, 5)
    assert missing_periods(present, "week", *_weeks(0, 1)) == []
    # After the last partition nothing is missing yet; an end far in the future adds nothing.
    assert missing_periods(present, "week", _weeks(7)[0], dt.date(2030, 1, 1)) == []
    assert missing_periods([dt.date(2024, 1, 1), dt.date(2024, 4, 1)], "month", dt.date(2024, 1, 1),
                           dt.date(2024, 12, 31)) == [dt.date(2024, 2, 1), dt.date(2024, 3, 1)]
    assert missing_periods([dt.date(2024, 1, 1), dt.date(2024, 1, 4)], "day", dt.date(2024, 1, 1),
                           dt.date(2024, 1, 4)) == [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]


def test_missing_period_warning_reads_the_data_directory(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world, data)
    dates = contract.list_partitions(data)
    assert missing_period_warning(data, dates[0], dates[-1]) is None
    for entity in ("interactions", "users", "items"):
        shutil.rmtree(data / entity / f"date={dates[2].isoformat()}", ignore_errors=True)
    warning = missing_period_warning(data, dates[1], dates[-1])
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"{data}: no partition for 1 day period(s) in or just before {dates[1]} to {dates[-1]}: "
                              f"{dates[2]};")


def test_a_nightly_on_an_applied_date_has_nothing_to_do_unless_a_retrain_is_owed(world, tmp_path):
    dates, store = contract.list_partitions(world), tmp_path / "store"
    run_full_retrain(world, store, dates[0], config=DUE_NEXT_STEP)
    assert nothing_to_do(world, store, date=dates[0]) == (
        f"nothing to do: partition {dates[0]} is already applied (version 1); use --force to redo the latest step")
    assert nothing_to_do(world, store, date=dates[1]) is None
    run_incremental_step(world, store, dates[1], config=DUE_NEXT_STEP)  # asks for a retrain
    assert nothing_to_do(world, store, date=dates[1]) is None


def test_the_partitions_checked_before_a_run_are_the_ones_it_reads_first(world, tmp_path):
    dates, store = contract.list_partitions(world), tmp_path / "store"
    assert partitions_to_read(world, store, as_of=dates[2]) == [dates[2]]  # empty store: the newest up to as-of
    run_full_retrain(world, store, dates[0], config=DUE_NEXT_STEP)
    assert partitions_to_read(world, store) == [dates[1]]
    assert partitions_to_read(world, store, date=dates[2]) == [dates[2]]
    assert partitions_to_read(world, store, date=dates[0]) == []  # consumed: checked when it was applied
    assert partitions_to_read(world, store, start=dates[0], end=dates[-1]) == [dates[1]]
    assert partitions_to_read(world, store, as_of=dates[-1]) == [dates[-1]]
    check_partitions(world, dates)

    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    bad = broken / "interactions" / f"date={dates[1]}" / "part-0.parquet"
    bad.write_bytes(b"")
    with pytest.raises(DataContractError, match="unreadable Parquet file"):
        check_partitions(broken, [dates[1]])
