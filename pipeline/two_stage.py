"""Two-stage top-K: a few candidates from two cheap sources, then the exact score on those alone.

The score `s(u, i) = q_u . k_i + t_i` (`pipeline.scoring`) has a part an ANN index can serve (`q_u . k_i`, over
frozen keys) and a part it must not hold (`t_i`, which moves every night). So the candidates of user u are

* the top `C + |seen_u|` items by `q_u . k_i` from a candidate source (the ANN index, or an exact product for a
  process that has no index), and
* the top `C + |seen_u|` items by `t_i` (a prefix of the items sorted by term once per version),

each widened by the number of items u has seen so that excluding them still leaves C from each source. The
union is scored exactly, seen items are dropped, and the top K is returned with the evaluation's tie-break
(higher score first, then the lower row). `C` was chosen by measurement (`bench/serving.py`): `DEFAULT_C`
keeps top-10 agreement with exact full ranking (`evaluation.top_k_excluding_seen`) at or above 0.99 on
MovieLens weekly and on the synthetic year. An unknown user gets the top items by term (the time-aware
popular list), marked as a fallback by the callers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp

from accrete.pipeline.scoring import Scoring

#: Candidates per source (before widening by the user's seen count). bench/serving.py: every C from 10 to 200 keeps
#: top-10 agreement >= 0.99 on MovieLens and the synthetic year (with the term off too: 0.9945 at C = 10, 0.9949 at
#: 200); twice the smallest that does leaves room for data where the personal part weighs more.
DEFAULT_C = 20
#: Upper bound on the floats of one batch's gathered candidate keys (64 MB).
CANDIDATE_FLOATS = 16_000_000

# queries [b, dim] float32, count -> item rows [b, count] int64 (-1 pads)
CandidateSource = Callable[[np.ndarray, int], np.ndarray]


def exact_source(keys: np.ndarray) -> CandidateSource:
    """The first stage without an index: the exact top `count` by `q . k_i` (row 0 never)."""

    def search(queries: np.ndarray, count: int) -> np.ndarray:
        count = max(0, min(count, len(keys) - 1))
        dots = np.atleast_2d(queries) @ keys[1:].T
        if count == 0:
            return np.empty((len(dots), 0), np.int64)
        top = np.argpartition(-dots, count - 1, axis=1)[:, :count] if count < dots.shape[1] else \
            np.broadcast_to(np.arange(dots.shape[1]), dots.shape).copy()
        return top.astype(np.int64) + 1

    return search


@dataclass(frozen=True)
class TwoStageRanker:
    """A version's two-stage top-K.

    Args:
        scoring: the version's queries, keys and term.
        source: the first stage's candidates by `q . k_i`.
        term_order: item rows by descending term (ties: lower row first), row 0 excluded; see `term_order`.
        c: candidates per source.
        offsets: optional per-user constant added to reported scores (`mu + b_u` under the rating objective:
            a predicted rating; it changes no ranking).
    """

    scoring: Scoring
    source: CandidateSource
    term_order: np.ndarray
    c: int = DEFAULT_C
    offsets: np.ndarray | None = None

    def fallback(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The list an unknown user gets: the top `k` items by term, excluding nothing."""
        rows = self.term_order[:k]
        term = self.scoring.term
        scores = term[rows] if term is not None else np.zeros(len(rows), np.float32)
        return rows, scores.astype(np.float32)

    def top_k(self, user_rows: np.ndarray, k: int, seen: sp.csr_matrix | None = None,
              batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Each user's top `k` unseen items: `(rows, scores)`, int64 / float32 `[n, k]`, -1 / -inf padding.

        Users are scored in batches of similar seen counts, so one heavy user does not widen a whole batch.
        """
        users = np.asarray(user_rows, np.int64)
        n_items = len(self.scoring.keys)
        seen_counts = _seen_counts(seen, users)
        out_rows = np.full((len(users), k), -1, np.int64)
        out_scores = np.full((len(users), k), -np.inf, np.float32)
        order = np.argsort(seen_counts, kind="stable")
        dim = max(1, self.scoring.keys.shape[1])
        start = 0
        while start < len(users):
            part = order[start:start + batch]
            count = min(self.c + int(seen_counts[part].max(initial=0)), n_items - 1)
            # Candidate keys are gathered as [users, 2 x count, dim]: keep that under CANDIDATE_FLOATS.
            part = part[:max(1, CANDIDATE_FLOATS // (2 * max(count, 1) * dim))]
            out_rows[part], out_scores[part] = self._batch(users[part], k, count, seen)
            start += len(part)
        return out_rows, out_scores

    def _batch(self, users: np.ndarray, k: int, count: int, seen: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        queries = self.scoring.queries[np.where(users < len(self.scoring.queries), users, 0)]
        by_key = self.source(queries, count)
        by_term = np.broadcast_to(self.term_order[:count], (len(users), min(count, len(self.term_order))))
        candidates = np.sort(np.concatenate([by_key, by_term], axis=1), axis=1)
        scores = np.einsum("bd,bcd->bc", queries, self.scoring.keys[np.maximum(candidates, 0)])
        if self.scoring.term is not None:
            scores += self.scoring.term[np.maximum(candidates, 0)]
        # Padding (-1), row 0, an item both sources found (sorted, so duplicates are neighbours) and seen items
        # are never recommended.
        drop = candidates <= 0
        drop[:, 1:] |= candidates[:, 1:] == candidates[:, :-1]
        if seen is not None:
            drop |= _is_seen(seen, users, candidates)
        scores[drop] = -np.inf
        # Stable sort on the score over row-sorted candidates: ties go to the lower row, as in the evaluation.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rows = np.take_along_axis(candidates, top, axis=1)
        best = np.take_along_axis(scores, top, axis=1).astype(np.float32)
        rows[~np.isfinite(best)] = -1
        if self.offsets is not None:
            best += self.offsets[np.where(users < len(self.offsets), users, 0)][:, None]
        if rows.shape[1] < k:  # fewer candidates than k
            pad = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            best = np.pad(best, ((0, 0), (0, pad)), constant_values=-np.inf)
        return rows, best


def term_order(term: np.ndarray | None, n_items: int) -> np.ndarray:
    """Item rows 1.. by descending term, ties to the lower row (every row in order when there is no term)."""
    if term is None:
        return np.arange(1, n_items, dtype=np.int64)
    return (np.argsort(-np.asarray(term[1:], np.float64), kind="stable") + 1).astype(np.int64)


def _seen_counts(seen: sp.csr_matrix | None, users: np.ndarray) -> np.ndarray:
    if seen is None:
        return np.zeros(len(users), np.int64)
    inside = users < seen.shape[0]
    counts = np.zeros(len(users), np.int64)
    counts[inside] = np.diff(seen.indptr)[users[inside]]
    return counts


def _is_seen(seen: sp.csr_matrix, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """`seen[users[b], candidates[b, j]]` as a boolean `[b, m]` array, in one vectorized lookup."""
    b, m = candidates.shape
    inside = np.repeat(users < seen.shape[0], m) & (candidates.ravel() >= 0) & (candidates.ravel() < seen.shape[1])
    flat = np.zeros(b * m, bool)
    if inside.any():
        rows = np.repeat(users, m)[inside]
        cols = candidates.ravel()[inside]
        flat[inside] = np.asarray(seen[rows, cols]).ravel().astype(bool)
    return flat.reshape(b, m)
