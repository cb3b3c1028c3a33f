"""The drift dashboard: one self-contained HTML page the team reads each morning.

It answers, at a glance, "is the model still fine, and if not, why": the header says which version is
current and whether a full retrain is due (with the decision's reasons); the panels below show each
drift metric against its threshold, prequential quality by slice, table growth, new-item exposure, the
latest item embeddings, and the decision log. Everything comes from what the pipeline already persisted:
the drift history (`pipeline.decision.read_drift_history`), the version manifests and the current
version's item table. Charts are Plotly figures; plotly.js is inlined once so the page opens offline.
`serve_dashboard` serves that one file on loopback (and nothing else of the store).
"""
from __future__ import annotations

import datetime as dt
import functools
import html
import http.server
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from accrete.pipeline.atomic import write_text_atomically
from accrete.pipeline.decision import THRESHOLD_DIRECTIONS, read_drift_history
from accrete.pipeline.drift import METRIC_KEYS
from accrete.pipeline.errors import StoreError
from accrete.pipeline.manifest import Manifest
from accrete.pipeline.store import DRIFT, Store

#: Panels of the page, in order; each is ``<section id="panel-<name>" data-panel="<name>">``.
PANELS: tuple[str, ...] = ("header", "drift", "quality", "growth", "exposure", "embeddings", "decisions")

#: Points drawn in the embedding scatter at most (a uniform sample beyond; the newest rows are kept).
MAX_EMBEDDING_POINTS = 5000
#: Periods of the trailing mean drawn over the (noisy) daily quality slices of a long history.
QUALITY_SMOOTHING = 7
#: Bins of the embedding-norm histograms.
NORM_BINS = 40

_SLICES = (("", "all users", "#222222"), ("/existing", "existing", "#1f77b4"),
           ("/new_users", "new users", "#ff7f0e"), ("/new_items", "new items", "#2ca02c"),
           ("/young_items", "young items", "#9467bd"), ("/young_items/control", "young items, popularity", "#c5b0d5"),
           ("/control", "popularity control", "#7f7f7f"))
_RETRAIN_COLOR = "#d62728"
_BREACH_COLOR = "#d62728"
_OK_COLOR = "#1f77b4"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# ----- gathering the inputs ----------------------------------------------------------------------------
@dataclass
class EmbeddingView:
    """A 2-D PCA picture of one version's item table, plus every row's norm and group.

    Attributes:
        version: the store version the table belongs to.
        kind: that version's kind ("incremental" or "full_retrain").
        coords: `[m, 2]` projections of the displayed rows on the first two principal axes.
        shown_rows: the `m` displayed item rows (a subsample of at most `MAX_EMBEDDING_POINTS`).
        shown_ids: their item IDs; shown_created: their creation dates (ISO strings).
        norms: the L2 norm of every item row (row 0 excluded), aligned with `groups`.
        groups: the group label of every item row (row 0 excluded).
        explained: the share of variance on each of the two axes.
        n_rows: item rows in the table (row 0 excluded).
    """

    version: int
    kind: str
    coords: np.ndarray
    shown_rows: np.ndarray
    shown_ids: np.ndarray
    shown_created: np.ndarray
    norms: np.ndarray
    groups: np.ndarray
    explained: np.ndarray
    n_rows: int


@dataclass
class DashboardData:
    """Everything the page shows, gathered from a store.

    Attributes:
        store: the store's resolved path (shown in the header).
        history: the drift history, one row per incremental step of the published lineage (sorted by
            date, then version); see `pipeline.decision.read_drift_history`.
        versions: one row per published version: version, parent, generation, kind, date (its
            partition), created_at, reason, retrain, reasons, user/item rows (row 0 excluded), new rows,
            share of each table added since the last full retrain.
        current: the current version's manifest.
        embedding: the current version's item-table picture (None when the table is empty).
    """

    store: str
    history: pd.DataFrame
    versions: pd.DataFrame
    current: Manifest
    embedding: EmbeddingView | None


def _version_row(manifest: Manifest) -> dict[str, Any]:
    """The dashboard's summary of one manifest (one row of `DashboardData.versions`)."""
    rows = manifest.rows
    at_retrain = manifest.drift_state.rows_at_retrain
    summary: dict[str, Any] = {
        "version": manifest.version, "parent": manifest.parent,
        "generation": manifest.generation, "kind": manifest.kind,
        "date": manifest.partition or manifest.extra.get("as_of"), "created_at": manifest.created_at,
        "reason": manifest.reason or "", "retrain": manifest.retrain_due,
        "reasons": manifest.drift.get("reasons", ""),
    }
    for entity in ("user", "item"):
        total = max(1, getattr(rows, entity))
        summary[f"{entity}_rows"] = total - 1
        summary[f"{entity}_new"] = getattr(rows, f"{entity}_new")
        base = int(at_retrain.get(entity, total))
        # Rows appended since the last full retrain over all rows (row 0 excluded): 0 right after a retrain.
        summary[f"{entity}_added_share"] = (total - base) / (total - 1) if total > 1 else math.nan
    return summary


