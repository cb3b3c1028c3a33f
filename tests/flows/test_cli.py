"""The `accrete` command line as a user runs it: a subprocess, real Parquet, a real store, real Prefect flows
(on a temporary local API). A user's mistake ends in one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow.compute as pc
import pytest

from accrete.flows.cli import build_parser
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.exports import read_export
from accrete.pipeline.store import Store


def _commands() -> list[str]:
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command")
    return sorted(subparsers.choices)


def _assert_one_error_line(proc: subprocess.CompletedProcess, command: str, *fragments: str,
                           alone: bool = False) -> str:
    """Exit code 2, no traceback, exactly one `accrete COMMAND: error: ...` line naming every fragment, and
    after it at most the temporary Prefect server's shutdown notice. `alone`: that line is all of stderr
    (commands that run no Prefect flow; a flow's run log precedes it otherwise)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"accrete {command}: error:")]
    assert len(errors) == 1, proc.stderr
    after = lines[lines.index(errors[0]) + 1:]
    assert all("Stopping temporary server" in line for line in after), proc.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    if alone:
        assert lines == errors
    return errors[0]


@pytest.fixture(scope="module")
def cli_store(world, config_path, tmp_path_factory, run_cli):
    """A store made through the CLI itself: `retrain` as of the first day, then one `nightly` (read-only)."""
    store = tmp_path_factory.mktemp("cli") / "store"
    first = list_partitions(world)[0].isoformat()
    boot = run_cli("retrain", "--data", world, "--store", store, "--as-of", first, "--config", config_path, "--json")
    assert boot.returncode == 0, boot.stderr
    assert json.loads(boot.stdout)["version"] == 1
    step = run_cli("nightly", "--data", world, "--store", store, "--config", config_path, "--json")
    assert step.returncode == 0, step.stderr
    assert json.loads(step.stdout)["kind"] == "incremental"
    return store


@pytest.fixture
def store_copy(cli_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(cli_store, copy)
    return copy


@pytest.mark.parametrize("command", _commands())
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: accrete {command}" in capsys.readouterr().out


def test_help_runs_as_a_subprocess_without_loading_tensorflow_or_prefect(cli_env):
    proc = subprocess.run([sys.executable, "-m", "accrete.flows.cli", "--help"], capture_output=True, text=True, env=cli_env,
                          timeout=60)
    assert proc.returncode == 0 and all(command in proc.stdout for command in _commands())
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, accrete.flows.cli\n"
                               "try:\n    accrete.flows.cli.main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
                               "print(sorted(m for m in ('tensorflow', 'prefect') if m in sys.modules))"],
        capture_output=True, text=True, env=cli_env, timeout=60)
    assert probe.stdout.strip().splitlines()[-1] == "[]"


def test_a_badly_formatted_date_is_one_usage_error(run_cli):
    proc = run_cli("nightly", "--date", "2024-13-45")
    _assert_one_error_line(proc, "nightly", "not a date (YYYY-MM-DD): '2024-13-45'")


@pytest.mark.parametrize("command", ["retrain", "nightly", "backfill"])
def test_a_missing_config_file_is_one_line_before_any_prefect_api_starts(command, run_cli, world, tmp_path):
    """Checked before Prefect starts (about a second instead of twenty): the Prefect home stays without a
    database, which the temporary API would have created."""
    partitions = list_partitions(world)
    first, last = partitions[0].isoformat(), partitions[-1].isoformat()
    dates = {"retrain": ["--as-of", first], "nightly": [], "backfill": ["--start", first, "--end", last]}[command]
    missing, home = tmp_path / "missing.toml", tmp_path / "prefect-home"
    proc = run_cli(command, "--data", world, "--store", tmp_path / "store", "--config", missing, *dates,
                   PREFECT_HOME=str(home))
    _assert_one_error_line(proc, command, str(missing), "configuration file not found", alone=True)
    assert not (home / "prefect.db").exists()


