"""Specification of the prequential full-ranking evaluation (pipeline/evaluation.py)."""
import math

import numpy as np
import pytest

from accrete.pipeline.evaluation import (
    dot_scorer,
    evaluate_prequential,
    popularity_counts,
    popularity_scorer,
    seen_matrix,
    top_k_excluding_seen,
)


def matrix_scorer(scores):
    """A scorer reading a fixed users x items score matrix (exact, no BLAS rounding)."""
    scores = np.asarray(scores, dtype=np.float32)
    return lambda rows: scores[rows].copy()


def assert_metrics_equal(actual, expected, rel=1e-9):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, rel=rel, abs=1e-12), key


# A tiny world: item rows 0..5 (row 0 = out-of-vocabulary), user rows 1..4. Item 5 and user 4 are new in D.
TINY_SCORES = [
    [0, 0, 0, 0, 0, 0],  # user 0 (OOV, unused)
    [9, 5, 4, 3, 2, 1],  # user 1: row 0 scores highest but is never recommended
    [0, 1, 2, 3, 4, 5],  # user 2
    [0, 2, 2, 1, 3, 0],  # user 3: items 1 and 2 tie -> lower row first
    [0, 1, 5, 4, 3, 2],  # user 4
]
# History before D: user 1 saw item 1, users 2 and 3 saw item 4; user 4 has none.
TINY_SEEN = seen_matrix(np.array([1, 2, 3]), np.array([1, 4, 4]), n_users=5, n_items=6)
# D: user 1 -> 2, 5, 1 (re-interaction), 2 (duplicate); user 2 -> 4 (re-interaction only);
#    user 3 -> 2, 3; user 4 -> 5, 1.
TINY_USERS = np.array([1, 1, 1, 1, 2, 3, 3, 4, 4], dtype=np.int64)
TINY_ITEMS = np.array([2, 5, 1, 2, 4, 2, 3, 5, 1], dtype=np.int64)


def tiny_metrics(**overrides):
    args = dict(
        test_users=TINY_USERS,
        test_items=TINY_ITEMS,
        n_items=6,
        seen=TINY_SEEN,
        new_users=np.array([4]),
        new_items=np.array([5]),
        ks=(1, 4),
    )
    args.update(overrides)
    return evaluate_prequential(matrix_scorer(TINY_SCORES), **args)


def test_metrics_match_hand_computed_values_on_a_tiny_example():
    # Rankings (row 0 and seen items removed):
    #   user 1: 2, 3, 4, 5      R_1 = {2, 5}   (1 is a re-interaction: dropped)
    #   user 2: not evaluated   R_2 = {}       (its only interaction is a re-interaction)
    #   user 3: 1, 2, 3, 5      R_3 = {2, 3}   (4 seen; 1 and 2 tie at 2.0 -> 1 first)
    #   user 4: 2, 3, 4, 5, 1   R_4 = {1, 5}
    # d(i) = 1 / log2(i + 2): d0 = 1, d1 = 0.6309298, d2 = 0.5, d3 = 0.4306766; IDCG for 2 relevant = d0 + d1.
    d0, d1, d2, d3 = 1.0, 1 / math.log2(3), 0.5, 1 / math.log2(5)
    idcg2 = d0 + d1
    # user 1: hits at ranks 0 and 3; user 3: ranks 1 and 2; user 4: rank 3 (item 5).
    ndcg4 = {1: (d0 + d3) / idcg2, 3: (d1 + d2) / idcg2, 4: d3 / idcg2}
    expected = {
        "recall@1": (1 / 2 + 0 + 0) / 3,
        "ndcg@1": (1 + 0 + 0) / 3,
        "recall@4": (1 + 1 + 1 / 2) / 3,
        "ndcg@4": (ndcg4[1] + ndcg4[3] + ndcg4[4]) / 3,
        "users": 3,
        # existing users 1 and 3, existing items only: R_1 = {2} (hit at rank 0), R_3 = {2, 3}.
        "recall@1/existing": (1 + 0) / 2,
        "ndcg@1/existing": (1 + 0) / 2,
        "recall@4/existing": (1 + 1) / 2,
        "ndcg@4/existing": (1 + ndcg4[3]) / 2,
        "users/existing": 2,
        # new user 4, R_4 = {1, 5}.
        "recall@1/new_users": 0.0,
        "ndcg@1/new_users": 0.0,
        "recall@4/new_users": 1 / 2,
        "ndcg@4/new_users": ndcg4[4],
        "users/new_users": 1,
        # users with new relevant items: 1 and 4, R = {5}, at rank 3 for both.
        "recall@1/new_items": 0.0,
        "ndcg@1/new_items": 0.0,
        "recall@4/new_items": 1.0,
        "ndcg@4/new_items": d3,
        "users/new_items": 2,
        # 10 is not in ks, so coverage/exposure use min(ks) = 1: top-1 = {2, 1, 2} over items 1..5.
        "coverage@1": 2 / 5,
        "new_item_exposure@1": 0.0,
        # deduplicated relevant pairs: (1,2) (1,5) (3,2) (3,3) (4,1) (4,5): 2 of 6 on item 5.
        "new_item_interaction_share": 2 / 6,
    }
    assert_metrics_equal(tiny_metrics(), expected)