def _reasons_text(reasons: Any) -> str:
    if isinstance(reasons, (list, tuple)):
        return "; ".join(str(r) for r in reasons)
    return "" if reasons is None or (isinstance(reasons, float) and math.isnan(reasons)) else str(reasons)


def project_embeddings(vectors: np.ndarray, *, max_points: int = MAX_EMBEDDING_POINTS, keep_rows: np.ndarray | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project item rows onto their first two principal axes, on a bounded subsample.

    Why: a table can hold millions of rows; a browser can draw a few thousand. The axes are fitted on
    a uniform sample (so they describe the whole table, not the displayed mix), then the displayed rows
    are projected on them. The displayed rows are `keep_rows` (e.g. the rows added in the latest step,
    at most half the budget) plus a uniform sample of the others, so a handful of new rows stay visible.

    Maths: with `X` the sampled rows and `mu` their mean, the SVD `X - mu = U S V^T` gives the principal
    axes as the first two rows of `V^T`; a row `x` projects to `(x - mu) V[:, :2]`. Each axis' sign is
    fixed so that its largest-magnitude loading is positive (the SVD's sign is arbitrary), keeping the
    picture stable from one day to the next. Explained variance shares are `S_i^2 / sum(S^2)`.

    Args:
        vectors: `[n, d]` rows to project (callers drop the out-of-vocabulary row first).
        max_points: the most rows to display.
        keep_rows: indices into `vectors` to display preferentially.
        seed: seed of the subsample.

    Returns:
        `(coords [m, 2], shown [m] indices into vectors, explained [2])`.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.full(2, np.nan)
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    sample = vectors[fit].astype(np.float64)
    mean = sample.mean(axis=0)
    _, singular, vt = np.linalg.svd(sample - mean, full_matrices=False)
    axes = np.zeros((vectors.shape[1], 2))
    k = min(2, vt.shape[0])
    axes[:, :k] = vt[:k].T
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(2)])
    axes *= np.where(signs == 0, 1.0, signs)
    power = singular ** 2
    explained = np.zeros(2)
    if power.sum() > 0:
        explained[:k] = power[:k] / power.sum()

    keep = np.zeros(0, np.int64) if keep_rows is None else np.asarray(keep_rows, np.int64)
    if len(keep) > max_points // 2:
        keep = np.sort(rng.choice(keep, size=max_points // 2, replace=False))
    others = np.setdiff1d(np.arange(n), keep)
    budget = max_points - len(keep)
    if len(others) > budget:
        others = np.sort(rng.choice(others, size=budget, replace=False))
    shown = np.concatenate([others, keep])
    coords = (vectors[shown].astype(np.float64) - mean) @ axes
    return coords, shown, explained


def _item_groups(n_rows: int, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Group label per item row (row 0 included, labelled ""), and the rows added by this version.

    Incremental version: "frozen" rows below the trainable boundary, "warm-up" rows trainable but created
    before this step, "new in this step". Full retrain: every row trained from scratch; rows the retrain
    itself added (new partitions it consumed) are "new in this step".
    """
    rows = manifest.rows
    new_from = max(1, n_rows - rows.item_new)
    groups = np.empty(n_rows, dtype=object)
    groups[0] = ""
    if manifest.kind == "full_retrain":
        groups[1:new_from] = "retrained"
    else:
        trainable_from = min(max(1, rows.item_trainable_from if "item_trainable_from" in rows.present else new_from),
                             new_from)
        groups[1:trainable_from] = "frozen"
        groups[trainable_from:new_from] = "warm-up (trainable)"
    groups[new_from:] = "new in this step"
    return groups, np.arange(new_from, n_rows)


def _embedding_view(store: Store, version: int, manifest: Manifest) -> EmbeddingView | None:
    state = store.load(version)
    vectors = state.item_vectors
    n = len(vectors)
    if n <= 1:
        return None
    groups, added = _item_groups(n, manifest)
    body = vectors[1:]
    coords, shown, explained = project_embeddings(body, keep_rows=added - 1, seed=version)
    shown_rows = shown + 1
    ids = state.item_vocab.id_of(shown_rows)
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):  # as `_plotly_text`, vectorized
        ids = pc.replace_substring(ids, raw, entity)
    ids = ids.to_numpy(zero_copy_only=False).astype(object)
    created = np.datetime_as_string(state.item_vocab.created[shown_rows], unit="D")
    return EmbeddingView(version=version, kind=manifest.kind, coords=coords, shown_rows=shown_rows,
                         shown_ids=ids, shown_created=created, norms=np.linalg.norm(body, axis=1),
                         groups=groups[1:], explained=explained, n_rows=n - 1)


def collect_dashboard_data(store_dir: str | Path) -> DashboardData:
    """Read the drift history, every published manifest and the current item table of a store.

    History rows of versions newer than CURRENT (not published) are dropped; rows of versions that
    `accrete gc` deleted are kept (the manifests, and so the version rows, cover kept versions only).

    Raises:
        StoreError: the store is missing, empty or damaged.
    """
    store = Store(store_dir)
    current = store.require_current()
    published = store.versions()
    manifests = [store.read_manifest(v) for v in published]
    versions = pd.DataFrame([_version_row(m) for m in manifests])
    history = read_drift_history(store.root / DRIFT)
    if len(history):
        # Records of versions `accrete gc` deleted stay; a record newer than CURRENT is not published.
        history = history[history["version"] <= current].reset_index(drop=True)
    current_manifest = manifests[-1] if manifests and manifests[-1].version == current else store.read_manifest(current)
    return DashboardData(store=str(store.root.resolve()), history=history, versions=versions,
                         current=current_manifest, embedding=_embedding_view(store, current, current_manifest))


# ----- figures ------------------------------------------------------------------------------------------
def _lineage(history: pd.DataFrame) -> pd.DataFrame:
    """One row per period for time series: a redone step (`--force`) supersedes the earlier record."""
    if not len(history):
        return history
    return history.drop_duplicates("date", keep="last").reset_index(drop=True)


def _retrains(data: DashboardData) -> pd.DataFrame:
    versions = data.versions
    return versions[versions["kind"] == "full_retrain"].reset_index(drop=True)


def _plotly_text(text: str) -> str:
    """Text for a Plotly label: "<" and ">" in a reason ("psi 0.4 > 0.25") must not read as markup tags.
    Plotly decodes &lt; &gt; &amp; and numeric entities, but not &quot;, so quotes stay as they are."""
    return html.escape(text, quote=False)


def _retrain_hover(retrains: pd.DataFrame) -> list[str]:
    return [f"<b>full retrain</b> v{v} (generation {g})<br>as of {d}<br>reason: "
            + "<br>".join(_plotly_text(part) for part in (str(r).split("; ") if r else ["-"]))
            for v, g, d, r in zip(retrains["version"], retrains["generation"], retrains["date"], retrains["reason"])]


def _subplots(rows: int, cols: int, titles: list[str], height_per_row: int) -> go.Figure:
    """Subplots whose cells all carry a hidden secondary y axis (range 0..1) for the retrain markers."""
    height = max(320, height_per_row * rows + 110)
    plot_height = height - 70 - 40
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, shared_xaxes=True,
                        vertical_spacing=min(65 / plot_height, 0.3), horizontal_spacing=0.07,
                        specs=[[{"secondary_y": True}] * cols for _ in range(rows)])
    fig.update_yaxes(range=[0, 1.05], visible=False, fixedrange=True, secondary_y=True)
    _reclaim_secondary_axis_margin(fig)
    fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": 70, "b": 40},
                      template="plotly_white", hoverlabel={"align": "left"},
                      legend={"orientation": "h", "yref": "container", "y": 0.995, "yanchor": "top", "x": 0})
    return fig


def _reclaim_secondary_axis_margin(fig: go.Figure) -> None:
    """make_subplots keeps 6% of the width free for visible secondary y axes; ours are hidden, so the
    subplots (and their titles) are stretched back to the full width."""
    scale = 1 / 0.94
    fig.for_each_xaxis(lambda axis: axis.update(domain=[axis.domain[0] * scale, min(1.0, axis.domain[1] * scale)]))
    for annotation in fig.layout.annotations:
        if annotation.xref == "paper":
            annotation.x = annotation.x * scale


def _add_retrain_markers(fig: go.Figure, retrains: pd.DataFrame, cells: list[tuple[int, int]], *,
                         first_in_legend: bool = True) -> None:
    """A dotted vertical line and a hoverable marker (reason on hover) at each full retrain, in each cell."""
    if not len(retrains):
        return
    dates = list(retrains["date"])
    line_x = [x for d in dates for x in (d, d, None)]
    line_y = [y for _ in dates for y in (0.0, 1.0, None)]
    hover = _retrain_hover(retrains)
    for i, (row, col) in enumerate(cells):
        fig.add_trace(go.Scatter(x=line_x, y=line_y, mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"color": _RETRAIN_COLOR, "width": 1, "dash": "dot"}, legendgroup="retrain"),
                      row=row, col=col, secondary_y=True)
        fig.add_trace(go.Scatter(x=dates, y=[1.0] * len(dates), mode="markers", name="full retrain",
                                 legendgroup="retrain", showlegend=first_in_legend and i == 0,
                                 marker={"symbol": "triangle-down", "size": 11, "color": _RETRAIN_COLOR},
                                 hovertext=hover, hoverinfo="text", cliponaxis=False),
                      row=row, col=col, secondary_y=True)


def _age_cap(data: DashboardData) -> float | None:
    """The configured age cap (days since the last full retrain that always retrains), if recorded."""
    value = data.current.config.get("drift", {}).get("max_days_since_full_retrain")
    return float(value) if value is not None else None


def _drift_metrics(history: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(metrics with at least one measured value in dashboard order, metrics never measured)."""
    skip = {"date", "version", "generation", "retrain", "reasons"}
    extra = [c for c in history.columns
             if c not in skip and "/" not in c and c not in METRIC_KEYS and pd.api.types.is_numeric_dtype(history[c])]
    names = [m for m in (*METRIC_KEYS, *extra) if m in history.columns]
    measured = [m for m in names if history[m].notna().any()]
    return measured, [m for m in names if m not in measured]


def drift_figure(data: DashboardData) -> tuple[go.Figure, list[str]]:
    """Each drift metric over time with its threshold (dashed) and the full retrains; breaches in red.

    Returns the figure and the metrics that were never measured (e.g. rating divergence on implicit data).
    """
    history = _lineage(data.history)
    measured, unmeasured = _drift_metrics(history)
    cols = 2
    rows = max(1, math.ceil(len(measured) / cols))
    age_cap = _age_cap(data)
    thresholds = {}
    for metric in measured:
        if f"threshold/{metric}" in history.columns:
            thresholds[metric] = history[f"threshold/{metric}"].to_numpy(np.float64)
        elif metric == "days_since_full_retrain" and age_cap is not None:
            thresholds[metric] = np.full(len(history), age_cap)
    fig = _subplots(rows, cols, [_metric_title(m, thresholds.get(m)) for m in measured], 210)
    retrains = _retrains(data)
    dates = history["date"] if len(history) else pd.Series([], dtype=str)
    hover_reason = history["reasons"].fillna("").map(
        lambda r: "<br>".join(_plotly_text(part) for part in r.split("; ")) if r else "").to_numpy()
    cells = []
    legend_threshold = True
    for i, metric in enumerate(measured):
        row, col = i // cols + 1, i % cols + 1
        cells.append((row, col))
        values = history[metric].to_numpy(np.float64)
        streak_col = f"streak/{metric}"
        breached = history[streak_col].to_numpy() > 0 if streak_col in history.columns else np.zeros(len(values), bool)
        fig.add_trace(go.Scatter(
            x=dates, y=values, mode="lines+markers", name=metric, showlegend=False,
            line={"color": _OK_COLOR, "width": 1.5},
            marker={"size": 5, "color": np.where(breached, _BREACH_COLOR, _OK_COLOR)},
            customdata=np.column_stack([history["version"].to_numpy(), hover_reason]),
            hovertemplate=f"%{{x}} (v%{{customdata[0]}})<br>{metric} = %{{y:.4g}}<br>%{{customdata[1]}}<extra></extra>"),
            row=row, col=col)
        threshold = thresholds.get(metric)
        if threshold is not None and np.isfinite(threshold).any():
            fig.add_trace(go.Scatter(
                x=dates, y=threshold, mode="lines", name="threshold", legendgroup="threshold",
                showlegend=legend_threshold,
                line={"color": "#7f7f7f", "dash": "dash", "width": 1.2, "shape": "hv"},
                hovertemplate=f"threshold {metric} = %{{y:.4g}}<extra></extra>"), row=row, col=col)
            legend_threshold = False
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="past threshold (streak > 0)",
                             marker={"color": _BREACH_COLOR, "size": 7}, showlegend=True), row=1, col=1)
    _add_retrain_markers(fig, retrains, cells)
    return fig, unmeasured


def _metric_title(metric: str, threshold: np.ndarray | None) -> str:
    """The metric's name and its trigger, e.g. "psi_item_popularity (retrain above 0.25)"."""
    finite = threshold[np.isfinite(threshold)] if threshold is not None else np.zeros(0)
    if not finite.size:
        return f"{metric} (recorded, no trigger)" if metric in THRESHOLD_DIRECTIONS else metric
    if metric == "days_since_full_retrain":
        return f"{metric} (age cap {finite[-1]:g})"
    side = "below" if THRESHOLD_DIRECTIONS.get(metric) == "below" else "above"
    return f"{metric} (retrain {side} {finite[-1]:g})"


def quality_figure(data: DashboardData, smoothing: int = QUALITY_SMOOTHING) -> go.Figure:
    """Prequential Recall@10 and NDCG@10 (each period's interactions scored by the model of the period
    before, before it trains on them), per slice: all users, existing users and items, new users, new
    items; with the full retrains.

    A day's slice metric averages few users (new users: a handful), so once the history holds at least
    `3 * smoothing` periods, each slice is drawn as faint daily points plus its trailing mean over
    `smoothing` periods, ``mean(y[t - smoothing + 1 .. t])`` (fewer at the start; missing values skipped).
    """
    history = _lineage(data.history)
    smooth = smoothing > 1 and len(history) >= 3 * smoothing
    fig = _subplots(2, 1, ["Recall@10 (prequential)", "NDCG@10 (prequential)"], 260)
    for row, base in ((1, "recall@10"), (2, "ndcg@10")):
        for suffix, label, color in _SLICES:
            column = f"quality/{base}{suffix}"
            if column not in history.columns:
                continue
            values = history[column].to_numpy(np.float64)
            fig.add_trace(go.Scatter(
                x=history["date"], y=values, mode="markers" if smooth else "lines+markers", name=label,
                legendgroup=label, showlegend=row == 1 and not smooth, opacity=0.35 if smooth else 1.0,
                line={"color": color, "width": 2 if not suffix else 1.5}, marker={"size": 4, "color": color},
                hovertemplate=f"%{{x}}<br>{base} {label} = %{{y:.4f}}<extra></extra>"), row=row, col=1)
            if smooth:
                mean = history[column].astype(np.float64).rolling(smoothing, min_periods=1).mean().to_numpy()
                fig.add_trace(go.Scatter(
                    x=history["date"], y=mean, mode="lines", name=f"{label} · {smoothing}-period mean",
                    legendgroup=label, showlegend=row == 1, line={"color": color, "width": 2.5 if not suffix else 2},
                    hovertemplate=f"%{{x}}<br>{base} {label}, {smoothing}-period mean = %{{y:.4f}}<extra></extra>"),
                    row=row, col=1)
    _add_retrain_markers(fig, _retrains(data), [(1, 1), (2, 1)])
    fig.update_yaxes(rangemode="tozero", secondary_y=False)
    return fig


def growth_figure(data: DashboardData) -> go.Figure:
    """New users and items per period, table sizes, and the share of each table added since the last
    full retrain (the rows the retrain has not seen: they reset to 0 at each retrain)."""
    versions = data.versions
    lineage = versions.drop_duplicates("date", keep="last")
    steps = versions[versions["kind"] == "incremental"].drop_duplicates("date", keep="last")
    fig = _subplots(3, 1, ["New users and items per period", "Table sizes (rows)",
                           "Share of the table added since the last full retrain"], 230)
    colors = {"user": "#9467bd", "item": "#2ca02c"}
    for entity in ("user", "item"):
        label = f"{entity}s"
        fig.add_trace(go.Bar(x=steps["date"], y=steps[f"{entity}_new"], name=f"new {label}", legendgroup=entity,
                             marker_color=colors[entity], hovertemplate=f"%{{x}}<br>new {label}: %{{y:,}}<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=lineage["date"], y=lineage[f"{entity}_rows"], mode="lines+markers", name=label,
                                 legendgroup=entity, showlegend=False, line={"color": colors[entity]}, marker={"size": 4},
                                 hovertemplate=f"%{{x}}<br>{label}: %{{y:,}}<extra></extra>"), row=2, col=1)
        fig.add_trace(go.Scatter(x=lineage["date"], y=lineage[f"{entity}_added_share"], mode="lines+markers",
                                 name=label, legendgroup=entity, showlegend=False, line={"color": colors[entity]},
                                 marker={"size": 4},
                                 hovertemplate=f"%{{x}}<br>{label} added since retrain: %{{y:.1%}}<extra></extra>"),
                      row=3, col=1)
    fig.update_layout(barmode="group")
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=3, col=1, secondary_y=False)
    _add_retrain_markers(fig, _retrains(data), [(1, 1), (2, 1), (3, 1)])
    return fig


