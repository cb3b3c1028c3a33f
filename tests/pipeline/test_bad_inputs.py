"""The bad-input corpus: one test per class of bad input a year of nightly runs meets, through the same code a
nightly run executes (`run_incremental_step`, which `accrete nightly` runs inside its Prefect flow) on a real store.

Each class has one decided behaviour (data/README.md, "Bad inputs"):
* reject: a `DataContractError` (the CLI's exit code 2) with a one-line message naming the file and field, and
  every byte of the store unchanged;
* quarantine: the step publishes, the bad rows are in the new version's `quarantine.parquet` with file, row and
  reason, and nothing already stored changes;
* accept: the step publishes the data as given.
`tests/flows/test_bad_inputs_cli.py` runs a few of these through the real `accrete nightly` process.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from accrete.flows.cli import _one_line
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.contract import list_partitions, period_end, read_partition
from accrete.pipeline.errors import AccreteError, DataContractError
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.recommend import recommend
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

def fast_config(tmp: Path) -> AccreteConfig:
    path = tmp / "accrete.toml"
    path.write_text("[model]\ndim = 8\n")
    return AccreteConfig.load(path)


def digest(root: Path) -> dict[str, str]:
    """Every file under `root`: relative path -> sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small synthetic world with ratings (4 daily partitions) and a store bootstrapped on its first day."""
    root = tmp_path_factory.mktemp("bad-inputs")
    data = root / "data"
    generate_world(data, days=3, seed=3, with_ratings=True, initial_users=150, initial_items=80,
                   new_users_per_day=5, new_items_per_day=3, interactions_per_day=300, initial_interactions=2000)
    config = fast_config(root)
    run_full_retrain(data, root / "store", list_partitions(data)[0], config=config, reason="bootstrap")
    return data, root / "store", config


class Case:
    """A private copy of the world and the store; `day` is the next partition a nightly step applies."""

    def __init__(self, built, tmp_path: Path):
        source_data, source_store, self.config = built
        self.data, self.store = tmp_path / "data", tmp_path / "store"
        shutil.copytree(source_data, self.data, symlinks=True)
        shutil.copytree(source_store, self.store, symlinks=True)
        self.day = list_partitions(self.data)[1]
        self.before = digest(self.store)

    def dir(self, entity: str = "interactions", day: datetime.date | None = None) -> Path:
        return self.data / entity / f"date={(day or self.day).isoformat()}"

    def file(self, entity: str = "interactions") -> Path:
        return self.dir(entity) / "part-0.parquet"

    def table(self, entity: str = "interactions") -> pa.Table:
        return pq.read_table(self.file(entity))

    def write(self, table: pa.Table, entity: str = "interactions") -> None:
        pq.write_table(table, self.file(entity))

    def step(self):
        return run_incremental_step(self.data, self.store, config=self.config)

    def rejected(self, *fragments: str) -> str:
        """The step fails with a user's error (exit 2 in the CLI) in one line naming every fragment, and the
        store is byte for byte what it was."""
        with pytest.raises(AccreteError) as caught:
            self.step()
        assert isinstance(caught.value, DataContractError)
        message = _one_line(caught.value)
        assert "\n" not in str(caught.value), str(caught.value)
        for fragment in fragments:
            assert fragment in message, message
        assert digest(self.store) == self.before
        return message

    def published(self) -> tuple[Path, pa.Table | None]:
        """The step publishes version 2 without touching a byte of what was stored before (but `CURRENT`)."""
        result = self.step()
        assert result.kind == "incremental" and result.version == 2
        after = digest(self.store)
        assert {k: v for k, v in after.items() if k in self.before and k != "CURRENT"} == \
            {k: v for k, v in self.before.items() if k != "CURRENT"}
        version = Store(self.store).version_dir(2)
        quarantine = version / "quarantine.parquet"
        return version, pq.read_table(quarantine) if quarantine.exists() else None

    def relative(self, entity: str = "interactions") -> str:
        return self.file(entity).relative_to(self.data).as_posix()


@pytest.fixture
def case(built, tmp_path) -> Case:
    return Case(built, tmp_path)


# ----------------------------------------------------------------------------------------------- rejected files


@pytest.mark.parametrize("column, values, expected", [
    ("timestamp", lambda t: pc.cast(t["timestamp"], pa.string()), "column 'timestamp' has type string"),
    ("rating", lambda t: pc.cast(t["rating"], pa.string()), "column 'rating' has type string"),
    ("user_id", lambda t: pa.array(np.arange(t.num_rows, dtype=np.float64)), "column 'user_id' has type double"),
])
def test_wrong_types_are_rejected_naming_file_and_column(case, column, values, expected):
    table = case.table()
    case.write(table.set_column(table.schema.get_field_index(column), column, values(table)))
    case.rejected(str(case.file()), expected)


def test_a_missing_column_is_rejected_naming_it_and_the_columns_present(case):
    case.write(case.table().drop_columns(["item_id"]))
    case.rejected(str(case.file()), "missing required column 'item_id' (columns: user_id, timestamp, rating)")


def test_a_zero_byte_file_is_rejected(case):
    case.file().write_bytes(b"")
    case.rejected(str(case.file()), "unreadable Parquet file")


def test_a_csv_renamed_parquet_is_rejected(case):
    case.file().write_text("user_id,item_id,timestamp,rating\nu1,i1,1704153600,4\n")
    case.rejected(str(case.file()), "unreadable Parquet file")


def test_a_truncated_file_is_rejected(case):
    content = case.file().read_bytes()
    case.file().write_bytes(content[: len(content) // 2])
    case.rejected(str(case.file()), "unreadable Parquet file")


def test_an_empty_partition_directory_is_rejected_but_a_zero_row_file_is_a_quiet_period(case):
    schema = case.table().schema
    for entity in ("interactions", "users", "items"):
        for file in case.dir(entity).iterdir():
            file.unlink()
    case.rejected(str(case.dir("interactions")), "partition directory holds no data files")

    case.write(schema.empty_table())
    shutil.rmtree(case.dir("users"))
    shutil.rmtree(case.dir("items"))
    version, quarantine = case.published()
    assert quarantine is None
    state = Store(case.store).load()
    assert state.partitions[-1] == case.day and state.manifest["ingest"]["rows_read"]["interactions"] == 0


@pytest.mark.parametrize("name", ["date=2024-1-2", "2024-01-02", "date=2024-02-30", "date=2024-01-02.bak"])
def test_a_malformed_partition_name_is_rejected_naming_the_entry(case, name):
    (case.data / "interactions" / name).mkdir()
    case.rejected(str(case.data / "interactions" / name))


def test_a_partition_dated_in_the_future_is_rejected_but_tomorrow_is_tolerated(case):
    today = datetime.datetime.now(datetime.timezone.utc).date()
    future = today + datetime.timedelta(days=30)
    for day in list_partitions(case.data)[1:]:
        for entity in ("interactions", "users", "items"):
            shutil.rmtree(case.dir(entity, day), ignore_errors=True)
    start = int(datetime.datetime.combine(future, datetime.time(), datetime.timezone.utc).timestamp())
    case.dir(day=future).mkdir()
    pq.write_table(pa.table({"user_id": ["u000001"], "item_id": ["i000001"], "timestamp": [start + 60],
                             "rating": [4.0]}), case.dir(day=future) / "part-0.parquet")
    case.rejected(str(case.data), f"partition date={future} is dated in the future (today is {today} UTC)")

    tomorrow = read_partition(case.data, future, "day", today=future - datetime.timedelta(days=1))
    assert tomorrow.interactions.num_rows == 1


def test_a_symlinked_partition_is_read_like_a_real_one_and_a_broken_link_is_rejected(case, tmp_path):
    expected = read_partition(case.data, case.day)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(case.dir(), elsewhere)
    os.symlink(elsewhere, case.dir())
    linked = read_partition(case.data, case.day)
    assert linked.interactions.equals(expected.interactions) and linked.report == expected.report
    version, quarantine = case.published()
    assert quarantine is None

    broken = case.data / "interactions" / "date=2030-01-01"
    os.symlink(tmp_path / "nowhere", broken)
    with pytest.raises(DataContractError, match=f"{broken}: broken symbolic link"):
        list_partitions(case.data)


# ----------------------------------------------------------------------------------------------- quarantined rows


def assert_quarantined(case: Case, quarantine: pa.Table, reasons: dict[int, str]) -> None:
    """Exactly `reasons` ({row in the file: reason}) are quarantined, each naming the partition's file."""
    rows = quarantine.filter(pc.equal(quarantine["entity"], "interactions"))
    assert dict(zip(rows["row"].to_pylist(), rows["reason"].to_pylist())) == reasons
    assert set(rows["file"].to_pylist()) == {case.relative()}


