"""Fitting SMPL-format bodies to 3D evidence: 3D joints, several calibrated views' 2D keypoints, one shape per
subject across a sequence, and an optional temporal smoothness term.

This is the fitting mode that turns datasets with 3D joints (Human3.6M, MPI-INF-3DHP) into pseudo-ground-truth
SMPL-format fits, the role MoSh plays in SPIN. Per frame f it minimises, over pose θ_f (72), translation t_f (3)
and the betas β_s of the frame's subject s (shared by all of that subject's frames):

    w_3d² Σ_j c_j² ρ_σ3(‖1000 (P_j(θ_f, β_s) + t_f − X_fj)‖)                      3D joints, residual in mm
  + w_2d² Σ_v Σ_j c_vj² Σ_xy ρ_σ2(π_v(R_v (P_j + t_f) + T_v) − x_vj)              2D keypoints of each view, px
  + w_pose² E_GMM(θ_f) + w_angle² Σ exp(s·θ_f)²                                   SMPLify's pose priors
  + w_time² ‖θ_f,body − θ_prev(f),body‖²                                          consecutive frames (optional)

plus w_shape² ‖β_s‖² once per subject; ρ is Geman–McClure (`fitting.smplify.gmof`), on the joint distance in 3D
and per coordinate in 2D, as SMPLify's. Weights default to SPIN's for the priors.

**Which model points.** A dataset's 3D joints are its own skeleton's, so the correspondence matters: Human3.6M's
17 joints are its kinematic skeleton, not the body model's canonical joints (its hips are 50-70 mm from the
canonical "surface" hips). With ``correspondence="h36m"`` (default) the canonical slots that hold Human3.6M joints
(`core.joints.H36M_JOINTS`) are matched by the body model's Human3.6M regressor joints (`BodyModel.h36m_joints`:
the points the regressor is made to match); every other slot by the canonical joint of the same name
(``"canonical"``: all slots so). The regressor is linear in the vertices, so these joints are points of the
joints-only `fitting.skeleton.Skeleton` too (`Skeleton(body, body.h36m_regressor)`), exact and with analytic
Jacobians: no mesh is evaluated while fitting.

**Solver.** Batched Levenberg–Marquardt in float64 with the skeleton's analytic Jacobians; Geman–McClure by
iteratively reweighted least squares, the max-mixture prior by its active component (as `fitting.smplify`'s fast
mode). The normal equations (`NormalEquations`) have one 75 × 75 block per frame (pose, translation), one NB × NB
block per subject (betas), the frame-betas couplings and, with the temporal term, one block per link between
consecutive frames. They are solved by the Schur complement on the betas (``solver="schur"``, cost linear in the
frames: the frames' blocks are eliminated along each sequence, leaves first, with no fill-in, `frame_solve`), or
stacked per subject into one dense system (``"dense"``, the reference). A step is accepted when it lowers its
subject's whole objective; damping is per subject. Two stages (`Fit3D.stages`): a short warm-up with the pose and
angle priors five times stronger keeps limbs out of implausible minima while the body is far from the evidence
(SMPLify anneals its prior weights for the same reason), then the configured weights. ``fixed_betas`` (a
`Fit3D.__call__` argument) keeps each subject's betas as given and fits only poses and translations: how a
subject's shape, fitted once on a subset of its frames, is kept across all of them in batches
(`fits.seeding3d`).

**Start.** Without a given start, a frame starts from the mean body (zero body pose, betas 0) turned and moved
onto its 3D joints by a rigid alignment (its torso joints where at least three are known); with 2D keypoints only,
onto the joints triangulated from the views (`triangulate`, at least two views per joint). A 3D start has no
front/back ambiguity. A frame with neither (one view) starts as SMPLify does, upright and facing its best view at
the depth its torso gives.

Conventions: joints_3d (F, 49, 4) metres in each frame's reference frame + confidence (0: unused), canonical
layout; keypoints (F, V, 49, 3) px of view v's image + confidence; a view maps reference-frame points X to its
camera frame as R X + T (rotation (F, V, 3, 3), translation (F, V, 3) m) and projects them with focal (F, V, 2)
px and principal point center (F, V, 2) px (no distortion). Poses are axis-angle radians (global orientation in
the reference frame), betas (NB,), translations metres: the body model's output + transl is the reference-frame
body. Inputs are never modified; results are deterministic.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from core.camera import projection_jacobian, translation_from_torso
from core.errors import FitloopError, ModelFileError
from core.joints import H36M_JOINTS, NUM_JOINTS, indices
from fitting.body_model import BodyModel
from fitting.priors import (
    ANGLE_PRIOR_INDICES,
    ANGLE_PRIOR_SIGNS,
    BODY_POSE_DIM,
    SPIN_ANGLE_PRIOR_WEIGHT,
    SPIN_POSE_PRIOR_WEIGHT,
    SPIN_SHAPE_PRIOR_WEIGHT,
    MaxMixturePrior,
)
from fitting.skeleton import Skeleton, SkeletonState, matrix_to_axis_angle, select_state
from fitting.smplify import TORSO_PAIR_INDEX, gmof

Correspondence = Literal["canonical", "h36m"]
Solver = Literal["schur", "dense"]
NUM_POSE = 72
FRAME_PARAMS = NUM_POSE + 3  # a frame's block: pose, translation
MM_PER_M = 1000.0
MIN_RIGID = 3  # joints a rigid alignment needs (three points fix a rotation)
# Slots whose 3D joints place the start's torso (a rigid alignment of the mean body to them).
TORSO_SLOTS: tuple[str, ...] = ("Right Hip", "Left Hip", "Right Shoulder", "Left Shoulder", "Pelvis (MPII)",
                                "Spine (H36M)", "Neck (LSP)", "Thorax (MPII)", "OP RHip", "OP LHip",
                                "OP RShoulder", "OP LShoulder", "OP MidHip", "OP Neck")


@dataclass(frozen=True)
class Fit3DConfig:
    """Settings of the 3D-evidence fit (module docstring); the prior weights are SPIN's (its last stage's).

    joint_weight (1/mm) and joint_sigma (mm): the 3D term (σ well above the 100–300 mm a limb lies from the start,
    so the robust term does not discount the joints that must move most); keypoint_weight (1/px) and
    keypoint_sigma (px): the 2D term (SPIN's σ); temporal_weight (1/rad): consecutive frames' body poses (0:
    off); iterations: Levenberg–Marquardt iterations, after warmup_iterations with the pose and angle priors
    warmup_prior_factor times stronger (`Fit3D.stages`); correspondence: which model points stand for Human3.6M's
    joints; solver: the Schur complement or the dense reference. Defaults chosen by `fitloop bench fit3d`.
    """

    joint_weight: float = 1.0
    joint_sigma: float = 200.0
    keypoint_weight: float = 1.0
    keypoint_sigma: float = 100.0
    pose_prior_weight: float = SPIN_POSE_PRIOR_WEIGHT     # all weights enter squared, as in SPIN
    angle_prior_weight: float = SPIN_ANGLE_PRIOR_WEIGHT
    shape_prior_weight: float = SPIN_SHAPE_PRIOR_WEIGHT
    temporal_weight: float = 0.0
    iterations: int = 30
    warmup_iterations: int = 10
    warmup_prior_factor: float = 5.0
    correspondence: Correspondence = "h36m"
    solver: Solver = "schur"

    def validated(self) -> Fit3DConfig:
        if self.correspondence not in ("canonical", "h36m"):
            raise FitloopError(f"fit3d correspondence must be 'canonical' or 'h36m', not {self.correspondence!r}")
        if self.solver not in ("schur", "dense"):
            raise FitloopError(f"fit3d solver must be 'schur' or 'dense', not {self.solver!r}")
        if min(self.iterations, self.warmup_iterations) < 0 or self.joint_sigma <= 0 or self.keypoint_sigma <= 0:
            raise FitloopError("fit3d iterations must be >= 0 and the Geman-McClure scales > 0")
        weights = ("joint_weight", "keypoint_weight", "pose_prior_weight", "angle_prior_weight",
                   "shape_prior_weight", "temporal_weight", "warmup_prior_factor")
        negative = [name for name in weights if not getattr(self, name) >= 0]
        if negative:
            raise FitloopError(f"fit3d weights must be >= 0: {', '.join(negative)}")
        return self


@dataclass(frozen=True)
class Views:
    """Calibrated views of each frame: keypoints (F, V, 49, 3) px + confidence; rotation (F, V, 3, 3) and
    translation (F, V, 3) m map reference-frame points to the view's camera frame (R X + T); focal (F, V, 2) and
    center (F, V, 2) px. A view a frame lacks has confidence 0 everywhere."""

    keypoints: Tensor
    rotation: Tensor
    translation: Tensor
    focal: Tensor
    center: Tensor

    def to(self, dtype: torch.dtype, device: torch.device) -> Views:
        return Views(*(t.to(dtype=dtype, device=device) for t in (self.keypoints, self.rotation, self.translation,
                                                                   self.focal, self.center)))


@dataclass(frozen=True)
class Evidence:
    """What F frames are fitted to (module docstring). joints_3d (F, 49, 4) or None; views or None (at least one
    of them); subject (F,) int64 in 0..S-1: frames of one subject share betas (default: each frame its own);
    previous (F,) int64: the index of the frame before this one in its sequence, -1 for none (the temporal term;
    default: none)."""

    joints_3d: Tensor | None = None
    views: Views | None = None
    subject: Tensor | None = None
    previous: Tensor | None = None

    @property
    def frames(self) -> int:
        return len(self.joints_3d) if self.joints_3d is not None else len(self.views.keypoints)


@dataclass
class Fit3DResult:
    """Fits of F frames of S subjects. pose (F, 72), transl (F, 3) reference frame; betas (F, NB) each frame's
    subject's; subject_betas (S, NB). joint_error (F,) mm: mean distance of the confident 3D joints (NaN where
    none); reprojection (F,) px: mean distance of the confident view keypoints (NaN where none); pose_prior,
    angle_prior (F,) and shape_prior (S,) unweighted energies; cost (S,) the objective per subject."""

    pose: Tensor
    betas: Tensor
    transl: Tensor
    subject_betas: Tensor
    subject: Tensor
    joint_error: Tensor
    reprojection: Tensor
    pose_prior: Tensor
    angle_prior: Tensor
    shape_prior: Tensor
    cost: Tensor
    iterations: int


@dataclass(frozen=True)
class _Layout:
    """Which model points one fit evaluates (``subset``), and for the 3D and 2D terms the slots they observe
    and those slots' positions in the subset (None: no such term)."""

    subset: Tensor
    slots3: Tensor | None
    idx3: Tensor | None
    slots2: Tensor | None
    idx2: Tensor | None


