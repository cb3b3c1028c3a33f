"""One nightly incremental step: a partition through named stages, then published.

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

The full retrain that starts a generation is `pipeline.retrain`; what it fixes for the generation, `pipeline.generation`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from accrete.pipeline import (contract, decision as decision_mod, drift as drift_mod, evaluation, profiles as profiles_mod,
                              recency as recency_mod, scoring)
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import PartitionOrderError, StoreError
from accrete.pipeline.faults import maybe_fail
from accrete.pipeline.generation import generation_setting_changes, rating_scale, stored_rating_edges, user_policy
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.recency import add_interactions, add_vocabulary_arrivals, arrival_prior, item_times, seconds
from accrete.pipeline.sgd import fold_in_spec, positive_level, train_sgd
from accrete.pipeline.store import ModelState, Store, sha256_of_array
from accrete.pipeline.tables import (cold_strategy, grow, ids_of, incidence, init_new_rows, interaction_arrays,
                                     interaction_columns, seed_for, tokens_table,
                                     trainable_boundary)

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


def _ials_fold(config: AccreteConfig, state: ModelState, *, users: np.ndarray, items: np.ndarray,
               history_users: np.ndarray, history_items: np.ndarray, n_old_users: int, n_old_items: int,
               refold_active: bool) -> dict[str, Any]:
    """The nightly iALS step (`models.ials.fold`) on the state's tables: existing item rows are never written."""
    from accrete.models import ials

    clock = time.perf_counter()
    facts = ials.fold(state.user_vectors, state.item_vectors, users=users, items=items, history_users=history_users,
                      history_items=history_items, n_old_users=n_old_users, n_old_items=n_old_items,
                      alpha=config.model.ials_alpha, l2=config.model.ials_l2,
                      refold_active=refold_active)
    return {**facts, "seconds": time.perf_counter() - clock}


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
        partition = contract.read_partition(data_dir, date, freq, rating_range=rating_scale(config, state.reference))
        maybe_fail(f"nightly:{date.isoformat()}")
        timings["ingest"] = time.perf_counter() - started
        return incremental_step(Step(config, store, state, partition, applied, timings, progress))


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
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    incidence: sp.csr_matrix | None = None
    # add_cold_rows, read_generation_settings
    user_cold: str = "mean"
    item_cold: str = "mean"
    objective: str = "ials"
    scoring: str = "dot"
    profiles: profiles_mod.Profiles | None = None
    young: profiles_mod.YoungInteractions | None = None
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
        return seed_for(self.config.model.seed, self.date, salt)

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
    state.user_vocab.extend(ids_of(partition.users["user_id"], partition.interactions["user_id"]), step.date)
    state.item_vocab.extend(ids_of(partition.items["item_id"], partition.interactions["item_id"]), step.date)
    state.item_tokens = pa.concat_tables([state.item_tokens,
                                          tokens_table(partition.items, state.item_vocab, step.n_old_items)])
    step.incidence = incidence(state.item_tokens, step.n_items)
    step.users, step.items, step.ratings, kept = interaction_columns(partition.interactions, state.user_vocab,
                                                                      state.item_vocab)
    step.times = partition.interactions["timestamp"].to_numpy().astype(np.float64)[kept]


def add_cold_rows(step: Step) -> None:
    """Append a row per new user and item, initialized without the partition's interactions (metadata or the
    mean row), so that the prequential evaluation scores them cold; biases grow with their mean."""
    state, model = step.state, step.config.model
    n_old_users, n_old_items, n_users, n_items = step.n_old_users, step.n_old_items, step.n_users, step.n_items
    has_tokens = step.incidence is not None and step.incidence.shape[1] > 0
    step.user_cold = cold_strategy(model.init, has_tokens=False)
    step.item_cold = cold_strategy(model.init, has_tokens=has_tokens)
    new_users = init_new_rows(step.user_cold, state.user_vectors, n_old_users, n_users - n_old_users, step.seed(1))
    if scoring.kind_of(step.parent) == "cosine":
        new_users[:] = 0.0  # no profile yet: a new user's query is empty, the time-aware term ranks alone
    new_items = init_new_rows(step.item_cold, state.item_vectors, n_old_items, n_items - n_old_items, step.seed(2),
                               step.incidence)
    state.user_vectors = np.concatenate([state.user_vectors, new_users])
    state.item_vectors = np.concatenate([state.item_vectors, new_items])
    state.user_bias = grow(state.user_bias, n_users,
                            float(np.mean(state.user_bias[1:n_old_users])) if n_old_users > 1 else 0.0)
    state.item_bias = grow(state.item_bias, n_items,
                            float(np.mean(state.item_bias[1:n_old_items])) if n_old_items > 1 else 0.0)


