"""Fixtures of the flow tests: an isolated Prefect home and API, small synthetic worlds, a fast configuration.

Prefect reads its settings (PREFECT_HOME among them) when it is first imported, so the isolation is set
up here, at collection time, before any test module imports `flows`. Nothing a test does touches the
user's ~/.prefect or a server named in their profile.
"""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# Once per session, even if a test module imports this file a second time under another name
# (`tests.flows.conftest`): a second home would leave the first one's server without its finalizer.
PREFECT_HOME = Path(os.environ.get("ACCRETE_TEST_PREFECT_HOME") or tempfile.mkdtemp(prefix="accrete-test-prefect-home-"))
os.environ["ACCRETE_TEST_PREFECT_HOME"] = str(PREFECT_HOME)
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_PROFILE", None)
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no telemetry calls from a sandbox
os.environ.pop("ACCRETE_FAULT_INJECT", None)
os.environ.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)  # tests set it where they mean to

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Small enough for 2 cores: each step trains one epoch of dimension 8 on about a thousand interactions.
FAST_CONFIG_TOML = """\
[model]
dim = 8

[train]
epochs = 1
retrain_epochs = 2
batch_size = 256
"""

WORLD_SIZE = dict(initial_users=300, initial_items=200, new_users_per_day=10, new_items_per_day=5,
                  interactions_per_day=800, initial_interactions=6000)


@pytest.fixture(scope="session", autouse=True)
def _remove_prefect_home():
    """At the end of the session: stop the local Prefect server the CLI runs started in this session's home
    (`flows/local_server.py`; CI must not leave one running), then remove the home."""
    yield
    from accrete.flows.local_server import stop_server

    stop_server(PREFECT_HOME)
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)
    os.environ.pop("ACCRETE_TEST_PREFECT_HOME", None)


@pytest.fixture
def fresh_prefect_home(tmp_path) -> Iterator[Path]:
    """A Prefect home of this test only, with no server yet; any local server started in it is stopped
    afterwards."""
    from accrete.flows.local_server import stop_server

    home = tmp_path / "prefect-home"
    home.mkdir()
    yield home
    stop_server(home)


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (its own SQLite database) for flows run in this process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def config_path(tmp_path_factory) -> str:
    """The TOML file of the fast configuration (default drift settings)."""
    path = tmp_path_factory.mktemp("config") / "accrete.toml"
    path.write_text(FAST_CONFIG_TOML)
    return str(path)


def _generate(out: Path, **kwargs) -> Path:
    from accrete.pipeline.synthetic import generate_world

    generate_world(out, **{**WORLD_SIZE, **kwargs})
    return out


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """Eight daily partitions of a stationary synthetic world (read-only: tests copy nothing into it)."""
    return _generate(tmp_path_factory.mktemp("world") / "data", days=8, seed=0)


@pytest.fixture(scope="session")
def shift_world(tmp_path_factory) -> Path:
    """A synthetic world whose preferences change from day 5 on (a regime shift)."""
    return _generate(tmp_path_factory.mktemp("shift-world") / "data", days=14, seed=1, shift_day=5)


@pytest.fixture
def broken_world(world, tmp_path) -> tuple[Path, datetime.date]:
    """A copy of `world` whose fourth partition holds an interactions file that is not Parquet (a user's
    mistake: `DataContractError`), and that partition's date."""
    from accrete.pipeline.contract import list_partitions

    data = tmp_path / "broken-data"
    shutil.copytree(world, data)
    bad = list_partitions(data)[3]
    for part in (data / "interactions" / f"date={bad.isoformat()}").iterdir():
        part.write_bytes(b"not parquet")
    return data, bad


@pytest.fixture
def make_store(tmp_path, config_path):
    """Makes a fresh store for a data directory: its first version is a full retrain as of the first
    partition (a plain pipeline call, no Prefect), so a test starts from a bootstrapped store."""
    from accrete.pipeline.config import AccreteConfig
    from accrete.pipeline.contract import list_partitions
    from accrete.pipeline.retrain import run_full_retrain

    def make(data: Path, name: str = "store") -> Path:
        store = tmp_path / name
        run_full_retrain(data, store, list_partitions(data)[0], config=AccreteConfig.load(config_path),
                         reason="bootstrap")
        return store

    return make


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """The environment of an `accrete` subprocess: this session's Prefect home, no server, the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def run_cli(cli_env):
    """Runs `python -m accrete.flows.cli ARGS...` in a subprocess; returns the CompletedProcess (text)."""

    def run(*args: str, timeout: float = 240, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "accrete.flows.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env={**cli_env, **extra_env}, cwd=REPO_ROOT)

    return run

