"""The Prefect flows on real data: a real (temporary) Prefect API, real Parquet partitions, real training."""
from __future__ import annotations

import json

import pytest

from accrete.flows.flows import (BACKFILL_SUMMARY_KEY, DASHBOARD_KEY, DRIFT_METRICS_KEY, EPHEMERAL_STARTUP_SECONDS,
                         NIGHTLY_SUMMARY_KEY, backfill, ephemeral_startup_seconds, full_retrain, nightly)
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.contract import list_partitions
from accrete.pipeline.decision import fired_reasons
from accrete.pipeline.errors import DataContractError, PartitionOrderError, StoreError
from accrete.pipeline.faults import ENV_VAR, InjectedFault
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.store import Store

# Every test runs a flow on a temporary Prefect API (about twenty seconds to start): the quick target skips them.
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def _iso(dates) -> list[str]:
    return [d.isoformat() for d in dates]


def _artifacts_of(flow_run_id) -> dict[str, object]:
    """The artifacts a flow run (and its tasks) created, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                TaskRunFilter)
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(),
            limit=100, offset=0, sort=ArtifactSort.CREATED_DESC)
    return {artifact.key: artifact for artifact in artifacts}


def _state_in_the_api(state):
    """The final state of a flow run as the Prefect API holds it (what alerts and the UI see)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).state


def _assert_lineage_applies_each_partition_once(store_dir, dates) -> None:
    """Every published version's parent is the one before it, and across all versions each partition
    was consumed exactly once: by the bootstrap or by one incremental step (a drift-triggered retrain
    consumes nothing new)."""
    store = Store(store_dir)
    versions = store.versions()
    assert versions == list(range(1, len(versions) + 1))
    consumed: list[str] = []
    for version in versions:
        manifest = store.manifest(version)
        assert manifest["parent"] == (version - 1 if version > 1 else None)
        if manifest["kind"] == "incremental":
            consumed.append(manifest["partition"])
        elif version == 1:
            consumed += manifest["partitions"]
        else:  # a later full retrain re-trains on what was consumed and takes in nothing new
            assert manifest["partitions"] == store.manifest(version - 1)["partitions"]
    assert sorted(consumed) == _iso(dates) and len(set(consumed)) == len(consumed)
    assert store.manifest()["partitions"] == _iso(dates)


def test_a_backfill_run_twice_trains_nothing_the_second_time(world, make_store, config_path):
    dates = list_partitions(world)
    store = make_store(world)
    first = backfill(data=str(world), store=str(store), start=dates[0].isoformat(), end=dates[-1].isoformat(),
                     config_path=config_path)
    assert first["applied"] == _iso(dates[1:]) and first["skipped"] == _iso(dates[:1])
    versions = Store(store).versions()

    state = backfill(data=str(world), store=str(store), start=dates[0].isoformat(), end=dates[-1].isoformat(),
                     config_path=config_path, return_state=True)
    assert state.is_completed()
    second = state.result()
    assert second["applied"] == [] and second["retrained"] == []
    assert second["skipped"] == _iso(dates)
    assert second["version"] == first["version"] == versions[-1]
    assert Store(store).versions() == versions
    _assert_lineage_applies_each_partition_once(store, dates)
    artifacts = _artifacts_of(state.state_details.flow_run_id)
    assert {BACKFILL_SUMMARY_KEY, DASHBOARD_KEY} <= set(artifacts)
    assert f"skipped (already applied): {len(dates)}" in artifacts[BACKFILL_SUMMARY_KEY].data


def test_a_failure_on_one_date_stops_the_backfill_and_a_rerun_applies_every_partition_exactly_once(
        world, make_store, config_path, monkeypatch):
    dates = list_partitions(world)
    store = make_store(world)
    start, end, broken = dates[0].isoformat(), dates[-1].isoformat(), dates[3]

    monkeypatch.setenv(ENV_VAR, f"nightly:{broken.isoformat()}")
    state = backfill(data=str(world), store=str(store), start=start, end=end, config_path=config_path,
                     return_state=True)
    assert state.is_failed() and _state_in_the_api(state).is_failed()
    with pytest.raises(InjectedFault, match="injected fault at nightly:" + broken.isoformat()) as failure:
        state.result()
    assert failure.value.__notes__ == [f"backfill stopped at {broken.isoformat()} after applying 2 partition(s); "
                                       "run the same backfill again to resume there"]
    assert Store(store).manifest()["partition"] == dates[2].isoformat()  # nothing of the broken date published
    summary = _artifacts_of(state.state_details.flow_run_id)[BACKFILL_SUMMARY_KEY].data
    assert f"**FAILED on {broken.isoformat()}**: InjectedFault: injected fault" in summary

    monkeypatch.delenv(ENV_VAR)
    resumed = backfill(data=str(world), store=str(store), start=start, end=end, config_path=config_path)
    assert resumed["applied"] == _iso(dates[3:]) and resumed["skipped"] == _iso(dates[:3])
    _assert_lineage_applies_each_partition_once(store, dates)


