"""What a shard set holds: counts per dataset and split, rejects per reason, sizes (``fitloop shards stats``).

Counts come from the manifest; reject reasons are counted from ``rejects.parquet`` itself, and ``consistent`` says
whether the two agree and read = written + rejected.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards.writer import load_manifest


def shard_stats(shard_dir: Path) -> dict[str, Any]:
    """Statistics of the shard set in ``shard_dir`` as a json-able dict.

    Keys: ``samples`` (written), ``read``, ``rejected``, ``consistent``, ``by_dataset`` (dataset -> samples),
    ``by_split`` (split -> samples), ``by_dataset_split`` (dataset -> split -> read/written/rejected),
    ``rejects_by_reason``, ``rejects_by_dataset`` (dataset -> reason -> n), ``shards``, ``bytes``,
    ``bytes_per_sample``, ``has_smpl``, ``has_joints_3d``, ``schema_version``, ``sample_format_version``,
    ``created_utc``, ``config``.
    """
    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    counts, by_dataset_split = manifest["counts"], manifest["by_dataset"]
    by_dataset: Counter[str] = Counter()
    by_split: Counter[str] = Counter()
    for dataset, splits in by_dataset_split.items():
        for split, c in splits.items():
            by_dataset[dataset] += c["written"]
            by_split[split] += c["written"]
    rejects = pq.read_table(shard_dir / manifest["rejects"]["file"], columns=["dataset", "reason"]).to_pydict()
    by_reason = Counter(rejects["reason"])
    by_dataset_reason: dict[str, Counter[str]] = {}
    for dataset, reason in zip(rejects["dataset"], rejects["reason"]):
        by_dataset_reason.setdefault(dataset, Counter())[reason] += 1
    total_bytes = sum(s["bytes"] for s in manifest["shards"])
    return {
        "dir": str(shard_dir), "samples": counts["written"], "read": counts["read"], "rejected": counts["rejected"],
        "consistent": counts["read"] == counts["written"] + counts["rejected"]
                      and sum(by_reason.values()) == counts["rejected"]
                      and sum(s["samples"] for s in manifest["shards"]) == counts["written"],
        "by_dataset": dict(sorted(by_dataset.items())), "by_split": dict(sorted(by_split.items())),
        "by_dataset_split": by_dataset_split,
        "rejects_by_reason": dict(by_reason.most_common()),
        "rejects_by_dataset": {d: dict(c.most_common()) for d, c in sorted(by_dataset_reason.items())},
        "shards": len(manifest["shards"]), "bytes": total_bytes,
        "bytes_per_sample": total_bytes / counts["written"] if counts["written"] else 0.0,
        "has_smpl": manifest["has_smpl"], "has_joints_3d": manifest["has_joints_3d"],
        "schema_version": manifest["schema_version"], "sample_format_version": manifest["sample_format_version"],
        "created_utc": manifest["created_utc"], "config": manifest["config"],
    }


def format_stats(stats: dict[str, Any]) -> str:
    """``shard_stats`` as text for a person."""
    lines = [f"{stats['dir']}: {stats['samples']} samples in {stats['shards']} shards "
             f"({stats['bytes'] / 1e6:.1f} MB, {stats['bytes_per_sample'] / 1e3:.1f} kB/sample); "
             f"read {stats['read']} = written {stats['samples']} + rejected {stats['rejected']}"
             + ("" if stats["consistent"] else "  ** counts do not reconcile: run fitloop shards verify **"),
             f"  with SMPL {stats['has_smpl']}, with 3D joints {stats['has_joints_3d']}"]
    lines.append("  dataset / split            read    written   rejected")
    for dataset, splits in stats["by_dataset_split"].items():
        for split, c in splits.items():
            lines.append(f"  {dataset + ' / ' + split:<24} {c['read']:>7} {c['written']:>10} {c['rejected']:>10}")
    if stats["rejects_by_reason"]:
        lines.append("  rejects by reason: " + ", ".join(f"{r} {n}" for r, n in stats["rejects_by_reason"].items()))
    return "\n".join(lines)
