"""Turning a user's own interaction log into contract partitions: the generic CSV / Parquet converter, and the
partition writer every converter (this one, `pipeline.movielens`) shares.

A converter is strict where the nightly pipeline is lenient: the pipeline quarantines a bad row and goes on, because
it runs unattended; a conversion is run by a person who can fix the file, so the first problem (a missing column, a
null ID, a timestamp or rating that does not parse) stops it with a `DataContractError` naming the file, the row and
the column, before anything is written. All parsing is vectorized; the row of a failure is found by bisecting the
failing column (about two more passes over it, paid only on the error path).

Output layout (what `read_partition` reads): interactions split by the period of their timestamp into
`OUT/interactions/date=D/part-0.parquet` (sorted by timestamp, user, item); each user and item written once, to
`OUT/users/` / `OUT/items/` in the period of its first interaction, with its attribute columns when given (and an
item's free text as the list column `words`); and `OUT/_accrete.json` holding the period and a summary.

Implicit feedback follows the contract's rule for lines of one (user, item, time): they are written as one
interaction whose `weight` is their sum (the lines of one basket), and the summary counts them in `aggregated`.
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from accrete.pipeline.contract import METADATA_FILE, PERIOD_FREQS, WORDS_COLUMN, text_words
from accrete.pipeline.errors import DataContractError

TIME_UNITS = ("s", "ms", "us", "ns", "iso")
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".csv.bz2", ".tsv.bz2", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_EPOCH = datetime.date(1970, 1, 1)


# ----------------------------------------------------------------------------------------------- writing partitions


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a conversion: absent or empty, or (with `overwrite`) cleared of a previous one."""
    if out.exists() and not out.is_dir():
        raise DataContractError(f"{out}: output path exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataContractError(f"{out}: output directory is not empty (--overwrite, or overwrite=True, replaces it)")
        for name in ("interactions", "users", "items", METADATA_FILE):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _period_start_days(timestamps: np.ndarray, freq: str) -> np.ndarray:
    """Days since the epoch of the start of each timestamp's period (weeks start on Monday)."""
    days = np.floor_divide(timestamps, 86_400)
    if freq == "day":
        return days
    if freq == "week":
        return days - (days + 3) % 7  # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays
    months = days.astype("datetime64[D]").astype("datetime64[M]")
    return months.astype("datetime64[D]").astype(np.int64)


def _first_period(ids: pa.ChunkedArray, period: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Each distinct ID and the earliest period it appears in (vectorized group-by minimum)."""
    grouped = pa.table({"id": ids, "period": period}).group_by("id", use_threads=False).aggregate([("period", "min")])
    return grouped["id"].combine_chunks(), grouped["period_min"].to_numpy()


def _write_by_period(table: pa.Table, period: np.ndarray, root: Path) -> list[int]:
    """Write `table` split by `period` into `root/date=.../part-0.parquet`; return the periods written."""
    if len(period) and np.any(period[1:] < period[:-1]):
        order = np.argsort(period, kind="stable")
        table, period = table.take(pa.array(order)), period[order]
    starts = np.flatnonzero(np.r_[True, period[1:] != period[:-1]]) if len(period) else np.empty(0, np.int64)
    ends = np.r_[starts[1:], len(period)]
    for start, end in zip(starts, ends):  # one iteration per period, not per row
        date = _EPOCH + datetime.timedelta(days=int(period[start]))
        directory = root / f"date={date.isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(start, end - start), directory / "part-0.parquet")
    return [int(period[s]) for s in starts]


def _with_attributes(table: pa.Table, attributes: pa.Table, key: str) -> pa.Table:
    """`table` with the other columns of `attributes` whose `key` matches (null where none does): a left join by
    position, which unlike Acero's join carries list columns (an item's `words`)."""
    position = pc.index_in(table[key], value_set=attributes[key].combine_chunks())
    matched = attributes.drop_columns([key]).take(position)
    return pa.table({**{name: table[name] for name in table.column_names},
                     **{name: matched[name] for name in matched.column_names}})


def _write_arrivals(table: pa.Table, id_column: str, root: Path) -> None:
    """Write users or items into the partition of their `_period`, sorted by ID within a partition."""
    table = table.take(pc.sort_indices(table, [("_period", "ascending"), (id_column, "ascending")]))
    period = table["_period"].to_numpy()
    _write_by_period(table.drop_columns(["_period"]), period, root)


def write_partitions(interactions: pa.Table, out: Path, freq: str, *, items: pa.Table | None = None,
                     users: pa.Table | None = None) -> dict:
    """Write clean interactions (and the attributes of their users and items) as contract partitions under `out`.

    Args:
        interactions: `user_id string, item_id string, timestamp int64 epoch seconds[, rating float32]`, no nulls.
        out: the prepared output directory (`prepare_output`).
        freq: "day", "week" (Monday to Sunday) or "month".
        items, users: attribute tables keyed by `item_id` / `user_id` (unique), joined to the IDs that occur in the
            interactions; IDs that never occur are not written (they have no arrival date).
    Returns:
        `{"ratings" (explicit feedback) or "interactions" (implicit), "users", "items", "items_without_metadata",
        "partitions", "first_date", "last_date"}`.
    """
    interactions = interactions.take(pc.sort_indices(
        interactions, [("timestamp", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]))
    period = _period_start_days(interactions["timestamp"].to_numpy(), freq)
    written = _write_by_period(interactions, period, out / "interactions")

    user_ids, user_period = _first_period(interactions["user_id"], period)
    user_table = pa.table({"user_id": user_ids, "_period": user_period})
    if users is not None:
        user_table = _with_attributes(user_table, users, "user_id")
    _write_arrivals(user_table, "user_id", out / "users")

    item_ids, item_period = _first_period(interactions["item_id"], period)
    item_table = pa.table({"item_id": item_ids, "_period": item_period})
    without_metadata = 0
    if items is not None:
        known = pc.is_in(item_ids, value_set=items["item_id"].combine_chunks())
        without_metadata = len(item_ids) - pc.sum(known).as_py() if len(item_ids) else 0
        item_table = _with_attributes(item_table, items, "item_id")
    _write_arrivals(item_table, "item_id", out / "items")

    dates = [_EPOCH + datetime.timedelta(days=d) for d in written]
    return {
        "ratings" if "rating" in interactions.column_names else "interactions": interactions.num_rows,
        "users": len(user_ids),
        "items": len(item_ids),
        "items_without_metadata": int(without_metadata),
        "partitions": len(written),
        "first_date": dates[0].isoformat() if dates else None,
        "last_date": dates[-1].isoformat() if dates else None,
    }


def write_metadata(out: Path, summary: dict, source: Path) -> None:
    """`out/_accrete.json`: the summary (its `freq` is what `data_frequency` reads) and the source's path."""
    (out / METADATA_FILE).write_text(json.dumps({**summary, "path": str(source.resolve())}, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- reading a user's file


def _casts(values: pa.Array, target: pa.DataType) -> bool:
    try:
        values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def first_unparsable(values: pa.Array, target: pa.DataType) -> int | None:
    """The index of the first value that cannot be cast to `target`, or None when all can.

    One vectorized cast when all parse; on failure, a bisection (about two more passes over the column).
    """
    if _casts(values, target):
        return None
    lo, hi = 0, len(values)  # the first failure lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _casts(values.slice(lo, mid - lo), target):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class _Source:
    """An input's columns (its files concatenated) and how to name a row of it in an error: a CSV file's line, or
    a Parquet file's row (0-based, as in the quarantine)."""

    path: Path
    files: list[Path]
    lengths: list[int]
    table: pa.Table
    csv: bool

    def where(self, row: int, column: str) -> str:
        starts = np.cumsum([0, *self.lengths])
        k = int(np.searchsorted(starts, row, side="right") - 1)
        row -= int(starts[k])
        position = f"line {row + 2}" if self.csv else f"row {row}"  # CSV line 1 is the header
        return f"{self.files[k]}: {position}, column '{column}'"

    def column(self, name: str) -> pa.Array:
        column = self.table.column(name)
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _source_files(path: Path) -> tuple[list[Path], bool]:
    """The files to read and whether they are CSV; a directory means every `*.parquet` file directly inside it."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _PARQUET_SUFFIXES and not p.name.startswith((".", "_")))
        if not files:
            raise DataContractError(f"{path}: directory holds no .parquet files")
        return files, False
    if not path.is_file():
        raise DataContractError(f"{path}: file not found")
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return [path], False
    if name.endswith(_CSV_SUFFIXES):
        return [path], True
    raise DataContractError(f"{path}: unknown format (expected {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}, "
                            f"or a directory of .parquet files)")


def _read_source(path: Path, columns: Sequence[str], role: str, *, delimiter: str | None = None,
                 strings: Sequence[str] = ()) -> _Source:
    """Read `columns` of one file (CSV or Parquet); `strings` are read as text from CSV so every value is kept as
    written ("007" stays "007") and parsed here, where a failure can name its row. `columns=()` reads every column.
    """
    files, csv = _source_files(path)
    tables = []
    for file in files:
        try:
            if csv:
                sep = delimiter or ("\t" if ".tsv" in file.name.lower() else ",")
                parse = pv.ParseOptions(delimiter=sep)
                with pv.open_csv(file, parse_options=parse) as probe:
                    present = probe.schema.names
            else:
                present = pq.read_schema(file).names
        except (pa.ArrowException, OSError, ValueError) as exc:
            kind = "CSV" if csv else "Parquet"
            raise DataContractError(f"{file}: unreadable {kind} file ({str(exc).splitlines()[0]})") from None
        for name in columns:
            if name not in present:
                raise DataContractError(f"{file}: no column '{name}' ({role}); columns: {', '.join(present)}")
        try:
            if csv:
                convert = pv.ConvertOptions(include_columns=list(columns) or None,
                                            column_types={c: pa.string() for c in strings})
                table = pv.read_csv(file, parse_options=parse, convert_options=convert)
            else:
                table = pq.read_table(file, columns=list(columns) or None)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataContractError(f"{file}: unreadable ({' '.join(str(exc).split())})") from None
        tables.append(table)
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataContractError(f"{path}: its .parquet files have incompatible columns ({exc})") from None
    return _Source(files[0] if len(files) == 1 else path, files, [t.num_rows for t in tables], table, csv)


def _ids(source: _Source, name: str) -> pa.Array:
    """A column of IDs as strings: integers are written in decimal; null or empty IDs are an error."""
    values = source.column(name)
    value_type = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type) or pa.types.is_integer(value_type)):
        raise DataContractError(f"{source.path}: column '{name}' has type {values.type}; IDs must be strings or "
                                f"integers (a float column often means an integer column with nulls)")
    values = values.cast(pa.string())
    missing = pc.or_kleene(pc.is_null(values), pc.equal(pc.binary_length(values), 0))
    if pc.any(missing).as_py():
        rows = np.flatnonzero(missing.to_numpy(zero_copy_only=False))
        raise DataContractError(f"{source.where(int(rows[0]), name)}: missing ID ({len(rows)} rows without one)")
    return values


def _numbers(source: _Source, name: str, what: str) -> pa.Array:
    """A column as float64 or int64 numbers; text that does not parse as a number is an error naming its row."""
    values = source.column(name)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
        return values if pa.types.is_integer(values.type) else values.cast(pa.float64())
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataContractError(f"{source.path}: column '{name}' has type {values.type}; expected {what}")
    values = pc.utf8_trim_whitespace(values)
    if _casts(values, pa.int64()):
        return values.cast(pa.int64())
    bad = first_unparsable(values, pa.float64())
    if bad is None:
        return values.cast(pa.float64())
    raise DataContractError(f"{source.where(bad, name)}: {values[bad].as_py()!r} is not {what}")


def _check_present(source: _Source, name: str, values: pa.Array) -> None:
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataContractError(f"{source.where(row, name)}: missing value ({values.null_count} rows without one)")


def _epoch_seconds(source: _Source, name: str, unit: str) -> pa.Array:
    """The time column as int64 epoch seconds (UTC, floored).

    Parquet timestamp and date columns carry their unit and ignore `unit`; numbers are epoch `unit`s; `iso` parses
    ISO 8601 text (`2024-05-01`, `2024-05-01T12:00:00`, with `Z` or a `+02:00` offset; naive times are UTC).
    """
    values = source.column(name)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    _check_present(source, name, values)
    if pa.types.is_date(values.type):
        values = values.cast(pa.timestamp("s"))
    if pa.types.is_timestamp(values.type):
        return pa.array(np.floor_divide(values.view(pa.int64()).to_numpy(), _PER_SECOND[values.type.unit]))
    if unit == "iso":
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise DataContractError(f"{source.path}: column '{name}' has type {values.type}; --time-unit iso expects "
                                    f"ISO 8601 text (use s, ms, us or ns for epoch numbers)")
        text = pc.utf8_trim_whitespace(values)
        # A time ending in `Z` or an offset parses only to a zone-aware type, a naive one only to a naive type (read
        # as UTC); nanoseconds keep fractional seconds parseable, floored below.
        zoned = pc.match_substring_regex(text, r":\d\d(\.\d+)?(Z|[+-]\d\d(:?\d\d)?)$")
        parsed = []
        for mask, target in ((zoned, pa.timestamp("ns", tz="UTC")), (pc.invert(zoned), pa.timestamp("ns"))):
            part = text.filter(mask)
            bad = first_unparsable(part, target)
            if bad is not None:
                bad = int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[bad])
                raise DataContractError(f"{source.where(bad, name)}: {text[bad].as_py()!r} is not an ISO 8601 "
                                        f"timestamp (--time-unit iso)")
            parsed.append((mask, part.cast(target).view(pa.int64())))
        nanoseconds = np.empty(len(text), np.int64)
        for mask, part in parsed:
            nanoseconds[mask.to_numpy(zero_copy_only=False)] = part.to_numpy()
        return pa.array(np.floor_divide(nanoseconds, _PER_SECOND["ns"]))
    numbers = _numbers(source, name, f"a number of epoch {unit} (pass --time-unit iso for dates written as text)")
    per_second = _PER_SECOND[unit]
    if pa.types.is_integer(numbers.type):
        return pa.array(np.floor_divide(numbers.cast(pa.int64()).to_numpy(), per_second))
    floats = numbers.to_numpy(zero_copy_only=False)
    if not np.all(np.isfinite(floats)):
        bad = int(np.flatnonzero(~np.isfinite(floats))[0])
        raise DataContractError(f"{source.where(bad, name)}: {float(floats[bad])!r} is not a finite timestamp")
    return pa.array(np.floor(floats / per_second).astype(np.int64))


def _ratings(source: _Source, name: str) -> pa.Array:
    """The rating column as float32; a missing, non-numeric or non-finite rating is an error naming its row."""
    values = source.column(name)
    _check_present(source, name, values)
    numbers = _numbers(source, name, "a number (rating)").cast(pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore"):
        as_float32 = numbers.astype(np.float32)
    finite = np.isfinite(as_float32)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataContractError(f"{source.where(bad, name)}: rating {float(numbers[bad])!r} is not a finite float32 number")
    return pa.array(as_float32)


def _weights(source: _Source, name: str) -> pa.Array:
    """The weight column as float32; a missing, non-numeric, non-finite, zero or negative weight is an error naming
    its row (a person can fix the file; the nightly pipeline would quarantine such a line as `invalid_weight`)."""
    values = source.column(name)
    _check_present(source, name, values)
    numbers = _numbers(source, name, "a number (weight)").cast(pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore"):
        as_float32 = numbers.astype(np.float32)
    usable = np.isfinite(as_float32) & (as_float32 > 0)
    if not usable.all():
        bad = int(np.flatnonzero(~usable)[0])
        raise DataContractError(f"{source.where(bad, name)}: weight {float(numbers[bad])!r} is not a finite number > 0 "
                                f"(--weight-col; {int((~usable).sum())} rows)")
    return pa.array(as_float32)


def aggregate_lines(interactions: pa.Table) -> tuple[pa.Table, int]:
    """Implicit interactions with lines of one (user, item, timestamp) merged: one row each, `weight` their sum.

    The contract's rule (`read_partition` applies it to partitions written by hand), applied before writing so the
    partitions hold one row per event. Returns the table (unchanged, without a `weight` column if it had none, when
    no two lines share a key) and the number of lines folded into another.
    """
    keys = ["user_id", "item_id", "timestamp"]
    weight = interactions.column("weight").cast(pa.float64()) if "weight" in interactions.column_names else \
        pa.array(np.ones(interactions.num_rows))
    grouped = pa.table({**{k: interactions.column(k) for k in keys}, "weight": weight}) \
        .group_by(keys, use_threads=False).aggregate([("weight", "sum")])
    folded = interactions.num_rows - grouped.num_rows
    if folded == 0:
        return interactions, 0
    return pa.table({**{k: grouped.column(k) for k in keys},
                     "weight": grouped.column("weight_sum").cast(pa.float32())}), folded


def _attributes(path: Path, id_column: str, key: str, role: str, delimiter: str | None) -> pa.Table:
    """A users or items attribute file: its ID column renamed to `key` (unique, as strings) and every other column."""
    source = _read_source(path, [], role, delimiter=delimiter, strings=[id_column])  # CSV: "007" stays "007"
    if id_column not in source.table.column_names:
        raise DataContractError(f"{source.path}: no column '{id_column}' ({role}); columns: "
                                f"{', '.join(source.table.column_names)}")
    ids = _ids(source, id_column)
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        value = repeated.field("values")[0].as_py()
        row = int(np.flatnonzero(pc.equal(ids, value).to_numpy(zero_copy_only=False))[1])
        raise DataContractError(f"{source.where(row, id_column)}: ID {value!r} appears again "
                                f"({len(repeated)} IDs appear more than once)")
    table = source.table.drop_columns([id_column])
    return pa.table({key: ids, **{name: table.column(name) for name in table.column_names}})


#: The catalogue column `convert_generic` reads as item text when `text_col` is not given.
DEFAULT_TEXT_COLUMN = "description"


def _with_words(items: pa.Table, text_col: str | None, path: Path) -> tuple[pa.Table, str | None]:
    """The catalogue with the list column `words` of its text column (`text_col`, else `description` when present);
    the text column itself is kept as written (free text is no token)."""
    names = items.column_names
    if text_col is None:
        if DEFAULT_TEXT_COLUMN not in names:
            return items, None
        text_col = DEFAULT_TEXT_COLUMN
    if text_col not in names or text_col == "item_id":
        attributes = ", ".join(n for n in names if n != "item_id")
        raise DataContractError(f"{path}: no text column '{text_col}' (--text-col); attribute columns: {attributes}")
    if WORDS_COLUMN in names:
        raise DataContractError(f"{path}: has a column '{WORDS_COLUMN}', the name --text-col writes its words to; "
                                f"rename it")
    column = items.column(text_col)
    value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type)):
        raise DataContractError(f"{path}: column '{text_col}' has type {column.type}; --text-col expects text")
    return items.append_column(WORDS_COLUMN, text_words(column)), text_col


def convert_generic(path, out, *, user_col: str, item_col: str, time_col: str, rating_col: str | None = None,
                    weight_col: str | None = None, time_unit: str = "s", items=None, users=None,
                    text_col: str | None = None, freq: str = "week", delimiter: str | None = None,
                    overwrite: bool = False) -> dict:
    """Convert an interaction log (CSV or Parquet) into a contract data directory at `out`; return a summary.

    Args:
        path: a `.csv` / `.tsv` file (optionally `.gz`/`.bz2`/`.zst` compressed), a `.parquet` file, or a directory of
            `.parquet` files, with one row per interaction.
        out: the data directory to write (must be empty or absent unless `overwrite`).
        user_col, item_col, time_col: the names of the user ID, item ID and time columns.
        rating_col: the explicit rating column; None for implicit feedback (no `rating` column is written).
        weight_col: a column of positive numbers written as `weight` (a purchase's quantity, a play count: how much
            an interaction counts); every value must be a finite number > 0. None: weight 1 per line.
        time_unit: how numeric times count, "s", "ms", "us" or "ns" since the epoch; "iso" for ISO 8601 text.
            Ignored for Parquet timestamp and date columns.
        items, users: optional attribute files (CSV or Parquet) whose `item_col` / `user_col` column holds the ID;
            their other columns are written as attributes (e.g. `genres` drives the metadata init of new items).
        text_col: the items file's free-text column whose words (`contract.text_words`) are written as the list
            column `words`, tokens for the metadata init of new items; default `description` when the file has one.
        freq: partition period, "day", "week" (Monday to Sunday) or "month".
        delimiter: CSV field separator (default "," or tab for `.tsv`).
        overwrite: replace the partitions and `_accrete.json` of an existing data directory.
    Returns:
        `{"source": "generic", "freq", "lines", "interactions" (or "ratings"), "aggregated", "users", "items",
        "partitions", "first_date", "last_date", ...}`: `lines` read, `aggregated` implicit lines folded into another
        of the same user, item and time (`lines = interactions + aggregated`).
    """
    began = time.perf_counter()
    path, out = Path(path), Path(out)
    if freq not in PERIOD_FREQS:
        raise DataContractError(f"freq must be one of {PERIOD_FREQS}, got {freq!r}")
    if time_unit not in TIME_UNITS:
        raise DataContractError(f"time unit must be one of {TIME_UNITS}, got {time_unit!r}")
    if text_col is not None and items is None:
        raise DataContractError(f"--text-col {text_col}: names a column of the items file (--items), and none is given")
    roles = {user_col: "--user-col", item_col: "--item-col", time_col: "--time-col"}
    optional = [(name, flag) for name, flag in ((rating_col, "--rating-col"), (weight_col, "--weight-col"))
                if name is not None]
    roles.update(optional)
    if len(roles) != 3 + len(optional):
        raise DataContractError(f"--user-col, --item-col, --time-col, --rating-col and --weight-col must name "
                                f"different columns, got {user_col!r}, {item_col!r}, {time_col!r}, {rating_col!r}, "
                                f"{weight_col!r}")
    source = _read_source(path, list(roles), ", ".join(f"{flag} {name}" for name, flag in roles.items()),
                          delimiter=delimiter, strings=list(roles))
    if source.table.num_rows == 0:
        raise DataContractError(f"{source.path}: no rows")
    interactions = {"user_id": _ids(source, user_col), "item_id": _ids(source, item_col),
                    "timestamp": _epoch_seconds(source, time_col, time_unit)}
    if rating_col is not None:
        interactions["rating"] = _ratings(source, rating_col)
    if weight_col is not None:
        interactions["weight"] = _weights(source, weight_col)
    interactions = pa.table(interactions)
    aggregated = 0
    if rating_col is None:  # with ratings, equal lines stay: the pipeline quarantines them (one judgement each)
        interactions, aggregated = aggregate_lines(interactions)
    item_table = _attributes(Path(items), item_col, "item_id", "--item-col", delimiter) if items else None
    used_text = None
    if item_table is not None:
        item_table, used_text = _with_words(item_table, text_col, Path(items))
    user_table = _attributes(Path(users), user_col, "user_id", "--user-col", delimiter) if users else None

    prepare_output(out, overwrite)
    summary = {"source": "generic", "layout": "csv" if source.csv else "parquet", "freq": freq,
               "lines": source.table.num_rows, **({} if rating_col is not None else {"aggregated": aggregated}),
               **write_partitions(interactions, out, freq, items=item_table, users=user_table)}
    if item_table is None:
        summary.pop("items_without_metadata")
    if used_text is not None:
        summary["text_col"] = used_text
    write_metadata(out, summary, path)
    summary["seconds"] = round(time.perf_counter() - began, 3)
    return summary
