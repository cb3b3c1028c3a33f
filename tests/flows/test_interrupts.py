"""Real `accrete nightly/backfill/retrain` processes stopped by SIGTERM, Ctrl-C (SIGINT) and SIGKILL.

SIGTERM and SIGINT: the run stops cleanly (one line, exit 128 + signal, lock released, no half-written
version, the temporary Prefect API stopped with it). SIGKILL at random moments: the store verifies, and
rerunning the same command gives the same versions (table checksums, lineage) as an uninterrupted run.

Runs share the local Prefect server the first one starts (flows/local_server.py, in its own session), so
most kills are aimed at the pipeline part: the test polls for the store's LOCK and kills at a random moment
of the time the reference run held it; every fourth trial is killed at a random moment before the lock
(imports, checks, the flow run starting). The whole process group is killed, as a service manager kills a
unit; the run's pipes must then close at once (`communicate` returns), whatever the server does.
`ACCRETE_KILL_TRIALS` (default 20) sets the number of SIGKILL trials, e.g. 3 for a quick run;
`ACCRETE_KILL_SEED` its random seed.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]

ACCRETE = Path(sys.executable).parent / "accrete"
SNAPSHOT_PARTS = ("item_vectors", "item_bias", "item_vocab", "user_vectors", "user_vocab")
RUN_TIMEOUT = 300.0

pytestmark = pytest.mark.slow


def _command(name: str, dates: list[str], data: Path, store: Path, config: str) -> list[str]:
    ranges = {"retrain": ["--as-of", dates[0]], "nightly": ["--date", dates[1]],
              "backfill": ["--start", dates[1], "--end", dates[3]]}
    return [str(ACCRETE), name, "--data", str(data), "--store", str(store), "--config", config, *ranges[name]]


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
                            start_new_session=True)


def _session_processes(session: int) -> list[int]:
    """Live (non-zombie) processes of a session: the run and anything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _wait_gone(session: int, seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _wait_for_lock(store: Path, proc: subprocess.Popen, seconds: float = RUN_TIMEOUT) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (store / "LOCK").exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def _snapshot(store: Path) -> tuple:
    """CURRENT and, per version, its lineage and the checksums of its tables and vocabularies."""
    s = Store(store)
    versions = []
    for version in s.versions():
        manifest = s.manifest(version)
        versions.append((version, manifest.get("parent"), manifest["generation"], manifest["kind"],
                         manifest["partition"], tuple(manifest["parts"][name]["sha256"] for name in SNAPSHOT_PARTS)))
    return s.current_version(), tuple(versions)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=RUN_TIMEOUT)


def _verify(store: Path, env: dict[str, str]) -> None:
    proc = _run([str(ACCRETE), "verify", "--store", str(store)], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"store {store}: OK")


@pytest.fixture(scope="module")
def dates(world) -> list[str]:
    return [d.isoformat() for d in list_partitions(world)]


@pytest.fixture(scope="module")
def bootstrapped(world, config_path, tmp_path_factory) -> Path:
    """Version 1: a full retrain as of the first day (the pipeline alone). Read-only: trials copy it."""
    store = tmp_path_factory.mktemp("interrupts") / "store"
    run_full_retrain(world, store, list_partitions(world)[0], config=AccreteConfig.load(config_path))
    return store


def _fresh_store(name: str, bootstrapped: Path, directory: Path) -> Path:
    store = directory / "store"
    if name != "retrain":  # a retrain makes the first version of an empty store
        shutil.copytree(bootstrapped, store)
    return store


@pytest.fixture(scope="module")
def references(world, dates, config_path, bootstrapped, cli_env, tmp_path_factory) -> dict[str, dict]:
    """Each command run once without interruption: its resulting store and how long it held the lock."""
    results = {}
    for name in ("retrain", "nightly", "backfill"):
        store = _fresh_store(name, bootstrapped, tmp_path_factory.mktemp(f"reference-{name}"))
        proc = _spawn(_command(name, dates, world, store, config_path), cli_env)
        started = time.monotonic()
        assert _wait_for_lock(store, proc)
        locked = time.monotonic()
        while (store / "LOCK").exists() and proc.poll() is None:
            time.sleep(0.01)
        held = time.monotonic() - locked
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, err
        results[name] = {"snapshot": _snapshot(store), "until_lock": locked - started, "held": held}
    assert results["backfill"]["snapshot"][0] == 4 and results["nightly"]["snapshot"][0] == 2
    return results


@pytest.mark.parametrize("name, signame", [("nightly", "SIGTERM"), ("backfill", "SIGTERM"), ("retrain", "SIGTERM"),
                                           ("backfill", "SIGINT")])