def read_generation_settings(step: Step) -> None:
    """What the generation's full retrain fixed (objective, global mean, time-aware term), warnings for settings
    or ratings that no longer match it, and the time-aware term of the new items' arrival."""
    state, parent = step.state, step.parent
    step.objective = parent["objective"]
    step.global_bias = float(parent.get("global_bias", 0.0))
    step.warnings = generation_setting_changes(step.config, parent, state.user_vectors.shape[1])
    off_scale = step.partition.report["quarantined"].get(contract.RATING_OUTSIDE_SCALE, 0)
    scale = rating_scale(step.config, state.reference)
    if off_scale and scale is not None:
        low, high = scale
        step.warnings.append(
            f"{off_scale:,} rating(s) of partition {step.date} outside the scale [{low:g}, {high:g}] learned at the "
            f"last full retrain were quarantined; if the rating scale changed, run `accrete retrain` (it "
            f"learns the scale from the data), or set drift.rating_edges")
    for warning in step.warnings:
        step.progress(f"warning: {warning}")
    step.recency = parent.get("recency") if step.objective == "ials" else None
    step.scoring = scoring.kind_of(parent)
    if step.scoring == "cosine":
        step.profiles = profiles_mod.from_version(state.user_vectors, state.reference)
    if step.recency:
        step.arrival_sums = state.reference.get("arrival_sums")
        step.log_counts = add_vocabulary_arrivals(state.reference["item_log_recency"], state.item_vocab, step.n_old_items,
                                            step.recency, arrival_prior(step.recency, state.reference))
        state.item_bias = recency_mod.score_term(step.log_counts, step.recency["weight"])


def evaluate_before_training(step: Step) -> None:
    """Prequential evaluation: score the partition's interactions with the tables as they stand (new rows cold),
    seen items excluded, with the scoring every reader uses (`pipeline.scoring`). Slices: new users, new items,
    and the items of the last `eval.young_periods` periods ("young": what an initialization is judged by). Under the
    time-aware term, the term alone is scored too (a decayed-popularity control, "/control"): `lift@10`, the
    model's Recall@10 over the control's, is what a hard week does not move and an aging model does.

    Items that arrive in the partition only through its interactions (no `items/` row announced them) are not
    candidates: before the night nobody knew they existed, and ranking them would read the answer from the data.
    Only the scored users' history is read (their seen items)."""
    state, config = step.state, step.config
    test_users, test_items = _evaluation_sample(step)
    # The solved-user policies refold every active user from their history; profiles need only the scored ones'.
    refolds = step.objective == "ials" and step.scoring == "dot"
    step.history_users, step.history_items = step.store.consumed_pairs(state, np.unique(step.users if refolds else
                                                                                        test_users))
    seen = evaluation.seen_matrix(step.history_users, step.history_items, step.n_users, step.n_items)
    uses_bias = evaluation.uses_item_bias(step.objective, config.model.use_bias)
    term = state.item_bias if uses_bias else None
    scorer = scoring.of_tables(step.scoring, state.user_vectors, state.item_vectors, term).scores
    excluded = unannounced_arrivals(step)
    step.progress(f"evaluating on {len(step.users):,} interactions before training")

    def evaluate(score: evaluation.Scorer, **slices: np.ndarray) -> dict[str, float]:
        return evaluation.evaluate_prequential(score, test_users=test_users, test_items=test_items,
                                               n_items=step.n_items, seen=seen, ks=config.eval.ks,
                                               user_batch=config.eval.user_batch, excluded_items=excluded, **slices)

    young = young_item_rows(state.item_vocab, step.applied, step.n_old_items, config.eval.young_periods)
    step.metrics = evaluate(scorer, new_users=np.arange(step.n_old_users, step.n_users),
                            new_items=np.arange(step.n_old_items, step.n_items), young_items=young)
    if step.recency and term is not None:
        control = evaluate(evaluation.popularity_scorer(term), young_items=young)
        for key in ("recall@10", "ndcg@10", "recall@10/young_items"):
            step.metrics[f"{key}/control"] = control.get(key, float("nan"))
        model_recall, control_recall = step.metrics.get("recall@10", np.nan), control.get("recall@10", np.nan)
        step.metrics["lift@10"] = float(model_recall / control_recall) if control_recall > 0 else float("nan")


