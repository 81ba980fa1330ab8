"""Dataset adapters: the real fixtures parse to known values, and every bad record becomes one reject.

The fixture tests read ../shared/fixtures (real excerpts of COCO, MPII, LSP, LSPET and SPIN's .npz files; see
its README) and skip when it is absent. The reject tests build small datasets in a temporary folder.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from dataset_files import mat_structs
from PIL import Image

from core.joints import COCO_JOINTS, JOINT_INDEX, LSP_JOINTS, MPII_JOINTS, NUM_JOINTS
from pipelines.adapters import ADAPTERS, SPIN_LIMB_JOINTS, AnnotationFileError, DatasetError, iter_dataset
from shards.schema import KEY_PATTERN, PersonRecord, Reject, make_key

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"real dataset fixtures not found at {FIXTURES}")


def split_outputs(outputs: list) -> tuple[list[PersonRecord], list[Reject]]:
    records = [o for o in outputs if isinstance(o, PersonRecord)]
    rejects = [o for o in outputs if isinstance(o, Reject)]
    assert len(records) + len(rejects) == len(outputs), "an adapter yielded something that is neither"
    return records, rejects


def assert_keys_sound(outputs: list) -> None:
    keys = [o.key for o in outputs if o.key]
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1][:5]
    assert all(KEY_PATTERN.match(k) and "." not in k for k in keys)


def reasons(rejects: list[Reject]) -> Counter:
    return Counter(r.reason for r in rejects)


def joint(record: PersonRecord, name: str) -> np.ndarray:
    return record.keypoints_2d[JOINT_INDEX[name]]


# --- The real fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coco_outputs() -> list:
    return list(iter_dataset("coco", FIXTURES / "coco", "val", annotation_file="test_coco.json"))


@needs_fixtures
def test_coco_one_output_per_annotated_person(coco_outputs):
    annotations = json.loads((FIXTURES / "coco" / "test_coco.json").read_text())["annotations"]
    records, rejects = split_outputs(coco_outputs)
    # read = written + rejected, one output per annotation, keyed by COCO's annotation id
    assert sorted(o.key for o in coco_outputs) == sorted(
        f"coco/{a['image_id']:012d}_a{a['id']}" for a in annotations)
    assert_keys_sound(coco_outputs)
    # the two annotations with no keypoints (num_keypoints 0) are the only rejects
    assert len(records) == sum(a["num_keypoints"] >= 6 for a in annotations) == 12
    assert reasons(rejects) == {"too_few_joints": 2}


@needs_fixtures
def test_coco_skier_has_all_17_keypoints(coco_outputs):
    skier = [o for o in coco_outputs if o.key.startswith("coco/000000000785_")]
    assert len(skier) == 1 and isinstance(skier[0], PersonRecord)
    skier = skier[0]
    coco_slots = [JOINT_INDEX[name] for name in COCO_JOINTS]
    assert (skier.keypoints_2d[coco_slots, 2] == 1).all()
    assert (skier.keypoints_2d[:, 2] > 0).sum() == 17  # nothing else
    np.testing.assert_allclose(joint(skier, "Nose"), [367, 81, 1])  # COCO is 0-based: unchanged
    x, y, w, h = 280.79, 44.73, 218.7, 346.68  # its bbox
    np.testing.assert_allclose(skier.center, [x + w / 2, y + h / 2], atol=1e-4)
    assert skier.scale == pytest.approx(1.2 * max(w, h) / 200)
    assert skier.image_size == (640, 425) and skier.image_path == "000000000785.jpg"
    assert (skier.image_root / skier.image_path).is_file()


@needs_fixtures
def test_lsp_two_samples_and_1998_missing_images():
    root = FIXTURES / "lsp" / "lsp_dataset"
    by_split = {split: split_outputs(list(iter_dataset("lsp", root, split))) for split in ("train", "test", "all")}
    records, rejects = by_split["all"]
    assert [r.key for r in records] == ["lsp/im1010", "lsp/im1963"]
    assert reasons(rejects) == {"missing_image": 1998}
    assert len(records) + len(rejects) == 2000  # read = written + rejected
    # Splits as the literature uses them: 1-1000 train, 1001-2000 test (both present images are test)
    train_records, train_rejects = by_split["train"]
    test_records, test_rejects = by_split["test"]
    assert (len(train_records), len(train_rejects), len(test_records), len(test_rejects)) == (0, 1000, 2, 998)
    assert train_rejects[0].key == "lsp/im0001" and train_rejects[-1].key == "lsp/im1000"
    assert test_rejects[0].key == "lsp/im1001" and test_rejects[-1].key == "lsp/im2000"
    assert "im0001.jpg" in train_rejects[0].message


@needs_fixtures
def test_lsp_matlab_coordinates_become_0_based():
    raw = scipy.io.loadmat(FIXTURES / "lsp" / "lsp_dataset" / "joints.mat")["joints"]  # 3 x 14 x 2000, 1-based
    record = next(o for o in iter_dataset("lsp", FIXTURES / "lsp" / "lsp_dataset", "test")
                  if isinstance(o, PersonRecord))
    assert record.key == "lsp/im1010"
    np.testing.assert_allclose(raw[:2, 0, 1009], [33.80046888, 153.34587907])  # r-ankle of im1010, as stored
    np.testing.assert_allclose(joint(record, "Right Ankle"), [32.80046888, 152.34587907, 1.0], atol=1e-4)
    # flag 1 = occluded in LSP: r-wrist, r-elbow and r-shoulder of im1010 are flagged; still annotated (conf 1)
    assert record.extra["occluded"] == ["Right Wrist", "Right Elbow", "Right Shoulder"]
    assert (record.keypoints_2d[[JOINT_INDEX[n] for n in LSP_JOINTS], 2] == 1).all()
    # SPIN's box: tight keypoint box x 1.2 (SPIN's npz says centre (75.97, 95.45) 1-based, scale 0.73853)
    np.testing.assert_allclose(record.center, [74.96952828, 94.44890022], atol=1e-4)
    assert record.scale == pytest.approx(0.7385283916724096)
    assert record.image_size == (153, 192)


@needs_fixtures
def test_lspet_gives_8_samples():
    root = FIXTURES / "lspet" / "lspet_dataset"
    outputs = list(iter_dataset("lspet", root, "train"))
    records, rejects = split_outputs(outputs)
    present = sorted(p.stem for p in (root / "images").glob("im*.jpg"))
    assert [r.key for r in records] == [f"lspet/{stem}" for stem in present] and len(records) == 8
    assert len(outputs) == scipy.io.loadmat(root / "joints.mat")["joints"].shape[-1] == 10000
    assert_keys_sound(outputs)
    # LSPET's flag is inverted against LSP (1 = visible): the fixture's 8 people have all 14 joints visible
    assert all((r.keypoints_2d[:, 2] > 0).sum() == 14 and r.extra["occluded"] == [] for r in records)
    assert set(reasons(rejects)) <= {"missing_image", "too_few_joints"}
    assert reasons(rejects)["missing_image"] == 10000 - 8 - reasons(rejects)["too_few_joints"]


@needs_fixtures
def test_lsp_and_lspet_layouts_are_not_confused():
    # An LSP-extended joints.mat (14 x 3 x N) read as LSP is an error naming the file and the layout
    with pytest.raises(AnnotationFileError, match=r"lspet_dataset/joints.mat: not an lsp joints.mat .*is this an "
                                                  r"LSP-extended \(lspet\) file\?"):
        list(iter_dataset("lsp", FIXTURES / "lspet" / "lspet_dataset", "train"))


@pytest.fixture(scope="module")
def mpii_by_format() -> dict[str, list]:
    root = FIXTURES / "mpii"
    images = root / "mmpose_json"
    return {
        "mat": list(iter_dataset("mpii", root, "val", annotation_file="original_release_struct/detections.mat",
                                 names_file="hourglass_h5/valid.h5", image_dir=images)),
        "h5": list(iter_dataset("mpii", root, "val", annotation_file="hourglass_h5/valid.h5", image_dir=images)),
        "json": list(iter_dataset("mpii", root, "val", annotation_file="mmpose_json/test_mpii.json",
                                  image_dir=images)),
    }


@needs_fixtures
def test_mpii_three_formats_agree_within_1px(mpii_by_format):
    people = {}
    for fmt, outputs in mpii_by_format.items():
        records, _ = split_outputs(outputs)
        assert_keys_sound(outputs)
        people[fmt] = {r.extra["image"]: r for r in records}
    assert len(mpii_by_format["mat"]) == len(mpii_by_format["h5"]) == 2958  # the validation people
    assert sorted(people["mat"]) == sorted(people["h5"]) == sorted(people["json"]) == [
        "004645041.jpg", "005808361.jpg", "051423444.jpg", "052475643.jpg", "060754485.jpg"]
    for image, mat in people["mat"].items():
        for other in (people["h5"][image], people["json"][image]):
            assert np.array_equal(mat.keypoints_2d[:, 2] > 0, other.keypoints_2d[:, 2] > 0)
            assert np.abs(mat.keypoints_2d[:, :2] - other.keypoints_2d[:, :2]).max() <= 1.0
            assert np.abs(mat.center - other.center).max() <= 1.0
            assert mat.scale == pytest.approx(other.scale, rel=1e-4)
        assert mat.key == people["h5"][image].key == f"mpii/{Path(image).stem}_p0"  # release person ids
    # The h5 holds the release's joints truncated to integers, so they differ, by less than a pixel
    worst = max(np.abs(people["mat"][i].keypoints_2d - people["h5"][i].keypoints_2d).max() for i in people["mat"])
    assert 0.5 < worst < 1.0


@needs_fixtures
def test_mpii_conventions_are_normalised(mpii_by_format):
    mat = next(o for o in mpii_by_format["mat"] if isinstance(o, PersonRecord) and o.extra["image"] == "005808361.jpg")
    # Release: r-ankle (804, 711) 1-based; objpos (966, 340), scale 4.718488 (height / 200)
    np.testing.assert_allclose(joint(mat, "Right Ankle"), [803, 710, 1])
    # Stored in the hourglass/SPIN box convention, 0-based: y + 15 s, scale x 1.25 (= valid.h5's 410.777, 5.898)
    np.testing.assert_allclose(mat.center, [965, 339 + 15 * 4.718487893382794], atol=1e-3)
    assert mat.scale == pytest.approx(1.25 * 4.718487893382794)
    with h5py.File(FIXTURES / "mpii" / "hourglass_h5" / "valid.h5") as h5:
        np.testing.assert_allclose(mat.center, h5["center"][0] - 1, atol=1e-3)
        assert mat.scale == pytest.approx(h5["scale"][0])
    np.testing.assert_allclose(mat.extra["head_box"], [913, 78, 1030, 236])
    # is_visible = 0 in the release is an occluded, annotated joint; the h5 keeps the flag, the json has none
    occluded = next(o for o in mpii_by_format["h5"]
                    if isinstance(o, PersonRecord) and o.extra["image"] == "051423444.jpg")
    assert occluded.extra["occluded"] == ["Right Wrist", "Right Elbow"]
    assert (occluded.keypoints_2d[:, 2] > 0).sum() == 14


@needs_fixtures
def test_spin_npz_matches_the_lsp_adapter():
    root = FIXTURES / "lsp" / "lsp_dataset"
    outputs = list(iter_dataset("spin-npz", root, "test", npz_file="../spin_npz/lsp_dataset_test.npz"))
    records, rejects = split_outputs(outputs)
    assert len(outputs) == 1000 and reasons(rejects) == {"missing_image": 998}
    ours = {r.key: r for r in iter_dataset("lsp", root, "test") if isinstance(r, PersonRecord)}
    assert sorted(ours) == [r.key for r in records] == ["lsp/im1010", "lsp/im1963"]
    for spin in records:  # SPIN kept LSP's 1-based pixels; both end up 0-based and equal
        np.testing.assert_allclose(spin.keypoints_2d, ours[spin.key].keypoints_2d, atol=1e-4)
        np.testing.assert_allclose(spin.center, ours[spin.key].center, atol=1e-4)
        assert spin.scale == pytest.approx(ours[spin.key].scale)
        assert spin.extra["maskname"].endswith("_segmentation.png") and spin.joints_3d is None
    assert records[0].extra["spin_row"] == 9  # the join key to SPIN's row-ordered fits


@needs_fixtures
def test_spin_npz_train_file_carries_openpose_and_refuses_other_splits():
    root = FIXTURES / "lsp" / "lsp_dataset_original"
    npz = "../spin_npz/lsp_dataset_original_train.npz"
    with pytest.raises(DatasetError, match="'train' file"):
        list(iter_dataset("spin-npz", root, "test", npz_file=npz))
    outputs = list(iter_dataset("spin-npz", root, "train", npz_file=npz, image_check="exists"))
    assert len(outputs) == 1000 and outputs[0].key == "lsp-orig/im0001" and outputs[0].reason == "missing_image"


# --- Rejects: small datasets written in a temporary folder ----------------------------------------------------

def write_image(path: Path, size: tuple[int, int] = (100, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG")
    return path


def coco_annotation(annotation_id: int, image_id: int, keypoints: list[float] | None = None, **fields) -> dict:
    if keypoints is None:  # 17 visible keypoints spread over a 100 x 80 image
        keypoints = [v for k in range(17) for v in (10 + 4 * k, 10 + 3 * k, 2)]
    return {"id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "keypoints": keypoints,
            "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0), "bbox": [5, 5, 80, 65], **fields}


def write_coco(root: Path, images: list[dict], annotations: list[dict]) -> Path:
    categories = [{"id": 1, "name": "person", "keypoints": [
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
        "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
        "left_ankle", "right_ankle"]}]
    path = root / "annotations" / "person_keypoints_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_coco_rejects_one_record_each_and_goes_on(tmp_path):
    write_image(tmp_path / "val2017" / "good.jpg")
    (tmp_path / "val2017" / "corrupt.jpg").write_bytes(b"\xff\xd8 these are not image bytes" * 10)
    images = [{"id": 1, "file_name": "good.jpg", "width": 100, "height": 80},
              {"id": 2, "file_name": "corrupt.jpg", "width": 100, "height": 80},
              {"id": 3, "file_name": "absent.jpg", "width": 100, "height": 80},
              {"id": 4, "file_name": "good.jpg", "width": 640, "height": 480}]
    far = [v for k in range(17) for v in ((10 + 4 * k, 10 + 3 * k, 2) if k else (250, 10, 2))]  # nose at x=250
    nan = [v for k in range(17) for v in ((10 + 4 * k, 10 + 3 * k, 2) if k != 5 else (float("nan"), 10, 2))]
    occluded = [v for k in range(17) for v in (10 + 4 * k, 10 + 3 * k, 1 if k == 9 else 2)]  # left wrist v=1
    annotations = [
        coco_annotation(10, 1, keypoints=occluded), coco_annotation(11, 2), coco_annotation(12, 3),
        coco_annotation(13, 1, keypoints=nan), coco_annotation(14, 1, keypoints=far),
        coco_annotation(15, 1, keypoints=[1, 2, 2] * 16),  # 48 values: malformed
        coco_annotation(16, 1, iscrowd=1), coco_annotation(17, 1, bbox=[5, 5, 0.5, 0.5]),
        coco_annotation(18, 4), coco_annotation(19, 99),  # image 99 does not exist
    ]
    write_coco(tmp_path, images, annotations)
    outputs = list(iter_dataset("coco", tmp_path, "val"))  # finds annotations/person_keypoints_val2017.json
    records, rejects = split_outputs(outputs)
    assert len(outputs) == len(annotations)  # read = written + rejected
    assert [r.key for r in records] == ["coco/000000000001_a10"]
    assert records[0].image_path == "val2017/good.jpg" and records[0].image_root == tmp_path
    assert records[0].extra["occluded"] == ["Left Wrist"] and joint(records[0], "Left Wrist")[2] == 1
    by_record = {r.record: r for r in rejects}
    expected = {"annotation 11": "corrupt_image", "annotation 12": "missing_image", "annotation 13": "nan_keypoints",
                "annotation 14": "keypoints_out_of_image", "annotation 15": "malformed_annotation",
                "annotation 16": "crowd", "annotation 17": "degenerate_box", "annotation 18": "image_size_mismatch",
                "annotation 19": "malformed_annotation"}
    assert {record: r.reason for record, r in by_record.items()} == expected
    assert by_record["annotation 11"].source == "val2017/corrupt.jpg"  # image reasons name the image
    assert by_record["annotation 15"].source == "annotations/person_keypoints_val2017.json"
    assert "Left Shoulder" in by_record["annotation 13"].message and "Nose" in by_record["annotation 14"].message
    assert by_record["annotation 11"].key == "coco/000000000002_a11"  # rejects keep the key they would have had
    assert by_record["annotation 19"].key == "coco/000000000099_a19"


def test_malformed_json_is_an_error_naming_the_file_before_any_record(tmp_path):
    path = tmp_path / "person_keypoints_train2017.json"
    path.write_text('{"images": [], "annotations": [')
    with pytest.raises(AnnotationFileError, match=r"person_keypoints_train2017.json: not a COCO keypoints file "
                                                  r"\(JSONDecodeError"):
        next(iter_dataset("coco", tmp_path, "train"))
    # the mmpose MPII json the same way
    (tmp_path / "mpii_val.json").write_text("[{]")
    with pytest.raises(AnnotationFileError, match="mpii_val.json: not an mmpose/HRNet MPII json"):
        next(iter_dataset("mpii", tmp_path, "val"))


def write_lsp(root: Path, joints: np.ndarray, present: dict[int, bytes | tuple[int, int]]) -> None:
    """joints: (N, 14, 3) x, y (1-based), flag; written 3 x 14 x N. present: image number -> size or raw bytes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "joints.mat", {"joints": np.transpose(joints, (2, 1, 0))})
    for number, content in present.items():
        path = root / "images" / f"im{number:04d}.jpg"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            write_image(path, content)


