"""The SPIN trainer: backbone names and weights, regressor, geometry of the augmentation round trip, data mixing
and resume positions, the fits store, the step's supervision, and whole runs on a tiny synthetic shard set:
metrics.csv, fits written at checkpoints and epoch ends, and a run killed and resumed against an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from core.frames import fit_frame_px
from core.joints import NUM_JOINTS
from fits.schema import FitProvenance, fits_batch
from fits.seeding import SeedConfig, seed_fits
from fits.store import FitsStore
from fits.table import FitsTable
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLifyConfig
from shards.augment import AugmentParams, augment_keypoints, training_transform
from shards.augment import augment_pose as augment_pose_np
from shards.reader import ReaderConfig
from training.checkpoint import latest_checkpoint, load_checkpoint
from training.config import DEFAULT_PRIOR, TrainConfig
from training.data import MixedShardStream, group_counts, parse_mix, resolve_mix
from training.geometry import (
    augment_pose,
    axis_angle_to_rotmat,
    canonical_keypoints,
    canonical_pose,
    canonical_translation,
    estimate_translation,
    project_normalised,
    rest_root,
    rot6d_to_rotmat,
    rotmat_to_axis_angle,
)
from training.regressor import Regressor, mean_params_from_prior
from training.resnet import ResNet, WeightsFileError, load_imagenet_weights
from training.run_log import METRIC_COLUMNS
from training.step import Batch, BatchFits, supervision

REPO = Path(__file__).resolve().parents[1]
TEST_SMPLIFY = SMPLifyConfig(body_iterations=5)  # what `--smplify-iters 5` gives
MIX = "synth-h36m=0.5;*=0.5"


# --- fixtures: a tiny synthetic shard set and its seed fits ------------------------------------------------------
@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_shards(root, [DatasetSpec("synth-h36m", "train", 8, smpl=True, joints_3d=True),
                                  DatasetSpec("synth-wild", "train", 8, smpl=True, joints_3d=True, openpose=True),
                                  DatasetSpec("synth-h36m", "test", 4, smpl=True, joints_3d=True)],
                           res=64, samples_per_shard=4, seed=3)
    return root / "shards"


@pytest.fixture(scope="session")
def body():
    return load_body_model("open-small")


@pytest.fixture(scope="session")
def seeded_table(synthetic, body, tmp_path_factory) -> Path:
    """A fits table holding seed fits of every training sample (copied per run)."""
    path = tmp_path_factory.mktemp("seed") / "fits"
    seeded = seed_fits([synthetic], path, SeedConfig(body_model="open-small", smplify=TEST_SMPLIFY),
                       splits=("train",), missing_only=True)
    assert (seeded.appended, seeded.body_model_id) == (16, body.model_id)
    return path


def run_config(synthetic: Path, fits: Path, run_dir: Path, **changes) -> TrainConfig:
    """The test run's config; `_train_cli` gives the same run through the command line."""
    config = TrainConfig(shards=(str(synthetic),), fits=str(fits), run_dir=str(run_dir), run_id="test-run",
                         backbone=18, img_res=32, batch_size=4, epochs=2, steps_per_epoch=3, num_workers=0,
                         body_model="open-small", mix=MIX, smplify=TEST_SMPLIFY, checkpoint_every=2, log_every=1,
                         shuffle_buffer=8, tensorboard=False, ignore_3d_datasets=("synth-wild",))
    return dataclasses.replace(config, **changes)


# --- backbone and regressor ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, params, keys", [(18, 11_689_512, 122), (50, 25_557_032, 320)])
def test_resnet_matches_torchvision_sizes_and_names(depth, params, keys):
    """torchvision's parameter counts and state-dict sizes (num_batches_tracked included), and its names."""
    net = ResNet(depth)
    assert sum(p.numel() for p in net.parameters()) == params
    state = net.state_dict()
    assert len(state) == keys
    for name in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight", "fc.bias"):
        assert name in state
    assert ("layer2.0.downsample.0.weight" in state) and ("layer2.0.downsample.1.running_var" in state)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_imagenet_weights_load_into_the_regressor_trunk(tmp_path):
    source = ResNet(18)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    model = Regressor(mean_params_from_prior(prior), depth=18)
    report = load_imagenet_weights(model, tmp_path / "resnet18.pth")
    assert "fc.weight" in report["skipped"] and "layer4.1.conv2.weight" in report["loaded"]
    for key in report["loaded"]:
        torch.testing.assert_close(model.state_dict()[key], source.state_dict()[key])
    with pytest.raises(WeightsFileError, match="shapes differ|missing"):
        load_imagenet_weights(Regressor(mean_params_from_prior(prior), depth=34), tmp_path / "resnet18.pth")


