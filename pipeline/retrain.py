"""The full retrain: every row trained from scratch on the partitions up to an as-of date, as a new generation.

It resets what the nightly steps carry (drift reference, quality baseline), chooses the time-aware term from its
own data (`pipeline.tuning`), and may compact the vocabularies (IDs inactive for a long time are dropped). On an
empty store it makes the first version.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from accrete.pipeline import contract, drift as drift_mod, profiles, recency as recency_mod, tuning
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import PartitionOrderError
from accrete.pipeline.generation import rating_edges, rating_scale, recency_settings, resolve_objective, scoring_kind
from accrete.pipeline.incremental import Progress, StepResult, _noop
from accrete.pipeline.recency import add_interactions, add_vocabulary_arrivals, first_period_sums, item_times, seconds
from accrete.pipeline.reservoir import ReplayReservoir
from accrete.pipeline.sgd import train_sgd
from accrete.pipeline.store import ModelState, Store, _json_default, sha256_of_array
from accrete.pipeline.tables import (empty_tokens, ids_of, interaction_arrays, interaction_columns, interaction_weights,
                                     seed_for, tokens_table)
from accrete.pipeline.vocabulary import Vocabulary


def _choose_recency(config: AccreteConfig, training_data: pa.Table, user_vocab: Vocabulary, item_vocab: Vocabulary,
                    train_dates: list[dt.date], prior: float, *, seed: int) -> tuning.RecencyChoice | tuning.ProfileChoice:
    """`pipeline.tuning.choose_recency` on a full retrain's training data."""
    users = user_vocab.lookup(training_data["user_id"])
    items = item_vocab.lookup(training_data["item_id"])
    times = training_data["timestamp"].to_numpy().astype(np.float64)
    keep = (users > 0) & (items > 0)
    first = seconds(min(train_dates))

    def created(vocab: Vocabulary) -> np.ndarray:
        days = vocab.created
        return np.where(np.isnat(days), -np.inf, seconds(np.where(np.isnat(days), np.datetime64(0, "D"), days)))

    model = config.model
    period_starts = seconds(np.array(sorted(train_dates), "datetime64[D]"))
    if len(period_starts) == 1 and keep.any():  # one backlog partition: replay it in quarters of its time span
        low, high = float(times[keep].min()), float(times[keep].max())
        period_starts = np.array([period_starts[0], *(low + (high - low) * np.array([0.25, 0.5, 0.75]))])
    user_created = np.maximum(created(user_vocab), first - 1)
    item_created = np.maximum(created(item_vocab), first - 1)
    half_lives = model.recency_half_life_candidates or (model.recency_half_life_days,)
    if model.user_policy == "profile":
        return tuning.choose_profile_recipe(
            users[keep], items[keep], times[keep], period_starts=period_starts, user_created=user_created,
            item_created=item_created, weights=model.weight_candidates, half_lives=half_lives,
            profile_half_lives=model.profile_half_life_candidates or (model.profile_half_life_days,),
            min_users=model.recency_tune_min_users, prior=prior, dim=model.dim, alpha=model.ials_alpha,
            l2=model.ials_l2, iterations=model.ials_iterations, seed=seed)
    return tuning.choose_recency(
        users[keep], items[keep], times[keep], period_starts=period_starts, user_created=user_created,
        item_created=item_created, weights=model.weight_candidates, half_lives=half_lives,
        min_users=model.recency_tune_min_users, prior=prior, dim=model.dim, alpha=model.ials_alpha, l2=model.ials_l2,
        iterations=model.ials_iterations, seed=seed, refold_active=model.user_policy == "refold_active")


