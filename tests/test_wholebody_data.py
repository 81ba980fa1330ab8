"""Whole-body keypoints as data: COCO-WholeBody and OpenPose JSON files (written here in their released layouts)
become records with 161-point whole-body keypoints, shards carry them through the crop, the reader normalises
and flips them, old shards still read, pictures draw hands and face, and bad files become rejects with reasons.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_shards import blob_centroid, blob_image

from core.joints import JOINT_INDEX, OPENPOSE_NAMES
from core.wholebody import (
    COCO_WHOLEBODY_FIELDS,
    FACE_NAMES,
    LEFT_HAND_NAMES,
    NUM_WHOLEBODY,
    OPENPOSE_JSON_FIELDS,
    PUPIL_NAMES,
    RIGHT_HAND_NAMES,
    WHOLEBODY_INDEX,
)
from fitloop.cli import main
from pipelines.adapters import ADAPTERS, iter_dataset
from pipelines.flow_params import check_datasets
from render.draw import FACE_COLOUR, HAND_COLOURS
from render.sample_picture import render_panel, scale_keypoints
from shards.augment import AugmentParams
from shards.crop import transform_points
from shards.lookup import find_samples
from shards.reader import ReaderConfig, ShardReader
from shards.sample import SampleFormatError, decode_sample, encode_npy
from shards.schema import PersonRecord, Reject
from shards.verify import check_sample, verify_set

# The released layouts' per-part array lengths (flat x, y, v triples): COCO-WholeBody's data_format.md and
# OpenPose's --write_json output (BODY_25, 70 face points with the pupils, 21 per hand).
COCO_WHOLEBODY_LENGTHS = {"keypoints": 51, "foot_kpts": 18, "face_kpts": 204, "lefthand_kpts": 63,
                          "righthand_kpts": 63}
OPENPOSE_LENGTHS = {"pose_keypoints_2d": 75, "face_keypoints_2d": 210, "hand_left_keypoints_2d": 63,
                    "hand_right_keypoints_2d": 63}
COCO_KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                       "left_knee", "right_knee", "left_ankle", "right_ankle"]
IMAGE_SIZE = (320, 240)
BBOX = [60.0, 20.0, 200.0, 200.0]          # x, y, w, h: the person box
MARKED = ("left_thumb", "nose1")           # points drawn into the image as blobs, for the pixel test
MARKED_AT = {"left_thumb": (103.4, 151.7), "nose1": (187.2, 64.6)}


def part_positions(seed: int) -> dict[str, np.ndarray]:
    """Whole-body name -> (x, y) px inside the person box for every point either format names, distinct points."""
    rng = np.random.default_rng(seed)
    names = sorted({n for names in list(COCO_WHOLEBODY_FIELDS.values()) + list(OPENPOSE_JSON_FIELDS.values())
                    for n in names})
    x0, y0, w, h = BBOX
    at = {n: rng.uniform([x0 + 10, y0 + 10], [x0 + w - 10, y0 + h - 10]) for n in names}
    at.update({n: np.array(p) for n, p in MARKED_AT.items()})
    return at


def flat(names, at, score) -> list[float]:
    """[x, y, score] * K for ``names`` (score: a number, or name -> number)."""
    out = []
    for n in names:
        out += [round(float(at[n][0]), 3), round(float(at[n][1]), 3), score(n) if callable(score) else score]
    return out


def coco_wholebody_annotation(ann_id: int, image_id: int, at: dict[str, np.ndarray]) -> dict:
    """One annotation in COCO-WholeBody's released layout; hands scored as the release scores them (fractions)."""
    fields = COCO_WHOLEBODY_FIELDS
    return {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": BBOX, "area": 4000.0,
        "segmentation": [[60.0, 20.0, 260.0, 20.0, 260.0, 220.0]], "num_keypoints": 17,
        "keypoints": flat(fields["keypoints"], at, lambda n: 1 if n == "Left Knee" else 2),
        "foot_kpts": flat(fields["foot_kpts"], at, 2.0),
        "face_kpts": flat(fields["face_kpts"], at, 1.0),
        "lefthand_kpts": flat(fields["lefthand_kpts"], at, lambda n: 0.0 if n == "left_pinky" else 0.0381),
        "righthand_kpts": flat(fields["righthand_kpts"], at, 0.5),
        "face_box": [150.0, 40.0, 60.0, 60.0], "lefthand_box": [90.0, 130.0, 40.0, 40.0],
        "righthand_box": [0.0, 0.0, 0.0, 0.0],
        "face_valid": True, "lefthand_valid": True, "righthand_valid": False, "foot_valid": True,
    }


