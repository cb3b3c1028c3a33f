"""Specification of `MatrixFactorization` and `train`: frozen rows stay bit-identical under both objectives,
optimizer state and regularization stay on the trainable/looked-up rows, the losses are the documented maths,
training recovers a low-rank signal (ranked by the pipeline's own top-k), and checkpoints behave."""
import numpy as np
import pytest
from scipy.special import logsumexp

from accrete import models  # noqa: F401
import tensorflow as tf
from accrete.models.mf import MatrixFactorization, build_model, make_optimizer, train
from accrete.pipeline.evaluation import dot_scorer, popularity_scorer, seen_matrix, top_k_excluding_seen

D = 4


def _tables(n_users=30, n_items=25, d=D, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.1, (n_users, d)).astype(np.float32), rng.normal(0, 0.1, (n_items, d)).astype(np.float32),
            rng.normal(0, 0.1, n_users).astype(np.float32), rng.normal(0, 0.1, n_items).astype(np.float32))


def _all_pairs(n_users, n_items, seed=0):
    """Interactions touching every user and item row at least once, with ratings."""
    rng = np.random.default_rng(seed)
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, 200)])
    items = np.concatenate([np.arange(n_items), np.arange(n_users) % n_items, rng.integers(0, n_items, 200)])[
        :len(users)]
    return users, items, rng.uniform(1, 5, len(users)).astype(np.float32)


def _low_rank_world(seed=0, n_users=500, n_items=400, rank=4, per_user=40):
    """Users pick items with probability proportional to popularity x exp(ground-truth affinity)."""
    rng = np.random.default_rng(seed)
    user_factors, item_factors = rng.normal(size=(n_users, rank)), rng.normal(size=(n_items, rank))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(popularity)
    logits = 1.5 * user_factors @ item_factors.T + np.log(popularity)[None, :]
    picks = np.argsort(-(logits + rng.gumbel(size=logits.shape)), axis=1)[:, :per_user]  # sampling w/o replacement
    users = np.repeat(np.arange(1, n_users + 1), per_user)  # row 0 is out-of-vocabulary
    items = picks.ravel() + 1
    held_out = rng.random(len(users)) < 0.2
    return users, items, held_out


@pytest.mark.parametrize("objective", ["retrieval", "rating"])
def test_frozen_rows_are_bit_identical_after_training(objective):
    user_table, item_table, user_bias, item_bias = _tables()
    model = MatrixFactorization(user_table, item_table, user_trainable_from=20, item_trainable_from=15,
                                user_bias=user_bias, item_bias=item_bias, bias_policy="frozen",
                                objective=objective, l2=0.01, global_bias=3.0)
    checksums = [layer.frozen_checksum() for layer in
                 (model.user_embedding, model.item_embedding, model.user_bias, model.item_bias)]
    users, items, ratings = _all_pairs(30, 25)
    train(model, users=users, items=items, ratings=ratings, epochs=3, batch_size=32, learning_rate=0.1,
          optimizer="adam")
    assert checksums == [layer.frozen_checksum() for layer in
                         (model.user_embedding, model.item_embedding, model.user_bias, model.item_bias)]
    tables = model.tables()
    for name, table, boundary in (("user", user_table, 20), ("item", item_table, 15)):
        np.testing.assert_array_equal(tables[name][:boundary], table[:boundary])
        assert np.all(np.any(tables[name][boundary:] != table[boundary:], axis=1)), f"{name} tail must move"
    np.testing.assert_array_equal(tables["item_bias"][:15], item_bias[:15])
    assert np.all(tables["item_bias"][15:] != item_bias[15:])


def test_no_optimizer_state_covers_a_frozen_row():
    user_table, item_table, user_bias, item_bias = _tables()
    for optimizer in ("adagrad", "adam"):
        model = MatrixFactorization(user_table, item_table, user_trainable_from=20, item_trainable_from=15,
                                    user_bias=user_bias, item_bias=item_bias, bias_policy="frozen",
                                    objective="rating")
        users, items, ratings = _all_pairs(30, 25)
        train(model, users=users, items=items, ratings=ratings, epochs=1, batch_size=64, learning_rate=0.1,
              optimizer=optimizer)
        row_counts = [int(v.shape[0]) for v in model.optimizer.variables() if v.shape.rank]
        assert row_counts and set(row_counts) == {30 - 20, 25 - 15}, (optimizer, row_counts)


