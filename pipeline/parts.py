"""A version's parts and the immutable segments that hold their bytes, shared between versions.

A version is a list of parts (its manifest's `parts`: name -> record). A part is one array (a table of
vectors, a per-row scalar, a drift-reference array), one Arrow table (a vocabulary, the item tokens), one
file (the replay reservoir; the quarantine, kept in the version directory) or the interactions of some partitions addressed by user row.
Its bytes live in segments: files under `STORE/segments/`, named by the SHA-256 of their bytes, never
changed once written. A part record lists its segments in order:

* array: a base (`.npy`) followed by patches (`.npz`: the rows that changed since the previous segment and
  their new values, and the rows appended). A nightly step moves the rows of the active users (scattered, so
  hashing fixed row blocks would copy nearly every block), the time-aware term of the items that had
  interactions, and appends rows: a patch holds exactly those rows. Unchanged parts reuse the parent's list.
* table: a base (`.parquet`) followed by appended tails (vocabularies and item tokens only grow within a
  generation; a compaction or any other change of the prefix writes a new base).
* interactions: one Arrow IPC file (uncompressed, memory-mapped on reading), pairs sorted by user row.
* file: one segment holding the whole file.

A chain is consolidated into a fresh base when its patches would outweigh `CHAIN_WEIGHT` full copies or grow
longer than `MAX_CHAIN`: loading then reads at most about three full copies, and writing costs, amortized, at
most about 1.5 times the bytes that changed. Writing, verifying, exporting and garbage collection all read
the part records; nothing else names a segment.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline.atomic import fsync_dir
from accrete.pipeline.errors import StoreError

SEGMENTS = "segments"
#: Name prefixes inside segments/: a segment being written, and segments `accrete gc` is deleting.
SEGMENT_STAGING_PREFIX = ".tmp-"
SEGMENT_TRASH_PREFIX = ".trash-"
#: A patch larger than this fraction of a full copy is written as a full copy (a full retrain moves every row;
#: a patch about as large as the table only lengthens the chain).
PATCH_FRACTION = 0.9
#: A chain whose patches together would outweigh its base this many times over is consolidated. A chain is
#: rewritten once its patches reach W full copies, so writing costs at most (1 + 1/W) x the changed bytes,
#: amortized, and loading reads at most (1 + W) copies: W = 2 keeps writes within 1.5x (measured on the
#: synthetic year, where 63-77% of the users move each night, W = 1 wrote the user table whole every night).
CHAIN_WEIGHT = 2.0
#: ... and so is a chain this long (a load opens every segment of a chain).
MAX_CHAIN = 32

PartRecord = dict[str, Any]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """The content of an array (dtype, shape and bytes), whatever segments hold it."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
    digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def table_digest(table: pa.Table) -> str:
    """The content of a table (column names, types, values, nulls), whatever its chunking or segments."""
    digest = hashlib.sha256(str(table.schema.remove_metadata()).encode())
    for column in table.columns:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_dictionary(array.type):
            array = array.cast(array.type.value_type)
        digest.update(np.asarray(array.is_valid().to_numpy(zero_copy_only=False), np.uint8).tobytes())
        if pa.types.is_string(array.type) or pa.types.is_binary(array.type):
            filled = array.fill_null("" if pa.types.is_string(array.type) else b"")
            offsets = np.frombuffer(filled.buffers()[1], np.int32)[filled.offset:filled.offset + len(filled) + 1]
            digest.update((offsets - offsets[0]).tobytes())
            data = filled.buffers()[2]
            if data is not None and len(filled):
                digest.update(memoryview(data)[int(offsets[0]):int(offsets[-1])])
        else:
            values = array.fill_null(pa.scalar(0, array.type)) if array.null_count else array
            digest.update(np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).tobytes())
    return digest.hexdigest()


