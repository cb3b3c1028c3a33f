"""The ANN index over item keys: built from a version, moved by delta exports, rebuilt across a full retrain; the
two-stage top-K it feeds agrees with exact full ranking, for both scoring kinds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from accrete.pipeline import evaluation, recommend, scoring, two_stage
from accrete.pipeline import index as item_index
from accrete.pipeline.config import AccreteConfig
from tests.pipeline.conftest import build_two_generations
from accrete.pipeline.exports import export_delta, read_export
from accrete.pipeline.store import Store

#: A fixed time-aware term (weight 5), so that every night changes the term of the items with interactions.
# Solved user vectors ("dot" scoring); the "cosine" kind is the same tables marked so (`as_cosine`).
WITH_TERM = AccreteConfig().replace(model={"dim": 8, "recency_weight_candidates": [], "user_policy": "refold_active"})


@pytest.fixture(scope="module")
def two_generations(gen_world, tmp_path_factory) -> Path:
    """v1 retrain (generation 1), v2-v3 steps, v4 retrain as of the third day (generation 2), v5-v6 steps, with
    the time-aware term on. Read-only: tests copy it."""
    return build_two_generations(gen_world, tmp_path_factory.mktemp("two-generations-term") / "store", WITH_TERM)


@pytest.fixture
def gen_store(two_generations, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(two_generations, copy)
    return copy


def as_cosine(store_dir: Path) -> Path:
    """Mark every version of a store as scored by cosine (`scoring.kind_of` reads the manifest's `scoring`)."""
    for manifest in (store_dir / "versions").glob("v*/manifest.json"):
        raw = json.loads(manifest.read_text())
        raw["scoring"] = {"kind": "cosine"}
        manifest.write_text(json.dumps(raw))
    return store_dir


@pytest.fixture(params=["dot", "cosine"])
def kind_store(request, two_generations, tmp_path) -> Path:
    """The two-generation store (v1-v3 generation 1, v4-v6 generation 2), scored by each kind."""
    copy = tmp_path / "store"
    shutil.copytree(two_generations, copy)
    return as_cosine(copy) if request.param == "cosine" else copy


def delta(store: Path, since: int, version: int, tmp_path: Path):
    path = tmp_path / f"delta-{since}-{version}.parquet"
    export_delta(store, path, since=since, version=version)
    return read_export(path)


def agreement(store: Path, version: int, index: item_index.ItemIndex | None, c: int = two_stage.DEFAULT_C) -> float:
    """Mean top-10 overlap of the two-stage ranking with the evaluation's exact full ranking, over every user."""
    s = Store(store)
    state = s.load(version)
    seen = recommend.seen_items(s, state)
    users = np.arange(1, len(state.user_vectors))
    exact, _ = evaluation.top_k_excluding_seen(recommend.scorer(state), users, 10, seen)
    rows, _ = recommend.ranker(state, index, c).top_k(users, 10, seen)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact)]))


def test_index_updated_by_deltas_holds_the_rebuilds_items_and_keeps_agreement(kind_store, tmp_path):
    store = Store(kind_store)
    index = item_index.build_from_store(kind_store, version=1)
    assert index.meta.kind == scoring.kind_of(store.load(1).manifest)
    for version in (2, 3):
        index, done = index.apply_delta(delta(kind_store, version - 1, version, tmp_path))
        state = store.load(version)
        assert index.version == version and len(index) == len(state.item_vectors) - 1
        # Bias-only rows (the time-aware term) are left alone: only the added items went in.
        assert done["inserted"] == state.manifest["rows"]["item_new"] and done["replaced"] == 0
        assert done["bias_only"] > 0
    rebuilt = item_index.build_from_store(kind_store, version=3)
    keys = recommend.version_scoring(store.load(3)).keys
    everything = len(keys) - 1
    assert set(np.asarray(index.graph.keys).tolist()) == set(range(1, len(keys)))  # every item held, no stale row
    # Reachable by search, asking for every item from every item: an HNSW graph after inserts may leave a node or two
    # off every beam (seen: 1-2 of 200), which the exact rescoring of the two-stage ranker does not need.
    got = index.search(keys[1:], everything)
    assert len(set(np.unique(got)) - {-1}) >= 0.98 * everything
    assert agreement(kind_store, 3, index) >= 0.99
    assert agreement(kind_store, 3, rebuilt) >= 0.99
    assert agreement(kind_store, 3, None) >= 0.99


