"""COCO person keypoints (``person_keypoints_<split><year>.json``): one record per person annotation.

Format (the official layout): ``images`` [{id, file_name, width, height}], ``annotations`` [{id, image_id,
keypoints [x, y, v] * 17, num_keypoints, bbox [x, y, w, h], iscrowd}], ``categories`` with the 17 keypoint
names. ``v``: 0 not labelled, 1 labelled but occluded, 2 visible. Coordinates are 0-based px already.

Conventions (SPIN datasets/preprocess/coco.py): box centre = bbox centre, ``scale = 1.2·max(w, h)/200``;
labelled keypoints get confidence 1 (occluded ones ``occluded_confidence``). COCO's box is in continuous
coordinates and its keypoints in pixel indices; the half pixel between them is ignored, as SPIN and mmpose do.

Masks: the annotation's ``segmentation`` is the person's mask: polygons (``iscrowd=0``, "coco-polygon") or an RLE
("coco-rle", uncompressed counts or the compressed string), decoded by `shards.masks.coco_mask` at the image's
``height`` × ``width``. An empty segmentation gives no mask. A segmentation that cannot be decoded costs the
mask, not the person: the record keeps its keypoints and says why in ``extra["mask_error"]``. ``iscrowd=1``
annotations are crowd regions (their RLE covers many people, COCO's evaluation ignores them): rejected as
``crowd``, as before, never a person's mask. **Occluders are unknown** (``occluders_unknown``, default on): in a
person's mask, the pixels of the image's other annotations (other people, crowd regions) outside the person are
`shards.masks.UNKNOWN`, not background: COCO annotates what is visible, so where another person stands in front the
body may continue behind them, and a silhouette term must not push it out of there
(``extra["mask_unknown_px"]`` counts them).

Keys: ``coco/<image id, 12 digits>_a<annotation id>``, e.g. ``coco/000000000785_a442619``: the annotation id is
COCO's own, stable across re-orderings and shared by the 2014 and 2017 releases, which re-split the same images.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from core.joints import COCO_JOINTS, to_canonical
from pipelines.adapters.base import (
    AnnotationFileError,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    image_folder,
    image_path_under,
    joint_confidence,
    occluded_names,
    resolve_under,
)
from shards.masks import MASK_NAMES, UNKNOWN, LabelMap, MaskError, coco_mask
from shards.schema import make_key

IMAGE_FIELDS = ("file_name", "width", "height")  # what a person's record reads from its image's entry
VISIBILITY_FLAGS = {0.0, 1.0, 2.0}  # COCO's v of each keypoint: not labelled, labelled but not visible, visible

# COCO's own keypoint names, in its order; a file whose person category lists others is not this format.
COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)


@dataclass(frozen=True, kw_only=True)
class CocoConfig(CheckConfig):
    """Options of the COCO adapter (the checks: `CheckConfig`).

    Attributes:
        annotation_file: the keypoints json, absolute or relative to the root. Default: the one
            ``person_keypoints_<split>*.json`` under ``root`` or ``root/annotations``.
        image_dir: the folder holding the json's ``file_name``s. Default: ``<root>/<subset>`` or
            ``<root>/images/<subset>`` where the json is ``person_keypoints_<subset>.json`` (e.g. ``train2014``),
            else the root itself.
        bbox_expand: box side = ``bbox_expand · max(w, h)`` (SPIN: 1.2).
        occluders_unknown: mark the image's other annotations (people, crowd regions) unknown in a person's mask
            outside the person (module docstring); False: background, the annotation's mask alone.
    """

    annotation_file: Path | None = None
    image_dir: Path | None = None
    bbox_expand: float = 1.2
    occluders_unknown: bool = True


class CocoAdapter:
    """COCO person keypoints; see the module docstring."""

    name = "coco"
    splits = ("train", "val")
    config_type = CocoConfig
    what = "a COCO keypoints file"                    # for AnnotationFileError
    annotation_glob = "person_keypoints_{split}*.json"  # the annotation file of a split, under root or annotations/

    def read(self, root: Path, split: str, config: CocoConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per annotation of the keypoints json (sorted by image, then id);
        `AnnotationFileError` when the json is not a COCO keypoints file. Annotations of an image id that two images
        share, and annotations that share an id, are ``duplicate_record`` rejects."""
        config = config or CocoConfig()
        check_split(self, split)
        root = Path(root)
        path = resolve_under(root, config.annotation_file) or find_annotation_file(root, split, self.annotation_glob)
        if not path.is_file():
            raise DatasetError(f"COCO annotation file {path} does not exist")
        builder = RecordBuilder(self.name, split, config, root=root)
        source = display_path(path, root)
        image_root, image_dir = image_folder(root, resolve_under(root, config.image_dir)
                                             or self.default_image_dir(root, path, split))

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            for name in ("images", "annotations"):  # a string would be read letter by letter, a dict as its keys
                if not isinstance(data[name], list):
                    raise TypeError(f"its {name!r} is a {type(data[name]).__name__}, not a list")
            image_ids = Counter(int(image["id"]) for image in data["images"])
            images = {int(image["id"]): image for image in data["images"]}
            annotations = sorted(data["annotations"], key=_order)
            _check_categories(data.get("categories", []))
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as err:  # JSONDecodeError: ValueError
            raise AnnotationFileError(path, self.what, err) from None
        shared = {i: n for i, n in image_ids.items() if n > 1}  # which picture such an annotation is of is unknown
        annotation_ids = Counter(_order(a)[2] for a in annotations if _order(a)[0] == 0)

        for (_, image_id), group in groupby(annotations, key=lambda a: _order(a)[:2]):
            group = list(group)
            image = images.get(image_id) if image_id not in shared else None
            decoded = _image_masks(group, image) if config.occluders_unknown and image is not None else None
            for annotation in group:
                yield self._person(builder, image_root, image_dir, source, images, annotation, config, shared,
                                   annotation_ids, decoded)

    def _person(self, builder: RecordBuilder, image_root: Path, image_dir: PurePosixPath, source: str,
                images: dict[int, dict[str, Any]], annotation: Any, config: CocoConfig, shared: dict[int, int],
                annotation_ids: Counter[int], decoded: "_ImageMasks | None" = None) -> Output:
        if not isinstance(annotation, dict):
            return builder.reject(source, f"annotation {str(annotation)[:40]!r}", "malformed_annotation",
                                  f"an annotation is a {type(annotation).__name__}, not an object")
        record, key = f"annotation {annotation.get('id')}", ""
        try:
            image_id, annotation_id = int(annotation["image_id"]), int(annotation["id"])
            key = make_key(self.name, f"{image_id:012d}", f"a{annotation_id}")
            if image_id in shared:
                return builder.reject(source, record, "duplicate_record", (
                    f"image id {image_id} is given to {shared[image_id]} images in {source}, so which picture this "
                    f"annotation is of is unknown; fix the image ids"), key)
            if annotation_ids[annotation_id] > 1:
                return builder.reject(source, record, "duplicate_record", (
                    f"annotation id {annotation_id} is given to {annotation_ids[annotation_id]} annotations in "
                    f"{source}; fix the annotation ids"), key)
            image = images.get(image_id)
            if image is None:
                return builder.reject(source, record, "malformed_annotation",
                                      f"its image_id {image_id} is not the id of an image in {source}", key)
            raw = np.asarray(annotation["keypoints"], dtype=np.float64).reshape(len(COCO_JOINTS), 3)
            flags = set(raw[:, 2].tolist()) - VISIBILITY_FLAGS
            if flags:
                return builder.reject(source, record, "malformed_annotation", (
                    f"keypoint visibility flags must be 0 (not labelled), 1 (labelled, not visible) or 2 (visible); "
                    f"got {', '.join(f'{v:g}' for v in sorted(flags))}"), key)
            x, y, w, h = (float(v) for v in annotation["bbox"])
            crowd = bool(annotation.get("iscrowd", 0))
            image_path = image_path_under(image_dir, image["file_name"])
            expected_size = (int(image["width"]), int(image["height"]))
            wholebody, part_extra = self.wholebody(annotation, config)
            segmentation = annotation.get("segmentation")
        except KeyError as err:
            name = err.args[0]
            where = (f"its image (id {annotation['image_id']})" if name in IMAGE_FIELDS and name not in annotation
                     else "the annotation")
            return builder.reject(source, record, "malformed_annotation", f"{where} has no {name!r}", key)
        except (TypeError, ValueError, OverflowError) as err:
            return builder.reject(source, record, "malformed_annotation",
                                  f"cannot read the annotation: {type(err).__name__}: {err}", key)
        if crowd:
            return builder.reject(source, record, "crowd", "iscrowd=1: a crowd region, not one person", key)

        if decoded is not None and annotation_id in decoded.masks:
            mask, mask_extra = decoded.person(annotation_id)
        else:
            mask, mask_extra = person_mask(segmentation, expected_size)
        labelled, occluded = raw[:, 2] > 0, raw[:, 2] == 1
        conf = joint_confidence(labelled, occluded, config.occluded_confidence)
        keypoints = to_canonical(np.column_stack([raw[:, :2], conf]), "coco")
        return builder.person(
            key=key, source=source, record=record, image_root=image_root,
            image_path=image_path,
            center=np.array([x + w / 2.0, y + h / 2.0]), scale=config.bbox_expand * max(w, h) / 200.0,
            keypoints_2d=keypoints, expected_size=expected_size, wholebody=wholebody, mask=mask,
            extra={"image_id": image_id, "annotation_id": annotation_id, "bbox_xywh": [x, y, w, h],
                   "occluded": occluded_names(occluded & labelled, COCO_JOINTS)} | part_extra | mask_extra)


    def wholebody(self, annotation: dict[str, Any], config: CocoConfig) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The annotation's (161, 3) whole-body keypoints and what they add to ``extra``: none in COCO itself (a
        subclass's formats have them). Raises KeyError, TypeError or ValueError for a malformed annotation (a
        ``malformed_annotation`` reject)."""
        return None, {}

    def default_image_dir(self, root: Path, annotation_file: Path, split: str) -> Path:
        """The image folder when ``image_dir`` is not given (`default_image_dir`)."""
        return default_image_dir(root, annotation_file)


def person_mask(segmentation: Any, size: tuple[int, int]) -> tuple[LabelMap | None, dict[str, Any]]:
    """The person mask of an annotation's ``segmentation`` in an image of ``size`` (width, height) px, and what
    it adds to ``extra``: (None, {}) when there is none (absent, empty polygons or counts), (None,
    {"mask_error": why}) when it cannot be decoded (module docstring)."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation) or (
            isinstance(segmentation, dict) and not len(segmentation.get("counts") or [])):
        return None, {}
    try:
        mask, provenance = coco_mask(segmentation, (size[1], size[0]))
        return LabelMap.from_array(mask, MASK_NAMES, provenance), {}
    except (MaskError, TypeError, ValueError) as err:
        return None, {"mask_error": f"segmentation not decoded: {err}"}


