"""The SPIN trainer with an SMPL-X-layout body model: whole-body heads (body, hands, jaw, expression) in the
iterative error feedback, the whole-body keypoint and parameter losses on mixed batches, SMPLify-X in the loop
writing whole-body fits, the fits store's whole-body columns, and a checkpoint that records its heads.

The data: a tiny shard set of the open SMPL-X model's people (`bench.synthetic_shards` renders their bodies),
half of the training samples with whole-body keypoints: each person's 161 points, the hands curled by random
MANO poses and the face moved by random expressions, projected with the person's own camera (what a COCO-WholeBody
or OpenPose file gives), the other half body-only (SPIN's datasets).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from core.frames import FIT_CENTER, FIT_FOCAL, FIT_RES, fit_frame_px
from core.joints import indices
from core.pinhole import pinhole
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_INDEX, wholebody_indices
from fits.schema import WHOLEBODY_PARAMETERS, WHOLEBODY_PART_COLUMNS, FitProvenance, WholeBodyFit, fits_batch
from fits.store import FitsStore
from fits.table import FitsTable
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from fitting.smplify import SMPLifyConfig
from fitting.wholebody_model import WholeBodyModel
from training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from training.config import DEFAULT_PRIOR, TrainConfig
from training.geometry import axis_angle_to_rotmat, rot6d_to_rotmat
from training.loop import train
from training.losses import wholebody_keypoint_loss
from training.regressor import IDENTITY_6D, Regressor, heads_for_family, mean_params_from_prior
from training.run_log import TRAIN_COLUMNS, WHOLEBODY_TRAIN_COLUMNS
from training.wholebody import WholeBodyParams, augment_wholebody, flip_wholebody, part_weights

MODEL = "open-smplx-small"
TEST_SMPLIFY = SMPLifyConfig(body_iterations=5)
HAND_CURL = 0.4       # rad: std of the random MANO hand poses (curled fingers)
WHOLEBODY_SHARE = 2   # every 2nd training sample has whole-body keypoints


# --- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def body():
    return load_body_model(MODEL)


@pytest.fixture(scope="module")
def wholebody(body):
    return WholeBodyModel(body)


def _wholebody_records(records, body, wholebody, res: int, seed: int):
    """Give every WHOLEBODY_SHARE-th record the 161 whole-body points of its person, hands curled and face moved
    at random, projected as the record's 49 keypoints were (bench.synthetic_shards)."""
    rng = np.random.default_rng(seed)
    out = []
    k = res / FIT_RES
    pelvis = indices(["Pelvis (MPII)"])[0]
    for i, record in enumerate(records):
        if i % WHOLEBODY_SHARE:
            out.append(record)
            continue
        pose = torch.as_tensor(record.smpl_pose, dtype=torch.float32)[None]
        betas = torch.as_tensor(record.smpl_betas, dtype=torch.float32)[None]
        hands = torch.as_tensor(HAND_CURL * rng.standard_normal((1, 90)), dtype=torch.float32)
        expression = torch.as_tensor(rng.standard_normal((1, 10)), dtype=torch.float32)
        with torch.no_grad():
            posed = wholebody(betas, pose[:, :3], pose[:, 3:66], hands[:, :45], hands[:, 45:],
                              torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), expression)
        points = posed.points[0].numpy().astype(np.float64)
        cam_t = record.joints_3d[pelvis, :3] - points[pelvis]     # the record's camera (its 3D joints)
        px = pinhole(points + cam_t, FIT_FOCAL, (FIT_CENTER, FIT_CENTER)) * k - 0.5
        points2d = np.zeros((NUM_WHOLEBODY, 3), np.float32)
        points2d[wholebody.provided, :2] = px[wholebody.provided]
        points2d[wholebody.provided, 2] = 1.0
        out.append(dataclasses.replace(record, wholebody=points2d))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, body, wholebody) -> Path:
    from bench.synthetic_shards import DatasetSpec, synthetic_records
    from shards.writer import ShardConfig, write_shards

    root = tmp_path_factory.mktemp("wb-synthetic")
    res = 64
    records = []
    for spec in (DatasetSpec("synth-wb", "train", 8, smpl=True, joints_3d=True),
                 DatasetSpec("synth-wb", "test", 4, smpl=True, joints_3d=True)):
        records += _wholebody_records(synthetic_records(body, spec, root / "images", res=res, seed=5), body,
                                      wholebody, res, seed=6)
    write_shards(records, root / "shards", ShardConfig(crop_res=96, samples_per_shard=4),
                 inputs=[{"dataset": "synth-wb", "split": s, "root": str(root / "images"), "options": {}}
                         for s in ("train", "test")])
    return root / "shards"


def run_config(shards: Path, fits: Path, run_dir: Path, **changes) -> TrainConfig:
    config = TrainConfig(shards=(str(shards),), fits=str(fits), run_dir=str(run_dir), run_id="wb-run", backbone=18,
                         img_res=32, batch_size=4, epochs=1, steps_per_epoch=2, num_workers=0, body_model=MODEL,
                         mix="*=1", smplify=TEST_SMPLIFY, checkpoint_every=100, log_every=1, shuffle_buffer=8,
                         tensorboard=False, seed_missing_fits=False, smplifyx_camera_iterations=3,
                         smplifyx_stage_iterations=(1, 1, 1, 2, 3))
    return dataclasses.replace(config, **changes)


def test_smoke(shards, tmp_path):
    summary = train(run_config(shards, tmp_path / "fits", tmp_path / "run"), progress=False)
    print(summary)
    rows = FitsTable.open(tmp_path / "fits").log()
    print(rows.num_rows, rows["hand_pose"].null_count, rows["key"].to_pylist())
