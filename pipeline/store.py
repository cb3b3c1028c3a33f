"""The versioned model store: immutable version directories, an atomic `CURRENT` pointer and a run lock.

Layout of a store directory::

    STORE/CURRENT                    the published version's directory name, switched last and atomically
    STORE/LOCK                       held by the one run writing to the store (pid, host, start time)
    STORE/.LOCK.guard                never removed: serialises removals of LOCK (a flock, see Store.lock)
    STORE/versions/v000007/          one immutable version: manifest.json, vocabularies, tables, reservoir...
    STORE/versions/.tmp-v000008-123/ a version being written (removed or replaced by the next run if a crash left it)
    STORE/history/date=YYYY-MM-DD.parquet   the clean interactions of each consumed partition (seen items)
    STORE/history/base-until=YYYY-MM-DD.parquet  the same, consolidated by each full retrain (a cache)
    STORE/drift/                     the append-only drift history (see pipeline.decision)

Publishing writes a version under a temporary name, fsyncs it, renames it into place and only then
switches `CURRENT`; a crash at any point leaves the previous version current and readable.
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
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline.atomic import fsync_dir, fsync_file, write_parquet_atomically, write_text_atomically
from accrete.pipeline.contract import HISTORY_SCHEMA
from accrete.pipeline.errors import StoreError
from accrete.pipeline.faults import maybe_fail
from accrete.pipeline.manifest import SCHEMA_VERSION, Manifest
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


def version_name(version: int) -> str:
    return f"v{version:06d}"


@dataclass
class ModelState:
    """Everything one version holds: vocabularies, tables, item tokens, replay reservoir, drift reference.

    Tables are aligned with vocabulary rows (row 0 is the out-of-vocabulary row). `reference` holds the
    drift reference window (interaction counts per row since the last full retrain, rating histogram).
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


