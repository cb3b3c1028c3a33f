"""Specification of the converters of real data: MovieLens `.dat` (ml-1m, ml-10m) and 25M-style CSV
(`pipeline.movielens.convert_movielens`), and the generic CSV / Parquet converter
(`pipeline.converters.convert_generic`, `accrete convert generic`)."""
import datetime
import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accrete.pipeline.contract import item_attribute_tokens, list_partitions, read_partition
from accrete.pipeline.converters import convert_generic, first_unparsable
from accrete.pipeline.errors import DataContractError
from accrete.pipeline.movielens import convert_movielens

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400
T0 = int(datetime.datetime(2000, 12, 31, 22, tzinfo=datetime.timezone.utc).timestamp())  # a Sunday night


def read_all(data_dir):
    parts = [read_partition(data_dir, d) for d in list_partitions(data_dir)]
    tables = {e: pa.concat_tables([getattr(p, e) for p in parts], promote_options="permissive")
              for e in ("interactions", "users", "items")}
    return parts, tables


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256 of its bytes): two outputs compare byte for byte."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "_accrete.json"}


# ----------------------------------------------------------------------------------------------- MovieLens .dat


def write_ml1m(folder: Path) -> None:
    """A tiny ml-1m: latin-1 titles with commas, quotes and colons, ml-1m genre names, users.dat."""
    folder.mkdir()
    (folder / "movies.dat").write_bytes((
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "260::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi\n"
        "1178::Paths of Glory (1957)::Drama|War\n"
        '2::"Great Performances" Cats (1998), The::Musical\n'
        "3::Café au lait (1993)::Comedy\n"
        "9::Never Rated (1990)::Drama\n").encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n10::F::35::1::95370-1234\n")
    (folder / "ratings.dat").write_text(
        f"1::1193::5::{T0}\n"            # movie 1193 is not in movies.dat: written without metadata
        f"1::260::4::{T0 + 1}\n"
        f"2::3::3::{T0 + 2 * 3600}\n"    # Monday 00:00 UTC: the next week
        f"10::2::1::{T0 + 9 * DAY}\n"
        f"2::1::5::{T0 + 9 * DAY + 5}\n")


def test_ml_1m_dat_files_convert_with_latin1_titles_users_and_weekly_partitions(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    summary = convert_movielens(tmp_path / "ml-1m", tmp_path / "data", freq="week")
    assert summary["layout"] == "ratings.dat"
    assert (summary["ratings"], summary["users"], summary["items"], summary["items_without_metadata"]) == (5, 3, 5, 1)
    parts, tables = read_all(tmp_path / "data")
    assert [p.date for p in parts] == [datetime.date(2000, 12, 25), datetime.date(2001, 1, 1),
                                      datetime.date(2001, 1, 8)]
    assert sum(p.quarantine.num_rows for p in parts) == 0
    items = {r["item_id"]: r for r in tables["items"].to_pylist()}
    assert items["3"]["title"] == "Café au lait (1993)"
    assert items["260"]["title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert items["2"] == {"item_id": "2", "title": '"Great Performances" Cats (1998), The', "genres": "Musical"}
    assert items["1193"]["title"] is None and "9" not in items
    users = {r["user_id"]: r for r in tables["users"].to_pylist()}
    assert users["10"] == {"user_id": "10", "gender": "F", "age": 35, "occupation": 1, "zip_code": "95370-1234"}
    interactions = tables["interactions"]
    assert interactions["timestamp"].to_pylist() == [T0, T0 + 1, T0 + 7200, T0 + 9 * DAY, T0 + 9 * DAY + 5]
    assert interactions["rating"].type == pa.float32() and interactions["rating"].to_pylist() == [5, 4, 3, 1, 5]


def test_ml_10m_dat_files_are_utf8_with_half_stars_and_no_users_file(tmp_path):
    folder = tmp_path / "ml-10m"
    folder.mkdir()
    (folder / "movies.dat").write_text("122::Boomerang (1992)::Comedy|Romance\n"
                                       "185::Net, The (1995)::Action|Crime|Thriller\n"
                                       "5::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n",
                                       encoding="utf-8")
    (folder / "ratings.dat").write_text(f"1::122::5::{T0}\n1::185::4.5::{T0 + 60}\n7::5::0.5::{T0 + 120}\n")
    (folder / "tags.dat").write_text(f"15::4973::excellent!::{T0}\n")  # present in ml-10m, not used
    summary = convert_movielens(folder, tmp_path / "data", freq="month")
    assert summary["layout"] == "ratings.dat" and summary["users"] == 2
    _, tables = read_all(tmp_path / "data")
    assert tables["interactions"]["rating"].to_pylist() == [5.0, 4.5, 0.5]
    titles = dict(zip(tables["items"]["item_id"].to_pylist(), tables["items"]["title"].to_pylist()))
    assert titles["5"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert tables["users"].column_names == ["user_id"]


@pytest.mark.parametrize("line, fragment", [
    ("3::1193::5\n", "line 2: expected 4 fields user_id::item_id::rating::timestamp, got '3::1193::5'"),
    (f"3::1193:5::{T0}\n", "line 2: expected 4 fields"),
    (f"3::1193::five::{T0}\n", "line 2: rating 'five' is not a number"),
    ("3::1193::5::yesterday\n", "line 2: timestamp 'yesterday' is not a number"),
    ("\n", "line 2: expected 4 fields user_id::item_id::rating::timestamp, got ''"),
])
def test_a_malformed_dat_line_is_named_by_file_and_line_and_nothing_is_written(tmp_path, line, fragment):
    write_ml1m(tmp_path / "ml")
    ratings = tmp_path / "ml" / "ratings.dat"
    ratings.write_text(f"1::1193::5::{T0}\n{line}1::260::4::{T0}\n")
    with pytest.raises(DataContractError) as caught:
        convert_movielens(tmp_path / "ml", tmp_path / "data")
    assert str(caught.value).startswith(f"{ratings}: ") and fragment in str(caught.value)
    assert not (tmp_path / "data").exists()


def test_first_unparsable_finds_the_first_bad_value_by_bisection():
    values = pa.array([str(k) for k in range(1000)] * 3)
    assert first_unparsable(values, pa.int64()) is None
    for bad in (0, 1, 517, 2999):
        broken = values.to_pylist()
        broken[bad], broken[-1 if bad != 2999 else 0] = "x", "y"
        assert first_unparsable(pa.array(broken), pa.int64()) == min(bad, 2999 if bad != 2999 else 0)


# ----------------------------------------------------------------------------------------------- MovieLens 25M CSV


def write_ml25m(folder: Path) -> None:
    """A tiny ml-25m: the same ratings.csv / movies.csv as ml-latest-small, plus the files 25M adds (ignored)."""
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,296,5.0,1147880044\n1,306,3.5,1147868817\n1,307,5.0,1147868828\n"
        "162541,209171,0.5,1574327703\n162541,50872,4.5,1240953372\n3,1,4.0,789652009\n")
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
        '296,Pulp Fiction (1994),Comedy|Crime|Drama|Thriller\n'
        '306,"Three Colors: Red (Trois couleurs: Rouge) (1994)",Drama\n'
        '307,"Three Colors: Blue (Trois couleurs: Bleu) (1993)",Drama\n'
        '50872,Ratatouille (2007),Animation|Children|Drama\n'
        '209171,"""Great Performances"" Cats (1998), The",(no genres listed)\n'
        '209169,Ruslan i Lyudmila (1914),(no genres listed)\n', encoding="utf-8")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n")
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n3,260,classic,1439472355\n")
    (folder / "genome-tags.csv").write_text("tagId,tag\n1,007\n")


def test_the_ratings_csv_reader_covers_the_25m_layout(tmp_path):
    write_ml25m(tmp_path / "ml-25m")
    summary = convert_movielens(tmp_path / "ml-25m", tmp_path / "data", freq="month")
    assert summary["layout"] == "ratings.csv"
    assert (summary["ratings"], summary["users"], summary["items"], summary["items_without_metadata"]) == (6, 3, 6, 0)
    assert (summary["first_date"], summary["last_date"]) == ("1995-01-01", "2019-11-01")
    parts, tables = read_all(tmp_path / "data")
    assert sum(p.quarantine.num_rows for p in parts) == 0
    items = {r["item_id"]: r for r in tables["items"].to_pylist()}
    assert items["209171"] == {"item_id": "209171", "title": '"Great Performances" Cats (1998), The',
                               "genres": "(no genres listed)"}
    assert items["306"]["title"] == "Three Colors: Red (Trois couleurs: Rouge) (1994)"
    assert sorted(tables["interactions"]["rating"].to_pylist()) == [0.5, 3.5, 4.0, 4.5, 5.0, 5.0]


# ----------------------------------------------------------------------------------------------- generic converter


def test_generic_csv_writes_the_same_partitions_as_the_movielens_converter(tmp_path):
    """Same ratings, same movies: byte-identical partition files, so both feed the pipeline the same way."""
    write_ml25m(tmp_path / "ml")
    convert_movielens(tmp_path / "ml", tmp_path / "a", freq="week")
    (tmp_path / "items.csv").write_text((tmp_path / "ml" / "movies.csv").read_text().replace("movieId,", "item,", 1))
    summary = convert_generic(tmp_path / "ml" / "ratings.csv", tmp_path / "b", user_col="userId", item_col="movieId",
                              time_col="timestamp", rating_col="rating", items=tmp_path / "ml" / "movies.csv",
                              freq="week")
    assert summary["source"] == "generic" and summary["layout"] == "csv"
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert list_partitions(tmp_path / "b") == list_partitions(tmp_path / "a")


def test_generic_parquet_with_timestamp_type_integer_ids_and_no_rating_is_implicit(tmp_path):
    moments = [datetime.datetime(2024, 3, 4, 10, tzinfo=datetime.timezone.utc),
               datetime.datetime(2024, 3, 5, 23, 59, 59, 999_000, tzinfo=datetime.timezone.utc),
               datetime.datetime(2024, 3, 6, tzinfo=datetime.timezone.utc)]
    pq.write_table(pa.table({"customer": pa.array([7, 7, 8], pa.int64()), "sku": ["A-1", "B-2", "A-1"],
                             "at": pa.array(moments, pa.timestamp("ms", tz="UTC")), "extra": [1, 2, 3]}),
                   tmp_path / "log.parquet")
    summary = convert_generic(tmp_path / "log.parquet", tmp_path / "data", user_col="customer", item_col="sku",
                              time_col="at", freq="day")
    assert summary["layout"] == "parquet" and summary["partitions"] == 3
    parts, tables = read_all(tmp_path / "data")
    assert not any(p.has_ratings for p in parts)
    assert tables["interactions"]["user_id"].to_pylist() == ["7", "7", "8"]
    assert tables["interactions"]["timestamp"].to_pylist() == [int(m.timestamp()) // 1 for m in moments]
    assert tables["interactions"]["rating"].to_pylist() == [1.0, 1.0, 1.0]
    assert pq.read_schema(next((tmp_path / "data" / "interactions").rglob("*.parquet"))).names == \
        ["user_id", "item_id", "timestamp"]


def test_generic_csv_reads_iso_times_with_zones_millisecond_epochs_and_keeps_leading_zeros(tmp_path):
    (tmp_path / "iso.csv").write_text(
        "user,item,when,stars\n007,x,2024-03-04,4\n007,y,2024-03-04T23:30:00+02:00,5\n"
        "8,x, 2024-03-05T01:00:00.999Z ,3.5\n8,z,2024-03-05 12:00:00,2\n9,z,2024-03-04T10:00+0200,1\n")
    convert_generic(tmp_path / "iso.csv", tmp_path / "data", user_col="user", item_col="item", time_col="when",
                    rating_col="stars", time_unit="iso", freq="day")
    _, tables = read_all(tmp_path / "data")
    day4 = int(datetime.datetime(2024, 3, 4, tzinfo=datetime.timezone.utc).timestamp())
    assert tables["interactions"].drop_columns(["weight"]).to_pylist() == [
        {"user_id": "007", "item_id": "x", "timestamp": day4, "rating": 4.0},
        {"user_id": "9", "item_id": "z", "timestamp": day4 + 8 * 3600, "rating": 1.0},
        {"user_id": "007", "item_id": "y", "timestamp": day4 + 21.5 * 3600, "rating": 5.0},
        {"user_id": "8", "item_id": "x", "timestamp": day4 + 25 * 3600, "rating": 3.5},
        {"user_id": "8", "item_id": "z", "timestamp": day4 + 36 * 3600, "rating": 2.0}]

    (tmp_path / "ms.tsv").write_text("u\ti\tt\n1\t2\t1709546400123\n1\t3\t1709546400999\n")
    convert_generic(tmp_path / "ms.tsv", tmp_path / "ms", user_col="u", item_col="i", time_col="t", time_unit="ms")
    _, tables = read_all(tmp_path / "ms")
    assert tables["interactions"]["timestamp"].to_pylist() == [1709546400, 1709546400]


def test_generic_items_and_users_files_become_attributes(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t\n1,10,1709546400\n2,11,1709632800\n")
    (tmp_path / "items.csv").write_text("i,category,title\n10,shoes,Red shoe\n11,hats,Top hat\n12,hats,Unsold\n")
    (tmp_path / "users.csv").write_text("u,segment\n1,new\n2,loyal\n")
    summary = convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="u", item_col="i", time_col="t",
                              items=tmp_path / "items.csv", users=tmp_path / "users.csv", freq="day")
    assert summary["items_without_metadata"] == 0
    _, tables = read_all(tmp_path / "data")
    assert tables["items"].to_pylist() == [{"item_id": "10", "category": "shoes", "title": "Red shoe"},
                                           {"item_id": "11", "category": "hats", "title": "Top hat"}]
    assert tables["users"].to_pylist() == [{"user_id": "1", "segment": "new"}, {"user_id": "2", "segment": "loyal"}]


def test_generic_weights_are_carried_and_lines_of_one_user_item_and_time_are_summed(tmp_path):
    (tmp_path / "log.csv").write_text(
        "customer,sku,at,quantity\n"
        "c1,a,2024-03-04T10:00:00,6\n"
        "c1,b,2024-03-04T10:00:00,2\n"
        "c1,a,2024-03-04T10:00:00,12\n"     # the same basket line again: one interaction, 18
        "c2,a,2024-03-04T10:00:00,1.5\n"
        "c1,a,2024-03-05T09:00:00,6\n")     # a later purchase: its own interaction
    summary = convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="customer", item_col="sku",
                              time_col="at", time_unit="iso", weight_col="quantity", freq="day")
    assert (summary["lines"], summary["interactions"], summary["aggregated"]) == (5, 4, 1)
    parts, tables = read_all(tmp_path / "data")
    assert sum(p.quarantine.num_rows for p in parts) == 0
    assert sum(p.report["aggregated"]["interactions"] for p in parts) == 0  # already one row per event on disk
    rows = {(r["user_id"], r["item_id"], r["timestamp"] % 86_400 // 3600): r["weight"]
            for r in tables["interactions"].to_pylist()}
    assert rows == {("c1", "a", 10): 18.0, ("c1", "b", 10): 2.0, ("c2", "a", 10): 1.5, ("c1", "a", 9): 6.0}
    assert tables["interactions"]["weight"].type == pa.float32()


def test_generic_implicit_lines_without_weights_are_summed_to_a_count(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t\n1,10,1709546400\n1,10,1709546400\n1,10,1709546400\n2,10,1709546400\n")
    summary = convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="u", item_col="i", time_col="t")
    assert (summary["interactions"], summary["aggregated"]) == (2, 2)
    _, tables = read_all(tmp_path / "data")
    assert sorted(tables["interactions"]["weight"].to_pylist()) == [1.0, 3.0]


def test_generic_ratings_keep_equal_lines_for_the_pipeline_to_quarantine(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t,r\n1,10,1709546400,4\n1,10,1709546400,4\n")
    summary = convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="u", item_col="i", time_col="t",
                              rating_col="r")
    assert summary["ratings"] == 2 and "aggregated" not in summary
    parts, _ = read_all(tmp_path / "data")
    assert parts[0].report["quarantined"] == {"duplicate_row": 1}


def test_generic_item_descriptions_become_word_tokens(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t\n1,10,1709546400\n2,11,1709632800\n2,12,1709632800\n")
    (tmp_path / "items.csv").write_text(
        'i,description\n10,WHITE HANGING HEART T-LIGHT HOLDER\n11,"PACK OF 72 RETROSPOT CAKE CASES"\n12,\n')
    summary = convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="u", item_col="i", time_col="t",
                              items=tmp_path / "items.csv", freq="day")
    assert summary["text_col"] == "description"
    _, tables = read_all(tmp_path / "data")
    words = dict(zip(tables["items"]["item_id"].to_pylist(), tables["items"]["words"].to_pylist()))
    assert words == {"10": ["white", "hanging", "heart", "light", "holder"], "11": ["retrospot", "cake", "cases"],
                     "12": []}
    assert tables["items"]["description"].to_pylist()[0] == "WHITE HANGING HEART T-LIGHT HOLDER"
    ids, (index, tokens) = item_attribute_tokens(tables["items"])
    by_item = {ids[int(k)].as_py(): [] for k in index}
    for k, token in zip(index, tokens.to_pylist()):
        by_item[ids[int(k)].as_py()].append(token)
    assert by_item == {"10": ["words=hanging", "words=heart", "words=holder", "words=light", "words=white"],
                       "11": ["words=cake", "words=cases", "words=retrospot"]}


def test_generic_text_col_names_another_column_and_a_missing_one_is_an_error(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t\n1,10,1709546400\n")
    (tmp_path / "items.csv").write_text("i,name,description\n10,Velvet Armchair,ignored words here\n")
    convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="u", item_col="i", time_col="t",
                    items=tmp_path / "items.csv", text_col="name")
    _, tables = read_all(tmp_path / "data")
    assert tables["items"]["words"].to_pylist() == [["velvet", "armchair"]]
    with pytest.raises(DataContractError, match=r"items.csv: no text column 'label' \(--text-col\); attribute columns: name, description$"):
        convert_generic(tmp_path / "log.csv", tmp_path / "other", user_col="u", item_col="i", time_col="t",
                        items=tmp_path / "items.csv", text_col="label")


def test_movielens_genres_arrive_as_tokens(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    convert_movielens(tmp_path / "ml-1m", tmp_path / "data")
    _, tables = read_all(tmp_path / "data")
    ids, (index, tokens) = item_attribute_tokens(tables["items"])
    star_wars = [t for k, t in zip(index, tokens.to_pylist()) if ids[int(k)].as_py() == "260"]
    assert star_wars == ["genres=Action", "genres=Adventure", "genres=Fantasy", "genres=Sci-Fi"]


GENERIC_ERRORS = [
    # (file name, content, options, fragments of the one-line error)
    ("log.csv", "user,item,ts\n1,2,3\n", dict(time_col="timestamp"),
     ["log.csv: no column 'timestamp'", "columns: user, item, ts"]),
    ("log.csv", "user,item,timestamp\n1,2,1709546400\n1,3,soon\n", {},
     ["log.csv: line 3, column 'timestamp': 'soon' is not a number of epoch s"]),
    ("log.csv", "user,item,timestamp\n1,2,2024-03-04\n1,3,2024-13-04\n", dict(time_unit="iso"),
     ["log.csv: line 3, column 'timestamp': '2024-13-04' is not an ISO 8601 timestamp"]),
    ("log.csv", "user,item,timestamp\n1,2,1709546400\n,3,1709546400\n,4,1709546400\n", {},
     ["log.csv: line 3, column 'user': missing ID (2 rows without one)"]),
    ("log.csv", "user,item,timestamp,stars\n1,2,1709546400,4\n1,3,1709546400,good\n", dict(rating_col="stars"),
     ["log.csv: line 3, column 'stars': 'good' is not a number"]),
    ("log.csv", "user,item,timestamp,stars\n1,2,1709546400,NaN\n", dict(rating_col="stars"),
     ["log.csv: line 2, column 'stars': rating nan is not a finite float32 number"]),
    ("log.csv", "user,item,timestamp,stars\n1,2,1709546400,1e300\n", dict(rating_col="stars"),
     ["line 2, column 'stars': rating 1e+300 is not a finite float32 number"]),
    ("log.csv", "user,item,timestamp,qty\n1,2,1709546400,3\n1,3,1709546400,0\n1,4,1709546400,-1\n",
     dict(weight_col="qty"), ["log.csv: line 3, column 'qty': weight 0.0 is not a finite number > 0", "2 rows"]),
    ("log.csv", "user,item,timestamp,qty\n1,2,1709546400,\n", dict(weight_col="qty"),
     ["log.csv: line 2, column 'qty': '' is not a number (weight)"]),
    ("log.csv", "user,item,timestamp,qty\n1,2,1709546400,nan\n", dict(weight_col="qty"),
     ["line 2, column 'qty': weight nan is not a finite number > 0"]),
    ("log.csv", "user,item,timestamp,qty\n1,2,1709546400,lots\n", dict(weight_col="qty"),
     ["line 2, column 'qty': 'lots' is not a number (weight)"]),
    ("log.csv", "user,item,timestamp\n1,2,3\n", dict(text_col="description"), ["--text-col description", "--items"]),
    ("log.csv", "user,item,timestamp\n1,2\n", {}, ["log.csv: unreadable", "Expected 3 columns, got 2"]),
    ("log.csv", "user,item,timestamp\n", {}, ["log.csv: no rows"]),
    ("log.json", "{}", {}, ["log.json: unknown format"]),
    ("log.parquet", "user,item,timestamp\n1,2,3\n", {}, ["log.parquet: unreadable Parquet file"]),
    ("log.csv", "user,item,timestamp\n1,2,3\n", dict(item_col="user"), ["must name different columns"]),
    ("log.csv", "user,item,timestamp\n1,2,3\n", dict(weight_col="timestamp"), ["must name different columns"]),
]


@pytest.mark.parametrize("name, content, options, fragments", GENERIC_ERRORS,
                         ids=[f"{k}-{e[3][0].split(': ', 1)[-1][:30]}" for k, e in enumerate(GENERIC_ERRORS)])
def test_every_generic_input_mistake_is_one_line_naming_the_file_and_nothing_is_written(
        tmp_path, name, content, options, fragments):
    path = tmp_path / name
    path.write_text(content)
    kwargs = dict(user_col="user", item_col="item", time_col="timestamp") | options
    with pytest.raises(DataContractError) as caught:
        convert_generic(path, tmp_path / "data", **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not (tmp_path / "data").exists()


def test_generic_parquet_float_ids_and_null_times_are_named(tmp_path):
    pq.write_table(pa.table({"u": [1.0, 2.0], "i": ["a", "b"], "t": [1709546400, 1709546401]}), tmp_path / "f.parquet")
    with pytest.raises(DataContractError, match=r"f.parquet: column 'u' has type double; IDs must be strings or int"):
        convert_generic(tmp_path / "f.parquet", tmp_path / "data", user_col="u", item_col="i", time_col="t")
    pq.write_table(pa.table({"u": [1, 2], "i": ["a", "b"], "t": pa.array([1709546400, None], pa.int64())}),
                   tmp_path / "n.parquet")
    with pytest.raises(DataContractError, match=r"n.parquet: row 1, column 't': missing value \(1 rows without one\)"):
        convert_generic(tmp_path / "n.parquet", tmp_path / "data", user_col="u", item_col="i", time_col="t")


def test_a_directory_of_parquet_files_is_one_log_and_an_error_names_the_file_and_its_row(tmp_path):
    (tmp_path / "log").mkdir()
    pq.write_table(pa.table({"u": ["a", "b"], "i": [1, 2], "t": [1709546400, 1709546401]}), tmp_path / "log" / "a.parquet")
    pq.write_table(pa.table({"u": ["c", "d"], "i": [3, 4], "t": [1709632800, 1709632801]}), tmp_path / "log" / "b.parquet")
    summary = convert_generic(tmp_path / "log", tmp_path / "data", user_col="u", item_col="i", time_col="t", freq="day")
    assert (summary["interactions"], summary["partitions"]) == (4, 2) and "ratings" not in summary
    pq.write_table(pa.table({"u": ["c", None], "i": [3, 4], "t": [1709632800, 1709632801]}), tmp_path / "log" / "b.parquet")
    with pytest.raises(DataContractError, match=r"log/b.parquet: row 1, column 'u': missing ID \(1 rows without one\)"):
        convert_generic(tmp_path / "log", tmp_path / "other", user_col="u", item_col="i", time_col="t")


def test_a_duplicate_id_in_an_attributes_file_is_named(tmp_path):
    (tmp_path / "log.csv").write_text("u,i,t\n1,10,1709546400\n")
    (tmp_path / "items.csv").write_text("i,category\n10,a\n11,b\n10,c\n")
    with pytest.raises(DataContractError, match=r"items.csv: line 4, column 'i': ID '10' appears again"):
        convert_generic(tmp_path / "log.csv", tmp_path / "data", user_col="u", item_col="i", time_col="t",
                        items=tmp_path / "items.csv")


# ----------------------------------------------------------------------------------------------- the CLI


def accrete(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accrete.flows.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def test_accrete_convert_generic_converts_and_reports_a_mistake_in_one_line(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,when\n1,2,2024-03-04T10:00:00Z\n")
    done = accrete("convert", "generic", tmp_path / "log.csv", "--out", tmp_path / "data", "--user-col", "user",
                   "--item-col", "item", "--time-col", "when", "--time-unit", "iso", "--freq", "day", "--json")
    assert done.returncode == 0, done.stderr
    assert list_partitions(tmp_path / "data") == [datetime.date(2024, 3, 4)]

    wrong = accrete("convert", "generic", tmp_path / "log.csv", "--out", tmp_path / "other", "--user-col", "user",
                    "--item-col", "item", "--time-col", "time")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines() == [
        f"accrete convert: error: {tmp_path / 'log.csv'}: no column 'time' (--user-col user, --item-col item, "
        f"--time-col time); columns: user, item, when"]
    assert not (tmp_path / "other").exists()

    incomplete = accrete("convert", "generic", tmp_path / "log.csv", "--out", tmp_path / "other")
    assert incomplete.returncode == 2 and "needs --user-col, --item-col, --time-col" in incomplete.stderr
    misplaced = accrete("convert", "movielens", tmp_path, "--out", tmp_path / "other", "--user-col", "user")
    assert misplaced.returncode == 2 and "--user-col: only for `accrete convert generic`" in misplaced.stderr
    again = accrete("convert", "generic", tmp_path / "log.csv", "--out", tmp_path / "data", "--user-col", "user",
                    "--item-col", "item", "--time-col", "when", "--time-unit", "iso")
    assert again.returncode == 2 and "output directory is not empty" in again.stderr