@dataclass
class NormalEquations:
    """Normal equations H δ = −g of F frames and S subjects; frame parameters are n = 75 [pose (72), translation
    (3)], each subject's shared ones its m = NB betas. h_ff (F, n, n) a frame's own block; h_fb (F, n, m) its
    coupling to its subject's betas; h_bb (S, m, m); g_f (F, n), g_b (S, m); subject (F,). Frames are coupled
    along ``previous`` (F,) (-1: none) by ``link`` (n, n), the block H[f, previous(f)] of every link (None: not
    coupled, e.g. without the temporal term); H[previous(f), f] is its transpose."""

    h_ff: Tensor
    h_fb: Tensor
    h_bb: Tensor
    g_f: Tensor
    g_b: Tensor
    subject: Tensor
    previous: Tensor
    link: Tensor | None = None


@dataclass
class _Terms:
    """One evaluation: the objective per frame (F,) without the shape prior, and what linearising needs."""

    cost: Tensor
    state: SkeletonState
    r3: Tensor | None
    r2: Tensor | None
    cam: Tensor | None
    gmm: Tensor


class Fit3D:
    """Batched fits to 3D joints and calibrated views (module docstring) for one body model and pose prior.

    Runs in float64 where the body model lives; the prior is copied there. Neither argument is modified."""

    def __init__(self, body: BodyModel, prior: MaxMixturePrior, config: Fit3DConfig = Fit3DConfig()):
        self.config = config.validated()
        self.body = body
        device = next(body.buffers()).device
        if prior.dim != BODY_POSE_DIM:
            raise ModelFileError(f"the pose prior is a mixture over {prior.dim} values; the fit needs one over the "
                                 f"69 body-pose values of SMPL's 23 body joints")
        self.prior = copy.deepcopy(prior).to(device=device, dtype=torch.float64)
        self.device, self.dtype = device, torch.float64
        self.point_of_slot = torch.arange(NUM_JOINTS, device=device)                 # (49,) model point per slot
        rows = None
        if self.config.correspondence == "h36m":
            if body.h36m_regressor is None:
                raise ModelFileError(f"{body.name}: fitting Human3.6M joints needs the body model's Human3.6M "
                                     f"regressor; give SPIN's J_regressor_h36m.npy (its data folder) with "
                                     f"--h36m-regressor, or fit to its canonical joints (--correspondence canonical)")
            rows = body.h36m_regressor
            self.point_of_slot[torch.as_tensor(indices(H36M_JOINTS), device=device)] = \
                NUM_JOINTS + torch.arange(len(H36M_JOINTS), device=device)
        self.skeleton = Skeleton(body, rows).to(device=device, dtype=torch.float64)
        self._angle_idx = torch.tensor(ANGLE_PRIOR_INDICES, device=device) + 3
        self._angle_sign = torch.tensor(ANGLE_PRIOR_SIGNS, dtype=torch.float64, device=device)
        self._torso = torch.as_tensor(indices(TORSO_SLOTS), device=device)

    # -- public API ----------------------------------------------------------------------------------------------
    def __call__(self, evidence: Evidence, start: tuple[Tensor, Tensor, Tensor] | None = None,
                 fixed_betas: Tensor | None = None) -> Fit3DResult:
        """Fit ``evidence``; ``start`` = (pose (F, 72), subject betas (S, NB), transl (F, 3)), default `start`.
        ``fixed_betas`` (S, NB): each subject's betas, kept as given (only poses and translations are fitted)."""
        ev = self._checked(evidence)
        subject = ev.subject
        num_subjects = int(subject.max()) + 1 if len(subject) else 0
        nb = self.skeleton.num_betas
        if start is None:
            pose, betas, transl = self.start(ev, num_subjects)
        else:
            pose, betas, transl = (t.detach().to(self.device, self.dtype).clone() for t in start)
        if fixed_betas is not None:
            betas = fixed_betas.detach().to(self.device, self.dtype).clone()
        want = {"pose": (ev.frames, NUM_POSE), "betas": (num_subjects, nb), "transl": (ev.frames, 3)}
        for (name, shape), value in zip(want.items(), (pose, betas, transl)):
            if tuple(value.shape) != shape:
                what = "fixed betas" if name == "betas" and fixed_betas is not None else f"start's {name}"
                raise FitloopError(f"the {what} must be {shape}, got {tuple(value.shape)}")
        layout = self._layout(ev)
        levels = frame_levels(ev.previous)  # also refuses cyclic links, with or without the temporal term
        cost = None
        for stage in self.stages():
            lam = torch.full((num_subjects,), 1e-3, dtype=self.dtype, device=self.device)
            terms = self._evaluate(stage, ev, layout, pose, betas[subject], transl)
            cost = self._subject_cost(stage, terms.cost, betas, subject, num_subjects)
            for _ in range(stage.iterations):
                step_f, step_b = self._step(stage, ev, layout, pose, betas, terms, lam, num_subjects, levels,
                                            fixed_betas is not None)
                new_pose, new_transl = pose + step_f[:, :NUM_POSE], transl + step_f[:, NUM_POSE:]
                new_betas = betas + step_b
                new_terms = self._evaluate(stage, ev, layout, new_pose, new_betas[subject], new_transl)
                new_cost = self._subject_cost(stage, new_terms.cost, new_betas, subject, num_subjects)
                better = new_cost < cost                                                   # (S,)
                frame_better = better[subject]
                pose = torch.where(frame_better[:, None], new_pose, pose)
                transl = torch.where(frame_better[:, None], new_transl, transl)
                betas = torch.where(better[:, None], new_betas, betas)
                terms = self._select(frame_better, new_terms, terms)
                cost = torch.where(better, new_cost, cost)
                lam = torch.where(better, lam / 3, lam * 5).clamp(1e-9, 1e9)
        return self._result(ev, pose, betas, transl, cost, sum(stage.iterations for stage in self.stages()))

    def stages(self) -> tuple[Fit3DConfig, ...]:
        """The settings of each stage in order: a warm-up with the pose and angle priors ``warmup_prior_factor``
        times stronger (SMPLify's annealing, in short: it keeps limbs out of implausible minima while the body is
        far from the evidence; skipped with ``warmup_iterations`` 0), then the configured weights."""
        c = self.config
        factor = c.warmup_prior_factor
        warm = replace(c, iterations=c.warmup_iterations, pose_prior_weight=c.pose_prior_weight * factor,
                       angle_prior_weight=c.angle_prior_weight * factor)
        return (warm, c) if c.warmup_iterations > 0 else (c,)

    def start(self, evidence: Evidence, num_subjects: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The default start (module docstring): pose (F, 72), subject betas (S, NB) zero, transl (F, 3).

        A frame with at least `MIN_RIGID` confident 3D joints, else as many triangulated ones, starts rigidly
        aligned to them (`rigid_rotation`, on its torso joints when `MIN_RIGID` of them are there); any other
        frame starts as SMPLify does in its best view (the most confident keypoints): upright, facing that camera,
        at the depth its torso's length gives (`core.camera.translation_from_torso`), moved into the reference
        frame. FitloopError for a frame that has neither."""
        ev = self._checked(evidence)
        if num_subjects is None:
            num_subjects = int(ev.subject.max()) + 1 if len(ev.subject) else 0
        frames, nb = ev.frames, self.skeleton.num_betas
        target = (ev.joints_3d if ev.joints_3d is not None
                  else torch.zeros(frames, NUM_JOINTS, 4, dtype=self.dtype, device=self.device))
        rigid = (target[..., 3] > 0).sum(-1) >= MIN_RIGID
        if ev.views is not None and not bool(rigid.all()):
            target = torch.where(rigid[:, None, None], target, triangulate(ev.views))
            rigid = (target[..., 3] > 0).sum(-1) >= MIN_RIGID
        if ev.views is None and not bool(rigid.all()):
            bad = int(torch.nonzero(~rigid)[0, 0])
            raise FitloopError(f"frame {bad} has fewer than {MIN_RIGID} confident 3D joints and no views: nothing "
                               f"to fit it to; leave it out or give its views")
        pose = torch.zeros(frames, NUM_POSE, dtype=self.dtype, device=self.device)
        betas = torch.zeros(num_subjects, nb, dtype=self.dtype, device=self.device)
        zero_betas = torch.zeros(frames, nb, dtype=self.dtype, device=self.device)
        model = self.slot_points(pose, zero_betas)                                    # (F, 49, 3) mean body
        conf = (target[..., 3] > 0).to(self.dtype)
        torso = torch.zeros_like(conf)
        torso[:, self._torso] = conf[:, self._torso]
        weight = torch.where(((torso > 0).sum(-1) >= MIN_RIGID)[:, None], torso, conf)
        pose[:, :3] = matrix_to_axis_angle(rigid_rotation(model, target[..., :3], weight))
        turned = self.slot_points(pose, zero_betas)
        w = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
        transl = ((target[..., :3] - turned) * w[..., None]).sum(1)
        if not bool(rigid.all()):
            view_pose, view_transl = self._view_start(ev.views, model)
            pose = torch.where(rigid[:, None], pose, view_pose)
            transl = torch.where(rigid[:, None], transl, view_transl)
        return pose, betas, transl

    def _view_start(self, views: Views, model: Tensor) -> tuple[Tensor, Tensor]:
        """SMPLify's start in each frame's best view, in the reference frame: pose (F, 72), transl (F, 3). model:
        the mean body's slot points (F, 49, 3) at zero pose."""
        frames = len(model)
        best = (views.keypoints[..., 2] > 0).sum(-1).argmax(1)                      # (F,) view with most keypoints
        at = torch.arange(frames, device=self.device)
        rot, trans = views.rotation[at, best], views.translation[at, best]            # (F, 3, 3), (F, 3)
        facing = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=self.dtype, device=self.device))  # π about x
        root = self.skeleton.j_template[0]                                             # rest root, betas 0
        joints = (facing @ (model - root).transpose(1, 2)).transpose(1, 2) + root     # camera-frame axes
        focal = views.focal[at, best].prod(-1).sqrt()
        t_cam = translation_from_torso(joints, views.keypoints[at, best], focal, views.center[at, best],
                                       TORSO_PAIR_INDEX)
        pose = torch.zeros(frames, NUM_POSE, dtype=self.dtype, device=self.device)
        # camera = R·reference + T, so the body turned by Rᵀ·facing about its root, its root at Rᵀ(root + t − T)
        pose[:, :3] = matrix_to_axis_angle(rot.transpose(1, 2) @ facing)
        transl = (rot.transpose(1, 2) @ (root + t_cam - trans)[..., None])[..., 0] - root
        return pose, transl

    def objective(self, evidence: Evidence, pose: Tensor, betas: Tensor, transl: Tensor) -> Tensor:
        """The objective (module docstring) per subject (S,) at pose (F, 72), subject betas (S, NB), transl (F, 3)."""
        ev = self._checked(evidence)
        pose, betas, transl = (t.to(self.device, self.dtype) for t in (pose, betas, transl))
        terms = self._evaluate(self.config, ev, self._layout(ev), pose, betas[ev.subject], transl)
        return self._subject_cost(self.config, terms.cost, betas, ev.subject, len(betas))

    def normal_equations(self, evidence: Evidence, pose: Tensor, betas: Tensor, transl: Tensor) -> NormalEquations:
        """The undamped normal equations a Levenberg–Marquardt step solves at (pose (F, 72), subject betas (S, NB),
        transl (F, 3)); g is ½ the gradient of `objective` summed over the subjects."""
        ev = self._checked(evidence)
        pose, betas, transl = (t.to(self.device, self.dtype) for t in (pose, betas, transl))
        layout = self._layout(ev)
        terms = self._evaluate(self.config, ev, layout, pose, betas[ev.subject], transl)
        return self._normal_equations(self.config, ev, layout, pose, betas, terms, len(betas))

    def slot_points(self, pose: Tensor, betas: Tensor) -> Tensor:
        """The model point that stands for each canonical slot (F, 49, 3), model frame, metres: the Human3.6M
        regressor joints in the H36M slots under ``correspondence="h36m"``, else the canonical joints."""
        pose, betas = pose.to(self.device, self.dtype), betas.to(self.device, self.dtype)
        return self.skeleton(pose, betas).points[:, self.point_of_slot]

    # -- the objective -------------------------------------------------------------------------------------------
    def _checked(self, evidence: Evidence) -> Evidence:
        if evidence.joints_3d is None and evidence.views is None:
            raise FitloopError("fit3d needs 3D joints or calibrated views (or both)")
        dev, dt = self.device, self.dtype
        joints = None if evidence.joints_3d is None else evidence.joints_3d.to(dev, dt)
        views = None if evidence.views is None else evidence.views.to(dt, dev)
        frames = len(joints) if joints is not None else len(views.keypoints)
        if joints is not None:
            if joints.dim() != 3 or joints.shape[1:] != (NUM_JOINTS, 4):
                raise FitloopError(f"joints_3d must be (F, {NUM_JOINTS}, 4) metres + confidence, got "
                                   f"{tuple(joints.shape)}")
            joints = _confident_only(joints, "joints_3d")
        if views is not None:
            kp = views.keypoints
            if kp.dim() != 4 or kp.shape[0] != frames or kp.shape[2:] != (NUM_JOINTS, 3):
                raise FitloopError(f"view keypoints must be ({frames}, V, {NUM_JOINTS}, 3) px + confidence, got "
                                   f"{tuple(kp.shape)}")
            shapes = {"rotation": (3, 3), "translation": (3,), "focal": (2,), "center": (2,)}
            for name, tail in shapes.items():
                value = getattr(views, name)
                if tuple(value.shape) != tuple(kp.shape[:2]) + tail:
                    raise FitloopError(f"view {name} must be {tuple(kp.shape[:2]) + tail}, got {tuple(value.shape)}")
                if not bool(torch.isfinite(value).all()):
                    raise FitloopError(f"view {name} holds NaN or inf; give a view a frame lacks any finite camera "
                                       f"and confidence 0")
            if not bool((views.focal > 0).all()):
                raise FitloopError("view focal lengths must be > 0 px")
            views = Views(_confident_only(kp, "view keypoints"), views.rotation, views.translation, views.focal,
                          views.center)
        subject = (torch.arange(frames, device=dev) if evidence.subject is None
                   else evidence.subject.to(dev, torch.long))
        previous = (torch.full((frames,), -1, device=dev, dtype=torch.long) if evidence.previous is None
                    else evidence.previous.to(dev, torch.long))
        if subject.shape != (frames,) or previous.shape != (frames,):
            raise FitloopError(f"subject and previous must be ({frames},) frame indices")
        if frames and (int(subject.min()) < 0 or len(torch.unique(subject)) != int(subject.max()) + 1):
            raise FitloopError("subject must number the subjects 0..S-1, each with a frame")
        if bool(((previous < -1) | (previous >= frames) | (previous == torch.arange(frames, device=dev))).any()):
            raise FitloopError("previous must be -1 or the index of another frame")
        if bool((previous >= 0).any()) and bool((subject[previous.clamp_min(0)] != subject)[previous >= 0].any()):
            raise FitloopError("previous links frames of different subjects")
        return Evidence(joints, views, subject, previous)

    def _layout(self, ev: Evidence) -> _Layout:
        """The slots the 3D and the 2D terms observe (in some frame), and the model points they need."""
        slots3 = slots2 = None
        if ev.joints_3d is not None:
            slots3 = torch.nonzero((ev.joints_3d[..., 3] > 0).any(0))[:, 0]
        if ev.views is not None:
            slots2 = torch.nonzero((ev.views.keypoints[..., 2] > 0).flatten(0, 1).any(0))[:, 0]
        subset = torch.unique(torch.cat([self.point_of_slot[s] for s in (slots3, slots2) if s is not None]))
        position = torch.full((int(self.point_of_slot.max()) + 1,), -1, dtype=torch.long, device=self.device)
        position[subset] = torch.arange(len(subset), device=self.device)

        def at(slots: Tensor | None) -> Tensor | None:
            return None if slots is None else position[self.point_of_slot[slots]]

        return _Layout(subset=subset, slots3=slots3, idx3=at(slots3), slots2=slots2, idx2=at(slots2))

    def _evaluate(self, c: Fit3DConfig, ev: Evidence, layout: _Layout, pose: Tensor, betas: Tensor,
                  transl: Tensor) -> _Terms:
        """The objective per frame (F,) (all terms but the shape prior) with the weights of ``c``, and the
        residuals behind it."""
        state = self.skeleton(pose, betas, layout.subset)
        cost = torch.zeros(len(pose), dtype=self.dtype, device=self.device)
        r3 = r2 = cam = None
        if layout.slots3 is not None:
            target = ev.joints_3d[:, layout.slots3]
            r3 = MM_PER_M * (state.points[:, layout.idx3] + transl[:, None] - target[..., :3])  # (F, n3, 3) mm
            dist2 = r3.square().sum(-1)
            cost = cost + c.joint_weight ** 2 * (target[..., 3].square() * gmof(dist2.sqrt(), c.joint_sigma)).sum(-1)
        if layout.slots2 is not None:
            views = ev.views
            cam, r2 = view_residuals(views, state.points[:, layout.idx2] + transl[:, None], layout.slots2)
            conf2 = views.keypoints[:, :, layout.slots2, 2].square()
            cost = cost + c.keypoint_weight ** 2 * (conf2[..., None] * gmof(r2, c.keypoint_sigma)).sum((1, 2, 3))
        gmm = self.prior.component_energies(pose[:, 3:])                                        # (F, K)
        angle = torch.exp(pose[:, self._angle_idx] * self._angle_sign).square().sum(-1)
        cost = cost + c.pose_prior_weight ** 2 * gmm.min(1).values + c.angle_prior_weight ** 2 * angle
        if c.temporal_weight > 0:
            linked = ev.previous >= 0
            diff = pose[:, 3:] - pose[ev.previous.clamp_min(0), 3:]
            cost = cost + c.temporal_weight ** 2 * linked * diff.square().sum(-1)
        return _Terms(cost=cost, state=state, r3=r3, r2=r2, cam=cam, gmm=gmm)

    def _subject_cost(self, c: Fit3DConfig, frame_cost: Tensor, betas: Tensor, subject: Tensor,
                      num_subjects: int) -> Tensor:
        total = torch.zeros(num_subjects, dtype=self.dtype, device=self.device).index_add(0, subject, frame_cost)
        return total + c.shape_prior_weight ** 2 * betas.square().sum(-1)

    @staticmethod
    def _select(mask: Tensor, new: _Terms, old: _Terms) -> _Terms:
        """Per frame, ``new``'s evaluation where ``mask`` (F,) holds, else ``old``'s."""
        def pick(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            return None if a is None else torch.where(mask.reshape((-1,) + (1,) * (a.dim() - 1)), a, b)

        return _Terms(cost=pick(new.cost, old.cost), state=select_state(mask, new.state, old.state),
                      r3=pick(new.r3, old.r3), r2=pick(new.r2, old.r2), cam=pick(new.cam, old.cam),
                      gmm=pick(new.gmm, old.gmm))

    # -- one Levenberg–Marquardt step ----------------------------------------------------------------------------
    def _normal_equations(self, c: Fit3DConfig, ev: Evidence, layout: _Layout, pose: Tensor, betas: Tensor,
                          terms: _Terms, num_subjects: int) -> NormalEquations:
        """The undamped Gauss–Newton normal equations at (pose, betas, transl) evaluated as ``terms``, in SMPLify's
        half convention: g is exactly ½ the gradient of the objective (Geman–McClure by its IRLS weights, the
        pose prior by its active component), H the Gauss–Newton ½ Hessian (the temporal couplings left out)."""
        frames, nb = len(pose), betas.shape[1]
        dt, dev = self.dtype, self.device
        subject = ev.subject
        h_ff = torch.zeros(frames, FRAME_PARAMS, FRAME_PARAMS, dtype=dt, device=dev)
        h_fb = torch.zeros(frames, FRAME_PARAMS, nb, dtype=dt, device=dev)
        h_bb = torch.zeros(frames, nb, nb, dtype=dt, device=dev)
        g_f = torch.zeros(frames, FRAME_PARAMS, dtype=dt, device=dev)
        g_b = torch.zeros(frames, nb, dtype=dt, device=dev)

        def add(jac_f: Tensor, jac_b: Tensor, weight: Tensor, resid: Tensor) -> None:
            """Rows (F, N, ·) of the frame and betas Jacobians with IRLS weights and residuals (F, N)."""
            wf, wb = weight[..., None] * jac_f, weight[..., None] * jac_b
            h_ff.add_(jac_f.transpose(1, 2) @ wf)
            h_fb.add_(wf.transpose(1, 2) @ jac_b)
            h_bb.add_(jac_b.transpose(1, 2) @ wb)
            g_f.add_((wf * resid[..., None]).sum(1))
            g_b.add_((wb * resid[..., None]).sum(1))

        d_pose, d_betas = self.skeleton.jacobian(terms.state)                        # (F, P, 3, 72), (F, P, 3, NB)
        eye = torch.eye(3, dtype=dt, device=dev)
        if layout.slots3 is not None:
            idx = layout.idx3
            n3 = len(idx)
            jac_f = MM_PER_M * torch.cat([d_pose[:, idx], eye.expand(frames, n3, 3, 3)], -1)  # (F, n3, 3, 75)
            jac_b = MM_PER_M * d_betas[:, idx]
            conf = ev.joints_3d[:, layout.slots3, 3]
            sigma2 = c.joint_sigma ** 2
            dist2 = terms.r3.square().sum(-1)
            weight = c.joint_weight ** 2 * conf.square() * sigma2 ** 2 / (sigma2 + dist2).square()   # (F, n3)
            add(jac_f.reshape(frames, -1, FRAME_PARAMS), jac_b.reshape(frames, -1, nb),
                weight[..., None].expand(-1, -1, 3).reshape(frames, -1), terms.r3.reshape(frames, -1))
        if layout.slots2 is not None:
            idx = layout.idx2
            views = ev.views
            cam = terms.cam                                                                     # (F, V, n2, 3)
            dproj = projection_jacobian(cam.flatten(0, 1), views.focal.flatten(0, 1)).reshape(
                cam.shape[:3] + (2, 3))                                                         # (F, V, n2, 2, 3)
            a = dproj @ views.rotation[:, :, None]                                              # (F, V, n2, 2, 3)
            jac_pose = a @ d_pose[:, None, idx]                                                 # (F, V, n2, 2, 72)
            jac_f = torch.cat([jac_pose, a], -1).reshape(frames, -1, FRAME_PARAMS)
            jac_b = (a @ d_betas[:, None, idx]).reshape(frames, -1, nb)
            conf = views.keypoints[:, :, layout.slots2, 2]
            sigma2 = c.keypoint_sigma ** 2
            weight = (c.keypoint_weight ** 2 * conf.square()[..., None] * sigma2 ** 2
                      / (sigma2 + terms.r2.square()).square())                                  # (F, V, n2, 2)
            add(jac_f, jac_b, weight.reshape(frames, -1), terms.r2.reshape(frames, -1))
        # pose prior: the active component's quadratic (½ convention: ½ P, ½ P (θ − μ))
        k = terms.gmm.argmin(1)
        prec, diff = self.prior.precisions[k], pose[:, 3:] - self.prior.means[k]
        h_ff[:, 3:NUM_POSE, 3:NUM_POSE] += c.pose_prior_weight ** 2 * 0.5 * prec
        g_f[:, 3:NUM_POSE] += c.pose_prior_weight ** 2 * 0.5 * (prec @ diff[..., None])[..., 0]
        # angle prior: residual w·exp(s θ), derivative w·s·exp(s θ)
        e = torch.exp(pose[:, self._angle_idx] * self._angle_sign)
        de = self._angle_sign * e
        h_ff[:, self._angle_idx, self._angle_idx] += c.angle_prior_weight ** 2 * de.square()
        g_f[:, self._angle_idx] += c.angle_prior_weight ** 2 * e * de
        link = None
        if c.temporal_weight > 0:  # consecutive frames: ½ Hessian w² on each diagonal, −w² on the link blocks
            w_t = c.temporal_weight ** 2
            linked = ev.previous >= 0
            prev = ev.previous[linked]
            delta = pose[linked, 3:] - pose[prev, 3:]
            g_f[linked, 3:NUM_POSE] += w_t * delta
            g_f[:, 3:NUM_POSE].index_add_(0, prev, -w_t * delta)
            count = linked.to(dt).index_add(0, prev, torch.ones(len(prev), dtype=dt, device=dev))
            body = torch.arange(3, NUM_POSE, device=dev)
            h_ff[:, body, body] += w_t * count[:, None]
            link = torch.zeros(FRAME_PARAMS, FRAME_PARAMS, dtype=dt, device=dev)
            link[body, body] = -w_t
        # shape prior, once per subject
        h_bs = torch.zeros(num_subjects, nb, nb, dtype=dt, device=dev).index_add(0, subject, h_bb)
        g_bs = torch.zeros(num_subjects, nb, dtype=dt, device=dev).index_add(0, subject, g_b)
        h_bs += c.shape_prior_weight ** 2 * torch.eye(nb, dtype=dt, device=dev)
        g_bs += c.shape_prior_weight ** 2 * betas
        return NormalEquations(h_ff=h_ff, h_fb=h_fb, h_bb=h_bs, g_f=g_f, g_b=g_bs, subject=subject,
                               previous=ev.previous, link=link)

    def _step(self, c: Fit3DConfig, ev: Evidence, layout: _Layout, pose: Tensor, betas: Tensor, terms: _Terms,
              lam: Tensor, num_subjects: int, levels: list[Tensor], fixed: bool) -> tuple[Tensor, Tensor]:
        """The damped Gauss–Newton step: per frame (F, 75) [pose, transl], per subject (S, NB) (zero when the
        betas are ``fixed``); damping λ (S,) per subject (Levenberg–Marquardt's, on the diagonal)."""
        ne = self._normal_equations(c, ev, layout, pose, betas, terms, num_subjects)
        h_ff = ne.h_ff + torch.diag_embed(lam[ev.subject, None] * torch.diagonal(ne.h_ff, dim1=-2, dim2=-1) + 1e-9)
        h_bb = ne.h_bb + torch.diag_embed(lam[:, None] * torch.diagonal(ne.h_bb, dim1=-2, dim2=-1) + 1e-9)
        damped = replace(ne, h_ff=h_ff, h_bb=h_bb)
        if fixed:
            return -frame_solve(damped, ne.g_f[..., None], levels)[..., 0], torch.zeros_like(ne.g_b)
        return schur_solve(damped, levels) if c.solver == "schur" else dense_solve(damped)

    # -- results -------------------------------------------------------------------------------------------------
    def _result(self, ev: Evidence, pose: Tensor, betas: Tensor, transl: Tensor, cost: Tensor,
                iterations: int) -> Fit3DResult:
        with torch.no_grad():
            subject = ev.subject
            points = self.slot_points(pose, betas[subject]) + transl[:, None]                  # (F, 49, 3)
            nan = torch.full((len(pose),), float("nan"), dtype=self.dtype, device=self.device)
            joint_error = reprojection = nan
            if ev.joints_3d is not None:
                conf = (ev.joints_3d[..., 3] > 0).to(self.dtype)
                dist = (points - ev.joints_3d[..., :3]).norm(dim=-1) * MM_PER_M
                joint_error = torch.where(conf.sum(-1) > 0, (dist * conf).sum(-1) / conf.sum(-1).clamp_min(1), nan)
            if ev.views is not None:
                views = ev.views
                _, resid = view_residuals(views, points, torch.arange(NUM_JOINTS, device=self.device))
                conf = (views.keypoints[..., 2] > 0).to(self.dtype)
                dist = resid.norm(dim=-1)
                count = conf.sum((1, 2))
                reprojection = torch.where(count > 0, (dist * conf).sum((1, 2)) / count.clamp_min(1), nan)
            gmm = self.prior(pose[:, 3:])
            angle = torch.exp(pose[:, self._angle_idx] * self._angle_sign).square().sum(-1)
        return Fit3DResult(pose=pose, betas=betas[subject], transl=transl, subject_betas=betas, subject=subject,
                           joint_error=joint_error, reprojection=reprojection, pose_prior=gmm, angle_prior=angle,
                           shape_prior=betas.square().sum(-1), cost=cost, iterations=iterations)


def view_residuals(views: Views, points: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """Reference-frame points (F, n, 3) m of the canonical ``slots`` (n,) seen by every view: their camera-frame
    positions (F, V, n, 3) m and reprojection residuals (F, V, n, 2) px (projection − keypoint). Where a view
    does not see a slot (confidence 0, e.g. a view the frame lacks) the residual is 0 and the position (0, 0, 1),
    so nothing undefined reaches the objective or its Jacobian."""
    seen = views.keypoints[:, :, slots, 2] > 0                                                # (F, V, n)
    cam = torch.einsum("fvij,fpj->fvpi", views.rotation, points) + views.translation[:, :, None]
    cam = torch.where(seen[..., None], cam, torch.tensor([0.0, 0.0, 1.0], dtype=cam.dtype, device=cam.device))
    proj = views.focal[:, :, None] * cam[..., :2] / cam[..., 2:] + views.center[:, :, None]
    resid = torch.where(seen[..., None], proj - views.keypoints[:, :, slots, :2], torch.zeros_like(proj))
    return cam, resid


def _confident_only(values: Tensor, name: str) -> Tensor:
    """A copy of ``values`` (..., D + 1), confidence last, with unconfident entries all zeros; FitloopError for a
    confident entry that is not finite (a negative confidence counts as none)."""
    confident = values[..., -1] > 0
    if not bool(torch.isfinite(values[confident]).all()):
        raise FitloopError(f"{name} holds NaN or inf in confident entries; give missing joints confidence 0")
    return torch.where(confident[..., None], values, torch.zeros_like(values))


# --- solving the normal equations with shared betas -----------------------------------------------------------------
def frame_levels(previous: Tensor) -> list[Tensor]:
    """Frames (F,) by their depth along ``previous`` links (-1: none): level 0 the frames without a previous one,
    level d those whose previous frame is at level d − 1. FitloopError when the links hold a cycle."""
    frames = len(previous)
    depth = torch.zeros(frames, dtype=torch.long, device=previous.device)
    linked = previous >= 0
    for _ in range(frames + 1):
        new = torch.where(linked, depth[previous.clamp_min(0)] + 1, torch.zeros_like(depth))
        if bool((new == depth).all()):
            return [torch.nonzero(depth == d)[:, 0] for d in range(int(depth.max()) + 1 if frames else 0)]
        depth = new
    raise FitloopError("previous links form a cycle; each sequence needs a first frame (previous -1)")


def frame_solve(ne: NormalEquations, rhs: Tensor, levels: list[Tensor]) -> Tensor:
    """H_ff⁻¹ rhs for the frames' block matrix (the frames' own blocks and their links, `NormalEquations`): rhs
    (F, n, k) -> (F, n, k). Uncoupled frames: one n × n Cholesky solve each. Coupled ones form trees along the
    links (sequences are chains), eliminated leaves first (the block Thomas algorithm: no fill-in), one level of
    ``levels`` (`frame_levels`) at a time across all sequences, then substituted back from the first frames."""
    if ne.link is None or len(levels) <= 1:
        return torch.cholesky_solve(rhs, torch.linalg.cholesky(ne.h_ff))
    n = rhs.shape[1]
    diag, right = ne.h_ff.clone(), rhs.clone()
    chol = torch.empty_like(diag)
    link_t = ne.link.T                                                                 # H[p, f]
    for level in reversed(levels[1:]):  # children before parents: fold each frame into its previous one
        parent = ne.previous[level]
        chol[level] = torch.linalg.cholesky(diag[level])
        solved = torch.cholesky_solve(torch.cat([ne.link.expand(len(level), n, n), right[level]], -1), chol[level])
        diag.index_add_(0, parent, -(link_t @ solved[..., :n]))
        right.index_add_(0, parent, -(link_t @ solved[..., n:]))
    out = torch.empty_like(right)
    roots = levels[0]
    chol[roots] = torch.linalg.cholesky(diag[roots])
    out[roots] = torch.cholesky_solve(right[roots], chol[roots])
    for level in levels[1:]:
        out[level] = torch.cholesky_solve(right[level] - ne.link @ out[ne.previous[level]], chol[level])
    return out


def schur_solve(ne: NormalEquations, levels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Solve H δ = −g (`NormalEquations`) for every subject at once by the Schur complement on the shared betas:
    y = H_ff⁻¹ [H_fb, g_f] (`frame_solve`), then one m × m system per subject for δb, then δf = −(y_g + y_b δb).
    Returns δf (F, n), δb (S, m). Cost linear in the frames."""
    m, subject = ne.h_fb.shape[-1], ne.subject
    y = frame_solve(ne, torch.cat([ne.h_fb, ne.g_f[..., None]], -1), levels)          # (F, n, m + 1)
    reduce = ne.h_fb.transpose(1, 2) @ y                                              # (F, m, m + 1)
    total = torch.zeros(len(ne.h_bb), m, m + 1, dtype=y.dtype, device=y.device).index_add(0, subject, reduce)
    schur, rhs = ne.h_bb - total[..., :m], ne.g_b - total[..., m]
    step_b = -torch.linalg.solve(schur, rhs)
    step_f = -(y[..., m] + (y[..., :m] @ step_b[subject][..., None])[..., 0])
    return step_f, step_b


def dense_solve(ne: NormalEquations) -> tuple[Tensor, Tensor]:
    """`schur_solve`'s system stacked per subject into one dense (F_s·n + m)² matrix, links included, and
    factorised whole: the reference the Schur complement is measured against (cost cubic in a subject's frames)."""
    n, m = ne.h_fb.shape[1], ne.h_fb.shape[2]
    step_f, step_b = torch.empty_like(ne.g_f), torch.empty_like(ne.g_b)
    for s in range(len(ne.h_bb)):
        rows = torch.nonzero(ne.subject == s)[:, 0]
        k = len(rows)
        at = {f: i for i, f in enumerate(rows.tolist())}
        big = torch.zeros(k * n + m, k * n + m, dtype=ne.h_ff.dtype, device=ne.h_ff.device)
        for f, i in at.items():
            big[i * n:(i + 1) * n, i * n:(i + 1) * n] = ne.h_ff[f]
            big[i * n:(i + 1) * n, k * n:] = ne.h_fb[f]
            big[k * n:, i * n:(i + 1) * n] = ne.h_fb[f].T
            p = int(ne.previous[f])
            if ne.link is not None and p >= 0:
                j = at[p]
                big[i * n:(i + 1) * n, j * n:(j + 1) * n] = ne.link
                big[j * n:(j + 1) * n, i * n:(i + 1) * n] = ne.link.T
        big[k * n:, k * n:] = ne.h_bb[s]
        rhs = torch.cat([ne.g_f[rows].reshape(-1), ne.g_b[s]])
        step = -torch.cholesky_solve(rhs[:, None], torch.linalg.cholesky(big))[:, 0]
        step_f[rows], step_b[s] = step[:k * n].reshape(k, n), step[k * n:]
    return step_f, step_b


# --- starts -----------------------------------------------------------------------------------------------------------
def rigid_rotation(source: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """The rotation (B, 3, 3) that best turns source points (B, N, 3) onto target points (B, N, 3), each centred on
    its weighted mean, weights (B, N) >= 0 (Kabsch, reflections excluded)."""
    w = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
    src = source - (source * w[..., None]).sum(1, keepdim=True)
    dst = target - (target * w[..., None]).sum(1, keepdim=True)
    cov = (dst * w[..., None]).transpose(1, 2) @ src                                   # Σ w dst srcᵀ
    u, _, vh = torch.linalg.svd(cov)
    fix = torch.ones(len(cov), 3, dtype=cov.dtype, device=cov.device)
    fix[:, 2] = torch.sign(torch.det(u @ vh))
    return (u * fix[:, None]) @ vh


def triangulate(views: Views) -> Tensor:
    """Joints (F, 49, 4) in the reference frame, confidence 1 where at least two views see the joint (else all 0),
    by the linear (DLT) triangulation of the views' keypoints, each row weighted by its confidence."""
    kp = views.keypoints                                                               # (F, V, 49, 3)
    # camera matrix rows of K [R | T]: u·(row 3) − (row 1), v·(row 3) − (row 2)
    proj = torch.cat([views.rotation, views.translation[..., None]], -1)              # (F, V, 3, 4)
    k_rows = proj[..., :2, :] * views.focal[..., None] + views.center[..., None] * proj[..., 2:, :]
    rows = kp[..., :2, None] * proj[:, :, None, 2:, :] - k_rows[:, :, None]           # (F, V, 49, 2, 4)
    rows = rows * kp[..., 2, None, None]
    a = rows.permute(0, 2, 1, 3, 4).flatten(2, 3)                                     # (F, 49, 2V, 4)
    _, _, vh = torch.linalg.svd(a)
    hom = vh[..., -1, :]
    seen = (kp[..., 2] > 0).sum(1) >= 2                                                # (F, 49)
    point = hom[..., :3] / torch.where(hom[..., 3:].abs() > 1e-12, hom[..., 3:], torch.ones_like(hom[..., 3:]))
    out = torch.cat([point, torch.ones_like(point[..., :1])], -1)
    return torch.where(seen[..., None], out, torch.zeros_like(out))

