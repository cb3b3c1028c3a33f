"""Prequential ("test-then-train") full-ranking evaluation of a recommender on one partition.

Before the nightly step trains on partition D, the model as it stands ranks *every* item for each user who
interacts in D, and we measure how many of the items the user then actually chose land in its top K.
No sampled negatives: sampled metrics are known to disagree with full-ranking ones (Krichene & Rendle,
KDD 2020). Items a user interacted with before D are removed from that user's ranking (recommending them
again is not the task), so a re-interaction in D with such an item can never be ranked and is dropped.

Everything is vectorized over users in batches of `user_batch`: one scorer call (a matrix product) per
batch, seen items masked to -inf through the CSR indices of the history, `np.argpartition` for the top K,
hits read from a sparse relevance matrix. Memory is a few arrays of `user_batch x n_items`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

# user rows [b] (int64) -> scores [b, n_items] (float32). The evaluation masks the returned array in place
# when it owns its memory and is writable, so a scorer must return a fresh array, not a cached one.
Scorer = Callable[[np.ndarray], np.ndarray]

#: The metrics a step's summary shows first (status, the flows' artifacts and logs), from `evaluate_prequential`.
HEADLINE_METRICS = ("recall@10", "ndcg@10", "recall@10/new_users", "recall@10/new_items", "recall@10/young_items",
                    "recall@10/young_items/control", "lift@10", "coverage@10")


def uses_item_bias(objective: str, use_bias: bool) -> bool:
    """Whether scores add the item bias: always under iALS (it holds the time-aware term), else `use_bias`."""
    return objective == "ials" or use_bias


def dot_scorer(
    user_vectors: np.ndarray, item_vectors: np.ndarray, item_bias: np.ndarray | None = None
) -> Scorer:
    """The matrix-factorization score `s(u, i) = u . v_i + b_i` for a batch of users against every item.

    Exists so the evaluation never needs TensorFlow: the embedding tables are plain float32 arrays.
    User rows past the end of `user_vectors` (users new since the table was built) are scored with
    row 0, the out-of-vocabulary row, exactly as an unknown ID is looked up at serving time.

    Args:
        user_vectors: float32 `[user_rows, dim]`, row 0 included.
        item_vectors: float32 `[item_rows, dim]`, row 0 included.
        item_bias: optional float32 `[item_rows]` added to every user's scores.

    Returns:
        A `Scorer`: user rows `[b]` -> float32 scores `[b, item_rows]`.
    """
    users = np.asarray(user_vectors, dtype=np.float32)
    items = np.asarray(item_vectors, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2:
        raise ValueError(f"dot_scorer: user and item vectors must be 2-D, got {users.shape} and {items.shape}")
    if users.shape[1] != items.shape[1]:
        raise ValueError(f"dot_scorer: user dim {users.shape[1]} != item dim {items.shape[1]}")
    if users.shape[0] < 1:
        raise ValueError("dot_scorer: the user table needs at least row 0 (out-of-vocabulary)")
    bias = None
    if item_bias is not None:
        bias = np.asarray(item_bias, dtype=np.float32)
        if bias.shape != (items.shape[0],):
            raise ValueError(f"dot_scorer: item_bias shape {bias.shape} != ({items.shape[0]},)")

    def score(user_rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(user_rows, "user_rows")
        rows = np.where(rows < users.shape[0], rows, 0)
        scores = users[rows] @ items.T
        if bias is not None:
            scores += bias
        return scores

    return score


def popularity_scorer(item_scores: np.ndarray) -> Scorer:
    """A scorer that gives every user the same item scores (e.g. `popularity_counts`): the baseline any
    personalized model must beat under the same protocol.

    Returns:
        A `Scorer`: user rows `[b]` -> float32 `[b, n_items]`, each row a copy of `item_scores`.
    """
    scores = np.asarray(item_scores, dtype=np.float32)
    if scores.ndim != 1:
        raise ValueError(f"popularity_scorer: item_scores must be 1-D, got shape {scores.shape}")

    def score(user_rows: np.ndarray) -> np.ndarray:
        rows = _as_rows(user_rows, "user_rows")
        return np.broadcast_to(scores, (rows.shape[0], scores.shape[0])).copy()

    return score


def popularity_counts(item_rows: np.ndarray, n_items: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Interaction count of each item row, `c_i = sum_t w_t [item_t = i]` (`w_t = 1` without weights).

    Args:
        item_rows: int item rows of the interactions, each in `[0, n_items)`.
        n_items: number of item rows (row 0 included).
        weights: optional per-interaction weights (e.g. ratings or a time decay).

    Returns:
        float32 `[n_items]`.
    """
    rows = _as_rows(item_rows, "item_rows", upper=n_items)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != rows.shape:
            raise ValueError(f"popularity_counts: weights shape {weights.shape} != item_rows shape {rows.shape}")
    return np.bincount(rows, weights=weights, minlength=n_items).astype(np.float32)


