"""Fault trials as an operator meets them, through the real `accrete` process: exit codes a scheduler can act on,
one line instead of a traceback, data errors before Prefect is imported, and nothing rewritten by a run that
changes nothing.

Exit 2: a user's mistake, nothing published (a scheduler may retry after a fix). Exit 3: the version WAS
published, then something after it failed (the dashboard, a damaged old manifest): a retry must not assume the
partition is still pending."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from accrete.flows.local_server import STATE_FILE
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.dashboard import build_dashboard
from accrete.pipeline.store import LOCK, Store

REPO_ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(proc: subprocess.CompletedProcess, command: str, code: int = 2, *, alone: bool = True) -> str:
    """Exit `code`, no traceback, one `accrete COMMAND: error:` line (all of stderr when `alone`)."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"accrete {command}: error: ")]
    assert len(errors) == 1, proc.stderr
    if alone:
        assert lines == errors, proc.stderr
    return errors[0]


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _untouched_prefect_home(home: Path) -> None:
    """Prefect was never imported against this home: no database, no server started."""
    assert not (home / "prefect.db").exists() and not (home / STATE_FILE).exists()


@pytest.fixture
def data_copy(world, tmp_path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(world, data)
    return data


# ----- before anything starts (no Prefect: fast) -------------------------------------------------------
@pytest.mark.parametrize("command", ["nightly", "retrain"])
def test_a_setting_of_the_wrong_type_is_one_line_before_prefect(command, run_cli, world, tmp_path,
                                                                 fresh_prefect_home):
    config = tmp_path / "typed.toml"
    config.write_text('[model]\ndim = "32"\n')
    dates = {"nightly": [], "retrain": ["--as-of", list_partitions(world)[0].isoformat()]}[command]
    proc = run_cli(command, "--data", world, "--store", tmp_path / "store", "--config", config, *dates,
                   PREFECT_HOME=str(fresh_prefect_home))
    line = _one_error_line(proc, command)
    assert f"{config}: [model] dim must be an integer, not '32'" in line
    _untouched_prefect_home(fresh_prefect_home)


@pytest.mark.parametrize("command", ["nightly", "retrain", "backfill"])
def test_a_store_path_that_is_a_file_is_one_line_before_prefect(command, run_cli, world, config_path, tmp_path,
                                                                 fresh_prefect_home):
    store = tmp_path / "store"
    store.write_text("not a store")
    dates = list_partitions(world)
    extra = {"nightly": [], "retrain": ["--as-of", dates[0].isoformat()],
             "backfill": ["--start", dates[0].isoformat(), "--end", dates[-1].isoformat()]}[command]
    proc = run_cli(command, "--data", world, "--store", store, "--config", config_path, *extra,
                   PREFECT_HOME=str(fresh_prefect_home))
    assert f"{store}: not a directory" in _one_error_line(proc, command)
    assert store.read_text() == "not a store"
    _untouched_prefect_home(fresh_prefect_home)


@pytest.mark.parametrize("command", ["nightly", "backfill", "retrain"])
def test_a_corrupt_partition_the_run_would_read_is_one_line_before_prefect(command, run_cli, data_copy, make_store,
                                                                           config_path, tmp_path, fresh_prefect_home):
    """The partition a nightly applies next, a backfill's first pending one, a retrain's newest unconsumed one
    (its as-of date): read and validated before Prefect is imported, so the error comes in about a second and
    the store is untouched."""
    dates = list_partitions(data_copy)
    bad = dates[2] if command == "retrain" else dates[1]
    broken = data_copy / "interactions" / f"date={bad}" / "part-0.parquet"
    broken.write_bytes(b"not parquet")
    store = make_store(data_copy) if command != "retrain" else tmp_path / "empty-store"
    before = _digest(store) if store.exists() else {}
    extra = {"nightly": [], "retrain": ["--as-of", dates[2].isoformat()],
             "backfill": ["--start", dates[0].isoformat(), "--end", dates[-1].isoformat()]}[command]
    proc = run_cli(command, "--data", data_copy, "--store", store, "--config", config_path, *extra,
                   PREFECT_HOME=str(fresh_prefect_home))
    assert f"{broken}: unreadable Parquet file" in _one_error_line(proc, command)
    assert (_digest(store) if store.exists() else {}) == before
    _untouched_prefect_home(fresh_prefect_home)


def test_nightly_on_an_applied_date_says_so_and_leaves_the_dashboard_as_it_was(run_cli, world, make_store,
                                                                               config_path, fresh_prefect_home):
    store = make_store(world)
    build_dashboard(store, store / "dashboard.html")
    before, stat = _digest(store), (store / "dashboard.html").stat()
    applied = list_partitions(world)[0]
    proc = run_cli("nightly", "--data", world, "--store", store, "--config", config_path, "--date", applied.isoformat(),
                   PREFECT_HOME=str(fresh_prefect_home))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"nothing to do: partition {applied} is already applied (version 1); use --force "
                                   f"to redo the latest step")
    assert _digest(store) == before and (store / "dashboard.html").stat().st_mtime_ns == stat.st_mtime_ns
    _untouched_prefect_home(fresh_prefect_home)


