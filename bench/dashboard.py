"""Benchmark: build the drift dashboard from a store holding a year of daily history.

The store is made once by the real pipeline (a bootstrap full retrain, then one incremental step per day,
a full retrain whenever the decision says so) on a small synthetic world with cheap settings, and cached
under --work (one subdirectory per world; default: a temporary directory, removed at the end):
re-running with the same --work resumes or reuses it. Only `build_dashboard` is
timed. Target: under 5 s.

    python bench/dashboard.py --work /tmp/accrete-bench-dashboard [--days 365] [--repeat 3]
    python bench/dashboard.py --smoke      # a tiny world of 8 days in a temporary directory, < 30 s
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 5.0

# World sizes: the benchmark's year, and the smoke run's few days (checks the script end to end).
YEAR_WORLD = dict(initial_users=400, initial_items=300, new_users_per_day=4, new_items_per_day=3,
                  interactions_per_day=300, initial_interactions=4000)
SMOKE_WORLD = dict(initial_users=100, initial_items=80, new_users_per_day=3, new_items_per_day=2,
                   interactions_per_day=250, initial_interactions=1000)
SMOKE_DAYS = 8


def make_year_store(work: Path, days: int, seed: int, world: dict[str, int] = YEAR_WORLD) -> Path:
    """Generate (once) a synthetic world of `days` daily partitions and backfill a store over all of it."""
    from accrete.pipeline import contract
    from accrete.pipeline.config import AccreteConfig
    from accrete.pipeline.retrain import run_full_retrain
    from accrete.pipeline.incremental import run_incremental_step
    from accrete.pipeline.policy import pending_partitions, retrain_reason
    from accrete.pipeline.store import Store
    from accrete.pipeline.synthetic import generate_world

    config = AccreteConfig().replace(model={"dim": 8}, train={"epochs": 1, "retrain_epochs": 1, "batch_size": 512},
                                     eval={"ks": (10,)})
    data, store = work / "data", work / "store"
    if not (data / ".complete").exists():
        generate_world(data, days=days, seed=seed, shift_day=days // 2, **world)
        (data / ".complete").write_text("ok\n")
    dates = contract.list_partitions(data)
    if not Store(store).exists():
        run_full_retrain(data, store, as_of=dates[0], config=config, reason="bootstrap")
    pending = pending_partitions(data, store)
    started = time.perf_counter()
    for i, date in enumerate(pending, 1):
        result = run_incremental_step(data, store, date, config=config)
        if result.retrain_due:
            run_full_retrain(data, store, as_of=date, config=config,
                             reason=retrain_reason(result.manifest["drift"]["reasons"]))
        if i % 25 == 0 or i == len(pending):
            print(f"  backfilled {date} ({i}/{len(pending)}, {time.perf_counter() - started:.0f} s)", flush=True)
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="cache directory for the worlds and their stores "
                                                     "(default: a temporary one)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="dashboard builds to time")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a tiny world of {SMOKE_DAYS} days, one build: checks the script runs (< 30 s)")
    args = parser.parse_args(argv)

    days, world = (SMOKE_DAYS, SMOKE_WORLD) if args.smoke else (args.days, YEAR_WORLD)
    root = args.work or Path(tempfile.mkdtemp(prefix="accrete-bench-dashboard-"))
    # One cache per world, so that a smoke run or another --days never reuses the wrong store.
    work = root / f"{'smoke' if args.smoke else 'year'}-days{days}-seed{args.seed}"
    try:
        return run(work, days, args.seed, world, repeat=1 if args.smoke else args.repeat, smoke=args.smoke)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


def run(work: Path, days: int, seed: int, world: dict[str, int], *, repeat: int, smoke: bool) -> int:
    """Build (or reuse) the store under `work`, time `repeat` dashboard builds and print the numbers."""
    work.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()
    print(f"store: {work / 'store'} ({days} days; built once, then reused)")
    store = make_year_store(work, days, seed, world)

    from accrete.pipeline.dashboard import build_dashboard
    from accrete.pipeline.decision import read_drift_history
    from accrete.pipeline.store import Store

    versions = Store(store).versions()
    history = read_drift_history(store / "drift")
    retrains = sum(Store(store).manifest(v)["kind"] == "full_retrain" for v in versions)
    print(f"history: {len(history)} incremental steps, {retrains} full retrains, {len(versions)} versions, "
          f"{history['date'].min()} .. {history['date'].max()}")
    out = work / "dashboard.html"
    seconds = []
    for _ in range(repeat):
        clock = time.perf_counter()
        build_dashboard(store, out)
        seconds.append(time.perf_counter() - clock)
    size = out.stat().st_size / 1e6
    median = statistics.median(seconds)
    print(f"build_dashboard: {', '.join(f'{s:.2f}' for s in seconds)} s (median {median:.2f} s, target < "
          f"{TARGET_SECONDS:.0f} s) -> {out} ({size:.1f} MB), {dt.datetime.now():%Y-%m-%d %H:%M}")
    print(f"{'PASS' if median < TARGET_SECONDS else 'MISS'}  dashboard build < {TARGET_SECONDS:.0f} s"
          + (" (smoke run: a few days only, not the benchmark)" if smoke else "")
          + f"; whole run {time.perf_counter() - total:.1f} s")
    return 0 if median < TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
