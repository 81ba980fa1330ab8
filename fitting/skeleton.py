"""Exact joints-only evaluation of a body model's 49 canonical joints, with analytic Jacobians.

A fit never needs the whole mesh. Linear blend skinning is linear in the vertices, so a keypoint that is a
weighted sum of vertices, k = sum_v w_v sum_j W_vj (R_j (v_v - J_j) + p_j), equals

    k = sum_j ( A_kj p_j + R_j B_kj(beta) ),   A_kj = sum_v w_v W_vj,   B_kj = sum_v w_v W_vj (v_v - J_j),

where R_j, p_j are joint j's global rotation and position and B is linear in the shape coefficients. Every
canonical joint (kinematic joints: A one-hot, B = 0) is such a blend of points rigidly attached to the joints of
the model's kinematic tree: SMPL's and the open model's 24, SMPL-H's 52, SMPL-X's 55 (hand, jaw and eye joints
are just more joints of the tree). Evaluating it costs one forward-kinematics pass over the tree instead of
skinning 10^4 vertices, and its derivatives are closed-form (see `jacobian`). Exact for models without pose
correctives (the open model); for real SMPL-family files it ignores the pose blend shapes' millimetre-level effect
on vertex-derived keypoints (the kinematic joints are exact either way).

Parameters are the body model's (`BodyModel`): pose (B, 72) axis-angle, radians, [global orient, 23 body joints],
each slot driving the layer joint `BodyModel.pose_layer_joints` names. SMPL-H and SMPL-X have 21 body joints, so
their pose slots 22 and 23 (SMPL's hand joints) drive nothing, and their hand, jaw and eye joints keep the zero
pose the body model gives them (flat hands, closed jaw): none of the 49 canonical joints observes them. betas
(B, NB). Outputs are metres in the model frame (add the camera translation to get camera-frame points).

Any other linear regressor over the vertices is such a blend too (vertices are linear in the joint transforms),
so `Skeleton(body, vertex_rows)` appends the rows of a (R, V) regressor after the 49 points, exact in the same
sense: `Skeleton(body, body.h36m_regressor)` gives the model's 17 Human3.6M joints as points 49–65
(`fitting.fit3d` fits Human3.6M's 3D joints with them).

Any tree, any parameterisation (SMPLify-X's whole-body fit, `fitting.smplifyx`): ``joint_points`` appends tree
joints as points (A one-hot, B = 0: a hand's finger joints); ``full_pose=True`` makes the pose vector drive every
joint of the tree in order, (B, 3J) (SMPL-X: (B, 165) = global orient, 21 body, jaw, two eyes, 2 x 15 hand);
``expression=True`` appends SMPL-X's expression directions to the shape directions, so the shape argument is
(B, NB + NE) = [betas, expression], both linear in the rest mesh exactly as betas are (smplx concatenates them the
same way). The defaults are the 72-value SMPL parameterisation above, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.errors import ModelFileError
from fitting.body_model import BodyModel

VERTEX_ROW_CHUNK = 256  # vertex rows blended at a time (`Skeleton`): bounds the (rows, vertices, joints) product


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices (..., 3, 3) of vectors (..., 3): skew(a) @ b = a x b."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape + (3,))


def _cross(u: Tensor, m: Tensor, dim: int = 2) -> Tensor:
    """u x m for vectors (..., 3) broadcast against each other, the components stacked at ``dim`` (u (B, 1, D, k, 3)
    and m (B, P, D, 1, 3): (B, P, 3, D, k)), written out: several times faster than `torch.linalg.cross` on
    broadcast operands."""
    ux, uy, uz = u.unbind(-1)
    mx, my, mz = m.unbind(-1)
    return torch.stack([uy * mz - uz * my, uz * mx - ux * mz, ux * my - uy * mx], dim)


def rodrigues(aa: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) of axis-angle vectors (..., 3); smooth at zero."""
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]
    theta = theta2.clamp_min(1e-12).sqrt()
    k = skew(aa)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a * k + b * (k @ k)


def right_jacobian(aa: Tensor) -> Tensor:
    """SO(3) right Jacobian (..., 3, 3): exp(aa + d) ~ exp(aa) exp(Jr(aa) d) for small d."""
    theta2 = (aa * aa).sum(-1, keepdim=True)[..., None]
    theta = theta2.clamp_min(1e-12).sqrt()
    k = skew(aa)
    small = theta2 < 1e-8
    a = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    b = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (theta - torch.sin(theta)) / (theta2 * theta).clamp_min(1e-12))
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye - a * k + b * (k @ k)


