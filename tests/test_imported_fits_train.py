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
from fits.schema import PART_COLUMNS
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
                 str(setting["npy"]), "--dataset", IMPORTED, "--model", str(setting["smpl"]), "--rows-match"]) == 0
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


def test_the_trainer_with_a_fit_filter_does_not_supervise_with_a_fit_below_the_bar(setting, monkeypatch):
    """With a bar on the worst body part, a stored fit supervises only when its quality record meets it (besides
    SPIN's loss threshold, set high here so that the bar alone decides: this tiny synthetic SMPL's 5-iteration fits
    have losses of 80-2000 px²): the imported fits have no record and never do; of the seeded ones, those within
    the bar."""
    import training.loop
    from fits.quality import FitFilter, columns_of
    from fits.seeding import SeedConfig, seed_fits
    from training.loop import train

    table = setting["root"] / "fits-filtered"
    assert main(["fits", "import", str(table), "--spin-npz", str(setting["npz"]), "--spin-fits",
                 str(setting["npy"]), "--dataset", IMPORTED, "--model", str(setting["smpl"]), "--rows-match"]) == 0
    smplify = SMPLifyConfig(body_iterations=5)
    seed_fits(setting["shards"], table, SeedConfig(body_model=str(setting["smpl"]), smplify=smplify),
              splits=("train",), missing_only=True)
    best = FitsTable.open(table).best()
    columns = columns_of(best)
    seeded = ~np.isnan(columns["candidates"])
    worst = np.nanmax(np.stack([columns[c] for c in PART_COLUMNS], -1)[seeded], -1)
    bar = float(np.median(worst))                      # half the seeded fits above it
    passes = dict(zip(best["key"].to_pylist(), FitFilter(max_reprojection_px=bar).keep(columns)))
    assert sum(passes.values()) == 2 and not any(passes[k] for k in setting["keys"])  # imports: no record

    seen: dict[str, tuple[bool, bool, float]] = {}
    real_supervision = training.loop.supervision

    def spy(chosen, batch, threshold, fit_filter):
        targets = real_supervision(chosen, batch, threshold, fit_filter)
        seen.update(zip(batch.keys, zip(targets.valid.tolist(), targets.filtered.tolist(),
                                        chosen.loss.tolist())))
        return targets

    monkeypatch.setattr(training.loop, "supervision", spy)
    config = TrainConfig(shards=(str(setting["shards"]),), fits=str(table), run_dir=str(setting["root"] / "run-f"),
                         run_id="filtered", body_model=str(setting["smpl"]), backbone=18, img_res=32,
                         batch_size=4, epochs=1, steps_per_epoch=2, num_workers=0, mix="*=1", shuffle_buffer=8,
                         tensorboard=False, run_smplify=False, smplify=smplify, smplify_threshold=1e5,
                         fit_filter=FitFilter(
                             max_reprojection_px=bar), augment=AugmentConfig(enabled=False),
                         ignore_3d_datasets=(IMPORTED, SEEDED), eval_splits=("none",), checkpoint_every=100,
                         log_every=1)
    train(config, progress=False)
    assert len(seen) >= 6
    threshold = config.smplify_threshold
    for key, (valid, filtered, loss) in seen.items():
        assert valid == (loss < threshold and passes[key]), key
        assert filtered == (loss < threshold and not passes[key]), key
    assert {valid for valid, _, _ in seen.values()} == {True, False}           # the bar kept some, dropped some
