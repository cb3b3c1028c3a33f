"""User profiles: the query side of the default scoring recipe, kept as per-user state that a night only adds to.

A user's profile is the recency-weighted sum of the unit (frozen) vectors of the items they interacted with,

    p_u(t) = sum_k 2^-((t - t_k) / h) * w_k * k_{i_k},    k_i = v_i / |v_i|,

and the user's query is its direction `q_u = p_u / |p_u|`, so `q_u . k_i` is the cosine between the profile and
an item (`pipeline.scoring`, kind "cosine"); the time-aware popularity term is added to it. No user is solved:
a night touches only the rows of the users active in it, and item vectors never move for it.

Everything decays at the same rate, so like the popularity term (`pipeline.recency`) a profile is kept *anchored*:
`P_u = sum_k 2^((t_k - anchor) / h) w_k k_{i_k}` differs from `p_u(t)` by a factor common to all its terms, which
a direction ignores. The state of a user is its direction (float32, the version's user table: what every reader
queries with) and `log |P_u|` (float64, a per-row scalar; -inf for a user without a profile). Adding a night's
interactions is `P' = exp(log|P|) q + sum of the new terms`, computed in log space so that no exponent overflows
however far the anchor lies behind.

`query_gram` is `sum_u q_u q_u^T`, the Gram matrix of every query, which the closed-form solve of a new item
against the queries needs (`models.ials.solve`); it is updated by the difference of the touched rows, so it
costs the night's users, not the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from accrete.pipeline import scoring
from accrete.pipeline.recency import log_weights


@dataclass
class Profiles:
    """The profile state: `queries[u]` unit float32 (0 without a profile), `log_norms[u]` float64 (-inf without),
    and `gram = sum_u q_u q_u^T` (float64 `[dim, dim]`)."""

    queries: np.ndarray
    log_norms: np.ndarray
    gram: np.ndarray

    @classmethod
    def empty(cls, n_users: int, dim: int) -> "Profiles":
        return cls(np.zeros((n_users, dim), np.float32), np.full(n_users, -np.inf), np.zeros((dim, dim)))

    def grown(self, n_users: int) -> "Profiles":
        """The state with rows up to `n_users` (new users start without a profile)."""
        queries, log_norms = self.queries, self.log_norms
        if len(queries) < n_users:
            queries = np.concatenate([queries, np.zeros((n_users - len(queries), queries.shape[1]), np.float32)])
        if len(log_norms) < n_users:
            log_norms = np.concatenate([log_norms, np.full(n_users - len(log_norms), -np.inf)])
        return Profiles(queries, log_norms, self.gram)


def add_interactions(profiles: Profiles, users: np.ndarray, items: np.ndarray, timestamps_s: np.ndarray,
                     item_vectors: np.ndarray, *, anchor_s: float, half_life_days: float,
                     weights: np.ndarray | None = None) -> tuple[Profiles, np.ndarray]:
    """The profiles with the interactions (user rows, item rows, Unix seconds, optional weights) added.

    Only the rows of `users` change (a copy of the tables is returned, the input is not modified); items whose
    vector is zero (never trained, no metadata) add nothing. Returns the new state and the touched user rows.
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    touched = np.unique(users[users > 0])
    queries, log_norms, gram = profiles.queries.copy(), profiles.log_norms.copy(), profiles.gram.copy()
    if len(touched) == 0:
        return Profiles(queries, log_norms, gram), touched
    distinct_items = np.unique(items)
    keys = scoring.item_keys(np.asarray(item_vectors)[distinct_items], "cosine").astype(np.float64)
    key_of = np.searchsorted(distinct_items, items)
    local = np.searchsorted(touched, users)
    keep = users > 0
    exponent = log_weights(timestamps_s, anchor_s, half_life_days)
    if weights is not None:
        exponent = exponent + np.log(np.asarray(weights, np.float64))
    exponent, local, key_of = exponent[keep], local[keep], key_of[keep]
    # Scale each user's sum by its largest exponent (old mass included): every factor is then <= 1.
    peak = log_norms[touched].copy()
    np.maximum.at(peak, local, exponent)
    total = np.exp(log_norms[touched] - peak)[:, None] * queries[touched].astype(np.float64)
    # The new terms as one sparse (users x items) product: memory follows the interactions, not interactions x d.
    decayed = sp.csr_matrix((np.exp(exponent - peak[local]), (local, key_of)), shape=(len(touched), len(keys)))
    total += decayed @ keys
    norms = np.linalg.norm(total, axis=1)
    has = norms > 0
    new_queries = np.zeros_like(total)
    new_queries[has] = total[has] / norms[has, None]
    old = queries[touched].astype(np.float64)
    new32 = new_queries.astype(np.float32)
    gram += new32.T.astype(np.float64) @ new32.astype(np.float64) - old.T @ old
    queries[touched] = new32
    log_norms[touched] = np.where(has, peak + np.log(np.where(has, norms, 1.0)), -np.inf)
    return Profiles(queries, log_norms, gram), touched


