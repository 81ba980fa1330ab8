"""One SPIN training step as named functions, in the order the loop calls them (SPIN_REFERENCE §7.2):

1. `predict`: the regressor's rotations, betas and camera, the body model's joints, the projected keypoints.
2. `stored_fits`: the best stored fit of each sample, brought into the batch's augmented frame and re-scored
   against the current keypoints with a least-squares camera (SPIN's ``opt_joint_loss``).
3. `fit_in_the_loop`: SMPLify started from the prediction (camera from the weak-perspective output).
4. `update_fits`: SPIN's strict per-example choice ``new < stored``; the fits that win are undone to the canonical
   frame (flip, then rotation, then the crop scale), scored there with their own camera, given their quality record
   (`fitting.quality`: per-part reprojection and facing there; the stored fit they beat as the other candidate), and
   offered to the `FitsStore` (written to the table at the next checkpoint or epoch end). Before anything is
   offered, every stored fit with a camera is scored again on its sample's keypoints (`stale_fits`): a table's
   losses compare only on the keypoints they were measured on, and a table made from other keypoints under the
   same keys (another shard set) kept its fits of other people as the best, refusing every better fit, without a
   word; now the step stops (`fits.store.StaleFitsError`).
5. `supervision`: SPIN's targets: betas of a fit outside ±3σ zeroed, ground-truth SMPL where the dataset has it,
   ``valid = (loss < threshold and the fit passes the run's fit filter) or ground truth`` (`fits.quality.FitFilter`:
   the stored fit's record from the store, a new fit's own).
6. `compute_losses`: SPIN's weighted sum.

**Whole-body runs** (an SMPL-X-layout body model: the regressor's SMPL-X heads, `training.regressor`): `predict`
poses the whole body (`fitting.wholebody_model.WholeBodyModel.forward_rotmat`) and projects its 161 points;
`stored_fits` also reads each stored fit's hand, jaw and eye poses and expression (`fits.store.FitsStore.
lookup_wholebody`), mirrored into the batch's crop (`training.wholebody`), and scores it with them;
`fit_wholebody_in_the_loop` fits the examples that have whole-body keypoints with SMPLify-X from the network's
estimate (`fitting.smplifyx.SMPLifyXStart`) and the others with SMPLify, each example by one of the two;
`update_fits` writes a winning whole-body fit as a whole-body row (`fits.schema.WholeBodyFit`, with its hands'
and face's reprojection), except where the example was flipped (an expression has no mirror:
that fit supervises its step only); `supervision` adds the hand, jaw and expression targets of the chosen fits
that have them; `compute_losses` the whole-body keypoint loss and those parameter losses. Every fit is still
compared by its ``loss``, the 49 body joints' (the table's rule).

Host syncs (docs/training.md, "Host syncs"): the step's own code reads the device once, in `update_fits` (the
winning fits go to the fits store: one transfer of the whole batch, `core.host_syncs.to_host`); the losses select
examples by masked sums and `compute_losses` returns device tensors, read by the log once per row; host data goes
up without waiting (`core.host_syncs.to_device`). SMPLify and the body model have their own.

Frames (`training.geometry`): batch keypoints are normalised; SMPLify sees fit-frame px; poses are axis-angle in
the camera convention of SPIN's fits. Table losses are the loss of (canonical pose, betas, cam_t) on the sample's
unaugmented fit-frame keypoints — what SMPLify reports for a fit made there (seed fits), so loop and seed rows
compare by the same number.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from core.camera import project
from core.frames import FIT_CENTER, fit_frame_px
from core.host_syncs import to_device, to_host
from core.joints import MIN_FIT_JOINTS, NUM_JOINTS, joints_shown
from fits.quality import FILTER_COLUMNS, FitFilter, columns_of
from fits.schema import (
    BETAS_EXTREME_SIGMA,
    NUM_EYE_POSE,
    NUM_HAND_POSE,
    NUM_JAW_POSE,
    FitProvenance,
    WholeBodyFit,
    fits_batch,
)
from fits.store import FitsStore, stale_fits, stale_fits_error
from fitting.body_model import BodyModel
from fitting.priors import angle_prior, shape_prior
from fitting.quality import candidate_spread, fit_quality, wholebody_part_reprojection
from fitting.smplify import SMPLify, SMPLifyResult, mean_pose_start
from fitting.smplifyx import SMPLifyX, SMPLifyXStart
from fitting.wholebody_model import WholeBodyModel
from training.config import LossWeights
from training.dsr_loss import clothed_region, dsr_c_loss, dsr_mc_loss, smpl_part_ids
from training.geometry import (
    augment_pose,
    axis_angle_to_rotmat,
    canonical_keypoints,
    canonical_pose,
    canonical_translation,
    estimate_translation,
    project_normalised,
    rest_root,
    rotmat_to_axis_angle,
    weak_perspective_to_translation,
)
from training.graphcmr import mesh_losses
from training.heads import DEFAULT_HEAD, HEADS, Head
from training.losses import (
    betas_loss,
    camera_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    pose_loss,
    shape_loss,
    volume_2d_loss,
    volume_3d_loss,
    wholebody_keypoint_loss,
)
from training.mask_loss import MaskConsistency
from training.volumetric import volume_targets
from training.wholebody import (
    WholeBodyParams,
    augment_wholebody,
    full_pose_of,
    rotmats_of,
    split_full_pose,
)


@dataclass
class Batch:
    """A training batch on the training device. img (B, 3, H, W); keypoints (B, 49, 3) normalised; gt_pose
    (B, 72), gt_betas (B, 10), has_smpl (B,) (False where the dataset's 3D is ignored); joints_3d (B, 49, 4),
    has_3d (B,); flip (B,) bool, rot (B,) degrees, scale (B,): the augmentation; keys, datasets: per example;
    wholebody (B, 161, 3) normalised whole-body keypoints (zeros where has_wholebody (B,) is False; None: a batch
    built without them, read by body-only runs only); mask (B, R, R) uint8 person masks of the training crop (0, 1,
    255 unknown; zeros where has_mask (B,) is False; None: a batch built without them); parts (B, R, R) uint8 part
    labels with each sample's table parts_names (a JSON list, `shards.reader`), has_parts (B,); parsing (B, R, R)
    uint8, has_parsing (B,) (the same, for a clothing parsing); inputs: the network's arguments
    (`training.heads.Head.arguments`; default: the image, the hmr head's)."""

    img: Tensor
    keypoints: Tensor
    gt_pose: Tensor
    gt_betas: Tensor
    has_smpl: Tensor
    joints_3d: Tensor
    has_3d: Tensor
    flip: Tensor
    rot: Tensor
    scale: Tensor
    keys: list[str]
    datasets: list[str]
    wholebody: Tensor | None = None
    has_wholebody: Tensor | None = None
    mask: Tensor | None = None
    has_mask: Tensor | None = None
    parts: Tensor | None = None
    has_parts: Tensor | None = None
    parts_names: list[str] | None = None
    parsing: Tensor | None = None
    has_parsing: Tensor | None = None
    inputs: tuple[Tensor, ...] = ()

    @classmethod
    def from_items(cls, items: dict, device: torch.device, ignore_3d: tuple[str, ...] = (),
                   head: Head = HEADS[DEFAULT_HEAD]) -> "Batch":
        """From a collated reader batch; examples of ``ignore_3d`` datasets lose their 3D joints and SMPL; the
        network's inputs are ``head``'s."""
        keep = torch.tensor([d not in ignore_3d for d in items["dataset"]])

        def dev(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=True)

        return cls(img=dev(items["img"]), keypoints=dev(items["keypoints"]), gt_pose=dev(items["pose"]),
                   gt_betas=dev(items["betas"]), has_smpl=dev(items["has_smpl"] & keep),
                   joints_3d=dev(items["joints_3d"]), has_3d=dev(items["has_joints_3d"] & keep),
                   flip=dev(items["flip"]), rot=dev(items["rot"]), scale=dev(items["scale"]),
                   keys=list(items["key"]), datasets=list(items["dataset"]),
                   wholebody=dev(items["wholebody"]), has_wholebody=dev(items["has_wholebody"]),
                   mask=dev(items["mask"]), has_mask=dev(items["has_mask"]), parts=dev(items["parts"]),
                   has_parts=dev(items["has_parts"]), parts_names=list(items["parts_names"]),
                   parsing=dev(items["parsing"]), has_parsing=dev(items["has_parsing"]),
                   inputs=head.arguments(items, device))


@dataclass
class Prediction:
    """The network's output and what follows from it. rotmat (B, 24, 3, 3), betas (B, NB), camera (B, 3)
    [s, tx, ty]; cam_t (B, 3) metres; joints (B, 49, 3) and vertices (B, V, 3) model frame, metres;
    keypoints_2d (B, 49, 2) normalised. Whole-body heads only (else None): hand_rotmat (B, 30, 3, 3), jaw_rotmat
    (B, 1, 3, 3), expression (B, NE); wholebody_2d (B, 161, 2) normalised, the whole body's points projected.
    mesh (B, V, 3): the head's own mesh, model frame, m (the graphcmr head's graph; else None). volume_joints
    (B, 24, 3): the volumetric head's soft-argmax joints (`training.volumetric`; else None)."""

    rotmat: Tensor
    betas: Tensor
    camera: Tensor
    cam_t: Tensor
    joints: Tensor
    vertices: Tensor
    keypoints_2d: Tensor
    hand_rotmat: Tensor | None = None
    jaw_rotmat: Tensor | None = None
    expression: Tensor | None = None
    wholebody_2d: Tensor | None = None
    mesh: Tensor | None = None
    volume_joints: Tensor | None = None


@dataclass
class BatchFits:
    """Fits of a batch in its augmented frame: pose (B, 72), betas (B, NB), cam_t (B, 3); loss (B,) SPIN's mean
    reprojection loss (px²) against the batch's keypoints (inf where there is no fit); joints (B, 49, 3) model
    frame, m; quality (B, len(FILTER_COLUMNS)) what a fit filter judges each fit by (`fits.quality`; NaN = null).
    Whole-body runs (else None): wholebody, the fits' whole-body parameters in the augmented frame (zeros where
    a fit has none); has_wholebody (B,) bool: the fit is a whole-body fit; expression_ok (B,) bool: and its
    expression is of this crop's face (not mirrored)."""

    pose: Tensor
    betas: Tensor
    cam_t: Tensor
    loss: Tensor
    joints: Tensor
    quality: np.ndarray
    wholebody: WholeBodyParams | None = None
    has_wholebody: Tensor | None = None
    expression_ok: Tensor | None = None


@dataclass
class LoopFits:
    """The fits a step made, one per example (`SMPLifyResult`'s fields that the step reads): pose (B, 72), betas
    (B, NB), cam_t (B, 3), loss (B,) px² (SPIN's, 49 joints), joints (B, 49, 3) model frame, iterations (B,);
    wholebody (B rows, zeros for body-only fits) and is_wholebody (B,) bool: which are SMPLify-X's."""

    pose: Tensor
    betas: Tensor
    cam_t: Tensor
    loss: Tensor
    joints: Tensor
    iterations: np.ndarray
    wholebody: WholeBodyParams
    is_wholebody: Tensor


@dataclass
class Targets:
    """What the regressor is supervised with: pose (B, 72) axis-angle, betas (B, NB); valid (B,): the pose and
    betas losses use this example; has_smpl, has_3d (B,); filtered (B,): fits good enough by SPIN's threshold that
    the run's fit filter kept from supervising. Whole-body runs (else None): wholebody, the hand, jaw and
    expression targets; wholebody_valid (B,): the hand and jaw losses use this example (its chosen fit is a
    whole-body fit that supervises by the same rule as the body's); expression_valid (B,): and its expression
    is of this crop's face."""

    pose: Tensor
    betas: Tensor
    valid: Tensor
    has_smpl: Tensor
    has_3d: Tensor
    filtered: Tensor
    wholebody: WholeBodyParams | None = None
    wholebody_valid: Tensor | None = None
    expression_valid: Tensor | None = None


def autocast_for(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context for the network: bfloat16 on CUDA with amp "auto"/"bf16", float16 with "fp16"."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


# 1 ------------------------------------------------------------------------------------------------------------
def predict(model: torch.nn.Module, body: BodyModel, inputs: Tensor | tuple[Tensor, ...],
            autocast: contextlib.AbstractContextManager, wholebody: WholeBodyModel | None = None) -> Prediction:
    """Run the regressor (under ``autocast``) and the body model (float32) on a batch: ``inputs`` its network's
    arguments (`training.heads.Head.arguments`; a tensor: images, the hmr head's); a regressor with whole-body
    heads is posed by ``wholebody`` (the same model's whole body)."""
    with autocast:
        out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    cam_t = weak_perspective_to_translation(out.camera)
    if out.hand_rotmat is None:
        smpl = body(out.betas, out.rotmat[:, 1:], out.rotmat[:, :1], pose2rot=False)
        return Prediction(rotmat=out.rotmat, betas=out.betas, camera=out.camera, cam_t=cam_t, joints=smpl.joints,
                          vertices=smpl.vertices, keypoints_2d=project_normalised(smpl.joints, cam_t),
                          mesh=out.vertices, volume_joints=out.volume_joints)
    posed = wholebody.forward_rotmat(out.betas, out.expression, rotmats_of(out.rotmat, out.hand_rotmat,
                                                                           out.jaw_rotmat))
    joints = posed.points[:, :NUM_JOINTS]
    return Prediction(rotmat=out.rotmat, betas=out.betas, camera=out.camera, cam_t=cam_t, joints=joints,
                      vertices=posed.vertices, keypoints_2d=project_normalised(joints, cam_t),
                      hand_rotmat=out.hand_rotmat, jaw_rotmat=out.jaw_rotmat, expression=out.expression,
                      wholebody_2d=project_normalised(posed.points, cam_t))


# 2 ------------------------------------------------------------------------------------------------------------
def stored_fits(store: FitsStore, smplify: SMPLify, keys: list[str], keypoints_px: Tensor, rot: Tensor,
                flip: Tensor, wholebody: WholeBodyModel | None = None) -> BatchFits:
    """The stored best fits of ``keys`` in the batch's augmented frame (SPIN's FitsDict read: rotate, then flip),
    with SPIN's least-squares camera and their reprojection loss against ``keypoints_px`` (fit-frame px, on
    SMPLify's device), and their quality as the store keeps it. Keys without a fit get the mean pose and loss inf
    (any new fit wins). With ``wholebody`` (a whole-body run, on SMPLify's device) the fits' whole-body parameters
    too, mirrored where flipped, and the fits posed with them (a body-only fit: flat hands, neutral face)."""
    device = keypoints_px.device
    pose_c, betas, _, known = (to_device(t, device) for t in store.lookup(keys))   # uploads that do not sync
    pose = augment_pose(pose_c, rot.to(device), flip.to(device))
    params = has = expression_ok = None
    with torch.no_grad():
        if wholebody is None:
            joints = smplify.body(betas, pose[:, 3:], pose[:, :3]).joints
        else:
            stored, has = store.lookup_wholebody(keys)
            params = augment_wholebody(WholeBodyParams(stored.hand_pose, stored.jaw_pose, stored.eye_pose,
                                                       stored.expression).to(device), flip.to(device))
            has = to_device(has, device)
            expression_ok = has & ~flip.to(device)
            joints = wholebody.forward_full(full_pose_of(pose, params), betas, params.expression).points[:, :NUM_JOINTS]
    cam_t = estimate_translation(joints, keypoints_px)
    center = torch.full((len(keys), 2), FIT_CENTER, device=device)
    if wholebody is None:
        loss = smplify.fitting_loss(pose, betas, cam_t, center, keypoints_px).mean(-1)
    else:
        loss = smplify.joints_loss(joints, cam_t, center, keypoints_px).mean(-1)
    loss = torch.where(known, loss, torch.full_like(loss, float("inf")))
    return BatchFits(pose=pose, betas=betas, cam_t=cam_t, loss=loss, joints=joints, quality=store.quality(keys),
                     wholebody=params, has_wholebody=has, expression_ok=expression_ok)


# 3 ------------------------------------------------------------------------------------------------------------
def fit_in_the_loop(smplify: SMPLify, pred: Prediction, keypoints_px: Tensor,
                    rows: Tensor | None = None) -> SMPLifyResult:
    """SMPLify on the batch's keypoints (fit-frame px, SMPLify's device) from the detached prediction: pose as
    axis-angle, betas, and the translation of the weak-perspective camera (also SMPLify's depth anchor). rows: the
    examples to fit (indices (R,) on SMPLify's device; None: all); the result has one fit per row."""
    device = keypoints_px.device
    batch = keypoints_px.shape[0]
    pose = rotmat_to_axis_angle(pred.rotmat.detach().float()).reshape(batch, 72).to(device)
    betas, cam_t = pred.betas.detach().float().to(device), pred.cam_t.detach().float().to(device)
    if rows is not None:
        keypoints_px, pose, betas, cam_t = keypoints_px[rows], pose[rows], betas[rows], cam_t[rows]
    center = torch.full((keypoints_px.shape[0], 2), FIT_CENTER, device=device)
    return smplify(keypoints_px, pose, betas, cam_t, center, start="estimate")


def fit_from_mean(smplify: SMPLify, keypoints_px: Tensor) -> SMPLifyResult:
    """SMPLify on the batch's keypoints (fit-frame px, SMPLify's device) from SPIN's mean start, as a seed fit is
    made (`fitting.smplify.mean_pose_start`, ``start="mean"``): the network plays no part. The fits of the control
    arm of SPIN's ablation (``TrainConfig.loop_start="mean"``); one fit per example, as `fit_in_the_loop`."""
    center = torch.full((keypoints_px.shape[0], 2), FIT_CENTER, device=keypoints_px.device)
    pose, betas, cam_t = mean_pose_start(smplify.body, keypoints_px, center=center)
    return smplify(keypoints_px, pose, betas, cam_t, center, start="mean")


def fit_wholebody_in_the_loop(fitter: SMPLifyX, smplify: SMPLify, pred: Prediction, batch: Batch,
                              keypoints_px: Tensor) -> LoopFits:
    """A whole-body run's fits in the loop, from the detached prediction: SMPLify on the examples without
    whole-body keypoints (`fit_in_the_loop`), SMPLify-X (``fitter``, fast mode, ``start=SMPLifyXStart``) on those
    with them (their keypoints in fit-frame px, on SMPLify's device); each example is fitted by one of the two.
    Every fit is scored by SPIN's loss on its 49 body joints against ``keypoints_px`` (what every fit is compared
    by). Returns the batch's fits, one per example."""
    device = keypoints_px.device
    batch_size = len(batch.keys)
    wholebody = batch.has_wholebody.to(device)
    zeros = WholeBodyParams(*(torch.zeros(batch_size, n, device=device)
                              for n in (NUM_HAND_POSE, NUM_JAW_POSE, NUM_EYE_POSE, pred.expression.shape[1])))
    out = LoopFits(pose=torch.zeros(batch_size, 72, device=device),
                   betas=torch.zeros(batch_size, pred.betas.shape[1], device=device),
                   cam_t=torch.zeros(batch_size, 3, device=device), loss=torch.zeros(batch_size, device=device),
                   joints=torch.zeros(batch_size, NUM_JOINTS, 3, device=device),
                   iterations=np.zeros(batch_size, np.int64), wholebody=zeros, is_wholebody=wholebody.clone())
    # Which examples each fitter gets is read to the host (one read: the split is the point, SMPLify-X on the
    # whole-body examples only is the step's dearest part), then the index tensors go back up without waiting.
    (split,) = to_host(wholebody)
    host_rows = np.flatnonzero(~split)
    if len(host_rows):
        rows = to_device(torch.from_numpy(host_rows), device)
        body = fit_in_the_loop(smplify, pred, keypoints_px, rows)
        out.pose[rows], out.betas[rows], out.cam_t[rows] = body.pose, body.betas, body.cam_t
        out.loss[rows], out.joints[rows] = body.loss, body.joints
        out.iterations[host_rows] = body.iterations
    host_rows = np.flatnonzero(split)
    if not len(host_rows):
        return out
    rows = to_device(torch.from_numpy(host_rows), device)
    with torch.no_grad():
        rotmats = rotmats_of(pred.rotmat.detach().float(), pred.hand_rotmat.detach().float(),
                             pred.jaw_rotmat.detach().float())
    start = rotmat_to_axis_angle(rotmats).reshape(batch_size, -1).to(device)[rows]
    center = torch.full((len(rows), 2), FIT_CENTER, device=device)
    result = fitter(fit_frame_px(batch.wholebody.to(device)[rows]), center, start=SMPLifyXStart(
        start, pred.betas.detach().float().to(device)[rows], pred.expression.detach().float().to(device)[rows],
        pred.cam_t.detach().float().to(device)[rows]))
    pose, params = split_full_pose(result.full_pose, result.expression)
    joints = result.points[:, :NUM_JOINTS]
    out.pose[rows], out.betas[rows], out.cam_t[rows], out.joints[rows] = pose, result.betas, result.cam_t, joints
    out.loss[rows] = smplify.joints_loss(joints, result.cam_t, center, keypoints_px[rows]).mean(-1)
    for mine, theirs in zip(out.wholebody.values(), params.values()):
        mine[rows] = theirs
    out.iterations[host_rows] = result.extras["iterations"]
    return out


# 4 ------------------------------------------------------------------------------------------------------------
def update_fits(store: FitsStore, smplify: SMPLify, batch: Batch, keypoints_px: Tensor, stored: BatchFits,
                new: SMPLifyResult | LoopFits, provenance: FitProvenance,
                wholebody: WholeBodyModel | None = None) -> tuple[BatchFits, Tensor, int]:
    """SPIN's choice and write-back. Returns (the better fit per example in the augmented frame, the examples
    whose new fit won (B,) bool, the fits the store kept).

    A winning fit is undone to the canonical frame, scored there with its own camera carried over
    (`training.geometry.canonical_translation`), given its quality record (`fitting.quality.fit_quality` of its
    canonical joints; its candidates: itself and the stored fit it beat, where there was one, compared as the step
    compared them, in the augmented frame) and offered to the store, which keeps it when that canonical loss is
    below the stored one (the table's rule): SPIN's augmented-frame choice decides the supervision, the canonical
    loss decides what the table holds. The chosen fits carry the quality of the fit each is (the new record where
    the new fit won).

    Whole-body runs (``wholebody``, on SMPLify's device; ``new`` a `LoopFits`): the chosen fits carry their
    whole-body parameters; a winning whole-body fit is posed with them, written as a whole-body fit with its
    hands' and face's reprojection (canonical, px), and not written where its example was flipped (module
    docstring).

    `fits.store.StaleFitsError`, before anything is offered, where a stored fit does not score on its sample's
    keypoints what the table says (`fits.store.stale_fits`)."""
    update = new.loss < stored.loss                                     # strict, as SPIN
    chosen = BatchFits(pose=torch.where(update[:, None], new.pose, stored.pose),
                       betas=torch.where(update[:, None], new.betas, stored.betas),
                       cam_t=torch.where(update[:, None], new.cam_t, stored.cam_t),
                       loss=torch.where(update, new.loss, stored.loss),
                       joints=torch.where(update[:, None, None], new.joints, stored.joints),
                       quality=stored.quality.copy())
    write = update & fittable(batch, update.device)  # a fit to next to no keypoints is its start, at loss ~0
    if wholebody is not None:
        chosen.wholebody = new.wholebody.where(update, stored.wholebody)
        chosen.has_wholebody = torch.where(update, new.is_wholebody, stored.has_wholebody)
        chosen.expression_ok = torch.where(update, new.is_wholebody, stored.expression_ok)
        write = write & ~(new.is_wholebody & batch.flip.to(update.device))
    # Every example is undone and scored, and the winners are picked on the host after the one transfer below:
    # picking them first (torch.nonzero) would be one more host sync, to save a few batched ops on the losers.
    # The losers are scored on their stored fit (finite, where a failed new fit may not be) and then dropped.
    device = keypoints_px.device
    rot, flip, scale = (t.to(device) for t in (batch.rot, batch.flip, batch.scale))
    take = write[:, None]
    pose = canonical_pose(torch.where(take, new.pose, stored.pose), rot, flip)
    betas = torch.where(take, new.betas, stored.betas)
    fit_joints = torch.where(take[:, :, None], new.joints, stored.joints)     # augmented frame, for the spread
    wholebody_values: tuple[Tensor, ...] = ()
    with torch.no_grad():
        cam_t = canonical_translation(torch.where(take, new.cam_t, stored.cam_t), rest_root(smplify.body, betas),
                                      rot, flip, scale)
        keypoints = fit_frame_px(canonical_keypoints(batch.keypoints.to(device), rot, flip, scale))
        center = torch.full((len(batch.keys), 2), FIT_CENTER, device=device)
        if wholebody is None:
            joints = smplify.posed_joints(pose, betas)
        else:
            params = augment_wholebody(new.wholebody.where(write, stored.wholebody), flip)  # only body-only fits flip
            points = wholebody.forward_full(full_pose_of(pose, params), betas, params.expression).points
            joints = points[:, :NUM_JOINTS]
            parts = wholebody_part_reprojection(
                project(points, cam_t, smplify.config.focal_length, center),
                fit_frame_px(canonical_keypoints(batch.wholebody.to(device), rot, flip, scale)),
                wholebody.provided)
            wholebody_values = (*params.values(), parts, new.is_wholebody)
        reprojection = smplify.joints_loss(joints, cam_t, center, keypoints)
        stale = stale_fits(store, smplify, batch.keys, keypoints, skip=stored.has_wholebody)
        priors = (smplify.prior(pose[:, 3:]), angle_prior(pose[:, 3:]), shape_prior(betas))
        other = torch.isfinite(stored.loss)[:, None]                       # the stored fit it beat, if any
        quality = replace(fit_quality(joints, cam_t, smplify.config.focal_length, center, keypoints),
                          candidates=1 + other[:, 0].long(),
                          candidate_spread=candidate_spread(fit_joints, stored.joints[:, None], other))
    # the write-back's one device-to-host transfer (one host sync on a GPU)
    host = to_host(*stale, write, pose, betas, cam_t, reprojection, *priors,
                   *(getattr(quality, f.name) for f in fields(quality)), *wholebody_values)
    if host[0].any():
        raise stale_fits_error(store, batch.keys, *host[:3], fix="train with a new --fits table (seeded from these "
                               "shards), or on the shard set the table was made from")
    host = host[3:]
    rows = np.flatnonzero(host[0])
    if not len(rows):
        return chosen, update, 0
    values = [h[rows] for h in host[1:]]
    fit, record, extra = values[:7], type(quality)(*values[7:11]), values[11:]
    keys = [batch.keys[i] for i in rows]
    if wholebody is None:
        fits = fits_batch(keys, fit[0], fit[1], provenance, cam_t=fit[2], reprojection_loss=fit[3],
                          pose_prior=fit[4], angle_prior=fit[5], shape_prior=fit[6], iterations=new.iterations,
                          quality=record)
    else:
        fits = _wholebody_rows(keys, fit, new.iterations[rows], record, extra[:-2], extra[-2], extra[-1], provenance)
    columns = columns_of(fits)
    chosen.quality[rows] = np.stack([columns[name] for name in FILTER_COLUMNS], -1)
    return chosen, update, store.offer(fits)


def _wholebody_rows(keys: list[str], host: list[np.ndarray], iterations: np.ndarray, quality, params: list[np.ndarray],
                    parts: np.ndarray, is_wholebody: np.ndarray, provenance: FitProvenance) -> pa.Table:
    """The fits rows of a whole-body run's winning fits, in ``keys`` order: whole-body rows (`WholeBodyFit`) where
    ``is_wholebody``, body-only rows elsewhere. host: canonical pose, betas, cam_t, reprojection, priors; quality:
    their records; params (hand, jaw, eye poses, expression), parts (R, 3) px: their whole-body parameters and
    parts; all numpy, one row per key."""
    values = [*params, parts]
    tables = []
    for whole in (True, False):
        pick = np.flatnonzero(is_wholebody == whole)
        if not len(pick):
            continue
        record = type(quality)(**{f: getattr(quality, f)[pick] for f in quality.__dataclass_fields__})
        tables.append(fits_batch([keys[i] for i in pick], *(h[pick] for h in host[:2]), provenance,
                                 cam_t=host[2][pick], reprojection_loss=host[3][pick], pose_prior=host[4][pick],
                                 angle_prior=host[5][pick], shape_prior=host[6][pick], iterations=iterations[pick],
                                 quality=record,
                                 wholebody=WholeBodyFit(*(v[pick] for v in values)) if whole else None))
    order = {key: i for i, key in enumerate(keys)}
    table = pa.concat_tables(tables)
    return table.take(pa.array(np.argsort([order[k] for k in table["key"].to_pylist()], kind="stable")))


# 5 ------------------------------------------------------------------------------------------------------------
def fittable(batch: Batch, device: torch.device) -> Tensor:
    """(B,) bool on ``device``: the examples whose keypoints show the `core.joints.MIN_FIT_JOINTS` joints a fit needs
    (`fits.seeding.unfittable`, the seeding's rule). SMPLify fitted to fewer returns its start at a loss near 0,
    which would win every comparison: such a fit is neither written back nor a target (no host sync)."""
    return joints_shown(batch.keypoints[..., 2].to(device) > 0) >= MIN_FIT_JOINTS


def supervision(chosen: BatchFits, batch: Batch, threshold: float,
                fit_filter: FitFilter = FitFilter()) -> Targets:
    """SPIN's targets from the chosen fits: any |β| > 3 zeroes all betas of that fit (after the write-back, so the
    table keeps them); ground-truth SMPL replaces the fit where the dataset has it; a fit supervises pose and
    betas only when its loss is below ``threshold`` (px²) and it passes ``fit_filter`` (its quality record), or it
    is ground truth. Whole-body runs: a chosen whole-body fit supervises hands and jaw by the same rule (ground
    truth SMPL has neither), its expression only where it is of the crop's face."""
    device = batch.gt_pose.device
    pose, betas, loss = chosen.pose.to(device), chosen.betas.to(device), chosen.loss.to(device)
    extreme = (betas.abs() > BETAS_EXTREME_SIGMA).any(-1, keepdim=True)
    betas = torch.where(extreme, torch.zeros_like(betas), betas)
    has_smpl = batch.has_smpl
    pose = torch.where(has_smpl[:, None], batch.gt_pose, pose)
    betas = torch.where(has_smpl[:, None], batch.gt_betas[:, : betas.shape[1]], betas)
    columns = {name: chosen.quality[:, i] for i, name in enumerate(FILTER_COLUMNS)}
    passes = to_device(torch.from_numpy(fit_filter.keep(columns)), device)   # judged on the host
    good = (loss < threshold) & fittable(batch, device)
    valid = (good & passes) | has_smpl
    targets = Targets(pose=pose, betas=betas, valid=valid, has_smpl=has_smpl, has_3d=batch.has_3d,
                      filtered=good & ~passes & ~has_smpl)
    if chosen.wholebody is not None:
        targets.wholebody = chosen.wholebody.to(device)
        targets.wholebody_valid = chosen.has_wholebody.to(device) & good & passes
        targets.expression_valid = targets.wholebody_valid & chosen.expression_ok.to(device)
    return targets


# 6 ------------------------------------------------------------------------------------------------------------
def compute_losses(pred: Prediction, targets: Targets, batch: Batch, weights: LossWeights,
                   body: BodyModel, point_weights: Tensor | None = None,
                   mask_loss: MaskConsistency | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """SPIN's total loss ``scale · (shape·L_shape + kp·(L_2d + L_3d) + pose·L_pose + betas·L_betas + cam·L_cam)``
    and its terms and the total for the log, detached 0-d tensors on the batch's device (nothing is read to the host
    here: the log reads them once per row). A head with its own mesh (``pred.mesh``: graphcmr) adds GraphCMR's
    ``graph_shape·L_graph_shape + kp·(L_graph_2d + L_graph_3d)`` (`training.graphcmr.mesh_losses`). Whole-body heads add ``kp·L_wholebody + hand_pose·L_hands +
    jaw_pose·L_jaw + expression·L_expression`` (`training.losses`), the 2D term weighted per point by
    ``point_weights`` (161,) (`training.wholebody.part_weights`). With ``mask_loss`` (the body model's faces, the
    grid and, for DSR-MC, the faces' groups: `training.mask_loss.MaskConsistency`), the predicted meshes are drawn
    once for ``+ mask·L_mask`` over the examples with a mask, ``+ dsr_mc·L_dsr_mc`` over those with part labels and
    ``+ dsr_c·L_dsr_c`` over those with a parsing or a mask (`training.dsr_loss`), each where its weight is > 0
    (the terms ``mask``, ``dsr_mc``, ``dsr_c``, and ``<term>_samples``: the share of the batch each reads). The
    volumetric head adds ``kp·(L_volume_2d + L_volume_3d)`` on its soft-argmax joints (`training.losses`)."""
    batch_size = targets.pose.shape[0]
    target_rotmat = axis_angle_to_rotmat(targets.pose.reshape(batch_size, 24, 3))
    terms = {
        "keypoints_2d": keypoint_2d_loss(pred.keypoints_2d, batch.keypoints, weights.openpose, weights.gt),
        "keypoints_3d": keypoint_3d_loss(pred.joints, batch.joints_3d, targets.has_3d),
        "pose": pose_loss(pred.rotmat, target_rotmat, targets.valid),
        "betas": betas_loss(pred.betas, targets.betas, targets.valid),
        "camera": camera_loss(pred.camera),
    }
    total = (weights.keypoint * (terms["keypoints_2d"] + terms["keypoints_3d"]) + weights.pose * terms["pose"]
             + weights.betas * terms["betas"] + weights.camera * terms["camera"])
    if weights.shape > 0 or pred.mesh is not None:  # one more body-model pass, skipped at SPIN's weight 0
        with torch.no_grad():
            target_vertices = body(targets.betas, targets.pose[:, 3:], targets.pose[:, :3]).vertices
    if weights.shape > 0:
        terms["shape"] = shape_loss(pred.vertices, target_vertices, targets.valid)
        total = total + weights.shape * terms["shape"]
    if pred.mesh is not None:  # the graphcmr head's graph mesh: GraphCMR's losses of it
        terms |= mesh_losses(pred.mesh, pred.cam_t, target_vertices, targets.valid, batch.keypoints,
                             batch.joints_3d, targets.has_3d, body, weights.openpose, weights.gt)
        total = (total + weights.graph_shape * terms["graph_shape"]
                 + weights.keypoint * (terms["graph_keypoints_2d"] + terms["graph_keypoints_3d"]))
    if mask_loss is not None and max(weights.mask, weights.dsr_mc, weights.dsr_c) > 0:
        # one render of the batch for the three (skipped at their default weights 0)
        picture = mask_loss.draw(pred.vertices, pred.cam_t, parts=weights.dsr_mc > 0)
        if weights.mask > 0:
            terms["mask"] = mask_loss.loss(picture, batch.mask, batch.has_mask)
            terms["mask_samples"] = batch.has_mask.float().mean()
            total = total + weights.mask * terms["mask"]
        if weights.dsr_mc > 0:
            segments = smpl_part_ids(batch.parts, batch.parts_names, batch.keys)
            terms["dsr_mc"] = dsr_mc_loss(picture.parts, segments, batch.has_parts)
            terms["dsr_mc_samples"] = batch.has_parts.float().mean()
            total = total + weights.dsr_mc * terms["dsr_mc"]
        if weights.dsr_c > 0:
            region, has_region = clothed_region(batch.mask, batch.has_mask, batch.parsing, batch.has_parsing)
            terms["dsr_c"] = dsr_c_loss(picture.mask, region, has_region)
            terms["dsr_c_samples"] = has_region.float().mean()
            total = total + weights.dsr_c * terms["dsr_c"]
    if pred.volume_joints is not None:
        target, confidence = volume_targets(batch.keypoints, batch.joints_3d)
        terms["volume_2d"] = volume_2d_loss(pred.volume_joints, target, confidence[..., 0])
        terms["volume_3d"] = volume_3d_loss(pred.volume_joints, target, confidence[..., 1], targets.has_3d)
        total = total + weights.keypoint * (terms["volume_2d"] + terms["volume_3d"])
    if pred.hand_rotmat is not None:
        wb = targets.wholebody
        terms["keypoints_wholebody"] = wholebody_keypoint_loss(pred.wholebody_2d, batch.wholebody,
                                                               batch.has_wholebody, point_weights.to(batch.wholebody))
        terms["hand_pose"] = pose_loss(pred.hand_rotmat, axis_angle_to_rotmat(wb.hand_pose.reshape(batch_size, -1, 3)),
                                       targets.wholebody_valid)
        terms["jaw_pose"] = pose_loss(pred.jaw_rotmat, axis_angle_to_rotmat(wb.jaw_pose.reshape(batch_size, 1, 3)),
                                      targets.wholebody_valid)
        terms["expression"] = betas_loss(pred.expression, wb.expression, targets.expression_valid)
        total = (total + weights.keypoint * terms["keypoints_wholebody"] + weights.hand_pose * terms["hand_pose"]
                 + weights.jaw_pose * terms["jaw_pose"] + weights.expression * terms["expression"])
    total = weights.scale * total
    # detached device tensors, read by the log once per row (`training.step_stats`): a float() here was a host sync
    # per term per step
    return total, {name: value.detach() for name, value in terms.items()} | {"total": total.detach()}
