"""Choosing the recency weight from the store's own recent periods: it follows the data, never a fixed guess."""
from __future__ import annotations

import numpy as np
import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world
from accrete.pipeline.tuning import choose_recency, holdout_periods

DAY = 86_400.0
CANDIDATES = (0.0, 0.5, 1.0, 2.0, 5.0)
HALF_LIVES = (1.0, 7.0, 30.0)


@pytest.mark.parametrize("period_users, min_users, expected", [
    ([100, 100, 100, 100], 150, 2),
    ([100, 100, 100, 100], 100, 1),
    ([100, 100, 100, 100], 201, 0),   # more than half the periods would be needed
    ([500], 10, 0),                   # a single period cannot be split
])
def test_the_holdout_is_the_fewest_final_periods_with_enough_users_and_at_most_half(period_users, min_users,
                                                                                       expected):
    assert holdout_periods(period_users, min_users) == expected


def _choose(users, items, times, days, n_users, n_items):
    return choose_recency(
        np.asarray(users), np.asarray(items), np.asarray(times, float), period_starts=np.arange(days) * DAY,
        user_created=np.full(n_users, -1.0), item_created=np.full(n_items, -1.0), weights=CANDIDATES,
        half_lives=HALF_LIVES, min_users=100, prior=1.0, dim=8, alpha=10.0, l2=10.0, iterations=10, seed=0,
        refold_active=True)


def test_a_world_of_stable_tastes_gets_no_popularity_weight():
    """Users in 10 groups, each group drawing from its own 30 items, one group far larger than the others:
    popularity points every user at the big group's items, tastes do not."""
    rng = np.random.default_rng(0)
    days, n_users, n_items = 8, 600, 301
    group = np.where(rng.random(n_users) < 0.5, 0, rng.integers(1, 10, n_users))
    group[0] = 0
    users = rng.integers(1, n_users, 40_000)
    items = 1 + group[users] * 30 + rng.integers(0, 30, len(users))
    times = rng.uniform(0, days * DAY, len(users))
    choice = _choose(users, items, times, days, n_users, n_items)
    assert choice.weight == 0.0, choice.recall
    assert choice.recall[choice.half_life_days, 0.0] > 1.5 * max(choice.recall[h, 5.0] for h in HALF_LIVES)


def test_a_world_of_trends_gets_a_popularity_weight():
    """Everyone follows the trending items of the day (a new set every two days), tastes play no part."""
    rng = np.random.default_rng(1)
    days, n_users, n_items = 10, 800, 401
    times = np.sort(rng.uniform(0, days * DAY, 60_000))
    users = rng.integers(1, n_users, len(times))
    era = (times // (2 * DAY)).astype(int)
    trending = 1 + (era * 40 + rng.zipf(1.6, len(times)).clip(1, 40) - 1) % (n_items - 1)
    choice = _choose(users, trending, times, days, n_users, n_items)
    assert choice.weight is not None and choice.weight >= 1.0, choice.recall
    assert choice.half_life_days == 1.0  # trends last two days: a month of memory would mislead
    assert choice.recall[1.0, choice.weight] > 1.2 * choice.recall[1.0, 0.0]
    assert choice.recall[1.0, choice.weight] > choice.recall[30.0, choice.weight]


def test_too_short_a_history_keeps_the_configured_weight():
    choice = _choose([1, 2], [1, 2], [10.0, 20.0], 1, 3, 3)
    assert choice.weight is None and choice.half_life_days is None and choice.periods == 0 and choice.recall == {}


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A synthetic world of taste factors: a retrain after four days (so it can tune), then nightly steps."""
    root = tmp_path_factory.mktemp("tuning")
    data, store = root / "data", root / "store"
    generate_world(data, days=7, seed=0, initial_users=600, initial_items=300, new_users_per_day=15,
                   new_items_per_day=8, interactions_per_day=2000, initial_interactions=12000)
    dates = contract.list_partitions(data)
    run_full_retrain(data, store, dates[3], config=AccreteConfig())
    steps = [run_incremental_step(data, store, d, config=AccreteConfig()) for d in dates[4:]]
    return store, steps


def test_a_retrain_records_the_recipe_it_chose_and_why(retrained):
    store, _ = retrained
    recency = Store(store).manifest(1)["recency"]
    tuning = recency["tuning"]
    assert tuning["chosen"] == {"weight": recency["weight"], "half_life_days": recency["half_life_days"],
                                "profile_half_life_days": recency["profile_half_life_days"]}
    assert tuning["periods"] >= 1 and tuning["users"] >= 200
    model = AccreteConfig().model  # the default candidates: profile half-life x count half-life x weight
    assert set(tuning["recall@10"]) == {f"profile {p:g}d count {h:g}d w={w:g}"
                                        for p in model.profile_half_life_candidates
                                        for h in model.recency_half_life_candidates for w in model.weight_candidates}
    best = max(tuning["recall@10"].values())
    chosen = f"profile {recency['profile_half_life_days']:g}d count {recency['half_life_days']:g}d w={recency['weight']:g}"
    assert tuning["recall@10"][chosen] == best


def test_after_a_retrain_new_items_are_recommended_far_above_a_random_ranking(retrained):
    """Issue 14.5: with the weight chosen on this world, a new item can reach a top 10 on its first day."""
    _, steps = retrained
    recall = np.nanmean([s.manifest["metrics"]["recall@10/new_items"] for s in steps])
    items = np.mean([s.manifest["rows"]["item"] - 1 for s in steps])
    assert recall > 3 * (10 / items), (recall, 10 / items)


def test_the_arrival_prior_is_learned_at_the_retrain_and_grows_with_each_cohort(retrained):
    store, steps = retrained
    first = Store(store).load(1).reference["arrival_sums"]
    last = Store(store).load(steps[-1].version).reference["arrival_sums"]
    assert first[1] > 0 and last[1] > first[1]  # every nightly cohort adds its weight
    assert 1.0 < last[0] / last[1] < 200.0  # new items here draw a few interactions each on their first day


def test_a_retrain_on_one_backlog_partition_tunes_on_the_quarters_of_its_time_span(retrained, tmp_path):
    store, _ = retrained
    data = store.parent / "data"
    run_full_retrain(data, tmp_path / "store", contract.list_partitions(data)[0], config=AccreteConfig())
    tuning = Store(tmp_path / "store").manifest()["recency"]["tuning"]
    assert tuning["chosen"] is not None and tuning["periods"] >= 1 and tuning["users"] >= 200


def test_a_period_with_many_users_is_scored_on_a_random_subset_of_whole_users():
    from accrete.pipeline.tuning import _sample_users

    users = np.repeat(np.arange(1, 101), 3)
    keep = _sample_users(users, 10, np.random.default_rng(0))
    assert len(np.unique(users[keep])) == 10 and keep.sum() == 30  # every interaction of a kept user
    assert _sample_users(users, 500, np.random.default_rng(0)).all()
