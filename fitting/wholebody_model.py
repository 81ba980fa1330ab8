"""A stateless whole-body (SMPL-X layout) model: body, articulated hands, jaw, eyes and expression, with the
161 whole-body points of `core.wholebody` as output.

`WholeBodyModel(body)` wraps a `BodyModel` of an SMPL-X-layout file (`fitting.body_model.load_body_model`: a real
SMPL-X ``.npz``/``.pkl``, read and checked there, or an open SMPL-X-layout model): its smplx layer poses the mesh,
this module adds the whole-body points. All of them are linear in the posed vertices and kinematic joints:

* body, points 0–48: SPIN's 49 canonical joints, exactly as `BodyModel` computes them
  (`BodyModel.canonical_joints`);
* hands, 49–90: each hand's root is its wrist (`core.wholebody.WHOLEBODY_ALIASES`), its 15 finger joints are
  SMPL-X kinematic joints (`WHOLEBODY_FROM_KINEMATIC`), its five fingertips are vertices
  (`FINGERTIP_VERTEX_KEYS`: smplx's ``VERTEX_IDS['smplx']`` for a real file, the model's own ``vertex_ids`` when it
  carries them);
* face, iBUG points 17–67 (whole-body 108–158): SMPL-X's 51 static landmarks, barycentric points of the faces
  ``lmk_faces_idx`` with weights ``lmk_bary_coords`` (smplx's ``vertices2landmarks``, ``use_face_contour=False``:
  SMPLify-X's default).

The face contour (iBUG 0–16) and OpenPose's pupils are not provided: `WholeBodyModel.provided` (161,) says which
points the model has, and their outputs are zero.

Conventions (batch-first, any batch size; metres in the model frame: Y up, facing +Z, left is +X):
  betas (B, NB); global_orient (B, 3); body_pose (B, 63) = 21 body joints; left_hand_pose / right_hand_pose
  (B, 45) = 15 joints each in MANO's finger order (`core.wholebody.MANO_FINGERS`), full axis-angle relative to the
  flat hand (no PCA, no hand mean added: ``flat_hand_mean=True``); jaw_pose, leye_pose, reye_pose (B, 3);
  expression (B, NE); transl (B, 3) or None. Radians throughout. The same order concatenated is SMPL-X's
  ``full_pose`` (B, 165) = 55 joints x 3 (`core.wholebody.SMPLX_JOINT_NAMES`), `WholeBodyModel.full_pose`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from core.errors import ModelFileError
from core.joints import NUM_JOINTS
from core.wholebody import (
    FACE_LANDMARK_NAMES,
    FINGERTIP_VERTEX_KEYS,
    LEFT_HAND_NAMES,
    NUM_BODY_JOINTS,
    NUM_SMPLX_JOINTS,
    NUM_WHOLEBODY,
    RIGHT_HAND_NAMES,
    SMPLX_JOINT_INDEX,
    WHOLEBODY_ALIASES,
    WHOLEBODY_FROM_KINEMATIC,
    WHOLEBODY_INDEX,
)
from fitting.body_model import BodyModel
from fitting.skeleton import Skeleton

HAND_JOINTS = 15                     # per hand, MANO order
HAND_POSE_DIM = 3 * HAND_JOINTS      # 45
BODY_POSE_DIM = 3 * NUM_BODY_JOINTS  # 63
FULL_POSE_DIM = 3 * NUM_SMPLX_JOINTS  # 165
# Slices of the full pose (B, 165), SMPL-X's order: global orient, 21 body, jaw, left eye, right eye, 2 x 15 hand.
POSE_SLICES: dict[str, slice] = {
    "global_orient": slice(0, 3), "body_pose": slice(3, 3 + BODY_POSE_DIM),
    "jaw_pose": slice(66, 69), "leye_pose": slice(69, 72), "reye_pose": slice(72, 75),
    "left_hand_pose": slice(75, 75 + HAND_POSE_DIM), "right_hand_pose": slice(120, 120 + HAND_POSE_DIM),
}


@dataclass(frozen=True)
class WholeBodyOutput:
    """A posed batch: vertices (B, V, 3), the 55 kinematic joints (B, 55, 3), and the whole-body points
    (B, 161, 3) of `core.wholebody` (zero where `WholeBodyModel.provided` is False); metres."""

    vertices: Tensor
    joints: Tensor
    points: Tensor


def _vertex_ids(body: BodyModel) -> dict[str, int]:
    """The fingertip vertices' table: the model's named vertices (`load_body_model` sets smplx's SMPL-X table for a
    real file, the open file's own ``vertex_ids``), else smplx's SMPL-X one."""
    if body.vertex_ids:
        return dict(body.vertex_ids)
    import smplx.vertex_ids
    return dict(smplx.vertex_ids.vertex_ids["smplx"])


class WholeBodyModel(nn.Module):
    """SMPL-X's whole body behind one stateless call (module docstring); ``body`` must have SMPL-X's 55-joint
    tree with landmarks (``lmk_faces_idx``, ``lmk_bary_coords``) and expression directions."""

    def __init__(self, body: BodyModel):
        super().__init__()
        layer = body.layer
        if int(layer.parents.shape[0]) != NUM_SMPLX_JOINTS or not hasattr(layer, "lmk_faces_idx"):
            raise ModelFileError(f"{body.name}: a {body.family} model with {int(layer.parents.shape[0])} joints; "
                                 f"whole-body fits need an SMPL-X-layout model (55 joints, face landmarks, "
                                 f"expressions): pass an SMPL-X file or an open SMPL-X-layout model")
        self.body = body
        self.num_betas = body.num_betas
        self.num_expression = int(layer.expr_dirs.shape[-1])
        num_vertices = body.num_vertices
        vertex_ids = _vertex_ids(body)
        missing = sorted(k for k in FINGERTIP_VERTEX_KEYS.values() if k not in vertex_ids)
        if missing:
            raise ModelFileError(f"{body.name}: no fingertip vertices {missing} in its vertex ids; pass an "
                                 f"SMPL-X-layout model that names them")

        # Every provided non-body point: a tree joint, or a row over the vertices (fingertips, landmarks).
        joint_names: list[str] = []   # whole-body names of the tree-joint points
        joint_tree: list[int] = []
        row_names: list[str] = []     # whole-body names of the vertex-row points
        rows: list[np.ndarray] = []
        for name in LEFT_HAND_NAMES + RIGHT_HAND_NAMES:
            target = WHOLEBODY_ALIASES.get(name, name)
            if name in FINGERTIP_VERTEX_KEYS:
                vertex = vertex_ids[FINGERTIP_VERTEX_KEYS[name]]
                if not 0 <= vertex < num_vertices:
                    raise ModelFileError(f"{body.name}: fingertip vertex {vertex} ({name}) outside the "
                                         f"{num_vertices}-vertex mesh")
                row = np.zeros(num_vertices)
                row[vertex] = 1.0
                row_names.append(name)
                rows.append(row)
            else:
                kinematic = WHOLEBODY_FROM_KINEMATIC.get(name, target)
                kinematic = kinematic.replace("_hand_root", "_wrist")
                joint_names.append(name)
                joint_tree.append(SMPLX_JOINT_INDEX[kinematic])
        faces = layer.faces_tensor.detach().cpu().long().reshape(-1, 3).numpy()
        lmk_faces = layer.lmk_faces_idx.detach().cpu().long().numpy()
        bary = layer.lmk_bary_coords.detach().cpu().double().numpy()
        for k, name in enumerate(FACE_LANDMARK_NAMES):
            row = np.zeros(num_vertices)
            np.add.at(row, faces[lmk_faces[k]], bary[k])
            row_names.append(name)
            rows.append(row)

        self.joint_point_names, self.row_point_names = tuple(joint_names), tuple(row_names)
        provided = np.zeros(NUM_WHOLEBODY, dtype=bool)
        provided[:NUM_JOINTS] = True
        provided[[WHOLEBODY_INDEX[n] for n in joint_names + row_names]] = True
        self.provided = provided
        dtype = layer.v_template.dtype
        self.register_buffer("joint_tree", torch.as_tensor(joint_tree, dtype=torch.long), persistent=False)
        self.register_buffer("joint_targets", torch.as_tensor([WHOLEBODY_INDEX[n] for n in joint_names]),
                             persistent=False)
        self.register_buffer("rows", torch.as_tensor(np.stack(rows), dtype=dtype), persistent=False)
        self.register_buffer("row_targets", torch.as_tensor([WHOLEBODY_INDEX[n] for n in row_names]),
                             persistent=False)
        self.to(layer.v_template.device)

    # -- parameters ------------------------------------------------------------------------------------------
    @staticmethod
    def full_pose(global_orient: Tensor, body_pose: Tensor, left_hand_pose: Tensor, right_hand_pose: Tensor,
                  jaw_pose: Tensor, leye_pose: Tensor, reye_pose: Tensor) -> Tensor:
        """SMPL-X's full pose (B, 165) from its parts (shapes in the module docstring)."""
        return torch.cat([global_orient, body_pose, jaw_pose, leye_pose, reye_pose, left_hand_pose,
                          right_hand_pose], dim=-1)

    @staticmethod
    def split_pose(full_pose: Tensor) -> dict[str, Tensor]:
        """The parts of a full pose (B, 165), by the names of `forward`'s arguments."""
        return {name: full_pose[:, part] for name, part in POSE_SLICES.items()}

    def skeleton(self) -> tuple[Skeleton, Tensor]:
        """The exact joints-only evaluation of this model's provided points (`fitting.skeleton`), taking the full
        pose (B, 165) and [betas, expression] (B, NB + NE), and for each of its points the whole-body index it is
        (P,). Points: the 49 body joints, then the vertex rows, then the tree joints (the hands' joints)."""
        skeleton = Skeleton(self.body, self.rows, joint_points=self.joint_tree, full_pose=True, expression=True,
                            sparse=True)
        targets = torch.cat([torch.arange(NUM_JOINTS, device=self.rows.device), self.row_targets,
                             self.joint_targets])
        return skeleton, targets

    # -- evaluation ------------------------------------------------------------------------------------------
    def forward(self, betas: Tensor, global_orient: Tensor, body_pose: Tensor, left_hand_pose: Tensor,
                right_hand_pose: Tensor, jaw_pose: Tensor, leye_pose: Tensor, reye_pose: Tensor,
                expression: Tensor, transl: Tensor | None = None) -> WholeBodyOutput:
        """Pose the whole body (shapes and units in the module docstring)."""
        out = self.body.layer(betas=betas, global_orient=global_orient, body_pose=body_pose,
                              left_hand_pose=left_hand_pose, right_hand_pose=right_hand_pose, jaw_pose=jaw_pose,
                              leye_pose=leye_pose, reye_pose=reye_pose, expression=expression, transl=None,
                              pose2rot=True)
        return self._output(out.vertices, out.joints[:, :NUM_SMPLX_JOINTS], transl)

    def forward_rotmat(self, betas: Tensor, expression: Tensor, rotmats: Tensor,
                       transl: Tensor | None = None) -> WholeBodyOutput:
        """`forward` from rotation matrices (B, 55, 3, 3) of SMPL-X's 55 joints in its order (`full_pose`'s, as
        matrices; no hand mean added): what a network that regresses rotations poses (smplx's ``SMPLX.forward``
        reshapes its pose parts as axis-angle, so its ``pose2rot=False`` cannot take matrices; this calls its
        `lbs` directly, as that forward does, with ``pose2rot=False``)."""
        from smplx.lbs import lbs

        layer = self.body.layer
        if rotmats.shape[1:] != (NUM_SMPLX_JOINTS, 3, 3):
            raise ValueError(f"rotmats must be (B, {NUM_SMPLX_JOINTS}, 3, 3), got {tuple(rotmats.shape)}")
        shape = torch.cat([betas, expression], dim=-1)
        dirs = torch.cat([layer.shapedirs[..., :betas.shape[-1]], layer.expr_dirs[..., :expression.shape[-1]]], -1)
        vertices, joints = lbs(shape, rotmats, layer.v_template, dirs, layer.posedirs, layer.J_regressor,
                               layer.parents, layer.lbs_weights, pose2rot=False)
        return self._output(vertices, joints[:, :NUM_SMPLX_JOINTS], transl)

    def _output(self, vertices: Tensor, joints: Tensor, transl: Tensor | None) -> WholeBodyOutput:
        """The whole-body points of a posed mesh (B, V, 3) and its 55 tree joints (B, 55, 3), model frame."""
        body49, _ = self.body.canonical_joints(vertices, joints)
        points = vertices.new_zeros(vertices.shape[0], NUM_WHOLEBODY, 3)
        points[:, :NUM_JOINTS] = body49
        points[:, self.joint_targets] = joints[:, self.joint_tree]
        points[:, self.row_targets] = torch.einsum("rv,bvc->brc", self.rows, vertices)
        if transl is not None:
            shift = transl[:, None]
            vertices, joints = vertices + shift, joints + shift
            points = torch.where(torch.as_tensor(self.provided, device=points.device)[None, :, None],
                                 points + shift, points)
        return WholeBodyOutput(vertices=vertices, joints=joints, points=points)

    def forward_full(self, full_pose: Tensor, betas: Tensor, expression: Tensor,
                     transl: Tensor | None = None) -> WholeBodyOutput:
        """`forward` from a full pose (B, 165)."""
        return self.forward(betas, expression=expression, transl=transl, **self.split_pose(full_pose))
