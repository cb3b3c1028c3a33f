"""Specification of `FrozenTailEmbedding` / `FrozenTailBias`: exact lookups, frozen rows bit-identical, sparse
tail-only gradients and optimizer state, row-local regularization, extension."""
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accrete import models  # noqa: F401
import tensorflow as tf
from accrete.models.embedding import FrozenTailBias, FrozenTailEmbedding, bias_trainable_from

N, D, T = 40, 6, 30  # rows, dim, trainable_from


def _table(n=N, d=D, seed=0):
    return np.random.default_rng(seed).normal(0.0, 0.1, (n, d)).astype(np.float32)


def _fit(layer, batches, optimizer, steps=1):
    """Trains `layer` to pull looked-up rows toward a fixed target vector; returns the last loss."""
    target = tf.constant(np.linspace(-1, 1, layer.dim, dtype=np.float32))

    @tf.function
    def step(rows):
        with tf.GradientTape() as tape:
            looked_up = layer(rows)
            loss = tf.reduce_mean(tf.square(looked_up - target)) + layer.row_penalty(rows, looked_up)
        variables = layer.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    loss = None
    for _ in range(steps):
        for rows in batches:
            loss = step(tf.constant(rows, tf.int64))
    return float(loss)


def test_lookup_returns_the_rows_of_the_logical_table_for_any_id_shape():
    table = _table()
    layer = FrozenTailEmbedding(table, T)
    rows = np.array([[0, 39, 29], [30, 5, 30]])
    np.testing.assert_array_equal(layer(rows).numpy(), table[rows])
    np.testing.assert_array_equal(layer(tf.constant([31, 2], tf.int32)).numpy(), table[[31, 2]])
    np.testing.assert_array_equal(layer(np.array(7)).numpy(), table[7])
    assert layer(np.zeros((0,), np.int64)).shape == (0, D)
    np.testing.assert_array_equal(layer.numpy(), table)
    assert (layer.num_rows, layer.dim, layer.trainable_from) == (N, D, T)


def test_table_is_stored_as_a_non_trainable_frozen_block_and_a_trainable_tail():
    layer = FrozenTailEmbedding(_table(), T)
    assert [tuple(v.shape) for v in layer.trainable_variables] == [(N - T, D)]
    assert [tuple(v.shape) for v in layer.non_trainable_variables] == [(T, D)]


def test_frozen_rows_are_bit_identical_after_training():
    table = _table()
    layer = FrozenTailEmbedding(table, T, l2=0.1)
    before = layer.frozen_checksum()
    batches = [np.arange(N), np.array([0, 1, 29, 30, 39, 39])]
    _fit(layer, batches, tf.keras.optimizers.Adam(0.05), steps=5)
    assert layer.frozen_checksum() == before == hashlib.sha256(table[:T].tobytes()).hexdigest()
    after = layer.numpy()
    np.testing.assert_array_equal(after[:T], table[:T])
    assert np.all(np.any(after[T:] != table[T:], axis=1)), "every tail row was in a batch and must move"


