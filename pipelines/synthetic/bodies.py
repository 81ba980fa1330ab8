"""Posing synthetic bodies with the body model, and moving a posed body between frames without re-posing it.

Frames: the body model's own (Y up, the body faces +Z, its left is +X), a camera frame (OpenCV: x right, y down,
z forward) and Human3.6M's world (Z up). Rotations are axis-angle radians unless a name says matrix.

A body model rotates the whole body about its root joint ``J0`` (the rest pelvis, which depends on the betas)
and adds ``transl`` last, so a rigid motion ``X -> R X + t`` of a posed body is again the body model's output
with global orientation ``R · G`` and translation ``R (J0 + transl) + t − J0`` (`move_parameters`). The truth
files hold those parameters per camera, and the tests re-pose them to check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from fitting.body_model import BodyModel

if TYPE_CHECKING:
    from fitting.wholebody_model import WholeBodyModel

BATCH = 128  # bodies per forward pass


@dataclass
class Posed:
    """A batch of posed bodies, numpy, metres, in the frame their global orientation was given in.

    vertices (N, V, 3) float32; joints (N, 49, 3) canonical; kinematic (N, 24, 3) SMPL joints; h36m (N, 17, 3) or None;
    root_rest (N, 3) the rest root joint J0 (translation-free, pose-free); all but
    the vertices float64.
    """

    vertices: np.ndarray
    joints: np.ndarray
    kinematic: np.ndarray
    h36m: np.ndarray | None
    root_rest: np.ndarray


def pose_bodies(model: BodyModel, betas: np.ndarray, poses: np.ndarray, transl: np.ndarray | None = None,
                *, with_h36m: bool = False) -> Posed:
    """Run ``model`` on betas (N, NB), poses (N, 72) and transl (N, 3) m (None: zeros), in batches."""
    count = len(poses)
    transl = np.zeros((count, 3)) if transl is None else transl
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("vertices", "joints", "kinematic", "h36m", "root")}
    with torch.no_grad():
        for start in range(0, count, BATCH):
            sl = slice(start, start + BATCH)
            b = torch.as_tensor(betas[sl], dtype=torch.float32)
            out = model(b, torch.as_tensor(poses[sl, 3:], dtype=torch.float32),
                        torch.as_tensor(poses[sl, :3], dtype=torch.float32),
                        torch.as_tensor(transl[sl], dtype=torch.float32))
            parts["vertices"].append(out.vertices.numpy())  # float32: only drawn, never measured
            parts["joints"].append(out.joints.double().numpy())
            parts["kinematic"].append(out.kinematic_joints.double().numpy())
            # the root joint turns about itself: posed root = J0 + transl
            parts["root"].append(parts["kinematic"][-1][:, 0] - transl[sl])
            if with_h36m:
                parts["h36m"].append(model.h36m_joints(out.vertices).double().numpy())
    return Posed(vertices=np.concatenate(parts["vertices"]), joints=np.concatenate(parts["joints"]),
                 kinematic=np.concatenate(parts["kinematic"]),
                 h36m=np.concatenate(parts["h36m"]) if with_h36m else None,
                 root_rest=np.concatenate(parts["root"]))


def move_parameters(global_orient: np.ndarray, transl: np.ndarray, root_rest: np.ndarray,
                    rotation: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global orientation (N, 3) and translation (N, 3) of bodies moved rigidly by ``X -> rotation X + offset``.

    global_orient (N, 3) axis-angle, transl (N, 3) m and root_rest (N, 3) m describe the bodies before; rotation
    (3, 3) or (N, 3, 3); offset (3,) or (N, 3) m.
    """
    rotation = np.broadcast_to(rotation, (len(transl), 3, 3))
    moved = np.einsum("nij,nj->ni", rotation, root_rest + transl) + offset - root_rest
    return rotate_orient(rotation, global_orient), moved


def rotate_orient(rotation: np.ndarray, global_orient: np.ndarray) -> np.ndarray:
    """``rotation`` (3, 3) or (N, 3, 3) applied on the left of global orientations (N, 3): axis-angle (N, 3)."""
    rotation = np.broadcast_to(rotation, (len(global_orient), 3, 3))
    return (Rotation.from_matrix(rotation) * Rotation.from_rotvec(global_orient)).as_rotvec()


@dataclass
class PosedWhole:
    """A batch of posed whole-body (SMPL-X-layout) bodies, numpy, metres, in the frame their global orientation
    was given in: vertices (N, V, 3) float32; points (N, 161, 3) float64, the whole-body points of
    `core.wholebody` (zero where not provided); provided (161,) bool, the points the model gives (its
    `WholeBodyModel.provided`, plus the pupils when the model names pupil vertices)."""

    vertices: np.ndarray
    points: np.ndarray
    provided: np.ndarray


def pose_wholebody(model: WholeBodyModel, betas: np.ndarray, full_pose: np.ndarray,
                   expression: np.ndarray) -> PosedWhole:
    """Run the whole-body model on betas (N, NB), full poses (N, 165) (SMPL-X's order,
    `fitting.wholebody_model.POSE_SLICES`) and expressions (N, NE), in batches; no translation."""
    from core.wholebody import PUPIL_NAMES, WHOLEBODY_INDEX

    vertex_ids = getattr(model.body, "vertex_ids", {}) or {}
    pupils = [(WHOLEBODY_INDEX[name], vertex_ids[name]) for name in PUPIL_NAMES if name in vertex_ids]
    provided = model.provided.copy()
    provided[[i for i, _ in pupils]] = True
    vertices, points = [], []
    dtype = model.rows.dtype
    with torch.no_grad():
        for start in range(0, len(full_pose), BATCH):
            sl = slice(start, start + BATCH)
            out = model.forward_full(torch.as_tensor(full_pose[sl], dtype=dtype),
                                     torch.as_tensor(betas[sl], dtype=dtype),
                                     torch.as_tensor(expression[sl], dtype=dtype))
            batch_points = out.points.double().numpy()
            for index, vertex in pupils:
                batch_points[:, index] = out.vertices[:, vertex].double().numpy()
            vertices.append(out.vertices.float().numpy())
            points.append(batch_points)
    return PosedWhole(vertices=np.concatenate(vertices), points=np.concatenate(points), provided=provided)
