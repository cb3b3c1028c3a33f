"""Keeping a store healthy for months of nightly runs: delete old versions safely (`collect_garbage`),
check everything a store holds against its manifests (`verify_store`), and what each version cost
(`version_costs`).

A version writes only what changed (its parts share segments with the versions before it, see
`pipeline.parts`), but a store that publishes a version a night still grows; see docs/operations.md for
measured sizes. Garbage collection keeps CURRENT, the newest versions, optionally whole recent generations,
and what CURRENT's lineage still needs; a segment is deleted only when no kept version's parts list it. It
first renames each doomed version to a trash name (atomic: the version is either there and intact or gone),
then moves the segments no kept version uses into a trash directory, and only then removes the trash, so a
crash at any moment leaves a store that loads and verifies. The next `gc` or publish removes a crash's trash.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline.atomic import fsync_dir
from accrete.pipeline.decision import read_drift_record
from accrete.pipeline.errors import StoreError
from accrete.pipeline.faults import maybe_fail
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.parts import SEGMENT_TRASH_PREFIX, SEGMENTS, changed_rows
from accrete.pipeline.store import (CURRENT, DRIFT, HISTORY, MANIFEST, TRASH_PREFIX, VERSIONS, Store, _file_sha256,
                                    has_parts, remove_path, sha256_of_array, version_name)


def _tree_bytes(path: Path) -> int:
    """Bytes held by the files under `path` (apparent sizes)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----- garbage collection ------------------------------------------------------------------------------
@dataclass
class GcPlan:
    """What `collect_garbage` keeps and deletes, and why each kept version is kept."""

    current: int
    kept: dict[int, list[str]]  # version -> reasons
    removed: list[int]
    removed_bytes: int
    history_files: list[Path]  # superseded consolidated history files (a cache)
    leftovers: list[Path]  # what crashed runs left (Store.leftovers)
    segments: list[Path] = field(default_factory=list)  # segments no kept version's parts list
    other_bytes: int = 0

    def summary(self, store: Store, dry_run: bool) -> dict[str, Any]:
        return {"store": str(store.root), "current": self.current, "dry_run": dry_run,
                "kept": sorted(self.kept), "kept_reasons": {version_name(v): r for v, r in sorted(self.kept.items())},
                "removed": self.removed, "removed_versions": len(self.removed),
                "removed_history_files": [p.name for p in self.history_files],
                "removed_leftovers": [p.name for p in self.leftovers],
                "removed_segments": len(self.segments),
                "freed_bytes": self.removed_bytes + self.other_bytes}


def plan_gc(store_dir: str | Path, keep: int, keep_generations: int = 0) -> GcPlan:
    """Which versions `collect_garbage` would delete.

    Kept: CURRENT; the newest `keep` versions; every version of the newest `keep_generations`
    generations (a generation starts at a full retrain); CURRENT's parent (`nightly --force` rebuilds
    from it) and its ancestors back to the nearest one with quality metrics (the next nightly's report
    compares against it); and every version from the oldest kept one on, so a delta export between two
    kept versions still sees every step's manifest in between (it checks frozen rows through them).
    """
    if keep < 1:
        raise StoreError(f"--keep must be at least 1 (CURRENT is always kept), got {keep}")
    if keep_generations < 0:
        raise StoreError(f"--keep-generations must be >= 0, got {keep_generations}")
    store = Store(store_dir)
    current = store.require_current()
    manifests = {v: store.manifest(v) for v in store.versions()}
    kept: dict[int, list[str]] = {}

    def hold(version: int, reason: str) -> None:
        kept.setdefault(version, []).append(reason)

    hold(current, "CURRENT")
    for version in sorted(manifests)[-keep:]:
        hold(version, f"newest {keep}")
    generations = sorted({int(m["generation"]) for m in manifests.values()})[-keep_generations:] if keep_generations else []
    for version, manifest in manifests.items():
        if int(manifest["generation"]) in generations:
            hold(version, f"generation {manifest['generation']}")
    parent = manifests[current].get("parent")
    if parent is not None and int(parent) in manifests:
        hold(int(parent), "parent of CURRENT")
    version = current
    while version in manifests and not manifests[version].get("metrics"):
        parent_version = manifests[version].get("parent")
        if parent_version is None or int(parent_version) not in manifests:
            break
        version = int(parent_version)
        hold(version, "nearest ancestor with metrics")
    oldest_recent = min(v for v, reasons in kept.items() if any(r.startswith(("newest", "generation", "CURRENT"))
                                                                     for r in reasons))
    for version in manifests:
        if version > oldest_recent and version not in kept:
            hold(version, "between kept versions")
    removed = sorted(v for v in manifests if v not in kept)
    leftovers = store.leftovers(current)
    history_files = _superseded_history_bases(store, manifests[current])
    segments = unreferenced_segments(store, [manifests[v] for v in kept])
    return GcPlan(current=current, kept=kept, removed=removed,
                  removed_bytes=sum(_tree_bytes(store.version_dir(v)) for v in removed) + sum(_tree_bytes(p) for p in segments),
                  history_files=history_files, leftovers=leftovers, segments=segments,
                  other_bytes=sum(_tree_bytes(p) for p in [*leftovers, *history_files]))


