"""The lookup service over real HTTP on 127.0.0.1: its answers, its errors, the unknown-user fallback, and the
switch to newly published versions while clients keep asking."""
from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from accrete.pipeline import contract, recommend, service
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

# Solved user vectors ("dot" scoring); the "cosine" kind is the same tables marked so (`as_cosine`).
WITH_TERM = AccreteConfig().replace(model={"dim": 8, "recency_weight_candidates": [], "user_policy": "refold_active"})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("serving-world") / "data"
    generate_world(data, days=10, seed=11, initial_users=300, initial_items=200, new_users_per_day=10,
                   new_items_per_day=5, interactions_per_day=600, initial_interactions=5000)
    return data


@pytest.fixture(scope="module")
def first_version(world, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("serving-store") / "store"
    run_full_retrain(world, store, contract.list_partitions(world)[0], config=WITH_TERM)
    run_incremental_step(world, store, config=WITH_TERM)
    return store


@pytest.fixture
def store(first_version, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(first_version, copy)
    return copy


@contextlib.contextmanager
def serving(svc: service.Service) -> Iterator[str]:
    """The service's app under uvicorn on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(service.create_app(svc), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def as_cosine(store_dir: Path) -> Path:
    """Mark every version of a store as scored by cosine (`scoring.kind_of` reads the manifest's `scoring`)."""
    for manifest in (store_dir / "versions").glob("v*/manifest.json"):
        raw = json.loads(manifest.read_text())
        raw["scoring"] = "cosine"
        manifest.write_text(json.dumps(raw))
    return store_dir


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_answers_match_accrete_recommend_and_exclude_seen_items(store, kind):
    if kind == "cosine":
        as_cosine(store)
    s = Store(store)
    state = s.load()
    seen = recommend.seen_items(s, state)
    users = state.user_vocab.ids.to_pylist()[1:40]
    with serving(service.Service(store)) as url, httpx.Client(base_url=url) as client:
        for user in users:
            answer = client.get("/recommend", params={"user": user, "k": 7}).json()
            expected = recommend.recommend(store, user, 7)
            assert answer["fallback"] is False and answer["version"] == state.version
            assert [a["item_id"] for a in answer["items"]] == [e["item_id"] for e in expected]
            row = int(state.user_vocab.lookup([user])[0])
            rows = state.item_vocab.lookup([a["item_id"] for a in answer["items"]])
            assert not seen[row, rows].toarray().any()
        assert client.get("/version").json()["scoring"] == kind
        item = state.item_vocab.ids[3].as_py()
        similar = client.get("/similar", params={"item": item, "k": 5}).json()
        assert [a["item_id"] for a in similar["items"]] == [e["item_id"] for e in recommend.similar(store, item, 5)]


def test_an_unknown_user_gets_the_time_aware_popular_list_marked_as_a_fallback(store):
    state = Store(store).load()
    expected = (np.argsort(-state.item_bias[1:], kind="stable")[:5] + 1).tolist()
    with serving(service.Service(store)) as url:
        answer = httpx.get(f"{url}/recommend", params={"user": "never-seen", "k": 5}).json()
    assert answer["fallback"] is True and answer["user"] == "never-seen"
    assert [a["item_id"] for a in answer["items"]] == state.item_vocab.id_of(np.array(expected)).to_pylist()
    assert [a["score"] for a in answer["items"]] == pytest.approx(state.item_bias[expected].tolist())


@pytest.mark.parametrize("path, params, status, message", [
    ("/recommend", {"user": "1", "k": "abc"}, 400, "k: must be an integer from 1 to 1000 (got 'abc')"),
    ("/recommend", {"user": "1", "k": "0"}, 400, "k: must be an integer from 1 to 1000 (got '0')"),
    ("/recommend", {"user": "1", "k": "1001"}, 400, "k: must be an integer from 1 to 1000 (got '1001')"),
    ("/recommend", {"k": "3"}, 400, "user: required"),
    ("/recommend", {"user": "", "k": "3"}, 400, "user: "),
    ("/similar", {"item": "no-such-item"}, 404, "unknown item id 'no-such-item'"),
    ("/similar", {}, 400, "item: required"),
])
def test_bad_parameters_get_a_4xx_with_one_clear_message(store, path, params, status, message):
    with serving(service.Service(store)) as url:
        response = httpx.get(url + path, params=params)
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"] and body["error"].startswith(message) and "\n" not in body["error"]


def test_health_and_version_describe_what_is_served(store):
    with serving(service.Service(store)) as url:
        health = httpx.get(f"{url}/health").json()
        version = httpx.get(f"{url}/version").json()
    current = Store(store).require_current()
    assert health == {"status": "ok", "version": current, "switches": 0, "last_error": None}
    assert version["version"] == current and version["scoring"] == "dot" and version["objective"] == "ials"
    assert version["index"]["version"] == current and version["index"]["items"] == version["items"] > 0
    assert version["rss_bytes"] > 0


def test_a_version_the_follower_cannot_load_leaves_the_served_one_answering(store, world):
    svc = service.Service(store)
    served = svc.current.version
    run_incremental_step(world, store, config=WITH_TERM)
    s = Store(store)
    s.part_segments(s.require_current(), "item_vectors")[-1].write_bytes(b"damaged")  # the new version's patch
    with pytest.raises(Exception, match="checksum mismatch"):
        svc.refresh()
    svc.poll()
    assert svc.current.version == served and "checksum mismatch" in (svc.last_error or "")
    assert svc.recommend("never-seen", 3)["version"] == served


@pytest.mark.slow
def test_the_switch_under_load_fails_no_request_and_follows_every_publish(store, world):
    """Eight clients ask without pause while six nightly steps and a full retrain are published."""
    svc = service.Service(store, poll_seconds=0.1)
    state = Store(store).load()
    users = [*state.user_vocab.ids.to_pylist()[1:50], "never-seen"]
    items = state.item_vocab.ids.to_pylist()[1:20]
    failures: list[str] = []
    seen_versions: list[list[int]] = [[] for _ in range(8)]
    done = threading.Event()

    def client(number: int, url: str) -> None:
        rng = np.random.default_rng(number)
        with httpx.Client(base_url=url, timeout=30) as http:
            while not done.is_set():
                if rng.random() < 0.8:
                    response = http.get("/recommend", params={"user": users[rng.integers(len(users))], "k": 10})
                else:
                    response = http.get("/similar", params={"item": items[rng.integers(len(items))], "k": 5})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                else:
                    seen_versions[number].append(response.json()["version"])

    dates = contract.list_partitions(world)
    with serving(svc) as url:
        threads = [threading.Thread(target=client, args=(n, url)) for n in range(8)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(4):
                run_incremental_step(world, store, config=WITH_TERM)
                time.sleep(0.3)
            run_full_retrain(world, store, dates[5], config=WITH_TERM)  # a new generation: the index is rebuilt
            time.sleep(0.3)
            run_incremental_step(world, store, config=WITH_TERM)
            final = Store(store).require_current()
            deadline = time.monotonic() + 60
            while svc.current.version != final and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.3)
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=60)
        described = httpx.get(f"{url}/version").json()
    assert failures == []
    assert svc.current.version == final and svc.last_error is None
    assert all(versions == sorted(versions) for versions in seen_versions)  # a client never goes back
    answered = {v for versions in seen_versions for v in versions}
    assert min(answered) == state.version and max(answered) == final and len(answered) >= 3
    assert described["generation"] == 2 and described["index"]["rebuilt"] is False  # the last step: a delta
