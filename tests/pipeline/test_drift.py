"""Specifications of the drift metrics: hand-computed values, edge cases, and a statistical sanity check."""
from __future__ import annotations

import datetime
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accrete.pipeline.config import DriftConfig
from accrete.pipeline.drift import (
    DEFAULT_RATING_EDGES,
    METRIC_KEYS,
    DriftInputs,
    compute_drift_metrics,
    norm_ratio,
    popularity_bins,
    popularity_psi,
    population_stability_index,
    quality_ratio,
    rating_edges_for,
    rating_histogram,
    rating_js_divergence,
    share_new,
    staleness_share,
)
from accrete.pipeline.errors import DataContractError

MOVIELENS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-latest-small"

# ------------------------------------------------------------------------------------------- share_new


def test_share_new_is_the_fraction_of_interactions_flagged_new():
    assert share_new(np.array([True, False, False, True, False])) == pytest.approx(0.4)


def test_share_new_of_an_empty_partition_is_nan():
    assert math.isnan(share_new(np.array([], dtype=bool)))


# ------------------------------------------------------------------------------------ popularity_bins


def test_popularity_bins_cut_equal_counts_into_equal_mass_groups_and_mark_unseen_rows_minus_one():
    counts = np.array([0, 10, 10, 10, 10, 0, 10, 10, 10, 10, 10, 10])
    bins = popularity_bins(counts, n_bins=5)
    assert bins[0] == -1 and bins[5] == -1
    seen = bins >= 0
    masses = np.bincount(bins[seen], weights=counts[seen], minlength=5)
    np.testing.assert_array_equal(masses, [20, 20, 20, 20, 20])
    # Ties are ranked by ascending row: rows 1, 2 -> bin 0; rows 3, 4 -> bin 1; ...
    np.testing.assert_array_equal(bins[seen], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def test_popularity_bins_give_a_head_entity_heavier_than_its_share_a_bin_of_its_own():
    # Total 100 in 4 bins (25 each): row 1 (40) exceeds 25 and is alone in bin 0; the remaining 60 are
    # cut into 3 bins of 20: row 4 (20) | row 6 (20) | rows 2, 3 (10 + 10).
    counts = np.array([0, 40, 10, 10, 20, 0, 20])
    bins = popularity_bins(counts, n_bins=4)
    np.testing.assert_array_equal(bins, [-1, 0, 3, 3, 1, -1, 2])


def test_popularity_bins_of_a_power_law_use_every_bin_with_mass_within_one_entity_of_equal():
    rng = np.random.default_rng(3)
    counts = np.concatenate([[0], rng.zipf(1.8, size=3000)])
    bins = popularity_bins(counts, n_bins=10)
    masses = np.bincount(bins[bins >= 0], weights=counts[bins >= 0], minlength=10)
    assert np.all(masses > 0)
    assert np.all(np.diff(bins[np.argsort(-counts, kind="stable")][: np.count_nonzero(counts)]) >= 0)
    # Every non-head bin is within one entity's count of its fair share.
    single = np.bincount(bins[bins >= 0], minlength=10) == 1
    head_mass = masses[single].sum() if single.any() else 0
    fair = (counts.sum() - head_mass) / (10 - single.sum())
    assert np.all(np.abs(masses[~single] - fair) <= counts.max())


def test_popularity_bins_with_no_reference_interactions_are_all_minus_one():
    np.testing.assert_array_equal(popularity_bins(np.zeros(4, dtype=np.int64), 3), [-1, -1, -1, -1])


# ------------------------------------------------------------------------------------------------ PSI


def test_psi_matches_the_hand_computed_value():
    # (0.25 - 0.5) * ln(0.25 / 0.5) + (0.75 - 0.5) * ln(0.75 / 0.5)
    # = 0.25 * 0.693147 + 0.25 * 0.405465 = 0.173287 + 0.101366 = 0.274653
    assert population_stability_index(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(
        0.274653, abs=1e-6)


def test_psi_accepts_counts_as_well_as_proportions():
    assert population_stability_index(np.array([50, 50]), np.array([1, 3])) == pytest.approx(0.274653, abs=1e-6)


def test_psi_of_identical_distributions_is_exactly_zero():
    assert population_stability_index(np.array([3, 1, 6]), np.array([0.3, 0.1, 0.6])) == 0.0


def test_psi_floors_a_bin_empty_on_one_side_without_renormalising():
    # e = [1, 0] -> floored to [1, 1e-4] (not renormalised); a = [0.5, 0.5]:
    # (0.5 - 1) * ln(0.5 / 1) + (0.5 - 1e-4) * ln(0.5 / 1e-4)
    # = 0.346574 + 0.4999 * 8.517193 = 0.346574 + 4.257745 = 4.604319
    assert population_stability_index(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(
        4.604319, abs=1e-5)
    # A larger floor caps the same term lower: (0.5 - 0.01) * ln(50) = 0.49 * 3.912023 = 1.916891, + 0.346574.
    assert population_stability_index(np.array([1.0, 0.0]), np.array([0.5, 0.5]), floor=0.01) == pytest.approx(
        2.263465, abs=1e-5)


def test_psi_bin_empty_on_both_sides_contributes_nothing():
    assert population_stability_index(np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.75, 0.0])) == pytest.approx(
        0.274653, abs=1e-6)


def test_psi_without_mass_on_one_side_is_nan():
    assert math.isnan(population_stability_index(np.array([1, 2]), np.array([0, 0])))


def test_psi_rejects_bins_of_different_lengths():
    with pytest.raises(ValueError, match="equal length"):
        population_stability_index(np.array([1, 2]), np.array([1, 2, 3]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=12))
def test_psi_is_non_negative_and_zero_on_identical_inputs(pairs):
    expected = np.array([p[0] for p in pairs])
    actual = np.array([p[1] for p in pairs])
    value = population_stability_index(expected, actual)
    if expected.sum() == 0 or actual.sum() == 0:
        assert math.isnan(value)
    else:
        assert value >= 0.0
        assert population_stability_index(expected, expected) == 0.0


# ------------------------------------------------------------------------------------- popularity_psi


def test_popularity_psi_is_zero_when_the_partition_repeats_the_reference_distribution():
    reference = np.array([0, 4, 2, 2, 1, 1])
    partition = np.repeat(np.arange(6), reference)
    assert popularity_psi(reference, partition, n_bins=3) == pytest.approx(0.0, abs=1e-12)


def test_popularity_psi_excludes_interactions_on_entities_outside_the_reference():
    reference = np.array([0, 4, 2, 2, 1, 1])
    known = np.repeat(np.arange(6), reference)
    # Rows 6 and 7 are new this partition (beyond the reference); row 0 has no reference interactions.
    with_new = np.concatenate([known, [6, 6, 7, 7, 7, 0]])
    assert popularity_psi(reference, with_new, n_bins=3) == popularity_psi(reference, known, n_bins=3)


def test_popularity_psi_matches_psi_over_the_reference_bins():
    reference = np.array([0, 40, 10, 10, 20, 0, 20])  # bins [-1, 0, 3, 3, 1, -1, 2]: masses 40, 20, 20, 20
    partition = np.array([1, 1, 4, 6, 6, 6, 2, 3])    # per bin: 2, 1, 3, 2
    expected = population_stability_index(np.array([40, 20, 20, 20]), np.array([2, 1, 3, 2]))
    assert popularity_psi(reference, partition, n_bins=4) == pytest.approx(expected)


def test_popularity_psi_with_only_new_entities_in_the_partition_is_nan():
    assert math.isnan(popularity_psi(np.array([0, 3, 1]), np.array([3, 4, 4]), n_bins=2))


def test_popularity_psi_is_nan_below_the_minimum_interactions_on_reference_entities():
    reference = np.array([0, 4, 2, 2, 1, 1])
    partition = np.array([1, 1, 2, 3, 6, 6, 6])  # 4 interactions on reference entities, 3 on a new row
    assert not math.isnan(popularity_psi(reference, partition, n_bins=3, min_interactions=4))
    assert math.isnan(popularity_psi(reference, partition, n_bins=3, min_interactions=5))


def _power_law_probabilities(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf(1) item popularity over rows 1..n_items (row 0 is out-of-vocabulary), randomly assigned to rows."""
    weights = 1.0 / np.arange(1, n_items + 1)
    probabilities = np.zeros(n_items + 1)
    probabilities[1:] = rng.permutation(weights / weights.sum())
    return probabilities


def test_popularity_psi_of_a_stationary_stream_stays_well_below_0_1_and_a_reshuffle_exceeds_0_25():
    """The default trigger (0.25) sits far from stationary noise and far below a real popularity shift.

    5,000 items with Zipf(1) popularity, 5,000 interactions per day, reference = 20 days.
    """
    rng = np.random.default_rng(20240601)
    n_items, per_day = 5000, 5000
    probabilities = _power_law_probabilities(n_items, rng)
    reference = np.bincount(rng.choice(n_items + 1, size=20 * per_day, p=probabilities), minlength=n_items + 1)

    stationary = [popularity_psi(reference, rng.choice(n_items + 1, size=per_day, p=probabilities))
                  for _ in range(10)]
    assert max(stationary) < 0.03, stationary

    reshuffled = np.zeros_like(probabilities)
    reshuffled[1:] = rng.permutation(probabilities[1:])
    shifted = [popularity_psi(reference, rng.choice(n_items + 1, size=per_day, p=reshuffled)) for _ in range(3)]
    assert min(shifted) > 1.0, shifted


def test_popularity_psi_sampling_noise_is_about_bins_minus_one_over_n_so_small_partitions_need_a_guard():
    """Why `min_partition_interactions` (proposed default 200) exists: the stationary PSI of n interactions
    over 10 bins averages about 9 / n, so 50 interactions alone would breach 0.1 most days."""
    rng = np.random.default_rng(7)
    n_items = 5000
    probabilities = _power_law_probabilities(n_items, rng)
    reference = np.bincount(rng.choice(n_items + 1, size=100_000, p=probabilities), minlength=n_items + 1)
    noise = {n: np.mean([popularity_psi(reference, rng.choice(n_items + 1, size=n, p=probabilities))
                         for _ in range(100)]) for n in (50, 200)}
    assert noise[50] > 0.1
    assert 0.5 * 9 / 200 < noise[200] < 2 * 9 / 200


# ------------------------------------------------------------------------------------------- ratings


def test_rating_histogram_puts_each_half_star_in_its_own_default_bin():
    counts, edges = rating_histogram(np.array([0.5, 1.0, 1.0, 3.5, 5.0, 5.0, 5.0]))
    np.testing.assert_array_equal(edges, DEFAULT_RATING_EDGES)
    np.testing.assert_array_equal(counts, [1, 2, 0, 0, 0, 0, 1, 0, 0, 3])


def test_rating_histogram_names_the_rating_field_when_a_value_is_off_scale():
    with pytest.raises(DataContractError, match=r"rating: 2 rating\(s\) outside .*first: 7\.0.*accrete retrain"):
        rating_histogram(np.array([4.0, 7.0, np.nan]))


@pytest.mark.parametrize("levels, expected", [
    (np.arange(1, 11), np.arange(0.5, 11.0)),                  # 1-10
    (np.arange(1, 6), np.arange(0.5, 6.0)),                    # whole stars
    (np.arange(0.5, 5.01, 0.5), np.arange(0.25, 5.26, 0.5)),   # half stars: the default edges
    (np.array([3.0]), np.array([2.5, 3.5])),                   # one value
], ids=["1-10", "1-5", "half-stars", "one-value"])
def test_rating_edges_learned_from_the_data_put_each_level_of_its_scale_in_its_own_bin(levels, expected):
    ratings = np.repeat(levels, 3)
    edges = rating_edges_for(ratings)
    np.testing.assert_allclose(edges, expected)
    counts, _ = rating_histogram(ratings, edges)
    assert counts.tolist() == [3] * len(levels)


def test_a_continuous_rating_scale_gets_equal_width_bins_over_its_range():
    ratings = np.linspace(0.0, 100.0, 1000)
    edges = rating_edges_for(ratings)
    assert len(edges) == 21 and edges[0] == 0.0 and edges[-1] == 100.0
    assert rating_histogram(ratings, edges)[0].sum() == 1000


def test_rating_histogram_accepts_custom_edges():
    counts, _ = rating_histogram(np.array([1, 2, 9, 10]), edges=np.array([0.5, 5.5, 10.5]))
    np.testing.assert_array_equal(counts, [2, 2])


def test_js_divergence_of_identical_histograms_is_zero():
    assert rating_js_divergence(np.array([10, 20, 30]), np.array([1, 2, 3])) == pytest.approx(0.0, abs=1e-12)


def test_js_divergence_of_disjoint_histograms_is_one():
    assert rating_js_divergence(np.array([5, 0, 0]), np.array([0, 3, 4])) == pytest.approx(1.0)


def test_js_divergence_matches_the_hand_computed_value():
    # p = [1, 0], q = [0.5, 0.5], m = [0.75, 0.25]:
    # KL(p||m) = log2(1 / 0.75) = 0.415037; KL(q||m) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25) = 0.207519
    # JS = (0.415037 + 0.207519) / 2 = 0.311278
    assert rating_js_divergence(np.array([4, 0]), np.array([1, 1])) == pytest.approx(0.311278, abs=1e-6)


def test_js_divergence_is_nan_below_the_minimum_partition_ratings():
    assert rating_js_divergence(np.array([4, 0]), np.array([1, 1]), min_interactions=2) > 0
    assert math.isnan(rating_js_divergence(np.array([4, 0]), np.array([1, 1]), min_interactions=3))


def test_js_divergence_with_an_empty_histogram_is_nan():
    assert math.isnan(rating_js_divergence(np.array([0, 0]), np.array([1, 1])))


# ------------------------------------------------------------------------------- quality, staleness, norms


def test_quality_ratio_divides_the_mean_of_the_last_steps_by_the_mean_of_the_first_steps():
    # Baseline mean(0.21, 0.19, 0.20) = 0.20; last 3 steps 0.16, 0.14, 0.12 -> mean 0.14 -> 0.7.
    assert quality_ratio([0.21, 0.19, 0.20, 0.16, 0.14, 0.12], smoothing_steps=3) == pytest.approx(0.7)


def test_quality_ratio_smoothing_ignores_nan_steps_and_the_windows_overlap_while_history_is_short():
    # Baseline nanmean(0.20, 0.16) = 0.18 (first 3 steps, NaN skipped); recent nanmean(0.16, 0.12) = 0.14.
    assert quality_ratio([0.20, 0.16, math.nan, 0.12], smoothing_steps=3) == pytest.approx(0.14 / 0.18)
    assert quality_ratio([0.20, 0.10], smoothing_steps=3) == 1.0
    assert quality_ratio([0.20], smoothing_steps=3) == 1.0


def test_quality_ratio_is_nan_without_a_usable_baseline():
    assert math.isnan(quality_ratio([], smoothing_steps=3))
    assert math.isnan(quality_ratio([0.0, 0.0, 0.1], smoothing_steps=2))
    assert math.isnan(quality_ratio([math.nan, 0.1], smoothing_steps=1))
    assert math.isnan(quality_ratio([0.2, 0.1, math.nan, math.nan], smoothing_steps=2))


def test_staleness_share_is_the_added_fraction_and_nan_for_an_empty_whole():
    assert staleness_share(25, 100) == 0.25
    assert math.isnan(staleness_share(0, 0))
    with pytest.raises(ValueError):
        staleness_share(5, 4)


def test_norm_ratio_compares_added_rows_with_frozen_rows_excluding_row_zero():
    vectors = np.array([[100.0, 0.0],   # row 0: out-of-vocabulary, ignored even if flagged
                        [3.0, 4.0],     # frozen, norm 5
                        [0.0, 1.0],     # frozen, norm 1
                        [6.0, 8.0],     # added, norm 10
                        [0.0, 2.0]])    # added, norm 2
    added = np.array([True, False, False, True, True])
    # mean(10, 2) / mean(5, 1) = 6 / 3 = 2
    assert norm_ratio(vectors, added) == pytest.approx(2.0)


def test_norm_ratio_is_nan_when_a_group_is_empty():
    vectors = np.ones((3, 2))
    assert math.isnan(norm_ratio(vectors, np.array([False, False, False])))
    assert math.isnan(norm_ratio(vectors, np.array([False, True, True])))


# --------------------------------------------------------------------------------- compute_drift_metrics


def _inputs(ratings: np.ndarray | None, reference_rating_hist: np.ndarray | None) -> DriftInputs:
    return DriftInputs(
        date=datetime.date(2024, 3, 5),
        user_rows=np.array([1, 1, 2, 3, 4], dtype=np.int64),
        item_rows=np.array([1, 2, 2, 3, 5], dtype=np.int64),
        is_new_user=np.array([False, False, False, False, True]),
        is_new_item=np.array([False, False, False, False, True]),
        ratings=ratings,
        reference_user_counts=np.array([0, 4, 3, 2], dtype=np.int64),
        reference_item_counts=np.array([0, 5, 3, 1, 1], dtype=np.int64),
        reference_rating_hist=reference_rating_hist,
        recall_history=[0.2, 0.18, 0.16, 0.14],
        user_rows_total=4, item_rows_total=5,
        user_rows_added_since_retrain=1, item_rows_added_since_retrain=2,
        interactions_since_retrain=15, interactions_total=60,
        days_since_retrain=12,
        item_vectors=np.array([[0, 0], [1, 0], [0, 1], [1, 0], [0, 2], [0, 2]], dtype=np.float32),
        item_added_since_retrain=np.array([False, False, False, False, True, True]),
    )


def test_compute_drift_metrics_returns_every_stable_key_with_each_metric_from_its_function():
    config = DriftConfig(psi_bins=2, quality_smoothing_steps=2, min_partition_interactions=0)
    reference_hist, _ = rating_histogram(np.array([4.0, 4.0, 3.0, 5.0]))
    inputs = _inputs(np.array([4.0, 4.0, 3.0, 5.0, 1.0]), reference_hist)
    metrics = compute_drift_metrics(inputs, config)
    assert tuple(metrics) == METRIC_KEYS
    assert metrics["new_user_share"] == pytest.approx(0.2)
    assert metrics["new_item_share"] == pytest.approx(0.2)
    assert metrics["psi_item_popularity"] == pytest.approx(popularity_psi(inputs.reference_item_counts,
                                                                          inputs.item_rows, 2))
    assert metrics["psi_user_activity"] == pytest.approx(popularity_psi(inputs.reference_user_counts,
                                                                        inputs.user_rows, 2))
    assert metrics["rating_js_divergence"] == pytest.approx(
        rating_js_divergence(reference_hist, rating_histogram(inputs.ratings)[0]))
    assert metrics["rating_js_divergence"] > 0
    assert metrics["quality_ratio"] == pytest.approx(0.15 / 0.19)  # mean(0.16, 0.14) / mean(0.2, 0.18)
    assert metrics["recall_at_10"] == pytest.approx(0.14)
    assert metrics["stale_row_share"] == pytest.approx(3 / 9)
    assert metrics["stale_interaction_share"] == pytest.approx(0.25)
    assert metrics["days_since_full_retrain"] == 12.0
    assert metrics["new_row_norm_ratio"] == pytest.approx(2.0 / 1.0)  # mean(2, 2) / mean(1, 1, 1, 2)
    assert all(isinstance(value, float) for value in metrics.values())


def test_compute_drift_metrics_reports_nan_rating_divergence_for_implicit_data():
    metrics = compute_drift_metrics(_inputs(None, None), DriftConfig())
    assert math.isnan(metrics["rating_js_divergence"])


def test_drift_inputs_reject_per_interaction_arrays_of_different_lengths():
    inputs = _inputs(None, None)
    with pytest.raises(ValueError, match="is_new_item"):
        DriftInputs(**{**inputs.__dict__, "is_new_item": np.array([True])})


# ------------------------------------------------------------------------------------------- MovieLens


@pytest.mark.movielens
@pytest.mark.skipif(not (MOVIELENS / "ratings.csv").exists(), reason="ml-latest-small not available")
def test_movielens_half_star_introduction_in_2003_crosses_the_rating_divergence_threshold():
    """Real drift: MovieLens switched from whole to half stars in February 2003.

    A year of whole-star ratings (2002) against 2003Q2 (half stars available) must exceed the default
    rating_js_divergence threshold, while 2002Q2 against 2001 (no change) stays below it.
    """
    import pandas as pd

    ratings = pd.read_csv(MOVIELENS / "ratings.csv", usecols=["rating", "timestamp"])
    when = pd.to_datetime(ratings["timestamp"], unit="s")

    def hist(start: str, end: str) -> np.ndarray:
        return rating_histogram(ratings.loc[(when >= start) & (when < end), "rating"].to_numpy())[0]

    threshold = DriftConfig().rating_js_divergence
    changed = rating_js_divergence(hist("2002-04-01", "2003-04-01"), hist("2003-04-01", "2003-07-01"))
    stable = rating_js_divergence(hist("2001-01-01", "2002-01-01"), hist("2002-04-01", "2002-07-01"))
    assert changed > 2 * threshold
    assert stable < threshold / 2


@pytest.mark.movielens
@pytest.mark.skipif(not (MOVIELENS / "ratings.csv").exists(), reason="ml-latest-small not available")
def test_movielens_user_activity_psi_is_far_past_0_25_in_a_quiet_quarter_while_item_psi_is_not():
    """Why psi_user_activity should not trigger by default: user activity is bursty (users rate in
    sessions, then leave), so even a quarter with stable items and ratings (2002Q2 against the four
    quarters before) shows a user-activity PSI many times 0.25."""
    import pandas as pd

    ratings = pd.read_csv(MOVIELENS / "ratings.csv", usecols=["userId", "movieId", "timestamp"])
    when = pd.to_datetime(ratings["timestamp"], unit="s")
    users = pd.factorize(ratings["userId"])[0] + 1
    items = pd.factorize(ratings["movieId"])[0] + 1
    reference = ((when >= "2001-04-01") & (when < "2002-04-01")).to_numpy()
    partition = ((when >= "2002-04-01") & (when < "2002-07-01")).to_numpy()
    user_psi = popularity_psi(np.bincount(users[reference], minlength=users.max() + 1), users[partition])
    item_psi = popularity_psi(np.bincount(items[reference], minlength=items.max() + 1), items[partition])
    assert item_psi < 0.25
    assert user_psi > 4 * 0.25
