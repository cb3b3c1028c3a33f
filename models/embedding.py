"""The frozen-tail embedding table: old rows frozen bit-for-bit, new rows trainable, at O(batch x dim) per step.

An incremental step appends rows for new users/items and trains only those. Holding the whole table as one
trainable variable and undoing the updates of old rows (a constraint, a mask, a concatenation at every step)
costs O(table) per step and makes the optimizer keep state for every row. Instead the logical table is stored
as two variables split at a row boundary and every id is routed to exactly one of them, so the work per step is
proportional to the batch, the gradient is a sparse `tf.IndexedSlices` over the tail rows present in the
batch, and the optimizer never sees the frozen block.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from accrete import models  # sets TF_USE_LEGACY_KERAS before TensorFlow is imported

if TYPE_CHECKING:  # the annotations name TensorFlow's types; at run time it is imported quietly
    import tensorflow as tf
else:
    tf = models.quiet_tensorflow()

BIAS_POLICIES = models.BIAS_POLICIES


def bias_trainable_from(policy: str, trainable_from: int) -> int:
    """The trainable boundary of a bias table under a bias policy.

    A bias is one scalar per row. Under "frozen" it freezes with its row (same boundary as the vector table);
    under "trainable" every row's bias trains (boundary 0), so old rows can follow popularity shifts while
    their vectors stay bit-identical.
    """
    if policy == "frozen":
        return int(trainable_from)
    if policy == "trainable":
        return 0
    raise ValueError(f"bias_policy must be one of {BIAS_POLICIES}, got {policy!r}")


def _scaled_gradient(values: tf.Tensor, multiplier: float) -> tf.Tensor:
    """Identity in the forward pass (bit-exact values), gradient multiplied by `multiplier` in the backward pass."""

    @tf.custom_gradient
    def scale(x):
        return tf.identity(x), lambda upstream: upstream * multiplier

    return scale(values)


class FrozenTailEmbedding(tf.keras.layers.Layer):
    """One logical embedding table `E` of shape [n, d] whose rows [0, trainable_from) are frozen.

    Why: incremental training must leave old rows bit-identical while new rows learn, at a per-step cost that
    does not grow with the table and with optimizer state for the trainable rows only.

    Storage: `frozen` = E[0:t] (a non-trainable variable) and `tail` = E[t:n] (a trainable variable), where
    t = `trainable_from`. A lookup of ids `r` computes

        E[r] = frozen[r]        if r <  t
               tail[r - t]      if r >= t

    by partitioning the flattened ids on `r >= t` (`tf.dynamic_partition`), gathering each part from its block
    and stitching the rows back into batch order (`tf.dynamic_stitch`). Nothing proportional to the table is
    ever read or copied, and the gradient w.r.t. `tail` is a `tf.IndexedSlices` holding exactly the tail rows
    present in the batch (no zero-gradient rows that Adam's momentum would move).

    With `frozen_lr_multiplier` = m > 0 the frozen block becomes trainable and its gradient is multiplied by m
    (fine-tuning instead of freezing). The old rows then carry optimizer slots and are no longer bit-identical.
    Note that an adaptive optimizer partially undoes the scaling: Adam is invariant to a constant gradient
    scale (m only changes the epsilon trade-off), and Adagrad's step is lr * m g / sqrt(acc0 + sum m^2 g^2).

    Row 0 is, by the vocabulary's convention, the out-of-vocabulary row; the layer treats it like any other.

    Args:
      table: float32 [n, d], the initial full table.
      trainable_from: t in [0, n]: rows >= t train.
      frozen_lr_multiplier: m >= 0; 0 freezes rows < t exactly.
      l2: lambda of `row_penalty`.
    """

    def __init__(self, table: np.ndarray, trainable_from: int, *, frozen_lr_multiplier: float = 0.0,
                 l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if frozen_lr_multiplier < 0:
            raise ValueError(f"frozen_lr_multiplier must be >= 0, got {frozen_lr_multiplier}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self._frozen_lr_multiplier = float(frozen_lr_multiplier)
        self._l2 = float(l2)
        # Variables created later by `extend` must live under the same distribution strategy as these.
        self._strategy = tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
        self._set_table(self._as_table(table), trainable_from)

    # ----------------------------------------------------------------------------------------------- storage
    def _as_table(self, table: np.ndarray) -> np.ndarray:
        table = np.asarray(table, dtype=np.float32)
        if table.ndim != 2:
            raise ValueError(f"{self.name}: an embedding table must be 2-D [rows, dim], got shape {table.shape}")
        return table

    def _set_table(self, table: np.ndarray, trainable_from: int) -> None:
        n = table.shape[0]
        if not 0 <= int(trainable_from) <= n:
            raise ValueError(f"{self.name}: trainable_from must be in [0, {n}], got {trainable_from}")
        t = int(trainable_from)
        self._num_rows, self._dim, self._trainable_from = n, table.shape[1], t
        # An empty block is never trainable: it would receive no gradient and only make Keras warn.
        self.frozen = tf.Variable(table[:t], trainable=self._frozen_lr_multiplier > 0 and t > 0, name="frozen")
        self.tail = tf.Variable(table[t:], trainable=t < n, name="tail")

    # ------------------------------------------------------------------------------------------- properties
    @property
    def num_rows(self) -> int:
        """n, the number of rows of the logical table."""
        return self._num_rows

    @property
    def dim(self) -> int:
        """d, the embedding dimension."""
        return self._dim

    @property
    def trainable_from(self) -> int:
        """t: rows [0, t) are frozen, rows [t, n) train."""
        return self._trainable_from

    @property
    def l2(self) -> float:
        """lambda of `row_penalty`."""
        return self._l2

    @property
    def frozen_lr_multiplier(self) -> float:
        """m: gradient multiplier of the frozen block (0: frozen exactly)."""
        return self._frozen_lr_multiplier

    # ---------------------------------------------------------------------------------------------- lookups
    def _lookup_flat(self, flat: tf.Tensor) -> tf.Tensor:
        t, n = self._trainable_from, self._num_rows
        if t == 0:  # fully trainable (a full retrain): one gather, no routing
            return tf.gather(self.tail, flat)
        if t == n:  # nothing trains
            return self._frozen_rows(tf.gather(self.frozen, flat))
        in_tail = tf.cast(flat >= t, tf.int32)
        frozen_ids, tail_ids = tf.dynamic_partition(flat, in_tail, 2)
        frozen_pos, tail_pos = tf.dynamic_partition(tf.range(tf.size(flat)), in_tail, 2)
        frozen_rows = self._frozen_rows(tf.gather(self.frozen, frozen_ids))
        tail_rows = tf.gather(self.tail, tail_ids - t)
        stitched = tf.dynamic_stitch([frozen_pos, tail_pos], [frozen_rows, tail_rows])
        # dynamic_stitch sizes its output by the largest position; restore the static [batch, d] shape.
        return tf.reshape(stitched, [tf.size(flat), self._dim])

    def _frozen_rows(self, rows: tf.Tensor) -> tf.Tensor:
        if self._frozen_lr_multiplier > 0:
            return _scaled_gradient(rows, self._frozen_lr_multiplier)
        return rows

    def call(self, rows) -> tf.Tensor:
        """E[rows]: ids of any shape (int32/int64, each in [0, n)) -> float32 [..., d]."""
        rows = tf.convert_to_tensor(rows)
        if not rows.dtype.is_integer:
            raise TypeError(f"{self.name}: row ids must be integers, got {rows.dtype.name}")
        rows = tf.cast(rows, tf.int64)
        flat = tf.reshape(rows, [-1])
        looked_up = self._lookup_flat(flat)
        return tf.reshape(looked_up, tf.concat([tf.shape(rows), [self._dim]], axis=0))

    def row_penalty(self, rows, embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """lambda * mean over the batch of ||E[r]||^2, for the looked-up rows only (never the whole table).

        Regularizing only the rows a batch touches keeps the step O(batch x dim) and leaves every row that no
        batch touches exactly unchanged. Pass `embeddings` (= `self(rows)`) to reuse a lookup already done.
        """
        if self._l2 == 0.0:
            return tf.constant(0.0, tf.float32)
        if embeddings is None:
            embeddings = self(rows)
        squared_norms = tf.reduce_sum(tf.square(embeddings), axis=-1)
        return self._l2 * tf.reduce_mean(squared_norms)

    # ------------------------------------------------------------------------------------------ maintenance
    def numpy(self) -> np.ndarray:
        """The full table [n, d] (a copy)."""
        return self._full_table()

    def _full_table(self) -> np.ndarray:
        return np.concatenate([self.frozen.numpy(), self.tail.numpy()], axis=0)

    def frozen_checksum(self) -> str:
        """sha256 hex digest of the frozen block's float32 bytes (row-major): equal digests = bit-identical rows."""
        return hashlib.sha256(np.ascontiguousarray(self.frozen.numpy()).tobytes()).hexdigest()

    def extend(self, new_rows: np.ndarray, trainable_from: int) -> None:
        """Append `new_rows` [k, d] and re-split the table at the new boundary `trainable_from`.

        Done between trainings: it copies the table once (O(table)) and creates new variables, so an optimizer
        built for the old variables must not be reused (compile a new one).
        """
        new_rows = self._as_table(new_rows)
        if new_rows.shape[1] != self._dim:
            raise ValueError(f"{self.name}: new rows have dim {new_rows.shape[1]}, the table has dim {self._dim}")
        table = np.concatenate([self._full_table(), new_rows], axis=0)
        if self._strategy is not None:
            with self._strategy.scope():
                self._set_table(table, trainable_from)
        else:
            self._set_table(table, trainable_from)


class FrozenTailBias(FrozenTailEmbedding):
    """A per-row bias table b [n] with the same frozen/trainable split as `FrozenTailEmbedding` (stored as d = 1).

    Why a separate class: biases are scalars (lookups return [...] rather than [..., 1]) and follow their own
    policy (`bias_trainable_from`): frozen with their row, or trainable for every row. `row_penalty` is
    lambda * mean of b[r]^2 over the batch.
    """

    def __init__(self, bias: np.ndarray, trainable_from: int, **kwargs):
        super().__init__(self._as_column(bias), trainable_from, **kwargs)

    @staticmethod
    def _as_column(bias: np.ndarray) -> np.ndarray:
        bias = np.asarray(bias, dtype=np.float32)
        if bias.ndim != 1:
            raise ValueError(f"a bias table must be 1-D [rows], got shape {bias.shape}")
        return bias[:, None]

    def call(self, rows) -> tf.Tensor:
        """b[rows]: ids of any shape -> float32 of the same shape."""
        return tf.squeeze(super().call(rows), axis=-1)

    def row_penalty(self, rows, embeddings: tf.Tensor | None = None) -> tf.Tensor:
        """lambda * mean over the batch of b[r]^2 (pass `embeddings` = `self(rows)` to reuse a lookup)."""
        if self.l2 == 0.0:
            return tf.constant(0.0, tf.float32)
        if embeddings is None:
            embeddings = self(rows)
        return super().row_penalty(rows, embeddings[..., None])

    def numpy(self) -> np.ndarray:
        """The full bias table [n] (a copy)."""
        return self._full_table()[:, 0]

    def extend(self, new_rows: np.ndarray, trainable_from: int) -> None:
        """Append biases `new_rows` [k] and re-split at `trainable_from`."""
        super().extend(self._as_column(new_rows), trainable_from)
