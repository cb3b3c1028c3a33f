"""The retrain decision: thresholds, patience, cooldown and an age cap, persisted with its reasons.

Each night's drift metrics (`pipeline.drift`) go through `decide`, a pure function of the metrics, the
breach streaks carried from the previous step and the days since the last full retrain. Its
`RetrainDecision` says whether to retrain and, in plain words, why (or why not). `drift_record` flattens
metrics and decision into one row and `append_drift_history` stores it as its own single-row Parquet
file, so the history is append-only and a crash can never damage an earlier night's row;
`read_drift_history` gathers the rows for the dashboard.
"""
from __future__ import annotations

import datetime
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline.atomic import fsync_file
from accrete.pipeline.config import DriftConfig
from accrete.pipeline.drift import METRIC_KEYS
from accrete.pipeline.errors import StoreError

#: Metrics that can trigger a retrain, and on which side of their threshold a breach lies:
#: "above" breaches when value > threshold, "below" when value < threshold.
THRESHOLD_DIRECTIONS: dict[str, str] = {
    "psi_item_popularity": "above",
    "psi_user_activity": "above",
    "rating_js_divergence": "above",
    "new_user_share": "above",
    "new_item_share": "above",
    "quality_ratio": "below",
    "lift_ratio": "below",
    "stale_row_share": "above",
    "stale_interaction_share": "above",
    "new_row_norm_ratio": "above",
}

#: `DriftConfig` field holding each metric's threshold (the same name, except quality's minimum).
THRESHOLD_FIELDS: dict[str, str] = {metric: metric for metric in THRESHOLD_DIRECTIONS} | {
    "quality_ratio": "quality_ratio_min", "lift_ratio": "lift_ratio_min"}


def thresholds_from_config(config: DriftConfig) -> dict[str, float | None]:
    """Each triggering metric's threshold from the configuration; None means "recorded, never triggers"."""
    return {metric: getattr(config, field) for metric, field in THRESHOLD_FIELDS.items()}


def _is_breach(value: float, threshold: float | None, direction: str) -> bool:
    if threshold is None or value is None or not math.isfinite(value):
        return False
    return value > threshold if direction == "above" else value < threshold


def _steps(n: int) -> str:
    return f"{n} consecutive step" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class RetrainDecision:
    """Whether this step ends in a full retrain, and the reasons, stated so a person can audit them.

    Attributes:
        retrain: run a full retrain after this step.
        reasons: one sentence per cause: triggers that fired, an age cap, triggers suppressed by the
            cooldown, and breaches still waiting for their patience. Empty when nothing was past a threshold.
        breaches: per triggering metric, whether it was past its threshold this step.
        streaks: per triggering metric, consecutive breaching steps up to and including this one.
        thresholds: per triggering metric, its threshold (None: disabled).
    """

    retrain: bool
    reasons: list[str]
    breaches: dict[str, bool]
    streaks: dict[str, int]
    thresholds: dict[str, float | None]

    def to_record(self) -> dict:
        """Flat, JSON-able form: ``retrain``, ``reasons`` (joined by '; '), ``threshold/<metric>``
        (float or None) and ``streak/<metric>`` (int). A breach is ``streak/<metric> > 0``."""
        record: dict = {"retrain": bool(self.retrain), "reasons": "; ".join(self.reasons)}
        for metric in THRESHOLD_DIRECTIONS:
            threshold = self.thresholds.get(metric)
            record[f"threshold/{metric}"] = None if threshold is None else float(threshold)
        for metric in THRESHOLD_DIRECTIONS:
            record[f"streak/{metric}"] = int(self.streaks.get(metric, 0))
        return record

    @classmethod
    def from_record(cls, record: dict) -> RetrainDecision:
        """The decision back from `to_record`'s form (or a drift-history row; other keys are ignored).

        A breach is a positive streak; a missing or NaN threshold is None (disabled).
        """
        try:
            reasons_text = record["reasons"]
            retrain = bool(record["retrain"])
        except KeyError as exc:
            raise ValueError(f"RetrainDecision.from_record: record lacks {exc.args[0]!r}") from None
        thresholds: dict[str, float | None] = {}
        streaks: dict[str, int] = {}
        for metric in THRESHOLD_DIRECTIONS:
            threshold = record.get(f"threshold/{metric}")
            thresholds[metric] = None if threshold is None or math.isnan(threshold) else float(threshold)
            streaks[metric] = int(record.get(f"streak/{metric}", 0))
        return cls(retrain=retrain, reasons=reasons_text.split("; ") if reasons_text else [],
                   breaches={metric: streak > 0 for metric, streak in streaks.items()}, streaks=streaks,
                   thresholds=thresholds)


def fired_reasons(reasons: str | list[str]) -> list[str]:
    """The reasons that caused a retrain (age cap, triggers past patience), without the "waiting:" and
    "cooldown:" notes that only explain what did not fire. Use it as a full retrain's stated reason.
    `reasons` is a decision's list, or its record form (joined by '; ', as stored in a manifest)."""
    if isinstance(reasons, str):
        reasons = reasons.split("; ") if reasons else []
    return [reason for reason in reasons if not reason.startswith(("waiting:", "cooldown:"))]


