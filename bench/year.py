"""Year-scale benchmark: what a full retrain and a nightly step cost after 3, 6 and 12 months of history.

Generates (or reuses, under --work) one synthetic world of `max(histories) + steps` days (the default is
the issue's year: 2,000 initial users + 40/day, 1,000 initial items + 15/day, 30,000 interactions/day,
11.0 M interactions by day 365), then for each history length H (days):

* full retrain as of day H, in a fresh store (`pipeline.retrain.run_full_retrain`, no Prefect);
* `--steps` nightly steps on days H+1.. (`run_incremental_step`).

Every run is a child process, so its peak memory is its own RSS high-water mark (`VmHWM`, which
includes the ~0.15 GB of the interpreter and libraries, reported separately as `import_rss`). Reported:
retrain and step wall time and peak RSS, the step/retrain ratio (target >= 20x), bytes per stored version
and of the interaction history, and quality: the prequential Recall@10 of each step (the model of the
retrain scored on the next day before it is trained on it). The machine is shared: the load average is
printed next to the timings; run the full size once, not in a loop.

    .venv/bin/python bench/year.py [--work DIR] [--histories 90,182,365] [--steps 2] [--json-out FILE]
    .venv/bin/python bench/year.py --smoke          # tiny world, < 60 s
    .venv/bin/python bench/year.py --profile ...    # cProfile the largest retrain, print where time goes
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 40.0  # issue 19: retrain / step at 12 months
START = dt.date(2024, 1, 1)
RESULT_PREFIX = "RESULT "
PROGRESS_EVERY_SECONDS = 10.0

FULL = {"per_day": 30_000, "initial_interactions": 60_000, "initial_users": 2_000, "initial_items": 1_000,
        "new_users_per_day": 40, "new_items_per_day": 15, "histories": "90,182,365", "steps": 2}
SMOKE = {"per_day": 400, "initial_interactions": 2_000, "initial_users": 200, "initial_items": 100,
         "new_users_per_day": 4, "new_items_per_day": 2, "histories": "8,16", "steps": 2}


# ----- the child process: one retrain or one step --------------------------------------------------
def _rss_bytes() -> int:
    """This process's peak RSS. `VmHWM` is reset by exec, unlike `ru_maxrss`, which starts from the forking
    parent's RSS (the bench parent holds the generated world: it would set a floor under every child)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _progress_printer(began: float):
    """Print progress lines, but a run of similar lines (365 "reading partition ...") only every few seconds."""
    last = {"kind": None, "at": -1e9}

    def progress(message: str) -> None:
        now = time.perf_counter() - began
        kind = " ".join(message.split()[:2])
        if kind != last["kind"] or now - last["at"] >= PROGRESS_EVERY_SECONDS:
            print(f"    [{now:7.1f} s] {message}", flush=True)
            last.update(kind=kind, at=now)

    return progress


def worker(spec: dict) -> dict:
    """Run one retrain or step as described by `spec`; return its timings, peak RSS and manifest numbers."""
    from accrete.pipeline.config import AccreteConfig
    from accrete.pipeline.retrain import run_full_retrain
    from accrete.pipeline.incremental import run_incremental_step

    import_rss = _rss_bytes()
    began = time.perf_counter()
    progress = _progress_printer(began)
    date = dt.date.fromisoformat(spec["date"])
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    config = AccreteConfig().replace(**spec.get("config", {}))
    if spec["kind"] == "retrain":
        result = run_full_retrain(spec["data"], spec["store"], date, config=config, progress=progress)
    else:
        result = run_incremental_step(spec["data"], spec["store"], date, config=config, progress=progress)
    seconds = time.perf_counter() - began
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(14)
            print(f"    cProfile, by {order}:\n" + "\n".join("      " + line for line in text.getvalue().splitlines()
                                                             if line.strip() and "function calls" not in line))
    manifest = result.manifest
    return {"kind": result.kind, "version": result.version, "seconds": seconds, "peak_rss": _rss_bytes(),
            "import_rss": import_rss, "timings": manifest.get("timings", {}), "metrics": manifest.get("metrics", {}),
            "training": {k: v for k, v in manifest.get("training", {}).items() if isinstance(v, (int, float))},
            "interactions": manifest.get("drift_state", {}).get("interactions_total"), "rows": manifest.get("rows")}