def confidence_weights(config: AccreteConfig, interactions: pa.Table, kept: np.ndarray) -> np.ndarray | None:
    """The interaction weights the full fit's confidence reads (`model.confidence = "log_weight"`), or None (binary)."""
    if config.model.confidence != "log_weight" or "weight" not in interactions.column_names:
        return None
    return interaction_weights(interactions)[kept]


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
    item_tokens = current.item_tokens if current else empty_tokens()
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
        partition = contract.read_partition(data_dir, date, freq, rating_range=rating_scale(config, None))
        reports[date.isoformat()] = partition.report
        if date not in consumed:
            first_new_item = len(item_vocab)
            user_vocab.extend(ids_of(partition.users["user_id"], partition.interactions["user_id"]), date)
            item_vocab.extend(ids_of(partition.items["item_id"], partition.interactions["item_id"]), date)
            item_tokens = pa.concat_tables([item_tokens, tokens_table(partition.items, item_vocab, first_new_item)])
            new_history[date] = partition.interactions
            if partition.quarantine.num_rows:
                quarantined.append(partition.quarantine)
        if date in train_dates:
            has_ratings |= partition.has_ratings
            interactions.append(partition.interactions.select(["user_id", "item_id", "timestamp", "rating", "weight"]))
    timings["ingest"] = time.perf_counter() - clock

    clock = time.perf_counter()
    training_data = pa.concat_tables(interactions) if interactions else None
    if training_data is None or training_data.num_rows == 0:
        raise PartitionOrderError(f"{data_dir}: no interactions to train on up to {as_of}")
    progress(f"vocabulary: {training_data.num_rows:,} interactions to rows of {len(user_vocab) - 1:,} users, "
             f"{len(item_vocab) - 1:,} items")
    users, items, ratings, keep_rows = interaction_columns(training_data, user_vocab, item_vocab)
    n_users, n_items = len(user_vocab), len(item_vocab)
    rng = np.random.default_rng(seed_for(config.model.seed, as_of, 5))
    dim = config.model.dim
    objective = resolve_objective(config.model.objective, has_ratings)
    global_bias = float(ratings.mean()) if objective == "rating" else 0.0
    kind = scoring_kind(config, objective)
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
            ials.interaction_matrix(users, items, (n_users, n_items), confidence_weights(config, training_data, keep_rows)),
            dim=dim, alpha=config.model.ials_alpha,
            l2=config.model.ials_l2, iterations=config.model.ials_iterations,
            seed=seed_for(config.model.seed, as_of, 4) % (2**31),
            on_iteration=lambda i, seconds: progress(f"iALS iteration {i}/{config.model.ials_iterations} ({seconds:.1f} s)"))
        recency = recency_settings(config, as_of)
        item_rows, item_stamps = item_times(training_data, item_vocab)
        if config.model.weight_candidates:
            progress("choosing the recency weight and half-lives on the most recent periods")
            guess = (recency_mod.learned_prior(first_period_sums(item_vocab, item_rows, item_stamps, recency, freq,
                                                                  min(train_dates)), recency["prior"])
                     if recency["prior_learned"] else recency["prior"])
            choice = _choose_recency(config, training_data, user_vocab, item_vocab, train_dates, guess,
                                     seed=seed_for(config.model.seed, as_of, 6) % (2**31))
            if choice.weight is not None:
                recency.update(weight=choice.weight, half_life_days=choice.half_life_days)
                if isinstance(choice, tuning.ProfileChoice):
                    recency["profile_half_life_days"] = choice.profile_half_life_days
            recency["tuning"] = choice.to_record()
        arrival_sums = (first_period_sums(item_vocab, item_rows, item_stamps, recency, freq, min(train_dates))
                        if recency["prior_learned"] else None)
        prior = recency_mod.learned_prior(arrival_sums, recency["prior"]) if recency["prior_learned"] else recency["prior"]
        log_counts = add_interactions(add_vocabulary_arrivals(np.zeros(0), item_vocab, 0, recency, prior), item_rows, item_stamps,
                                  recency)
        state.item_bias = recency_mod.score_term(log_counts, recency["weight"])
        if kind == "cosine":
            progress(f"user profiles (half-life {recency['profile_half_life_days']:g} days)")
            profile = profiles.build(n_users, users, items, training_data["timestamp"].to_numpy()[keep_rows].astype(
                np.float64), state.item_vectors, anchor_s=seconds(as_of),
                half_life_days=recency["profile_half_life_days"])
            state.user_vectors = profile.queries
        training = {"seconds": time.perf_counter() - started, "iterations": config.model.ials_iterations}
    else:
        training = train_sgd(config, state, objective, user_trainable_from=0, item_trainable_from=0, users=users,
                          items=items, ratings=ratings, epochs=config.train.retrain_epochs,
                          seed=seed_for(config.model.seed, as_of, 4), global_bias=global_bias)
    training["examples"] = int(len(users))
    timings["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    progress("replay reservoir and drift reference")
    state.reservoir.add(training_data)
    reference_start = np.datetime64(as_of - dt.timedelta(days=config.drift.reference_days - 1), "s").astype(np.int64)
    recent = training_data.filter(pc.greater_equal(training_data["timestamp"], int(reference_start)))
    r_users, r_items, r_ratings = interaction_arrays(recent, user_vocab, item_vocab)
    state.reference = {"user_counts": np.bincount(r_users, minlength=n_users).astype(np.int64),
                       "item_counts": np.bincount(r_items, minlength=n_items).astype(np.int64)}
    if kind == "cosine":
        state.reference.update(profiles.to_reference(profile))
    if recency:
        state.reference["item_log_recency"] = log_counts
        if arrival_sums is not None:
            state.reference["arrival_sums"] = arrival_sums
    if has_ratings:
        state.reference["rating_edges"] = rating_edges(config, ratings)
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
        "global_bias": global_bias, "objective": objective, "scoring": kind, "recency": recency,
        "rows": {"user": n_users, "item": n_items, "user_new": n_users - (len(current.user_vocab) if current else 0),
                 "item_new": n_items - (len(current.item_vocab) if current else 0),
                 "user_trainable_from": 0, "item_trainable_from": 0},
        "compaction": compacted,
        "frozen_checksum": {"user": sha256_of_array(state.user_vectors[:0]), "item": sha256_of_array(state.item_vectors[:0])},
        "metrics": {},
        "drift_state": {"recall_history": [], "lift_history": [], "streaks": {},
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
