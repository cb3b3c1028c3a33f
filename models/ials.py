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


def interaction_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                       weights: np.ndarray | None = None) -> sp.csr_matrix:
    """Rows x cols CSR of the distinct pairs: binary (repeats of a pair count once), or, with `weights` (e.g. the
    quantities of a purchase log), the confidence scale `1 + log(total weight of the pair)` (a total below 1 counts
    as 1), so that a pair bought by the dozen or again and again weighs more without dwarfing the rest (Hu, Koren &
    Volinsky's log scaling). The full fit multiplies it by `alpha`; `solve` reads only the pattern."""
    values = np.ones(len(rows), np.float32) if weights is None else np.asarray(weights, np.float32)
    matrix = sp.csr_matrix((values, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    if weights is None:
        matrix.data[:] = 1.0
    else:
        matrix.data = (1.0 + np.log(np.maximum(matrix.data, 1.0))).astype(np.float32)
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


def solve(opposite: np.ndarray, observed: sp.csr_matrix, *, alpha: float, l2: float,
          gram: np.ndarray | None = None) -> np.ndarray:
    """The closed-form iALS solve of one row per row of `observed` against the fixed `opposite` table.

    Args:
        opposite: float32 `[n_opposite, dim]`, not modified.
        observed: binary CSR `[n_rows, n_opposite]`: the opposite rows each solved row interacted with.
        alpha: confidence of an observed pair (> 0).
        l2: ridge penalty (> 0, so a row with few interactions is still well-posed).
        gram: `opposite^T opposite` if the caller keeps it (float64 `[dim, dim]`): then only the opposite rows
            `observed` references are read, so the cost follows the solved rows' interactions, not the table.

    Returns:
        float32 `[n_rows, dim]`; a row without interactions solves to zeros.
    """
    from threadpoolctl import threadpool_limits

    _check(alpha, l2)
    observed = sp.csr_matrix(observed)
    if observed.shape[1] != opposite.shape[0]:
        raise ValueError(f"ials.solve: observed has {observed.shape[1]} columns, the opposite table {opposite.shape[0]} rows")
    n_rows = observed.shape[0]
    counts = np.diff(observed.indptr)
    cols = observed.indices
    indptr = observed.indptr
    if gram is None:
        table = np.asarray(opposite, np.float64)
    else:  # the referenced rows only, columns renumbered in the same (sorted) order
        used, cols = np.unique(cols, return_inverse=True)
        table = np.asarray(opposite[used], np.float64)
    dim = np.asarray(opposite).shape[1]
    # Single-threaded BLAS: these products are dim x dim, too small to share, and on a busy machine a
    # threaded BLAS waits for its threads at every product (a year-scale nightly step: 7.3 s vs 2.2 s;
    # one small solve 0.7 s vs 1 ms at load 8).
    with threadpool_limits(1, "blas"):
        base = (table.T @ table if gram is None else np.asarray(gram, np.float64)) + l2 * np.eye(dim)
        binary = sp.csr_matrix((np.ones(len(cols)), cols, indptr), shape=(n_rows, len(table)))
        rhs = alpha * (binary @ table)
        systems = np.broadcast_to(base, (n_rows, dim, dim)).copy()
        for row in np.flatnonzero(counts):  # one small BLAS product per row beats batched outer products
            y = table[cols[indptr[row]:indptr[row + 1]]]
            systems[row] += (alpha - 1.0) * (y.T @ y)
        solved = np.linalg.solve(systems, rhs[:, :, None])[:, :, 0] if n_rows else np.zeros((0, dim))
    solved[counts == 0] = 0.0
    return solved.astype(np.float32)


def fold(user_vectors: np.ndarray, item_vectors: np.ndarray, *, users: np.ndarray, items: np.ndarray,
         history_users: np.ndarray, history_items: np.ndarray, n_old_users: int, n_old_items: int, alpha: float,
         l2: float, refold_active: bool) -> dict[str, float | int]:
    """One nightly iALS step, in place: closed-form solves of the new item rows (`n_old_items ..`) and of the new
    (and, when `refold_active`, the active existing) users against tables that do not move. Item rows below
    `n_old_items` are never written. Order, one ALS alternation: new items against the trained users, then the
    users against every item (from their whole history: `history_*` plus this period's `users`/`items`), then
    the new items again against the updated users. An item without interactions keeps its row.

    Returns: users_refolded, users_folded_in, items_folded_in, user_cosine_shift (mean 1 - cosine between a
    refolded user's vector before and after; NaN when none).
    """
    n_users, n_items = len(user_vectors), len(item_vectors)
    n_new_items = n_items - n_old_items

    def fold_new_items(pair_users: np.ndarray, pair_items: np.ndarray) -> None:
        keep = pair_items >= n_old_items
        if n_new_items and keep.any():
            observed = interaction_matrix(pair_items[keep] - n_old_items, pair_users[keep], (n_new_items, n_users))
            solved = solve(user_vectors, observed, alpha=alpha, l2=l2)
            has = np.diff(observed.indptr) > 0
            item_vectors[n_old_items:][has] = solved[has]

    trained_users = users < n_old_users
    fold_new_items(users[trained_users], items[trained_users])
    solved_users = np.unique(users) if refold_active else np.unique(users[users >= n_old_users])
    solved_users = solved_users[solved_users > 0]
    previous = user_vectors[solved_users].copy()
    if len(solved_users):
        all_users = np.concatenate([history_users, users])
        all_items = np.concatenate([history_items, items])
        local = np.full(n_users, -1, np.int64)
        local[solved_users] = np.arange(len(solved_users))
        mine = (local[all_users] >= 0) & (all_items > 0)
        observed = interaction_matrix(local[all_users[mine]], all_items[mine], (len(solved_users), n_items))
        user_vectors[solved_users] = solve(item_vectors, observed, alpha=alpha, l2=l2)
    fold_new_items(users, items)
    existing = solved_users < n_old_users
    shift = float("nan")
    if existing.any():
        before = previous[existing].astype(np.float64)
        after = user_vectors[solved_users[existing]].astype(np.float64)
        norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
        cosine = np.einsum("ij,ij->i", before, after)[norms > 0] / norms[norms > 0]
        shift = float(np.mean(1.0 - cosine)) if len(cosine) else float("nan")
    return {"users_refolded": int(existing.sum()), "users_folded_in": int((~existing).sum()),
            "items_folded_in": int(len(np.unique(items[items >= n_old_items]))), "user_cosine_shift": shift}


def _check(alpha: float, l2: float) -> None:
    if not alpha > 0:
        raise ValueError(f"iALS needs alpha > 0, got {alpha}")
    if not l2 > 0:
        raise ValueError(f"iALS needs l2 > 0 (a row with fewer interactions than dims is singular), got {l2}")
