"""`fitloop predict`: a checkpoint (fitloop's, or SPIN's layout) on one image; the crop camera drawn in the image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt

from core.frames import FIT_CENTER, FIT_FOCAL, FIT_FRAME_OFFSET, FIT_RES
from core.joints import COCO_JOINTS, OPENPOSE_NAMES
from fitloop.cli import main
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from shards.crop import box_to_crop, invert, transform_points
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.heads import head_of
from training.predict import image_camera
from training.regressor import mean_params_from_prior

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
COCO_IMAGE, COCO_IMAGE_ID = "000000000785.jpg", 785   # the fixture README: one skier, all 17 keypoints


def test_the_crop_camera_is_a_pinhole_at_the_box_centre_in_the_image():
    """SPIN's crop camera (focal 5000 px on the 224 px crop, corners at integers) seen through the crop's map back
    to the image is the pinhole `image_camera` gives: the mesh drawn over the image lands where the crop says."""
    rng = np.random.default_rng(0)
    center, scale = np.array([312.7, 201.3]), 1.37
    points = rng.normal(0, 0.4, (20, 3)) + np.array([0.0, 0.0, 40.0])
    crop_px = FIT_FOCAL * points[:, :2] / points[:, 2:] + FIT_CENTER - FIT_FRAME_OFFSET   # centres at integers
    image_px = transform_points(invert(box_to_crop(center, 200.0 * scale, FIT_RES)), crop_px)
    focal, principal = image_camera(center, scale)
    np.testing.assert_allclose(focal * points[:, :2] / points[:, 2:] + np.asarray(principal), image_px, atol=1e-9)


def checkpoint(tmp_path: Path, head: str) -> Path:
    config = TrainConfig(body_model="open-small", head=head, backbone=18, img_res=64)
    body = load_body_model("open-small")
    mean = mean_params_from_prior(MaxMixturePrior.from_file(config.pose_prior), body.num_betas)
    torch.manual_seed(0)
    model = head_of(head).build(mean, config)
    return save_checkpoint(tmp_path / "run", {"model": model.state_dict(), "step": 1, "head": head,
                                              "body_model_id": body.model_id, "config": config.to_dict()})


def person_keypoints(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """An OpenPose file of the open model's T-pose-ish body seen at 8 m in a 200 x 300 image (f = 600 px)."""
    body = load_body_model("open-small")
    pose = torch.zeros(1, 72)
    pose[0, 0] = np.pi   # SMPL's y up, the camera's y down: turned about x to stand upright
    with torch.no_grad():
        joints = body(torch.zeros(1, body.num_betas), pose[:, 3:], pose[:, :3]).joints[0].double().numpy()
    points = joints + np.array([0.0, 0.0, 8.0])
    px = 600.0 * points[:, :2] / points[:, 2:] + np.array([100.0, 150.0])
    body25 = np.column_stack([px[:25], np.ones(25)])
    path = tmp_path / "a_keypoints.json"
    path.write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": body25.reshape(-1).tolist()}]}))
    return path, body25


def test_predict_writes_overlay_parameters_and_mesh_and_refines_towards_the_keypoints(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, "keypoints")
    keypoints, body25 = person_keypoints(tmp_path)
    Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.jpg"), "--checkpoint", str(ckpt), "--keypoints", str(keypoints),
                 "--refine", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["head"] == "keypoints" and record["refined"] and len(record["pose"]) == 72
    picture = Image.open(out / "a.png")
    assert picture.size == (400, 300)
    drawn = np.asarray(picture)[:, 200:].astype(int) != 90
    assert drawn.any()   # the mesh is drawn over the right half
    assert (out / "a.obj").read_text().count("\nv ") == len(load_body_model("open-small").layer.v_template)
    fitted = np.asarray(record["keypoints_image"])[:25]
    # SMPLify's fit reprojects onto the detections: a few px at most in this 300 px picture
    assert np.median(np.linalg.norm(fitted - body25[:, :2], axis=1)) < 5.0
    assert set(record["network"]) == {"pose", "betas", "cam_t"}