@pytest.mark.slow  # its store is made by `accrete retrain` and `accrete nightly`, which start Prefect
def test_data_store_and_dates_are_checked_before_any_prefect_api_starts(run_cli, world, cli_store, config_path,
                                                                        tmp_path):
    home = tmp_path / "prefect-home"

    def check(command: str, *args, fragments: tuple[str, ...]) -> None:
        proc = run_cli(command, "--config", config_path, *args, PREFECT_HOME=str(home))
        _assert_one_error_line(proc, command, *fragments, alone=True)

    no_data, no_store = tmp_path / "no-data", tmp_path / "no-store"
    check("nightly", "--data", no_data, "--store", cli_store, fragments=(str(no_data), "data directory not found"))
    check("nightly", "--data", world, "--store", no_store, fragments=(str(no_store), "no such store"))
    check("nightly", "--data", world, "--store", cli_store, "--date", "2099-01-01",
          fragments=(str(world), "no partition for 2099-01-01"))
    check("backfill", "--data", world, "--store", no_store, "--start", "2024-01-01", "--end", "2024-01-31",
          fragments=(str(no_store), "no such store"))
    check("backfill", "--data", world, "--store", cli_store, "--start", "2099-01-01", "--end", "2099-01-31",
          fragments=(str(world), "no partition from 2099-01-01 to 2099-01-31"))
    check("retrain", "--data", world, "--store", no_store, "--as-of", "1999-01-01",
          fragments=(str(world), "no partition on or before 1999-01-01"))
    assert not (home / "prefect.db").exists() and not no_store.exists()


@pytest.mark.slow  # starts Prefect servers
def test_a_prefect_api_that_does_not_start_in_time_is_one_line_naming_the_remedy(run_cli, world, config_path,
                                                                                 tmp_path, fresh_prefect_home):
    """The user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is respected (1 s: too short for any
    machine), the start is tried twice, and the server that missed it is stopped: nothing is left running
    or recorded in the Prefect home."""
    from accrete.flows.local_server import STATE_FILE

    first = list_partitions(world)[0].isoformat()
    runs = {"retrain": ["--data", world, "--store", tmp_path / "store", "--as-of", first, "--config", config_path],
            "demo": ["--workdir", tmp_path / "demo", "--days", "3", "--shift-day", "2"]}
    for command, args in runs.items():
        proc = run_cli(command, *args, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1", timeout=120,
                       PREFECT_HOME=str(fresh_prefect_home))
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"accrete {command}: error: the local Prefect server did not start within 1 s, twice")
        assert "`prefect server start`" in line and "PREFECT_API_URL=" in line
        assert not (fresh_prefect_home / STATE_FILE).exists()
    assert not (tmp_path / "store").exists() and not (tmp_path / "demo").exists()


