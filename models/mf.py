"""The matrix-factorization recommender: a TFRS model over two frozen-tail tables, its training loop and top-k.

A user u and an item i have vectors p_u, q_i (and optional biases b_u, b_i). Two objectives:

* "retrieval" (implicit feedback): in-batch sampled softmax over the batch's items with logits
  s(u, i) = (p_u . q_i + b_i) / temperature, accidental hits removed, optional logQ correction
  (`tfrs.tasks.Retrieval`);
* "rating" (explicit feedback): squared error of r_hat(u, i) = p_u . q_i + b_u + b_i + mu (`tfrs.tasks.Ranking`),
  where the global mean mu is a constant of the step.

Both add lambda * (||p_u||^2 + ||q_i||^2 + b_u^2 + b_i^2) per example for the rows the batch looks up. Task
losses are sums over the batch (TFRS' convention, which stays exact under a `tf.distribute` strategy since the
replicas' sums add up), so the row penalties are scaled to sums as well. Old rows are frozen by the tables
themselves (`models.embedding`). Scoring and top-k for serving live in `pipeline.evaluation` and
`pipeline.recommend` (NumPy over the stored tables).
"""
from __future__ import annotations

import os
import time
from typing import Any, TYPE_CHECKING

import numpy as np

from accrete import models  # sets TF_USE_LEGACY_KERAS before TensorFlow is imported

if TYPE_CHECKING:  # the annotations name TensorFlow's types; at run time it is imported quietly
    import tensorflow as tf
else:
    tf = models.quiet_tensorflow()
import tensorflow_recommenders as tfrs
from accrete.models.embedding import FrozenTailBias, FrozenTailEmbedding, bias_trainable_from

OBJECTIVES = models.SGD_OBJECTIVES
OPTIMIZERS = ("adagrad", "adam", "sgd")
# Steps run per call into the compiled train function: amortizes Python overhead over small batches.
STEPS_PER_EXECUTION = 16
_CHECKPOINT_PREFIX = "tables"
_TABLE_KEYS = ("user", "item", "user_bias", "item_bias")


