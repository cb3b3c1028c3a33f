"""Accrete's one typed configuration, loaded from one TOML file; every default works out of the box.

A file holds any subset of the sections below, e.g.::

    [model]
    dim = 32
    init = "fold_in"

    [train]
    epochs = 3

Unknown sections or keys are an error naming them, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accrete.models import BIAS_POLICIES, INIT_STRATEGIES, SGD_OBJECTIVES
from accrete.pipeline.errors import ConfigError

OBJECTIVES = ("ials", "auto", *SGD_OBJECTIVES)
USER_POLICIES = ("profile", "refold_active", "frozen")
#: The periods a partition may span (`[data] freq`; the data contract's `PERIOD_FREQS`).
FREQUENCIES = ("day", "week", "month")


@dataclass(frozen=True)
class DataConfig:
    # Length of one partition's period; a data directory's `_accrete.json` (written by `generate` and
    # `convert`) overrides it.
    freq: str = "day"


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 32
    # "ials" (default, for ranking what users do next): implicit-feedback ALS, every interaction a
    # positive, solved in closed form, plus the time-decayed popularity term below; no SGD. "rating":
    # squared error on ratings, for predicted ratings. "retrieval": in-batch softmax. "auto": rating when
    # the data carries ratings, else retrieval. Fixed per generation by its full retrain.
    objective: str = "ials"
    # iALS: confidence of an observed pair, ridge penalty, sweeps of the full fit (see docs/quality.md).
    ials_alpha: float = 10.0
    ials_l2: float = 10.0
    ials_iterations: int = 15
    # iALS full fit: "binary" (a pair is observed or not) or "log_weight" (confidence 1 + log of the pair's total
    # weight: quantities, repeats; data without a weight column is binary either way).
    confidence: str = "binary"
    # iALS: the query side. "profile" (default): a user's query is the recency-weighted direction of the unit
    # vectors of the items they interacted with (pipeline/profiles.py), scored by cosine plus the time-aware
    # term; no user is solved, and a night touches only its own users' rows (docs/quality.md: measured best on
    # both real datasets). "refold_active": users are iALS vectors, active ones re-solved against the frozen
    # item table from their history. "frozen": only new users are solved. Fixed per generation.
    user_policy: str = "profile"
    # "profile": the profile's half-life (days), chosen at each full retrain among the candidates.
    profile_half_life_days: float = 30.0
    profile_half_life_candidates: tuple[float, ...] = (14.0, 60.0, 3650.0)
    # "profile": an item's vector is solved from its interactions during its first this many periods (its arrival
    # included), then frozen. 1 (default) keeps the product's promise: a published item row never moves until the
    # next full retrain, so an ANN index takes inserts only. More periods re-solve young items as evidence arrives
    # (a purchase log, exploration harness: Recall@10 1.20x popularity with 1, 1.29-1.30x with 2-8) at the cost of
    # re-inserting those rows downstream (a delta marks them vector_changed).
    young_item_periods: int = 1
    # iALS score term `recency_weight * log(time-decayed interaction count)` per item (pipeline/recency.py),
    # recomputed every night with vectors frozen. Half-life tuned on MovieLens 2016 (docs/quality.md);
    # a new item starts with `recency_prior` pseudo-interactions on its arrival day, or, when
    # `recency_prior_learned`, with the time-decayed mean count of earlier arrivals in their first period
    # (`recency_prior` until an item has arrived). Weight 0 turns the term off.
    recency_half_life_days: float = 120.0
    # None: the user policy's own scale (the profile's cosine lies in [-1, 1], an iALS score does not):
    # 0.2 under "profile", 5 otherwise.
    recency_weight: float | None = None
    recency_prior: float = 1.0
    recency_prior_learned: bool = True
    # Each full retrain picks `recency_weight` and `recency_half_life_days` from these candidates by replaying
    # its own most recent periods (pipeline/tuning.py; at least `recency_tune_min_users` evaluated users);
    # empty weights: always the configured two, which are also the fallback when the data is too short to tune on.
    # None: the user policy's own grid (`weight_candidates`). Half-lives from half a week to a year: tuned
    # decayed popularity picks 3.5 days on weekly purchase logs and 60-120 days on MovieLens.
    recency_weight_candidates: tuple[float, ...] | None = None
    recency_half_life_candidates: tuple[float, ...] = (3.5, 7.0, 14.0, 30.0, 60.0, 120.0, 365.0)
    recency_tune_min_users: int = 200
    use_bias: bool = True

    @property
    def weight(self) -> float:
        """The time-aware term's weight when a retrain cannot tune it."""
        if self.recency_weight is not None:
            return float(self.recency_weight)
        return 0.2 if self.user_policy == "profile" else 5.0

    @property
    def weight_candidates(self) -> tuple[float, ...]:
        """The weights a retrain compares (empty: none, the configured weight applies)."""
        if self.recency_weight_candidates is not None:
            return self.recency_weight_candidates
        if self.user_policy == "profile":
            return (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
        return (0.0, 0.5, 1.0, 2.0, 5.0)
    # "frozen": biases freeze with their rows (measured best on MovieLens, and a delta export then holds
    # only the new rows). "trainable": every row's bias trains, so old items can follow popularity shifts
    # while their vectors stay frozen.
    bias_policy: str = "frozen"
    # New rows start from "fold_in" (ridge regression against the frozen opposite table; synthetic world
    # Recall@10 0.22 against 0.13 for "mean"), "metadata", "mean", "normal" or "uniform".
    init: str = "fold_in"
    # Rows created in the last `warmup_days` periods stay trainable; 0 trains only today's new rows.
    warmup_days: int = 0
    # 0.0 freezes old rows exactly; a small positive value fine-tunes them instead (they then carry
    # optimizer state and are no longer bit-identical).
    frozen_lr_multiplier: float = 0.0
    # L2 penalty on the rows looked up in a batch (never on the whole table).
    l2: float = 1e-5
    # Ridge strength of the closed-form fold-in initialization.
    fold_in_l2: float = 1.0
    # logQ correction of in-batch softmax by item frequency (retrieval objective only).
    sampling_bias_correction: bool = False
    # Softmax temperature of the retrieval task.
    temperature: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    learning_rate: float = 0.1
    batch_size: int = 1024
    optimizer: str = "adagrad"
    # Replayed old interactions per new interaction in an incremental step.
    replay_ratio: float = 1.0
    reservoir_capacity: int = 200_000
    # Epochs of a full retrain (from scratch, every row trainable).
    retrain_epochs: int = 10


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 50)
    # Users scored per batched matrix product.
    user_batch: int = 2048
    # The "young items" slice: items created in the last this many applied periods, scored in the next.
    young_periods: int = 2
    # A nightly step scores at most this many of the night's users (drawn at random, seeded by the date), so that
    # its evaluation costs the same on a busy night; None scores every user.
    max_users: int | None = 1000


