"""Damaged dataset files, as `fitloop preprocess` reads them: an annotation file that cannot be read is one line
naming it (never an empty shard set and exit 0); a bad record in a readable file is one reject row naming file and
record, and the counts reconcile (issue 13)."""
import dataclasses
import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from faultcheck import expect_error, expect_error_in_subprocess, run_cli
from faultdata import (
    IMAGE_SIZE,
    coco_annotation,
    coco_image,
    convert,
    lsp_joints,
    mat_structs,
    mpii_rect,
    reconcile,
    write_coco,
    write_h36m,
    write_image,
    write_lsp,
    write_mpii_release,
)
from PIL import Image

from pipelines.adapters import iter_dataset
from shards.schema import PersonRecord

FAULT_CLASS = "damaged dataset files"

COCO_FILE = "person_keypoints_val2017.json"


def preprocess_error(capsys, dataset, root, out, *fragments, options=(), args=()):
    argv = ["preprocess", dataset, "--root", root, "--out", out, "--no-progress", *args]
    for option in options:
        argv += ["--option", option]
    return expect_error(capsys, argv, *fragments)


# --- A whole annotation file that cannot be read: one line naming it --------------------------------------------

GOOD_COCO = json.dumps({"images": [coco_image(1, "a.jpg")], "annotations": [coco_annotation(10, 1)]})


@pytest.mark.parametrize("text, reason", [
    (GOOD_COCO[:40], "JSONDecodeError"),                                  # truncated
    ("[1, 2, 3]", "TypeError"),                                           # a list, not an object
    (json.dumps({"annotations": []}), "KeyError: 'images'"),              # a field missing
    (json.dumps({"images": [{"file_name": "a.jpg"}], "annotations": []}), "KeyError: 'id'"),
    (json.dumps({"images": {"1": "a.jpg"}, "annotations": []}), "TypeError"),  # a field of the wrong type
    ("\x89PNG not json at all", "JSONDecodeError"),
    ('{"images": [{"id": 1e400, "file_name": "a.jpg"}], "annotations": []}', "OverflowError"),  # an id of inf
    # a string was read letter by letter (4 records rejected), a dict as its keys (0 records, no word why)
    (json.dumps({"images": [coco_image(1, "a.jpg")], "annotations": "oops"}), "its 'annotations' is a str"),
    (json.dumps({"images": [coco_image(1, "a.jpg")], "annotations": {}}), "its 'annotations' is a dict"),
])
def test_a_coco_json_that_cannot_be_read_is_one_line_and_no_shard_set(capsys, tmp_path, text, reason):
    write_coco(tmp_path / "coco", [coco_image(1, "a.jpg")], [], text=text)
    out = tmp_path / "out"
    preprocess_error(capsys, "coco", tmp_path / "coco", out, COCO_FILE, "not a COCO keypoints file", reason,
                     "check the file")
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("content", [b"this is a text file, not MATLAB\n", b"MATLAB 5.0 MAT-file" + b"\0" * 50, b""])
@pytest.mark.parametrize("dataset", ["lsp", "lspet", "mpii"])
def test_a_mat_file_that_is_not_one_is_one_line_naming_it(capsys, tmp_path, dataset, content):
    root = tmp_path / dataset
    name = "mpii_human_pose_v1_u12_1.mat" if dataset == "mpii" else "joints.mat"
    root.mkdir()
    (root / name).write_bytes(content)
    what = "an MPII release .mat" if dataset == "mpii" else f"an {dataset} joints.mat"
    preprocess_error(capsys, dataset, root, tmp_path / "out", str(root / name), what, "check the file",
                     options=["annotation_file=" + name] if dataset == "mpii" else [])
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_joints_mat_without_joints_or_in_the_other_layout_is_one_line(capsys, tmp_path):
    root = tmp_path / "lsp"
    root.mkdir()
    scipy.io.savemat(root / "joints.mat", {"pose": np.zeros((3, 14, 2))})
    preprocess_error(capsys, "lsp", root, tmp_path / "out", "joints.mat", "no variable 'joints'")
    write_lsp(root, count=2)  # LSP's 3 x 14 x N, read as LSPET's 14 x 3 x N
    preprocess_error(capsys, "lspet", root, tmp_path / "out", "joints.mat", "is this an LSP (lsp or lsp-orig) file?")


LAYOUTS_IN_WORDS = ("LSP's is 3 x 14 x N (x, y, flag; joint; image)",
                    "LSP-extended's is 14 x 3 x N (joint; x, y, flag; image)")


