"""Pseudo-ground-truth seed fits from 3D joints (``fitloop fits seed --mode 3d``) on synthetic Human3.6M shards,
whose true bodies (open model, one shape per subject, camera frame) the truth file holds.

Two subjects (S1, S9), one action, frames 0, 5, 10 seen by Human3.6M's four cameras: 24 samples, plus COCO
samples without 3D joints that mode 3d must leave out.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.camera import estimate_translation
from core.errors import FitloopError
from core.frames import FIT_CENTER, FIT_FOCAL, keypoints_in_fit_frame
from core.joints import JOINT_INDEX
from fitloop.cli import main
from fits.seeding import SeedConfig, fit_config_hash, sample_camera, seed_fits
from fits.seeding3d import sample_3d, spread
from fits.table import FitsTable
from fitting.body_model import load_body_model
from fitting.fit3d import Fit3DConfig
from pipelines.adapters import iter_dataset
from pipelines.synthetic import SynthConfig, generate, load_truth
from shards.lookup import iter_samples
from shards.schema import PersonRecord
from shards.writer import ShardConfig, write_shards

H36M_SAMPLES = 2 * 3 * 4  # subjects x kept frames x cameras
FAST3D = Fit3DConfig(iterations=20, warmup_iterations=5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed3d")
    generate(out, SynthConfig(seed=5, datasets=("coco", "h36m"), coco_people=3, h36m_subjects=("S1", "S9"),
                              h36m_actions=("Walking",), h36m_frames=11, h36m_frame_step=5, image_size=(160, 240),
                              h36m_image_size=(240, 240), workers=1, poses="prior"))
    records = [r for dataset, split in (("h36m", "all"), ("coco", "train"), ("coco", "val"))
               for r in iter_dataset(dataset, out / dataset, split) if isinstance(r, PersonRecord)]
    write_shards(records, out / "shards", ShardConfig(crop_res=160))
    return out


@pytest.fixture(scope="module")
def seeded(synth, tmp_path_factory) -> tuple[Path, dict]:
    """The shard set seeded from 3D joints in the image frame, then in the crop frame, into one table."""
    table = tmp_path_factory.mktemp("fits") / "fits"
    results = {frame: seed_fits(synth / "shards", table, SeedConfig(body_model="open-small", mode="3d", frame=frame,
                                                                     fit3d=FAST3D, batch_size=8,
                                                                     run_id=f"fit3d-{frame}"))
               for frame in ("image", "crop")}
    return table, results


def _rows(table: Path, frame: str) -> dict[str, dict]:
    return {row["key"]: row for row in FitsTable(table).best(frame=frame).to_pylist()}


def test_only_samples_with_3d_joints_are_fitted_one_row_each(synth, seeded):
    table, results = seeded
    for frame, result in results.items():
        assert result.fitted == result.appended == H36M_SAMPLES
        assert result.without_3d == 3  # the COCO people
        rows = _rows(table, frame)
        assert len(rows) == H36M_SAMPLES and all(k.startswith("h36m/") for k in rows)
        assert {r["source"] for r in rows.values()} == {"fit3d"}
        assert {r["fit_config_hash"] for r in rows.values()} == {result.fit_config_hash}
    assert results["image"].fit_config_hash != results["crop"].fit_config_hash


def test_each_subject_keeps_one_shape_close_to_its_true_one(synth, seeded):
    """All of a subject's rows (both frames) carry the same betas; its rest mesh lies far closer to the true one than
    the mean shape does: measured 11.1 and 9.7 mm per vertex against 64.8 and 63.5 mm for the mean shape (S1, S9;
    the open model's wider shape space; the earlier one: 5.5 and 7.4 mm). From 12 noise-free frames the shape
    directions the 17 joints barely see stay at the prior's zero."""
    table, _ = seeded
    truth = load_truth(synth / "h36m")
    body = load_body_model("open-small")
    for subject in ("S1", "S9"):
        rows = [r for frame in ("image", "crop") for k, r in _rows(table, frame).items() if f"/{subject}_" in k]
        betas = {tuple(r["betas"]) for r in rows}
        assert len(rows) == 12 * 2 and len(betas) == 1
        true_betas = {tuple(np.round(truth.get(r["key"])["betas"], 6)) for r in rows}
        assert len(true_betas) == 1  # the generator's one shape per subject
        zero = torch.zeros(3, 69)
        with torch.no_grad():
            rest = body(torch.tensor([list(betas)[0], list(true_betas)[0], [0.0] * 10], dtype=torch.float32), zero,
                        zero[:, :3]).vertices
        fitted, mean = (float((rest[i] - rest[1]).norm(dim=-1).mean()) for i in (0, 2))
        assert fitted < min(0.016, 0.3 * mean), (subject, fitted, mean)


def test_image_frame_fits_are_the_true_bodies_in_the_camera(synth, seeded, samples):
    """Image-frame rows put the body where the camera sees it: their Human3.6M joints land on the true ones
    (measured 0.9 mm mean, 1.2 mm at worst) with the row's translation unchanged; the rows keep the sample's
    intrinsics."""
    table, _ = seeded
    truth = load_truth(synth / "h36m")
    body = load_body_model("open-small")
    rows = _rows(table, "image")
    keys = sorted(rows)
    pose = torch.tensor([rows[k]["pose"] for k in keys])
    betas = torch.tensor([rows[k]["betas"] for k in keys])
    cam_t = torch.tensor([rows[k]["cam_t"] for k in keys])
    with torch.no_grad():
        out = body(betas, pose[:, 3:], pose[:, :3])
    fitted = body.h36m_joints(out.vertices) + cam_t[:, None]
    true = torch.tensor(np.stack([truth.get(k)["h36m_joints"] for k in keys]), dtype=torch.float32)
    assert float((fitted - true).norm(dim=-1).mean()) < 0.003
    by_key = {s.key: s for s in samples}
    for k in keys:
        i = by_key[k].intrinsics
        np.testing.assert_allclose(rows[k]["intrinsics"], [i.fx, i.fy, i.cx, i.cy], rtol=1e-6)


def test_crop_frame_fits_keep_the_pose_and_take_spins_translation(seeded, samples):
    """A crop-frame row is the same 3D fit (pose and shape) with SPIN's least-squares translation onto the
    sample's fit-frame keypoints, and reprojects onto them (measured loss 2.1-6.1 px², SMPLify's own 2D seeds
    2.4-6.5 px² on the same samples; SPIN's validity bar is 100)."""
    table, _ = seeded
    image, crop = _rows(table, "image"), _rows(table, "crop")
    body = load_body_model("open-small")
    by_key = {s.key: s for s in samples}
    for k, row in crop.items():
        np.testing.assert_allclose(row["pose"], image[k]["pose"], atol=1e-6)
        np.testing.assert_allclose(row["betas"], image[k]["betas"], atol=1e-6)
        kp = torch.as_tensor(keypoints_in_fit_frame(by_key[k].keypoints_crop, by_key[k].meta["crop"]))[None]
        pose = torch.tensor([row["pose"]])
        with torch.no_grad():
            joints = body(torch.tensor([row["betas"]]), pose[:, 3:], pose[:, :3]).joints
        want = estimate_translation(joints.double(), kp.double(), FIT_FOCAL, FIT_CENTER)[0]
        np.testing.assert_allclose(row["cam_t"], want.numpy(), atol=1e-4)
        assert row["loss"] < 12.0 and row["valid"]
        assert row["candidates"] == 1 and row["facing"] > 0  # a quality record: one candidate, facing the keypoints
        assert abs(row["cam_t"][2] - image[k]["cam_t"][2]) > 10  # a 5000 px camera sees it from much farther


def test_a_second_run_appends_nothing_worse(synth, seeded):
    table, results = seeded
    again = seed_fits(synth / "shards", table, SeedConfig(body_model="open-small", mode="3d", frame="crop",
                                                          fit3d=FAST3D, batch_size=8, run_id="again"))
    assert again.fitted == H36M_SAMPLES and again.appended == 0  # the same fits: not lower than the best


def test_the_temporal_term_and_batches_change_nothing_of_the_shape(synth, tmp_path):
    """Batches of 5 (subjects and sequences cut across them) with the temporal term: still one shape per subject,
    and the fit config hash names the temporal weight."""
    config = SeedConfig(body_model="open-small", mode="3d", frame="crop", batch_size=5,
                        fit3d=dataclasses.replace(FAST3D, temporal_weight=300.0))
    result = seed_fits(synth / "shards", tmp_path / "fits", config)
    rows = _rows(tmp_path / "fits", "crop")
    for subject in ("S1", "S9"):
        assert len({tuple(r["betas"]) for k, r in rows.items() if f"/{subject}_" in k}) == 1
    assert result.fit_config_hash == fit_config_hash(config.smplify, config.pose_prior, result.body_model_id,
                                                     "crop", config.fit3d, config.shape_frames)
    assert result.fit_config_hash != fit_config_hash(config.smplify, config.pose_prior, result.body_model_id,
                                                     "crop", FAST3D, config.shape_frames)


@pytest.fixture(scope="module")
def samples(synth) -> list:
    return list(iter_samples(synth / "shards"))


def test_pelvis_centred_joints_cannot_make_image_frame_fits(samples):
    sample = next(s for s in samples if s.key.startswith("h36m/"))
    centred = sample.joints_3d.copy()
    centred[:, :3] -= centred[JOINT_INDEX["Pelvis (MPII)"], :3]
    centred[centred[:, 3] == 0] = 0.0
    moved = dataclasses.replace(sample, joints_3d=centred)
    with pytest.raises(FitloopError, match="centred on the pelvis.*--frame crop") as err:
        sample_3d(moved, sample_camera(moved, "image"), "image")
    assert "\n" not in str(err.value)
    assert sample_3d(moved, sample_camera(moved, "crop"), "crop") is not None  # the crop frame needs no depth
    coco = next(s for s in samples if s.key.startswith("coco/"))
    assert sample_3d(coco, sample_camera(coco, "crop"), "crop") is None


def test_bad_3d_settings_are_refused_in_one_line():
    for kwargs, message in [({"mode": "mosh"}, "seed mode must be one of 2d, 3d"),
                            ({"shape_frames": 0}, "shape_frames must be >= 1"),
                            ({"fit3d": Fit3DConfig(temporal_weight=-1.0)}, "temporal_weight"),
                            ({"run_id": " "}, "run id must not be empty")]:
        with pytest.raises(FitloopError, match=message):
            SeedConfig(**kwargs)


def test_spread_takes_the_ends_and_evenly_between():
    assert spread(3, 64).tolist() == [0, 1, 2]
    assert spread(10, 4).tolist() == [0, 3, 6, 9]


def test_fits_seed_command_in_3d_mode(synth, tmp_path, capsys):
    table = tmp_path / "fits"
    assert main(["fits", "seed", str(synth / "shards"), str(table), "--body-model", "open-small", "--mode", "3d",
                 "--workers", "0", "--batch-size", "12", "--shape-frames", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fitted"] == H36M_SAMPLES and result["without_3d"] == 3 and result["appended"] == H36M_SAMPLES
    assert main(["fits", "seed", str(synth / "shards"), str(table), "--body-model", "open-small", "--mode", "3d",
                 "--workers", "0", "--frame", "image"]) == 0
    line = capsys.readouterr().out
    assert "24 samples fitted (3 without 3D joints left out)" in line and "image frame from 3D joints" in line


def test_a_real_smpl_file_fits_3d_joints_through_spins_h36m_regressor(synth, tmp_path, capsys):
    """A licensed SMPL file has no Human3.6M regressor of its own: mode 3d takes SPIN's J_regressor_h36m.npy
    (--h36m-regressor), whose content is in the rows' fit_config_hash, or fits the canonical joints."""
    from model_files import smpl_arrays

    arrays = smpl_arrays()
    np.savez(tmp_path / "SMPL_NEUTRAL.npz", **arrays)
    rows = np.random.default_rng(0).random((17, len(arrays["v_template"])))
    np.save(tmp_path / "J_regressor_h36m.npy", rows / rows.sum(1, keepdims=True))
    model, regressor = str(tmp_path / "SMPL_NEUTRAL.npz"), str(tmp_path / "J_regressor_h36m.npy")
    seed = ["fits", "seed", str(synth / "shards"), str(tmp_path / "fits"), "--body-model", model, "--mode", "3d",
            "--workers", "0", "--batch-size", "12", "--shape-frames", "4"]
    assert main(seed) == 1
    err = capsys.readouterr().err
    assert "--h36m-regressor" in err and "--correspondence canonical" in err and "Traceback" not in err
    assert main([*seed, "--h36m-regressor", regressor, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fitted"] == H36M_SAMPLES
    assert main([*seed, "--correspondence", "canonical", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fitted"] == H36M_SAMPLES
    hashes = {row["fit_config_hash"] for row in FitsTable.open(tmp_path / "fits").log().to_pylist()}
    assert len(hashes) == 2  # the regressor's fits and the canonical joints' are told apart

    assert main(["fits", "seed", str(synth / "shards"), str(tmp_path / "t2"), "--h36m-regressor", regressor]) == 1
    assert "go with --mode 3d" in capsys.readouterr().err