def exposure_figure(data: DashboardData) -> go.Figure:
    """New items' share of the top-10 slots (exposure) against their share of the interactions.

    Exposure well below the interaction share means new items are under-recommended (cold start);
    the right panel puts each period against the diagonal where the two are equal.
    """
    history = _lineage(data.history)
    exposure_col = next((c for c in history.columns if c.startswith("quality/new_item_exposure@")), None)
    share_col = "quality/new_item_interaction_share"
    k = exposure_col.split("@")[1] if exposure_col else "10"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35], horizontal_spacing=0.08,
                        specs=[[{"secondary_y": True}, {}]],
                        subplot_titles=[f"New-item exposure in top-{k} vs new-item interaction share",
                                        "Exposure vs interaction share (per period; dark = early)"])
    fig.update_yaxes(range=[0, 1.05], visible=False, fixedrange=True, secondary_y=True)
    _reclaim_secondary_axis_margin(fig)
    exposure = history[exposure_col].to_numpy(np.float64) if exposure_col else np.full(len(history), np.nan)
    share = history[share_col].to_numpy(np.float64) if share_col in history.columns else np.full(len(history), np.nan)
    fig.add_trace(go.Scatter(x=history["date"], y=exposure, mode="lines+markers", name=f"exposure (top-{k} slots)",
                             line={"color": "#1f77b4"}, marker={"size": 4},
                             hovertemplate="%{x}<br>exposure %{y:.2%}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=history["date"], y=share, mode="lines+markers", name="interaction share",
                             line={"color": "#ff7f0e"}, marker={"size": 4},
                             hovertemplate="%{x}<br>interaction share %{y:.2%}<extra></extra>"), row=1, col=1)
    finite = np.concatenate([exposure[np.isfinite(exposure)], share[np.isfinite(share)]])
    top = float(finite.max()) * 1.05 if finite.size and finite.max() > 0 else 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="exposure = share",
                             line={"color": "#7f7f7f", "dash": "dash"}, hoverinfo="skip"), row=1, col=2)
    fig.add_trace(go.Scatter(x=share, y=exposure, mode="markers", name="period", showlegend=False,
                             text=history["date"], marker={"size": 7, "color": np.arange(len(history)),
                                                           "colorscale": "Viridis", "showscale": False},
                             hovertemplate="%{text}<br>share %{x:.2%}<br>exposure %{y:.2%}<extra></extra>"), row=1, col=2)
    _add_retrain_markers(fig, _retrains(data), [(1, 1)])
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", secondary_y=False, row=1, col=1)
    fig.update_xaxes(tickformat=".0%", title_text="interaction share", row=1, col=2)
    fig.update_yaxes(tickformat=".0%", title_text="exposure", row=1, col=2)
    fig.update_layout(height=420, template="plotly_white", margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.18, "x": 0}, hoverlabel={"align": "left"})
    return fig


