"""Rotations, SPIN's crop camera and the augmentation of one training sample, batched in torch.

Frames (SPIN_REFERENCE §2.1, §5.3, §6.4):

* **Normalised keypoints** (B, 49, 3): x, y in [-1, 1] across the training crop (its outer edges at ±1), plus a
  confidence; what `shards.reader` gives. They do not depend on the crop's pixel size.
* **Fit frame**: SPIN's 224 px crop seen by a pinhole camera with focal `FIT_FOCAL` = 5000 px and principal
  point (112, 112); px = 112·(n + 1) (pixel corners at integers). SMPLify fits there, whatever the network's input
  resolution.
* **Camera frame**: x right, y down, z forward, metres; a body's camera-frame points are the body model's output
  plus ``cam_t``; the camera's rotation lives in the global orientation (SPIN's fits).

Augmentation (`shards.augment`): the crop is turned by ``rot`` degrees and scaled by ``scale`` about its centre, then
mirrored when ``flip``; 3D points turn by −rot about the camera's z axis; the global orientation is pre-multiplied
by that turn; a flip mirrors the pose (`core.joints.flip_pose`). The **canonical** frame is the sample as stored:
no flip, no rotation, scale 1. Fits are stored canonical; `to_canonical_*` undo an augmentation, `augment_pose`
applies it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.camera import estimate_translation, weak_perspective_to_translation  # noqa: F401 - re-exported
from core.frames import FIT_CENTER, FIT_FOCAL
from core.joints import J49_FLIP_PERM, POSE_FLIP_SIGN, SMPL_POSE_FLIP_PERM
from core.pinhole import pinhole
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_FLIP_PERM
from fitting.skeleton import rodrigues


# --- rotations ------------------------------------------------------------------------------------------------
def rot6d_to_rotmat(x: Tensor) -> Tensor:
    """SPIN's 6D rotation (..., 6) -> rotation matrices (..., 3, 3) by Gram–Schmidt.

    The 6 numbers are a row-major (3, 2) matrix whose columns a1, a2 become the first two columns of R."""
    m = x.reshape(*x.shape[:-1], 3, 2)
    a1, a2 = m[..., 0], m[..., 1]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotmat_to_rot6d(rot: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> SPIN's 6D (..., 6): the first two columns, row-major."""
    return rot[..., :, :2].reshape(*rot.shape[:-2], 6)


def axis_angle_to_rotmat(aa: Tensor) -> Tensor:
    """Axis-angle (..., 3), radians -> rotation matrices (..., 3, 3)."""
    return rodrigues(aa)