def test_no_prefect_api_configured_or_allowed_is_one_line_naming_the_remedy(run_cli, world, config_path, tmp_path):
    first = list_partitions(world)[0].isoformat()
    proc = run_cli("retrain", "--data", world, "--store", tmp_path / "store", "--as-of", first, "--config", config_path,
                   PREFECT_SERVER_EPHEMERAL_ENABLED="false", PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false")
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("accrete retrain: error: no Prefect API: PREFECT_API_URL is not set")
    assert "`prefect server start`" in line
    assert not (tmp_path / "store").exists()


@pytest.mark.slow  # starts the temporary Prefect API
def test_a_failing_backfill_is_one_line_naming_the_date_and_exits_2(run_cli, broken_world, make_store, config_path):
    data, bad = broken_world
    dates = list_partitions(data)
    store = make_store(data)
    proc = run_cli("backfill", "--data", data, "--store", store, "--start", dates[0], "--end", dates[-1],
                   "--config", config_path)
    _assert_one_error_line(proc, "backfill", f"date={bad.isoformat()}", "unreadable Parquet file",
                           f"backfill stopped at {bad.isoformat()} after applying 2 partition(s)",
                           "run the same backfill again to resume there")
    assert proc.stdout == ""
    assert Store(store).manifest()["partition"] == dates[2].isoformat()


def test_a_wrong_store_path_is_one_clear_line(run_cli, tmp_path):
    missing = tmp_path / "no-such-store"
    _assert_one_error_line(run_cli("status", "--store", missing), "status", str(missing), "no such store", alone=True)
    proc = run_cli("export", "--store", missing, "--out", tmp_path / "x.parquet")
    _assert_one_error_line(proc, "export", str(missing), alone=True)
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.slow  # its store is made by `accrete retrain` and `accrete nightly`, which start Prefect
def test_a_run_with_nothing_to_do_says_so_in_one_line_without_starting_prefect(run_cli, world, cli_store,
                                                                               config_path, tmp_path):
    home, applied = tmp_path / "prefect-home", list_partitions(world)[:2]
    data = tmp_path / "data"  # the world as it stood on the second day: every partition applied
    shutil.copytree(world, data, ignore=lambda _, names: [n for n in names if n.startswith("date=")
                                                          and n[5:] > applied[-1].isoformat()])
    before = sorted(p.name for p in (cli_store / "versions").iterdir())
    nightly = run_cli("nightly", "--data", data, "--store", cli_store, "--config", config_path, PREFECT_HOME=str(home))
    assert nightly.returncode == 0, nightly.stderr
    assert nightly.stdout.strip() == (f"nothing pending: every partition in {data} is applied (last {applied[-1]}, "
                                      f"version 2); use --force to redo the latest step")
    backfill = run_cli("backfill", "--data", world, "--store", cli_store, "--start", applied[0].isoformat(),
                       "--end", applied[1].isoformat(), "--config", config_path, "--json", PREFECT_HOME=str(home))
    assert backfill.returncode == 0, backfill.stderr
    assert json.loads(backfill.stdout) == {
        "changed": False, "version": 2,
        "message": f"nothing to apply: the 2 partition(s) from {applied[0]} to {applied[1]} are already applied "
                   f"(version 2)"}
    assert not (home / "prefect.db").exists()
    assert sorted(p.name for p in (cli_store / "versions").iterdir()) == before


@pytest.mark.slow  # its store is made by `accrete retrain` and `accrete nightly`, which start Prefect
def test_a_damaged_store_is_one_clear_line_for_reads_and_runs(run_cli, world, store_copy, config_path):
    (store_copy / "CURRENT").write_text("garbage\n")
    _assert_one_error_line(run_cli("status", "--store", store_copy), "status", "CURRENT", "damaged pointer", alone=True)
    proc = run_cli("nightly", "--data", world, "--store", store_copy, "--config", config_path)
    _assert_one_error_line(proc, "nightly", "CURRENT", "damaged pointer 'garbage'")


@pytest.mark.slow  # its store is made by `accrete retrain` and `accrete nightly`, which start Prefect
def test_status_json_describes_the_store_after_a_run(run_cli, cli_store, world):
    proc = run_cli("status", "--store", cli_store, "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["current"] == 2 and status["generation"] == 1
    assert [v["kind"] for v in status["versions"]] == ["full_retrain", "incremental"]
    assert status["last_partition"] == list_partitions(world)[1].isoformat()
    assert "recall@10" in status["versions"][1]["metrics"]
    assert status["quarantined_rows"] == 0 and [v["quarantined"] for v in status["versions"]] == [0, 0]


@pytest.mark.slow  # its store is made by `accrete retrain` and `accrete nightly`, which start Prefect
def test_export_writes_every_row_and_the_delta_since_a_version(run_cli, cli_store, tmp_path):
    state = Store(cli_store).load()
    full_path, delta_path = tmp_path / "full.parquet", tmp_path / "delta.parquet"
    full = run_cli("export", "--store", cli_store, "--out", full_path, "--json")
    assert full.returncode == 0, full.stderr
    table = read_export(full_path)
    assert table.num_rows == (len(state.user_vocab) - 1) + (len(state.item_vocab) - 1)

    delta = run_cli("export", "--store", cli_store, "--delta-since", "1", "--out", delta_path, "--json")
    assert delta.returncode == 0, delta.stderr
    changes = read_export(delta_path)
    new_items = state.manifest["rows"]["item_new"]
    added = pc.and_(pc.equal(changes["entity"], "item"), pc.equal(changes["change"], "added"))
    assert new_items > 0 and pc.sum(added).as_py() == new_items


@pytest.mark.slow
def test_the_demo_triggers_a_drift_retrain_and_writes_the_dashboard(run_cli, tmp_path):
    """A short demo (12 days, shift on day 4): the cooldown (7 days) allows a retrain from day 7 on."""
    proc = run_cli("demo", "--workdir", tmp_path / "demo", "--days", "12", "--shift-day", "4", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Drift-triggered full retrains" in proc.stdout and "generation 2" in proc.stdout
    assert (tmp_path / "demo" / "store" / "dashboard.html").stat().st_size > 0
    assert f"accrete status --store {tmp_path / 'demo' / 'store'}" in proc.stdout
    again = run_cli("demo", "--workdir", tmp_path / "demo")
    _assert_one_error_line(again, "demo", "already holds a demo")


def test_serve_without_a_server_or_with_a_bad_schedule_is_one_clear_line(run_cli, world, tmp_path, cli_env):
    assert "PREFECT_API_URL" not in cli_env  # and the session's PREFECT_HOME has no profile naming a server
    proc = run_cli("serve", "--data", world, "--store", tmp_path / "store")
    _assert_one_error_line(proc, "serve", "prefect server start", "PREFECT_API_URL", alone=True)
    # The schedule is checked before anything talks to the server (nothing listens on this port).
    proc = run_cli("serve", "--data", world, "--store", tmp_path / "store", "--cron", "0 25 * * *",
                   PREFECT_API_URL="http://127.0.0.1:9/api")
    _assert_one_error_line(proc, "serve", "--cron '0 25 * * *'", alone=True)
    proc = run_cli("serve", "--data", world, "--store", tmp_path / "store", "--timezone", "Mars/Olympus_Mons",
                   PREFECT_API_URL="http://127.0.0.1:9/api")
    _assert_one_error_line(proc, "serve", "Mars/Olympus_Mons", alone=True)


@pytest.mark.slow  # its store is made by `accrete retrain` and `accrete nightly`, which start Prefect
def test_status_json_is_strict_json_with_null_for_unmeasured_metrics(run_cli, cli_store):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    result = run_cli("status", "--store", str(cli_store), "--json")
    status = json.loads(result.stdout, parse_constant=refuse)
    assert status["current"] == status["versions"][-1]["version"]


def test_an_error_raised_while_a_signal_is_handled_still_counts_as_that_signal():
    """A SIGTERM that lands while Prefect creates a task run makes its crash handling raise
    `ValueError: Task run is not set` on top of its `TerminationSignal` (seen in CI): still a clean stop."""
    import prefect.exceptions

    from accrete.flows.cli import Terminated, _signal_behind

    def raised(first: BaseException, then: Exception) -> Exception:
        try:
            try:
                raise first
            except BaseException:
                raise then
        except Exception as exc:
            return exc

    assert _signal_behind(raised(prefect.exceptions.TerminationSignal(signal=15), ValueError("Task run is not set"))) \
        == "SIGTERM"
    assert _signal_behind(raised(Terminated(), RuntimeError("x"))) == "SIGTERM"
    assert _signal_behind(raised(KeyboardInterrupt(), ValueError("y"))) == "SIGINT"
    assert _signal_behind(ValueError("an ordinary bug")) is None
