"""What a store holds, for `accrete status`: the current version, its lineage and per-version metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.evaluation import HEADLINE_METRICS
from pipeline.policy import reasons_list
from pipeline.store import Store



def quarantined_rows(manifest: dict[str, Any]) -> int:
    """Rows this version set aside in its quarantine file. Manifests before `quarantined_rows` was written hold
    only the ingest report(s): one partition's for a step, one per date read for a full retrain (where only the
    partitions it consumed for the first time are quarantined again, so this may count more for old ones)."""
    if "quarantined_rows" in manifest:
        return int(manifest["quarantined_rows"])
    ingest = manifest.get("ingest") or {}
    reports = [ingest] if "quarantined" in ingest else [r for r in ingest.values() if isinstance(r, dict)]
    return sum(int(n) for report in reports for n in (report.get("quarantined") or {}).values())


def store_status(store_dir: str | Path) -> dict[str, Any]:
    """Current version and generation, and one summary per published version (oldest first)."""
    store = Store(store_dir)
    current = store.require_current()
    versions = []
    for version in store.versions():
        manifest = store.manifest(version)
        versions.append({
            "version": version, "parent": manifest.get("parent"), "generation": manifest.get("generation"),
            "kind": manifest.get("kind"), "partition": manifest.get("partition"),
            "created_at": manifest.get("created_at"), "rows": manifest.get("rows"),
            "metrics": {k: manifest.get("metrics", {}).get(k) for k in HEADLINE_METRICS if k in manifest.get("metrics", {})},
            "retrain_due": manifest.get("drift", {}).get("retrain", False),
            "reasons": reasons_list(manifest.get("drift", {}).get("reasons")),
            "retrain_reason": manifest.get("reason") if manifest.get("kind") == "full_retrain" else None,
            "quarantined": quarantined_rows(manifest),
            "seconds": round(manifest.get("timings", {}).get("total", 0.0), 2),
        })
    head = versions[-1]
    return {"store": str(store.root.resolve()), "current": current, "generation": head["generation"],
            "quarantined_rows": sum(v["quarantined"] for v in versions),
            "last_partition": head["partition"], "retrain_due": head["retrain_due"], "versions": versions}


def format_status(status: dict[str, Any]) -> str:
    """A short human-readable table of the status."""
    lines = [f"store {status['store']}",
             f"current version {status['current']} (generation {status['generation']}), "
             f"last partition {status['last_partition']}" + ("; RETRAIN DUE" if status["retrain_due"] else ""),
             *([f"{status['quarantined_rows']:,} input rows quarantined in all (per version: quar. column; the rows "
                f"and their reasons: versions/vNNNNNN/quarantine.parquet)"] if status["quarantined_rows"] else []),
             "", f"{'ver':>4} {'gen':>3} {'kind':<12} {'partition':<10} {'users':>8} {'items':>8} "
                 f"{'R@10':>6} {'N@10':>6} {'R@10new':>7} {'quar.':>6}  notes"]
    for v in status["versions"]:
        m = v["metrics"]

        def fmt(key: str) -> str:
            value = m.get(key)
            return f"{value:.3f}" if isinstance(value, (int, float)) and value == value else "-"

        rows = v["rows"] or {}
        note = "; ".join(v["reasons"]) if v["retrain_due"] else ""
        if v.get("retrain_reason"):
            note = f"retrained: {v['retrain_reason']}"
        lines.append(f"{v['version']:>4} {v['generation']:>3} {v['kind']:<12} {v['partition']:<10} "
                     f"{rows.get('user', 0) - 1:>8,} {rows.get('item', 0) - 1:>8,} {fmt('recall@10'):>6} "
                     f"{fmt('ndcg@10'):>6} {fmt('recall@10/new_items'):>7} {v['quarantined']:>6,}  {note}")
    return "\n".join(lines)
