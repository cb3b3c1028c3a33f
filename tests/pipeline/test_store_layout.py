"""The store's layout: a version is a list of parts that share segments with the version before it; any named
reference array round-trips; only objectives that replay keep a reservoir; a failed publish leaves nothing."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from accrete.pipeline.faults import ENV_VAR, InjectedFault
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.maintenance import verify_store
from accrete.pipeline.reservoir import ReplayReservoir
from accrete.pipeline.store import ModelState, Store
from accrete.pipeline.vocabulary import Vocabulary

from tests.pipeline.conftest import IALS_SMALL

REPO_ROOT = Path(__file__).resolve().parents[2]


def _segment_files(store: Path) -> set[Path]:
    directory = store / "segments"
    return {p for p in directory.rglob("*") if p.is_file()} if directory.exists() else set()


def _store_files(store: Path) -> set[Path]:
    return {p for p in store.rglob("*") if p.is_file() and p.name not in ("LOCK", ".LOCK.guard")}


def test_a_step_shares_every_unchanged_row_with_its_parent(gen_store):
    s = Store(gen_store)
    parent, child = s.manifest(5)["parts"], s.manifest(6)["parts"]
    # Within a generation item rows only grow, apart from the young items still re-solved: the child's chain is
    # the parent's plus one patch of those rows and the new ones.
    assert child["item_vectors"]["segments"][:-1] == parent["item_vectors"]["segments"]
    with np.load(s.part_segments(6, "item_vectors")[-1]) as patch:
        assert (patch["rows"] >= s.manifest(6)["rows"]["item_trainable_from"]).all()
        assert len(patch["tail"]) == s.manifest(6)["rows"]["item_new"]
        tail_bytes = patch["tail"].nbytes + patch["values"].nbytes if "values" in patch else patch["tail"].nbytes
    for name in ("user_vocab", "item_vocab"):  # append-only: the parent's segments plus a tail (or consolidated)
        chain, before = child[name]["segments"], parent[name]["segments"]
        assert chain == [*before, chain[-1]] or len(chain) == 1
    assert s.part_segments(6, "item_vectors")[-1].stat().st_size < tail_bytes + 1_000  # + the zip's directory
    new = {key for record in child.values() if record["kind"] != "interactions" for key in record["segments"]} - \
        {key for record in parent.values() for key in record.get("segments", [])}
    written = sum(s.segments.size(key) for key in new)
    full_copy = sum(s.segments.size(key) for record in child.values() if record["kind"] != "interactions"
                    for key in record["segments"])
    assert 0 < written < full_copy
    assert "reservoir" not in child and "files" not in s.manifest(6)  # iALS never replays


def _state(reference: dict[str, np.ndarray], users: int = 4, items: int = 3) -> ModelState:
    user_vocab, item_vocab = Vocabulary.empty("user"), Vocabulary.empty("item")
    user_vocab.extend([f"u{k}" for k in range(1, users)], dt.date(2024, 1, 1))
    item_vocab.extend([f"i{k}" for k in range(1, items)], dt.date(2024, 1, 1))
    reservoir = ReplayReservoir(10, seed=3)
    reservoir.add(pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": pa.array([1, 2], pa.int64()),
                            "rating": pa.array([1.0, 4.0], pa.float32())}))
    return ModelState(user_vocab=user_vocab, item_vocab=item_vocab,
                      user_vectors=np.ones((users, 2), np.float32), item_vectors=np.ones((items, 2), np.float32),
                      user_bias=np.zeros(users, np.float32), item_bias=np.arange(items, dtype=np.float32),
                      item_tokens=pa.table({"row": pa.array([1], pa.int64()), "token": ["x"]}),
                      reservoir=reservoir, reference=reference)


def _manifest(version: int, objective: str, parent: int | None = None) -> dict:
    return {"version": version, "generation": 1, "kind": "full_retrain" if parent is None else "incremental",
            "parent": parent, "objective": objective, "partitions": [],
            "rows": {"user": 4, "item": 3}, "config": {"train": {"reservoir_capacity": 7}, "model": {"seed": 5}}}


@pytest.mark.parametrize("objective, kept", [("rating", True), ("retrieval", True), ("ials", False)])
def test_every_named_reference_array_round_trips_and_only_replaying_objectives_keep_a_reservoir(
        tmp_path, objective, kept):
    store = Store(tmp_path / "store")
    reference = {"user_counts": np.array([0, 1, 2, 3], np.int64), "user_log_mass": np.linspace(0, 1, 4),
                 "rating_hist": np.array([[1, 2], [3, 4]], np.int32)}
    with store.lock("test"):
        store.publish(_state(reference), _manifest(1, objective))
    loaded = store.load()
    assert set(loaded.reference) == set(reference)
    for key, array in reference.items():
        assert loaded.reference[key].dtype == array.dtype and loaded.reference[key].tobytes() == array.tobytes()
    assert ("reservoir" in store.manifest()["parts"]) is kept
    if kept:
        assert loaded.reservoir.table().equals(_state({}).reservoir.table()) and loaded.reservoir.n_seen == 2
    else:  # a version without one gives an empty reservoir of the generation's capacity and seed
        assert (loaded.reservoir.size, loaded.reservoir.capacity, loaded.reservoir.seed) == (0, 7, 5)
    # A reference key the next version drops is gone from it; one it adds appears.
    with store.lock("test"):
        store.publish(_state({"item_counts": np.zeros(3, np.int64)}), _manifest(2, objective, parent=1))
    assert set(store.load().reference) == {"item_counts"}
    assert verify_store(store.root).ok


# ----- nothing of a failed step remains -------------------------------------------------------------------
@pytest.mark.parametrize("point", ["publish:history-written", "publish:files-written", "publish:before-rename",
                                   "publish:before-pointer"])
def test_a_step_that_fails_while_publishing_leaves_no_history_no_segment_and_no_version(
        gen_store, gen_world, gen_dates, point, monkeypatch):
    before = _store_files(gen_store)
    monkeypatch.setenv(ENV_VAR, point)
    with pytest.raises(InjectedFault):
        run_incremental_step(gen_world, gen_store, config=IALS_SMALL)
    monkeypatch.delenv(ENV_VAR)
    assert not Store(gen_store).history_path(gen_dates[5]).exists()
    assert _store_files(gen_store) == before
    assert Store(gen_store).current_version() == 6 and verify_store(gen_store).ok
    result = run_incremental_step(gen_world, gen_store, config=IALS_SMALL)
    assert (result.version, result.date) == (7, gen_dates[5]) and verify_store(gen_store).ok


def test_a_full_retrain_that_fails_while_publishing_leaves_no_history_of_the_partitions_it_read(
        gen_store, gen_world, gen_dates, monkeypatch):
    before = _store_files(gen_store)
    monkeypatch.setenv(ENV_VAR, "publish:files-written")
    with pytest.raises(InjectedFault):
        run_full_retrain(gen_world, gen_store, gen_dates[6], config=IALS_SMALL)
    monkeypatch.delenv(ENV_VAR)
    assert not Store(gen_store).history_path(gen_dates[5]).exists()
    assert not Store(gen_store).history_path(gen_dates[6]).exists()
    assert _store_files(gen_store) == before


def test_history_a_killed_step_left_is_a_leftover_that_the_next_publish_removes(gen_store, gen_world, gen_dates):
    s = Store(gen_store)
    orphan = s.history_path(gen_dates[6])  # as a step killed between its history write and its commit leaves it
    s.write_history(gen_dates[6], s._read_history_file(gen_dates[4]))
    report = verify_store(gen_store)
    assert report.ok and orphan.name in report.leftovers
    run_incremental_step(gen_world, gen_store, gen_dates[5], config=IALS_SMALL)
    assert not orphan.exists() and not verify_store(gen_store).leftovers


_FULL_DISK = """
import resource, signal, sys
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.retrain import run_full_retrain
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    run_incremental_step(sys.argv[1], sys.argv[2], config=AccreteConfig().replace(model={"dim": 8}))
except OSError as exc:
    print("OSError", exc.errno)
    sys.exit(3)
