"""Accrete's Prefect flows: `nightly`, `backfill` and `full_retrain`, thin orchestration over `pipeline`.

A flow here is a short script of task calls; every task wraps one plain `pipeline` function and takes
paths and ISO dates (strings), never DataFrames, so a run's parameters are readable in the Prefect UI
and a task can be understood without Prefect. Retries are declared on the I/O tasks only (listing
partitions, reading the store, writing reports); training is never retried automatically, because a
failed step is either a user's mistake (retrying cannot fix it) or a bug (retrying hides it).

Each run leaves artifacts for review in the Prefect UI under stable keys: a markdown summary
(``accrete-nightly-summary``, ``accrete-backfill-summary``, ``accrete-full-retrain-summary``), the
drift metrics of the step as a table (``accrete-drift-metrics``) and a link to the rebuilt dashboard
(``accrete-dashboard``, ``file://STORE/dashboard.html``).

Every failure ends the flow run in state Failed (so Failed-state alerts fire), the backfill's
included. Called directly (as the CLI does), a flow re-raises the exception its code raised: a
`pipeline.errors.AccreteError` reaches the caller as itself. Prefect's engine logs such a user error
as one line, without its traceback (see `_UserErrorTracebackFilter`).

Once a run has published its version, a later failure (the dashboard on a full disk, a damaged old
manifest read for the summary, a drift-triggered retrain) is raised as `PublishedThenFailed`, whose
message says the version WAS published: the CLI exits 3 with it, so a scheduler that retries a user's
mistake (exit 2) does not apply the next partition believing this one failed.

The CLI points Prefect at the local server it keeps (`flows/local_server.py`) before importing this
module. A direct call without PREFECT_API_URL runs on a temporary local Prefect API that Prefect starts
on first use; `start_prefect_api` starts it beforehand with a generous time limit and one retry, so a
busy machine ends in `PrefectAPIUnavailable` (one clear line on the CLI) rather than a traceback.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import AccreteError
from accrete.pipeline.evaluation import HEADLINE_METRICS
from accrete.flows.local_server import PrefectAPIUnavailable  # noqa: F401  (raised here, caught by the CLI)
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.incremental import StepResult, run_incremental_step, sync_drift_history
from accrete.pipeline.policy import applied_partitions as policy_applied, missing_period_warning, owed_retrain, \
    retrain_reason
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store

NIGHTLY_SUMMARY_KEY = "accrete-nightly-summary"
BACKFILL_SUMMARY_KEY = "accrete-backfill-summary"
RETRAIN_SUMMARY_KEY = "accrete-full-retrain-summary"
DRIFT_METRICS_KEY = "accrete-drift-metrics"
DASHBOARD_KEY = "accrete-dashboard"
DASHBOARD_FILE = "dashboard.html"

#: Seconds to wait for the temporary Prefect API to answer, unless the user set
#: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS. Prefect's default, 20 s, is too short on a busy machine:
#: the server process imports FastAPI and SQLAlchemy and opens its database, about 6 s on 2 idle cores.
EPHEMERAL_STARTUP_SECONDS = 120


class PublishedThenFailed(RuntimeError):
    """A run published its version (CURRENT points at it), then a later part of the run failed. Not a user's
    mistake about the input (that is exit 2, nothing published) and not to be retried as if nothing had
    been applied: the CLI exits 3. `version` is the published version."""

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version


@contextlib.contextmanager
def _after_publish(what: str, version: int, store: str):
    """Turn a failure after `what` was published as `version` into `PublishedThenFailed` saying so."""
    try:
        yield
    except PublishedThenFailed:
        raise
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise PublishedThenFailed(
            f"{what} WAS published as version {version} (CURRENT), then this failed: {message}; do not apply it "
            f"again: fix the cause, then `accrete dashboard --store {store}` rebuilds the dashboard",
            version) from exc


def ephemeral_startup_seconds() -> int:
    """How long `start_prefect_api` waits for the temporary API: the user's
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS when set (environment, profile or prefect.toml),
    `EPHEMERAL_STARTUP_SECONDS` otherwise."""
    from prefect.settings import get_current_settings

    ephemeral = get_current_settings().server.ephemeral
    user_set = "startup_timeout_seconds" in ephemeral.model_fields_set
    return ephemeral.startup_timeout_seconds if user_set else EPHEMERAL_STARTUP_SECONDS


def start_prefect_api() -> str:
    """Make sure flows called in this process have a Prefect API, and return its URL.

    With PREFECT_API_URL set, that server is used as it is. Otherwise the temporary local API a direct
    flow call would start on first use is started now, allowing `EPHEMERAL_STARTUP_SECONDS` (or the
    user's PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS), and once more if that fails: under load the
    first attempt can miss the limit. Prefect keeps one such server per process, so every later client
    (flow runs, logs, events) finds it running.

    Raises:
        PrefectAPIUnavailable: naming the remedy (a real server and PREFECT_API_URL).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return settings.api.url
    from prefect.server.api.server import SubprocessASGIServer  # 1.5-2 s to import: only when it is needed

    remedy = "start one with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
    if not settings.server.ephemeral.enabled:
        raise PrefectAPIUnavailable(f"no Prefect API: PREFECT_API_URL is not set and the temporary server is "
                                    f"disabled; {remedy}")
    timeout = ephemeral_startup_seconds()
    failure: Exception | None = None
    for _attempt in range(2):
        server = SubprocessASGIServer()
        try:
            server.start(timeout=timeout)
            return server.api_url
        except Exception as exc:  # a timeout, or the server process exiting: the same remedy applies
            failure = exc
            server.stop()  # Prefect leaves a server that missed the limit running; the retry starts afresh
    raise PrefectAPIUnavailable(f"the temporary Prefect API did not start within {timeout} s, twice (the machine "
                                f"may be busy); {remedy}, or allow more time with "
                                f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") from failure


@contextlib.contextmanager
def manual_run():
    """Settings of a run started by hand (the CLI): no flow-run heartbeats.

    Prefect's heartbeat thread sleeps in one-second steps and is joined when a flow run ends, so every
    flow run, subflows included, waits up to a second at its end (a trivial flow: 1.3 s with it, 0.3 s
    without). Heartbeats only feed the zombie-run automations a user may set up for deployments; served
    runs (`accrete serve`) keep them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


class _UserErrorTracebackFilter(logging.Filter):
    """Keep a user's mistake to one log line.

    Prefect's engine logs every exception that ends a task or flow run with its traceback. For an
    `AccreteError` (a missing partition, a damaged store, a bad setting) the message already names the
    file, row or field, and a traceback through Prefect's engine only buries it, on the console and in
    the UI. Bugs (any other exception) keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], AccreteError):
            record.exc_info = None
            record.exc_text = None
        return True


