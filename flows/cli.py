"""The `accrete` command line: a thin layer over `flows` (runs) and `pipeline` (everything else).

Heavy imports (TensorFlow, Prefect) happen inside the commands that need them, so `accrete --help`,
`status` and `export` stay fast. The commands that run flows (`retrain`, `nightly`, `backfill`) first
check what they can without Prefect (the configuration file, the data directory, the partitions the run
will read, the store), so a mistake is reported in about a second, before Prefect is imported. Their
flow runs go to the local Prefect server the CLI keeps running between runs (`flows/local_server.py`,
`accrete server status|stop`), or to the user's PREFECT_API_URL.

Exit codes (the README's table): 0 done; 2 a user's mistake (an `AccreteError`: one line on stderr naming
the file, date or setting; nothing was published); 3 the step or retrain WAS published, then something
after it failed (the dashboard, a summary): do not run it again as if it had not happened; 1 the run
could not happen or failed otherwise: no Prefect API (one line saying what to do), or a bug (its
traceback); 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM); 141 stdout was closed early (`| head`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from accrete.pipeline.config import FREQUENCIES
from accrete.pipeline.errors import AccreteError

DEFAULT_DATA = "data"
DEFAULT_STORE = "store"


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _config(args: argparse.Namespace):
    from accrete.pipeline.config import AccreteConfig

    return AccreteConfig.load(args.config)


def _strict_json(value: Any) -> Any:
    """The payload with NaN and infinities as null, so `--json` output is strict JSON for other tools."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(item) for item in value]
    return value


def _dumps(payload: Any) -> str:
    return json.dumps(_strict_json(payload), indent=2, sort_keys=True, default=str, allow_nan=False)


def _print(payload: Any, as_json: bool) -> None:
    if as_json:
        print(_dumps(payload))
    elif isinstance(payload, str):
        print(payload)
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")


# ----- commands ------------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> None:
    from accrete.pipeline.synthetic import generate_world

    started = time.perf_counter()
    summary = generate_world(args.out, days=args.days, seed=args.seed, shift_day=args.shift_day,
                             interactions_per_day=args.interactions_per_day, with_ratings=args.ratings)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    _print(summary, args.json)


_GENERIC_OPTIONS = ("user_col", "item_col", "time_col", "rating_col", "weight_col", "time_unit", "items", "users",
                    "text_col", "delimiter")


def cmd_convert(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in _GENERIC_OPTIONS if getattr(args, name) is not None]
    if args.dataset == "movielens":
        if given:
            raise AccreteError(f"{', '.join(given)}: only for `accrete convert generic` (MovieLens folders have "
                               f"known columns)")
        from accrete.pipeline.movielens import convert_movielens

        _print(convert_movielens(args.path, args.out, freq=args.freq, overwrite=args.overwrite), args.json)
        return
    missing = [flag for flag, value in (("--user-col", args.user_col), ("--item-col", args.item_col),
                                        ("--time-col", args.time_col)) if value is None]
    if missing:
        raise AccreteError(f"convert generic needs {', '.join(missing)} (the names of the columns of {args.path})")
    from accrete.pipeline.converters import convert_generic

    _print(convert_generic(args.path, args.out, user_col=args.user_col, item_col=args.item_col,
                           time_col=args.time_col, rating_col=args.rating_col, weight_col=args.weight_col,
                           time_unit=args.time_unit or "s", items=args.items, users=args.users, text_col=args.text_col,
                           freq=args.freq, delimiter=args.delimiter, overwrite=args.overwrite), args.json)


def _check_data(args: argparse.Namespace) -> list[dt.date]:
    """The configuration loads and the data directory is readable; its partition dates."""
    from accrete.pipeline import contract

    _config(args)
    _check_store_path(args)
    return contract.list_partitions(args.data)


def _check_store_path(args: argparse.Namespace) -> None:
    if args.store.exists() and not args.store.is_dir():
        from accrete.pipeline.errors import StoreError

        raise StoreError(f"{args.store}: not a directory (a store is a directory; is this the right path?)")


