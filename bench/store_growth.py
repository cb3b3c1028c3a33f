"""Measure: what each store version writes next to the bytes of the rows that changed, how the store grows step
after step (with and without `gc`), and, with `--layout`, what each part of the newest version holds.

Converts MovieLens (or uses any data directory) and applies the partitions with the real pipeline (the
functions the nightly flow calls; no Prefect), default settings, a drift-triggered full retrain whenever
the decision asks for one. The bootstrap is a full retrain as of `--bootstrap-as-of` (default: the first
partition); then `--steps` partitions (default: all the rest). After every step it records the bytes the
version wrote (`pipeline.maintenance.version_cost`: new segments, manifest, the partition's history) and
the bytes of the rows that changed, and the store's size; then it prints checkpoints, the store after the
steps against the store after the bootstrap, and runs `collect_garbage(--keep)`.

    python bench/store_growth.py --movielens ../shared/data/ml-latest-small --freq week --work /tmp/growth \\
        --bootstrap-as-of 2016-12-26 --steps 20 --layout
    python bench/store_growth.py --data DATA --work /tmp/growth [--keep 7]
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import time
from pathlib import Path

from accrete.pipeline.contract import PERIOD_FREQS


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def layout_report(store_dir: Path, version: int) -> list[str]:
    """One line per part of `version`: kind, segments, bytes held, bytes this version wrote, bytes that changed."""
    from accrete.pipeline.maintenance import version_cost
    from accrete.pipeline.store import Store

    store = Store(store_dir)
    parts = store.manifest(version)["parts"]
    cost = version_cost(store_dir, version)
    lines = [f"parts of version {version}:",
             f"  {'part':<28} {'kind':<12} {'segments':>8} {'held KB':>9} {'wrote KB':>9} {'changed KB':>10}"]
    for name, record in sorted(parts.items()):
        held = (sum(store.segments.size(key) for key in record["segments"]) if "segments" in record
                else (store.version_dir(version) / record["path"]).stat().st_size)
        written, changed = cost.by_part.get(name, (held, 0))
        lines.append(f"  {name:<28} {record['kind']:<12} {len(record.get('segments', [])):>8} {held / 1e3:>9.1f} "
                     f"{written / 1e3:>9.1f} {changed / 1e3:>10.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens folder to convert")
    parser.add_argument("--freq", default="month", choices=PERIOD_FREQS)
    parser.add_argument("--data", type=Path, default=None, help="an Accrete data directory instead")
    parser.add_argument("--work", type=Path, required=True, help="where data (converted) and the store go")
    parser.add_argument("--keep", type=int, default=7)
    parser.add_argument("--bootstrap-as-of", type=dt.date.fromisoformat, default=None,
                        help="the bootstrap retrain's as-of date (default: the first partition)")
    parser.add_argument("--steps", type=int, default=None, help="nightly steps after the bootstrap (default: all)")
    parser.add_argument("--layout", action="store_true", help="print the parts of the newest version")
    args = parser.parse_args()

    from accrete.pipeline import contract
    from accrete.pipeline.config import AccreteConfig
    from accrete.pipeline.incremental import run_incremental_step
    from accrete.pipeline.maintenance import collect_garbage, format_gc, version_cost
    from accrete.pipeline.retrain import run_full_retrain
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
    bootstrap = max(d for d in dates if d <= args.bootstrap_as_of) if args.bootstrap_as_of else dates[0]
    steps = [d for d in dates if d > bootstrap][:args.steps]
    started = time.perf_counter()
    run_full_retrain(data, store_dir, bootstrap, config=config)
    store = Store(store_dir)
    after_bootstrap = _bytes(store_dir)
    rows, written, changed, step_seconds = [], [], [], []
    for date in steps:
        clock = time.perf_counter()
        result = run_incremental_step(data, store_dir, date, config=config)
        step_seconds.append(time.perf_counter() - clock)
        cost = version_cost(store_dir, result.version)
        written.append(cost.written_bytes)
        changed.append(cost.changed_bytes)
        if result.retrain_due:
            run_full_retrain(data, store_dir, date, config=config, reason="drift")
        current = store.current_version()
        manifest = store.manifest(current)
        rows.append((date, current, manifest["rows"]["user"] - 1, manifest["rows"]["item"] - 1, cost,
                     _bytes(store_dir / "segments") + _bytes(store_dir / "versions"), _bytes(store_dir / "history"),
                     _bytes(store_dir / "drift"), _bytes(store_dir)))
    seconds = time.perf_counter() - started
    print(f"{len(dates)} partitions ({dates[0]} .. {dates[-1]}); bootstrap as of {bootstrap}, {len(steps)} steps, "
          f"{seconds:.0f} s (median step {sorted(step_seconds)[len(step_seconds) // 2] if steps else 0:.2f} s)")
    print(f"{'date':<10} {'ver':>4} {'users':>6} {'items':>6} {'wrote KB':>9} {'changed KB':>10} {'parts+ver MB':>12} "
          f"{'history MB':>10} {'drift MB':>8} {'store MB':>8}")
    checkpoints = sorted({*range(0, len(rows), max(1, len(rows) // 8)), len(rows) - 1}) if rows else []
    for index in checkpoints:
        date, version, users, items, cost, versions, history, drift, total = rows[index]
        print(f"{date.isoformat():<10} {version:>4} {users:>6} {items:>6} {cost.written_bytes / 1e3:>9.1f} "
              f"{cost.changed_bytes / 1e3:>10.1f} {versions / 1e6:>12.2f} {history / 1e6:>10.2f} {drift / 1e6:>8.2f} "
              f"{total / 1e6:>8.2f}")
    retrains = sum(store.manifest(v)["kind"] == "full_retrain" for v in store.versions())
    print(f"full retrains: {retrains} (the bootstrap included)")
    if steps:
        ratio = sum(written) / max(sum(changed), 1)
        print(f"bytes written per version vs bytes of changed rows: {sum(written) / len(steps) / 1e3:.1f} KB vs "
              f"{sum(changed) / len(steps) / 1e3:.1f} KB ({ratio:.2f}x, mean of {len(steps)} steps)")
        after = _bytes(store_dir)
        print(f"store after the bootstrap {after_bootstrap / 1e6:.2f} MB; after {len(steps)} steps without gc "
              f"{after / 1e6:.2f} MB ({after / after_bootstrap:.2f}x)")
    loads = {}
    for version in sorted({store.versions()[0], store.require_current()}):
        clock = time.perf_counter()
        store.load(version)
        loads[version] = time.perf_counter() - clock
        chain = max(len(r.get("segments", [])) for r in store.manifest(version)["parts"].values())
        print(f"load version {version} (longest chain {chain} segments): {loads[version]:.3f} s")
    if args.layout:
        print("\n".join(layout_report(store_dir, store.require_current())))
    summary = collect_garbage(store_dir, keep=args.keep)
    print(f"gc --keep {args.keep}: {format_gc(summary)}; store now {_bytes(store_dir) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