@dataclass(frozen=True)
class _ImageMasks:
    """The decoded masks of one image's annotations (`person_mask` of each, by annotation id) and the union of
    all of them, crowd regions included."""

    masks: dict[int, tuple[LabelMap | None, dict[str, Any]]]
    union: np.ndarray | None

    def person(self, annotation_id: int) -> tuple[LabelMap | None, dict[str, Any]]:
        """The person's mask with the other annotations' pixels outside it `UNKNOWN` (module docstring)."""
        mask, extra = self.masks[annotation_id]
        if mask is None or self.union is None:
            return mask, extra
        own = mask.array() == 1
        others = self.union & ~own
        if not others.any():
            return mask, extra
        labels = np.where(others, UNKNOWN, own).astype(np.uint8)
        return LabelMap.from_array(labels, MASK_NAMES, mask.provenance), extra | {"mask_unknown_px": int(others.sum())}


def _image_masks(group: list[Any], image: Any) -> _ImageMasks | None:
    """Every annotation of one image decoded once (None when the image's size cannot be read: the annotations are
    rejected or keep their own masks)."""
    try:
        size = (int(image["width"]), int(image["height"]))
    except (KeyError, TypeError, ValueError):
        return None
    masks: dict[int, tuple[LabelMap | None, dict[str, Any]]] = {}
    union = None
    for annotation in group:
        try:
            annotation_id = int(annotation["id"])
            mask, extra = person_mask(annotation.get("segmentation"), size)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        masks[annotation_id] = (mask, extra)
        if mask is not None:
            pixels = mask.array() == 1
            union = pixels if union is None else union | pixels
    return _ImageMasks(masks, union)


