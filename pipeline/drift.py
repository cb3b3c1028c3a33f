"""Drift metrics: how far today's partition has moved from the data since the last full retrain.

Each metric is one small pure function over numpy arrays whose docstring states its formula;
`compute_drift_metrics` evaluates all of them for one incremental step and returns a flat dict with
stable keys (`METRIC_KEYS`) that the retrain decision (`pipeline.decision`) and the dashboard read.
The "reference window" is everything since the last full retrain, *before* the partition being
measured. A metric that cannot be measured (no ratings, an empty partition, no baseline) is NaN,
and NaN never triggers a retrain. Formulas, binning and the default thresholds are justified in
`docs/drift.md`.
"""
from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon

from accrete.pipeline.config import DriftConfig
from accrete.pipeline.errors import DataContractError

#: Keys of `compute_drift_metrics`' result, in dashboard order. Stable: persisted in the drift history.
METRIC_KEYS: tuple[str, ...] = (
    "new_user_share",
    "new_item_share",
    "psi_item_popularity",
    "psi_user_activity",
    "rating_js_divergence",
    "quality_ratio",
    "lift_ratio",
    "lift_at_10",
    "recall_at_10",
    "stale_row_share",
    "stale_interaction_share",
    "days_since_full_retrain",
    "periods_since_full_retrain",
    "new_row_norm_ratio",
)

#: Half-star bins centred on 0.5, 1.0, ..., 5.0: edges 0.25, 0.75, ..., 5.25. They cover both MovieLens
#: scales (0.5-5 in half stars, 1-5 in whole stars) with one rating value per bin.
DEFAULT_RATING_EDGES: np.ndarray = np.arange(0.25, 5.25 + 1e-9, 0.5)


def share_new(is_new: np.ndarray) -> float:
    """Share of a partition's interactions whose user (or item) is new in this partition.

    Why: a surge of new users/items is drift that the frozen rows cannot absorb; it is measured here,
    and deliberately *not* inside the popularity PSI (see `popularity_psi`).

    Formula: ``share_new = #{i : is_new[i]} / n`` over the partition's n interactions.

    Args:
        is_new: bool per interaction.

    Returns:
        A value in [0, 1]; NaN for an empty partition (nothing was measured).
    """
    is_new = np.asarray(is_new)
    if is_new.ndim != 1:
        raise ValueError(f"share_new: is_new must be 1-D, got shape {is_new.shape}")
    if is_new.size == 0:
        return math.nan
    return float(np.count_nonzero(is_new) / is_new.size)