def write_image(path: Path, at: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(blob_image(IMAGE_SIZE, [tuple(at[n]) for n in MARKED], sigma=3.0)).save(path)


@pytest.fixture(scope="module")
def coco_wb_root(tmp_path_factory) -> Path:
    """A COCO-WholeBody folder: annotations/coco_wholebody_val_v1.0.json and val2017/ with one good person and
    one bad one per fault (each on its own image)."""
    root = tmp_path_factory.mktemp("coco_wholebody")
    at = part_positions(0)
    good = coco_wholebody_annotation(101, 1, at)
    short = coco_wholebody_annotation(102, 2, at) | {"face_kpts": good["face_kpts"][:-3]}  # 67 face points
    nan = coco_wholebody_annotation(103, 3, at)
    nan["lefthand_kpts"] = list(nan["lefthand_kpts"])
    nan["lefthand_kpts"][3 * LEFT_HAND_NAMES.index("left_index2")] = float("nan")
    outside = coco_wholebody_annotation(104, 4, at)
    outside["lefthand_kpts"] = list(outside["lefthand_kpts"])
    outside["lefthand_kpts"][3 * LEFT_HAND_NAMES.index("left_ring3") + 1] = 400.0  # below the 240 px image
    plain = {k: v for k, v in coco_wholebody_annotation(105, 5, at).items() if k != "face_kpts"}  # plain COCO
    annotations = [good, short, nan, outside, plain]
    assert {f: len(good[f]) for f in COCO_WHOLEBODY_LENGTHS} == COCO_WHOLEBODY_LENGTHS  # the released layout
    images = [{"id": a["image_id"], "file_name": f"{a['image_id']:012d}.jpg", "width": IMAGE_SIZE[0],
               "height": IMAGE_SIZE[1]} for a in annotations]
    for image in images:
        write_image(root / "val2017" / image["file_name"], at)
    (root / "annotations").mkdir()
    (root / "annotations" / "coco_wholebody_val_v1.0.json").write_text(json.dumps({
        "info": {"description": "COCO-WholeBody", "version": "1.0"}, "images": images, "annotations": annotations,
        "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": COCO_KEYPOINT_NAMES,
                        "skeleton": [[16, 14]]}]}))
    return root


def openpose_person(at: dict[str, np.ndarray], hands: bool = True) -> dict:
    """One person of OpenPose's --write_json output; confidences are the detector's (fractions, 0 = missing)."""
    fields = OPENPOSE_JSON_FIELDS
    person = {"person_id": [-1], "pose_keypoints_2d": flat(fields["pose_keypoints_2d"], at, 0.8),
              "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
              "hand_right_keypoints_3d": []}
    if hands:
        person["face_keypoints_2d"] = flat(fields["face_keypoints_2d"], at, 0.6)
        person["hand_left_keypoints_2d"] = flat(fields["hand_left_keypoints_2d"], at,
                                                lambda n: 0.0 if n == "left_pinky" else 0.45)
        person["hand_right_keypoints_2d"] = flat(fields["hand_right_keypoints_2d"], at, 0.35)
    else:  # OpenPose run without --hand --face writes empty arrays
        person |= {"face_keypoints_2d": [], "hand_left_keypoints_2d": [], "hand_right_keypoints_2d": []}
    return person


@pytest.fixture(scope="module")
def openpose_root(tmp_path_factory) -> Path:
    """An OpenPose folder as its users have it: images/ and keypoints/<stem>_keypoints.json (train split)."""
    root = tmp_path_factory.mktemp("openpose")
    at = part_positions(1)
    write_image(root / "images" / "frame_0001.png", at)
    write_image(root / "images" / "frame_0002.png", at)
    (root / "keypoints").mkdir()
    coco18 = openpose_person(at) | {"pose_keypoints_2d": [1.0] * 54}  # OpenPose's 18-point COCO model
    assert {f: len(openpose_person(at)[f]) for f in OPENPOSE_LENGTHS} == OPENPOSE_LENGTHS  # OpenPose's layout
    (root / "keypoints" / "frame_0001_keypoints.json").write_text(json.dumps(
        {"version": 1.3, "people": [openpose_person(at), openpose_person(at, hands=False), coco18]}))
    (root / "keypoints" / "frame_0002_keypoints.json").write_text('{"version": 1.3, "people": [')  # cut short
    return root