@dataclass(frozen=True)
class RetrainConfig:
    # Train a full retrain on this many most recent days only (None: all history).
    window_days: int | None = None
    # Drop IDs inactive for this many days when a full retrain compacts the vocabulary (None: keep all).
    compact_inactive_days: int | None = None


@dataclass(frozen=True)
class DriftConfig:
    # Thresholds per metric; a metric past its threshold for `patience` consecutive steps triggers a
    # full retrain. None disables a metric's trigger (it is still computed and recorded).
    psi_item_popularity: float | None = 0.25
    # Off by default: users rate in bursts and leave, so user-activity PSI exceeds 0.25 in every quarter of
    # MovieLens (minimum 0.94); it is computed and plotted, but would retrain every cooldown.
    psi_user_activity: float | None = None
    rating_js_divergence: float | None = 0.1
    new_user_share: float | None = None
    new_item_share: float | None = None
    # Retrain when smoothed Recall@10 falls below this fraction of its level after the last retrain: a
    # collapse detector. On a stationary synthetic world, growth alone (ever more users whose rows trained
    # on their first day only) takes the ratio to 0.47 within 42 days (docs/drift.md); a shift, below 0.3.
    quality_ratio_min: float | None = 0.35
    # Retrain when the smoothed lift of Recall@10 over the decayed-popularity control (scored on the same users in
    # the same evaluation: a hard week lowers both) falls below this fraction of its level after the last retrain:
    # the aging detector (docs/drift.md: chosen on both real datasets).
    lift_ratio_min: float | None = 0.8
    quality_smoothing_steps: int = 3
    stale_row_share: float | None = None
    stale_interaction_share: float | None = None
    new_row_norm_ratio: float | None = None
    patience: int = 2
    cooldown_days: int = 7
    max_days_since_full_retrain: int = 90
    # The age cap in the data's periods (steps since the last retrain); None: only the cap in days.
    max_periods_since_full_retrain: int | None = None
    # The drift reference after a full retrain: its training data from the last `reference_days` days up
    # to the as-of date (with 1, the as-of period alone); every incremental partition since is added.
    # Short on purpose: after a shift-triggered retrain, a long reference still holds the old regime and
    # keeps PSI past its threshold, which forced a second, useless retrain once the cooldown ended.
    reference_days: int = 1
    # Below this many interactions a partition's PSI and rating divergence are NaN: their sampling noise
    # alone (about 9/n for PSI) would cross the thresholds.
    min_partition_interactions: int = 200
    # Below this many evaluated users a step's Recall@10 is left out of the quality ratio (NaN): on
    # MovieLens weekly (about 5 users a week) it swings between 0 and 10 times its baseline.
    min_evaluated_users: int = 50
    # Rating histogram bin edges for the Jensen-Shannon divergence (None: half stars over 0.25..5.25).
    rating_edges: tuple[float, ...] | None = None
    psi_bins: int = 10
    psi_floor: float = 1e-4