def test_regressor_starts_at_the_mean_parameters():
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    mean = mean_params_from_prior(prior)
    model = Regressor(mean, depth=18).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.rotmat.shape == (2, 24, 3, 3) and out.betas.shape == (2, 10) and out.camera.shape == (2, 3)
    eye = torch.eye(3).expand(2, 24, 3, 3)
    torch.testing.assert_close(out.rotmat @ out.rotmat.transpose(-1, -2), eye, atol=1e-5, rtol=0)
    # decoders start near zero (Xavier, gain 0.01): the output is close to the mean
    mean_rot = rot6d_to_rotmat(torch.as_tensor(mean.pose6d).reshape(24, 6))
    assert (out.rotmat - mean_rot).abs().max() < 0.25
    assert (out.camera - torch.as_tensor(mean.cam)).abs().max() < 0.25
    # global orientation π about x: upright, facing the camera
    torch.testing.assert_close(rotmat_to_axis_angle(mean_rot[0]), torch.tensor([np.pi, 0, 0]).float(), atol=1e-5,
                               rtol=0)


# --- geometry ------------------------------------------------------------------------------------------------------
def test_axis_angle_round_trip_including_zero_and_pi():
    gen = torch.Generator().manual_seed(0)
    aa = torch.randn(500, 3, generator=gen) * 1.5
    aa[0] = 0.0
    aa[1] = torch.tensor([np.pi, 0.0, 0.0])
    aa[2] = torch.tensor([0.0, np.pi - 1e-6, 0.0])
    rot = axis_angle_to_rotmat(aa)
    back = rotmat_to_axis_angle(rot)
    torch.testing.assert_close(axis_angle_to_rotmat(back), rot, atol=2e-6, rtol=0)
    assert not torch.isnan(back).any()


def test_pose_augmentation_matches_the_reader_and_undoes_exactly():
    gen = torch.Generator().manual_seed(1)
    pose = torch.randn(32, 72, generator=gen) * 0.4
    rot = torch.randn(32, generator=gen) * 30
    flip = torch.rand(32, generator=gen) > 0.5
    augmented = augment_pose(pose, rot, flip)
    reference = np.stack([augment_pose_np(pose[i].numpy(), float(rot[i]), bool(flip[i])) for i in range(32)])
    as_rot = lambda p: axis_angle_to_rotmat(torch.as_tensor(p).reshape(-1, 24, 3))  # noqa: E731
    torch.testing.assert_close(as_rot(augmented), as_rot(reference), atol=1e-5, rtol=0)
    torch.testing.assert_close(as_rot(canonical_pose(augmented, rot, flip)), as_rot(pose), atol=1e-5, rtol=0)


def test_keypoints_undo_the_readers_augmentation():
    rng = np.random.default_rng(2)
    center, side, res = np.array([150.0, 120.0]), 180.0, 64
    raw = np.concatenate([rng.uniform(80, 220, size=(NUM_JOINTS, 2)), (rng.random((NUM_JOINTS, 1)) > 0.2)], 1)
    plain = augment_keypoints(raw, training_transform(center, side, AugmentParams(), res), False, res)
    for flip in (False, True):
        for rot, scale in ((0.0, 1.0), (25.0, 1.2), (-50.0, 0.8)):
            params = AugmentParams(flip=flip, rot=rot, scale=scale)
            augmented = augment_keypoints(raw, training_transform(center, side, params, res), flip, res)
            undone = canonical_keypoints(torch.as_tensor(augmented)[None], torch.tensor([rot]), torch.tensor([flip]),
                                         torch.tensor([scale]))[0]
            np.testing.assert_allclose(undone.numpy(), plain, atol=1e-5)


