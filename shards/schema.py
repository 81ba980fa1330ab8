"""The person record every dataset adapter yields, and the reject record it yields instead when a person fails.

A `PersonRecord` is one annotated person in one image, already in fitloop's conventions:

* **Joints** in the canonical 49-joint layout of :mod:`core.joints` (0–24 OpenPose detections, 25–48 the
  "ground-truth" J24 annotations). Unannotated joints are all zeros, confidence 0.
* **Pixels are 0-based**: pixel (0, 0) is the centre of the top-left pixel, so the image spans
  [-0.5, W - 0.5] × [-0.5, H - 0.5]. MATLAB-born annotations (MPII, LSP, LSP-extended, and SPIN's .npz files made
  from them) are 1-based and are shifted by -1 on the way in; COCO is 0-based already.
* **Keypoints are in the original image**, never in a crop: (x, y) px and a confidence.
* **Box**: SPIN's convention, a square of side ``200 * scale`` px centred on ``center``.
* **3D joints** in metres, camera frame (x right, y down, z forward), with a confidence.
* **SMPL** pose as 72 axis-angle values (global orientation first, camera frame), betas (10,).
* **Whole-body keypoints** (optional) in the 161-point layout of :mod:`core.wholebody` (the 49 body joints, 21 per
  hand, 68 face points, 2 pupils), in the original image like ``keypoints_2d``; None for body-only datasets.
* **Intrinsics** of the original image's camera when the dataset knows them (`core.intrinsics.Intrinsics`, source
  ``dataset``: Human3.6M's cameras); None otherwise, and the shard writer takes them from the image's EXIF or
  guesses them (`core.intrinsics.resolve_intrinsics`).

A `Reject` says which record of which file failed, why (a code from `REJECT_REASONS`) and, in words, what was
wrong. Adapters never drop a record silently: every record read becomes a `PersonRecord` or a `Reject`.

Both are plain frozen dataclasses with numpy arrays; `to_row()` gives json-able dicts for tables and manifests.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core.intrinsics import Intrinsics
from core.joints import NUM_JOINTS
from core.wholebody import NUM_WHOLEBODY
from shards.masks import LABEL_KINDS, MASK_NAMES, LabelMap

# Bump when a field is added, removed or changes meaning; shard manifests and rejects tables record it.
# 2: `PersonRecord.intrinsics` (the dataset's camera of the original image).
# 3: `PersonRecord.wholebody` (161 whole-body keypoints: body, hands, face; core.wholebody).
# 4: `PersonRecord.mask`, `.parts` and `.parsing` (label maps of the original image: shards.masks).
# 5: `PersonRecord.image_frame` (the frame of a video file: shards.frames).
SCHEMA_VERSION = 5

# A sample key: "<dataset>/<id>", letters, digits, '_', '-' and '/', never '.' (webdataset splits member names at
# the first dot) and never whitespace.
KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*/[A-Za-z0-9_-][A-Za-z0-9_/-]*$")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")

# Why a record was rejected. The code is for grouping and filtering; the message says the details.
REJECT_REASONS: dict[str, str] = {
    "missing_image": "the image file does not exist",
    "corrupt_image": "the image file exists but cannot be read as an image",
    "image_size_mismatch": "the image's size differs from the size the annotation states",
    "nan_keypoints": "an annotated 2D or 3D joint, the box, or an SMPL parameter is NaN, infinite or beyond float32",
    "keypoints_out_of_image": "an annotated keypoint lies outside the image (beyond the configured margin)",
    "too_few_joints": "fewer annotated joints than the configured minimum",
    "missing_required_joints": "a joint the configuration requires is not annotated",
    "degenerate_box": "the person box is missing, smaller than the configured minimum, or mostly outside the image",
    "crowd": "a crowd region (COCO iscrowd=1), not one person",
    "malformed_annotation": "this record (or a whole Human3.6M sequence file) cannot be parsed as the format says",
    "invalid_frame": "the dataset marks the frame as unusable (MPI-INF-3DHP's test set: valid_frame = 0)",
    "duplicate_record": "the record's ids (its key, or a COCO image id) repeat another record's of the same file",
}


def make_key(dataset: str, *parts: str | int) -> str:
    """The sample key ``"<dataset>/<part1>_<part2>..."`` from source ids, sanitised to `KEY_PATTERN`.

    Every run of characters other than letters, digits, '_' and '-' becomes one '_' (Human3.6M names such as
    ``S9_Directions 1.54138969`` hold spaces and dots). Keys come from the dataset's own ids (image names,
    annotation ids, person indices), never from row positions, so they survive re-ordering and re-runs.
    """
    body = "_".join(_UNSAFE_KEY_CHARS.sub("_", str(p)).strip("_") for p in parts)
    key = f"{dataset}/{body}"
    if not KEY_PATTERN.match(key):
        raise ValueError(f"cannot build a sample key from dataset={dataset!r}, parts={parts!r} (got {key!r})")
    return key


def _frozen_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A read-only float32 copy of ``value``, checked to have ``shape``."""
    array = np.array(value, dtype=np.float32)  # a copy: the record never aliases the caller's array
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class PersonRecord:
    """One annotated person in one image, in fitloop's conventions (module docstring).

    Attributes:
        dataset: dataset name as registered ("coco", "mpii", "lsp", "lsp-orig", "lspet", ...).
        split: "train", "val", "test", ... as the dataset's adapter defines them.
        key: stable sample key, ``"<dataset>/<id>"``; see `make_key`. Never contains '.'.
        source: the annotation file this record came from, relative to the dataset root where it lies under it.
        record: the record's id inside ``source`` in the dataset's own terms ("annotation 442619",
            "annolist(7).annorect(1)", "im1010"), to find it again by hand.
        image_path: image file, or video file when ``image_frame`` is set, POSIX path relative to ``image_root``.
        image_root: the folder ``image_path`` is relative to (the dataset root, or the image folder given).
        image_size: (width, height) px of the image file, or None if it was not opened.
        center: (2,) float32, box centre (x, y), 0-based px in the original image.
        scale: box side / 200 (SPIN's convention): the box is ``200 * scale`` px square.
        keypoints_2d: (49, 3) float32: x, y in 0-based px of the original image, confidence in [0, 1]. Slots
            25–48 hold annotations (confidence 1, or the configured confidence for occluded joints); slots 0–24
            hold OpenPose detections with their raw scores where a source provides them. 0 = absent.
        joints_3d: (49, 4) float32, x, y, z in metres in the camera frame + confidence, or None.
        smpl_pose: (72,) float32 SMPL axis-angle pose (global orientation first), or None.
        smpl_betas: (10,) float32 SMPL shape, or None.
        has_smpl: True when ``smpl_pose``/``smpl_betas`` are ground truth to supervise with.
        intrinsics: the original image's camera as the dataset calibrated it (fx, fy, cx, cy px, 0-based), or None.
        wholebody: (161, 3) float32 in `core.wholebody.WHOLEBODY_NAMES` order (body, left hand, right hand, face,
            pupils): x, y in 0-based px of the original image + confidence (0 = absent, all zeros), or None for a
            dataset without hand and face keypoints. Its body slots need not equal ``keypoints_2d`` (COCO-WholeBody
            puts its foot points there; ``keypoints_2d`` holds what the dataset's body annotation has).
        mask: the person's foreground mask in the original image (`shards.masks.LabelMap` with table
            `shards.masks.MASK_NAMES`: 0 background, 1 person) and its provenance, or None when the source has none.
        parts: the person's body-part labels (anatomy) in the original image (a `LabelMap`: 0 background, ids
            into its ``names``), or None.
        parsing: the person's clothing or semantic parsing in the original image (a `LabelMap` with its own
            table), or None.
        extra: json-able metadata the source offers beyond the fields above (occluded joints, head box, ...).
        image_frame: the 0-based frame (decoding order) of the video ``image_path`` (`shards.frames`), or None
            when ``image_path`` is an image file.
    """

    dataset: str
    split: str
    key: str
    source: str
    record: str
    image_path: str
    image_root: Path
    image_size: tuple[int, int] | None
    center: np.ndarray
    scale: float
    keypoints_2d: np.ndarray
    joints_3d: np.ndarray | None = None
    smpl_pose: np.ndarray | None = None
    smpl_betas: np.ndarray | None = None
    has_smpl: bool = False
    intrinsics: Intrinsics | None = None
    wholebody: np.ndarray | None = None
    mask: LabelMap | None = None
    parts: LabelMap | None = None
    parsing: LabelMap | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    image_frame: int | None = None

    def __post_init__(self) -> None:
        if not KEY_PATTERN.match(self.key) or not self.key.startswith(self.dataset + "/"):
            raise ValueError(f"key {self.key!r} must look like '{self.dataset}/<id>' with no '.' (see make_key)")
        if Path(self.image_path).is_absolute():
            raise ValueError(f"image_path must be relative to image_root, got {self.image_path!r}")
        set_ = object.__setattr__  # frozen: normalise the fields once, here, at the boundary
        if self.image_frame is not None:
            if int(self.image_frame) < 0:
                raise ValueError(f"{self.key}: image_frame must be >= 0, got {self.image_frame}")
            set_(self, "image_frame", int(self.image_frame))
        set_(self, "image_root", Path(self.image_root))
        set_(self, "center", _frozen_array(self.center, (2,), "center"))
        set_(self, "scale", float(self.scale))
        set_(self, "keypoints_2d", _frozen_array(self.keypoints_2d, (NUM_JOINTS, 3), "keypoints_2d"))
        if self.image_size is not None:
            set_(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if self.joints_3d is not None:
            set_(self, "joints_3d", _frozen_array(self.joints_3d, (NUM_JOINTS, 4), "joints_3d"))
        if self.smpl_pose is not None:
            set_(self, "smpl_pose", _frozen_array(self.smpl_pose, (72,), "smpl_pose"))
        if self.smpl_betas is not None:
            set_(self, "smpl_betas", _frozen_array(self.smpl_betas, (10,), "smpl_betas"))
        if self.has_smpl and (self.smpl_pose is None or self.smpl_betas is None):
            raise ValueError(f"{self.key}: has_smpl is set but pose or betas are missing")
        set_(self, "has_smpl", bool(self.has_smpl))
        if self.intrinsics is not None and not isinstance(self.intrinsics, Intrinsics):
            raise ValueError(f"{self.key}: intrinsics must be a core.intrinsics.Intrinsics, got {self.intrinsics!r}")
        if self.wholebody is not None:
            set_(self, "wholebody", _frozen_array(self.wholebody, (NUM_WHOLEBODY, 3), "wholebody"))
        for name in LABEL_KINDS:
            labels = getattr(self, name)
            if labels is not None and not isinstance(labels, LabelMap):
                raise ValueError(f"{self.key}: {name} must be a shards.masks.LabelMap, got {type(labels).__name__}")
            if labels is not None and self.image_size is not None and labels.size != self.image_size[::-1]:
                raise ValueError(f"{self.key}: {name} is {labels.size[1]}x{labels.size[0]} px, the image "
                                 f"{self.image_size[0]}x{self.image_size[1]}")
        if self.mask is not None and not self.mask.is_mask:
            raise ValueError(f"{self.key}: a person mask has the table {MASK_NAMES}, got {self.mask.names}")
        set_(self, "extra", dict(self.extra))

    @property
    def box_side_px(self) -> float:
        """Side of the square person box in px (``200 * scale``)."""
        return 200.0 * self.scale

    def to_row(self) -> dict[str, Any]:
        """The record as json-able plain types (lists for arrays), with ``schema_version``."""
        def listed(a: np.ndarray | None) -> list | None:
            return None if a is None else a.tolist()

        return {
            "schema_version": SCHEMA_VERSION, "dataset": self.dataset, "split": self.split, "key": self.key,
            "source": self.source, "record": self.record, "image_path": self.image_path,
            "image_frame": self.image_frame, "image_root": str(self.image_root),
            "image_size": None if self.image_size is None else list(self.image_size),
            "center": listed(self.center), "scale": self.scale, "keypoints_2d": listed(self.keypoints_2d),
            "joints_3d": listed(self.joints_3d), "smpl_pose": listed(self.smpl_pose),
            "smpl_betas": listed(self.smpl_betas), "has_smpl": self.has_smpl,
            "intrinsics": None if self.intrinsics is None else self.intrinsics.to_json(),
            "wholebody": listed(self.wholebody),
            **{kind: None if getattr(self, kind) is None else getattr(self, kind).to_json() for kind in LABEL_KINDS},
            "extra": dict(self.extra),
        }


@dataclass(frozen=True)
class Reject:
    """A record that did not become a `PersonRecord`, and why.

    Attributes:
        dataset, split: as in `PersonRecord`.
        source: the file at fault or being read (annotation file, or the image for image reasons).
        record: the record's id in the source ("annotation 442619", "im1010", "*" for the whole file).
        reason: a code from `REJECT_REASONS`.
        message: what exactly was wrong, for a person to read.
        key: the sample key the record would have had, or "" when none could be derived.
    """

    dataset: str
    split: str
    source: str
    record: str
    reason: str
    message: str
    key: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}; known: {sorted(REJECT_REASONS)}")

    def to_row(self) -> dict[str, Any]:
        """The reject as a flat dict of strings (one row of the rejects table), with ``schema_version``."""
        return {"schema_version": SCHEMA_VERSION, "dataset": self.dataset, "split": self.split,
                "source": self.source, "record": self.record, "reason": self.reason, "message": self.message,
                "key": self.key}


REJECT_COLUMNS: tuple[str, ...] = ("schema_version", "dataset", "split", "source", "record", "reason", "message",
                                   "key")