@pytest.mark.parametrize("shape, lspet", [((5, 14, 3), False), ((2, 14, 5), False), ((14, 3, 5), True)])
def test_a_joints_mat_in_neither_layout_states_its_shape_and_both_layouts(capsys, tmp_path, shape, lspet):
    # (N, 14, 3) and (2, 14, N) are no LSP-extended file either, though the message once asked if they were
    root = tmp_path / "lsp"
    write_lsp(root, count=5)
    scipy.io.savemat(root / "joints.mat", {"joints": np.ones(shape)})
    line = preprocess_error(capsys, "lsp", root, tmp_path / "out", "joints.mat", f"joints has shape {shape}",
                            *LAYOUTS_IN_WORDS)
    assert ("is this an LSP-extended (lspet) file?" in line) == lspet and ("is this an" in line) == lspet


def test_a_matlab_v73_joints_mat_is_read_as_the_v7_one(capsys, tmp_path):
    import h5py

    from pipelines.synthetic.h36m_files import stamp_matlab73

    root = tmp_path / "lsp"
    write_lsp(root, count=2)
    joints = scipy.io.loadmat(root / "joints.mat")["joints"]  # 3 x 14 x 2
    v7 = [r.keypoints_2d for r in iter_dataset("lsp", root, "all")]
    with h5py.File(root / "joints.mat", "w", userblock_size=512) as h5:
        h5["joints"] = joints.T  # MATLAB writes column order: h5py sees the axes reversed
    stamp_matlab73(root / "joints.mat")
    v73 = [r.keypoints_2d for r in iter_dataset("lsp", root, "all")]
    assert len(v73) == len(v7) == 2 and all(np.array_equal(a, b) for a, b in zip(v7, v73))
    with h5py.File(root / "joints.mat", "w", userblock_size=512) as h5:
        h5["joints"] = np.array([b"not numbers"])
    stamp_matlab73(root / "joints.mat")
    preprocess_error(capsys, "lsp", root, tmp_path / "out", "joints.mat", "MATLAB v7.3 (HDF5)", "save -v7")


def test_an_lsp_joints_mat_cut_short_within_the_test_split_is_one_line(capsys, tmp_path):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root, count=2, joints=lsp_joints(2))
    scipy.io.savemat(root / "joints.mat", {"joints": np.transpose(lsp_joints(1005), (2, 1, 0))})  # LSP has 2000
    preprocess_error(capsys, "lsp", root, out, "joints.mat", "holds 1005 images where LSP's holds 2000",
                     "train: im0001-im1000, test: im1001-im2000", "split 'test' would hold 5 of its 1000",
                     "Split 'all'", args=["--split", "test"])
    assert len(list(iter_dataset("lsp", root, "train"))) == 1000  # complete (998 of its images missing here)
    outputs = list(iter_dataset("lsp", root, "all"))  # every image the file holds
    assert len(outputs) == 1005 and outputs[-1].key == "lsp/im1005"


@pytest.mark.parametrize("name, content, what", [
    ("valid.h5", b"\x89HDF\r\n\x1a\n truncated", "a pose-hg MPII .h5"),
    ("mpii_val.json", b'[{"image": "a.jpg", "joints"', "an mmpose/HRNet MPII json"),
    ("mpii_val.json", b'{"image": "a.jpg"}', "an mmpose/HRNet MPII json"),
])
def test_mpii_h5_and_json_that_cannot_be_read_are_one_line(capsys, tmp_path, name, content, what):
    root = tmp_path / "mpii"
    root.mkdir()
    (root / name).write_bytes(content)
    preprocess_error(capsys, "mpii", root, tmp_path / "out", str(root / name), what,
                     options=["annotation_file=" + name])


def test_a_spin_npz_that_is_damaged_or_holds_a_pickle_is_one_line(capsys, tmp_path):
    root = tmp_path / "spin"
    root.mkdir()
    given = {"options": ["npz_file=x.npz", "dataset_name=lsp", "pixel_offset=1"], "args": ["--split", "test"]}
    (root / "x.npz").write_bytes(b"PK\x03\x04 cut short")
    preprocess_error(capsys, "spin-npz", root, tmp_path / "out", "x.npz", "not a SPIN .npz", "BadZipFile", **given)
    np.savez(root / "x.npz", imgname=np.array([{"a": 1}], dtype=object), center=np.zeros((1, 2)), scale=np.ones(1))
    line = preprocess_error(capsys, "spin-npz", root, tmp_path / "out", "x.npz", "not a SPIN .npz", **given)
    assert "pickle" in line.lower()  # refused, never unpickled
    with zipfile.ZipFile(root / "x.npz", "w") as z:
        z.writestr("center.npy", b"\x93NUMPY garbage")
    preprocess_error(capsys, "spin-npz", root, tmp_path / "out", "x.npz", "not a SPIN .npz", **given)


