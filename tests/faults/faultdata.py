"""Tiny datasets in the real layouts, and a shard set from them, for the fault battery's dataset and shard cases.

Each writer makes the few files an adapter reads (docs/datasets.md), with small images, so a case converts in well
under a second; `convert` runs `fitloop preprocess` in this process and `reconcile` checks the counts of what it
wrote (read = written + rejected, in the manifest, the rejects table and the shards).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.io
from dataset_files import mat_structs
from PIL import Image

from fitloop.cli import main as fitloop

IMAGE_SIZE = (100, 80)  # width, height px of every image written here
COCO_KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                       "left_knee", "right_knee", "left_ankle", "right_ankle"]


def write_image(path: Path, size: tuple[int, int] = IMAGE_SIZE, value: int | None = None) -> Path:
    """A JPEG of ``size``: noise, or one grey ``value`` everywhere (to tell two images apart in a crop)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.full((size[1], size[0], 3), value, np.uint8) if value is not None
              else np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    Image.fromarray(pixels).save(path, "JPEG", quality=95)
    return path


# --- COCO: annotations/person_keypoints_val2017.json, images in val2017/ ------------------------------------------

def coco_annotation(annotation_id: int, image_id: int, **fields) -> dict:
    """A person with 17 visible keypoints spread over a 100 x 80 image, box [5, 5, 80, 65]."""
    keypoints = [v for k in range(17) for v in (10 + 4 * k, 10 + 3 * k, 2)]
    return {"id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "keypoints": keypoints,
            "num_keypoints": 17, "bbox": [5, 5, 80, 65], **fields}


def coco_image(image_id: int, file_name: str, size: tuple[int, int] = IMAGE_SIZE) -> dict:
    return {"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]}


def write_coco(root: Path, images: list[dict], annotations: list[dict], text: str | None = None) -> Path:
    """The keypoints json (or ``text`` as its content) and a noise image for each image's file name."""
    path = root / "annotations" / "person_keypoints_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "person", "keypoints": COCO_KEYPOINT_NAMES}]
    path.write_text(text if text is not None else
                    json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    for image in images:
        name = str(image.get("file_name", ""))
        if name and not Path(name).is_absolute() and ".." not in name and not (root / "val2017" / name).exists():
            write_image(root / "val2017" / name)
    return path


# --- LSP: joints.mat (3 x 14 x N, 1-based px, flag 0 = visible) and images/im0001.jpg ... ---------------------------

def lsp_joints(count: int) -> np.ndarray:
    """(count, 14, 3) x, y (1-based), flag 0: a person inside a 100 x 80 image."""
    xy = np.stack([np.linspace(20, 60, 14), np.linspace(10, 70, 14)], axis=1)
    return np.repeat(np.column_stack([xy, np.zeros(14)])[None], count, axis=0)


def write_lsp(root: Path, count: int = 2, joints: np.ndarray | None = None) -> Path:
    """An LSP folder of ``count`` people (or ``joints``); returns the joints file."""
    joints = lsp_joints(count) if joints is None else joints
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "joints.mat", {"joints": np.transpose(joints, (2, 1, 0))})
    for number in range(1, len(joints) + 1):
        write_image(root / "images" / f"im{number:04d}.jpg")
    return root / "joints.mat"


# --- Running preprocess and checking what it wrote ---------------------------------------------------------------

def convert(capsys, dataset: str, root: Path, out: Path, *args: str) -> dict:
    """`fitloop preprocess DATASET --root ROOT --out OUT ARGS` in this process; asserts exit 0; the manifest."""
    capsys.readouterr()
    status = fitloop(["preprocess", dataset, "--root", str(root), "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err, err
    return json.loads((out / "manifest.json").read_text())


def reconcile(out: Path) -> tuple[dict, list[dict]]:
    """Assert that the shard set's counts reconcile everywhere: read = written + rejected in total and per dataset
    and split, one reject row per rejected record, one sample per written record; (manifest, reject rows)."""
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    rows = pq.read_table(out / manifest["rejects"]["file"]).to_pylist()
    assert counts["read"] == counts["written"] + counts["rejected"], counts
    assert len(rows) == counts["rejected"] == manifest["rejects"]["rows"], (len(rows), counts)
    assert sum(s["samples"] for s in manifest["shards"]) == counts["written"], counts
    for dataset, splits in manifest["by_dataset"].items():
        for split, c in splits.items():
            assert c["read"] == c["written"] + c["rejected"], (dataset, split, c)
            assert sum(1 for r in rows if (r["dataset"], r["split"]) == (dataset, split)) == c["rejected"]
    return manifest, rows


# --- Human3.6M: S1/MyPoseFeatures/D3_Positions_mono + D2_Positions (.cdf), frames in images/ ----------------------

def write_h36m(root: Path, actions: tuple[str, ...] = ("Walking",), frames: int = 2, camera: str = "54138969") -> Path:
    """S1 with one camera's mono 3D and 2D pose files per action (32 joints inside a 100 x 80 image, 3 m away) and
    every frame extracted SPIN's way; no camera file, no masks (the box comes from the joints)."""
    from pipelines.synthetic.h36m_files import write_pose_cdf

    features = root / "S1" / "MyPoseFeatures"
    rng = np.random.default_rng(1)
    for action in actions:
        xy = np.column_stack([rng.uniform(20, 80, 32), rng.uniform(10, 70, 32)])
        write_pose_cdf(features / "D2_Positions" / f"{action}.{camera}.cdf", np.repeat(xy[None], frames, axis=0))
        xyz = np.column_stack([rng.normal(0, 300, (32, 2)), np.full(32, 3000.0)])
        write_pose_cdf(features / "D3_Positions_mono" / f"{action}.{camera}.cdf", np.repeat(xyz[None], frames, axis=0))
        for frame in range(frames):
            write_image(root / "images" / f"S1_{action.replace(' ', '_')}.{camera}_{frame + 1:06d}.jpg")
    return features / "D3_Positions_mono"


# --- MPII: the release struct (mpii_human_pose_v1_u12_1.mat), images in images/ -----------------------------------

def mpii_rect(x1: float = 40.0, **fields) -> dict:
    """One annorect of a person with 16 visible joints inside a 100 x 80 image; ``fields`` replace its own."""
    points = mat_structs([{"id": k, "x": 20.0 + 4 * k, "y": 10.0 + 4 * k, "is_visible": 1} for k in range(16)])
    return {"x1": x1, "y1": 5.0, "x2": 60.0, "y2": 20.0, "scale": 0.3, "objpos": {"x": 50.0, "y": 35.0},
            "annopoints": {"point": points}, **fields}


def write_mpii_release(root: Path, rects: list[dict]) -> Path:
    """A release .mat of one training image holding ``rects``, and the image."""
    annolist = mat_structs([{"image": {"name": "000000001.jpg"}, "annorect": mat_structs(rects)}])
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "mpii_human_pose_v1_u12_1.mat",
                     {"RELEASE": {"annolist": annolist, "img_train": np.array([[1]])}})
    write_image(root / "images" / "000000001.jpg")
    return root / "mpii_human_pose_v1_u12_1.mat"