def test_the_young_items_slice_restricts_relevance_to_the_given_items_and_exists_only_when_asked():
    # Young item 3 is relevant to user 3 only (R_3 = {2, 3}), at rank 2 of 1, 2, 3, 5.
    metrics = tiny_metrics(young_items=np.array([3]))
    assert_metrics_equal({k: v for k, v in metrics.items() if k.endswith("/young_items")}, {
        "recall@1/young_items": 0.0, "ndcg@1/young_items": 0.0, "recall@4/young_items": 1.0,
        "ndcg@4/young_items": 0.5, "users/young_items": 1})
    assert {k: v for k, v in metrics.items() if not k.endswith("/young_items")} == tiny_metrics()
    assert not any(k.endswith("/young_items") for k in tiny_metrics())


def test_seen_items_row_zero_and_excluded_items_are_never_recommended():
    rng = np.random.default_rng(3)
    n_users, n_items = 30, 25
    scores = rng.normal(size=(n_users, n_items))
    history_users = rng.integers(0, n_users - 5, 200)
    history_items = rng.integers(0, n_items, 200)
    seen = seen_matrix(history_users, history_items, n_users - 5, n_items)  # last 5 users: no history rows
    excluded = np.array([3, 7])
    rows, values = top_k_excluding_seen(
        matrix_scorer(scores), np.arange(n_users), 10, seen=seen, excluded_items=excluded, user_batch=7
    )
    seen_pairs = set(zip(history_users.tolist(), history_items.tolist()))
    for user in range(n_users):
        listed = rows[user][rows[user] >= 0].tolist()
        assert 0 not in listed and 3 not in listed and 7 not in listed
        assert not any((user, item) in seen_pairs for item in listed)
        assert np.all(np.diff(values[user][rows[user] >= 0]) <= 0)


def test_a_user_with_fewer_recommendable_items_than_k_gets_padded_slots():
    seen = seen_matrix(np.array([1, 1, 1]), np.array([1, 2, 3]), 2, 5)
    rows, values = top_k_excluding_seen(matrix_scorer(np.ones((2, 5))), np.array([1]), 3, seen=seen)
    np.testing.assert_array_equal(rows, [[4, -1, -1]])
    assert values[0, 0] == 1.0 and np.all(np.isneginf(values[0, 1:]))


def test_ties_are_broken_by_the_lower_item_row():
    scores = np.zeros((1, 12))
    scores[0, [9, 4, 6]] = 1.0
    rows, _ = top_k_excluding_seen(matrix_scorer(scores), np.array([0]), 6)
    np.testing.assert_array_equal(rows, [[4, 6, 9, 1, 2, 3]])


def test_re_interactions_are_dropped_not_counted_as_misses():
    # User 1 saw item 1; in D they interact with 1 again and with 2, which ranks first.
    seen = seen_matrix(np.array([1]), np.array([1]), 2, 4)
    metrics = evaluate_prequential(
        matrix_scorer([[0, 0, 0, 0], [0, 9, 5, 1]]),
        test_users=np.array([1, 1]),
        test_items=np.array([1, 2]),
        n_items=4,
        seen=seen,
        ks=(1,),
    )
    assert metrics["recall@1"] == 1.0 and metrics["ndcg@1"] == 1.0 and metrics["users"] == 1
    only_reinteraction = evaluate_prequential(
        matrix_scorer([[0, 0, 0, 0], [0, 9, 5, 1]]),
        test_users=np.array([1]),
        test_items=np.array([1]),
        n_items=4,
        seen=seen,
        ks=(1,),
    )
    assert only_reinteraction["users"] == 0 and math.isnan(only_reinteraction["recall@1"])


def test_excluded_items_stay_relevant_and_count_as_misses():
    # Item 3 is not in the table yet: it cannot be recommended, and a user who chose it is a miss.
    metrics = evaluate_prequential(
        matrix_scorer([[0, 0, 0, 0], [0, 1, 2, 9]]),
        test_users=np.array([1]),
        test_items=np.array([3]),
        n_items=4,
        seen=None,
        excluded_items=np.array([3]),
        ks=(2,),
    )
    assert metrics["users"] == 1 and metrics["recall@2"] == 0.0 and metrics["coverage@2"] == 1.0