def referenced_segments(manifests: list[dict[str, Any]]) -> set[str]:
    """The segment keys the parts of these manifests list (the one list gc and verify read)."""
    return {key for manifest in manifests if has_parts(manifest)
            for record in manifest["parts"].values() for key in record.get("segments", [])}


def unreferenced_segments(store: Store, kept: list[dict[str, Any]]) -> list[Path]:
    """Segment files no kept version uses: those only removed versions used, and those of failed publishes."""
    directory = store.root / SEGMENTS
    if not directory.is_dir():
        return []
    used = referenced_segments(kept)
    return sorted(path for sub in directory.iterdir() if sub.is_dir() and not sub.name.startswith(".")
                  for path in sub.iterdir() if path.name not in used)


def _superseded_history_bases(store: Store, current_manifest: dict[str, Any]) -> list[Path]:
    """Consolidated history files older than the newest one CURRENT reads (`Store.read_history` uses
    only that one; every base is a cache of the per-partition files, which are never deleted)."""
    consumed = set(current_manifest.get("partitions", []))
    bases = sorted((store.root / HISTORY).glob("base-until=*.parquet"))
    for index in range(len(bases) - 1, -1, -1):
        try:
            covered = json.loads((pq.read_schema(bases[index]).metadata or {})[b"accrete.dates"])
        except (OSError, pa.ArrowInvalid, KeyError, ValueError):
            continue
        if set(covered) <= consumed:
            return bases[:index]
    return []


def collect_garbage(store_dir: str | Path, keep: int, keep_generations: int = 0, *,
                    dry_run: bool = False) -> dict[str, Any]:
    """Delete the versions `plan_gc` does not keep, crashed runs' leftovers and superseded history
    caches; returns what was (or, with `dry_run`, would be) freed.

    Holds the store lock (a dry run takes none and changes nothing). Refuses a store whose CURRENT
    version is damaged. Doomed versions are renamed to trash names oldest first, the directory is
    fsynced, and only then is the trash removed.
    """
    store = Store(store_dir)
    if dry_run:
        store.verify_files(store.require_current())
        return plan_gc(store_dir, keep, keep_generations).summary(store, dry_run=True)
    with store.lock(f"gc --keep {keep} --keep-generations {keep_generations}"):
        store.verify_files(store.require_current())
        plan = plan_gc(store_dir, keep, keep_generations)
        for path in plan.leftovers:
            remove_path(path)
        versions_dir = store.root / VERSIONS
        trash = []
        for version in plan.removed:
            target = versions_dir / f"{TRASH_PREFIX}{version_name(version)}-{os.getpid()}"
            os.rename(store.version_dir(version), target)
            trash.append(target)
            maybe_fail("gc:renamed-one")
        fsync_dir(versions_dir)
        # Only now, with every doomed version gone, may the segments they alone used go: a crash before
        # this point leaves them unreferenced (the next gc takes them), never a kept version without them.
        if plan.segments:
            segment_trash = store.root / SEGMENTS / f"{SEGMENT_TRASH_PREFIX}{os.getpid()}"
            segment_trash.mkdir(exist_ok=True)
            for path in plan.segments:
                os.rename(path, segment_trash / path.name)
            fsync_dir(segment_trash.parent)
            trash.append(segment_trash)
            maybe_fail("gc:segments-trashed")
        maybe_fail("gc:before-delete")
        for target in trash:
            shutil.rmtree(target)
        for path in plan.history_files:
            path.unlink()
        return plan.summary(store, dry_run=False)