# --- Adapters --------------------------------------------------------------------------------------------------

def test_coco_wholebody_record_has_every_part_and_the_coco_body(coco_wb_root):
    outputs = list(iter_dataset("coco_wholebody", coco_wb_root, "val"))
    records = [o for o in outputs if isinstance(o, PersonRecord)]
    assert [r.key for r in records] == ["coco_wholebody/000000000001_a101"]
    record, at = records[0], part_positions(0)
    wb = record.wholebody
    assert wb.shape == (NUM_WHOLEBODY, 3)
    # every labelled point of a valid part lands at its name's slot, at the file's pixel
    for field, names in COCO_WHOLEBODY_FIELDS.items():
        for name in names:
            if field == "righthand_kpts" or name == "left_pinky":
                continue
            np.testing.assert_allclose(wb[WHOLEBODY_INDEX[name], :2], at[name], atol=1e-3, err_msg=name)
    # confidences: COCO v for body and feet (v=1 occluded -> occluded_confidence 1.0 by default), hand scores in
    # (0, 1] -> 1, a score of 0 -> absent, an invalid part (righthand_valid false) -> absent despite its values
    assert wb[WHOLEBODY_INDEX["Left Knee"], 2] == 1.0 and wb[WHOLEBODY_INDEX["OP LHeel"], 2] == 1.0
    assert (wb[[WHOLEBODY_INDEX[n] for n in LEFT_HAND_NAMES if n != "left_pinky"], 2] == 1.0).all()
    assert (wb[WHOLEBODY_INDEX["left_pinky"]] == 0).all()
    assert (wb[[WHOLEBODY_INDEX[n] for n in RIGHT_HAND_NAMES]] == 0).all()
    assert (wb[[WHOLEBODY_INDEX[n] for n in PUPIL_NAMES]] == 0).all()  # COCO-WholeBody has no pupils
    assert (wb[:, 2] > 0).sum() == 17 + 6 + 68 + 20
    assert record.extra["part_boxes_xywh"] == {"face_box": [150.0, 40.0, 60.0, 60.0],
                                               "lefthand_box": [90.0, 130.0, 40.0, 40.0]}
    # the 49-joint keypoints are exactly what the COCO adapter makes of the same annotation's body
    coco = next(o for o in iter_dataset("coco", coco_wb_root, "val", annotation_file=(
        "annotations/coco_wholebody_val_v1.0.json"), image_dir="val2017") if o.key.endswith("_a101"))
    np.testing.assert_array_equal(record.keypoints_2d, coco.keypoints_2d)
    assert coco.wholebody is None  # COCO itself: body only


def test_coco_wholebody_bad_records_are_rejects_naming_record_and_reason(coco_wb_root):
    rejects = {o.record: o for o in iter_dataset("coco_wholebody", coco_wb_root, "val", occluded_confidence=0.5)
               if isinstance(o, Reject)}
    assert sorted(rejects) == ["annotation 102", "annotation 103", "annotation 104", "annotation 105"]
    short, nan, outside, plain = (rejects[f"annotation {i}"] for i in (102, 103, 104, 105))
    assert short.reason == "malformed_annotation" and "face_kpts has 201 values, expected 3 × 68 = 204" in \
        short.message
    assert nan.reason == "nan_keypoints" and "whole-body keypoints left_index2" in nan.message
    assert outside.reason == "keypoints_out_of_image" and "whole-body left_ring3" in outside.message
    assert plain.reason == "malformed_annotation" and "face_kpts" in plain.message
    assert all(r.source == "annotations/coco_wholebody_val_v1.0.json" for r in (short, nan, plain))


