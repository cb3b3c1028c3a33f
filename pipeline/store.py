"""The versioned model store: versions as lists of shared parts, an atomic `CURRENT` pointer and a run lock.

Layout of a store directory::

    STORE/CURRENT                    the published version's directory name, switched last and atomically
    STORE/LOCK                       held by the one run writing to the store (pid, host, start time)
    STORE/.LOCK.guard                never removed: serialises removals of LOCK (a flock, see Store.lock)
    STORE/versions/v000007/          one immutable version: manifest.json (its parts), quarantine.parquet
    STORE/versions/.tmp-v000008-123/ a version being written (removed or replaced by the next run if a crash left it)
    STORE/segments/ab/ab12...npy     the bytes of parts, content-addressed, shared by versions (pipeline.parts)
    STORE/history/date=YYYY-MM-DD.parquet   the clean interactions of each consumed partition (string IDs)
    STORE/history/base-until=YYYY-MM-DD.parquet  the same, consolidated by each full retrain (a cache)
    STORE/drift/                     the append-only drift history (see pipeline.decision)

A version's manifest lists its parts (`parts`: tables, vocabularies, item tokens, every drift-reference array,
the replay reservoir when the objective replays, the quarantine, and its interactions addressed by user row:
the full retrain's base plus one segment per partition since). A part reuses the segments of the version it
was built on and adds only what changed (`pipeline.parts`). Stores written before parts existed hold every
file in the version directory (manifest key `files`); they are read as they are, and the next publish writes
parts (its first version copies everything once, and its interaction history from the string-ID files).

Publishing writes the partition's history, the new segments and the version under a temporary name, fsyncs
them, renames the version into place and only then switches `CURRENT`; a crash at any point leaves the previous
version current and readable, and nothing of a failed publish is left once the next run (or `gc`) has started.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accrete.pipeline import parts as parts_mod
from accrete.pipeline.atomic import fsync_dir, fsync_file, write_parquet_atomically, write_text_atomically
from accrete.pipeline.contract import HISTORY_SCHEMA, with_weight
from accrete.pipeline.errors import StoreError
from accrete.pipeline.faults import maybe_fail
from accrete.pipeline.manifest import SCHEMA_VERSION, Manifest
from accrete.pipeline.parts import SEGMENT_STAGING_PREFIX, SEGMENT_TRASH_PREFIX, SEGMENTS, PartRecord, Segments
from accrete.pipeline.reservoir import ReplayReservoir
from accrete.pipeline.vocabulary import Vocabulary

CURRENT = "CURRENT"
LOCK = "LOCK"
VERSIONS = "versions"
HISTORY = "history"
DRIFT = "drift"
MANIFEST = "manifest.json"
FORMAT = SCHEMA_VERSION
#: Name prefixes inside versions/: a version being written, and a version `accrete gc` is deleting.
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
DAMAGED_HINT = "`accrete verify` lists every problem"

TABLE_FILES = ("user_vectors", "item_vectors", "user_bias", "item_bias")
#: Part names: the tables above, these Arrow tables, `reference/<key>` per drift-reference array, the files,
#: and `history/base` + `history/date=YYYY-MM-DD` (interactions by user row).
VOCABULARY_PARTS = {"user_vocab": "user", "item_vocab": "item"}
ITEM_TOKENS = "item_tokens"
RESERVOIR = "reservoir"
QUARANTINE = "quarantine"
REFERENCE_PREFIX = "reference/"
HISTORY_PREFIX = "history/"
HISTORY_BASE = "history/base"
#: The objectives whose steps replay old interactions (the SGD ones); only their versions keep a reservoir.
REPLAYING_OBJECTIVES = ("rating", "retrieval", "auto")


def version_name(version: int) -> str:
    return f"v{version:06d}"


def history_part_name(date: dt.date) -> str:
    return f"{HISTORY_PREFIX}date={date.isoformat()}"


def replays(objective: str | None) -> bool:
    """Whether a version of this objective needs its replay reservoir (unknown: keep it)."""
    return objective is None or objective in REPLAYING_OBJECTIVES


@dataclass
class ModelState:
    """Everything one version holds: vocabularies, tables, item tokens, replay reservoir, drift reference.

    Tables are aligned with vocabulary rows (row 0 is the out-of-vocabulary row). `reference` holds named
    arrays (the drift reference window: interaction counts per row since the last full retrain, rating
    histogram; and any per-row state a step carries on): each is stored as its own part, whatever its name.
    """

    user_vocab: Vocabulary
    item_vocab: Vocabulary
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    item_tokens: pa.Table  # row int64, token string
    reservoir: ReplayReservoir
    reference: dict[str, np.ndarray]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def partitions(self) -> list[dt.date]:
        return [dt.date.fromisoformat(d) for d in self.manifest.get("partitions", [])]


def sha256_of_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def has_parts(manifest: Mapping[str, Any]) -> bool:
    """Whether a manifest lists parts (this layout) rather than files in its directory (stores before it)."""
    return isinstance(manifest.get("parts"), dict)


class Store:
    """A store directory. Reading needs no lock; every write happens inside `with store.lock(...)`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.segments = Segments(self.root)

    # ----- reading -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / CURRENT).exists()

    def current_version(self) -> int | None:
        pointer = self.root / CURRENT
        if not pointer.exists():
            return None
        text = pointer.read_text().strip()
        if not (text.startswith("v") and text[1:].isdigit()):
            raise StoreError(f"{pointer}: damaged pointer {text!r} (expected e.g. v000003)")
        version = int(text[1:])
        if not (self.root / VERSIONS / text / MANIFEST).exists():
            raise StoreError(f"{pointer}: points at {text}, which has no {MANIFEST}")
        return version

    def require_current(self) -> int:
        if not self.root.exists():
            raise StoreError(f"{self.root}: no such store directory")
        version = self.current_version()
        if version is None:
            raise StoreError(f"{self.root}: the store is empty; make the first version with `accrete retrain --as-of DATE`")
        return version

    def version_dir(self, version: int) -> Path:
        return self.root / VERSIONS / version_name(version)

    def versions(self) -> list[int]:
        """Published version numbers up to the current one (later directories are crash leftovers)."""
        current = self.current_version()
        if current is None:
            return []
        found = []
        for path in (self.root / VERSIONS).glob("v[0-9]*"):
            number = int(path.name[1:])
            if number <= current and (path / MANIFEST).exists():
                found.append(number)
        return sorted(found)

    def read_manifest(self, version: int | None = None) -> Manifest:
        """A published version's manifest (default: the current one), typed; the one reader of manifest.json."""
        version = self.require_current() if version is None else version
        path = self.version_dir(version) / MANIFEST
        if not path.exists() or version > self.require_current():
            raise StoreError(f"{self.root}: no published version {version}")
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"{path}: damaged manifest: {exc}") from None

    def manifest(self, version: int | None = None) -> dict[str, Any]:
        """`read_manifest` as the JSON document (for the step code that carries its keys along)."""
        return self.read_manifest(version).to_dict()

    def load(self, version: int | None = None, *, verify: bool = True) -> ModelState:
        """A version's full state; `verify` checks every part against the manifest's checksums."""
        version = self.require_current() if version is None else version
        manifest = self.manifest(version)
        if verify:
            self.verify_files(version, manifest)
        if not has_parts(manifest):
            return self._load_files(version, manifest)
        parts = manifest["parts"]
        arrays = {name: self.read_array(version, name, manifest) for name in TABLE_FILES}
        reference = {name[len(REFERENCE_PREFIX):]: self.read_array(version, name, manifest)
                     for name in parts if name.startswith(REFERENCE_PREFIX)}
        vocabularies = {name: Vocabulary.from_table(self._read_table(version, name, parts), entity,
                                                    source=self._where(version, name))
                        for name, entity in VOCABULARY_PARTS.items()}
        if RESERVOIR in parts:
            path = self.segments.path(parts[RESERVOIR]["segments"][0])
            reservoir = ReplayReservoir.load(path)
        else:  # an objective that never replays: the next step starts an empty one (the retrain fills it)
            settings = manifest.get("config") or {}
            reservoir = ReplayReservoir(int((settings.get("train") or {}).get("reservoir_capacity", 0)),
                                        int((settings.get("model") or {}).get("seed", 0)))
        return ModelState(user_vocab=vocabularies["user_vocab"], item_vocab=vocabularies["item_vocab"],
                          item_tokens=self._read_table(version, ITEM_TOKENS, parts).replace_schema_metadata(None),
                          reservoir=reservoir, reference=reference, manifest=manifest, **arrays)

    def _load_files(self, version: int, manifest: dict[str, Any]) -> ModelState:
        """A version of a store written before parts existed: every file in the version directory."""
        directory = self.version_dir(version)
        arrays = {}
        for name in TABLE_FILES:
            path = directory / f"{name}.npy"
            try:
                arrays[name] = np.load(path)
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: unreadable table: {exc}") from None
        with np.load(directory / "reference.npz") as reference:
            reference = {key: reference[key] for key in reference.files}
        return ModelState(
            user_vocab=Vocabulary.load(directory / "user_vocab.parquet", "user"),
            item_vocab=Vocabulary.load(directory / "item_vocab.parquet", "item"),
            item_tokens=pq.read_table(directory / "item_tokens.parquet"),
            reservoir=ReplayReservoir.load(directory / "reservoir.parquet"),
            reference=reference,
            manifest=manifest,
            **arrays,
        )

    def _where(self, version: int, name: str) -> str:
        return f"{self.version_dir(version)}: part {name}"

    def read_array(self, version: int, name: str, manifest: Mapping[str, Any] | None = None) -> np.ndarray:
        """One array of a version (`user_vectors`, `reference/item_counts`, ...), in either layout."""
        manifest = self.manifest(version) if manifest is None else manifest
        if not has_parts(manifest):
            if name.startswith(REFERENCE_PREFIX):
                with np.load(self.version_dir(version) / "reference.npz") as reference:
                    return reference[name[len(REFERENCE_PREFIX):]]
            path = self.version_dir(version) / f"{name}.npy"
            try:
                return np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: unreadable table ({exc})") from None
        record = manifest["parts"].get(name)
        if record is None:
            raise StoreError(f"{self.version_dir(version) / MANIFEST}: version {version} has no part {name}")
        array = parts_mod.read_array(self.segments, record, self._where(version, name))
        if array.dtype.str != record["dtype"]:
            raise StoreError(f"{self._where(version, name)}: dtype {array.dtype.str}, the manifest says {record['dtype']}")
        return array

    def _read_table(self, version: int, name: str, parts: Mapping[str, PartRecord]) -> pa.Table:
        if name not in parts:
            raise StoreError(f"{self.version_dir(version) / MANIFEST}: version {version} has no part {name}")
        return parts_mod.read_table(self.segments, parts[name], self._where(version, name))

    def read_part_table(self, version: int, name: str) -> pa.Table:
        """One Arrow-table part of a version (`user_vocab`, `item_tokens`, ...)."""
        return self._read_table(version, name, self.manifest(version)["parts"]).replace_schema_metadata(None)

    def read_interactions_part(self, version: int, name: str) -> pa.Table:
        """One interaction part of a version (`history/base`, `history/date=...`), memory-mapped."""
        return parts_mod.map_interactions(self.segments, self.manifest(version)["parts"][name], self._where(version, name))

    def part_segments(self, version: int, name: str) -> list[Path]:
        """The segment files that hold one part of a version, base first."""
        return [self.segments.path(key) for key in self.manifest(version)["parts"][name]["segments"]]

    def verify_files(self, version: int, manifest: dict[str, Any] | None = None) -> None:
        """Every part of the model (every file, in a store written before parts) the version's manifest lists is
        present with its recorded checksum: the cheap check a run makes of the version it builds on (the
        interaction history is checked by `pipeline.maintenance.verify_store`, which checks everything).

        Raises:
            StoreError: naming the first missing or damaged file.
        """
        manifest = self.manifest(version) if manifest is None else manifest
        directory = self.version_dir(version)
        if has_parts(manifest):
            for name, record in manifest["parts"].items():
                if record.get("kind") == "interactions":
                    continue
                for problem in self.part_problems(version, name, record, check_content=False):
                    raise StoreError(f"{problem}, version {version} is damaged ({DAMAGED_HINT})")
            return
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise StoreError(f"{directory / MANIFEST}: damaged manifest: no file checksums ({DAMAGED_HINT})")
        for name, digest in files.items():
            path = directory / name
            if not path.is_file():
                raise StoreError(f"{path}: missing from version {version} ({DAMAGED_HINT})")
            if _file_sha256(path) != digest:
                raise StoreError(f"{path}: checksum mismatch, version {version} is damaged ({DAMAGED_HINT})")

    def part_problems(self, version: int, name: str, record: PartRecord, *, check_content: bool = True,
                      checked: dict[str, str | None] | None = None) -> list[str]:
        """What is wrong with one part of a version ("PATH: what", each): a missing or damaged segment, and
        with `check_content` the content rebuilt from its segments against the manifest's digest. `checked`
        remembers each segment's verdict (a segment shared by many versions is hashed once; a damaged one is
        named for every version that uses it)."""
        where = f"part {name} of version {version}"
        if "path" in record:  # a file in the version directory (the quarantine)
            path = self.version_dir(version) / record["path"]
            if not path.is_file():
                return [f"{path}: missing"]
            return [] if _file_sha256(path) == record["sha256"] else [f"{path}: checksum mismatch ({where})"]
        problems = []
        for key in record.get("segments", []):
            if checked is not None and key in checked:
                verdict = checked[key]
            else:
                try:
                    self.segments.check(key, "{where}")
                    verdict = None
                except StoreError as exc:
                    verdict = str(exc)
                if checked is not None:
                    checked[key] = verdict
            if verdict is not None:
                problems.append(verdict.replace("{where}", where))
        if problems or not check_content or record.get("kind") not in ("array", "table"):
            return problems
        try:
            if record["kind"] == "array":
                digest = parts_mod.array_digest(parts_mod.read_array(self.segments, record, self._where(version, name)))
            else:
                digest = parts_mod.table_digest(
                    parts_mod.read_table(self.segments, record, self._where(version, name)).replace_schema_metadata(None))
        except StoreError as exc:
            return [str(exc)]
        if digest != record["sha256"]:
            return [f"{self._where(version, name)}: its segments rebuild content whose checksum differs from the manifest's"]
        return []

    # ----- history of consumed partitions ----------------------------------------------------------
    def history_path(self, date: dt.date) -> Path:
        return self.root / HISTORY / f"date={date.isoformat()}.parquet"

    def write_history(self, date: dt.date, interactions: pa.Table) -> None:
        """The clean interactions of a consumed partition; rewritten identically if a crashed run left one.
        (Steps pass their partition to `publish`, which writes it inside the commit.)"""
        write_parquet_atomically(_history_columns(interactions), self.history_path(date))

    def write_history_base(self, dates: list[dt.date], written: Mapping[dt.date, pa.Table] | None = None) -> Path:
        """One consolidated file of the given partitions' history (a full retrain's publish writes it), so
        that `read_history` reads one file plus the few partitions since instead of thousands of small files.

        `written` maps dates to tables in memory (the partitions being published): they are taken from memory
        instead of being read back (at a year of daily partitions, reading them back cost a retrain about 8%
        of its time and held a second copy of the history in memory)."""
        table = self._history_table(dates, written)
        table = table.replace_schema_metadata({b"accrete.dates": json.dumps([d.isoformat() for d in sorted(dates)]).encode()})
        return write_parquet_atomically(table, self._history_base_path(max(dates)))

    def _history_base_path(self, until: dt.date) -> Path:
        return self.root / HISTORY / f"base-until={until.isoformat()}.parquet"

    def _history_table(self, dates: list[dt.date], written: Mapping[dt.date, pa.Table] | None = None) -> pa.Table:
        written = written or {}
        dates = sorted(dates)
        tables = [_history_columns(written[d]) if d in written else self._read_history_file(d) for d in dates]
        return pa.concat_tables(tables) if tables else self._read_history_files([])

    def read_history(self, dates: list[dt.date]) -> pa.Table:
        """The consumed interactions of the given partitions (user_id, item_id, timestamp): the newest
        consolidated base whose partitions are all among `dates`, plus the per-partition files after it.
        This reads all of them; `user_interactions` reads only the users asked for."""
        wanted = set(dates)
        for base in sorted((self.root / HISTORY).glob("base-until=*.parquet"), reverse=True):
            try:
                metadata = pq.read_schema(base).metadata or {}
                covered = {dt.date.fromisoformat(d) for d in json.loads(metadata[b"accrete.dates"])}
            except (OSError, pa.ArrowInvalid, KeyError, ValueError):
                continue  # a damaged base is only a cache: fall back to the per-partition files
            if covered <= wanted:
                try:
                    base_table = with_weight(pq.read_table(base).replace_schema_metadata(None))
                except (OSError, pa.ArrowInvalid):
                    continue
                rest = self._read_history_files(sorted(wanted - covered))
                return pa.concat_tables([base_table, rest.cast(base_table.schema)])
        return self._read_history_files(sorted(wanted))

    def _read_history_files(self, dates: list[dt.date]) -> pa.Table:
        tables = [self._read_history_file(date) for date in dates]
        if not tables:
            return HISTORY_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def _read_history_file(self, date: dt.date) -> pa.Table:
        path = self.history_path(date)
        try:
            return with_weight(pq.read_table(path))  # files written before `weight` existed: weight 1
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{path}: history of a consumed partition is unreadable: {exc}") from None

    # ----- interactions addressed by row -----------------------------------------------------------
    def history_parts(self, version: int | None = None) -> dict[str, PartRecord]:
        """The interaction parts of a version: its full retrain's base, then one per partition since."""
        manifest = self.manifest(version)
        return {name: record for name, record in (manifest.get("parts") or {}).items()
                if record.get("kind") == "interactions"}

    def consumed_pairs(self, state: ModelState, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, item rows) of the consumed interactions of the given users in `state`'s version (rows of its
        vocabularies): read by row from the history parts (those users' pages only), or, on a store written before
        them, from the whole consumed history, filtered."""
        if has_parts(state.manifest):
            rows = self.user_interactions(np.asarray(user_rows, np.int64), version=state.version)
            return (rows["user_row"].to_numpy().astype(np.int64, copy=False),
                    rows["item_row"].to_numpy().astype(np.int64, copy=False))
        history = self.read_history(state.partitions)
        users = state.user_vocab.lookup(history["user_id"])
        mine = np.isin(users, user_rows)
        return users[mine], state.item_vocab.lookup(history["item_id"])[mine]

    def user_interactions(self, user_rows: Any, *, version: int | None = None, upto: dt.date | None = None) -> pa.Table:
        """The consumed interactions of the given user rows (in `version`'s vocabulary, default CURRENT),
        without reading the rest of history: columns `user_row`, `item_row` (int64), `timestamp` and any
        other history column, sorted by user row (then time within a partition).

        Each interaction part is memory-mapped and the users are found by binary search on its sorted user
        column, so the pages read follow the users asked for, not the history. `upto` keeps the partitions
        dated up to and including it.

        Raises:
            StoreError: a store written before parts existed and not yet stepped (its history is by string ID:
                use `read_history`), or an unreadable segment.
        """
        rows = np.unique(np.asarray(user_rows, dtype=np.int64))
        return self._interactions(rows, version, upto, by="user")

    def item_interactions(self, item_rows: Any, *, version: int | None = None, upto: dt.date | None = None) -> pa.Table:
        """As `user_interactions`, for item rows. Interactions are sorted by user, so this scans each part's
        item column (memory-mapped, vectorized): O(history) in one column rather than every column."""
        rows = np.unique(np.asarray(item_rows, dtype=np.int64))
        return self._interactions(rows, version, upto, by="item")

    def _interactions(self, rows: np.ndarray, version: int | None, upto: dt.date | None, by: str) -> pa.Table:
        version = self.require_current() if version is None else version
        manifest = self.manifest(version)
        if not has_parts(manifest):
            raise StoreError(f"{self.version_dir(version)}: written before row-addressed history; the next step "
                             f"or retrain adds it (read_history reads this store's history)")
        consumed = sorted(dt.date.fromisoformat(d) for d in manifest.get("partitions", []))
        pieces = []
        for name, record in manifest["parts"].items():
            if record.get("kind") != "interactions":
                continue
            if upto is not None and "date" in record and dt.date.fromisoformat(record["date"]) > upto:
                continue
            table = parts_mod.map_interactions(self.segments, record, self._where(version, name))
            if by == "user":
                picked = table.take(pa.array(parts_mod.rows_of_users(table, rows)))
            else:
                picked = table.filter(pa.array(np.isin(table["item_row"].to_numpy(), rows)))
            if upto is not None and "until" in record and dt.date.fromisoformat(record["until"]) > upto:
                later = [d for d in consumed if d > upto]
                if later:
                    picked = picked.filter(pc.less(picked["timestamp"], _epoch_seconds(later[0])))
            pieces.append(picked)
        if not pieces:
            return _ROW_HISTORY_EMPTY
        table = pa.concat_tables(pieces, promote_options="permissive") if len(pieces) > 1 else pieces[0]
        table = table.set_column(0, "user_row", table["user_row"].cast(pa.int64()))
        table = table.set_column(1, "item_row", table["item_row"].cast(pa.int64()))
        if len(pieces) > 1 and by == "user":
            order = np.argsort(table["user_row"].to_numpy(), kind="stable")
            table = table.take(pa.array(order))
        return table.combine_chunks()

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Exclusive write access. A second run fails fast; a lock whose process is gone is cleared.

        The lock file is created with O_EXCL, so at most one run can create it. Removing a lock (our
        own on release, or a stale one) happens only under the store's breaker guard (see
        `_breaker_guard`) and only after re-reading the lock there, so two runs that both find a
        stale lock cannot both clear it, nor can one clear the fresh lock the other just took.
        """
        path = self.root / LOCK
        record = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": command}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for _ in range(3):
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    with _breaker_guard(self.root):
                        seen = _observe_lock(path)
                        if seen is None:
                            continue  # released in the meantime: try again
                        if _lock_is_stale(seen):
                            with contextlib.suppress(FileNotFoundError):
                                path.unlink()
                            continue
                    raise StoreError(_held_message(self.root, path, seen)) from None
                break
            else:
                raise StoreError(f"{path}: could not take the store lock (it keeps changing hands); try again")
        except (FileExistsError, NotADirectoryError):
            raise StoreError(f"{self.root}: not a directory (a store is a directory; is this the right path?)") from None
        except OSError as exc:  # a read-only file system or directory, a full disk: nothing was written
            raise StoreError(f"{path}: cannot take the store lock: {exc.strerror or exc} (is the store "
                             f"read-only?)") from None
        ours = _file_identity(os.fstat(fd))
        try:
            _write_lock_record(fd, record)
            yield
        finally:
            with _breaker_guard(self.root), contextlib.suppress(FileNotFoundError):
                # Inode numbers are reused, so the record must match too (empty: our write failed).
                seen = _observe_lock(path)
                if seen is not None and _file_identity(os.stat(path)) == ours and seen.holder in ({}, record):
                    path.unlink()

    def publish(self, state: ModelState, manifest: dict[str, Any], *, quarantine: pa.Table | None = None,
                history: Mapping[dt.date, pa.Table] | None = None) -> int:
        """Write `state` as version manifest["version"], with `history` (the clean interactions of the
        partitions it consumes for the first time), then switch CURRENT to it. Returns the version.

        Steps (each a fault-injection point for crash tests): the partitions' history and the new segments,
        the version under a temporary name, fsync, rename into place, switch the pointer. Leftovers of a
        crashed run are removed first. Until CURRENT switches, a failure (an exception, Ctrl-C, a full disk)
        removes everything this publish wrote; after a SIGKILL, the next publish or `gc` does.
        """
        version = int(manifest["version"])
        current = self.current_version()
        if current is not None and version != current + 1:
            raise StoreError(f"{self.root}: cannot publish version {version} on top of current {current}")
        versions_dir = self.root / VERSIONS
        versions_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers(current or 0)
        tmp = versions_dir / f"{STAGING_PREFIX}{version_name(version)}-{os.getpid()}"
        final = self.version_dir(version)
        consumed_now = set(self.manifest(current).get("partitions", [])) if current is not None else set()
        history = dict(history or {})
        written: list[Path] = []
        segments = self.segments = Segments(self.root)
        tmp.mkdir()
        try:
            self._write_version(tmp, final, state, manifest, quarantine, history, written)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed before CURRENT switched: leave no half-written
            # version, no history of a partition no version consumed, no segment no version uses.
            # (A SIGKILL skips this; the next publish removes the leftovers.)
            if self.current_version() != version:
                for path in (tmp, final):
                    shutil.rmtree(path, ignore_errors=True)
                for path in written:
                    if not (path.name.startswith("date=") and path.name[5:15] in consumed_now):
                        path.unlink(missing_ok=True)
                segments.remove_created()
            raise
        return version

    def _write_version(self, tmp: Path, final: Path, state: ModelState, manifest: dict[str, Any],
                       quarantine: pa.Table | None, history: dict[dt.date, pa.Table], written: list[Path]) -> None:
        version = int(manifest["version"])
        for date in sorted(history):
            written.append(self.history_path(date))
            self.write_history(date, history[date])
        maybe_fail("publish:history-written")
        parts = self._write_parts(state, manifest, history, written)
        if quarantine is not None and quarantine.num_rows:
            pq.write_table(quarantine, tmp / "quarantine.parquet")
            parts[QUARANTINE] = {"kind": "file", "path": "quarantine.parquet",
                                 "sha256": _file_sha256(tmp / "quarantine.parquet")}
        maybe_fail("publish:files-written")
        manifest = {key: value for key, value in manifest.items() if key != "files"}
        manifest = {**manifest, "format": FORMAT, "parts": parts}
        typed = Manifest.from_dict(manifest)  # the writer checks what every reader relies on
        # Compact JSON: a manifest is written per version, and its partition list grows with the history.
        (tmp / MANIFEST).write_text(json.dumps(typed.to_dict(), separators=(",", ":"), sort_keys=True,
                                               default=_json_default))
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        maybe_fail("publish:before-rename")
        os.rename(tmp, final)
        fsync_dir(final.parent)
        maybe_fail("publish:before-pointer")
        write_text_atomically(self.root / CURRENT, version_name(version) + "\n")
        state.manifest = manifest
        maybe_fail("publish:after-pointer")

    def _write_parts(self, state: ModelState, manifest: dict[str, Any], history: dict[dt.date, pa.Table],
                     written: list[Path]) -> dict[str, PartRecord]:
        """Every part of the new version, sharing the segments of the version it was built on (its parent)."""
        segments = self.segments
        parent = self._parent_parts(manifest)

        def previous_array(name: str) -> tuple[PartRecord, np.ndarray] | None:
            if parent is None or name not in parent[1] or parent[1][name].get("kind") != "array":
                return None
            return parent[1][name], self.read_array(parent[0], name)

        previous_tables: dict[str, tuple[PartRecord, pa.Table] | None] = {}

        def previous_table(name: str) -> tuple[PartRecord, pa.Table] | None:
            if name not in previous_tables:
                found = parent is not None and name in parent[1] and parent[1][name].get("kind") == "table"
                previous_tables[name] = (parent[1][name], self._read_table(parent[0], name, parent[1])
                                         .replace_schema_metadata(None)) if parent is not None and found else None
            return previous_tables[name]

        parts: dict[str, PartRecord] = {}
        arrays = {name: getattr(state, name) for name in TABLE_FILES}
        arrays.update({REFERENCE_PREFIX + key: value for key, value in state.reference.items()})
        for name, array in arrays.items():
            parts[name] = parts_mod.write_array(segments, np.asarray(array), previous_array(name))
        rows_kept = True  # every row of the parent's vocabularies is still the same ID's (no compaction)
        for name, entity in VOCABULARY_PARTS.items():
            table = (state.user_vocab if entity == "user" else state.item_vocab).to_table().replace_schema_metadata(None)
            previous = previous_table(name)
            rows_kept &= (previous is not None and previous[1].num_rows <= table.num_rows
                          and table.slice(0, previous[1].num_rows).equals(previous[1]))
            parts[name] = parts_mod.write_table(segments, table, previous)
        parts[ITEM_TOKENS] = parts_mod.write_table(segments, state.item_tokens.replace_schema_metadata(None),
                                                   previous_table(ITEM_TOKENS))
        if replays(manifest.get("objective")):
            table = state.reservoir.to_table()
            parts[RESERVOIR] = parts_mod.write_file(segments, lambda handle: pq.write_table(table, handle), ".parquet")
        parts.update(self._write_history_parts(state, manifest, history, parent if rows_kept else None, written))
        return parts

    def _parent_parts(self, manifest: Mapping[str, Any]) -> tuple[int, dict[str, PartRecord]] | None:
        """The published version this one was built on, when it has parts to share."""
        parent = manifest.get("parent")
        if parent is None or int(parent) not in self.versions():
            return None
        parent_manifest = self.manifest(int(parent))
        return (int(parent), parent_manifest["parts"]) if has_parts(parent_manifest) else None

    def _write_history_parts(self, state: ModelState, manifest: Mapping[str, Any], history: dict[dt.date, pa.Table],
                             parent: tuple[int, dict[str, PartRecord]] | None,
                             written: list[Path]) -> dict[str, PartRecord]:
        """The interactions by row: the parent's parts plus one segment per new partition. A base of every
        consumed partition, in the new vocabulary's rows, is written instead when there is nothing to build on
        (the first version, a store written before parts, a compaction that renumbered rows: `parent` is then
        None), and by a full retrain once the partition segments since the base outweigh it or outnumber
        `MAX_CHAIN` (the retrain reads all of history anyway; a step never does)."""
        consumed = sorted(dt.date.fromisoformat(d) for d in manifest.get("partitions", []))
        inherited = {name: record for name, record in (parent[1] if parent else {}).items()
                     if record.get("kind") == "interactions"}
        since_base = [record for record in inherited.values() if "date" in record]
        base_rows = sum(int(record["rows"]) for record in inherited.values() if "date" not in record)
        heavy = (len(since_base) + len(history) > parts_mod.MAX_CHAIN
                 or sum(int(record["rows"]) for record in since_base) > parts_mod.CHAIN_WEIGHT * base_rows)
        if not inherited or (manifest.get("kind") == "full_retrain" and heavy):
            if not consumed:
                return {}
            table = self._history_table(consumed, history)
            # The string-ID consolidation `read_history` uses, kept in step with the base (a cache; gc removes
            # superseded ones).
            base_path = self._history_base_path(consumed[-1])
            if not base_path.exists():
                written.append(base_path)
            self.write_history_base(consumed, history)
            maybe_fail("publish:history-base-written")
            return {HISTORY_BASE: parts_mod.write_interactions(
                self.segments, _by_row(table, state.user_vocab, state.item_vocab),
                first=consumed[0].isoformat(), until=consumed[-1].isoformat())}
        parts = {name: record for name, record in inherited.items()
                 if "date" not in record or dt.date.fromisoformat(record["date"]) not in history}
        for date in sorted(history):
            parts[history_part_name(date)] = parts_mod.write_interactions(
                self.segments, _by_row(_history_columns(history[date]), state.user_vocab, state.item_vocab),
                date=date.isoformat())
        return parts

    def leftovers(self, current: int | None = None) -> list[Path]:
        """What crashed or killed runs left behind: under versions/, a version being written, one written but
        never made current, one `accrete gc` was deleting; under segments/, a segment being written or gc's
        trash; under history/, the history of a partition the current version did not consume (a failed step's)
        and unfinished atomic writes."""
        current = self.current_version() if current is None else current
        directory = self.root / VERSIONS
        found = []
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                unpublished = path.name.startswith("v") and path.name[1:].isdigit() and int(path.name[1:]) > (current or 0)
                if path.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or unpublished:
                    found.append(path)
        segments = self.root / SEGMENTS
        if segments.is_dir():
            found += sorted(p for p in segments.iterdir() if p.name.startswith((SEGMENT_STAGING_PREFIX, SEGMENT_TRASH_PREFIX)))
        history = self.root / HISTORY
        try:
            consumed: set[str] | None = set(self.manifest(current).get("partitions", [])) if current else set()
        except StoreError:
            consumed = None  # CURRENT's manifest is damaged (verify says so): no history file can be judged
        if history.is_dir() and consumed is not None:
            found += sorted(p for p in history.iterdir()
                            if (p.name.startswith("date=") and p.name.endswith(".parquet") and p.name[5:15] not in consumed)
                            or (p.name.startswith(".") and p.name.endswith(".tmp")))
        return found

    def _remove_leftovers(self, current: int) -> None:
        """Remove the leftovers of crashed runs (see `leftovers`); only a run holding the lock calls it."""
        for path in self.leftovers(current):
            remove_path(path)


# ----- file helpers ---------------------------------------------------------------------------------
def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _history_columns(interactions: pa.Table) -> pa.Table:
    return with_weight(interactions).select(HISTORY_SCHEMA.names)


def _by_row(history: pa.Table, user_vocab: Vocabulary, item_vocab: Vocabulary) -> pa.Table:
    """String-ID history as rows of the given vocabularies (`user_row`, `item_row`, then every other history
    column); interactions of IDs the vocabularies no longer hold (dropped by a compaction) are left out."""
    users = user_vocab.lookup(history["user_id"])
    items = item_vocab.lookup(history["item_id"])
    keep = (users > 0) & (items > 0)
    row_type = np.int32 if max(len(user_vocab), len(item_vocab)) < 2**31 else np.int64
    columns = {"user_row": pa.array(users[keep].astype(row_type)), "item_row": pa.array(items[keep].astype(row_type))}
    mask = pa.array(keep)
    for name in history.column_names:
        if name not in ("user_id", "item_id"):
            columns[name] = history[name].filter(mask)
    return pa.table(columns)


def _epoch_seconds(date: dt.date) -> int:
    return int(np.datetime64(date, "s").astype(np.int64))


_ROW_HISTORY_EMPTY = pa.table({"user_row": pa.array([], pa.int64()), "item_row": pa.array([], pa.int64()),
                               "timestamp": pa.array([], pa.int64())})


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _file_sha256(path: Path) -> str:
    return parts_mod.file_sha256(path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array))


# ----- the run lock ---------------------------------------------------------------------------------
LOCK_GUARD = f".{LOCK}.guard"
# A lock file is empty between its creation and the write of its record; a run that died in between
# leaves it empty forever. Such a lock is cleared only once it is older than this.
UNREADABLE_LOCK_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class _SeenLock:
    """One lock file as read at one moment: its record ({} when empty or unreadable) and its age."""

    holder: dict[str, Any]
    age_seconds: float


def _file_identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


@contextlib.contextmanager
def _breaker_guard(root: Path) -> Iterator[None]:
    """Serialise every removal of the lock file (release and stale-lock clearing) within a store.

    Without it, two runs can both judge the same dead lock stale; the first removes it and takes the
    lock, and the second then removes that fresh lock. The guard is a `flock` on a file that is never
    removed, so the kernel drops it when its process dies and it can never go stale itself. It is held
    for a few system calls only.
    """
    fd = os.open(root / LOCK_GUARD, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _write_lock_record(fd: int, record: dict[str, Any]) -> None:
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _observe_lock(path: Path) -> _SeenLock | None:
    """The lock's record and age, or None when there is no lock file."""
    try:
        with open(path, "rb") as handle:
            age = time.time() - os.fstat(handle.fileno()).st_mtime
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return _SeenLock({}, 0.0)  # unreadable for now (e.g. permissions): treat as fresh
    try:
        holder = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        holder = {}
    return _SeenLock(holder if isinstance(holder, dict) else {}, age)


def _held_message(root: Path, path: Path, seen: _SeenLock) -> str:
    """Why the lock cannot be taken, in one line: who holds it, or, when its record cannot be read (a run
    between creating and writing it, or a damaged file), what happens to it and what the user can do."""
    holder = seen.holder
    if isinstance(holder.get("pid"), int) and not isinstance(holder.get("pid"), bool):
        return (f"{root}: locked by another run (pid {holder['pid']} on {holder.get('host', 'an unknown host')}, "
                f"since {holder.get('since', 'an unknown time')}: {holder.get('command', 'unknown command')}); "
                f"wait for it to finish")
    wait = max(0, math.ceil(UNREADABLE_LOCK_GRACE_SECONDS - seen.age_seconds))
    return (f"{path}: locked by another run, but the lock names no process (unreadable or damaged, "
            f"{seen.age_seconds:.0f} s old); "
            f"a run may be starting: if none is, it is cleared in {wait} s, or delete {path}")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (guards against a reused pid), or None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _lock_is_stale(seen: _SeenLock) -> bool:
    """Whether a lock can be cleared: its process is gone (or its pid now belongs to another process,
    by the recorded start time), or it holds no readable pid and is older than the grace period.
    A live process on this host, or a readable lock from another host, is never stale."""
    holder = seen.holder
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return seen.age_seconds > UNREADABLE_LOCK_GRACE_SECONDS
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by another user
    start = holder.get("start")
    return start is not None and _process_start(pid) not in (None, start)
