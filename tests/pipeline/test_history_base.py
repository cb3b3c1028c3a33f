"""The consolidated history base a full retrain writes is the per-partition history, whatever its source."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline.store import HISTORY, Store


def _day(k: int, rows: int) -> pa.Table:
    return pa.table({"user_id": [f"u{k}-{r}" for r in range(rows)], "item_id": [f"i{r % 3}" for r in range(rows)],
                     "timestamp": pa.array([1_700_000_000 + 86_400 * k + r for r in range(rows)], pa.int64()),
                     "rating": pa.array([1.0] * rows, pa.float32())})


def test_a_base_built_from_tables_in_memory_and_from_files_equals_the_per_partition_files(tmp_path):
    store = Store(tmp_path / "store")
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(5)]
    tables = {d: _day(k, 3 + k) for k, d in enumerate(dates)}
    for d in dates:
        store.write_history(d, tables[d])
    # Days 1 and 3 were consumed by an earlier run (read back from their files); the others are in memory.
    store.write_history_base(dates, {d: tables[d] for d in (dates[0], dates[2], dates[4])})

    base = pq.read_table(tmp_path / "store" / HISTORY / "base-until=2024-01-05.parquet").replace_schema_metadata(None)
    assert base.equals(store._read_history_files(dates))  # same rows, in date order
    assert store.read_history(dates).equals(store._read_history_files(dates))