def compose_axis_angle(first: Tensor, second: Tensor) -> Tensor:
    """Axis-angle of R(first) @ R(second), (B, 3)."""
    rot = rodrigues(first) @ rodrigues(second)
    return matrix_to_axis_angle(rot)


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """Axis-angle (B, 3) of rotation matrices (B, 3, 3), robust near 0 and π."""
    cos = ((rot.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cos)
    axis = torch.stack([rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]], -1)
    sin = torch.sin(angle)
    near_pi = sin < 1e-4
    small = angle < 1e-6
    aa = axis * (angle / (2 * sin.clamp_min(1e-12)))[:, None]
    # near π: axis from the diagonal of (R + I) / 2 = a aᵀ
    sym = (rot + torch.eye(3, dtype=rot.dtype, device=rot.device)) / 2
    col = sym.diagonal(dim1=-2, dim2=-1).argmax(-1)
    a = sym[torch.arange(len(rot), device=rot.device), :, col]
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sign = torch.sign((a * axis).sum(-1) + 1e-12)
    aa_pi = a * (angle * torch.where(sign == 0, torch.ones_like(sign), sign))[:, None]
    aa = torch.where(near_pi[:, None] & ~small[:, None], aa_pi, aa)
    return torch.where(small[:, None], torch.zeros_like(aa), aa)


@dataclass
class SkeletonState:
    """One evaluation of points `subset` (indices into the skeleton's points, or None for all): global rotations
    (B, J, 3, 3) and positions (B, J, 3) of the tree's J joints, and the points (B, P, 3)."""

    pose: Tensor
    betas: Tensor
    subset: Tensor | None
    rot: Tensor
    pos: Tensor
    attached: Tensor  # (B, P, J, 3): R_j B_pj, the rotated attachment offsets
    points: Tensor


@dataclass
class RootFrame:
    """Points (B, P, 3) that move with the global orientation alone (`Skeleton.root_frame`): anchor + R(ω) local,
    model frame, m. Exact: the same points and orientation Jacobian as evaluating the skeleton at that ω."""

    anchor: Tensor                                   # (B, P, 3): S_p0 p_0, the root's share of the point
    local: Tensor                                    # (B, P, 3): x_p, the rest of it in the root's frame

    def select(self, index: Tensor) -> "RootFrame":
        """The points ``index`` (B, K) of each example."""
        def pick(t: Tensor) -> Tensor:
            return torch.gather(t, 1, index[..., None].expand(-1, -1, 3))
        return RootFrame(anchor=pick(self.anchor), local=pick(self.local))

    def points(self, orient: Tensor) -> Tensor:
        """The points (B, P, 3) at global orientation ``orient`` (B, 3), axis-angle."""
        return self.anchor + self.local @ rodrigues(orient).transpose(-1, -2)

    def jacobian(self, orient: Tensor) -> Tensor:
        """d points / d orient (B, P, 3, 3) at ``orient`` (B, 3): `Skeleton.jacobian`'s first three pose columns.
        A small step d turns R to R exp(Jr d), moving a point by (R Jr d) × (R x_p): column k is (R Jr e_k) × m_p."""
        rot = rodrigues(orient)
        m = self.local @ rot.transpose(-1, -2)                                          # (B, P, 3): R x_p
        cols = (rot @ right_jacobian(orient)).transpose(-1, -2)                         # (B, 3, 3): k-th column
        return _cross(cols[:, None], m[:, :, None], -1).transpose(-1, -2)               # (B, P, 3 (c), 3 (k))


def select_state(mask: Tensor, new: SkeletonState, old: SkeletonState) -> SkeletonState:
    """Per example, ``new``'s evaluation where ``mask`` (B,) holds, else ``old``'s."""

    def pick(a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask.reshape((-1,) + (1,) * (a.dim() - 1)), a, b)

    return SkeletonState(pose=pick(new.pose, old.pose), betas=pick(new.betas, old.betas), subset=new.subset,
                         rot=pick(new.rot, old.rot),
                         pos=pick(new.pos, old.pos), attached=pick(new.attached, old.attached),
                         points=pick(new.points, old.points))