_USER_ERROR_FILTER = _UserErrorTracebackFilter()
for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_USER_ERROR_FILTER)


class _TqdmConsoleHandler(logging.Handler):
    """Prints log records through `tqdm.write`, above the progress bar instead of through it, with the
    level, formatter and filters of the console handler it stands in for."""

    def __init__(self, console: logging.StreamHandler):
        super().__init__(console.level)
        self.setFormatter(console.formatter)
        self.filters = list(console.filters)
        self.stream = console.stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logs_above_progress_bar():
    """Route the root logger's console handlers (Prefect's console log) through tqdm while a bar runs;
    other handlers (the API log handler, files) are untouched."""
    root = logging.getLogger()
    original = list(root.handlers)
    root.handlers = [_TqdmConsoleHandler(handler)
                     if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr)
                     else handler for handler in original]
    try:
        yield
    finally:
        root.handlers = original


def _retry_unless_user_error(task_, task_run, state) -> bool:
    """Retry condition of the I/O tasks: a transient failure (a file system hiccup) is worth another try;
    an `AccreteError` is not, since the same input will fail the same way."""
    return not isinstance(state.data, AccreteError)


_IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _retry_unless_user_error}


# ----- plain helpers (no Prefect) ---------------------------------------------------------------------
def _parse_date(text: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(text))
    except ValueError:
        raise AccreteError(f"{field}: not a date (YYYY-MM-DD): {text!r}") from None


