"""How a published version scores an item for a user: `s(u, i) = q_u . k_i + t_i`, one formula for every reader.

Evaluation, `accrete recommend`, exports, the ANN index and the lookup service all rank with this one
decomposition, so that they cannot disagree:

* `q_u`, the *query* of user row u: what the version stores as the user's vector;
* `k_i`, the *key* of item row i: a function of the item's frozen vector alone, so keys are as frozen as the
  vectors (an ANN index over keys takes inserts only between full retrains);
* `t_i`, the per-item *term* (the time-aware popularity term under iALS, the item bias under SGD objectives):
  a per-row scalar that moves every night and is never part of an index.

Two kinds exist. `dot`: `k_i = v_i` (the plain matrix-factorization score, `u . v_i + b_i`). `cosine`: the user's
query is a unit vector and `k_i = v_i / |v_i|`, so `q_u . k_i` is the cosine between the user's profile and the
item (see `pipeline.profiles`). A version records its kind in its manifest (`scoring`); a manifest without one
was written before the kinds existed and scores `dot`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

KINDS = ("dot", "cosine")


def kind_of(manifest: Mapping[str, Any]) -> str:
    """The scoring kind a version's manifest records (`dot` for manifests older than the field)."""
    kind = manifest.get("scoring") or "dot"
    if isinstance(kind, Mapping):
        kind = kind.get("kind", "dot")
    if kind not in KINDS:
        raise ValueError(f"unknown scoring kind {kind!r} (expected one of {', '.join(KINDS)})")
    return str(kind)


def item_keys(item_vectors: np.ndarray, kind: str) -> np.ndarray:
    """The keys `k_i` of a version's items: the vectors themselves (`dot`) or the unit vectors (`cosine`; a zero
    vector, e.g. the out-of-vocabulary row 0, keeps key 0)."""
    vectors = np.asarray(item_vectors, np.float32)
    if kind == "dot":
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)


@dataclass(frozen=True)
class Scoring:
    """A version's queries, keys and term: `s(u, i) = queries[u] . keys[i] + term[i]`."""

    kind: str
    queries: np.ndarray
    keys: np.ndarray
    term: np.ndarray | None

    def scores(self, user_rows: np.ndarray) -> np.ndarray:
        """Scores of every item for a batch of user rows (rows past the table score as row 0, the unknown user)."""
        rows = np.asarray(user_rows, np.int64)
        rows = np.where(rows < len(self.queries), rows, 0)
        scores = self.queries[rows] @ self.keys.T
        if self.term is not None:
            scores += self.term
        return scores


def of_tables(kind: str, user_vectors: np.ndarray, item_vectors: np.ndarray, term: np.ndarray | None) -> Scoring:
    return Scoring(kind, np.asarray(user_vectors, np.float32), item_keys(item_vectors, kind),
                   None if term is None else np.asarray(term, np.float32))
