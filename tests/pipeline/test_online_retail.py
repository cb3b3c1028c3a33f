"""The real purchase log `online-retail-h1` (beside the repository, not shipped; skipped when absent): its
conversion with quantities as weights and descriptions as words, and a short real backfill through the CLI
over the week the shop was closed."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.contract import item_attribute_tokens, list_partitions, read_partition
from accrete.pipeline.converters import convert_generic
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.policy import missing_periods
from accrete.pipeline.store import Store

pytestmark = pytest.mark.online_retail
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def converted(online_retail_dir, tmp_path_factory):
    """The log converted weekly as data/README.md shows: (summary, data directory)."""
    out = tmp_path_factory.mktemp("online-retail") / "data"
    summary = convert_generic(online_retail_dir / "purchases.csv.gz", out, user_col="customer_id",
                              item_col="stock_code", time_col="time", time_unit="iso", weight_col="quantity",
                              items=online_retail_dir / "items.csv", freq="week")
    return summary, out


@pytest.fixture(scope="module")
def log(online_retail_dir) -> pd.DataFrame:
    return pd.read_csv(online_retail_dir / "purchases.csv.gz", dtype={"customer_id": str, "stock_code": str})


def read_all(data: Path):
    parts = [read_partition(data, d) for d in list_partitions(data)]
    return parts, {e: pa.concat_tables([getattr(p, e) for p in parts]) for e in ("interactions", "items")}


def test_the_real_log_converts_with_lines_of_one_basket_aggregated_and_quantities_summed(converted, log):
    summary, data = converted
    groups = log.groupby(["customer_id", "stock_code", "time"]).quantity.sum()
    assert summary["lines"] == len(log) == 169_327  # the data set's README
    assert summary["interactions"] == len(groups)
    assert summary["aggregated"] == len(log) - len(groups) > 3_000
    assert (summary["users"], summary["items"], summary["items_without_metadata"]) == (
        log.customer_id.nunique(), 3_268, 0)
    assert (summary["first_date"], summary["last_date"], summary["partitions"]) == ("2010-11-29", "2011-06-20", 29)
    assert "ratings" not in summary and summary["text_col"] == "description"

    parts, tables = read_all(data)
    assert not any(p.has_ratings for p in parts)
    assert sum(p.quarantine.num_rows for p in parts) == 0
    assert sum(p.report["aggregated"]["interactions"] for p in parts) == 0  # one row per event on disk
    interactions = tables["interactions"]
    assert interactions.num_rows == len(groups)
    weights = interactions["weight"].to_numpy()
    assert weights.dtype == np.float32 and weights.min() >= 1
    assert float(weights.sum(dtype=np.float64)) == float(log.quantity.sum())
    # A basket line told twice is one interaction with both quantities.
    repeated = groups[log.groupby(["customer_id", "stock_code", "time"]).size() > 1]
    (customer, item, when), quantity = next(iter(repeated.items()))
    stamp = int(pd.Timestamp(when, tz="UTC").timestamp())
    row = interactions.filter(pc.and_(pc.and_(pc.equal(interactions["user_id"], customer),
                                              pc.equal(interactions["item_id"], item)),
                                      pc.equal(interactions["timestamp"], stamp)))
    assert row["weight"].to_pylist() == [float(quantity)]


def test_the_real_catalogue_descriptions_become_word_tokens(converted):
    _, data = converted
    _, tables = read_all(data)
    items = tables["items"]
    assert items.num_rows == 3_268
    words = dict(zip(items["item_id"].to_pylist(), items["words"].to_pylist()))
    assert words["85123A"] == ["white", "hanging", "heart", "light", "holder"]  # WHITE HANGING HEART T-LIGHT HOLDER
    assert sum(1 for w in words.values() if w) > 0.99 * len(words)
    ids, (index, tokens) = item_attribute_tokens(items)
    assert len(tokens) > 3 * items.num_rows and all(t.startswith("words=") for t in tokens.unique().to_pylist())
    # Shared words are what metadata initialization feeds on: the common ones name kinds of product.
    counts = pc.value_counts(tokens).to_pylist()
    common = {c["values"] for c in sorted(counts, key=lambda c: -c["counts"])[:30]}
    assert {"words=heart", "words=bag", "words=christmas"} <= common
    assert not common & {"words=of", "words=set", "words=pack", "words=and"}


def test_the_real_log_has_one_lost_week_the_christmas_closure(converted):
    _, data = converted
    dates = list_partitions(data)
    assert missing_periods(dates, "week", dates[0], dates[-1]) == [dt.date(2010, 12, 27)]


@pytest.mark.slow
def test_a_short_real_backfill_through_the_cli_warns_of_the_lost_week_and_keeps_the_weights(converted, tmp_path):
    _, data = converted
    config = tmp_path / "accrete.toml"
    config.write_text("[model]\ndim = 8\nrecency_prior = 0.0\nrecency_prior_learned = false\n")
    store = tmp_path / "store"
    run_full_retrain(data, store, dt.date(2010, 12, 13), config=AccreteConfig.load(config), reason="bootstrap")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_PROFILE", None)
    run = subprocess.run([sys.executable, "-m", "accrete.flows.cli", "backfill", "--data", str(data), "--store",
                          str(store), "--config", str(config), "--start", "2010-12-20", "--end", "2011-01-10",
                          "--json"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("accrete backfill: warning:")]
    assert warnings == [f"accrete backfill: warning: {data}: no partition for 1 week period(s) in or just before "
                        f"2010-12-20 to 2011-01-10: 2010-12-27; their interactions are missing from the model "
                        f"(write a file with zero rows for a period without data)"]
    manifest = Store(store).read_manifest()
    assert manifest.partitions[-3:] == ["2010-12-20", "2011-01-03", "2011-01-10"]
    assert "2011-01-10" in run.stdout and manifest.kind == "incremental"
    history = pq.read_table(store / "history" / "date=2011-01-10.parquet")
    assert history.column_names == ["user_id", "item_id", "timestamp", "weight"]
    assert pc.max(history["weight"]).as_py() > 1