# --- Bad records in a readable file: a reject row each, counts that reconcile -----------------------------------

def test_coco_records_with_missing_fields_wrong_types_and_missing_images_are_reject_rows(capsys, tmp_path):
    root, out = tmp_path / "coco", tmp_path / "out"
    images = [coco_image(1, "a.jpg"), coco_image(2, "gone.jpg"), coco_image(3, "b.jpg"), {"id": 4}]
    annotations = [coco_annotation(10, 1), coco_annotation(11, 2), coco_annotation(12, 3, keypoints="none"),
                   coco_annotation(13, 3, bbox=[1, 2]), {"id": 14, "image_id": 1}, coco_annotation(15, 4),
                   {**coco_annotation(16, 3), "image_id": [3]}, "not an object"]
    write_coco(root, images, annotations)
    (root / "val2017" / "gone.jpg").unlink()
    convert(capsys, "coco", root, out)
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 8, "written": 1, "rejected": 7}
    by_record = {r["record"]: (r["reason"], r["source"], r["message"]) for r in rows}
    assert by_record["annotation 11"][:2] == ("missing_image", "val2017/gone.jpg")
    assert "gone.jpg" in by_record["annotation 11"][2]
    for record in ("annotation 12", "annotation 13", "annotation 14", "annotation 15", "annotation 16"):
        assert by_record[record][:2] == ("malformed_annotation", f"annotations/{COCO_FILE}"), by_record[record]
    assert by_record["annotation 15"][2] == "its image (id 4) has no 'file_name'"
    assert by_record["annotation 14"][2] == "the annotation has no 'keypoints'"


def test_a_coco_record_of_no_image_or_with_visibility_flags_coco_has_not_is_a_reject_row(capsys, tmp_path):
    root, out = tmp_path / "coco", tmp_path / "out"
    flags = [v for k in range(17) for v in (10 + 4 * k, 10 + 3 * k, 7 if k == 3 else 2)]
    write_coco(root, [coco_image(1, "a.jpg")], [coco_annotation(10, 1), coco_annotation(11, 999),
                                                coco_annotation(12, 1, keypoints=flags)])
    convert(capsys, "coco", root, out)
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 3, "written": 1, "rejected": 2}
    by_record = {r["record"]: (r["reason"], r["message"]) for r in rows}
    assert by_record["annotation 11"] == ("malformed_annotation",
                                          f"its image_id 999 is not the id of an image in annotations/{COCO_FILE}")
    assert by_record["annotation 12"][0] == "malformed_annotation" and "got 7" in by_record["annotation 12"][1]


@pytest.mark.parametrize("file_name", ["/etc/hostname", "../outside.jpg", "val2017/../../outside.jpg",
                                       "C:\\images\\a.jpg", ""])
def test_an_image_name_outside_the_image_folder_is_a_reject_and_never_read(capsys, tmp_path, file_name):
    root, out = tmp_path / "coco", tmp_path / "out"
    write_image(tmp_path / "outside.jpg")  # what '..' would reach
    write_coco(root, [coco_image(1, "a.jpg"), coco_image(2, file_name)], [coco_annotation(10, 1),
                                                                          coco_annotation(11, 2)])
    convert(capsys, "coco", root, out)
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    assert (rows[0]["record"], rows[0]["reason"]) == ("annotation 11", "malformed_annotation")
    assert "not a path inside the image folder" in rows[0]["message"] and repr(file_name) in rows[0]["message"]