def format_gc(summary: dict[str, Any]) -> str:
    """One line of what `accrete gc` freed (or would free)."""
    removed = summary["removed"]
    span = (f"{version_name(removed[0])}..{version_name(removed[-1])}" if len(removed) > 1
            else version_name(removed[0]) if removed else "none")
    kept = summary["kept"]
    verb = "would free" if summary["dry_run"] else "freed"
    extra = []
    if summary["removed_history_files"]:
        extra.append(f"{len(summary['removed_history_files'])} superseded history file(s)")
    if summary["removed_leftovers"]:
        extra.append(f"{len(summary['removed_leftovers'])} crash leftover(s)")
    if summary.get("removed_segments"):
        extra.append(f"{summary['removed_segments']} unused segment(s)")
    return (f"{verb} {summary['removed_versions']} version(s) ({span})" + (f" and {', '.join(extra)}" if extra else "")
            + f": {summary['freed_bytes'] / 1e6:.1f} MB; kept {len(kept)} version(s) "
              f"({version_name(kept[0])}..{version_name(kept[-1])}), CURRENT {version_name(summary['current'])}")


# ----- verification ------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """The problems `verify_store` found (each "PATH: what is wrong") and what it checked."""

    store: str
    problems: list[str] = field(default_factory=list)
    current: int | None = None
    versions: int = 0
    history_files: int = 0
    drift_records: int = 0
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        checked = (f"{self.versions} version(s), CURRENT {version_name(self.current) if self.current else '-'}, "
                   f"{self.history_files} history file(s), {self.drift_records} drift record(s)")
        if self.leftovers:
            checked += f"; {len(self.leftovers)} crash leftover(s) the next run removes"
        if self.ok:
            return f"store {self.store}: OK ({checked})"
        return f"store {self.store} is damaged: {len(self.problems)} problem(s) ({checked})"

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "problems": self.problems, "current": self.current,
                "versions": self.versions, "history_files": self.history_files,
                "drift_records": self.drift_records, "leftovers": self.leftovers, "summary": self.summary()}


def _read_manifest(path: Path, version: int, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        problems.append(f"{path}: missing (version {version} has no manifest)")
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path}: damaged manifest ({exc})")
        return None
    missing = [key for key in ("version", "generation", "kind", "rows") if key not in manifest] \
        if isinstance(manifest, dict) else ["(not an object)"]
    if isinstance(manifest, dict) and "files" not in manifest and not has_parts(manifest):
        missing.append("parts")
    if missing:
        problems.append(f"{path}: damaged manifest (no {', '.join(missing)})")
        return None
    if manifest["version"] != version:
        problems.append(f"{path}: damaged manifest (says version {manifest['version']}, directory is {version})")
        return None
    try:
        Manifest.from_dict(manifest)  # what every command reads must parse
    except (ValueError, TypeError, AttributeError) as exc:
        problems.append(f"{path}: damaged manifest ({exc})")
        return None
    return manifest


def _verify_files(store: Store, version: int, manifest: dict[str, Any], problems: list[str], checked: dict[str, str | None]) -> bool:
    """Every part (every file, in a store written before parts) is present and intact; a part's content,
    rebuilt from its segments, matches the manifest's digest. Shared segments are hashed once (`checked`)."""
    directory = store.version_dir(version)
    before = len(problems)
    if has_parts(manifest):
        for name, record in manifest["parts"].items():
            problems += store.part_problems(version, name, record, checked=checked)
        return len(problems) == before
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif _file_sha256(path) != digest:
            problems.append(f"{path}: checksum mismatch (sha256 differs from the manifest's)")
    return len(problems) == before


def _frozen_block(store: Store, version: int, manifest: dict[str, Any], entity: str, rows: int) -> str:
    return sha256_of_array(store.read_array(version, f"{entity}_vectors", manifest)[:rows])


def _verify_frozen_blocks(store: Store, version: int, manifest: dict[str, Any], intact: dict[int, dict],
                          problems: list[str]) -> None:
    """The frozen blocks recorded in the manifest (`frozen_checksum`: rows before `<entity>_trainable_from`)
    match the tables, and, within a generation, match the parent's rows: the rows frozen by the step are
    bit-identical to the version it built on."""
    directory = store.version_dir(version)
    parent = manifest.get("parent")
    same_generation = (parent is not None and int(parent) in intact and manifest["kind"] == "incremental"
                       and intact[int(parent)]["generation"] == manifest["generation"])
    fine_tuned = (manifest.get("config", {}).get("model", {}).get("frozen_lr_multiplier", 0.0) or 0.0) > 0
    for entity, digest in (manifest.get("frozen_checksum") or {}).items():
        rows = int(manifest["rows"].get(f"{entity}_trainable_from", 0))
        where = directory / (f"part {entity}_vectors" if has_parts(manifest) else f"{entity}_vectors.npy")
        try:
            own = _frozen_block(store, version, manifest, entity, rows)
        except (OSError, ValueError, StoreError) as exc:
            problems.append(f"{where}: unreadable table ({exc})")
            continue
        if not fine_tuned and own != digest:
            problems.append(f"{where}: frozen block (rows 0..{rows - 1}) does not match the manifest's frozen_checksum")
        if same_generation and not fine_tuned:
            parent_version = int(manifest["parent"])
            try:
                theirs = _frozen_block(store, parent_version, intact[parent_version], entity, rows)
            except (OSError, ValueError, StoreError) as exc:
                problems.append(f"{store.version_dir(parent_version)}: {entity} table unreadable ({exc})")
                continue
            if theirs != own:
                problems.append(f"{where}: frozen {entity} rows 0..{rows - 1} differ from parent version {parent}'s")


