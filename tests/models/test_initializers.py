"""Specification of the row initializers: each does what it says, deterministically, with its fallbacks."""
import numpy as np
import pytest
import scipy.sparse as sp

from accrete.models import initializers
from accrete.models.initializers import (init_fold_in, init_mean, init_metadata, init_normal, init_uniform,
                                 initialize_rows)


def _trained(n=500, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * [0.1, 0.5, 1.0, 2.0] + [1.0, -2.0, 0.0, 3.0]).astype(np.float32)


def test_normal_matches_the_per_dimension_mean_and_std_of_existing_rows():
    existing = _trained()
    new = init_normal(existing, 20_000, seed=1)
    assert new.shape == (20_000, 4) and new.dtype == np.float32
    np.testing.assert_allclose(new.mean(axis=0), existing.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(new.std(axis=0), existing.std(axis=0), rtol=0.03)


def test_normal_is_deterministic_for_a_seed_and_differs_across_seeds():
    existing = _trained()
    np.testing.assert_array_equal(init_normal(existing, 5, 3), init_normal(existing, 5, 3))
    assert not np.array_equal(init_normal(existing, 5, 3), init_normal(existing, 5, 4))


def test_normal_without_existing_rows_is_centred_with_the_default_scale():
    new = init_normal(np.zeros((0, 3), np.float32), 20_000, seed=0)
    np.testing.assert_allclose(new.mean(axis=0), 0.0, atol=0.003)
    np.testing.assert_allclose(new.std(axis=0), 0.05, rtol=0.03)


def test_uniform_is_keras_default_range_and_ignores_existing_values():
    new = init_uniform(_trained(), 10_000, seed=0)
    assert new.shape == (10_000, 4)
    assert new.min() >= -0.05 and new.max() < 0.05
    np.testing.assert_allclose(new.mean(), 0.0, atol=0.002)


def test_mean_gives_every_new_row_the_centroid_of_existing_rows():
    existing = _trained()
    new = init_mean(existing, 3)
    np.testing.assert_allclose(new, np.tile(existing.astype(np.float64).mean(axis=0), (3, 1)), rtol=1e-6)
    np.testing.assert_array_equal(init_mean(np.zeros((0, 2)), 2), np.zeros((2, 2)))


def test_bias_tables_are_initialized_as_one_dimensional_rows():
    bias = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(init_mean(bias, 2), [2.0, 2.0])
    assert init_normal(bias, 4, seed=0).shape == (4,)


def test_metadata_averages_the_token_centroids_of_a_new_rows_known_tokens():
    existing = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]], np.float32)
    # token 0 = rows 0,1 (centroid [2, 0]); token 1 = rows 2,3 (centroid [0, 3]); token 2 = row 1 (centroid [3, 0])
    existing_tokens = sp.csr_matrix(np.array([[1, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]]))
    new_tokens = sp.csr_matrix(np.array([[1, 0, 0, 0],      # token 0 only
                                         [1, 1, 0, 0],      # tokens 0 and 1
                                         [0, 1, 1, 1]]))    # tokens 1, 2 and an unknown token 3
    new = init_metadata(existing, existing_tokens, new_tokens, seed=0)
    np.testing.assert_allclose(new, [[2.0, 0.0], [1.0, 1.5], [1.5, 1.5]], rtol=1e-6)


def test_metadata_falls_back_to_normal_for_rows_without_known_tokens():
    existing = _trained(n=4)
    existing_tokens = sp.csr_matrix(np.eye(4, 6))
    new_tokens = sp.csr_matrix(np.array([[0, 0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0], [0] * 7]))
    new = init_metadata(existing, existing_tokens, new_tokens, seed=5)
    np.testing.assert_allclose(new[1], existing[0], rtol=1e-6)
    np.testing.assert_array_equal(new[[0, 2]], init_normal(existing, 2, seed=5))