def test_duplicate_coco_ids_crop_no_wrong_picture(capsys, tmp_path):
    root, out = tmp_path / "coco", tmp_path / "out"
    write_image(root / "val2017" / "dark.jpg", value=20)
    write_image(root / "val2017" / "light.jpg", value=230)
    images = [coco_image(1, "dark.jpg"), coco_image(1, "light.jpg"), coco_image(2, "light.jpg")]
    annotations = [coco_annotation(10, 1), coco_annotation(11, 2), coco_annotation(12, 2), coco_annotation(12, 2)]
    write_coco(root, images, annotations)
    convert(capsys, "coco", root, out)
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 4, "written": 1, "rejected": 3}
    assert sorted((r["record"], r["reason"]) for r in rows) == [
        ("annotation 10", "duplicate_record"), ("annotation 12", "duplicate_record"),
        ("annotation 12", "duplicate_record")]
    message = next(r["message"] for r in rows if r["record"] == "annotation 10")
    assert "image id 1 is given to 2 images" in message and COCO_FILE in message


@pytest.mark.parametrize("bbox, reason", [
    ([0, 0, 1e6, 1e6], "degenerate_box"),      # a box far larger than the 100 x 80 image: a speck in black
    ([-5000, -5000, 100, 100], "degenerate_box"),  # wholly beside the image
    ([90, 70, 400, 400], "degenerate_box"),    # mostly beside it
    ([0, 0, 1e39, 10], "nan_keypoints"),       # beyond float32, as shards store boxes
    ([0, 0, float("inf"), 10], "nan_keypoints"),
])
def test_a_box_that_cannot_give_a_crop_is_a_reject(capsys, tmp_path, bbox, reason):
    root, out = tmp_path / "coco", tmp_path / "out"
    write_coco(root, [coco_image(1, "a.jpg")], [coco_annotation(10, 1), coco_annotation(11, 1, bbox=bbox)])
    convert(capsys, "coco", root, out, "--option", "out_of_image=keep")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    assert (rows[0]["record"], rows[0]["reason"]) == ("annotation 11", reason)


def test_a_box_mostly_outside_an_image_of_unknown_size_is_rejected_at_crop_time(capsys, tmp_path):
    root, out = tmp_path / "lsp", tmp_path / "out"
    joints = np.stack([np.column_stack([np.linspace(20, 60, 14), np.linspace(10, 70, 14), np.zeros(14)])] * 2)
    joints[1, :, :2] += 2000.0  # far outside the 100 x 80 image, which "exists" checking never opens
    write_lsp(root, joints=joints)
    convert(capsys, "lsp", root, out, "--option", "image_check=exists")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    assert (rows[0]["record"], rows[0]["reason"]) == ("im0002", "degenerate_box")


def test_a_damaged_human36m_pose_file_is_a_reject_row_and_all_damaged_is_an_error(capsys, tmp_path):
    root, out = tmp_path / "h36m", tmp_path / "out"
    mono = write_h36m(root, actions=("Walking", "Eating"))
    (mono / "Eating.54138969.cdf").write_bytes(b"\xcd\xf3\x00\x01 a cdf cut short")
    convert(capsys, "h36m", root, out, "--split", "train")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    assert (rows[0]["source"], rows[0]["record"], rows[0]["reason"]) == (
        "S1/MyPoseFeatures/D3_Positions_mono/Eating.54138969.cdf", "*", "malformed_annotation")
    (mono / "Walking.54138969.cdf").write_bytes(b"")
    preprocess_error(capsys, "h36m", root, tmp_path / "out2", "no record became a sample", "read 2, rejected 2",
                     "malformed_annotation 2", "rejects.parquet", "--overwrite", args=["--split", "train"])
    reconcile(tmp_path / "out2")  # written, so the rows can be read


def test_damaged_human36m_cameras_are_one_line(capsys, tmp_path):
    root = tmp_path / "h36m"
    write_h36m(root)
    (root / "metadata.xml").write_text("<w0>1 2 3")
    preprocess_error(capsys, "h36m", root, tmp_path / "out", "metadata.xml", "Human3.6M camera parameters",
                     options=["cameras_file=metadata.xml"])


def write_h36m_cameras(root: Path, subjects: tuple[str, ...] = ("S1",), **changes) -> Path:
    """cameras.h5 (3d-pose-baseline's) and metadata.xml with every subject's four cameras; cameras.h5 holds only
    ``subjects``, and ``changes`` (f=..., k=...) replace S1's first camera's parameters in both (in cameras.h5
    only when they change a size, which metadata.xml's fixed slots cannot hold)."""
    from pipelines.synthetic.h36m_files import write_cameras_h5, write_metadata_xml
    from pipelines.synthetic.scene import h36m_rig

    rig = h36m_rig(IMAGE_SIZE, np.random.default_rng(0))
    camera = rig[("S1", CAMERA)]
    rig[("S1", CAMERA)] = dataclasses.replace(camera, **changes)
    write_cameras_h5(root / "cameras.h5", {key: cam for key, cam in rig.items() if key[0] in subjects})
    if any(np.shape(value) != getattr(camera, name).shape for name, value in changes.items()):
        rig[("S1", CAMERA)] = camera
    write_metadata_xml(root / "metadata.xml", rig)
    return root / "cameras.h5"