"""


def test_a_disk_that_fills_up_after_the_history_is_written_leaves_no_history(gen_store, gen_world, gen_dates, tmp_path):
    """A real failed write (RLIMIT_FSIZE: no file may grow past `limit` bytes) in a child process: the history
    file of the night fits, a later file of the version does not."""
    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(gen_store, reference)
    segments_before = _segment_files(reference)
    run_incremental_step(gen_world, reference, config=IALS_SMALL)
    history_bytes = Store(reference).history_path(gen_dates[5]).stat().st_size
    later = [p.stat().st_size for p in _segment_files(reference) - segments_before]
    later.append((Store(reference).version_dir(7) / "manifest.json").stat().st_size)
    assert max(later) > history_bytes + 1  # the precondition of this test: something after the history is bigger

    before = _store_files(gen_store)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(ENV_VAR, None)
    child = subprocess.run([sys.executable, "-c", _FULL_DISK, str(gen_world), str(gen_store), str(history_bytes + 1)],
                           capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert child.returncode == 3, child.stdout + child.stderr
    assert "OSError 27" in child.stdout  # EFBIG
    assert not Store(gen_store).history_path(gen_dates[5]).exists()
    assert _store_files(gen_store) == before
    assert verify_store(gen_store).ok
    result = run_incremental_step(gen_world, gen_store, config=IALS_SMALL)
    assert result.version == 7
    assert json.loads((Store(gen_store).version_dir(7) / "manifest.json").read_text())["parts"]["item_vectors"] == \
        json.loads((Store(reference).version_dir(7) / "manifest.json").read_text())["parts"]["item_vectors"]
