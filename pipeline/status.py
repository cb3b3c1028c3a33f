"""What a store holds, for `accrete status`: the current version, its lineage and per-version metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from accrete.pipeline.evaluation import HEADLINE_METRICS
from accrete.pipeline.store import Store


def store_status(store_dir: str | Path) -> dict[str, Any]:
    """Current version and generation, and one summary per published version (oldest first)."""
    store = Store(store_dir)
    current = store.require_current()
    versions = []
    for version in store.versions():
        manifest = store.read_manifest(version)
        versions.append({
            "version": version, "parent": manifest.parent, "generation": manifest.generation,
            "kind": manifest.kind, "partition": manifest.partition,
            "created_at": manifest.created_at, "rows": manifest.rows.to_dict() if "rows" in manifest.present else None,
            "metrics": {k: manifest.metrics[k] for k in HEADLINE_METRICS if k in manifest.metrics},
            "retrain_due": manifest.retrain_due,
            "reasons": manifest.reasons,
            "retrain_reason": manifest.reason if manifest.kind == "full_retrain" else None,
            "quarantined": manifest.quarantined_rows,
            "seconds": round(manifest.timings.get("total", 0.0), 2),
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
                 f"{'R@10':>6} {'N@10':>6} {'R@10new':>7} {'young':>6} {'(pop)':>6} {'lift':>5} {'quar.':>6}  notes"]
    for v in status["versions"]:
        m = v["metrics"]

        def fmt(key: str, digits: int = 3) -> str:
            value = m.get(key)
            return f"{value:.{digits}f}" if isinstance(value, (int, float)) and value == value else "-"

        rows = v["rows"] or {}
        note = "; ".join(v["reasons"]) if v["retrain_due"] else ""
        if v.get("retrain_reason"):
            note = f"retrained: {v['retrain_reason']}"
        lines.append(f"{v['version']:>4} {v['generation']:>3} {v['kind']:<12} {v['partition']:<10} "
                     f"{rows.get('user', 0) - 1:>8,} {rows.get('item', 0) - 1:>8,} {fmt('recall@10'):>6} "
                     f"{fmt('ndcg@10'):>6} {fmt('recall@10/new_items'):>7} {fmt('recall@10/young_items'):>6} "
                     f"{fmt('recall@10/young_items/control'):>6} {fmt('lift@10', 2):>5} {v['quarantined']:>6,}  {note}")
    return "\n".join(lines)