def _paths(data: str | Path, store: str | Path, config_path: str | Path | None) -> tuple[str, str, str | None]:
    """Paths as the strings tasks take (a flow accepts `Path` objects too, as the CLI passes them)."""
    return str(data), str(store), None if config_path is None else str(config_path)


def _finite(value: Any) -> float | None:
    """A JSON-able number: NaN and infinities (a metric that could not be measured) become None."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {key: _finite(metrics[key]) for key in HEADLINE_METRICS if key in metrics}


def _step_summary(result: StepResult) -> dict[str, Any]:
    """The JSON-able facts of one incremental step (or of a skipped one) that flows and reports need."""
    manifest = Manifest.from_dict(result.manifest)
    incremental = result.kind == "incremental"
    return {
        "kind": result.kind,
        "date": result.date.isoformat(),
        "version": result.version,
        "generation": manifest.generation,
        "message": result.message,
        "new_users": manifest.rows.user_new if incremental else 0,
        "new_items": manifest.rows.item_new if incremental else 0,
        "metrics": _headline(manifest.metrics) if incremental else {},
        "retrain_due": manifest.retrain_due if incremental else False,
        "reasons": manifest.reasons if incremental else [],
        "quarantined": manifest.quarantined_rows if incremental else 0,
        "warnings": list(manifest.extra.get("warnings") or []) if incremental else [],
        "seconds": _finite(manifest.timings.get("total")) if incremental else 0.0,
    }


def _drift_rows(drift: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per drift metric: its value, and for the metrics that can trigger a retrain, the
    threshold and the current breach streak."""
    rows = []
    for metric, value in sorted((drift.get("metrics") or {}).items()):
        rows.append({"metric": metric, "value": _finite(value),
                     "threshold": _finite(drift.get(f"threshold/{metric}")),
                     "streak": drift.get(f"streak/{metric}")})
    return rows


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _change(value: Any, before: Any) -> str | None:
    return f"{value - before:+.4f}" if isinstance(value, float) and isinstance(before, float) else None


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ----- tasks ------------------------------------------------------------------------------------------
@task(name="applied-partitions", **_IO_RETRIES)
def applied_partitions(store: str) -> list[str]:
    """ISO dates of every partition the current version has consumed."""
    return [d.isoformat() for d in policy_applied(store)]


@task(name="partitions-in-range", **_IO_RETRIES)
def partitions_in_range(data: str, start: str, end: str) -> list[str]:
    """ISO dates of the data directory's partitions within [start, end], in date order."""
    first, last = _parse_date(start, "start"), _parse_date(end, "end")
    if last < first:
        raise AccreteError(f"end {last} is before start {first}")
    return [d.isoformat() for d in contract.list_partitions(data) if first <= d <= last]


@task(name="sync-drift-history", **_IO_RETRIES)
def sync_drift(store: str) -> int:
    """Recover drift-history records that a crash right after a publish left unwritten."""
    appended = sync_drift_history(store)
    if appended:
        get_run_logger().warning("recovered %d missing drift history record(s)", appended)
    return appended


@task(name="pending-retrain", **_IO_RETRIES)
def pending_retrain(store: str) -> dict[str, Any] | None:
    """`pipeline.policy.owed_retrain`: a retrain the current version asked for that never ran."""
    return owed_retrain(store)


@task(name="previous-metrics", **_IO_RETRIES)
def previous_metrics(store: str, version: int) -> dict[str, Any]:
    """Headline metrics of the closest ancestor of `version` that has any (a full retrain has none: it
    is not evaluated prequentially); empty for the first incremental step of a store."""
    s = Store(store)
    parent = s.read_manifest(version).parent
    while parent is not None:
        manifest = s.read_manifest(int(parent))
        if manifest.metrics:
            return {"version": int(parent), "date": manifest.partition, "metrics": _headline(manifest.metrics)}
        parent = manifest.parent
    return {}


def _step_run_name() -> str:
    from prefect.runtime import task_run

    return f"incremental-step-{task_run.parameters.get('date') or 'next'}"


