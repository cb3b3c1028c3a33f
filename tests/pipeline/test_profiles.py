"""User profiles (pipeline/profiles.py): anchored, additive, and what a night touches."""
import numpy as np

from accrete.models import ials
from accrete.pipeline import profiles
from accrete.pipeline.recency import SECONDS_PER_DAY


def _world(seed=0, n_users=40, n_items=30, n=400, dim=6):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    vectors[0] = 0.0
    users = rng.integers(1, n_users, n)
    items = rng.integers(1, n_items, n)
    times = np.sort(rng.uniform(0, 60 * SECONDS_PER_DAY, n))
    return vectors, users, items, times


def _direct(vectors, users, items, times, weights, t, half_life, n_users):
    """p_u(t) computed from its definition, for every user."""
    keys = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
    decay = 2.0 ** (-(t - times) / SECONDS_PER_DAY / half_life) * weights
    total = np.zeros((n_users, vectors.shape[1]))
    np.add.at(total, users, decay[:, None] * keys[items])
    return total


def test_a_profile_is_the_direction_of_the_decayed_sum_of_unit_item_vectors():
    vectors, users, items, times = _world()
    weights = np.random.default_rng(1).uniform(0.5, 3, len(users))
    state = profiles.build(40, users, items, times, vectors, anchor_s=0.0, half_life_days=7.0, weights=weights)
    expected = _direct(vectors, users, items, times, weights, 60 * SECONDS_PER_DAY, 7.0, 40)
    norms = np.linalg.norm(expected, axis=1)
    active = norms > 0
    np.testing.assert_allclose(state.queries[active], expected[active] / norms[active, None], atol=1e-6)
    assert np.all(state.queries[~active] == 0) and np.all(np.isneginf(state.log_norms[~active]))
    np.testing.assert_allclose(np.linalg.norm(state.queries[active], axis=1), 1.0, atol=1e-6)


def test_adding_a_night_equals_building_from_scratch_and_touches_only_its_users():
    vectors, users, items, times = _world(seed=2)
    night = times >= 50 * SECONDS_PER_DAY
    before = profiles.build(40, users[~night], items[~night], times[~night], vectors, anchor_s=0.0, half_life_days=3.0)
    after, touched = profiles.add_interactions(before, users[night], items[night], times[night], vectors, anchor_s=0.0,
                                               half_life_days=3.0)
    whole = profiles.build(40, users, items, times, vectors, anchor_s=0.0, half_life_days=3.0)
    np.testing.assert_allclose(after.queries, whole.queries, atol=1e-6)
    np.testing.assert_allclose(after.log_norms[touched], whole.log_norms[touched], rtol=1e-9)
    np.testing.assert_allclose(after.gram, whole.gram, atol=1e-5)  # kept by differences, not recomputed
    untouched = np.setdiff1d(np.arange(40), touched)
    assert after.queries[untouched].tobytes() == before.queries[untouched].tobytes()
    assert set(touched) == set(np.unique(users[night]))


def test_a_distant_anchor_does_not_overflow():
    vectors, users, items, times = _world(seed=3)
    late = times + 3000 * SECONDS_PER_DAY  # 3000 days after the anchor at a half-life of 1 day: 2^3000
    state = profiles.build(40, users, items, late, vectors, anchor_s=0.0, half_life_days=1.0)
    assert np.all(np.isfinite(state.queries)) and np.isfinite(state.log_norms[np.unique(users)]).all()
    np.testing.assert_allclose(np.linalg.norm(state.queries[np.unique(users)], axis=1), 1.0, atol=1e-6)


def test_the_solve_with_a_kept_gram_equals_the_solve_over_the_whole_table():
    rng = np.random.default_rng(4)
    table = rng.normal(size=(500, 8)).astype(np.float32)
    observed = ials.interaction_matrix(rng.integers(0, 20, 300), rng.integers(0, 500, 300), (20, 500))
    gram = table.astype(np.float64).T @ table.astype(np.float64)
    np.testing.assert_allclose(ials.solve(table, observed, alpha=10.0, l2=1.0, gram=gram),
                               ials.solve(table, observed, alpha=10.0, l2=1.0), rtol=1e-5, atol=1e-6)