def _order(annotation: Any) -> tuple[int, int, int]:
    """Sort key (image id, annotation id); records too broken to have one go last, to be rejected there."""
    try:
        return 0, int(annotation["image_id"]), int(annotation["id"])
    except (KeyError, TypeError, ValueError):
        return 1, 0, 0


def _check_categories(categories: list[dict[str, Any]]) -> None:
    """Raise ValueError when the person category lists keypoints other than COCO's 17."""
    for category in categories:
        names = category.get("keypoints")
        if names is not None and tuple(names) != COCO_KEYPOINT_NAMES:
            raise ValueError(f"category {category.get('name')!r} lists keypoints {names}, not COCO's 17")


def find_annotation_file(root: Path, split: str, glob: str = CocoAdapter.annotation_glob) -> Path:
    """The single ``glob`` file (default ``person_keypoints_<split>*.json``) under ``root`` or ``root/annotations``."""
    pattern = glob.format(split=split)
    found = sorted(p for folder in (root, root / "annotations") for p in folder.glob(pattern))
    if len(found) != 1:
        what = "none" if not found else ", ".join(str(p) for p in found)
        raise DatasetError(f"looked for one {pattern} in {root} and {root / 'annotations'}, "
                           f"found {what}; pass annotation_file")
    return found[0]


def default_image_dir(root: Path, annotation_file: Path) -> Path:
    """``<root>/<subset>`` or ``<root>/images/<subset>`` for ``person_keypoints_<subset>.json``, else the root."""
    match = re.fullmatch(r"person_keypoints_(\w+)\.json", annotation_file.name)
    if match:
        for folder in (root / match.group(1), root / "images" / match.group(1)):
            if folder.is_dir():
                return folder
    return root
