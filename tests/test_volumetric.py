"""The volumetric head (`training.volumetric`): soft-argmax against a known peak, gradients, a tiny batch learnt,
the loop's checkpoint round trip, the depth loss's mask, and its joints as 3D evidence for `fitting.fit3d`."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core.joints import J24_OFFSET
from fits.seeding import SeedConfig, seed_fits
from fitting.body_model import load_body_model
from fitting.fit3d import Evidence, Fit3D, Fit3DConfig
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLifyConfig
from tests.head_checks import adam_steps, assert_checkpoint_round_trips, supervised_batch
from training.config import DEFAULT_PRIOR, LossWeights, TrainConfig
from training.geometry import project_normalised, weak_perspective_to_translation
from training.losses import volume_3d_loss
from training.regressor import mean_params_from_prior
from training.volumetric import (
    DEPTH_HALF_RANGE,
    NUM_VOLUME_JOINTS,
    ROOT_SLOTS,
    VolumetricRegressor,
    camera_joints,
    soft_argmax_3d,
    volume_targets,
    voxel_centres,
)

TEST_SMPLIFY = SMPLifyConfig(body_iterations=5)
# The tiny-batch test's losses: the head's own terms (kp·(L_volume_2d + L_volume_3d)) and the 2D and 3D joint terms
# of its regressor, without SPIN's camera regulariser exp(-10 s)², which 40 Adam steps at 1e-3 on 8 samples can
# drive past 1e7 and to inf on another machine's rounding (seen with AVX2 kernels: NaN at step 37).
ONLY_VOLUME = LossWeights(pose=0.0, betas=0.0, camera=0.0)


@pytest.fixture(scope="module")
def mean():
    return mean_params_from_prior(MaxMixturePrior.from_file(DEFAULT_PRIOR))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("volumetric")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 4, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-wild", "train", 4, smpl=True, joints_3d=False, openpose=True)],
                           res=64, samples_per_shard=4, seed=5)
    return root / "shards"


def test_soft_argmax_recovers_a_peak_between_voxels():
    """A Gaussian log-likelihood peaked off the voxel grid: the expectation is the peak to well under a voxel."""
    depth, height, width = 12, 10, 16
    peak = torch.tensor([0.137, -0.291, 0.058])                     # x, y, z in [-1, 1]
    grid = torch.stack(torch.meshgrid(voxel_centres(depth), voxel_centres(height), voxel_centres(width),
                                      indexing="ij"), -1)          # (D, H, W, [z, y, x])
    voxel = torch.tensor([2 / depth, 2 / height, 2 / width])
    sigma = 0.8 * voxel                                              # under a voxel wide: the read-out must be sub-voxel
    logits = -(((grid - peak.flip(0)) / sigma) ** 2).sum(-1) / 2
    found = soft_argmax_3d(logits[None, None])[0, 0]
    assert (found - peak).abs().max() < 0.01 * voxel.min()
    # pixel-centre convention: a one-voxel peak at index (k, j, i) reads (2i + 1)/W - 1, ...
    spike = torch.full((1, 1, depth, height, width), -1e4)
    spike[0, 0, 3, 7, 2] = 0.0
    torch.testing.assert_close(soft_argmax_3d(spike)[0, 0], torch.tensor([5 / 16 - 1, 15 / 10 - 1, 7 / 12 - 1]))


def test_gradients_reach_the_trunk_through_the_volumes(mean):
    torch.manual_seed(0)
    model = VolumetricRegressor(mean, img_res=64, depth=18, iterations=1)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.volume_joints.shape == (2, NUM_VOLUME_JOINTS, 3) and model.volume_depth == 16
    assert out.volume_joints.abs().max() <= 1
    out.volume_joints.square().sum().backward()
    for name in ("conv1.weight", "layer4.1.conv2.weight", "deconv.0.weight", "volume.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.decpose.weight.grad is None                          # the SMPL regressor is another branch


def test_the_depth_loss_ignores_examples_without_3d():
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 24, 3, generator=gen), torch.randn(3, 24, 3, generator=gen)
    confidence = torch.ones(3, 24)
    has_3d = torch.tensor([True, False, True])
    loss = volume_3d_loss(pred, target, confidence, has_3d)
    changed = target.clone()
    changed[1] += 100.0                                               # the example without 3D
    assert volume_3d_loss(pred, changed, confidence, has_3d) == loss
    expected = (pred[has_3d][..., 2] - target[has_3d][..., 2]).abs().mean()
    torch.testing.assert_close(loss, expected)
    none = volume_3d_loss(pred.requires_grad_(), target, confidence, torch.zeros(3, dtype=torch.bool))
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_targets_are_root_relative_depth_over_the_range():
    joints_3d = torch.zeros(1, 49, 4)
    joints_3d[0, J24_OFFSET:, 2] = torch.linspace(4.0, 5.0, 24)
    joints_3d[0, J24_OFFSET:, 3] = 1.0
    keypoints = torch.rand(1, 49, 3)
    target, confidence = volume_targets(keypoints, joints_3d)
    root = joints_3d[0, [J24_OFFSET + s for s in ROOT_SLOTS], 2].mean()
    torch.testing.assert_close(target[0, :, 2], (joints_3d[0, J24_OFFSET:, 2] - root) / DEPTH_HALF_RANGE)
    torch.testing.assert_close(target[0, :, :2], keypoints[0, J24_OFFSET:, :2])
    torch.testing.assert_close(confidence[0], torch.stack([keypoints[0, J24_OFFSET:, 2], torch.ones(24)], -1))


def test_the_volumetric_head_learns_a_tiny_batch(shards, mean):
    """The step's losses on the batch's ground truth: the volumetric terms fall (the 3D one on the 4 samples that
    have 3D joints; the mean of the last 5 of 40 Adam steps against the first: BatchNorm on 8 samples is noisy)."""
    body = load_body_model("open-small")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    batch, targets = supervised_batch(shards, "volumetric")
    assert 0 < int(batch.has_3d.sum()) < 8
    model = VolumetricRegressor(mean, img_res=32, depth=18, iterations=1)
    volume = [(t["volume_2d"], t["volume_3d"]) for t in adam_steps(model, body, batch, targets, 40, 1e-3,
                                                                     ONLY_VOLUME)]
    first, last = torch.tensor(volume[0]), torch.tensor(volume[-5:]).mean(0)
    # measured: 2D 0.190 -> 0.073-0.084, 3D 0.167 -> 0.049-0.056 with AVX-512, AVX2 and no-SIMD kernels
    assert bool((last < 0.65 * first).all())


def test_a_volumetric_run_logs_its_terms_and_its_checkpoint_round_trips(shards, tmp_path):
    from training.loop import train

    fits = tmp_path / "fits"
    seed_fits([shards], fits, SeedConfig(body_model="open-small", smplify=TEST_SMPLIFY), splits=("train",),
              missing_only=True)
    torch.set_num_threads(1)
    config = TrainConfig(shards=(str(shards),), fits=str(fits), run_dir=str(tmp_path / "run"), run_id="vol-run",
                         head="volumetric", backbone=18, img_res=32, batch_size=4, epochs=1, steps_per_epoch=2,
                         num_workers=0, body_model="open-small", mix="*=1", smplify=TEST_SMPLIFY,
                         checkpoint_every=100, log_every=1, shuffle_buffer=8, tensorboard=False)
    assert train(config, progress=False)["step"] == 2
    header = (tmp_path / "run" / "train_log.csv").read_text().splitlines()[0].split(",")
    assert "volume_2d" in header and "volume_3d" in header
    assert_checkpoint_round_trips(tmp_path / "run", "volumetric", VolumetricRegressor, tmp_path / "again")


def _posed(body, seed: int):
    gen = torch.Generator().manual_seed(seed)
    pose = 0.25 * torch.randn(1, 72, generator=gen, dtype=torch.float64)
    pose[0, :3] = torch.tensor([math.pi, 0.0, 0.0])                  # upright, facing the camera
    betas = 0.5 * torch.randn(1, 10, generator=gen, dtype=torch.float64)
    cam_t = weak_perspective_to_translation(torch.tensor([[0.8, 0.05, -0.1]], dtype=torch.float64))
    joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    return joints, cam_t


def _encoded(joints: torch.Tensor, cam_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a perfect volumetric head predicts for these camera-frame joints: crop x, y and root-relative depth."""
    xy = project_normalised(joints, cam_t)[:, J24_OFFSET:]
    z = (joints + cam_t[:, None])[:, J24_OFFSET:, 2]
    root = z[:, list(ROOT_SLOTS)].mean(1)
    return torch.cat([xy, ((z - root[:, None]) / DEPTH_HALF_RANGE)[..., None]], -1), root