def decide(metrics: dict[str, float], *, previous_streaks: dict[str, int], days_since_full_retrain: int,
           config: DriftConfig, periods_since_full_retrain: int | None = None) -> RetrainDecision:
    """Decide whether to run a full retrain after this step.

    Rules, in order:

    1. A metric with a threshold breaches when past it in its `THRESHOLD_DIRECTIONS` direction. NaN
       (or a metric absent from `metrics`) never breaches: a metric that could not be measured is no
       evidence of drift.
    2. ``streak = previous_streaks[metric] + 1`` when breaching, else 0. Patience filters one-day
       blips (a holiday, a crawler) that a retrain would not fix.
    3. Drift trigger: some ``streak >= config.patience``.
    4. Cooldown: a drift trigger within ``config.cooldown_days`` of the last full retrain
       (``days_since_full_retrain < cooldown_days``) is suppressed, and the reasons say so; the streak
       keeps counting, so persistent drift retrains as soon as the cooldown ends. This bounds the cost
       when a shift is still unfolding right after a retrain.
    5. Age cap: ``days_since_full_retrain >= config.max_days_since_full_retrain``, or
       ``periods_since_full_retrain >= config.max_periods_since_full_retrain`` (when set), always retrains.

    After a full retrain the caller passes empty `previous_streaks`.

    Returns:
        The decision with human-readable reasons, e.g. ``"psi_item_popularity 0.41 > 0.25 for 2
        consecutive steps (patience 2)"`` or ``"age: 91 days since last full retrain >= 90"``.
    """
    if days_since_full_retrain < 0:
        raise ValueError(f"decide: days_since_full_retrain must be >= 0, got {days_since_full_retrain}")
    thresholds = thresholds_from_config(config)
    breaches: dict[str, bool] = {}
    streaks: dict[str, int] = {}
    fired: list[str] = []
    waiting: list[str] = []
    for metric, direction in THRESHOLD_DIRECTIONS.items():
        value = metrics.get(metric, math.nan)
        threshold = thresholds[metric]
        breach = _is_breach(value, threshold, direction)
        streak = int(previous_streaks.get(metric, 0)) + 1 if breach else 0
        breaches[metric] = breach
        streaks[metric] = streak
        if breach:
            sign = ">" if direction == "above" else "<"
            text = (f"{metric} {value:.3g} {sign} {threshold:g} for {_steps(streak)} "
                    f"(patience {config.patience})")
            (fired if streak >= config.patience else waiting).append(text)

    reasons: list[str] = []
    retrain = False
    if days_since_full_retrain >= config.max_days_since_full_retrain:
        retrain = True
        reasons.append(f"age: {days_since_full_retrain} days since last full retrain "
                       f">= {config.max_days_since_full_retrain}")
    cap = config.max_periods_since_full_retrain
    if cap is not None and periods_since_full_retrain is not None and periods_since_full_retrain >= cap:
        retrain = True
        reasons.append(f"age: {periods_since_full_retrain} periods since last full retrain >= {cap}")
    if fired and days_since_full_retrain < config.cooldown_days:
        reasons.extend(f"cooldown: {text} suppressed, {days_since_full_retrain} days since last full retrain "
                       f"< {config.cooldown_days}" for text in fired)
    elif fired:
        retrain = True
        reasons.extend(fired)
    reasons.extend(f"waiting: {text}" for text in waiting)
    return RetrainDecision(retrain=retrain, reasons=reasons, breaches=breaches, streaks=streaks,
                           thresholds=thresholds)


# ---------------------------------------------------------------------------------------------------
# Drift history: one single-row Parquet file per step.

_META_COLUMNS: tuple[str, ...] = ("date", "version", "generation")
_FILE_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2})_v(\d+)\.parquet$")


def _history_schema(metric_names: list[str]) -> pa.Schema:
    fields = [pa.field("date", pa.string()), pa.field("version", pa.int64()), pa.field("generation", pa.int64())]
    fields += [pa.field(name, pa.float64()) for name in metric_names]
    fields += [pa.field("retrain", pa.bool_()), pa.field("reasons", pa.string())]
    fields += [pa.field(f"threshold/{m}", pa.float64()) for m in THRESHOLD_DIRECTIONS]
    fields += [pa.field(f"streak/{m}", pa.int64()) for m in THRESHOLD_DIRECTIONS]
    return pa.schema(fields)


#: Columns of the drift history (and of `read_drift_history`'s frame when it is empty).
HISTORY_SCHEMA: pa.Schema = _history_schema(list(METRIC_KEYS))


