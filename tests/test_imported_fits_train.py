"""SPIN's static fits imported for a real-layout SMPL file are the fits the trainer uses: it loads the fits of its
body model by content id, seeds only the keys without one, and supervises with the imported poses.

The model is a synthetic SMPL in the release's layout (tests/model_files.py); the shards are a tiny synthetic set
(bench.synthetic_shards); the SPIN files are written in SPIN's layout: an .npz whose ``imgname`` gives the keys, and
an N x 82 float64 ``<dataset>_fits.npy`` row-aligned with it.
"""
from __future__ import annotations

import model_files
import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from fitloop.cli import main
from fits.seeding import fit_config_hash
from fits.store import FitsStore
from fits.table import FitsTable
from fitting.body_model import load_body_model
from fitting.smplify import SMPLifyConfig
from shards.augment import AugmentConfig
from shards.reader import iter_shard, list_shards
from training.config import TrainConfig
from training.geometry import axis_angle_to_rotmat

IMPORTED, SEEDED = "synth-h36m", "synth-wild"   # the dataset SPIN's fits are imported for; the one seeded


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> dict:
    from bench.synthetic_shards import DatasetSpec, write_synthetic_shards

    root = tmp_path_factory.mktemp("imported")
    write_synthetic_shards(root / "data", [DatasetSpec(IMPORTED, "train", 4, smpl=True, joints_3d=True),
                                           DatasetSpec(SEEDED, "train", 4, openpose=True)],
                           res=64, samples_per_shard=4, seed=7)
    shards = root / "data" / "shards"
    smpl = root / "SMPL_NEUTRAL.pkl"
    model_files.write_chumpy_pickle(smpl, model_files.smpl_arrays())
    keys = [s.key for shard in list_shards(shards, (IMPORTED,)) for s in iter_shard(shard)]
    npz = root / "h36m_like.npz"
    np.savez(npz, imgname=np.array([f"images/{key.split('/', 1)[1]}.jpg" for key in keys]))
    rng = np.random.default_rng(1)
    fits = np.concatenate([0.3 * rng.normal(size=(len(keys), 72)), rng.normal(size=(len(keys), 10))], 1)
    fits[:, 0] += np.pi  # upright, facing the camera, as SPIN's fits are
    fits = fits.astype(np.float32).astype(np.float64)  # SPIN's files: float64 of float32 values
    np.save(root / "h36m_like_fits.npy", fits)
    return {"root": root, "shards": shards, "smpl": smpl, "keys": keys, "npz": npz,
            "npy": root / "h36m_like_fits.npy", "poses": dict(zip(keys, fits[:, :72]))}


def test_imported_spin_fits_are_used_by_the_trainer_without_reseeding(setting, monkeypatch):
    import training.loop
    from training.loop import train

    table = setting["root"] / "fits"
    assert main(["fits", "import", str(table), "--spin-npz", str(setting["npz"]), "--spin-fits",
                 str(setting["npy"]), "--dataset", IMPORTED, "--model", str(setting["smpl"])]) == 0
    body_id = load_body_model(setting["smpl"]).model_id

    supervised: dict[str, np.ndarray] = {}
    real_supervision = training.loop.supervision

    def spy(chosen, batch, threshold, fit_filter):
        targets = real_supervision(chosen, batch, threshold, fit_filter)
        supervised.update(zip(batch.keys, targets.pose.detach().cpu().numpy()))
        return targets

    monkeypatch.setattr(training.loop, "supervision", spy)
    config = TrainConfig(shards=(str(setting["shards"]),), fits=str(table), run_dir=str(setting["root"] / "run"),
                         run_id="uses-imports", body_model=str(setting["smpl"]), backbone=18, img_res=32,
                         batch_size=4, epochs=1, steps_per_epoch=2, num_workers=0, mix="*=1", shuffle_buffer=8,
                         tensorboard=False, run_smplify=False, smplify=SMPLifyConfig(body_iterations=5),
                         augment=AugmentConfig(enabled=False), ignore_3d_datasets=(IMPORTED, SEEDED),
                         eval_splits=("none",), checkpoint_every=100, log_every=1)
    train(config, progress=False)

    log = FitsTable.open(table).log()
    seeds = log.filter(pc.equal(log["source"], "seed"))
    assert sorted(k.split("/")[0] for k in seeds["key"].to_pylist()) == [SEEDED] * 4  # none of the imported keys
    assert set(seeds["body_model_id"].to_pylist()) == {body_id}
    assert set(seeds["fit_config_hash"].to_pylist()) == {fit_config_hash(config.smplify, config.pose_prior, body_id)}
    assert len(FitsStore.load(FitsTable.open(table), body_id)) == 8

    # without fitting in the loop and without augmentation, the stored fit supervises: for the imported keys, the
    # imported pose (as SPIN's step uses its static fits), the same rotations (axis-angle wraps at π)
    seen = [k for k in supervised if k.startswith(IMPORTED)]
    assert len(seen) == 4
    for key in seen:
        rotations = [axis_angle_to_rotmat(torch.as_tensor(p, dtype=torch.float64).reshape(24, 3))
                     for p in (supervised[key], setting["poses"][key])]
        torch.testing.assert_close(*rotations, atol=1e-5, rtol=0, msg=key)
