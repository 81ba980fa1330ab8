"""The SPIN trainer with an SMPL-X-layout body model: whole-body heads (body, hands, jaw, expression) in the
iterative error feedback, the whole-body keypoint and parameter losses on mixed batches, SMPLify-X in the loop
writing whole-body fits, the fits store's whole-body columns, and a checkpoint that records its heads.

The data: a tiny shard set of the open SMPL-X model's people (`bench.synthetic_shards` renders their bodies),
half of the training samples with whole-body keypoints: each person's 161 points, the hands curled by random
MANO poses and the face moved by random expressions, projected with the person's own camera (what a COCO-WholeBody
or OpenPose file gives), the other half body-only (SPIN's datasets).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from core.camera import project
from core.frames import FIT_CENTER, FIT_FOCAL, FIT_RES, keypoints_in_fit_frame
from core.joints import indices
from core.pinhole import pinhole
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_FLIP_PERM, WHOLEBODY_INDEX, wholebody_indices
from fits.schema import WHOLEBODY_PARAMETERS, WHOLEBODY_PART_COLUMNS, FitProvenance, WholeBodyFit, fits_batch
from fits.store import FitsStore
from fits.table import FitsTable
from fitting.body_model import load_body_model
from fitting.priors import MaxMixturePrior
from fitting.quality import wholebody_part_reprojection
from fitting.smplify import SMPLify, SMPLifyConfig
from fitting.wholebody_model import WholeBodyModel
from shards.augment import AugmentConfig
from shards.reader import iter_shard, list_shards
from training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import DEFAULT_PRIOR, TrainConfig
from training.geometry import flip_pose, rot6d_to_rotmat
from training.loop import train
from training.losses import wholebody_keypoint_loss
from training.regressor import IDENTITY_6D, Regressor, heads_for_family, mean_params_from_prior
from training.run_log import TRAIN_COLUMNS, WHOLEBODY_TRAIN_COLUMNS
from training.step import predict
from training.wholebody import (
    WholeBodyParams,
    augment_wholebody,
    flip_wholebody,
    full_pose_of,
    part_weights,
)

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
        pose = torch.tensor(record.smpl_pose, dtype=torch.float32)[None]
        betas = torch.tensor(record.smpl_betas, dtype=torch.float32)[None]
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


@pytest.fixture(scope="module")
def reference_run(shards, tmp_path_factory) -> Path:
    """Four steps on the same batch of 8 (4 with whole-body keypoints, no augmentation: every fit is stored
    canonical as made), fits table without seed fits (every first loop fit wins)."""
    root = tmp_path_factory.mktemp("wb-run")
    config = run_config(shards, root / "fits", root / "run", batch_size=8, steps_per_epoch=1, epochs=4,
                        augment=AugmentConfig(enabled=False), eval_every_epochs=100)
    train(config, progress=False)
    return root


def _log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "train_log.csv") as f:
        return list(csv.DictReader(f))


# --- regressor heads -----------------------------------------------------------------------------------------------
def test_heads_follow_the_model_family_and_start_at_the_mean_parameters():
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    assert [heads_for_family(f) for f in ("smpl", "open", "smplh", "smplx")] == ["smpl", "smpl", "smpl", "smplx"]
    smpl = Regressor(mean_params_from_prior(prior), depth=18)
    # SPIN's regressor as it was: its state vector and decoders, nothing whole-body
    assert smpl.heads == "smpl" and smpl.fc1.in_features == smpl.feature_dim + 144 + 10 + 3
    assert not [k for k in smpl.state_dict() if k.startswith(("dechands", "decjaw", "decexpr", "init_hands"))]
    assert smpl(torch.randn(1, 3, 64, 64)).hand_rotmat is None

    mean = mean_params_from_prior(prior).wholebody()
    model = Regressor(mean, depth=18).eval()
    assert model.fc1.in_features == model.feature_dim + 22 * 6 + 10 + 3 + 30 * 6 + 6 + 10
    out = model(torch.randn(2, 3, 64, 64))
    assert out.rotmat.shape == (2, 24, 3, 3) and out.hand_rotmat.shape == (2, 30, 3, 3)
    assert out.jaw_rotmat.shape == (2, 1, 3, 3) and out.expression.shape == (2, 10)
    eye = torch.eye(3)
    assert torch.equal(out.rotmat[:, 22:], eye.expand(2, 2, 3, 3))     # SMPL's hand slots: SMPL-X has none
    # the new parts start at their means (decoders near zero): flat hands, closed jaw, neutral face
    assert torch.equal(rot6d_to_rotmat(torch.tensor(IDENTITY_6D)), eye)
    assert (out.hand_rotmat - eye).abs().max() < 0.25 and (out.jaw_rotmat - eye).abs().max() < 0.25
    assert out.expression.abs().max() < 0.25
    # the body's mean is the prior's over SMPL-X's 22 joints
    body_mean = rot6d_to_rotmat(torch.as_tensor(mean.pose6d).reshape(22, 6))
    assert (out.rotmat[:, :22] - body_mean).abs().max() < 0.25
    assert np.array_equal(mean.pose6d, mean_params_from_prior(prior).pose6d[:132])


# --- mirroring --------------------------------------------------------------------------------------------------
def test_mirrored_hand_jaw_and_eye_poses_pose_the_mirrored_whole_body(wholebody):
    """A flipped crop's fit: SPIN's mirrored body pose and the mirrored hands, jaw and eyes pose the mirror image
    of the whole body (x negated, left and right points swapped). The open model is left/right symmetric to
    1.7 mm at rest (measured), which bounds what the mirror can match; a wrong sign or a swap missed moves
    fingers by centimetres."""
    torch.manual_seed(0)
    batch = 4
    pose = 0.3 * torch.randn(batch, 72)
    pose[:, 66:] = 0.0
    params = WholeBodyParams(0.4 * torch.randn(batch, 90), 0.2 * torch.randn(batch, 3), 0.1 * torch.randn(batch, 6),
                             torch.zeros(batch, 10))
    betas = torch.zeros(batch, 10)
    with torch.no_grad():
        points = wholebody.forward_full(full_pose_of(pose, params), betas, params.expression).points
        flipped = flip_wholebody(params)
        mirrored = wholebody.forward_full(full_pose_of(flip_pose(pose), flipped), betas, flipped.expression).points
    expected = points[:, WHOLEBODY_FLIP_PERM] * torch.tensor([-1.0, 1.0, 1.0])
    provided = torch.as_tensor(wholebody.provided)
    assert (mirrored - expected).norm(dim=-1)[:, provided].max() < 0.003
    # mirroring is its own inverse; only flipped examples change; the expression is passed through
    twice = flip_wholebody(flipped)
    for a, b in zip(twice.values(), params.values()):
        torch.testing.assert_close(a, b)
    some = augment_wholebody(params, torch.tensor([True, False, True, False]))
    assert torch.equal(some.hand_pose[1], params.hand_pose[1]) and not torch.equal(some.hand_pose[0],
                                                                                    params.hand_pose[0])
    assert torch.equal(some.expression, params.expression)


# --- losses -------------------------------------------------------------------------------------------------------
def test_wholebody_keypoint_loss_reads_only_whole_body_examples_and_their_hand_and_face_points(wholebody):
    weights = part_weights(wholebody.provided, hands=2.0, face=1.0)
    hand = wholebody_indices(["left_index2"])[0]
    face = WHOLEBODY_INDEX["nose1"]
    assert weights[hand] == 2.0 and weights[face] == 1.0
    assert weights[:49].abs().sum() == 0 and weights[WHOLEBODY_INDEX["left_hand_root"]] == 0
    assert weights[WHOLEBODY_INDEX["right_contour_1"]] == 0   # the face contour: not a point of the model
    target = torch.zeros(3, NUM_WHOLEBODY, 3)
    target[..., 2] = 1.0
    pred = torch.zeros(3, NUM_WHOLEBODY, 2, requires_grad=True)
    with torch.no_grad():
        offset = torch.zeros(3, NUM_WHOLEBODY, 2)
        offset[0, hand, 0] = 1.0       # a whole-body example's hand point off by 1
        offset[1, :, :] = 100.0        # a body-only example: nothing of it counts
        offset[2, :49] = 100.0         # the body joints: the body's 2D loss has them
    has = torch.tensor([True, False, True])
    loss = wholebody_keypoint_loss(pred + offset, target, has, weights)
    counted = int((weights > 0).sum())
    torch.testing.assert_close(loss, torch.tensor(2.0 / (2 * counted * 2)))
    loss.backward()
    assert pred.grad[1].abs().sum() == 0
    none = wholebody_keypoint_loss(pred + offset, target, torch.zeros(3, dtype=torch.bool), weights)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_whole_body_losses_reach_the_hand_jaw_and_expression_heads(wholebody):
    """One step's whole-body losses put gradients on the decoders of hands, jaw and expression; a batch without
    whole-body keypoints or fits puts none there."""
    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    model = Regressor(mean_params_from_prior(prior).wholebody(), depth=18)
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    target = torch.rand(2, NUM_WHOLEBODY, 3) * 2 - 1
    target[..., 2] = 1.0
    weights = part_weights(wholebody.provided, 1.0, 1.0)
    for has, expect in ((torch.tensor([True, False]), True), (torch.tensor([False, False]), False)):
        model.zero_grad()
        pred = predict(model, wholebody.body, images, contextlib.nullcontext(), wholebody)
        wholebody_keypoint_loss(pred.wholebody_2d, target, has, weights).backward()
        grads = [model.dechands.weight.grad, model.decjaw.weight.grad, model.decexpr.weight.grad]
        assert all((g is not None and bool(g.abs().sum() > 0)) == expect for g in grads)


# --- the fits store ------------------------------------------------------------------------------------------------
def test_the_store_reads_and_keeps_whole_body_fits(body, tmp_path):
    """Whole-body fits round-trip table -> store (load) -> lookup and back to rows; a body-only fit that beats a
    whole-body one (the table's rule: the lower loss) leaves its key without whole-body parameters."""
    rng = np.random.default_rng(0)
    keys = ["synth-wb/a", "synth-wb/b", "synth-wb/c"]
    provenance = FitProvenance(run_id="r", body_model_id=body.model_id, fit_config_hash="h")
    params = WholeBodyFit(*(rng.standard_normal((2, n)).astype(np.float32) for n in WHOLEBODY_PARAMETERS.values()),
                          part_reprojection=np.array([[1.5, 2.5, np.nan], [0.5, 0.25, 3.0]], np.float32))
    pose, betas = rng.standard_normal((3, 72)).astype(np.float32) * 0.1, np.zeros((3, 10), np.float32)
    pose[:, 66:] = 0.0
    table = FitsTable.create(tmp_path / "fits")
    table.append(pa.concat_tables([
        fits_batch(keys[:2], pose[:2], betas[:2], provenance, loss=np.array([5.0, 6.0]), wholebody=params),
        fits_batch(keys[2:], pose[2:], betas[2:], provenance, loss=np.array([7.0]))]))
    store = FitsStore.load(table, body.model_id)
    found, has = store.lookup_wholebody(keys + ["synth-wb/unknown"])
    assert has.tolist() == [True, True, False, False]
    for name in WHOLEBODY_PARAMETERS:
        column = getattr(found, name)
        np.testing.assert_array_equal(column[:2].numpy(), getattr(params, name))
        assert column[2:].abs().sum() == 0
    np.testing.assert_array_equal(found.part_reprojection[:2].numpy(), params.part_reprojection)
    assert torch.isnan(found.part_reprojection[2:]).all()
    rows = store.best_rows()
    assert rows["hand_pose"].null_count == 1 and rows["reprojection_face_px"].null_count == 2
    np.testing.assert_array_equal(np.stack(rows["expression"].to_pylist()[:2]), params.expression)
    # a better body-only fit of "a": the key's best fit is body-only now
    assert store.offer(fits_batch(keys[:1], pose[:1], betas[:1], provenance, loss=np.array([1.0]))) == 1
    _, has = store.lookup_wholebody(keys)
    assert has.tolist() == [False, True, False]
    # ... and a worse whole-body fit of "c" does not replace its body-only one
    worse = WholeBodyFit(*(v[:1] for v in (params.hand_pose, params.jaw_pose, params.eye_pose, params.expression)))
    assert store.offer(fits_batch(keys[2:], pose[2:], betas[2:], provenance, loss=np.array([9.0]),
                                  wholebody=worse)) == 0
    assert store.lookup_wholebody(keys)[1].tolist() == [False, True, False]


# --- whole runs ----------------------------------------------------------------------------------------------------
def test_a_whole_body_run_lowers_its_whole_body_keypoint_loss(reference_run):
    """Four steps on one batch: the whole-body 2D loss falls (measured: 0.066 -> 0.0093, 14%); an SMPL run's
    log columns come first, unchanged, then the whole-body ones; half the chosen fits are whole-body fits (the
    half of the batch with whole-body keypoints)."""
    rows = _log(reference_run / "run")
    assert len(rows) == 4
    with open(reference_run / "run" / "train_log.csv") as f:
        assert tuple(next(csv.reader(f))) == TRAIN_COLUMNS + WHOLEBODY_TRAIN_COLUMNS
    first, last = (float(rows[i]["keypoints_wholebody"]) for i in (0, -1))
    assert last < 0.35 * first
    assert all(float(r["fits_wholebody"]) == 0.5 for r in rows)
    assert float(rows[-1]["hand_pose"]) > 0 and float(rows[-1]["expression"]) > 0   # whole-body fits supervise


def test_whole_body_fits_written_back_have_all_four_parameter_columns(reference_run):
    """The samples with whole-body keypoints get whole-body fits (hand, jaw, eye poses, expression and the
    hands' and face's reprojection), SMPLify-X's from the network's estimate; body-only samples body-only fits
    (every whole-body column null)."""
    table = FitsTable.open(reference_run / "fits")
    rows = table.log()
    assert rows.num_rows >= 8 and set(pc.unique(rows["source"]).to_pylist()) == {"loop"}
    index = np.array([int(k.rsplit("_", 1)[1]) for k in rows["key"].to_pylist()])
    whole = index % WHOLEBODY_SHARE == 0
    for name in (*WHOLEBODY_PARAMETERS, *WHOLEBODY_PART_COLUMNS):
        valid = rows[name].is_valid().to_numpy(zero_copy_only=False)
        assert valid[whole].all() and not valid[~whole].any(), name
    # SMPLify-X puts hands and face on their (noise-free) keypoints: px in the 224 px fit frame (measured medians
    # 0.5-0.9 px, one fit of the first step 9-16 px)
    for name in WHOLEBODY_PART_COLUMNS:
        values = rows.filter(pa.array(whole))[name].to_numpy()
        assert np.median(values) < 3.0, name


def _check_rows_against_their_keypoints(rows: pa.Table, shards: Path, body, wholebody) -> int:
    """Every row's loss is SMPLify's loss of its own whole-body pose (body, hands, jaw, eyes, expression; zeros
    for a body-only row) on its sample's unaugmented keypoints in the fit frame (the table's invariant), and a
    whole-body row's hands' and face's reprojection are those of the same posed points on the sample's whole-body
    keypoints. Returns the number of whole-body rows checked."""
    samples = {s.key: s for shard in list_shards(shards) for s in iter_shard(shard)}
    keys = rows["key"].to_pylist()
    keypoints = torch.as_tensor(np.stack([keypoints_in_fit_frame(samples[k].keypoints_crop, samples[k].meta["crop"])
                                          for k in keys]))
    pose, betas, cam_t = (torch.as_tensor(np.asarray(rows[c].to_pylist(), np.float32))
                          for c in ("pose", "betas", "cam_t"))
    whole = rows["hand_pose"].is_valid().to_numpy(zero_copy_only=False)
    params = [torch.zeros(len(keys), n) for n in WHOLEBODY_PARAMETERS.values()]
    for value, name in zip(params, WHOLEBODY_PARAMETERS):
        value[torch.as_tensor(whole)] = torch.as_tensor(np.asarray(rows.filter(pa.array(whole))[name].to_pylist(),
                                                                   np.float32))
    params = WholeBodyParams(*params)
    center = torch.full((len(keys), 2), FIT_CENTER)
    smplify = SMPLify(body, MaxMixturePrior.from_file(DEFAULT_PRIOR), TEST_SMPLIFY)
    with torch.no_grad():
        points = wholebody.forward_full(full_pose_of(pose, params), betas, params.expression).points
    loss = smplify.joints_loss(points[:, :49], cam_t, center, keypoints).mean(-1).numpy()
    np.testing.assert_allclose(rows["loss"].to_numpy(), loss, rtol=1e-4)
    if whole.any():
        at = np.flatnonzero(whole)
        targets = torch.as_tensor(np.stack([keypoints_in_fit_frame(samples[keys[i]].wholebody_crop,
                                                                   samples[keys[i]].meta["crop"]) for i in at]))
        parts = wholebody_part_reprojection(project(points[at], cam_t[at], FIT_FOCAL, center[at]), targets,
                                  wholebody.provided).numpy()
        stored = np.stack([rows[name].to_numpy()[at] for name in WHOLEBODY_PART_COLUMNS], -1)
        np.testing.assert_allclose(stored, parts, rtol=1e-3, atol=1e-4)
    return int(whole.sum())


def test_every_row_holds_its_whole_body_fits_loss_on_the_unaugmented_keypoints(reference_run, shards, body,
                                                                                wholebody):
    rows = FitsTable.open(reference_run / "fits").log()
    assert _check_rows_against_their_keypoints(rows, shards, body, wholebody) >= 4


def test_an_smplx_run_resumes_and_a_checkpoint_of_other_heads_is_refused(shards, tmp_path):
    config = run_config(shards, tmp_path / "fits", tmp_path / "run", steps_per_epoch=1, epochs=1,
                        eval_every_epochs=100)
    train(config, progress=False)
    saved = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert saved["regressor_heads"] == "smplx" and saved["step"] == 1
    assert "dechands.weight" in saved["model"]
    summary = train(dataclasses.replace(config, epochs=2), resume=True, progress=False)
    assert summary["step"] == 2
    assert [int(r["step"]) for r in _log(tmp_path / "run")] == [1, 2]
    # this run trains with SPIN's augmentation: its fits, made in flipped, turned and scaled crops, are stored
    # canonical (a whole-body fit of a flipped crop is not stored: its expression has no mirror)
    _check_rows_against_their_keypoints(FitsTable.open(tmp_path / "fits").log(), shards, load_body_model(MODEL),
                                        WholeBodyModel(load_body_model(MODEL)))
    # a checkpoint whose regressor has SPIN's heads cannot continue in this run
    bad = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    bad.pop("format"), bad.pop("format_version")
    save_checkpoint(tmp_path / "run", {**bad, "regressor_heads": "smpl", "step": 3})
    with pytest.raises(CheckpointError, match="smpl heads.*smplx heads"):
        train(dataclasses.replace(config, epochs=3), resume=True, progress=False)


# --- fitting in the loop -------------------------------------------------------------------------------------------
class _Spy:
    """A fitter that records the keypoints of each call and returns its inner fitter's results."""

    def __init__(self, inner):
        self.inner, self.calls, self.results = inner, [], []

    def __call__(self, keypoints, *args, **kwargs):
        self.calls.append(keypoints.clone())
        self.results.append(self.inner(keypoints, *args, **kwargs))
        return self.results[-1]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_whole_body_rows_are_fitted_by_smplifyx_only_and_body_rows_by_smplify_only(body, wholebody):
    from types import SimpleNamespace

    from core.frames import fit_frame_px
    from fitting.smplifyx import SMPLifyX, SMPLifyXConfig, body_gmm_term
    from training.step import fit_wholebody_in_the_loop

    prior = MaxMixturePrior.from_file(DEFAULT_PRIOR)
    torch.manual_seed(2)
    model = Regressor(mean_params_from_prior(prior).wholebody(), depth=18).eval()
    with torch.no_grad():
        pred = predict(model, body, torch.randn(5, 3, 32, 32), contextlib.nullcontext(), wholebody)
    keypoints = torch.cat([pred.keypoints_2d, torch.ones(5, 49, 1)], -1)
    keypoints_px = fit_frame_px(keypoints)
    points = torch.cat([pred.wholebody_2d, torch.as_tensor(wholebody.provided, dtype=torch.float32)[None, :, None]
                        .expand(5, -1, 1)], -1)
    sx_config = SMPLifyXConfig(image_height=FIT_RES, focal_length=FIT_FOCAL, camera_iterations=2,
                               stage_iterations=(1, 1, 1, 1, 2))
    for has in ([True, False, True, False, False], [False] * 5, [True] * 5):
        has = torch.tensor(has)
        batch = SimpleNamespace(keys=[f"k{i}" for i in range(5)], has_wholebody=has,
                                wholebody=torch.where(has[:, None, None], points, torch.zeros_like(points)))
        smplify = _Spy(SMPLify(body, prior, TEST_SMPLIFY))
        smplifyx = _Spy(SMPLifyX(wholebody, body_prior=body_gmm_term(DEFAULT_PRIOR), config=sx_config))
        out = fit_wholebody_in_the_loop(smplifyx, smplify, pred, batch, keypoints_px)
        assert torch.equal(out.is_wholebody, has)
        body_rows, whole_rows = torch.nonzero(~has)[:, 0], torch.nonzero(has)[:, 0]
        # each fitter ran once, on its rows only (none when it has none)
        assert len(smplify.calls) == int(len(body_rows) > 0) and len(smplifyx.calls) == int(len(whole_rows) > 0)
        if len(body_rows):
            assert torch.equal(smplify.calls[0], keypoints_px[body_rows])
            fits = smplify.results[0]
            assert torch.equal(out.pose[body_rows], fits.pose) and torch.equal(out.loss[body_rows], fits.loss)
            assert (out.wholebody.hand_pose[body_rows] == 0).all()
        if len(whole_rows):
            assert torch.equal(smplifyx.calls[0], fit_frame_px(batch.wholebody[whole_rows]))
            fits = smplifyx.results[0]
            assert torch.equal(out.betas[whole_rows], fits.betas)
            assert torch.equal(out.wholebody.expression[whole_rows], fits.expression)
        assert torch.isfinite(out.loss).all() and (out.iterations > 0).all()
