"""Implicit-feedback ALS (Hu, Koren & Volinsky, ICDM 2008) in the frozen-tail design.

Every observed (user, item) pair is a positive with confidence `alpha`; every other pair is a negative
with confidence 1. For a row x with observed opposite rows Y_x (the opposite table is Y):

    x = (Y^T Y + (alpha - 1) Y_x^T Y_x + l2 I)^-1  alpha Y_x^T 1

The full fit alternates these solves over all rows (the `implicit` library, multi-threaded). The nightly
step needs only the solve itself, against a table that does not move: new item rows against the user
table, and new or active users against the item table. That is the same closed form the full fit uses, so
a folded row is exactly what one more ALS half-step would give it, and no row outside the solved ones
changes. Cost is O(nnz d^2 + rows d^3) for the solved rows, plus one d x d Gram of the opposite table.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp


def interaction_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary rows x cols CSR of the distinct pairs (repeats of a pair count once)."""
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def fit(matrix: sp.csr_matrix, *, dim: int, alpha: float, l2: float, iterations: int, seed: int,
        threads: int = 0, on_iteration: Callable[[int, float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """User and item tables (float32) of a full iALS fit on a binary users x items matrix.

    Row 0 of each table is the out-of-vocabulary row: it has no interactions and comes out as zeros.
    `on_iteration(iteration, seconds)`, if given, is called after each ALS iteration (1-based).
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    _check(alpha, l2)
    with threadpool_limits(1, "blas"):  # implicit parallelizes over rows; a threaded BLAS inside slows it
        model = AlternatingLeastSquares(factors=dim, regularization=l2, alpha=alpha, iterations=iterations,
                                        random_state=seed, num_threads=threads, calculate_training_loss=False)
        callback = None if on_iteration is None else (lambda iteration, seconds, _loss: on_iteration(iteration + 1, seconds))
        model.fit(sp.csr_matrix(matrix, dtype=np.float32), show_progress=False, callback=callback)
    users = np.asarray(model.user_factors, np.float32)
    items = np.asarray(model.item_factors, np.float32)
    users[0] = 0.0
    items[0] = 0.0
    return users, items


def solve(opposite: np.ndarray, observed: sp.csr_matrix, *, alpha: float, l2: float) -> np.ndarray:
    """The closed-form iALS solve of one row per row of `observed` against the fixed `opposite` table.

    Args:
        opposite: float32 `[n_opposite, dim]`, not modified.
        observed: binary CSR `[n_rows, n_opposite]`: the opposite rows each solved row interacted with.
        alpha: confidence of an observed pair (> 0).
        l2: ridge penalty (> 0, so a row with few interactions is still well-posed).

    Returns:
        float32 `[n_rows, dim]`; a row without interactions solves to zeros.
    """
    from threadpoolctl import threadpool_limits

    _check(alpha, l2)
    observed = sp.csr_matrix(observed)
    if observed.shape[1] != opposite.shape[0]:
        raise ValueError(f"ials.solve: observed has {observed.shape[1]} columns, the opposite table {opposite.shape[0]} rows")
    table = np.asarray(opposite, np.float64)
    dim = table.shape[1]
    n_rows = observed.shape[0]
    base = table.T @ table + l2 * np.eye(dim)
    counts = np.diff(observed.indptr)
    cols = observed.indices
    binary = sp.csr_matrix((np.ones(len(cols)), cols, observed.indptr), shape=observed.shape)
    rhs = alpha * (binary @ table)
    systems = np.broadcast_to(base, (n_rows, dim, dim)).copy()
    indptr = observed.indptr
    # Single-threaded BLAS: these products are dim x dim, too small to share, and on a busy machine a
    # threaded BLAS waits for its threads at every product (a year-scale nightly step: 7.3 s vs 2.2 s).
    with threadpool_limits(1, "blas"):
        for row in np.flatnonzero(counts):  # one small BLAS product per row beats batched outer products
            y = table[cols[indptr[row]:indptr[row + 1]]]
            systems[row] += (alpha - 1.0) * (y.T @ y)
        solved = np.linalg.solve(systems, rhs[:, :, None])[:, :, 0] if n_rows else np.zeros((0, dim))
    solved[counts == 0] = 0.0
    return solved.astype(np.float32)


def _check(alpha: float, l2: float) -> None:
    if not alpha > 0:
        raise ValueError(f"iALS needs alpha > 0, got {alpha}")
    if not l2 > 0:
        raise ValueError(f"iALS needs l2 > 0 (a row with fewer interactions than dims is singular), got {l2}")