def test_rows_absent_from_every_batch_are_unchanged_even_with_l2():
    user_table, item_table, _, item_bias = _tables()
    model = MatrixFactorization(user_table, item_table, user_trainable_from=20, item_trainable_from=15,
                                item_bias=item_bias, bias_policy="frozen", l2=0.5)
    users, items = np.array([21, 22, 23, 21, 5]), np.array([16, 17, 3, 18, 16])
    train(model, users=users, items=items, epochs=5, batch_size=4, learning_rate=0.05, optimizer="adam")
    tables = model.tables()
    for name, table, touched in (("user", user_table, users), ("item", item_table, items)):
        untouched = np.setdiff1d(np.arange(len(table)), touched)  # includes tail rows never looked up
        np.testing.assert_array_equal(tables[name][untouched], table[untouched])
        assert np.all(np.any(tables[name][touched[touched >= 15]] != table[touched[touched >= 15]], axis=1))
    untouched_items = np.setdiff1d(np.arange(25), items)
    np.testing.assert_array_equal(tables["item_bias"][untouched_items], item_bias[untouched_items])


def test_trainable_bias_of_an_old_item_moves_while_its_vector_stays_bit_identical():
    user_table, item_table, user_bias, item_bias = _tables()
    model = MatrixFactorization(user_table, item_table, user_trainable_from=20, item_trainable_from=15,
                                user_bias=user_bias, item_bias=item_bias, bias_policy="trainable",
                                objective="rating", global_bias=3.0)
    users, items, ratings = _all_pairs(30, 25)
    train(model, users=users, items=items, ratings=ratings, epochs=2, batch_size=32, learning_rate=0.1)
    tables = model.tables()
    np.testing.assert_array_equal(tables["item"][:15], item_table[:15])
    np.testing.assert_array_equal(tables["user"][:20], user_table[:20])
    assert np.all(tables["item_bias"] != item_bias) and np.all(tables["user_bias"] != user_bias)


def test_retrieval_loss_is_in_batch_softmax_with_item_bias_accidental_hits_and_logq():
    user_table, item_table, _, item_bias = _tables()
    model = MatrixFactorization(user_table, item_table, user_trainable_from=0, item_trainable_from=0,
                                item_bias=item_bias, l2=0.1, temperature=0.5)
    users, items = np.array([1, 2, 3, 4]), np.array([5, 6, 5, 7])  # item 5 twice: an accidental hit
    log_q = np.log(np.array([0.1, 0.2, 0.1, 0.05], np.float32))
    weight = np.array([1.0, 2.0, 1.0, 0.5], np.float32)
    loss = model.compute_loss({"user": tf.constant(users), "item": tf.constant(items),
                               "item_log_probability": tf.constant(log_q), "weight": tf.constant(weight)})
    u, v, b = user_table[users].astype(np.float64), item_table[items].astype(np.float64), item_bias[items]
    logits = (u @ v.T + b[None, :]) / 0.5 - log_q[None, :]
    accidental = (items[:, None] == items[None, :]) & ~np.eye(4, dtype=bool)
    logits[accidental] = -np.inf
    cross_entropy = logsumexp(logits, axis=1) - np.diag(logits)
    penalty = 0.1 * ((u ** 2).sum() + (v ** 2).sum() + (b ** 2).sum())
    np.testing.assert_allclose(float(loss), (weight * cross_entropy).sum() + penalty, rtol=1e-5)


def test_rating_loss_is_summed_squared_error_of_dot_plus_biases_plus_global_mean():
    user_table, item_table, user_bias, item_bias = _tables()
    model = MatrixFactorization(user_table, item_table, user_trainable_from=0, item_trainable_from=0,
                                user_bias=user_bias, item_bias=item_bias, objective="rating", l2=0.1,
                                global_bias=3.5)
    users, items = np.array([1, 2, 3]), np.array([5, 6, 5])
    ratings = np.array([4.0, 2.0, 5.0], np.float32)
    loss = model.compute_loss({"user": tf.constant(users), "item": tf.constant(items),
                               "rating": tf.constant(ratings)})
    u, v = user_table[users].astype(np.float64), item_table[items].astype(np.float64)
    prediction = (u * v).sum(axis=1) + user_bias[users] + item_bias[items] + 3.5
    penalty = 0.1 * ((u ** 2).sum() + (v ** 2).sum() + (user_bias[users] ** 2).sum() + (item_bias[items] ** 2).sum())
    np.testing.assert_allclose(float(loss), ((ratings - prediction) ** 2).sum() + penalty, rtol=1e-5)


