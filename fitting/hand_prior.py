"""Hand priors for SMPL-X/MANO hand poses: anatomical joint limits, and an optional hand-pose PCA prior.

The CMU motion capture carries no finger motion, so nothing is learned for the hands. Instead:

**Joint limits** (:class:`HandJointLimits`, always available). Each of a hand's 15 joints (SMPL-X's/MANO's order:
`core.wholebody.MANO_FINGERS` = index, middle, pinky, ring, thumb; joints 1–3 base to tip, i.e. MCP, PIP, DIP for
the fingers and CMC, MCP, IP for the thumb) has a range per component of its rotation in its local frame: twist
(about the bone), abduction (sideways), flexion (towards the palm). The penalty is zero inside the range and
quadratic outside: residual r = c − clamp(c, lo, hi) per component c (radians), energy Σ r² (rad²). The
components are those of the joint's axis-angle vector on the three axes, c = a·θ: for a rotation about one axis
this is exactly its angle, and flexion dominates finger motion. Linear in θ, so the Jacobian is exact and
trivial (the axis rows where a component is outside its range).

*Ranges* (degrees; `LIMITS_DEG`): the American Academy of Orthopaedic Surgeons' normal active ranges of motion
(AAOS, *Joint Motion: Method of Measuring and Recording*, 1965; as tabulated in Norkin & White, *Measurement of
Joint Motion: A Guide to Goniometry*): finger MCP flexion 90, hyperextension 45, abduction 20 either way; PIP
flexion 100, extension 0; DIP flexion 90, extension 0; thumb CMC flexion 15, extension 20, palmar abduction 70;
thumb MCP flexion 50, extension 0; thumb IP flexion 80, extension 20. Goniometry tables give no twist or
sideways range for hinge joints: fitloop allows ±10° there (a body model's joints are ball joints and a fitted
hand needs a little play; ±30° of twist at the thumb's CMC, which rotates as it opposes). For comparison, the
*functional* ranges used in daily activities (Hume et al., J Hand Surg 15A:240–243, 1990) are far smaller (MCP 61°,
PIP 60°, DIP 39°, thumb MCP 21°, IP 18° of flexion): limits, not typical poses, are what a penalty should hold.

*Axes, in SMPL-X's rest frame* (`flexion_axes`): the T-pose has the arms along ±X, palms down (−Y), thumbs forward
(+Z). Right hand (fingers along −X): the fingers flex about **+Z** (a positive rotation takes −X towards −Y, the
palm side), abduct about Y, twist about X; the thumb, which lies in the palm's plane, flexes across the palm about
**−Y** (its tip towards −Z, the fingers), abducts away from the palm (palmar abduction) about +Z, twists about X.
Left hand: the mirror image (x -> −x), under which an axial vector (a, b, c) becomes (a, −b, −c): fingers flex
about **−Z**, the thumb about **+Y**. The limits are relative to the flat hand (zero rotation: SMPL-X with
``flat_hand_mean=True``); for SMPL-X's default (``flat_hand_mean=False``) add the model's ``hands_mean`` to its
``hand_pose`` first (:func:`flat_hand_pose`). The thumb's axes are the palm's, not fitted to a thumb bone: the
flat MANO thumb points ~40° off the X axis, so for it the components mix a little.

**Hand-pose PCA** (:class:`HandPCAPrior`, when the user supplies one: a real SMPL-X/MANO file's
``hands_components{l,r}`` (NH, 45) and ``hands_mean{l,r}`` (45,), or an ``.npz`` of those with an optional
``hands_std{l,r}`` (NH,)): coefficients c = least-squares fit of (θ − mean) on the first ``num_components``
components; residuals c / std (SMPLify-X's L2 on the coefficients when no std is given: std = 1) and the part of
θ − mean outside the components' span over ``off_span_sigma``. Absent: limits only.

Shapes: hand poses (B, 45) per hand, axis-angle radians, MANO joint order, local to the parent, relative to the flat
hand. Both priors are stateless maps of their inputs (their tables are fixed at construction).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import ModelFileError
from core.wholebody import MANO_FINGERS
from fitting.files import read_npz, require_file

HAND_SIDES: tuple[str, ...] = ("left", "right")
HAND_JOINTS_PER_SIDE = 15
HAND_POSE_DIM = 3 * HAND_JOINTS_PER_SIDE  # 45
# Each hand's joints in SMPL-X's hand_pose order (= SMPL-X joints 25–39 / 40–54): MANO's finger order, base to tip.
HAND_JOINT_NAMES: dict[str, tuple[str, ...]] = {
    side: tuple(f"{side}_{finger}{k}" for finger in MANO_FINGERS for k in (1, 2, 3)) for side in HAND_SIDES}
COMPONENTS: tuple[str, ...] = ("twist", "abduction", "flexion")
# Ranges (lo, hi) in degrees per component (twist, abduction, flexion); flexion positive towards the palm.
# Sources in the module docstring (AAOS 1965 via Norkin & White; twist and hinge side play: fitloop's allowance).
LIMITS_DEG: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "finger1": ((-10, 10), (-20, 20), (-45, 90)),     # MCP: flexion 90, hyperextension 45, abduction 20
    "finger2": ((-10, 10), (-10, 10), (0, 100)),      # PIP: flexion 100, extension 0
    "finger3": ((-10, 10), (-10, 10), (0, 90)),       # DIP: flexion 90, extension 0
    "thumb1": ((-30, 30), (0, 70), (-20, 15)),        # CMC: palmar abduction 70, flexion 15, extension 20
    "thumb2": ((-10, 10), (-10, 10), (0, 50)),        # MCP: flexion 50, extension 0
    "thumb3": ((-10, 10), (-10, 10), (-20, 80)),      # IP: flexion 80, extension 20
}
# Local axes (twist, abduction, flexion) of the right hand in SMPL-X's rest frame (module docstring); the left
# hand's are their mirror image (axial vectors: (a, b, c) -> (a, -b, -c)).
RIGHT_AXES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "finger": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "thumb": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
}
MIRROR_AXIAL = np.diag([1.0, -1.0, -1.0])


def joint_kind(name: str) -> str:
    """The `LIMITS_DEG` row of a hand joint name (``right_index2`` -> ``finger2``, ``left_thumb1`` -> ``thumb1``)."""
    stem = name.split("_", 1)[1]
    return ("thumb" if stem.startswith("thumb") else "finger") + stem[-1]


def flexion_axes(side: str) -> np.ndarray:
    """Local axes (15, 3, 3) of one hand's joints, rows twist, abduction, flexion, in SMPL-X's rest frame."""
    if side not in HAND_SIDES:
        raise ValueError(f"side must be one of {HAND_SIDES}, not {side!r}")
    axes = np.array([RIGHT_AXES[joint_kind(n)[:-1]] for n in HAND_JOINT_NAMES[side]])
    return axes if side == "right" else axes @ MIRROR_AXIAL


def limits_rad(side: str) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) (15, 3) radians of one hand's joints, components twist, abduction, flexion."""
    table = np.radians(np.array([LIMITS_DEG[joint_kind(n)] for n in HAND_JOINT_NAMES[side]]))
    return table[..., 0], table[..., 1]


