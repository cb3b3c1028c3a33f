"""The time-aware score term: anchored log decayed counts rank items exactly like the decayed counts."""
from __future__ import annotations

import numpy as np
import pytest

from accrete.pipeline import recency

DAY = 86_400.0


def test_anchored_log_counts_differ_from_the_decayed_counts_by_one_constant():
    rng = np.random.default_rng(1)
    items = rng.integers(1, 30, 500)
    times = rng.uniform(0, 200 * DAY, 500)
    anchor, now, half_life = 50 * DAY, 210 * DAY, 30.0
    logs = recency.accumulate(np.full(30, -np.inf), items, times, anchor_s=anchor, half_life_days=half_life)
    direct = np.bincount(items, weights=0.5 ** ((now - times) / DAY / half_life), minlength=30)
    seen = direct > 0
    offset = logs[seen] - np.log(direct[seen])
    np.testing.assert_allclose(offset, offset[0], rtol=0, atol=1e-9)
    assert np.isneginf(logs[~seen]).all()


def test_accumulating_in_two_nights_equals_one_pass_and_leaves_other_items_alone():
    rng = np.random.default_rng(2)
    items, times = rng.integers(1, 10, 100), rng.uniform(0, 20 * DAY, 100)
    start = np.full(10, -np.inf)
    once = recency.accumulate(start, items, times, anchor_s=0.0, half_life_days=7.0)
    first = recency.accumulate(start, items[:60], times[:60], anchor_s=0.0, half_life_days=7.0)
    twice = recency.accumulate(first, items[60:], times[60:], anchor_s=0.0, half_life_days=7.0)
    np.testing.assert_allclose(once, twice)
    untouched = np.setdiff1d(np.arange(10), items[60:])
    assert first[untouched].tobytes() == twice[untouched].tobytes()


def test_a_new_item_starts_with_the_prior_and_the_score_term_floors_items_without_weight():
    logs = recency.add_arrivals(np.array([-np.inf, np.log(3.0)]), 2, np.array([0.0, 0.0]), prior=1.0, anchor_s=0.0,
                                half_life_days=10.0)
    np.testing.assert_allclose(logs[2:], [0.0, 0.0])
    term = recency.score_term(np.array([5.0, -np.inf, 1.0]), weight=2.0)
    assert term[0] == 0.0 and term[1] < term[2] == 2.0
    none = recency.add_arrivals(logs, 4, np.array([0.0]), prior=0.0, anchor_s=0.0, half_life_days=10.0)
    assert np.isneginf(none[4])


def test_a_non_positive_half_life_is_refused():
    with pytest.raises(ValueError, match="half-life"):
        recency.log_weights(np.zeros(1), 0.0, 0.0)


def test_the_learned_prior_is_the_decayed_mean_first_period_count_of_arrivals():
    from accrete.pipeline.recency import cohort_sums, learned_prior

    day = 86_400.0
    old = cohort_sums(np.array([0.0, 0.0]), np.array([10, 30]), anchor_s=0.0, half_life_days=1.0)
    assert learned_prior(old, fallback=1.0) == pytest.approx(20.0)
    recent = cohort_sums(np.array([day]), np.array([2]), anchor_s=0.0, half_life_days=1.0)  # weighs 2x each old item
    assert learned_prior(old + recent, fallback=1.0) == pytest.approx((40 + 2 * 2) / (2 + 2))
    assert learned_prior(None, fallback=1.5) == 1.5
    assert learned_prior(np.zeros(2), fallback=1.5) == 1.5