def rotmat_to_axis_angle(rot: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), radians, angle in [0, π]; smooth near 0, exact near π.

    Via the unit quaternion (Shepperd's method: the largest of w, x, y, z is computed from the trace), so no
    NaN appears for identity rotations (SPIN had to patch NaNs out of torchgeometry's conversion)."""
    shape = rot.shape[:-2]
    r = rot.reshape(-1, 3, 3)
    m00, m11, m22 = r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]
    trace = m00 + m11 + m22
    candidates = torch.stack([trace, m00, m11, m22], dim=-1)
    choice = candidates.argmax(-1)
    q = torch.empty(r.shape[0], 4, dtype=r.dtype, device=r.device)
    # w largest
    s = torch.sqrt((1.0 + trace).clamp_min(1e-12)) * 2
    qw = torch.stack([0.25 * s, (r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                      (r[:, 1, 0] - r[:, 0, 1]) / s], -1)
    s = torch.sqrt((1.0 + m00 - m11 - m22).clamp_min(1e-12)) * 2
    qx = torch.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, 0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                      (r[:, 0, 2] + r[:, 2, 0]) / s], -1)
    s = torch.sqrt((1.0 - m00 + m11 - m22).clamp_min(1e-12)) * 2
    qy = torch.stack([(r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s,
                      (r[:, 1, 2] + r[:, 2, 1]) / s], -1)
    s = torch.sqrt((1.0 - m00 - m11 + m22).clamp_min(1e-12)) * 2
    qz = torch.stack([(r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                      (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s], -1)
    q = torch.where((choice == 0)[:, None], qw, torch.where((choice == 1)[:, None], qx,
                                                            torch.where((choice == 2)[:, None], qy, qz)))
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0: angle in [0, π]
    q = torch.nn.functional.normalize(q, dim=-1)
    vec_norm = q[:, 1:].norm(dim=-1)
    angle = 2 * torch.atan2(vec_norm, q[:, 0])
    # angle / sin(angle/2), with its limit 2 near zero
    factor = torch.where(vec_norm > 1e-6, angle / vec_norm.clamp_min(1e-12), 2.0 / q[:, 0].clamp_min(1e-12))
    return (q[:, 1:] * factor[:, None]).reshape(*shape, 3)


def z_rotation(rot_deg: Tensor) -> Tensor:
    """(B,) degrees -> (B, 3, 3): the camera-z rotation that matches an image rotation of ``rot`` (angle −rot),
    as `shards.augment` applies to 3D joints and global orientations."""
    theta = torch.deg2rad(-rot_deg)
    c, s = torch.cos(theta), torch.sin(theta)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(-1, 3, 3)


# --- augmentation of poses, keypoints and cameras ---------------------------------------------------------------
def flip_pose(pose: Tensor) -> Tensor:
    """Mirror SMPL axis-angle poses (B, 72) (`core.joints.flip_pose`, in torch)."""
    perm = torch.as_tensor(SMPL_POSE_FLIP_PERM, device=pose.device)
    return pose[:, perm] * torch.as_tensor(POSE_FLIP_SIGN, dtype=pose.dtype, device=pose.device)


def _rotate_orient(pose: Tensor, turn: Tensor) -> Tensor:
    out = pose.clone()
    out[:, :3] = rotmat_to_axis_angle(turn @ axis_angle_to_rotmat(pose[:, :3]))
    return out


def augment_pose(pose: Tensor, rot: Tensor, flip: Tensor) -> Tensor:
    """Canonical poses (B, 72) -> as seen in augmented crops: global orientation turned by `z_rotation(rot)`, then
    mirrored where ``flip`` (B,) bool. `shards.augment.augment_pose`, batched."""
    out = _rotate_orient(pose, z_rotation(rot).to(pose))
    return torch.where(flip[:, None], flip_pose(out), out)


def canonical_pose(pose: Tensor, rot: Tensor, flip: Tensor) -> Tensor:
    """Undo `augment_pose`: un-mirror where ``flip``, then turn the global orientation by −rot."""
    out = torch.where(flip[:, None], flip_pose(pose), pose)
    return _rotate_orient(out, z_rotation(rot).to(pose).transpose(1, 2))


def canonical_keypoints(keypoints: Tensor, rot: Tensor, flip: Tensor, scale: Tensor) -> Tensor:
    """Undo the augmentation of normalised keypoints (B, 49, 3), or whole-body ones (B, 161, 3)
    (`core.wholebody`): un-mirror (swap left/right, negate x), then undo the crop's turn and scale about its
    centre. Absent joints (confidence 0) stay all zero.

    The augmented crop maps canonical normalised points n_c to n_a = R(−rot)·n_c / scale (then the flip), so
    n_c = scale · R(rot) · n_a."""
    perm = torch.as_tensor(WHOLEBODY_FLIP_PERM if keypoints.shape[1] == NUM_WHOLEBODY else J49_FLIP_PERM,
                           device=keypoints.device)
    unflipped = keypoints[:, perm].clone()
    unflipped[..., 0] = -unflipped[..., 0]
    kp = torch.where(flip[:, None, None], unflipped, keypoints)
    theta = torch.deg2rad(rot).to(kp)
    c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    x, y = kp[..., 0], kp[..., 1]
    xy = torch.stack([c * x - s * y, s * x + c * y], -1) * scale.to(kp)[:, None, None]
    present = (kp[..., 2:] > 0).to(kp)
    return torch.cat([xy * present, kp[..., 2:]], -1)


def canonical_translation(cam_t: Tensor, root: Tensor, rot: Tensor, flip: Tensor, scale: Tensor) -> Tensor:
    """A fit's camera translation (B, 3) in an augmented crop -> the canonical crop's, for the canonical pose.

    A body model turns its global orientation about its rest root joint ``root`` (B, 3) (model frame, metres), so
    the whole scene turned about the optical axis moves the translation by Z(J + t) − J, not Z t. Un-mirroring
    negates camera x (exact for a left/right-symmetric body whose root lies on its mid-plane); un-scaling the
    crop by ``scale`` divides the root's depth by it (exact for weak perspective; at f = 5000 px the residue is
    below 0.2 px)."""
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=cam_t.dtype, device=cam_t.device)
    centre = root + cam_t                                           # the root joint in camera coordinates
    centre = torch.where(flip[:, None], centre * mirror, centre)
    centre = (z_rotation(rot).to(cam_t).transpose(1, 2) @ centre[..., None])[..., 0]
    centre = torch.cat([centre[:, :2], centre[:, 2:] / scale.to(cam_t)[:, None]], -1)
    return centre - root



# --- SPIN's camera --------------------------------------------------------------------------------------------
def project_normalised(points: Tensor, cam_t: Tensor) -> Tensor:
    """Camera-frame projection of model points (B, N, 3) + cam_t (B, 3) to normalised crop coordinates (B, N, 2):
    focal 5000 px, principal point 0, divided by 112 (SPIN's training projection)."""
    return pinhole(points + cam_t[:, None], FIT_FOCAL, (0.0, 0.0)) / FIT_CENTER


def rest_root(body, betas: Tensor) -> Tensor:
    """The rest-pose root (pelvis) joint (B, 3) of a `fitting.body_model.BodyModel` for betas (B, NB), model frame."""
    layer = body.layer
    reg = layer.J_regressor[0]                                      # (V,)
    nb = betas.shape[1]
    template = reg @ layer.v_template                               # (3,)
    dirs = torch.einsum("v,vcb->cb", reg, layer.shapedirs[..., :nb])  # (3, NB)
    return template.to(betas) + betas @ dirs.to(betas).T
