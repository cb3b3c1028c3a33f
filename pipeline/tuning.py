"""Choosing the time-aware score term (its weight and half-life) from the store's own data, at every full retrain.

How much a recommendation should lean on recent popularity depends on the data: on MovieLens weeks, with few
users and little personal signal, a weight of 5 wins; on a world with strong tastes, any weight above 0 buries
them (and every new item) under the bestsellers. No fixed default fits both, so a full retrain measures it.

The measurement replays what the nightly steps will do, on the most recent periods of the training data (the
holdout), never on anything later: fit iALS on the interactions before the holdout; then, period by period,
score every active user against every existing item once per candidate weight (Recall@10, the partition's new
items cold with their arrival prior, the user's earlier items excluded: the nightly protocol), then fold the
period in as a nightly step does (`models.ials.fold`, counts updated). Each candidate half-life keeps its own
counts. The (half-life, weight) pair with the best mean Recall@10 over the evaluated users wins; ties go to the
smaller weight, then the longer half-life. How fast popularity should be forgotten is the data's too: after a
regime shift, the counts of the last weeks predict, the counts of the last months mislead. The holdout is the shortest run of final periods
with at least `min_users` evaluated users, and never more than half of the periods, so that the fit keeps most
of the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from accrete.pipeline import evaluation, recency


#: The replay's fit needs to rank candidates, not to be final: 8 sweeps give the same Recall@10 as 15 on the
#: synthetic year (0.0201 either way; bench/year.py) at about half the time.
FIT_ITERATIONS = 8
#: Users scored per holdout period (the rest still fold in): scoring every candidate is the replay's main cost.
MAX_PERIOD_USERS = 2000


@dataclass(frozen=True)
class RecencyChoice:
    """The chosen term and the evidence: mean Recall@10 per (half-life days, weight) over `users` evaluated users
    in the `periods` final periods (from `holdout_start`, Unix seconds). `weight` and `half_life_days` are None
    when the holdout was too small: the configured values apply."""

    weight: float | None
    half_life_days: float | None
    recall: dict[tuple[float, float], float]
    periods: int
    users: int
    holdout_start: float | None

    def to_record(self) -> dict:
        return {"chosen": None if self.weight is None else {"half_life_days": self.half_life_days,
                                                             "weight": self.weight},
                "recall@10": {f"{h:g}d w={w:g}": r for (h, w), r in self.recall.items()},
                "periods": self.periods, "users": self.users, "holdout_start": self.holdout_start}


def holdout_periods(period_users: Sequence[int], min_users: int) -> int:
    """How many final periods form the holdout: the fewest whose active users sum to `min_users`, at most half of
    the periods; 0 when even half of them hold fewer (nothing is tuned)."""
    limit = len(period_users) // 2
    total = 0
    for n in range(1, limit + 1):
        total += int(period_users[-n])
        if total >= min_users:
            return n
    return 0


def choose_recency(users: np.ndarray, items: np.ndarray, times: np.ndarray, *, period_starts: np.ndarray,
                   user_created: np.ndarray, item_created: np.ndarray, weights: Sequence[float],
                   half_lives: Sequence[float], min_users: int, prior: float, dim: int, alpha: float, l2: float,
                   iterations: int, seed: int, refold_active: bool) -> RecencyChoice:
    """Replay the holdout (module docstring) and return the (half-life, weight) with the best Recall@10.

    Args:
        users, items, times: the training interactions (vocabulary rows, Unix seconds), any order.
        period_starts: Unix seconds of the start of every training period, increasing; a period ends where the
            next starts (the last one at its end of data).
        user_created, item_created: Unix seconds of each row's creation (its first period), aligned with the rows
            (row 0 included, with any time before the first period); rows are in creation order (vocabularies
            append; otherwise nothing is tuned).
        weights, half_lives: the candidates, every pair compared.
        min_users, prior: the holdout size, and a new item's pseudo-interactions (`pipeline.recency`).
        dim, alpha, l2, iterations, seed, refold_active: the iALS settings of the retrain and the nightly steps.
    """
    from threadpoolctl import threadpool_limits

    from accrete.models import ials

    users, items, times = (np.asarray(a) for a in (users, items, times))
    pairs = sorted({(float(h), float(w)) for h in half_lives for w in weights})
    plan = _holdout(users, times, period_starts, user_created, item_created, min_users)
    if plan is None or not pairs:
        return RecencyChoice(None, None, {}, 0, 0, None)
    period_of, n_holdout, first, start = plan
    n_users, n_items = len(user_created), len(item_created)

    before = times < start
    user_vectors, item_vectors = ials.fit(
        ials.interaction_matrix(users[before], items[before], (n_users, n_items)), dim=dim, alpha=alpha, l2=l2,
        iterations=min(iterations, FIT_ITERATIONS), seed=seed)
    user_vectors[np.bincount(users[before], minlength=n_users) == 0] = 0.0  # rows the fit never saw: solved
    item_vectors[np.bincount(items[before], minlength=n_items) == 0] = 0.0  # from their first period on
    counts = _counts_before(sorted({h for h, _ in pairs}), items[before], times[before], item_created, prior, start)

    hits = dict.fromkeys(pairs, 0.0)
    evaluated = 0
    rng = np.random.default_rng(seed)
    history_users, history_items = users[before], items[before]
    with threadpool_limits(1, "blas"):  # small products per period: a threaded BLAS only adds contention
        for p in range(first, len(period_starts)):
            in_p = period_of == p
            p_users, p_items = users[in_p], items[in_p]
            p_start = float(period_starts[p])
            p_end = float(period_starts[p + 1]) if p + 1 < len(period_starts) else np.inf
            n_old_users = int(np.searchsorted(user_created, p_start, side="left"))
            n_old_items = int(np.searchsorted(item_created, p_start, side="left"))
            n_now_items = int(np.searchsorted(item_created, p_end, side="left"))
            arriving = np.arange(n_old_items, n_now_items)
            counts = {h: _arrive(c, arriving, item_created, prior, start, h) for h, c in counts.items()}
            seen = evaluation.seen_matrix(history_users, history_items, n_users, n_items)
            excluded = np.arange(n_now_items, n_items)
            scored = _sample_users(p_users, MAX_PERIOD_USERS, rng)
            for h, w in pairs:
                scorer = evaluation.dot_scorer(user_vectors, item_vectors, recency.score_term(counts[h], w))
                metrics = evaluation.evaluate_prequential(scorer, test_users=p_users[scored], test_items=p_items[scored],
                                                          n_items=n_items, seen=seen, ks=(10,), excluded_items=excluded)
                hits[h, w] += metrics["recall@10"] * metrics["users"] if metrics["users"] else 0.0
            evaluated += int(metrics["users"])
            ials.fold(user_vectors, item_vectors[:n_now_items], users=p_users, items=p_items,
                      history_users=history_users, history_items=history_items, n_old_users=n_old_users,
                      n_old_items=n_old_items, alpha=alpha, l2=l2, refold_active=refold_active)
            counts = {h: recency.accumulate(c, p_items, times[in_p], anchor_s=start, half_life_days=h)
                      for h, c in counts.items()}
            history_users = np.concatenate([history_users, p_users])
            history_items = np.concatenate([history_items, p_items])
    if evaluated == 0:
        return RecencyChoice(None, None, {}, n_holdout, 0, start)
    recall = {pair: hits[pair] / evaluated for pair in pairs}
    half_life, weight = max(pairs, key=lambda pair: (recall[pair], -pair[1], pair[0]))
    return RecencyChoice(weight, half_life, recall, n_holdout, evaluated, start)


def _holdout(users: np.ndarray, times: np.ndarray, period_starts: np.ndarray, user_created: np.ndarray,
             item_created: np.ndarray, min_users: int) -> tuple[np.ndarray, int, int, float] | None:
    """The replay's plan: each interaction's period, the holdout's length, its first period and that period's start
    (Unix seconds); None when nothing can be tuned (no holdout with `min_users`, or rows not in creation order)."""
    period_of = np.searchsorted(period_starts, times, side="right") - 1
    period_users = [len(np.unique(users[period_of == p])) for p in range(len(period_starts))]
    n_holdout = holdout_periods(period_users, min_users)
    in_creation_order = bool(np.all(np.diff(user_created) >= 0) and np.all(np.diff(item_created) >= 0))
    if n_holdout == 0 or not in_creation_order:
        return None
    first = len(period_starts) - n_holdout
    return period_of, n_holdout, first, float(period_starts[first])


def _counts_before(half_lives: Sequence[float], items: np.ndarray, times: np.ndarray, item_created: np.ndarray,
                   prior: float, start: float) -> dict[float, np.ndarray]:
    """Per half-life, the anchored log counts (anchor `start`) of the items created before `start`: their arrival
    prior and the interactions before the holdout."""
    n_items = len(item_created)
    existing = np.flatnonzero((item_created < start) & (np.arange(n_items) > 0))
    return {h: recency.accumulate(_arrive(np.full(n_items, -np.inf), existing, item_created, prior, start, h), items,
                                  times, anchor_s=start, half_life_days=h) for h in half_lives}


def _sample_users(period_users: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """A mask over a period's interactions keeping those of at most `limit` of its users, drawn at random: the
    candidates are compared on the same users, and a few thousand separate them as well as all do."""
    distinct = np.unique(period_users)
    if len(distinct) <= limit:
        return np.ones(len(period_users), bool)
    return np.isin(period_users, rng.choice(distinct, limit, replace=False))


def _arrive(log_counts: np.ndarray, rows: np.ndarray, created: np.ndarray, prior: float, anchor: float,
            half_life: float) -> np.ndarray:
    """The rows' prior pseudo-interactions at their arrival, added to the anchored log counts."""
    if prior > 0 and len(rows):
        log_counts = log_counts.copy()
        log_counts[rows] = np.logaddexp(log_counts[rows],
                                        np.log(prior) + recency.log_weights(created[rows], anchor, half_life))
    return log_counts