@task(name="incremental-step", task_run_name=_step_run_name, cache_policy=NO_CACHE)
def incremental_step(data: str, store: str, date: str | None, force: bool, config_path: str | None) -> dict[str, Any]:
    """`pipeline.incremental.run_incremental_step`: apply one partition and publish it; never retried."""
    logger = get_run_logger()
    config = AccreteConfig.load(config_path)
    result = run_incremental_step(data, store, _parse_date(date, "date") if date else None, config=config,
                                  force=force, progress=logger.info)
    logger.info(result.message)
    summary = _step_summary(result)
    summary["drift_rows"] = _drift_rows(result.manifest.get("drift") or {}) if result.kind == "incremental" else []
    return summary


@task(name="full-retrain", cache_policy=NO_CACHE)
def full_retrain_step(data: str, store: str, as_of: str, window_days: int | None, reason: str,
                      config_path: str | None) -> dict[str, Any]:
    """`pipeline.retrain.run_full_retrain`: train every row from scratch as a new generation; never retried."""
    logger = get_run_logger()
    config = AccreteConfig.load(config_path)
    result = run_full_retrain(data, store, _parse_date(as_of, "as_of"), config=config, window_days=window_days,
                              reason=reason, progress=logger.info)
    logger.info(result.message)
    manifest = Manifest.from_dict(result.manifest)
    return {"kind": result.kind, "version": result.version, "generation": manifest.generation,
            "as_of": result.date.isoformat(), "reason": reason, "window_days": manifest.extra.get("window_days"),
            "users": manifest.rows.user - 1, "items": manifest.rows.item - 1,
            "examples": (manifest.extra.get("training") or {}).get("examples"),
            "quarantined": manifest.quarantined_rows,
            "seconds": _finite(manifest.timings.get("total")), "message": result.message}


@task(name="publish-dashboard", **_IO_RETRIES)
def publish_dashboard(store: str) -> str:
    """Rebuild STORE/dashboard.html from the store and link it from the run (`accrete-dashboard`)."""
    from accrete.pipeline.dashboard import build_dashboard

    out = Path(store).resolve() / DASHBOARD_FILE
    build_dashboard(store, out)
    create_link_artifact(link=out.as_uri(), link_text=f"Accrete drift dashboard ({out})", key=DASHBOARD_KEY,
                         description="Self-contained Plotly dashboard of drift metrics, quality and retrains.")
    get_run_logger().info("dashboard written to %s", out)
    return str(out)


@task(name="report-nightly", **_IO_RETRIES)
def report_nightly(summary: dict[str, Any]) -> None:
    """The run's markdown summary (`accrete-nightly-summary`) and drift table (`accrete-drift-metrics`)."""
    step = summary["step"]
    lines = [f"# Accrete nightly {summary['date']}", ""]
    if step["kind"] == "skipped":
        lines.append(f"Nothing applied: {step['message']}.")
    else:
        lines += [f"Applied partition **{step['date']}** as version **{step['version']}** "
                  f"(generation {step['generation']}, {step['seconds'] or 0:.1f} s).", "",
                  f"- new users: {step['new_users']:,}", f"- new items: {step['new_items']:,}", ""]
        previous = summary.get("previous") or {}
        before = previous.get("metrics", {})
        lines += [f"## Quality on {step['date']} before training (vs version {previous.get('version', '-')}, "
                  f"{previous.get('date', 'none')})", ""]
        rows = [[key, value, before.get(key), _change(value, before.get(key))]
                for key, value in step["metrics"].items()]
        lines += [_markdown_table(["metric", "this step", "previous step", "change"], rows), ""]
        if step["quarantined"]:
            lines += [f"{step['quarantined']:,} input row(s) quarantined (version {step['version']}'s "
                      f"quarantine.parquet holds them with their reasons).", ""]
        lines += ["## Drift decision", "", f"**{'RETRAIN' if step['retrain_due'] else 'no retrain'}**", ""]
        lines += [f"- {reason}" for reason in step["reasons"]] or ["- every drift metric within its threshold"]
    for retrain in summary["retrains"]:
        lines += ["", f"## Full retrain as of {retrain['as_of']}", "",
                  f"Version **{retrain['version']}**, generation {retrain['generation']}, "
                  f"{retrain['examples']:,} interactions, {retrain['seconds'] or 0:.1f} s. Reason: {retrain['reason']}"]
    lines += ["", f"Current version: **{summary['version']}**."]
    create_markdown_artifact("\n".join(lines), key=NIGHTLY_SUMMARY_KEY,
                             description=f"Accrete nightly step {summary['date']}")
    if step["drift_rows"]:
        create_table_artifact(step["drift_rows"], key=DRIFT_METRICS_KEY,
                              description=f"Drift metrics of partition {step['date']} (version {step['version']})")


