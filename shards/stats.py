"""What a shard set holds: counts per dataset and split, rejects per reason, sizes, keypoint visibility per joint
and person box sizes (``fitloop shards stats``).

Counts come from the manifest; reject reasons are counted from ``rejects.parquet`` itself, and ``consistent`` says
whether the two agree and read = written + rejected (`shards.reader.count_problems`). Keypoint visibility and box
sizes come from a scan of every sample's json and ``keypoints_2d.npy`` (images are not decoded); ``scan=False``
leaves them out. A damaged set (a manifest, rejects table, shard or sample that cannot be read) is a
`ShardSetError` naming the file and the sample.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.joints import JOINT_NAMES
from shards.masks import LABEL_KINDS
from shards.writer import ShardSetError, load_manifest

# Person box sides (px in the original image) are counted in these bins: [0, 64), [64, 128), ... [1024, inf).
BOX_SIDE_BINS_PX = (0, 64, 128, 256, 512, 1024)


def shard_stats(shard_dir: Path, scan: bool = True, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Statistics of the shard set in ``shard_dir`` as a json-able dict.

    Keys: ``samples`` (written), ``read``, ``rejected``, ``consistent``, ``by_dataset`` (dataset -> samples),
    ``by_split`` (split -> samples), ``by_dataset_split`` (dataset -> split -> read/written/rejected),
    ``rejects_by_reason``, ``rejects_by_dataset`` (dataset -> reason -> n), ``shards``, ``bytes``,
    ``bytes_per_sample``, ``has_smpl``, ``has_joints_3d``, ``has_wholebody``, ``has_mask``, ``has_parts``,
    ``has_parsing`` (the manifest's counts), ``schema_version``, ``sample_format_version``, ``created_utc``,
    ``config``; with ``scan``, also ``keypoints``, ``boxes`` and ``flags`` (`scan_samples`, which calls
    ``progress`` with 1 after each sample).
    """
    from shards.reader import count_problems, read_reject_rows

    shard_dir = Path(shard_dir)
    manifest = load_manifest(shard_dir)
    counts, by_dataset_split = manifest["counts"], manifest["by_dataset"]
    by_dataset: Counter[str] = Counter()
    by_split: Counter[str] = Counter()
    for dataset, splits in by_dataset_split.items():
        for split, c in splits.items():
            by_dataset[dataset] += c["written"]
            by_split[split] += c["written"]
    rejects = read_reject_rows(shard_dir / manifest["rejects"]["file"])
    by_reason = Counter(rejects["reason"])
    by_dataset_reason: dict[str, Counter[str]] = {}
    for dataset, reason in zip(rejects["dataset"], rejects["reason"]):
        by_dataset_reason.setdefault(dataset, Counter())[reason] += 1
    total_bytes = sum(s["bytes"] for s in manifest["shards"])
    scanned = scan_samples(shard_dir, manifest["config"], progress) if scan else {}
    return {
        "dir": str(shard_dir), "samples": counts["written"], "read": counts["read"], "rejected": counts["rejected"],
        "consistent": not count_problems(manifest, rejects),
        "by_dataset": dict(sorted(by_dataset.items())), "by_split": dict(sorted(by_split.items())),
        "by_dataset_split": by_dataset_split,
        "rejects_by_reason": dict(by_reason.most_common()),
        "rejects_by_dataset": {d: dict(c.most_common()) for d, c in sorted(by_dataset_reason.items())},
        "shards": len(manifest["shards"]), "bytes": total_bytes,
        "bytes_per_sample": total_bytes / counts["written"] if counts["written"] else 0.0,
        "has_smpl": manifest["has_smpl"], "has_joints_3d": manifest["has_joints_3d"],
        "has_wholebody": manifest.get("has_wholebody", 0),  # a set written before sample format 3 has none
        **{f"has_{kind}": manifest.get(f"has_{kind}", 0) for kind in LABEL_KINDS},  # before format 4: none
        "schema_version": manifest["schema_version"], "sample_format_version": manifest["sample_format_version"],
        "created_utc": manifest["created_utc"], "config": manifest["config"], **scanned,
    }


