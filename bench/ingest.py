"""Ingest benchmark: how fast partitions are read, validated and mapped to vocabulary rows.

Generates (or reuses, under --work) a synthetic partition set of about 10 million interactions, then times:

* reading: the interaction Parquet files alone (`pyarrow.parquet`), as a floor;
* validating: `read_partition` on every partition (read + every contract check + clean tables);
* vocabulary: `extend` then `lookup` of users and items on the clean tables (and `encode`, the one-pass form);
* combined: validate + lookup + extend, partition by partition, as the nightly ingest runs it.

The target is >= 5 million interactions/s for the combined path on the project's 2-core machine.

    /work/venv/bin/python bench/ingest.py [--work DIR] [--days 100] [--per-day 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accrete.pipeline.contract import list_partitions, read_partition  # noqa: E402
from accrete.pipeline.synthetic import generate_world  # noqa: E402
from accrete.pipeline.vocabulary import Vocabulary  # noqa: E402

TARGET_ROWS_PER_SECOND = 5_000_000


def ensure_world(work: Path, days: int, per_day: int, seed: int) -> dict:
    """The synthetic data set under `work/data`, generated unless an identical one is already there."""
    data = work / "data"
    meta_path = data / "_accrete.json"
    if meta_path.is_file():
        params = json.loads(meta_path.read_text()).get("params", {})
        if (params.get("days"), params.get("interactions_per_day"), params.get("seed")) == (days, per_day, seed):
            print(f"reusing {data}")
            return {"generated": False}
    print(f"generating {days} days x {per_day:,} interactions into {data} ...", flush=True)
    summary = generate_world(data, days=days, interactions_per_day=per_day, seed=seed, overwrite=True)
    print(f"  generated {summary['interactions']:,} interactions in {summary['seconds']:.1f} s "
          f"({summary['interactions'] / summary['seconds']:,.0f} rows/s)")
    return {"generated": True, "generate_seconds": summary["seconds"]}


def best_of(repeat: int, run) -> float:
    """The fastest of `repeat` timed runs: the machine is shared, and the minimum is the least disturbed."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="directory to generate into / reuse (default: a temporary one)")
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--per-day", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; the best is reported")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="accrete-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = ensure_world(work, args.days, args.per_day, args.seed)
        data = work / "data"
        dates = list_partitions(data)
        files = sorted((data / "interactions").glob("date=*/*.parquet"))

        def read_files():
            for path in files:
                pq.read_table(path)

        partitions = []

        def validate():
            partitions.clear()
            partitions.extend(read_partition(data, d) for d in dates)

        t_read = best_of(args.repeat, read_files)
        t_validate = best_of(args.repeat, validate)
        rows = sum(p.interactions.num_rows for p in partitions)
        quarantined = sum(p.quarantine.num_rows for p in partitions)

        def extend_then_lookup():
            users, items = Vocabulary.empty("user"), Vocabulary.empty("item")
            for p in partitions:
                users.extend(p.interactions["user_id"], p.date)
                items.extend(p.interactions["item_id"], p.date)
                users.lookup(p.interactions["user_id"])
                items.lookup(p.interactions["item_id"])

        def encode():
            users, items = Vocabulary.empty("user"), Vocabulary.empty("item")
            for p in partitions:
                users.encode(p.interactions["user_id"], p.date)
                items.encode(p.interactions["item_id"], p.date)

        t_vocab = best_of(args.repeat, extend_then_lookup)
        t_encode = best_of(args.repeat, encode)
        partitions.clear()

        def combined(one_pass: bool):
            def run():
                users, items = Vocabulary.empty("user"), Vocabulary.empty("item")
                for d in dates:
                    p = read_partition(data, d)
                    if one_pass:
                        users.encode(p.interactions["user_id"], d)
                        items.encode(p.interactions["item_id"], d)
                    else:
                        users.extend(p.interactions["user_id"], d)
                        items.extend(p.interactions["item_id"], d)
                        users.lookup(p.interactions["user_id"])
                        items.lookup(p.interactions["item_id"])
            return run

        t_combined = best_of(args.repeat, combined(one_pass=False))
        t_combined_encode = best_of(args.repeat, combined(one_pass=True))

        rate = rows / t_combined
        results |= {
            "partitions": len(dates), "interactions": rows, "quarantined": quarantined,
            "read_seconds": t_read, "validate_seconds": t_validate, "extend_lookup_seconds": t_vocab,
            "encode_seconds": t_encode, "combined_seconds": t_combined, "combined_encode_seconds": t_combined_encode,
            "combined_rows_per_second": rate, "combined_encode_rows_per_second": rows / t_combined_encode,
            "target_rows_per_second": TARGET_ROWS_PER_SECOND, "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
        }
        print(f"\n{len(dates)} partitions, {rows:,} interactions ({quarantined} quarantined), best of {args.repeat}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        for label, seconds in (("read Parquet (interactions only)", t_read),
                               ("validate (read_partition)", t_validate),
                               ("vocab extend + lookup (users, items)", t_vocab),
                               ("vocab encode (one pass)", t_encode),
                               ("validate + extend + lookup", t_combined),
                               ("validate + encode", t_combined_encode)):
            print(f"  {label:<40} {seconds:7.3f} s  {rows / seconds:>14,.0f} rows/s")
        verdict = "PASS" if rate >= TARGET_ROWS_PER_SECOND else "MISS"
        print(f"\ntarget: validate + lookup + extend >= {TARGET_ROWS_PER_SECOND:,} rows/s -> {verdict} "
              f"({rate:,.0f} rows/s)")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
