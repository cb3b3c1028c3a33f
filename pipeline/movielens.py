"""MovieLens, as distributed by GroupLens, converted to contract partitions (real data for the whole pipeline).

Three layouts are recognised:

* `ratings.csv` + `movies.csv` (ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m): comma-separated with a header;
  genres already joined with `"|"`.
* `ratings.dat` + `movies.dat` (ml-1m, ml-10m): `::`-separated without header; movie titles latin-1 in ml-1m and
  UTF-8 in ml-10m (detected). ml-1m's `users.dat` (gender, age group, occupation code, zip code) becomes user
  attributes.
* `u.data` + `u.item` (ml-100k): tab-separated `user item rating timestamp` without header, and a `"|"`-separated
  latin-1 movie file whose last 19 columns are genre flags; genre names come from `u.genre` when present.
  `u.user` (age, gender, occupation, zip code), when present, becomes user attributes.

Ratings are split into one partition per period (day, week starting Monday, or calendar month) of their timestamp.
Each user and each rated movie is written to `users/` / `items/` in the period of its first rating, which is when
the pipeline first meets it. Movies nobody rated are not written (they have no arrival date). The writing is
`pipeline.converters.write_partitions`, shared with the generic converter.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq

from accrete.pipeline.contract import NO_GENRES, PERIOD_FREQS
from accrete.pipeline.converters import first_unparsable, prepare_output, write_metadata, write_partitions
from accrete.pipeline.errors import DataContractError

# ml-100k's genre order (u.genre), used when the folder has no u.genre file.
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
# A byte no MovieLens text holds: the `.dat` files are read as one column per line, then split on "::".
_WHOLE_LINE = "\x1f"


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


def _dat_encoding(path: Path) -> str:
    """The encoding of a `.dat` file: ml-10m's are UTF-8, ml-1m's latin-1 (which any byte sequence decodes as)."""
    with path.open("rb") as handle:
        sample = handle.read()
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _read_dat(path: Path, names: list[str], *, encoding: str = "utf-8") -> pa.Table:
    """A `::`-separated file without header (ml-1m, ml-10m) as a table of string columns named `names`.

    pyarrow's CSV reader takes a one-character delimiter only, so each line is read whole (multi-threaded, no
    quoting: titles hold commas and quotes) and split on "::" by pyarrow.compute. A line without exactly
    `len(names)` fields, a blank one included (so line numbers stay exact), is an error naming its line number.
    """
    lines = _read_csv(path, read={"column_names": ["line"], "encoding": encoding},
                      parse={"delimiter": _WHOLE_LINE, "quote_char": False, "escape_char": False,
                             "ignore_empty_lines": False},
                      convert={"column_types": {"line": pa.string()}})["line"].combine_chunks()
    fields = pc.split_pattern(lines, "::")
    wrong = pc.not_equal(pc.list_value_length(fields), len(names))
    if pc.any(wrong).as_py():
        row = int(np.flatnonzero(wrong.to_numpy(zero_copy_only=False))[0])
        raise DataContractError(f"{path}: line {row + 1}: expected {len(names)} fields {'::'.join(names)}, "
                                f"got {lines[row].as_py()!r}")
    return pa.table({name: pc.list_element(fields, k) for k, name in enumerate(names)})


def _numeric(path: Path, table: pa.Table, name: str, target: pa.DataType) -> pa.Array:
    """A text column cast to `target`; the first value that does not parse is named with its line."""
    column = table[name].combine_chunks()
    bad = first_unparsable(column, target)
    if bad is not None:
        raise DataContractError(f"{path}: line {bad + 1}: {name} {column[bad].as_py()!r} is not a number")
    return column.cast(target)


def _read_dat_layout(folder: Path) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """ml-1m / ml-10m: `ratings.dat` UserID::MovieID::Rating::Timestamp, `movies.dat` MovieID::Title::Genres,
    and in ml-1m `users.dat` UserID::Gender::Age::Occupation::Zip-code."""
    ratings_path, movies_path = folder / "ratings.dat", folder / "movies.dat"
    ratings = _read_dat(ratings_path, ["user_id", "item_id", "rating", "timestamp"])
    interactions = pa.table({
        "user_id": ratings["user_id"], "item_id": ratings["item_id"],
        "timestamp": _numeric(ratings_path, ratings, "timestamp", pa.int64()),
        "rating": _numeric(ratings_path, ratings, "rating", pa.float32()),
    })
    movies = _read_dat(movies_path, ["item_id", "title", "genres"], encoding=_dat_encoding(movies_path))
    users = None
    users_path = folder / "users.dat"
    if users_path.is_file():
        table = _read_dat(users_path, ["user_id", "gender", "age", "occupation", "zip_code"],
                          encoding=_dat_encoding(users_path))
        users = table.set_column(2, "age", _numeric(users_path, table, "age", pa.int64())) \
            .set_column(3, "occupation", _numeric(users_path, table, "occupation", pa.int64()))
    return interactions, movies, users


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


def convert_movielens(path, out, *, freq: str = "week", overwrite: bool = False) -> dict:
    """Convert a MovieLens folder into a contract data directory at `out`; return a JSON-able summary.

    Args:
        path: the unpacked MovieLens folder (`ratings.csv`/`movies.csv`, `ratings.dat`/`movies.dat`, or ml-100k's
            `u.data`/`u.item`).
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
    elif (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
        layout, (interactions, movies, user_attributes) = "ratings.dat", _read_dat_layout(folder)
    elif (folder / "u.data").is_file() and (folder / "u.item").is_file():
        layout, (interactions, movies, user_attributes) = "u.data", _read_100k(folder)
    else:
        raise DataContractError(f"{folder}: not a recognised MovieLens folder (expected ratings.csv + movies.csv, "
                                f"ratings.dat + movies.dat, or u.data + u.item)")
    for name in ("user_id", "item_id", "timestamp", "rating"):
        if interactions[name].null_count:
            raise DataContractError(f"{folder}: {interactions[name].null_count} ratings have no {name}")

    prepare_output(out, overwrite)
    summary = {"source": "movielens", "layout": layout, "freq": freq,
               **write_partitions(interactions, out, freq, items=movies, users=user_attributes)}
    write_metadata(out, summary, folder)
    summary["seconds"] = round(time.perf_counter() - began, 3)
    return summary