@dataclass
class Segments:
    """The store's content-addressed segments. `created` lists the segments this writer added (a failed
    publish removes them); a segment already present is rewritten in place with the same bytes."""

    root: Path
    created: list[Path] = field(default_factory=list)
    written_bytes: int = 0

    @property
    def directory(self) -> Path:
        return self.root / SEGMENTS

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / key

    def put(self, write: Callable[[BinaryIO], object], suffix: str) -> str:
        """Write a segment through `write(handle)`; returns its key (sha256 + suffix). Flushed to disk and
        renamed into place, so a segment is either absent or whole."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{SEGMENT_STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{suffix}"
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            key = file_sha256(tmp) + suffix
            final = self.path(key)
            final.parent.mkdir(exist_ok=True)
            existed = final.exists()
            self.written_bytes += tmp.stat().st_size
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        if not existed:
            self.created.append(final)
        return key

    def remove_created(self) -> None:
        for path in self.created:
            path.unlink(missing_ok=True)
        self.created.clear()

    def check(self, key: str, where: str) -> Path:
        """The path of a segment whose bytes match its key.

        Raises:
            StoreError: naming the segment and `where` (the part and version that use it).
        """
        path = self.path(key)
        if not path.is_file():
            raise StoreError(f"{path}: missing ({where})")
        if file_sha256(path) != key.split(".", 1)[0]:
            raise StoreError(f"{path}: checksum mismatch ({where})")
        return path

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return 0


# ----- arrays: a base and row patches ----------------------------------------------------------------------
def _save_npy(array: np.ndarray) -> Callable[[BinaryIO], object]:
    return lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def changed_rows(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Rows of `old`'s length whose bytes differ in `new` (bytes: -0.0 vs 0.0 and NaN payloads count)."""
    n = len(old)
    if n == 0:
        return np.zeros(0, np.int64)
    a = np.ascontiguousarray(new[:n]).reshape(n, -1).view(np.uint8)
    b = np.ascontiguousarray(old).reshape(n, -1).view(np.uint8)
    return np.flatnonzero((a != b).any(axis=1))


def write_array(segments: Segments, array: np.ndarray, previous: tuple[PartRecord, np.ndarray] | None) -> PartRecord:
    """Store `array` as a part, sharing the segments of `previous` (its record in the parent version, and its
    content) when the rows it holds are still there: a patch of the changed and appended rows."""
    array = np.ascontiguousarray(array)
    record: PartRecord = {"kind": "array", "dtype": array.dtype.str, "shape": list(array.shape),
                          "sha256": array_digest(array)}
    chain: list[str] = []
    if previous is not None:
        old_record, old = previous
        if (old.dtype == array.dtype and old.shape[1:] == array.shape[1:] and len(old) <= len(array)
                and old_record.get("kind") == "array"):
            changed = changed_rows(array, old)
            tail = array[len(old):]
            if not len(changed) and not len(tail):
                return {**record, "segments": list(old_record["segments"])}
            row_bytes = array[:1].nbytes if len(array) else 0
            index_type = np.int32 if len(array) < 2**31 else np.int64
            patch_bytes = len(changed) * (row_bytes + np.dtype(index_type).itemsize) + tail.nbytes
            base_bytes = array.nbytes
            old_chain = list(old_record["segments"])
            chain_bytes = sum(segments.size(key) for key in old_chain[1:])
            if (patch_bytes <= PATCH_FRACTION * base_bytes and len(old_chain) < MAX_CHAIN
                    and chain_bytes + patch_bytes <= CHAIN_WEIGHT * base_bytes):
                rows = changed.astype(index_type)
                values = array[changed]
                key = segments.put(lambda handle: np.savez(handle, rows=rows, values=values, tail=tail), ".npz")
                chain = [*old_chain, key]
    if not chain:
        chain = [segments.put(_save_npy(array), ".npy")]
    return {**record, "segments": chain}


def read_array(segments: Segments, record: PartRecord, where: str) -> np.ndarray:
    """The array a part record holds: its base, then each patch applied in order."""
    keys = record["segments"]
    shape = tuple(record["shape"])
    if not keys:
        raise StoreError(f"{where}: lists no segment")
    try:
        base = np.load(segments.path(keys[0]), allow_pickle=False)
        if len(keys) == 1:
            return base
        out = np.empty(shape, dtype=np.dtype(record["dtype"]))
        length = len(base)
        out[:length] = base
        for key in keys[1:]:
            with np.load(segments.path(key), allow_pickle=False) as patch:
                rows, values, tail = patch["rows"], patch["values"], patch["tail"]
            out[length:length + len(tail)] = tail
            length += len(tail)
            out[rows] = values
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise StoreError(f"{where}: unreadable segment chain ({exc})") from None
    if length != shape[0]:
        raise StoreError(f"{where}: its segments hold {length} rows, the manifest says {shape[0]}")
    return out


