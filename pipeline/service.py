"""The lookup service: `/recommend`, `/similar`, `/health` and `/version` over HTTP, from the published version.

It reads a store like any downstream consumer and never writes to it. At start it loads the current version
(tables, vocabularies, the seen-items CSR) and its ANN index (loaded from an index directory, or built). A
background thread then follows `CURRENT`: when a new version is published it loads it and moves the index by the
version's delta export (a rebuild when the delta crosses a full retrain or its base version was collected), and
only then switches, by replacing one reference. A request reads that reference once and answers entirely from
the version it got, so a switch never fails or mixes a request. If loading a version fails (a version deleted
under it, a damaged file), the service keeps answering from the version it has and reports the error in
`/health`; it tries again at the next publish.

Answers are `pipeline.recommend`'s: the two-stage top-K with seen items excluded; an unknown user gets the
time-aware popular list with `"fallback": true`. A bad parameter is a 400 with one line in `error`; an unknown
item a 404. No training code is imported here (no TensorFlow).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from accrete.pipeline import index as item_index
from accrete.pipeline import recommend, two_stage
from accrete.pipeline.errors import AccreteError
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.store import Store
from accrete.pipeline.vocabulary import Vocabulary

#: The longest list a request may ask for.
MAX_K = 1000
#: How often the follower reads CURRENT (seconds).
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class LoadedVersion:
    """One version, ready to answer: everything a request needs, never changed after it is built."""

    version: int
    generation: int
    kind: str
    objective: str
    user_vocab: Vocabulary
    item_vocab: Vocabulary
    ranker: two_stage.TwoStageRanker
    seen: sp.csr_matrix
    unit_items: np.ndarray
    index: item_index.ItemIndex
    index_update: dict[str, Any]
    load_seconds: float
    loaded_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "generation": self.generation, "scoring": self.kind,
                "objective": self.objective, "users": len(self.user_vocab) - 1, "items": len(self.item_vocab) - 1,
                "candidates": self.ranker.c, "index": {"version": self.index.version, "items": len(self.index),
                                                       "library": self.index.meta.library, **self.index_update},
                "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 3)}


def load_version(store: Store, version: int | None = None, *, previous: item_index.ItemIndex | None = None,
                 c: int = two_stage.DEFAULT_C) -> LoadedVersion:
    """Load a version and the index that reflects it: `previous` moved by the delta (or rebuilt), else a build."""
    began = time.perf_counter()
    state = store.load(version)
    if previous is None:
        index = item_index.build_for_state(state, threads=1)
        update: dict[str, Any] = {"rebuilt": True}
    else:
        index, update = item_index.update_from_store(previous, store.root, version=state.version)
    if index.version != state.version:
        raise item_index.ItemIndexError(f"index at version {index.version}, store at {state.version}")
    manifest = Manifest.from_dict(state.manifest)
    seen = recommend.seen_items(store, state)
    loaded = LoadedVersion(
        version=state.version, generation=manifest.generation, kind=index.meta.kind, objective=str(state.manifest["objective"]),
        user_vocab=state.user_vocab, item_vocab=state.item_vocab, ranker=recommend.ranker(state, index, c),
        seen=seen, unit_items=recommend.unit_vectors(state.item_vectors), index=index, index_update=update,
        load_seconds=time.perf_counter() - began)
    return loaded


class Service:
    """The answers, from the version currently loaded, and the thread that follows `CURRENT`."""

    def __init__(self, store_dir: str | Path, *, index_dir: str | Path | None = None, c: int = two_stage.DEFAULT_C,
                 poll_seconds: float = POLL_SECONDS):
        self.store = Store(store_dir)
        self.c = c
        self.poll_seconds = poll_seconds
        start_index = item_index.load(index_dir) if index_dir is not None else None
        self.current = load_version(self.store, previous=start_index, c=c)
        _release_freed_memory()
        self.last_error: str | None = None
        self._failed_version: int | None = None
        self.switches = 0
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    # ----- following CURRENT -----------------------------------------------------------------------
    def start(self) -> None:
        if self._follower is None:
            self._follower = threading.Thread(target=self._follow, name="accrete-follow-current", daemon=True)
            self._follower.start()

    def stop(self) -> None:
        self._stop.set()
        if self._follower is not None:
            self._follower.join(timeout=30)

    def refresh(self) -> bool:
        """Load the published version if it is not the one served; True when it switched."""
        published = self.store.require_current()
        serving = self.current
        if published == serving.version:
            return False
        loaded = load_version(self.store, published, previous=serving.index, c=self.c)
        self.current = loaded  # the switch: one reference; requests in flight keep the version they read
        del serving, loaded
        _release_freed_memory()
        self.switches += 1
        self.last_error = None
        return True

    def poll(self) -> None:
        """One look at `CURRENT` (the follower's loop body): switch if it moved. On a failure keep serving the
        loaded version and record the error; a version that failed to load (a damaged file) is not reloaded
        until another one is published, a passing failure (a file being replaced) is retried at the next poll."""
        published: int | None = None
        try:
            published = self.store.require_current()
            if published == self._failed_version:
                return
            self.refresh()
        except (AccreteError, OSError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._failed_version = published if isinstance(exc, AccreteError) else None

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    # ----- answers --------------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int) -> dict[str, Any]:
        served = self.current
        row = int(served.user_vocab.lookup([user_id])[0])
        if row == 0:
            rows, scores = served.ranker.fallback(k)
            fallback = True
        else:
            top_rows, top_scores = served.ranker.top_k(np.array([row]), k, served.seen)
            rows, scores, fallback = top_rows[0], top_scores[0], False
        return {"user": user_id, "version": served.version, "fallback": fallback,
                "items": _items(served.item_vocab, rows, scores)}

    def similar(self, item_id: str, k: int) -> dict[str, Any]:
        served = self.current
        row = int(served.item_vocab.lookup([item_id])[0])
        if row == 0:
            raise recommend.UnknownIdError(f"unknown item id {item_id!r} (not in version {served.version})")
        rows, scores = recommend.nearest_items(served.unit_items, row, k)
        return {"item": item_id, "version": served.version, "items": _items(served.item_vocab, rows, scores)}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "version": self.current.version, "switches": self.switches,
                "last_error": self.last_error}

    def describe(self) -> dict[str, Any]:
        return {**self.current.describe(), "store": str(self.store.root), "rss_bytes": rss_bytes(),
                "peak_rss_bytes": rss_bytes("VmHWM")}


def _release_freed_memory() -> None:
    """Hand back to the system what loading a version freed. Arrow's allocator keeps freed buffers for reuse: after
    the 12-month synthetic year's history was read into the seen-items matrix, the service held 767 MB of which
    it needed 272 MB."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _items(vocab: Vocabulary, rows: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    keep = rows > 0  # -1 pads a list shorter than k
    ids = vocab.id_of(rows[keep]).to_pylist()
    return [{"rank": rank + 1, "item_id": item, "score": float(score)}
            for rank, (item, score) in enumerate(zip(ids, scores[keep]))]


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now (`VmRSS`) or at its peak (`VmHWM`), Linux; 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def create_app(service: Service) -> Any:
    """The FastAPI application over a `Service` (starts and stops its follower with the server)."""
    import contextlib

    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="accrete", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_message(exc.errors())}, status_code=400)

    @app.exception_handler(recommend.UnknownIdError)
    async def unknown_id(request: Request, exc: recommend.UnknownIdError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.get("/recommend")
    def get_recommend(user: str = Query(min_length=1), k: int = Query(10, ge=1, le=MAX_K)) -> dict[str, Any]:
        return service.recommend(user, k)

    @app.get("/similar")
    def get_similar(item: str = Query(min_length=1), k: int = Query(10, ge=1, le=MAX_K)) -> dict[str, Any]:
        return service.similar(item, k)

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return service.health()

    @app.get("/version")
    def get_version() -> dict[str, Any]:
        return service.describe()

    return app


def _one_message(errors: Any) -> str:
    """The first validation error as one line: `k: must be an integer from 1 to 1000 (got 'x')`."""
    first = list(errors)[0] if errors else {}
    name = str(first.get("loc", ("", "parameter"))[-1])
    kind = first.get("type", "")
    given = first.get("input")
    if kind == "missing":
        return f"{name}: required"
    if name == "k":
        return f"k: must be an integer from 1 to {MAX_K} (got {given!r})"
    return f"{name}: {first.get('msg', 'invalid')} (got {given!r})"


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve `service` on host:port until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning", access_log=False,
                            lifespan="on")
    uvicorn.Server(config).run()