def test_out_of_image_whole_body_points_follow_the_policy(coco_wb_root):
    kept = {o.key: o for o in iter_dataset("coco_wholebody", coco_wb_root, "val", out_of_image="drop_joint")}
    dropped = kept["coco_wholebody/000000000004_a104"]
    assert isinstance(dropped, PersonRecord)
    assert (dropped.wholebody[WHOLEBODY_INDEX["left_ring3"]] == 0).all()
    assert dropped.extra["dropped_out_of_image_wholebody"] == ["left_ring3"]
    assert (dropped.wholebody[:, 2] > 0).sum() == 17 + 6 + 68 + 20 - 1
    kept = {o.key: o for o in iter_dataset("coco_wholebody", coco_wb_root, "val", out_of_image="keep")}
    assert kept["coco_wholebody/000000000004_a104"].wholebody[WHOLEBODY_INDEX["left_ring3"], 1] == 400.0


def test_coco_wholebody_occluded_body_and_feet_follow_coco_v(coco_wb_root):
    record = next(o for o in iter_dataset("coco_wholebody", coco_wb_root, "val", occluded_confidence=0.5)
                  if isinstance(o, PersonRecord))
    assert record.wholebody[WHOLEBODY_INDEX["Left Knee"], 2] == 0.5  # v=1
    assert record.keypoints_2d[JOINT_INDEX["Left Knee"], 2] == 0.5
    assert record.wholebody[WHOLEBODY_INDEX["Right Knee"], 2] == 1.0  # v=2
    assert record.wholebody[WHOLEBODY_INDEX["left_thumb"], 2] == 1.0  # hand scores are no COCO v


def test_openpose_records_keep_detector_confidences_and_bad_input_is_rejected(openpose_root):
    outputs = list(iter_dataset("openpose", openpose_root, "train"))
    by_record = {(o.source, o.record): o for o in outputs}
    assert len(outputs) == 4  # 3 persons of frame 1, frame 2 as a whole: read = written + rejected
    full = by_record[("keypoints/frame_0001_keypoints.json", "person 0")]
    body_only = by_record[("keypoints/frame_0001_keypoints.json", "person 1")]
    coco18 = by_record[("keypoints/frame_0001_keypoints.json", "person 2")]
    broken = by_record[("keypoints/frame_0002_keypoints.json", "*")]
    at = part_positions(1)
    assert isinstance(full, PersonRecord) and full.key == "openpose/frame_0001_p0"
    assert full.image_path == "images/frame_0001.png" and full.image_size == IMAGE_SIZE
    for names in OPENPOSE_JSON_FIELDS.values():
        for name in names:
            if name != "left_pinky":
                np.testing.assert_allclose(full.wholebody[WHOLEBODY_INDEX[name], :2], at[name], atol=1e-3)
    conf = full.wholebody[:, 2]
    assert conf[WHOLEBODY_INDEX["right_pupil"]] == pytest.approx(0.6)  # OpenPose face point 68
    assert conf[WHOLEBODY_INDEX["right_thumb2"]] == pytest.approx(0.35)
    assert conf[WHOLEBODY_INDEX["left_pinky"]] == 0 and (full.wholebody[WHOLEBODY_INDEX["left_pinky"]] == 0).all()
    # BODY_25 sits in the 49-joint OpenPose slots with its raw confidences, as SPIN keeps detections
    op = [JOINT_INDEX[n] for n in OPENPOSE_NAMES]
    np.testing.assert_allclose(full.keypoints_2d[op, 2], 0.8)
    assert (full.keypoints_2d[25:] == 0).all()
    # the box: SPIN's keypoint box (1.2 x the longer side) around every detected point
    present = full.wholebody[full.wholebody[:, 2] > 0, :2]
    np.testing.assert_allclose(full.center, (present.min(0) + present.max(0)) / 2, atol=1e-3)
    assert full.scale == pytest.approx(1.2 * (present.max(0) - present.min(0)).max() / 200, rel=1e-5)
    # a body-only detection: hands and face absent, not malformed
    assert isinstance(body_only, PersonRecord)
    assert (body_only.wholebody[49:] == 0).all() and (body_only.wholebody[op, 2] > 0).all()
    assert body_only.extra["openpose_parts"] == ["pose_keypoints_2d"]
    assert isinstance(coco18, Reject) and coco18.reason == "malformed_annotation"
    assert "pose_keypoints_2d has 54 values, expected 3 × 25 = 75" in coco18.message
    assert isinstance(broken, Reject) and broken.reason == "malformed_annotation"
    assert "not an OpenPose keypoints file" in broken.message