# ----- tables: a base and appended tails -------------------------------------------------------------------
def _save_parquet(table: pa.Table) -> Callable[[BinaryIO], object]:
    return lambda handle: pq.write_table(table, handle)


def write_table(segments: Segments, table: pa.Table, previous: tuple[PartRecord, pa.Table] | None) -> PartRecord:
    """Store `table` as a part; when its first rows are the previous version's table, only the new rows."""
    record: PartRecord = {"kind": "table", "rows": table.num_rows, "sha256": table_digest(table)}
    if previous is not None:
        old_record, old = previous
        n_old = old.num_rows
        if (old_record.get("kind") == "table" and n_old <= table.num_rows
                and old.schema.remove_metadata().equals(table.schema.remove_metadata())
                and table.slice(0, n_old).equals(old)):
            old_chain = list(old_record["segments"])
            if n_old == table.num_rows:
                return {**record, "segments": old_chain}
            tail = table.slice(n_old)
            chain_bytes = sum(segments.size(key) for key in old_chain[1:])
            if len(old_chain) < MAX_CHAIN and chain_bytes <= CHAIN_WEIGHT * segments.size(old_chain[0]):
                return {**record, "segments": [*old_chain, segments.put(_save_parquet(tail), ".parquet")]}
    return {**record, "segments": [segments.put(_save_parquet(table), ".parquet")]}


def read_table(segments: Segments, record: PartRecord, where: str) -> pa.Table:
    if not record["segments"]:
        raise StoreError(f"{where}: lists no segment")
    try:
        tables = [pq.read_table(segments.path(key)) for key in record["segments"]]
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"{where}: unreadable segment ({exc})") from None
    metadata = tables[0].schema.metadata
    table = pa.concat_tables([t.replace_schema_metadata(metadata) for t in tables]) if len(tables) > 1 else tables[0]
    if table.num_rows != record["rows"]:
        raise StoreError(f"{where}: its segments hold {table.num_rows} rows, the manifest says {record['rows']}")
    return table


# ----- whole files -----------------------------------------------------------------------------------------
def write_file(segments: Segments, write: Callable[[BinaryIO], object], suffix: str) -> PartRecord:
    key = segments.put(write, suffix)
    return {"kind": "file", "sha256": key.split(".", 1)[0], "segments": [key]}


# ----- interactions addressed by user row ------------------------------------------------------------------
def write_interactions(segments: Segments, table: pa.Table, **facts: Any) -> PartRecord:
    """Store interactions (columns `user_row`, `item_row`, then the rest) sorted by user row then time, as
    one uncompressed Arrow IPC file: a reader maps it and binary-searches the user column."""
    order = np.lexsort((table["timestamp"].to_numpy(), table["user_row"].to_numpy()))
    table = table.take(pa.array(order)).combine_chunks()

    def write(handle: BinaryIO) -> None:
        with pa.ipc.new_file(handle, table.schema) as writer:
            writer.write_table(table, max_chunksize=max(table.num_rows, 1))

    key = segments.put(write, ".arrow")
    return {"kind": "interactions", "rows": table.num_rows, "sha256": key.split(".", 1)[0], "segments": [key],
            **facts}


def map_interactions(segments: Segments, record: PartRecord, where: str) -> pa.Table:
    """The interactions of a part, memory-mapped (nothing is read until a column's pages are touched)."""
    try:
        with pa.memory_map(str(segments.path(record["segments"][0]))) as source:
            return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"{where}: unreadable interactions segment ({exc})") from None


def rows_of_users(table: pa.Table, user_rows: np.ndarray) -> np.ndarray:
    """Positions in a user-sorted interactions table of the pairs of `user_rows` (sorted, distinct), found by
    binary search: only the pages of the user column the search touches and the pairs' pages are read."""
    if table.num_rows == 0 or len(user_rows) == 0:
        return np.zeros(0, np.int64)
    column = table["user_row"]
    users = (column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()).to_numpy()
    # Needles of the column's own type: with mixed types numpy would convert (read) the whole column first.
    limits = np.iinfo(users.dtype)
    wanted = user_rows[(user_rows >= limits.min) & (user_rows <= limits.max)].astype(users.dtype)
    starts = np.searchsorted(users, wanted, side="left")
    ends = np.searchsorted(users, wanted, side="right")
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    # Concatenated ranges start..end without a Python loop: a running index reset at each range start.
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets

