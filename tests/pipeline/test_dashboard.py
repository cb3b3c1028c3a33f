"""The drift dashboard, built from a real backfill on the synthetic world and opened in a real browser."""
from __future__ import annotations

import base64
import html
import html.parser
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from accrete.pipeline import contract
from accrete.pipeline.config import AccreteConfig
from accrete.pipeline.dashboard import (PANELS, build_dashboard, collect_dashboard_data, dashboard_server, project_embeddings,
                                quality_figure)
from accrete.pipeline.decision import read_drift_history
from accrete.pipeline.errors import StoreError
from accrete.pipeline.retrain import run_full_retrain
from accrete.pipeline.incremental import run_incremental_step
from accrete.pipeline.store import Store
from accrete.pipeline.synthetic import generate_world

SMALL = AccreteConfig().replace(model={"dim": 8}, train={"epochs": 1, "retrain_epochs": 2, "batch_size": 256})
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


# ----- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("world") / "data"
    generate_world(data, days=10, seed=0, initial_users=300, initial_items=200, new_users_per_day=10,
                   new_items_per_day=5, interactions_per_day=800, initial_interactions=6000, shift_day=6)
    return data


@pytest.fixture(scope="module")
def backfill(world, tmp_path_factory) -> Path:
    """A store after a bootstrap retrain and a nightly step per following day, retraining when due."""
    store = tmp_path_factory.mktemp("backfill") / "store"
    dates = contract.list_partitions(world)
    run_full_retrain(world, store, as_of=dates[0], config=SMALL, reason="bootstrap")
    for date in dates[1:]:
        result = run_incremental_step(world, store, config=SMALL)
        assert result.kind == "incremental" and result.date == date
        if result.manifest["drift"]["retrain"]:
            reasons = result.manifest["drift"]["reasons"]
            run_full_retrain(world, store, as_of=date, config=SMALL,
                             reason="; ".join(reasons) if isinstance(reasons, list) else reasons)
    return store


@pytest.fixture(scope="module")
def dashboard(backfill, tmp_path_factory) -> Path:
    return build_dashboard(backfill, tmp_path_factory.mktemp("out") / "nested" / "dashboard.html")


@pytest.fixture(scope="module")
def page(dashboard) -> "Page":
    return Page(dashboard.read_text(encoding="utf-8"))


# ----- reading the page back -------------------------------------------------------------------------------
class _Sections(html.parser.HTMLParser):
    """Collects each `<section>`'s attributes and its table rows' attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, str | None]] = {}
        self.rows: list[dict] = []
        self._row: dict | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("id"):
            self.sections[attrs["id"]] = attrs
        if tag == "tr" and "data-kind" in attrs:
            self._row = {"kind": attrs["data-kind"], "cells": [], "classes": []}
        if tag == "td" and self._row is not None:
            self._cell = []
            self._row["classes"].append(attrs.get("class") or "")
        if tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


def _decode(value):
    """Plotly's JSON arrays are either lists or base64 typed arrays ({"dtype", "bdata"})."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return array.reshape(value["shape"]) if "shape" in value and isinstance(value["shape"], list) else array
    return value


class Page:
    """A built dashboard: its sections, its decision-log rows and each chart's traces."""

    def __init__(self, text: str):
        self.text = text
        parser = _Sections()
        parser.feed(text)
        self.sections = parser.sections
        self.log_rows = parser.rows

    def traces(self, chart: str) -> list[dict]:
        match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(chart) + r'",\s*', self.text)
        assert match, f"no Plotly figure {chart} in the page"
        traces, _ = json.JSONDecoder().raw_decode(self.text, match.end())
        for trace in traces:
            for key in ("x", "y", "hovertext", "customdata"):
                if key in trace:
                    trace[key] = _decode(trace[key])
        return traces

    def section_text(self, panel: str) -> str:
        start = self.text.index(f'<section id="panel-{panel}"')
        return self.text[start:self.text.index("</section>", start)]


def _named(traces: list[dict], name: str) -> list[dict]:
    return [t for t in traces if t.get("name") == name]


def _finite(values) -> np.ndarray:
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


# ----- content --------------------------------------------------------------------------------------------
def test_every_panel_is_present_with_a_stable_id(page):
    for panel in PANELS:
        assert f"panel-{panel}" in page.sections, panel
        assert page.sections[f"panel-{panel}"]["data-panel"] == panel


