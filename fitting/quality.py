"""A fit's quality record: how well it matches its keypoints, part by part; whether it faces the way they say; how
much the candidates it was chosen among disagreed. (Its pose-prior energy, the fourth part of the record, is
SMPLify's own `fitting.priors.MaxMixturePrior` value, which every fit already carries: `SMPLifyResult.pose_prior`.)

Computed from what a fit has at hand, batched, without evaluating the body model again: the fit's posed joints
(B, 49, 3), model frame, metres (`SMPLifyResult.joints`, or the caller's), projected with the camera it was fitted
with (translation (B, 3) m; focal (B, 2) and principal point (B, 2) in **fit-frame px**, the 224 px crop of
`core.frames`: SPIN's f = 5000 camera, or the image's camera written in those px, `image_camera_in_fit_frame`), and
the keypoints (B, 49, 3) in the same px with their confidences. So the numbers of every fit, of either frame and
any image size, are in one unit and compare.

* **Reprojection per body part** (`core.joints.BODY_PARTS`, over the 24 dataset joints `core.joints.J24_NAMES`,
  each in exactly one part): the confidence-weighted mean distance, px, between a part's projected joints and its
  keypoints with confidence > 0; NaN where the part has no such keypoint (nothing to measure). The OpenPose joints
  are not used: they are detections of other points (kinematic hips), and where a dataset annotates, J24 holds it.
* **Facing** (`facing`): the torso's handedness in the image. With the across vector a = ½ ((L shoulder - R
  shoulder) + (L hip - R hip)) and the up vector u = mid-shoulders - mid-hips (px), h = 2 (a × u) / (|a|² + |u|²)
  lies in [-1, 1]: its sign says which side of the person faces the camera (a horizontal mirror, i.e. the body
  turned around, flips it; an in-plane rotation does not), its size how clearly (about ±0.9 for a frontal view of
  an adult torso, 0 side-on or seen from above, where 2D keypoints cannot tell front from back). ``facing`` = the
  keypoints' h times the sign of the fit's projected h: positive, the fit faces the way the keypoints say, by as
  much as they say it; negative, it faces the other way; near 0, the keypoints cannot tell. (SMPLify-X decides its
  front/back ambiguity on the 2D shoulder width for the same reason.) The J24 shoulders and hips when all four
  keypoints are confident, else the OpenPose ones (the fit's same four joints), else NaN.
* **Candidates' disagreement** (`candidate_spread`): a fit chosen among K candidates (several starts; the stored fit
  and the new one in the trainer) carries the largest PA-MPJPE, mm, between it and any other candidate, over the 14
  joints `core.joints.EVAL_J14` of the posed joints (`core.metrics.pa_mpjpe`, the evaluation's alignment); NaN with
  one candidate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.camera import project
from core.joints import BODY_PARTS, EVAL_J14, NUM_JOINTS, indices
from core.metrics import pa_mpjpe
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_PARTS, wholebody_indices

# The whole-body parts beyond the body, in the fits table's order (`fits.schema.WHOLEBODY_PARTS`)
WHOLEBODY_EXTRA_PARTS: tuple[str, ...] = tuple(part for part in WHOLEBODY_PARTS if part != "body")

PART_NAMES: tuple[str, ...] = tuple(BODY_PARTS)
# The torso's four corners for the facing check: (left shoulder, right shoulder, left hip, right hip), J24 first.
FACING_JOINTS: tuple[tuple[str, ...], ...] = (
    ("Left Shoulder", "Right Shoulder", "Left Hip", "Right Hip"),
    ("OP LShoulder", "OP RShoulder", "OP LHip", "OP RHip"),
)
SPREAD_JOINTS: tuple[str, ...] = EVAL_J14

_PART_OF = torch.zeros(len(BODY_PARTS), NUM_JOINTS)
for _p, _names in enumerate(BODY_PARTS.values()):
    _PART_OF[_p, indices(_names)] = 1.0
_FACING = [torch.as_tensor(indices(names)) for names in FACING_JOINTS]
_SPREAD = torch.as_tensor(indices(SPREAD_JOINTS))


@dataclass(frozen=True)
class FitQuality:
    """The quality record of a batch of fits (module docstring); NaN where a value cannot be measured.

    part_reprojection: (B, len(BODY_PARTS)) px, fit frame, in `PART_NAMES` order.
    facing: (B,) in [-1, 1]: > 0 the fit faces the way the keypoints say.
    candidates: (B,) int64, how many candidates the fit was chosen among (1: itself only).
    candidate_spread: (B,) mm, largest PA-MPJPE to another candidate (NaN with one candidate)."""

    part_reprojection: Tensor
    facing: Tensor
    candidates: Tensor
    candidate_spread: Tensor


def part_reprojection(projected: Tensor, keypoints: Tensor) -> Tensor:
    """Per body part (`core.joints.BODY_PARTS`) the confidence-weighted mean px distance (B, P) between projected
    joints (B, 49, 2) and keypoints (B, 49, 3) (px + confidence; confidence <= 0: not observed); NaN where a part
    has no observed keypoint."""
    conf = keypoints[..., 2].clamp_min(0)
    dist = (projected - keypoints[..., :2]).norm(dim=-1)                                # (B, 49)
    member = _PART_OF.to(dtype=dist.dtype, device=dist.device)                          # (P, 49)
    weight = conf @ member.T                                                            # (B, P)
    total = (conf * dist) @ member.T
    return torch.where(weight > 0, total / weight.clamp_min(1e-12), torch.full_like(total, float("nan")))


def handedness(points: Tensor, corners: Tensor) -> Tensor:
    """The torso's signed handedness h (B,) in [-1, 1] (module docstring) of 2D points (B, N, 2) px, from the
    indices (4,) of the left shoulder, right shoulder, left hip, right hip; 0 for a degenerate torso."""
    ls, rs, lh, rh = points[:, corners].unbind(1)
    across = 0.5 * ((ls - rs) + (lh - rh))
    up = 0.5 * (ls + rs) - 0.5 * (lh + rh)
    cross = across[:, 0] * up[:, 1] - across[:, 1] * up[:, 0]
    norm = across.square().sum(-1) + up.square().sum(-1)
    return torch.where(norm > 0, 2 * cross / norm.clamp_min(1e-12), torch.zeros_like(cross))


def facing(projected: Tensor, keypoints: Tensor) -> Tensor:
    """``facing`` (B,) of fits whose joints project to ``projected`` (B, 49, 2) px, against keypoints (B, 49, 3):
    the keypoints' handedness times the sign of the fit's (module docstring); NaN where neither the J24 nor the
    OpenPose shoulders and hips are all confident."""
    out = torch.full(projected.shape[:1], float("nan"), dtype=projected.dtype, device=projected.device)
    for corners in reversed(_FACING):  # the J24 corners, where confident, override the OpenPose ones
        corners = corners.to(projected.device)
        seen = (keypoints[:, corners, 2] > 0).all(-1)
        value = handedness(keypoints[..., :2], corners) * torch.sign(handedness(projected, corners))
        out = torch.where(seen, value, out)
    return out


def candidate_spread(joints: Tensor, candidates: Tensor, present: Tensor) -> Tensor:
    """The largest PA-MPJPE, mm, over the 14 `SPREAD_JOINTS`, between each fit's joints (B, 49, 3) m and its other
    candidates' (B, K, 49, 3) m where ``present`` (B, K) bool; NaN where none is present."""
    batch, k = present.shape
    if k == 0:
        return torch.full((batch,), float("nan"), dtype=joints.dtype, device=joints.device)
    idx = _SPREAD.to(joints.device)
    best = joints[:, idx][:, None].expand(-1, k, -1, -1).reshape(batch * k, len(idx), 3)
    other = candidates[:, :, idx].reshape(batch * k, len(idx), 3)
    error = 1000.0 * pa_mpjpe(other, best).reshape(batch, k)
    error = torch.where(present, error, torch.full_like(error, float("-inf"))).max(-1).values
    return torch.where(present.any(-1), error, torch.full_like(error, float("nan")))


