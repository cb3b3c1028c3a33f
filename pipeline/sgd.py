"""Training under the SGD objectives (TFRS `rating` and `retrieval`): the frozen-tail model trained on the new
interactions mixed with replayed old ones, and the fold-in warm start of its new rows. TensorFlow is imported
only here and in `models.mf`, lazily."""
from __future__ import annotations

from typing import Any

import numpy as np

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.store import ModelState


def positive_level(users: np.ndarray, items: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray) -> float:
    """Mean score u.v of observed pairs: the fold-in target that calibrates new rows against old ones."""
    if len(users) == 0:
        return 1.0
    level = float(np.mean(np.einsum("ij,ij->i", user_vectors[users], item_vectors[items])))
    return level if np.isfinite(level) and level > 0 else 1.0


def fold_in_spec(opposite: np.ndarray, own_rows: np.ndarray, opposite_rows: np.ndarray, targets: np.ndarray,
                  n_old_own: int, n_old_opposite: int, n_new: int, l2: float) -> dict | None:
    """Interactions of new rows with existing (frozen) opposite rows, as the fold-in solver wants them."""
    keep = (own_rows >= n_old_own) & (opposite_rows > 0) & (opposite_rows < n_old_opposite)
    if n_new == 0 or not keep.any():
        return None
    return {"opposite": opposite, "new_rows_local": own_rows[keep] - n_old_own,
            "opposite_rows": opposite_rows[keep], "targets": targets[keep], "weights": None, "l2": l2}


def train_sgd(config: AccreteConfig, state: ModelState, objective: str, *, user_trainable_from: int, item_trainable_from: int,
           users: np.ndarray, items: np.ndarray, ratings: np.ndarray, epochs: int, seed: int,
           global_bias: float) -> dict[str, Any]:
    """Train the model on columnar arrays; replaces the state's tables with the trained ones."""
    from accrete.models.mf import MatrixFactorization, train

    model_config = config.model
    model = MatrixFactorization(
        state.user_vectors, state.item_vectors,
        user_trainable_from=user_trainable_from, item_trainable_from=item_trainable_from,
        user_bias=state.user_bias if model_config.use_bias else None,
        item_bias=state.item_bias if model_config.use_bias else None,
        bias_policy=model_config.bias_policy, objective=objective, l2=model_config.l2,
        temperature=model_config.temperature, frozen_lr_multiplier=model_config.frozen_lr_multiplier,
        global_bias=global_bias)
    log_probability = None
    if objective == "retrieval" and model_config.sampling_bias_correction:
        counts = np.bincount(items, minlength=len(state.item_vectors)).astype(np.float64)
        log_probability = np.log(counts[items] / len(items)).astype(np.float32)
    stats = train(model, users=users, items=items, ratings=ratings if objective == "rating" else None,
                  item_log_probability=log_probability, epochs=epochs, batch_size=config.train.batch_size,
                  learning_rate=config.train.learning_rate, optimizer=config.train.optimizer, seed=seed)
    tables = {name: table for name, table in model.tables().items() if table is not None}
    state.user_vectors = tables["user"].astype(np.float32)
    state.item_vectors = tables["item"].astype(np.float32)
    if model_config.use_bias:
        state.user_bias = tables["user_bias"].astype(np.float32)
        state.item_bias = tables["item_bias"].astype(np.float32)
    return {key: value for key, value in stats.items() if key in ("loss", "examples_per_second", "seconds")}