CAMERA = "54138969"  # write_h36m's camera


@pytest.mark.parametrize("cameras_file, where", [("cameras.h5", "subject1/camera1"),
                                                 ("metadata.xml", "<w0>, camera 1 and subject 1")])
def test_a_human36m_camera_with_nan_or_no_focal_length_is_one_line_naming_it(capsys, tmp_path, cameras_file, where):
    root = tmp_path / "h36m"
    write_h36m(root)
    write_h36m_cameras(root, f=np.array([np.nan, np.nan]))
    preprocess_error(capsys, "h36m", root, tmp_path / "out", str(root / cameras_file), f"S1 camera {CAMERA}",
                     f"({where})", "f = [nan nan] is not finite", options=[f"cameras_file={cameras_file}"])
    write_h36m_cameras(root, f=np.array([1000.0, 0.0]))
    preprocess_error(capsys, "h36m", root, tmp_path / "out", str(root / cameras_file), f"S1 camera {CAMERA}",
                     "f = [1000.0, 0.0] is not positive", options=[f"cameras_file={cameras_file}"])
    if cameras_file == "cameras.h5":  # metadata.xml's numbers cannot hold a value of the wrong size
        write_h36m_cameras(root, k=np.zeros(2))
        preprocess_error(capsys, "h36m", root, tmp_path / "out", "cameras.h5", "k has shape (2,), expected (3,)",
                         options=[f"cameras_file={cameras_file}"])


@pytest.mark.parametrize("poses", ["mono", "world"])
def test_a_human36m_camera_file_without_the_subject_is_one_line_not_a_guess(capsys, tmp_path, poses):
    root = tmp_path / "h36m"
    mono = write_h36m(root)
    world = root / "S1" / "MyPoseFeatures" / "D3_Positions"
    world.mkdir()
    shutil.copy(mono / f"Walking.{CAMERA}.cdf", world / "Walking.cdf")
    write_h36m_cameras(root, subjects=("S1", "S5"))
    (root / "metadata.xml").unlink()
    found = [o for o in iter_dataset("h36m", root, "train", poses=poses) if isinstance(o, PersonRecord)]
    assert found and all(r.intrinsics.source == "dataset" and "cameras.h5" in r.intrinsics.detail for r in found)
    write_h36m_cameras(root, subjects=("S5", "S6"))  # S1 missing: once a silent focal-length guess, or no record
    preprocess_error(capsys, "h36m", root, tmp_path / "out2", str(root / "cameras.h5"),
                     "no camera parameters for S1 (no group subject1)", "the file has S5, S6",
                     options=[f"poses={poses}"], args=["--split", "train"])


def cut_video(path: Path, zero_size: bool) -> None:
    """Cut bytes off the end of an MP4 (its index, the moov box, is at the end) until OpenCV opens it and reports
    frames of 0x0 px (``zero_size``), or a size but no frame that decodes: the two ways a cut index shows."""
    import cv2

    data = path.read_bytes()
    for cut in range(10, data.find(b"moov"), 10):
        path.write_bytes(data[:-cut])
        capture = cv2.VideoCapture(str(path))
        try:
            if capture.isOpened() and (capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 0) == zero_size \
                    and not capture.read()[0]:
                return
        finally:
            capture.release()
    pytest.fail(f"no cut of {path.name} gives that")


@pytest.mark.parametrize("zero_size, message", [(True, "finds 0x0 px frames"), (False, "first frame does not decode")])
def test_a_human36m_video_cut_short_is_a_corrupt_image_reject_naming_it(capsys, tmp_path, zero_size, message):
    root, out = tmp_path / "h36m", tmp_path / "out"
    videos = write_h36m_videos(root, actions=("Walking", "Eating"))
    cut_video(videos / f"Eating.{CAMERA}.mp4", zero_size)
    convert(capsys, "h36m", root, out, "--split", "train")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    assert (rows[0]["source"], rows[0]["record"], rows[0]["reason"]) == (
        f"S1/Videos/Eating.{CAMERA}.mp4", f"S1 Eating.{CAMERA} frame 0", "corrupt_image")
    assert message in rows[0]["message"]


