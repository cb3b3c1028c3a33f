"""Prequential replay of MovieLens (weekly): Accrete's incremental steps against a full retrain at every step,
naive variants and popularity baselines, all under the same test-then-train evaluation.

    python bench/prequential.py [--movielens ../shared/data/ml-latest-small] [--start 2017-01-01]
                                [--variants accrete,full_retrain,no_replay,uniform_init,all_trainable]
                                [--max-steps N] [--work DIR]

A full retrain on everything before --start makes version 1; then each week is one step. Every variant
is scored on week D before it trains on D (full ranking over all items, seen items excluded). Prints a
table of mean next-week Recall@10 / NDCG@10 overall and for new items, new-item exposure versus
interaction share, and wall time per step; then the targets with PASS/MISS.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import contract, evaluation  # noqa: E402
from pipeline.config import AccreteConfig  # noqa: E402
from pipeline.incremental import run_full_retrain, run_incremental_step  # noqa: E402
from pipeline.movielens import convert_movielens  # noqa: E402
from pipeline.store import Store  # noqa: E402

DEFAULT_MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"
KEYS = ("recall@10", "ndcg@10", "recall@10/new_items", "ndcg@10/new_items", "recall@10/new_users",
        "recall@10/recent_items",
        "new_item_exposure@10", "new_item_interaction_share", "coverage@10")


def variant_configs(base: AccreteConfig) -> dict[str, AccreteConfig]:
    """(a) accrete, (b) full_retrain, (c) naive variants, and the ablations behind the defaults."""
    return {
        "accrete": base,
        "full_retrain": base,
        "no_replay": base.replace(train={"replay_ratio": 0.0}),
        "uniform_init": base.replace(model={"init": "uniform"}),
        "all_trainable": base.replace(model={"frozen_lr_multiplier": 1.0}),
        "init_normal": base.replace(model={"init": "normal"}),
        "init_mean": base.replace(model={"init": "mean"}),
        "init_metadata": base.replace(model={"init": "metadata"}),
        "init_fold_in": base.replace(model={"init": "fold_in"}),
        "bias_frozen": base.replace(model={"bias_policy": "frozen"}),
        "bias_trainable": base.replace(model={"bias_policy": "trainable"}),
        "warmup_4": base.replace(model={"warmup_days": 4}),
    }


def run_variant(name: str, config: AccreteConfig, data: Path, store: Path, bootstrap: Path,
                dates: list[dt.date], retrain_every: int = 1) -> list[dict]:
    """Copy the bootstrap store, then one step per date; returns per-step metrics and wall time.

    full_retrain: before every `retrain_every`-th week a full retrain from scratch on everything before
    it, then that week is scored (an evaluation-only step, which also consumes the week). Only the
    scored weeks are returned, so the comparison with (a) is made on the same weeks.
    """
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(bootstrap, store)
    rows = []
    for index, date in enumerate(dates):
        started = time.perf_counter()
        if name == "full_retrain":
            scored = index % retrain_every == 0
            if scored and index > 0:
                run_full_retrain(data, store, dates[index - 1], config=config, reason="bench: full retrain")
            step = run_incremental_step(data, store, date, config=config.replace(train={"epochs": 0}))
            if not scored:
                continue
        else:
            step = run_incremental_step(data, store, date, config=config)
        seconds = time.perf_counter() - started
        rows.append({"date": date.isoformat(), "seconds": seconds, **{k: step.manifest["metrics"].get(k) for k in KEYS}})
        print(f"  {name:<14} {date}  R@10 {rows[-1]['recall@10']:.4f}  new-item R@10 "
              f"{_fmt(rows[-1]['recall@10/new_items'])}  {seconds:5.1f} s", flush=True)
    return rows


def popularity_baselines(data: Path, dates: list[dt.date], recent_periods: int = 4) -> dict[str, list[dict]]:
    """Most popular over all time, and over the last `recent_periods` periods, scored like the models."""
    freq = contract.data_frequency(data)
    all_dates = contract.list_partitions(data)
    tables = {d: contract.read_partition(data, d, freq).interactions for d in all_dates}
    users = pa.chunked_array([t["user_id"] for t in tables.values()]).unique()
    items = pa.chunked_array([t["item_id"] for t in tables.values()]).unique()
    user_index = {"values": users}
    item_index = {"values": items}

    def rows(values, index):
        return pc.index_in(values, value_set=index["values"]).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    n_users, n_items = len(users) + 1, len(items) + 1
    first_seen_user = np.full(n_users, np.iinfo(np.int64).max)
    first_seen_item = np.full(n_items, np.iinfo(np.int64).max)
    per_date = {}
    for i, d in enumerate(all_dates):
        u, it = rows(tables[d]["user_id"], user_index), rows(tables[d]["item_id"], item_index)
        per_date[d] = (u, it)
        first_seen_user[u] = np.minimum(first_seen_user[u], i)
        first_seen_item[it] = np.minimum(first_seen_item[it], i)
    results = {"popular_all_time": [], f"popular_last_{recent_periods}": []}
    for d in dates:
        i = all_dates.index(d)
        before = [per_date[x] for x in all_dates[:i]]
        hist_u = np.concatenate([b[0] for b in before])
        hist_i = np.concatenate([b[1] for b in before])
        seen = evaluation.seen_matrix(hist_u, hist_i, n_users, n_items)
        test_u, test_i = per_date[d]
        new_users = np.flatnonzero(first_seen_user == i)
        new_items = np.flatnonzero(first_seen_item == i)
        not_yet = np.flatnonzero(first_seen_item > i)
        recent = [per_date[x][1] for x in all_dates[max(0, i - recent_periods):i]]
        for name, counts in (("popular_all_time", evaluation.popularity_counts(hist_i, n_items)),
                             (f"popular_last_{recent_periods}",
                              evaluation.popularity_counts(np.concatenate(recent), n_items))):
            started = time.perf_counter()
            # Ties (e.g. zero counts) are broken by row; a tiny all-time term orders the long tail.
            scores = counts.astype(np.float64) + 1e-6 * evaluation.popularity_counts(hist_i, n_items)
            metrics = evaluation.evaluate_prequential(
                evaluation.popularity_scorer(scores.astype(np.float32)), test_users=test_u, test_items=test_i,
                n_items=n_items, seen=seen, new_users=new_users, new_items=new_items, excluded_items=not_yet)
            results[name].append({"date": d.isoformat(), "seconds": time.perf_counter() - started,
                                  **{k: metrics.get(k) for k in KEYS}})
    return results


def _fmt(value) -> str:
    return "   -  " if value is None or value != value else f"{value:.4f}"


def _nanmean(values) -> float:
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(array)) if np.isfinite(array).any() else float("nan")


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for name, rows in results.items():
        if not rows:
            continue
        summary[name] = {k: _nanmean([r.get(k) for r in rows]) for k in KEYS}
        summary[name]["seconds_per_step"] = float(np.mean([r["seconds"] for r in rows]))
        summary[name]["seconds_last_step"] = float(rows[-1]["seconds"])
    return summary


def print_table(summary: dict[str, dict]) -> None:
    header = (f"{'variant':<20} {'R@10':>7} {'NDCG@10':>8} {'newR@10':>8} {'newNDCG':>8} {'recentR':>8} "
              f"{'newUserR':>8} {'exposure':>8} {'share':>7} {'cover':>7} {'s/step':>7}")
    print(header)
    print("-" * len(header))
    print("(newR: items new in the scored week, cold; recentR: items added by the previous step, trained once)")
    for name, s in summary.items():
        print(f"{name:<20} {s['recall@10']:>7.4f} {s['ndcg@10']:>8.4f} {s['recall@10/new_items']:>8.4f} "
              f"{s['ndcg@10/new_items']:>8.4f} {s['recall@10/recent_items']:>8.4f} "
              f"{s['recall@10/new_users']:>8.4f} {s['new_item_exposure@10']:>8.4f} "
              f"{s['new_item_interaction_share']:>7.4f} {s['coverage@10']:>7.4f} {s['seconds_per_step']:>7.2f}")


def check_targets(summary: dict[str, dict]) -> None:
    a = summary.get("accrete")
    if not a:
        return
    lines = []
    if "full_retrain" in summary:
        b, a_same = summary["full_retrain"], summary["accrete@retrain_weeks"]
        ratio = a_same["recall@10"] / b["recall@10"]
        lines.append(("(a) Recall@10 >= 0.95 x full retrain (same weeks)", ratio >= 0.95,
                      f"{ratio:.3f}x ({a_same['recall@10']:.4f} vs {b['recall@10']:.4f})"))
        speed = summary["full_retrain"]["seconds_last_step"] / a["seconds_last_step"]
        lines.append(("(a) step >= 10x faster than (b) at the end", speed >= 10, f"{speed:.1f}x"))
    for naive in ("no_replay", "uniform_init"):
        if naive in summary:
            ok = a["recall@10/new_items"] > summary[naive]["recall@10/new_items"]
            lines.append((f"(a) beats {naive} on new-item Recall@10", ok,
                          f"{a['recall@10/new_items']:.4f} vs {summary[naive]['recall@10/new_items']:.4f}"))
    for base in [k for k in summary if k.startswith("popular")]:
        ok = a["recall@10"] > summary[base]["recall@10"]
        lines.append((f"(a) beats {base} overall", ok, f"{a['recall@10']:.4f} vs {summary[base]['recall@10']:.4f}"))
    print("\ntargets:")
    for text, ok, detail in lines:
        print(f"  {'PASS' if ok else 'MISS'}  {text}: {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2017, 1, 1))
    parser.add_argument("--variants", default="accrete,full_retrain,no_replay,uniform_init,all_trainable")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--retrain-every", type=int, default=6,
                        help="(b) retrains from scratch before every N-th week and is scored on those weeks")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting, e.g. model.init=mean (JSON values)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.movielens / "ratings.csv").exists() and not (args.movielens / "u.data").exists():
        print(f"MovieLens not found at {args.movielens}: nothing to replay")
        return 0
    base = AccreteConfig.load(args.config)
    for item in args.set:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        base = base.replace(**{section: {field: json.loads(value) if value[:1] in "0123456789-[{tfn\"" else value}})
    work = args.work or Path(tempfile.mkdtemp(prefix="accrete-preq-"))
    data = work / "data"
    if not data.exists():
        convert_movielens(args.movielens, data, freq="week")
    all_dates = contract.list_partitions(data)
    boot_dates = [d for d in all_dates if d < args.start]
    dates = [d for d in all_dates if d >= args.start][: args.max_steps]
    print(f"MovieLens weekly: {len(boot_dates)} partitions before {args.start}, {len(dates)} steps "
          f"({dates[0]} .. {dates[-1]}); work dir {work}")
    bootstrap = work / "bootstrap"
    if not (bootstrap / "CURRENT").exists():
        shutil.rmtree(bootstrap, ignore_errors=True)
        started = time.perf_counter()
        run_full_retrain(data, bootstrap, boot_dates[-1], config=base, reason="bench bootstrap")
        print(f"bootstrap full retrain: {time.perf_counter() - started:.1f} s")
    results = {}
    configs = variant_configs(base)
    for name in [v for v in args.variants.split(",") if v]:
        print(f"variant {name}")
        results[name] = run_variant(name, configs[name], data, work / f"store-{name}", bootstrap, dates,
                                    args.retrain_every)
    if "full_retrain" in results and "accrete" in results:
        scored = {row["date"] for row in results["full_retrain"]}
        results["accrete@retrain_weeks"] = [row for row in results["accrete"] if row["date"] in scored]
    results.update(popularity_baselines(data, dates))
    summary = summarize(results)
    print()
    print_table(summary)
    check_targets(summary)
    if args.json_out:
        args.json_out.write_text(json.dumps({"summary": summary, "steps": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
