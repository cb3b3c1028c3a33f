"""MovieLens, as distributed by GroupLens, converted to contract partitions (real data for the whole pipeline).

Two layouts are recognised:

* `ratings.csv` + `movies.csv` (ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m): comma-separated with a header;
  genres already joined with `"|"`.
* `u.data` + `u.item` (ml-100k): tab-separated `user item rating timestamp` without header, and a `"|"`-separated
  latin-1 movie file whose last 19 columns are genre flags; genre names come from `u.genre` when present.
  `u.user` (age, gender, occupation, zip code), when present, becomes user attributes.

Ratings are split into one partition per period (day, week starting Monday, or calendar month) of their timestamp.
Each user and each rated movie is written to `users/` / `items/` in the period of its first rating, which is when
the pipeline first meets it. Movies nobody rated are not written (they have no arrival date).
"""
from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from pipeline.contract import METADATA_FILE, NO_GENRES, PERIOD_FREQS
from pipeline.errors import DataContractError

# ml-100k's genre order (u.genre), used when the folder has no u.genre file.
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
_EPOCH = datetime.date(1970, 1, 1)


def _read_csv(path: Path, **options) -> pa.Table:
    """A CSV file as a table; any parse failure is a `DataContractError` naming the file."""
    try:
        return pv.read_csv(path, read_options=pv.ReadOptions(**options.pop("read", {})),
                           parse_options=pv.ParseOptions(**options.pop("parse", {})),
                           convert_options=pv.ConvertOptions(**options.pop("convert", {})))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise DataContractError(f"{path}: cannot be read as MovieLens data ({exc})") from None


def _require(path: Path, table: pa.Table, columns: list[str]) -> None:
    for name in columns:
        if name not in table.column_names:
            raise DataContractError(f"{path}: missing column '{name}' (columns: {', '.join(table.column_names)})")


def _ratings_table(path: Path, user, item, rating, timestamp) -> pa.Table:
    """The contract's interaction columns: string IDs, int64 epoch seconds, float32 rating."""
    try:
        return pa.table({"user_id": user.cast(pa.string()), "item_id": item.cast(pa.string()),
                         "timestamp": timestamp.cast(pa.int64()), "rating": rating.cast(pa.float32())})
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataContractError(f"{path}: unexpected column types ({exc})") from None


def _read_latest(folder: Path) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    ratings_path, movies_path = folder / "ratings.csv", folder / "movies.csv"
    ratings = _read_csv(ratings_path, convert={"column_types": {"userId": pa.string(), "movieId": pa.string()}})
    _require(ratings_path, ratings, ["userId", "movieId", "rating", "timestamp"])
    movies = _read_csv(movies_path, convert={"column_types": {"movieId": pa.string(), "title": pa.string(),
                                                              "genres": pa.string()}})
    _require(movies_path, movies, ["movieId", "title", "genres"])
    interactions = _ratings_table(ratings_path, ratings["userId"], ratings["movieId"], ratings["rating"],
                                  ratings["timestamp"])
    items = pa.table({"item_id": movies["movieId"], "title": movies["title"], "genres": movies["genres"]})
    return interactions, items, None


def _read_100k(folder: Path) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    data_path, item_path = folder / "u.data", folder / "u.item"
    names = ["user_id", "item_id", "rating", "timestamp"]
    ratings = _read_csv(data_path, read={"column_names": names}, parse={"delimiter": "\t", "quote_char": False},
                        convert={"column_types": {"user_id": pa.string(), "item_id": pa.string()}})
    interactions = _ratings_table(data_path, ratings["user_id"], ratings["item_id"], ratings["rating"],
                                  ratings["timestamp"])

    genres = list(ML100K_GENRES)
    genre_path = folder / "u.genre"
    if genre_path.is_file():
        table = _read_csv(genre_path, read={"column_names": ["name", "index"], "encoding": "latin-1"},
                          parse={"delimiter": "|", "quote_char": False})
        genres = table["name"].to_pylist()  # a 19-line file
    movie_columns = ["item_id", "title", "release_date", "video_release_date", "imdb_url"] + \
        [f"g{k}" for k in range(len(genres))]
    movies = _read_csv(item_path, read={"column_names": movie_columns, "encoding": "latin-1"},
                       parse={"delimiter": "|", "quote_char": False},
                       convert={"column_types": {"item_id": pa.string(), "title": pa.string()} |
                                {f"g{k}": pa.int8() for k in range(len(genres))}})
    # Flags -> (movie, genre) pairs in row-major order -> one list of names per movie -> "A|B|C".
    kept = [k for k, name in enumerate(genres) if name != "unknown"]
    flags = np.stack([pc.fill_null(movies[f"g{k}"], 0).to_numpy() for k in kept], axis=1) if kept else \
        np.zeros((movies.num_rows, 0), np.int8)
    movie_index, genre_index = np.nonzero(flags == 1)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(movie_index, minlength=movies.num_rows))]).astype(np.int32)
    names = pa.array([genres[k] for k in kept], pa.string()).take(pa.array(genre_index, pa.int64()))
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), names), "|")
    joined = pc.if_else(pc.equal(joined, ""), pa.scalar(NO_GENRES), joined)
    items = pa.table({"item_id": movies["item_id"], "title": movies["title"], "genres": joined})

    users = None
    user_path = folder / "u.user"
    if user_path.is_file():
        table = _read_csv(user_path, read={"column_names": ["user_id", "age", "gender", "occupation", "zip_code"],
                                           "encoding": "latin-1"},
                          parse={"delimiter": "|", "quote_char": False},
                          convert={"column_types": {"user_id": pa.string(), "zip_code": pa.string()}})
        users = table
    return interactions, items, users