def test_training_on_a_low_rank_world_beats_most_popular_recall_at_10():
    users, items, held_out = _low_rank_world()
    n_users, n_items = users.max() + 1, items.max() + 1
    rng = np.random.default_rng(1)
    model = MatrixFactorization(rng.normal(0, 0.05, (n_users, 8)).astype(np.float32),
                                rng.normal(0, 0.05, (n_items, 8)).astype(np.float32), user_trainable_from=0,
                                item_trainable_from=0, item_bias=np.zeros(n_items, np.float32), l2=1e-4)
    fit = train(model, users=users[~held_out], items=items[~held_out], epochs=5, batch_size=256,
                learning_rate=0.1)
    assert len(fit["loss"]) == 5 and fit["loss"][-1] < fit["loss"][0] and fit["examples_per_second"] > 0

    seen = seen_matrix(users[~held_out], items[~held_out], n_users, n_items)
    tables = model.tables()
    top, _ = top_k_excluding_seen(dot_scorer(tables["user"], tables["item"], tables["item_bias"]),
                                  np.arange(1, n_users), 10, seen=seen)
    popularity = np.bincount(items[~held_out], minlength=n_items).astype(np.float32)
    most_popular, _ = top_k_excluding_seen(popularity_scorer(popularity), np.arange(1, n_users), 10, seen=seen)

    def recall(recommended):
        hits = np.zeros((n_users, n_items), bool)
        hits[np.arange(1, n_users)[:, None], recommended] = True
        found = hits[users[held_out], items[held_out]]
        per_user = np.bincount(users[held_out], weights=found) / np.maximum(np.bincount(users[held_out]), 1)
        return per_user[np.bincount(users[held_out], minlength=n_users) > 0].mean()

    model_recall, baseline_recall = recall(top), recall(most_popular)
    assert model_recall > 0.2 and model_recall > 1.5 * baseline_recall, (model_recall, baseline_recall)


def test_checkpoint_round_trip_is_exact(tmp_path):
    user_table, item_table, user_bias, item_bias = _tables()
    kwargs = dict(user_trainable_from=20, item_trainable_from=15, bias_policy="trainable", objective="rating")
    model = MatrixFactorization(user_table, item_table, user_bias=user_bias, item_bias=item_bias, **kwargs)
    users, items, ratings = _all_pairs(30, 25)
    train(model, users=users, items=items, ratings=ratings, epochs=1, batch_size=32, learning_rate=0.1)
    path = model.save_checkpoint(tmp_path / "ckpt")
    assert path.startswith(str(tmp_path / "ckpt"))
    same = MatrixFactorization.load_checkpoint(tmp_path / "ckpt", user_table=user_table, item_table=item_table,
                                               user_bias=user_bias, item_bias=item_bias, **kwargs)
    inferred = MatrixFactorization.load_checkpoint(tmp_path / "ckpt", objective="rating")
    for loaded in (same, inferred):
        for name, table in model.tables().items():
            assert loaded.tables()[name].tobytes() == table.tobytes(), name
    assert inferred.item_embedding.trainable_from == 15 and inferred.user_bias.trainable_from == 0
    with pytest.raises(ValueError, match="does not match"):
        MatrixFactorization.load_checkpoint(tmp_path / "ckpt", objective="rating", item_trainable_from=10)
    with pytest.raises(FileNotFoundError):
        MatrixFactorization.load_checkpoint(tmp_path / "nothing-here")


def test_train_rejects_bad_inputs_and_a_model_built_outside_the_strategy():
    user_table, item_table, _, _ = _tables()
    model = MatrixFactorization(user_table, item_table, user_trainable_from=0, item_trainable_from=0,
                                objective="rating")
    common = dict(epochs=1, batch_size=8, learning_rate=0.1)
    with pytest.raises(ValueError, match="ratings"):
        train(model, users=np.array([1]), items=np.array([1]), **common)
    with pytest.raises(ValueError, match="items must be rows in"):
        train(model, users=np.array([1]), items=np.array([25]), ratings=np.array([1.0]), **common)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("rmsprop", 0.1)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with pytest.raises(ValueError, match="build_model"):
        train(model, users=np.array([1]), items=np.array([1]), ratings=np.array([1.0]), strategy=strategy, **common)
    scoped = build_model(strategy, user_table=user_table, item_table=item_table, user_trainable_from=20,
                         item_trainable_from=15, objective="rating")
    fit = train(scoped, users=np.array([21, 1]), items=np.array([16, 2]), ratings=np.array([4.0, 1.0]),
                strategy=strategy, **common)
    assert len(fit["loss"]) == 1
    np.testing.assert_array_equal(scoped.tables()["item"][:15], item_table[:15])