def drift_record(date: datetime.date, version: int, generation: int, metrics: dict[str, float],
                 decision: RetrainDecision) -> dict:
    """One flat row of the drift history for one step.

    Columns: ``date`` (ISO string), ``version`` (the store version this step published), ``generation``
    (full retrains so far), every metric (float; NaN when not measured; extra keys such as
    ``quality/ndcg@10`` are welcome), then `RetrainDecision.to_record`: ``retrain``, ``reasons`` (joined
    by '; '), ``threshold/<metric>``, ``streak/<metric>``.
    """
    if not isinstance(date, datetime.date) or isinstance(date, datetime.datetime):
        raise ValueError(f"drift_record: date must be a datetime.date, got {date!r}")
    overlap = {name for name in metrics if name in {*_META_COLUMNS, "retrain", "reasons"}
               or name.startswith(("threshold/", "streak/"))}
    if overlap:
        raise ValueError(f"drift_record: metric names {sorted(overlap)} clash with history columns")
    record: dict = {"date": date.isoformat(), "version": int(version), "generation": int(generation)}
    record.update({name: float(value) for name, value in metrics.items()})
    record.update(decision.to_record())
    return record


def _record_table(record: dict) -> pa.Table:
    """The record as a one-row table: known columns with their declared types, extra metrics as float64."""
    missing = [name for name in ("date", "version", "generation", "retrain", "reasons") if name not in record]
    if missing:
        raise ValueError(f"append_drift_history: record lacks column(s) {missing}")
    known = {f.name: f for f in HISTORY_SCHEMA}
    fields = [known[name] if name in known else pa.field(name, pa.float64()) for name in record]
    try:
        return pa.Table.from_pylist([record], schema=pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"append_drift_history: a record value does not fit its column type: {exc}") from None


def append_drift_history(directory: str | Path, record: dict) -> Path:
    """Append one step's record to the drift history in `directory` (created if absent).

    Append-only by construction: each record is its own file ``<date>_v<version>.parquet``, written
    under a temporary name, flushed, then published with ``os.link`` (which, unlike rename, fails if
    the target exists, so two writers can never overwrite one another) and the temporary name removed.
    Earlier files are never opened for writing.

    Returns:
        The new file's path.

    Raises:
        StoreError: a record for the same date and version already exists.
    """
    directory = Path(directory)
    table = _record_table(record)
    try:
        date = datetime.date.fromisoformat(str(record["date"]))
    except ValueError:
        raise ValueError(f"append_drift_history: record date {record['date']!r} is not an ISO date") from None
    final = directory / f"{date.isoformat()}_v{int(record['version']):06d}.parquet"
    if final.exists():
        raise StoreError(f"{final}: drift history already holds a record for {date} version "
                         f"{record['version']}; the history is append-only")
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, temporary)
        fsync_file(temporary)
        try:
            os.link(temporary, final)
        except FileExistsError:
            raise StoreError(f"{final}: drift history already holds a record for {date} version "
                             f"{record['version']}; the history is append-only") from None
        except OSError:
            # A filesystem without hard links: an existence check, then an atomic rename (a concurrent
            # writer could slip in between; the store's lock serialises writers anyway).
            if final.exists():
                raise StoreError(f"{final}: drift history already holds a record for {date} version "
                                 f"{record['version']}; the history is append-only") from None
            os.rename(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    return final


def _empty_history() -> pd.DataFrame:
    return HISTORY_SCHEMA.empty_table().to_pandas()


def _read_record_table(path: Path) -> pa.Table | None:
    """One drift history file as a one-row table; None when the name is not a record's."""
    match = _FILE_PATTERN.match(path.name)
    if not match:
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: damaged drift history file ({exc})") from None
    if table.num_rows != 1 or "date" not in table.column_names or "version" not in table.column_names:
        raise StoreError(f"{path}: damaged drift history file (expected one row with date and version)")
    row = table.select(["date", "version"]).to_pylist()[0]
    if row["date"] != match.group(1) or row["version"] != int(match.group(2)):
        raise StoreError(f"{path}: damaged drift history file (holds date {row['date']} version "
                         f"{row['version']}, its name says {match.group(1)} version {int(match.group(2))})")
    return table


def read_drift_record(path: str | Path) -> dict | None:
    """One drift history file's record (date, version, metrics, decision); None when the file name is
    not a record's (e.g. an interrupted append's temporary file).

    Raises:
        StoreError: the file is unreadable, is not a single row, or does not match its name.
    """
    table = _read_record_table(Path(path))
    return None if table is None else table.to_pylist()[0]


def read_drift_history(directory: str | Path) -> pd.DataFrame:
    """All drift records in `directory`, sorted by (date, version), one row per step.

    ``date`` stays the ISO string stored (``pd.to_datetime(frame["date"])`` for timestamps). Records
    written before a metric existed show NaN in its column. An absent or empty directory gives an
    empty frame with the `HISTORY_SCHEMA` columns. Temporary files of an interrupted append are ignored.

    Raises:
        StoreError: a history file is unreadable, is not a single row, or does not match its name.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return _empty_history()
    tables = [table for path in sorted(directory.glob("*.parquet"))
              if (table := _read_record_table(path)) is not None]
    if not tables:
        return _empty_history()
    try:
        combined = pa.concat_tables([HISTORY_SCHEMA.empty_table(), *tables], promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"{directory}: drift history files have incompatible columns ({exc})") from None
    frame = combined.to_pandas()
    return frame.sort_values(["date", "version"], kind="stable").reset_index(drop=True)