def _period_start_days(timestamps: np.ndarray, freq: str) -> np.ndarray:
    """Days since the epoch of the start of each timestamp's period (weeks start on Monday)."""
    days = np.floor_divide(timestamps, 86_400)
    if freq == "day":
        return days
    if freq == "week":
        return days - (days + 3) % 7  # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays
    months = days.astype("datetime64[D]").astype("datetime64[M]")
    return months.astype("datetime64[D]").astype(np.int64)


def _first_period(ids: pa.Array, period: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Each distinct ID and the earliest period it appears in (vectorized group-by minimum)."""
    grouped = pa.table({"id": ids, "period": period}).group_by("id", use_threads=False).aggregate([("period", "min")])
    return grouped["id"].combine_chunks(), grouped["period_min"].to_numpy()


def _write_by_period(table: pa.Table, period: np.ndarray, root: Path) -> list[int]:
    """Write `table` split by `period` into `root/date=.../part-0.parquet`; return the periods written."""
    if len(period) and np.any(period[1:] < period[:-1]):
        order = np.argsort(period, kind="stable")
        table, period = table.take(pa.array(order)), period[order]
    starts = np.flatnonzero(np.r_[True, period[1:] != period[:-1]])
    ends = np.r_[starts[1:], len(period)]
    for start, end in zip(starts, ends):  # one iteration per period, not per row
        date = _EPOCH + datetime.timedelta(days=int(period[start]))
        directory = root / f"date={date.isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(start, end - start), directory / "part-0.parquet")
    return [int(period[s]) for s in starts]


def _write_arrivals(table: pa.Table, id_column: str, root: Path) -> None:
    """Write users or items into the partition of their `_period`, sorted by ID within a partition."""
    table = table.take(pc.sort_indices(table, [("_period", "ascending"), (id_column, "ascending")]))
    period = table["_period"].to_numpy()
    _write_by_period(table.drop_columns(["_period"]), period, root)


def convert_movielens(path, out, *, freq: str = "week", overwrite: bool = False) -> dict:
    """Convert a MovieLens folder into a contract data directory at `out`; return a JSON-able summary.

    Args:
        path: the unpacked MovieLens folder (`ratings.csv`/`movies.csv`, or ml-100k's `u.data`/`u.item`).
        out: the data directory to write (must be empty or absent unless `overwrite`).
        freq: partition period, "day", "week" (Monday to Sunday) or "month".
        overwrite: replace the partitions and `_accrete.json` of an existing data directory.
    Returns:
        `{"layout", "freq", "ratings", "users", "items", "partitions", "first_date", "last_date", ...}` where
        `partitions` counts interaction partitions.
    """
    began = time.perf_counter()
    folder, out = Path(path), Path(out)
    if freq not in PERIOD_FREQS:
        raise DataContractError(f"freq must be one of {PERIOD_FREQS}, got {freq!r}")
    if not folder.is_dir():
        raise DataContractError(f"{folder}: MovieLens folder not found")
    if (folder / "ratings.csv").is_file() and (folder / "movies.csv").is_file():
        layout, (interactions, movies, user_attributes) = "ratings.csv", _read_latest(folder)
    elif (folder / "u.data").is_file() and (folder / "u.item").is_file():
        layout, (interactions, movies, user_attributes) = "u.data", _read_100k(folder)
    else:
        raise DataContractError(f"{folder}: not a recognised MovieLens folder (expected ratings.csv + movies.csv, "
                                f"or u.data + u.item)")
    for name in ("user_id", "item_id", "timestamp", "rating"):
        if interactions[name].null_count:
            raise DataContractError(f"{folder}: {interactions[name].null_count} ratings have no {name}")

    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataContractError(f"{out}: output directory is not empty (pass overwrite=True to replace it)")
        for name in ("interactions", "users", "items", METADATA_FILE):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)

    interactions = interactions.take(pc.sort_indices(
        interactions, [("timestamp", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]))
    period = _period_start_days(interactions["timestamp"].to_numpy(), freq)
    written = _write_by_period(interactions, period, out / "interactions")

    user_ids, user_period = _first_period(interactions["user_id"], period)
    users = pa.table({"user_id": user_ids, "_period": user_period})
    if user_attributes is not None:
        users = users.join(user_attributes, "user_id", join_type="left outer")
    _write_arrivals(users, "user_id", out / "users")

    item_ids, item_period = _first_period(interactions["item_id"], period)
    items = pa.table({"item_id": item_ids, "_period": item_period}).join(movies, "item_id", join_type="left outer")
    _write_arrivals(items, "item_id", out / "items")

    dates = [_EPOCH + datetime.timedelta(days=d) for d in written]
    summary = {
        "source": "movielens",
        "layout": layout,
        "freq": freq,
        "ratings": interactions.num_rows,
        "users": len(user_ids),
        "items": len(item_ids),
        "items_without_metadata": int(items["title"].null_count),
        "partitions": len(written),
        "first_date": dates[0].isoformat() if dates else None,
        "last_date": dates[-1].isoformat() if dates else None,
    }
    (out / METADATA_FILE).write_text(json.dumps({**summary, "path": str(folder.resolve())}, indent=2) + "\n")
    summary["seconds"] = round(time.perf_counter() - began, 3)
    return summary