_GROUP_COLORS = {"frozen": "#9aa9bd", "retrained": "#9aa9bd", "warm-up (trainable)": "#ff7f0e",
                 "new in this step": "#d62728"}


def embeddings_figure(view: EmbeddingView) -> go.Figure:
    """The item table on its first two principal axes, by group, and the norm distribution of each group.

    New rows far outside the frozen cloud, or with much larger or smaller norms, are rows the model will
    rank oddly: the picture shows whether their initialization and training matched the frozen rows.
    """
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.08,
                        subplot_titles=[f"Item embeddings, PCA (v{view.version}: {len(view.shown_rows):,} of "
                                        f"{view.n_rows:,} rows shown)", "Row norm distribution (share of each group)"])
    shown_groups = view.groups[view.shown_rows - 1]
    edges = np.histogram_bin_edges(view.norms, bins=NORM_BINS) if view.norms.size else np.linspace(0, 1, NORM_BINS + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    for group, color in _GROUP_COLORS.items():
        mask = shown_groups == group
        total = int(np.count_nonzero(view.groups == group))
        if not total:
            continue
        label = f"{group} ({total:,})"
        fig.add_trace(go.Scatter(
            x=view.coords[mask, 0], y=view.coords[mask, 1], mode="markers", name=label, legendgroup=group,
            marker={"color": color, "size": 4 if group in ("frozen", "retrained") else 7,
                    "opacity": 0.55 if group in ("frozen", "retrained") else 0.9},
            customdata=np.column_stack([view.shown_ids[mask], view.shown_created[mask], view.shown_rows[mask]]),
            hovertemplate="item %{customdata[0]} (row %{customdata[2]})<br>created %{customdata[1]}<extra></extra>"),
            row=1, col=1)
        counts, _ = np.histogram(view.norms[view.groups == group], bins=edges)
        fig.add_trace(go.Bar(x=centers, y=counts / total, width=np.diff(edges), name=label, legendgroup=group,
                             showlegend=False, marker={"color": color}, opacity=0.6, customdata=counts,
                             hovertemplate=f"{group}<br>norm %{{x:.3g}}<br>%{{customdata:,}} rows (%{{y:.1%}})<extra></extra>"),
                      row=1, col=2)
    fig.update_layout(barmode="overlay", height=520, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h", "y": -0.15, "x": 0})
    fig.update_xaxes(title_text=f"PC1 ({view.explained[0]:.0%} of variance)", row=1, col=1)
    fig.update_yaxes(title_text=f"PC2 ({view.explained[1]:.0%} of variance)", row=1, col=1)
    fig.update_xaxes(title_text="L2 norm", row=1, col=2)
    fig.update_yaxes(tickformat=".0%", row=1, col=2)
    return fig


# ----- HTML ----------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return html.escape(str(value))


def _header_html(data: DashboardData) -> str:
    m = data.current
    kind = m.kind
    history = data.history
    retrains = _retrains(data)
    last_retrain = retrains.iloc[-1] if len(retrains) else None
    if kind == "incremental":
        due = m.retrain_due
        reasons = m.reasons
    else:
        due, reasons = False, []
    held = [r for r in reasons if r.startswith("cooldown:")]
    waiting = [r for r in reasons if r.startswith("waiting:")]
    if due:
        verdict = '<span class="badge due">RETRAIN DUE</span>'
        why = [r for r in reasons if not r.startswith(("waiting:", "cooldown:"))] or reasons
    elif held:
        # Drift fired but the cooldown suppressed it: the retrain comes as soon as the cooldown ends.
        verdict = '<span class="badge held">retrain held by cooldown</span>'
        why = reasons
    elif waiting:
        verdict = '<span class="badge held">no retrain due · breach waiting</span>'
        why = reasons
    else:
        verdict = '<span class="badge ok">no retrain due</span>'
        why = reasons if kind == "incremental" else [f"a full retrain just ran (reason: {m.reason or '?'})"]
    why_html = "".join(f"<li>{html.escape(r)}</li>" for r in why) or "<li>every drift metric is within its threshold</li>"
    state = "due" if due else "held" if held else "waiting" if waiting else "ok"
    users, items = max(0, m.rows.user - 1), max(0, m.rows.item - 1)
    built = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    total = m.timings.get("total")
    seconds = f", took {total:.1f} s" if isinstance(total, (int, float)) else ""
    retrain_line = "–"
    if last_retrain is not None:
        retrain_line = (f"v{last_retrain['version']} as of {html.escape(str(last_retrain['date']))} "
                        f"(reason: {html.escape(str(last_retrain['reason']))})")
    cards = [
        ("Current version", f"v{m.version} · generation {m.generation}",
         f"{'incremental step' if kind == 'incremental' else 'full retrain'}; "
         f"{users:,} users, {items:,} items"),
        ("Last run", f"partition {html.escape(str(m.partition or '?'))}",
         f"published {html.escape(str(m.created_at or '?'))}{seconds}; "
         f"{m.quarantined_rows:,} input rows quarantined"),
        ("Retrain", verdict, f"last full retrain: {retrain_line}"),
    ]
    card_html = "".join(f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
                        f'<div class="detail">{detail}</div></div>' for label, value, detail in cards)
    return (f'<section id="panel-header" data-panel="header" data-version="{m.version}" '
            f'data-generation="{m.generation}" data-retrain-due="{str(due).lower()}" data-retrain-state="{state}">'
            f'<h1>Accrete drift dashboard</h1><p class="store">{html.escape(data.store)} · {len(history)} incremental '
            f'steps, {len(retrains)} full retrains · built {built}</p>'
            f'<div class="cards">{card_html}</div><div class="why"><b>Why:</b><ul>{why_html}</ul></div></section>')


def _reason_lines(reasons: Any) -> str:
    """A decision's reasons as HTML, one per line (split before escaping: "&gt;" holds a "; ")."""
    return "<br>".join(html.escape(part) for part in _reasons_text(reasons).split("; "))


def _decision_log_html(data: DashboardData) -> str:
    """The decision log, newest first: one row per incremental step and per full retrain."""
    history = data.history
    measured, _ = _drift_metrics(history)
    retrains = _retrains(data)
    head = "".join(f"<th>{html.escape(h).replace('_', '_<wbr>')}</th>"
                   for h in ("period", "version", "gen", "decision", *measured, "reasons"))
    events = [("step", i, str(d), int(v)) for i, (d, v) in enumerate(zip(history["date"], history["version"]))]
    events += [("retrain", i, str(d), int(v)) for i, (d, v) in enumerate(zip(retrains["date"], retrains["version"]))]
    events.sort(key=lambda e: (e[2], e[3]), reverse=True)
    rows = []
    for what, i, date, version in events:
        if what == "step":
            record = history.iloc[i]
            cells = []
            for metric in measured:
                streak = record.get(f"streak/{metric}", 0)
                threshold = record.get(f"threshold/{metric}")
                breach = bool(streak) and streak > 0
                title = f' title="threshold {_fmt(threshold)}, streak {int(streak)}"' if breach else ""
                cells.append(f'<td class="num{" breach" if breach else ""}"{title}>{_fmt(record[metric])}</td>')
            decision = '<span class="badge due">retrain</span>' if record["retrain"] else "continue"
            reasons = _reason_lines(record["reasons"])
            rows.append(f'<tr data-kind="incremental"><td>{date}</td><td>v{version}</td><td>{int(record["generation"])}</td>'
                        f'<td>{decision}</td>{"".join(cells)}<td class="reasons">{reasons}</td></tr>')
        else:
            record = retrains.iloc[i]
            rows.append(f'<tr data-kind="full_retrain" class="retrain-row"><td>{date}</td><td>v{version}</td>'
                        f'<td>{int(record["generation"])}</td><td><b>full retrain</b></td>'
                        f'<td colspan="{len(measured)}" class="muted">'
                        f'trained every row from scratch; drift reference and quality baseline reset</td>'
                        f'<td class="reasons">{_reason_lines(record["reason"])}</td></tr>')
    return (f'<section id="panel-decisions" data-panel="decisions" data-rows="{len(rows)}"><h2>Decision log</h2>'
            f'<p class="explain">Newest first. Red cells are past their threshold (hover for threshold and streak); '
            f'a breach retrains only after <i>patience</i> consecutive steps and outside the cooldown.</p>'
            f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f'</section>')


def _panel(name: str, title: str, explain: str, body: str) -> str:
    return (f'<section id="panel-{name}" data-panel="{name}"><h2>{html.escape(title)}</h2>'
            f'<p class="explain">{explain}</p>{body}</section>')


def _figure_html(fig: go.Figure, name: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{name}", config=_PLOT_CONFIG)


def _empty_note(text: str) -> str:
    return f'<p class="empty">{html.escape(text)}</p>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin:16px 0}
h1{margin:0 0 4px;font-size:24px} h2{margin:0 0 4px;font-size:18px}
.store,.explain{color:#5b6475;margin:0 0 8px;font-size:13px} .empty{color:#8a93a3;font-style:italic}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:12px;margin-top:12px}
.card{border:1px solid #e3e6eb;border-radius:6px;padding:10px 14px}
.card .label{font-size:12px;text-transform:uppercase;color:#5b6475;letter-spacing:.04em}
.card .value{font-size:20px;font-weight:600;margin:4px 0} .card .detail{font-size:13px;color:#3b4354}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:15px}
.badge.due{background:#fde2e1;color:#b42318} .badge.ok{background:#dcfae6;color:#067647}
.badge.held{background:#fef0c7;color:#93370d}
.why{margin-top:10px;font-size:14px} .why ul{margin:4px 0 0;padding-left:20px}
nav{font-size:13px;margin-top:8px} nav a{margin-right:14px;color:#1f5fbf;text-decoration:none}
.table-wrap{max-height:600px;overflow:auto;border:1px solid #e3e6eb;border-radius:6px}
table{border-collapse:collapse;font-size:12px;width:100%}
th{position:sticky;top:0;background:#f0f2f5;text-align:left;padding:6px;vertical-align:bottom;max-width:110px}
td{padding:4px 6px;border-top:1px solid #eef0f3;vertical-align:top;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.breach{background:#fde2e1;color:#b42318;font-weight:600}
td.reasons{white-space:normal;min-width:300px;color:#3b4354} td.muted{color:#8a93a3;font-style:italic}
tr.retrain-row td{background:#fff6e5}
"""


def render_dashboard(data: DashboardData) -> str:
    """The page's HTML: header, one section per panel, plotly.js inlined once in the head."""
    sections = [_header_html(data)]
    nav = "".join(f'<a href="#panel-{p}">{p}</a>' for p in PANELS[1:])
    sections[0] = sections[0].replace("</section>", f"<nav>{nav}</nav></section>")
    n_steps = len(data.history)
    if n_steps:
        drift, unmeasured = drift_figure(data)
        note = (f" Not measured in this history: {', '.join(unmeasured)}." if unmeasured else "")
        sections.append(_panel("drift", "Drift metrics", "Each metric per period against its retrain threshold "
                               "(dashed); red points are past the threshold; ▼ marks a full retrain (hover for its "
                               f"reason).{html.escape(note)}", _figure_html(drift, "drift")))
        sections.append(_panel("quality", "Prequential quality", "Each period's interactions scored by the model "
                               "of the period before, before it trains on them (full ranking, seen items excluded).",
                               _figure_html(quality_figure(data), "quality")))
    else:
        sections.append(_panel("drift", "Drift metrics", "", _empty_note("No incremental step yet: drift is measured "
                                                                         "from the first step after a full retrain.")))
        sections.append(_panel("quality", "Prequential quality", "", _empty_note("No incremental step yet.")))
    sections.append(_panel("growth", "Growth", "New rows per period, table sizes, and how much of each table the "
                           "last full retrain has never seen.", _figure_html(growth_figure(data), "growth")))
    if n_steps:
        sections.append(_panel("exposure", "New-item exposure", "Share of top-10 recommendation slots that go to "
                               "items new that period, against their share of that period's interactions.",
                               _figure_html(exposure_figure(data), "exposure")))
    else:
        sections.append(_panel("exposure", "New-item exposure", "", _empty_note("No incremental step yet.")))
    view = data.embedding
    if view is not None:
        explain = ("Rows frozen by earlier steps, rows still trainable (warm-up) and rows added in the latest step."
                   if view.kind == "incremental" else
                   "The latest version is a full retrain: every row was trained from scratch.")
        sections.append(_panel("embeddings", "Item embeddings", explain, _figure_html(embeddings_figure(view), "embeddings")))
    else:
        sections.append(_panel("embeddings", "Item embeddings", "", _empty_note("The item table is empty.")))
    sections.append(_decision_log_html(data))
    title = f"Accrete drift · v{data.current.version}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<script type="text/javascript">{get_plotlyjs()}</script><style>{_CSS}</style></head>'
            f'<body><main>{"".join(sections)}</main></body></html>')


def build_dashboard(store_dir: str | Path, out: str | Path) -> Path:
    """Build the self-contained drift dashboard of a store as one HTML file; returns its path.

    The file is written under a temporary name and renamed into place, so a server or a browser never
    sees half a page. It needs no network: plotly.js is inlined once.

    Raises:
        StoreError: the store is missing, empty or damaged, or `out` cannot be written.
    """
    data = collect_dashboard_data(store_dir)
    page = render_dashboard(data)
    out = Path(out)
    try:
        write_text_atomically(out, page)
    except OSError as exc:
        raise StoreError(f"{out}: cannot write the dashboard: {exc}") from None
    return out


# ----- serving ---------------------------------------------------------------------------------------------
class _DashboardHandler(http.server.BaseHTTPRequestHandler):
    """Serves exactly one file at "/" (and at its own name); everything else is 404, so serving a
    dashboard that lives inside a store never exposes the store's other files."""

    def __init__(self, *args: Any, path: Path, **kwargs: Any):
        self.dashboard = path
        super().__init__(*args, **kwargs)

    def _send(self, head_only: bool) -> None:
        route = self.path.split("?", 1)[0]
        if route not in ("/", f"/{self.dashboard.name}"):
            self.send_error(404, "only the dashboard is served here")
            return
        try:
            body = self.dashboard.read_bytes()  # re-read per request: a rebuilt dashboard shows on reload
        except OSError:
            self.send_error(404, "the dashboard file is gone")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(head_only=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._send(head_only=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def dashboard_server(path: str | Path, port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving) for one dashboard file; port 0 picks a free port.

    Raises:
        StoreError: the file does not exist, or the address cannot be bound.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise StoreError(f"{path}: no dashboard file to serve; build it first with `accrete dashboard`")
    handler = functools.partial(_DashboardHandler, path=path)
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise StoreError(f"cannot serve the dashboard on {host}:{port}: {exc}") from None


def serve_dashboard(path: str | Path, port: int, host: str = "127.0.0.1") -> None:
    """Serve one dashboard file on `host:port` (loopback by default) until Ctrl-C, printing its URL."""
    server = dashboard_server(path, port, host)
    bound_host, bound_port = server.server_address[:2]
    if isinstance(bound_host, bytes):  # an AF_UNIX address; never for a TCP server, but typed so
        bound_host = bound_host.decode()
    print(f"serving {Path(path).resolve()} at http://{bound_host}:{bound_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