def _evaluation_sample(step: Step) -> tuple[np.ndarray, np.ndarray]:
    """The interactions the evaluation scores: those of at most `eval.max_users` of the night's users, drawn at
    random (seeded by the date), so that its cost is bounded however many users a night brings (a few thousand
    users measure Recall@10 to about +-0.01)."""
    limit = step.config.eval.max_users
    distinct = np.unique(step.users)
    if limit is None or len(distinct) <= limit:
        return step.users, step.items
    chosen = np.random.default_rng(step.seed(7)).choice(distinct, limit, replace=False)
    keep = np.isin(step.users, chosen)
    return step.users[keep], step.items[keep]


def unannounced_arrivals(step: Step) -> np.ndarray:
    """The item rows the partition adds that only its interactions name (not its `items/` file)."""
    new_rows = np.arange(step.n_old_items, step.n_items)
    if len(new_rows) == 0 or step.partition.items.num_rows == 0:
        return new_rows
    announced = step.state.item_vocab.lookup(step.partition.items["item_id"].cast(pa.string()))
    return new_rows[~np.isin(new_rows, announced)]


def young_item_rows(vocab, applied: list[dt.date], first_new_row: int, periods: int) -> np.ndarray:
    """The item rows created in the last `periods` applied partitions (before tonight's rows)."""
    if periods <= 0 or not applied:
        return np.zeros(0, np.int64)
    since = sorted(applied)[-periods:][0]
    created = vocab.created[:first_new_row]
    rows = np.flatnonzero(~np.isnat(created) & (created >= np.datetime64(since, "D")))
    return rows[rows > 0]