def take_state(state: SkeletonState, rows: Tensor) -> SkeletonState:
    """The evaluation of the examples ``rows`` (K,) of ``state``, in that order."""
    return SkeletonState(pose=state.pose[rows], betas=state.betas[rows], subset=state.subset, rot=state.rot[rows],
                         pos=state.pos[rows], attached=state.attached[rows], points=state.points[rows])


def _blend_rows(rows: Tensor, weights: Tensor, v_template: Tensor, shapedirs: Tensor, j_template: Tensor,
                j_dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A (K, J), B0 (K, J, 3) and Bd (K, J, 3, NB) of keypoint rows (K, U) over U vertices with skinning weights
    (U, J), rest positions (U, 3) and shape directions (U, 3, NB); rest joints (J, 3) and their shape directions
    (J, 3, NB). float64 (module docstring: k = sum_j A_kj p_j + R_j B_kj(beta))."""
    a = rows @ weights                                                        # (K, J)
    wv = rows[:, :, None] * weights[None]                                     # (K, U, J)
    b0 = torch.einsum("kvj,vc->kjc", wv, v_template) - a[..., None] * j_template[None]
    bd = torch.einsum("kvj,vcb->kjcb", wv, shapedirs) - a[..., None, None] * j_dirs[None]
    return a, b0, bd


class Skeleton(torch.nn.Module):
    """The 49 canonical joints of a `BodyModel` as blends of joint-attached points (module docstring), followed
    by the R rows of ``vertex_rows`` (R, V) when given (e.g. ``body.h36m_regressor``), then the tree joints
    ``joint_points`` (N,) when given: P = 49 + R + N points.

    full_pose: the pose argument is (B, 3J), one axis-angle per tree joint in tree order, instead of the body
    model's (B, 72). expression: the shape argument is (B, NB + NE), betas then SMPL-X expression coefficients
    (the layer's ``expr_dirs``; SMPL-X only)."""

    def __init__(self, body: BodyModel, vertex_rows: Tensor | None = None, *,
                 joint_points: Tensor | None = None, full_pose: bool = False, expression: bool = False,
                 sparse: bool = False):
        super().__init__()
        layer = body.layer
        dtype = layer.v_template.dtype
        parents = layer.parents.cpu().numpy().astype(np.int64)
        num_joints = len(parents)
        if parents[0] >= 0 or (parents[1:] >= np.arange(1, num_joints)).any() or (parents[1:] < 0).any():
            raise ModelFileError(f"{body.name}: the kinematic tree must list each parent before its children "
                                 f"with joint 0 the root (kintree_table)")
        nb = body.num_betas
        # precomputed in float64 on the CPU, then moved to the body model's device with the module
        device = layer.v_template.device
        used = body.keypoint_cols.cpu()                                        # vertices some keypoint row reads
        v_template = layer.v_template.detach().cpu().double()                 # (V, 3)
        shapedirs = layer.shapedirs.detach().cpu().double()[..., :nb]         # (V, 3, NB)
        if expression:  # SMPL-X's expression directions after the shape's: (V, 3, NB + NE)
            if not hasattr(layer, "expr_dirs"):
                raise ModelFileError(f"{body.name}: a {body.family} model has no expression directions; "
                                     f"expressions need an SMPL-X-layout model")
            shapedirs = torch.cat([shapedirs, layer.expr_dirs.detach().cpu().double()], -1)
            nb = shapedirs.shape[-1]
        j_reg = layer.J_regressor.detach().cpu().double()                     # (J, V)
        weights = layer.lbs_weights.detach().cpu().double()[used]             # (U, J)
        j_template = j_reg @ v_template                                       # (J, 3)
        j_dirs = torch.einsum("jv,vcb->jcb", j_reg, shapedirs)               # (J, 3, NB)

        # Keypoint rows over the used vertices (K, U), and the kinematic rows, combined through the mixer.
        kp = body.keypoint_weights.detach().double().cpu()                    # (K, U)
        a_kp, b0_kp, bd_kp = _blend_rows(kp, weights, v_template[used], shapedirs[used], j_template, j_dirs)
        mixer = body.mixer.detach().double().cpu()                            # (P, 24 + K)
        num_kinematic = len(body.kinematic_layer_joints)
        kinematic = torch.zeros(num_kinematic, num_joints, dtype=torch.float64)
        kinematic[torch.arange(num_kinematic), torch.as_tensor(body.kinematic_layer_joints)] = 1.0
        a = mixer[:, :num_kinematic] @ kinematic + mixer[:, num_kinematic:] @ a_kp   # (P, J)
        b0 = torch.einsum("pk,kjc->pjc", mixer[:, num_kinematic:], b0_kp)            # (P, J, 3)
        bd = torch.einsum("pk,kjcb->pjcb", mixer[:, num_kinematic:], bd_kp)          # (P, J, 3, NB)
        if vertex_rows is not None:  # more points: rows over the vertices they read
            rows = vertex_rows.detach().cpu().double()
            if rows.dim() != 2 or rows.shape[1] != layer.v_template.shape[0]:
                raise ModelFileError(f"{body.name}: vertex rows of shape {tuple(rows.shape)}, expected "
                                     f"(R, {layer.v_template.shape[0]}) for this mesh")
            all_weights = layer.lbs_weights.detach().cpu().double()
            # in chunks of rows, each over the vertices it reads: a row per vertex (the silhouette term's
            # vertices, given as a sparse identity) would otherwise make an (R, V, J) product
            chunks = ([rows.index_select(0, part).to_dense()
                       for part in torch.arange(rows.shape[0]).split(VERTEX_ROW_CHUNK)]
                      if rows.is_sparse else rows.split(VERTEX_ROW_CHUNK))
            for chunk in chunks:
                cols = torch.nonzero(chunk.abs().sum(0) > 0)[:, 0]
                a_x, b0_x, bd_x = _blend_rows(chunk[:, cols], all_weights[cols], v_template[cols], shapedirs[cols],
                                              j_template, j_dirs)
                a, b0, bd = torch.cat([a, a_x]), torch.cat([b0, b0_x]), torch.cat([bd, bd_x])
        if joint_points is not None:  # more points: tree joints themselves (A one-hot, no attached offset)
            joints = torch.as_tensor(joint_points, dtype=torch.long).cpu()
            if joints.dim() != 1 or (len(joints) and (joints.min() < 0 or joints.max() >= num_joints)):
                raise ModelFileError(f"{body.name}: joint points {joints.tolist()} outside the {num_joints}-joint "
                                     f"tree")
            a_j = torch.zeros(len(joints), num_joints, dtype=torch.float64)
            a_j[torch.arange(len(joints)), joints] = 1.0
            a = torch.cat([a, a_j])
            b0 = torch.cat([b0, b0.new_zeros(len(joints), num_joints, 3)])
            bd = torch.cat([bd, bd.new_zeros(len(joints), num_joints, 3, nb)])

        # Tree structure: depth levels for level-parallel kinematics; descendant-or-self and ancestor masks.
        depth = np.zeros(num_joints, dtype=np.int64)
        for j in range(1, num_joints):
            depth[j] = depth[parents[j]] + 1
        self.levels = [torch.as_tensor(np.flatnonzero(depth == d), device=device) for d in range(1, depth.max() + 1)]
        desc = np.eye(num_joints)
        for j in range(num_joints - 1, 0, -1):  # parents come before children (checked above)
            desc[parents[j]] += desc[j]
        desc = (desc > 0).astype(np.float64)                                  # desc[a, j]: j in subtree of a

        # Which pose slot (of the 24 in a (B, 72) pose) drives which tree joint; the other joints keep zero pose.
        slot_joints = (np.arange(num_joints) if full_pose
                       else np.asarray(body.pose_layer_joints, dtype=np.int64))
        slots = np.flatnonzero(slot_joints >= 0)
        self.num_joints, self.num_slots, self.num_betas = num_joints, len(slot_joints), nb
        self.identity_slots = bool(len(slots) == num_joints and (slot_joints == np.arange(num_joints)).all())
        self.root_slot = bool(len(slots) and slots[0] == 0 and slot_joints[0] == 0)  # pose slot 0 drives the root
        self.register_buffer("slots", torch.as_tensor(slots))                 # (D,) driving pose slots
        self.register_buffer("slot_joints", torch.as_tensor(slot_joints[slots]))  # (D,) the tree joints they drive
        self.register_buffer("parents", torch.as_tensor(parents))
        self.register_buffer("j_template", j_template.to(dtype))
        self.register_buffer("j_dirs", j_dirs.to(dtype))
        self.register_buffer("a", a.to(dtype))
        self.register_buffer("b0", b0.to(dtype))
        self.register_buffer("bd", bd.to(dtype))
        self.register_buffer("desc", torch.as_tensor(desc, dtype=dtype))
        # S[p, a] = sum_j A_pj desc[a, j]: how much of point p moves rigidly with joint a's subtree
        self.register_buffer("subtree_share", (a @ torch.as_tensor(desc).T).to(dtype))
        # Sparse form: each point's support (the K joints it has weight or offset on, padded with weight 0).
        self.sparse = sparse
        if sparse:
            support = (a != 0) | (b0.abs().sum(-1) > 0) | (bd.abs().sum((-1, -2)) > 0)       # (P, J)
            width = max(int(support.sum(1).max()), 1)
            order = torch.argsort((~support).to(torch.int8), dim=1, stable=True)[:, :width]  # supported first
            valid = torch.gather(support, 1, order)
            rows = torch.arange(len(a))[:, None]
            self.register_buffer("idx", order)                                              # (P, K)
            self.register_buffer("a_s", (a[rows, order] * valid).to(dtype))                 # (P, K)
            self.register_buffer("b0_s", (b0[rows, order] * valid[..., None]).to(dtype))    # (P, K, 3)
            self.register_buffer("bd_s", (bd[rows, order] * valid[..., None, None]).to(dtype))  # (P, K, 3, NB)
            # desc_s[p, k, a] = desc[a, idx[p, k]]: joint a's subtree carries point p's k-th support joint
            self.register_buffer("desc_s", torch.as_tensor(desc, dtype=dtype).T[order])     # (P, K, J)
        self.to(device)

    def _rows(self, subset: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if subset is None:
            return self.a, self.b0, self.bd, self.subtree_share
        return self.a[subset], self.b0[subset], self.bd[subset], self.subtree_share[subset]

    def local_rotations(self, pose: Tensor) -> Tensor:
        """Every tree joint's rotation (B, J, 3, 3) relative to its parent, from pose (B, 72) (or (B, 3J) with
        ``full_pose``): the driven joints' Rodrigues, identity (zero pose) elsewhere."""
        return self.slot_rotations(rodrigues(pose.reshape(pose.shape[0], self.num_slots, 3)))

    def slot_rotations(self, local: Tensor) -> Tensor:
        """Every tree joint's rotation (B, J, 3, 3) from one per pose slot (B, slots, 3, 3): the driven joints'
        own, identity elsewhere (differentiable in ``local``)."""
        if self.identity_slots:
            return local
        tree = torch.eye(3, dtype=local.dtype, device=local.device).repeat(local.shape[0], self.num_joints, 1, 1)
        tree[:, self.slot_joints] = local[:, self.slots]
        return tree

    def _pose_columns(self, pose: Tensor, rot_d: Tensor, m: Tensor) -> Tensor:
        """d points / d pose (B, P, 3, 3 * slots) from the driven joints' global rotations (B, D, 3, 3) and the
        subtree-carried parts m (B, P, D, 3) (`jacobian`'s docstring); undriven slots get zero columns."""
        batch, num_points = m.shape[:2]
        pose_slots = pose.reshape(batch, self.num_slots, 3)
        jr = right_jacobian(pose_slots if self.identity_slots else pose_slots[:, self.slots])   # (B, D, 3, 3)
        cols = (rot_d @ jr).transpose(-1, -2)                                  # columns of R_a Jr_a, (B, D, 3, 3)
        d_driven = _cross(cols[:, None], m[:, :, :, None, :])                  # (B, P, c, D, k)
        if self.identity_slots:
            return d_driven.reshape(batch, num_points, 3, 3 * self.num_slots)
        d_pose = d_driven.new_zeros(batch, num_points, 3, self.num_slots, 3)
        d_pose[:, :, :, self.slots] = d_driven
        return d_pose.reshape(batch, num_points, 3, 3 * self.num_slots)

    def _sparse_rows(self, subset: Tensor | None) -> tuple[Tensor, ...]:
        names = ("idx", "a_s", "b0_s", "bd_s", "desc_s", "subtree_share")
        rows = tuple(getattr(self, n) for n in names)
        return rows if subset is None else tuple(r[subset] for r in rows)

    def _forward_sparse(self, pose: Tensor, betas: Tensor, subset: Tensor | None, rot_t: Tensor,
                        pos_t: Tensor) -> SkeletonState:
        """The points over each one's support only: attached (B, P, K, 3) = R_j B_pj of its K joints."""
        idx, a_s, b0_s, bd_s, _, _ = self._sparse_rows(subset)
        batch, nb = pose.shape[0], betas.shape[1]
        num_points, width = idx.shape
        rot_g = rot_t[:, idx]                                                 # (B, P, K, 3, 3)
        b = b0_s + (betas @ bd_s.reshape(-1, nb).T).reshape(batch, num_points, width, 3)
        attached = (rot_g @ b[..., None])[..., 0]                             # (B, P, K, 3)
        points = (a_s[..., None] * pos_t[:, idx]).sum(2) + attached.sum(2)
        return SkeletonState(pose=pose, betas=betas, subset=subset, rot=rot_t, pos=pos_t, attached=attached,
                             points=points)

    def _jacobian_sparse(self, state: SkeletonState, dproj: Tensor | None) -> tuple[Tensor, Tensor]:
        """`jacobian` over each point's support (the sparse form; same formulas)."""
        idx, a_s, _, bd_s, desc_s, share = self._sparse_rows(state.subset)
        batch = state.pose.shape[0]
        num_points = idx.shape[0]
        driven = self.slot_joints
        carried = a_s[None, ..., None] * state.pos[:, idx] + state.attached     # (B, P, K, 3): c_pk
        desc_d = desc_s if self.identity_slots else desc_s[..., driven]          # (P, K, D)
        share_d = share if self.identity_slots else share[:, driven]            # (P, D)
        pos_d = state.pos if self.identity_slots else state.pos[:, driven]      # (B, D, 3)
        rot_d = state.rot if self.identity_slots else state.rot[:, driven]      # (B, D, 3, 3)
        # m_pa = sum_k desc[a, j_pk] c_pk - S_pa p_a, as P batched (B*3, K) @ (K, D) products
        m = torch.bmm(carried.permute(1, 0, 3, 2).reshape(num_points, batch * 3, -1), desc_d)
        m = m.reshape(num_points, batch, 3, -1).permute(1, 0, 3, 2) - share_d[None, :, :, None] * pos_d[:, None]
        d_pose = self._pose_columns(state.pose, rot_d, m)
        d_betas = (a_s[None, ..., None, None] * self._joint_beta_columns(state)[:, idx]).sum(2)   # (B, P, 3, NB)
        d_betas = d_betas + torch.einsum("bpkce,pkef->bpcf", state.rot[:, idx], bd_s)
        if dproj is not None:
            return dproj @ d_pose, dproj @ d_betas
        return d_pose, d_betas

    def forward(self, pose: Tensor, betas: Tensor, subset: Tensor | None = None) -> SkeletonState:
        """Evaluate the points `subset` (default: all, the 49, any vertex rows and joint points) for pose (B, 72)
        (or (B, 3J) with ``full_pose``) and betas (B, NB) (or (B, NB + NE) with ``expression``)."""
        return self.posed(self.local_rotations(pose), betas, subset, pose)

    def posed(self, local: Tensor, betas: Tensor, subset: Tensor | None = None,
              pose: Tensor | None = None) -> SkeletonState:
        """`forward` from the tree joints' local rotation matrices (B, J, 3, 3) (`slot_rotations` of a pose's)
        instead of a pose (differentiable in them, as a round trip through axis-angle is not everywhere); the
        state's pose is ``pose`` (None if not given: the Jacobians need it)."""
        batch, nb, num_joints = local.shape[0], betas.shape[1], self.num_joints
        rest = self.j_template + (betas @ self.j_dirs.reshape(-1, nb).T).reshape(batch, num_joints, 3)
        rot_t = torch.empty_like(local)
        pos_t = torch.empty_like(rest)
        rot_t[:, 0], pos_t[:, 0] = local[:, 0], rest[:, 0]
        offsets = rest - rest[:, self.parents.clamp_min(0)]
        for level in self.levels:  # all joints of one tree depth at once
            par = self.parents[level]
            rot_t[:, level] = rot_t[:, par] @ local[:, level]
            pos_t[:, level] = pos_t[:, par] + (rot_t[:, par] @ offsets[:, level, :, None])[..., 0]
        if self.sparse:
            return self._forward_sparse(pose, betas, subset, rot_t, pos_t)
        a, b0, bd, _ = self._rows(subset)
        num_points = a.shape[0]
        b = b0 + (betas @ bd.reshape(-1, nb).T).reshape(batch, num_points, num_joints, 3)   # (B, P, J, 3)
        # R_j B_pj, (B, P, J, 3): one batched (P, 3) @ (3, 3) product per (example, joint), 4x faster than the
        # broadcast product summed
        attached = (b.transpose(1, 2) @ rot_t.transpose(-1, -2)).transpose(1, 2)
        points = a @ pos_t + attached.sum(2)
        return SkeletonState(pose=pose, betas=betas, subset=subset, rot=rot_t, pos=pos_t, attached=attached,
                             points=points)

    def jacobian(self, state: SkeletonState, dproj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """d points / d pose (B, P, 3, 72) (or 3J with ``full_pose``) and d points / d betas (B, P, 3, NB) (or
        NB + NE with ``expression``), in the model frame.

        dproj: d pixels / d camera-frame point (B, P, 2, 3) (`core.camera.projection_jacobian`); given, the
        Jacobians are of the pixels, (B, P, 2, ·).

        Rotating joint a's subtree by a small local increment d (R_a -> R_a exp(d)) moves a point by
        -skew(m_pa) R_a d = (R_a d) x m_pa, where m_pa is the part of the point carried by the subtree, relative
        to joint a; the axis-angle chain rule adds the SO(3) right Jacobian. Pose slots that drive no joint of
        this tree (SMPL-H/SMPL-X: 22, 23) get zero columns.
        """
        if self.sparse:
            return self._jacobian_sparse(state, dproj)
        if dproj is not None:
            jac = self.pixel_jacobian(state, dproj)
            return jac[..., :3 * self.num_slots], jac[..., 3 * self.num_slots:]
        m, rot_d = self._subtree_parts(state)
        return self._pose_columns(state.pose, rot_d, m.permute(1, 2, 3, 0)), self._beta_columns(state)

    def root_frame(self, state: SkeletonState) -> "RootFrame":
        """The points of ``state`` as they move with the global orientation alone (pose slot 0, the root; the body
        pose and shape held): SMPLify's camera stage turns a rigid body. Every point is S_p0 p_0 + R_0 x_p (the
        root's subtree carries it whole; S_p0 its share of the root, p_0 the root joint), so one evaluation gives
        x_p = R_0ᵀ (point − S_p0 p_0), and any other orientation is a rotation of it: no pass over the tree."""
        if not self.root_slot:                                   # a Python bool: no host sync on a GPU
            raise ModelFileError("this skeleton's pose slot 0 does not drive the root joint: no global orientation")
        share = self.subtree_share[:, 0] if state.subset is None else self.subtree_share[state.subset, 0]
        anchor = share[:, None] * state.pos[:, None, 0]                                  # (B, P, 3)
        local = (state.points - anchor) @ state.rot[:, 0]                                # R_0ᵀ (·), row vectors
        return RootFrame(anchor=anchor, local=local)

    def pixel_jacobian(self, state: SkeletonState, dproj: Tensor) -> Tensor:
        """d pixels / d [pose, betas] (B, P, 2, 72 + NB) (or 3J + NB + NE) for dproj (B, P, 2, 3), d pixels /
        d camera-frame point (`core.camera.projection_jacobian`): `jacobian`'s columns through the projection,
        without forming the 3D ones. Pixel row u of point p moves with joint a's k-th rotation column g_ak (of
        R_a Jr_a) by u . (g_ak x m_pa) = g_ak . (m_pa x u): two cross products per (point, joint) instead of three
        columns' and a (2, 3) @ (3, 72) product, all as whole (B, P, D) planes (components first), which run several
        times faster on a CPU than products broadcast over trailing 2- and 3-long dims."""
        if self.sparse:
            return torch.cat(self._jacobian_sparse(state, dproj), -1)
        (mx, my, mz), rot_d = self._subtree_parts(state)                      # (B, P, D) each, (B, D, 3, 3)
        batch, num_points = mx.shape[:2]
        pose_slots = state.pose.reshape(batch, self.num_slots, 3)
        jr = right_jacobian(pose_slots if self.identity_slots else pose_slots[:, self.slots])   # (B, D, 3, 3)
        g = (rot_d @ jr).permute(2, 3, 0, 1)[:, :, :, None]                    # g[c, k]: (B, 1, D)
        columns = []                                                            # per pixel row: (B, P, D, 3)
        for i in range(2):
            ux, uy, uz = (dproj[:, :, i, c, None] for c in range(3))           # (B, P, 1)
            w = (my * uz - mz * uy, mz * ux - mx * uz, mx * uy - my * ux)       # m x u, (B, P, D) each
            columns.append(torch.stack([g[0, k] * w[0] + g[1, k] * w[1] + g[2, k] * w[2] for k in range(3)], -1))
        d_pose = torch.stack(columns, 2)                                        # (B, P, 2, D, 3)
        if not self.identity_slots:                                             # undriven slots: zero columns
            d_pose = d_pose.new_zeros(batch, num_points, 2, self.num_slots, 3).index_copy(3, self.slots, d_pose)
        return torch.cat([d_pose.flatten(-2), dproj @ self._beta_columns(state)], -1)

    def _subtree_parts(self, state: SkeletonState) -> tuple[Tensor, Tensor]:
        """m (3, B, P, D), components first: the part of each point that driven joint a's subtree carries,
        relative to joint a (`jacobian`); and the driven joints' global rotations (B, D, 3, 3). Dense form."""
        a, _, _, share = self._rows(state.subset)
        batch, num_points, num_joints = state.pose.shape[0], a.shape[0], self.num_joints
        driven = self.slot_joints                                              # (D,)
        carried = a[None, :, :, None] * state.pos[:, None] + state.attached  # (B, P, J, 3): c_pj
        desc = self.desc if self.identity_slots else self.desc[driven]         # (D, J)
        share_d = share if self.identity_slots else share[:, driven]           # (P, D)
        pos_d = state.pos if self.identity_slots else state.pos[:, driven]     # (B, D, 3)
        rot_d = state.rot if self.identity_slots else state.rot[:, driven]     # (B, D, 3, 3)
        # sum_j desc[a, j] c_pj as one GEMM (D, J) @ (J, B*P*3): the shared matrix on the left, not broadcast
        # over B*P small products (3.6x faster)
        m = (desc @ carried.permute(2, 0, 1, 3).reshape(num_joints, -1)).reshape(-1, batch, num_points, 3)
        return m.permute(3, 1, 2, 0) - share_d * pos_d.permute(2, 0, 1)[:, :, None], rot_d

    def _joint_beta_columns(self, state: SkeletonState) -> Tensor:
        """d joint positions / d betas (B, J, 3, NB): each joint moves with its ancestors' rest offsets (j_dirs of a
        joint less its parent's), each rotated by the offset's parent frame, summed down the tree."""
        batch, nb, num_joints = state.pose.shape[0], state.betas.shape[1], self.num_joints
        par = self.parents.clamp_min(0)
        rot_par = state.rot[:, par]                                            # (B, J, 3, 3)
        rot_par[:, 0] = torch.eye(3, dtype=rot_par.dtype, device=rot_par.device)
        jd_off = self.j_dirs - self.j_dirs[par] * (self.parents >= 0).to(self.j_dirs.dtype)[:, None, None]
        e = rot_par @ jd_off                                                   # (B, J, 3, NB)
        return (self.desc.T @ e.reshape(batch, num_joints, -1)).reshape(batch, num_joints, 3, nb)  # ancestors

    def _beta_columns(self, state: SkeletonState) -> Tensor:
        """d points / d betas (B, P, 3, NB): rest joint positions and attachment offsets are linear in beta."""
        a, _, bd, _ = self._rows(state.subset)
        batch, num_points, nb, num_joints = state.pose.shape[0], a.shape[0], state.betas.shape[1], self.num_joints
        dpos = self._joint_beta_columns(state)
        # sum_j R_j Bd_pj as one GEMM: (B*3, J*3) @ (J*3, P*NB)
        rot_rows = state.rot.permute(0, 2, 1, 3).reshape(batch * 3, 3 * num_joints)
        bd_cols = bd.permute(1, 2, 0, 3).reshape(3 * num_joints, num_points * nb)
        attached_d = (rot_rows @ bd_cols).reshape(batch, 3, num_points, nb).transpose(1, 2)
        return (a @ dpos.reshape(batch, num_joints, -1)).reshape(batch, num_points, 3, nb) + attached_d