def test_openpose_layouts_and_registration(openpose_root, tmp_path):
    assert {"coco_wholebody", "openpose"} <= set(ADAPTERS)
    specs = check_datasets([{"dataset": "openpose", "root": str(openpose_root)},
                            {"dataset": "coco_wholebody", "root": str(openpose_root), "splits": ["val"]}])
    assert [s.dataset for s in specs] == ["openpose", "coco_wholebody"]
    # a per-split layout: <root>/val/keypoints and <root>/val/images
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "images").symlink_to(openpose_root / "images")
    (tmp_path / "val" / "keypoints").mkdir()
    (tmp_path / "val" / "keypoints" / "frame_0001_keypoints.json").write_text(
        (openpose_root / "keypoints" / "frame_0001_keypoints.json").read_text())
    keys = [o.key for o in iter_dataset("openpose", tmp_path, "val") if isinstance(o, PersonRecord)]
    assert keys == ["openpose/frame_0001_p0", "openpose/frame_0001_p1"]
    (tmp_path / "val" / "keypoints" / "frame_0009_keypoints.json").write_text(
        json.dumps({"people": [openpose_person(part_positions(1))]}))
    reject = next(o for o in iter_dataset("openpose", tmp_path, "val") if "frame_0009" in o.source)
    assert (reject.reason, reject.record) == ("missing_image", "person 0") and "no image frame_0009" in reject.message


def test_openpose_reads_the_field_names_of_openpose_before_1_3(openpose_root, tmp_path):
    """OpenPose 1.0-1.2 wrote `pose_keypoints`, `face_keypoints`, `hand_left_keypoints`, `hand_right_keypoints`
    (renamed `*_keypoints_2d` in 1.3.0): every such person was rejected as "pose_keypoints_2d has 0 values"."""
    at = part_positions(1)
    new = openpose_person(at)
    old = {name.removesuffix("_2d"): value for name, value in new.items() if name.endswith("_2d")}
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "old.png").symlink_to(openpose_root / "images" / "frame_0001.png")
    (tmp_path / "keypoints").mkdir()
    coco18 = old | {"pose_keypoints": [1.0] * 54}  # OpenPose's default body model before BODY_25
    (tmp_path / "keypoints" / "old_keypoints.json").write_text(json.dumps(
        {"version": 1.1, "people": [old, coco18, {"face_keypoints": []}]}))
    record, coco18, nobody = list(iter_dataset("openpose", tmp_path, "train"))
    reference = next(o for o in iter_dataset("openpose", openpose_root, "train") if o.record == "person 0")
    assert isinstance(record, PersonRecord) and record.key == "openpose/old_p0"
    np.testing.assert_array_equal(record.wholebody, reference.wholebody)
    np.testing.assert_array_equal(record.keypoints_2d, reference.keypoints_2d)
    assert record.extra["openpose_parts"] == list(OPENPOSE_JSON_FIELDS)
    assert isinstance(coco18, Reject) and "pose_keypoints has 54 values, expected 3 × 25 = 75" in coco18.message
    assert isinstance(nobody, Reject) and nobody.reason == "malformed_annotation"
    assert "no pose_keypoints_2d (nor pose_keypoints, its name before OpenPose 1.3)" in nobody.message


def unescape(key_id: str) -> str:
    """The image stem of an OpenPose key's id (the inverse of `openpose_key`'s escaping)."""
    out, i = bytearray(), 0
    while i < len(key_id):
        if key_id.startswith("_x", i):
            out.append(int(key_id[i + 2:i + 4], 16))
            i += 4
        else:
            out += key_id[i].encode()
            i += 1
    return out.decode("utf-8", "surrogateescape")