def test_gradient_is_sparse_and_covers_only_tail_rows_present_in_the_batch():
    layer = FrozenTailEmbedding(_table(), T)
    rows = tf.constant([3, 33, 0, 33, 38, 12], tf.int64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(rows))
    (gradient,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(gradient, tf.IndexedSlices)
    assert sorted(gradient.indices.numpy().tolist()) == [3, 3, 8]  # tail-local ids of 33, 33, 38
    np.testing.assert_array_equal(gradient.values.numpy(), np.ones((3, D), np.float32))


def test_optimizer_state_covers_only_the_tail_rows():
    layer = FrozenTailEmbedding(_table(), T)
    for optimizer in (tf.keras.optimizers.Adagrad(0.1), tf.keras.optimizers.Adam(0.01)):
        _fit(layer, [np.arange(N)], optimizer)
        row_counts = {int(v.shape[0]) for v in optimizer.variables() if v.shape.rank}
        assert row_counts == {N - T}


def test_rows_absent_from_every_batch_are_unchanged_even_with_l2():
    table = _table()
    layer = FrozenTailEmbedding(table, T, l2=0.5)
    touched = np.array([1, 2, 31, 32])
    _fit(layer, [touched], tf.keras.optimizers.Adam(0.05), steps=10)
    after = layer.numpy()
    untouched = np.setdiff1d(np.arange(N), touched)
    np.testing.assert_array_equal(after[untouched], table[untouched])  # includes tail rows 30, 33..39
    assert np.all(np.any(after[[31, 32]] != table[[31, 32]], axis=1))


def test_row_penalty_is_l2_times_the_batch_mean_of_squared_row_norms():
    table = _table()
    layer = FrozenTailEmbedding(table, T, l2=0.25)
    rows = np.array([[1, 35], [35, 7]])
    expected = 0.25 * np.mean(np.sum(table[rows] ** 2, axis=-1))
    np.testing.assert_allclose(layer.row_penalty(rows).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(layer.row_penalty(rows, layer(rows)).numpy(), expected, rtol=1e-6)
    assert float(FrozenTailEmbedding(table, T).row_penalty(rows)) == 0.0


def test_frozen_lr_multiplier_fine_tunes_old_rows_with_a_scaled_gradient():
    table = _table()
    layer = FrozenTailEmbedding(table, T, frozen_lr_multiplier=0.25)
    assert {tuple(v.shape) for v in layer.trainable_variables} == {(T, D), (N - T, D)}
    rows = tf.constant([4, 34], tf.int64)
    with tf.GradientTape() as tape:
        looked_up = layer(rows)
        loss = tf.reduce_sum(looked_up)
    np.testing.assert_array_equal(looked_up.numpy(), table[[4, 34]])  # forward pass is exact
    gradients = dict(zip((v.ref() for v in layer.trainable_variables),
                         tape.gradient(loss, layer.trainable_variables)))
    frozen_gradient, tail_gradient = gradients[layer.frozen.ref()], gradients[layer.tail.ref()]
    np.testing.assert_allclose(frozen_gradient.values.numpy(), np.full((1, D), 0.25))
    np.testing.assert_allclose(tail_gradient.values.numpy(), np.ones((1, D)))
    before = layer.frozen_checksum()
    _fit(layer, [np.array([4, 34])], tf.keras.optimizers.SGD(0.1))
    assert layer.frozen_checksum() != before


def test_extend_keeps_old_rows_and_moves_the_boundary():
    table = _table()
    layer = FrozenTailEmbedding(table, T)
    _fit(layer, [np.arange(N)], tf.keras.optimizers.Adagrad(0.1))
    trained = layer.numpy()
    new_rows = _table(5, D, seed=1)
    layer.extend(new_rows, trainable_from=N)
    assert (layer.num_rows, layer.trainable_from) == (N + 5, N)
    np.testing.assert_array_equal(layer.numpy(), np.concatenate([trained, new_rows]))
    assert [tuple(v.shape) for v in layer.trainable_variables] == [(5, D)]
    assert [tuple(v.shape) for v in layer.non_trainable_variables] == [(N, D)]
    assert layer.frozen_checksum() == hashlib.sha256(trained.tobytes()).hexdigest()
    _fit(layer, [np.arange(N + 5)], tf.keras.optimizers.Adagrad(0.1))
    np.testing.assert_array_equal(layer.numpy()[:N], trained)
    with pytest.raises(ValueError, match="dim"):
        layer.extend(np.zeros((1, D + 1), np.float32), N)


def test_fully_trainable_and_fully_frozen_tables_train_as_expected():
    table = _table()
    everything = FrozenTailEmbedding(table, 0)
    _fit(everything, [np.arange(N)], tf.keras.optimizers.Adagrad(0.1))
    assert np.all(np.any(everything.numpy() != table, axis=1))
    nothing = FrozenTailEmbedding(table, N)
    assert nothing.trainable_variables == []
    np.testing.assert_array_equal(nothing(np.arange(N)).numpy(), table)


def test_invalid_boundaries_and_tables_are_rejected():
    with pytest.raises(ValueError, match="trainable_from"):
        FrozenTailEmbedding(_table(), N + 1)
    with pytest.raises(ValueError, match="2-D"):
        FrozenTailEmbedding(np.zeros(3, np.float32), 0)
    with pytest.raises(TypeError, match="integers"):
        FrozenTailEmbedding(_table(), T)(np.array([0.5]))


def test_bias_table_returns_scalars_and_freezes_with_the_frozen_policy():
    bias = np.arange(N, dtype=np.float32) / 10
    frozen = FrozenTailBias(bias, bias_trainable_from("frozen", T), l2=1.0)
    rows = np.array([[1, 35], [2, 3]])
    np.testing.assert_array_equal(frozen(rows).numpy(), bias[rows])
    np.testing.assert_allclose(frozen.row_penalty(rows).numpy(), np.mean(bias[rows] ** 2), rtol=1e-6)
    _fit(frozen, [np.arange(N)], tf.keras.optimizers.Adagrad(0.1))
    after = frozen.numpy()
    assert after.shape == (N,)
    np.testing.assert_array_equal(after[:T], bias[:T])
    assert np.all(after[T:] != bias[T:])


def test_bias_table_under_the_trainable_policy_trains_every_row():
    bias = np.zeros(N, np.float32)
    trainable = FrozenTailBias(bias, bias_trainable_from("trainable", T))
    assert trainable.trainable_from == 0
    _fit(trainable, [np.arange(N)], tf.keras.optimizers.Adagrad(0.1))
    assert np.all(trainable.numpy() != 0)
    trainable.extend(np.ones(2, np.float32), 0)
    assert trainable.numpy().shape == (N + 2,)
    with pytest.raises(ValueError, match="bias_policy"):
        bias_trainable_from("sometimes", T)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_lookup_equals_indexing_the_full_table_for_any_boundary_and_ids(n, data):
    trainable_from = data.draw(st.integers(0, n), label="trainable_from")
    ids = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=20), label="ids"), dtype=np.int64)
    table = _table(n, 3)
    layer = FrozenTailEmbedding(table, trainable_from)
    np.testing.assert_array_equal(layer(ids).numpy().reshape(len(ids), 3), table[ids])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids))
    for variable, gradient in zip(layer.trainable_variables, tape.gradient(loss, layer.trainable_variables)):
        expected = np.sort(ids[ids >= trainable_from] - trainable_from)
        touched = np.sort(gradient.indices.numpy()) if gradient is not None else np.zeros(0, np.int64)
        np.testing.assert_array_equal(touched, expected)
