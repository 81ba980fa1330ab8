"""Writers of the single-image datasets' native layouts: COCO, MPII, LSP and LSP-extended, and the whole-body
COCO-WholeBody and OpenPose JSON.

Each writes the files its real release has, in the release's conventions (1-based MATLAB pixels for MPII, LSP and
LSPET; COCO 0-based), so that the dataset's adapter in pipelines/adapters reads them as it reads the real thing.
The keypoints are the body's canonical joints projected, taken in the dataset's own joint order
(`core.joints.DATASET_JOINTS`). A joint outside the image is not labelled (COCO v = 0, no MPII point, LSPET
flag 0); LSP labels every joint, so its people are framed whole. Self-occlusion is not computed for body
joints: every labelled joint is marked visible. Whole-body hand, face and pupil points are labelled only where the
picture shows them (`wholebody_labels`), as COCO-WholeBody's annotators and OpenPose's detectors see them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from core.joints import COCO_JOINTS, LSP_JOINTS, MPII_JOINTS, indices
from core.wholebody import (
    COCO_WHOLEBODY_FIELDS,
    COCO_WHOLEBODY_JOINTS,
    NUM_WHOLEBODY,
    OPENPOSE_JSON_FIELDS,
    OPENPOSE_WHOLEBODY_JOINTS,
    wholebody_indices,
)
from pipelines.adapters.label_files import DEFAULT_LABELS_DIR, LABELS_FILE, key_file_name
from pipelines.synthetic.paint import SEGMENT_NAMES, Picture
from pipelines.synthetic.scene import Person
from shards.masks import encode_png

MATLAB = 1.0  # 1-based MATLAB pixels = fitloop's 0-based + 1
COCO_KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                       "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
SYNTHETIC_LICENSE = {"id": 1, "name": "fitloop synthetic data (generated; no third-party images)", "url": ""}


def inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,) bool: 0-based px points (N, 2) within the image's area [-0.5, W - 0.5] × [-0.5, H - 0.5]."""
    return ((points >= -0.5) & (points <= np.asarray(size, dtype=np.float64) - 0.5)).all(axis=1)


def dataset_points(person: Person, names: tuple[str, ...]) -> np.ndarray:
    """The person's projected keypoints (J, 2) px, 0-based, in a dataset's joint order."""
    return person.keypoints[indices(names)]


# --- Part labels (every dataset) -------------------------------------------------------------------------------------



def write_part_labels(root: Path, people: list[Person]) -> Path:
    """``<root>/fitloop_parts``: a label folder (`pipelines.adapters.label_files`) of every painted person's exact
    part labels (`paint.SEGMENT_NAMES`), one PNG per sample key at its image's size, with ``labels.json``
    (kind "parts", provenance "synthetic-exact"; ``"mask": true``: the labels' pixels are the person's exact mask, for
    formats whose annotation carries none)."""
    folder = root / DEFAULT_LABELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABELS_FILE).write_text(json.dumps({"kind": "parts", "names": list(SEGMENT_NAMES),
                                                  "provenance": "synthetic-exact", "mask": True}, indent=2) + "\n",
                                      encoding="utf-8")
    for person in people:
        labels = person.silhouette.labels if person.silhouette is not None else None
        if labels is not None:
            (folder / key_file_name(person.key)).write_bytes(encode_png(labels.array()))
    return folder


# --- COCO ----------------------------------------------------------------------------------------------------------

def write_coco(root: Path, pictures: list[Picture], people: list[Person]) -> list[Path]:
    """``annotations/person_keypoints_<subset>.json`` for subsets train2014 and val2014 (images in ``<subset>/``).

    Person ids: ``ids["subset"]``, ``ids["image_id"]``, ``ids["annotation_id"]``. Box: the visible silhouette's
    (COCO's continuous x, y, w, h); segmentation: its uncompressed RLE; area: its pixels.
    """
    return _write_coco_layout(root, pictures, people, _coco_annotation,
                              "fitloop synthetic people in the COCO person-keypoints layout",
                              lambda subset: f"person_keypoints_{subset}.json")


def _write_coco_layout(root: Path, pictures: list[Picture], people: list[Person],
                       annotate: Callable[[Person, tuple[int, int]], dict[str, Any]], description: str,
                       file_name: Callable[[str], str]) -> list[Path]:
    """A COCO-style annotation file per subset (``ids["subset"]``) under ``root/annotations``: COCO's info,
    licences, person category, images, and ``annotate(person, image size)`` per person."""
    by_subset: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, picture in enumerate(pictures):
        mine = [p for p in people if p.picture == i]
        subset = mine[0].ids["subset"]
        files = by_subset.setdefault(subset, {"images": [], "annotations": []})
        files["images"].append({"id": mine[0].ids["image_id"], "file_name": picture.path.name,
                                "width": picture.size[0], "height": picture.size[1], "license": 1})
        for person in mine:
            files["annotations"].append(annotate(person, picture.size))
    written = []
    for subset, files in sorted(by_subset.items()):
        data = {"info": {"description": description, "version": "1.0"},
                "licenses": [SYNTHETIC_LICENSE],
                "categories": [{"supercategory": "person", "id": 1, "name": "person",
                                "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": COCO_SKELETON}],
                **files}
        path = root / "annotations" / file_name(subset)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        written.append(path)
    return written


