"""The nightly policy as plain functions: which partitions a run applies, and which retrain the store owes.

The Prefect flows, the CLI (which answers "nothing to do" without starting Prefect) and the benches use these,
so a bench replays exactly what a nightly run would do.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Sequence

from accrete.pipeline import contract
from accrete.pipeline.manifest import Manifest, reasons_list
from accrete.pipeline.store import Store


def retrain_reason(reasons: str | list[str] | None) -> str:
    """A drift-triggered retrain's stated reason: what fired (triggers past patience, the age cap), without
    the decision's notes on what did not ("waiting:", "cooldown:"); all of them if nothing else is left."""
    from accrete.pipeline.decision import fired_reasons  # with drift, scipy: 0.5 s the CLI's checks do not need

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
                  end: dt.date | None = None, date: dt.date | None = None) -> str | None:
    """Why a nightly run (no range, or the partition `date`) or a backfill over [start, end] would change
    nothing, as one line; None when it has work: a pending partition in range, or a retrain owed by the
    current version."""
    manifest = Store(store_dir).read_manifest()
    if _owed(manifest):
        return None
    applied = _applied(manifest)
    if date is not None:
        if date not in applied:
            return None
        return (f"nothing to do: partition {date} is already applied (version {manifest.version}); use --force "
                f"to redo the latest step")
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


def partitions_to_read(data_dir: str | Path, store_dir: str | Path, date: dt.date | None = None,
                       start: dt.date | None = None, end: dt.date | None = None,
                       as_of: dt.date | None = None) -> list[dt.date]:
    """The new partitions to check before anything starts: a nightly's (`date`, or the oldest pending one), a
    backfill's first pending one in [start, end] (a later bad one stops the backfill there, resumably), a
    retrain's newest unconsumed one up to `as_of` (the data that just arrived; on an empty store the older
    ones are checked by the retrain itself, before it publishes anything: checking a thousand weekly
    partitions twice would cost seconds). Consumed partitions were checked when they were applied."""
    store = Store(store_dir)
    applied = set(_applied(store.read_manifest())) if store.current_version() is not None else set()
    available = [d for d in contract.list_partitions(data_dir) if d not in applied]
    if as_of is not None:
        return [d for d in available if d <= as_of][-1:]
    if start is not None and end is not None:
        return [d for d in available if start <= d <= end][:1]
    if date is not None:
        return [date] if date in available else []
    last = max(applied) if applied else None
    return [d for d in available if last is None or d > last][:1]


def check_partitions(data_dir: str | Path, dates: list[dt.date]) -> None:
    """Read and validate each partition as a run would (`contract.read_partition`: files, columns, types,
    a future date), discarding the result: a data error is raised here, before Prefect starts."""
    for date in dates:
        contract.read_partition(data_dir, date)
