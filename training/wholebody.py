"""The trainer's whole-body (SMPL-X) pieces: posing the regressor's SMPL-X output, mirroring hand, jaw and eye
poses with the augmentation, the hands' and face's reprojection, and SMPLify-X started from the network's estimate.

Layouts (`fits.schema`, `fitting.wholebody_model`): a fit's whole-body parameters are hand_pose (B, 90) left then
right hand, 15 joints each in MANO's order, axis-angle relative to the flat hand; jaw_pose (B, 3); eye_pose (B, 6)
left then right eye; expression (B, NE); SMPL-X's full pose (B, 165) is [global orient, 21 body joints, jaw,
left eye, right eye, left hand, right hand] (`POSE_SLICES`), and an SMPL pose (B, 72) of an SMPL-X fit holds its
first 22 joints with SMPL's two hand slots (66–71) zero. Radians throughout; keypoints and points in the 161-point
whole-body layout of `core.wholebody`.

**Mirroring.** A flipped crop mirrors every joint: left and right swap (`core.wholebody.SMPLX_JOINTS_FLIP_PERM`:
the hands and eyes swap, the jaw stays) and each axis-angle's y and z change sign, as SPIN mirrors SMPL's body.
The expression has no mirror: SMPL-X's expression components are not left/right symmetric, so a mirrored face's
expression is not a function of the face's. Where a batch example is flipped, its stored fit's expression cannot
supervise it, and a fit made in the flipped crop cannot be stored canonical (the trainer keeps it for that step's
supervision only: `training.step`).

**SMPLify-X from an estimate**: the loop fits whole-body examples with `fitting.smplifyx.SMPLifyX` from the
network's estimate (``start=SMPLifyXStart(...)``: its camera stage and five stages from it, no turned-around
orientation; `training.step.fit_wholebody_in_the_loop`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.host_syncs import to_device
from core.wholebody import NUM_WHOLEBODY, SMPLX_JOINTS_FLIP_PERM, WHOLEBODY_PARTS, wholebody_indices
from fits.schema import NUM_POSE
from fitting.wholebody_model import BODY_POSE_DIM, NUM_SMPLX_JOINTS, POSE_SLICES

FIRST_EXTRA_JOINT = 22                     # SMPL-X joints 22–54: jaw, eyes, hands (after global + 21 body)
POSE_FLIP_SIGN = (1.0, -1.0, -1.0)         # a mirrored axis-angle (x, y, z) -> (x, -y, -z), as SPIN's body
_BODY_AA = 3 + BODY_POSE_DIM               # 66: global orientation + 21 body joints, axis-angle


@dataclass
class WholeBodyParams:
    """Whole-body parameters of a batch (module docstring): hand_pose (B, 90), jaw_pose (B, 3), eye_pose (B, 6),
    expression (B, NE); tensors on one device."""

    hand_pose: Tensor
    jaw_pose: Tensor
    eye_pose: Tensor
    expression: Tensor

    def where(self, mask: Tensor, other: WholeBodyParams) -> WholeBodyParams:
        """Per example (B,) bool: this one's parameters where ``mask``, ``other``'s elsewhere."""
        m = mask[:, None]
        return WholeBodyParams(*(torch.where(m, a, b) for a, b in zip(self.values(), other.values())))

    def values(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.hand_pose, self.jaw_pose, self.eye_pose, self.expression

    def to(self, device: torch.device) -> WholeBodyParams:
        """On ``device``; an upload from the host does not wait for the device (`core.host_syncs.to_device`)."""
        return WholeBodyParams(*(to_device(v, device) for v in self.values()))

    def rows(self, index: Tensor) -> WholeBodyParams:
        return WholeBodyParams(*(v[index] for v in self.values()))


# --- SMPL-X poses: full pose <-> (SMPL pose, whole-body parameters) ----------------------------------------------
def full_pose_of(pose: Tensor, params: WholeBodyParams) -> Tensor:
    """SMPL-X's full pose (B, 165) from an SMPL pose (B, 72) (its first 22 joints) and whole-body parameters."""
    return torch.cat([pose[:, :_BODY_AA], params.jaw_pose, params.eye_pose, params.hand_pose], 1)