def flat_hand_pose(hand_pose: Tensor, hands_mean: Tensor | np.ndarray) -> Tensor:
    """SMPL-X's ``hand_pose`` (B, 45) with ``flat_hand_mean=False`` as the rotation from the flat hand (B, 45): the
    model adds its ``hands_mean`` (45,) before posing, so the limits apply to the sum."""
    return hand_pose + torch.as_tensor(hands_mean, dtype=hand_pose.dtype, device=hand_pose.device)


class HandJointLimits(nn.Module):
    """Anatomical joint limits of both hands (module docstring): ``residuals(left, right)`` (B, 90) radians,
    ``forward`` the energy Σ r² (B,) rad², ``residuals_and_jacobian`` also ∂r/∂[left, right] (B, 90, 90), exact."""

    axes: Tensor
    lo: Tensor
    hi: Tensor

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        axes = np.zeros((2 * HAND_POSE_DIM, 2 * HAND_POSE_DIM))   # block-diagonal: components = axes @ pose
        lo, hi = [], []
        for s, side in enumerate(HAND_SIDES):
            a = flexion_axes(side)
            for j in range(HAND_JOINTS_PER_SIDE):
                r = s * HAND_POSE_DIM + 3 * j
                axes[r:r + 3, r:r + 3] = a[j]
            lo_s, hi_s = limits_rad(side)
            lo.append(lo_s.reshape(-1))
            hi.append(hi_s.reshape(-1))
        self.register_buffer("axes", torch.as_tensor(axes, dtype=dtype))
        self.register_buffer("lo", torch.as_tensor(np.concatenate(lo), dtype=dtype))
        self.register_buffer("hi", torch.as_tensor(np.concatenate(hi), dtype=dtype))

    def components(self, left: Tensor, right: Tensor) -> Tensor:
        """Twist, abduction, flexion (B, 90) radians of both hands' joints: left's 15 × 3, then right's."""
        for name, pose in (("left", left), ("right", right)):
            if pose.ndim != 2 or pose.shape[1] != HAND_POSE_DIM:
                raise ValueError(f"{name} hand pose must be (B, {HAND_POSE_DIM}) axis-angle, got {tuple(pose.shape)}")
        pose = torch.cat([left, right], dim=1)
        return pose @ self.axes.to(pose.dtype).T

    def residuals(self, left: Tensor, right: Tensor) -> Tensor:
        """r = c − clamp(c, lo, hi) (B, 90) radians: 0 inside every range."""
        c = self.components(left, right)
        return c - torch.minimum(torch.maximum(c, self.lo.to(c.dtype)), self.hi.to(c.dtype))

    def residuals_and_jacobian(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals (B, 90) and their Jacobian (B, 90, 90) w.r.t. [left, right] (rows zero inside the range)."""
        c = self.components(left, right)
        r = c - torch.minimum(torch.maximum(c, self.lo.to(c.dtype)), self.hi.to(c.dtype))
        outside = ((c < self.lo.to(c.dtype)) | (c > self.hi.to(c.dtype))).to(c.dtype)
        return r, outside[..., None] * self.axes.to(c.dtype)

    def forward(self, left: Tensor, right: Tensor) -> Tensor:
        """Energy Σ r² (B,) rad² of both hands' poses (B, 45) each, relative to the flat hand."""
        return self.residuals(left, right).square().sum(-1)


class HandPCAPrior(nn.Module):
    """A prior on one hand's pose through a PCA the user supplies (module docstring): residuals (B, K + 45) =
    [c / std, (θ − mean − c·components) / off_span_sigma]; energy Σ r²."""

    components: Tensor
    mean: Tensor
    std: Tensor
    pinv: Tensor

    def __init__(self, components: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None,
                 num_components: int | None = None, off_span_sigma: float = math.radians(10.0),
                 source: str = "<hand PCA>") -> None:
        super().__init__()
        comps = np.asarray(components, dtype=np.float64)
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        if comps.ndim != 2 or comps.shape[1] != HAND_POSE_DIM or mean.shape != (HAND_POSE_DIM,):
            raise ModelFileError(f"{source}: hand PCA components {comps.shape} / mean {mean.shape}; expected "
                                 f"(NH, {HAND_POSE_DIM}) and ({HAND_POSE_DIM},)")
        k = comps.shape[0] if num_components is None else int(num_components)
        if not 1 <= k <= comps.shape[0]:
            raise ModelFileError(f"{source}: {k} components asked for, the file has {comps.shape[0]}")
        comps = comps[:k]
        std = np.ones(k) if std is None else np.asarray(std, dtype=np.float64).reshape(-1)[:k]
        if std.shape != (k,) or not (std > 0).all() or not np.isfinite(comps).all() or not np.isfinite(mean).all():
            raise ModelFileError(f"{source}: hand PCA std must be ({k},) positive and all values finite")
        self.register_buffer("components", torch.as_tensor(comps, dtype=torch.float32))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("pinv", torch.as_tensor(np.linalg.pinv(comps), dtype=torch.float32))  # (45, K)
        self.off_span_sigma = float(off_span_sigma)

    @classmethod
    def from_file(cls, path: str | Path, side: str, num_components: int | None = None) -> HandPCAPrior:
        """Read ``hands_components{l,r}``, ``hands_mean{l,r}`` and optional ``hands_std{l,r}`` of ``side`` from an
        ``.npz`` (a real SMPL-X/MANO ``.npz`` has the first two)."""
        if side not in HAND_SIDES:
            raise ValueError(f"side must be one of {HAND_SIDES}, not {side!r}")
        path = require_file(path, "hand-PCA file", "pass a SMPL-X/MANO .npz with hands_components and hands_mean")
        arrays, _ = read_npz(path, "hand-PCA file")
        s = side[0]
        keys = (f"hands_components{s}", f"hands_mean{s}")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ModelFileError(f"{path}: no {missing} for the {side} hand; pass a SMPL-X/MANO .npz (hands_components"
                                 f"{s}, hands_mean{s}) or leave the PCA out (joint limits only)")
        return cls(arrays[keys[0]], arrays[keys[1]], arrays.get(f"hands_std{s}"), num_components, source=str(path))

    def coefficients(self, hand_pose: Tensor) -> Tensor:
        """PCA coefficients (B, K) of hand poses (B, 45) relative to the flat hand: least squares on the components."""
        return (hand_pose - self.mean.to(hand_pose.dtype)) @ self.pinv.to(hand_pose.dtype)

    def residuals(self, hand_pose: Tensor) -> Tensor:
        """[c / std, off-span part / off_span_sigma] (B, K + 45) of hand poses (B, 45)."""
        c = self.coefficients(hand_pose)
        off = hand_pose - self.mean.to(hand_pose.dtype) - c @ self.components.to(hand_pose.dtype)
        return torch.cat([c / self.std.to(c.dtype), off / self.off_span_sigma], dim=1)

    def residuals_and_jacobian(self, hand_pose: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals (B, K + 45) and their constant Jacobian (B, K + 45, 45) (the map is affine)."""
        dtype = hand_pose.dtype
        pinv, comps = self.pinv.to(dtype), self.components.to(dtype)
        d_c = pinv.T / self.std.to(dtype)[:, None]                                   # (K, 45)
        eye = torch.eye(HAND_POSE_DIM, dtype=dtype, device=hand_pose.device)
        d_off = (eye - comps.T @ pinv.T) / self.off_span_sigma                         # (45, 45)
        jac = torch.cat([d_c, d_off], dim=0)
        return self.residuals(hand_pose), jac.expand(hand_pose.shape[0], -1, -1)

    def forward(self, hand_pose: Tensor) -> Tensor:
        """Energy Σ r² (B,) of hand poses (B, 45), axis-angle radians relative to the flat hand."""
        return self.residuals(hand_pose).square().sum(-1)