def test_null_and_empty_ids_are_quarantined_and_the_rest_is_applied(case):
    table = case.table()
    users = table["user_id"].to_pylist()
    users[3], users[7] = None, ""
    items = table["item_id"].to_pylist()
    items[11] = None
    case.write(table.set_column(0, "user_id", pa.array(users, pa.string()))
               .set_column(1, "item_id", pa.array(items, pa.string())))
    version, quarantine = case.published()
    assert_quarantined(case, quarantine, {3: "missing_id", 7: "missing_id", 11: "missing_id"})
    manifest = Store(case.store).load().manifest
    assert manifest["ingest"]["rows_kept"]["interactions"] == table.num_rows - 3


def test_duplicate_rows_and_duplicate_entity_ids_are_quarantined_first_one_kept(case):
    table = case.table()
    case.write(pa.concat_tables([table, table.slice(5, 2)]))
    users = case.table("users")
    case.write(pa.concat_tables([users, users.slice(0, 1)]), "users")
    version, quarantine = case.published()
    assert_quarantined(case, quarantine, {table.num_rows: "duplicate_row", table.num_rows + 1: "duplicate_row"})
    dup = quarantine.filter(pc.equal(quarantine["entity"], "users")).to_pylist()
    assert [(d["row"], d["reason"], d["user_id"]) for d in dup] == [
        (users.num_rows, "duplicate_id", users["user_id"][0].as_py())]