def sample_replay(step: Step) -> None:
    """Old interactions replayed with the partition's (SGD objectives only: iALS solves rows from the partition
    and the history), drawn from the reservoir."""
    n_replay = 0 if step.objective == "ials" else int(round(step.config.train.replay_ratio * len(step.users)))
    replay = step.state.reservoir.sample(n_replay, seed=step.seed(3)) if n_replay else None
    if replay is not None and replay.num_rows:
        step.replay_users, step.replay_items, step.replay_ratings = interaction_arrays(
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
        level = positive_level(step.replay_users, step.replay_items, state.user_vectors, state.item_vectors)
        item_targets = user_targets = np.full(len(users), level, np.float32)
    else:
        item_targets = ratings - step.global_bias - state.user_bias[users]
        user_targets = ratings - step.global_bias - state.item_bias[items]
    n_new_users, n_new_items = step.n_users - n_old_users, step.n_items - n_old_items
    item_spec = fold_in_spec(state.user_vectors, items, users, item_targets, n_old_items, n_old_users,
                              n_new_items, model.fold_in_l2)
    user_spec = fold_in_spec(state.item_vectors, users, items, user_targets, n_old_users, n_old_items,
                              n_new_users, model.fold_in_l2)
    state.item_vectors[n_old_items:] = init_new_rows(
        "fold_in" if item_spec else step.item_cold, state.item_vectors, n_old_items, n_new_items,
        step.seed(2), step.incidence, item_spec)
    state.user_vectors[n_old_users:] = init_new_rows(
        "fold_in" if user_spec else step.user_cold, state.user_vectors, n_old_users, n_new_users,
        step.seed(1), None, user_spec)


def train_new_rows(step: Step) -> None:
    """Solve (iALS) or train (SGD, with replay) the trainable rows, update the time-aware term, and check by
    checksum that the frozen blocks did not move."""
    state, config, model = step.state, step.config, step.config.model
    users, items = step.users, step.items
    step.user_from = trainable_boundary(state.user_vocab, step.date, step.applied, model.warmup_days)
    step.item_from = trainable_boundary(state.item_vocab, step.date, step.applied, model.warmup_days)
    if step.scoring == "cosine":  # young items re-solve from all their interactions for their first periods
        step.item_from = trainable_boundary(state.item_vocab, step.date, step.applied, model.young_item_periods - 1)
    # Under iALS with profiles or refold_active, active existing users move by design (measured:
    # user_cosine_shift): users are the query side.
    policy = user_policy(config, step.parent)
    users_move = step.objective == "ials" and policy in ("profile", "refold_active")

    def frozen_blocks() -> dict[str, str]:
        blocks = {"item": sha256_of_array(state.item_vectors[:step.item_from])}
        if not users_move:
            blocks["user"] = sha256_of_array(state.user_vectors[:step.user_from])
        return blocks

    frozen_before = frozen_blocks()
    train_users = np.concatenate([users, step.replay_users])
    step.training = {"examples_new": int(len(users)), "examples_replayed": int(len(step.replay_users))}
    if step.objective == "ials" and step.scoring == "cosine":
        step.progress(f"solving {step.n_items - step.n_old_items:,} new items against the profiles; "
                      f"{len(np.unique(users)):,} profiles from {len(users):,} interactions")
        step.training.update(_profile_step(step))
        if step.recency and step.log_counts is not None:
            _add_partition_to_recency(step)
    elif step.objective == "ials":
        step.progress(f"iALS: solving new rows and active users from {len(users):,} interactions")
        step.training.update(_ials_fold(config, state, users=users, items=items, history_users=step.history_users,
                                        history_items=step.history_items, n_old_users=step.n_old_users,
                                        n_old_items=step.n_old_items, refold_active=policy == "refold_active"))
        if step.recency and step.log_counts is not None:
            _add_partition_to_recency(step)
    elif config.train.epochs > 0 and len(train_users):
        step.progress(f"training on {len(users):,} new + {len(step.replay_users):,} replayed interactions")
        step.training.update(train_sgd(
            config, state, step.objective, user_trainable_from=step.user_from, item_trainable_from=step.item_from,
            users=train_users, items=np.concatenate([items, step.replay_items]),
            ratings=np.concatenate([step.ratings, step.replay_ratings]), epochs=config.train.epochs,
            seed=step.seed(4), global_bias=step.global_bias))
    step.frozen_checksum = frozen_blocks()
    if model.frozen_lr_multiplier == 0.0 and step.frozen_checksum != frozen_before:
        raise RuntimeError("frozen rows changed during training: this is a bug in the frozen-tail embedding")


def _profile_step(step: Step) -> dict[str, Any]:
    """The profile recipe's night: the young item rows (created in the last `model.young_item_periods` periods,
    tonight's included) solved in closed form against the users' queries from every interaction they have had
    (kept with the version: they are few), older item rows never written; then the night's interactions added to
    its users' profiles (new users get theirs). Costs the night's and the young items' interactions, not the
    tables or the history."""
    state, model = step.state, step.config.model
    assert step.profiles is not None and step.recency is not None
    clock = time.perf_counter()
    young = profiles_mod.YoungInteractions.from_reference(state.reference).since(step.item_from).plus(
        step.users, step.items, step.item_from)
    before = step.profiles.grown(step.n_users)
    state.item_vectors = profiles_mod.solve_items(state.item_vectors, before, young.users, young.items, step.item_from,
                                                  alpha=model.ials_alpha, l2=model.ials_l2)
    step.young = young
    step.profiles, touched = profiles_mod.add_interactions(
        before, step.users, step.items, step.times, state.item_vectors,
        anchor_s=seconds(dt.date.fromisoformat(step.recency["anchor"])),
        half_life_days=float(step.recency["profile_half_life_days"]))
    state.user_vectors = step.profiles.queries
    existing = touched[(touched < step.n_old_users) & np.isfinite(before.log_norms[touched])]
    cosine = np.einsum("ij,ij->i", before.queries[existing].astype(np.float64),
                       step.profiles.queries[existing].astype(np.float64))
    return {"users_profiled": int(len(touched)), "users_new_profiles": int(len(touched) - len(existing)),
            "items_folded_in": int(len(np.unique(step.items[step.items >= step.n_old_items]))),
            "young_items_solved": int(len(np.unique(young.items))),
            "user_cosine_shift": float(np.mean(1.0 - cosine)) if len(cosine) else float("nan"),
            "seconds": time.perf_counter() - clock}


def _add_partition_to_recency(step: Step) -> None:
    """The partition's interactions into each item's time-decayed count (the item bias), and the new items'
    first-period sums into the learned arrival prior."""
    recency, state = step.recency, step.state
    assert recency is not None and step.log_counts is not None
    item_rows, item_stamps = item_times(step.partition.interactions, state.item_vocab)
    step.log_counts = add_interactions(step.log_counts, item_rows, item_stamps, recency)
    state.item_bias = recency_mod.score_term(step.log_counts, recency["weight"])
    n_new_items = step.n_items - step.n_old_items
    if recency.get("prior_learned") and n_new_items:
        cohort = recency_mod.cohort_sums(
            np.full(n_new_items, seconds(step.date)),
            np.bincount(item_rows, minlength=step.n_items)[step.n_old_items:],
            anchor_s=seconds(dt.date.fromisoformat(recency["anchor"])), half_life_days=recency["half_life_days"])
        step.arrival_sums = cohort if step.arrival_sums is None else step.arrival_sums + cohort


def measure_drift(step: Step) -> None:
    """The partition into the replay reservoir and the drift reference; the drift metrics against the reference
    before it, and the retrain decision; the drift state the next step carries on from."""
    state, config, partition = step.state, step.config, step.partition
    users, items, n_users, n_items = step.users, step.items, step.n_users, step.n_items
    parent_state = step.parent.get("drift_state", {})
    state.reservoir.add(partition.interactions)
    ref = state.reference
    reference_users = grow(ref["user_counts"], n_users)
    reference_items = grow(ref["item_counts"], n_items)
    reference_ratings = ref.get("rating_hist")
    rating_edges = stored_rating_edges(config, ref)
    measured = step.metrics.get("users", 0) >= config.drift.min_evaluated_users
    recall_history = [*parent_state.get("recall_history", []),
                      float(step.metrics.get("recall@10", np.nan)) if measured else float("nan")]
    lift_history = [*parent_state.get("lift_history", []),
                    float(step.metrics.get("lift@10", np.nan)) if measured else float("nan")]
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
        item_vectors=state.item_vectors, item_added_since_retrain=item_added, rating_edges=rating_edges,
        lift_history=lift_history, periods_since_retrain=len(recall_history))
    step.drift_metrics = drift_mod.compute_drift_metrics(drift_inputs, config.drift)
    step.verdict = decision_mod.decide(step.drift_metrics, previous_streaks=parent_state.get("streaks", {}),
                                       days_since_full_retrain=(step.date - retrain_date).days, config=config.drift,
                                       periods_since_full_retrain=len(recall_history))
    step.drift_state = {
        "recall_history": recall_history, "lift_history": lift_history, "streaks": step.verdict.streaks,
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
    if step.profiles is not None:
        state.reference.update(profiles_mod.to_reference(step.profiles.grown(n_users)))
    if step.young is not None:
        state.reference.update(step.young.to_reference())
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
        "global_bias": step.global_bias, "objective": step.objective, "scoring": step.scoring, "recency": step.recency,
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
