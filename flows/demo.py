"""`accrete demo`: the whole pipeline on a synthetic world with a regime shift, in a few minutes.

It generates the world, bootstraps the store with a full retrain as of the first day, backfills every
later day through the `backfill` flow (so the drift decision sees the shift and triggers a full
retrain on its own), writes the dashboard and prints where to look. Every run is a real Prefect flow
run; with PREFECT_API_URL set they show in that server's UI, otherwise on a temporary local API.

The world and the configuration are sized for a 2-core laptop: about two seconds per night, most of it
TensorFlow's fixed cost per training call, so forty nights and two or three full retrains finish in
well under three minutes.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

from accrete.pipeline.errors import AccreteError

#: The synthetic world: a catalogue that grows every day, with enough interactions for stable metrics.
DEMO_WORLD: dict[str, Any] = dict(initial_users=600, initial_items=300, new_users_per_day=12, new_items_per_day=6,
                  interactions_per_day=1000, initial_interactions=10000)

#: The demo's configuration file: small tables and few epochs; drift settings stay at their defaults.
DEMO_CONFIG_TOML = """\
# Accrete demo configuration: small and fast (two seconds per night on 2 cores).
# Drift thresholds, patience and cooldown are the defaults of pipeline.config.DriftConfig.
[model]
dim = 16

[train]
epochs = 2
retrain_epochs = 5
batch_size = 512
"""


@contextlib.contextmanager
def _quiet_console(level: int = logging.WARNING) -> Iterator[None]:
    """Show only warnings and errors of Prefect's console log while the progress bar runs; the full run
    logs still go to the Prefect API (and its UI)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    previous = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(level)
    try:
        yield
    finally:
        for handler, old in zip(handlers, previous):
            handler.setLevel(old)


def _shift_iso(iso: str, days: int) -> str:
    return (dt.date.fromisoformat(iso) + dt.timedelta(days=days)).isoformat()


def _mean_recall(versions: list[dict[str, Any]], first: str | None, last: str | None) -> tuple[float | None, int]:
    """Mean prequential Recall@10 of the incremental steps with partitions in [first, last], and their count."""
    values = [v["metrics"]["recall@10"] for v in versions
              if v["kind"] == "incremental" and "recall@10" in v["metrics"]
              and (first is None or v["partition"] >= first) and (last is None or v["partition"] <= last)]
    return (statistics.fmean(values) if values else None), len(values)


def _summary_text(status: dict[str, Any], reasons: dict[int, str], world: dict[str, Any], backfill: dict[str, Any],
                  paths: dict[str, Path], seconds: float, shift_day: int) -> tuple[str, dict[str, Any]]:
    """The printed summary, and its facts as a dict. `reasons` maps each full retrain's version to its reason."""
    versions = status["versions"]
    retrains = [v for v in versions if v["kind"] == "full_retrain" and v["version"] > 1]
    shift = world["shift_date"]
    lines = [f"Accrete demo: {world['partitions']} daily partitions ({world['first_date']} to {world['last_date']}); "
             f"user preferences and item popularity shift on {shift} (day {shift_day}).", "",
             f"  data       {paths['data']}  ({world['users']:,} users, {world['items']:,} items, "
             f"{world['interactions']:,} interactions)",
             f"  store      {paths['store']}  (versions 1..{status['current']}, current v{status['current']}, "
             f"generation {status['generation']})",
             f"  config     {paths['config']}",
             f"  dashboard  {paths['dashboard']}", ""]
    recall: dict[str, Any] = {}
    if retrains:
        lines.append("Drift-triggered full retrains (version, as of, why):")
        for v in retrains:
            lines.append(f"  v{v['version']} (generation {v['generation']}) as of {v['partition']}: "
                         f"{reasons[v['version']]}")
        first_retrain = retrains[0]["partition"]
        second = retrains[1]["partition"] if len(retrains) > 1 else None
        periods = [("before the shift", None, _shift_iso(shift, -1)),
                   (f"after the shift, until the retrain of {first_retrain}", shift, first_retrain),
                   ("after that retrain" + (f", until the next one ({second})" if second else ""),
                    _shift_iso(first_retrain, 1), second)]
        if second:
            periods.append(("after the last retrain", _shift_iso(retrains[-1]["partition"], 1), None))
    else:
        lines.append(f"No drift-triggered retrain happened: the drift decision never fired after the shift on {shift} "
                     "(see the dashboard's drift panel for how close each metric came to its threshold).")
        periods = [("before the shift", None, _shift_iso(shift, -1)), ("after the shift", shift, None)]
    lines += ["", "Prequential Recall@10 (each night scored before training on it; mean over the nights):"]
    for label, first, last in periods:
        mean, count = _mean_recall(versions, first, last)
        recall[label] = mean
        lines.append(f"  {label:<58} {'-' if mean is None else f'{mean:.3f}'}  ({count} nights)")
    store = paths["store"]
    lines += ["", f"Finished in {seconds:.0f} s. Next:",
              f"  accrete status --store {store}",
              f"  accrete dashboard --store {store} --serve 8000      # then open http://127.0.0.1:8000",
              f"  accrete export --store {store} --out embeddings.parquet"]
    facts = {"seconds": round(seconds, 1), "current": status["current"], "generation": status["generation"],
             "retrains": [{"version": v["version"], "as_of": v["partition"], "reason": reasons[v["version"]]}
                          for v in retrains],
             "recall@10": recall, "backfill": backfill, **{k: str(p) for k, p in paths.items()}}
    return "\n".join(lines), facts