def _require_store(args: argparse.Namespace) -> None:
    """The store holds an intact current version (a nightly step or a backfill builds on it): its files
    are present with their checksums. A damaged store is refused before any Prefect API starts."""
    from accrete.pipeline.store import Store

    store = Store(args.store)
    current = store.require_current()
    if not _handed_over():
        store.verify_files(current)


def _check_partitions(args: argparse.Namespace, **run: Any) -> None:
    """The partitions the run will read first are read and validated now (`policy.partitions_to_read`):
    a corrupt or misdated partition is one line before Prefect is imported, like an argument error."""
    from accrete.pipeline.policy import check_partitions, partitions_to_read

    if not _handed_over():  # the CLI that handed this run over checked them a moment ago
        check_partitions(args.data, partitions_to_read(args.data, args.store, **run))


def _handed_over() -> bool:
    """Whether this process is a warm runner's child running a CLI's checked run (`flows/warm_runner.py`)."""
    from accrete.flows.warm_runner import CHECKED_ENV

    return os.environ.get(CHECKED_ENV) == "1"


class _Finished(Exception):
    """The run was handed to the warm runner and ended there with this exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _hand_over(args: argparse.Namespace) -> None:
    """Run this command in a child of the warm runner (Prefect and the pipeline already imported) when one
    matches this CLI; raises `_Finished` with its exit code. Returns when the run is to happen here."""
    from accrete.flows import warm_runner
    from accrete.flows.local_server import prefect_home

    if _handed_over():
        return
    code = warm_runner.run(prefect_home(), args.argv)
    if code is not None:
        raise _Finished(code)


def _warn(command: str, result: dict[str, Any]) -> None:
    """The run's warnings (settings it could not apply), one line each on stderr after its summary."""
    for warning in result.get("warnings") or []:
        print(f"accrete {command}: warning: {warning}", file=sys.stderr)


def _nothing_to_do(args: argparse.Namespace, start: dt.date | None = None, end: dt.date | None = None,
                   date: dt.date | None = None) -> bool:
    """Say so in one line (on stdout, or as JSON) and start nothing when the run would change nothing."""
    from accrete.pipeline.policy import nothing_to_do

    message = nothing_to_do(args.data, args.store, start, end, date)
    if message is None:
        return False
    _print({"changed": False, "version": _current_version(args), "message": message} if args.json else message,
           args.json)
    return True


def _current_version(args: argparse.Namespace) -> int:
    from accrete.pipeline.store import Store

    return Store(args.store).require_current()


def _start_prefect_api(command: str) -> None:
    """Point Prefect at the user's PREFECT_API_URL or the local server (started on first use, then reused),
    before Prefect is imported. The first start says where the server and its UI are, on stderr."""
    from accrete.flows.local_server import ServerRecord, use_prefect_api

    def started(record: ServerRecord) -> None:
        print(f"accrete {command}: started a local Prefect server for this and later runs: "
              f"{record.url.removesuffix('/api')} (pid {record.pid}; `accrete server stop` stops it)", file=sys.stderr)

    use_prefect_api(on_start=started)


def cmd_retrain(args: argparse.Namespace) -> None:
    from accrete.pipeline.errors import PartitionOrderError
    from accrete.pipeline.store import Store

    if not any(day <= args.as_of for day in _check_data(args)):
        raise PartitionOrderError(f"{args.data}: no partition on or before {args.as_of}")
    store = Store(args.store)
    current = store.current_version()  # an empty or new store is bootstrapped; a damaged one is an error
    if current is not None and not _handed_over():
        store.verify_files(current)
    _check_partitions(args, as_of=args.as_of)
    _start_prefect_api("retrain")
    _hand_over(args)
    from accrete.flows.flows import full_retrain, manual_run

    with manual_run():
        result = full_retrain(data=str(args.data), store=str(args.store), as_of=args.as_of.isoformat(),
                              window_days=args.window_days, config_path=args.config)
    _print(result, args.json)


