"""Conversion benchmark: an ml-1m-shaped folder (`::`-separated `.dat` files, 1,000,209 ratings by default) and the
same ratings as a generic CSV, converted to weekly partitions.

Times, best of --repeat:

* dat read: `ratings.dat` parsed alone (read each line whole, split on "::" with pyarrow.compute, cast);
* movielens: `convert_movielens` on the folder (read, sort, split into weekly partitions, users and items);
* generic csv: `convert_generic` on the same ratings written as `ratings.csv` with a header.

    .venv/bin/python bench/convert.py [--ratings 1000209] [--repeat 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accrete.pipeline.converters import convert_generic  # noqa: E402
from accrete.pipeline.movielens import _read_dat, convert_movielens  # noqa: E402

from ingest import best_of  # noqa: E402  (bench/ is the script's own folder, first on sys.path)

ML1M_USERS, ML1M_MOVIES = 6_040, 3_706
ML1M_START, ML1M_END = 956_703_932, 1_046_454_590  # the first and last timestamps of ml-1m


def write_ml1m(folder: Path, ratings: int, seed: int = 0) -> None:
    """ml-1m's shape: user and movie counts, popularity skew, integer stars, its time span; latin-1 movie titles."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    users = rng.integers(1, ML1M_USERS + 1, ratings)
    movies = np.minimum(rng.zipf(1.3, ratings), ML1M_MOVIES)
    stars = rng.integers(1, 6, ratings)
    times = np.sort(rng.integers(ML1M_START, ML1M_END, ratings))
    lines = np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(np.char.add(
        users.astype(str), "::"), movies.astype(str)), "::"), stars.astype(str)), "::"), times.astype(str))
    (folder / "ratings.dat").write_text("\n".join(lines.tolist()) + "\n")
    genres = ["Action", "Comedy", "Drama", "Children's", "Sci-Fi"]
    (folder / "movies.dat").write_bytes("".join(
        f"{m}::Café, Film {m}: the Sequel ({1919 + m % 80})::{genres[m % 5]}|{genres[(m * 7) % 5]}\n"
        for m in range(1, ML1M_MOVIES + 1)).encode("latin-1"))
    (folder / "users.dat").write_text("".join(f"{u}::{'FM'[u % 2]}::25::{u % 21}::{10000 + u}\n"
                                              for u in range(1, ML1M_USERS + 1)))
    with (folder.parent / "ratings.csv").open("w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        out.write("\n".join(np.char.replace(lines, "::", ",").tolist()) + "\n")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=1_000_209)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="accrete-convert-bench-"))
    folder = work / "ml-1m"
    write_ml1m(folder, args.ratings)
    out = work / "out"
    results = {"ratings": args.ratings, "ratings_dat_mb": round((folder / "ratings.dat").stat().st_size / 1e6, 1)}
    results["dat_read_s"] = best_of(args.repeat, lambda: _read_dat(folder / "ratings.dat",
                                                                   ["user_id", "item_id", "rating", "timestamp"]))
    results["movielens_s"] = best_of(args.repeat, lambda: convert_movielens(folder, out, freq="week", overwrite=True))
    results["generic_csv_s"] = best_of(args.repeat, lambda: convert_generic(
        work / "ratings.csv", out, user_col="userId", item_col="movieId", time_col="timestamp", rating_col="rating",
        freq="week", overwrite=True))
    for key in ("dat_read", "movielens", "generic_csv"):
        results[f"{key}_rows_per_s"] = round(args.ratings / results[f"{key}_s"])
        results[f"{key}_s"] = round(results[f"{key}_s"], 3)
    print(json.dumps(results, indent=2))
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
