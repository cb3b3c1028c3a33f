"""What a full retrain fixes for its generation, and what the nightly steps of that generation read back: the
objective, the time-aware term's settings, the rating scale; and the warnings when the configuration asks for
something a nightly step cannot apply."""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from accrete.pipeline import drift as drift_mod
from accrete.pipeline.config import AccreteConfig


def resolve_objective(configured: str, has_ratings: bool) -> str:
    """The objective to train: "auto" means rating on explicit ratings, retrieval on implicit feedback."""
    if configured != "auto":
        return configured
    return "rating" if has_ratings else "retrieval"


def rating_edges(config: AccreteConfig, ratings: np.ndarray) -> np.ndarray:
    """A generation's rating histogram edges: the configuration's, else learned from its training ratings."""
    edges = config.drift.rating_edges
    return drift_mod.rating_edges_for(ratings) if edges is None else np.asarray(edges, np.float64)


def stored_rating_edges(config: AccreteConfig, reference: dict[str, np.ndarray]) -> np.ndarray | None:
    """The edges a nightly step uses: its generation's, learned (or taken from the configuration) at its full
    retrain. Stores written before they were kept: the configuration's, else None (the half-star default)."""
    if "rating_edges" in reference:
        return reference["rating_edges"]
    edges = config.drift.rating_edges
    return None if edges is None else np.asarray(edges, np.float64)


def rating_scale(config: AccreteConfig, reference: dict[str, np.ndarray] | None) -> tuple[float, float] | None:
    """The ratings a partition may hold (a row outside is quarantined on reading). A nightly step (`reference`
    given): the range of the edges its drift histogram uses (`stored_rating_edges`), so every kept rating falls
    in a bin. A full retrain (`reference` None): the configured edges' range, else None: it learns the scale."""
    if reference is None:
        edges: Any = config.drift.rating_edges
    else:
        edges = stored_rating_edges(config, reference)
        edges = drift_mod.DEFAULT_RATING_EDGES if edges is None else edges
    return None if edges is None else (float(edges[0]), float(edges[-1]))


def recency_settings(config: AccreteConfig, anchor: dt.date) -> dict[str, Any]:
    """The time-aware term's settings, fixed for a generation by its full retrain (kept in its manifest)."""
    model = config.model
    settings: dict[str, Any] = {
        "anchor": anchor.isoformat(), "half_life_days": float(model.recency_half_life_days),
        "weight": model.weight, "prior": float(model.recency_prior), "prior_learned": bool(model.recency_prior_learned)}
    if model.user_policy == "profile":
        settings["profile_half_life_days"] = float(model.profile_half_life_days)
    return settings


def scoring_kind(config: AccreteConfig, objective: str) -> str:
    """The scoring kind (`pipeline.scoring`) a retrain with this configuration gives its generation."""
    return "cosine" if objective == "ials" and config.model.user_policy == "profile" else "dot"


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
    if objective == "ials":
        stored_kind = manifest.get("scoring") or "dot"
        if scoring_kind(config, objective) != stored_kind:
            notes.append(f"model.user_policy = {config.model.user_policy!r} in the configuration, but this generation "
                         f"scores {'user profiles' if stored_kind == 'cosine' else 'solved user vectors'}")
    stored = manifest.get("recency") if objective == "ials" else None
    if stored:
        configured = recency_settings(config, dt.date.fromisoformat(stored["anchor"]))
        tuned = (stored.get("tuning") or {}).get("chosen") is not None  # chosen by the retrain, not configured
        for key in ("prior", "prior_learned") if tuned else ("half_life_days", "weight", "prior", "prior_learned"):
            if key == "weight" and config.model.recency_weight is None:
                continue  # not set: the default follows the generation's user policy
            if key in configured and configured[key] != stored.get(key, False):
                notes.append(f"model.recency_{key} = {_setting(configured[key])} in the configuration, but this "
                             f"generation uses {_setting(stored.get(key, False))}")
    return [f"{note}: nightly steps keep the store's value until the next full retrain (`accrete retrain`)"
            for note in notes]


def _setting(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def user_policy(config: AccreteConfig, manifest: dict[str, Any]) -> str:
    """The user policy a nightly step of this generation follows: "profile" in a generation that scores profiles;
    in one that scores solved user vectors (written before profiles, or by a retrain told to), the configured
    solved-user policy, else the one its last version recorded, else "refold_active" (the earlier default)."""
    if manifest.get("scoring") == "cosine":
        return "profile"
    for policy in (config.model.user_policy, ((manifest.get("config") or {}).get("model") or {}).get("user_policy")):
        if policy in ("refold_active", "frozen"):
            return str(policy)
    return "refold_active"