def test_a_fit_undone_to_the_canonical_frame_still_projects_onto_its_keypoints(body):
    """An augmented-frame fit (pose, betas, cam_t) and its keypoints -> canonical pose, camera and keypoints: the
    canonical fit lands on the canonical keypoints (weak-perspective residue only)."""
    gen = torch.Generator().manual_seed(3)
    n = 32
    pose = torch.randn(n, 72, generator=gen) * 0.3
    pose[:, 0] += np.pi
    betas = torch.randn(n, 10, generator=gen)
    cam_t = torch.stack([0.1 * torch.randn(n, generator=gen), 0.1 * torch.randn(n, generator=gen),
                         45 + 10 * torch.rand(n, generator=gen)], -1)
    rot, flip = torch.randn(n, generator=gen) * 30, torch.rand(n, generator=gen) > 0.5
    scale = 0.75 + 0.5 * torch.rand(n, generator=gen)
    with torch.no_grad():
        kp = torch.cat([project_normalised(body(betas, pose[:, 3:], pose[:, :3]).joints, cam_t),
                        torch.ones(n, NUM_JOINTS, 1)], -1)
        pose_c = canonical_pose(pose, rot, flip)
        cam_c = canonical_translation(cam_t, rest_root(body, betas), rot, flip, scale)
        landed = project_normalised(body(betas, pose_c[:, 3:], pose_c[:, :3]).joints, cam_c)
    error_px = (fit_frame_px(torch.cat([landed, kp[..., 2:]], -1))[..., :2]
                - fit_frame_px(canonical_keypoints(kp, rot, flip, scale))[..., :2]).norm(dim=-1)
    assert error_px.mean() < 0.2 and error_px.max() < 1.0


def test_least_squares_translation_recovers_the_camera(body):
    gen = torch.Generator().manual_seed(4)
    pose = torch.zeros(8, 72)
    pose[:, 0] = np.pi
    cam_t = torch.stack([0.1 * torch.randn(8, generator=gen), 0.1 * torch.randn(8, generator=gen),
                         40 + 10 * torch.rand(8, generator=gen)], -1)
    with torch.no_grad():
        joints = body(torch.zeros(8, 10), pose[:, 3:], pose[:, :3]).joints
    kp = fit_frame_px(torch.cat([project_normalised(joints, cam_t), torch.ones(8, NUM_JOINTS, 1)], -1))
    torch.testing.assert_close(estimate_translation(joints, kp), cam_t, atol=2e-3, rtol=1e-3)


# --- data ----------------------------------------------------------------------------------------------------------
def test_mix_parsing_and_shares():
    groups = parse_mix("h36m=0.3;lsp-orig,mpii,lspet,coco,*=0.6;mpi-inf-3dhp=0.1")
    resolved = resolve_mix(groups, ["coco", "h36m", "new-set"])
    assert [(g.datasets, round(g.share, 6)) for g in resolved] == [(("h36m",), 0.333333),
                                                                   (("coco", "new-set"), 0.666667)]
    assert group_counts([0.3, 0.6, 0.1], 10).tolist() == [3, 6, 1]
    assert group_counts([0.3, 0.6, 0.1], 65).tolist() == [20, 39, 6]  # 19.5, 39, 6.5: remainders tie, first wins
    with pytest.raises(ValueError, match="two groups"):
        parse_mix("a=1;a,b=2")
    with pytest.raises(ValueError, match="no dataset"):
        resolve_mix(parse_mix("h36m=1"), ["coco"])


def _stream(synthetic: Path, steps: int = 4) -> MixedShardStream:
    return MixedShardStream([synthetic], ReaderConfig(img_res=32, shuffle_buffer=4, seed=5, splits=("train",)),
                            parse_mix(MIX), batch_size=4, steps=steps, rank=0, world_size=1)


def _signature(items) -> list[tuple]:
    return [(b["key"], float(b["rot"]), bool(b["flip"])) for b in items]


def test_stream_mixes_exact_shares_and_resumes_mid_epoch(synthetic):
    stream = _stream(synthetic)
    stream.set_position(1, 0)
    full = _signature(stream.consumer_items(0, 1))
    assert len(full) == 16
    assert Counter(k.split("/")[0] for k, _, _ in full) == {"synth-h36m": 8, "synth-wild": 8}
    stream.set_position(1, 3)                       # resume at batch 3: the last batch, unchanged
    assert _signature(stream.consumer_items(0, 1)) == full[12:]
    stream.set_position(2, 0)
    assert _signature(stream.consumer_items(0, 1)) != full


def test_resume_position_with_dataloader_workers(synthetic):
    """With 2 workers, starting at batch 1 gives the batches 1.. of the full epoch, in order."""
    stream = _stream(synthetic, steps=4)

    def batches(start: int) -> list[list[str]]:
        stream.set_position(0, start)
        loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2)
        return [list(b["key"]) for b in loader]

    full = batches(0)
    assert len(full) == 4
    assert batches(1) == full[1:]