def verify_store(store_dir: str | Path) -> VerifyReport:
    """Check CURRENT, every published version's files and frozen blocks, the consumed-partition history
    and the drift log. Read-only (no lock); a problem is reported, never repaired.

    Leftovers of crashed runs (a version being written, one never made current, gc trash), a missing
    drift record of the newest version (the next run appends it) and history of a partition no version
    consumed are not damage: the next run cleans or completes them.

    Raises:
        StoreError: the directory is not a store at all (missing, or no CURRENT and no versions).
    """
    store = Store(store_dir)
    root = store.root
    if not root.is_dir():
        raise StoreError(f"{root}: no such store directory")
    report = VerifyReport(store=str(root))
    problems = report.problems
    version_dirs = {int(p.name[1:]): p for p in (root / VERSIONS).glob("v[0-9]*")
                    if p.is_dir() and p.name[1:].isdigit()} if (root / VERSIONS).is_dir() else {}
    pointer = root / CURRENT
    if not pointer.exists():
        if not version_dirs:
            raise StoreError(f"{root}: not a store (no {CURRENT} and no versions)")
        problems.append(f"{pointer}: missing ({len(version_dirs)} version directories exist)")
        return report
    text = pointer.read_text().strip()
    if not (text.startswith("v") and text[1:].isdigit()):
        problems.append(f"{pointer}: damaged pointer {text!r} (expected e.g. v000003)")
        return report
    report.current = current = int(text[1:])
    if current not in version_dirs:
        problems.append(f"{pointer}: points at {text}, which does not exist")
        return report
    report.leftovers = [p.name for p in store.leftovers(current)]

    checked: dict[str, str | None] = {}  # each segment's verdict (shared by many versions: hashed once)
    readable: dict[int, dict[str, Any]] = {}  # versions whose manifest is readable
    intact: dict[int, dict[str, Any]] = {}  # versions whose manifest and files are intact
    for version in sorted(v for v in version_dirs if v <= current):
        directory = version_dirs[version]
        if not directory.exists():
            continue  # deleted by a concurrent gc
        report.versions += 1
        manifest = _read_manifest(directory / MANIFEST, version, problems)
        if manifest is None:
            continue
        readable[version] = manifest
        if _verify_files(store, version, manifest, problems, checked):
            intact[version] = manifest
            _verify_frozen_blocks(store, version, manifest, intact, problems)
        parent = manifest.get("parent")
        if parent is not None and int(parent) in intact:
            expected = intact[int(parent)]["generation"] + (1 if manifest["kind"] == "full_retrain" else 0)
            if manifest["generation"] != expected:
                problems.append(f"{directory / MANIFEST}: generation {manifest['generation']} does not follow "
                                f"parent version {parent}'s ({intact[int(parent)]['generation']})")

    current_manifest = readable.get(current)
    if current_manifest is not None:
        _verify_history(store, current_manifest, report)
    _verify_drift_log(store, report)
    return report


def _verify_history(store: Store, manifest: dict[str, Any], report: VerifyReport) -> None:
    """Every partition CURRENT consumed has a readable history file; consolidated files are readable."""
    for day in manifest.get("partitions", []):
        path = store.history_path(dt.date.fromisoformat(day))
        report.history_files += 1
        if not path.is_file():
            report.problems.append(f"{path}: missing (history of consumed partition {day})")
            continue
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            report.problems.append(f"{path}: unreadable history ({exc})")
            continue
        absent = {"user_id", "item_id", "timestamp"} - set(table.column_names)
        if absent:
            report.problems.append(f"{path}: damaged history (no column {', '.join(sorted(absent))})")
    for path in sorted((store.root / HISTORY).glob("base-until=*.parquet")):
        report.history_files += 1
        try:
            json.loads((pq.read_schema(path).metadata or {})[b"accrete.dates"])
            pq.read_table(path)
        except (OSError, pa.ArrowInvalid, KeyError, ValueError) as exc:
            report.problems.append(f"{path}: damaged consolidated history, a cache: delete it ({exc})")