def test_a_garbage_lock_is_one_line_naming_no_made_up_process(run_cli, world, make_store):
    store = make_store(world)
    (store / LOCK).write_text("\x00garbage")
    line = _one_error_line(run_cli("gc", "--store", store, "--keep", "1"), "gc")
    assert "None" not in line and "the lock names no process" in line and f"delete {store / LOCK}" in line


def test_status_into_a_closed_pipe_is_silent_with_the_sigpipe_exit_code(world, make_store, cli_env):
    """`accrete status | head -5` where the reader has gone: no BrokenPipeError traceback, exit 141."""
    store = make_store(world)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as `head` is once it has its lines
    try:
        proc = subprocess.run([sys.executable, "-m", "accrete.flows.cli", "status", "--store", str(store)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=cli_env, cwd=REPO_ROOT,
                              timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


# ----- after a run started (Prefect flow runs on the local server: slow) -------------------------------------
@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[None]:
    """No file can be created in `directory`, root included (`chattr +i` as root, mode 0o555 otherwise)."""
    immutable = os.geteuid() == 0
    if immutable:
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"running as root and cannot make a directory immutable: {made.stderr.decode().strip()}")
    else:
        directory.chmod(0o555)
    try:
        probe = directory / "probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("the directory is still writable")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=False)
        else:
            directory.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_store_is_one_line_and_changes_nothing(run_cli, world, make_store, config_path):
    store = make_store(world)
    before = _digest(store)
    with _read_only(store):
        proc = run_cli("nightly", "--data", world, "--store", store, "--config", config_path)
    line = _one_error_line(proc, "nightly", alone=False)
    assert f"{store / LOCK}: cannot take the store lock" in line and "read-only" in line
    assert _digest(store) == before


@pytest.mark.slow
def test_a_dashboard_that_cannot_be_written_exits_3_saying_the_step_was_published(run_cli, world, make_store,
                                                                                  config_path):
    """The dashboard write fails after the publish (here its path is a directory: the same OSError path as a
    full disk, and real as root too): exit 3 and a line saying version 2 WAS published; a retry finds
    nothing pending instead of applying the next partition as if this one had failed."""
    store = make_store(world)
    (store / "dashboard.html").mkdir()
    data = world.parent / "two-days"
    dates = list_partitions(world)
    if not data.exists():
        shutil.copytree(world, data, ignore=lambda _, names: [n for n in names if n.startswith("date=")
                                                              and n[5:] > dates[1].isoformat()])
    proc = run_cli("nightly", "--data", data, "--store", store, "--config", config_path)
    line = _one_error_line(proc, "nightly", code=3, alone=False)
    assert f"partition {dates[1]} WAS published as version 2 (CURRENT)" in line
    assert "dashboard.html" in line and "do not apply it again" in line
    assert Store(store).current_version() == 2
    retry = run_cli("nightly", "--data", data, "--store", store, "--config", config_path)
    assert retry.returncode == 0 and retry.stdout.startswith("nothing pending"), retry.stderr
    (store / "dashboard.html").rmdir()
    rebuilt = run_cli("dashboard", "--store", store)
    assert rebuilt.returncode == 0 and (store / "dashboard.html").is_file()


@pytest.mark.slow
def test_a_damaged_old_manifest_after_the_publish_exits_3_saying_the_step_was_published(run_cli, world, make_store,
                                                                                        config_path):
    """Version 2's manifest is damaged while version 3 is current: the next step publishes version 4 (it reads
    neither), then the dashboard, which reads every manifest, fails: exit 3, not 2."""
    store = make_store(world)
    for _ in range(2):
        step = run_cli("nightly", "--data", world, "--store", store, "--config", config_path)
        assert step.returncode == 0, step.stderr
    (store / "versions" / "v000002" / "manifest.json").write_text('{"broken')
    proc = run_cli("nightly", "--data", world, "--store", store, "--config", config_path)
    line = _one_error_line(proc, "nightly", code=3, alone=False)
    assert "WAS published as version 4 (CURRENT)" in line and "v000002/manifest.json" in line
    assert Store(store).current_version() == 4
