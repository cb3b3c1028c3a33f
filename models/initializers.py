"""Initial values for the rows appended to an embedding table before an incremental step (numpy, deterministic).

Where a new row starts matters: it is trained on a few days of data while the rows around it are frozen, so it
should start in the region the trained rows occupy, or better, already solve its own least-squares problem
against the frozen opposite table (`init_fold_in`, as ALS folds in a new user). Every function returns float32
rows and is a pure function of its arguments and seed. Tables are [rows, dim]; the random and averaging
initializers also accept 1-D bias tables [rows] and then return [n_new].
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from accrete.models import INIT_STRATEGIES

STRATEGIES = INIT_STRATEGIES

# Spread of the random initializers when there is nothing to match (an empty table); Keras' default scale.
DEFAULT_SCALE = 0.05
# Largest float64 working array of `init_fold_in`, in elements (~128 MB), so memory is bounded for any input.
FOLD_IN_WORKING_ELEMENTS = 1 << 24


def _as_rows(existing: np.ndarray) -> tuple[np.ndarray, bool]:
    """(existing as a 2-D float64 array, whether the caller passed a 1-D bias table)."""
    existing = np.asarray(existing)
    if existing.ndim == 1:
        return existing.astype(np.float64)[:, None], True
    if existing.ndim != 2:
        raise ValueError("existing rows must be a [rows, dim] table or a [rows] bias table, "
                         f"got shape {existing.shape}")
    return existing.astype(np.float64), False


def _check_n_new(n_new: int) -> int:
    if int(n_new) < 0:
        raise ValueError(f"n_new must be >= 0, got {n_new}")
    return int(n_new)


def _result(rows: np.ndarray, was_1d: bool) -> np.ndarray:
    rows = rows.astype(np.float32)
    return rows[:, 0] if was_1d else rows


def init_normal(existing: np.ndarray, n_new: int, seed: int) -> np.ndarray:
    """New rows drawn from N(mu_k, sigma_k^2) independently per dimension k, with mu and sigma those of `existing`.

    Matching the trained rows' per-dimension location and spread puts a new row where dot products with the
    opposite table have the usual scale, instead of near zero (Keras' default) or far out. With no existing
    rows it is N(0, 0.05^2); with a single existing row sigma falls back to 0.05.
    """
    rows, was_1d = _as_rows(existing)
    n_new = _check_n_new(n_new)
    dim = rows.shape[1]
    mean = rows.mean(axis=0) if len(rows) else np.zeros(dim)
    std = rows.std(axis=0) if len(rows) > 1 else np.full(dim, DEFAULT_SCALE)
    noise = np.random.default_rng(seed).standard_normal((n_new, dim))
    return _result(mean + noise * std, was_1d)


def init_uniform(existing: np.ndarray, n_new: int, seed: int) -> np.ndarray:
    """The naive baseline: new rows ~ U(-0.05, 0.05) per entry, as Keras initializes a fresh embedding layer.

    `existing` only supplies the dimension; its values are ignored.
    """
    rows, was_1d = _as_rows(existing)
    n_new = _check_n_new(n_new)
    values = np.random.default_rng(seed).uniform(-DEFAULT_SCALE, DEFAULT_SCALE, (n_new, rows.shape[1]))
    return _result(values, was_1d)


def init_mean(existing: np.ndarray, n_new: int) -> np.ndarray:
    """Every new row = (1/n) sum_i existing_i, the centroid of the trained rows (zeros when there are none).

    A new row then scores every item like the average user (or every user like the average item): a popularity
    prior that the first updates move away from.
    """
    rows, was_1d = _as_rows(existing)
    n_new = _check_n_new(n_new)
    mean = rows.mean(axis=0) if len(rows) else np.zeros(rows.shape[1])
    return _result(np.tile(mean, (n_new, 1)), was_1d)


def _binary(tokens, name: str) -> sp.csr_matrix:
    try:
        matrix = sp.csr_matrix(tokens, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a rows x tokens sparse incidence matrix: {exc}") from None
    matrix.data = (matrix.data != 0).astype(np.float64)
    matrix.eliminate_zeros()
    return matrix


def init_metadata(existing: np.ndarray, existing_tokens: sp.csr_matrix, new_tokens: sp.csr_matrix,
                  seed: int) -> np.ndarray:
    """A new row = the mean, over its tokens, of the mean existing row carrying that token.

    With X the existing rows x tokens incidence (0/1), E the existing rows and c_t = sum_i X_it, the token
    centroids are M = diag(1/c) X^T E. For a new row r with token set S_r restricted to known tokens
    (c_t > 0): v_r = (1/|S_r|) sum_{t in S_r} M_t, i.e. V = diag(1/|S|) Y M computed with two sparse products.
    A new item of genre "jazz" thus starts among the jazz items. Rows with no known token fall back to
    `init_normal(existing, ., seed)`. Token columns index one shared token vocabulary; `new_tokens` may have
    more columns (tokens no existing row carries).
    """
    rows, was_1d = _as_rows(existing)
    existing_tokens = _binary(existing_tokens, "existing_tokens")
    new_tokens = _binary(new_tokens, "new_tokens")
    if existing_tokens.shape[0] != len(rows):
        raise ValueError(f"existing_tokens has {existing_tokens.shape[0]} rows but existing has {len(rows)} rows")
    n_new = new_tokens.shape[0]
    n_tokens = max(existing_tokens.shape[1], new_tokens.shape[1])
    existing_tokens.resize((existing_tokens.shape[0], n_tokens))
    new_tokens.resize((n_new, n_tokens))

    carriers = np.asarray(existing_tokens.sum(axis=0)).ravel()
    known = carriers > 0
    token_means = sp.diags(np.where(known, 1.0 / np.maximum(carriers, 1), 0.0)) @ (existing_tokens.T @ rows)
    known_tokens = new_tokens @ sp.diags(known.astype(np.float64))
    n_known = np.asarray(known_tokens.sum(axis=1)).ravel()
    has_known = n_known > 0
    result = np.asarray(known_tokens @ token_means) / np.maximum(n_known, 1)[:, None]
    if not has_known.all():
        fallback = init_normal(rows, int((~has_known).sum()), seed)
        result[~has_known] = fallback
    return _result(result, was_1d)


def init_fold_in(opposite: np.ndarray, new_rows_local: np.ndarray, opposite_rows: np.ndarray,
                 targets: np.ndarray, n_new: int, l2: float,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge regression of each new row against the frozen opposite table (ALS fold-in).

    Interaction j links new row r_j (local index in [0, n_new)) to opposite row o_j with target y_j and
    weight w_j (1 by default). With q_j = opposite[o_j], each new row solves

        v_r = argmin_v sum_{j: r_j = r} w_j (y_j - q_j . v)^2 + l2 ||v||^2
            = (sum_j w_j q_j q_j^T + l2 I)^-1 sum_j w_j y_j q_j.

    Because the opposite rows are frozen during the step, this is exactly the row's optimum for the frozen
    model (retrieval: y = 1 for observed pairs; rating: y = rating - global mean - opposite bias, computed by
    the caller). Gram matrices are batched matmuls over rows bucketed by interaction count, solved as a stack
    with `np.linalg.solve`; working memory is bounded by FOLD_IN_WORKING_ELEMENTS (chunks of rows, and of
    interactions for a row with very many).

    Returns:
      (vectors float32 [n_new, d], has_interactions bool [n_new]); rows without interactions are zero.
    """
    opposite = np.asarray(opposite)
    if opposite.ndim != 2:
        raise ValueError(f"opposite must be a [rows, dim] table, got shape {opposite.shape}")
    n_new = _check_n_new(n_new)
    if not l2 > 0:
        raise ValueError(f"fold-in needs l2 > 0 (a row with fewer interactions than dims is singular), got {l2}")
    rows = np.asarray(new_rows_local, dtype=np.int64).ravel()
    others = np.asarray(opposite_rows, dtype=np.int64).ravel()
    targets = np.asarray(targets, dtype=np.float64).ravel()
    weights = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not len(rows) == len(others) == len(targets) == len(weights):
        raise ValueError("new_rows_local, opposite_rows, targets and weights must have the same length, got "
                         f"{len(rows)}, {len(others)}, {len(targets)}, {len(weights)}")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_new):
        raise ValueError(f"new_rows_local must be in [0, {n_new}), got values in [{rows.min()}, {rows.max()}]")
    if len(others) and (others.min() < 0 or others.max() >= len(opposite)):
        raise ValueError(f"opposite_rows must be in [0, {len(opposite)}), got [{others.min()}, {others.max()}]")

    dim = opposite.shape[1]
    order = np.argsort(rows, kind="stable")
    others, targets, weights = others[order], targets[order], weights[order]
    counts = np.bincount(rows, minlength=n_new)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    vectors = np.zeros((n_new, dim), np.float32)
    active = np.flatnonzero(counts)
    # Rows are bucketed by their interaction count rounded up to a power of two and padded to it (zero
    # weight), so each bucket's Gram matrices are one batched matmul [rows, d, L] @ [rows, L, d] without
    # materializing a d x d outer product per interaction; padding at most doubles the work.
    padded = 1 << np.ceil(np.log2(counts[active])).astype(np.int64)
    ridge = l2 * np.eye(dim)
    for length in np.unique(padded):
        members = active[padded == length]
        rows_per_chunk = max(1, FOLD_IN_WORKING_ELEMENTS // (int(length) * dim))
        columns_per_block = max(1, min(int(length), FOLD_IN_WORKING_ELEMENTS // dim))
        for c0 in range(0, len(members), rows_per_chunk):
            chunk = members[c0:c0 + rows_per_chunk]
            gram = np.broadcast_to(ridge, (len(chunk), dim, dim)).copy()
            rhs = np.zeros((len(chunk), dim))
            for l0 in range(0, int(length), columns_per_block):
                offsets = np.arange(l0, min(int(length), l0 + columns_per_block))
                valid = offsets[None, :] < counts[chunk][:, None]
                positions = np.where(valid, starts[chunk][:, None] + offsets[None, :], 0)
                q = opposite[others[positions]].astype(np.float64)            # [c, l, d]
                w = np.where(valid, weights[positions], 0.0)                    # [c, l]
                weighted = q * w[..., None]
                gram += np.matmul(weighted.transpose(0, 2, 1), q)
                rhs += np.einsum("cld,cl->cd", weighted, targets[positions])
            vectors[chunk] = np.linalg.solve(gram, rhs[..., None])[..., 0]
    return vectors, counts > 0


def initialize_rows(strategy: str, *, existing: np.ndarray, n_new: int, seed: int,
                    existing_tokens: sp.csr_matrix | None = None, new_tokens: sp.csr_matrix | None = None,
                    fold_in: dict | None = None) -> np.ndarray:
    """The initial values of `n_new` appended rows under `strategy` (one of STRATEGIES), with fallbacks.

    "fold_in" solves each new row that has interactions (`fold_in` = dict of `init_fold_in`'s opposite,
    new_rows_local, opposite_rows, targets, weights, l2); rows without interactions fall back to "metadata"
    when tokens are given, else to "normal". "metadata" falls back to "normal" without tokens, and for rows
    with no known token.
    """
    n_new = _check_n_new(n_new)
    has_tokens = existing_tokens is not None and new_tokens is not None
    if new_tokens is not None and new_tokens.shape[0] != n_new:
        raise ValueError(f"new_tokens has {new_tokens.shape[0]} rows but n_new is {n_new}")
    if strategy == "normal":
        return init_normal(existing, n_new, seed)
    if strategy == "uniform":
        return init_uniform(existing, n_new, seed)
    if strategy == "mean":
        return init_mean(existing, n_new)
    if strategy == "metadata":
        if has_tokens:
            return init_metadata(existing, existing_tokens, new_tokens, seed)
        return init_normal(existing, n_new, seed)
    if strategy == "fold_in":
        if fold_in is None:
            return initialize_rows("metadata", existing=existing, n_new=n_new, seed=seed,
                                   existing_tokens=existing_tokens, new_tokens=new_tokens)
        unknown = set(fold_in) - {"opposite", "new_rows_local", "opposite_rows", "targets", "weights", "l2"}
        if unknown:
            raise ValueError(f"unknown fold_in key(s): {sorted(unknown)}")
        vectors, has_interactions = init_fold_in(n_new=n_new, **fold_in)
        missing = ~has_interactions
        if missing.any():
            vectors[missing] = initialize_rows(
                "metadata", existing=existing, n_new=int(missing.sum()), seed=seed,
                existing_tokens=existing_tokens, new_tokens=new_tokens[missing] if new_tokens is not None else None)
        return vectors
    raise ValueError(f"init strategy must be one of {STRATEGIES}, got {strategy!r}")