def _is_number(value: Any, kind: str) -> bool:
    # A TOML integer is a fine float (`epochs = 1.0` is not a fine int); `true` is neither, although
    # Python's bool is an int.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == "int" else isinstance(value, (int, float))


def _check_type(source: str, section: str, key: str, value: Any, annotation: str) -> None:
    """A setting's value has its field's type (the annotation's text: `int`, `float | None`,
    `tuple[float, ...]`...), so a quoted number (`dim = "32"`) is one line naming the key, not a TypeError
    deep inside a run."""
    kind, _, optional = annotation.partition(" | ")
    if value is None and optional == "None":
        return
    if kind.startswith("tuple["):
        element = kind[len("tuple["):].split(",")[0]
        ok = isinstance(value, (list, tuple)) and all(_is_number(item, element) for item in value)
        expected = f"a list of {'integers' if element == 'int' else 'numbers'}"
    elif kind in ("int", "float"):
        ok = _is_number(value, kind)
        expected = "an integer" if kind == "int" else "a number"
    elif kind == "bool":
        ok, expected = isinstance(value, bool), "true or false"
    elif kind == "str":
        ok, expected = isinstance(value, str), "a string"
    else:  # a type this check does not know: the section's own validation applies
        return
    if not ok:
        raise ConfigError(f"{source}: [{section}] {key} must be {expected}, not {value!r}")


