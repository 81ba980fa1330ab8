"""COCO-WholeBody (Jin et al., ECCV 2020; github.com/jin-s13/COCO-WholeBody): COCO person keypoints plus feet, face
and hands, one record per person annotation.

Format (the release's ``coco_wholebody_<split>_v1.0.json``, its data_format.md): every field of a COCO keypoints
file (`pipelines.adapters.coco`), and per annotation

* ``foot_kpts`` [x, y, v] * 6, ``face_kpts`` * 68, ``lefthand_kpts`` * 21, ``righthand_kpts`` * 21, in the
  order `core.wholebody.COCO_WHOLEBODY_FIELDS` names (the 133-point order with the 17 body ``keypoints``);
* ``foot_valid``, ``face_valid``, ``lefthand_valid``, ``righthand_valid``: whether the part was labelled (only
  parts clear enough to label are; an invalid part's points and box are all zeros);
* ``face_box``, ``lefthand_box``, ``righthand_box`` [x, y, w, h], kept in ``extra`` (zeros for an invalid part).

Coordinates are 0-based px like COCO's. Confidences (`PART_SCORES`):

* body and feet: COCO's ``v`` (0 not labelled, 1 labelled but occluded, 2 visible): labelled points get 1,
  occluded ones ``occluded_confidence``, as the COCO adapter does;
* face and hands: the third value is not COCO's flag: the release writes 1.0 for face points and a score in
  (0, 1] for hand points (its semi-automatic labelling's). A point with a score > 0 of a valid part is labelled
  and gets confidence 1 (mmpose's reading: visible = score > 0); score 0 or an invalid part: absent.

Each record has the 49-joint keypoints from the 17 body points (exactly as the COCO adapter gives them) and the
161-point whole-body keypoints from all five arrays (`PersonRecord.wholebody`). An annotation that lacks a part's
array, or whose array has the wrong length or non-numbers, is a ``malformed_annotation`` reject naming the field;
a NaN among present points a ``nan_keypoints`` one. Keys: ``coco_wholebody/<image id, 12 digits>_a<annotation
id>``, as COCO's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.wholebody import COCO_WHOLEBODY_FIELDS
from pipelines.adapters.base import joint_confidence
from pipelines.adapters.coco import CocoAdapter, CocoConfig
from pipelines.adapters.wholebody_parts import part_points, parts_to_wholebody

# Each part array's validity flag; the body's ``keypoints`` has none (COCO's own field, always labelled as far
# as its v says).
PART_VALID: dict[str, str | None] = {
    "keypoints": None, "foot_kpts": "foot_valid", "face_kpts": "face_valid",
    "lefthand_kpts": "lefthand_valid", "righthand_kpts": "righthand_valid",
}
# How a part's third value reads: "coco_v" (0 / 1 occluded / 2 visible) or "score" (> 0 labelled).
PART_SCORES: dict[str, str] = {
    "keypoints": "coco_v", "foot_kpts": "coco_v", "face_kpts": "score", "lefthand_kpts": "score",
    "righthand_kpts": "score",
}
PART_BOXES: dict[str, str] = {  # box field -> its part; [x, y, w, h] px, kept in extra["part_boxes_xywh"]
    "face_box": "face_kpts", "lefthand_box": "lefthand_kpts", "righthand_box": "righthand_kpts"}
ANNOTATION_GLOB = "coco_wholebody_{split}*.json"  # coco_wholebody_train_v1.0.json, coco_wholebody_val_v1.0.json
IMAGE_SUBSETS = {"train": "train2017", "val": "val2017"}  # COCO-WholeBody annotates COCO 2017's images


@dataclass(frozen=True, kw_only=True)
class CocoWholeBodyConfig(CocoConfig):
    """Options of the COCO-WholeBody adapter: COCO's (`CocoConfig`). Defaults differ only in where files are:
    ``annotation_file`` is the one ``coco_wholebody_<split>*.json`` under the root or ``annotations/``, and
    ``image_dir`` is ``<root>/<split>2017`` or ``<root>/images/<split>2017`` (COCO 2017's image folders), else
    the root."""


class CocoWholeBodyAdapter(CocoAdapter):
    """COCO-WholeBody annotations; see the module docstring."""

    name = "coco_wholebody"
    splits = ("train", "val")
    config_type = CocoWholeBodyConfig
    what = "a COCO-WholeBody annotation file"
    annotation_glob = ANNOTATION_GLOB

    def wholebody(self, annotation: dict[str, Any], config: CocoConfig) -> tuple[np.ndarray, dict[str, Any]]:
        """(161, 3) px + confidence from the annotation's five part arrays, and the valid parts' boxes for
        ``extra`` (module docstring)."""
        parts, valid_parts = {}, {}
        for field, names in COCO_WHOLEBODY_FIELDS.items():
            if field not in annotation:
                raise KeyError(f"{field} (not a COCO-WholeBody annotation? the coco adapter reads plain COCO)")
            raw = part_points(annotation[field], field, names)
            valid = True if PART_VALID[field] is None else annotation.get(PART_VALID[field], True)
            if not isinstance(valid, bool):
                raise TypeError(f"{PART_VALID[field]} is {valid!r}, not true or false")
            score = raw[:, 2]
            labelled = (score > 0) & valid
            if PART_SCORES[field] == "coco_v":
                conf = joint_confidence(labelled, score == 1, config.occluded_confidence)
            else:
                conf = labelled.astype(np.float64)
            conf = np.where(np.isfinite(score), conf, np.nan)  # a NaN score is the record's to name, not absent
            parts[field] = np.column_stack([raw[:, :2], conf])
            valid_parts[field] = valid
        boxes = {}
        for box, field in PART_BOXES.items():
            if valid_parts[field] and box in annotation:
                boxes[box] = _box(annotation[box], box)
        return parts_to_wholebody(parts, COCO_WHOLEBODY_FIELDS), {"part_boxes_xywh": boxes}

    def default_image_dir(self, root: Path, annotation_file: Path, split: str) -> Path:
        subset = IMAGE_SUBSETS.get(split, split)
        match = re.fullmatch(r"coco_wholebody_([a-z]+)\w*\.json", annotation_file.name)
        if match:
            subset = IMAGE_SUBSETS.get(match.group(1), subset)
        for folder in (root / subset, root / "images" / subset):
            if folder.is_dir():
                return folder
        return root


def _box(value: Any, field: str) -> list[float]:
    """A part box [x, y, w, h] px as floats; ValueError naming ``field`` for anything else."""
    if (not isinstance(value, list) or len(value) != 4
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
        raise ValueError(f"{field} is {str(value)[:40]}, not [x, y, w, h]")
    return [float(v) for v in value]