class Store:
    """A store directory. Reading needs no lock; every write happens inside `with store.lock(...)`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

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
        """A version's full state; `verify` checks every file against the manifest's checksums."""
        version = self.require_current() if version is None else version
        manifest = self.manifest(version)
        directory = self.version_dir(version)
        if verify:
            self.verify_files(version, manifest)
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

    def verify_files(self, version: int, manifest: dict[str, Any] | None = None) -> None:
        """Every file the version's manifest lists is present with its recorded checksum (the cheap
        check a run makes of the version it builds on; `pipeline.maintenance.verify_store` checks all).

        Raises:
            StoreError: naming the first missing or damaged file.
        """
        manifest = self.manifest(version) if manifest is None else manifest
        directory = self.version_dir(version)
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise StoreError(f"{directory / MANIFEST}: damaged manifest: no file checksums ({DAMAGED_HINT})")
        for name, digest in files.items():
            path = directory / name
            if not path.is_file():
                raise StoreError(f"{path}: missing from version {version} ({DAMAGED_HINT})")
            if _file_sha256(path) != digest:
                raise StoreError(f"{path}: checksum mismatch, version {version} is damaged ({DAMAGED_HINT})")

    # ----- history of consumed partitions ----------------------------------------------------------
    def history_path(self, date: dt.date) -> Path:
        return self.root / HISTORY / f"date={date.isoformat()}.parquet"

    def write_history(self, date: dt.date, interactions: pa.Table) -> None:
        """The clean interactions of a consumed partition; rewritten identically if a crashed run left one."""
        write_parquet_atomically(_history_columns(interactions), self.history_path(date))

    def write_history_base(self, dates: list[dt.date], written: dict[dt.date, pa.Table] | None = None) -> None:
        """One consolidated file of the given partitions' history (a full retrain writes it), so that
        later steps read one file plus the few partitions since instead of thousands of small files.

        `written` maps dates to the tables this run has just passed to `write_history`: they are taken
        from memory instead of being read back (at a year of daily partitions, reading them back cost a
        retrain about 8% of its time and held a second copy of the history in memory)."""
        dates = sorted(dates)
        written = written or {}
        tables = [_history_columns(written[d]) if d in written else self._read_history_file(d) for d in dates]
        table = pa.concat_tables(tables) if tables else self._read_history_files([])
        table = table.replace_schema_metadata({b"accrete.dates": json.dumps([d.isoformat() for d in dates]).encode()})
        write_parquet_atomically(table, self.root / HISTORY / f"base-until={dates[-1].isoformat()}.parquet")

    def read_history(self, dates: list[dt.date]) -> pa.Table:
        """The consumed interactions of the given partitions (user_id, item_id, timestamp): the newest
        consolidated base whose partitions are all among `dates`, plus the per-partition files after it."""
        wanted = set(dates)
        for base in sorted((self.root / HISTORY).glob("base-until=*.parquet"), reverse=True):
            try:
                metadata = pq.read_schema(base).metadata or {}
                covered = {dt.date.fromisoformat(d) for d in json.loads(metadata[b"accrete.dates"])}
            except (OSError, pa.ArrowInvalid, KeyError, ValueError):
                continue  # a damaged base is only a cache: fall back to the per-partition files
            if covered <= wanted:
                try:
                    base_table = pq.read_table(base).replace_schema_metadata(None)
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
            return pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{path}: history of a consumed partition is unreadable: {exc}") from None

    # ----- writing -------------------------------------------------------------------------------
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

    def publish(self, state: ModelState, manifest: dict[str, Any], *, quarantine: pa.Table | None = None) -> int:
        """Write `state` as version manifest["version"], then switch CURRENT to it. Returns the version.

        Steps (each a fault-injection point for crash tests): write under a temporary name and fsync,
        rename into place, switch the pointer. Leftovers of a crashed run are removed first.
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
        tmp.mkdir()
        try:
            self._write_version(tmp, final, state, manifest, quarantine)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed before CURRENT switched: leave no half-written
            # version behind. (A SIGKILL skips this; the next publish removes the leftovers.)
            if self.current_version() != version:
                for path in (tmp, final):
                    shutil.rmtree(path, ignore_errors=True)
            raise
        return version

    def _write_version(self, tmp: Path, final: Path, state: ModelState, manifest: dict[str, Any],
                       quarantine: pa.Table | None) -> None:
        version = int(manifest["version"])
        for name in TABLE_FILES:
            _save_npy(tmp / f"{name}.npy", getattr(state, name))
        state.user_vocab.save(tmp / "user_vocab.parquet")
        state.item_vocab.save(tmp / "item_vocab.parquet")
        pq.write_table(state.item_tokens, tmp / "item_tokens.parquet")
        state.reservoir.save(tmp / "reservoir.parquet")
        np.savez(tmp / "reference.npz", **state.reference)  # type: ignore[arg-type]  # numpy stubs type **kwds as allow_pickle
        if quarantine is not None and quarantine.num_rows:
            pq.write_table(quarantine, tmp / "quarantine.parquet")
        maybe_fail("publish:files-written")
        manifest = {**manifest, "format": FORMAT,
                    "files": {p.name: _file_sha256(p) for p in sorted(tmp.iterdir())}}
        typed = Manifest.from_dict(manifest)  # the writer checks what every reader relies on
        (tmp / MANIFEST).write_text(json.dumps(typed.to_dict(), indent=2, sort_keys=True, default=_json_default))
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

    def leftovers(self, current: int | None = None) -> list[Path]:
        """Directories under versions/ that a crashed or killed run left behind: a version being
        written, one written but never made current, one `accrete gc` was deleting."""
        current = self.current_version() if current is None else current
        directory = self.root / VERSIONS
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.iterdir()):
            unpublished = path.name.startswith("v") and path.name[1:].isdigit() and int(path.name[1:]) > (current or 0)
            if path.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) or unpublished:
                found.append(path)
        return found

    def _remove_leftovers(self, current: int) -> None:
        """Remove the leftovers of crashed runs (see `leftovers`); only a run holding the lock calls it."""
        for path in self.leftovers(current):
            shutil.rmtree(path)


# ----- file helpers ---------------------------------------------------------------------------------
def _history_columns(interactions: pa.Table) -> pa.Table:
    return interactions.select(HISTORY_SCHEMA.names)


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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