def run_demo(workdir: Path, days: int = 40, shift_day: int = 25, seed: int = 0, *, progress_bar: bool = True,
             quiet: bool = True) -> dict[str, Any]:
    """Generate, bootstrap, backfill through a regime shift, build the dashboard, print a summary.

    Args:
        workdir: where `data/`, `store/`, `accrete.toml` and the dashboard go; must not hold a demo already.
        days: days after the initial catalogue (the data holds days + 1 partitions).
        shift_day: the day from which preferences and popularity change (1..days).
        seed: the world's random seed.
        progress_bar: show the backfill's progress bar.
        quiet: show only warnings and errors of Prefect's console log (the full logs go to the API).

    Returns:
        The summary's facts: seconds, current version, retrains (version, as_of, reason), mean
        Recall@10 per period, the backfill report and the paths.
    """
    from accrete.flows.flows import backfill, full_retrain, start_prefect_api
    from accrete.pipeline.status import store_status
    from accrete.pipeline.store import Store
    from accrete.pipeline.synthetic import generate_world

    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    paths = {"data": workdir / "data", "store": workdir / "store", "config": workdir / "accrete.toml",
             "dashboard": workdir / "store" / "dashboard.html"}
    for key in ("data", "store"):
        if paths[key].exists() and any(paths[key].iterdir()):
            raise AccreteError(f"{paths[key]}: already holds a demo; remove {workdir} or choose another --workdir")
    # The temporary Prefect server (used when no PREFECT_API_URL is set) otherwise races its telemetry
    # writes against the runs' writes on its SQLite file and prints "database is locked" tracebacks.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    start_prefect_api()  # before writing anything: a busy machine fails here, in one clear line
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"generating a synthetic world of {days + 1} days (shift on day {shift_day}) into {paths['data']}")
    world = generate_world(paths["data"], days=days, seed=seed, shift_day=shift_day, **DEMO_WORLD)
    paths["config"].write_text(DEMO_CONFIG_TOML)
    config_path = str(paths["config"])

    with _quiet_console() if quiet else contextlib.nullcontext():
        print(f"bootstrapping {paths['store']}: full retrain as of {world['first_date']}")
        full_retrain(data=str(paths["data"]), store=str(paths["store"]), as_of=world["first_date"],
                     reason="bootstrap", config_path=config_path, dashboard=False)
        print(f"backfilling {world['first_date']} to {world['last_date']} (one incremental step per night)")
        report = backfill(start=world["first_date"], end=world["last_date"], data=str(paths["data"]),
                          store=str(paths["store"]), config_path=config_path, progress_bar=progress_bar)

    status = store_status(paths["store"])
    store = Store(paths["store"])
    reasons = {v["version"]: store.manifest(v["version"]).get("reason", "")
               for v in status["versions"] if v["kind"] == "full_retrain"}
    text, facts = _summary_text(status, reasons, world, report, paths, time.perf_counter() - started, shift_day)
    print()
    print(text)
    return facts
