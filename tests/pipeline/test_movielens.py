"""Specification of the MovieLens converter (`pipeline.movielens.convert_movielens`)."""
import datetime
import json

import pyarrow as pa
import pyarrow.csv as pv
import pytest

from accrete.pipeline.contract import data_frequency, list_partitions, read_partition
from accrete.pipeline.errors import DataContractError
from accrete.pipeline.movielens import convert_movielens


def read_all(data_dir):
    parts = [read_partition(data_dir, d) for d in list_partitions(data_dir)]
    tables = {e: pa.concat_tables([getattr(p, e) for p in parts], promote_options="permissive")
              for e in ("interactions", "users", "items")}
    return parts, tables


@pytest.mark.movielens
def test_ml_latest_small_converts_every_rating_user_and_rated_movie(movielens_dir, tmp_path):
    summary = convert_movielens(movielens_dir, tmp_path, freq="week")
    assert (summary["ratings"], summary["users"], summary["items"]) == (100_836, 610, 9_724)
    assert data_frequency(tmp_path) == "week"
    parts, tables = read_all(tmp_path)
    assert summary["partitions"] == len(parts)
    assert all(p.date.weekday() == 0 for p in parts)
    assert sum(p.quarantine.num_rows for p in parts) == 0
    assert all(p.has_ratings for p in parts if p.interactions.num_rows)
    assert tables["interactions"].num_rows == 100_836
    assert tables["users"].num_rows == 610 == len(set(tables["users"]["user_id"].to_pylist()))
    assert tables["items"].num_rows == 9_724
    movies = pv.read_csv(movielens_dir / "movies.csv",
                         convert_options=pv.ConvertOptions(column_types={"movieId": pa.string()}))
    genres = dict(zip(movies["movieId"].to_pylist(), movies["genres"].to_pylist()))
    written = dict(zip(tables["items"]["item_id"].to_pylist(), tables["items"]["genres"].to_pylist()))
    assert all(genres[item] == g for item, g in written.items())
    rated = set(pv.read_csv(movielens_dir / "ratings.csv",
                            convert_options=pv.ConvertOptions(column_types={"movieId": pa.string()}))
                ["movieId"].to_pylist())
    assert set(written) == rated


def test_each_user_and_item_lands_in_the_period_of_its_first_rating(tmp_path):
    day = 86_400
    monday = int(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc).timestamp())  # a Monday
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        f"1,10,4.0,{monday + 7 * day - 1}\n"       # Sunday 23:59:59 of week 1
        f"2,10,3.5,{monday + 7 * day}\n"           # Monday 00:00:00 of week 2
        f"1,20,5.0,{monday + 9 * day}\n"
        f"3,30,1.0,{monday + 40 * day}\n")
    (tmp_path / "ml" / "movies.csv").write_text(
        'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime\n20,Up (2009),(no genres listed)\n'
        "30,Lone (2001),Drama\n40,Never Rated (1990),Comedy\n")
    summary = convert_movielens(tmp_path / "ml", tmp_path / "data", freq="week")
    assert summary["partitions"] == 3 and summary["items"] == 3
    week1, week2, week6 = (datetime.date(2024, 1, 1) + datetime.timedelta(weeks=w) for w in (0, 1, 5))
    assert list_partitions(tmp_path / "data") == [week1, week2, week6]
    p1, p2 = read_partition(tmp_path / "data", week1), read_partition(tmp_path / "data", week2)
    assert p1.users["user_id"].to_pylist() == ["1"] and p1.items.to_pylist() == [
        {"item_id": "10", "title": "Heat, The (1995)", "genres": "Action|Crime"}]
    assert p2.users["user_id"].to_pylist() == ["2"] and p2.items["item_id"].to_pylist() == ["20"]
    assert p2.interactions["rating"].to_pylist() == [3.5, 5.0]

    by_month = convert_movielens(tmp_path / "ml", tmp_path / "monthly", freq="month")
    assert list_partitions(tmp_path / "monthly") == [datetime.date(2024, 1, 1), datetime.date(2024, 2, 1)]
    assert by_month["ratings"] == 4
    assert json.loads((tmp_path / "monthly" / "_accrete.json").read_text())["freq"] == "month"


def test_the_ml_100k_layout_reads_tab_separated_ratings_and_latin1_genre_flags(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    t = int(datetime.datetime(1997, 9, 30, 12, tzinfo=datetime.timezone.utc).timestamp())
    (folder / "u.data").write_text(f"196\t242\t3\t{t}\n186\t302\t3\t{t + 86_400}\n196\t302\t5\t{t + 5}\n"
                                   f"22\t377\t1\t{t + 2 * 86_400}\n")
    flags = {242: [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
             302: [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0],
             377: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}
    titles = {242: "Kolya (1996)", 302: "L.A. Confidential (1997)", 377: "Café Noir (1997)"}
    lines = [f"{m}|{titles[m]}|24-Jan-1997||http://x|" + "|".join(map(str, flags[m])) for m in flags]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("196|49|M|writer|55105\n186|39|F|executive|00000\n22|25|M|writer|40206\n")
    summary = convert_movielens(folder, tmp_path / "data", freq="day")
    assert summary["layout"] == "u.data" and (summary["ratings"], summary["users"], summary["items"]) == (4, 3, 3)
    parts, tables = read_all(tmp_path / "data")
    assert [p.date for p in parts] == [datetime.date(1997, 9, 30), datetime.date(1997, 10, 1),
                                      datetime.date(1997, 10, 2)]
    items = {r["item_id"]: r for r in tables["items"].to_pylist()}
    assert items["242"]["genres"] == "Comedy"
    assert items["302"]["genres"] == "Crime|Film-Noir|Mystery|Thriller"
    assert items["377"] == {"item_id": "377", "title": "Café Noir (1997)", "genres": "(no genres listed)"}
    users = {r["user_id"]: r for r in tables["users"].to_pylist()}
    assert users["186"]["occupation"] == "executive" and users["186"]["zip_code"] == "00000"
    assert tables["interactions"]["rating"].to_pylist() == [3.0, 5.0, 3.0, 1.0]
    assert sum(p.quarantine.num_rows for p in parts) == 0


def test_a_missing_or_unrecognised_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(DataContractError, match="nowhere"):
        convert_movielens(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "ratings.dat").write_text("1::2::3::4\n")
    with pytest.raises(DataContractError, match=f"{tmp_path / 'odd'}: not a recognised MovieLens folder"):
        convert_movielens(tmp_path / "odd", tmp_path / "out")


def test_a_ratings_file_without_a_required_column_is_named(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.csv").write_text("userId,movieId,stars\n1,2,3\n")
    (tmp_path / "ml" / "movies.csv").write_text("movieId,title,genres\n2,X,Drama\n")
    with pytest.raises(DataContractError, match="ratings.csv: missing column 'rating'"):
        convert_movielens(tmp_path / "ml", tmp_path / "out")


def test_a_non_empty_output_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.0,1000000\n")
    (tmp_path / "ml" / "movies.csv").write_text("movieId,title,genres\n2,X,Drama\n")
    convert_movielens(tmp_path / "ml", tmp_path / "out", freq="day")
    with pytest.raises(DataContractError, match="not empty"):
        convert_movielens(tmp_path / "ml", tmp_path / "out", freq="day")
    assert convert_movielens(tmp_path / "ml", tmp_path / "out", freq="month", overwrite=True)["partitions"] == 1
    assert list_partitions(tmp_path / "out") == [datetime.date(1970, 1, 1)]