def test_a_slice_without_users_is_nan_with_zero_users():
    metrics = tiny_metrics(new_users=None, new_items=None)
    for k in (1, 4):
        assert math.isnan(metrics[f"recall@{k}/new_users"]) and math.isnan(metrics[f"ndcg@{k}/new_users"])
        assert math.isnan(metrics[f"recall@{k}/new_items"]) and math.isnan(metrics[f"ndcg@{k}/new_items"])
        assert metrics[f"recall@{k}/existing"] == metrics[f"recall@{k}"]
    assert metrics["users/new_users"] == 0 and metrics["users/new_items"] == 0
    assert metrics["users/existing"] == 3 and metrics["new_item_interaction_share"] == 0.0


def test_an_empty_partition_gives_nan_metrics_and_zero_users():
    metrics = tiny_metrics(test_users=np.zeros(0, np.int64), test_items=np.zeros(0, np.int64))
    assert metrics["users"] == 0
    assert all(math.isnan(v) for k, v in metrics.items() if not k.startswith("users"))


def test_coverage_and_new_item_exposure_count_top_slots_of_evaluated_users():
    # Items 1..6; item 3 excluded; items 5 and 6 new. k = 2.
    scores = [
        [0, 0, 0, 0, 0, 0, 0],
        [0, 3, 1, 9, 1, 5, 0],  # user 1: top-2 = 5, 1 (3 excluded)
        [0, 1, 0, 9, 0, 4, 8],  # user 2: top-2 = 6, 5
        [0, 9, 9, 9, 9, 9, 9],  # user 3: its only test item is a re-interaction -> not evaluated
    ]
    seen = seen_matrix(np.array([3]), np.array([2]), 4, 7)
    metrics = evaluate_prequential(
        matrix_scorer(scores),
        test_users=np.array([1, 2, 3]),
        test_items=np.array([4, 1, 2]),
        n_items=7,
        seen=seen,
        new_items=np.array([5, 6]),
        excluded_items=np.array([3]),
        ks=(2,),
    )
    # recommended {1, 5, 6} of recommendable {1, 2, 4, 5, 6}; new-item slots 3 of 4.
    assert metrics["coverage@2"] == pytest.approx(3 / 5)
    assert metrics["new_item_exposure@2"] == pytest.approx(3 / 4)


def test_coverage_and_exposure_are_named_at_10_when_10_is_a_k():
    metrics = tiny_metrics(ks=(50, 10, 20))
    assert "coverage@10" in metrics and "new_item_exposure@10" in metrics
    assert not any(key.startswith(("coverage@20", "coverage@50")) for key in metrics)
    # The tiny world has 5 recommendable items, all of which appear in someone's top 10.
    assert metrics["coverage@10"] == 1.0


def test_results_do_not_depend_on_the_user_batch():
    rng = np.random.default_rng(11)
    n_users, n_items = 80, 40
    scores = rng.integers(0, 4, size=(n_users, n_items))  # many ties
    seen = seen_matrix(rng.integers(0, n_users, 300), rng.integers(0, n_items, 300), n_users, n_items)
    args = dict(
        test_users=rng.integers(0, n_users, 400),
        test_items=rng.integers(0, n_items, 400),
        n_items=n_items,
        seen=seen,
        new_users=np.arange(60, 80),
        new_items=np.arange(30, 40),
        ks=(5, 10),
        excluded_items=np.array([35, 36]),
    )
    one = evaluate_prequential(matrix_scorer(scores), user_batch=1, **args)
    seven = evaluate_prequential(matrix_scorer(scores), user_batch=7, **args)
    many = evaluate_prequential(matrix_scorer(scores), user_batch=10_000, **args)
    assert_metrics_equal(one, many, rel=0)
    assert_metrics_equal(seven, many, rel=0)


def test_a_scorer_returning_a_shared_array_is_not_modified():
    cache = np.arange(12, dtype=np.float32).reshape(2, 6)
    before = cache.copy()
    top_k_excluding_seen(lambda rows: cache[: rows.shape[0]], np.array([0, 1]), 3, excluded_items=np.array([5]))
    np.testing.assert_array_equal(cache, before)