def test_camera_joints_invert_the_crop_projection():
    body = load_body_model("open-small", dtype=torch.float64)
    joints, cam_t = _posed(body, 0)
    volume_joints, root = _encoded(joints, cam_t)
    evidence = camera_joints(volume_joints, root)
    assert evidence.shape == (1, 49, 4) and bool((evidence[:, :J24_OFFSET] == 0).all())
    torch.testing.assert_close(evidence[:, J24_OFFSET:, :3], (joints + cam_t[:, None])[:, J24_OFFSET:],
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_fit_to_the_heads_joints_moves_the_mean_body_onto_them(seed):
    """Fit3D from its mean start (rigidly aligned) on a perfect head's joints: the joints' error falls to a small
    part of the start's (measured over seeds 1-5: 90-184 mm at the start, 1.3-2.3 mm fitted). The evidence is the
    body's own canonical J24 joints, so the canonical correspondence."""
    body = load_body_model("open-small", dtype=torch.float64)
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    joints, cam_t = _posed(body, seed)
    volume_joints, root = _encoded(joints, cam_t)
    evidence = Evidence(joints_3d=camera_joints(volume_joints, root))
    start = Fit3D(body, prior, Fit3DConfig(correspondence="canonical", iterations=0, warmup_iterations=0))(evidence)
    fit = Fit3D(body, prior, Fit3DConfig(correspondence="canonical"))(evidence)
    assert float(start.joint_error[0]) > 50.0                        # mm: the start is far from the evidence
    assert float(fit.joint_error[0]) < min(10.0, 0.1 * float(start.joint_error[0]))


def test_the_command_line_takes_the_head_and_refuses_a_crop_it_cannot_split(tmp_path, capsys):
    import json

    from fitloop.cli import main

    base = ["train", "--run-dir", str(tmp_path / "run"), "--shards", str(tmp_path), "--fits", str(tmp_path / "f")]
    assert main(base + ["--head", "volumetric", "--img-res", "64", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["head"] == "volumetric"
    assert main(base + ["--head", "volumetric", "--img-res", "48"]) == 1
    err = capsys.readouterr().err.strip()
    assert "multiple of 32" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_imagenet_weights_load_into_the_volumetric_trunk(mean, tmp_path):
    from training.resnet import ResNet, load_imagenet_weights

    source = ResNet(18)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = VolumetricRegressor(mean, img_res=32, depth=18)
    report = load_imagenet_weights(model, tmp_path / "resnet18.pth")
    assert "layer4.1.conv2.weight" in report["loaded"] and not any(k.startswith(("deconv", "volume"))
                                                                   for k in report["loaded"])
    for key in report["loaded"]:
        torch.testing.assert_close(model.state_dict()[key], source.state_dict()[key])