def test_openpose_keys_of_distinct_image_stems_are_distinct(openpose_root, tmp_path):
    """`clip.0001` and `clip_0001` both gave openpose/clip_0001_p0 (a key holds no '.'), and the second person was
    a duplicate_record reject telling to fix ids an OpenPose user cannot fix."""
    from pipelines.adapters.openpose import openpose_key, stem_keys
    from shards.schema import KEY_PATTERN, make_key

    (tmp_path / "images").mkdir()
    (tmp_path / "keypoints").mkdir()
    for stem in ("clip.0001", "clip_0001", "clip 0001", "_clip_0001"):
        (tmp_path / "images" / f"{stem}.png").symlink_to(openpose_root / "images" / "frame_0001.png")
        (tmp_path / "keypoints" / f"{stem}_keypoints.json").write_text(
            json.dumps({"version": 1.3, "people": [openpose_person(part_positions(1))]}))
    outputs = list(iter_dataset("openpose", tmp_path, "train"))
    assert all(isinstance(o, PersonRecord) for o in outputs), [o.message for o in outputs if isinstance(o, Reject)]
    assert sorted(o.key for o in outputs) == ["openpose/_clip_0001_p0", "openpose/clip_0001_p0",
                                              "openpose/clip_x200001_p0", "openpose/clip_x2e0001_p0"]
    stems = ["clip.0001", "clip_0001", "clip_x2e0001", "clip_x2e_0001", "a_x", "a_", "_a", "a", "é.ü", "x y",
             "frame-0001", "a\udcff", "", "_", "__x", "p_p1", "_x5f"]
    stems += ["".join(np.random.default_rng(i).choice(list("a_x.-5f é"), size=6)) for i in range(300)]
    keys = {}
    for stem in stems:
        key = openpose_key(stem, 3)
        assert KEY_PATTERN.match(key) and "." not in key, key
        assert unescape(key.removeprefix("openpose/").removesuffix("_p3")) == stem  # so distinct stems differ
        keys.setdefault(key, stem)
        assert keys[key] == stem
    for stem in ("frame_0001", "IMG-2041", "S1_Walking_1"):  # stems make_key kept as they were: their keys kept
        assert openpose_key(stem, 0) == make_key("openpose", stem, "p0")
    # a stem that collides with no other keeps the key fitloop always gave it: shard sets and fits tables users
    # already have keep their keys (escaping every '.', ' ' or leading '_' changed them)
    assert stem_keys(["my video.0001", "_frame_0012", "box_x2", "clip.0001", "clip_0001"]) == {
        "my video.0001": "openpose/my_video_0001", "_frame_0012": "openpose/frame_0012", "box_x2": "openpose/box_x2",
        "clip.0001": "openpose/clip_x2e0001", "clip_0001": "openpose/clip_0001"}
    # an escaped key that meets another stem's kept one: both escaped, until none is shared
    assert stem_keys(["clip.0001", "clip_0001", "clip_x2e0001"]) == {
        "clip.0001": "openpose/clip_x2e0001", "clip_0001": "openpose/clip_0001",
        "clip_x2e0001": "openpose/clip_x5fx2e0001"}


# --- Shards ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shard_sets(coco_wb_root, openpose_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sets")
    sets = {"coco_wholebody": out / "cwb", "openpose": out / "op", "coco": out / "coco"}
    assert main(["preprocess", "coco_wholebody", "--root", str(coco_wb_root), "--out", str(sets["coco_wholebody"]),
                 "--no-progress"]) == 0
    assert main(["preprocess", "openpose", "--root", str(openpose_root), "--out", str(sets["openpose"]),
                 "--no-progress"]) == 0
    assert main(["preprocess", "coco", "--root", str(coco_wb_root), "--out", str(sets["coco"]), "--split", "val",
                 "--option", "annotation_file=annotations/coco_wholebody_val_v1.0.json", "--option",
                 "image_dir=val2017", "--no-progress"]) == 0
    return sets


def test_preprocess_counts_reconcile_and_sets_verify(shard_sets):
    cwb = json.loads((shard_sets["coco_wholebody"] / "manifest.json").read_text())
    assert cwb["counts"] == {"read": 5, "written": 1, "rejected": 4}
    assert cwb["rejects_by_reason"] == {"keypoints_out_of_image": 1, "malformed_annotation": 2, "nan_keypoints": 1}
    op = json.loads((shard_sets["openpose"] / "manifest.json").read_text())
    assert op["counts"] == {"read": 4, "written": 2, "rejected": 2}
    assert (cwb["has_wholebody"], op["has_wholebody"]) == (1, 2)
    coco = json.loads((shard_sets["coco"] / "manifest.json").read_text())
    assert coco["has_wholebody"] == 0 and coco["counts"]["written"] == 5  # plain COCO reads the bodies only
    for shard_dir in shard_sets.values():
        report = verify_set(shard_dir)
        assert report.ok, report.problems