# --- fits store and supervision -----------------------------------------------------------------------------------
def test_fits_store_keeps_strict_improvements_and_matches_the_table(tmp_path):
    table = FitsTable.create(tmp_path / "fits")
    prov = FitProvenance(run_id="r", body_model_id="m", fit_config_hash="h", source="loop")

    def rows(keys, loss):
        loss = np.broadcast_to(np.asarray(loss, np.float32), (len(keys),))
        return fits_batch(keys, np.repeat(loss[:, None], 72, 1), np.zeros((len(keys), 10)), prov, loss=loss)

    store = FitsStore([], [], [], [])
    assert store.offer(rows(["a/1", "a/2"], 5.0)) == 2
    assert store.offer(rows(["a/1", "a/2", "a/3"], np.array([4.0, 5.0, 7.0], np.float32))) == 2  # a/2 ties: no
    assert store.offer(rows(["a/3", "a/3"], np.array([6.0, 3.0], np.float32))) == 1              # batch's best
    store.flush(table)
    loaded = FitsStore.load(table, "m")
    pose, _, loss, known = loaded.lookup(["a/1", "a/2", "a/3", "a/4"])
    assert known.tolist() == [True, True, True, False]
    assert loss[:3].tolist() == [4.0, 5.0, 3.0] and torch.isnan(loss[3])
    assert pose[0, 0] == 4.0
    assert len(FitsStore.load(table, "another-model")) == 0


def test_supervision_follows_spin():
    n = 4
    chosen = BatchFits(pose=torch.full((n, 72), 0.1), betas=torch.tensor([[3.5] + [0.0] * 9, [1.0] * 10,
                                                                           [-3.1] + [0.0] * 9, [0.5] * 10]),
                       cam_t=torch.zeros(n, 3), loss=torch.tensor([50.0, 150.0, 20.0, 99.0]))
    batch = Batch(img=torch.zeros(n, 3, 8, 8), keypoints=torch.zeros(n, 49, 3), gt_pose=torch.full((n, 72), 0.7),
                  gt_betas=torch.full((n, 10), 0.3), has_smpl=torch.tensor([False, True, False, False]),
                  joints_3d=torch.zeros(n, 49, 4), has_3d=torch.zeros(n, dtype=torch.bool),
                  flip=torch.zeros(n, dtype=torch.bool), rot=torch.zeros(n), scale=torch.ones(n),
                  keys=["a/1", "a/2", "a/3", "a/4"], datasets=["a"] * 4)
    targets = supervision(chosen, batch, threshold=100.0)
    assert targets.valid.tolist() == [True, True, True, True]          # 150 > 100 but ground truth
    assert (targets.betas[0] == 0).all() and (targets.betas[2] == 0).all()   # outside ±3σ: zeroed
    assert (targets.betas[1] == 0.3).all() and (targets.pose[1] == 0.7).all()  # ground truth replaces the fit
    assert (targets.betas[3] == 0.5).all() and (targets.pose[3] == 0.1).all()
    assert supervision(chosen, batch, threshold=60.0).valid.tolist() == [True, True, True, False]


def test_error_sums_per_dataset_and_a_diverged_prediction():
    from training.evaluate import ErrorSums

    gen = torch.Generator().manual_seed(6)
    gt = torch.randn(3, 14, 3, generator=gen)
    pred = gt.clone()
    pred[1] += 0.01                                        # 10 mm off everywhere: MPJPE 17.3 mm, PA 0
    pred[2] = float("nan")
    sums = ErrorSums.empty()
    sums.add(["a", "b", "b"], pred, gt)
    result = sums.result()
    assert result["a"]["mpjpe_mm"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(result["b"]["mpjpe_mm"]) and result["b"]["samples"] == 2 and result["all"]["samples"] == 3


# --- whole runs ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(synthetic, seeded_table, tmp_path_factory) -> tuple[Path, Path, dict]:
    """One uninterrupted run in this process: (run folder, fits table, summary)."""
    from training.loop import train

    root = tmp_path_factory.mktemp("reference")
    shutil.copytree(seeded_table, root / "fits")
    summary = train(run_config(synthetic, root / "fits", root / "run"), progress=False)
    return root / "run", root / "fits", summary


def test_a_run_writes_fits_at_checkpoints_and_epoch_ends_and_logs_metrics(reference_run, seeded_table):
    run, fits, summary = reference_run
    seed_version = FitsTable.open(seeded_table).versions()[-1]["version"]
    rows = summary["metrics"]
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(0, 0), (1, 3), (2, 6)]
    assert int(rows[0]["fits_version"]) == seed_version and int(rows[-1]["fits_version"]) > seed_version
    for r in rows:
        assert float(r["fits_pa_mpjpe_mm"]) > 0 and float(r["net_pa_mpjpe_mm"]) > 0 and int(r["net_samples"]) == 4
    # checkpoints at step 2 (every 2 steps), 3 (epoch end), 4, 6 (epoch end); each names a version holding its fits
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"step-{s:09d}.pt" for s in (2, 3, 4, 6)]
    versions = [load_checkpoint(run / "checkpoints" / n)["fits_version"] for n in names]
    assert versions == sorted(versions) and versions[-1] == summary["fits_version"]
    ckpt = load_checkpoint(run / "checkpoints" / names[1])
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (3, 0, 3)
    assert {"model", "optimizer", "rng", "config", "fits_table", "run_id", "body_model_id"} <= set(ckpt)
    assert TrainConfig.from_dict(ckpt["config"]) == TrainConfig.from_dict(
        __import__("json").loads((run / "config.json").read_text()))
    log = FitsTable.open(fits).log()
    loop_rows = log.filter(__import__("pyarrow.compute", fromlist=["x"]).equal(log["source"], "loop"))
    assert loop_rows.num_rows > 0 and set(loop_rows["run_id"].to_pylist()) == {"test-run"}
    assert (run / "curves.png").is_file() and (run / "train_log.csv").is_file()