def lsp_person(offset: float = 0.0) -> np.ndarray:
    xy = np.stack([np.linspace(20, 60, 14) + offset, np.linspace(10, 70, 14)], axis=1)
    return np.column_stack([xy, np.zeros(14)])  # flag 0: visible


def test_lsp_rejects_nan_corrupt_and_out_of_image_then_goes_on(tmp_path):
    joints = np.stack([lsp_person(), lsp_person(), lsp_person(), lsp_person(50.0), lsp_person()])  # 4: x 70-110
    joints[1, 4, 0] = np.nan
    truncated = (tmp_path / "t.jpg")
    write_image(truncated, (100, 80))
    write_lsp(tmp_path, joints, {1: (100, 80), 2: (100, 80), 3: b"GIF89a garbage", 4: (100, 80),
                                 5: truncated.read_bytes()[:5000]})
    outputs = list(iter_dataset("lsp", tmp_path, "train"))
    assert len(outputs) == 5
    assert [(o.key, getattr(o, "reason", "ok")) for o in outputs] == [
        ("lsp/im0001", "ok"), ("lsp/im0002", "nan_keypoints"), ("lsp/im0003", "corrupt_image"),
        ("lsp/im0004", "keypoints_out_of_image"), ("lsp/im0005", "ok")]  # the header of im0005 is intact
    assert "Left Knee" in outputs[1].message
    # decoding every pixel finds the truncated file; drop_joint keeps the person without its outside joints
    outputs = list(iter_dataset("lsp", tmp_path, "train", image_check="decode", out_of_image="drop_joint"))
    assert outputs[4].reason == "corrupt_image" and outputs[4].source == "images/im0005.jpg"
    kept = outputs[3]
    assert isinstance(kept, PersonRecord) and 0 < len(kept.extra["dropped_out_of_image"]) < 14
    assert all(joint(kept, name)[2] == 0 for name in kept.extra["dropped_out_of_image"])