def test_header_names_the_current_version_and_whether_a_retrain_is_due(page, backfill):
    store = Store(backfill)
    manifest = store.manifest()
    header = page.sections["panel-header"]
    assert int(header["data-version"]) == store.current_version()
    assert int(header["data-generation"]) == manifest["generation"]
    due = manifest["kind"] == "incremental" and manifest["drift"]["retrain"]
    assert header["data-retrain-due"] == str(due).lower()
    text = page.section_text("header")
    assert f"partition {manifest['partition']}" in text
    assert manifest["created_at"] in text
    assert f"{manifest['quarantined_rows']:,} input rows quarantined" in text
    assert ("RETRAIN DUE" in text) == due
    reasons = manifest.get("drift", {}).get("reasons", "") if manifest["kind"] == "incremental" else ""
    held = not due and "cooldown:" in reasons
    waiting = not due and not held and "waiting:" in reasons
    assert header["data-retrain-state"] == ("due" if due else "held" if held else "waiting" if waiting else "ok")
    for reason in filter(None, reasons.split("; ")):
        assert html.escape(reason) in text  # every reason of the latest decision is spelled out


def test_drift_panel_plots_each_measured_metric_over_every_step_with_its_threshold(page, backfill):
    history = read_drift_history(Path(backfill) / "drift")
    traces = page.traces("chart-drift")
    measured = [m for m in ("new_user_share", "new_item_share", "psi_item_popularity", "quality_ratio",
                            "stale_row_share", "stale_interaction_share", "days_since_full_retrain",
                            "new_row_norm_ratio") if history[m].notna().any()]
    assert measured
    for metric in measured:
        (trace,) = _named(traces, metric)
        assert list(trace["x"]) == list(history["date"])
        np.testing.assert_allclose(np.array(trace["y"], dtype=np.float64), history[metric].to_numpy(np.float64))
    thresholds = _named(traces, "threshold")
    assert thresholds, "no threshold line"
    psi = float(history["threshold/psi_item_popularity"].dropna().iloc[0])
    assert any(np.allclose(_finite(t["y"]), psi) and len(_finite(t["y"])) == len(history) for t in thresholds)


def test_full_retrains_are_marked_on_every_time_series_with_their_reason_on_hover(page, backfill):
    store = Store(backfill)
    retrains = [store.manifest(v) for v in store.versions() if store.manifest(v)["kind"] == "full_retrain"]
    assert retrains[0]["reason"] == "bootstrap"
    for chart in ("chart-drift", "chart-quality", "chart-growth", "chart-exposure"):
        markers = [t for t in page.traces(chart) if t.get("legendgroup") == "retrain" and t.get("mode") == "markers"]
        assert markers, chart
        for marker in markers:
            assert list(marker["x"]) == [m["partition"] for m in retrains]
            for hover, manifest in zip(marker["hovertext"], retrains):
                assert f"v{manifest['version']}" in hover
                for reason in manifest["reason"].split("; "):
                    assert html.escape(reason, quote=False) in hover


def test_quality_panel_splits_recall_and_ndcg_into_existing_new_user_and_new_item_slices(page, backfill):
    history = read_drift_history(Path(backfill) / "drift")
    traces = page.traces("chart-quality")
    for label, suffix in (("all users", ""), ("existing", "/existing"), ("new users", "/new_users"),
                          ("new items", "/new_items")):
        recall, ndcg = _named(traces, label)
        for trace, column in ((recall, f"quality/recall@10{suffix}"), (ndcg, f"quality/ndcg@10{suffix}")):
            np.testing.assert_allclose(np.array(trace["y"], np.float64), history[column].to_numpy(np.float64))
    assert np.isfinite(np.array(_named(traces, "all users")[0]["y"], np.float64)).all()


def test_growth_panel_shows_new_rows_table_sizes_and_share_added_since_the_retrain(page, backfill):
    store = Store(backfill)
    manifests = [store.manifest(v) for v in store.versions()]
    steps = [m for m in manifests if m["kind"] == "incremental"]
    traces = page.traces("chart-growth")
    (new_items,) = _named(traces, "new items")
    assert list(new_items["y"]) == [m["rows"]["item_new"] for m in steps]
    assert sum(new_items["y"]) > 0
    sizes = [t for t in _named(traces, "items") if "added since retrain" not in t["hovertemplate"]]
    shares = [t for t in _named(traces, "items") if "added since retrain" in t["hovertemplate"]]
    last = manifests[-1]
    assert sizes[0]["y"][-1] == last["rows"]["item"] - 1
    base = last["drift_state"]["rows_at_retrain"]["item"]
    assert np.isclose(shares[0]["y"][-1], (last["rows"]["item"] - base) / (last["rows"]["item"] - 1))


