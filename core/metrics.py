"""3D pose metrics as SPIN's evaluation computes them: MPJPE and PA-MPJPE (Procrustes-aligned), in millimetres."""
from __future__ import annotations

import torch
from torch import Tensor


def procrustes_align(pred: Tensor, target: Tensor) -> Tensor:
    """Similarity-align pred (B, N, 3) to target (B, N, 3): scale, rotation (reflection fixed), translation.

    SPIN's `compute_similarity_transform`, batched; returns the aligned prediction.
    """
    mu_p, mu_t = pred.mean(1, keepdim=True), target.mean(1, keepdim=True)
    p, t = pred - mu_p, target - mu_t
    var_p = p.square().sum((1, 2))
    cov = p.transpose(1, 2) @ t                                    # (B, 3, 3)
    u, s, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.det(u @ vh))
    fix = torch.ones_like(s)
    fix[:, -1] = d
    rot = (u * fix[:, None, :]) @ vh                              # maps p to t: p @ rot
    scale = (s * fix).sum(-1) / var_p.clamp_min(1e-12)
    return scale[:, None, None] * p @ rot + mu_t


def mpjpe(pred: Tensor, target: Tensor, root: Tensor | None = None, target_root: Tensor | None = None) -> Tensor:
    """Mean per-joint position error (B,) in the input units, after subtracting each side's root (B, 3) if given."""
    if root is not None:
        pred = pred - root[:, None]
    if target_root is not None:
        target = target - target_root[:, None]
    return (pred - target).norm(dim=-1).mean(-1)


def pa_mpjpe(pred: Tensor, target: Tensor) -> Tensor:
    """MPJPE (B,) after Procrustes alignment of pred to target."""
    return (procrustes_align(pred, target) - target).norm(dim=-1).mean(-1)