def _box_summary(sides: list[float], crop_box: float) -> dict[str, Any]:
    values = np.asarray(sides, dtype=np.float64)
    if not len(values):
        return {"samples": 0}
    edges = list(BOX_SIDE_BINS_PX) + [np.inf]
    counts, _ = np.histogram(values, bins=edges)
    labels = [f"{lo}-{hi}" for lo, hi in zip(BOX_SIDE_BINS_PX, BOX_SIDE_BINS_PX[1:])] + [f">={BOX_SIDE_BINS_PX[-1]}"]
    return {"samples": len(values), "min": float(values.min()), "p10": float(np.percentile(values, 10)),
            "median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
            "max": float(values.max()), "histogram": dict(zip(labels, counts.tolist())),
            "magnified": int((values < crop_box).sum())}


def scan_samples(shard_dir: Path, config: dict[str, Any],
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Keypoint visibility per joint and person box sizes, from every sample's json and ``keypoints_2d.npy``;
    ``progress`` (e.g. a progress bar's ``update``) is called with 1 after each sample.

    Returns ``{"keypoints": {"samples", "visible": {joint: n}, "by_dataset": {dataset: {"samples", "visible"}}},
    "boxes": {"crop_res", "crop_margin", "all": summary, "by_dataset": {dataset: summary}}, "flags": {has_*: n}}``
    (``flags``: the samples whose json sets each of `shards.verify.FLAG_COUNTS`, what the manifest's counts of
    the same names must be; `format_stats` says where they differ). A joint is visible
    when its confidence is > 0. A box summary gives the person box side in original-image px (200·scale): min,
    p10, median, p90, max, a histogram over `BOX_SIDE_BINS_PX`, and ``magnified``, the samples whose box is
    smaller than the stored crop shows it (``crop_res / crop_margin`` px), so their crop is upsampled.
    """
    from shards.lookup import raw_samples
    from shards.reader import list_shards
    from shards.verify import FLAG_COUNTS

    flags = dict.fromkeys(FLAG_COUNTS, 0)
    visible: dict[str, np.ndarray] = {}
    samples: Counter[str] = Counter()
    sides: dict[str, list[float]] = {}
    for shard in list_shards(shard_dir):
        for key, members in raw_samples(shard.path):
            try:
                dataset, side, conf, meta = _scanned(members)
            except ValueError as err:  # a member missing or damaged
                raise ShardSetError(f"{shard.path}: sample {key}: {err}; check the set with "
                                    f"`fitloop shards verify {shard_dir}`") from None
            visible.setdefault(dataset, np.zeros(len(JOINT_NAMES), np.int64))[:] += conf > 0
            samples[dataset] += 1
            for flag in FLAG_COUNTS:
                flags[flag] += int(meta.get(flag) is True)  # a flag a sample's format does not store: False
            sides.setdefault(dataset, []).append(side)
            if progress is not None:
                progress(1)
    total = sum(visible.values(), np.zeros(len(JOINT_NAMES), np.int64))
    crop_box = config["crop_res"] / config["crop_margin"]
    return {
        "keypoints": {"samples": sum(samples.values()), "visible": dict(zip(JOINT_NAMES, total.tolist())),
                      "by_dataset": {d: {"samples": samples[d], "visible": dict(zip(JOINT_NAMES, v.tolist()))}
                                     for d, v in sorted(visible.items())}},
        "boxes": {"crop_res": config["crop_res"], "crop_margin": config["crop_margin"],
                  "all": _box_summary([x for d in sorted(sides) for x in sides[d]], crop_box),
                  "by_dataset": {d: _box_summary(v, crop_box) for d, v in sorted(sides.items())}},
        "flags": flags,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """``shard_stats`` as text for a person."""
    lines = [f"{stats['dir']}: {stats['samples']} samples in {stats['shards']} shards "
             f"({stats['bytes'] / 1e6:.1f} MB, {stats['bytes_per_sample'] / 1e3:.1f} kB/sample); "
             f"read {stats['read']} = written {stats['samples']} + rejected {stats['rejected']}"
             + ("" if stats["consistent"] else "  ** counts do not reconcile: run fitloop shards verify **"),
             (f"  with SMPL {stats['has_smpl']}, with 3D joints {stats['has_joints_3d']}, "
              f"with whole-body keypoints {stats['has_wholebody']}, with a person mask {stats['has_mask']}, with "
              f"part labels {stats['has_parts']}, with a parsing {stats['has_parsing']}")]
    differ = {flag: n for flag, n in stats.get("flags", {}).items() if n != stats.get(flag, 0)}
    if differ:
        lines.append("  ** the samples' json flags count " + ", ".join(f"{flag} {n}" for flag, n in differ.items())
                     + " (the manifest's counts above differ): run fitloop shards verify **")
    lines.append("  dataset / split            read    written   rejected")
    for dataset, splits in stats["by_dataset_split"].items():
        for split, c in splits.items():
            lines.append(f"  {dataset + ' / ' + split:<24} {c['read']:>7} {c['written']:>10} {c['rejected']:>10}")
    if stats["rejects_by_reason"]:
        lines.append("  rejects by reason: " + ", ".join(f"{r} {n}" for r, n in stats["rejects_by_reason"].items()))
    if "boxes" in stats:
        lines += _format_boxes(stats["boxes"])
    if "keypoints" in stats:
        lines += _format_keypoints(stats["keypoints"])
    return "\n".join(lines)


def _format_boxes(boxes: dict[str, Any]) -> list[str]:
    crop_box = boxes["crop_res"] / boxes["crop_margin"]
    lines = [f"  person box side, original-image px (the stored crop shows the box at {crop_box:.1f} px; smaller "
             f"boxes are magnified)",
             f"  {'dataset':<16} {'samples':>8} {'min':>8} {'median':>8} {'max':>8} {'magnified':>10}  histogram"]
    for name, b in [("all", boxes["all"])] + list(boxes["by_dataset"].items()):
        if not b["samples"]:
            continue
        histogram = " ".join(f"{k}:{n}" for k, n in b["histogram"].items() if n)
        lines.append(f"  {name:<16} {b['samples']:>8} {b['min']:>8.1f} {b['median']:>8.1f} {b['max']:>8.1f} "
                     f"{b['magnified']:>10}  {histogram}")
    return lines


def _format_keypoints(keypoints: dict[str, Any]) -> list[str]:
    n = keypoints["samples"]
    seen = [(name, count) for name, count in keypoints["visible"].items() if count]
    lines = [f"  keypoints visible (confidence > 0) over {n} samples: {len(seen)} of {len(keypoints['visible'])} "
             f"joints ever visible"]
    cells = [f"{name:<20}{count:>7} {100 * count / max(n, 1):>5.1f}%" for name, count in seen]
    for i in range(0, len(cells), 3):
        lines.append("    " + "   ".join(cells[i:i + 3]))
    return lines


def _scanned(members: dict[str, bytes]) -> tuple[str, float, np.ndarray, dict[str, Any]]:
    """(dataset, box side px, (49,) keypoint confidences, the json) of one sample's members; ValueError saying
    which member or json field is missing or damaged, in `fitloop shards verify`'s words."""
    from shards.sample import decode_json, decode_npy
    from shards.verify import META_FIELDS

    for suffix in ("json", "keypoints_2d.npy"):
        if suffix not in members:
            raise ValueError(f"lacks member {suffix}")
    meta = decode_json(members["json"])
    for name in ("dataset", "box_side_px"):
        ok, what = META_FIELDS[name]
        if name not in meta or not ok(meta[name]):
            raise ValueError(f"json field {name!r} is missing" if name not in meta
                             else f"json field {name!r} is {meta[name]!r}, expected {what}")
    keypoints = decode_npy(members["keypoints_2d.npy"], "keypoints_2d.npy member")
    if keypoints.shape != (len(JOINT_NAMES), 3):
        raise ValueError(f"keypoints_2d.npy has shape {keypoints.shape}, expected {(len(JOINT_NAMES), 3)}")
    return meta["dataset"], float(meta["box_side_px"]), keypoints[:, 2], meta
