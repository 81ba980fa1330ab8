"""Damaged dataset files, as `fitloop preprocess` reads them: an annotation file that cannot be read is one line
naming it (never an empty shard set and exit 0); a bad record in a readable file is one reject row naming file and
record, and the counts reconcile (issue 13)."""
import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
import scipy.io
from faultcheck import expect_error, expect_error_in_subprocess
from faultdata import (
    coco_annotation,
    coco_image,
    convert,
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
    preprocess_error(capsys, "lspet", root, tmp_path / "out", "joints.mat", "is this an LSP (lsp) file?")


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