def reference_metrics(scores, test_users, test_items, n_items, seen_pairs, new_users, new_items, ks, excluded):
    """The protocol written the slow, obvious way: one Python loop per user."""
    n_items_scored = len(scores[0])
    relevant = {}
    for u, i in zip(test_users, test_items):
        if i != 0 and (u, i) not in seen_pairs:
            relevant.setdefault(u, set()).add(i)
    recommendable = [i for i in range(1, n_items_scored) if i not in excluded]
    ranked = {}
    for u in relevant:
        candidates = [i for i in recommendable if (u, i) not in seen_pairs]
        ranked[u] = sorted(candidates, key=lambda i: (-scores[u][i], i))
    slices = {
        "": lambda u, i: True,
        "/existing": lambda u, i: u not in new_users and i not in new_items,
        "/new_users": lambda u, i: u in new_users,
        "/new_items": lambda u, i: i in new_items,
    }
    out = {}
    for suffix, keep in slices.items():
        members = {u: {i for i in rel if keep(u, i)} for u, rel in relevant.items()}
        members = {u: rel for u, rel in members.items() if rel}
        out[f"users{suffix}"] = len(members)
        for k in ks:
            recalls, ndcgs = [], []
            for u, rel in members.items():
                top = ranked[u][:k]
                hits = [1.0 if i in rel else 0.0 for i in top]
                recalls.append(sum(hits) / len(rel))
                dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
                idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
                ndcgs.append(dcg / idcg)
            out[f"recall@{k}{suffix}"] = sum(recalls) / len(recalls) if recalls else float("nan")
            out[f"ndcg@{k}{suffix}"] = sum(ndcgs) / len(ndcgs) if ndcgs else float("nan")
    c = 10 if 10 in ks else min(ks)
    shown = [i for u in relevant for i in ranked[u][:c]]
    out[f"coverage@{c}"] = len(set(shown)) / len(recommendable)
    out[f"new_item_exposure@{c}"] = sum(i in new_items for i in shown) / len(shown)
    pairs = [(u, i) for u, rel in relevant.items() for i in rel]
    out["new_item_interaction_share"] = sum(i in new_items for _, i in pairs) / len(pairs)
    return out


def test_a_random_case_matches_a_slow_reference_implementation():
    rng = np.random.default_rng(2024)
    n_users, n_items = 70, 45
    scores = np.round(rng.normal(size=(n_users, n_items)), 1).astype(np.float32)  # rounding makes ties
    history_users = rng.integers(1, 55, 500)  # users 55.. have no history rows at all
    history_items = rng.integers(1, 35, 500)
    seen = seen_matrix(history_users, history_items, 55, 35)  # fewer rows and columns than the world
    test_users = rng.integers(1, n_users, 600)
    test_items = rng.integers(0, n_items, 600)  # includes row 0 and re-interactions
    new_users, new_items, excluded = set(range(55, 70)), set(range(35, 45)), {2, 40}
    ks = (3, 10, 25)
    actual = evaluate_prequential(
        matrix_scorer(scores),
        test_users=test_users,
        test_items=test_items,
        n_items=n_items,
        seen=seen,
        new_users=np.array(sorted(new_users)),
        new_items=np.array(sorted(new_items)),
        ks=ks,
        user_batch=16,
        excluded_items=np.array(sorted(excluded)),
    )
    expected = reference_metrics(
        scores.tolist(),
        test_users.tolist(),
        test_items.tolist(),
        n_items,
        set(zip(history_users.tolist(), history_items.tolist())),
        new_users,
        new_items,
        ks,
        excluded,
    )
    assert actual["users/existing"] > 10 and actual["users/new_users"] > 5 and actual["users/new_items"] > 5
    assert_metrics_equal(actual, expected)


def test_dot_scorer_computes_u_dot_v_plus_bias_and_scores_unknown_users_with_row_zero():
    rng = np.random.default_rng(0)
    users, items, bias = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)), rng.normal(size=6)
    scores = dot_scorer(users, items, bias)(np.array([2, 0, 9]))
    assert scores.dtype == np.float32 and scores.shape == (3, 6)
    expected = np.stack([users[2], users[0], users[0]]) @ items.T + bias
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_popularity_counts_and_scorer_give_every_user_the_same_weighted_counts():
    counts = popularity_counts(np.array([1, 2, 2, 4, 2]), 6)
    np.testing.assert_array_equal(counts, [0, 1, 3, 0, 1, 0])
    weighted = popularity_counts(np.array([1, 2, 2]), 4, weights=np.array([0.5, 2.0, 1.0]))
    np.testing.assert_array_equal(weighted, [0, 0.5, 3.0, 0])
    scores = popularity_scorer(counts)(np.array([3, 1]))
    np.testing.assert_array_equal(scores, [counts, counts])
    rows, _ = top_k_excluding_seen(popularity_scorer(counts), np.array([1]), 3)
    np.testing.assert_array_equal(rows, [[2, 1, 4]])


def test_seen_matrix_is_boolean_and_deduplicated():
    seen = seen_matrix(np.array([0, 0, 2, 0]), np.array([3, 3, 1, 1]), 3, 4)
    assert seen.dtype == bool and seen.nnz == 3 and seen.shape == (3, 4)
    np.testing.assert_array_equal(seen.toarray(), [[0, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])


def test_rows_out_of_range_are_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match="test_items"):
        tiny_metrics(test_items=np.array([1, 2, 3, 4, 5, 6, 1, 1, 1]))
    with pytest.raises(ValueError, match="ks"):
        tiny_metrics(ks=())