#: Users scored per holdout period when choosing the profile recipe: it compares many more candidates (profile
#: half-life x count half-life x weight), each a top-k over every item.
MAX_PROFILE_PERIOD_USERS = 1000


@dataclass(frozen=True)
class ProfileChoice:
    """The profile recipe's chosen settings and the evidence (Recall@10 per candidate), as `RecencyChoice`."""

    profile_half_life_days: float | None
    half_life_days: float | None
    weight: float | None
    recall: dict[tuple[float, float, float], float]
    periods: int
    users: int
    holdout_start: float | None

    def to_record(self) -> dict:
        chosen = None if self.weight is None else {"profile_half_life_days": self.profile_half_life_days,
                                                   "half_life_days": self.half_life_days, "weight": self.weight}
        return {"chosen": chosen,
                "recall@10": {f"profile {p:g}d count {h:g}d w={w:g}": r for (p, h, w), r in self.recall.items()},
                "periods": self.periods, "users": self.users, "holdout_start": self.holdout_start}


def choose_profile_recipe(users: np.ndarray, items: np.ndarray, times: np.ndarray, *, period_starts: np.ndarray,
                          user_created: np.ndarray, item_created: np.ndarray, weights: Sequence[float],
                          half_lives: Sequence[float], profile_half_lives: Sequence[float], min_users: int,
                          prior: float, dim: int, alpha: float, l2: float, iterations: int, seed: int) -> ProfileChoice:
    """`choose_recency` for the profile recipe (`pipeline.profiles`): the holdout replayed as the nightly steps
    would run it (score, then solve the period's new items against the queries and add the period to the
    profiles and counts), for every (profile half-life, count half-life, weight); best Recall@10 wins, ties to the
    smaller weight, then the longer half-lives. Items arriving in a period are not candidates in it (a log without
    a catalogue feed announces an item by its first interaction). Arguments as `choose_recency`."""
    from threadpoolctl import threadpool_limits

    from accrete.models import ials
    from accrete.pipeline import profiles as profiles_mod, scoring

    users, items, times = (np.asarray(a) for a in (users, items, times))
    pairs = sorted({(float(h), float(w)) for h in half_lives for w in weights})
    profile_lives = sorted({float(p) for p in profile_half_lives})
    plan = _holdout(users, times, period_starts, user_created, item_created, min_users)
    if plan is None or not pairs or not profile_lives:
        return ProfileChoice(None, None, None, {}, 0, 0, None)
    period_of, n_holdout, first, start = plan
    n_users, n_items = len(user_created), len(item_created)

    before = times < start
    _, fitted = ials.fit(ials.interaction_matrix(users[before], items[before], (n_users, n_items)), dim=dim,
                         alpha=alpha, l2=l2, iterations=min(iterations, FIT_ITERATIONS), seed=seed)
    fitted[np.bincount(items[before], minlength=n_items) == 0] = 0.0  # solved from their first period on
    vectors = {p: fitted.copy() for p in profile_lives}
    state = {p: profiles_mod.build(n_users, users[before], items[before], times[before], fitted, anchor_s=start,
                                   half_life_days=p) for p in profile_lives}
    counts = _counts_before(sorted({h for h, _ in pairs}), items[before], times[before], item_created, prior, start)

    candidates = [(p, h, w) for p in profile_lives for h, w in pairs]
    hits = dict.fromkeys(candidates, 0.0)
    evaluated = 0
    rng = np.random.default_rng(seed)
    history_users, history_items = users[before], items[before]
    with threadpool_limits(1, "blas"):
        for p in range(first, len(period_starts)):
            in_p = period_of == p
            p_users, p_items = users[in_p], items[in_p]
            p_start = float(period_starts[p])
            n_old_items = int(np.searchsorted(item_created, p_start, side="left"))
            counts = {h: _arrive(c, np.arange(n_old_items, n_items)[item_created[n_old_items:] < (
                float(period_starts[p + 1]) if p + 1 < len(period_starts) else np.inf)], item_created, prior, start, h)
                      for h, c in counts.items()}
            seen = evaluation.seen_matrix(history_users, history_items, n_users, n_items)
            excluded = np.arange(n_old_items, n_items)  # arriving this period, or later
            scored = _sample_users(p_users, MAX_PROFILE_PERIOD_USERS, rng)
            metrics: dict = {"users": 0}
            for life in profile_lives:
                table = scoring.of_tables("cosine", state[life].queries, vectors[life], None)
                for h, w in pairs:
                    term = recency.score_term(counts[h], w)
                    scorer = scoring.Scoring("cosine", table.queries, table.keys, term).scores
                    metrics = evaluation.evaluate_prequential(scorer, test_users=p_users[scored],
                                                              test_items=p_items[scored], n_items=n_items, seen=seen,
                                                              ks=(10,), excluded_items=excluded)
                    hits[life, h, w] += metrics["recall@10"] * metrics["users"] if metrics["users"] else 0.0
            evaluated += int(metrics["users"])
            for life in profile_lives:
                vectors[life] = profiles_mod.solve_items(vectors[life], state[life], p_users, p_items, n_old_items,
                                                alpha=alpha, l2=l2)
                state[life], _ = profiles_mod.add_interactions(state[life], p_users, p_items, times[in_p],
                                                               vectors[life], anchor_s=start, half_life_days=life)
            counts = {h: recency.accumulate(c, p_items, times[in_p], anchor_s=start, half_life_days=h)
                      for h, c in counts.items()}
            history_users = np.concatenate([history_users, p_users])
            history_items = np.concatenate([history_items, p_items])
    if evaluated == 0:
        return ProfileChoice(None, None, None, {}, n_holdout, 0, start)
    recall = {c: hits[c] / evaluated for c in candidates}
    life, half_life, weight = max(candidates, key=lambda c: (recall[c], -c[2], c[1], c[0]))
    return ProfileChoice(life, half_life, weight, recall, n_holdout, evaluated, start)

