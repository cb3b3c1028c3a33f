"""Measure: disk held by each store version, how the store grows step after step, and what `gc` frees.

Converts MovieLens (or uses any data directory) and applies every partition with the real pipeline (the
functions the nightly flow calls; no Prefect), default settings, a drift-triggered full retrain whenever
the decision asks for one. After every step it records the new version's size and the store's total,
then prints checkpoints and runs `collect_garbage(--keep)`.

    python bench/store_growth.py --movielens ../shared/data/ml-latest-small --freq month --work /tmp/growth
    python bench/store_growth.py --data DATA --work /tmp/growth [--keep 7]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from accrete.pipeline.contract import PERIOD_FREQS


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens folder to convert")
    parser.add_argument("--freq", default="month", choices=PERIOD_FREQS)
    parser.add_argument("--data", type=Path, default=None, help="an Accrete data directory instead")
    parser.add_argument("--work", type=Path, required=True, help="where data (converted) and the store go")
    parser.add_argument("--keep", type=int, default=7)
    args = parser.parse_args()

    from accrete.pipeline import contract
    from accrete.pipeline.config import AccreteConfig
    from accrete.pipeline.retrain import run_full_retrain
    from accrete.pipeline.incremental import run_incremental_step
    from accrete.pipeline.maintenance import collect_garbage, format_gc
    from accrete.pipeline.movielens import convert_movielens
    from accrete.pipeline.store import Store

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = args.work / "data"
        if not data.exists():
            convert_movielens(args.movielens, data, freq=args.freq)
    store_dir = args.work / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    config = AccreteConfig()
    dates = contract.list_partitions(data)
    started = time.perf_counter()
    run_full_retrain(data, store_dir, dates[0], config=config)
    store = Store(store_dir)
    rows = []
    for date in dates[1:]:
        result = run_incremental_step(data, store_dir, date, config=config)
        if result.retrain_due:
            run_full_retrain(data, store_dir, date, config=config, reason="drift")
        current = store.current_version()
        manifest = store.manifest(current)
        rows.append((date, current, manifest["rows"]["user"] - 1, manifest["rows"]["item"] - 1,
                     _bytes(store.version_dir(current)), _bytes(store_dir / "versions"), _bytes(store_dir / "history"),
                     _bytes(store_dir / "drift"), _bytes(store_dir)))
    seconds = time.perf_counter() - started
    print(f"{len(dates)} partitions ({dates[0]} .. {dates[-1]}), {seconds:.0f} s")
    print(f"{'date':<10} {'ver':>4} {'users':>6} {'items':>6} {'version KB':>10} {'versions MB':>11} "
          f"{'history MB':>10} {'drift MB':>8} {'store MB':>8}")
    checkpoints = sorted({*range(0, len(rows), max(1, len(rows) // 8)), len(rows) - 1})
    for index in checkpoints:
        date, version, users, items, one, versions, history, drift, total = rows[index]
        print(f"{date.isoformat():<10} {version:>4} {users:>6} {items:>6} {one / 1e3:>10.0f} {versions / 1e6:>11.1f} "
              f"{history / 1e6:>10.2f} {drift / 1e6:>8.2f} {total / 1e6:>8.1f}")
    retrains = sum(store.manifest(v)["kind"] == "full_retrain" for v in store.versions())
    print(f"full retrains: {retrains}")
    summary = collect_garbage(store_dir, keep=args.keep)
    print(f"gc --keep {args.keep}: {format_gc(summary)}; store now {_bytes(store_dir) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