def test_a_backfill_stopped_by_a_user_error_ends_failed_with_that_error(broken_world, make_store, config_path):
    data, bad = broken_world
    dates = list_partitions(data)
    store = make_store(data)
    state = backfill(data=str(data), store=str(store), start=dates[0].isoformat(), end=dates[-1].isoformat(),
                     config_path=config_path, return_state=True)
    assert state.is_failed() and _state_in_the_api(state).is_failed()
    with pytest.raises(DataContractError, match=f"date={bad.isoformat()}.*unreadable Parquet file") as failure:
        state.result()
    assert f"backfill stopped at {bad.isoformat()}" in failure.value.__notes__[0]
    assert Store(store).manifest()["partition"] == dates[2].isoformat()


def test_a_failing_nightly_or_full_retrain_ends_failed(world, make_store, config_path):
    store = make_store(world)
    states = {
        "nightly": nightly(data=str(world), store=str(store), date="2099-01-01", config_path=config_path,
                           dashboard=False, return_state=True),
        "full-retrain": full_retrain(data=str(world), store=str(store), as_of="1999-01-01", config_path=config_path,
                                     dashboard=False, return_state=True),
    }
    for name, state in states.items():
        assert state.is_failed() and _state_in_the_api(state).is_failed(), name
        with pytest.raises(PartitionOrderError):
            state.result()
    assert Store(store).versions() == [1]


def test_the_temporary_api_gets_a_generous_start_up_time_unless_the_user_set_one():
    from prefect.settings import temporary_settings

    assert ephemeral_startup_seconds() == EPHEMERAL_STARTUP_SECONDS >= 60  # Prefect's own default is 20 s
    with temporary_settings(updates={"server.ephemeral.startup_timeout_seconds": 7}):
        assert ephemeral_startup_seconds() == 7


def test_a_regime_shift_makes_the_nightly_flow_run_a_full_retrain(shift_world, make_store, config_path):
    store = make_store(shift_world)
    pending = list_partitions(shift_world)[1:]
    for date in pending:  # one nightly run per night, each taking the oldest pending partition
        result = nightly(data=str(shift_world), store=str(store), config_path=config_path, dashboard=False)
        assert result["kind"] == "incremental" and result["date"] == date.isoformat()
        if result["retrained"]:
            break
    else:
        pytest.fail(f"no drift-triggered retrain in {len(pending)} nights after the shift")

    s = Store(store)
    step, retrain = s.manifest(result["step_version"]), s.manifest(result["retrain_version"])
    assert step["kind"] == "incremental" and step["drift"]["retrain"] is True
    assert retrain["kind"] == "full_retrain" and retrain["generation"] == 2
    assert retrain["parent"] == step["version"] and retrain["as_of"] == result["date"]
    assert result["reasons"] == step["drift"]["reasons"].split("; ")
    fired = fired_reasons(result["reasons"])  # the stated reason leaves out "waiting:"/"cooldown:" notes
    assert fired and retrain["reason"] == "; ".join(fired)
    assert s.require_current() == result["version"] == retrain["version"] and result["generation"] == 2


def test_a_retrain_left_owed_by_a_crash_runs_before_the_next_step(shift_world, make_store, config_path):
    """A step published with "retrain due", whose retrain never ran (the process died): the next nightly
    run retrains first, as of that step's date, then applies the next partition on the new generation."""
    store = make_store(shift_world)
    config = AccreteConfig.load(config_path)
    for _ in list_partitions(shift_world)[1:]:
        owed = run_incremental_step(shift_world, store, config=config)  # the pipeline alone: no retrain follows
        if owed.retrain_due:
            break
    else:
        pytest.fail("the shift world never asked for a retrain")

    result = nightly(data=str(shift_world), store=str(store), config_path=config_path, dashboard=False)
    s = Store(store)
    retrain = s.manifest(owed.version + 1)
    assert retrain["kind"] == "full_retrain" and retrain["as_of"] == owed.date.isoformat()
    assert retrain["reason"] == "; ".join(fired_reasons(owed.manifest["drift"]["reasons"]))
    assert result["retrained"] and result["step_version"] == owed.version + 2
    step = s.manifest(result["step_version"])
    assert step["kind"] == "incremental" and step["parent"] == retrain["version"] and step["generation"] == 2