def test_wholebody_keypoints_round_trip_through_the_crop_and_land_on_their_pixels(shard_sets):
    sample = find_samples(shard_sets["coco_wholebody"], ["coco_wholebody/000000000001_a101"])[0]
    assert sample.meta["has_wholebody"] and sample.meta["sample_format_version"] >= 3
    present = sample.wholebody_2d[:, 2] > 0
    assert present.sum() == 111
    # crop px -> original px is exact (float32 storage) ...
    back = transform_points(sample.crop_to_image, sample.wholebody_crop)
    assert np.abs(back[present, :2] - sample.wholebody_2d[present, :2]).max() < 2e-3
    assert (sample.wholebody_crop[~present] == 0).all()
    # ... and a point drawn at a known image pixel is found at its stored crop pixel in the stored JPEG
    crop = np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("L"))
    crop_px = sample.meta["crop"]["box_side"] / sample.meta["box_side_px"]  # crop px per image px
    for name in MARKED:
        expected = sample.wholebody_crop[WHOLEBODY_INDEX[name], :2]
        found = blob_centroid(crop, expected, radius=4 * 3.0 * crop_px)  # 4 sigma of the drawn blob
        assert np.abs(found - expected).max() < 0.1, (name, found, expected)  # measured: 0.03 px
    # the body keypoints of the same sample are as a body-only set stores them
    body_only = find_samples(shard_sets["coco"], ["coco/000000000001_a101"])[0]
    np.testing.assert_array_equal(sample.keypoints_crop, body_only.keypoints_crop)
    assert body_only.wholebody_crop is None and body_only.meta["has_wholebody"] is False


def reader_item(shard_dir: Path, key: str, flip: bool) -> dict:
    reader = ShardReader(shard_dir, ReaderConfig(shuffle_buffer=0, shuffle_shards=False))
    stored = find_samples(shard_dir, [key])[0]
    return reader.make_item(stored, AugmentParams(flip=flip))


def test_reader_normalises_and_flip_maps_left_hand_onto_right(shard_sets):
    key = "openpose/frame_0001_p0"
    plain, flipped = reader_item(shard_sets["openpose"], key, False), reader_item(shard_sets["openpose"], key, True)
    assert plain["has_wholebody"] and plain["wholebody"].shape == (NUM_WHOLEBODY, 3)
    stored = find_samples(shard_sets["openpose"], [key])[0]
    res = ReaderConfig().img_res
    side = stored.meta["crop"]["box_side"]
    present = stored.wholebody_crop[:, 2] > 0
    # normalised like the body keypoints: 2 (u + 0.5) / res - 1 in the training crop (the stored crop's box)
    centre = np.asarray(stored.meta["crop"]["box_center"])
    u = (stored.wholebody_crop[:, :2] - centre) * res / side + (res - 1) / 2
    np.testing.assert_allclose(plain["wholebody"][present, :2].numpy(), (2 * (u[present] + 0.5) / res - 1),
                               atol=1e-5)
    for left, right in ((LEFT_HAND_NAMES, RIGHT_HAND_NAMES), (("right_eye1", "right_pupil"),
                                                             ("left_eye1", "left_pupil"))):
        for a, b in zip(left, right):
            i, j = WHOLEBODY_INDEX[a], WHOLEBODY_INDEX[b]
            mirrored = plain["wholebody"][i] * torch.tensor([-1.0, 1.0, 1.0])
            torch.testing.assert_close(flipped["wholebody"][j], mirrored if plain["wholebody"][i, 2] > 0
                                       else torch.zeros(3), atol=1e-6, rtol=0)
    # the body slots of the whole-body points flip as the 49-joint keypoints do
    torch.testing.assert_close(flipped["wholebody"][:49], flipped["keypoints"], atol=1e-6, rtol=0)


def test_mixed_sets_collate_with_zeros_where_absent(shard_sets):
    with_wb = reader_item(shard_sets["coco_wholebody"], "coco_wholebody/000000000001_a101", False)
    without = reader_item(shard_sets["coco"], "coco/000000000001_a101", False)
    batch = torch.utils.data.default_collate([with_wb, without])
    assert batch["wholebody"].shape == (2, NUM_WHOLEBODY, 3)
    assert batch["has_wholebody"].tolist() == [True, False]
    assert (batch["wholebody"][1] == 0).all() and (batch["wholebody"][0, :, 2] > 0).sum() == 111


