"""An approximate nearest-neighbour index over a published version's item keys, kept current by delta exports.

Item keys `k_i` (`pipeline.scoring`) are functions of frozen item vectors, so between two full retrains an index
over them only takes inserts: a nightly delta's `added` items are inserted, the rare `changed` item whose
`vector_changed` is true is replaced, `removed` items are deleted, and the far more common bias-only change (the
time-aware term moves every night for every item with interactions) needs nothing, because the term is never
in the index (`pipeline.two_stage` takes its own top-C by term). A full retrain starts a new generation: every
row is solved again (and may be renumbered by a compaction), so the index is rebuilt.

The graph is a `usearch` HNSW index with the inner-product metric, labelled by item row (row 0, the
out-of-vocabulary row, is never inserted). The library was chosen by measurement (README, "Serving"): same
recall and single-thread build time as `hnswlib`, deletions and copies built in (faiss' HNSW cannot delete),
and wheels on PyPI (hnswlib builds from source).

On disk an index directory holds `index.json` (the version and generation it reflects, the scoring kind, the
graph's file name and parameters) and the graph file it names, `items-vNNNNNN.usearch`. An update writes the
new graph under a new name, then replaces `index.json` atomically, then deletes the old graph: a crash at any
point leaves a consistent index.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from accrete.pipeline import scoring
from accrete.pipeline.atomic import write_text_atomically
from accrete.pipeline.errors import AccreteError
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.store import ModelState, Store, version_name

META = "index.json"
LIBRARY = "usearch"
#: HNSW graph degree and beam widths (bench/serving.py). Inner product over keys of unequal norms is harder for a
#: graph than a metric: with the term off, degree 16 kept 0.980 of the exact top 10 on the synthetic year, and no
#: wider beam helped; degree 32 keeps 0.996, builds as fast and searches faster.
CONNECTIVITY = 32
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128


class ItemIndexError(AccreteError):
    """An index directory or a delta that cannot be used: missing, damaged, or not the version it must be."""


class IndexRebuildNeeded(ItemIndexError):
    """The delta crosses a full retrain (a new generation): only a rebuild reflects it."""


@dataclass(frozen=True)
class IndexMeta:
    """What an index reflects: a store version (and its generation), the scoring kind of its keys, its size."""

    version: int
    generation: int
    kind: str
    dim: int
    items: int
    graph: str = ""
    library: str = LIBRARY
    metric: str = "ip"
    connectivity: int = CONNECTIVITY
    expansion_add: int = EXPANSION_ADD


class ItemIndex:
    """An HNSW graph over item keys (inner product), and the version it reflects.

    `search` returns candidate item rows for a batch of queries; `apply_delta` moves it to a later version of the
    same generation. Searching is safe from several threads (they take turns); an update works on a copy
    (`apply_delta` returns a new `ItemIndex`), so a service can keep answering from the old one until it switches.
    """

    def __init__(self, meta: IndexMeta, graph: Any):
        self.meta = meta
        self.graph = graph
        # usearch gives each concurrent search its own scratch space by thread slot; calls from several Python
        # threads, each asking for one thread, would share slot 0. Searches are sub-millisecond: take turns.
        self._searching = threading.Lock()

    @property
    def version(self) -> int:
        return self.meta.version

    def __len__(self) -> int:
        return len(self.graph)

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        """The (approximately) `count` item rows of highest `q . k_i` for each query: int64 `[b, count]`, padded
        with -1 when the index holds fewer items."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        count = max(0, min(int(count), len(self.graph)))
        if count == 0 or len(queries) == 0:
            return np.full((len(queries), count), -1, np.int64)
        # usearch widens the beam to `count` when `count` exceeds expansion_search.
        with self._searching:
            matches = self.graph.search(queries, count, exact=False, threads=1)
        rows = np.full((len(queries), count), -1, np.int64)
        if hasattr(matches, "counts"):  # a batch of queries
            found = np.asarray(matches.counts).reshape(-1, 1)
            rows[:] = np.asarray(matches.keys, np.int64).reshape(len(queries), count)
            rows[np.arange(count)[None, :] >= found] = -1
        else:  # usearch answers a single query with its found keys only
            keys = np.asarray(matches.keys, np.int64)
            rows[0, :len(keys)] = keys
        return rows

    def apply_delta(self, delta: pa.Table, *, in_place: bool = False) -> tuple[ItemIndex, dict[str, Any]]:
        """This index moved to the version of a delta export (`accrete export --delta-since`, or `read_delta`), and
        what it did. By default a new `ItemIndex` is returned and this one is left as it was (a service keeps
        answering from it); `in_place` saves that copy (`accrete index update`).

        Raises:
            ItemIndexError: the delta does not start at this index's version, or its keys are of another kind.
            IndexRebuildNeeded: the delta crosses a full retrain.
        """
        meta = export_meta(delta)
        since = meta.get("delta_since")
        if since is None:
            raise ItemIndexError("not a delta export (its metadata has no delta_since): export one with "
                                 "`accrete export --delta-since V`")
        if int(since) != self.version:
            raise ItemIndexError(f"the delta goes from version {since} to {meta.get('version')}, but the index "
                                 f"reflects version {self.version}: export one with --delta-since {self.version}")
        kind = meta.get("scoring") or "dot"
        if kind != self.meta.kind:
            raise ItemIndexError(f"the delta's scoring kind is {kind!r}, the index's {self.meta.kind!r}: rebuild")
        generation = meta.get("generation")
        if generation is not None and int(generation) != self.meta.generation:
            raise IndexRebuildNeeded(f"the delta crosses a full retrain (generation {self.meta.generation} -> "
                                     f"{generation}): rebuild the index with `accrete index build`")
        items = delta.filter(pc.equal(delta["entity"], "item"))
        change = items["change"].to_numpy(zero_copy_only=False)
        vector_changed = items["vector_changed"].fill_null(True).to_numpy(zero_copy_only=False).astype(bool)
        rows = items["row"].to_numpy().astype(np.int64)
        added, changed, removed = change == "added", change == "changed", change == "removed"
        insert = added | (changed & vector_changed)
        graph = self.graph if in_place else self.graph.copy()
        delete_rows = rows[removed | (changed & vector_changed)]
        if len(delete_rows):
            graph.remove(delete_rows.astype(np.uint64))
        insert_rows = rows[insert]
        if len(insert_rows):
            vectors = _vectors(items.take(pa.array(np.flatnonzero(insert))), self.meta.dim)
            # A row an earlier update already inserted (a replayed delta) is replaced, not duplicated.
            present = insert_rows[graph.contains(insert_rows.astype(np.uint64))]
            if len(present):
                graph.remove(present.astype(np.uint64))
            graph.add(insert_rows.astype(np.uint64), scoring.item_keys(vectors, kind), threads=1)
        done = {"from_version": self.version, "version": int(meta["version"]), "inserted": int(added.sum()),
                "replaced": int((changed & vector_changed).sum()), "removed": int(removed.sum()),
                "bias_only": int((changed & ~vector_changed).sum())}
        new_meta = replace(self.meta, version=int(meta["version"]), items=len(graph), graph="")
        if in_place:
            self.meta = new_meta
            return self, done
        return ItemIndex(new_meta, graph), done

    def save(self, directory: str | Path) -> Path:
        """Write the index into `directory` (see the module doc for the crash-safe order); returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"items-{version_name(self.version)}.usearch"
        tmp = directory / f".{name}.tmp-{os.getpid()}"
        self.graph.save(str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, directory / name)
        previous = _read_meta(directory).graph if (directory / META).exists() else None
        self.meta = replace(self.meta, graph=name, items=len(self.graph))
        write_text_atomically(directory / META, json.dumps(asdict(self.meta), indent=2) + "\n")
        if previous and previous != name:
            (directory / previous).unlink(missing_ok=True)
        return directory


def build(item_vectors: np.ndarray, kind: str, *, version: int, generation: int, threads: int = 0) -> ItemIndex:
    """An index over every item row but row 0 (`threads=0`: every core)."""
    from usearch.index import Index

    keys = scoring.item_keys(item_vectors, kind)
    graph = Index(ndim=keys.shape[1], metric="ip", dtype="f32", connectivity=CONNECTIVITY,
                  expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
    if len(keys) > 1:
        graph.add(np.arange(1, len(keys), dtype=np.uint64), keys[1:], threads=threads)
    meta = IndexMeta(version=version, generation=generation, kind=kind, dim=int(keys.shape[1]), items=len(graph))
    return ItemIndex(meta, graph)


def build_for_state(state: ModelState, *, threads: int = 0) -> ItemIndex:
    """The index of a loaded version."""
    manifest = Manifest.from_dict(state.manifest)
    return build(state.item_vectors, scoring.kind_of(state.manifest), version=state.version,
                 generation=manifest.generation, threads=threads)


def build_from_store(store_dir: str | Path, *, version: int | None = None, threads: int = 0) -> ItemIndex:
    return build_for_state(Store(store_dir).load(version), threads=threads)


def load(directory: str | Path) -> ItemIndex:
    """The index saved in `directory`."""
    from usearch.index import Index

    directory = Path(directory)
    meta = _read_meta(directory)
    path = directory / meta.graph
    if not path.is_file():
        raise ItemIndexError(f"{path}: the graph file {META} names is missing")
    try:
        graph = Index.restore(str(path))
        if graph is not None:
            graph.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # a search setting, not saved; the stub misses the setter
    except (RuntimeError, ValueError, OSError) as exc:
        raise ItemIndexError(f"{path}: unreadable index graph: {exc}") from None
    if graph is None or len(graph) != meta.items or graph.ndim != meta.dim:
        raise ItemIndexError(f"{path}: the graph holds {0 if graph is None else len(graph)} items of dim "
                          f"{0 if graph is None else graph.ndim}, {META} says {meta.items} of dim {meta.dim}")
    return ItemIndex(meta, graph)


def update_from_store(index: ItemIndex, store_dir: str | Path, *, version: int | None = None,
                      scratch: str | Path | None = None) -> tuple[ItemIndex, dict[str, Any]]:
    """The index moved to `version` (default: current) of a store: by a delta export when the version is of the
    index's generation and its own version is still in the store, else by a rebuild. The delta is written to
    `scratch` (a temporary directory by default), never into the store."""
    import tempfile

    from accrete.pipeline.exports import export_delta

    store = Store(store_dir)
    target = store.require_current() if version is None else version
    if target == index.version:
        return index, {"from_version": index.version, "version": target, "rebuilt": False, "inserted": 0,
                       "replaced": 0, "removed": 0, "bias_only": 0}
    if target < index.version:
        raise ItemIndexError(f"the index reflects version {index.version}, newer than version {target} of {store_dir}")
    same_generation = (index.version in store.versions()
                       and store.read_manifest(target).generation == index.meta.generation
                       and store.read_manifest(index.version).generation == index.meta.generation)
    if same_generation:
        with tempfile.TemporaryDirectory(dir=scratch, prefix="accrete-delta-") as tmp:
            path = Path(tmp) / "delta.parquet"
            export_delta(store_dir, path, since=index.version, version=target)
            try:
                updated, done = index.apply_delta(read_delta(path))
                return updated, {**done, "rebuilt": False}
            except IndexRebuildNeeded:
                pass
    rebuilt = build_from_store(store_dir, version=target)
    return rebuilt, {"from_version": index.version, "version": target, "rebuilt": True, "items": len(rebuilt)}


def read_delta(path: str | Path) -> pa.Table:
    """The item rows of a delta export (what `apply_delta` reads; user rows, most of a nightly delta, are skipped)."""
    import pyarrow.parquet as pq

    try:
        # A plain read and an in-memory filter: pyarrow's `filters=` goes through the dataset layer, slower here.
        table = pq.ParquetFile(path).read(columns=["entity", "row", "vector", "change", "vector_changed"])
        return table.filter(pc.equal(table["entity"], "item"))
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise ItemIndexError(f"{path}: not a readable delta export: {exc}") from None


def export_meta(table: pa.Table) -> dict[str, Any]:
    """The `accrete` metadata of an export (`pipeline.exports`)."""
    raw = (table.schema.metadata or {}).get(b"accrete")
    if raw is None:
        raise ItemIndexError("not an accrete export (no 'accrete' key in its Parquet metadata)")
    return dict(json.loads(raw))


def _vectors(table: pa.Table, dim: int) -> np.ndarray:
    column = table["vector"].combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if len(table) and flat.size != len(table) * dim:
        raise ItemIndexError(f"the delta's vectors have {flat.size // max(len(table), 1)} values, the index's dim is {dim}")
    return flat.reshape(len(table), dim)


def _read_meta(directory: Path) -> IndexMeta:
    path = directory / META
    try:
        raw = json.loads(path.read_text())
        return IndexMeta(**raw)
    except FileNotFoundError:
        raise ItemIndexError(f"{path}: no index here; build one with `accrete index build`") from None
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ItemIndexError(f"{path}: damaged index metadata: {exc}") from None