def test_a_nightly_run_leaves_its_summary_drift_table_and_dashboard_link(world, make_store, config_path):
    store = make_store(world)
    state = nightly(data=str(world), store=str(store), config_path=config_path, return_state=True)
    result = state.result()
    assert json.loads(json.dumps(result)) == result  # JSON-able as promised
    artifacts = _artifacts_of(state.state_details.flow_run_id)
    assert {NIGHTLY_SUMMARY_KEY, DRIFT_METRICS_KEY, DASHBOARD_KEY} <= set(artifacts)

    summary = artifacts[NIGHTLY_SUMMARY_KEY].data
    assert f"version **{result['version']}**" in summary and f"new items: {result['new_items']:,}" in summary
    assert "recall@10" in summary and "Drift decision" in summary
    rows = json.loads(artifacts[DRIFT_METRICS_KEY].data)
    manifest = Store(store).manifest(result["step_version"])
    assert {row["metric"] for row in rows} == set(manifest["drift"]["metrics"])
    psi = next(r for r in rows if r["metric"] == "psi_item_popularity")
    assert psi["threshold"] == AccreteConfig.load(config_path).drift.psi_item_popularity
    assert psi["value"] == manifest["drift"]["metrics"]["psi_item_popularity"]

    dashboard = store.resolve() / "dashboard.html"
    assert f"]({dashboard.as_uri()})" in artifacts[DASHBOARD_KEY].data and dashboard.stat().st_size > 0
    assert result["dashboard"] == str(dashboard)


def test_a_full_retrain_without_as_of_retrains_on_what_the_store_consumed(world, make_store, config_path):
    store = make_store(world)
    run_incremental_step(world, store, config=AccreteConfig.load(config_path))  # consumed: the first two days
    result = full_retrain(data=str(world), store=str(store), config_path=config_path, dashboard=False)
    manifest = Store(store).manifest()
    assert result["version"] == 3 and result["generation"] == 2 and result["reason"] == "manual"
    assert manifest["as_of"] == list_partitions(world)[1].isoformat() and manifest["kind"] == "full_retrain"


def test_user_errors_reach_the_caller_as_themselves_not_as_prefect_wrappers(world, make_store, config_path):
    store = make_store(world)
    with pytest.raises(PartitionOrderError, match="no partition for 2099-01-01"):
        nightly(data=str(world), store=str(store), date="2099-01-01", config_path=config_path)
    (store / "CURRENT").write_text("garbage\n")
    with pytest.raises(StoreError, match="damaged pointer"):
        nightly(data=str(world), store=str(store), config_path=config_path)


def test_a_nightly_that_applies_nothing_leaves_the_dashboard_and_a_failure_after_publish_says_so(
        world, make_store, config_path):
    """A nightly whose partition was applied before (called directly, as a deployment run would) skips the step
    and does not rewrite dashboard.html. A failure after the publish (the dashboard cannot be written) is
    `PublishedThenFailed` naming the published version, and the run ends Failed."""
    from accrete.flows.flows import PublishedThenFailed

    dates = list_partitions(world)
    store = make_store(world)
    nightly(data=str(world), store=str(store), config_path=config_path)
    dashboard = store / "dashboard.html"
    before = (dashboard.read_bytes(), dashboard.stat().st_mtime_ns)
    skipped = nightly(data=str(world), store=str(store), date=dates[1].isoformat(), config_path=config_path)
    assert skipped["kind"] == "skipped" and "dashboard" not in skipped
    assert (dashboard.read_bytes(), dashboard.stat().st_mtime_ns) == before

    dashboard.unlink()
    dashboard.mkdir()
    state = nightly(data=str(world), store=str(store), config_path=config_path, return_state=True)
    assert state.is_failed()
    with pytest.raises(PublishedThenFailed, match=f"partition {dates[2]} WAS published as version 3") as error:
        state.result()
    assert error.value.version == 3 == Store(store).current_version()