def test_old_format_samples_still_read_and_a_tampered_wholebody_fails_verify(shard_sets):
    sample = find_samples(shard_sets["coco_wholebody"], ["coco_wholebody/000000000001_a101"])[0]
    members = {"jpg": sample.jpeg, "keypoints_2d.npy": encode_npy(sample.keypoints_2d),
               "keypoints_crop.npy": encode_npy(sample.keypoints_crop)}
    old = {k: v for k, v in sample.meta.items() if k != "has_wholebody"} | {"sample_format_version": 2}
    members["json"] = json.dumps(old).encode()
    decoded = decode_sample(sample.key, members)  # a format-2 sample: no whole-body keypoints
    assert decoded.wholebody_crop is None and check_sample(sample.key, members) == []
    reader = ShardReader(shard_sets["coco_wholebody"], ReaderConfig())
    item = reader.make_item(decoded, AugmentParams())
    assert not item["has_wholebody"] and (item["wholebody"] == 0).all()
    # whole-body members in a format-2 sample, or one without the other, are not that format
    with pytest.raises(SampleFormatError, match="formats before 3 do not have"):
        decode_sample(sample.key, members | {"wholebody_2d.npy": encode_npy(sample.wholebody_2d),
                                             "wholebody_crop.npy": encode_npy(sample.wholebody_crop)})
    members["json"] = json.dumps(sample.meta).encode()
    members |= {suffix: png for suffix, png in (("mask.png", sample.mask_png), ("parts.png", sample.parts_png))
                if png is not None}  # format 4: the synthetic person's labels
    with pytest.raises(SampleFormatError, match="wholebody_2d.npy without wholebody_crop.npy"):
        decode_sample(sample.key, members | {"wholebody_2d.npy": encode_npy(sample.wholebody_2d)})
    # a whole-body point moved in the crop is found by verify
    moved = np.array(sample.wholebody_crop)
    moved[WHOLEBODY_INDEX["left_thumb"], 0] += 0.5
    problems = check_sample(sample.key, members | {"wholebody_2d.npy": encode_npy(sample.wholebody_2d),
                                                   "wholebody_crop.npy": encode_npy(moved)})
    assert problems == ["wholebody_crop.npy is 0.5 px off wholebody_2d.npy through image_to_crop"]


def test_show_tells_the_whole_body_parts(shard_sets, capsys):
    assert main(["shards", "show", str(shard_sets["openpose"]), "openpose/frame_0001_p0"]) == 0
    assert ("whole-body keypoints: 136 of 161 present (body 25/49, left hand 20/21, right hand 21/21, face 70/70)"
            in capsys.readouterr().out)
    assert main(["shards", "show", str(shard_sets["coco"]), "coco/000000000001_a101", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["wholebody_crop"] is None and shown["meta"]["has_wholebody"] is False


def test_pictures_draw_hands_and_face_in_their_colours(shard_sets):
    sample = find_samples(shard_sets["openpose"], ["openpose/frame_0001_p0"])[0]
    size = 640
    picture, _ = render_panel(sample, None, None, size)
    pixels = np.asarray(picture)
    res = sample.meta["crop"]["res"]
    scaled = scale_keypoints(sample.wholebody_crop, res, size)
    for names, colour in ((LEFT_HAND_NAMES[1:], HAND_COLOURS["left"]), (RIGHT_HAND_NAMES[1:], HAND_COLOURS["right"]),
                          (FACE_NAMES, FACE_COLOUR)):
        at = np.rint(scaled[[WHOLEBODY_INDEX[n] for n in names]]).astype(int)
        hits = [tuple(pixels[y, x]) == colour for x, y, c in at if c > 0]
        # a point drawn later (another part, the body) may cover a few; most show their part's colour
        assert sum(hits) >= 0.6 * len(hits), (colour, sum(hits), len(hits))
    body_only = find_samples(shard_sets["openpose"], ["openpose/frame_0001_p1"])[0]
    plain = np.asarray(render_panel(body_only, None, None, size)[0]).reshape(-1, 3)
    assert not any((plain == c).all(axis=1).any() for c in (*HAND_COLOURS.values(), FACE_COLOUR))
