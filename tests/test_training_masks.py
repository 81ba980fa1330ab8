"""Image evidence in training (issue 15, item 4): the mask consistency loss of the predicted mesh and Pavlakos
2018's keypoints + silhouette regressor as the loop's network.

The loss is checked against the outside's picture of a person: the z-buffer rasteriser (`render.raster`, the
synthetic generator's renderer) draws a mesh into its own mask; the loss of that mesh is near 0 and lowest at the
truth, larger for a shifted or scaled one, and its gradient reaches the vertices and the camera. The head runs
whole training steps on synthetic shards that carry exact masks, learns on a tiny batch, and its checkpoint
round-trips.
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from core.frames import FIT_FOCAL, FIT_RES
from fits.seeding import SeedConfig, seed_fits
from fitting.body_model import load_body_model
from fitting.smplify import SMPLifyConfig
from render.raster import rasterize
from shards.masks import UNKNOWN
from shards.reader import ReaderConfig, ShardReader
from tests.head_checks import adam_steps, assert_checkpoint_round_trips, supervised_batch
from training.config import TrainConfig
from training.heads import HEADS, head_of
from training.keypoint_regressor import KeypointRegressor
from training.mask_loss import MaskConsistency, grid_res, mask_camera, pooled_mask
from training.regressor import mean_params_from_prior

TEST_SMPLIFY = SMPLifyConfig(body_iterations=5)


@pytest.fixture(scope="module")
def body():
    return load_body_model("open-small")


@pytest.fixture(scope="module")
def people(body):
    """Six synthetic people (model-frame vertices, cam_t in SPIN's crop camera) and their exact 224 px masks."""
    from bench.synthetic_shards import sample_people

    found = sample_people(body, 6, np.random.default_rng(5))
    focal, center = mask_camera(FIT_RES)
    masks = np.stack([rasterize(v + t, body.faces, np.zeros((len(body.faces), 3)), focal, (center, center),
                                (FIT_RES, FIT_RES))[1] >= 0 for v, t in zip(found["vertices"], found["cam_t"])])
    return (torch.tensor(found["vertices"], dtype=torch.float32), torch.tensor(found["cam_t"], dtype=torch.float32),
            torch.from_numpy(masks.astype(np.uint8)))


def test_the_render_camera_is_the_keypoint_loss_camera():
    # SPIN: n = 5000 x / (112 z); the reader: pixel i's centre at n = 2 (i + 0.5) / R - 1 (shards.augment)
    focal, center = mask_camera(56)
    x_over_z = 0.3 * 112 / FIT_FOCAL                                   # n = 0.3
    pixel = focal * x_over_z + center
    assert 2 * (pixel + 0.5) / 56 - 1 == pytest.approx(0.3, abs=1e-12)
    assert (grid_res(224), grid_res(64), grid_res(32)) == (56, 32, 32)


def test_a_mesh_drawn_into_its_own_mask_has_the_lowest_loss(body, people):
    vertices, cam_t, masks = people
    loss = MaskConsistency.from_faces(body.faces)
    has = torch.ones(len(masks), dtype=torch.bool)
    own = float(loss(vertices, cam_t, masks, has))
    shifted = cam_t.clone()
    shifted[:, 0] += 0.01                                              # ~1.1 fit-frame px sideways
    assert own < 0.05                                                  # measured 0.024: cells along the contour
    assert float(loss(vertices, shifted, masks, has)) > own + 0.03
    for scale in (0.97, 1.03):                                         # a thinner and a wider body
        assert float(loss(vertices * scale, cam_t, masks, has)) > own + 0.02


def test_the_gradient_reaches_vertices_and_camera_and_moves_the_mesh_back(body, people):
    vertices, cam_t, masks = people
    loss = MaskConsistency.from_faces(body.faces)
    has = torch.ones(len(masks), dtype=torch.bool)
    v = vertices.clone().requires_grad_(True)
    t = cam_t.clone()
    t[:, 0] += 0.02
    t.requires_grad_(True)
    loss(v, t, masks, has).backward()
    assert float(v.grad.abs().sum()) > 0
    assert (t.grad[:, 0] > 0).all()                                    # descent moves every body back (-x)


def test_samples_without_a_mask_contribute_nothing(body, people):
    vertices, cam_t, masks = people
    loss = MaskConsistency.from_faces(body.faces)
    has = torch.tensor([True, True, True, False, False, False])
    garbage = masks.clone()
    garbage[3:] = 1 - garbage[3:]                                      # what the reader never gives, here unread
    v = vertices.clone().requires_grad_(True)
    value = loss(v, cam_t, garbage, has)
    assert float(value.detach()) == pytest.approx(float(loss(vertices[:3], cam_t[:3], masks[:3], has[:3])), rel=1e-6)
    value.backward()
    assert float(v.grad[3:].abs().sum()) == 0.0
    none = loss(v, cam_t, masks, torch.zeros(6, dtype=torch.bool))
    assert float(none) == 0.0 and none.requires_grad


def test_unknown_pixels_weigh_nothing_and_the_target_is_grown_by_half_a_band():
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 2:6, 2:6] = 1
    mask[0, :, 6:] = UNKNOWN
    person, known = pooled_mask(mask, 4, sigma=1.0)                    # cells of 2 px, growth 1 px
    assert known[0, :, 3].tolist() == [0.0] * 4 and known[0, :, :3].min() == 1.0
    # grown by 1 px: a pixel at distance d from the square is covered clamp(2 - d, 0, 1)
    grown = torch.zeros(8, 8)
    grown[1:7, 1:7] = 1.0
    grown[1, 1] = grown[1, 6] = grown[6, 1] = grown[6, 6] = 2 - 2 ** 0.5
    grown[:, 6:] = 0.0                                                 # unknown: not person
    expected = torch.nn.functional.avg_pool2d(grown[None, None], 2)[0, 0]
    assert torch.allclose(person[0, :, :3], expected[:, :3])
    assert person[0, 0, 0] == pytest.approx((2 - 2 ** 0.5) / 4)