def test_timestamps_outside_the_period_are_quarantined(case):
    table = case.table()
    start = int(datetime.datetime.combine(case.day, datetime.time(), datetime.timezone.utc).timestamp())
    end = int(datetime.datetime.combine(period_end(case.day, "day"), datetime.time(),
                                        datetime.timezone.utc).timestamp())
    ts = table["timestamp"].to_pylist()
    as_seconds = pa.types.is_timestamp(table.schema.field("timestamp").type)
    ts[0], ts[1], ts[2] = start - 1, end, start  # the last one is inside: the period is [start, end)
    if as_seconds:
        ts = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) if isinstance(t, int) else t for t in ts]
    case.write(table.set_column(2, "timestamp", pa.array(ts, table.schema.field("timestamp").type)))
    version, quarantine = case.published()
    assert_quarantined(case, quarantine, {0: "timestamp_outside_period", 1: "timestamp_outside_period"})


def test_nan_infinite_and_out_of_scale_ratings_are_quarantined(case):
    """NaN and inf never train. A rating outside the store's scale (the drift histogram's range, 0.25 to 5.25
    by default) used to fail the whole step after training, naming neither file nor row: now it is a bad row."""
    table = case.table()
    ratings = table["rating"].to_pylist()
    ratings[0], ratings[1], ratings[2], ratings[3], ratings[4] = float("nan"), float("inf"), -1.0, 7.0, None
    case.write(table.set_column(3, "rating", pa.array(ratings, table.schema.field("rating").type)))
    version, quarantine = case.published()
    assert_quarantined(case, quarantine, {0: "non_finite_rating", 1: "non_finite_rating", 2: "rating_outside_scale",
                                          3: "rating_outside_scale", 4: "null_rating"})
    values = quarantine.filter(pc.equal(quarantine["entity"], "interactions"))["rating"].to_pylist()
    assert values[2:4] == ["-1", "7"]


# ----------------------------------------------------------------------------------------------- accepted


def test_an_interaction_with_an_item_no_items_file_announced_is_a_new_item(case):
    table = case.table()
    items = table["item_id"].to_pylist()
    items[0] = "never-announced"
    case.write(table.set_column(1, "item_id", pa.array(items, pa.string())))
    version, quarantine = case.published()
    assert quarantine is None
    vocab = Store(case.store).load().item_vocab
    assert vocab.lookup(pa.array(["never-announced"]))[0] > 0


def test_unicode_and_very_long_ids_are_accepted_and_round_trip(case):
    """IDs are compared byte for byte: no trimming, no Unicode normalization ("é" and "e" + combining accent are
    two users)."""
    long_id = "x" * 10_000
    odd = ["用户-七", "😀", "é", "e\u0301", " padded ", long_id]
    table = case.table()
    users = table["user_id"].to_pylist()
    users[: len(odd)] = odd
    items = table["item_id"].to_pylist()
    items[0] = "アイテム/1"
    case.write(table.set_column(0, "user_id", pa.array(users, pa.string()))
               .set_column(1, "item_id", pa.array(items, pa.string())))
    version, quarantine = case.published()
    assert quarantine is None
    state = Store(case.store).load()
    rows = state.user_vocab.lookup(pa.array(odd))
    assert np.all(rows > 0) and len(set(rows.tolist())) == len(odd)
    assert state.user_vocab.id_of(rows).to_pylist() == odd
    assert state.item_vocab.lookup(pa.array(["アイテム/1"]))[0] > 0
    for user in ("😀", long_id):
        assert len(recommend(case.store, user, 3)) == 3


def test_integer_ids_then_string_ids_are_the_same_ids(case):
    """`42` (int64) in one file or partition and `"42"` in another are one user; `"042"` is another."""
    table = case.table()
    n = table.num_rows
    as_int = table.slice(0, n // 2).set_column(0, "user_id", pa.array([42] * (n // 2), pa.int64()))
    as_str = table.slice(n // 2).set_column(0, "user_id", pa.array(["42"] * (n - n // 2 - 1) + ["042"]))
    case.write(as_int)
    pq.write_table(as_str, case.dir() / "part-1.parquet")
    partition = read_partition(case.data, case.day)
    assert set(partition.interactions["user_id"].to_pylist()) == {"42", "042"}
    version, quarantine = case.published()
    rows = Store(case.store).load().user_vocab.lookup(pa.array(["42", "042"]))
    assert quarantine is None and rows.min() > 0 and rows[0] != rows[1]
