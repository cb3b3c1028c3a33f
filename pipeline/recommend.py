"""Answers from a published version: top-K items for a user, and the nearest items to an item.

Scores are the evaluation's (`evaluation.dot_scorer`): `u . v_i + b_i`, where under iALS `b_i` is the
time-aware term and under the rating objective `b_u + mu` is added to report a predicted rating. Plain
NumPy over the stored tables: no TensorFlow, no Prefect, so a lookup costs a table load and one matrix
product. A user's already-seen items (from the store's consumed history) are excluded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from accrete.pipeline import evaluation, scoring
from accrete.pipeline.errors import AccreteError
from accrete.pipeline.store import ModelState, Store


class UnknownIdError(AccreteError):
    """The user or item ID is not in the version's vocabulary."""


def scorer(state: ModelState) -> evaluation.Scorer:
    """The version's scoring function, the same one its prequential evaluation used."""
    manifest = state.manifest
    objective = manifest["objective"]
    use_bias = bool(manifest["config"]["model"].get("use_bias", True))
    item_bias = state.item_bias if evaluation.uses_item_bias(objective, use_bias) else None
    ranking = scoring.of_tables(scoring.kind_of(manifest), state.user_vectors, state.item_vectors, item_bias).scores
    if objective != "rating":
        return ranking
    mu = np.float32(manifest.get("global_bias", 0.0))

    def predicted_rating(user_rows: np.ndarray) -> np.ndarray:
        offset = mu + (state.user_bias[user_rows] if use_bias else np.float32(0.0))
        return ranking(user_rows) + np.asarray(offset, np.float32)[:, None]

    return predicted_rating


def _row(vocab, identifier: str, what: str) -> int:
    row = int(vocab.lookup([identifier])[0])
    if row == 0:
        raise UnknownIdError(f"unknown {what} id {identifier!r} (not in the current version's vocabulary)")
    return row


def recommend(store_dir: str | Path, user_id: str, k: int = 10, *, version: int | None = None) -> list[dict[str, Any]]:
    """The top-k items for a user, excluding items the user already interacted with."""
    store = Store(store_dir)
    state = store.load(version)
    row = _row(state.user_vocab, user_id, "user")
    history = store.read_history(state.partitions)
    users = state.user_vocab.lookup(history["user_id"])
    seen_items = state.item_vocab.lookup(history["item_id"])[users == row]
    seen = evaluation.seen_matrix(np.full(len(seen_items), row), seen_items, row + 1, len(state.item_vectors))
    rows, scores = evaluation.top_k_excluding_seen(scorer(state), np.array([row]), k, seen)
    return _answer(state.item_vocab, rows[0], scores[0])


def similar(store_dir: str | Path, item_id: str, k: int = 10, *, version: int | None = None) -> list[dict[str, Any]]:
    """The k items nearest to an item by cosine similarity of their vectors (never itself nor row 0)."""
    state = Store(store_dir).load(version)
    row = _row(state.item_vocab, item_id, "item")
    table = state.item_vectors
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    itself = evaluation.seen_matrix(np.array([row]), np.array([row]), row + 1, len(table))
    # Items act as queries here: the "seen" item of query `row` is the item itself.
    rows, scores = evaluation.top_k_excluding_seen(lambda queries: unit[queries] @ unit.T, np.array([row]), k, itself)
    return _answer(state.item_vocab, rows[0], scores[0])


def _answer(vocab, rows: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    keep = rows > 0  # -1 pads a list shorter than k
    ids = vocab.id_of(rows[keep]).to_pylist()
    return [{"rank": rank + 1, "item_id": item, "row": int(r), "score": float(s)}
            for rank, (item, r, s) in enumerate(zip(ids, rows[keep], scores[keep]))]
