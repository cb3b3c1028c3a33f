"""Answers from a published version: top-K items for a user, and the nearest items to an item.

Top-K is the two-stage ranking the lookup service uses (`pipeline.two_stage`): candidates by `q_u . k_i` (from
an ANN index when one is given, else an exact product) and by the time-aware term, then the exact score
`s(u, i) = q_u . k_i + t_i` of `pipeline.scoring`, the one the prequential evaluation ranks by; under the rating
objective `b_u + mu` is added to report a predicted rating. A user's already-seen items (`seen_items`) are
excluded. An unknown user gets the time-aware popular list, marked as a fallback. Plain NumPy over the stored
tables: no TensorFlow, no Prefect.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from accrete.pipeline import evaluation, scoring, two_stage
from accrete.pipeline.errors import AccreteError
from accrete.pipeline.store import ModelState, Store


class UnknownIdError(AccreteError):
    """The user or item ID is not in the version's vocabulary."""


class Recommendations(list):
    """A user's top-K (a list of `{rank, item_id, row, score}`) and whether it is the unknown-user fallback."""

    def __init__(self, items: list[dict[str, Any]], *, fallback: bool, version: int):
        super().__init__(items)
        self.fallback = fallback
        self.version = version


def version_scoring(state: ModelState) -> scoring.Scoring:
    """The version's queries, keys and term (the term only where its objective scores with the item bias)."""
    manifest = state.manifest
    use_bias = bool(manifest["config"]["model"].get("use_bias", True))
    item_bias = state.item_bias if evaluation.uses_item_bias(manifest["objective"], use_bias) else None
    return scoring.of_tables(scoring.kind_of(manifest), state.user_vectors, state.item_vectors, item_bias)


def user_offsets(state: ModelState) -> np.ndarray | None:
    """Per-user constants of a reported score: `mu + b_u` under the rating objective (a predicted rating), else
    none. They change no ranking."""
    manifest = state.manifest
    if manifest["objective"] != "rating":
        return None
    use_bias = bool(manifest["config"]["model"].get("use_bias", True))
    mu = np.float32(manifest.get("global_bias", 0.0))
    bias = state.user_bias if use_bias else np.zeros(len(state.user_vectors), np.float32)
    return (np.asarray(bias, np.float32) + mu).astype(np.float32)


def scorer(state: ModelState) -> evaluation.Scorer:
    """The version's exact scoring function over every item, the one its prequential evaluation used."""
    ranking = version_scoring(state).scores
    offsets = user_offsets(state)
    if offsets is None:
        return ranking

    def predicted_rating(user_rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(user_rows, np.int64)
        return ranking(rows) + offsets[np.where(rows < len(offsets), rows, 0)][:, None]

    return predicted_rating


def seen_items(store: Store, state: ModelState, user_rows: np.ndarray | None = None) -> sp.csr_matrix:
    """Consumed items as a boolean users x items CSR (rows of `state`'s vocabularies): of the given user rows
    only, read by row from the version's history parts (the pages of those users), or, without `user_rows` or
    on a store written before row-addressed history, of every user from the whole consumed history.

    The one place that reads seen items.
    """
    shape = (len(state.user_vectors), len(state.item_vectors))
    if user_rows is not None:
        return evaluation.seen_matrix(*store.consumed_pairs(state, user_rows), *shape)
    history = store.read_history(state.partitions)
    return evaluation.seen_matrix(state.user_vocab.lookup(history["user_id"]),
                                  state.item_vocab.lookup(history["item_id"]), *shape)


def ranker(state: ModelState, index: Any = None, c: int = two_stage.DEFAULT_C) -> two_stage.TwoStageRanker:
    """The version's two-stage ranker; its first stage is `index.search` (a `pipeline.index.ItemIndex` of this
    version) or, without one, the exact product over the keys."""
    version = version_scoring(state)
    source = index.search if index is not None else two_stage.exact_source(version.keys)
    return two_stage.TwoStageRanker(version, source, two_stage.term_order(version.term, len(version.keys)), c,
                                    user_offsets(state))


def _row(vocab, identifier: str, what: str) -> int:
    row = int(vocab.lookup([identifier])[0])
    if row == 0:
        raise UnknownIdError(f"unknown {what} id {identifier!r} (not in the current version's vocabulary)")
    return row


def recommend(store_dir: str | Path, user_id: str, k: int = 10, *, version: int | None = None,
              index_dir: str | Path | None = None, c: int = two_stage.DEFAULT_C) -> Recommendations:
    """The top-k items for a user, excluding items the user already interacted with; for an unknown user, the
    time-aware popular list (`fallback` true). `index_dir`: an index of the same version (`accrete index build`)."""
    store = Store(store_dir)
    state = store.load(version)
    index = None
    if index_dir is not None:
        from accrete.pipeline import index as item_index

        index = item_index.load(index_dir)
        if index.version != state.version:
            raise item_index.ItemIndexError(f"{index_dir}: the index reflects version {index.version}, the store's is "
                                            f"{state.version}: run `accrete index update`")
    rank = ranker(state, index, c)
    row = int(state.user_vocab.lookup([user_id])[0])
    if row == 0:
        rows, scores = rank.fallback(k)
        return Recommendations(_answer(state.item_vocab, rows, scores), fallback=True, version=state.version)
    rows, scores = rank.top_k(np.array([row]), k, seen_items(store, state, np.array([row])))
    return Recommendations(_answer(state.item_vocab, rows[0], scores[0]), fallback=False, version=state.version)


def similar(store_dir: str | Path, item_id: str, k: int = 10, *, version: int | None = None) -> list[dict[str, Any]]:
    """The k items nearest to an item by cosine similarity of their vectors (never itself nor row 0)."""
    state = Store(store_dir).load(version)
    row = _row(state.item_vocab, item_id, "item")
    rows, scores = nearest_items(unit_vectors(state.item_vectors), row, k)
    return _answer(state.item_vocab, rows, scores)


def unit_vectors(item_vectors: np.ndarray) -> np.ndarray:
    """Item vectors scaled to unit length (a zero row stays zero): what `nearest_items` compares."""
    return scoring.item_keys(item_vectors, "cosine")


def nearest_items(unit: np.ndarray, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k item rows of highest cosine to item `row` (never itself nor row 0; -1 pads), and their cosines."""
    itself = evaluation.seen_matrix(np.array([row]), np.array([row]), row + 1, len(unit))
    # Items act as queries here: the "seen" item of query `row` is the item itself.
    rows, scores = evaluation.top_k_excluding_seen(lambda queries: unit[queries] @ unit.T, np.array([row]), k, itself)
    return rows[0], scores[0]


def _answer(vocab, rows: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    keep = rows > 0  # -1 pads a list shorter than k
    ids = vocab.id_of(rows[keep]).to_pylist()
    return [{"rank": rank + 1, "item_id": item, "row": int(r), "score": float(s)}
            for rank, (item, r, s) in enumerate(zip(ids, rows[keep], scores[keep]))]
