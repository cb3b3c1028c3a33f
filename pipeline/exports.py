"""Exports for downstream systems: every row of a version, or only the delta since an older version.

Schema (one row per vocabulary row, the out-of-vocabulary row 0 excluded)::

    entity  string              "user" | "item"
    id      string
    row     int64               the embedding row
    vector  fixed_size_list<float32>[dim]
    bias    float32             item: the score's per-item term (under iALS the time-aware term)
    change  string              delta exports only: "added" | "changed" | "removed"
    vector_changed  bool        delta exports only: false when only the bias changed (an ANN index
                                keeps the row; only the scalar is updated)

A user's score for an item is `user.vector . item.vector + item.bias`, plus `user.bias + global_bias` under
the rating objective (a predicted rating; it does not change the ranking). The file's metadata (key
`accrete`, JSON) holds `version`, `generation`, `objective`, `global_bias`, `score` (the formula) and `scoring`,
the kind of `pipeline.scoring` (`dot`: index the vectors; `cosine`: index the unit vectors). An ANN index over
item keys refuses a delta whose `delta_since` is not its version, and rebuilds when `generation` changes.

A delta since V0 holds the rows added or changed since V0, and the IDs V0 had that were dropped by a
vocabulary compaction. Every row not in the delta is checked to be byte-identical in both versions, so
an ANN index built from V0 needs only the delta.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from accrete.pipeline import scoring
from accrete.pipeline.atomic import write_parquet_atomically
from accrete.pipeline.errors import StoreError
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.store import ModelState, Store
from accrete.pipeline.vocabulary import Vocabulary


def _entity_table(entity: str, ids: pa.Array, rows: np.ndarray, vectors: np.ndarray, bias: np.ndarray,
                  change: str | None = None, vector_changed: np.ndarray | None = None) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors[rows], dtype=np.float32).reshape(-1))
    columns = {
        "entity": pa.array(np.full(len(rows), entity, dtype=object), pa.string()),
        "id": ids.take(pa.array(rows)) if len(rows) else pa.array([], pa.string()),
        "row": pa.array(rows.astype(np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        "bias": pa.array(bias[rows].astype(np.float32)),
    }
    if change is not None:
        columns["change"] = pa.array(np.full(len(rows), change, dtype=object), pa.string())
        columns["vector_changed"] = pa.array(np.full(len(rows), change == "added") if vector_changed is None
                                             else vector_changed, pa.bool_())
    return pa.table(columns)


def _tables(state: ModelState, entity: str) -> tuple[Vocabulary, np.ndarray, np.ndarray]:
    if entity == "user":
        return state.user_vocab, state.user_vectors, state.user_bias
    return state.item_vocab, state.item_vectors, state.item_bias


def export_version(store_dir: str | Path, out: str | Path, *, version: int | None = None) -> dict[str, Any]:
    """Write every user and item row of a version (default: current) to one Parquet file."""
    store = Store(store_dir)
    state = store.load(version)
    parts = []
    for entity in ("user", "item"):
        vocab, vectors, bias = _tables(state, entity)
        parts.append(_entity_table(entity, vocab.ids, np.arange(1, len(vocab)), vectors, bias))
    table = pa.concat_tables(parts)
    _write(table, out, _meta(state, {"version": state.version}))
    return {"version": state.version, "rows": table.num_rows, "out": str(out)}


def export_delta(store_dir: str | Path, out: str | Path, *, since: int, version: int | None = None) -> dict[str, Any]:
    """Write the rows added or changed in `version` (default: current) since version `since`."""
    store = Store(store_dir)
    new = store.load(version)
    if since > new.version:
        raise StoreError(f"--delta-since {since} is newer than version {new.version}")
    old = store.load(since)
    # An entity's frozen rows are checked only if every step since `since` kept them frozen (iALS with
    # user_policy = refold_active re-solves active users, and its steps record no user checksum).
    kept_frozen = {"user", "item"}
    for step in store.versions():
        if since < step <= new.version:
            kept_frozen &= set(store.read_manifest(step).extra.get("frozen_checksum", kept_frozen))
    new_manifest, old_manifest = Manifest.from_dict(new.manifest), Manifest.from_dict(old.manifest)
    parts: list[pa.Table] = []
    summary: dict[str, Any] = {"version": new.version, "since": since}
    for entity in ("user", "item"):
        new_vocab, new_vectors, new_bias = _tables(new, entity)
        old_vocab, old_vectors, old_bias = _tables(old, entity)
        new_ids, old_ids = new_vocab.ids, old_vocab.ids
        old_row = new_vocab.mapping_from(old_vocab)  # for each new row, its row in the old version or -1
        rows = np.arange(1, len(new_ids))
        mapped = old_row[rows]
        added = rows[mapped < 0]
        both = rows[mapped >= 0]
        both_old = mapped[mapped >= 0]
        if new_vectors.shape[1] != old_vectors.shape[1]:
            same_vector = same = np.zeros(len(both), bool)
        else:
            # Byte comparison (float == would call -0.0 and 0.0 equal, and NaN unequal to itself).
            same_vector = (new_vectors[both].view(np.uint32) == old_vectors[both_old].view(np.uint32)).all(axis=1)
            same = same_vector & (new_bias[both].view(np.uint32) == old_bias[both_old].view(np.uint32))
        changed, unchanged = both[~same], both[same]
        vector_changed = ~same_vector[~same]
        fine_tuned = any(m.config["model"]["frozen_lr_multiplier"] > 0 for m in (new_manifest, old_manifest))
        if new_manifest.generation == old_manifest.generation and not fine_tuned and entity in kept_frozen:
            # Within a generation, rows frozen in the old version must be byte-identical in the new one.
            frozen_from = getattr(old_manifest.rows, f"{entity}_trainable_from")
            vector_moved = changed[vector_changed & (old_row[changed] > 0) & (old_row[changed] < frozen_from)]
            if len(vector_moved):
                raise StoreError(f"delta check failed: {len(vector_moved)} {entity} rows frozen in version {since} "
                                 f"changed in version {new.version} (first id {new_ids[int(vector_moved[0])]})")
        present = np.zeros(len(old_ids), bool)
        present[mapped[mapped >= 0]] = True
        removed = np.flatnonzero(~present)
        removed = removed[removed > 0]
        parts += [
            _entity_table(entity, new_ids, added, new_vectors, new_bias, "added"),
            _entity_table(entity, new_ids, changed, new_vectors, new_bias, "changed", vector_changed),
            _entity_table(entity, old_ids, removed, old_vectors, old_bias, "removed"),
        ]
        summary[entity] = {"added": int(len(added)), "changed": int(len(changed)),
                           "bias_only": int((~vector_changed).sum()), "removed": int(len(removed)),
                           "unchanged_verified": int(len(unchanged))}
    table = pa.concat_tables(parts)
    _write(table, out, _meta(new, {"version": new.version, "delta_since": since}))
    summary.update(rows=table.num_rows, out=str(out),
                   generation_changed=new_manifest.generation != old_manifest.generation)
    return summary


def read_export(path: str | Path) -> pa.Table:
    """Read an export back (for consumers and tests)."""
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"{path}: not a readable export: {exc}") from None


def _meta(state: ModelState, meta: dict[str, Any]) -> dict[str, Any]:
    manifest = Manifest.from_dict(state.manifest)
    kind = scoring.kind_of(state.manifest)
    score = ("user.vector . item.vector" if kind == "dot" else "user.vector . (item.vector / |item.vector|)") + " + item.bias"
    if manifest.objective == "rating":
        score += " + user.bias + global_bias"
    return {**meta, "objective": manifest.objective, "global_bias": float(manifest.extra.get("global_bias", 0.0)),
            "score": score, "recency": manifest.extra.get("recency"), "generation": manifest.generation,
            "scoring": kind}


def _write(table: pa.Table, out: str | Path, meta: dict[str, Any]) -> None:
    metadata = {b"accrete": json.dumps(meta).encode()}
    write_parquet_atomically(table.replace_schema_metadata(metadata), out)
