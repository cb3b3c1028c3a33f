"""A synthetic recommender world with ground-truth latent factors, written as contract-valid daily partitions.

Why: incremental training, cold-start initializers and drift triggers need data whose truth is known. Here every
user and item has a latent vector; items cluster by category (so metadata initialization has signal) and users by
segment; item popularity is heavy-tailed; new users and items arrive daily; and an optional regime shift re-draws
user tastes and re-shuffles item popularity, so that drift metrics and recall of a stale model must react.

The generative model, for a user `u` interacting on day `t`:

    P(item j | u, t) = softmax_j( a * <x_u, y_j> + log w_j + b_j(t) )    over items that exist by day t

with `x_u`, `y_j` the latent factors (`y_j = c_category(j) + noise`, `x_u = m_segment(u) + noise`),
`log w_j = -popularity_exponent * log(rank_j + POPULARITY_RANK_OFFSET)` with ranks a random permutation over
every item that will ever exist (Zipf-Mandelbrot), and `b_j(t)` a recency boost for items that arrived after
day 0: on its arrival day it is solved so that the day's expected share of interactions on that day's arrivals is
`new_item_share`, then it decays as `exp(-age / RECENCY_DECAY_DAYS)`. Users are drawn by a log-normal activity
weight, with a similar boost for users
arriving that day. Sampling is exact inverse-CDF sampling, vectorized: one softmax row per distinct active user and
a vectorized binary search per interaction.
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accrete.pipeline.contract import METADATA_FILE
from accrete.pipeline.errors import DataContractError

GENERATOR = "accrete.synthetic"
# Scale of the affinity term relative to log-popularity. At 3 (and the default sizes) ranking by the true scores
# gives about twice the Recall@10 of ranking by popularity alone, so personalization is worth learning.
AFFINITY_SCALE = 3.0
CATEGORY_SPREAD = 1.5     # norm of category centres (item factors cluster around them)
ITEM_NOISE = 0.6          # spread of items around their category centre
SEGMENT_SPREAD = 1.5      # norm of user segment centres
USER_NOISE = 0.6
ACTIVITY_SIGMA = 1.0      # log-normal spread of user activity
# Zipf-Mandelbrot offset q in w = (rank + q)^-s: flattens the very head so that no single item (e.g. a late
# arrival drawing rank 1) holds more than a few percent of all interactions, which would be drift in itself.
POPULARITY_RANK_OFFSET = 10.0
RECENCY_DECAY_DAYS = 2.0  # e-folding time of the new-item / new-user boost
NEW_USER_SHARE = 0.05     # share of a day's activity mass given to users arriving that day
MAX_SOFTMAX_CELLS = 4_000_000   # users x items evaluated at once (float32), bounds memory per chunk
MAX_CACHED_CELLS = 40_000_000   # users x items kept between calibration and sampling (160 MB float32)
SECONDS_PER_DAY = 86_400


def _ids(prefix: str, count: int) -> pa.Array:
    """IDs `prefix` + zero-padded number (`u000042`), built vectorized; the width fits `count`."""
    width = max(len(str(max(count - 1, 0))), 6)
    numbers = pc.cast(pa.array(np.arange(count, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, pc.utf8_lpad(numbers, width, "0"), "")


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Rows of i.i.d. N(0, 1/dim) entries: expected squared norm 1 whatever the dimension."""
    return rng.standard_normal((rows, dim)) / np.sqrt(dim)


def _boost(arrival: np.ndarray, day: int, log_base: np.ndarray) -> np.ndarray:
    """Decayed recency boost on the log scale: `log_base[arrival] * exp(-(day - arrival) / decay)` (0 for day 0)."""
    age = day - arrival
    out = np.zeros(len(arrival))
    active = (arrival > 0) & (age >= 0)
    out[active] = log_base[arrival[active]] * np.exp(-age[active] / RECENCY_DECAY_DAYS)
    return out


def _calibrated_log_boost(log_weight: np.ndarray, arrival: np.ndarray, day: int, boosts_so_far: np.ndarray,
                          share: float) -> float:
    """The log-boost giving the entities arriving on `day` a `share` of the day's total weight.

    Solves `e^b S_new / (e^b S_new + S_old) = share` where `S_new` sums today's arrivals' weights and `S_old` the
    boosted weights of everyone else present.
    """
    new = arrival == day
    if day == 0 or not new.any() or share <= 0:
        return 0.0
    old = arrival < day
    s_new = np.exp(log_weight[new]).sum()
    s_old = np.exp(log_weight[old] + _boost(arrival[old], day, boosts_so_far)).sum()
    return float(np.log(share / (1.0 - share) * s_old / s_new))


def _sample_categorical_rows(weights: np.ndarray, row_of: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """For each draw k, a column sampled with probability proportional to `weights[row_of[k]]` (inverse CDF).

    The CDF rows are unnormalized cumulative sums; each draw binary-searches its row for `uniform * total`,
    vectorized across draws (log2(columns) numpy steps, no per-draw Python).
    """
    rows, columns = weights.shape
    cdf = np.cumsum(weights, axis=1, dtype=np.float32).ravel()
    base = row_of.astype(np.int64) * columns
    target = uniform.astype(np.float32) * np.take(cdf, base + columns - 1)
    # Branchless binary search: `position` ends as the number of CDF entries <= target, i.e. the sampled column.
    position = np.zeros(len(row_of), dtype=np.int64)
    step = 1 << int(np.floor(np.log2(columns)))
    while step:
        candidate = position + step
        take = (candidate <= columns) & (np.take(cdf, base + np.minimum(candidate, columns) - 1) <= target)
        position = np.where(take, candidate, position)
        step >>= 1
    return np.minimum(position, columns - 1)


def _user_chunks(distinct: np.ndarray, columns: int):
    """Slices over distinct users so that a chunk's softmax matrix stays under `MAX_SOFTMAX_CELLS`."""
    chunk = max(1, MAX_SOFTMAX_CELLS // max(columns, 1))
    return [slice(start, start + chunk) for start in range(0, len(distinct), chunk)]


def _sample_items(user_factors: np.ndarray, item_factors: np.ndarray, item_logit: np.ndarray, users: np.ndarray,
                  uniform: np.ndarray, arriving: int, share: float) -> tuple[np.ndarray, float]:
    """Draw one item per interaction from each user's softmax; calibrate the boost of today's arrivals.

    The last `arriving` columns are the items arriving today. Their log-boost `b` solves
    `mean_k e^b N_u(k) / (O_u(k) + e^b N_u(k)) = share` over the day's interactions `k` (users `u(k)`), where
    `N_u`, `O_u` are user u's softmax masses on arriving and other items: the expected share of interactions on
    today's arrivals equals `share`. Solved by bisection on `b` (monotone). Returns (items, b).
    """
    distinct, row_of = np.unique(users, return_inverse=True)
    y = item_factors.astype(np.float32)
    chunks = _user_chunks(distinct, len(item_logit))
    # Softmax weights (exp of logits minus the row max) of every distinct user are kept between the calibration
    # and the sampling pass when they fit `MAX_CACHED_CELLS`, else recomputed chunk by chunk.
    cache = len(distinct) * len(item_logit) <= MAX_CACHED_CELLS
    cached: list[np.ndarray] = []

    def weights(k: int) -> np.ndarray:
        if k < len(cached):
            return cached[k]
        rows = chunks[k]
        z = AFFINITY_SCALE * (user_factors[distinct[rows]].astype(np.float32) @ y.T) + item_logit[None, :]
        z = np.exp(z - z.max(axis=1, keepdims=True), out=z)
        if cache:
            cached.append(z)
        return z

    boost = 0.0
    if arriving and share > 0 and arriving < len(item_logit):
        old_mass, new_mass = np.empty(len(distinct)), np.empty(len(distinct))
        for k, rows in enumerate(chunks):
            z = weights(k)
            old_mass[rows] = z[:, :-arriving].sum(axis=1, dtype=np.float64)
            new_mass[rows] = z[:, -arriving:].sum(axis=1, dtype=np.float64)
        log_ratio = (np.log(np.maximum(new_mass, 1e-300)) - np.log(np.maximum(old_mass, 1e-300)))[row_of]
        lo, hi = -50.0, 50.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.mean(1.0 / (1.0 + np.exp(-(mid + log_ratio)))) < share:
                lo = mid
            else:
                hi = mid
        boost = (lo + hi) / 2
    items = np.empty(len(users), dtype=np.int64)
    for k, rows in enumerate(chunks):
        z = weights(k)
        if arriving:
            z[:, -arriving:] *= np.float32(np.exp(boost))
        draws = np.flatnonzero((row_of >= rows.start) & (row_of < rows.stop))
        items[draws] = _sample_categorical_rows(z, row_of[draws] - rows.start, uniform[draws])
    return items, boost


def _timestamped_in_order(rng: np.random.Generator, users: np.ndarray, items: np.ndarray,
                          start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform timestamps within the day; rows sorted by (timestamp, user, item), no row repeated exactly.

    Exact duplicate rows would be quarantined by the contract: a (user, item) pair may repeat within a day but
    not within the same second, so colliding rows (adjacent once sorted) get their second re-drawn.
    """
    seconds = rng.integers(0, SECONDS_PER_DAY, len(users))
    pairs = (users.max(initial=0) + 1) * (items.max(initial=0) + 1)
    while True:
        key = (seconds * pairs + users * (items.max(initial=0) + 1) + items).astype(np.int64)
        order = np.argsort(key)
        users, items, seconds, key = users[order], items[order], seconds[order], key[order]
        repeated = np.zeros(len(key), bool)
        repeated[1:] = key[1:] == key[:-1]
        if not repeated.any():
            return users, items, start + seconds
        seconds[repeated] = rng.integers(0, SECONDS_PER_DAY, int(repeated.sum()))


def _write(table: pa.Table, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "part-0.parquet")


def _prepare_output(out: Path, overwrite: bool) -> None:
    owned = [out / name for name in ("interactions", "users", "items", "_truth", METADATA_FILE)]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataContractError(f"{out}: output directory is not empty (pass overwrite=True to replace it)")
        for path in owned:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate_world(out, *, days: int, seed: int = 0, start: datetime.date = datetime.date(2024, 1, 1),
                   initial_users: int = 2000, initial_items: int = 1000, new_users_per_day: int = 40,
                   new_items_per_day: int = 15, interactions_per_day: int = 6000, initial_interactions: int = 60000,
                   dim: int = 8, categories: int = 12, popularity_exponent: float = 1.0,
                   shift_day: int | None = None, with_ratings: bool = False, segments: int = 8,
                   new_item_share: float = 0.08, overwrite: bool = False) -> dict:
    """Generate a synthetic world and write it to `out` as a contract data directory; return a JSON-able summary.

    Day 0 (`start`) holds the initial catalogue: `initial_users` users, `initial_items` items and
    `initial_interactions` interactions. Days 1..`days` each add `new_users_per_day` users, `new_items_per_day`
    items and `interactions_per_day` interactions among the users and items existing by then, so the directory
    holds `days + 1` daily partitions. Users carry a `segment` attribute and items a `category`; the latent truth
    is written under `out/_truth/` (`user_factors.parquet`, `item_factors.parquet`, one row per entity and regime).

    With `shift_day=K`, from day K on every user's factors are re-drawn (new segment centres) and the items' base
    popularities are permuted: popularity drift and a collapse of a stale model's recall follow. Without it the
    world is stationary apart from arrivals. With `with_ratings`, each interaction carries a 1-5 star rating
    increasing with the user-item affinity.

    The output is a pure function of the arguments (same seed, same bytes). Everything is vectorized; the Python
    loop runs over days only.
    """
    began = time.perf_counter()
    if days < 0 or min(initial_users, initial_items) < 1 or min(dim, categories, segments) < 1:
        raise DataContractError("generate_world: days must be >= 0 and initial users/items, dim, categories, "
                                "segments >= 1")
    if min(new_users_per_day, new_items_per_day, interactions_per_day, initial_interactions) < 0:
        raise DataContractError("generate_world: arrival and interaction counts must be >= 0")
    if not 0.0 <= new_item_share < 1.0:
        raise DataContractError("generate_world: new_item_share must be in [0, 1)")
    if shift_day is not None and not 1 <= shift_day <= days:
        raise DataContractError(f"generate_world: shift_day must be within 1..{days}, got {shift_day}")
    out = Path(out)
    _prepare_output(out, overwrite)

    rng = np.random.default_rng(seed)
    n_users = initial_users + new_users_per_day * days
    n_items = initial_items + new_items_per_day * days
    user_arrival = np.concatenate([np.zeros(initial_users, np.int64), np.repeat(np.arange(1, days + 1), new_users_per_day)])
    item_arrival = np.concatenate([np.zeros(initial_items, np.int64), np.repeat(np.arange(1, days + 1), new_items_per_day)])

    centres = _unit_rows(rng, categories, dim) * CATEGORY_SPREAD
    item_category = rng.integers(0, categories, n_items)
    item_factors = centres[item_category] + _unit_rows(rng, n_items, dim) * ITEM_NOISE
    # Zipf-Mandelbrot by rank: a random permutation of ranks 1..n over every item that will ever exist, so any
    # day's catalogue is a random subset of one curve (bounded extremes, unlike i.i.d. Pareto draws).
    base_log_pop = -popularity_exponent * np.log(rng.permutation(n_items) + 1.0 + POPULARITY_RANK_OFFSET)

    user_segment = rng.integers(0, segments, n_users)
    segment_centres = _unit_rows(rng, segments, dim) * SEGMENT_SPREAD
    user_factors = segment_centres[user_segment] + _unit_rows(rng, n_users, dim) * USER_NOISE
    log_activity = rng.normal(0.0, ACTIVITY_SIGMA, n_users)
    # The post-shift regime is drawn whether or not it is used, so a shift changes nothing before it.
    shifted_centres = _unit_rows(rng, segments, dim) * SEGMENT_SPREAD
    shifted_user_factors = shifted_centres[user_segment] + _unit_rows(rng, n_users, dim) * USER_NOISE
    shifted_log_pop = base_log_pop[rng.permutation(n_items)]

    user_ids, item_ids = _ids("u", n_users), _ids("i", n_items)
    segment_names = pc.binary_join_element_wise("s", pc.cast(pa.array(user_segment), pa.string()), "")
    category_names = pc.binary_join_element_wise("c", pc.cast(pa.array(item_category), pa.string()), "")
    item_boost_base = np.zeros(days + 1)
    user_boost_base = np.zeros(days + 1)
    rating_noise_rng = np.random.default_rng([seed, 1])
    total_interactions = 0
    new_item_shares = []

    for day in range(days + 1):
        date = start + datetime.timedelta(days=day)
        name = f"date={date.isoformat()}"
        shifted = shift_day is not None and day >= shift_day
        x = shifted_user_factors if shifted else user_factors
        log_pop = shifted_log_pop if shifted else base_log_pop
        users_now = int(np.searchsorted(user_arrival, day, side="right"))
        items_now = int(np.searchsorted(item_arrival, day, side="right"))

        new_users = np.flatnonzero(user_arrival == day)
        new_items = np.flatnonzero(item_arrival == day)
        if new_users.size:
            _write(pa.table({"user_id": user_ids.take(pa.array(new_users)),
                             "segment": segment_names.take(pa.array(new_users))}), out / "users" / name)
        if new_items.size:
            _write(pa.table({"item_id": item_ids.take(pa.array(new_items)),
                             "category": category_names.take(pa.array(new_items))}), out / "items" / name)

        n = initial_interactions if day == 0 else interactions_per_day
        user_boost_base[day] = _calibrated_log_boost(log_activity[:users_now], user_arrival[:users_now], day,
                                                     user_boost_base, NEW_USER_SHARE)
        if n == 0:
            continue
        user_logit = log_activity[:users_now] + _boost(user_arrival[:users_now], day, user_boost_base)
        user_p = np.exp(user_logit - user_logit.max())
        users = rng.choice(users_now, size=n, p=user_p / user_p.sum())
        # Today's arrivals get no decayed boost yet (age 0 counts only once calibrated below).
        item_logit = (log_pop[:items_now] + _boost(item_arrival[:items_now], day, item_boost_base)).astype(np.float32)
        items, item_boost_base[day] = _sample_items(x, item_factors[:items_now], item_logit, users, rng.random(n),
                                                    arriving=new_items.size if day > 0 else 0, share=new_item_share)
        users, items, timestamps = _timestamped_in_order(rng, users, items,
                                                         (date - datetime.date(1970, 1, 1)).days * SECONDS_PER_DAY)
        columns = {"user_id": user_ids.take(pa.array(users)), "item_id": item_ids.take(pa.array(items)),
                   "timestamp": pa.array(timestamps, pa.int64())}
        if with_ratings:
            affinity = np.einsum("ij,ij->i", x[users], item_factors[items])
            stars = np.clip(np.rint(3.0 + 1.5 * affinity + rating_noise_rng.normal(0.0, 0.7, n)), 1, 5)
            columns["rating"] = pa.array(stars.astype(np.float32))
        _write(pa.table(columns), out / "interactions" / name)
        total_interactions += n
        if day > 0:
            new_item_shares.append(float(np.mean(item_arrival[items] == day)))

    truth_dir = out / "_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    regimes = [(0, user_factors, base_log_pop)] + ([(1, shifted_user_factors, shifted_log_pop)] if shift_day else [])
    user_created = pa.array([start + datetime.timedelta(days=int(d)) for d in np.unique(user_arrival)], pa.date32())
    item_created = pa.array([start + datetime.timedelta(days=int(d)) for d in np.unique(item_arrival)], pa.date32())
    user_tables, item_tables = [], []
    for regime, factors, log_pop in regimes:
        user_cols = {"user_id": user_ids, "segment": segment_names,
                     "created": user_created.take(pa.array(np.searchsorted(np.unique(user_arrival), user_arrival))),
                     "regime": pa.array(np.full(n_users, regime, np.int8)), "log_activity": log_activity}
        user_cols |= {f"f{k}": factors[:, k].astype(np.float32) for k in range(dim)}
        user_tables.append(pa.table(user_cols))
        item_cols = {"item_id": item_ids, "category": category_names,
                     "created": item_created.take(pa.array(np.searchsorted(np.unique(item_arrival), item_arrival))),
                     "regime": pa.array(np.full(n_items, regime, np.int8)), "log_popularity": log_pop}
        item_cols |= {f"f{k}": item_factors[:, k].astype(np.float32) for k in range(dim)}
        item_tables.append(pa.table(item_cols))
    pq.write_table(pa.concat_tables(user_tables), truth_dir / "user_factors.parquet")
    pq.write_table(pa.concat_tables(item_tables), truth_dir / "item_factors.parquet")

    params = {"days": days, "seed": seed, "start": start.isoformat(), "initial_users": initial_users,
              "initial_items": initial_items, "new_users_per_day": new_users_per_day,
              "new_items_per_day": new_items_per_day, "interactions_per_day": interactions_per_day,
              "initial_interactions": initial_interactions, "dim": dim, "categories": categories,
              "popularity_exponent": popularity_exponent, "shift_day": shift_day, "with_ratings": with_ratings,
              "segments": segments, "new_item_share": new_item_share}
    summary = {
        "generator": GENERATOR,
        "params": params,
        "partitions": days + 1,
        "first_date": start.isoformat(),
        "last_date": (start + datetime.timedelta(days=days)).isoformat(),
        "shift_date": (start + datetime.timedelta(days=shift_day)).isoformat() if shift_day else None,
        "users": n_users,
        "items": n_items,
        "interactions": total_interactions,
        "mean_new_item_share": float(np.mean(new_item_shares)) if new_item_shares else 0.0,
    }
    (out / METADATA_FILE).write_text(json.dumps({"freq": "day", **summary}, indent=2) + "\n")
    summary["seconds"] = round(time.perf_counter() - began, 3)
    return summary