def test_a_missing_human36m_video_is_a_reject_naming_the_video(capsys, tmp_path):
    root, out = tmp_path / "h36m", tmp_path / "out"
    videos = write_h36m_videos(root, actions=("Walking", "Eating"))
    (videos / f"Eating.{CAMERA}.mp4").unlink()  # image_layout auto: the subject's Videos folder says the layout
    convert(capsys, "h36m", root, out, "--split", "train")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    assert (rows[0]["source"], rows[0]["reason"]) == (f"S1/Videos/Eating.{CAMERA}.mp4", "missing_image")
    assert f"no video file at {videos / f'Eating.{CAMERA}.mp4'}" in rows[0]["message"]


def test_damaged_human36m_videos_convert_without_ffmpegs_log(tmp_path):
    """FFmpeg prints a line per damaged macroblock (thousands) and 'moov atom not found' for a file that is no
    video, to the process's stderr: a user running the CLI sees none of them, only the rejects' summary."""
    root, out = tmp_path / "h36m", tmp_path / "out"
    videos = write_h36m_videos(root, actions=("Walking", "Eating", "Posing"), frames=4)
    data = bytearray((videos / f"Walking.{CAMERA}.mp4").read_bytes())
    data[len(data) // 4: len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)  # frame data zeroed, index intact
    (videos / f"Walking.{CAMERA}.mp4").write_bytes(bytes(data))
    (videos / f"Eating.{CAMERA}.mp4").write_bytes(b"no video at all" * 100)
    result = run_cli(["preprocess", "h36m", "--root", root, "--out", out, "--no-progress", "--split", "train",
                      "--option", "frame_step=1"])
    assert result.returncode == 0, result.stderr
    assert "[mpeg4 @" not in result.stderr and "moov atom" not in result.stderr, result.stderr[:2000]
    _, rows = reconcile(out)
    assert {r["source"] for r in rows if r["reason"] == "corrupt_image"} >= {f"S1/Videos/Eating.{CAMERA}.mp4"}


def write_h36m_videos(root: Path, actions: tuple[str, ...], frames: int = 2) -> Path:
    """`write_h36m`'s S1 with the release's videos (noise, 100 x 80 px, 50 fps) in place of SPIN's images; returns
    the Videos folder."""
    from shards.frames import write_video

    write_h36m(root, actions=actions, frames=frames)
    shutil.rmtree(root / "images")
    rng = np.random.default_rng(2)
    for action in actions:
        write_video(root / "S1" / "Videos" / f"{action}.{CAMERA}.mp4",
                    [rng.integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8) for _ in range(frames)],
                    50.0)
    return root / "S1" / "Videos"


def test_a_dataset_whose_every_record_is_rejected_is_an_error_after_writing_its_rejects(capsys, tmp_path):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root, count=2)
    for image in (root / "images").iterdir():
        image.unlink()
    preprocess_error(capsys, "lsp", root, out, "no record became a sample", "missing_image 2", "--overwrite")
    manifest, _ = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 0, "rejected": 2}


def test_mpii_release_records_with_bad_fields_are_reject_rows(capsys, tmp_path):
    root, out = tmp_path / "mpii", tmp_path / "out"
    write_mpii_release(root, [mpii_rect(), mpii_rect(x1=float("nan")),  # a NaN head box: json cannot keep it
                              mpii_rect(annopoints={"point": mat_structs([{"id": 3, "x": "far", "y": 1.0}])}),
                              mpii_rect(annopoints={"point": mat_structs([{"id": 40, "x": 1.0, "y": 1.0}])})])
    convert(capsys, "mpii", root, out, "--split", "trainval")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 4, "written": 1, "rejected": 3}
    by_record = {r["record"]: (r["reason"], r["message"]) for r in rows}
    assert set(by_record) == {"annolist(1).annorect(2)", "annolist(1).annorect(3)", "annolist(1).annorect(4)"}
    assert all(reason == "malformed_annotation" for reason, _ in by_record.values())
    assert "head_box" in by_record["annolist(1).annorect(2)"][1]
    assert "joint id 40" in by_record["annolist(1).annorect(4)"][1]