def test_the_index_search_finds_the_exact_top_by_key(kind_store):
    state = Store(kind_store).load(3)
    index = item_index.build_for_state(state)
    version = recommend.version_scoring(state)
    queries = version.queries[1:]
    exact = np.argsort(-(queries @ version.keys[1:].T), axis=1)[:, :20] + 1
    found = index.search(queries, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, exact)])
    assert recall >= 0.98
    if version.kind == "cosine":
        np.testing.assert_allclose(np.linalg.norm(version.keys[1:], axis=1), 1.0, rtol=1e-5)


def test_a_delta_that_does_not_start_at_the_index_version_is_refused(gen_store, tmp_path):
    index = item_index.build_from_store(gen_store, version=1)
    with pytest.raises(item_index.ItemIndexError, match="goes from version 2 to 3, but the index reflects version 1"):
        index.apply_delta(delta(gen_store, 2, 3, tmp_path))
    full = tmp_path / "full.parquet"
    from accrete.pipeline.exports import export_version

    export_version(gen_store, full, version=2)
    with pytest.raises(item_index.ItemIndexError, match="not a delta export"):
        index.apply_delta(read_export(full))


def test_a_delta_across_a_full_retrain_asks_for_a_rebuild_and_the_store_update_rebuilds(gen_store, tmp_path):
    index = item_index.build_from_store(gen_store, version=3)
    with pytest.raises(item_index.IndexRebuildNeeded, match="generation 1 -> 2"):
        index.apply_delta(delta(gen_store, 3, 4, tmp_path))
    moved, done = item_index.update_from_store(index, gen_store, version=4, scratch=tmp_path)
    assert done["rebuilt"] and moved.version == 4 and moved.meta.generation == 2
    moved, done = item_index.update_from_store(moved, gen_store, scratch=tmp_path)  # v4 -> v6, one delta
    assert not done["rebuilt"] and moved.version == 6 and done["inserted"] > 0
    assert not list(tmp_path.glob("accrete-delta-*")), "the scratch delta is removed"
    assert agreement(gen_store, 6, moved) >= 0.99


def test_a_saved_index_loads_with_the_same_answers_and_keeps_one_graph_file(gen_store, tmp_path):
    out = tmp_path / "index"
    index = item_index.build_from_store(gen_store, version=4)
    index.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "items-v000004.usearch"]
    moved, _ = index.apply_delta(delta(gen_store, 4, 5, tmp_path))
    moved.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "items-v000005.usearch"]
    loaded = item_index.load(out)
    assert loaded.version == 5 and loaded.meta == moved.meta
    queries = recommend.version_scoring(Store(gen_store).load(5)).queries[1:50]
    np.testing.assert_array_equal(loaded.search(queries, 10), moved.search(queries, 10))


def test_a_missing_or_damaged_index_is_one_clear_error(gen_store, tmp_path):
    with pytest.raises(item_index.ItemIndexError, match="no index here"):
        item_index.load(tmp_path / "nothing")
    out = item_index.build_from_store(gen_store).save(tmp_path / "index")
    (out / "index.json").write_text("{not json")
    with pytest.raises(item_index.ItemIndexError, match="damaged index metadata"):
        item_index.load(out)


def test_exports_record_the_scoring_kind_and_generation(kind_store, tmp_path):
    path = tmp_path / "d.parquet"
    export_delta(kind_store, path, since=4, version=5)
    meta = json.loads(pq.read_schema(path).metadata[b"accrete"])
    assert meta["scoring"] == scoring.kind_of(Store(kind_store).load(5).manifest) and meta["generation"] == 2
    assert ("/ |item.vector|" in meta["score"]) == (meta["scoring"] == "cosine")


def test_two_stage_equals_exact_ranking_when_every_item_is_a_candidate(gen_store):
    s = Store(gen_store)
    state = s.load()
    seen = recommend.seen_items(s, state)
    users = np.arange(1, len(state.user_vectors))
    exact_rows, exact_scores = evaluation.top_k_excluding_seen(recommend.scorer(state), users, 10, seen)
    rows, scores = recommend.ranker(state, None, c=len(state.item_vectors)).top_k(users, 10, seen)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)
    # No seen item is ever recommended, however small C is.
    small, _ = recommend.ranker(state, None, c=1).top_k(users, 10, seen)
    assert not any(seen[u, r] for u, row in zip(users, small) for r in row if r > 0)


def test_the_fallback_is_the_top_items_by_the_time_aware_term(gen_store):
    state = Store(gen_store).load()
    rows, scores = recommend.ranker(state).fallback(5)
    expected = np.argsort(-state.item_bias[1:], kind="stable")[:5] + 1
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(scores, state.item_bias[expected])
    answer = recommend.recommend(gen_store, "nobody-at-all", 5)
    assert answer.fallback and [a["row"] for a in answer] == expected.tolist()
