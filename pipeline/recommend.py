"""Answers from a published version: top-K items for a user, and the nearest items to an item.

Both load the version's tables and hand them to `models.mf.MatrixFactorization`, which ranks with TFRS's
brute-force top-k layer; a user's already-seen items (from the store's consumed history) are excluded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import AccreteError
from pipeline.store import ModelState, Store


class UnknownIdError(AccreteError):
    """The user or item ID is not in the version's vocabulary."""


def _model(state: ModelState):
    from models.mf import MatrixFactorization

    config = state.manifest["config"]["model"]
    return MatrixFactorization(
        state.user_vectors, state.item_vectors, user_trainable_from=len(state.user_vectors),
        item_trainable_from=len(state.item_vectors),
        user_bias=state.user_bias if config["use_bias"] else None,
        item_bias=state.item_bias if config["use_bias"] else None,
        objective=state.manifest["objective"], global_bias=float(state.manifest.get("global_bias", 0.0)))


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
    seen = state.item_vocab.lookup(history["item_id"])[users == row]
    items, scores = _model(state).recommend(np.array([row]), k, exclude=[np.unique(seen)])
    return _answer(state.item_vocab, items[0], scores[0])


def similar(store_dir: str | Path, item_id: str, k: int = 10, *, version: int | None = None) -> list[dict[str, Any]]:
    """The k items nearest to an item by cosine similarity of their vectors."""
    state = Store(store_dir).load(version)
    row = _row(state.item_vocab, item_id, "item")
    items, scores = _model(state).similar_items(np.array([row]), k)
    return _answer(state.item_vocab, items[0], scores[0])


def _answer(vocab, rows: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    keep = rows > 0  # -1 pads a list shorter than k
    ids = vocab.id_of(rows[keep]).to_pylist()
    return [{"rank": rank + 1, "item_id": item, "row": int(r), "score": float(s)}
            for rank, (item, r, s) in enumerate(zip(ids, rows[keep], scores[keep]))]