def build(n_users: int, users: np.ndarray, items: np.ndarray, timestamps_s: np.ndarray, item_vectors: np.ndarray, *,
          anchor_s: float, half_life_days: float, weights: np.ndarray | None = None) -> Profiles:
    """Every user's profile from scratch (a full retrain), with the Gram of the queries recomputed exactly."""
    dim = np.asarray(item_vectors).shape[1]
    profiles, _ = add_interactions(Profiles.empty(n_users, dim), users, items, timestamps_s, item_vectors,
                                   anchor_s=anchor_s, half_life_days=half_life_days, weights=weights)
    return with_exact_gram(profiles)


def with_exact_gram(profiles: Profiles) -> Profiles:
    """The state with its Gram recomputed from the queries (the running update accumulates rounding)."""
    queries = profiles.queries.astype(np.float64)
    return Profiles(profiles.queries, profiles.log_norms, queries.T @ queries)


def solve_items(item_vectors: np.ndarray, state: Profiles, users: np.ndarray, items: np.ndarray, first_new_item: int, *,
                    alpha: float, l2: float) -> np.ndarray:
    """A copy of `item_vectors` with the rows from `first_new_item` on that have interactions solved in closed form
    against the users' queries (`models.ials.solve` with the queries' kept Gram): the nightly solve of the profile
    recipe (new items are calibrated against the frozen side, as iALS folds them in). Rows below `first_new_item` are not written; an item whose users have no query yet keeps its row."""
    from accrete.models import ials

    out = np.array(item_vectors, np.float32, copy=True)
    n_items = len(out)
    mine = (items >= first_new_item) & (items < n_items) & (users > 0) & (users < len(state.queries))
    if not mine.any():
        return out
    observed = ials.interaction_matrix(items[mine] - first_new_item, users[mine], (n_items - first_new_item,
                                                                                   len(state.queries)))
    solved = ials.solve(state.queries, observed, alpha=alpha, l2=l2, gram=state.gram)
    has = np.abs(solved).sum(axis=1) > 0
    out[first_new_item:][has] = solved[has]
    return out


#: The per-user scalars and the Gram a version keeps beside its user table (in its drift/reference arrays).
LOG_NORMS, GRAM = "user_profile_log_norm", "query_gram"


def to_reference(state: Profiles) -> dict[str, np.ndarray]:
    """The arrays a version stores for the profile state besides its user table (which holds the queries)."""
    return {LOG_NORMS: np.asarray(state.log_norms, np.float64), GRAM: np.asarray(state.gram, np.float64)}


def from_version(user_vectors: np.ndarray, reference: dict[str, np.ndarray]) -> Profiles:
    """The profile state of a stored version (queries = its user table)."""
    return Profiles(user_vectors, reference[LOG_NORMS], reference[GRAM]).grown(len(user_vectors))


@dataclass(frozen=True)
class YoungInteractions:
    """The interactions of the young items (those still re-solved each night), kept with a version so that a night
    re-solves them without reading the history: (user row, item row) pairs, few by construction. (The solve reads
    only which pairs exist; versions written with a `young_weights` array still load.)"""

    users: np.ndarray
    items: np.ndarray

    KEYS = ("young_users", "young_items")

    @classmethod
    def from_reference(cls, reference: dict[str, np.ndarray]) -> "YoungInteractions":
        if cls.KEYS[0] not in reference:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(*(np.asarray(reference[key]) for key in cls.KEYS))

    def since(self, first_row: int) -> "YoungInteractions":
        """Those of the items from `first_row` on (older ones froze)."""
        keep = self.items >= first_row
        return YoungInteractions(self.users[keep], self.items[keep])

    def plus(self, users: np.ndarray, items: np.ndarray, first_row: int) -> "YoungInteractions":
        """With a night's interactions of the items from `first_row` on added."""
        keep = items >= first_row
        return YoungInteractions(np.concatenate([self.users, users[keep]]).astype(np.int64),
                                 np.concatenate([self.items, items[keep]]).astype(np.int64))

    def to_reference(self) -> dict[str, np.ndarray]:
        return dict(zip(self.KEYS, (self.users, self.items)))