def test_checks_are_configurable(tmp_path):
    joints = np.stack([lsp_person()])
    joints[0, 3, 2] = 1  # l-hip occluded
    write_lsp(tmp_path, joints, {1: (100, 80)})
    record = next(iter_dataset("lsp", tmp_path, "train", occluded_confidence="0"))  # strings, as from a CLI
    assert joint(record, "Left Hip")[2] == 0 and joint(record, "Right Hip")[2] == 1
    assert next(iter_dataset("lsp", tmp_path, "train", min_joints=15)).reason == "too_few_joints"
    spin = next(iter_dataset("lsp", tmp_path, "train", require_joints=SPIN_LIMB_JOINTS + ("Nose",)))
    assert spin.reason == "missing_required_joints" and spin.message.endswith("Nose")
    assert next(iter_dataset("lsp", tmp_path, "train", min_box_side_px=500)).reason == "degenerate_box"
    with pytest.raises(DatasetError, match="min_joint"):
        iter_dataset("lsp", tmp_path, "train", min_joint=3)
    with pytest.raises(DatasetError, match="no split 'val'"):
        next(iter_dataset("lsp", tmp_path, "val"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        iter_dataset("h36m-typo", tmp_path, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        next(iter_dataset("lspet", tmp_path / "nowhere", "train"))


def test_lspet_invisible_joints_are_not_annotated(tmp_path):
    joints = np.column_stack([np.linspace(20, 60, 14), np.linspace(10, 70, 14), np.ones(14)])  # 1 = visible
    joints[[0, 5]] = [[-45.0, -26.0, 0.0], [0.0, 0.0, 0.0]]  # LSPET's placeholders for invisible ankles
    (tmp_path / "images").mkdir()
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints[:, :, None]})  # 14 x 3 x 1
    write_image(tmp_path / "images" / "im00001.jpg")
    record = next(iter_dataset("lspet", tmp_path, "train"))
    assert record.key == "lspet/im00001" and (record.keypoints_2d[:, 2] > 0).sum() == 12
    np.testing.assert_array_equal(joint(record, "Right Ankle"), [0, 0, 0])  # not "out of image": absent
    np.testing.assert_allclose(joint(record, "Right Knee"), [20 + 40 / 13 - 1, 10 + 60 / 13 - 1, 1], atol=1e-4)


def write_release_mat(root: Path) -> None:
    """A tiny mpii_human_pose_v1_u12_1.mat in the real release layout: two images, the second a test image."""
    empty = np.zeros((0, 0))
    points = mat_structs([{"id": k, "x": 101.0 + 10 * k, "y": 51.0 + 5 * k,
                           "is_visible": "0" if k == 10 else (empty if k in (8, 9) else 1)} for k in range(16)])
    rects = mat_structs([
        {"x1": 150.0, "y1": 40.0, "x2": 170.0, "y2": 60.0, "scale": 2.0, "objpos": {"x": 200.0, "y": 150.0},
         "annopoints": {"point": points}},
        {"x1": 10.0, "y1": 10.0, "x2": 20.0, "y2": 20.0, "scale": 1.0, "objpos": {"x": 30.0, "y": 40.0},
         "annopoints": empty},  # a person with a position but no joints, as the release has many
    ])
    test_rects = mat_structs([{"x1": empty, "y1": empty, "x2": empty, "y2": empty, "scale": 1.0,
                               "objpos": {"x": 30.0, "y": 40.0}, "annopoints": empty}])
    annolist = mat_structs([{"image": {"name": "015601864.jpg"}, "annorect": rects},
                            {"image": {"name": "015599452.jpg"}, "annorect": test_rects}])
    scipy.io.savemat(root / "mpii_human_pose_v1_u12_1.mat",
                     {"RELEASE": {"annolist": annolist, "img_train": np.array([[1, 0]])}})
    write_image(root / "images" / "015601864.jpg", (640, 480))


def test_mpii_release_struct_with_image_names(tmp_path):
    write_release_mat(tmp_path)
    outputs = list(iter_dataset("mpii", tmp_path, "trainval"))  # finds the release .mat under the root
    records, rejects = split_outputs(outputs)
    assert [o.key for o in outputs] == ["mpii/015601864_p0", "mpii/015601864_p1"]  # the test image is not read
    assert [o.record for o in outputs] == ["annolist(1).annorect(1)", "annolist(1).annorect(2)"]
    assert reasons(rejects) == {"too_few_joints": 1}
    person = records[0]
    assert person.image_path == "images/015601864.jpg" and person.source == "mpii_human_pose_v1_u12_1.mat"
    for k, name in enumerate(MPII_JOINTS):  # 1-based (101 + 10k, 51 + 5k) -> 0-based
        np.testing.assert_allclose(joint(person, name), [100 + 10 * k, 50 + 5 * k, 1])
    np.testing.assert_allclose(person.center, [199, 149 + 15 * 2.0])  # objpos, 0-based, + 15 s
    assert person.scale == pytest.approx(2.5) and person.extra["head_box"] == [149, 39, 169, 59]
    assert person.extra["occluded"] == [MPII_JOINTS[10]]  # is_visible '0' (a string, as in the release)


def test_mpii_release_subset_takes_names_from_the_release(tmp_path):
    write_release_mat(tmp_path)
    release = scipy.io.loadmat(tmp_path / "mpii_human_pose_v1_u12_1.mat")["RELEASE"][0, 0]
    person = release["annolist"][0, 0]["annorect"][:, :1]  # annolist(1).annorect(1), as a 1 x 1 struct array
    subset = np.zeros((1, 1), dtype=[("annorect", "O")])
    subset[0, 0]["annorect"] = person
    scipy.io.savemat(tmp_path / "detections.mat", {"annolist": subset, "RELEASE_img_index": np.array([[1]]),
                                                    "RELEASE_person_index": np.array([[1]])})
    with pytest.raises(DatasetError, match="names_file"):
        next(iter_dataset("mpii", tmp_path, "val", annotation_file="detections.mat"))
    from_subset = next(iter_dataset("mpii", tmp_path, "val", annotation_file="detections.mat",
                                    names_file="mpii_human_pose_v1_u12_1.mat"))
    from_release = next(iter_dataset("mpii", tmp_path, "trainval"))
    assert from_subset.key == from_release.key == "mpii/015601864_p0"
    np.testing.assert_array_equal(from_subset.keypoints_2d, from_release.keypoints_2d)
    assert from_subset.record == "annolist(1) (RELEASE image 1, person 1)"


def test_mpii_release_struct_train_val_need_the_split(tmp_path):
    write_release_mat(tmp_path)
    with pytest.raises(DatasetError, match="split_file"):
        next(iter_dataset("mpii", tmp_path, "val", format="mat"))
    with h5py.File(tmp_path / "valid.h5", "w") as h5:  # pose-hg's valid.h5 selects (image 0, person 1)
        h5["index"], h5["person"] = np.array([0.0]), np.array([1.0])
    outputs = list(iter_dataset("mpii", tmp_path, "val", format="mat", split_file="valid.h5"))
    assert [o.key for o in outputs] == ["mpii/015601864_p1"]


# --- The record schema -------------------------------------------------------------------------------------

def test_keys_are_sanitised_and_dot_free():
    assert make_key("h36m", "S9_Directions 1.54138969_000001") == "h36m/S9_Directions_1_54138969_000001"
    assert make_key("coco", "000000000785", "a442619") == "coco/000000000785_a442619"
    with pytest.raises(ValueError):
        make_key("COCO.2017", "x")
    base = dict(dataset="lsp", split="test", source="joints.mat", record="im1010", image_path="images/im1010.jpg",
                image_root=Path("/data/lsp"), image_size=(153, 192), center=[75.0, 94.0], scale=0.74,
                keypoints_2d=np.zeros((NUM_JOINTS, 3)))
    with pytest.raises(ValueError, match="no '.'"):
        PersonRecord(key="lsp/im1010.jpg", **base)
    with pytest.raises(ValueError, match=r"\(49, 3\)"):
        PersonRecord(key="lsp/im1010", **{**base, "keypoints_2d": np.zeros((24, 3))})
    with pytest.raises(ValueError, match="unknown reject reason"):
        Reject(dataset="lsp", split="test", source="joints.mat", record="im1010", reason="bad", message="")


def test_records_do_not_alias_the_callers_arrays():
    keypoints = np.zeros((NUM_JOINTS, 3))
    record = PersonRecord(dataset="lsp", split="test", key="lsp/im1010", source="joints.mat", record="im1010",
                          image_path="images/im1010.jpg", image_root=Path("/data"), image_size=None,
                          center=np.array([1.0, 2.0]), scale=0.5, keypoints_2d=keypoints)
    keypoints[0, 0] = 5.0
    assert record.keypoints_2d[0, 0] == 0 and not record.keypoints_2d.flags.writeable
    row = record.to_row()
    assert json.loads(json.dumps(row))["key"] == "lsp/im1010" and row["schema_version"] >= 1


def test_registry_names_match_adapters():
    assert {"coco", "mpii", "lsp", "lsp-orig", "lspet", "spin-npz"} <= set(ADAPTERS)
    assert all(name == adapter.name for name, adapter in ADAPTERS.items())