def _train_cli(synthetic: Path, fits: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fitloop.cli", "train", "--shards", str(synthetic), "--fits", str(fits),
            "--run-dir", str(run_dir), "--run-id", "cli-run", "--backbone", "18", "--img-res", "32",
            "--batch-size", "4", "--epochs", "2", "--steps-per-epoch", "3", "--num-workers", "0",
            "--body-model", "open-small", "--mix", MIX, "--smplify-iters", "5", "--checkpoint-every", "2",
            "--log-every", "1", "--shuffle-buffer", "8", "--ignore-3d", "synth-wild", "--no-tensorboard",
            "--no-progress", *extra]


def _best(fits: Path) -> dict[str, tuple[np.ndarray, float]]:
    best = FitsTable.open(fits).best()
    return {row["key"]: (np.asarray(row["pose"]), row["loss"]) for row in best.to_pylist()}


def test_a_killed_run_resumes_to_the_same_fits(synthetic, seeded_table, reference_run, tmp_path):
    """The command-line run killed (SIGKILL) after its first checkpoint and resumed ends with the fits, the network
    and the metrics rows of the uninterrupted run (the same settings, trained in this process)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    whole_run, whole_fits, _ = reference_run
    killed = tmp_path / "killed"
    shutil.copytree(seeded_table, killed / "fits")
    victim = subprocess.Popen(_train_cli(synthetic, killed / "fits", killed / "run"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while latest_checkpoint(killed / "run") is None and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    stopped_at = load_checkpoint(latest_checkpoint(killed / "run"))["step"]
    assert stopped_at < 6
    resumed = subprocess.run(_train_cli(synthetic, killed / "fits", killed / "run", "--resume"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _best(whole_fits), _best(killed / "fits")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key][0], b[key][0], atol=1e-4, err_msg=key)
        assert a[key][1] == pytest.approx(b[key][1], rel=1e-4, abs=1e-4)
    final_a = load_checkpoint(latest_checkpoint(whole_run))
    final_b = load_checkpoint(latest_checkpoint(killed / "run"))
    assert final_a["step"] == final_b["step"] == 6
    for name, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][name], value, atol=1e-5, rtol=1e-4)
    rows_a = [r for r in (whole_run / "metrics.csv").read_text().splitlines()]
    rows_b = [r for r in (killed / "run" / "metrics.csv").read_text().splitlines()]
    assert len(rows_a) == len(rows_b) == 4
    for ra, rb in zip(rows_a[1:], rows_b[1:]):  # the same fits and network errors at each evaluation
        for x, y in list(zip(ra.split(","), rb.split(",")))[3:9]:
            assert float(x) == pytest.approx(float(y), rel=1e-3, abs=1e-3)


@pytest.mark.gpu
def test_mixed_precision_training_on_cuda(synthetic, seeded_table, tmp_path):
    from training.loop import train

    fits = tmp_path / "fits"
    shutil.copytree(seeded_table, fits)
    for amp in ("bf16", "fp16"):
        summary = train(run_config(synthetic, fits, tmp_path / f"run-{amp}", device="cuda", amp=amp, epochs=1),
                        progress=False)
        ckpt = load_checkpoint(latest_checkpoint(tmp_path / f"run-{amp}"))
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
        assert float(summary["metrics"][-1]["net_pa_mpjpe_mm"]) > 0
        assert bool(ckpt["scaler"]) == (amp == "fp16")