def test_fold_in_solves_the_ridge_normal_equations_on_a_hand_example():
    opposite = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    new_rows_local = np.array([1, 0, 1, 1])
    opposite_rows = np.array([0, 2, 1, 2])
    targets = np.array([1.0, 0.5, 2.0, -1.0])
    weights = np.array([1.0, 2.0, 0.5, 1.0])
    vectors, has = init_fold_in(opposite, new_rows_local, opposite_rows, targets, n_new=3, l2=0.1,
                                weights=weights)

    def solve(interactions):
        q = opposite[opposite_rows[interactions]].astype(np.float64)
        w = weights[interactions]
        gram = (q * w[:, None]).T @ q + 0.1 * np.eye(2)
        return np.linalg.solve(gram, (q * (w * targets[interactions])[:, None]).sum(axis=0))

    np.testing.assert_allclose(vectors[0], solve(np.array([1])), rtol=1e-5)
    np.testing.assert_allclose(vectors[1], solve(np.array([0, 2, 3])), rtol=1e-5)
    np.testing.assert_array_equal(vectors[2], [0.0, 0.0])
    np.testing.assert_array_equal(has, [True, True, False])


def test_fold_in_is_chunked_without_changing_the_result(monkeypatch):
    rng = np.random.default_rng(0)
    opposite = rng.normal(size=(50, 3))
    rows, others, targets = rng.integers(0, 7, 400), rng.integers(0, 50, 400), rng.normal(size=400)
    whole, _ = init_fold_in(opposite, rows, others, targets, n_new=8, l2=0.5)
    monkeypatch.setattr(initializers, "FOLD_IN_WORKING_ELEMENTS", 3 * 8)  # 1 row per chunk, 8 interactions per block
    chunked, has = init_fold_in(opposite, rows, others, targets, n_new=8, l2=0.5)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    assert has[:7].all() and not has[7]


def test_fold_in_rejects_out_of_range_rows_and_zero_l2():
    opposite = np.ones((2, 2))
    with pytest.raises(ValueError, match="opposite_rows"):
        init_fold_in(opposite, np.array([0]), np.array([2]), np.array([1.0]), n_new=1, l2=1.0)
    with pytest.raises(ValueError, match="new_rows_local"):
        init_fold_in(opposite, np.array([1]), np.array([0]), np.array([1.0]), n_new=1, l2=1.0)
    with pytest.raises(ValueError, match="l2"):
        init_fold_in(opposite, np.array([0]), np.array([0]), np.array([1.0]), n_new=1, l2=0.0)


def test_initialize_rows_fold_in_falls_back_to_metadata_then_normal():
    existing = np.array([[1.0, 1.0], [3.0, 3.0]], np.float32)
    existing_tokens = sp.csr_matrix(np.array([[1, 0], [1, 0]]))
    new_tokens = sp.csr_matrix(np.array([[0, 1], [1, 0], [0, 0]]))
    fold_in = {"opposite": np.eye(2), "new_rows_local": np.array([0, 0]), "opposite_rows": np.array([0, 1]),
               "targets": np.array([1.0, 1.0]), "weights": None, "l2": 1.0}
    new = initialize_rows("fold_in", existing=existing, n_new=3, seed=7, existing_tokens=existing_tokens,
                          new_tokens=new_tokens, fold_in=fold_in)
    np.testing.assert_allclose(new[0], [0.5, 0.5], rtol=1e-6)            # (I + I)^-1 [1, 1]
    np.testing.assert_allclose(new[1], [2.0, 2.0], rtol=1e-6)            # token 0's centroid
    np.testing.assert_array_equal(new[2], init_normal(existing, 1, seed=7)[0])  # no token known
    without_tokens = initialize_rows("fold_in", existing=existing, n_new=3, seed=7, fold_in=fold_in)
    np.testing.assert_array_equal(without_tokens[1:], init_normal(existing, 2, seed=7))


def test_initialize_rows_dispatches_each_strategy():
    existing = _trained()
    np.testing.assert_array_equal(initialize_rows("normal", existing=existing, n_new=4, seed=1),
                                  init_normal(existing, 4, 1))
    np.testing.assert_array_equal(initialize_rows("uniform", existing=existing, n_new=4, seed=1),
                                  init_uniform(existing, 4, 1))
    np.testing.assert_array_equal(initialize_rows("mean", existing=existing, n_new=4, seed=1),
                                  init_mean(existing, 4))
    np.testing.assert_array_equal(initialize_rows("metadata", existing=existing, n_new=4, seed=1),
                                  init_normal(existing, 4, 1))
    np.testing.assert_array_equal(initialize_rows("fold_in", existing=existing, n_new=4, seed=1),
                                  init_normal(existing, 4, 1))
    assert initialize_rows("normal", existing=existing, n_new=0, seed=1).shape == (0, 4)
    with pytest.raises(ValueError, match="strategy"):
        initialize_rows("zeros", existing=existing, n_new=1, seed=0)
