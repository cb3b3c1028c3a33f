"""Measure: what a night costs through the CLI, `accrete nightly` against `accrete retrain`, as an operator runs them.

Every number is the wall time of a real `accrete` process (a subprocess, as cron or a shell runs it), with its
flow run recorded on the local Prefect server the CLI keeps (`flows/local_server.py`) and executed by the warm
runner (`flows/warm_runner.py`) once it is up. A fresh PREFECT_HOME under --work makes the first run pay the
start-up, reported apart:

1. first run: `accrete retrain --as-of D0` on an empty store with no server yet (starts the server);
2. the warm runner's start (it starts in the background after the first run; waited for here);
3. `--steps` nightlies, each `accrete nightly` (the next pending partition; a drift-triggered retrain, if one
   happens, is in its time and marked);
4. a full retrain through the CLI as of the last applied partition (same history as the last nightly);
5. a small store (`accrete generate --days --small-days`, retrain as of day 1, then one nightly per day):
   the warm nightly on a store whose step is a fraction of a second; then the last step redone (`--force`)
   alternately through the warm runner and in-process (ACCRETE_WARM_RUNNER=0).

Targets (issue 19): median nightly <= 1/3 of the retrain on MovieLens weekly; warm nightly on the small
store <= 3 s on an idle machine. The server is stopped at the end unless --keep-server.

    python bench/cli_cost.py --movielens ../shared/data/ml-latest-small --work /tmp/cli-cost
    python bench/cli_cost.py --data DATA --steps 10 --work /tmp/cli-cost     # any data directory
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _accrete(env: dict[str, str], *args: object) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "accrete.flows.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"accrete {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, proc


def _load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def _wait_for_runner(home: Path, seconds: float = 300) -> float | None:
    from accrete.flows import warm_runner

    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if warm_runner.ready_record(home) is not None:
            return time.perf_counter() - started
        time.sleep(0.1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=None, help="MovieLens folder, converted weekly")
    parser.add_argument("--data", type=Path, default=None, help="an Accrete data directory instead")
    parser.add_argument("--work", type=Path, required=True, help="stores, converted data and PREFECT_HOME go here")
    parser.add_argument("--steps", type=int, default=10, help="nightlies measured (the last STEPS partitions)")
    parser.add_argument("--small-days", type=int, default=8, help="days of the small synthetic store")
    parser.add_argument("--keep-server", action="store_true", help="leave the local Prefect server running")
    args = parser.parse_args()
    if (args.movielens is None) == (args.data is None):
        parser.error("give one of --movielens or --data")

    from accrete.pipeline import contract
    from accrete.pipeline.movielens import convert_movielens

    work = args.work.resolve()
    home = work / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    if home.exists():
        subprocess.run([sys.executable, "-m", "accrete.flows.cli", "server", "stop"], env=env, capture_output=True)
    for name in ("prefect-home", "store", "small-store", "small-data"):
        shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = work / "movielens-weekly"
        if not data.exists():
            convert_movielens(args.movielens, data, freq="week")
    dates = contract.list_partitions(data)
    if len(dates) < args.steps + 1:
        raise SystemExit(f"{data}: {len(dates)} partitions, need at least {args.steps + 1}")
    first = dates[-args.steps - 1]
    store = work / "store"
    print(f"data {data}: {len(dates)} partitions; retrain as of {first}, then {args.steps} nightlies ({_load()})")

    try:
        first_run, _ = _accrete(env, "retrain", "--data", data, "--store", store, "--as-of", first)
        print(f"first run (retrain on an empty store, starts the local Prefect server): {first_run:.1f} s")
        runner = _wait_for_runner(home)
        print(f"warm runner ready {'-' if runner is None else f'{runner:.1f} s'} after that run")

        nightly = []
        for _ in range(args.steps):
            seconds, proc = _accrete(env, "nightly", "--data", data, "--store", store, "--json")
            retrained = '"retrained": true' in proc.stdout
            nightly.append((seconds, retrained))
            print(f"  nightly {seconds:5.2f} s{'  (with a drift-triggered retrain)' if retrained else ''}")
        retrain, _ = _accrete(env, "retrain", "--data", data, "--store", store, "--as-of", dates[-1])
        plain = [s for s, r in nightly if not r] or [s for s, _ in nightly]
        median = statistics.median(plain)
        ratio = median / retrain
        print(f"nightly median {median:.2f} s (min {min(plain):.2f}, max {max(plain):.2f}; steps without a "
              f"retrain) vs full retrain {retrain:.2f} s through the CLI: ratio {ratio:.2f} "
              f"({retrain / median:.1f}x cheaper) -> {'PASS' if ratio <= 1 / 3 else 'MISS'} (target <= 0.33)")

        small_data, small_store = work / "small-data", work / "small-store"
        _accrete(env, "generate", "--out", small_data, "--days", args.small_days)
        small_dates = contract.list_partitions(small_data)
        _accrete(env, "retrain", "--data", small_data, "--store", small_store, "--as-of", small_dates[0])
        small = [_accrete(env, "nightly", "--data", small_data, "--store", small_store)[0] for _ in small_dates[1:]]
        best, typical = min(small), statistics.median(small)
        print(f"small store ({len(small_dates)} days): warm nightly median {typical:.2f} s, min {best:.2f} s -> "
              f"{'PASS' if typical <= 3.0 else 'MISS'} (target <= 3 s on an idle machine; {_load()})")
        # The same step redone (--force), alternately through the warm runner and in-process: what the runner saves.
        redo = ["nightly", "--data", small_data, "--store", small_store, "--force"]
        warm, cold = [], []
        for _ in range(3):
            warm.append(_accrete(env, *redo)[0])
            cold.append(_accrete({**env, "ACCRETE_WARM_RUNNER": "0"}, *redo)[0])
        print(f"small store, nightly --force: warm runner median {statistics.median(warm):.2f} s, in-process "
              f"(ACCRETE_WARM_RUNNER=0, server already running) {statistics.median(cold):.2f} s")
    finally:
        if not args.keep_server:
            subprocess.run([sys.executable, "-m", "accrete.flows.cli", "server", "stop"], env=env,
                           capture_output=True)


if __name__ == "__main__":
    main()