def test_the_keypoints_head_starts_at_the_mean_and_gives_the_mean_shape_without_a_mask():
    from fitting.priors import MaxMixturePrior
    from training.config import DEFAULT_PRIOR

    mean = mean_params_from_prior(MaxMixturePrior.from_file(DEFAULT_PRIOR))
    model = KeypointRegressor(mean).eval()
    keypoints = torch.rand(3, 49, 3)
    masks = torch.randint(0, 2, (3, 32, 32), dtype=torch.uint8)
    out = model(keypoints, masks, torch.tensor([True, False, True]))
    assert out.rotmat.shape == (3, 24, 3, 3) and out.camera.shape == (3, 3)
    assert torch.allclose(out.betas[1], torch.as_tensor(mean.betas))
    assert torch.allclose(out.camera, torch.as_tensor(mean.cam).expand(3, 3), atol=0.05)
    with pytest.raises(ValueError, match="hmr head"):
        KeypointRegressor(mean.wholebody())
    with pytest.raises(ValueError, match="unknown head 'x'"):
        head_of("x")
    assert set(HEADS) >= {"hmr", "keypoints"}


# --- whole steps and runs on synthetic shards with masks -----------------------------------------------------------
@pytest.fixture(scope="module")
def masked_shards(tmp_path_factory):
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("masked")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 8, smpl=True, joints_3d=True, masks=True),
                                  DatasetSpec("synth-wild", "train", 4, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-h36m", "test", 4, smpl=True, joints_3d=True, masks=True)],
                           res=64, samples_per_shard=4, seed=3)
    return root / "shards"