def test_exposure_panel_puts_new_item_exposure_against_interaction_share(page, backfill):
    history = read_drift_history(Path(backfill) / "drift")
    traces = page.traces("chart-exposure")
    (exposure,) = _named(traces, "exposure (top-10 slots)")
    (share,) = _named(traces, "interaction share")
    for trace, column in ((exposure, "quality/new_item_exposure@10"), (share, "quality/new_item_interaction_share")):
        np.testing.assert_allclose(np.array(trace["y"], np.float64), history[column].to_numpy(np.float64))
    assert _finite(share["y"]).max() > 0


def test_embedding_panel_colours_frozen_rows_and_rows_added_in_the_latest_step(page, backfill):
    store = Store(backfill)
    manifest = store.manifest()
    traces = page.traces("chart-embeddings")
    scatter = {t["name"].split(" (")[0]: t for t in traces if t["type"] == "scatter"}
    bars = {t["name"].split(" (")[0]: t for t in traces if t["type"] == "bar"}
    n_items = manifest["rows"]["item"] - 1
    assert sum(len(t["x"]) for t in scatter.values()) == n_items  # small table: every row shown
    assert set(scatter) == set(bars)
    if manifest["kind"] == "incremental":
        assert len(scatter["new in this step"]["x"]) == manifest["rows"]["item_new"]
        assert len(scatter["frozen"]["x"]) == manifest["rows"]["item_trainable_from"] - 1
    for bar in bars.values():
        assert np.isclose(np.sum(bar["y"]), 1.0)  # each group's norm histogram is a distribution


def test_decision_log_lists_every_step_and_retrain_newest_first(page, backfill):
    history = read_drift_history(Path(backfill) / "drift")
    store = Store(backfill)
    retrains = [v for v in store.versions() if store.manifest(v)["kind"] == "full_retrain"]
    rows = page.log_rows
    assert len(rows) == len(history) + len(retrains)
    versions = [int(r["cells"][1].lstrip("v")) for r in rows]
    assert versions == sorted(versions, reverse=True)
    steps = [r for r in rows if r["kind"] == "incremental"]
    for row, (_, record) in zip(steps, history.iloc[::-1].iterrows()):
        assert row["cells"][0] == record["date"]
        assert row["cells"][3] == ("retrain" if record["retrain"] else "continue")
        assert row["cells"][-1] == "\n".join(record["reasons"].split("; "))  # one reason per line, none split
        breached = sum("breach" in c for c in row["classes"])
        assert breached == sum(int(record[c] > 0) for c in history.columns
                               if c.startswith("streak/") and history[c.removeprefix("streak/")].notna().any())


def test_page_is_self_contained_with_plotly_inlined_once(page):
    assert not re.search(r"<script[^>]+src=", page.text)
    assert not re.search(r"<link[^>]+href=", page.text)
    banner = re.findall(r"plotly\.js v\d+\.\d+\.\d+", page.text)
    assert len(banner) == 1, banner
    assert page.text.count("Plotly.newPlot(") == 5


# ----- edges ------------------------------------------------------------------------------------------------
def test_a_store_with_only_its_first_retrain_still_builds_with_empty_panels_explained(world, tmp_path):
    store = tmp_path / "store"
    run_full_retrain(world, store, as_of=contract.list_partitions(world)[0], config=SMALL)
    page = Page(build_dashboard(store, tmp_path / "d.html").read_text())
    assert set(PANELS) <= {s.removeprefix("panel-") for s in page.sections}
    assert "No incremental step yet" in page.section_text("drift")
    assert page.sections["panel-header"]["data-version"] == "1"
    assert len(page.traces("chart-embeddings")) >= 2


def test_building_from_a_missing_store_is_a_store_error_naming_it(tmp_path):
    with pytest.raises(StoreError, match="no-such-store"):
        build_dashboard(tmp_path / "no-such-store", tmp_path / "d.html")


def test_projection_keeps_requested_rows_bounds_points_and_finds_the_main_axis():
    rng = np.random.default_rng(1)
    direction = np.array([3.0, -1.0, 0.5, 0.0]) / np.linalg.norm([3.0, -1.0, 0.5, 0.0])
    vectors = rng.normal(size=(20_000, 1)) * 5 * direction + rng.normal(scale=0.3, size=(20_000, 4))
    keep = np.arange(19_990, 20_000)
    coords, shown, explained = project_embeddings(vectors, max_points=1000, keep_rows=keep, seed=0)
    assert len(shown) == 1000 and len(np.unique(shown)) == 1000
    assert set(keep) <= set(shown)
    centred = vectors[shown] - vectors.mean(axis=0)
    assert abs(np.corrcoef(coords[:, 0], centred @ direction)[0, 1]) > 0.99
    assert explained[0] > 0.9 and explained[1] < 0.1
    again, _, _ = project_embeddings(vectors, max_points=1000, keep_rows=keep, seed=0)
    np.testing.assert_array_equal(coords, again)