@task(name="report-backfill", **_IO_RETRIES)
def report_backfill(report: dict[str, Any], start: str, end: str, failed: dict[str, str] | None = None) -> None:
    """The backfill's markdown summary (`accrete-backfill-summary`); `failed`: the date and error it stopped at."""
    lines = [f"# Accrete backfill {start} to {end}", "",
             f"- applied: {len(report['applied'])} partition(s)" + (
                 f" ({report['applied'][0]} to {report['applied'][-1]})" if report["applied"] else ""),
             f"- skipped (already applied): {len(report['skipped'])}",
             f"- drift-triggered full retrains after: {', '.join(report['retrained']) or 'none'}",
             f"- input rows quarantined: {report['quarantined']:,}",
             f"- current version: {report['version']}", ""]
    if failed:
        lines += [f"**FAILED on {failed['date']}**: {failed['error']}", "",
                  "Fix the cause and run the same backfill again: it resumes at this date."]
    else:
        lines.append("Completed.")
    create_markdown_artifact("\n".join(lines), key=BACKFILL_SUMMARY_KEY, description=f"Accrete backfill {start}..{end}")


@task(name="report-full-retrain", **_IO_RETRIES)
def report_full_retrain(summary: dict[str, Any]) -> None:
    """The retrain's markdown summary (`accrete-full-retrain-summary`)."""
    window = f"the last {summary['window_days']} days" if summary["window_days"] else "all history"
    text = "\n".join([
        f"# Accrete full retrain as of {summary['as_of']}", "",
        f"Version **{summary['version']}**, generation **{summary['generation']}**.", "",
        f"- reason: {summary['reason']}", f"- trained on {window}: {summary['examples']:,} interactions",
        f"- rows: {summary['users']:,} users, {summary['items']:,} items",
        f"- seconds: {summary['seconds'] or 0:.1f}"])
    create_markdown_artifact(text, key=RETRAIN_SUMMARY_KEY, description=f"Accrete full retrain {summary['as_of']}")


# ----- flows ------------------------------------------------------------------------------------------
def _nightly_run_name() -> str:
    from prefect.runtime import flow_run

    return f"nightly-{flow_run.parameters.get('date') or 'next'}"


@flow(name="full-retrain", flow_run_name="full-retrain-as-of-{as_of}")
def full_retrain(data: str | Path = "data", store: str | Path = "store", as_of: str | None = None,
                 window_days: int | None = None, reason: str = "manual", config_path: str | Path | None = None,
                 dashboard: bool = True) -> dict[str, Any]:
    """Train every row from scratch on the partitions up to `as_of` as a new generation, and make it current.

    On an empty store this bootstraps the first version. Without `as_of`, the retrain is as of the last
    partition the current version consumed (retrain "now", without taking in new data).

    Args:
        data, store: the data directory and the model store.
        as_of: ISO date; the last partition trained on.
        window_days: train on this many most recent days only (default: the configuration's).
        reason: recorded in the manifest ("manual", or the drift reasons when `nightly` triggers it).
        config_path: TOML configuration file (None: defaults).
        dashboard: rebuild STORE/dashboard.html afterwards.

    Returns:
        version, generation, as_of, reason, rows and training facts (JSON-able).
    """
    data, store, config_path = _paths(data, store, config_path)
    if as_of is None:
        as_of = max(applied_partitions(store))
    summary = full_retrain_step(data, store, as_of, window_days, reason, config_path)
    with _after_publish(f"the full retrain as of {as_of}", summary["version"], store):
        report_full_retrain(summary)
        if dashboard:
            summary["dashboard"] = publish_dashboard(store)
    return summary