def popularity_bins(reference_counts: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass popularity bins of the entities seen in the reference window.

    Why: PSI needs bins in which both distributions have mass. Cutting the popularity ranking into
    groups of equal *interaction mass* (not equal entity count) gives the head a few bins of its own
    and lumps the long tail together, so every bin starts at ~1/n_bins of the reference mass and PSI
    weighs head and tail shifts alike.

    Binning: the entities with ``reference_counts > 0`` are ranked by count, descending, ties broken by
    ascending row (a stable, deterministic order); bins are contiguous runs of that ranking, bin 0 the
    most popular. An entity is never split, so:

    1. Head: while the top remaining entity alone holds more than its fair share
       ``R / k`` (R the mass not yet binned, k the bins left), it gets a bin of its own. Without
       this, a heavy head item would swallow two bins' worth of mass and leave a bin empty.
    2. Rest: with ``C_j`` the remaining mass ranked strictly before entity j and ``c_j`` its count,
       entity j goes to bin ``floor(k * (C_j + c_j / 2) / R)`` (offset by the head bins): each
       equal-mass cut ``i * R / k`` falls on the entity boundary nearest to it, so each bin holds
       ``R / k`` up to about one entity's count, and no bin is empty when there are at least k entities.

    Entities with no reference interaction get -1.

    Args:
        reference_counts: interactions per entity row in the reference window (row 0, the
            out-of-vocabulary row, normally has 0 and so gets -1).
        n_bins: number of bins (>= 1).

    Returns:
        int64 array, same length as `reference_counts`, with values in {-1, 0, ..., n_bins - 1}.
    """
    counts = np.asarray(reference_counts)
    if counts.ndim != 1:
        raise ValueError(f"popularity_bins: reference_counts must be 1-D, got shape {counts.shape}")
    if n_bins < 1:
        raise ValueError(f"popularity_bins: n_bins must be >= 1, got {n_bins}")
    if counts.size and (not np.all(np.isfinite(counts)) or counts.min() < 0):
        raise ValueError("popularity_bins: reference_counts must be finite and >= 0")
    bins = np.full(counts.shape[0], -1, dtype=np.int64)
    seen = np.flatnonzero(counts > 0)
    if seen.size == 0:
        return bins
    seen_counts = counts[seen].astype(np.float64)
    # Stable sort on -count: descending count, ties keep ascending row order.
    order = np.argsort(-seen_counts, kind="stable")
    ranked = seen_counts[order]
    ranked_bins = np.empty(ranked.shape[0], dtype=np.int64)
    # Head entities heavier than a fair share get their own bin; this loops over bins, never over rows.
    head, bins_left, remaining = 0, n_bins, float(ranked.sum())
    while head < ranked.shape[0] and bins_left > 1 and ranked[head] > remaining / bins_left:
        ranked_bins[head] = head
        remaining -= ranked[head]
        head, bins_left = head + 1, bins_left - 1
    rest = ranked[head:]
    if rest.size:
        before = np.cumsum(rest) - rest
        midpoint = (before + rest / 2.0) / rest.sum()
        ranked_bins[head:] = head + np.minimum((midpoint * bins_left).astype(np.int64), bins_left - 1)
    bins[seen[order]] = ranked_bins
    return bins


def population_stability_index(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    """Population Stability Index between two binned distributions.

    Why: the credit-scoring standard for "has this distribution moved?", with widely used bands
    (< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift). It is the symmetrised KL divergence
    (Jeffreys' J-divergence) ``KL(a||e) + KL(e||a)``.

    Formula: with ``e_b = expected_b / sum(expected)`` and ``a_b = actual_b / sum(actual)`` (inputs
    may be counts or proportions), each floored at `floor` (``max(p, floor)``) and **not**
    renormalised, ``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)``.

    Why floor and why not renormalise: an empty bin on one side would make ``ln`` infinite; the floor
    caps such a bin's term at ``(p - floor) * ln(p / floor)``. Every term ``(a - e) * ln(a / e)`` is
    non-negative whatever a and e are (both factors share a sign), so PSI >= 0 without renormalising,
    identical inputs give exactly 0, and bins that are non-empty on both sides keep their exact
    proportions (renormalising would perturb every bin by the number of empty ones).

    Args:
        expected: counts or proportions per bin (the reference).
        actual: counts or proportions per bin (the partition), same length.
        floor: lower bound of each bin proportion (> 0).

    Returns:
        PSI >= 0; NaN when either side has no mass (nothing to compare).
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.ndim != 1 or e.shape != a.shape:
        raise ValueError(f"population_stability_index: expected and actual must be 1-D of equal length, "
                         f"got shapes {e.shape} and {a.shape}")
    if not floor > 0:
        raise ValueError(f"population_stability_index: floor must be > 0, got {floor}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(a))) or (e.size and (e.min() < 0 or a.min() < 0)):
        raise ValueError("population_stability_index: bin masses must be finite and >= 0")
    e_total, a_total = e.sum(), a.sum()
    if e_total <= 0 or a_total <= 0:
        return math.nan
    e = np.maximum(e / e_total, floor)
    a = np.maximum(a / a_total, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def popularity_psi(reference_counts: np.ndarray, partition_rows: np.ndarray, n_bins: int = 10,
                   floor: float = 1e-4, min_interactions: int = 0) -> float:
    """PSI of a partition's interactions over the reference window's popularity bins.

    Why: an incremental step freezes old rows, which encode the popularity structure of the
    reference window. When the partition's interactions redistribute across that structure (the
    head cools, the tail heats up, a re-shuffle) the frozen rows are stale. Used for item popularity
    (rows = items) and for user activity (rows = users).

    Formula: ``bins = popularity_bins(reference_counts, n_bins)``; expected mass per bin
    ``E_b = sum_{r : bins[r] = b} reference_counts[r]``; actual mass
    ``A_b = #{i : bins[partition_rows[i]] = b}``; result ``population_stability_index(E, A, floor)``.

    Interactions on entities outside the reference (bin -1: rows created in this partition, rows
    beyond ``len(reference_counts)``, or rows dormant since the last retrain) are excluded and the
    remaining ones renormalised. `share_new` measures new entities; counting them here as an extra
    bin with zero expected mass would add about ``s * ln(s / floor)`` for a new-interaction share
    ``s`` with the default floor (0.11 at s = 2%, 0.31 at 5%, 0.69 at 10%), so a normal day's new
    items alone would push PSI past 0.25 and the metric would stop meaning "the known population moved".

    Args:
        reference_counts: interactions per row in the reference window (before this partition).
        partition_rows: the partition's interactions as vocabulary rows (int, >= 0).
        n_bins: number of equal-mass bins.
        floor: PSI proportion floor.
        min_interactions: below this many partition interactions on reference entities the result is
            NaN (not measured): PSI's sampling noise is about ``(n_bins - 1) / n`` for n interactions
            (0.09 at n = 100 with 10 bins), so on a tiny partition it would reach any threshold by chance.

    Returns:
        PSI >= 0; NaN when the reference is empty or fewer than ``max(1, min_interactions)`` partition
        interactions fall on reference entities.
    """
    rows = np.asarray(partition_rows)
    if rows.ndim != 1:
        raise ValueError(f"popularity_psi: partition_rows must be 1-D, got shape {rows.shape}")
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"popularity_psi: partition_rows must be integer rows, got dtype {rows.dtype}")
    if rows.size and rows.min() < 0:
        raise ValueError("popularity_psi: partition_rows must be >= 0")
    counts = np.asarray(reference_counts)
    bins = popularity_bins(counts, n_bins)
    seen = bins >= 0
    expected = np.bincount(bins[seen], weights=counts[seen].astype(np.float64), minlength=n_bins)
    in_reference = rows < bins.shape[0]
    row_bins = bins[rows[in_reference]]
    actual = np.bincount(row_bins[row_bins >= 0], minlength=n_bins)
    if actual.sum() < min_interactions:
        return math.nan
    return population_stability_index(expected, actual, floor)


#: Above this many distinct rating values a scale is treated as continuous: equal-width bins instead of one per value.
MAX_RATING_LEVELS = 64
CONTINUOUS_RATING_BINS = 20


def rating_edges_for(ratings: np.ndarray) -> np.ndarray:
    """Histogram edges for the rating scale seen in `ratings` (a full retrain's training data), so any scale
    works (1-5 stars, half stars, 1-10, 0-100) without configuration.

    A scale of at most `MAX_RATING_LEVELS` distinct values gets one bin per value, its edges halfway between
    neighbours and half a step beyond the ends (half stars 0.5..5 give 0.25, 0.75, ..., 5.25, the same as
    `DEFAULT_RATING_EDGES`; whole stars 1..5 give 0.5..5.5). More values: `CONTINUOUS_RATING_BINS` equal-width
    bins over [min, max]. A value a later partition brings inside the range falls in a bin; one outside it is
    a change of scale (`rating_histogram` raises, naming the fix).
    """
    levels = np.unique(np.asarray(ratings, dtype=np.float64).ravel())
    levels = levels[np.isfinite(levels)]
    if levels.size == 0:
        return DEFAULT_RATING_EDGES
    if levels.size == 1:
        return np.array([levels[0] - 0.5, levels[0] + 0.5])
    if levels.size > MAX_RATING_LEVELS:
        return np.linspace(levels[0], levels[-1], CONTINUOUS_RATING_BINS + 1)
    gaps = np.diff(levels)
    middle = levels[:-1] + gaps / 2
    return np.concatenate([[levels[0] - gaps[0] / 2], middle, [levels[-1] + gaps[-1] / 2]])


def rating_histogram(ratings: np.ndarray, edges: np.ndarray | None = None, *,
                     source: str = "rating") -> tuple[np.ndarray, np.ndarray]:
    """Counts of ratings over fixed bins, so histograms of different days are comparable and summable.

    Bins are ``[edges[k], edges[k+1])``, the last one closed on the right (``numpy.histogram``).
    The default, `DEFAULT_RATING_EDGES` (0.25, 0.75, ..., 5.25), puts each half-star value 0.5 ... 5.0
    alone in its bin, covering MovieLens' 0.5-5 and 1-5 scales. A reference histogram is the sum of
    its days' histograms.

    Args:
        ratings: the partition's ratings.
        edges: increasing bin edges; None for `DEFAULT_RATING_EDGES`.
        source: where the ratings come from (a partition), named in the error.

    Returns:
        ``(counts, edges)``: int64 counts of length ``len(edges) - 1``, and the edges used.

    Raises:
        DataContractError: a rating is NaN or outside ``[edges[0], edges[-1]]`` (another rating scale: the
            message names the fix). Silently dropping it would hide the problem and bias the metric.
    """
    edges = DEFAULT_RATING_EDGES if edges is None else np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("rating_histogram: edges must be a 1-D increasing array of at least 2 values")
    values = np.asarray(ratings, dtype=np.float64).ravel()
    outside = ~((values >= edges[0]) & (values <= edges[-1]))  # NaN is outside too
    if outside.any():
        bad = values[outside]
        raise DataContractError(
            f"{source}: {bad.size} rating(s) outside the scale [{edges[0]:g}, {edges[-1]:g}] of the drift histogram "
            f"(first: {float(bad[0])!r}); if the rating scale changed, run `accrete retrain` (a full retrain learns "
            f"the scale from the data), or set drift.rating_edges in the configuration to cover it")
    counts, _ = np.histogram(values, bins=edges)
    return counts.astype(np.int64), edges


def rating_js_divergence(reference_hist: np.ndarray, partition_hist: np.ndarray,
                         min_interactions: int = 0) -> float:
    """Jensen-Shannon divergence between the reference's and the partition's rating histograms.

    Why: a shift in how users rate (a scale change, a UI change, a new audience) moves the targets of
    a rating model; JS is symmetric, finite when a bin is empty on one side, and bounded, so one
    threshold means the same on any scale.

    Formula: with p, q the histograms normalised to sum 1 and ``m = (p + q) / 2``,
    ``JS = (KL(p||m) + KL(q||m)) / 2`` in bits (log base 2), i.e.
    ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``. Identical -> 0, disjoint -> 1.

    Args:
        reference_hist, partition_hist: `rating_histogram` counts over the same edges.
        min_interactions: below this many partition ratings the result is NaN (not measured); the
            sampling noise is about ``(bins - 1) / (8 ln 2 * n)`` for n ratings.

    Returns:
        A value in [0, 1]; NaN when either histogram is empty or the partition holds fewer than
        `min_interactions` ratings.
    """
    p = np.asarray(reference_hist, dtype=np.float64)
    q = np.asarray(partition_hist, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"rating_js_divergence: histograms must be 1-D of equal length, "
                         f"got shapes {p.shape} and {q.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))) or (p.size and (p.min() < 0 or q.min() < 0)):
        raise ValueError("rating_js_divergence: histogram counts must be finite and >= 0")
    if p.sum() <= 0 or q.sum() <= 0 or q.sum() < min_interactions:
        return math.nan
    # For (nearly) identical histograms rounding can make the divergence a hair below 0, whose sqrt is NaN
    # inside scipy: that is a divergence of 0. Clip the square into its mathematical range [0, 1].
    with np.errstate(invalid="ignore"):
        distance = float(jensenshannon(p, q, base=2.0))
    return float(np.clip(distance * distance, 0.0, 1.0)) if math.isfinite(distance) else 0.0


def quality_ratio(recall_history: Sequence[float] | np.ndarray, smoothing_steps: int) -> float:
    """Smoothed recommendation quality relative to its level just after the last full retrain.

    Why: the drift metrics above are proxies; this is the outcome. Frozen rows age, and prequential
    Recall@10 (each step scored on the next partition before training on it) sinks. One day is noisy,
    so the recent level is a moving mean.

    Formula: with ``h = recall_history`` (oldest first; its first steps are the level just after the
    retrain) and ``s = smoothing_steps``, ``ratio = nanmean(h[-s:]) / nanmean(h[:s])``: the baseline
    is smoothed like the recent level, because a single day's recall over a few hundred users carries
    about 20% noise. While fewer than 2s steps exist the two windows overlap (ratio near 1, as it
    should be just after a retrain).

    Returns:
        The ratio (1.0 = as good as after the retrain); NaN when the history is empty, the baseline is
        0 or NaN, or the whole window is NaN.
    """
    if smoothing_steps < 1:
        raise ValueError(f"quality_ratio: smoothing_steps must be >= 1, got {smoothing_steps}")
    history = np.asarray(recall_history, dtype=np.float64)
    if history.ndim != 1:
        raise ValueError(f"quality_ratio: recall_history must be 1-D, got shape {history.shape}")
    if history.size == 0:
        return math.nan
    head = history[:smoothing_steps]
    baseline = float(np.nanmean(head)) if np.any(np.isfinite(head)) else math.nan
    window = history[-smoothing_steps:]
    if not math.isfinite(baseline) or baseline == 0 or not np.any(np.isfinite(window)):
        return math.nan
    return float(np.nanmean(window) / baseline)


def lift_ratio(lift_history: Sequence[float] | np.ndarray, smoothing_steps: int) -> float:
    """The model's lift over its decayed-popularity control, relative to the lift just after the last retrain.

    Why: a hard week (a holiday, a catalogue change) lowers the Recall@10 of every ranker, so `quality_ratio`
    mixes aging with the week; the popularity control is scored on the same users in the same prequential
    evaluation, so the lift `recall / control recall` cancels the week and falls only when the model's
    personal part ages (frozen item vectors drifting away from what users now mean).

    Formula: `quality_ratio` over ``lift_history`` (each step's ``lift@10``).
    """
    return quality_ratio(lift_history, smoothing_steps)


def staleness_share(added_since_retrain: int, total: int) -> float:
    """Share of a whole that arrived since the last full retrain (rows or interactions).

    Why: incremental steps only ever add; the larger the share of rows (or interactions) that the
    last full retrain never saw jointly, the further the model is from what a retrain would produce.

    Formula: ``added_since_retrain / total``.

    Returns:
        A value in [0, 1]; NaN when total is 0.
    """
    if added_since_retrain < 0 or total < 0 or added_since_retrain > total:
        raise ValueError(f"staleness_share: need 0 <= added_since_retrain <= total, "
                         f"got {added_since_retrain} and {total}")
    if total == 0:
        return math.nan
    return float(added_since_retrain / total)


def norm_ratio(vectors: np.ndarray, added_mask: np.ndarray) -> float:
    """Mean L2 norm of embedding rows added since the last full retrain over that of the frozen rows.

    Why: new rows are trained on a few days of data against a frozen space; if their norms drift far
    from the frozen rows' (too large: they dominate dot-product retrieval; too small: they are never
    retrieved) the space is no longer coherent.

    Formula: with ``A`` the added rows and ``F`` the others, both excluding row 0 (the
    out-of-vocabulary row), ``ratio = mean_{r in A} ||v_r||_2 / mean_{r in F} ||v_r||_2``.

    Args:
        vectors: ``[rows, dim]`` embedding table, row 0 included.
        added_mask: bool per row, True for rows added since the last full retrain.

    Returns:
        The ratio; NaN when either group is empty or the frozen rows' mean norm is 0.
    """
    vectors = np.asarray(vectors)
    mask = np.asarray(added_mask, dtype=bool)
    if vectors.ndim != 2 or mask.shape != (vectors.shape[0],):
        raise ValueError(f"norm_ratio: need vectors [rows, dim] and a mask of length rows, "
                         f"got shapes {vectors.shape} and {mask.shape}")
    norms = np.linalg.norm(vectors[1:].astype(np.float64), axis=1)
    added = mask[1:]
    if not added.any() or added.all():
        return math.nan
    frozen_mean = norms[~added].mean()
    if frozen_mean == 0:
        return math.nan
    return float(norms[added].mean() / frozen_mean)


@dataclass(frozen=True)
class DriftInputs:
    """Everything `compute_drift_metrics` needs about one incremental step, as plain arrays.

    The caller (the incremental step) assembles it; nothing here reads files. "Reference" means the
    interactions since the last full retrain, *before* this partition. Row counts exclude row 0.

    Attributes:
        date: the partition's date.
        user_rows, item_rows: the partition's clean interactions as vocabulary rows (int64, one per
            interaction).
        is_new_user, is_new_item: bool per interaction: the user/item row was created by this partition.
        ratings: rating per interaction; None for implicit feedback.
        reference_user_counts, reference_item_counts: interactions per row in the reference window
            (indexed by row; rows beyond their length count as outside the reference).
        reference_rating_hist: `rating_histogram` counts of the reference window over `rating_edges`;
            None for implicit feedback.
        rating_edges: the histogram edges of this generation (learned at its full retrain); None: the
            configuration's `rating_edges`, else `DEFAULT_RATING_EDGES`.
        recall_history: prequential Recall@10 per step since the last full retrain, oldest first, the
            first entry being the level just after the retrain and the last this step's.
        user_rows_total, item_rows_total: ID rows in the vocabularies (row 0 excluded).
        user_rows_added_since_retrain, item_rows_added_since_retrain: of those, rows created since the
            last full retrain.
        interactions_since_retrain, interactions_total: interactions since the last full retrain and
            overall, both including this partition.
        days_since_retrain: days from the last full retrain to this partition's date.
        item_vectors: item embedding table ``[rows, dim]``, row 0 included.
        item_added_since_retrain: bool per item row, True for rows created since the last full retrain.
    """

    date: datetime.date
    user_rows: np.ndarray
    item_rows: np.ndarray
    is_new_user: np.ndarray
    is_new_item: np.ndarray
    ratings: np.ndarray | None
    reference_user_counts: np.ndarray
    reference_item_counts: np.ndarray
    reference_rating_hist: np.ndarray | None
    recall_history: Sequence[float]
    user_rows_total: int
    item_rows_total: int
    user_rows_added_since_retrain: int
    item_rows_added_since_retrain: int
    interactions_since_retrain: int
    interactions_total: int
    days_since_retrain: int
    item_vectors: np.ndarray
    item_added_since_retrain: np.ndarray
    rating_edges: np.ndarray | None = None
    lift_history: Sequence[float] = ()
    periods_since_retrain: int = 0

    def __post_init__(self) -> None:
        n = len(self.user_rows)
        per_interaction = {"item_rows": self.item_rows, "is_new_user": self.is_new_user,
                           "is_new_item": self.is_new_item}
        if self.ratings is not None:
            per_interaction["ratings"] = self.ratings
        wrong = {name: len(values) for name, values in per_interaction.items() if len(values) != n}
        if wrong:
            raise ValueError(f"DriftInputs for {self.date}: per-interaction arrays must all have "
                             f"len(user_rows) = {n}, got {wrong}")
        if self.days_since_retrain < 0:
            raise ValueError(f"DriftInputs for {self.date}: days_since_retrain must be >= 0, "
                             f"got {self.days_since_retrain}")


def compute_drift_metrics(inputs: DriftInputs, config: DriftConfig) -> dict[str, float]:
    """All drift metrics of one incremental step, keyed by `METRIC_KEYS` (every key always present).

    ``new_user_share``/``new_item_share``: `share_new`; ``psi_item_popularity``/``psi_user_activity``:
    `popularity_psi` with ``config.psi_bins``/``config.psi_floor``; ``rating_js_divergence``:
    `rating_js_divergence` of the partition's `rating_histogram` (default edges) against the reference's,
    NaN for implicit data; ``quality_ratio``: `quality_ratio` with ``config.quality_smoothing_steps``;
    ``recall_at_10``: the last entry of the recall history; ``stale_row_share``: (user + item rows
    added since the retrain) / (user + item rows); ``stale_interaction_share``: interactions since the
    retrain / all interactions; ``days_since_full_retrain``; ``new_row_norm_ratio``: `norm_ratio` of
    the item table.

    PSI and JS are NaN on a partition with fewer than ``config.min_partition_interactions`` usable
    interactions (their sampling noise would reach the thresholds; see `popularity_psi`).
    """
    min_interactions = config.min_partition_interactions
    if inputs.ratings is None or inputs.reference_rating_hist is None:
        js = math.nan
    else:
        edges = inputs.rating_edges
        if edges is None and config.rating_edges is not None:
            edges = np.asarray(config.rating_edges, np.float64)
        partition_hist, _ = rating_histogram(inputs.ratings, edges, source=f"partition {inputs.date}")
        js = rating_js_divergence(inputs.reference_rating_hist, partition_hist, min_interactions)
    history = np.asarray(inputs.recall_history, dtype=np.float64)
    lifts = np.asarray(inputs.lift_history, dtype=np.float64)
    return {
        "new_user_share": share_new(inputs.is_new_user),
        "new_item_share": share_new(inputs.is_new_item),
        "psi_item_popularity": popularity_psi(inputs.reference_item_counts, inputs.item_rows,
                                              config.psi_bins, config.psi_floor, min_interactions),
        "psi_user_activity": popularity_psi(inputs.reference_user_counts, inputs.user_rows,
                                            config.psi_bins, config.psi_floor, min_interactions),
        "rating_js_divergence": js,
        "quality_ratio": quality_ratio(history, config.quality_smoothing_steps),
        "lift_ratio": lift_ratio(lifts, config.quality_smoothing_steps),
        "lift_at_10": float(lifts[-1]) if lifts.size else math.nan,
        "recall_at_10": float(history[-1]) if history.size else math.nan,
        "stale_row_share": staleness_share(
            inputs.user_rows_added_since_retrain + inputs.item_rows_added_since_retrain,
            inputs.user_rows_total + inputs.item_rows_total),
        "stale_interaction_share": staleness_share(inputs.interactions_since_retrain, inputs.interactions_total),
        "days_since_full_retrain": float(inputs.days_since_retrain),
        "periods_since_full_retrain": float(inputs.periods_since_retrain),
        "new_row_norm_ratio": norm_ratio(inputs.item_vectors, inputs.item_added_since_retrain),
    }