def cmd_nightly(args: argparse.Namespace) -> None:
    from accrete.pipeline.errors import PartitionOrderError

    partitions = _check_data(args)
    _require_store(args)
    if args.date and args.date not in partitions:
        raise PartitionOrderError(f"{args.data}: no partition for {args.date} (interactions/, users/ or items/ "
                                  f"date={args.date})")
    if not args.force and _nothing_to_do(args, date=args.date):
        return
    if not args.force:  # --force redoes a consumed partition, checked when it was applied
        _check_partitions(args, date=args.date)
    _start_prefect_api("nightly")
    _hand_over(args)
    from accrete.flows.flows import manual_run, nightly

    with manual_run():
        result = nightly(data=str(args.data), store=str(args.store),
                         date=args.date.isoformat() if args.date else None, force=args.force, config_path=args.config)
    _print(result, args.json)
    _warn("nightly", result)


def cmd_backfill(args: argparse.Namespace) -> None:
    from accrete.pipeline.errors import PartitionOrderError

    if args.end < args.start:
        raise AccreteError(f"--end {args.end} is before --start {args.start}")
    partitions = _check_data(args)
    _require_store(args)
    if not any(args.start <= day <= args.end for day in partitions):
        span = f"{partitions[0]} to {partitions[-1]}" if partitions else "none"
        raise PartitionOrderError(f"{args.data}: no partition from {args.start} to {args.end} (partitions: {span})")
    if _nothing_to_do(args, args.start, args.end):
        return
    _check_partitions(args, start=args.start, end=args.end)
    _start_prefect_api("backfill")
    _hand_over(args)
    from accrete.flows.flows import backfill, manual_run

    with manual_run():
        result = backfill(data=str(args.data), store=str(args.store), start=args.start.isoformat(),
                          end=args.end.isoformat(), config_path=args.config, progress_bar=not args.json)
    _print(result, args.json)
    _warn("backfill", result)


def cmd_export(args: argparse.Namespace) -> None:
    from accrete.pipeline.exports import export_delta, export_version

    if args.delta_since is not None:
        summary = export_delta(args.store, args.out, since=args.delta_since, version=args.version)
    else:
        summary = export_version(args.store, args.out, version=args.version)
    _print(summary, args.json)


def cmd_recommend(args: argparse.Namespace) -> None:
    from accrete.pipeline.recommend import recommend

    candidates = {} if args.candidates is None else {"c": args.candidates}
    rows = recommend(args.store, args.user, args.k, version=args.version, index_dir=args.index, **candidates)
    if rows.fallback:
        print(f"accrete recommend: note: unknown user {args.user!r} (not in version {rows.version}): the time-aware "
              f"popular list", file=sys.stderr)
    _print(rows if args.json else "\n".join(f"{r['rank']:>3}  {r['item_id']}  {r['score']:.4f}" for r in rows), args.json)


def cmd_index(args: argparse.Namespace) -> None:
    from accrete.pipeline import index as item_index

    started = time.perf_counter()
    if args.index_command == "build":
        built = item_index.build_from_store(args.store, version=args.version)
        built.save(args.out)
        summary: dict[str, Any] = {"version": built.version, "items": len(built), "kind": built.meta.kind,
                                   "out": str(args.out)}
    else:
        if (args.delta is None) == (args.store is None):
            raise AccreteError("index update needs either --delta FILE (a delta export) or --store STORE")
        current = item_index.load(args.index)
        if args.delta is not None:
            updated, summary = current.apply_delta(item_index.read_delta(args.delta), in_place=True)
        else:
            updated, summary = item_index.update_from_store(current, args.store)
        updated.save(args.index)
        summary["items"] = len(updated)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    _print(summary, args.json)


def cmd_api(args: argparse.Namespace) -> None:
    from accrete.pipeline import service

    candidates = {} if args.candidates is None else {"c": args.candidates}
    served = service.Service(args.store, index_dir=args.index, **candidates)
    print(f"accrete api: serving version {served.current.version} of {args.store} on http://{args.host}:{args.port} "
          f"(/recommend?user=&k=, /similar?item=&k=, /health, /version)", file=sys.stderr, flush=True)
    service.serve(served, host=args.host, port=args.port)


