"""The local Prefect server the CLI keeps (flows/local_server.py): started once, detached, reused by later runs,
which are recorded on it; stopped by `accrete server stop`; never holding a killed run's pipes; a user's
PREFECT_API_URL wins. Real processes, a real `prefect server start`, real HTTP on 127.0.0.1."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from accrete.flows import warm_runner
from accrete.flows.local_server import STATE_FILE, read_record
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]

ACCRETE = [sys.executable, "-m", "accrete.flows.cli"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_server_status_and_stop_without_a_server_say_so(run_cli, fresh_prefect_home):
    status = run_cli("server", "status", "--json", PREFECT_HOME=str(fresh_prefect_home))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["running"] is False
    stop = run_cli("server", "stop", PREFECT_HOME=str(fresh_prefect_home))
    assert stop.returncode == 0 and stop.stdout.strip() == "no local Prefect server was running"
    assert not (fresh_prefect_home / STATE_FILE).exists()


def test_a_configured_prefect_api_url_that_does_not_answer_is_one_line_and_starts_no_server(
        run_cli, world, make_store, config_path, fresh_prefect_home):
    """PREFECT_API_URL is the user's choice: it is used as it is (here nothing listens on it), never replaced
    by a server of accrete's."""
    store = make_store(world)
    proc = run_cli("nightly", "--data", world, "--store", store, "--config", config_path,
                   PREFECT_HOME=str(fresh_prefect_home), PREFECT_API_URL="http://127.0.0.1:9/api")
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("accrete nightly: error: the Prefect API at PREFECT_API_URL=http://127.0.0.1:9/api "
                           "does not answer")
    assert not (fresh_prefect_home / STATE_FILE).exists() and Store(store).current_version() == 1


def test_a_profile_naming_a_server_counts_as_prefect_api_url(run_cli, fresh_prefect_home):
    (fresh_prefect_home / "profiles.toml").write_text(
        'active = "mine"\n[profiles.mine]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    proc = run_cli("server", "start", PREFECT_HOME=str(fresh_prefect_home))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("accrete server: error: PREFECT_API_URL is set (http://127.0.0.1:9/api): runs go to "
                                   "that server, accrete starts none")


@pytest.mark.slow  # starts a Prefect server and runs flows on it
def test_runs_share_one_detached_server_that_records_them_until_it_is_stopped(
        run_cli, world, make_store, config_path, fresh_prefect_home):
    dates = list_partitions(world)
    store = make_store(world)
    home = {"PREFECT_HOME": str(fresh_prefect_home)}

    first = run_cli("nightly", "--data", world, "--store", store, "--config", config_path, "--json", **home)
    assert first.returncode == 0, first.stderr
    assert "started a local Prefect server" in first.stderr
    record = read_record(fresh_prefect_home)
    assert record is not None and _alive(record.pid)
    # Detached: its own session, so a signal to the CLI's process group never reaches it.
    assert os.getsid(record.pid) == record.pid

    second = run_cli("nightly", "--data", world, "--store", store, "--config", config_path, "--json", **home)
    assert second.returncode == 0, second.stderr
    assert "started a local Prefect server" not in second.stderr
    assert read_record(fresh_prefect_home) == record
    assert Store(store).read_manifest().partition == dates[2].isoformat()

    # Both runs, their states and artifacts are on the server.
    runs = httpx.post(f"{record.url}/flow_runs/filter", json={"sort": "START_TIME_ASC"}, timeout=30).json()
    assert [(r["name"], r["state_type"]) for r in runs] == [("nightly-next", "COMPLETED")] * 2
    artifacts = httpx.post(f"{record.url}/artifacts/filter", json={}, timeout=30).json()
    assert {"accrete-nightly-summary", "accrete-dashboard"} <= {a["key"] for a in artifacts}

    status = run_cli("server", "status", "--json", **home)
    assert json.loads(status.stdout)["url"] == record.url
    stop = run_cli("server", "stop", **home)
    assert stop.returncode == 0 and stop.stdout.strip() == f"stopped the local Prefect server (pid {record.pid})"
    deadline = time.monotonic() + 20
    while _alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(record.pid) and not (fresh_prefect_home / STATE_FILE).exists()


def _lock_holder(store: Path) -> int | None:
    try:
        pid = json.loads((store / "LOCK").read_text()).get("pid")
    except (OSError, ValueError):
        return None
    return pid if isinstance(pid, int) else None


def _spawn(args: list, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([*ACCRETE, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=REPO_ROOT)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow  # starts a Prefect server and runs flows on it
def test_kill_9_of_a_run_ends_a_callers_read_of_its_pipes_at_once(world, make_store, config_path, cli_env,
                                                                  fresh_prefect_home):
    """`kill -9` of the CLI alone (not its process group), first while it starts the server, then while a run
    holds the store lock: the caller reading its stdout and stderr sees them close at once, because the
    server writes to its own log and nothing else outlives the run."""
    store = make_store(world)
    env = {**cli_env, "PREFECT_HOME": str(fresh_prefect_home)}
    args = ["nightly", "--data", world, "--store", store, "--config", config_path]

    starting = _spawn(args, env)
    _wait_for(lambda: (fresh_prefect_home / STATE_FILE).exists(), starting)
    starting.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    starting.communicate(timeout=30)
    assert time.monotonic() - killed < 5

    running = _spawn(args, env)
    # Once the lock names its holder: killed before that, an empty lock waits out its grace period (60 s).
    _wait_for(lambda: _lock_holder(store) is not None, running)
    running.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    running.communicate(timeout=30)
    assert time.monotonic() - killed < 5

    # The server the first run started served the second and is still there for the next. The second run
    # started the warm runner: a run handed over to it is killed the same way, and its child goes with it.
    record = read_record(fresh_prefect_home)
    assert record is not None and _alive(record.pid)
    deadline = time.monotonic() + 240
    while warm_runner.ready_record(fresh_prefect_home) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    runner = warm_runner.ready_record(fresh_prefect_home)
    assert runner is not None, (fresh_prefect_home / warm_runner.LOG_FILE).read_text()
    handed = _spawn(args, env)
    _wait_for(lambda: _lock_holder(store) not in (None, running.pid), handed)  # not the lock the last kill left
    child = _lock_holder(store)
    assert child is not None
    assert child != handed.pid and os.getsid(child) == runner["pid"]  # the run happens in the runner's child
    handed.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    handed.communicate(timeout=30)
    assert time.monotonic() - killed < 5
    while _alive(child) and time.monotonic() - killed < 5:
        time.sleep(0.05)
    assert not _alive(child), "the runner's child outlived the CLI it ran for"

    rerun = subprocess.run([*ACCRETE, *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert read_record(fresh_prefect_home) == record
    assert Store(store).read_manifest().partition == list_partitions(world)[1].isoformat()
