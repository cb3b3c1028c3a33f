"""Measure: the seen items of a few hundred users, read from the row-addressed history (`Store.user_interactions`)
versus reading all of history (`Store.read_history`, then keeping those users), in time and bytes read.

Runs on the stores `bench/year.py --work DIR` leaves (`DIR/store-90d`, `store-182d`, `store-365d`: a full retrain
as of day H and two nightly steps), or on any store given with `--store`. Bytes read are what the process read
through system calls (`rchar` of /proc/self/io: Parquet files) plus the pages it faulted in (memory-mapped
interaction segments; 4 KiB each, minor and major faults). Each way is measured once in a fresh child process,
so neither profits from the other's memory (the files may be in the page cache either way).

    .venv/bin/python bench/history_read.py --work /tmp/year-work [--users 300]
    .venv/bin/python bench/history_read.py --store STORE [--users 300]
    .venv/bin/python bench/history_read.py --smoke          # a tiny world, for the test
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAGE = 4096
RESULT = "RESULT "


def _io() -> tuple[int, int]:
    rchar = 0
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            rchar = int(line.split()[1])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return rchar, (usage.ru_minflt + usage.ru_majflt) * PAGE


def worker(store_dir: str, way: str, rows: list[int]) -> dict:
    import numpy as np

    from accrete.pipeline.store import Store

    store = Store(store_dir)
    state_manifest = store.manifest()
    wanted = np.asarray(rows, np.int64)
    if way == "all":  # what a step did: every partition's history, mapped to rows, then the users kept
        from accrete.pipeline.vocabulary import Vocabulary

        vocab_table = store.read_part_table(store.require_current(), "user_vocab")
        item_table = store.read_part_table(store.require_current(), "item_vocab")
        user_vocab, item_vocab = Vocabulary.from_table(vocab_table, "user"), Vocabulary.from_table(item_table, "item")
        import datetime as dt

        dates = [dt.date.fromisoformat(d) for d in state_manifest["partitions"]]
        before, clock = _io(), time.perf_counter()
        history = store.read_history(dates)
        users = user_vocab.lookup(history["user_id"])
        keep = np.isin(users, wanted)
        items = item_vocab.lookup(history["item_id"].filter(keep))
        seconds, after = time.perf_counter() - clock, _io()
        pairs = int(keep.sum())
        checksum = int(items.sum())
    else:
        before, clock = _io(), time.perf_counter()
        found = store.user_interactions(wanted)
        seconds, after = time.perf_counter() - clock, _io()
        pairs, checksum = found.num_rows, int(found["item_row"].to_numpy().sum())
    return {"seconds": seconds, "rchar": after[0] - before[0], "faulted": after[1] - before[1], "pairs": pairs,
            "checksum": checksum}


def measure(store_dir: Path, users: int, seed: int) -> dict:
    import numpy as np

    from accrete.pipeline.store import Store

    store = Store(store_dir)
    n_users = int(store.manifest()["rows"]["user"])
    rows = sorted(np.random.default_rng(seed).choice(np.arange(1, n_users), size=min(users, n_users - 1),
                                                     replace=False).tolist())
    results = {}
    for way in ("all", "rows"):
        spec = json.dumps({"store": str(store_dir), "way": way, "rows": rows})
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", spec], capture_output=True,
                             text=True, check=True).stdout
        results[way] = json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT):])
    history_bytes = sum(p.stat().st_size for p in (store_dir / "history").glob("*.parquet"))
    interactions = int(sum(r["rows"] for r in store.history_parts().values()))
    return {"store": str(store_dir), "users": len(rows), "interactions": interactions, "history_bytes": history_bytes,
            **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="a bench/year.py work directory (its store-*d stores)")
    parser.add_argument("--store", type=Path, action="append", default=[], help="a store (repeatable)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="build a tiny store and measure it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(RESULT + json.dumps(worker(spec["store"], spec["way"], spec["rows"])), flush=True)
        return 0
    stores = list(args.store)
    if args.work:
        stores += sorted(args.work.glob("store-*d"), key=lambda p: int(p.name[6:-1]))
    scratch = None
    if args.smoke:
        from accrete.pipeline import contract
        from accrete.pipeline.config import AccreteConfig
        from accrete.pipeline.incremental import run_incremental_step
        from accrete.pipeline.retrain import run_full_retrain
        from accrete.pipeline.synthetic import generate_world

        scratch = tempfile.TemporaryDirectory(prefix="accrete-history-read-")
        data, store = Path(scratch.name) / "data", Path(scratch.name) / "store-smoke"
        generate_world(data, days=4, seed=0, initial_users=200, initial_items=100, new_users_per_day=5,
                       new_items_per_day=3, interactions_per_day=300, initial_interactions=2000)
        config = AccreteConfig().replace(model={"dim": 8})
        dates = contract.list_partitions(data)
        run_full_retrain(data, store, dates[2], config=config)
        run_incremental_step(data, store, config=config)
        stores.append(store)
    if not stores:
        parser.error("give --work, --store or --smoke")
    print(f"{'store':<14} {'interactions':>12} {'users':>5} {'pairs':>6} | {'all: s':>7} {'read MB':>8} | "
          f"{'by row: s':>9} {'read MB':>8} | {'time x':>7} {'bytes x':>8}")
    for store in stores:
        r = measure(store, args.users, args.seed)
        every, rows = r["all"], r["rows"]
        assert every["pairs"] == rows["pairs"] and every["checksum"] == rows["checksum"], r
        read_all = every["rchar"] + every["faulted"]
        read_rows = rows["rchar"] + rows["faulted"]
        print(f"{Path(r['store']).name:<14} {r['interactions']:>12,} {r['users']:>5} {rows['pairs']:>6} | "
              f"{every['seconds']:>7.3f} {read_all / 1e6:>8.1f} | {rows['seconds']:>9.4f} {read_rows / 1e6:>8.2f} | "
              f"{every['seconds'] / rows['seconds']:>6.0f}x {read_all / max(read_rows, 1):>7.0f}x")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