def _nightly_step(data: str, store: str, date: str | None, force: bool, config_path: str | None) -> dict[str, Any]:
    """The nightly logic, run inside the calling flow (`nightly`, or `backfill` once per date).

    Backfill runs it as tasks of its own flow rather than as one `nightly` subflow per date: a flow run
    costs about a second of Prefect bookkeeping (its heartbeat thread is joined at exit), which over a
    year of partitions is minutes. Each date's task runs carry the date in their names.
    """
    logger = get_run_logger()
    sync_drift(store)
    retrains = []
    owed = None if force else pending_retrain(store)
    if owed:
        logger.warning("version asked for a retrain after %s that never ran; running it first", owed["date"])
        retrains.append(full_retrain(data=data, store=store, as_of=owed["date"],
                                     reason=retrain_reason(owed["reasons"]), config_path=config_path, dashboard=False))
    step = incremental_step(data, store, date, force, config_path)
    if step["kind"] != "incremental":
        return _nightly_summary(step, {}, retrains)
    with _after_publish(f"partition {step['date']}", step["version"], store):
        previous = previous_metrics(store, step["version"])
        if step["retrain_due"]:
            logger.info("drift decision after %s: retrain (%s)", step["date"], "; ".join(step["reasons"]))
            retrains.append(full_retrain(data=data, store=store, as_of=step["date"],
                                         reason=retrain_reason(step["reasons"]), config_path=config_path,
                                         dashboard=False))
        return _nightly_summary(step, previous, retrains)


def _nightly_summary(step: dict[str, Any], previous: dict[str, Any], retrains: list[dict[str, Any]]) -> dict[str, Any]:
    """The nightly's result, and its report artifacts."""
    version = retrains[-1]["version"] if retrains and retrains[-1]["version"] > step["version"] else step["version"]
    summary = {
        "date": step["date"], "kind": step["kind"], "version": version, "step_version": step["version"],
        "generation": retrains[-1]["generation"] if version != step["version"] else step["generation"],
        "retrained": bool(retrains), "retrain_version": retrains[-1]["version"] if retrains else None,
        "reasons": step["reasons"], "new_users": step["new_users"], "new_items": step["new_items"],
        "metrics": step["metrics"], "previous_metrics": previous.get("metrics", {}), "message": step["message"],
        "quarantined": step["quarantined"], "warnings": step["warnings"],
    }
    report_nightly({"date": step["date"], "step": step, "previous": previous, "retrains": retrains, "version": version})
    return summary


@flow(name="nightly", flow_run_name=_nightly_run_name)
def nightly(data: str | Path = "data", store: str | Path = "store", date: str | None = None, force: bool = False,
            config_path: str | Path | None = None, dashboard: bool = True) -> dict[str, Any]:
    """One incremental step, then the drift decision; a retrain it calls for runs at once as a subflow.

    Order: recover what a crash may have left (drift records, a retrain that was due but never ran);
    apply the partition `date`, by default the oldest one not yet applied (so a missed night catches
    up); if the step's drift decision says retrain, run `full_retrain` as of that date with the drift
    reasons, and its version becomes current. Then the summary artifacts and the dashboard.

    Args:
        data, store: the data directory and the model store.
        date: ISO date of the partition; None applies the oldest pending one.
        force: redo the latest step although it was applied (recomputed from its parent version).
        config_path: TOML configuration file (None: defaults).
        dashboard: rebuild STORE/dashboard.html afterwards.

    Returns:
        date, kind ("incremental" or "skipped"), version (current after the run), step_version,
        generation, retrained (bool), retrain_version, reasons (the drift decision's), new_users,
        new_items, metrics (headline quality of the step, before training on its day), previous_metrics,
        quarantined (input rows of the partition set aside in the version's quarantine.parquet).
    """
    data, store, config_path = _paths(data, store, config_path)
    summary = _nightly_step(data, store, date, force, config_path)
    # A night that changed nothing (the partition was applied before) leaves the dashboard as it is.
    if dashboard and (summary["kind"] == "incremental" or summary["retrained"]):
        with _after_publish(f"partition {summary['date']}", summary["version"], store):
            summary["dashboard"] = publish_dashboard(store)
    return summary


