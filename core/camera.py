"""Pinhole cameras as SPIN uses them (batched, torch), the two ways SMPLify's camera translation is initialised,
and SPIN's least-squares translation of given joints onto fit-frame keypoints (`estimate_translation`).

Frames and units: camera frame x right, y down, z forward (metres); pixels with (0, 0) at the top-left corner of
the image. SPIN's *crop convention* renders a `FIT_RES` = 224 px crop with a fixed, fake focal length
`FIT_FOCAL` = 5000 px (nearly weak perspective) and principal point at the crop centre (112, 112). A network's
weak-perspective camera [s, tx, ty] maps to a translation t = [tx, ty, 2 f / (res s)]. Full-image intrinsics
(fx, fy, cx, cy) work with the same functions. The projection itself is fitloop's one, `core.pinhole.pinhole`.

A model in the SMPL frame (Y up, facing +Z) seen by such a camera with identity rotation stands upside down and
faces away; body fits therefore carry the rotation in their global orientation, as SPIN's fits do.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.frames import FIT_CENTER, FIT_FOCAL, FIT_RES
from core.joints import J24_OFFSET
from core.pinhole import pinhole


def project(points: Tensor, translation: Tensor, focal: Tensor | float, center: Tensor) -> Tensor:
    """`core.pinhole.pinhole` for a batch (SMPLify's form): points (B, N, 3), camera frame up to ``translation``
    (B, 3), to pixels (B, N, 2).

    focal: scalar or (B,) or (B, 2) px; center: (B, 2) px principal point.
    """
    focal = torch.as_tensor(focal, dtype=points.dtype, device=points.device)
    if focal.dim() == 0:
        focal = focal.expand(points.shape[0], 2)
    elif focal.dim() == 1:
        focal = focal[:, None].expand(-1, 2)
    return pinhole(points + translation[:, None, :], focal[:, None, :], center[:, None, :])


def projection_jacobian(points: Tensor, focal: Tensor) -> Tensor:
    """d pixel / d camera-frame point (B, P, 2, 3) for u = fx x / z + cx, v = fy y / z + cy; points (B, P, 3),
    focal (B, 2) px."""
    x, y, z = points.unbind(-1)
    inv = 1.0 / z
    zero = torch.zeros_like(z)
    fx, fy = focal[:, None, 0], focal[:, None, 1]
    row_u = torch.stack([fx * inv, zero, -fx * x * inv * inv], -1)
    row_v = torch.stack([zero, fy * inv, -fy * y * inv * inv], -1)
    return torch.stack([row_u, row_v], -2)


def weak_perspective_to_translation(cam: Tensor, focal: float = FIT_FOCAL, res: int = FIT_RES) -> Tensor:
    """SPIN's conversion of a regressor's weak-perspective camera [s, tx, ty] (B, 3) to t = [tx, ty, 2f/(res s)]."""
    return torch.stack([cam[:, 1], cam[:, 2], 2.0 * focal / (res * cam[:, 0] + 1e-9)], dim=-1)


def translation_from_torso(joints: Tensor, keypoints: Tensor, focal: Tensor | float, center: Tensor,
                           pairs: tuple[tuple[int, int], ...] | Tensor) -> Tensor:
    """SMPLify's similar-triangles estimate of the camera translation (B, 3) for a body at the origin.

    joints (B, N, 3) model joints (metres, camera-frame axes), keypoints (B, N, 3) px + confidence; focal: scalar,
    (B,) or (B, 2) (fx, fy) px; center (B, 2) px; `pairs` are (a, b) joint-index pairs spanning the torso (e.g.
    shoulder-to-hip on each side). Depth = f * (3D length) / (2D length) (f = sqrt(fx fy)), averaged over the pairs
    both of whose keypoints are confident; x, y then put the mean of the confident torso joints on their 2D mean.
    ``pairs`` may be a (P, 2) index tensor on the joints' device (nothing is then copied from the host).
    Examples with no usable pair get depth 2 f / FIT_RES (s = 1).
    """
    focal_t = torch.as_tensor(focal, dtype=joints.dtype, device=joints.device)
    if focal_t.dim() == 0:
        f, fxy = focal_t, focal_t
    else:
        pair = focal_t.reshape(joints.shape[0], -1).expand(-1, 2)                  # (B, 2) fx, fy
        f, fxy = pair.prod(-1).sqrt(), pair
    pairs_t = pairs if isinstance(pairs, Tensor) else torch.tensor(pairs, device=joints.device)
    a, b = pairs_t[:, 0], pairs_t[:, 1]
    len3d = (joints[:, a] - joints[:, b]).norm(dim=-1)                       # (B, P)
    len2d = (keypoints[:, a, :2] - keypoints[:, b, :2]).norm(dim=-1)          # (B, P)
    ok = (keypoints[:, a, 2] > 0) & (keypoints[:, b, 2] > 0) & (len2d > 1e-3)
    ratio = torch.where(ok, len3d / len2d.clamp_min(1e-3), torch.zeros_like(len3d))
    count = ok.sum(-1)
    depth = f * ratio.sum(-1) / count.clamp_min(1)
    depth = torch.where(count > 0, depth, 2.0 * f / FIT_RES * torch.ones_like(depth))
    used = torch.zeros(joints.shape[:2], dtype=torch.bool, device=joints.device)
    used[:, a] |= ok
    used[:, b] |= ok
    w = used.to(joints.dtype)
    n = w.sum(-1).clamp_min(1)
    mean3d = (joints * w[..., None]).sum(1) / n[:, None]
    mean2d = (keypoints[..., :2] * w[..., None]).sum(1) / n[:, None]
    xy = (mean2d - center) * (depth[:, None] + mean3d[:, 2:3]) / fxy - mean3d[:, :2]
    return torch.cat([xy, depth[:, None]], dim=-1)


def estimate_translation(joints: Tensor, keypoints_px: Tensor, focal: float = FIT_FOCAL,
                         center: float = FIT_CENTER, min_joints: int = 2) -> Tensor:
    """SPIN's least-squares camera translation (B, 3) metres for model joints (B, 49, 3) and fit-frame keypoints
    (B, 49, 3) px + confidence, from the 24 dataset joints (indices 25–48) weighted by √confidence.

    With t = (tx, ty, tz), each joint gives two equations linear in t: f·(X + tx) = (u − c)·(Z + tz) and the
    same for y; their weighted normal equations (3 × 3) are solved per example. Examples with fewer than
    ``min_joints`` confident joints get t = (0, 0, 2f/224) (scale 1)."""
    s = joints[:, J24_OFFSET:].to(torch.float64)
    kp = keypoints_px[:, J24_OFFSET:].to(torch.float64)
    w = kp[..., 2].clamp_min(0).sqrt()                              # (B, 24)
    batch, n = w.shape
    x, y, z = s.unbind(-1)
    du, dv = kp[..., 0] - center, kp[..., 1] - center
    zeros, fs = torch.zeros_like(x), torch.full_like(x, focal)
    # rows: [f, 0, -(u-c)] t = (u-c) Z - f X ; [0, f, -(v-c)] t = (v-c) Z - f Y
    a = torch.stack([torch.stack([fs, zeros, -du], -1), torch.stack([zeros, fs, -dv], -1)], 2)  # (B, N, 2, 3)
    b = torch.stack([du * z - focal * x, dv * z - focal * y], -1)                              # (B, N, 2)
    a = (a * w[..., None, None]).reshape(batch, 2 * n, 3)
    b = (b * w[..., None]).reshape(batch, 2 * n)
    prior = torch.tensor([0.0, 0.0, 2 * focal / FIT_RES], dtype=torch.float64, device=joints.device)
    lhs = a.transpose(1, 2) @ a
    lhs = lhs + torch.diag_embed(1e-9 * torch.diagonal(lhs, dim1=-2, dim2=-1) + 1e-9)  # keeps the solve defined
    t = torch.linalg.solve(lhs, (a.transpose(1, 2) @ b[..., None])[..., 0])
    enough = (kp[..., 2] > 0).sum(-1) >= min_joints
    return torch.where(enough[:, None], t, prior.expand(batch, 3)).to(joints.dtype)