class MatrixFactorization(tfrs.models.Model):
    """Matrix factorization whose rows below each table's `*_trainable_from` stay bit-identical while training.

    Why: the incremental step trains only the rows appended since the last step; the rest of the model must not
    move and must cost nothing per step. Each table is a `FrozenTailEmbedding` (biases `FrozenTailBias`) split
    at its boundary; `bias_policy` "frozen" splits biases at the same boundary, "trainable" lets every bias
    train (old items' biases then follow popularity shifts while their vectors stay frozen).

    Under the retrieval objective the item bias enters the logits as an extra coordinate (query [p_u, 1],
    candidate [q_i, b_i]); a user bias cannot change a softmax over items, so it is kept frozen and unused.
    `frozen_lr_multiplier` > 0 fine-tunes the old rows instead (see `FrozenTailEmbedding`).

    Args:
      user_table, item_table: float32 [n_users, d], [n_items, d], row 0 = out-of-vocabulary.
      user_trainable_from, item_trainable_from: first trainable row of each table.
      user_bias, item_bias: float32 [n_users], [n_items] or None (no bias).
      bias_policy: "frozen" | "trainable".
      objective: "retrieval" | "rating".
      l2: lambda of the per-example row penalty.
      temperature: softmax temperature of the retrieval task.
      frozen_lr_multiplier: gradient multiplier of the old rows (0 freezes them exactly).
      global_bias: mu, added to rating predictions; a constant, never trained here.
    """

    def __init__(self, user_table: np.ndarray, item_table: np.ndarray, *, user_trainable_from: int,
                 item_trainable_from: int, user_bias: np.ndarray | None = None, item_bias: np.ndarray | None = None,
                 bias_policy: str = "trainable", objective: str = "retrieval", l2: float = 0.0,
                 temperature: float = 1.0, frozen_lr_multiplier: float = 0.0, global_bias: float = 0.0):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if bias_policy not in models.BIAS_POLICIES:
            raise ValueError(f"bias_policy must be 'frozen' or 'trainable', got {bias_policy!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        user_table, item_table = np.asarray(user_table), np.asarray(item_table)
        if user_table.ndim != 2 or item_table.ndim != 2 or user_table.shape[1] != item_table.shape[1]:
            raise ValueError(f"user and item tables must be [rows, dim] with the same dim, got {user_table.shape} "
                             f"and {item_table.shape}")
        self.objective = objective
        self.global_bias = float(global_bias)
        self.bias_policy = bias_policy
        self._trainable_from = {"user": int(user_trainable_from), "item": int(item_trainable_from)}
        common = {"l2": l2, "frozen_lr_multiplier": frozen_lr_multiplier}
        self.user_embedding = FrozenTailEmbedding(user_table, user_trainable_from, name="user_embedding", **common)
        self.item_embedding = FrozenTailEmbedding(item_table, item_trainable_from, name="item_embedding", **common)
        self.user_bias = self._bias_layer(user_bias, len(user_table), user_trainable_from, "user_bias",
                                          used=objective == "rating", **common)
        self.item_bias = self._bias_layer(item_bias, len(item_table), item_trainable_from, "item_bias",
                                          used=True, **common)
        if objective == "retrieval":
            self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)
        else:
            self.task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(reduction=tf.keras.losses.Reduction.SUM))
        # Per-example loss averaged over an epoch (what `train` reports).
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def _bias_layer(self, bias, n_rows, trainable_from, name, *, used, **common):
        if bias is None:
            return None
        bias = np.asarray(bias)
        if bias.shape != (n_rows,):
            raise ValueError(f"{name} must have shape ({n_rows},) to match its table, got {bias.shape}")
        boundary = bias_trainable_from(self.bias_policy, trainable_from) if used else n_rows
        return FrozenTailBias(bias, boundary, name=name, **common)

    # ------------------------------------------------------------------------------------------- training
    def compute_loss(self, features: dict, training: bool = False) -> tf.Tensor:
        """Task loss summed over the batch + lambda * sum over the batch of the looked-up rows' squared norms.

        features: "user", "item" int64 rows; "rating" float32 (rating objective); optional "weight" float32
        (per-example weight of the task loss); optional "item_log_probability" float32, log Q(i) of the item's
        sampling probability, subtracted from its logits as a negative (logQ correction; TFRS clips Q at 1e-6).
        """
        users, items = features["user"], features["item"]
        user_vectors, item_vectors = self.user_embedding(users), self.item_embedding(items)
        weight = features.get("weight")
        penalty = (self.user_embedding.row_penalty(users, user_vectors)
                   + self.item_embedding.row_penalty(items, item_vectors))
        item_bias = self.item_bias(items) if self.item_bias is not None else None
        if item_bias is not None:
            penalty += self.item_bias.row_penalty(items, item_bias)

        if self.objective == "retrieval":
            queries, candidates = user_vectors, item_vectors
            if item_bias is not None:
                queries = tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1)
                candidates = tf.concat([candidates, item_bias[:, None]], axis=1)
            log_probability = features.get("item_log_probability")
            sampling_probability = tf.exp(log_probability) if log_probability is not None else None
            loss = self.task(queries, candidates, sample_weight=weight,
                             candidate_sampling_probability=sampling_probability, candidate_ids=items,
                             compute_metrics=False, compute_batch_metrics=False)
        else:
            prediction = tf.reduce_sum(user_vectors * item_vectors, axis=1) + self.global_bias
            if item_bias is not None:
                prediction += item_bias
            if self.user_bias is not None:
                user_bias = self.user_bias(users)
                prediction += user_bias
                penalty += self.user_bias.row_penalty(users, user_bias)
            loss = self.task(labels=features["rating"][:, None], predictions=prediction[:, None],
                             sample_weight=weight, compute_metrics=False)
        batch_size = tf.cast(tf.shape(users)[0], tf.float32)
        return loss + batch_size * penalty

    def train_step(self, inputs):
        """One optimizer step on `compute_loss` (TFRS' step without its O(table) sum over `self.losses`)."""
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self._track(loss, inputs)

    def test_step(self, inputs):
        """The loss on a batch without updating anything."""
        return self._track(self.compute_loss(inputs, training=False), inputs)

    def _track(self, loss, inputs):
        batch_size = tf.cast(tf.shape(inputs["user"])[0], tf.float32)
        self.loss_tracker.update_state(loss / batch_size, sample_weight=batch_size)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        # Keras resets these at every epoch start.
        return [self.loss_tracker]

    # --------------------------------------------------------------------------------------------- tables
    def tables(self) -> dict[str, np.ndarray | None]:
        """The full tables as numpy: "user", "item" [rows, d]; "user_bias", "item_bias" [rows] or None."""
        return {"user": self.user_embedding.numpy(), "item": self.item_embedding.numpy(),
                "user_bias": self.user_bias.numpy() if self.user_bias is not None else None,
                "item_bias": self.item_bias.numpy() if self.item_bias is not None else None}

    # ------------------------------------------------------------------------------------------ checkpoints
    def _tables_checkpoint(self) -> tf.train.Checkpoint:
        layers = {"user": self.user_embedding, "item": self.item_embedding,
                  "user_bias": self.user_bias, "item_bias": self.item_bias}
        return tf.train.Checkpoint(**{name: layer for name, layer in layers.items() if layer is not None})

    def save_checkpoint(self, directory) -> str:
        """Writes the four tables (frozen blocks and tails) as a `tf.train.Checkpoint`; returns its path prefix."""
        os.makedirs(directory, exist_ok=True)
        return self._tables_checkpoint().write(os.path.join(os.fspath(directory), _CHECKPOINT_PREFIX))

    @classmethod
    def load_checkpoint(cls, directory, **kwargs) -> MatrixFactorization:
        """The model saved by `save_checkpoint`, bit-identical tables; `kwargs` are the constructor's.

        Tables and boundaries may be omitted from `kwargs`: they then come from the checkpoint (a table given
        is overwritten by the checkpoint's values). A bias saved in the checkpoint is restored.
        """
        prefix = os.path.join(os.fspath(directory), _CHECKPOINT_PREFIX)
        try:
            shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
        except (tf.errors.NotFoundError, ValueError) as exc:
            raise FileNotFoundError(f"{directory}: no Accrete model checkpoint ({exc})") from None

        def saved_shape(name: str, block: str):
            return shapes.get(f"{name}/{block}/.ATTRIBUTES/VARIABLE_VALUE")

        for name in _TABLE_KEYS:
            frozen, tail = saved_shape(name, "frozen"), saved_shape(name, "tail")
            if frozen is None or tail is None:
                continue
            argument = name if name.endswith("bias") else f"{name}_table"
            if kwargs.get(argument) is None:
                placeholder = np.zeros([frozen[0] + tail[0], *frozen[1:]], np.float32)
                kwargs[argument] = placeholder[:, 0] if name.endswith("bias") else placeholder
            if not name.endswith("bias"):
                kwargs.setdefault(f"{name}_trainable_from", frozen[0])
        model = cls(**kwargs)
        try:
            model._tables_checkpoint().read(prefix).assert_consumed()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as exc:
            raise ValueError(f"{directory}: the checkpoint does not match the model's tables and boundaries "
                             f"(pass the kwargs it was saved with): {exc}") from None
        return model