def _coco_annotation(person: Person, size: tuple[int, int]) -> dict[str, Any]:
    points = dataset_points(person, COCO_JOINTS)
    labelled = inside(points, size)
    keypoints = []
    for (x, y), ok in zip(points, labelled):
        keypoints += [round(float(x), 2), round(float(y), 2), 2] if ok else [0, 0, 0]
    sil = person.silhouette
    x0, y0, x1, y1 = sil.box if sil is not None and sil.box else (0, 0, -1, -1)
    return {"id": person.ids["annotation_id"], "image_id": person.ids["image_id"], "category_id": 1,
            "keypoints": keypoints, "num_keypoints": int(labelled.sum()),
            "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
            "area": float(sil.area if sil else 0), "iscrowd": 0,
            "segmentation": {"counts": sil.rle if sil else [], "size": [size[1], size[0]]}}


# --- MPII ----------------------------------------------------------------------------------------------------------

def write_mpii(root: Path, pictures: list[Picture], people: list[Person]) -> list[Path]:
    """The release struct ``mpii_human_pose_v1_u12_1.mat`` and pose-hg's ``annot/train.h5`` / ``annot/valid.h5``.

    Person ids: ``ids["image_index"]`` (0-based annolist index), ``ids["person"]`` (0-based annorect index),
    ``ids["split"]`` ("train" or "val": the pose-hg file that lists it). Every image is ``img_train`` = 1 (MPII
    withholds its test annotations, so a synthetic "test" would say nothing). Written: ``annolist(i).image.name``,
    ``.annorect(r).{x1, y1, x2, y2}`` (a head box: the square on upper neck to head top), ``.scale`` (mesh height
    / 200), ``.objpos`` (between pelvis and thorax), ``.annopoints.point(k).{id, x, y, is_visible}``; ``img_train``,
    ``single_person`` (every person: they stand apart), ``act`` (unlabelled: act_id -1). Not written:
    ``video_list``, ``vidx``, ``frame_sec``.
    """
    annolist, singles = [], []
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for i, picture in enumerate(pictures):
        mine = sorted((p for p in people if p.picture == i), key=lambda p: p.ids["person"])
        rects = []
        for person in mine:
            rect, row = _mpii_person(person, picture)
            rects.append(rect)
            rows[person.ids["split"]].append(row)
        annolist.append({"image": {"name": picture.path.name}, "annorect": _structs(rects)})
        singles.append(np.arange(1, len(mine) + 1, dtype=np.float64).reshape(-1, 1))
    count = len(annolist)
    act = _structs([{"cat_name": "", "act_name": "", "act_id": -1.0}] * count).reshape(-1, 1)
    single_person = np.empty((count, 1), dtype=object)
    for i, ids in enumerate(singles):
        single_person[i, 0] = ids
    release = {"annolist": _structs(annolist), "img_train": np.ones((1, count)), "single_person": single_person,
               "act": act, "version": "12"}
    path = root / "mpii_human_pose_v1_u12_1.mat"
    scipy.io.savemat(path, {"RELEASE": release}, do_compression=True)
    written = [path]
    for split, name in (("train", "train.h5"), ("val", "valid.h5")):
        written.append(_write_hg_h5(root / "annot" / name, rows[split]))
    return written


def _mpii_person(person: Person, picture: Picture) -> tuple[dict[str, Any], dict[str, Any]]:
    """One annorect (1-based) and its pose-hg h5 row."""
    points = dataset_points(person, MPII_JOINTS)
    labelled = inside(points, picture.size)
    point_rows = [{"id": float(k), "x": float(x) + MATLAB, "y": float(y) + MATLAB, "is_visible": 1.0}
                  for k, ((x, y), ok) in enumerate(zip(points, labelled)) if ok]
    neck, top = (person.keypoints[indices(("Neck (LSP)", "Top of Head (LSP)"))] + MATLAB)
    side = float(np.linalg.norm(top - neck))
    head_centre = (neck + top) / 2.0
    objpos = person.keypoints[indices(("Pelvis (MPII)", "Thorax (MPII)"))].mean(axis=0) + MATLAB
    scale = (person.vertex_box[3] - person.vertex_box[1]) / 200.0
    rect = {"x1": head_centre[0] - side / 2, "y1": head_centre[1] - side / 2, "x2": head_centre[0] + side / 2,
            "y2": head_centre[1] + side / 2, "scale": scale, "objpos": {"x": objpos[0], "y": objpos[1]},
            "annopoints": {"point": _structs(point_rows)} if point_rows else np.zeros((0, 0))}
    part = np.where(labelled[:, None], np.trunc(points + MATLAB), 0.0)  # pose-hg: integer px, (0, 0) = absent
    row = {"imgname": picture.path.name, "part": part, "visible": labelled.astype(np.float64),
           "center": objpos + np.array([0.0, 15.0 * scale]), "scale": 1.25 * scale,
           "index": float(person.ids["image_index"]), "person": float(person.ids["person"]),
           "normalize": 0.6 * side * np.sqrt(2.0)}
    return rect, row


