"""Bad inputs through the real `accrete nightly` process (a temporary Prefect API each run, hence slow): the exit
code, the one stderr line, and the store's bytes. Every class is covered in-process by
tests/pipeline/test_bad_inputs.py; these check that the CLI turns the same outcomes into exit 2 / exit 0."""
from __future__ import annotations

import datetime
import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.retrain import run_full_retrain

pytestmark = pytest.mark.slow


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bootstrapped(world, config_path, tmp_path_factory) -> Path:
    """A store bootstrapped on the world's first day, built once for the module (copied by each test)."""
    store = tmp_path_factory.mktemp("bad-inputs-cli") / "store"
    run_full_retrain(world, store, list_partitions(world)[0], config=AccreteConfig.load(config_path),
                     reason="bootstrap")
    return store


@pytest.fixture
def copies(world, bootstrapped, tmp_path) -> tuple[Path, Path, datetime.date]:
    data, store = tmp_path / "data", tmp_path / "store"
    shutil.copytree(world, data)
    shutil.copytree(bootstrapped, store)
    return data, store, list_partitions(data)[1]


def nightly(run_cli, data: Path, store: Path, config_path: str):
    return run_cli("nightly", "--data", data, "--store", store, "--config", config_path, "--json")


def error_line(proc) -> str:
    """Exit 2, no traceback, one `accrete nightly: error:` line (then at most the Prefect server's goodbye)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("accrete nightly: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_a_zero_byte_partition_file_exits_2_naming_it_and_leaves_the_store_unchanged(copies, run_cli, config_path):
    data, store, day = copies
    broken = data / "interactions" / f"date={day}" / "part-0.parquet"
    broken.write_bytes(b"")
    before = digest(store)
    line = error_line(nightly(run_cli, data, store, config_path))
    assert f"{broken}: unreadable Parquet file" in line
    assert digest(store) == before


def test_a_future_partition_exits_2_and_leaves_the_store_unchanged(copies, run_cli, config_path):
    data, store, day = copies
    today = datetime.datetime.now(datetime.timezone.utc).date()
    future = today + datetime.timedelta(days=400)
    for entity in ("interactions", "users", "items"):
        for later in list_partitions(data)[1:]:
            shutil.rmtree(data / entity / f"date={later}", ignore_errors=True)
    shutil.copytree(data / "interactions" / f"date={list_partitions(data)[0]}", data / "interactions" / f"date={future}")
    before = digest(store)
    line = error_line(nightly(run_cli, data, store, config_path))
    assert f"partition date={future} is dated in the future" in line
    assert digest(store) == before


def test_null_ids_are_quarantined_and_the_nightly_succeeds(copies, run_cli, config_path):
    data, store, day = copies
    path = data / "interactions" / f"date={day}" / "part-0.parquet"
    table = pq.read_table(path)
    users = table["user_id"].to_pylist()
    users[2] = None
    pq.write_table(table.set_column(0, "user_id", pa.array(users, pa.string())), path)
    before = digest(store)
    proc = nightly(run_cli, data, store, config_path)
    assert proc.returncode == 0, proc.stderr
    quarantine = pq.read_table(store / "versions" / "v000002" / "quarantine.parquet").to_pylist()
    assert [(q["file"], q["row"], q["reason"]) for q in quarantine] == [
        (f"interactions/date={day}/part-0.parquet", 2, "missing_id")]
    after = digest(store)
    assert all(after[name] == sha for name, sha in before.items() if name != "CURRENT")