def _verify_drift_log(store: Store, report: VerifyReport) -> None:
    """Every record of the drift log is one readable row matching its file name."""
    directory = store.root / DRIFT
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.parquet")):
        try:
            record = read_drift_record(path)
        except StoreError as exc:
            report.problems.append(str(exc))
            continue
        if record is None:
            continue  # not a record's name (e.g. an interrupted append's temporary file)
        report.drift_records += 1


# ----- what a version cost ------------------------------------------------------------------------------
@dataclass
class VersionCost:
    """Bytes one version wrote next to the bytes of the rows that changed, split into the model's parts and the
    interaction history (the partition's interactions by row, and the string-ID history file of the partition).

    `changed_bytes` counts, per array part, the rows whose bytes differ from the parent's plus the rows
    appended (row bytes as in memory); per table part, the appended rows (Arrow's in-memory size); per new
    interaction part, its rows. `written_bytes` counts the segments the parent did not have, the version
    directory (manifest, quarantine), and the history and drift files of the partitions it consumed first."""

    version: int
    parts_written: int = 0
    parts_changed: int = 0
    history_written: int = 0
    history_changed: int = 0
    other_written: int = 0
    by_part: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (written, changed)

    @property
    def written_bytes(self) -> int:
        return self.parts_written + self.history_written + self.other_written

    @property
    def changed_bytes(self) -> int:
        return self.parts_changed + self.history_changed


def version_cost(store_dir: str | Path, version: int) -> VersionCost:
    """What `version` wrote and what changed in it (see `VersionCost`), against its parent version."""
    store = Store(store_dir)
    manifest = store.manifest(version)
    if not has_parts(manifest):
        raise StoreError(f"{store.version_dir(version)}: written before parts: every file is a full copy")
    parent = int(manifest["parent"]) if manifest.get("parent") is not None else None
    parent_manifest = store.manifest(parent) if parent is not None and parent in store.versions() else {}
    parent_parts = parent_manifest.get("parts") or {}
    before = referenced_segments([parent_manifest]) if parent_parts else set()
    cost = VersionCost(version)
    for name, record in manifest["parts"].items():
        if "path" in record:
            continue  # a file of the version directory, counted below
        written = sum(store.segments.size(key) for key in record["segments"] if key not in before)
        changed = _changed_bytes(store, version, parent if parent_parts else None, name, record,
                                 parent_parts.get(name))
        if record["kind"] == "interactions":
            cost.history_written += written
            cost.history_changed += changed
        else:
            cost.parts_written += written
            cost.parts_changed += changed
        cost.by_part[name] = (written, changed)
    cost.other_written = _tree_bytes(store.version_dir(version))
    first_consumed = set(manifest.get("partitions", [])) - set(parent_manifest.get("partitions", []))
    for day in first_consumed:
        path = store.history_path(dt.date.fromisoformat(day))
        cost.history_written += path.stat().st_size if path.exists() else 0
        cost.other_written += sum(p.stat().st_size for p in (store.root / DRIFT).glob(f"{day}_v{version:06d}.parquet"))
    return cost


def _changed_bytes(store: Store, version: int, parent: int | None, name: str, record: dict[str, Any],
                   parent_record: dict[str, Any] | None) -> int:
    if record["kind"] == "interactions":
        if parent_record is not None and parent_record.get("segments") == record["segments"]:
            return 0
        return store.read_interactions_part(version, name).nbytes
    if record["kind"] == "file":
        return _tree_bytes(store.segments.path(record["segments"][0]))
    if parent_record is not None and parent_record.get("segments") == record["segments"]:
        return 0
    if record["kind"] == "array":
        new = store.read_array(version, name)
        if parent is None or parent_record is None or parent_record.get("kind") != "array":
            return int(new.nbytes)
        old = store.read_array(parent, name)
        if old.dtype != new.dtype or old.shape[1:] != new.shape[1:] or len(old) > len(new):
            return int(new.nbytes)
        row_bytes = new[:1].nbytes
        return int(len(changed_rows(new, old)) * row_bytes + new[len(old):].nbytes)
    new_table = store.read_part_table(version, name)
    if parent is None or parent_record is None:
        return int(new_table.nbytes)
    old_rows = int(parent_record.get("rows", 0))
    if old_rows <= new_table.num_rows and new_table.slice(0, old_rows).equals(store.read_part_table(parent, name)):
        return int(new_table.slice(old_rows).nbytes)
    return int(new_table.nbytes)
