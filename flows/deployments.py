"""Serve Accrete's three deployments from one long-running process: `nightly` on a cron schedule,
`backfill` and `full-retrain` for manual runs.

How to run (schedules fire only against a real Prefect server, not the temporary one a direct flow
call starts)::

    prefect server start                                   # UI and API on http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api \\
        accrete serve --data data --store store --config accrete.toml --cron "0 2 * * *" --timezone UTC

    # in another shell, with the same PREFECT_API_URL:
    prefect deployment run 'backfill/backfill' -p start=2024-01-01 -p end=2024-01-31
    prefect deployment run 'full-retrain/full-retrain' -p as_of=2024-01-31 -p reason="new catalogue"
    prefect deployment run 'nightly/nightly'               # the next pending partition, now

The data directory, store and configuration are bound from the `serve` call as the deployments'
default parameters (absolute paths, so a run does not depend on the directory the runner started
in); a run may still override them with `-p`. The runner executes one run at a time, because every
run writes the same store (the store's lock would make a concurrent one fail).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.errors import AccreteError

DEFAULT_CRON = "0 2 * * *"


def _server_url() -> str:
    """The API URL of the Prefect server to register with (environment or active profile)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise AccreteError(
            "serve needs a running Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (schedules never fire on the temporary server of a direct run)")
    return url


def _schedule(cron: str, timezone: str):
    """The nightly schedule; an invalid cron expression or time zone is the user's mistake."""
    from pydantic import ValidationError
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise AccreteError(f"--cron {cron!r} --timezone {timezone!r}: {problems}") from None


def build_deployments(data: str | Path = "data", store: str | Path = "store", cron: str = DEFAULT_CRON,
                      timezone: str = "UTC", config_path: str | Path | None = None) -> list:
    """The three `RunnerDeployment`s, named after their flows: nightly/nightly (on `cron` in `timezone`),
    backfill/backfill and full-retrain/full-retrain (manual runs, parameters at run time).

    The configuration file is loaded once here so that a bad setting fails now, not at 2 a.m.
    """
    from prefect.deployments.runner import EntrypointType

    from accrete.flows.flows import backfill, full_retrain, nightly

    AccreteConfig.load(config_path)
    schedule = _schedule(cron, timezone)
    bound = {"data": str(Path(data).resolve()), "store": str(Path(store).resolve()),
             "config_path": str(Path(config_path).resolve()) if config_path else None}
    # Loading flows by module path works wherever the package is installed, whatever the runner's cwd.
    common: dict[str, Any] = {"parameters": bound, "tags": ["accrete"], "entrypoint_type": EntrypointType.MODULE_PATH}
    return [
        nightly.to_deployment(
            name="nightly", schedules=[schedule], **common,
            description="Apply the oldest pending partition; a drift-triggered full retrain follows when due."),
        backfill.to_deployment(
            name="backfill", **common,
            description="Apply every pending partition in [start, end] in date order; a rerun resumes "
                        "after a failure."),
        full_retrain.to_deployment(
            name="full-retrain", **common,
            description="Train every row from scratch as of a date (default: the last applied partition)."),
    ]


def serve(data: str | Path = "data", store: str | Path = "store", cron: str = DEFAULT_CRON, timezone: str = "UTC",
          config_path: str | Path | None = None) -> None:
    """Register the three deployments with the Prefect server at PREFECT_API_URL and execute their runs
    until interrupted (Ctrl-C pauses the nightly schedule on the way out).

    See the module docstring for the commands around it.
    """
    from prefect import serve as prefect_serve

    _server_url()
    deployments = build_deployments(data, store, cron, timezone, config_path)
    prefect_serve(*deployments, limit=1)