@flow(name="backfill", flow_run_name="backfill-{start}-to-{end}")
def backfill(start: str, end: str, data: str | Path = "data", store: str | Path = "store",
             config_path: str | Path | None = None, progress_bar: bool = False) -> dict[str, Any]:
    """Apply every partition in [start, end], in date order, each with the nightly logic (so drift-triggered
    retrains happen as they would have on those nights), skipping the partitions already applied.

    The first failure stops the backfill, and the partitions before it stay applied. The summary and
    the dashboard are still written, then the failure is re-raised (with a note naming the date), so
    the run ends Failed. Running the same backfill again skips the applied partitions and resumes at
    the failed date. The store must hold a first version (`accrete retrain --as-of DATE`).

    Args:
        start, end: ISO dates, inclusive.
        data, store: the data directory and the model store.
        config_path: TOML configuration file (None: defaults).
        progress_bar: show a tqdm bar on the terminal (CLI use).

    Returns:
        {"applied": [dates], "skipped": [dates], "retrained": [dates after which a full retrain ran],
        "quarantined": input rows set aside over the applied partitions,
        "version": the current version, "dashboard": path}.

    Raises:
        The exception that stopped it, with a note (`__notes__`) naming the date and how to resume.
    """
    logger = get_run_logger()
    data, store, config_path = _paths(data, store, config_path)
    config = AccreteConfig.load(config_path)  # a bad setting is the user's mistake, not a failure of the first date
    dates = partitions_in_range(data, start, end)
    done = set(applied_partitions(store))
    report: dict[str, Any] = {"applied": [], "skipped": [], "retrained": [], "quarantined": 0, "warnings": []}
    if gap := missing_period_warning(data, _parse_date(start, "start"), _parse_date(end, "end"), config.data.freq):
        logger.warning(gap)  # a lost period must not pass silently: the flow log, and the CLI's stderr via warnings
        report["warnings"].append(gap)
    todo = [d for d in dates if d not in done]
    report["skipped"] = [d for d in dates if d in done]
    logger.info("%d partition(s) in range, %d already applied, %d to apply", len(dates), len(report["skipped"]),
                len(todo))
    failure: Exception | None = None
    failed: dict[str, str] | None = None
    with contextlib.ExitStack() as stack:
        if progress_bar:
            stack.enter_context(_logs_above_progress_bar())
        bar = stack.enter_context(tqdm(total=len(todo), desc="backfill", unit="partition", disable=not progress_bar))
        for date in todo:
            try:
                result = _nightly_step(data, store, date, False, config_path)
            except Exception as exc:  # any failure stops the range; the report says where and why
                failure, failed = exc, {"date": date, "error": f"{type(exc).__name__}: {exc}"}
                if isinstance(exc, PublishedThenFailed):
                    report["applied"].append(date)  # published before the failure: a rerun resumes after it
                logger.error("backfill stopped at %s: %s; rerun to resume from there", date, failed["error"])
                break
            (report["applied"] if result["kind"] == "incremental" else report["skipped"]).append(date)
            if result["retrained"]:
                report["retrained"].append(date)
            report["quarantined"] += result["quarantined"]
            report["warnings"] += [w for w in result["warnings"] if w not in report["warnings"]]
            bar.update(1)
            bar.set_postfix(version=result["version"])
    report["skipped"].sort()
    report["version"] = Store(store).require_current()
    after: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if report["applied"]:
        after = _after_publish(f"{len(report['applied'])} partition(s) of the backfill (last {report['applied'][-1]})",
                               report["version"], store)
    try:
        with after:
            report_backfill(report, start, end, failed)
            report["dashboard"] = publish_dashboard(store)
    except PublishedThenFailed as exc:
        failure = failure or exc
    if failure is not None and failed is not None:
        failure.add_note(f"backfill stopped at {failed['date']} after applying {len(report['applied'])} partition(s)"
                         + ("; it was applied: run the same backfill again to resume after it"
                            if isinstance(failure, PublishedThenFailed) else "; run the same backfill again to resume there"))
    if failure is not None:
        raise failure
    return report