def test_predict_refuses_what_it_cannot_use(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, "hmr")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "b.png")
    assert main(["predict", str(tmp_path / "b.png"), "--checkpoint", str(ckpt), "--bbox", "10,10,0,20"]) != 0
    assert "positive width" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "b.png"), "--checkpoint", str(ckpt), "--bbox", "4,4,40,50",
                 "--refine", "--out", str(tmp_path / "o")]) != 0
    assert "--refine fits SMPLify to 2D keypoints" in capsys.readouterr().err
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "b.png"), "--checkpoint", str(tmp_path / "x.pt"), "--bbox", "4,4,40,50"]) != 0
    assert "cannot be read as a checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_spins_checkpoint_layout_loads_into_the_hmr_head(tmp_path, capsys):
    """SPIN's model_checkpoint.pt is {"model": HMR state dict, "optimizer": ..., ...}: a ResNet-50 HMR state dict
    in that layout (the keys SPIN's models/hmr.py names) loads and predicts with SPIN's settings."""
    config = TrainConfig(body_model="open-small", backbone=50, img_res=224)
    body = load_body_model("open-small")
    mean = mean_params_from_prior(MaxMixturePrior.from_file(config.pose_prior), body.num_betas)
    state = head_of("hmr").build(mean, config).state_dict()
    assert {"fc1.weight", "decpose.weight", "decshape.weight", "deccam.weight", "init_pose", "init_shape",
            "init_cam", "conv1.weight", "layer4.2.bn3.running_var"} <= set(state)   # SPIN's HMR names
    torch.save({"model": state, "optimizer": {}, "epoch": 3, "batch_idx": 0, "total_step_count": 10},
               tmp_path / "model_checkpoint.pt")
    Image.fromarray(np.zeros((120, 80, 3), np.uint8)).save(tmp_path / "c.jpg")
    args = ["predict", str(tmp_path / "c.jpg"), "--checkpoint", str(tmp_path / "model_checkpoint.pt"),
            "--bbox", "10,10,60,100", "--out", str(tmp_path / "o"), "--json"]
    assert main(args) != 0 and "--body-model" in capsys.readouterr().err   # SPIN's needs the user's SMPL
    assert main(args + ["--body-model", "open-small"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["checkpoint_kind"] == "spin" and record["head"] == "hmr" and record["img_res"] == 224


def coco_to_body25(name: str) -> str:
    """The BODY_25 slot of a COCO joint, by name (`core.joints`): "Left Shoulder" is "OP LShoulder", "Nose" "OP
    Nose". OpenPose's BODY_25 hips are COCO's annotated hips (OpenPose trained them on COCO)."""
    op = "OP " + name.replace("Left ", "L").replace("Right ", "R")
    assert op in OPENPOSE_NAMES, name
    return op


def coco_person(tmp_path: Path) -> tuple[Path, list[float], Path, np.ndarray]:
    """The fixture image, its person's annotated bbox [x, y, w, h] px, an OpenPose --write_json file of its 17
    keypoints in their BODY_25 slots (visible or occluded: confidence 1), and those keypoints (17, 3)."""
    if not (FIXTURES / "coco" / COCO_IMAGE).is_file():
        pytest.skip(f"the real COCO fixture image is not at {FIXTURES / 'coco' / COCO_IMAGE} (../shared/fixtures)")
    annotations = json.loads((FIXTURES / "coco" / "test_coco.json").read_text())["annotations"]
    (person,) = [a for a in annotations if a["image_id"] == COCO_IMAGE_ID]
    coco = np.asarray(person["keypoints"], np.float64).reshape(len(COCO_JOINTS), 3)
    body25 = np.zeros((len(OPENPOSE_NAMES), 3))
    for name, (x, y, v) in zip(COCO_JOINTS, coco):
        body25[OPENPOSE_NAMES.index(coco_to_body25(name))] = (x, y, 1.0 if v > 0 else 0.0)
    path = tmp_path / "785_keypoints.json"
    path.write_text(json.dumps({"version": 1.3, "people": [{"pose_keypoints_2d": body25.reshape(-1).tolist()}]}))
    return FIXTURES / "coco" / COCO_IMAGE, person["bbox"], path, coco


def mesh_pixels(picture: Path, width: int) -> np.ndarray:
    """(H, W) bool: where the overlay half of a predict picture differs from the plain image half."""
    pixels = np.asarray(Image.open(picture).convert("RGB")).astype(int)
    return (pixels[:, width:] != pixels[:, :width]).any(axis=-1)


@pytest.mark.parametrize("head", ["hmr", "keypoints"])
def test_predict_on_a_real_coco_image(tmp_path, capsys, head):
    """`fitloop predict` on a real COCO photo: from the person's annotated bbox (the ResNet head), and from its
    keypoints written as OpenPose's json (the keypoints head, refined by SMPLify). The mesh is drawn in the
    person's box, the json and the .obj describe the same mesh, and the refined fit reprojects onto the person."""
    image, (x, y, w, h), keypoints, coco = coco_person(tmp_path)
    ckpt = checkpoint(tmp_path, head)
    out = tmp_path / "out"
    where = (["--bbox", f"{x},{y},{w},{h}"] if head == "hmr" else ["--keypoints", str(keypoints), "--refine"])
    assert main(["predict", str(image), "--checkpoint", str(ckpt), *where, "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    width, height = Image.open(image).size
    assert Image.open(out / "000000000785.png").size == (2 * width, height)
    drawn = mesh_pixels(out / "000000000785.png", width)
    rows, cols = np.nonzero(drawn)
    # SPIN's square box around the person (1.2 x the larger side): where the crop camera puts the body
    side = 200.0 * record["scale"]
    assert record["head"] == head and record["refined"] == (head == "keypoints")
    assert drawn.sum() > 0.05 * w * h
    assert np.mean(np.abs(cols - record["center"][0]) <= side / 2) > 0.99
    assert np.mean(np.abs(rows - record["center"][1]) <= side / 2) > 0.99
    if head == "hmr":   # the box the user gave is the one cropped
        np.testing.assert_allclose(record["center"], [x + w / 2, y + h / 2])
        assert record["scale"] == pytest.approx(1.2 * max(w, h) / 200)
    else:   # SMPLify's fit lands on the person: its joints reproject near the annotated ones, and every annotated
        # keypoint is on the drawn mesh or a few px off it (a thin limb, COCO's surface hips)
        fitted = np.asarray(record["keypoints_image"])
        slots = [OPENPOSE_NAMES.index(coco_to_body25(n)) for n in COCO_JOINTS]
        error = np.linalg.norm(fitted[slots] - coco[:, :2], axis=1)
        assert np.median(error) < 0.05 * h, error
        u, v = np.round(coco[:, :2]).astype(int).T
        off_mesh = distance_transform_edt(~drawn)[v, u]
        assert (off_mesh == 0).mean() > 0.75 and off_mesh.max() < 0.05 * h, off_mesh
    lines = (out / "000000000785.obj").read_text().splitlines()
    vertices = np.array([[float(v) for v in line.split()[1:]] for line in lines if line.startswith("v ")])
    assert len(vertices) == len(load_body_model("open-small").layer.v_template)
    assert sum(line.startswith("f ") for line in lines) == len(load_body_model("open-small").faces)
    # the .obj is the mesh the picture draws: through the image camera the json names, inside the drawn region
    focal, principal = record["image_camera"]["focal"], np.asarray(record["image_camera"]["principal"])
    px = np.round(focal * vertices[:, :2] / vertices[:, 2:] + principal).astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height)
    near = np.zeros_like(drawn)
    near[1:-1, 1:-1] = drawn[1:-1, 1:-1] | drawn[:-2, 1:-1] | drawn[2:, 1:-1] | drawn[1:-1, :-2] | drawn[1:-1, 2:]
    assert inside.mean() > 0.99 and near[px[inside, 1], px[inside, 0]].mean() > 0.95
