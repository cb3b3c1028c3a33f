"""The nightly policy as plain functions: which partitions a run applies, and which retrain the store owes.

The Prefect flows, the CLI (which answers "nothing to do" without starting Prefect) and the benches use these,
so a bench replays exactly what a nightly run would do.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence

from accrete.pipeline import contract
from accrete.pipeline.decision import fired_reasons
from accrete.pipeline.manifest import Manifest, reasons_list
from accrete.pipeline.store import Store


def retrain_reason(reasons: str | list[str] | None) -> str:
    """A drift-triggered retrain's stated reason: what fired (triggers past patience, the age cap), without
    the decision's notes on what did not ("waiting:", "cooldown:"); all of them if nothing else is left."""
    listed = reasons_list(reasons)
    return "; ".join(fired_reasons(listed) or listed)


def owed_retrain(store_dir: str | Path) -> dict[str, Any] | None:
    """A retrain the current version asked for but that never ran (the run crashed or was killed after the
    step was published): {"date": ISO date, "reasons": [...]}; None when nothing is owed."""
    return _owed(Store(store_dir).read_manifest())


def _owed(manifest: Manifest) -> dict[str, Any] | None:
    if manifest.kind == "incremental" and manifest.retrain_due:
        return {"date": manifest.partition, "reasons": manifest.reasons}
    return None


def applied_partitions(store_dir: str | Path) -> list[dt.date]:
    """Every partition the current version has consumed, in date order."""
    return _applied(Store(store_dir).read_manifest())


def _applied(manifest: Manifest) -> list[dt.date]:
    return sorted(dt.date.fromisoformat(d) for d in manifest.partitions)


def pending_partitions(data_dir: str | Path, store_dir: str | Path) -> list[dt.date]:
    """The data directory's partitions after the last applied one, in the order a nightly run applies them."""
    last = applied_partitions(store_dir)[-1]
    return [d for d in contract.list_partitions(data_dir) if d > last]


def nothing_to_do(data_dir: str | Path, store_dir: str | Path, start: dt.date | None = None,
                  end: dt.date | None = None) -> str | None:
    """Why a nightly run (no range) or a backfill over [start, end] would change nothing, as one line; None when
    it has work: a pending partition in range, or a retrain owed by the current version."""
    manifest = Store(store_dir).read_manifest()
    if _owed(manifest):
        return None
    applied = _applied(manifest)
    available = contract.list_partitions(data_dir)
    if start is None or end is None:
        if any(d > applied[-1] for d in available):
            return None
        return (f"nothing pending: every partition in {data_dir} is applied (last {applied[-1]}, "
                f"version {manifest.version}); use --force to redo the latest step")
    in_range = [d for d in available if start <= d <= end]
    if set(in_range) - set(applied):
        return None
    return (f"nothing to apply: the {len(in_range)} partition(s) from {start} to {end} are already applied "
            f"(version {manifest.version})")


def missing_periods(partitions: Sequence[dt.date], freq: str, start: dt.date, end: dt.date) -> list[dt.date]:
    """The periods with no partition that a backfill over [start, end] passes over: between consecutive partitions
    from the last one before `start` (the period the range follows on from) to the last one up to `end`.

    Partition dates step by `contract.period_end` (a day, 7 days, a calendar month); a quiet period is a partition
    with zero rows, so a gap is a period whose interactions were never written (a failed export, a lost week). A
    period after the last partition is not reported: it is not written *yet*, and the range that applies its
    successor reports it. One iteration per period, not per row.
    """
    present = sorted(set(partitions))
    before = [d for d in present if d < start][-1:]
    walk = before + [d for d in present if start <= d <= end]
    missing = []
    for previous, following in zip(walk, walk[1:]):
        day = contract.period_end(previous, freq)
        while day < following:
            missing.append(day)
            day = contract.period_end(day, freq)
    return missing


def missing_period_warning(data_dir: str | Path, start: dt.date, end: dt.date, default_freq: str = "day",
                           shown: int = 5) -> str | None:
    """One line naming the periods `missing_periods` finds in the data directory (None when there are none), for a
    backfill to log, print and report: a lost period must not pass silently."""
    freq = contract.data_frequency(data_dir, default_freq)
    missing = missing_periods(contract.list_partitions(data_dir), freq, start, end)
    if not missing:
        return None
    listed = ", ".join(d.isoformat() for d in missing[:shown]) + (f" and {len(missing) - shown} more"
                                                                  if len(missing) > shown else "")
    return (f"{data_dir}: no partition for {len(missing)} {freq} period(s) in or just before {start} to {end}: "
            f"{listed}; their interactions are missing from the model (write a file with zero rows for a period "
            f"without data)")