def test_sigterm_or_ctrl_c_during_a_run_stops_it_cleanly(name, signame, world, dates, config_path, bootstrapped,
                                                         references, cli_env, tmp_path):
    store = _fresh_store(name, bootstrapped, tmp_path)
    before = Store(store).current_version() if store.exists() else None
    proc = _spawn(_command(name, dates, world, store, config_path), cli_env)
    assert _wait_for_lock(store, proc), "the run ended before it took the store lock"
    time.sleep(random.uniform(0.0, min(0.5, references[name]["held"])))
    proc.send_signal(getattr(signal, signame))  # the main process only, as `kill PID` or a terminal's Ctrl-C
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    lines = err.strip().splitlines()
    if proc.returncode == 0:
        pytest.skip(f"the run finished before the {signame} arrived")
    assert proc.returncode == 128 + getattr(signal, signame), err
    # No traceback through Accrete's code. (The temporary Prefect API, a child process writing to the same
    # stderr, may log one of its own while it shuts down under a client that is going away.)
    assert "flows/cli.py" not in err and "/pipeline/" not in err and "/flows/flows.py" not in err, err
    stopped = [line for line in lines if line.startswith(f"accrete {name}: stopped by {signame}")]
    assert len(stopped) == 1, err
    assert "nothing half-written is left" in stopped[0]
    assert not _wait_gone(proc.pid), "the temporary Prefect API outlived the run"
    assert not (store / "LOCK").exists()
    if store.exists() and (store / "versions").exists():
        assert not Store(store).leftovers()
    after = Store(store).current_version() if store.exists() else None
    assert after is None or after >= (before or 0)
    if after is not None:
        _verify(store, cli_env)
    rerun = _run(_command(name, dates, world, store, config_path), cli_env)
    assert rerun.returncode == 0, rerun.stderr
    assert _snapshot(store) == references[name]["snapshot"]


def test_sigterm_while_the_local_prefect_server_starts_leaves_no_process_and_no_change(
        world, dates, config_path, bootstrapped, cli_env, tmp_path, fresh_prefect_home):
    """The first run in a Prefect home starts the local server (flows/local_server.py): SIGTERM while it
    waits for it stops the run cleanly. The server, detached in its own session, is no process of the run:
    it keeps booting for the next run (and the fixture stops it)."""
    from accrete.flows.local_server import STATE_FILE

    store = _fresh_store("nightly", bootstrapped, tmp_path)
    before = _snapshot(store)
    proc = _spawn(_command("nightly", dates, world, store, config_path),
                  {**cli_env, "PREFECT_HOME": str(fresh_prefect_home)})
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (fresh_prefect_home / STATE_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (fresh_prefect_home / STATE_FILE).exists(), proc.communicate()[1]
    assert not (store / "LOCK").exists() and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "accrete nightly: stopped by SIGTERM, nothing half-written is left; " \
                                           "CURRENT is v000001"
    assert not _wait_gone(proc.pid)
    assert _snapshot(store) == before and not (store / "LOCK").exists()


def test_sigkill_at_random_moments_then_verify_and_a_rerun_give_the_uninterrupted_result(
        world, dates, config_path, bootstrapped, references, cli_env, tmp_path):
    trials = int(os.environ.get("ACCRETE_KILL_TRIALS", "20"))
    rng = random.Random(int(os.environ.get("ACCRETE_KILL_SEED", "0")))
    outcomes = []
    for trial in range(trials):
        name = ("nightly", "backfill", "retrain")[trial % 3]
        reference = references[name]
        store = _fresh_store(name, bootstrapped, tmp_path / f"trial-{trial}")
        proc = _spawn(_command(name, dates, world, store, config_path), cli_env)
        if trial % 4 == 3:  # while Prefect starts
            time.sleep(rng.uniform(0.0, reference["until_lock"]))
        else:
            assert _wait_for_lock(store, proc), proc.communicate()[1]
            time.sleep(rng.uniform(0.0, reference["held"]))
        finished = proc.poll() is not None
        with contextlib.suppress(ProcessLookupError):  # a run that finished (a warm runner's are quick) is gone
            os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.communicate(timeout=60)  # reaped: a zombie would still look alive to the stale-lock check
        assert time.monotonic() - killed < 10, "something outside the run held its stdout/stderr open"
        assert not _wait_gone(proc.pid)
        stale_lock = (store / "LOCK").exists()
        outcomes.append((name, "finished" if finished else "killed holding the lock" if stale_lock else "killed"))
        if store.exists() and (store / "CURRENT").exists():
            _verify(store, cli_env)
        rerun = _run(_command(name, dates, world, store, config_path), cli_env)
        assert rerun.returncode == 0, f"trial {trial} ({name}, {outcomes[-1][1]}): {rerun.stderr}"
        assert _snapshot(store) == reference["snapshot"], f"trial {trial} ({name}, {outcomes[-1][1]})"
        _verify(store, cli_env)
        assert not (store / "LOCK").exists()
        shutil.rmtree(store, ignore_errors=True)
    print("SIGKILL trials:", outcomes)
    held = sum(outcome == "killed holding the lock" for _, outcome in outcomes)
    assert held >= max(1, trials // 3), outcomes