def test_server_serves_the_dashboard_and_nothing_else_of_the_store(dashboard, tmp_path):
    copy = tmp_path / "store" / "dashboard.html"
    copy.parent.mkdir()
    shutil.copy(dashboard, copy)
    (copy.parent / "CURRENT").write_text("v000001\n")
    server = dashboard_server(copy, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as response:
            assert response.status == 200
            assert response.read() == copy.read_bytes()
        for path in ("/CURRENT", "/../CURRENT", "/versions/"):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10)
            assert error.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_serving_a_missing_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="build it first"):
        dashboard_server(tmp_path / "absent.html", port=0)


# ----- a real browser -------------------------------------------------------------------------------------
_PROBE = """<script>
window.__accreteErrors = [];
window.addEventListener('error', function (e) { window.__accreteErrors.push('error: ' + (e.message || e)); });
window.addEventListener('unhandledrejection', function (e) { window.__accreteErrors.push('rejection: ' + e.reason); });
(function () { var original = console.error; console.error = function () {
  window.__accreteErrors.push('console.error: ' + Array.prototype.map.call(arguments, String).join(' '));
  return original.apply(console, arguments); }; })();
window.addEventListener('load', function () { setTimeout(function () {
  var charts = {};
  document.querySelectorAll('.plotly-graph-div').forEach(function (gd) {
    var data = gd._fullData || [];
    charts[gd.id] = {traces: data.length,
      points: data.reduce(function (n, t) { return n + (t.x ? t.x.length : 0); }, 0),
      svg_traces: gd.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length,
      svg_points: gd.querySelectorAll('.scatterlayer .point, .barlayer .point').length};
  });
  var out = document.createElement('pre'); out.id = 'accrete-probe';
  out.textContent = JSON.stringify({errors: window.__accreteErrors, charts: charts});
  document.body.appendChild(out);
}, 1500); });
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (apt-get install chromium)")


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_dashboard_renders_in_headless_chromium_without_javascript_errors(dashboard, page, tmp_path):
    binary = _chromium()
    probed = tmp_path / "probed.html"
    probed.write_text(page.text.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    result = _run_chromium(binary, tmp_path / "profile", "--virtual-time-budget=15000", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="accrete-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the probe never ran; chromium said: {result.stderr[-2000:]}"
    report = json.loads(html.unescape(match.group(1)))
    assert report["errors"] == []
    charts = report["charts"]
    assert set(charts) == {"chart-drift", "chart-quality", "chart-growth", "chart-exposure", "chart-embeddings"}
    for chart, drawn in charts.items():
        expected = page.traces(chart)
        assert drawn["traces"] == len(expected), chart
        assert drawn["svg_traces"] == len(expected), chart
        assert drawn["svg_points"] > 0 and drawn["points"] > 0, chart

    screenshot = tmp_path / "dashboard.png"
    result = _run_chromium(binary, tmp_path / "profile-shot", "--virtual-time-budget=15000",
                           f"--screenshot={screenshot}", "--window-size=1400,4000", dashboard.as_uri())
    assert screenshot.is_file(), result.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 50_000  # a blank page compresses to a few kB
    keep = os.environ.get("ACCRETE_DASHBOARD_SCREENSHOT")  # to look at it: set a path to copy it to
    if keep:
        shutil.copy(screenshot, keep)


def test_a_long_quality_history_is_drawn_with_its_trailing_mean(backfill):
    data = collect_dashboard_data(backfill)
    traces = quality_figure(data, smoothing=3).data
    raw = np.asarray([t for t in traces if t.name == "new users"][0].y, np.float64)
    (mean,) = [t for t in traces if t.name == "new users · 3-period mean" and t.yaxis == "y"]
    windows = [raw[max(0, i - 2):i + 1] for i in range(len(raw))]
    expected = [np.nanmean(w) if np.isfinite(w).any() else np.nan for w in windows]
    np.testing.assert_allclose(np.asarray(mean.y, np.float64), expected)
    short = quality_figure(data, smoothing=7).data  # 10 periods < 3 x 7: daily lines only
    assert not [t for t in short if "mean" in str(t.name)]
