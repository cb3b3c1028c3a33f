"""The replay reservoir: a fixed-size uniform sample of every interaction the pipeline has ever consumed.

An incremental step trains on the new partition plus replayed old interactions, so that the trainable
rows are fitted against the whole history and not only against today's (catastrophic forgetting). Keeping
all history in memory does not scale; a reservoir of `capacity` rows that is, at all times, a uniform
sample of the `n_seen` interactions so far does (Vitter 1985, Algorithm R). The reservoir is saved with
each model version whose objective replays (the SGD objectives; iALS never reads it, so its versions hold
none), so a version's replay is reproducible.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline.atomic import write_parquet_atomically
from accrete.pipeline.contract import INTERACTIONS_SCHEMA, with_weight
from accrete.pipeline.errors import DataContractError, StoreError

# The interaction columns the reservoir holds (the clean-partition contract); other columns are dropped.
RESERVOIR_SCHEMA = INTERACTIONS_SCHEMA
_METADATA_KEY = b"accrete.reservoir"
_FORMAT = 1
# Philox produces its stream in blocks of 4 64-bit words per counter step (numpy's `advance` unit).
_PHILOX_WORDS_PER_STEP = 4


class ReplayReservoir:
    """A uniform random sample of at most `capacity` of all interactions ever added (Algorithm R).

    The t-th interaction ever added (t = 0, 1, ...) is placed in slot t while t < capacity; afterwards it
    draws `j_t ~ U{0..t}` and replaces the row in slot `j_t` if `j_t < capacity` (a later t wins a slot
    over an earlier one). By induction, after n interactions each one is held with probability
    `min(1, capacity / n)`, independently of arrival order and batch sizes.

    Determinism: `j_t` is the t-th word of a counter-based Philox stream keyed by `seed`, reduced modulo
    `t + 1` (bias below `t / 2**64`). It depends only on `(seed, t)`, so the reservoir is a function of
    `(capacity, seed)` and the concatenated sequence of added rows: adding the same rows in one batch
    or split into several batches gives the identical reservoir. Each `add` is vectorized over its batch.

    Attributes:
        capacity: maximum number of rows held.
        seed: key of the slot draws.
        n_seen: interactions added so far.
        size: rows held, `min(capacity, n_seen)`.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if int(capacity) != capacity or capacity < 0:
            raise ValueError(f"ReplayReservoir: capacity must be an integer >= 0, got {capacity!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"ReplayReservoir: seed must be an integer >= 0, got {seed!r}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.n_seen = 0
        self._table = RESERVOIR_SCHEMA.empty_table()

    @property
    def size(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"ReplayReservoir(capacity={self.capacity}, seed={self.seed}, n_seen={self.n_seen}, size={self.size})"

    def add(self, table: pa.Table) -> None:
        """Offer every row of `table` (in order) to the reservoir.

        Args:
            table: interactions with columns `user_id string`, `item_id string`, `timestamp int64`,
                `rating float32` (castable types accepted, extra columns ignored, no nulls).

        Raises:
            DataContractError: a column is missing, has an incompatible type, or holds nulls.
        """
        batch = _conform(table, combine=False)  # only the rows that win a slot are copied
        m = batch.num_rows
        if m == 0:
            return
        held = self._table
        n_fill = min(max(self.capacity - self.n_seen, 0), m)
        # Index into concat(held, batch) for each slot: held rows keep their slots, the first n_fill batch
        # rows (at concat positions held.num_rows + r) fill the next empty slots.
        source = np.arange(held.num_rows + n_fill, dtype=np.int64)
        n_compete = m - n_fill
        if n_compete and self.capacity:
            first = self.n_seen + n_fill
            t_plus_one = np.arange(first + 1, first + n_compete + 1, dtype=np.uint64)
            slot = _slot_draws(self.seed, first, n_compete) % t_plus_one
            accepted = np.flatnonzero(slot < self.capacity)
            # Later t wins: keep the last accepted row per slot (first occurrence in reversed order).
            slots, last = np.unique(slot[accepted][::-1].astype(np.int64), return_index=True)
            winners = n_fill + accepted[::-1][last]
            source[slots] = held.num_rows + winners
        if n_fill or (n_compete and self.capacity):
            from_batch = source >= held.num_rows
            taken, position = np.unique(source[from_batch] - held.num_rows, return_inverse=True)
            source[from_batch] = held.num_rows + position
            winning = batch.take(pa.array(taken)).combine_chunks()
            self._table = pa.concat_tables([held, winning]).take(pa.array(source)).combine_chunks()
        self.n_seen += m

    def sample(self, n: int, seed: int) -> pa.Table:
        """`min(n, size)` distinct held rows, uniformly without replacement, in random order.

        Deterministic for `(seed, state)`: the generator is seeded from `(seed, self.seed, n_seen)`, so the
        same seed on a later state (more rows seen) draws a fresh sample.
        """
        if int(n) != n or n < 0:
            raise ValueError(f"ReplayReservoir.sample: n must be an integer >= 0, got {n!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"ReplayReservoir.sample: seed must be an integer >= 0, got {seed!r}")
        rng = np.random.default_rng([int(seed), self.seed, self.n_seen])
        take = min(int(n), self.size)
        rows = rng.choice(self.size, size=take, replace=False) if take else np.zeros(0, np.int64)
        return self._table.take(pa.array(rows, type=pa.int64()))

    def table(self) -> pa.Table:
        """All held rows, in slot order (`RESERVOIR_SCHEMA`)."""
        return self._table

    def to_table(self) -> pa.Table:
        """The held rows, with `{format, capacity, seed, n_seen}` as JSON under the schema metadata key
        `accrete.reservoir` (what `save` writes and `from_table` reads)."""
        state = {"format": _FORMAT, "capacity": self.capacity, "seed": self.seed, "n_seen": self.n_seen}
        return self._table.replace_schema_metadata({_METADATA_KEY: json.dumps(state).encode()})

    def save(self, path: str | Path) -> None:
        """Write the reservoir (`to_table`) as Parquet.

        The file is written under a temporary name next to `path`, flushed to disk and renamed over it, so
        a crash never leaves a torn reservoir.

        Raises:
            StoreError: the file cannot be written.
        """
        path = Path(path)
        try:
            write_parquet_atomically(self.to_table(), path)
        except OSError as exc:
            raise StoreError(f"{path}: cannot write the replay reservoir ({exc})") from None

    @classmethod
    def load(cls, path: str | Path) -> ReplayReservoir:
        """Read a reservoir written by `save`, checking it is whole (see `from_table`).

        Raises:
            StoreError: naming the file, when it is missing, not Parquet or not a whole reservoir.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: replay reservoir file not found")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{path}: not a readable Parquet replay reservoir ({exc})") from None
        return cls.from_table(table, source=path)

    @classmethod
    def from_table(cls, table: pa.Table, *, source: str | Path = "replay reservoir") -> ReplayReservoir:
        """A reservoir from `to_table`'s table, checking it is whole.

        Checked: it carries the reservoir metadata with integer `capacity >= 0`, `seed >= 0`, `n_seen >= 0`;
        the four columns exist with compatible types and no nulls; it holds exactly `min(capacity, n_seen)` rows.

        Raises:
            StoreError: naming `source`, for any of the above.
        """
        path = source
        raw = (table.schema.metadata or {}).get(_METADATA_KEY)
        if raw is None:
            raise StoreError(f"{path}: no replay reservoir metadata (key '{_METADATA_KEY.decode()}')")
        try:
            state = json.loads(raw)
            capacity, seed, n_seen = (state[key] for key in ("capacity", "seed", "n_seen"))
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{path}: damaged replay reservoir metadata ({exc!r})") from None
        for name, value in (("capacity", capacity), ("seed", seed), ("n_seen", n_seen)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StoreError(f"{path}: replay reservoir metadata field '{name}' must be an integer >= 0, got {value!r}")
        try:
            rows = _conform(table.replace_schema_metadata(None))
        except DataContractError as exc:
            raise StoreError(f"{path}: {exc}") from None
        if rows.num_rows != min(capacity, n_seen):
            raise StoreError(
                f"{path}: holds {rows.num_rows} rows but capacity {capacity} and n_seen {n_seen} "
                f"require {min(capacity, n_seen)}"
            )
        reservoir = cls(capacity, seed)
        reservoir.n_seen = n_seen
        reservoir._table = rows
        return reservoir


def _slot_draws(seed: int, first: int, count: int) -> np.ndarray:
    """Words `first .. first + count - 1` of the Philox stream keyed by `seed` (uint64)."""
    bit_generator = np.random.Philox(np.random.SeedSequence(seed))
    bit_generator.advance(first // _PHILOX_WORDS_PER_STEP)
    offset = first % _PHILOX_WORDS_PER_STEP
    return bit_generator.random_raw(offset + count)[offset:]


def _conform(table: pa.Table, combine: bool = True) -> pa.Table:
    """`table`'s interaction columns cast to `RESERVOIR_SCHEMA` (one chunk each unless not `combine`); a
    DataContractError naming the column if one is missing, cannot be cast or holds nulls."""
    if not isinstance(table, pa.Table):
        raise DataContractError(f"replay reservoir input: expected a pyarrow Table, got {type(table).__name__}")
    table = with_weight(table)  # reservoirs saved, and tables built, before `weight` existed: weight 1
    missing = [name for name in RESERVOIR_SCHEMA.names if name not in table.column_names]
    if missing:
        raise DataContractError(f"replay reservoir input: missing column(s) {missing}")
    columns = []
    for field in RESERVOIR_SCHEMA:
        column = table.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise DataContractError(
                f"replay reservoir input: column '{field.name}' has type {column.type}, expected {field.type} ({exc})"
            ) from None
        if column.null_count:
            raise DataContractError(f"replay reservoir input: column '{field.name}' has {column.null_count} null value(s)")
        columns.append(column)
    conformed = pa.Table.from_arrays(columns, schema=RESERVOIR_SCHEMA)
    return conformed.combine_chunks() if combine else conformed