def split_full_pose(full_pose: Tensor, expression: Tensor) -> tuple[Tensor, WholeBodyParams]:
    """(SMPL pose (B, 72) with SMPL's hand slots zero, whole-body parameters) of a full pose (B, 165)."""
    pose = torch.cat([full_pose[:, :_BODY_AA], full_pose.new_zeros(len(full_pose), NUM_POSE - _BODY_AA)], 1)
    eyes = full_pose[:, POSE_SLICES["leye_pose"].start:POSE_SLICES["reye_pose"].stop]
    hands = full_pose[:, POSE_SLICES["left_hand_pose"].start:POSE_SLICES["right_hand_pose"].stop]
    return pose, WholeBodyParams(hands, full_pose[:, POSE_SLICES["jaw_pose"]], eyes, expression)


def flip_wholebody(params: WholeBodyParams) -> WholeBodyParams:
    """Mirror hand, jaw and eye poses (module docstring); the expression is returned as it is (it has no mirror:
    callers mask it where an example is flipped)."""
    batch = params.hand_pose.shape[0]
    extra = torch.cat([params.jaw_pose, params.eye_pose, params.hand_pose], 1).reshape(batch, -1, 3)
    perm = torch.as_tensor(SMPLX_JOINTS_FLIP_PERM[FIRST_EXTRA_JOINT:] - FIRST_EXTRA_JOINT, device=extra.device)
    sign = torch.as_tensor(POSE_FLIP_SIGN, dtype=extra.dtype, device=extra.device)
    flat = (extra[:, perm] * sign).reshape(batch, -1)
    return WholeBodyParams(flat[:, 9:], flat[:, :3], flat[:, 3:9], params.expression)


def augment_wholebody(params: WholeBodyParams, flip: Tensor) -> WholeBodyParams:
    """Canonical whole-body parameters -> as seen in the augmented crops (mirrored where ``flip`` (B,) bool; the
    crop's turn moves only the global orientation). Its own inverse."""
    return flip_wholebody(params).where(flip, params)


def rotmats_of(rotmat: Tensor, hand_rotmat: Tensor, jaw_rotmat: Tensor) -> Tensor:
    """SMPL-X's 55 rotation matrices (B, 55, 3, 3) from the regressor's output (`training.regressor`): the body's
    22 (of ``rotmat`` (B, 24, 3, 3)), the jaw (B, 1, 3, 3), the eyes at rest (nothing observes them), the hands
    (B, 30, 3, 3)."""
    batch = rotmat.shape[0]
    eyes = torch.eye(3, dtype=rotmat.dtype, device=rotmat.device).expand(batch, 2, 3, 3)
    out = torch.cat([rotmat[:, :FIRST_EXTRA_JOINT], jaw_rotmat, eyes, hand_rotmat], 1)
    assert out.shape[1] == NUM_SMPLX_JOINTS
    return out


# --- weights and measures ----------------------------------------------------------------------------------------
def part_weights(provided: np.ndarray, hands: float, face: float) -> Tensor:
    """(161,) the whole-body keypoint loss's weight of each point: ``hands`` for both hands' points, ``face`` for
    the face's, 0 for the 49 body joints (the body's 2D loss has them) and for points the model does not provide
    (`WholeBodyModel.provided`: the face contour, the pupils). A hand's root is its wrist, a body joint already:
    it is left out too (`core.wholebody.WHOLEBODY_ALIASES`)."""
    weights = torch.zeros(NUM_WHOLEBODY)
    for part, value in (("left_hand", hands), ("right_hand", hands), ("face", face)):
        weights[wholebody_indices(WHOLEBODY_PARTS[part])] = value
    weights[wholebody_indices(("left_hand_root", "right_hand_root"))] = 0.0
    return weights * torch.as_tensor(provided, dtype=weights.dtype)