def cmd_similar(args: argparse.Namespace) -> None:
    from accrete.pipeline.recommend import similar

    rows = similar(args.store, args.item, args.k, version=args.version)
    _print(rows if args.json else "\n".join(f"{r['rank']:>3}  {r['item_id']}  {r['score']:.4f}" for r in rows), args.json)


def cmd_status(args: argparse.Namespace) -> None:
    from accrete.pipeline.status import store_status, format_status

    status = store_status(args.store)
    print(_dumps(status) if args.json else format_status(status))


def cmd_gc(args: argparse.Namespace) -> None:
    from accrete.pipeline.maintenance import collect_garbage, format_gc

    summary = collect_garbage(args.store, args.keep, args.keep_generations, dry_run=args.dry_run)
    _print(summary if args.json else format_gc(summary), args.json)


def cmd_verify(args: argparse.Namespace) -> None:
    from accrete.pipeline.errors import StoreError
    from accrete.pipeline.maintenance import verify_store

    report = verify_store(args.store)
    if args.json:
        _print(report.to_dict(), True)
    for problem in report.problems:
        print(f"accrete verify: damaged: {problem}", file=sys.stderr)
    if not report.ok:
        raise StoreError(report.summary())
    if not args.json:
        print(report.summary())


def cmd_dashboard(args: argparse.Namespace) -> None:
    from accrete.pipeline.dashboard import build_dashboard, serve_dashboard

    out = Path(args.out) if args.out else Path(args.store) / "dashboard.html"
    started = time.perf_counter()
    build_dashboard(args.store, out)
    print(f"dashboard written to {out.resolve()} in {time.perf_counter() - started:.1f} s")
    if args.serve:
        serve_dashboard(out, port=args.serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from accrete.flows.deployments import serve

    serve(data=str(args.data), store=str(args.store), cron=args.cron, timezone=args.timezone, config_path=args.config)


def cmd_demo(args: argparse.Namespace) -> None:
    _start_prefect_api("demo")
    from accrete.flows.demo import run_demo

    run_demo(Path(args.workdir), days=args.days, shift_day=args.shift_day, seed=args.seed)


def cmd_server(args: argparse.Namespace) -> None:
    """`accrete server start|stop|status`: the local Prefect server the flow commands keep running."""
    from accrete.flows import local_server

    home = local_server.prefect_home()
    configured = local_server.configured_api_url()
    if args.action == "start":
        if configured:
            raise AccreteError(f"PREFECT_API_URL is set ({configured}): runs go to that server, accrete starts none")
        started = local_server.ensure_server(home)
        payload = {"running": True, "url": started.url, "ui": started.url.removesuffix("/api"), "pid": started.pid,
                   "log": started.log, "prefect_home": str(home)}
    elif args.action == "stop":
        stopped = local_server.stop_server(home)
        payload = {"running": False, "stopped": stopped is not None, "prefect_home": str(home),
                   "message": f"stopped the local Prefect server (pid {stopped.pid})" if stopped
                   else "no local Prefect server was running"}
    else:
        record = local_server.running_server(home)
        payload = {"running": record is not None, "prefect_home": str(home), "configured_api_url": configured}
        if record is not None:
            payload.update(url=record.url, ui=record.url.removesuffix("/api"), pid=record.pid, log=record.log,
                           started=record.started)
    if args.json:
        _print(payload, True)
    elif args.action == "stop":
        print(payload["message"])
    elif payload["running"]:
        print(f"local Prefect server running: UI {payload['ui']}, API {payload['url']} (pid {payload['pid']}, "
              f"log {payload['log']})")
    else:
        print(f"no local Prefect server running (PREFECT_HOME {home}); the next nightly, backfill or retrain "
              f"starts one" + (f"; runs go to PREFECT_API_URL={configured}" if configured else ""))


# ----- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accrete", description="Incremental item-embedding pipeline: frozen old rows, trainable new rows, "
                                    "replay, drift-triggered full retrains.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str, *, data=False, store=False, config=False):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if data:
            p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="data directory (default: ./data)")
        if store:
            p.add_argument("--store", type=Path, default=Path(DEFAULT_STORE), help="model store (default: ./store)")
        if config:
            p.add_argument("--config", type=Path, default=os.environ.get("ACCRETE_CONFIG"),
                           help="TOML configuration file (default: $ACCRETE_CONFIG or built-in defaults)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return p

    p = command("demo", cmd_demo, "Generate a synthetic world with a regime shift, bootstrap, backfill every day "
                                  "(a drift-triggered retrain happens), write the dashboard and summarise.")
    p.add_argument("--workdir", default="demo", help="where data, store and dashboard go (default: ./demo)")
    p.add_argument("--days", type=_positive, default=40)
    p.add_argument("--shift-day", type=_positive, default=25)
    p.add_argument("--seed", type=int, default=0)

    p = command("generate", cmd_generate, "Write a synthetic world as Parquet partitions (ground-truth factors, "
                                          "arrivals, power-law popularity, optional regime shift).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--days", type=_positive, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift-day", type=_positive, default=None, help="day from which preferences change")
    p.add_argument("--interactions-per-day", type=_positive, default=6000)
    p.add_argument("--ratings", action="store_true", help="also write explicit ratings")

    p = command("convert", cmd_convert, "Convert MovieLens, or your own interaction log (CSV or Parquet), to Accrete "
                                        "partitions.")
    p.add_argument("dataset", choices=["movielens", "generic"],
                   help="movielens: a GroupLens folder; generic: one CSV/Parquet file (or a folder of Parquet files) "
                        "with a row per interaction, its columns named by --user-col, --item-col, --time-col")
    p.add_argument("path", type=Path, help="MovieLens folder (ratings.csv/movies.csv, ratings.dat/movies.dat or "
                                           "u.data/u.item), or the generic interactions file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--freq", choices=FREQUENCIES, default="week")
    p.add_argument("--overwrite", action="store_true", help="replace the partitions of an existing output directory")
    generic = p.add_argument_group("generic", "options of `convert generic`")
    generic.add_argument("--user-col", metavar="NAME", help="user ID column (strings or integers)")
    generic.add_argument("--item-col", metavar="NAME", help="item ID column (strings or integers)")
    generic.add_argument("--time-col", metavar="NAME", help="time column")
    generic.add_argument("--rating-col", metavar="NAME", help="explicit rating column (default: implicit feedback)")
    generic.add_argument("--weight-col", metavar="NAME", help="positive weight of each line, e.g. a quantity (default 1); "
                                                             "lines of one user, item and time are summed")
    generic.add_argument("--time-unit", choices=["s", "ms", "us", "ns", "iso"], default=None,
                         help="numbers of epoch seconds (default), ms, us or ns, or ISO 8601 text; ignored for "
                              "Parquet timestamp columns")
    generic.add_argument("--items", type=Path, metavar="FILE", help="item attributes (CSV/Parquet) keyed by --item-col")
    generic.add_argument("--users", type=Path, metavar="FILE", help="user attributes (CSV/Parquet) keyed by --user-col")
    generic.add_argument("--text-col", metavar="NAME", help="free-text column of --items whose words become metadata "
                                                           "tokens (default: description, when present)")
    generic.add_argument("--delimiter", metavar="CHAR", help="CSV field separator (default: comma, tab for .tsv)")

    p = command("retrain", cmd_retrain, "Full retrain from scratch on the partitions up to --as-of (a new generation; "
                                        "on an empty store, the first version).", data=True, store=True, config=True)
    p.add_argument("--as-of", type=_date, required=True)
    p.add_argument("--window-days", type=_positive, default=None)

    p = command("nightly", cmd_nightly, "One incremental step (default: the oldest pending partition), then the drift "
                                        "decision; a due retrain runs at once.", data=True, store=True, config=True)
    p.add_argument("--date", type=_date, default=None)
    p.add_argument("--force", action="store_true", help="redo the latest step even though it was applied")

    p = command("backfill", cmd_backfill, "Apply every partition in a date range, in order, skipping applied ones; "
                                          "stops at the first failure, a rerun resumes.", data=True, store=True, config=True)
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True)

    p = command("export", cmd_export, "Export every row of a version, or the delta since another, as Parquet.", store=True)
    p.add_argument("--version", type=_positive, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--delta-since", type=_positive, default=None)

    p = command("recommend", cmd_recommend, "Top-K items for a user (seen items excluded; two-stage, see README "
                                            "\"Serving\"); an unknown user gets the time-aware popular list.", store=True)
    p.add_argument("--user", required=True)
    p.add_argument("-k", type=_positive, default=10)
    p.add_argument("--version", type=_positive, default=None)
    p.add_argument("--index", type=Path, default=None, metavar="DIR",
                   help="first-stage candidates from this ANN index (`accrete index build`; default: exact product)")
    p.add_argument("--candidates", type=_positive, default=None, metavar="C",
                   help="candidates per source (default: pipeline.two_stage.DEFAULT_C)")

    p = command("similar", cmd_similar, "The K items nearest to an item.", store=True)
    p.add_argument("--item", required=True)
    p.add_argument("-k", type=_positive, default=10)
    p.add_argument("--version", type=_positive, default=None)

    p = sub.add_parser("index", help="Build or update the ANN index over a version's item keys.",
                       description="Build or update the ANN index over a version's item keys.")
    index_sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    p = index_sub.add_parser("build", help="Build the index of a version (default: current) into DIR.")
    p.set_defaults(handler=cmd_index)
    p.add_argument("--store", type=Path, default=Path(DEFAULT_STORE), help="model store (default: ./store)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--version", type=_positive, default=None)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p = index_sub.add_parser("update", help="Move an index to a later version: apply a delta export (--delta), or "
                                           "take the store's current version (--store; a new generation rebuilds).")
    p.set_defaults(handler=cmd_index)
    p.add_argument("--index", type=Path, required=True, metavar="DIR")
    p.add_argument("--delta", type=Path, default=None, metavar="FILE",
                   help="a delta export (`accrete export --delta-since V`, V the index's version)")
    p.add_argument("--store", type=Path, default=None, help="model store to follow instead of a delta file")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = command("api", cmd_api, "Serve /recommend, /similar, /health and /version over HTTP from the current version; "
                                "follows CURRENT and switches to a new version without a failed request.", store=True)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive, default=8000)
    p.add_argument("--index", type=Path, default=None, metavar="DIR",
                   help="start from this index (default: build one at start, in memory)")
    p.add_argument("--candidates", type=_positive, default=None, metavar="C",
                   help="candidates per source (default: pipeline.two_stage.DEFAULT_C)")

    command("status", cmd_status, "Current version, lineage and per-version metrics.", store=True)

    p = command("gc", cmd_gc, "Delete old versions (never CURRENT, its parent, or a version between kept ones); "
                              "prints what it freed.", store=True)
    p.add_argument("--keep", type=_positive, required=True, help="keep the newest N versions")
    p.add_argument("--keep-generations", type=int, default=0, metavar="G",
                   help="also keep every version of the newest G generations (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print what would be freed, change nothing")

    command("verify", cmd_verify, "Check CURRENT, every version's files and frozen blocks, the history and the "
                                  "drift log; exit 2 naming each damaged file.", store=True)

    p = command("dashboard", cmd_dashboard, "Build the self-contained drift dashboard (HTML), optionally serve it.",
                store=True)
    p.add_argument("--out", default=None, help="HTML file (default: STORE/dashboard.html)")
    p.add_argument("--serve", type=_positive, default=None, metavar="PORT", help="serve it on 127.0.0.1:PORT")

    p = command("serve", cmd_serve, "Serve the Prefect deployments: nightly (cron), backfill and full-retrain.",
                data=True, store=True, config=True)
    p.add_argument("--cron", default="0 2 * * *")
    p.add_argument("--timezone", default="UTC")

    p = command("server", cmd_server, "The local Prefect server that nightly, backfill and retrain runs are recorded "
                                      "on (started by the first run, reused by later ones; ignored when "
                                      "PREFECT_API_URL is set).")
    p.add_argument("action", choices=["start", "stop", "status"])
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, so that every `finally` runs:
    the store lock is released, a half-written version is removed and the temporary Prefect API stops.
    (While a flow runs, Prefect's own SIGTERM handler raises its `TerminationSignal` instead.)"""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _interrupted(command: str, args: argparse.Namespace, signal_name: str) -> int:
    """One line saying the run stopped and what is current now; the shell's exit code for the signal."""
    import signal

    state = ""
    if getattr(args, "store", None) is not None:
        from accrete.pipeline.store import Store, version_name

        try:
            current = Store(args.store).current_version()
            state = f"; CURRENT is {version_name(current)}" if current else "; the store is still empty"
        except AccreteError as exc:
            state = f"; {_one_line(exc)}"
    print(f"accrete {command}: stopped by {signal_name}, nothing half-written is left{state}", file=sys.stderr)
    return 128 + int(getattr(signal, signal_name))


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if _in_main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    # Prefect's per-run log would bury the one-line result, and its task/flow ERROR lines would repeat a
    # user's mistake before the one clear line below; a user's own settings win.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        args.handler(args)
        sys.stdout.flush()
    except _Finished as finished:
        return finished.code  # a reader that went away is seen here, not as a traceback at exit
    except BrokenPipeError:
        # `accrete status | head -5`: the reader has what it wanted; say nothing, like any Unix filter.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # as if killed by SIGPIPE
    except AccreteError as exc:
        print(f"accrete {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        code = _runtime_exit_code(exc)
        if code is None:
            signal_name = _signal_behind(exc)
            if signal_name is None:
                raise
            return _interrupted(args.command, args, signal_name)
        print(f"accrete {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return code
    except BaseException as exc:  # Terminated, Ctrl-C, Prefect's TerminationSignal, or an error raised over one
        signal_name = _signal_behind(exc)
        if signal_name is None:
            raise
        return _interrupted(args.command, args, signal_name)
    return 0


#: The step or retrain was published, then something after it failed (see the module docstring).
EXIT_PUBLISHED_THEN_FAILED = 3


def _runtime_exit_code(exc: RuntimeError) -> int | None:
    """The exit code of the RuntimeErrors that are no bug: 1 for no Prefect API, 3 for a failure after a
    publish; None for anything else."""
    from accrete.flows.local_server import PrefectAPIUnavailable

    if isinstance(exc, PrefectAPIUnavailable):
        return 1
    flows_module = sys.modules.get("accrete.flows.flows")  # loaded (with Prefect) only by the commands that need it
    if flows_module is not None and isinstance(exc, flows_module.PublishedThenFailed):
        return EXIT_PUBLISHED_THEN_FAILED
    return None


def _signal_behind(exc: BaseException) -> str | None:
    """The signal that stopped the run, if `exc` is one or was raised while one was being handled: while a flow
    runs, Prefect's SIGTERM handler raises its `TerminationSignal`, and a signal that lands while Prefect is
    still creating a task run makes its crash handling raise another error on top (seen: `ValueError: Task run
    is not set`)."""
    prefect_exceptions = sys.modules.get("prefect.exceptions")
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, Terminated):
            return "SIGTERM"
        if isinstance(current, KeyboardInterrupt):
            return "SIGINT"
        if prefect_exceptions is not None and isinstance(current, prefect_exceptions.TerminationSignal):
            return "SIGTERM"
        current = current.__cause__ or current.__context__
    return None


def _in_main_thread() -> bool:
    """Signal handlers can only be installed from the main thread (tests call `main` from others)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _one_line(exc: BaseException) -> str:
    """The message and its notes (where a backfill stopped, say), on one line."""
    return "; ".join([str(exc), *getattr(exc, "__notes__", [])]).replace("\n", " ")


if __name__ == "__main__":
    sys.exit(main())