def build_model(strategy: tf.distribute.Strategy, **kwargs) -> MatrixFactorization:
    """A `MatrixFactorization(**kwargs)` whose variables live under `strategy` (pass it to `train` too).

    A `tf.distribute` strategy must own a model's variables from their creation: tables built outside its
    scope cannot be mirrored afterwards.
    """
    with strategy.scope():
        return MatrixFactorization(**kwargs)


def make_optimizer(name: str, learning_rate: float):
    """The optimizer of a training run: "adagrad" (default), "adam" or "sgd".

    Adagrad suits embeddings: its update of a row depends only on that row's own gradient history, sparse
    gradients update (and create slot entries for) only the rows of the batch, and rarely seen rows keep large
    steps. Adam, by contrast, decays every row's moments each step (still only over the trainable tails).
    """
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def train(model: MatrixFactorization, *, users: np.ndarray, items: np.ndarray, ratings: np.ndarray | None = None,
          weights: np.ndarray | None = None, item_log_probability: np.ndarray | None = None, epochs: int,
          batch_size: int, learning_rate: float, optimizer: str = "adagrad", seed: int = 0,
          strategy: tf.distribute.Strategy | None = None, verbose: int = 0) -> dict[str, Any]:
    """Fits `model` on interactions given as columns (one entry per interaction) with a fresh optimizer.

    The columns feed `tf.data` (`shuffled_batches`: a full shuffle seeded by `seed` and redrawn every epoch,
    batch, prefetch). Under a `tf.distribute` strategy the model must have been built in its scope
    (`build_model`); the optimizer is created there too, and each global batch is split over the replicas.

    Returns:
      {"loss": per-epoch mean per-example loss (task + row penalties), "examples_per_second": interactions
      processed per second of `fit` (tracing included), "seconds": wall time of `fit`}.
    """
    columns = {"user": _as_rows(users, model.user_embedding.num_rows, "users"),
               "item": _as_rows(items, model.item_embedding.num_rows, "items")}
    n = len(columns["user"])
    if len(columns["item"]) != n:
        raise ValueError(f"users and items must have the same length, got {n} and {len(columns['item'])}")
    if model.objective == "rating" and ratings is None:
        raise ValueError("the rating objective needs ratings")
    for name, values in (("rating", ratings if model.objective == "rating" else None), ("weight", weights),
                         ("item_log_probability", item_log_probability)):
        if values is not None:
            values = np.asarray(values, dtype=np.float32).ravel()
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries but there are {n} interactions")
            columns[name] = values
    if epochs < 0 or batch_size <= 0:
        raise ValueError(f"epochs must be >= 0 and batch_size > 0, got {epochs} and {batch_size}")
    if strategy is not None and not strategy.extended.variable_created_in_scope(model.item_embedding.tail):
        raise ValueError("the model's variables were not created under this strategy: build it with "
                         "build_model(strategy, ...)")

    strategy = model.distribute_strategy
    # Several steps per execution run inside a graph while-loop, where the replicas' all-gathers of sparse
    # (IndexedSlices) gradients of different lengths can pair up across iterations; replicated runs take one step.
    steps_per_execution = STEPS_PER_EXECUTION if strategy.num_replicas_in_sync == 1 else 1
    with strategy.scope():
        model.compile(optimizer=make_optimizer(optimizer, learning_rate), steps_per_execution=steps_per_execution)
    if n == 0 or epochs == 0:
        return {"loss": [], "examples_per_second": 0.0, "seconds": 0.0}
    dataset = shuffled_batches(columns, batch_size, seed)
    start = time.perf_counter()
    history = model.fit(dataset, epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    return {"loss": [float(value) for value in history.history["loss"]],
            "examples_per_second": n * epochs / seconds, "seconds": seconds}


def shuffled_batches(columns: dict[str, np.ndarray], batch_size: int, seed: int) -> tf.data.Dataset:
    """A `tf.data` pipeline of batches of `columns` in a fresh uniformly random order at every iteration (epoch).

    Equivalent to from_tensor_slices(columns).shuffle(n, seed, reshuffle_each_iteration=True).batch(batch_size)
    but vectorized: each epoch draws one permutation of [0, n) (a stateless shuffle keyed by a seed that
    `Dataset.random` redraws per iteration, deterministic for `seed`), slices it into batches of indices and
    gathers the columns, instead of pushing n single elements through a shuffle buffer (about 5x faster).
    """
    n = len(next(iter(columns.values())))
    tensors = {name: tf.constant(values) for name, values in columns.items()}
    n_batches = -(-n // batch_size)

    def permutation(key):
        return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=tf.stack([key, 0]))

    def batches(order):
        return tf.data.Dataset.range(n_batches).map(lambda b: order[b * batch_size:(b + 1) * batch_size])

    return (tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
            .map(permutation)
            .flat_map(batches)
            .apply(tf.data.experimental.assert_cardinality(n_batches))  # lets Keras size its epochs
            .map(lambda rows: {name: tf.gather(values, rows) for name, values in tensors.items()},
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _as_rows(rows, n_rows: int, name: str) -> np.ndarray:
    """Row ids as int64 [n], checked against the table size (a bad id would otherwise fail deep inside TF)."""
    rows = np.asarray(rows)
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"{name} must be integer row ids, got dtype {rows.dtype}")
    rows = rows.astype(np.int64).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"{name} must be rows in [0, {n_rows}), got values in [{rows.min()}, {rows.max()}]")
    return rows