@pytest.mark.parametrize("dataset, flag", [("lsp", 2.0), ("lsp", np.nan), ("lspet", 2.0)])
def test_an_lsp_joint_flag_neither_0_nor_1_is_a_reject_row(capsys, tmp_path, dataset, flag):
    root, out = tmp_path / dataset, tmp_path / "out"
    joints = lsp_joints(2)
    joints[:, :, 2] = 0.0 if dataset == "lsp" else 1.0  # all visible
    joints[1, 3, 2] = flag  # im0002's left hip: once read as occluded (LSP) or not annotated (LSPET)
    write_lsp(root, joints=joints)
    if dataset == "lspet":  # 14 x 3 x N, 5-digit image names
        scipy.io.savemat(root / "joints.mat", {"joints": np.transpose(joints, (1, 2, 0))})
        for number in (1, 2):
            (root / "images" / f"im{number:04d}.jpg").rename(root / "images" / f"im{number:05d}.jpg")
    convert(capsys, dataset, root, out, "--split", "all" if dataset == "lsp" else "train")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
    stem = "im0002" if dataset == "lsp" else "im00002"
    assert (rows[0]["source"], rows[0]["record"], rows[0]["reason"]) == ("joints.mat", stem, "malformed_annotation")
    assert "must be 0 (" in rows[0]["message"] and f"Left Hip {flag:g}" in rows[0]["message"]


def test_an_mpii_release_subset_without_names_is_one_line_naming_it(capsys, tmp_path):
    root = tmp_path / "mpii"
    annolist = mat_structs([{"annorect": mat_structs([mpii_rect()])}])
    root.mkdir()
    scipy.io.savemat(root / "detections.mat", {"annolist": annolist, "RELEASE_img_index": np.array([[1]]),
                                               "RELEASE_person_index": np.array([[1]])})
    preprocess_error(capsys, "mpii", root, tmp_path / "out", str(root / "detections.mat"), "without image names",
                     "names_file", options=["annotation_file=detections.mat"])


def test_an_image_that_declares_a_billion_pixels_is_a_reject_not_decoded(capsys, tmp_path):
    root, out = tmp_path / "lsp", tmp_path / "out"
    write_lsp(root, count=2)
    bomb = io.BytesIO()
    Image.new("RGB", (1, 1)).save(bomb, "PNG")
    data = bytearray(bomb.getvalue())
    data[16:24] = struct.pack(">II", 40000, 40000)  # IHDR width and height: 1.6e9 px
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    (root / "images" / "im0002.jpg").write_bytes(bytes(data))
    for check in ("header", "exists"):  # found by the adapter, or at crop time
        convert(capsys, "lsp", root, out, "--option", f"image_check={check}", "--overwrite")
        manifest, rows = reconcile(out)
        assert manifest["counts"] == {"read": 2, "written": 1, "rejected": 1}
        assert (rows[0]["source"], rows[0]["reason"]) == ("images/im0002.jpg", "corrupt_image")
        assert "DecompressionBomb" in rows[0]["message"]


def test_a_damaged_human36m_box_mask_is_a_reject_row_per_frame(capsys, tmp_path):
    root, out = tmp_path / "h36m", tmp_path / "out"
    write_h36m(root, actions=("Walking", "Eating"), frames=6)  # frames 0 and 5 of each
    masks = root / "S1" / "MySegmentsMat" / "ground_truth_bb"
    masks.mkdir(parents=True)
    (masks / "Eating.54138969.mat").write_bytes(b"MATLAB 7.3 MAT-file, but cut here")
    convert(capsys, "h36m", root, out, "--split", "train")
    manifest, rows = reconcile(out)
    assert manifest["counts"] == {"read": 4, "written": 2, "rejected": 2}
    assert sorted(r["record"] for r in rows) == ["S1 Eating.54138969 frame 0", "S1 Eating.54138969 frame 5"]
    assert all(r["reason"] == "malformed_annotation" and "Eating.54138969.mat" in r["message"] for r in rows)


def test_a_user_sees_one_line_and_a_failing_exit_for_an_unreadable_annotation_file(tmp_path):
    write_coco(tmp_path / "coco", [coco_image(1, "a.jpg")], [], text=GOOD_COCO[:40])
    line = expect_error_in_subprocess(["preprocess", "coco", "--root", tmp_path / "coco", "--out", tmp_path / "out",
                                       "--no-progress"], COCO_FILE, "not a COCO keypoints file")
    assert line.startswith("fitloop: error: ") and not (tmp_path / "out" / "manifest.json").exists()