def run_child(spec: dict) -> dict:
    """Run `worker(spec)` in a fresh interpreter, echoing its progress; return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1) as child:
        result = None
        for line in child.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
            else:
                print(line, end="", flush=True)
    if child.returncode != 0 or result is None:
        raise SystemExit(f"bench/year.py: the {spec['kind']} child failed (exit {child.returncode})")
    return result


# ----- the parent ---------------------------------------------------------------------------------
def _bytes_under(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def ensure_world(data: Path, world: dict) -> dict:
    """The synthetic world under `data`, generated unless one with the same parameters is there already."""
    from accrete.pipeline.synthetic import generate_world

    meta_path = data / "_accrete.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if all(meta.get("params", {}).get(key) == value for key, value in world.items()):
            print(f"reusing {data} ({meta['interactions']:,} interactions)", flush=True)
            return {"generated": False, "interactions": meta["interactions"], "users": meta["users"],
                    "items": meta["items"]}
    print(f"generating {world['days']} days x {world['interactions_per_day']:,} interactions into {data} ...", flush=True)
    load = os.getloadavg()[0]
    summary = generate_world(data, overwrite=True, **world)
    print(f"  generated {summary['interactions']:,} interactions in {summary['seconds']:.1f} s "
          f"({summary['interactions'] / summary['seconds']:,.0f} rows/s, load {load:.1f})", flush=True)
    return {"generated": True, "generate_seconds": summary["seconds"], "generate_load": load,
            "interactions": summary["interactions"], "users": summary["users"], "items": summary["items"]}


def measure_history(data: Path, store: Path, history: int, steps: int, profile: bool, config: dict) -> dict:
    """Retrain as of day `history` in a fresh store, then `steps` nightly steps; sizes of what was stored."""
    if store.exists():
        shutil.rmtree(store)
    as_of = START + dt.timedelta(days=history)
    print(f"\n== {history} days of history: full retrain as of {as_of}", flush=True)
    load = os.getloadavg()[0]
    retrain = run_child({"kind": "retrain", "data": str(data), "store": str(store), "date": as_of.isoformat(),
                         "profile": profile, "config": config})
    retrain["load"] = load
    print(f"  retrain: {retrain['seconds']:.1f} s, peak RSS {retrain['peak_rss'] / 1e9:.2f} GB, load {load:.1f}", flush=True)
    step_results = []
    for k in range(1, steps + 1):
        date = as_of + dt.timedelta(days=k)
        load = os.getloadavg()[0]
        step = run_child({"kind": "step", "data": str(data), "store": str(store), "date": date.isoformat(),
                          "config": config})
        step["load"] = load
        print(f"  step {date}: {step['seconds']:.1f} s, peak RSS {step['peak_rss'] / 1e9:.2f} GB, "
              f"Recall@10 {step['metrics'].get('recall@10', float('nan')):.4f}, load {load:.1f}", flush=True)
        step_results.append(step)
    versions = sorted((store / "versions").glob("v*"))
    version_bytes = [_bytes_under(v) for v in versions]
    from accrete.pipeline.maintenance import version_cost  # the store layout's line (owned with pipeline/store.py)
    costs = [version_cost(store, s["version"]) for s in step_results]
    if costs:
        written, changed = sum(c.written_bytes for c in costs) / len(costs), sum(c.changed_bytes for c in costs) / len(costs)
        model = sum(c.parts_written for c in costs) / len(costs), sum(c.parts_changed for c in costs) / len(costs)
        print(f"  bytes written per nightly version vs bytes of the rows that changed: {written / 1e6:.2f} MB vs "
              f"{changed / 1e6:.2f} MB ({written / max(changed, 1):.2f}x; model parts {model[0] / 1e6:.2f} vs "
              f"{model[1] / 1e6:.2f} MB, the rest the partition's history and the manifest)", flush=True)
    written_per_step = sum(c.written_bytes for c in costs) / len(costs) if costs else float("nan")
    changed_per_step = sum(c.changed_bytes for c in costs) / len(costs) if costs else float("nan")
    median_step = statistics.median(s["seconds"] for s in step_results) if step_results else float("nan")
    return {
        "history_days": history, "as_of": as_of.isoformat(),
        "interactions": retrain["training"].get("examples"),
        "retrain": retrain, "steps": step_results,
        "retrain_seconds": retrain["seconds"], "retrain_peak_rss": retrain["peak_rss"],
        "step_seconds": median_step, "step_peak_rss": max((s["peak_rss"] for s in step_results), default=0),
        "ratio": retrain["seconds"] / median_step if step_results else float("nan"),
        "retrain_version_bytes": version_bytes[0], "step_version_bytes": version_bytes[1:],
        "history_bytes": _bytes_under(store / "history"),
        "written_per_step": written_per_step, "changed_per_step": changed_per_step,
        "recall@10": [s["metrics"].get("recall@10") for s in step_results],
    }


def print_table(results: list[dict]) -> None:
    header = (f"{'history':>8} {'interactions':>13} {'retrain s':>10} {'retrain GB':>10} {'step s':>8} {'step GB':>8} "
              f"{'ratio':>7} {'MB/step':>8} {'/changed':>8} {'history MB':>10} {'Recall@10':>9} {'load':>5}")
    print("\n" + header)
    print("-" * len(header))
    for r in results:
        recalls = [x for x in r["recall@10"] if x is not None]
        recall = sum(recalls) / len(recalls) if recalls else float("nan")
        loads = [r["retrain"]["load"], *(s["load"] for s in r["steps"])]
        print(f"{r['history_days']:>6} d {r['interactions']:>13,} {r['retrain_seconds']:>10.1f} "
              f"{r['retrain_peak_rss'] / 1e9:>10.2f} {r['step_seconds']:>8.2f} {r['step_peak_rss'] / 1e9:>8.2f} "
              f"{r['ratio']:>6.1f}x {r['written_per_step'] / 1e6:>8.2f} "
              f"{r['written_per_step'] / max(r['changed_per_step'], 1):>7.2f}x {r['history_bytes'] / 1e6:>10.1f} "
              f"{recall:>9.4f} {sum(loads) / len(loads):>5.1f}")
    print("\nretrain phases (s, from the manifest's timings) and nightly step phases (median step):")
    for r in results:
        retrain = ", ".join(f"{k} {v:.1f}" for k, v in r["retrain"]["timings"].items() if k != "total")
        steps = sorted(r["steps"], key=lambda s: s["seconds"])
        step = ", ".join(f"{k} {v:.2f}" for k, v in steps[len(steps) // 2]["timings"].items() if k != "total") if steps else ""
        print(f"  {r['history_days']:>4} d  retrain: {retrain}\n         step:    {step}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="directory to generate into / reuse (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (< 60 s), for the test")
    parser.add_argument("--histories", help=f"history lengths in days, comma separated (default {FULL['histories']})")
    parser.add_argument("--steps", type=int, help=f"nightly steps measured after each retrain (default {FULL['steps']})")
    parser.add_argument("--per-day", type=int, help=f"interactions per day (default {FULL['per_day']:,})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile the retrain of the longest history")
    parser.add_argument("--ials-iterations", type=int, help="override [model] ials_iterations of the retrains")
    parser.add_argument("--json-out", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    sizes = dict(SMOKE if args.smoke else FULL)
    histories = sorted(int(h) for h in (args.histories or sizes["histories"]).split(","))
    steps = sizes["steps"] if args.steps is None else args.steps
    world = {"days": histories[-1] + steps, "seed": args.seed, "initial_users": sizes["initial_users"],
             "initial_items": sizes["initial_items"], "new_users_per_day": sizes["new_users_per_day"],
             "new_items_per_day": sizes["new_items_per_day"],
             "interactions_per_day": args.per_day or sizes["per_day"],
             "initial_interactions": sizes["initial_interactions"]}
    work = args.work or Path(tempfile.mkdtemp(prefix="accrete-year-"))
    work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        generated = ensure_world(work / "data", world)
        config = {"model": {"ials_iterations": args.ials_iterations}} if args.ials_iterations else {}
        results = [measure_history(work / "data", work / f"store-{h}d", h, steps, args.profile and h == histories[-1],
                                   config) for h in histories]
        print(f"\n{generated['interactions']:,} interactions in the world, {generated['users']:,} users, "
              f"{generated['items']:,} items; {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f}")
        print_table(results)
        longest, shortest = results[-1], results[0]
        verdict = "PASS" if longest["ratio"] >= TARGET_RATIO else "MISS"
        print(f"\ntarget: full retrain / nightly step >= {TARGET_RATIO:.0f}x at {longest['history_days']} days "
              f"-> {verdict} ({longest['ratio']:.1f}x)")
        growth = longest["step_seconds"] / shortest["step_seconds"]
        ratio = longest["written_per_step"] / max(longest["changed_per_step"], 1)
        for text, ok in ((f"step at {longest['history_days']} days <= 1.0 s: {longest['step_seconds']:.2f} s",
                          longest["step_seconds"] <= 1.0),
                         (f"step peak RSS <= 0.5 GB: {longest['step_peak_rss'] / 1e9:.2f} GB",
                          longest["step_peak_rss"] <= 0.5e9),
                         (f"step({longest['history_days']} d) / step({shortest['history_days']} d) <= 1.5: {growth:.2f}",
                          growth <= 1.5),
                         (f"bytes written per step / bytes of changed rows <= 1.5: {ratio:.2f}x", ratio <= 1.5)):
            print(f"target: {text} -> {'PASS' if ok else 'MISS'}")
        print(f"total bench time {time.perf_counter() - began:.0f} s")
        if args.json_out:
            report = {"world": {**world, **generated}, "config": config, "histories": results, "target_ratio": TARGET_RATIO,
                      "verdict": verdict, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                      "smoke": args.smoke, "bench_seconds": time.perf_counter() - began}
            args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
