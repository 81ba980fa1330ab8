"""The Human3.6M adapter on the layout the synthetic generator writes (there is no real Human3.6M sample).

A set of S1 (train) and S9 (test), two actions, 4 cameras, 7 frames with every 5th extracted is generated once;
tests that change files work on a copy.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cdflib
import numpy as np
import pytest
import torch

from core.joints import H36M_JOINTS, J24_NAMES, J24_OFFSET, JOINT_NAMES, indices
from fitting.body_model import load_body_model
from pipelines.adapters import DatasetError, iter_dataset
from pipelines.adapters.h36m import (
    CAMERA_NAMES,
    RAW_INDEX,
    SPLIT_SUBJECTS,
    MaskFile,
    euler_xyz,
    load_cameras,
    read_pose_cdf,
)
from pipelines.synthetic import SynthConfig, generate, load_truth
from pipelines.synthetic.h36m_files import write_pose_cdf
from shards.schema import KEY_PATTERN, PersonRecord, Reject, make_key

ACTIONS = ("Directions 1", "Walking")
FRAMES, STEP = 7, 5  # frames 0 and 5 have images


@pytest.fixture(scope="module")
def h36m(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h36m")
    generate(out, SynthConfig(seed=11, datasets=("h36m",), h36m_subjects=("S1", "S9"), h36m_actions=ACTIONS,
                              h36m_frames=FRAMES, h36m_frame_step=STEP, h36m_image_size=(160, 160)))
    return out / "h36m"


@pytest.fixture
def copy(h36m, tmp_path) -> Path:
    return Path(shutil.copytree(h36m, tmp_path / "h36m"))


def records(outputs: list) -> list[PersonRecord]:
    return [o for o in outputs if isinstance(o, PersonRecord)]


def h36m_slots(values: np.ndarray) -> np.ndarray:
    """Human3.6M-order values (17, C) scattered to the canonical 49 slots."""
    out = np.zeros((49, values.shape[-1]))
    out[indices(H36M_JOINTS)] = values
    return out


def test_splits_are_the_literatures_and_read_is_written_plus_rejected(h36m):
    assert SPLIT_SUBJECTS["train"] == ("S1", "S5", "S6", "S7", "S8") and SPLIT_SUBJECTS["test"] == ("S9", "S11")
    truth = load_truth(h36m)
    per_subject = len(ACTIONS) * len(CAMERA_NAMES) * len(range(0, FRAMES, STEP))
    for split, subject in (("train", "S1"), ("test", "S9")):
        outputs = list(iter_dataset("h36m", h36m, split))
        assert len(outputs) == per_subject and all(isinstance(o, PersonRecord) for o in outputs)
        assert {o.extra["subject"] for o in outputs} == {subject}
        assert {o.key for o in outputs} == {k for k in truth.row if k.startswith(f"h36m/{subject}_")}
    assert len(list(iter_dataset("h36m", h36m, "all"))) == len(truth) == 2 * per_subject


def test_joints_equal_the_truth(h36m):
    truth = load_truth(h36m)
    for record in iter_dataset("h36m", h36m, "all"):
        row = truth.get(record.key)
        np.testing.assert_allclose(record.keypoints_2d[:, :2], h36m_slots(row["h36m_keypoints"]), atol=0.5)
        np.testing.assert_allclose(record.joints_3d[:, :3], h36m_slots(row["h36m_joints"]), atol=1e-3)  # 1 mm
        assert (record.keypoints_2d[:, 2] > 0).sum() == 17 and (record.joints_3d[:, 3] > 0).sum() == 17
        assert record.image_size == (160, 160) and record.extra["box_source"] == "mask"


def test_raw_joints_map_as_spin_maps_them():
    # SPIN datasets/preprocess/h36m.py: raw h36m_idx -> J24 global_idx
    h36m_idx = [11, 6, 7, 8, 1, 2, 3, 12, 24, 14, 15, 17, 18, 19, 25, 26, 27]
    global_idx = [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]
    ours = {int(raw): JOINT_NAMES[c] for raw, c in zip(RAW_INDEX, indices(H36M_JOINTS))}
    assert ours == {raw: J24_NAMES[g] for raw, g in zip(h36m_idx, global_idx)}
    assert all(c >= J24_OFFSET for c in indices(H36M_JOINTS))


def test_keys_images_and_records_follow_spin(h36m):
    record = next(iter(iter_dataset("h36m", h36m, "train")))
    spin_imgname = "images/S1_Directions_1.54138969_000001.jpg"  # SPIN's h36m_train.npz name for this frame
    assert record.image_path == spin_imgname and (h36m / spin_imgname).is_file()
    assert record.key == make_key("h36m", Path(spin_imgname).stem) == "h36m/S1_Directions_1_54138969_000001"
    assert record.source == "S1/MyPoseFeatures/D3_Positions_mono/Directions 1.54138969.cdf"
    assert record.record == "S1 Directions 1.54138969 frame 0"
    keys = [o.key for o in iter_dataset("h36m", h36m, "all")]
    assert len(set(keys)) == len(keys) and all(KEY_PATTERN.match(k) and "." not in k for k in keys)


def test_pose_files_are_humans36m_cdf(h36m):
    path = h36m / "S1" / "MyPoseFeatures" / "D3_Positions_mono" / "Walking.60457274.cdf"
    pose = cdflib.CDF(str(path)).varget("Pose")
    assert pose.shape == (1, FRAMES, 96)
    assert cdflib.CDF(str(path.parents[1] / "D2_Positions" / path.name)).varget("Pose").shape == (1, FRAMES, 64)
    assert cdflib.CDF(str(path.parents[1] / "D3_Positions" / "Walking.cdf")).varget("Pose").shape == (1, FRAMES, 96)
    raw = read_pose_cdf(path, 3)
    np.testing.assert_allclose(raw[:, 0], raw[:, 11])   # Human3.6M's duplicate pelvis
    np.testing.assert_allclose(raw[:, 13], raw[:, 24])  # and thorax
    assert (raw[:, :, 2] > 2000).all()  # mm, in front of the camera


def test_truth_parameters_reproduce_the_camera_frame_joints(h36m):
    truth = load_truth(h36m)
    a = truth.arrays
    model = load_body_model("open")
    with torch.no_grad():
        out = model(torch.as_tensor(a["betas"]).float(), torch.as_tensor(a["pose"][:, 3:]).float(),
                    torch.as_tensor(a["pose"][:, :3]).float(), torch.as_tensor(a["transl"]).float())
        h36m_joints = model.h36m_joints(out.vertices).double().numpy()
    np.testing.assert_allclose(h36m_joints, a["h36m_joints"], atol=1e-3)
    # one subject, one shape: every frame and camera of S1 has the same betas
    s1 = [i for k, i in truth.row.items() if k.startswith("h36m/S1_")]
    assert np.ptp(a["betas"][s1], axis=0).max() == 0


def test_world_positions_with_either_camera_file_give_the_mono_records(copy):
    mono = records(list(iter_dataset("h36m", copy, "all")))
    for cameras_file in ("cameras.h5", "metadata.xml"):
        world = records(list(iter_dataset("h36m", copy, "all", poses="world", cameras_file=cameras_file)))
        assert [r.key for r in world] == [r.key for r in mono]
        for a, b in zip(world, mono):
            np.testing.assert_allclose(a.joints_3d, b.joints_3d, atol=1e-5)
            np.testing.assert_allclose(a.keypoints_2d, b.keypoints_2d, atol=1e-3)
    shutil.rmtree(copy / "S1" / "MyPoseFeatures" / "D2_Positions")  # 2D from projecting with the cameras
    shutil.rmtree(copy / "S1" / "MyPoseFeatures" / "D3_Positions_mono")  # auto falls back to the world files
    projected = records(list(iter_dataset("h36m", copy, "train")))
    for a, b in zip(projected, [r for r in mono if r.extra["subject"] == "S1"]):
        assert a.key == b.key
        np.testing.assert_allclose(a.keypoints_2d, b.keypoints_2d, atol=2e-3)


def test_cameras_h5_and_metadata_xml_hold_the_same_cameras(h36m):
    h5, xml = load_cameras(h36m / "cameras.h5"), load_cameras(h36m / "metadata.xml")
    assert set(h5) == set(xml) and len(xml) == 44  # 11 subject slots x 4 cameras
    for key, cam in h5.items():
        other = xml[key]
        np.testing.assert_allclose(cam.R, other.R, atol=1e-9)
        np.testing.assert_allclose(cam.T, other.T, atol=1e-6)
        np.testing.assert_allclose(np.concatenate([cam.f, cam.c]), np.concatenate([other.f, other.c]))
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-9)
    angles = np.array([0.3, -1.1, 2.0])
    c, s = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    np.testing.assert_allclose(euler_xyz(angles), rx @ ry @ rz)


def test_boxes_from_masks_as_spin_or_from_the_joints(copy):
    truth = load_truth(copy)
    by_mask = {r.key: r for r in iter_dataset("h36m", copy, "train")}
    for key, record in by_mask.items():
        u0, v0, u1, v1 = truth.get(key)["vertex_box"]  # the mask is the mesh's box
        side = max(np.floor(u1) - np.ceil(u0) + 1, np.floor(v1) - np.ceil(v0) + 1)
        assert record.scale == pytest.approx(0.9 * side / 200)
        np.testing.assert_allclose(record.center, [(np.ceil(u0) + np.floor(u1)) / 2, (np.ceil(v0) + np.floor(v1)) / 2])
    with MaskFile(copy / "S1" / "MySegmentsMat" / "ground_truth_bb" / "Walking.55011271.mat") as masks:
        assert masks.box(FRAMES) == f"the box mask file has {FRAMES} frames; none for frame {FRAMES}"
    by_joints = records(list(iter_dataset("h36m", copy, "train", box="keypoints")))
    shutil.rmtree(copy / "S1" / "MySegmentsMat")
    auto = records(list(iter_dataset("h36m", copy, "train")))
    for a, b in zip(by_joints, auto):
        kp = a.keypoints_2d[a.keypoints_2d[:, 2] > 0, :2]
        assert a.scale == pytest.approx(1.2 * (kp.max(0) - kp.min(0)).max() / 200)
        assert b.extra["box_source"] == "keypoints" and b.scale == a.scale
    rejects = [o for o in iter_dataset("h36m", copy, "train", box="mask") if isinstance(o, Reject)]
    assert len(rejects) == len(auto) and {r.reason for r in rejects} == {"malformed_annotation"}


def test_options_frames_cameras_layout_and_root(copy):
    every = list(iter_dataset("h36m", copy, "train", frame_step=1))
    assert len(every) == len(ACTIONS) * 4 * FRAMES  # every frame is read ...
    missing = [o for o in every if isinstance(o, Reject)]
    assert len(missing) == len(ACTIONS) * 4 * (FRAMES - 2) and {r.reason for r in missing} == {"missing_image"}
    p2 = records(list(iter_dataset("h36m", copy, "test", cameras=("60457274",))))  # SPIN's protocol 2
    assert p2 and {r.extra["camera"] for r in p2} == {"60457274"}
    centred = records(list(iter_dataset("h36m", copy, "train", root_centred=True)))
    pelvis = H36M_JOINTS.index("Pelvis (MPII)")
    assert all(np.abs(r.joints_3d[indices(H36M_JOINTS)[pelvis], :3]).max() == 0 for r in centred)
    for image in sorted((copy / "images").glob("*.jpg")):  # the other layout: S1/Images/<Action>.<cam>/frame_...
        subject, rest = image.stem.split("_", 1)
        name, frame = rest.rsplit("_", 1)
        action_us, camera = name.rsplit(".", 1)
        target = copy / subject / "Images" / f"{action_us.replace('_', ' ')}.{camera}" / f"frame_{frame}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.rename(target)
    assert len(records(list(iter_dataset("h36m", copy, "all", image_layout="folders")))) == len(centred) * 2
    assert {o.reason for o in iter_dataset("h36m", copy, "train", image_layout="spin")
            if isinstance(o, Reject)} == {"missing_image"}
    auto = records(list(iter_dataset("h36m", copy, "train")))   # "auto" finds the folders' images
    assert len(auto) == len(centred) and all("/Images/" in r.image_path and r.image_frame is None for r in auto)
    with pytest.raises(DatasetError, match="image_layout"):
        iter_dataset("h36m", copy, "train", image_layout="{subject}/{nope}.jpg")


def test_all_sequences_are_skipped_and_bad_files_rejected(copy):
    mono = copy / "S1" / "MyPoseFeatures" / "D3_Positions_mono"
    before = len(list(iter_dataset("h36m", copy, "train")))
    shutil.copy(mono / "Walking.54138969.cdf", mono / "_ALL.54138969.cdf")
    shutil.copy(mono / "Walking.54138969.cdf", mono / "_ALL 1.54138969.cdf")
    assert len(list(iter_dataset("h36m", copy, "train"))) == before
    (mono / "Walking.55011271.cdf").write_bytes(b"not a cdf")
    raw = read_pose_cdf(mono / "Walking.58860488.cdf", 3)
    raw[5, 3] = np.nan  # the right ankle of frame 5
    write_pose_cdf(mono / "Walking.58860488.cdf", raw)
    outputs = list(iter_dataset("h36m", copy, "train"))
    rejects = [o for o in outputs if isinstance(o, Reject)]
    assert len(outputs) == before - 2 + 1  # a broken file is one read, not two frames
    assert sorted((r.reason, r.record) for r in rejects) == [
        ("malformed_annotation", "*"), ("nan_keypoints", "S1 Walking.58860488 frame 5")]
    assert "Right Ankle" in next(r.message for r in rejects if r.reason == "nan_keypoints")


def test_missing_subjects_and_bad_options_raise(tmp_path, h36m):
    with pytest.raises(DatasetError, match="no Human3.6M subject folder"):
        list(iter_dataset("h36m", tmp_path, "train"))
    with pytest.raises(DatasetError, match="frame_step"):
        iter_dataset("h36m", h36m, "train", frame_step=0)
    with pytest.raises(DatasetError, match="cameras_file"):
        list(iter_dataset("h36m", h36m, "train", cameras_file="nope.h5"))
    assert {o.extra["subject"] for o in iter_dataset("h36m", h36m, "all", subjects=("S9",))} == {"S9"}
