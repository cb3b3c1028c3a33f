"""iALS: the closed-form solve against a fixed table, checked against the `implicit` library's own solve."""
from __future__ import annotations

import numpy as np
import pytest

from accrete.models import ials


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    matrix = ials.interaction_matrix(rng.integers(1, 120, 3000), rng.integers(1, 80, 3000), (120, 80))
    users, items = ials.fit(matrix, dim=8, alpha=10.0, l2=5.0, iterations=5, seed=0)
    return matrix, users, items


def test_solve_matches_implicits_exact_user_solve(fitted):
    from implicit.cpu.als import AlternatingLeastSquares

    matrix, users, items = fitted
    reference = AlternatingLeastSquares(factors=8, regularization=5.0, alpha=10.0)
    reference.user_factors, reference.item_factors = users.copy(), items.copy()
    expected = reference.recalculate_user(np.arange(1, 120), matrix[1:])
    np.testing.assert_allclose(ials.solve(items, matrix[1:], alpha=10.0, l2=5.0), expected, atol=1e-5)


def test_a_fit_recovers_planted_groups_and_the_oov_rows_are_zero():
    rng = np.random.default_rng(3)
    users = rng.integers(1, 200, 4000)
    group = users % 2  # even users pick even items, odd users odd items
    items = 1 + 2 * rng.integers(0, 50, 4000) + group
    user_table, item_table = ials.fit(ials.interaction_matrix(users, items, (200, 101)), dim=4, alpha=10.0, l2=1.0,
                                      iterations=10, seed=0)
    assert not user_table[0].any() and not item_table[0].any()
    top = np.argsort(-(user_table[1:] @ item_table[1:].T), axis=1)[:, :10] + 1
    assert ((top % 2) != (np.arange(1, 200)[:, None] % 2)).mean() > 0.95  # item parity: odd row = even item


def test_rows_without_interactions_solve_to_zero_and_the_table_is_not_touched(fitted):
    _, _, items = fitted
    table = items.copy()
    observed = ials.interaction_matrix(np.array([1, 1]), np.array([3, 5]), (3, len(items)))
    solved = ials.solve(items, observed, alpha=10.0, l2=5.0)
    assert not solved[0].any() and not solved[2].any() and solved[1].any()
    assert table.tobytes() == items.tobytes()


def test_repeated_pairs_count_once():
    matrix = ials.interaction_matrix(np.array([1, 1, 1]), np.array([2, 2, 3]), (2, 4))
    assert matrix.nnz == 2 and set(matrix.data) == {1.0}


@pytest.mark.parametrize("alpha,l2", [(0.0, 1.0), (1.0, 0.0)])
def test_bad_settings_are_refused(fitted, alpha, l2):
    _, _, items = fitted
    with pytest.raises(ValueError, match="alpha|l2"):
        ials.solve(items, ials.interaction_matrix(np.array([0]), np.array([1]), (1, len(items))), alpha=alpha, l2=l2)


def test_weighted_confidence_is_one_plus_the_log_of_a_pairs_total_weight():
    from accrete.models.ials import interaction_matrix

    matrix = interaction_matrix(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 2]), (2, 3),
                                np.array([2.0, 3.0, 1.0, 0.5], np.float32))
    np.testing.assert_allclose(matrix.toarray(), [[0, 1 + np.log(5.0), 0], [1.0, 0, 1.0]], rtol=1e-6)
    binary = interaction_matrix(np.array([0, 0, 1]), np.array([1, 1, 0]), (2, 3))
    np.testing.assert_array_equal(binary.toarray(), [[0, 1, 0], [1, 0, 0]])
