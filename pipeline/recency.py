"""The time-aware score term: a per-item scalar from exponentially time-decayed interaction counts.

The decayed count of item i at time t is `c_i(t) = prior * 2^-(t - created_i)/h + sum_k 2^-(t - t_k)/h` over
its interactions k (half-life h days; `prior` is one pseudo-interaction on the day the item arrived, so a
new item is rankable before anyone touched it). Its log is the item's score term, times a weight:
`s(u, i) = u . v_i + weight * log c_i(t)`.

Everything decays at the same rate, so `log c_i(t) = L_i - (t - anchor) ln2 / h` with the *anchored* log
count `L_i = log(prior * 2^(created_i - anchor)/h + sum_k 2^(t_k - anchor)/h)`. The second term is the same
for every item and moves no ranking, so the stored term is `weight * L_i`: it changes only for items that
got interactions (or arrived), which keeps delta exports small. The anchor is fixed per generation (its
full retrain), so the exponents stay small.

The prior can be learned (`learned_prior`): the time-decayed mean count that arriving items got in their first
period. Where new items are popular at once (a release), they then rank by that expectation on their first day,
instead of below every item with any history; where they start slowly, the prior stays small.
"""
from __future__ import annotations

import datetime as dt
from typing import overload

import numpy as np
import pyarrow as pa

from accrete.pipeline import contract
from accrete.pipeline.vocabulary import Vocabulary

LN2 = float(np.log(2.0))
SECONDS_PER_DAY = 86_400.0


def log_weights(timestamps_s: np.ndarray, anchor_s: float, half_life_days: float) -> np.ndarray:
    """log of each interaction's anchored weight `2^((t - anchor) / h)`, in float64."""
    if not half_life_days > 0:
        raise ValueError(f"recency half-life must be > 0 days, got {half_life_days}")
    days = (np.asarray(timestamps_s, np.float64) - anchor_s) / SECONDS_PER_DAY
    return days * (LN2 / half_life_days)


def accumulate(log_counts: np.ndarray, items: np.ndarray, timestamps_s: np.ndarray, *, anchor_s: float,
               half_life_days: float) -> np.ndarray:
    """A copy of the anchored log counts (float64, one per item row; -inf = nothing yet) with the given
    interactions (item rows, Unix seconds) added."""
    out = np.array(log_counts, dtype=np.float64, copy=True)
    if len(items):
        np.logaddexp.at(out, np.asarray(items, np.int64), log_weights(timestamps_s, anchor_s, half_life_days))
    return out


def add_arrivals(log_counts: np.ndarray, first_row: int, created_s: np.ndarray, *, prior: float, anchor_s: float,
                 half_life_days: float) -> np.ndarray:
    """Grow the log counts to cover rows `first_row ..` (`created_s`: their arrival times) with the prior
    pseudo-interaction; a prior of 0 leaves a new row at -inf until it has interactions."""
    n_new = len(created_s)
    grown = np.concatenate([np.asarray(log_counts, np.float64)[:first_row], np.full(n_new, -np.inf)])
    if prior > 0 and n_new:
        grown[first_row:] = np.log(prior) + log_weights(created_s, anchor_s, half_life_days)
    return grown


def score_term(log_counts: np.ndarray, weight: float) -> np.ndarray:
    """The float32 per-item score term `weight * L_i`; items that never had any weight get the lowest
    finite term (they rank below every item with a count) and row 0 gets 0."""
    log_counts = np.asarray(log_counts, np.float64)
    finite = np.isfinite(log_counts)
    floor = (log_counts[finite].min() - 1.0) if finite.any() else 0.0
    term = weight * np.where(finite, log_counts, floor)
    if len(term):
        term[0] = 0.0
    return term.astype(np.float32)