def test_the_reader_gives_the_synthetic_masks_and_the_loss_reads_them(body, masked_shards):
    reader = ShardReader(masked_shards, ReaderConfig(img_res=64, splits=("train",), shuffle_buffer=0))
    items = default_collate(list(reader))
    assert items["has_mask"].sum() == 8 and (items["mask"][~items["has_mask"]] == 0).all()
    assert set(np.unique(items["mask"][items["has_mask"]].numpy())) <= {0, 1, UNKNOWN}
    # the ground truth SMPL through the crop's camera lands on its mask: lower loss than a shifted body
    from core.frames import fit_frame_px
    from training.geometry import estimate_translation

    has = items["has_mask"]
    out = body(items["betas"][has], items["pose"][has][:, 3:], items["pose"][has][:, :3])
    cam_t = estimate_translation(out.joints, fit_frame_px(items["keypoints"][has]))
    loss = MaskConsistency.from_faces(body.faces, grid_res(64))
    own = float(loss(out.vertices, cam_t, items["mask"][has], has[has]))
    moved = cam_t + torch.tensor([0.03, 0.0, 0.0])
    assert own < 0.15 and float(loss(out.vertices, moved, items["mask"][has], has[has])) > own + 0.05


@pytest.fixture(scope="module")
def masked_table(masked_shards, tmp_path_factory):
    path = tmp_path_factory.mktemp("seed") / "fits"
    seed_fits([masked_shards], path, SeedConfig(body_model="open-small", smplify=TEST_SMPLIFY), splits=("train",),
              missing_only=True)
    return path


def _config(shards, fits, run_dir, **changes) -> TrainConfig:
    config = TrainConfig(shards=(str(shards),), fits=str(fits), run_dir=str(run_dir), run_id="mask-run",
                         head="keypoints", img_res=32, batch_size=4, epochs=1, steps_per_epoch=3, num_workers=0,
                         body_model="open-small", mix="*=1", smplify=TEST_SMPLIFY, checkpoint_every=100,
                         log_every=1, shuffle_buffer=8, tensorboard=False, lr=1e-4)
    return dataclasses.replace(config, loss=dataclasses.replace(config.loss, mask=1.0), **changes)


def test_a_keypoints_head_run_logs_the_mask_loss_and_its_checkpoint_round_trips(masked_shards, masked_table,
                                                                                tmp_path):
    from training.loop import train

    shutil.copytree(masked_table, tmp_path / "fits")
    torch.set_num_threads(1)
    summary = train(_config(masked_shards, tmp_path / "fits", tmp_path / "run"), progress=False)
    assert summary["step"] == 3
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "mask" in header and "mask_samples" in header
    masks = [float(r.split(",")[header.index("mask")]) for r in rows[1:]]
    assert all(0 < m < 1 for m in masks)
    assert_checkpoint_round_trips(tmp_path / "run", "keypoints", KeypointRegressor, tmp_path / "again")


def test_the_keypoints_head_learns_a_tiny_batch(body, masked_shards):
    """Supervised by the batch's ground truth (the step's losses with every fit valid), the loss falls."""
    from fitting.priors import MaxMixturePrior
    from training.config import DEFAULT_PRIOR, LossWeights
    from training.mask_loss import MaskConsistency

    torch.manual_seed(0)
    torch.set_num_threads(1)
    batch, targets = supervised_batch(masked_shards, "keypoints")
    model = head_of("keypoints").build(mean_params_from_prior(MaxMixturePrior.from_file(DEFAULT_PRIOR)), None)
    mask_loss = MaskConsistency.from_faces(body.faces, grid_res(32))
    history = adam_steps(model, body, batch, targets, 20, 1e-4, LossWeights(mask=1.0), mask_loss=mask_loss)
    terms, losses = history[-1], [t["total"] for t in history]
    assert "mask" in terms and terms["mask_samples"] == pytest.approx(float(batch.has_mask.float().mean()))
    assert losses[-1] < 0.6 * losses[0]                               # measured: 99 -> 42


def test_the_command_line_sets_the_head_and_the_mask_loss_and_refuses_an_unknown_head(tmp_path, capsys):
    import json

    from fitloop.cli import main

    base = ["train", "--run-dir", str(tmp_path / "run"), "--shards", str(tmp_path), "--fits", str(tmp_path / "f")]
    assert main(base + ["--head", "keypoints", "--mask-weight", "2.5", "--mask-res", "28", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["head"], printed["loss"]["mask"], printed["mask_res"]) == ("keypoints", 2.5, 28)
    assert main(base + ["--head", "resnet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "head must be one of hmr/keypoints" in err
