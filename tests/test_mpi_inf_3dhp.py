"""MPI-INF-3DHP from its release layout: joint maps against SPIN's index lists, the synthetic generator's files
read back (keypoints, 3D joints and intrinsics against the truth), shards whose keypoints land on the person,
keys that never collide, and damaged files as rejects that name them."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from core.joints import H36M_JOINTS, J24_OFFSET, JOINT_INDEX, MPI_INF_3DHP_JOINTS, dataset_to_canonical
from core.pinhole import pinhole
from pipelines.adapters import DatasetError, iter_dataset
from pipelines.adapters.mpi_inf_3dhp import (
    OUTDOOR_CAMERA,
    STUDIO_CAMERA,
    TEST_INDEX,
    TRAIN_INDEX,
    read_calibration,
)
from pipelines.synthetic import SynthConfig, generate, load_truth
from pipelines.synthetic.paint import background
from shards.frames import VideoFrames
from shards.reader import iter_shard, list_shards
from shards.schema import KEY_PATTERN, PersonRecord, Reject
from shards.verify import verify_set
from shards.writer import ShardConfig, write_shards
from tests.test_video import coloured

FRAMES = 3
CAMERAS = (0, 4)
PELVIS = JOINT_INDEX["OP MidHip"]  # the kinematic pelvis: inside the mesh, so its projection is on the body
SLOTS = dataset_to_canonical("mpi-inf-3dhp")
TRUTH_ORDER = [H36M_JOINTS.index(name) for name in MPI_INF_3DHP_JOINTS]  # the truth keeps the 17 in H36M order


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mpi3dhp")
    generate(out, SynthConfig(seed=11, datasets=("mpi_inf_3dhp",), mpi_inf_3dhp_subjects=("S1", "S2"),
                              mpi_inf_3dhp_cameras=CAMERAS, mpi_inf_3dhp_frames=FRAMES,
                              mpi_inf_3dhp_test_sequences=("TS1", "TS5"), jpeg_quality=95, workers=1))
    return out / "mpi_inf_3dhp"


def read(root: Path, split: str, **options) -> list:
    return list(iter_dataset("mpi-inf-3dhp", root, split, **{"frame_step": 1, "cameras": CAMERAS, **options}))


def test_joint_maps_are_spins_index_lists():
    # SPIN datasets/preprocess/mpi_inf_3dhp.py: joints_idx (train, of 28), joints_17_idx (test, of 17), and the
    # J24 slots of constants.H36M_TO_J17 the 17 fill (its mpi_inf_3dhp preprocessing writes S / part that way).
    assert TRAIN_INDEX.tolist() == [4, 18, 19, 20, 23, 24, 25, 3, 5, 6, 7, 9, 10, 11, 14, 15, 16]
    assert TEST_INDEX.tolist() == [14, 11, 12, 13, 8, 9, 10, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4]
    assert (SLOTS - J24_OFFSET).tolist() == [14, 3, 4, 5, 2, 1, 0, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6]


def test_the_release_test_cameras_in_px():
    # test_util/camera_calibration: f 7.32506 mm on a 10 mm sensor at 2048 px; 8.770747185 mm on 10 x 5.625 mm
    # at 1920 x 1080 (the values the literature's readers derive, e.g. f = 1500.17 and 1683.98 px).
    studio = STUDIO_CAMERA.intrinsics((2048, 2048), "TS1")
    assert studio.fx == pytest.approx(1500.172, abs=1e-3) and studio.cx == pytest.approx(1017.387, abs=1e-3)
    assert studio.cy == pytest.approx(1043.032, abs=1e-3)
    outdoor = OUTDOOR_CAMERA.intrinsics((1920, 1080), "TS5")
    assert outdoor.fx == pytest.approx(1683.983, abs=1e-3) == outdoor.fy
    assert outdoor.cx == pytest.approx(939.8575, abs=1e-3) and outdoor.cy == pytest.approx(560.1407, abs=1e-3)
    half = STUDIO_CAMERA.intrinsics((1024, 1024), "TS1")   # a resized copy keeps its camera
    assert half.fx == pytest.approx(studio.fx / 2) and half.cx == pytest.approx(studio.cx / 2)


def test_records_match_the_truth_and_their_intrinsics_project_the_3d_joints(root):
    truth = load_truth(root)
    for split, count in (("train", 2 * len(CAMERAS) * FRAMES), ("test", 2 * (FRAMES - 1))):
        people = [o for o in read(root, split) if isinstance(o, PersonRecord)]
        assert len(people) == count
        for record in people:
            row = truth.get(record.key)
            np.testing.assert_allclose(record.keypoints_2d[SLOTS, :2], row["h36m_keypoints"][TRUTH_ORDER],
                                       atol=1e-3)
            np.testing.assert_allclose(record.joints_3d[SLOTS, :3], row["h36m_joints"][TRUTH_ORDER], atol=1e-5)
            assert (record.keypoints_2d[SLOTS, 2] == 1).all() and record.keypoints_2d[:, 2].sum() == 17
            k = record.intrinsics
            assert k is not None and k.source == "dataset"
            projected = pinhole(record.joints_3d[SLOTS, :3].astype(np.float64), k.focal, (k.cx, k.cy))
            np.testing.assert_allclose(projected, record.keypoints_2d[SLOTS, :2], atol=0.01)
            if split == "train":
                assert record.image_path.endswith(f"video_{record.extra['camera']}.avi")
                assert record.image_frame == record.extra["frame"]
            else:
                assert record.image_frame is None and record.image_path.endswith(
                    f"img_{record.extra['frame'] + 1:06d}.jpg")


def test_joint_options(root):
    first = [o for o in read(root, "test") if isinstance(o, PersonRecord)][0]
    univ = [o for o in read(root, "test", joints_3d="univ_annot3") if isinstance(o, PersonRecord)][0]
    centred = [o for o in read(root, "test", root_centred=True) if isinstance(o, PersonRecord)][0]
    pelvis = JOINT_INDEX["Pelvis (MPII)"]
    assert not np.allclose(first.joints_3d[SLOTS, :3], univ.joints_3d[SLOTS, :3])
    np.testing.assert_allclose(univ.joints_3d[pelvis, :3], first.joints_3d[pelvis, :3], atol=1e-6)
    np.testing.assert_allclose(centred.joints_3d[SLOTS, :3],
                               first.joints_3d[SLOTS, :3] - first.joints_3d[pelvis, :3], atol=1e-6)
    assert len([o for o in read(root, "train", frame_step=2)]) == 2 * len(CAMERAS) * len(range(0, FRAMES, 2))
    with pytest.raises(DatasetError, match="cameras"):
        read(root, "train", cameras=(14,))


def test_keys_name_subject_sequence_camera_and_frame_and_never_collide(root):
    keys = [o.key for split in ("train", "test") for o in read(root, split)]
    assert len(keys) == len(set(keys)) and all(KEY_PATTERN.match(k) for k in keys)
    assert "mpi-inf-3dhp/S1_Seq1_c0_000001" in keys and "mpi-inf-3dhp/S2_Seq1_c0_000001" in keys
    assert "mpi-inf-3dhp/S1_Seq1_c4_000001" in keys and "mpi-inf-3dhp/TS5_000003" in keys
    assert all(re.fullmatch(r"mpi-inf-3dhp/(S\d_Seq\d_c\d+|TS\d)_\d{6}", k) for k in keys)


def test_shards_reconcile_and_their_keypoints_land_on_the_person(root, tmp_path):
    truth = load_truth(root)
    outputs = read(root, "train") + read(root, "test")
    manifest = write_shards(outputs, tmp_path / "shards", ShardConfig())
    counts = manifest["counts"]
    rejects = [o for o in outputs if isinstance(o, Reject)]
    assert counts["read"] == counts["written"] + counts["rejected"] == len(outputs)
    assert counts["rejected"] == len(rejects) == 2 and {r.reason for r in rejects} == {"invalid_frame"}
    assert verify_set(tmp_path / "shards").problems == []
    samples = [s for shard in list_shards(tmp_path / "shards") for s in iter_shard(shard)]
    assert len(samples) == counts["written"]
    for sample in samples:
        crop = np.asarray(Image.open(io.BytesIO(sample.jpeg)).convert("RGB"), dtype=np.float64)
        u, v = np.round(sample.keypoints_crop[PELVIS, :2]).astype(int)
        assert coloured(crop[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3), truth.get(sample.key)["outfit"]).all(), \
            sample.key
        assert sample.meta["intrinsics"]["source"] == "dataset"


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_damaged_files_are_rejects_that_name_them(root, tmp_path):
    copy = _copy(root, tmp_path)
    (copy / "S1/Seq1/annot.mat").write_bytes(b"MATLAB 5.0 MAT-file, cut short")
    (copy / "mpi_inf_3dhp_test_set/TS5/annot_data.mat").write_text("not hdf5")
    (copy / "S2/Seq1/camera.calibration").write_text("name 0\n  intrinsic 1 2 3\n")
    (copy / "S2/Seq1/imageSequence/video_4.avi").unlink()
    train, test = read(copy, "train"), read(copy, "test")
    bad = [o for o in train if isinstance(o, Reject) and o.source == "S1/Seq1/annot.mat"]
    assert len(bad) == 1 and bad[0].reason == "malformed_annotation" and "S1/Seq1/annot.mat" in bad[0].message
    bad = [o for o in test if isinstance(o, Reject) and o.reason == "malformed_annotation"]
    assert len(bad) == 1 and "TS5/annot_data.mat" in bad[0].message
    s2 = [o for o in train if o.key.startswith("mpi-inf-3dhp/S2")]
    kept = [o for o in s2 if isinstance(o, PersonRecord)]   # a bad calibration costs the intrinsics only
    assert len(kept) == FRAMES and all(r.intrinsics is None and "16" in r.extra["calibration_error"] for r in kept)
    missing = [o for o in s2 if isinstance(o, Reject)]
    assert len(missing) == FRAMES and {r.reason for r in missing} == {"missing_image"}
    with pytest.raises(ValueError, match="line 2: intrinsic holds 3 numbers"):
        read_calibration(copy / "S2/Seq1/camera.calibration")


def test_a_joint_outside_the_frame_is_a_reject(root, tmp_path):
    copy = _copy(root, tmp_path)
    path = copy / "S1/Seq1/annot.mat"
    mat = scipy.io.loadmat(str(path))
    mat["annot2"][0, 0][1, 2 * TRAIN_INDEX[13]] = -40.0       # camera 0, frame 1: the left wrist left of the frame
    scipy.io.savemat(str(path), {k: v for k, v in mat.items() if not k.startswith("__")})
    outputs = [o for o in read(copy, "train") if o.key.startswith("mpi-inf-3dhp/S1_Seq1_c0")]
    rejects = [o for o in outputs if isinstance(o, Reject)]
    assert [r.key for r in rejects] == ["mpi-inf-3dhp/S1_Seq1_c0_000002"]
    assert rejects[0].reason == "keypoints_out_of_image" and "Left Wrist" in rejects[0].message


def test_annotation_frame_i_is_video_frame_i(root):
    """Where decoded frame i differs from the camera's (static) background matches the exact silhouette of the
    record of frame i (its mask, from the generator's part labels) better than any other frame's."""
    truth = load_truth(root)
    people = [o for o in read(root, "train") if isinstance(o, PersonRecord)]
    for path in sorted({r.image_path for r in people}):
        records = sorted((r for r in people if r.image_path == path), key=lambda r: r.image_frame)
        row = truth.get(records[0].key)
        ground = background(tuple(int(v) for v in row["image_size"]), int(row["background_seed"]))
        masks = [r.mask.array() > 0 for r in records]
        with VideoFrames(root / path) as video:
            for i in range(FRAMES):
                moved = np.abs(np.asarray(video.frame(i), dtype=np.float64) - ground).max(axis=-1) > 40
                iou = [(moved & mask).sum() / (moved | mask).sum() for mask in masks]
                assert int(np.argmax(iou)) == i and iou[i] > 0.3, (path, i, iou)
                assert all(iou[i] > iou[j] + 0.1 for j in range(FRAMES) if j != i), (path, i, iou)


def test_spin_export_names_and_extracts_frames_as_spins_preprocessing(root, tmp_path):
    """SPIN's mpi_inf_3dhp.py extracts video_<k>.avi to <seq>/imageFrames/video_<k>/frame_<i + 1:06d>.jpg and names
    rows by that path; the export names train frames so, ``extract_frames`` writes them (the decoded video frame),
    and the test set's JPEGs keep their own names."""
    from fits.exports import export_spin_datasets
    from fits.table import FitsTable

    outputs = read(root, "train") + read(root, "test")
    write_shards(outputs, tmp_path / "shards", ShardConfig())
    table = FitsTable.create(tmp_path / "fits")
    summary = export_spin_datasets(table, tmp_path / "shards", tmp_path / "npz", extract_frames=tmp_path / "frames")
    files = {(f["dataset"], f["split"]): Path(f["path"]) for f in summary["files"]}
    assert files[("mpi-inf-3dhp", "train")].name == "mpi_inf_3dhp_train.npz"   # SPIN's file name
    keys = {Path(f["path"]).stem: json.loads(Path(f["path"]).with_suffix(".fitloop.json").read_text())["keys"]
            for f in summary["files"]}
    train = np.load(files[("mpi-inf-3dhp", "train")])
    names = [str(n) for n in train["imgname"]]
    video_people = [o for o in outputs if isinstance(o, PersonRecord) and o.image_frame is not None]
    assert summary["frames"] == len(names) == len(video_people) > 0
    for key, name in zip(keys["mpi_inf_3dhp_train"], names):
        subject, sequence, camera, frame = re.fullmatch(r"mpi-inf-3dhp/(S\d)_(Seq\d)_c(\d+)_(\d{6})", key).groups()
        assert name == f"{subject}/{sequence}/imageFrames/video_{camera}/frame_{frame}.jpg"
        written = np.asarray(Image.open(tmp_path / "frames" / name).convert("RGB"), np.float64)
        with VideoFrames(root / f"{subject}/{sequence}/imageSequence/video_{camera}.avi") as video:
            decoded = np.asarray(video.frame(int(frame) - 1), np.float64)
        assert np.abs(written - decoded).mean() < 2   # the same frame, through JPEG at quality 95
    test_names = [str(n) for f, p in files.items() if f[0] == "mpi-inf-3dhp" and f[1] != "train"
                  for n in np.load(p)["imgname"]]
    assert test_names and all(re.fullmatch(r"mpi_inf_3dhp_test_set/TS\d/imageSequence/img_\d{6}\.jpg", n)
                              and (root / n).is_file() for n in test_names)