def seen_matrix(user_rows: np.ndarray, item_rows: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """The interaction history as a boolean `n_users x n_items` CSR matrix, `H[u, i] = True` iff u
    interacted with i at least once (duplicates collapsed, indices sorted).

    It is the `seen` argument of `evaluate_prequential` and `top_k_excluding_seen`.
    """
    users = _as_rows(user_rows, "user_rows", upper=n_users)
    items = _as_rows(item_rows, "item_rows", upper=n_items)
    if users.shape != items.shape:
        raise ValueError(f"seen_matrix: {users.shape[0]} user rows but {items.shape[0]} item rows")
    return _boolean_csr(users, items, (n_users, n_items))


def top_k_excluding_seen(
    scorer: Scorer,
    user_rows: np.ndarray,
    k: int,
    seen: sp.csr_matrix | None = None,
    excluded_items: np.ndarray | None = None,
    user_batch: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top `k` items, never recommending row 0, `excluded_items` or the user's `seen` items.

    Ranking: descending score, ties broken by the lower item row, so the result is deterministic and
    independent of `user_batch`. Items scored `-inf` are never recommended; a user with fewer than `k`
    recommendable items gets trailing slots with row `-1` and score `-inf`.

    Args:
        scorer: user rows `[b]` -> scores `[b, n_items]`.
        user_rows: int user rows `[n]`, in any order, duplicates allowed.
        k: list length.
        seen: history, users x items; rows past its end are users with no history.
        excluded_items: item rows never recommended (or a boolean mask over item rows).
        user_batch: users scored per scorer call.

    Returns:
        `(rows, scores)`: int64 `[n, k]` and float32 `[n, k]`, row `i` for `user_rows[i]`.
    """
    users = _as_rows(user_rows, "user_rows")
    if k < 0:
        raise ValueError(f"top_k_excluding_seen: k must be >= 0, got {k}")
    if user_batch < 1:
        raise ValueError(f"top_k_excluding_seen: user_batch must be >= 1, got {user_batch}")
    seen = _as_seen(seen, n_items=None)
    excluded = _excluded_rows(excluded_items, n_items=None)
    out_rows = np.full((users.shape[0], k), -1, dtype=np.int64)
    out_scores = np.full((users.shape[0], k), -np.inf, dtype=np.float32)
    for start in range(0, users.shape[0], user_batch):
        batch = users[start : start + user_batch]
        scores = _masked_scores(scorer, batch, seen, excluded, n_items=None)
        out_rows[start : start + batch.shape[0]], out_scores[start : start + batch.shape[0]] = _top_k(scores, k)
    return out_rows, out_scores


def evaluate_prequential(
    scorer: Scorer,
    *,
    test_users: np.ndarray,
    test_items: np.ndarray,
    n_items: int,
    seen: sp.csr_matrix | None,
    new_users: np.ndarray | None = None,
    new_items: np.ndarray | None = None,
    ks: Sequence[int] = (10, 50),
    user_batch: int = 2048,
    excluded_items: np.ndarray | None = None,
    young_items: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking Recall@K and NDCG@K of `scorer` on partition D's interactions, before training on D.

    Protocol, per user u interacting in D:

    * Ranking: every item row except row 0 (out-of-vocabulary), `excluded_items` (e.g. rows not yet in
      the embedding table) and the items u interacted with before D (`seen`), by descending score, ties
      broken by the lower row. Items scored `-inf` are never recommended. The scorer may return fewer
      than `n_items` columns: the missing trailing items are then not recommendable either.
    * Relevant set `R_u`: the distinct items of u's interactions in D (duplicates collapse per
      (user, item)) that are not in u's history: a re-interaction cannot be ranked, so it is dropped.
      Row 0 is not an item and is dropped too. Excluded items stay in `R_u` and count as misses: the
      deployed model could not have recommended them.
    * `Recall@K = |topK(u) ∩ R_u| / |R_u|`;
      `NDCG@K = sum_{i<K} rel_i / log2(i + 2) / sum_{i<min(K, |R_u|)} 1 / log2(i + 2)`, with `rel_i = 1`
      iff the item at rank i (from 0) is in `R_u`.
    * Each metric is averaged over the users of a slice whose slice-relevant set is non-empty (the
      evaluated users). Slices share the ranking and differ in the relevant set:
      "all" (no suffix): every user, `R_u`;
      "existing": users not in `new_users`, `R_u` restricted to items not in `new_items`;
      "new_users": users in `new_users`, all of `R_u`;
      "new_items": every user, `R_u` restricted to `new_items`;
      "young_items" (only when `young_items` is given): every user, `R_u` restricted to `young_items` (items
      added in the last period or two: past their cold start, not yet established).
      A slice without users gives NaN (not 0) and user count 0.

    Keys: `recall@{k}`, `ndcg@{k}`, `recall@{k}/{slice}`, `ndcg@{k}/{slice}` for each k in `ks`;
    `users` and `users/{slice}` (evaluated user counts); `coverage@{c}`: share of recommendable items
    (not row 0, not excluded, scored) in at least one evaluated user's top c; `new_item_exposure@{c}`:
    share of the filled top-c slots of evaluated users that hold new items; `c = 10` if 10 is in `ks`,
    else `min(ks)`; both NaN without evaluated users. `new_item_interaction_share`: share of the
    deduplicated relevant (user, item) pairs of D whose item is new (NaN if there are none).

    Args:
        scorer: user rows `[b]` -> float32 scores `[b, n_items]`.
        test_users, test_items: int64 rows of D's interactions, aligned.
        n_items: number of item rows (row 0 included); every test item row is below it.
        seen: history before D, users x items boolean CSR (e.g. `seen_matrix`); rows past its end are
            users with no history; None means no history at all.
        new_users, new_items: rows of the users / items new in D.
        ks: list lengths K.
        user_batch: users per scorer call; results do not depend on it.
        excluded_items: item rows never recommended (or a boolean mask over item rows).
        young_items: rows of the items of the "young_items" slice; None: no such slice.

    Returns:
        The metrics, keyed as above.
    """
    ks = _validate_ks(ks)
    if user_batch < 1:
        raise ValueError(f"evaluate_prequential: user_batch must be >= 1, got {user_batch}")
    if n_items < 1:
        raise ValueError(f"evaluate_prequential: n_items must be >= 1, got {n_items}")
    users = _as_rows(test_users, "test_users")
    items = _as_rows(test_items, "test_items", upper=n_items)
    if users.shape != items.shape:
        raise ValueError(f"evaluate_prequential: {users.shape[0]} test users but {items.shape[0]} test items")
    seen = _as_seen(seen, n_items=n_items)
    excluded = _excluded_rows(excluded_items, n_items=n_items)
    new_item_mask = np.zeros(n_items, dtype=bool)
    if new_items is not None:
        new_item_mask[_as_rows(new_items, "new_items", upper=n_items)] = True
    new_user_rows = np.unique(_as_rows(new_users, "new_users")) if new_users is not None else np.zeros(0, np.int64)

    eval_users, relevance = _relevance(users, items, seen, n_items)
    n_eval = eval_users.shape[0]
    nnz_user = np.repeat(np.arange(n_eval), np.diff(relevance.indptr))
    relevant_new = new_item_mask[relevance.indices]
    n_rel = {
        "all": np.diff(relevance.indptr).astype(np.int64),
        "new_items": np.bincount(nnz_user, weights=relevant_new, minlength=n_eval).astype(np.int64),
    }
    n_rel["existing"] = n_rel["all"] - n_rel["new_items"]
    n_rel["new_users"] = n_rel["all"]
    is_new_user = np.isin(eval_users, new_user_rows)
    members = {
        "all": n_rel["all"] > 0,
        "existing": ~is_new_user & (n_rel["existing"] > 0),
        "new_users": is_new_user & (n_rel["all"] > 0),
        "new_items": n_rel["new_items"] > 0,
    }
    young_item_mask = np.zeros(n_items, dtype=bool)
    if young_items is not None:
        young_item_mask[_as_rows(young_items, "young_items", upper=n_items)] = True
        n_rel["young_items"] = np.bincount(nnz_user, weights=young_item_mask[relevance.indices],
                                           minlength=n_eval).astype(np.int64)
        members["young_items"] = n_rel["young_items"] > 0

    k_max = max(ks)
    k_cov = 10 if 10 in ks else min(ks)
    discount = 1.0 / np.log2(np.arange(k_max) + 2.0)
    ideal = np.cumsum(discount)
    recall = {(s, k): np.zeros(n_eval) for s in members for k in ks}
    ndcg = {(s, k): np.zeros(n_eval) for s in members for k in ks}
    recommended = np.zeros(n_items, dtype=bool)
    filled_slots = new_item_slots = 0
    width = n_items

    for start in range(0, n_eval, user_batch):
        stop = min(start + user_batch, n_eval)
        scores = _masked_scores(scorer, eval_users[start:stop], seen, excluded, n_items=n_items)
        width = scores.shape[1]
        top, _ = _top_k(scores, k_max)
        del scores
        filled = top >= 0
        top_safe = np.where(filled, top, 0)  # row 0 is never relevant, so a padded slot is never a hit
        local = np.repeat(np.arange(start, stop), k_max)
        hit = np.asarray(relevance[local, top_safe.ravel()]).reshape(top.shape).astype(bool)
        top_is_new = new_item_mask[top_safe] & filled
        slice_hits = {"all": hit, "new_users": hit, "existing": hit & ~top_is_new, "new_items": hit & top_is_new}
        if young_items is not None:
            slice_hits["young_items"] = hit & young_item_mask[top_safe] & filled
        for s, h in slice_hits.items():
            rel_count = n_rel[s][start:stop]
            for k in ks:
                hk = h[:, :k]
                idcg = ideal[np.clip(np.minimum(k, rel_count) - 1, 0, None)]
                with np.errstate(divide="ignore", invalid="ignore"):
                    recall[s, k][start:stop] = hk.sum(axis=1) / rel_count
                    ndcg[s, k][start:stop] = (hk * discount[:k]).sum(axis=1) / idcg
        cov_top = top[:, :k_cov]
        recommended[cov_top[cov_top >= 0]] = True
        filled_slots += int(filled[:, :k_cov].sum())
        new_item_slots += int(top_is_new[:, :k_cov].sum())

    metrics: dict[str, float] = {}
    for s, member in members.items():
        suffix = "" if s == "all" else f"/{s}"
        for k in ks:
            metrics[f"recall@{k}{suffix}"] = _mean(recall[s, k][member])
            metrics[f"ndcg@{k}{suffix}"] = _mean(ndcg[s, k][member])
        metrics[f"users{suffix}"] = int(member.sum())
    recommendable = np.ones(n_items, dtype=bool)
    recommendable[0] = False
    recommendable[excluded] = False
    recommendable[width:] = False
    metrics[f"coverage@{k_cov}"] = (
        float(recommended.sum() / recommendable.sum()) if n_eval and recommendable.any() else float("nan")
    )
    metrics[f"new_item_exposure@{k_cov}"] = new_item_slots / filled_slots if filled_slots else float("nan")
    total = int(n_rel["all"].sum())
    metrics["new_item_interaction_share"] = int(n_rel["new_items"].sum()) / total if total else float("nan")
    return metrics


# --- internals ---------------------------------------------------------------------------------------


def _as_rows(values, name: str, upper: int | None = None) -> np.ndarray:
    """`values` as a 1-D int64 array of rows in `[0, upper)`; a ValueError naming `name` otherwise."""
    rows = np.asarray(values)
    if rows.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of rows, got shape {rows.shape}")
    if rows.size == 0:
        return rows.astype(np.int64)
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{name}: expected integer rows, got dtype {rows.dtype}")
    rows = rows.astype(np.int64, copy=False)
    low, high = rows.min(), rows.max()
    if low < 0 or (upper is not None and high >= upper):
        bound = f"[0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"{name}: rows must be {bound}, found {low if low < 0 else high}")
    return rows


def _boolean_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Boolean CSR with True at each distinct (row, col), canonical (sorted, no duplicates)."""
    counts = sp.csr_matrix((np.ones(rows.shape[0], dtype=np.int32), (rows, cols)), shape=shape)
    counts.sum_duplicates()
    return sp.csr_matrix((np.ones(counts.nnz, dtype=bool), counts.indices, counts.indptr), shape=shape)


def _as_seen(seen, n_items: int | None) -> sp.csr_matrix | None:
    if seen is None:
        return None
    seen = sp.csr_matrix(seen)
    if n_items is not None and seen.shape[1] > n_items:
        raise ValueError(f"seen: has {seen.shape[1]} item columns but n_items is {n_items}")
    return seen


def _excluded_rows(excluded_items, n_items: int | None) -> np.ndarray:
    """Excluded item rows (sorted, unique) from a row array or a boolean mask."""
    if excluded_items is None:
        return np.zeros(0, dtype=np.int64)
    excluded = np.asarray(excluded_items)
    if excluded.dtype == bool:
        if n_items is not None and excluded.shape[0] > n_items:
            raise ValueError(f"excluded_items: mask of length {excluded.shape[0]} but n_items is {n_items}")
        return np.flatnonzero(excluded).astype(np.int64)
    return np.unique(_as_rows(excluded, "excluded_items", upper=n_items))


def _masked_scores(
    scorer: Scorer, users: np.ndarray, seen, excluded: np.ndarray, n_items: int | None
) -> np.ndarray:
    """The scorer's float32 scores for `users` with row 0, excluded and seen items set to -inf."""
    scores = np.asarray(scorer(users))
    if scores.ndim != 2 or scores.shape[0] != users.shape[0]:
        raise ValueError(f"scorer: expected scores of shape ({users.shape[0]}, n_items), got {scores.shape}")
    if n_items is not None and scores.shape[1] > n_items:
        raise ValueError(f"scorer: returned {scores.shape[1]} item columns but n_items is {n_items}")
    if scores.dtype != np.float32 or not scores.flags.owndata or not scores.flags.writeable:
        scores = scores.astype(np.float32, copy=True)
    if np.isnan(scores).any():
        raise ValueError("scorer: returned NaN scores (has the model diverged?)")
    width = scores.shape[1]
    if width:
        scores[:, 0] = -np.inf
    scores[:, excluded[excluded < width]] = -np.inf
    if seen is not None:
        known = users < seen.shape[0]
        history = seen[users[known]]
        cols = history.indices
        rows = np.repeat(np.flatnonzero(known), np.diff(history.indptr))
        keep = (history.data != 0) & (cols < width)
        scores[rows[keep], cols[keep]] = -np.inf
    return scores


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `k` highest-scoring columns by (score desc, column asc); `-inf` slots become -1."""
    b, n = scores.shape
    rows = np.full((b, k), -1, dtype=np.int64)
    values = np.full((b, k), -np.inf, dtype=np.float32)
    kk = min(k, n)
    if kk == 0 or b == 0:
        return rows, values
    top = np.argpartition(scores, n - kk, axis=1)[:, n - kk :]
    kth = np.take_along_axis(scores, top, axis=1).min(axis=1)
    # argpartition picks arbitrarily among items tied with the k-th score; redo those rows exactly,
    # taking all items above the k-th score and the lowest-row items equal to it.
    tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > kk)
    if tied.size:
        sub, sub_kth = scores[tied], kth[tied, None]
        above = sub > sub_kth
        equal = sub == sub_kth
        need = kk - above.sum(axis=1)
        chosen = above | (equal & (np.cumsum(equal, axis=1) <= need[:, None]))
        top[tied] = np.nonzero(chosen)[1].reshape(tied.size, kk)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    valid = top_scores > -np.inf
    rows[:, :kk] = np.where(valid, top, -1)
    values[:, :kk] = top_scores
    return rows, values


def _relevance(users: np.ndarray, items: np.ndarray, seen, n_items: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """Distinct test users with a non-empty relevant set, and that set as a boolean CSR (one row each).

    Relevant: distinct (user, item) pairs of D, minus row 0 and minus items in the user's history.
    """
    eval_users, local = np.unique(users, return_inverse=True)
    pairs = _boolean_csr(local, items, (eval_users.shape[0], n_items))
    pair_user = np.repeat(np.arange(eval_users.shape[0]), np.diff(pairs.indptr))
    pair_item = pairs.indices
    drop = pair_item == 0
    if seen is not None:
        global_user = eval_users[pair_user]
        lookup = (global_user < seen.shape[0]) & (pair_item < seen.shape[1])
        if lookup.any():
            was_seen = np.asarray(seen[global_user[lookup], pair_item[lookup]]).ravel().astype(bool)
            drop[np.flatnonzero(lookup)[was_seen]] = True
    keep_item = pair_item[~drop]
    counts = np.bincount(pair_user[~drop], minlength=eval_users.shape[0])
    nonempty = counts > 0
    # The kept pairs are still grouped by user in ascending order, so dropping empty users is a new indptr.
    indptr = np.concatenate([[0], np.cumsum(counts[nonempty])]).astype(np.int64)
    relevance = sp.csr_matrix(
        (np.ones(keep_item.shape[0], dtype=bool), keep_item, indptr), shape=(int(nonempty.sum()), n_items)
    )
    return eval_users[nonempty], relevance


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted({int(k) for k in ks}))
    if not values or values[0] < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {tuple(ks)}")
    return values


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