def cohort_sums(created_s: np.ndarray, first_period_counts: np.ndarray, *, anchor_s: float,
                half_life_days: float) -> np.ndarray:
    """Anchored sums `[sum_i w_i c_i, sum_i w_i]` over arriving items i (`created_s`: arrival times, `c_i`: their
    interactions in their first period), `w_i = 2^((created_i - anchor)/h)`: recent cohorts weigh more, at the
    same half-life as the counts. Add the sums of later cohorts to them; `learned_prior` reads them."""
    weights = np.exp(log_weights(created_s, anchor_s, half_life_days))
    return np.array([float(np.dot(weights, np.asarray(first_period_counts, np.float64))), float(weights.sum())])


def learned_prior(sums: np.ndarray | None, fallback: float) -> float:
    """The time-decayed mean first-period count of arriving items; `fallback` before any item arrived."""
    if sums is None or not sums[1] > 0:
        return float(fallback)
    return float(sums[0] / sums[1])


# ----- bookkeeping over a store's vocabularies and partitions (settings: a generation's `recency` record) -----
def item_times(interactions: pa.Table, item_vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Item rows and Unix-second timestamps of the interactions with a known item. Unlike
    `interaction_arrays` it keeps interactions of users a compaction dropped: they still count towards
    an item's popularity."""
    if interactions.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    items = item_vocab.lookup(interactions["item_id"])
    times = interactions["timestamp"].to_numpy().astype(np.int64)
    keep = items > 0
    return items[keep], times[keep]


@overload
def seconds(day: dt.date) -> float: ...
@overload
def seconds(day: np.ndarray) -> np.ndarray: ...
def seconds(day: dt.date | np.ndarray) -> np.ndarray | float:
    """Unix seconds at the start of a date (or of each `datetime64[D]`)."""
    if isinstance(day, dt.date):
        return float(np.datetime64(day, "s").astype(np.int64))
    return np.asarray(day, "datetime64[D]").astype("datetime64[s]").astype(np.int64).astype(np.float64)


def arrival_prior(settings: dict, reference: dict[str, np.ndarray]) -> float:
    """The pseudo-interactions a new item starts with: learned from earlier arrivals, or the configured value."""
    if not settings.get("prior_learned"):
        return settings["prior"]
    return learned_prior(reference.get("arrival_sums"), settings["prior"])


def add_vocabulary_arrivals(log_counts: np.ndarray, vocab: Vocabulary, first_row: int, settings: dict,
                      prior: float) -> np.ndarray:
    anchor = seconds(dt.date.fromisoformat(settings["anchor"]))
    created = vocab.created[first_row:]
    created_s = np.where(np.isnat(created), anchor, seconds(created))  # row 0 (no date) is never scored
    return add_arrivals(log_counts, first_row, created_s, prior=prior, anchor_s=anchor,
                                    half_life_days=settings["half_life_days"])


def first_period_sums(vocab: Vocabulary, items: np.ndarray, times: np.ndarray, settings: dict, freq: str,
                       since: dt.date) -> np.ndarray:
    """`recency.cohort_sums` over the items created after `since` (the first training partition, whose items
    are the catalogue so far rather than a cohort): their interactions within their first period."""
    created = vocab.created
    eligible = ~np.isnat(created) & (created > np.datetime64(since, "D"))
    created_s = np.where(eligible, seconds(np.where(eligible, created, np.datetime64(since, "D"))), 0.0)
    ends = {day: seconds(contract.period_end(day.astype(object), freq)) for day in np.unique(created[eligible])}
    end_s = np.zeros(len(created))
    for day, end in ends.items():
        end_s[created == day] = end
    first = eligible[items] & (times >= created_s[items]) & (times < end_s[items])
    counts = np.bincount(items[first], minlength=len(created))
    return cohort_sums(created_s[eligible], counts[eligible],
                                   anchor_s=seconds(dt.date.fromisoformat(settings["anchor"])),
                                   half_life_days=settings["half_life_days"])


def add_interactions(log_counts: np.ndarray, items: np.ndarray, times: np.ndarray, settings: dict) -> np.ndarray:
    return accumulate(log_counts, items, times, anchor_s=seconds(dt.date.fromisoformat(settings["anchor"])),
                                  half_life_days=settings["half_life_days"])