def fit_quality(joints: Tensor, cam_t: Tensor, focal: Tensor, center: Tensor, keypoints: Tensor, *,
                candidates: Tensor | None = None, present: Tensor | None = None) -> FitQuality:
    """The quality record (`FitQuality`) of fits with posed joints (B, 49, 3) model frame, m, placed at ``cam_t``
    (B, 3) m in a camera of ``focal`` (B, 2) or scalar px and principal point ``center`` (B, 2) px, all in fit-frame
    px, against ``keypoints`` (B, 49, 3) fit-frame px + confidence.

    candidates: (B, K, 49, 3) joints, model frame, m, of the other candidates each fit was chosen among (None: one
      candidate); present: (B, K) bool, which of them exist (default all). Nothing passed in is modified."""
    with torch.no_grad():
        projected = project(joints, cam_t, focal, center)
        if candidates is None:
            candidates = joints.new_zeros(joints.shape[0], 0, *joints.shape[1:])
        if present is None:
            present = torch.ones(candidates.shape[:2], dtype=torch.bool, device=joints.device)
        return FitQuality(part_reprojection=part_reprojection(projected, keypoints),
                          facing=facing(projected, keypoints),
                          candidates=1 + present.sum(-1),
                          candidate_spread=candidate_spread(joints, candidates, present))


def wholebody_part_reprojection(projected: Tensor, keypoints: Tensor, provided: np.ndarray | Tensor) -> Tensor:
    """Per whole-body part beyond the body (`WHOLEBODY_EXTRA_PARTS`: left hand, right hand, face) the
    confidence-weighted mean px distance (B, 3) between projected points (B, 161, 2) and keypoints (B, 161, 3)
    (px + confidence), over the points the model provides (``provided`` (161,) bool,
    `fitting.wholebody_model.WholeBodyModel.provided`); NaN where a part has no observed keypoint (as
    `part_reprojection` for the body's parts)."""
    conf = keypoints[..., 2].clamp_min(0) * torch.as_tensor(provided, dtype=keypoints.dtype,
                                                            device=keypoints.device)
    dist = (projected - keypoints[..., :2]).norm(dim=-1)
    member = torch.zeros(len(WHOLEBODY_EXTRA_PARTS), NUM_WHOLEBODY, dtype=dist.dtype, device=dist.device)
    for p, part in enumerate(WHOLEBODY_EXTRA_PARTS):
        member[p, wholebody_indices(WHOLEBODY_PARTS[part])] = 1.0
    weight, total = conf @ member.T, (conf * dist) @ member.T
    return torch.where(weight > 0, total / weight.clamp_min(1e-12), torch.full_like(total, float("nan")))
