"""`fitloop predict`: a checkpoint (fitloop's, or SPIN's layout) on one image; the crop camera drawn in the image."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.frames import FIT_CENTER, FIT_FOCAL, FIT_FRAME_OFFSET, FIT_RES
from fitloop.cli import main
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from shards.crop import box_to_crop, invert, transform_points
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.heads import head_of
from training.predict import image_camera
from training.regressor import mean_params_from_prior


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
