"""A version's manifest as typed objects: the one reader and writer of `versions/vNNNNNN/manifest.json`.

A manifest records what a version is (its lineage, the partitions it consumed, its row counts), how well it
scored, the drift decision and the state the next step carries on from. It is written once, when the version
is published, and read by every command. `Manifest.from_dict` accepts every manifest earlier code wrote (keys
were added over time; a missing one reads as its default) and keeps the keys it does not type in `extra`, so
`Manifest.from_dict(raw).to_dict() == raw`: reading and writing back never changes what a store holds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: The manifest's `format` key. Every manifest so far is format 1 (those written before the key existed too).
SCHEMA_VERSION = 1

KINDS = ("full_retrain", "incremental")


def reasons_list(reasons: str | list[str] | None) -> list[str]:
    """A decision's reasons as a list. Manifests store them joined by '; ' (`RetrainDecision.to_record`);
    older ones hold a list. Both shapes are on disk."""
    if isinstance(reasons, str):
        return [reason for reason in reasons.split("; ") if reason]
    return [str(reason) for reason in reasons or []]


def _ordered(typed: dict[str, Any], extra: dict[str, Any], present: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object with the keys its source had, in its order (no source: every typed key, then the rest)."""
    merged = {**typed, **extra}
    return {key: merged[key] for key in present or tuple(merged) if key in merged}


def _split(raw: dict[str, Any], names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the keys named, every other key), both in `raw`'s order."""
    return ({k: v for k, v in raw.items() if k in names}, {k: v for k, v in raw.items() if k not in names})


@dataclass(frozen=True)
class RowCounts:
    """Table sizes of a version (row 0, out-of-vocabulary, included), the rows it added, and where each table's
    trainable tail began (rows below were frozen in that step; 0 after a full retrain)."""

    user: int = 0
    item: int = 0
    user_new: int = 0
    item_new: int = 0
    user_trainable_from: int = 0
    item_trainable_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    present: tuple[str, ...] = ()

    _KEYS = ("user", "item", "user_new", "item_new", "user_trainable_from", "item_trainable_from")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> RowCounts:
        known, extra = _split(raw or {}, cls._KEYS)
        return cls(**{k: int(v) for k, v in known.items()}, extra=extra, present=tuple(raw or {}))

    def to_dict(self) -> dict[str, Any]:
        return _ordered({k: getattr(self, k) for k in self._KEYS}, self.extra, self.present)


@dataclass(frozen=True)
class DriftState:
    """What the next step's drift decision carries on from: Recall@10 since the last full retrain, each
    trigger's streak, and the interactions and rows counted since then."""

    recall_history: list[float] = field(default_factory=list)
    streaks: dict[str, int] = field(default_factory=dict)
    last_full_retrain: dict[str, Any] = field(default_factory=dict)
    rows_at_retrain: dict[str, int] = field(default_factory=dict)
    interactions_since_retrain: int = 0
    interactions_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    present: tuple[str, ...] = ()

    _KEYS = ("recall_history", "streaks", "last_full_retrain", "rows_at_retrain", "interactions_since_retrain",
             "interactions_total")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> DriftState:
        known, extra = _split(raw or {}, cls._KEYS)
        return cls(**known, extra=extra, present=tuple(raw or {}))

    def to_dict(self) -> dict[str, Any]:
        return _ordered({k: getattr(self, k) for k in self._KEYS}, self.extra, self.present)


@dataclass(frozen=True)
class Manifest:
    """One published version. The typed fields are what commands read; `extra` holds every other key (the
    configuration, ingest reports, training statistics, recency settings, file checksums, ...), unchanged.

    `present` remembers which typed keys the source held, so `to_dict` writes back exactly those.
    """

    version: int
    generation: int
    kind: str
    parent: int | None = None
    partition: str | None = None
    partitions: list[str] = field(default_factory=list)
    created_at: str | None = None
    objective: str | None = None
    reason: str | None = None
    rows: RowCounts = field(default_factory=RowCounts)
    metrics: dict[str, float] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    drift_state: DriftState = field(default_factory=DriftState)
    quarantined_rows_recorded: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    format: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    present: tuple[str, ...] = ()

    # manifest key -> attribute, for the keys typed here (the rest stay in `extra`).
    _FIELDS = {"version": "version", "generation": "generation", "kind": "kind", "parent": "parent",
               "partition": "partition", "partitions": "partitions", "created_at": "created_at",
               "objective": "objective", "reason": "reason", "rows": "rows", "metrics": "metrics", "drift": "drift",
               "drift_state": "drift_state", "quarantined_rows": "quarantined_rows_recorded",
               "timings": "timings", "format": "format"}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """A manifest as read from JSON, by any version of Accrete.

        Raises:
            ValueError: a key every manifest has (`version`, `generation`, `kind`) is missing or malformed.
        """
        for key in ("version", "generation", "kind"):
            if key not in raw:
                raise ValueError(f"manifest has no {key!r}")
        if raw["kind"] not in KINDS:
            raise ValueError(f"manifest kind must be one of {KINDS}, got {raw['kind']!r}")
        known, extra = _split(raw, tuple(cls._FIELDS))
        values: dict[str, Any] = {cls._FIELDS[key]: value for key, value in known.items()}
        values["rows"] = RowCounts.from_dict(known.get("rows"))
        values["drift_state"] = DriftState.from_dict(known.get("drift_state"))
        values["version"], values["generation"] = int(raw["version"]), int(raw["generation"])
        for key in ("metrics", "drift", "timings"):
            if values.get(key) is None:
                values.pop(key, None)
        return cls(**values, extra=extra, present=tuple(raw))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: the source's keys in the source's order (a new manifest: typed keys first)."""
        typed = {key: getattr(self, attribute) for key, attribute in self._FIELDS.items()}
        typed["rows"], typed["drift_state"] = self.rows.to_dict(), self.drift_state.to_dict()
        return _ordered(typed, self.extra, self.present)

    def replace(self, **changes: Any) -> Manifest:
        """A copy with some fields changed (keys that were absent and are now set are written too)."""
        added = tuple(key for key, attribute in self._FIELDS.items() if attribute in changes and key not in self.present)
        present = self.present + added if self.present else ()
        return dataclasses.replace(self, **changes, present=present)

    # ----- what readers ask
    @property
    def retrain_due(self) -> bool:
        """The step's drift decision asked for a full retrain."""
        return bool(self.drift.get("retrain", False))

    @property
    def reasons(self) -> list[str]:
        """The drift decision's reasons, as a list."""
        return reasons_list(self.drift.get("reasons"))

    @property
    def quarantined_rows(self) -> int:
        """Rows this version set aside in its quarantine file. Manifests before `quarantined_rows` was written
        hold only the ingest report(s): one partition's for a step, one per date read for a full retrain (where
        only the partitions it consumed for the first time are quarantined again, so this may count more for
        old ones)."""
        if self.quarantined_rows_recorded is not None:
            return int(self.quarantined_rows_recorded)
        ingest = self.extra.get("ingest") or {}
        reports = [ingest] if "quarantined" in ingest else [r for r in ingest.values() if isinstance(r, dict)]
        return sum(int(n) for report in reports for n in (report.get("quarantined") or {}).values())

    @property
    def config(self) -> dict[str, Any]:
        """The configuration the version was made with, as a dict (empty for manifests without it)."""
        return self.extra.get("config") or {}
