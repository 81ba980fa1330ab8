"""SPIN's training losses (SPIN_REFERENCE §7.2 step 11), each a pure function of predictions and targets.

Shapes: keypoints (B, 49, 3) normalised crop coordinates + confidence (whole-body: (B, 161, 3)); joints (B, 49, 3) metres (model frame, or
camera frame + confidence (B, 49, 4) for ground truth); rotations (B, 24, 3, 3); betas (B, NB); camera (B, 3)
weak perspective [s, tx, ty]. Masks (B,) bool select the examples a loss averages over; a loss over no example is
0 (a tensor that keeps the graph). The selection is masked arithmetic (`example_mean`), not ``if mask.any()`` and
``x[mask]``: each of those read the mask to the host (a host sync per loss per step on a GPU) to skip a few small
ops.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.joints import J24_OFFSET, JOINT_INDEX

HIPS_3D = (JOINT_INDEX["Right Hip"], JOINT_INDEX["Left Hip"])  # SPIN centres 3D joints on the J24 hips' midpoint


def example_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` (B, ...) over every element of the examples where ``mask`` (B,) bool, as
    ``values[mask].mean()``; 0 without such an example. No host sync (masked sums). The other examples' values
    are left out by ``torch.where``, but a NaN there still poisons the gradient of what made it: callers zero the
    other examples' targets first (`_keep`)."""
    keep = mask.reshape(-1, *([1] * (values.dim() - 1)))
    count = mask.sum() * values[0].numel()
    return torch.where(keep, values, 0.0).sum() / count.clamp_min(1)


def _keep(target: Tensor, mask: Tensor) -> Tensor:
    """``target`` (B, ...) with the examples outside ``mask`` (B,) zeroed: what they hold (absent 3D joints, a
    missing fit) must not reach a gradient through `example_mean`."""
    return torch.where(mask.reshape(-1, *([1] * (target.dim() - 1))), target, torch.zeros_like(target))


def keypoint_2d_loss(pred: Tensor, target: Tensor, openpose_weight: float, gt_weight: float) -> Tensor:
    """Mean over B × 49 × 2 of conf′ (pred − target)², pred (B, 49, 2), target (B, 49, 3); conf′ is the
    target's confidence times ``openpose_weight`` for joints 0–24 and ``gt_weight`` for 25–48."""
    conf = target[..., 2:].clone()
    conf[:, :J24_OFFSET] *= openpose_weight
    conf[:, J24_OFFSET:] *= gt_weight
    return (conf * (pred - target[..., :2]).square()).mean()


def keypoint_3d_loss(pred: Tensor, target: Tensor, has_3d: Tensor) -> Tensor:
    """SPIN's 3D loss over the examples with 3D joints: the 24 dataset joints (25–48) of pred (B, 49, 3) and
    target (B, 49, 4), each centred on its hips' midpoint, mean of conf · squared error."""
    pred, target = pred[:, J24_OFFSET:], _keep(target, has_3d)[:, J24_OFFSET:]
    hips = [j - J24_OFFSET for j in HIPS_3D]
    gt = target[..., :3] - target[:, hips, :3].mean(1, keepdim=True)
    p = pred - pred[:, hips].mean(1, keepdim=True)
    return example_mean(target[..., 3:] * (p - gt).square(), has_3d)


def volume_2d_loss(pred: Tensor, target: Tensor, confidence: Tensor) -> Tensor:
    """The volumetric head's 2D term (Sun et al.'s L1 on x, y; `training.volumetric`): mean over B × 24 × 2 of
    c · |pred − target| on x, y, pred and target (B, 24, 3) (`training.volumetric.volume_targets`), c (B, 24) the
    2D keypoints' confidence."""
    return (confidence[..., None] * (pred[..., :2] - target[..., :2]).abs()).mean()


def volume_3d_loss(pred: Tensor, target: Tensor, confidence: Tensor, has_3d: Tensor) -> Tensor:
    """The volumetric head's depth term over the examples with 3D joints (Sun et al.'s L1 on z; with
    `volume_2d_loss` their 3D L1): mean over those × 24 of c · |pred_z − target_z|, pred and target (B, 24, 3),
    c (B, 24) the 3D joints' confidence; 0 without such an example."""
    confidence, target = _keep(confidence, has_3d), _keep(target, has_3d)
    return example_mean(confidence * (pred[..., 2] - target[..., 2]).abs(), has_3d)


def wholebody_keypoint_loss(pred: Tensor, target: Tensor, has_wholebody: Tensor, part_weights: Tensor) -> Tensor:
    """SPIN's 2D keypoint loss over the whole-body points beyond the body (hands, face) of the examples that have
    whole-body keypoints: mean over those examples × the weighted points × 2 of w_i c_i (pred − target)², pred
    (B, 161, 2), target (B, 161, 3) normalised + confidence (`core.wholebody` layout), has_wholebody (B,) bool;
    part_weights (161,): each point's part weight (hands, face), 0 for the 49 body joints (their loss is
    `keypoint_2d_loss`'s) and for points the body model does not provide. 0 without such an example or point."""
    target = _keep(target, has_wholebody)
    weight = target[..., 2:] * part_weights[:, None].to(target)            # 0 for the points not weighted
    total = torch.where(has_wholebody[:, None, None], weight * (pred - target[..., :2]).square(), 0.0).sum()
    count = has_wholebody.sum() * (part_weights > 0).sum() * 2              # examples × weighted points × (x, y)
    return total / count.clamp_min(1)


def pose_loss(pred_rotmat: Tensor, target_rotmat: Tensor, valid: Tensor) -> Tensor:
    """MSE between rotation matrices (B, J, 3, 3) over the valid examples (SPIN compares matrices, not angles;
    the body's 24 joints, or the whole-body heads' hands (30) and jaw (1))."""
    return example_mean((pred_rotmat - _keep(target_rotmat, valid)).square(), valid)


def betas_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """MSE between betas (B, NB) over the valid examples; also the expression's (B, NE) L2 loss."""
    return example_mean((pred - _keep(target, valid)).square(), valid)


def shape_loss(pred_vertices: Tensor, target_vertices: Tensor, valid: Tensor) -> Tensor:
    """L1 between meshes (B, V, 3) over the valid examples (SPIN's per-vertex loss, weight 0 by default)."""
    return example_mean((pred_vertices - _keep(target_vertices, valid)).abs(), valid)


def camera_loss(camera: Tensor) -> Tensor:
    """mean(exp(−10 s)²): keeps the weak-perspective scale s (and so the depth) positive."""
    return torch.exp(-10.0 * camera[:, 0]).square().mean()