def _write_hg_h5(path: Path, rows: list[dict[str, Any]]) -> Path:
    """pose-hg-train's MPII annotation file: one row per person (fields as `_mpii_person` builds them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        h5["imgname"] = np.array([r["imgname"].encode() for r in rows], dtype="S13") if rows else \
            np.zeros((0,), dtype="S13")
        h5["part"] = np.array([r["part"] for r in rows], dtype=np.float64).reshape(len(rows), len(MPII_JOINTS), 2)
        h5["visible"] = np.array([r["visible"] for r in rows], dtype=np.float64).reshape(len(rows), len(MPII_JOINTS))
        h5["center"] = np.array([r["center"] for r in rows], dtype=np.float64).reshape(len(rows), 2)
        for name in ("scale", "index", "person", "normalize"):
            h5[name] = np.array([r[name] for r in rows], dtype=np.float64)
    return path


def _structs(rows: list[dict[str, Any]]) -> np.ndarray:
    """A 1 × N MATLAB struct array for scipy.io.savemat (a structured object array; dicts become structs)."""
    names = list(rows[0]) if rows else ["empty"]
    array = np.zeros((1, len(rows)), dtype=[(name, "O") for name in names])
    for i, row in enumerate(rows):
        for name, value in row.items():
            array[0, i][name] = value
    return array


# --- LSP and LSP-extended ----------------------------------------------------------------------------------------

def write_lsp(root: Path, pictures: list[Picture], people: list[Person], extended: bool) -> list[Path]:
    """``joints.mat`` and ``images/im%04d.jpg`` (LSP: 3 × 14 × N, flag 0 = visible) or ``im%05d.jpg`` (LSPET:
    14 × 3 × N, flag 1 = visible). One person per image, in image order; 1-based px."""
    columns = []
    for picture, person in zip(pictures, sorted(people, key=lambda p: p.picture)):
        points = dataset_points(person, LSP_JOINTS) + MATLAB
        visible = inside(points - MATLAB, picture.size)
        flag = visible.astype(np.float64) if extended else (~visible).astype(np.float64)
        columns.append(np.column_stack([points, flag]))  # (14, 3)
    joints = np.stack(columns, axis=-1) if columns else np.zeros((len(LSP_JOINTS), 3, 0))  # (14, 3, N)
    path = root / "joints.mat"
    scipy.io.savemat(path, {"joints": joints if extended else np.transpose(joints, (1, 0, 2))})
    return [path]


# --- Whole-body: COCO-WholeBody and OpenPose --------------------------------------------------------------------

# COCO-WholeBody's parts beyond COCO's 17 body keypoints: field -> (its validity flag, its box field or None,
# how its third value is written: "coco_v" (2 = visible), "one" (the release's 1.0 for face points) or "score"
# (the release's hand scores in (0, 1])).
COCO_WHOLEBODY_PARTS: dict[str, tuple[str, str | None, str]] = {
    "foot_kpts": ("foot_valid", None, "coco_v"), "face_kpts": ("face_valid", "face_box", "one"),
    "lefthand_kpts": ("lefthand_valid", "lefthand_box", "score"),
    "righthand_kpts": ("righthand_valid", "righthand_box", "score"),
}
PART_OF_BOX: dict[str, str] = {"face_box": "face", "lefthand_box": "left_hand", "righthand_box": "right_hand"}
OPENPOSE_VERSION = 1.3  # the JSON layout OpenPose 1.3+ writes with --write_json


# The whole-body points each whole-body dataset's files carry (the rest of the 49 body joints they have not).
CARRIED: dict[str, np.ndarray] = {"coco_wholebody": wholebody_indices(COCO_WHOLEBODY_JOINTS),
                                  "openpose": wholebody_indices(OPENPOSE_WHOLEBODY_JOINTS)}


def wholebody_labels(person: Person, size: tuple[int, int], dataset: str | None = None) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """A whole-body person's points (161, 2) px, 0-based, and which are labelled (161,) bool: provided by the
    model, inside the image, and, for hand, face and pupil points, shown by the picture (`Person.shown`); with
    ``dataset``, also among the points its files carry (`CARRIED`)."""
    points = person.wholebody_keypoints
    shown = np.where(person.probes, person.shown, True)
    carried = np.ones(NUM_WHOLEBODY, dtype=bool)
    if dataset is not None:
        carried[:] = False
        carried[CARRIED[dataset]] = True
    return points, inside(points, size) & person.provided & shown & carried


def _flat(points: np.ndarray, labelled: np.ndarray, third: np.ndarray) -> list[float]:
    """[x, y, third] per point, [0, 0, 0] where not labelled."""
    out: list[float] = []
    for (x, y), ok, value in zip(points, labelled, third):
        out += [round(float(x), 2), round(float(y), 2), value] if ok else [0, 0, 0]
    return out


def write_coco_wholebody(root: Path, pictures: list[Picture], people: list[Person]) -> list[Path]:
    """COCO-WholeBody's ``annotations/coco_wholebody_<split>_v1.0.json`` for splits train and val (images in
    ``train2017/``, ``val2017/``): a COCO person-keypoints file (`write_coco`'s fields, body keypoints as COCO's)
    whose annotations also hold ``foot_kpts`` (6), ``face_kpts`` (68), ``lefthand_kpts``, ``righthand_kpts`` (21)
    as [x, y, v] triples, ``*_valid`` (a part with any labelled point) and ``face_box``, ``lefthand_box``,
    ``righthand_box`` [x, y, w, h] (the part's drawn pixels; zeros when invalid). Feet take COCO's v (2 =
    visible); face points 1.0 and hand points a score in (0, 1], as the release writes them; 0, 0, 0 where not
    labelled (`wholebody_labels`)."""
    return _write_coco_layout(root, pictures, people, _coco_wholebody_annotation,
                              "fitloop synthetic whole-body people in the COCO-WholeBody layout",
                              lambda subset: f"coco_wholebody_{subset.removesuffix('2017')}_v1.0.json")


def _coco_wholebody_annotation(person: Person, size: tuple[int, int]) -> dict[str, Any]:
    annotation = _coco_annotation(person, size)
    points, labelled = wholebody_labels(person, size)
    boxes = person.silhouette.part_boxes if person.silhouette is not None else {}
    for field, (valid_field, box_field, third) in COCO_WHOLEBODY_PARTS.items():
        idx = wholebody_indices(COCO_WHOLEBODY_FIELDS[field])
        values = {"coco_v": np.full(len(idx), 2), "one": np.full(len(idx), 1.0),
                  "score": person.scores[idx]}[third]
        annotation[field] = _flat(points[idx], labelled[idx], values.tolist())
        valid = bool(labelled[idx].any())
        annotation[valid_field] = valid
        if box_field is not None:
            box = boxes.get(PART_OF_BOX[box_field]) if valid else None
            annotation[box_field] = ([float(box[0]), float(box[1]), float(box[2] - box[0] + 1),
                                      float(box[3] - box[1] + 1)] if box else [0.0, 0.0, 0.0, 0.0])
    return annotation


def write_openpose(root: Path, pictures: list[Picture], people: list[Person]) -> list[Path]:
    """OpenPose's ``--write_json keypoints --hand --face`` output: ``keypoints/<image stem>_keypoints.json`` per
    image (images in ``images/``), ``{"version": 1.3, "people": [...]}`` with each person's
    ``pose_keypoints_2d`` (BODY_25), ``face_keypoints_2d`` (70: iBUG 68 + pupils), ``hand_left_keypoints_2d``,
    ``hand_right_keypoints_2d`` (21) as flat x, y, c (c in (0, 1] where labelled, 0, 0, 0 elsewhere:
    `wholebody_labels`), the 3D arrays empty, ``person_id`` [-1]; people in ``ids["person"]`` order."""
    written = []
    for i, picture in enumerate(pictures):
        mine = sorted((p for p in people if p.picture == i), key=lambda p: p.ids["person"])
        entries = []
        for person in mine:
            points, labelled = wholebody_labels(person, picture.size)
            entry: dict[str, Any] = {"person_id": [-1]}
            for field, names in OPENPOSE_JSON_FIELDS.items():
                idx = wholebody_indices(names)
                entry[field] = _flat(points[idx], labelled[idx], person.scores[idx].tolist())
            for field in OPENPOSE_JSON_FIELDS:
                entry[field.replace("_2d", "_3d")] = []
            entries.append(entry)
        path = root / "keypoints" / f"{picture.path.stem}_keypoints.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": OPENPOSE_VERSION, "people": entries}), encoding="utf-8")
        written.append(path)
    return written
