"""Whole-body keypoint files give one flat ``x, y, score`` array per body part; this turns them into fitloop's
161-point whole-body layout (`core.wholebody`), checking each array's length against the part's point names.

The part tables are core.wholebody's (`COCO_WHOLEBODY_FIELDS`, `OPENPOSE_JSON_FIELDS`: field -> the whole-body
names of its points, in the file's order), so no index is typed here.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from core.wholebody import NUM_WHOLEBODY, wholebody_indices


def part_points(values: Any, field: str, names: Sequence[str], *, empty_ok: bool = False) -> np.ndarray | None:
    """A part's flat ``[x, y, s] * K`` list as a (K, 3) float64 array (K = ``len(names)``).

    Returns None for an empty list when ``empty_ok`` (OpenPose writes ``[]`` for a part it did not run).
    Raises ValueError naming the field for a list of another length, TypeError/ValueError for values that are not
    numbers (a ``malformed_annotation`` reject, in the adapters). Non-finite numbers pass: the record's checks
    name them (``nan_keypoints``).
    """
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{field} is a {type(values).__name__}, not a list of numbers")
    if empty_ok and len(values) == 0:
        return None
    if len(values) != 3 * len(names):
        raise ValueError(f"{field} has {len(values)} values, expected 3 × {len(names)} = {3 * len(names)} "
                         f"(x, y, score per point)")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise TypeError(f"{field} holds values that are not numbers")
    return np.asarray(values, dtype=np.float64).reshape(len(names), 3)


def parts_to_wholebody(parts: Mapping[str, np.ndarray | None], fields: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(161, 3) whole-body keypoints from per-part (K, 3) arrays (px, px, confidence); a part that is None and
    every point no part names stay all zeros (absent).

    Args:
        parts: field -> its (K, 3) points, or None when the file has none for it.
        fields: field -> the whole-body names of its K points (`core.wholebody.COCO_WHOLEBODY_FIELDS`, ...).
    """
    out = np.zeros((NUM_WHOLEBODY, 3), dtype=np.float64)
    for field, points in parts.items():
        if points is not None:
            out[wholebody_indices(fields[field])] = points
    return out
