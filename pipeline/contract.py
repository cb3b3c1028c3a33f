"""The Parquet data contract: listing partitions, reading and validating one partition, and quarantining bad rows.

A data directory holds Hive-partitioned Parquet, one partition per period::

    DATA/interactions/date=YYYY-MM-DD/*.parquet   user_id, item_id, timestamp, [rating], [weight]
    DATA/users/date=YYYY-MM-DD/*.parquet          user_id, [attribute columns]
    DATA/items/date=YYYY-MM-DD/*.parquet          item_id, [attribute columns]
    DATA/_accrete.json                            optional {"freq": "day" | "week" | "month", ...}

This module is the edge of the pipeline: everything after it sees only clean tables with the schemas below.
A *file* that breaks the contract (unreadable, a missing column, a type that cannot be coerced, an empty partition
directory, a partition dated in the future) stops the run with a `DataContractError` naming the file and column. A
*row* that breaks it (missing ID, timestamp outside the partition's period, null or non-finite rating or one outside
the store's scale, a weight that is not a finite number > 0, exact duplicate of a rating) is set aside in a quarantine
table with its reason, file and row number, and the run goes on. Implicit feedback (no rating) repeating a (user,
item, timestamp) is one event told in several lines (the lines of one basket): they are aggregated into one row whose
weight is their sum, and counted in the report's `aggregated`. data/README.md tabulates every class of bad input
and why it is rejected, quarantined, aggregated or accepted. All checks are vectorized (pyarrow.compute / numpy): no
Python loop runs per row.
"""
from __future__ import annotations

import calendar
import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from accrete.pipeline.config import FREQUENCIES
from accrete.pipeline.errors import DataContractError

PERIOD_FREQS = FREQUENCIES  # listed once, in the configuration, which the CLI reads without loading pyarrow
ENTITIES = ("interactions", "users", "items")
METADATA_FILE = "_accrete.json"
_PARTITION_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_EPOCH = datetime.date(1970, 1, 1)
_THREADED_READ_ROWS = 50_000
_SECONDS_PER_UNIT = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

INTERACTIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("rating", pa.float32()),
    ("weight", pa.float32()),
])
#: The consumed interactions a store keeps under history/ (what each user has seen, when, and how strongly).
HISTORY_SCHEMA = pa.schema([INTERACTIONS_SCHEMA.field(name) for name in ("user_id", "item_id", "timestamp", "weight")])
QUARANTINE_SCHEMA = pa.schema([
    ("entity", pa.string()), ("file", pa.string()), ("row", pa.int64()), ("reason", pa.string()),
    ("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.string()), ("rating", pa.string()),
    ("weight", pa.string()),
])
#: The weight of an interaction whose file has no `weight` column (and of tables written before it existed).
DEFAULT_WEIGHT = 1.0


def with_weight(table: pa.Table) -> pa.Table:
    """`table` with a `weight` column: `DEFAULT_WEIGHT` on every row when it has none (a store's history and replay
    reservoir written before the column existed, a caller's own interactions table); unchanged otherwise."""
    if "weight" in table.column_names:
        return table
    return table.append_column("weight", pa.array(np.full(table.num_rows, DEFAULT_WEIGHT, np.float32)))


# Quarantine reasons. A row with several problems is quarantined once, for the first in this order.
MISSING_ID = "missing_id"
NULL_TIMESTAMP = "null_timestamp"
TIMESTAMP_OUTSIDE_PERIOD = "timestamp_outside_period"
NULL_RATING = "null_rating"
NON_FINITE_RATING = "non_finite_rating"
RATING_OUTSIDE_SCALE = "rating_outside_scale"
INVALID_WEIGHT = "invalid_weight"
DUPLICATE_ROW = "duplicate_row"
DUPLICATE_ID = "duplicate_id"
_INTERACTION_REASONS = (None, MISSING_ID, NULL_TIMESTAMP, TIMESTAMP_OUTSIDE_PERIOD, NULL_RATING, NON_FINITE_RATING,
                        RATING_OUTSIDE_SCALE, INVALID_WEIGHT, DUPLICATE_ROW)
_ENTITY_REASONS = (None, MISSING_ID, DUPLICATE_ID)

# Attribute columns that are free text: one token per item would carry no shared signal for metadata init.
# `text_words` turns such text into a list column of words, whose elements are tokens.
FREE_TEXT_COLUMNS = ("title", "name", "description")
NO_GENRES = "(no genres listed)"
#: The list column of words a converter writes for an item's free text (`words=heart`, `words=holder`, ...).
WORDS_COLUMN = "words"
# Words shorter than this carry no product signal ("of", "a", "t" of "t-light", sizes like "xl").
MIN_WORD_LENGTH = 3
# Frequent English words of three letters or more that name nothing (and a catalogue's packaging words, "set of 6",
# "pack of 12"): a shared token must say what an item is.
STOP_WORDS = ("and", "the", "for", "with", "from", "this", "that", "are", "was", "its", "into", "per", "but", "not",
              "you", "your", "our", "all", "any", "has", "have", "one", "two", "set", "pack")

# How far past today (UTC) a partition may be dated: a day of slack for writers whose local date runs ahead of UTC.
FUTURE_TOLERANCE = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Partition:
    """One validated partition: the clean tables the rest of the pipeline consumes, plus what was set aside.

    Attributes:
        date: the first day of the partition's period.
        interactions: `user_id string, item_id string, timestamp int64 (epoch seconds, UTC), rating float32`
            (1.0 for implicit feedback), `weight float32` (finite, > 0; 1.0 when the files have no `weight`; the sum
            of the lines an implicit row aggregates), in file order then row order.
        users: `user_id string` (unique) plus the attribute columns of the users files.
        items: `item_id string` (unique) plus the attribute columns of the items files.
        quarantine: rows excluded from the clean tables, schema `QUARANTINE_SCHEMA`: `entity`, `file` (relative to
            the data directory), `row` (0-based within its file), `reason`, and the offending values as strings.
        has_ratings: the interactions carried a `rating` column (explicit feedback).
        report: JSON-able counts: files read, rows read/kept per entity, quarantined rows per reason, and
            `aggregated` (implicit interaction lines folded into an earlier line of the same user, item and time):
            `rows_read == rows_kept + quarantined + aggregated` for interactions.
    """

    date: datetime.date
    interactions: pa.Table
    users: pa.Table
    items: pa.Table
    quarantine: pa.Table
    has_ratings: bool
    report: dict


# ----------------------------------------------------------------------------------------------- periods


def _check_freq(freq: str, source: str) -> str:
    if freq not in PERIOD_FREQS:
        raise DataContractError(f"{source}: freq must be one of {PERIOD_FREQS}, got {freq!r}")
    return freq


def _as_date(value: datetime.date | str) -> datetime.date:
    """A partition date from a `date`, a `datetime` (its date) or an ISO `YYYY-MM-DD` string."""
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        raise DataContractError(f"{value!r} is not a date (expected YYYY-MM-DD)") from None


def period_end(date: datetime.date, freq: str) -> datetime.date:
    """The exclusive end of the period starting at `date`: +1 day, +7 days, or +1 calendar month.

    A month period runs to the same day of the next month (clipped to that month's length), so a partition
    dated on the 1st covers exactly its calendar month.
    """
    _check_freq(freq, "period_end")
    date = _as_date(date)
    if freq == "day":
        return date + datetime.timedelta(days=1)
    if freq == "week":
        return date + datetime.timedelta(days=7)
    year, month = (date.year + 1, 1) if date.month == 12 else (date.year, date.month + 1)
    return datetime.date(year, month, min(date.day, calendar.monthrange(year, month)[1]))


def _epoch_seconds(date: datetime.date) -> int:
    return (date - _EPOCH).days * 86_400


def data_frequency(data_dir: str | Path, default: str = "day") -> str:
    """The partition frequency of a data directory: `freq` in its `_accrete.json`, else `default`.

    The file is written by `generate_world` and `convert_movielens`; a user's own data may omit it.
    """
    path = Path(data_dir) / METADATA_FILE
    if not path.is_file():
        return _check_freq(default, "default frequency")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataContractError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataContractError(f"{path}: must hold a JSON object")
    return _check_freq(meta.get("freq", default), str(path))


# ----------------------------------------------------------------------------------------------- listing


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(("_", "."))


def _partition_dirs(data_dir: Path) -> dict[str, dict[datetime.date, Path]]:
    """For each entity directory present, its partition directories by date; a badly named entry is an error."""
    if not data_dir.is_dir():
        raise DataContractError(f"{data_dir}: data directory not found")
    found: dict[str, dict[datetime.date, Path]] = {}
    for entity in ENTITIES:
        root = data_dir / entity
        if not root.exists():
            continue
        if not root.is_dir():
            raise DataContractError(f"{root}: must be a directory of date=YYYY-MM-DD partitions")
        dates: dict[datetime.date, Path] = {}
        for entry in root.iterdir():
            if _is_hidden(entry):
                continue
            match = _PARTITION_DIR.match(entry.name)
            if entry.is_symlink() and not entry.exists():
                raise DataContractError(f"{entry}: broken symbolic link (points to {os.readlink(entry)})")
            if not entry.is_dir() or not match:
                raise DataContractError(f"{entry}: not a partition directory (expected date=YYYY-MM-DD)")
            try:
                day = datetime.date.fromisoformat(match.group(1))
            except ValueError:
                raise DataContractError(f"{entry}: '{match.group(1)}' is not a valid date") from None
            dates[day] = entry
        found[entity] = dates
    return found


def list_partitions(data_dir: str | Path) -> list[datetime.date]:
    """The sorted dates of every partition in a data directory (union over interactions, users and items)."""
    dirs = _partition_dirs(Path(data_dir))
    return sorted(set().union(*(d.keys() for d in dirs.values())))


def _partition_files(directory: Path) -> list[Path]:
    """The data files of one partition directory, by name; hidden files (`_SUCCESS`, `.crc`) are skipped."""
    files = []
    for entry in sorted(directory.iterdir()):
        if _is_hidden(entry):
            continue
        if entry.is_symlink() and not entry.exists():
            raise DataContractError(f"{entry}: broken symbolic link (points to {os.readlink(entry)})")
        if entry.is_dir():
            raise DataContractError(f"{entry}: nested directories inside a partition are not supported")
        files.append(entry)
    if not files:
        # An empty directory is most often a writer that failed before its first file: applying it as a quiet
        # period would publish a step with data missing. A quiet period is a file with zero rows.
        raise DataContractError(f"{directory}: partition directory holds no data files (write a file with zero "
                                f"rows for a period without data)")
    return files


# ----------------------------------------------------------------------------------------------- column coercion


def _is_id_type(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_integer(t) or pa.types.is_null(t))


def _is_timestamp_type(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_integer(t) or pa.types.is_null(t)


def _is_rating_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)


_TYPE_RULES = {
    "user_id": (_is_id_type, "a string or integer ID"),
    "item_id": (_is_id_type, "a string or integer ID"),
    "timestamp": (_is_timestamp_type, "a Parquet timestamp or integer epoch seconds"),
    "rating": (_is_rating_type, "a number"),
    "weight": (_is_rating_type, "a number"),
}


def _check_columns(path: Path, schema: pa.Schema, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    names = schema.names
    for name in required:
        if name not in names:
            raise DataContractError(f"{path}: missing required column '{name}' (columns: {', '.join(names)})")
    for name in [*required, *optional]:
        if name in names:
            if names.count(name) > 1:
                raise DataContractError(f"{path}: column '{name}' appears more than once")
            ok, expected = _TYPE_RULES[name]
            actual = schema.field(name).type
            if not ok(actual):
                raise DataContractError(f"{path}: column '{name}' has type {actual}; expected {expected}")


def _open_parquet(path: Path, columns: Sequence[str] | None, read_dictionary: Sequence[str] = (),
                  required: Sequence[str] = (), optional: Sequence[str] = ()) -> pa.Table:
    """Read one Parquet file after checking its schema; unreadable files become `DataContractError`."""
    try:
        with pq.ParquetFile(path) as probe:
            schema, metadata = probe.schema_arrow, probe.metadata
        _check_columns(path, schema, required, optional)
        wanted = None if columns is None else [c for c in columns if c in schema.names]
        as_dictionary = [c for c in read_dictionary if c in schema.names] or None
        with pq.ParquetFile(path, read_dictionary=as_dictionary, metadata=metadata) as handle:
            # Thread start-up costs more than it saves on small files (most daily / weekly partitions).
            return handle.read(columns=wanted, use_threads=metadata.num_rows >= _THREADED_READ_ROWS)
    except DataContractError:
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        raise DataContractError(f"{path}: unreadable Parquet file ({exc})") from None


def _encode_ids(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """A column of IDs as (string values, int64 codes into them with -1 for null); values may repeat.

    String columns arrive dictionary-encoded from the Parquet reader, so only the (small) dictionaries are touched.
    """
    values, codes, offset = [], [], 0
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        dictionary = chunk.dictionary.cast(pa.string())
        indices = chunk.indices
        idx = pc.fill_null(indices, -1).to_numpy().astype(np.int64) if indices.null_count else \
            indices.to_numpy().astype(np.int64)
        if offset:
            idx = np.where(idx >= 0, idx + offset, -1)
        values.append(dictionary)
        codes.append(idx)
        offset += len(dictionary)
    if not values:
        return pa.array([], pa.string()), np.empty(0, np.int64)
    return pa.concat_arrays(values), np.concatenate(codes)


def _unify_codes(parts: list[tuple[pa.Array, np.ndarray]]) -> tuple[pa.Array, np.ndarray]:
    """Per-file (values, codes) pairs as one partition-wide dictionary of distinct, valid IDs and codes into it.

    A null or empty ID gets code -1. Equal IDs from different files get the same code, so rows can be compared
    across files by integer codes.
    """
    if len(parts) == 1:
        values, codes = parts[0]
        # The common case, one file read as one dictionary chunk: the dictionary is already distinct and valid.
        if len(values) and values.null_count == 0 and pc.min(pc.binary_length(values)).as_py() > 0 \
                and pc.count_distinct(values).as_py() == len(values):
            return values, codes
    values = pa.concat_arrays([v for v, _ in parts]) if parts else pa.array([], pa.string())
    code_parts = [c for _, c in parts]
    offsets = np.cumsum([0] + [len(v) for v, _ in parts])
    distinct = pc.unique(values)
    distinct = distinct.filter(pc.fill_null(pc.greater(pc.binary_length(distinct), 0), False))
    position = pc.index_in(values, value_set=distinct)
    position = pc.fill_null(position, -1).to_numpy().astype(np.int64) if len(position) else np.empty(0, np.int64)
    position = np.append(position, -1)  # code -1 stays -1
    joined = np.concatenate([np.where(c >= 0, c + off, -1) for c, off in zip(code_parts, offsets)]) if code_parts else \
        np.empty(0, np.int64)
    return distinct, position[joined]


def _timestamps_as_seconds(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 epoch seconds, validity mask). Parquet timestamps of any unit are floored to seconds (UTC storage)."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    valid = np.ones(len(arr), bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.int64), np.zeros(len(arr), bool)
    if pa.types.is_timestamp(arr.type):
        per_second = _SECONDS_PER_UNIT[arr.type.unit]
        arr = arr.view(pa.int64())
    else:
        per_second = 1
        try:
            arr = arr.cast(pa.int64())
        except pa.ArrowInvalid:
            raise DataContractError("integer timestamps beyond the int64 range") from None
    values = (pc.fill_null(arr, 0) if arr.null_count else arr).to_numpy()
    return (values // per_second if per_second != 1 else values.astype(np.int64, copy=False)), valid


def _numbers_as_float32(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 values of a rating or weight column, validity mask); a value too large for float32 becomes inf and is
    then quarantined."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    valid = np.ones(len(arr), bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.float32), valid
    with np.errstate(over="ignore"):
        values = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy().astype(np.float32)
    return values, valid


# ----------------------------------------------------------------------------------------------- duplicates

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _row_hash(columns: Sequence[np.ndarray]) -> np.ndarray:
    """A 64-bit hash per row of integer columns (splitmix64-style mixing); equal rows hash equal."""
    with np.errstate(over="ignore"):
        h = np.full(len(columns[0]), _MIX[0], dtype=np.uint64)
        for col in columns:
            h = (h ^ col.astype(np.uint64, copy=False)) * _MIX[1]
            h ^= h >> np.uint64(31)
            h *= _MIX[2]
            h ^= h >> np.uint64(29)
    return h


def _sharing_a_bucket(h: np.ndarray, rows: np.ndarray, shift: int) -> np.ndarray:
    """The `rows` whose hash shares a bucket (bits `shift..shift+b` of `h`, ~8 buckets per row) with another row."""
    if rows.size < 2:
        return rows[:0]
    bits = max(int(np.ceil(np.log2(8 * rows.size))), 4)
    slots = ((h[rows] >> np.uint64(64 - bits - shift)) & np.uint64((1 << bits) - 1)).astype(np.intp)
    return rows[np.bincount(slots, minlength=1 << bits)[slots] > 1]


def _later_duplicates(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean mask of rows equal (in every column) to an earlier row.

    Equal rows have equal 64-bit hashes, so only rows sharing a hash bucket with another row are candidates
    (a few percent); candidates are sorted by full hash (stably, so the earliest row leads its group) and compared
    exactly with the first row of their group. A group holding different rows under one hash (a 64-bit collision)
    is resolved by an exact hash aggregation over its rows. No duplicate is missed and none is invented.
    """
    n = len(columns[0])
    duplicate = np.zeros(n, bool)
    if n < 2:
        return duplicate
    h = _row_hash(columns)
    if n <= 1 << 20:
        candidates = _sharing_a_bucket(h, np.arange(n), shift=0)
        # A second, independent bucketing of the survivors (other hash bits) leaves mostly true duplicates.
        candidates = _sharing_a_bucket(h, candidates, shift=32)
    else:  # a bucket array this large costs more than sorting the hashes
        ordered = np.sort(h)
        candidates = np.flatnonzero(np.isin(h, ordered[1:][ordered[1:] == ordered[:-1]]))
    if candidates.size == 0:
        return duplicate
    order = np.argsort(h[candidates], kind="stable")
    rows = candidates[order]
    hashes = h[rows]
    repeat = np.zeros(len(rows), bool)
    repeat[1:] = hashes[1:] == hashes[:-1]
    leader = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(rows))))
    equal = repeat.copy()
    for col in columns:
        equal &= col[rows] == col[rows[leader]]
    duplicate[rows[equal]] = True
    collided = repeat & ~equal
    if collided.any():
        in_collided_group = np.isin(leader, leader[collided])
        group_rows = rows[in_collided_group]
        table = pa.table({f"c{k}": col[group_rows] for k, col in enumerate(columns)} | {"pos": group_rows})
        first = table.group_by([f"c{k}" for k in range(len(columns))], use_threads=False).aggregate([("pos", "min")])
        duplicate[group_rows] = True
        duplicate[first.column("pos_min").to_numpy()] = False
    return duplicate


# ----------------------------------------------------------------------------------------------- quarantine


def _quarantine_rows(entity: str, files: np.ndarray, rows: np.ndarray, reasons: np.ndarray,
                     values: dict[str, pa.Array]) -> pa.Table:
    """A quarantine table for the given rows; `values` holds the offending columns already cast to string."""
    n = len(rows)
    columns = {
        "entity": pa.array(np.full(n, entity, dtype=object), pa.string()),
        "file": pa.array(files, pa.string()),
        "row": pa.array(rows, pa.int64()),
        "reason": pa.array(reasons, pa.string()),
    }
    for name in ("user_id", "item_id", "timestamp", "rating", "weight"):
        columns[name] = values.get(name, pa.nulls(n, pa.string()))
    return pa.table(columns, schema=QUARANTINE_SCHEMA)


def _empty_quarantine() -> pa.Table:
    return QUARANTINE_SCHEMA.empty_table()


# ----------------------------------------------------------------------------------------------- reading


def _relative(path: Path, data_dir: Path) -> str:
    try:
        return path.relative_to(data_dir).as_posix()
    except ValueError:
        return str(path)


def _file_positions(lengths: list[int], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of concatenated files: (index of the file, row number within that file)."""
    starts = np.cumsum([0] + list(lengths))
    file_index = np.searchsorted(starts, rows, side="right") - 1
    return file_index, rows - starts[file_index]


def _offending_values(tables: list[pa.Table], names: list[str], file_index: np.ndarray,
                      rows: np.ndarray) -> dict[str, pa.Array]:
    """The given columns at (file, row) positions, cast to string, in the order of the positions."""
    values = {}
    for name in names:
        pieces = [tables[k].column(name).take(pa.array(rows[file_index == k])).cast(pa.string()).combine_chunks()
                  for k in np.unique(file_index)]
        values[name] = pa.concat_arrays(pieces) if pieces else pa.array([], pa.string())
    return values


def _read_interactions(files: list[Path], data_dir: Path, start: int, end: int,
                       rating_range: tuple[float, float] | None):
    """Clean interactions, their quarantine, has_ratings, rows read, lines aggregated."""
    tables = [
        _open_parquet(f, ["user_id", "item_id", "timestamp", "rating", "weight"], ["user_id", "item_id"],
                      required=["user_id", "item_id", "timestamp"], optional=["rating", "weight"])
        for f in files
    ]
    with_rating = [t for t in tables if "rating" in t.column_names]
    has_ratings = bool(with_rating)
    if has_ratings and len(with_rating) != len(tables):
        missing = next(f for f, t in zip(files, tables) if "rating" not in t.column_names)
        raise DataContractError(f"{missing}: missing column 'rating' that other files of this partition have")
    lengths = [t.num_rows for t in tables]
    n = int(sum(lengths))
    if n == 0:
        return INTERACTIONS_SCHEMA.empty_table(), _empty_quarantine(), has_ratings, 0, 0

    users, ucode = _unify_codes([_encode_ids(t.column("user_id")) for t in tables])
    items, icode = _unify_codes([_encode_ids(t.column("item_id")) for t in tables])
    ts_parts, valid_parts, rating_parts, rvalid_parts, weight_parts, wvalid_parts = [], [], [], [], [], []
    for f, t in zip(files, tables):
        try:
            seconds, valid = _timestamps_as_seconds(t.column("timestamp"))
        except DataContractError as exc:
            raise DataContractError(f"{f}: column 'timestamp': {exc}") from None
        ts_parts.append(seconds)
        valid_parts.append(valid)
        if has_ratings:
            values, rvalid = _numbers_as_float32(t.column("rating"))
            rating_parts.append(values)
            rvalid_parts.append(rvalid)
        if "weight" in t.column_names:  # a weight is a default, not a kind of feedback: files may differ
            values, wvalid = _numbers_as_float32(t.column("weight"))
        else:
            values, wvalid = np.full(t.num_rows, DEFAULT_WEIGHT, np.float32), np.ones(t.num_rows, bool)
        weight_parts.append(values)
        wvalid_parts.append(wvalid)
    ts, ts_valid = np.concatenate(ts_parts), np.concatenate(valid_parts)
    weight, weight_valid = np.concatenate(weight_parts), np.concatenate(wvalid_parts)
    if has_ratings:
        rating, rating_valid = np.concatenate(rating_parts), np.concatenate(rvalid_parts)
    else:
        rating, rating_valid = np.ones(n, np.float32), np.ones(n, bool)

    # Reason codes index _INTERACTION_REASONS; assigned lowest priority first so the first problem wins.
    reason = np.zeros(n, np.int8)
    with np.errstate(invalid="ignore"):
        reason[~weight_valid | ~np.isfinite(weight) | ~(weight > 0)] = 7
    if has_ratings:
        if rating_range is not None:
            low, high = rating_range
            reason[rating_valid & ((rating < low) | (rating > high))] = 6
        reason[rating_valid & ~np.isfinite(rating)] = 5
        reason[~rating_valid] = 4
    reason[ts_valid & ((ts < start) | (ts >= end))] = 3
    reason[~ts_valid] = 2
    reason[(ucode < 0) | (icode < 0)] = 1
    ok = reason == 0
    ok_rows = np.flatnonzero(ok)
    key = [ucode[ok_rows], icode[ok_rows], ts[ok_rows]]
    if has_ratings:
        # A rating is one judgement: a second equal line is a writer's retry, not a second opinion.
        key.append(rating[ok_rows].view(np.uint32))
        reason[ok_rows[_later_duplicates(key)]] = 8
        aggregated = 0
    else:
        # Implicit lines of one (user, item, time) are one event told in parts (the lines of a basket): one row,
        # its weight their sum, at the first line's place.
        later = _later_duplicates(key)
        aggregated = int(later.sum())
        if aggregated:
            weight = weight.copy()
            weight[ok_rows] = _summed_over_duplicates(key, weight[ok_rows], later)
            reason[ok_rows[later]] = -1
    keep = np.flatnonzero(reason == 0)

    clean = pa.table({
        "user_id": users.take(pa.array(ucode[keep])),
        "item_id": items.take(pa.array(icode[keep])),
        "timestamp": pa.array(ts[keep], pa.int64()),
        "rating": pa.array(rating[keep], pa.float32()),
        "weight": pa.array(weight[keep], pa.float32()),
    }, schema=INTERACTIONS_SCHEMA)

    bad = np.flatnonzero(reason > 0)
    if bad.size == 0:
        return clean, _empty_quarantine(), has_ratings, n, aggregated
    file_index, rows = _file_positions(lengths, bad)
    with_weight = [t if "weight" in t.column_names else t.append_column("weight", pa.nulls(t.num_rows, pa.float32()))
                   for t in tables]
    offending = _offending_values(with_weight, ["user_id", "item_id", "timestamp", "weight"]
                                  + (["rating"] if has_ratings else []), file_index, rows)
    names = np.asarray([_relative(f, data_dir) for f in files], dtype=object)[file_index]
    quarantine = _quarantine_rows("interactions", names, rows,
                                  np.asarray(_INTERACTION_REASONS, dtype=object)[reason[bad]], offending)
    return clean, quarantine, has_ratings, n, aggregated


def _summed_over_duplicates(key: Sequence[np.ndarray], weight: np.ndarray, later: np.ndarray) -> np.ndarray:
    """`weight` with each group of equal `key` rows' total at its first row (`later` marks the other rows).

    Only rows whose key hash equals a later duplicate's take part in the exact group-by: a few percent of a
    partition at most, so the common path (no duplicates) costs nothing here.
    """
    h = _row_hash(key)
    involved = np.flatnonzero(np.isin(h, h[later]))
    table = pa.table({**{f"c{k}": col[involved] for k, col in enumerate(key)},
                      "pos": involved, "w": weight[involved].astype(np.float64)})
    groups = table.group_by([f"c{k}" for k in range(len(key))], use_threads=False).aggregate(
        [("pos", "min"), ("w", "sum")])
    summed = weight.copy()
    summed[groups.column("pos_min").to_numpy()] = groups.column("w_sum").to_numpy().astype(np.float32)
    return summed


def _read_entities(entity: str, id_column: str, files: list[Path], data_dir: Path):
    """Clean users or items (unique IDs, attribute columns kept), their quarantine, rows read."""
    tables = [_open_parquet(f, None, required=[id_column]) for f in files]
    empty = pa.schema([(id_column, pa.string())]).empty_table()
    if not tables:
        return empty, _empty_quarantine(), 0
    tables = [t.set_column(t.schema.get_field_index(id_column), id_column, t.column(id_column).cast(pa.string()))
              for t in tables]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataContractError(f"{files[0].parent}: {entity} files have incompatible columns ({exc})") from None
    n = table.num_rows
    if n == 0:
        return table, _empty_quarantine(), 0
    ids = table.column(id_column).combine_chunks()
    valid = pc.fill_null(pc.greater(pc.binary_length(ids), 0), False).to_numpy(zero_copy_only=False)
    reason = np.where(valid, 0, 1).astype(np.int8)
    codes = pc.dictionary_encode(ids).indices
    codes = pc.fill_null(codes, -1).to_numpy().astype(np.int64)
    valid_rows = np.flatnonzero(valid)
    _, first = np.unique(codes[valid_rows], return_index=True)
    duplicate = np.ones(len(valid_rows), bool)
    duplicate[first] = False
    reason[valid_rows[duplicate]] = 2
    keep = np.flatnonzero(reason == 0)
    clean = table.take(pa.array(keep)) if keep.size != n else table
    bad = np.flatnonzero(reason != 0)
    if bad.size == 0:
        return clean.combine_chunks(), _empty_quarantine(), n
    file_index, rows = _file_positions([t.num_rows for t in tables], bad)
    names = np.asarray([_relative(f, data_dir) for f in files], dtype=object)[file_index]
    values = {id_column: ids.take(pa.array(bad))}
    quarantine = _quarantine_rows(entity, names, rows, np.asarray(_ENTITY_REASONS, dtype=object)[reason[bad]],
                                  values)
    return clean.combine_chunks(), quarantine, n


def read_partition(data_dir: str | Path, date: datetime.date, freq: str | None = None, *,
                   rating_range: tuple[float, float] | None = None,
                   today: datetime.date | None = None) -> Partition:
    """Read and validate the partition of `date`: clean interactions, users and items, plus the quarantine.

    The period is `[date, period_end(date, freq))` with `freq` from the data directory's `_accrete.json` when
    `freq` is None. Interactions are quarantined, first matching reason wins, when an ID is null or empty
    (`missing_id`), the timestamp is null or outside the period, the rating (if the files have one) is null or not
    finite after conversion to float32, the weight (if the files have one) is null, not finite or not > 0
    (`invalid_weight`), or, with ratings, the row duplicates an earlier row of the partition after coercion
    (`duplicate_row`; the first is kept). Without ratings such lines are not quarantined but aggregated: one row at the
    first line's place, weight summed, counted in `report["aggregated"]`. Users and items rows are quarantined for a missing ID or a repeated ID
    (`duplicate_id`; the first is kept). With `rating_range=(low, high)`, a finite rating outside it is quarantined
    (`rating_outside_scale`): the store's rating scale (its drift histogram's edges) is the caller's to give.
    Every file-level problem raises `DataContractError` before anything is returned, and so does a partition dated
    more than `FUTURE_TOLERANCE` after `today` (default: today's UTC date): its interactions cannot have happened,
    so the date is wrong.
    """
    data_dir = Path(data_dir)
    date = _as_date(date)
    freq = _check_freq(freq, "freq") if freq is not None else data_frequency(data_dir)
    if not data_dir.is_dir():
        raise DataContractError(f"{data_dir}: data directory not found")
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    name = f"date={date.isoformat()}"
    if date > today + FUTURE_TOLERANCE:
        raise DataContractError(f"{data_dir}: partition {name} is dated in the future (today is {today} UTC); "
                                f"check the writer's date")
    present = {entity: data_dir / entity / name for entity in ENTITIES if (data_dir / entity / name).is_dir()}
    if not present:
        raise DataContractError(f"{data_dir}: no partition date={date.isoformat()} in interactions/, users/ or items/")
    files = {entity: _partition_files(present[entity]) if entity in present else [] for entity in ENTITIES}
    end_date = period_end(date, freq)

    interactions, q_inter, has_ratings, n_inter, aggregated = _read_interactions(
        files["interactions"], data_dir, _epoch_seconds(date), _epoch_seconds(end_date), rating_range)
    users, q_users, n_users = _read_entities("users", "user_id", files["users"], data_dir)
    items, q_items, n_items = _read_entities("items", "item_id", files["items"], data_dir)
    quarantine = pa.concat_tables([q_inter, q_users, q_items])

    reasons, counts = np.unique(quarantine.column("reason").to_numpy(zero_copy_only=False).astype(str),
                                return_counts=True)
    report = {
        "date": date.isoformat(),
        "freq": freq,
        "period_end": end_date.isoformat(),
        "has_ratings": has_ratings,
        "files": {e: [_relative(f, data_dir) for f in files[e]] for e in ENTITIES},
        "rows_read": {"interactions": n_inter, "users": n_users, "items": n_items},
        "rows_kept": {"interactions": interactions.num_rows, "users": users.num_rows, "items": items.num_rows},
        "quarantined": {str(r): int(c) for r, c in zip(reasons, counts)},
        "aggregated": {"interactions": aggregated},
    }
    return Partition(date=date, interactions=interactions, users=users, items=items, quarantine=quarantine,
                     has_ratings=has_ratings, report=report)


# ----------------------------------------------------------------------------------------------- item metadata


def text_words(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct words of each text, for metadata tokens: a `list<string>` array aligned with `text`.

    Lower-cased; split on anything that is not a letter or digit; words shorter than `MIN_WORD_LENGTH`, numbers
    (`72`) and `STOP_WORDS` dropped; each word once per text, in order of first appearance. A null text
    gives an empty list. "WHITE HANGING HEART T-LIGHT HOLDER" gives `[white, hanging, heart, light, holder]`.
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if pa.types.is_dictionary(text.type):
        text = text.cast(text.type.value_type)
    text = pc.fill_null(text.cast(pa.string()), "")
    split = pc.split_pattern_regex(pc.utf8_lower(text), r"[^\p{L}\p{N}]+")
    parents = pc.list_parent_indices(split).to_numpy()
    words = pc.list_flatten(split)
    usable = pc.and_(pc.greater_equal(pc.utf8_length(words), MIN_WORD_LENGTH),
                     pc.invert(pc.or_(pc.utf8_is_numeric(words), pc.is_in(words, value_set=pa.array(STOP_WORDS)))))
    usable_mask = usable.to_numpy(zero_copy_only=False)
    parents, words = parents[usable_mask], words.filter(usable)
    codes = pc.dictionary_encode(words).indices.to_numpy().astype(np.int64)
    # First appearance of each (text, word) pair; parents are already in order, so the kept pairs stay grouped.
    width = int(codes.max()) + 1 if len(codes) else 1
    _, first = np.unique(parents.astype(np.int64) * width + codes, return_index=True)
    first.sort()
    counts = np.bincount(parents[first], minlength=len(text))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), words.take(pa.array(first, pa.int64())))


def item_attribute_tokens(items: pa.Table, *, columns: Sequence[str] | None = None,
                          exclude: Sequence[str] = FREE_TEXT_COLUMNS) -> tuple[pa.Array, list]:
    """The metadata tokens of each item, for metadata initialization of new item rows.

    A token is `"column=value"`. Multi-valued strings are split on `"|"` (MovieLens genres `"Action|Comedy"` give
    `genres=Action` and `genres=Comedy`); list columns contribute each element; integers and booleans their
    decimal / `true` form. Null, empty and `"(no genres listed)"` values give no token. Floating-point columns
    (continuous values, no shared categories) and free-text columns in `exclude` are skipped unless named in
    `columns`: free text reaches the tokens as the list column `words` a converter writes (`text_words`), one
    `words=...` token per word.

    Args:
        items: a table with `item_id` and attribute columns (e.g. `Partition.items`).
        columns: the attribute columns to use; None means every eligible attribute column.
        exclude: columns skipped when `columns` is None.
    Returns:
        `(item_ids, [item_index, tokens])`: the `item_id` column as a string array, and the distinct
        (item, token) pairs as an `int64` numpy array of positions into `item_ids` and a string array of tokens,
        sorted by item then token.
    """
    if "item_id" not in items.column_names:
        raise DataContractError("items table has no 'item_id' column")
    ids = items.column("item_id").combine_chunks().cast(pa.string())
    if columns is None:
        columns = [c for c in items.column_names
                   if c != "item_id" and c not in exclude and not pa.types.is_floating(items.schema.field(c).type)
                   and not pa.types.is_decimal(items.schema.field(c).type)]
    else:
        missing = [c for c in columns if c not in items.column_names]
        if missing:
            raise DataContractError(f"items table has no attribute column(s) {missing}")
    index_parts, token_parts = [], []
    for name in columns:
        column = items.column(name).combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            parents = pc.list_parent_indices(column).to_numpy()
            values = pc.list_flatten(column).cast(pa.string())
        else:
            if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type):
                column = column.cast(pa.string())
            elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise DataContractError(f"items column '{name}' has type {column.type}; cannot make tokens of it")
            split = pc.split_pattern(column.cast(pa.string()), "|")
            parents = pc.list_parent_indices(split).to_numpy()
            values = pc.list_flatten(split)
        values = pc.utf8_trim_whitespace(values.cast(pa.string()))
        usable = pc.and_(pc.greater(pc.binary_length(values), 0), pc.not_equal(values, NO_GENRES))
        usable = pc.fill_null(usable, False)
        index_parts.append(parents[usable.to_numpy(zero_copy_only=False)].astype(np.int64))
        token_parts.append(pc.binary_join_element_wise(f"{name}=", values.filter(usable), ""))
    if not token_parts:
        return ids, [np.empty(0, np.int64), pa.array([], pa.string())]
    item_index = np.concatenate(index_parts)
    tokens = pa.concat_arrays(token_parts)
    encoded = pc.dictionary_encode(tokens)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    width = max(len(order), 1)
    pairs = np.unique(item_index * width + rank[encoded.indices.to_numpy()])
    sorted_tokens = encoded.dictionary.take(pa.array(order))
    return ids, [pairs // width, sorted_tokens.take(pa.array(pairs % width))]
