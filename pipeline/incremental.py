"""One nightly incremental step, and the full retrain that starts a new generation.

An incremental step for partition D (`run_incremental_step` chooses D and reads it; `incremental_step` then runs
these stages, each a plain function of a `Step`; data flows one way):

1. `extend_vocabularies`: every new ID of D appended (rows are never renumbered);
2. `add_cold_rows`: a row per new user and item, initialized without D's interactions;
   `read_generation_settings`: what the generation's full retrain fixed, and warnings when settings differ;
3. `evaluate_before_training`: the current model scored on D before it trains on D (prequential, full ranking);
4. `sample_replay`, `warm_start_new_rows`: replayed old interactions (SGD objectives) and the new rows
   re-initialized from D (fold-in);
5. `train_new_rows`: only the trainable rows move, which is verified by checksum;
6. `measure_drift`: drift metrics and the retrain decision; `publish_step`: the version published atomically,
   the drift history appended.

A full retrain trains every row from scratch on the partitions up to an as-of date, and resets the
drift reference and quality baseline.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from accrete.pipeline import contract, decision as decision_mod, drift as drift_mod, evaluation, recency as recency_mod, tuning
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import PartitionOrderError, StoreError
from accrete.pipeline.faults import maybe_fail
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.reservoir import ReplayReservoir
from accrete.pipeline.store import ModelState, Store, _json_default, sha256_of_array
from accrete.pipeline.vocabulary import Vocabulary

Progress = Callable[[str], None]


@dataclass
class StepResult:
    """What one run did: `kind` is "incremental", "full_retrain" or "skipped" (already applied)."""

    kind: str
    version: int
    date: dt.date
    manifest: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def retrain_due(self) -> bool:
        return Manifest.from_dict(self.manifest).retrain_due


def _noop(_: str) -> None:
    pass


# ----- choosing the partition ------------------------------------------------------------------------
def _check_order(date: dt.date, applied: list[dt.date], available: list[dt.date], data_dir: Path) -> None:
    if date not in available:
        raise PartitionOrderError(f"{data_dir}: no partition for {date} (interactions/, users/ or items/ date={date})")
    last = max(applied)
    if date < last:
        raise PartitionOrderError(
            f"partition {date} is older than the last applied partition {last}; a late partition can only be "
            f"included by a full retrain (`accrete retrain --as-of {last}`)")
    skipped = [d for d in available if last < d < date]
    if skipped:
        raise PartitionOrderError(
            f"partition {date} cannot be applied before the earlier unapplied partition {skipped[0]} "
            f"({len(skipped)} pending); apply partitions in date order (`accrete backfill`)")


# ----- building blocks -------------------------------------------------------------------------------
def _empty_tokens() -> pa.Table:
    return pa.table({"row": pa.array([], pa.int64()), "token": pa.array([], pa.string())})


def _tokens_table(items: pa.Table, vocab: Vocabulary, first_new_row: int = 1) -> pa.Table:
    """(row, token) pairs of the attribute tokens of items from `first_new_row` on, for metadata
    initialization. An item keeps the attributes it arrived with."""
    if items.num_rows == 0 or items.num_columns <= 1:
        return _empty_tokens()
    ids, (item_index, tokens) = contract.item_attribute_tokens(items)
    rows = vocab.lookup(ids.take(pa.array(item_index)))
    keep = rows >= max(first_new_row, 1)
    return pa.table({"row": pa.array(rows[keep]), "token": pc.filter(pa.array(tokens), pa.array(keep))})


def _incidence(tokens: pa.Table, n_rows: int) -> sp.csr_matrix:
    """Rows x tokens 0/1 matrix of the item attribute tokens."""
    if tokens.num_rows == 0:
        return sp.csr_matrix((n_rows, 0), dtype=np.float32)
    encoded = pc.dictionary_encode(tokens["token"]).combine_chunks()
    codes = encoded.indices.to_numpy()
    matrix = sp.csr_matrix(
        (np.ones(len(codes), np.float32), (tokens["row"].to_numpy(), codes)),
        shape=(n_rows, len(encoded.dictionary)))
    matrix.data[:] = 1.0  # duplicates summed by the constructor collapse back to 0/1
    return matrix


def _first_row_created_since(vocab: Vocabulary, cutoff: dt.date) -> int:
    """The first row created on or after `cutoff`: rows are appended in time order, so the rows
    created since then are a contiguous tail."""
    created = vocab.created
    recent = np.flatnonzero(created >= np.datetime64(cutoff))
    recent = recent[recent > 0]
    return int(recent[0]) if len(recent) else len(vocab)


def trainable_boundary(vocab: Vocabulary, date: dt.date, applied: list[dt.date], warmup_days: int) -> int:
    """Rows created in the last `warmup_days` applied periods, and today's, stay trainable."""
    window = sorted(applied)[-warmup_days:] if warmup_days else []
    return _first_row_created_since(vocab, min([*window, date]))


def _existing(table: np.ndarray, n_old: int) -> np.ndarray:
    """The trained rows of a table: every row before `n_old` except the out-of-vocabulary row 0."""
    return table[1:n_old]


def _cold_strategy(strategy: str, has_tokens: bool) -> str:
    """The strategy for rows scored before any of their interactions may be used (the prequential
    evaluation of the rows a partition adds): fold-in becomes metadata, and without metadata the mean of
    the existing rows, i.e. the consensus direction. A random row here would rank a new user's items at
    random (measured on MovieLens: new-user Recall@10 0.011 with `normal`, 0.028 with small vectors)."""
    if strategy in ("fold_in", "metadata"):
        return "metadata" if has_tokens else "mean"
    return strategy


def _init_new_rows(strategy: str, table: np.ndarray, n_old: int, n_new: int, seed: int,
                   incidence: sp.csr_matrix | None = None, fold_in: dict | None = None) -> np.ndarray:
    from accrete.models.initializers import initialize_rows

    if n_new == 0:
        return np.zeros((0, table.shape[1]), np.float32)
    has_tokens = incidence is not None and incidence.shape[1] > 0
    if strategy == "metadata" and not has_tokens:
        strategy = "normal"
    kwargs: dict[str, Any] = {}
    if has_tokens and incidence is not None:
        kwargs["existing_tokens"] = incidence[1:n_old]
        kwargs["new_tokens"] = incidence[n_old:n_old + n_new]
    if strategy == "fold_in":
        kwargs["fold_in"] = fold_in
    return initialize_rows(strategy, existing=_existing(table, n_old), n_new=n_new, seed=seed, **kwargs).astype(np.float32)


def _grow(array: np.ndarray, n_rows: int, fill: np.ndarray | float = 0.0) -> np.ndarray:
    extra = n_rows - len(array)
    if extra <= 0:
        return array
    if np.isscalar(fill):
        tail = np.full((extra, *array.shape[1:]), fill, dtype=array.dtype)
    else:
        tail = np.asarray(fill, dtype=array.dtype)
    return np.concatenate([array, tail])


def _ids(*columns: pa.ChunkedArray) -> pa.ChunkedArray:
    """One string column of IDs from several sources (an absent source may be typed null)."""
    return pa.chunked_array([chunk.cast(pa.string()) for column in columns for chunk in column.chunks], pa.string())


def _seed_for(seed: int, date: dt.date, salt: int) -> int:
    return int(np.random.SeedSequence([seed, date.toordinal(), salt]).generate_state(1)[0])


def _positive_level(users: np.ndarray, items: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray) -> float:
    """Mean score u.v of observed pairs: the fold-in target that calibrates new rows against old ones."""
    if len(users) == 0:
        return 1.0
    level = float(np.mean(np.einsum("ij,ij->i", user_vectors[users], item_vectors[items])))
    return level if np.isfinite(level) and level > 0 else 1.0


def _fold_in_spec(opposite: np.ndarray, own_rows: np.ndarray, opposite_rows: np.ndarray, targets: np.ndarray,
                  n_old_own: int, n_old_opposite: int, n_new: int, l2: float) -> dict | None:
    """Interactions of new rows with existing (frozen) opposite rows, as the fold-in solver wants them."""
    keep = (own_rows >= n_old_own) & (opposite_rows > 0) & (opposite_rows < n_old_opposite)
    if n_new == 0 or not keep.any():
        return None
    return {"opposite": opposite, "new_rows_local": own_rows[keep] - n_old_own,
            "opposite_rows": opposite_rows[keep], "targets": targets[keep], "weights": None, "l2": l2}


def resolve_objective(configured: str, has_ratings: bool) -> str:
    """The objective to train: "auto" means rating on explicit ratings, retrieval on implicit feedback."""
    if configured != "auto":
        return configured
    return "rating" if has_ratings else "retrieval"


def _train(config: AccreteConfig, state: ModelState, objective: str, *, user_trainable_from: int, item_trainable_from: int,
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


def _interaction_arrays(interactions: pa.Table, user_vocab: Vocabulary, item_vocab: Vocabulary):
    users = user_vocab.lookup(interactions["user_id"])
    items = item_vocab.lookup(interactions["item_id"])
    ratings = interactions["rating"].to_numpy().astype(np.float32) if interactions.num_rows else np.zeros(0, np.float32)
    keep = (users > 0) & (items > 0)
    return users[keep], items[keep], ratings[keep]


def _rating_edges(config: AccreteConfig, ratings: np.ndarray) -> np.ndarray:
    """A generation's rating histogram edges: the configuration's, else learned from its training ratings."""
    edges = config.drift.rating_edges
    return drift_mod.rating_edges_for(ratings) if edges is None else np.asarray(edges, np.float64)


def _stored_rating_edges(config: AccreteConfig, reference: dict[str, np.ndarray]) -> np.ndarray | None:
    """The edges a nightly step uses: its generation's, learned (or taken from the configuration) at its full
    retrain. Stores written before they were kept: the configuration's, else None (the half-star default)."""
    if "rating_edges" in reference:
        return reference["rating_edges"]
    edges = config.drift.rating_edges
    return None if edges is None else np.asarray(edges, np.float64)


def _rating_scale(config: AccreteConfig, reference: dict[str, np.ndarray] | None) -> tuple[float, float] | None:
    """The ratings a partition may hold (a row outside is quarantined on reading). A nightly step (`reference`
    given): the range of the edges its drift histogram uses (`_stored_rating_edges`), so every kept rating falls
    in a bin. A full retrain (`reference` None): the configured edges' range, else None: it learns the scale."""
    if reference is None:
        edges: Any = config.drift.rating_edges
    else:
        edges = _stored_rating_edges(config, reference)
        edges = drift_mod.DEFAULT_RATING_EDGES if edges is None else edges
    return None if edges is None else (float(edges[0]), float(edges[-1]))


def _item_times(interactions: pa.Table, item_vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Item rows and Unix-second timestamps of the interactions with a known item. Unlike
    `_interaction_arrays` it keeps interactions of users a compaction dropped: they still count towards
    an item's popularity."""
    if interactions.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    items = item_vocab.lookup(interactions["item_id"])
    times = interactions["timestamp"].to_numpy().astype(np.int64)
    keep = items > 0
    return items[keep], times[keep]


@overload
def _seconds(day: dt.date) -> float: ...
@overload
def _seconds(day: np.ndarray) -> np.ndarray: ...
def _seconds(day: dt.date | np.ndarray) -> np.ndarray | float:
    """Unix seconds at the start of a date (or of each `datetime64[D]`)."""
    if isinstance(day, dt.date):
        return float(np.datetime64(day, "s").astype(np.int64))
    return np.asarray(day, "datetime64[D]").astype("datetime64[s]").astype(np.int64).astype(np.float64)


def recency_settings(config: AccreteConfig, anchor: dt.date) -> dict[str, Any]:
    """The time-aware term's settings, fixed for a generation by its full retrain (kept in its manifest)."""
    model = config.model
    return {"anchor": anchor.isoformat(), "half_life_days": float(model.recency_half_life_days),
            "weight": float(model.recency_weight), "prior": float(model.recency_prior),
            "prior_learned": bool(model.recency_prior_learned)}


def generation_setting_changes(config: AccreteConfig, manifest: dict[str, Any], dim: int) -> list[str]:
    """Settings the configuration changes that a nightly step cannot apply: they are fixed for a generation by
    its full retrain (`dim`: the store's tables' width). One sentence each, naming the store's value."""
    notes = []
    if config.model.dim != dim:
        notes.append(f"model.dim = {config.model.dim} in the configuration, but the store's tables have dim {dim}")
    objective = manifest.get("objective")
    if objective and config.model.objective != "auto" and config.model.objective != objective:
        notes.append(f"model.objective = {config.model.objective!r} in the configuration, but this generation "
                     f"trains {objective!r}")
    stored = manifest.get("recency") if objective == "ials" else None
    if stored:
        configured = recency_settings(config, dt.date.fromisoformat(stored["anchor"]))
        tuned = (stored.get("tuning") or {}).get("chosen") is not None  # chosen by the retrain, not configured
        for key in ("prior", "prior_learned") if tuned else ("half_life_days", "weight", "prior", "prior_learned"):
            if configured[key] != stored.get(key, False):
                notes.append(f"model.recency_{key} = {_setting(configured[key])} in the configuration, but this "
                             f"generation uses {_setting(stored.get(key, False))}")
    return [f"{note}: nightly steps keep the store's value until the next full retrain (`accrete retrain`)"
            for note in notes]


def _setting(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def _arrival_prior(settings: dict, reference: dict[str, np.ndarray]) -> float:
    """The pseudo-interactions a new item starts with: learned from earlier arrivals, or the configured value."""
    if not settings.get("prior_learned"):
        return settings["prior"]
    return recency_mod.learned_prior(reference.get("arrival_sums"), settings["prior"])


def _recency_arrivals(log_counts: np.ndarray, vocab: Vocabulary, first_row: int, settings: dict,
                      prior: float) -> np.ndarray:
    anchor = _seconds(dt.date.fromisoformat(settings["anchor"]))
    created = vocab.created[first_row:]
    created_s = np.where(np.isnat(created), anchor, _seconds(created))  # row 0 (no date) is never scored
    return recency_mod.add_arrivals(log_counts, first_row, created_s, prior=prior, anchor_s=anchor,
                                    half_life_days=settings["half_life_days"])


def _first_period_sums(vocab: Vocabulary, items: np.ndarray, times: np.ndarray, settings: dict, freq: str,
                       since: dt.date) -> np.ndarray:
    """`recency.cohort_sums` over the items created after `since` (the first training partition, whose items
    are the catalogue so far rather than a cohort): their interactions within their first period."""
    created = vocab.created
    eligible = ~np.isnat(created) & (created > np.datetime64(since, "D"))
    created_s = np.where(eligible, _seconds(np.where(eligible, created, np.datetime64(since, "D"))), 0.0)
    ends = {day: _seconds(contract.period_end(day.astype(object), freq)) for day in np.unique(created[eligible])}
    end_s = np.zeros(len(created))
    for day, end in ends.items():
        end_s[created == day] = end
    first = eligible[items] & (times >= created_s[items]) & (times < end_s[items])
    counts = np.bincount(items[first], minlength=len(created))
    return recency_mod.cohort_sums(created_s[eligible], counts[eligible],
                                   anchor_s=_seconds(dt.date.fromisoformat(settings["anchor"])),
                                   half_life_days=settings["half_life_days"])


def _choose_recency(config: AccreteConfig, training_data: pa.Table, user_vocab: Vocabulary, item_vocab: Vocabulary,
                    train_dates: list[dt.date], prior: float, *, seed: int) -> tuning.RecencyChoice:
    """`pipeline.tuning.choose_recency` on a full retrain's training data."""
    users = user_vocab.lookup(training_data["user_id"])
    items = item_vocab.lookup(training_data["item_id"])
    times = training_data["timestamp"].to_numpy().astype(np.float64)
    keep = (users > 0) & (items > 0)
    first = _seconds(min(train_dates))

    def created(vocab: Vocabulary) -> np.ndarray:
        days = vocab.created
        return np.where(np.isnat(days), -np.inf, _seconds(np.where(np.isnat(days), np.datetime64(0, "D"), days)))

    model = config.model
    period_starts = _seconds(np.array(sorted(train_dates), "datetime64[D]"))
    if len(period_starts) == 1 and keep.any():  # one backlog partition: replay it in quarters of its time span
        low, high = float(times[keep].min()), float(times[keep].max())
        period_starts = np.array([period_starts[0], *(low + (high - low) * np.array([0.25, 0.5, 0.75]))])
    return tuning.choose_recency(
        users[keep], items[keep], times[keep], period_starts=period_starts,
        user_created=np.maximum(created(user_vocab), first - 1), item_created=np.maximum(created(item_vocab), first - 1),
        weights=model.recency_weight_candidates, half_lives=model.recency_half_life_candidates or
        (model.recency_half_life_days,), min_users=model.recency_tune_min_users, prior=prior, dim=model.dim,
        alpha=model.ials_alpha, l2=model.ials_l2,
        iterations=model.ials_iterations, seed=seed, refold_active=model.user_policy == "refold_active")


def _recency_add(log_counts: np.ndarray, items: np.ndarray, times: np.ndarray, settings: dict) -> np.ndarray:
    return recency_mod.accumulate(log_counts, items, times, anchor_s=_seconds(dt.date.fromisoformat(settings["anchor"])),
                                  half_life_days=settings["half_life_days"])


def _ials_fold(config: AccreteConfig, state: ModelState, *, users: np.ndarray, items: np.ndarray,
               history_users: np.ndarray, history_items: np.ndarray, n_old_users: int, n_old_items: int) -> dict[str, Any]:
    """The nightly iALS step (`models.ials.fold`) on the state's tables: existing item rows are never written."""
    from accrete.models import ials

    clock = time.perf_counter()
    facts = ials.fold(state.user_vectors, state.item_vectors, users=users, items=items, history_users=history_users,
                      history_items=history_items, n_old_users=n_old_users, n_old_items=n_old_items,
                      alpha=config.model.ials_alpha, l2=config.model.ials_l2,
                      refold_active=config.model.user_policy == "refold_active")
    return {**facts, "seconds": time.perf_counter() - clock}


# ----- the incremental step ---------------------------------------------------------------------------
def run_incremental_step(data_dir: str | Path, store_dir: str | Path, date: dt.date | None = None, *,
                         config: AccreteConfig | None = None, force: bool = False,
                         progress: Progress = _noop) -> StepResult:
    """Apply one partition (by default the oldest pending one) as an incremental step and publish it.

    Already applied: nothing changes and the result's kind is "skipped", unless `force` and it is the
    latest applied partition, which is then recomputed from its parent version.
    """
    config = config or AccreteConfig()
    data_dir, store = Path(data_dir), Store(store_dir)
    with store.lock(f"nightly {date or '(next)'}"):
        timings: dict[str, float] = {}
        started = time.perf_counter()
        store.require_current()
        state = store.load()
        applied = state.partitions
        available = contract.list_partitions(data_dir)
        if date is None and force:
            date = max(applied)  # --force alone redoes the latest step
        if date is None:
            pending = [d for d in available if d > max(applied)]
            if not pending:
                return StepResult("skipped", state.version, max(applied), state.manifest,
                                  f"nothing to do: no partition after {max(applied)} in {data_dir}")
            date = pending[0]
        if date in applied:
            if not force:
                return StepResult("skipped", state.version, date, state.manifest,
                                  f"partition {date} already applied (version {state.version}); use --force to redo it")
            if state.manifest.get("partition") != date.isoformat() or state.manifest.get("kind") != "incremental":
                raise PartitionOrderError(
                    f"--force can only redo the latest incremental step ({state.manifest.get('partition')}), not {date}")
            state = store.load(int(state.manifest["parent"]))
            applied = state.partitions
        _check_order(date, applied, available, data_dir)
        freq = contract.data_frequency(data_dir, config.data.freq)
        progress(f"reading partition {date}")
        partition = contract.read_partition(data_dir, date, freq, rating_range=_rating_scale(config, state.reference))
        maybe_fail(f"nightly:{date.isoformat()}")
        timings["ingest"] = time.perf_counter() - started
        return incremental_step(Step(config, store, state, partition, applied, timings, progress))


# ----- the incremental step, stage by stage ------------------------------------------------------------
@dataclass
class Step:
    """One incremental step in progress: its inputs, the model state it extends, and what each stage found.

    The stages below take a `Step` and fill in their part, in the order `incremental_step` calls them; each
    is a plain function a test can call on a real store and partition.
    """

    config: AccreteConfig
    store: Store
    state: ModelState
    partition: contract.Partition
    applied: list[dt.date]
    timings: dict[str, float] = field(default_factory=dict)
    progress: Progress = _noop
    # extend_vocabularies
    n_old_users: int = 0
    n_old_items: int = 0
    users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ratings: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    incidence: sp.csr_matrix | None = None
    # add_cold_rows, read_generation_settings
    user_cold: str = "mean"
    item_cold: str = "mean"
    objective: str = "ials"
    warnings: list[str] = field(default_factory=list)
    recency: dict[str, Any] | None = None
    log_counts: np.ndarray | None = None
    arrival_sums: np.ndarray | None = None
    # evaluate_before_training
    history_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    history_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    metrics: dict[str, float] = field(default_factory=dict)
    # sample_replay
    replay_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    replay_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    replay_ratings: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    global_bias: float = 0.0
    # train_new_rows
    user_from: int = 0
    item_from: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    frozen_checksum: dict[str, str] = field(default_factory=dict)
    # measure_drift
    drift_metrics: dict[str, float] = field(default_factory=dict)
    verdict: decision_mod.RetrainDecision | None = None
    drift_state: dict[str, Any] = field(default_factory=dict)

    @property
    def date(self) -> dt.date:
        return self.partition.date

    @property
    def parent(self) -> dict[str, Any]:
        """The manifest of the version this step extends."""
        return self.state.manifest

    @property
    def n_users(self) -> int:
        return len(self.state.user_vocab)

    @property
    def n_items(self) -> int:
        return len(self.state.item_vocab)

    def seed(self, salt: int) -> int:
        return _seed_for(self.config.model.seed, self.date, salt)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        clock = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - clock


def incremental_step(step: Step) -> StepResult:
    """One partition through the stages of an incremental step, then published (see the module docstring)."""
    with step.timed("vocabulary"):
        extend_vocabularies(step)
    with step.timed("evaluate"):
        add_cold_rows(step)
        read_generation_settings(step)
        evaluate_before_training(step)
    with step.timed("initialize"):
        sample_replay(step)
        warm_start_new_rows(step)
    with step.timed("train"):
        train_new_rows(step)
    with step.timed("drift"):
        measure_drift(step)
    return publish_step(step)


def extend_vocabularies(step: Step) -> None:
    """Append every new ID (from users/, items/, then the interactions), the new items' attribute tokens, and
    map the partition's interactions to rows."""
    state, partition = step.state, step.partition
    step.n_old_users, step.n_old_items = len(state.user_vocab), len(state.item_vocab)
    state.user_vocab.extend(_ids(partition.users["user_id"], partition.interactions["user_id"]), step.date)
    state.item_vocab.extend(_ids(partition.items["item_id"], partition.interactions["item_id"]), step.date)
    state.item_tokens = pa.concat_tables([state.item_tokens,
                                          _tokens_table(partition.items, state.item_vocab, step.n_old_items)])
    step.incidence = _incidence(state.item_tokens, step.n_items)
    step.users, step.items, step.ratings = _interaction_arrays(partition.interactions, state.user_vocab,
                                                               state.item_vocab)


def add_cold_rows(step: Step) -> None:
    """Append a row per new user and item, initialized without the partition's interactions (metadata or the
    mean row), so that the prequential evaluation scores them cold; biases grow with their mean."""
    state, model = step.state, step.config.model
    n_old_users, n_old_items, n_users, n_items = step.n_old_users, step.n_old_items, step.n_users, step.n_items
    has_tokens = step.incidence is not None and step.incidence.shape[1] > 0
    step.user_cold = _cold_strategy(model.init, has_tokens=False)
    step.item_cold = _cold_strategy(model.init, has_tokens=has_tokens)
    new_users = _init_new_rows(step.user_cold, state.user_vectors, n_old_users, n_users - n_old_users, step.seed(1))
    new_items = _init_new_rows(step.item_cold, state.item_vectors, n_old_items, n_items - n_old_items, step.seed(2),
                               step.incidence)
    state.user_vectors = np.concatenate([state.user_vectors, new_users])
    state.item_vectors = np.concatenate([state.item_vectors, new_items])
    state.user_bias = _grow(state.user_bias, n_users,
                            float(np.mean(state.user_bias[1:n_old_users])) if n_old_users > 1 else 0.0)
    state.item_bias = _grow(state.item_bias, n_items,
                            float(np.mean(state.item_bias[1:n_old_items])) if n_old_items > 1 else 0.0)


def read_generation_settings(step: Step) -> None:
    """What the generation's full retrain fixed (objective, global mean, time-aware term), warnings for settings
    or ratings that no longer match it, and the time-aware term of the new items' arrival."""
    state, parent = step.state, step.parent
    step.objective = parent["objective"]
    step.global_bias = float(parent.get("global_bias", 0.0))
    step.warnings = generation_setting_changes(step.config, parent, state.user_vectors.shape[1])
    off_scale = step.partition.report["quarantined"].get(contract.RATING_OUTSIDE_SCALE, 0)
    scale = _rating_scale(step.config, state.reference)
    if off_scale and scale is not None:
        low, high = scale
        step.warnings.append(
            f"{off_scale:,} rating(s) of partition {step.date} outside the scale [{low:g}, {high:g}] learned at the "
            f"last full retrain were quarantined; if the rating scale changed, run `accrete retrain` (it "
            f"learns the scale from the data), or set drift.rating_edges")
    for warning in step.warnings:
        step.progress(f"warning: {warning}")
    step.recency = parent.get("recency") if step.objective == "ials" else None
    if step.recency:
        step.arrival_sums = state.reference.get("arrival_sums")
        step.log_counts = _recency_arrivals(state.reference["item_log_recency"], state.item_vocab, step.n_old_items,
                                            step.recency, _arrival_prior(step.recency, state.reference))
        state.item_bias = recency_mod.score_term(step.log_counts, step.recency["weight"])


def evaluate_before_training(step: Step) -> None:
    """Prequential evaluation: score the partition's interactions with the tables as they stand (new rows cold),
    seen items excluded; also for the items the previous step added."""
    state, config = step.state, step.config
    history = step.store.read_history(step.applied)
    step.history_users = state.user_vocab.lookup(history["user_id"])
    step.history_items = state.item_vocab.lookup(history["item_id"])
    seen = evaluation.seen_matrix(step.history_users, step.history_items, step.n_users, step.n_items)
    uses_bias = evaluation.uses_item_bias(step.objective, config.model.use_bias)
    scorer = evaluation.dot_scorer(state.user_vectors, state.item_vectors, state.item_bias if uses_bias else None)
    step.progress(f"evaluating on {len(step.users):,} interactions before training")
    step.metrics = evaluation.evaluate_prequential(
        scorer, test_users=step.users, test_items=step.items, n_items=step.n_items, seen=seen,
        new_users=np.arange(step.n_old_users, step.n_users), new_items=np.arange(step.n_old_items, step.n_items),
        ks=config.eval.ks, user_batch=config.eval.user_batch)
    if step.parent.get("kind") == "incremental":
        # Items the previous step added (initialized, then trained once): how well a new row does after
        # one incremental step, which is what the initialization strategy is judged by.
        previous = step.parent["rows"]
        recent = np.arange(previous["item"] - previous["item_new"], previous["item"])
        recent_metrics = evaluation.evaluate_prequential(
            scorer, test_users=step.users, test_items=step.items, n_items=step.n_items, seen=seen, new_items=recent,
            ks=config.eval.ks, user_batch=config.eval.user_batch)
        step.metrics.update({key.replace("/new_items", "/recent_items"): value
                             for key, value in recent_metrics.items() if key.endswith("/new_items")})


def sample_replay(step: Step) -> None:
    """Old interactions replayed with the partition's (SGD objectives only: iALS solves rows from the partition
    and the history), drawn from the reservoir."""
    n_replay = 0 if step.objective == "ials" else int(round(step.config.train.replay_ratio * len(step.users)))
    replay = step.state.reservoir.sample(n_replay, seed=step.seed(3)) if n_replay else None
    if replay is not None and replay.num_rows:
        step.replay_users, step.replay_items, step.replay_ratings = _interaction_arrays(
            replay, step.state.user_vocab, step.state.item_vocab)


def warm_start_new_rows(step: Step) -> None:
    """Under an SGD objective with `model.init = "fold_in"`, re-initialize the new rows by solving them against
    the frozen opposite table, now that the partition's interactions may be used (iALS solves them in training)."""
    state, model = step.state, step.config.model
    if step.objective == "ials" or model.init != "fold_in":
        return
    users, items, ratings = step.users, step.items, step.ratings
    n_old_users, n_old_items = step.n_old_users, step.n_old_items
    if step.objective == "retrieval":
        level = _positive_level(step.replay_users, step.replay_items, state.user_vectors, state.item_vectors)
        item_targets = user_targets = np.full(len(users), level, np.float32)
    else:
        item_targets = ratings - step.global_bias - state.user_bias[users]
        user_targets = ratings - step.global_bias - state.item_bias[items]
    n_new_users, n_new_items = step.n_users - n_old_users, step.n_items - n_old_items
    item_spec = _fold_in_spec(state.user_vectors, items, users, item_targets, n_old_items, n_old_users,
                              n_new_items, model.fold_in_l2)
    user_spec = _fold_in_spec(state.item_vectors, users, items, user_targets, n_old_users, n_old_items,
                              n_new_users, model.fold_in_l2)
    state.item_vectors[n_old_items:] = _init_new_rows(
        "fold_in" if item_spec else step.item_cold, state.item_vectors, n_old_items, n_new_items,
        step.seed(2), step.incidence, item_spec)
    state.user_vectors[n_old_users:] = _init_new_rows(
        "fold_in" if user_spec else step.user_cold, state.user_vectors, n_old_users, n_new_users,
        step.seed(1), None, user_spec)


def train_new_rows(step: Step) -> None:
    """Solve (iALS) or train (SGD, with replay) the trainable rows, update the time-aware term, and check by
    checksum that the frozen blocks did not move."""
    state, config, model = step.state, step.config, step.config.model
    users, items = step.users, step.items
    step.user_from = trainable_boundary(state.user_vocab, step.date, step.applied, model.warmup_days)
    step.item_from = trainable_boundary(state.item_vocab, step.date, step.applied, model.warmup_days)
    # Under iALS with refold_active, active existing users move by design (measured: user_cosine_shift).
    users_move = step.objective == "ials" and model.user_policy == "refold_active"

    def frozen_blocks() -> dict[str, str]:
        blocks = {"item": sha256_of_array(state.item_vectors[:step.item_from])}
        if not users_move:
            blocks["user"] = sha256_of_array(state.user_vectors[:step.user_from])
        return blocks

    frozen_before = frozen_blocks()
    train_users = np.concatenate([users, step.replay_users])
    step.training = {"examples_new": int(len(users)), "examples_replayed": int(len(step.replay_users))}
    if step.objective == "ials":
        step.progress(f"iALS: solving new rows and active users from {len(users):,} interactions")
        step.training.update(_ials_fold(config, state, users=users, items=items, history_users=step.history_users,
                                        history_items=step.history_items, n_old_users=step.n_old_users,
                                        n_old_items=step.n_old_items))
        if step.recency and step.log_counts is not None:
            _add_partition_to_recency(step)
    elif config.train.epochs > 0 and len(train_users):
        step.progress(f"training on {len(users):,} new + {len(step.replay_users):,} replayed interactions")
        step.training.update(_train(
            config, state, step.objective, user_trainable_from=step.user_from, item_trainable_from=step.item_from,
            users=train_users, items=np.concatenate([items, step.replay_items]),
            ratings=np.concatenate([step.ratings, step.replay_ratings]), epochs=config.train.epochs,
            seed=step.seed(4), global_bias=step.global_bias))
    step.frozen_checksum = frozen_blocks()
    if model.frozen_lr_multiplier == 0.0 and step.frozen_checksum != frozen_before:
        raise RuntimeError("frozen rows changed during training: this is a bug in the frozen-tail embedding")


def _add_partition_to_recency(step: Step) -> None:
    """The partition's interactions into each item's time-decayed count (the item bias), and the new items'
    first-period sums into the learned arrival prior."""
    recency, state = step.recency, step.state
    assert recency is not None and step.log_counts is not None
    item_rows, item_times = _item_times(step.partition.interactions, state.item_vocab)
    step.log_counts = _recency_add(step.log_counts, item_rows, item_times, recency)
    state.item_bias = recency_mod.score_term(step.log_counts, recency["weight"])
    n_new_items = step.n_items - step.n_old_items
    if recency.get("prior_learned") and n_new_items:
        cohort = recency_mod.cohort_sums(
            np.full(n_new_items, _seconds(step.date)),
            np.bincount(item_rows, minlength=step.n_items)[step.n_old_items:],
            anchor_s=_seconds(dt.date.fromisoformat(recency["anchor"])), half_life_days=recency["half_life_days"])
        step.arrival_sums = cohort if step.arrival_sums is None else step.arrival_sums + cohort


def measure_drift(step: Step) -> None:
    """The partition into the replay reservoir and the drift reference; the drift metrics against the reference
    before it, and the retrain decision; the drift state the next step carries on from."""
    state, config, partition = step.state, step.config, step.partition
    users, items, n_users, n_items = step.users, step.items, step.n_users, step.n_items
    parent_state = step.parent.get("drift_state", {})
    state.reservoir.add(partition.interactions)
    ref = state.reference
    reference_users = _grow(ref["user_counts"], n_users)
    reference_items = _grow(ref["item_counts"], n_items)
    reference_ratings = ref.get("rating_hist")
    rating_edges = _stored_rating_edges(config, ref)
    measured = step.metrics.get("users", 0) >= config.drift.min_evaluated_users
    recall_history = [*parent_state.get("recall_history", []),
                      float(step.metrics.get("recall@10", np.nan)) if measured else float("nan")]
    retrain_info = parent_state.get("last_full_retrain", {})
    retrain_date = dt.date.fromisoformat(retrain_info["date"]) if retrain_info else min(step.applied)
    rows_at_retrain = parent_state.get("rows_at_retrain", {"user": step.n_old_users, "item": step.n_old_items})
    interactions_since = int(parent_state.get("interactions_since_retrain", 0)) + len(users)
    interactions_total = int(parent_state.get("interactions_total", 0)) + len(users)
    item_added = np.zeros(n_items, bool)
    item_added[rows_at_retrain["item"]:] = True
    drift_inputs = drift_mod.DriftInputs(
        date=step.date, user_rows=users, item_rows=items,
        is_new_user=users >= step.n_old_users, is_new_item=items >= step.n_old_items,
        ratings=step.ratings if partition.has_ratings else None, reference_user_counts=reference_users,
        reference_item_counts=reference_items,
        reference_rating_hist=reference_ratings if partition.has_ratings else None,
        recall_history=recall_history,
        user_rows_total=n_users - 1, item_rows_total=n_items - 1,
        user_rows_added_since_retrain=n_users - rows_at_retrain["user"],
        item_rows_added_since_retrain=n_items - rows_at_retrain["item"],
        interactions_since_retrain=interactions_since, interactions_total=interactions_total,
        days_since_retrain=(step.date - retrain_date).days,
        item_vectors=state.item_vectors, item_added_since_retrain=item_added, rating_edges=rating_edges)
    step.drift_metrics = drift_mod.compute_drift_metrics(drift_inputs, config.drift)
    step.verdict = decision_mod.decide(step.drift_metrics, previous_streaks=parent_state.get("streaks", {}),
                                       days_since_full_retrain=(step.date - retrain_date).days, config=config.drift)
    step.drift_state = {
        "recall_history": recall_history, "streaks": step.verdict.streaks,
        "last_full_retrain": retrain_info or {"version": step.parent["version"], "date": retrain_date.isoformat()},
        "rows_at_retrain": rows_at_retrain, "interactions_since_retrain": interactions_since,
        "interactions_total": interactions_total}
    reference_users += np.bincount(users, minlength=n_users).astype(reference_users.dtype)
    reference_items += np.bincount(items, minlength=n_items).astype(reference_items.dtype)
    state.reference = {"user_counts": reference_users, "item_counts": reference_items}
    if step.recency and step.log_counts is not None:
        state.reference["item_log_recency"] = step.log_counts
        if step.arrival_sums is not None:
            state.reference["arrival_sums"] = step.arrival_sums
    if "rating_edges" in ref:
        state.reference["rating_edges"] = ref["rating_edges"]
    if partition.has_ratings:
        hist = drift_mod.rating_histogram(step.ratings, rating_edges, source=f"partition {step.date}")[0]
        state.reference["rating_hist"] = hist if reference_ratings is None else reference_ratings + hist


def publish_step(step: Step) -> StepResult:
    """Write the partition into the history, the manifest, and publish the version; append the drift record."""
    state, parent, partition, verdict = step.state, step.parent, step.partition, step.verdict
    assert verdict is not None, "measure_drift runs before publish_step"
    store, date = step.store, step.date
    version = store.require_current() + 1  # after --force the parent is older than the current version
    manifest = {
        "version": version, "parent": int(parent["version"]),
        "generation": int(parent["generation"]), "kind": "incremental",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "partition": date.isoformat(),
        "partitions": sorted({*parent["partitions"], date.isoformat()}),
        "global_bias": step.global_bias, "objective": step.objective, "recency": step.recency,
        "rows": {"user": step.n_users, "item": step.n_items, "user_new": step.n_users - step.n_old_users,
                 "item_new": step.n_items - step.n_old_items,
                 "user_trainable_from": step.user_from, "item_trainable_from": step.item_from},
        "frozen_checksum": step.frozen_checksum,
        "metrics": step.metrics,
        "drift": {**verdict.to_record(), "metrics": step.drift_metrics},
        "drift_state": step.drift_state,
        "ingest": partition.report,
        "quarantined_rows": int(partition.quarantine.num_rows),
        "warnings": step.warnings,
        "training": step.training,
        "config": step.config.to_dict(),
    }
    step.timings["total"] = sum(step.timings.values())
    manifest["timings"] = step.timings
    step.progress(f"publishing version {version}")
    clock = time.perf_counter()
    store.publish(state, manifest, quarantine=partition.quarantine, history={date: partition.interactions})
    step.timings["publish"] = time.perf_counter() - clock
    _append_drift(store, state.manifest)
    return StepResult("incremental", version, date, state.manifest,
                      f"applied {date} as version {version}" + (" (retrain due)" if verdict.retrain else ""))


def _append_drift(store: Store, manifest: dict[str, Any]) -> None:
    """Append a published version's drift record to the drift history (idempotent across crashes)."""
    if manifest.get("kind") != "incremental":
        return
    record = decision_mod.drift_record(
        dt.date.fromisoformat(manifest["partition"]), int(manifest["version"]), int(manifest["generation"]),
        {**manifest["drift"]["metrics"], **{f"quality/{k}": v for k, v in manifest["metrics"].items()}},
        decision_mod.RetrainDecision.from_record(manifest["drift"]))
    try:
        decision_mod.append_drift_history(store.root / "drift", record)
    except StoreError:
        pass  # already appended by the run that published this version


def sync_drift_history(store_dir: str | Path) -> int:
    """Append drift records of published versions missing from the history (a crash after publish)."""
    store = Store(store_dir)
    appended = 0
    existing = decision_mod.read_drift_history(store.root / "drift")
    have = set(existing["version"].astype(int)) if len(existing) else set()
    for version in store.versions():
        if version not in have:
            manifest = store.manifest(version)
            if manifest.get("kind") == "incremental":
                _append_drift(store, manifest)
                appended += 1
    return appended


# ----- the full retrain -------------------------------------------------------------------------------
def run_full_retrain(data_dir: str | Path, store_dir: str | Path, as_of: dt.date, *,
                     config: AccreteConfig | None = None, window_days: int | None = None,
                     reason: str = "manual", progress: Progress = _noop) -> StepResult:
    """Train every row from scratch on the partitions up to `as_of` (or the last `window_days`), as a new
    generation. On an empty store this makes the first version."""
    config = config or AccreteConfig()
    window_days = config.retrain.window_days if window_days is None else window_days
    data_dir, store = Path(data_dir), Store(store_dir)
    with store.lock(f"retrain --as-of {as_of}"):
        return _full_retrain(config, data_dir, store, as_of, window_days, reason, progress)


def _full_retrain(config: AccreteConfig, data_dir: Path, store: Store, as_of: dt.date, window_days: int | None,
                  reason: str, progress: Progress) -> StepResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    current = store.load() if store.exists() else None
    if current and _is_same_retrain(current.manifest, config, as_of, window_days):
        # A rerun after a crash or kill that came after the publish: the version is already this retrain
        # (trained from the same data and settings, it would come out bit-identical).
        return StepResult("skipped", current.version, as_of, current.manifest,
                          f"version {current.version} is already the full retrain as of {as_of}; nothing to do")
    consumed = set(current.partitions) if current else set()
    available = contract.list_partitions(data_dir)
    dates = [d for d in available if d <= as_of]
    if not dates:
        raise PartitionOrderError(f"{data_dir}: no partition on or before {as_of}")
    if current and max(consumed) > as_of:
        raise PartitionOrderError(
            f"the current version already consumed partitions up to {max(consumed)}; a retrain as of {as_of} "
            f"would go back in time")
    window_start = as_of - dt.timedelta(days=window_days - 1) if window_days else dt.date.min
    train_dates = [d for d in dates if d >= window_start]
    freq = contract.data_frequency(data_dir, config.data.freq)

    user_vocab = current.user_vocab if current else Vocabulary.empty("user")
    item_vocab = current.item_vocab if current else Vocabulary.empty("item")
    item_tokens = current.item_tokens if current else _empty_tokens()
    compacted = None
    if config.retrain.compact_inactive_days and current:
        user_vocab, item_vocab, item_tokens, compacted = _compact(
            store, current, as_of - dt.timedelta(days=config.retrain.compact_inactive_days))

    interactions, quarantined, reports, has_ratings = [], [], {}, False
    new_history: dict[dt.date, pa.Table] = {}  # written by the publish, inside its commit
    for date in dates:
        if date in consumed and date not in train_dates:
            continue
        progress(f"reading partition {date}")
        partition = contract.read_partition(data_dir, date, freq, rating_range=_rating_scale(config, None))
        reports[date.isoformat()] = partition.report
        if date not in consumed:
            first_new_item = len(item_vocab)
            user_vocab.extend(_ids(partition.users["user_id"], partition.interactions["user_id"]), date)
            item_vocab.extend(_ids(partition.items["item_id"], partition.interactions["item_id"]), date)
            item_tokens = pa.concat_tables([item_tokens, _tokens_table(partition.items, item_vocab, first_new_item)])
            new_history[date] = partition.interactions
            if partition.quarantine.num_rows:
                quarantined.append(partition.quarantine)
        if date in train_dates:
            has_ratings |= partition.has_ratings
            interactions.append(partition.interactions.select(["user_id", "item_id", "timestamp", "rating"]))
    timings["ingest"] = time.perf_counter() - clock

    clock = time.perf_counter()
    training_data = pa.concat_tables(interactions) if interactions else None
    if training_data is None or training_data.num_rows == 0:
        raise PartitionOrderError(f"{data_dir}: no interactions to train on up to {as_of}")
    progress(f"vocabulary: {training_data.num_rows:,} interactions to rows of {len(user_vocab) - 1:,} users, "
             f"{len(item_vocab) - 1:,} items")
    users, items, ratings = _interaction_arrays(training_data, user_vocab, item_vocab)
    n_users, n_items = len(user_vocab), len(item_vocab)
    rng = np.random.default_rng(_seed_for(config.model.seed, as_of, 5))
    dim = config.model.dim
    objective = resolve_objective(config.model.objective, has_ratings)
    global_bias = float(ratings.mean()) if objective == "rating" else 0.0
    state = ModelState(
        user_vocab=user_vocab, item_vocab=item_vocab,
        user_vectors=(rng.normal(0, 0.05, (n_users, dim))).astype(np.float32),
        item_vectors=(rng.normal(0, 0.05, (n_items, dim))).astype(np.float32),
        user_bias=np.zeros(n_users, np.float32), item_bias=np.zeros(n_items, np.float32),
        item_tokens=item_tokens, reservoir=ReplayReservoir(config.train.reservoir_capacity, config.model.seed),
        reference={}, manifest=current.manifest if current else {"version": 0})
    state.user_vectors[0] = 0.0
    state.item_vectors[0] = 0.0
    progress(f"full retrain ({objective}) on {len(users):,} interactions, {n_users - 1:,} users, {n_items - 1:,} items")
    recency = None
    if objective == "ials":
        from accrete.models import ials

        started = time.perf_counter()
        state.user_vectors, state.item_vectors = ials.fit(
            ials.interaction_matrix(users, items, (n_users, n_items)), dim=dim, alpha=config.model.ials_alpha,
            l2=config.model.ials_l2, iterations=config.model.ials_iterations,
            seed=_seed_for(config.model.seed, as_of, 4) % (2**31),
            on_iteration=lambda i, seconds: progress(f"iALS iteration {i}/{config.model.ials_iterations} ({seconds:.1f} s)"))
        recency = recency_settings(config, as_of)
        item_rows, item_times = _item_times(training_data, item_vocab)
        if config.model.recency_weight_candidates:
            progress("choosing the recency weight and half-life on the most recent periods")
            guess = (recency_mod.learned_prior(_first_period_sums(item_vocab, item_rows, item_times, recency, freq,
                                                                  min(train_dates)), recency["prior"])
                     if recency["prior_learned"] else recency["prior"])
            choice = _choose_recency(config, training_data, user_vocab, item_vocab, train_dates, guess,
                                     seed=_seed_for(config.model.seed, as_of, 6) % (2**31))
            if choice.weight is not None:
                recency.update(weight=choice.weight, half_life_days=choice.half_life_days)
            recency["tuning"] = choice.to_record()
        arrival_sums = (_first_period_sums(item_vocab, item_rows, item_times, recency, freq, min(train_dates))
                        if recency["prior_learned"] else None)
        prior = recency_mod.learned_prior(arrival_sums, recency["prior"]) if recency["prior_learned"] else recency["prior"]
        log_counts = _recency_add(_recency_arrivals(np.zeros(0), item_vocab, 0, recency, prior), item_rows, item_times,
                                  recency)
        state.item_bias = recency_mod.score_term(log_counts, recency["weight"])
        training = {"seconds": time.perf_counter() - started, "iterations": config.model.ials_iterations}
    else:
        training = _train(config, state, objective, user_trainable_from=0, item_trainable_from=0, users=users,
                          items=items, ratings=ratings, epochs=config.train.retrain_epochs,
                          seed=_seed_for(config.model.seed, as_of, 4), global_bias=global_bias)
    training["examples"] = int(len(users))
    timings["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    progress("replay reservoir and drift reference")
    state.reservoir.add(training_data)
    reference_start = np.datetime64(as_of - dt.timedelta(days=config.drift.reference_days - 1), "s").astype(np.int64)
    recent = training_data.filter(pc.greater_equal(training_data["timestamp"], int(reference_start)))
    r_users, r_items, r_ratings = _interaction_arrays(recent, user_vocab, item_vocab)
    state.reference = {"user_counts": np.bincount(r_users, minlength=n_users).astype(np.int64),
                       "item_counts": np.bincount(r_items, minlength=n_items).astype(np.int64)}
    if recency:
        state.reference["item_log_recency"] = log_counts
        if arrival_sums is not None:
            state.reference["arrival_sums"] = arrival_sums
    if has_ratings:
        state.reference["rating_edges"] = _rating_edges(config, ratings)
        state.reference["rating_hist"] = drift_mod.rating_histogram(r_ratings, state.reference["rating_edges"],
                                                                    source=f"training data as of {as_of}")[0]
    timings["reservoir"] = time.perf_counter() - clock

    version = (current.version + 1) if current else 1
    all_consumed = sorted({*(d.isoformat() for d in consumed), *(d.isoformat() for d in dates)})
    manifest = {
        "version": version, "parent": current.version if current else None,
        "generation": (int(current.manifest["generation"]) + 1) if current else 1,
        "kind": "full_retrain", "reason": reason,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "as_of": as_of.isoformat(), "window_days": window_days,
        "partition": as_of.isoformat() if as_of in dates else max(dates).isoformat(),
        "partitions": all_consumed, "trained_on": [d.isoformat() for d in train_dates],
        "global_bias": global_bias, "objective": objective, "recency": recency,
        "rows": {"user": n_users, "item": n_items, "user_new": n_users - (len(current.user_vocab) if current else 0),
                 "item_new": n_items - (len(current.item_vocab) if current else 0),
                 "user_trainable_from": 0, "item_trainable_from": 0},
        "compaction": compacted,
        "frozen_checksum": {"user": sha256_of_array(state.user_vectors[:0]), "item": sha256_of_array(state.item_vectors[:0])},
        "metrics": {},
        "drift_state": {"recall_history": [], "streaks": {},
                        "last_full_retrain": {"version": version, "date": as_of.isoformat()},
                        "rows_at_retrain": {"user": n_users, "item": n_items},
                        "interactions_since_retrain": 0, "interactions_total": int(training_data.num_rows)},
        "ingest": reports, "quarantined_rows": int(sum(q.num_rows for q in quarantined)),
        "training": training, "config": config.to_dict(),
    }
    timings["total"] = sum(timings.values())
    manifest["timings"] = timings
    quarantine = pa.concat_tables(quarantined) if quarantined else None
    progress(f"publishing version {version} (generation {manifest['generation']})")
    store.publish(state, manifest, quarantine=quarantine, history=new_history)
    return StepResult("full_retrain", version, as_of, state.manifest,
                      f"full retrain as of {as_of}: version {version}, generation {manifest['generation']}")


def _is_same_retrain(manifest: dict[str, Any], config: AccreteConfig, as_of: dt.date, window_days: int | None) -> bool:
    """Whether `manifest` is a full retrain as of `as_of` with the same window and settings."""
    settings = json.loads(json.dumps(config.to_dict(), default=_json_default))
    return (manifest.get("kind") == "full_retrain" and manifest.get("as_of") == as_of.isoformat()
            and manifest.get("window_days") == window_days and manifest.get("config") == settings)


def _compact(store: Store, current: ModelState, active_since: dt.date):
    """Drop IDs with no interaction since `active_since` (and created before it); returns the new
    vocabularies, the remapped item tokens and a summary."""
    history = store.read_history(current.partitions)
    cutoff = int(np.datetime64(active_since, "s").astype(np.int64))
    recent = history.filter(pc.greater_equal(history["timestamp"], cutoff))
    summary = {}
    vocabs = []
    for vocab, column in ((current.user_vocab, "user_id"), (current.item_vocab, "item_id")):
        keep = np.zeros(len(vocab), bool)
        keep[vocab.lookup(recent[column])] = True
        keep |= vocab.created >= np.datetime64(active_since)
        keep[0] = True
        new_vocab, old_rows = vocab.compact(keep)
        vocabs.append((new_vocab, old_rows))
        summary[vocab.entity] = {"kept": int(keep.sum() - 1), "dropped": int(len(vocab) - keep.sum())}
    (user_vocab, _), (item_vocab, item_old_rows) = vocabs
    old_to_new = np.full(len(current.item_vocab), -1, np.int64)
    old_to_new[item_old_rows] = np.arange(len(item_old_rows))
    token_rows = old_to_new[current.item_tokens["row"].to_numpy()]
    keep_tokens = token_rows > 0
    tokens = pa.table({"row": pa.array(token_rows[keep_tokens]),
                       "token": pc.filter(current.item_tokens["token"], pa.array(keep_tokens))})
    return user_vocab, item_vocab, tokens, summary
