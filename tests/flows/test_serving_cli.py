"""`accrete index build|update`, `accrete recommend` for an unknown user and `accrete api` as a real process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from accrete.flows.cli import main
from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.exports import export_delta
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

SMALL = AccreteConfig().replace(model={"dim": 8, "user_policy": "refold_active"})  # "dot" scoring


@pytest.fixture(scope="module")
def served_store(tmp_path_factory) -> Path:
    """A store of three versions of one generation (retrain, two steps); read-only, tests copy it."""
    root = tmp_path_factory.mktemp("serving-cli")
    generate_world(root / "data", days=4, seed=2, initial_users=200, initial_items=150, new_users_per_day=8,
                   new_items_per_day=4, interactions_per_day=500, initial_interactions=4000)
    store = root / "store"
    run_full_retrain(root / "data", store, contract.list_partitions(root / "data")[0], config=SMALL)
    run_incremental_step(root / "data", store, config=SMALL)
    run_incremental_step(root / "data", store, config=SMALL)
    return store


@pytest.fixture
def store(served_store, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(served_store, copy)
    return copy


def test_index_build_then_update_by_a_delta_file_then_by_the_store(store, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["index", "build", "--store", str(store), "--out", str(out), "--version", "1", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["version"] == 1 and built["kind"] == "dot"
    delta = tmp_path / "delta.parquet"
    export_delta(store, delta, since=1, version=2)
    assert main(["index", "update", "--index", str(out), "--delta", str(delta), "--json"]) == 0
    moved = json.loads(capsys.readouterr().out)
    assert moved["version"] == 2 and moved["inserted"] == Store(store).read_manifest(2).rows.item_new
    # The same delta again no longer starts at the index's version: one line, exit 2.
    assert main(["index", "update", "--index", str(out), "--delta", str(delta)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("accrete index: error: the delta goes from version 1 to 2, but the index reflects version 2: "
                   "export one with --delta-since 2")
    assert main(["index", "update", "--index", str(out), "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 3
    assert main(["recommend", "--store", str(store), "--user", Store(store).load().user_vocab.ids[1].as_py(),
                 "--index", str(out), "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_index_update_needs_exactly_one_source_and_a_built_index(store, tmp_path, capsys):
    assert main(["index", "update", "--index", str(tmp_path / "none"), "--store", str(store)]) == 2
    assert "no index here; build one with `accrete index build`" in capsys.readouterr().err
    out = tmp_path / "index"
    assert main(["index", "build", "--store", str(store), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["index", "update", "--index", str(out)]) == 2
    assert capsys.readouterr().err.strip() == ("accrete index: error: index update needs either --delta FILE "
                                               "(a delta export) or --store STORE")


def test_recommend_for_an_unknown_user_is_the_fallback_with_a_note(store, capsys):
    assert main(["recommend", "--store", str(store), "--user", "nobody", "-k", "4", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    state = Store(store).load()
    assert len(rows) == 4 and rows[0]["score"] == pytest.approx(float(state.item_bias[1:].max()))
    assert captured.err.strip() == ("accrete recommend: note: unknown user 'nobody' (not in version 3): the "
                                    "time-aware popular list")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_accrete_api_serves_on_localhost_without_tensorflow_and_stops_on_sigterm(store):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen([sys.executable, "-m", "accrete.flows.cli", "api", "--store", str(store), "--port",
                                str(port)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "accrete api did not start"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.json()["version"] == 3
        answer = httpx.get(f"http://127.0.0.1:{port}/recommend", params={"user": "nobody", "k": 3}).json()
        assert answer["fallback"] is True and len(answer["items"]) == 3
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "tensorflow" not in maps and "_pywrap_tensorflow" not in maps  # no training code in the service
        listening = [line.split() for line in Path(f"/proc/{process.pid}/net/tcp").read_text().splitlines()[1:]]
        local = {fields[1] for fields in listening if fields[3] == "0A"}  # state LISTEN
        assert f"0100007F:{port:04X}" in local  # bound to 127.0.0.1 only
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then hands the signal on to the CLI: the usual 128 + SIGTERM and one line.
    assert process.returncode == 143, err
    assert f"serving version 3 of {store} on http://127.0.0.1:{port}" in err
    assert "accrete api: stopped by SIGTERM" in err and "Traceback" not in err