@dataclass(frozen=True)
class AccreteConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)

    @classmethod
    def load(cls, path: str | Path | None) -> AccreteConfig:
        """The configuration in a TOML file, over the defaults; the defaults alone when `path` is None."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "configuration") -> AccreteConfig:
        sections = {f.name: f for f in dataclasses.fields(cls)}
        built = {}
        for name, values in raw.items():
            if name not in sections:
                raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(sections)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{name}] must be a table of settings, not {values!r}")
            section_cls: Any = sections[name].default_factory  # every section is a dataclass with a default
            known = {f.name for f in dataclasses.fields(section_cls)}
            unknown = set(values) - known
            if unknown:
                raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)} in [{name}]")
            types = {f.name: str(f.type) for f in dataclasses.fields(section_cls)}
            for key, value in values.items():
                _check_type(source, name, key, value, types[key])
            for key in ("ks", "rating_edges", "recency_weight_candidates", "recency_half_life_candidates",
                        "profile_half_life_candidates"):
                if values.get(key) is not None:
                    values = {**values, key: tuple(values[key])}
            built[name] = section_cls(**values)
        config = cls(**built)
        config.validate(source)
        return config

    def replace(self, **sections: dict[str, Any]) -> AccreteConfig:
        """A copy with some fields of some sections changed: `config.replace(model={"init": "mean"})`."""
        changed = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        config = dataclasses.replace(self, **changed)
        config.validate("configuration")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str) -> None:
        checks = [
            (self.data.freq in FREQUENCIES, f"[data] freq must be one of {FREQUENCIES}"),
            (self.model.init in INIT_STRATEGIES, f"[model] init must be one of {INIT_STRATEGIES}"),
            (self.model.objective in OBJECTIVES, f"[model] objective must be one of {OBJECTIVES}"),
            (self.model.bias_policy in BIAS_POLICIES, f"[model] bias_policy must be one of {BIAS_POLICIES}"),
            (self.model.user_policy in USER_POLICIES, f"[model] user_policy must be one of {USER_POLICIES}"),
            (self.model.ials_alpha > 0 and self.model.ials_l2 > 0, "[model] ials_alpha and ials_l2 must be > 0"),
            (self.model.ials_iterations >= 1, "[model] ials_iterations must be >= 1"),
            (self.model.confidence in ("binary", "log_weight"), "[model] confidence must be binary or log_weight"),
            (self.model.recency_half_life_days > 0, "[model] recency_half_life_days must be > 0"),
            (self.model.weight >= 0 and self.model.recency_prior >= 0,
             "[model] recency_weight and recency_prior must be >= 0"),
            (all(w >= 0 for w in self.model.weight_candidates),
             "[model] recency_weight_candidates must all be >= 0"),
            (self.model.profile_half_life_days > 0 and all(h > 0 for h in self.model.profile_half_life_candidates),
             "[model] profile_half_life_days and profile_half_life_candidates must be > 0"),
            (all(h > 0 for h in self.model.recency_half_life_candidates),
             "[model] recency_half_life_candidates must all be > 0"),
            (self.model.recency_tune_min_users >= 1, "[model] recency_tune_min_users must be >= 1"),
            (self.model.dim > 0, "[model] dim must be positive"),
            (self.model.warmup_days >= 0, "[model] warmup_days must be >= 0"),
            (self.model.young_item_periods >= 1, "[model] young_item_periods must be >= 1"),
            (0.0 <= self.model.frozen_lr_multiplier <= 1.0, "[model] frozen_lr_multiplier must be in [0, 1]"),
            (self.train.optimizer in ("adagrad", "adam", "sgd"), "[train] optimizer must be adagrad, adam or sgd"),
            (self.train.epochs >= 0 and self.train.retrain_epochs >= 1, "[train] epochs must be >= 0"),
            (self.train.batch_size > 0, "[train] batch_size must be positive"),
            (self.train.replay_ratio >= 0, "[train] replay_ratio must be >= 0"),
            (self.train.reservoir_capacity >= 0, "[train] reservoir_capacity must be >= 0"),
            (self.drift.patience >= 1, "[drift] patience must be >= 1"),
            (self.drift.psi_bins >= 2, "[drift] psi_bins must be >= 2"),
            (self.drift.psi_floor > 0, "[drift] psi_floor must be > 0"),
            (self.drift.reference_days >= 1, "[drift] reference_days must be >= 1"),
            (self.drift.quality_smoothing_steps >= 1, "[drift] quality_smoothing_steps must be >= 1"),
            (self.drift.cooldown_days >= 0, "[drift] cooldown_days must be >= 0"),
            (self.drift.max_days_since_full_retrain >= 1, "[drift] max_days_since_full_retrain must be >= 1"),
            (self.drift.max_periods_since_full_retrain is None or self.drift.max_periods_since_full_retrain >= 1,
             "[drift] max_periods_since_full_retrain must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{source}: {message}")
