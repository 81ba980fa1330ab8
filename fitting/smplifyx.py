"""Batched SMPLify-X: whole-body (SMPL-X) fits to body, hand and face keypoints, as SMPLify-X runs it
(``mode="reference"``) and much faster (``mode="fast"``, the default).

Both minimise one objective (`SMPLifyX.objective`), SMPLify-X's (Pavlakos et al. CVPR 2019; the numbers are its
released code's, vchoutas/smplify-x: `cfg_files/fit_smplx.yaml`, `smplifyx/fitting.py` SMPLifyLoss,
`smplifyx/fit_single_frame.py`), in its five stages of `SMPLIFYX_STAGES`:

    E = d² Σ_i (w_i c_i)² Σ_xy ρ(π(X_i) − x_i)                 data: GMoF ρ, rho = 100 px; d = 1000 / image height
      + w_body² E_body(θ_body) + 3.17 w_body Σ exp(s θ)²      body pose prior (the GMM over the 21 body joints by
                                                                default, or the VAE) and SMPLify's elbow/knee
                                                                bending prior
      + w_hand² E_hand([θ_lhand, θ_rhand])                      hand pose prior over both hands (L2 on the 90
                                                                values by default, or the joint limits, or a PCA)
      + w_shape² ‖β‖² + w_expr² ‖ψ‖² + Σ_k (w_jaw,k θ_jaw,k)²
      + w_coll k_coll Σ_pairs depth²                              interpenetration of the capsule proxies

over the 161 whole-body points of `core.wholebody` (X_i from `fitting.wholebody_model`), w_i the stage's joint
weight of point i's part (body 1, hands and face per stage, 0 for SMPLify's ignored joints and points the model
does not provide), c_i the keypoint confidence. The body and hand priors are pluggable residual blocks
(`PoseTerm`: an energy, and its Gauss–Newton normal equations for the fast mode); `fitting.pose_terms` has the
VAE body prior, the hands' joint limits and the hand-pose PCA as such blocks, and picks them by name. The
interpenetration term is SMPLify-X's ``interpenetration`` with its per-stage
``coll_loss_weights`` w_coll (linear, as SMPLify-X weighs its penalty) on the capsule proxies of
`fitting.collision` instead of its BVH and cone distance field (which run on CUDA, one person at a time): depth is
how far two capsules of parts that anatomy does not put in contact overlap (m), and ``collision_scale`` k_coll
(m⁻²) maps the proxies' penalty onto SMPLify-X's weights (`COLLISION_SCALE`: how it was chosen). Both modes
evaluate it on the same segment ends: the reference on the full model's mesh, the fast mode on the skeleton's
vertex rows of them (the same points; exact without pose correctives), with their closed-form Jacobians.

reference: SMPLify-X's procedure per person (it fits one person at a time; so does this, for an honest speed
  comparison): the camera translation's depth from the torso edges (x = y = 0), a camera stage (translation and
  global orientation on the four torso keypoints, squared error weighted d², plus the depth anchor 100² (t_z −
  t_z,init)²), a second orientation turned 180° about the body's vertical when the shoulders are less than 25 px
  apart, then per orientation the five stages, each a fresh L-BFGS (strong Wolfe line search, lr 1, 30 iterations
  per step, history 100) stepped up to 30 times until the loss changes by less than ftol = 1e-9 relative or every
  gradient is below gtol = 1e-9; the orientation with the lower final loss is kept. The full smplx model every
  evaluation.
fast: the same objective on the exact joints-only `Skeleton` of the SMPL-X tree (55 joints; fingertips and
  landmarks as vertex rows; expression as linear shape parameters), batched Levenberg–Marquardt with analytic
  Jacobians (GMoF by iteratively reweighted least squares, the GMM by its active component), a few iterations per
  stage. What a stage cannot move is not solved for: hand poses join when the stage's hand weight is positive,
  jaw and expression when its face weight is (before that, only their priors touch them, and they start at those
  priors' minimum, zero); the eyes never (nothing observes them). Both orientations as above, in one batch.
  The last stage ends in block alternation: ``polish_rounds`` rounds of (the body block alone: global
  orientation, body pose and betas, the rest held; then all the stage's parameters), then the body block once
  more, each a fresh LM of ``polish_iterations`` iterations from the initial damping. Why: in the joint solve the
  hands' steps (0.5-3 rad along a curved valley) make the Gauss-Newton model fail, LM's one damping grows for
  every parameter (λ ≈ 4 after ~10 iterations) and the body stalls with it; alone, the body block's model
  predicts well and it moves, after which the joint solve starts again from small damping. On 15 dev people
  (docs/smplifyx.md) this lowers the final objective's gap to the reference from ~9% to ~2-3% for the same
  iteration count; more joint iterations (5x) left ~4%.
  Without an estimate the fast mode starts from a lifted pose (``lift_mean_start``, the default): SMPLify's
  keypoint-to-pose lifter (`fitting.lifter`) gives the global orientation and the 21 body joints from the body
  keypoints, the torso places it, and after the camera stage it is fitted from the fourth stage (the first four
  annealed a T-pose's limbs towards their keypoints under a strong prior; the third's still flattens a lifted
  pose), ``lifted_stage_iterations`` (0, 0, 0, 4, 6), at its own heading. ``lift_mean_start=False``: the mean start,
  the five stages (``stage_iterations``), both orientations where the shoulders are close.
  From an estimate (``start=SMPLifyXStart``, the SPIN loop's network output; fast mode only): the camera stage
  from it, then the last stage alone (its final weights: SMPLify's estimate path runs without the mean start's
  annealing too), one orientation.

Deviations of both modes from SMPLify-X as written, named: the start is fitloop's mean start (global orientation
π about x, the camera-frame convention of every fitloop fit, body pose 0: VPoser's mean) instead of a zero
global orientation; missing torso keypoints are masked in the camera stage (SMPLify-X would pull the torso to
(0, 0)); the ignored body joints are SPIN's `core.joints.SMPLIFY_IGNORED` (SMPLify-X's OpenPose neck and hips, and
the dataset hips the whole-body layout also has); the body prior is the GMM by default (`fitting.pose_terms`: the
VAE measured worse on the benchmark, docs/smplifyx.md), shifted by a constant (`MixtureTerm`); hand poses are full
axis-angle (SMPLify-X's released config fits 12 PCA components).
Reference only: an L-BFGS step whose line search breaks down (NaN parameters) is undone and ends its stage.
Fast only: the start's translation is by similar triangles over more torso pairs; the camera stage keeps the
start's orientation when fewer than three torso keypoints are seen (two leave a rotation free). Both: a missing
OpenPose torso keypoint is read from the dataset joint of the same name where that is seen (`OPENPOSE_STAND_INS`:
COCO-WholeBody has no OpenPose body points), in the camera start and stage, the depth edges and the side-view test.

Conventions: keypoints (B, 161, 3) px of the image the camera describes + confidence, whole-body layout;
camera_center (B, 2) px; focal (B,) or (B, 2) px per example or the config's; results: full_pose (B, 165)
axis-angle radians in SMPL-X order (`fitting.wholebody_model.POSE_SLICES`), betas (B, NB), expression (B, NE),
cam_t (B, 3) m, camera frame (x right, y down, z forward). Inputs are never modified; results are deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from core.camera import project, projection_jacobian, translation_from_torso
from core.joints import NUM_JOINTS, SMPLIFY_IGNORED
from core.wholebody import NUM_WHOLEBODY, WHOLEBODY_INDEX, WHOLEBODY_PARTS, wholebody_indices
from fitting.collision import body_capsules, chained_collision_residuals, collision_penalty
from fitting.lifter import PoseLifter, lifter_on
from fitting.priors import (
    ANGLE_PRIOR_INDICES,
    ANGLE_PRIOR_SIGNS,
    DEFAULT_PRIOR,
    GaussianMixture,
    MaxMixturePrior,
    load_gmm,
)
from fitting.skeleton import Skeleton, compose_axis_angle, select_state
from fitting.smplify import focal_per_example, gmof, solve_spd
from fitting.wholebody_model import BODY_POSE_DIM, FULL_POSE_DIM, HAND_POSE_DIM, POSE_SLICES, WholeBodyModel

# --- SMPLify-X's numbers (vchoutas/smplify-x, cfg_files/fit_smplx.yaml at 12467e9, smplifyx/*.py) ---------------
SMPLIFYX_RHO = 100.0                   # fit_smplx.yaml rho: the GMoF scale, px
SMPLIFYX_FOCAL = 5000.0                # fit_smplx.yaml focal_length, px
SMPLIFYX_DEPTH_LOSS_WEIGHT = 100.0     # cmd_parser depth_loss_weight: camera stage's anchor on t_z
SMPLIFYX_DATA_HEIGHT = 1000.0          # fit_single_frame: data_weight = 1000 / H (image height px)
SMPLIFYX_BENDING_FACTOR = 3.17         # fit_single_frame: bending_prior_weight = 3.17 * body_pose_weight
SMPLIFYX_SIDE_VIEW_THRESHOLD = 25.0    # cmd_parser side_view_thsh: shoulders closer (px) -> also fit turned 180°
SMPLIFYX_MAXITERS = 30                 # fit_smplx.yaml maxiters: L-BFGS steps per stage, and iterations per step
SMPLIFYX_FTOL = 1e-9                   # fit_smplx.yaml ftol: relative loss change that ends a stage
SMPLIFYX_GTOL = 1e-9                   # fit_smplx.yaml gtol: largest gradient that ends a stage
SMPLIFYX_LBFGS_TOLERANCE_GRAD = 1e-5   # optimizers/lbfgs_ls.py defaults (the L-BFGS torch adopted)
SMPLIFYX_LBFGS_TOLERANCE_CHANGE = 1e-9
SMPLIFYX_LBFGS_HISTORY = 100
CAMERA_TORSO = ("OP RHip", "OP LHip", "OP RShoulder", "OP LShoulder")  # init_joints_idxs 9, 12, 2, 5 (OpenPose)
DEPTH_EDGES = (("OP LShoulder", "OP LHip"), ("OP RShoulder", "OP RHip"))  # body_tri_idxs 5-12, 2-9
# The fast start's extra torso pairs for its depth (when an edge above misses a keypoint): the diagonals, and
# neck to mid-hip.
START_EXTRA_EDGES = (("OP LShoulder", "OP RHip"), ("OP RShoulder", "OP LHip"), ("OP Neck", "OP MidHip"))
SHOULDERS = ("OP LShoulder", "OP RShoulder")                               # left_/right_shoulder_idx 5, 2
# SMPLify-X reads OpenPose's torso. A keypoint set without it (COCO-WholeBody: COCO's 17 body points sit in the
# dataset slots of SPIN's 49, `core.joints.COCO_JOINTS`) has the same joints under the dataset's names: where an
# OpenPose torso point is unseen and its dataset counterpart is seen, the camera start, the camera stage, the depth
# edges and the side-view test read the dataset joint, keypoint and model point alike (per example, per joint;
# the dataset joint is another point of the model than OpenPose's, so both sides swap). SPIN's SMPLify swaps the
# whole torso set instead (`fitting.smplify.GT_TORSO`).
OPENPOSE_STAND_INS: dict[str, str] = {
    "OP RHip": "Right Hip", "OP LHip": "Left Hip", "OP RShoulder": "Right Shoulder", "OP LShoulder": "Left Shoulder"}
FLIP = (0.0, math.pi, 0.0)             # fit_single_frame: the second orientation, R(orient) R_y(π)
# Both hands' poses, left then right (contiguous in the full pose): the hand prior's block, one term over both
# (the joint limits differ by side)
HANDS = slice(POSE_SLICES["left_hand_pose"].start, POSE_SLICES["right_hand_pose"].stop)
# The interpenetration term's unit: w_coll × COLLISION_SCALE × Σ depth² (m²). SMPLify-X's penalty (mesh-intersection's
# DistanceFieldPenetrationLoss: df_cone_height 1e-4, penalize_outside, point2plane False) has its own unit, which
# the capsules' depths do not share, so the scale is a choice, made on held-out synthetic people (open-smplx-small,
# seeds 1 and 2, 64 each; the benchmark's are seed 0) by a rule stated before measuring (docs/smplifyx.md, "The
# interpenetration term"): the smallest of the decades 1e4..1e7 whose share of fits interpenetrating by > 10 mm is
# within 2 points of the grid's lowest, at most 2 mm more body PA-MPJPE than without the term. Measured: 45.3 %
# (off), 45.3, 44.5, 39.8, 39.1 % (1e4..1e7); body 76.4 mm off, 77.7 at 1e6.
COLLISION_SCALE = 1e6
Mode = Literal["fast", "reference"]


@dataclass(frozen=True)
class StageWeights:
    """One stage's weights (SMPLify-X's names; all but the jaw's and the bending factor enter squared)."""

    body_pose: float
    shape: float
    expression: float
    hand_pose: float
    jaw_pose: tuple[float, float, float]
    hand_joints: float
    face_joints: float
    collision: float   # SMPLify-X's interpenetration weight (× `SMPLifyXConfig.collision_scale`; linear)


# fit_smplx.yaml: body_pose_prior_weights, shape_weights, expr_weights, hand_pose_prior_weights,
# jaw_pose_prior_weights, hand_joints_weights, face_joints_weights, coll_loss_weights; one row per stage.
SMPLIFYX_STAGES: tuple[StageWeights, ...] = (
    StageWeights(404.0, 100.0, 100.0, 404.0, (4040.0, 40400.0, 40400.0), 0.0, 0.0, 0.0),
    StageWeights(404.0, 50.0, 50.0, 404.0, (4040.0, 40400.0, 40400.0), 0.0, 0.0, 0.0),
    StageWeights(57.4, 10.0, 10.0, 57.4, (574.0, 5740.0, 5740.0), 0.0, 0.0, 0.0),
    StageWeights(4.78, 5.0, 5.0, 4.78, (47.8, 478.0, 478.0), 0.1, 0.0, 0.01),
    StageWeights(4.78, 5.0, 5.0, 4.78, (47.8, 478.0, 478.0), 2.0, 2.0, 1.0),
)


@dataclass(frozen=True)
class SMPLifyXConfig:
    """SMPLify-X settings: its stages and numbers, and the fast mode's iteration counts."""

    mode: Mode = "fast"
    stages: tuple[StageWeights, ...] = SMPLIFYX_STAGES
    focal_length: float = SMPLIFYX_FOCAL
    rho: float = SMPLIFYX_RHO
    image_height: float = SMPLIFYX_DATA_HEIGHT     # px; the data weight is 1000 / image_height
    depth_loss_weight: float = SMPLIFYX_DEPTH_LOSS_WEIGHT
    side_view_threshold: float = SMPLIFYX_SIDE_VIEW_THRESHOLD
    ignored_joints: tuple[str, ...] = SMPLIFY_IGNORED
    # fit_smplx.yaml interpenetration: the capsule proxies' penalty in the stages whose collision weight is > 0
    interpenetration: bool = True
    collision_scale: float = COLLISION_SCALE        # m⁻²: the penalty's unit against SMPLify-X's weights
    # reference: L-BFGS
    maxiters: int = SMPLIFYX_MAXITERS
    ftol: float = SMPLIFYX_FTOL
    gtol: float = SMPLIFYX_GTOL
    # fast: Levenberg–Marquardt iterations of the camera stage and of each stage
    camera_iterations: int = 10
    stage_iterations: tuple[int, ...] = (2, 2, 6, 12, 6)
    # fast: the last stage's block alternation (module docstring): rounds of (body block, all), then the body
    # block, each a fresh LM of polish_iterations iterations
    polish_rounds: int = 2
    polish_iterations: int = 5
    # fast, no estimate: the start is lifted from the body keypoints (`fitting.lifter`, SMPLify's lifter: SMPL's
    # first 21 body joints are SMPL-X's) and placed by its torso, then fitted from the fourth stage (the first at
    # the body prior's final weight; hands join) with lifted_stage_iterations, at its own heading only. False:
    # the mean start, all five stages, both orientations where the shoulders are close. Chosen on the dev split
    # (docs/smplifyx.md, "A lifted start").
    lift_mean_start: bool = True
    lifted_stage_iterations: tuple[int, ...] = (0, 0, 0, 4, 6)
    damping: float = 0.1                            # LM's λ at each stage's start (× diag H; Nielsen's update)

    def validated(self) -> SMPLifyXConfig:
        if self.mode not in ("fast", "reference"):
            raise ValueError(f"SMPLify-X mode must be 'fast' or 'reference', not {self.mode!r}")
        for name in ("stage_iterations", "lifted_stage_iterations"):
            counts = getattr(self, name)
            if len(counts) != len(self.stages) or min(counts) < 0:
                raise ValueError(f"{name} must be {len(self.stages)} counts >= 0 (one per stage), got "
                                 f"{list(counts)}")
        if self.polish_rounds < 0 or self.polish_iterations < 0:
            raise ValueError(f"polish_rounds and polish_iterations must be >= 0, got {self.polish_rounds} and "
                             f"{self.polish_iterations}")
        if not self.collision_scale >= 0:
            raise ValueError(f"collision_scale must be >= 0 (m⁻²), got {self.collision_scale}")
        if self.image_height <= 0:
            raise ValueError(f"image_height must be positive px, got {self.image_height}")
        return self

    @property
    def data_weight(self) -> float:
        return SMPLIFYX_DATA_HEIGHT / self.image_height


# --- pluggable prior blocks --------------------------------------------------------------------------------------
class PoseTerm(Protocol):
    """A prior over a block of pose values x (B, D): an energy (B,), differentiable (the reference mode uses
    autograd), and its Gauss–Newton normal equations (the fast mode): (H (B, D, D), g (B, D)) with ½∇²E ≈ H and
    ½∇E = g at x. The objective multiplies both by the stage's squared weight."""

    dim: int

    def energy(self, x: Tensor) -> Tensor: ...

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


class L2Term:
    """‖x‖²: SMPLify-X's ``l2`` prior (its hand, jaw, expression and shape prior)."""

    def __init__(self, dim: int):
        self.dim = dim

    def energy(self, x: Tensor) -> Tensor:
        return x.square().sum(-1)

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return eye.expand(x.shape[0], -1, -1), x


class MixtureTerm:
    """SMPLify's max-mixture GMM prior (`fitting.priors.MaxMixturePrior`): min_k of the components' energies,
    less their smallest constant (−log of the largest normalised weight), so that it is 0 at the likeliest
    component's mean: the same minimiser and gradients, without a constant of ~60 per unit weight (10⁷ at
    SMPLify-X's first stages) in whose float32 digits L-BFGS's line search loses the changes it measures; in the
    normal equations, the active component's quadratic."""

    def __init__(self, prior: MaxMixturePrior):
        self.prior, self.dim = prior, prior.dim
        self.offset = float((-prior.log_nll_weights).min())

    def energy(self, x: Tensor) -> Tensor:
        return self.prior(x).to(x.dtype) - self.offset

    def normal_equations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        prior = self.prior
        k = prior.component_energies(x).argmin(1)
        prec = prior.precisions.to(x.dtype)[k]
        diff = x - prior.means.to(x.dtype)[k]
        return 0.5 * prec, 0.5 * (prec @ diff[..., None])[..., 0]


def body_gmm_term(path=DEFAULT_PRIOR, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> MixtureTerm:
    """The GMM pose prior over SMPL-X's 21 body joints: the marginal of a 23-joint SMPL mixture (`load_gmm`) over
    its first 63 values (SMPL's two hand joints dropped: marginal means and covariances)."""
    gmm = load_gmm(path)
    marginal = GaussianMixture(means=gmm.means[:, :BODY_POSE_DIM], covars=gmm.covars[:, :BODY_POSE_DIM, :BODY_POSE_DIM],
                               weights=gmm.weights, metadata={**gmm.metadata, "marginal": "21 body joints"})
    return MixtureTerm(MaxMixturePrior(marginal, dtype=dtype).to(device))


def torso_sources(keypoints: Tensor) -> Tensor:
    """(B, 161) for each whole-body point of each example the point read in its place: itself, or for an unseen
    OpenPose torso point whose dataset counterpart is seen, that one (`OPENPOSE_STAND_INS`). keypoints (B, 161, 3)
    px + confidence."""
    batch, device = keypoints.shape[0], keypoints.device
    op = torch.as_tensor(wholebody_indices(tuple(OPENPOSE_STAND_INS)), device=device)
    dataset = torch.as_tensor(wholebody_indices(tuple(OPENPOSE_STAND_INS.values())), device=device)
    swap = (keypoints[:, op, 2] <= 0) & (keypoints[:, dataset, 2] > 0)                    # (B, 4)
    sources = torch.arange(NUM_WHOLEBODY, device=device).expand(batch, -1).clone()
    sources[:, op] = torch.where(swap, dataset, op)
    return sources


def read_sources(values: Tensor, sources: Tensor) -> Tensor:
    """values (B, 161, C) read at `torso_sources` (B, 161): the OpenPose torso slots hold their stand-ins'."""
    return values.gather(1, sources[..., None].expand(-1, -1, values.shape[-1]))


def edge_depth(points: Tensor, keypoints: Tensor, focal: Tensor) -> tuple[Tensor, Tensor]:
    """SMPLify-X's depth guess (`fitting.guess_init`): f × the mean 3D length of its torso edges (`DEPTH_EDGES`)
    over their mean 2D length, from model-frame whole-body points (B, 161, 3) m of the start pose, keypoints
    (B, 161, 3) px and focal (B, 2) px (f = sqrt(fx fy)); over the edges both of whose keypoints are seen (an
    OpenPose torso point by its dataset stand-in where it is missing, `torso_sources`). Returns the depth (B,) m
    and whether any edge was seen (B,)."""
    sources = torso_sources(keypoints)
    points, keypoints = read_sources(points, sources), read_sources(keypoints, sources)
    a = torch.as_tensor([WHOLEBODY_INDEX[e[0]] for e in DEPTH_EDGES], device=points.device)
    b = torch.as_tensor([WHOLEBODY_INDEX[e[1]] for e in DEPTH_EDGES], device=points.device)
    ok = ((keypoints[:, a, 2] > 0) & (keypoints[:, b, 2] > 0)).to(points.dtype)            # (B, E)
    count = ok.sum(1).clamp_min(1)
    len3d = ((points[:, a] - points[:, b]).norm(dim=-1) * ok).sum(1) / count
    len2d = ((keypoints[:, a, :2] - keypoints[:, b, :2]).norm(dim=-1) * ok).sum(1) / count
    return focal.prod(-1).sqrt() * len3d / len2d.clamp_min(1e-3), ok.sum(1) > 0


@dataclass
class SMPLifyXResult:
    """A batch of whole-body fits (shapes in the module docstring). ``objective`` (B,) is the last stage's
    objective of the fit on the full model, ``terms`` its parts (B,) each; ``points`` (B, 161, 3) the model-frame
    whole-body points (add cam_t for the camera frame). extras: ``turned_tried`` (B,) the second orientation was
    fitted; fast: ``turned_around`` (B,) it was kept, ``iterations``; reference: ``function_evaluations`` (B,),
    ``stage_losses`` (B, 5, 2) each stage's objective at its start and end, ``nonfinite_steps`` (B,)."""

    full_pose: Tensor
    betas: Tensor
    expression: Tensor
    cam_t: Tensor
    points: Tensor
    objective: Tensor
    terms: dict[str, Tensor]
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SMPLifyXStart:
    """An estimate of each person to fit from (a network's prediction, a stored fit), in the result's conventions:
    full_pose (B, 165) axis-angle radians, betas (B, NB), expression (B, NE), cam_t (B, 3) m camera frame."""

    full_pose: Tensor
    betas: Tensor
    expression: Tensor
    cam_t: Tensor


class SMPLifyX:
    """Whole-body SMPLify for one SMPL-X-layout model; any batch size per call."""

    def __init__(self, model: WholeBodyModel, body_prior: PoseTerm | None = None,
                 hand_prior: PoseTerm | None = None, config: SMPLifyXConfig = SMPLifyXConfig(),
                 lifter: PoseLifter | None = None):
        self.model, self.config = model, config.validated()
        dtype = model.rows.dtype
        self.body_prior = (body_prior if body_prior is not None
                           else body_gmm_term(dtype=dtype, device=model.rows.device))
        self.hand_prior = hand_prior if hand_prior is not None else L2Term(2 * HAND_POSE_DIM)
        if self.body_prior.dim != BODY_POSE_DIM or self.hand_prior.dim != 2 * HAND_POSE_DIM:
            raise ValueError(f"the body prior must be over {BODY_POSE_DIM} values and the hand prior over "
                             f"{2 * HAND_POSE_DIM} (both hands); got {self.body_prior.dim} and {self.hand_prior.dim}")
        device = model.rows.device
        provided = torch.as_tensor(model.provided, device=device)
        # each part's 0/1 indicator over the 161 points, in the model's dtype: a stage's point weights are their
        # sum weighted by Python numbers (`point_weights`), no tensor made from host data per evaluation
        self._parts = {part: torch.zeros(NUM_WHOLEBODY, dtype=model.rows.dtype, device=device).index_fill_(
            0, torch.as_tensor(wholebody_indices(names), device=device), 1.0) for part, names in WHOLEBODY_PARTS.items()}
        ignored = torch.as_tensor(wholebody_indices(self.config.ignored_joints), device=device)
        self._usable = provided.clone()
        self._usable[ignored] = False
        self._camera_torso = torch.as_tensor(wholebody_indices(CAMERA_TORSO), device=device)
        self._angle_idx = torch.as_tensor(ANGLE_PRIOR_INDICES, device=device) + POSE_SLICES["body_pose"].start
        self._angle_sign = torch.as_tensor(ANGLE_PRIOR_SIGNS, dtype=dtype, device=device)
        # the exact skeleton (the fast mode's evaluation; `normal_equations` in either mode), its points'
        # whole-body indices, and for each whole-body index its skeleton point (-1: not provided)
        self.skeleton, self._targets = model.skeleton()
        self._point_of = torch.full((NUM_WHOLEBODY,), -1, dtype=torch.long, device=device)
        self._point_of[self._targets] = torch.arange(len(self._targets), device=device)
        # the interpenetration term's capsule proxies, and a skeleton whose points 49.. are their segment ends
        self.capsules = body_capsules(model.body).to(device, dtype)
        self.proxies = Skeleton(model.body, self.capsules.end_rows, full_pose=True, expression=True, sparse=True)
        self._proxy_rows = torch.arange(len(self.capsules.end_rows), device=device) + NUM_JOINTS
        # the interpenetration term's rows: every capsule pair, fixed shapes and no host sync, on a GPU; the
        # overlapping pairs only on the CPU (less arithmetic; `fitting.collision.chained_collision_residuals`)
        self.static_collision = device.type == "cuda"
        # the start of fits without an estimate (fast mode, lift_mean_start): SMPLify's lifter, on the body's 49
        # canonical keypoints (the whole-body layout's first 49) less the ignored joints
        self.lifter = None
        if self.config.mode == "fast" and self.config.lift_mean_start:
            self.lifter = lifter_on(device, lifter)
            self._lifter_seen = self._usable[:NUM_JOINTS].clone()

    # -- the objective (both modes) ------------------------------------------------------------------------
    def point_weights(self, stage: StageWeights) -> Tensor:
        """SMPLify-X's joint weights (161,) for a stage: body 1, hands and face the stage's, 0 for the ignored
        joints and the points this model does not provide."""
        parts = self._parts
        weights = (parts["body"] + stage.hand_joints * (parts["left_hand"] + parts["right_hand"])
                   + stage.face_joints * parts["face"])
        return weights * self._usable

    def objective(self, points: Tensor, cam_t: Tensor, center: Tensor, focal: Tensor, keypoints: Tensor,
                  full_pose: Tensor, betas: Tensor, expression: Tensor, stage: StageWeights,
                  ends: Tensor | None = None) -> dict[str, Tensor]:
        """SMPLify-X's objective's terms (B,) each (module docstring) and their sum ``total``, for model-frame
        whole-body points (B, 161, 3) of the given parameters; differentiable. ``ends`` (B, 2C, 3) m: the capsule
        proxies' segment ends of those parameters (`fitting.collision.Capsules.ends` of the posed mesh; default:
        the skeleton's, `collision_ends`), read where the stage's collision weight is > 0."""
        c = self.config
        weight = self.point_weights(stage)[None] * keypoints[..., 2]                       # (B, 161) w c
        resid = project(points, cam_t, focal, center) - keypoints[..., :2]
        data = c.data_weight**2 * (weight.square()[..., None] * gmof(resid, c.rho)).sum((1, 2))
        body = full_pose[:, POSE_SLICES["body_pose"]]
        bending = torch.exp(full_pose[:, self._angle_idx] * self._angle_sign.to(full_pose)).square().sum(-1)
        terms = {
            "data": data,
            "body_pose": stage.body_pose**2 * self.body_prior.energy(body),
            "bending": SMPLIFYX_BENDING_FACTOR * stage.body_pose * bending,
            "hand_pose": stage.hand_pose**2 * self.hand_prior.energy(full_pose[:, HANDS]),
            "shape": stage.shape**2 * betas.square().sum(-1),
            "expression": stage.expression**2 * expression.square().sum(-1),
            "jaw_pose": sum((w * full_pose[:, POSE_SLICES["jaw_pose"].start + k]).square()
                            for k, w in enumerate(stage.jaw_pose)),
            "collision": self._collision_term(full_pose, betas, expression, stage, ends),
        }
        terms["total"] = sum(terms.values())
        return terms

    def evaluate(self, full_pose: Tensor, betas: Tensor, expression: Tensor, cam_t: Tensor, keypoints: Tensor,
                 camera_center: Tensor, *, focal_length: Tensor | None = None,
                 stage: StageWeights | None = None) -> dict[str, Tensor]:
        """The objective's terms of given fits on the full model (the last stage's weights by default); no
        gradient. What both modes' fits are compared by."""
        focal = self._focal(focal_length, keypoints)
        with torch.no_grad():
            out = self.model.forward_full(full_pose, betas, expression)
            return self.objective(out.points, cam_t, camera_center, focal, keypoints, full_pose, betas, expression,
                                  stage or self.config.stages[-1], ends=self.capsules.ends(out.vertices))

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, keypoints: Tensor, camera_center: Tensor, *, focal_length: Tensor | None = None,
                 start: SMPLifyXStart | None = None) -> SMPLifyXResult:
        """Fit a batch of whole-body keypoints (B, 161, 3) px + confidence (module docstring); camera_center
        (B, 2) px; focal_length (B,) or (B, 2) px, None: the config's.

        start: None fits from the lifted start (`lifted_start`, fast mode with ``lift_mean_start``: from the fourth
        stage, ``lifted_stage_iterations``, its own heading) or else the mean start (`mean_start`: all five stages,
        the second orientation where the shoulders are close). An estimate (`SMPLifyXStart`: the SPIN loop's network output) is fitted as SMPLify fits one
        (`fitting.smplify`, ``start="estimate"``): the camera stage from it, then SMPLify-X's objective at its
        final weights only (the last stage, its ``stage_iterations[-1]`` iterations), as SMPLify's estimate path
        runs SPIN's weights without the mean start's prior annealing; the turned orientation is not tried (an
        estimate says which way the person faces). Fast mode only: the reference is SMPLify-X's procedure, which
        has its own start. (Measured on 16 synthetic people from their truth: body PA-MPJPE median 14.5 mm, max
        40 mm, against 38 / 168 mm through all five stages, whose first strong priors flatten the estimate;
        from the truth's pose plus 0.15 rad on the body and 0.2 rad on the hands, betas and expression 0: 29 / 48 mm
        against 38 / 168 mm.)"""
        if keypoints.dim() != 3 or keypoints.shape[1:] != (NUM_WHOLEBODY, 3):
            raise ValueError(f"keypoints must be (B, {NUM_WHOLEBODY}, 3) whole-body px + confidence, got "
                             f"{tuple(keypoints.shape)}")
        keypoints, center = keypoints.detach().clone(), camera_center.detach().clone()
        focal = self._focal(focal_length, keypoints)
        if start is not None:
            start = self._checked_start(start, keypoints)
        if self.config.mode == "reference":
            if start is not None:
                raise ValueError("SMPLify-X's reference procedure fits from its own start; fit an estimate with "
                                 "mode='fast'")
            return self._fit_reference(keypoints, center, focal)
        return self._fit_fast(keypoints, center, focal, start)

    # -- shared pieces -------------------------------------------------------------------------------------
    def _focal(self, focal_length: Tensor | None, keypoints: Tensor) -> Tensor:
        return focal_per_example(focal_length, keypoints, self.config.focal_length)

    def _checked_start(self, start: SMPLifyXStart, keypoints: Tensor) -> SMPLifyXStart:
        """The start's tensors detached, copied, in the keypoints' dtype and device; ValueError on a shape."""
        batch, model = keypoints.shape[0], self.model
        want = {"full_pose": FULL_POSE_DIM, "betas": model.num_betas, "expression": model.num_expression,
                "cam_t": 3}
        bad = [f"{k} {tuple(getattr(start, k).shape)}" for k, n in want.items()
               if tuple(getattr(start, k).shape) != (batch, n)]
        if bad:
            raise ValueError(f"the start must be full_pose ({batch}, {FULL_POSE_DIM}), betas ({batch}, "
                             f"{model.num_betas}), expression ({batch}, {model.num_expression}), cam_t ({batch}, 3) "
                             f"for {batch} keypoint sets; got {', '.join(bad)}")
        return SMPLifyXStart(*(getattr(start, k).detach().clone().to(keypoints) for k in want))

    def _side_view(self, keypoints: Tensor) -> Tensor:
        """(B,) bool: the 2D shoulders closer than the side-view threshold (SMPLify-X then also fits the body
        turned 180°); a missing OpenPose shoulder read from its dataset stand-in (`torso_sources`)."""
        keypoints = read_sources(keypoints, torso_sources(keypoints))
        left, right = (keypoints[:, WHOLEBODY_INDEX[n], :2] for n in SHOULDERS)
        return (left - right).norm(dim=-1) < self.config.side_view_threshold

    def _result(self, full_pose, betas, expression, cam_t, keypoints, center, focal, **extras) -> SMPLifyXResult:
        with torch.no_grad():
            out = self.model.forward_full(full_pose, betas, expression)
            ends = self.capsules.ends(out.vertices)
            terms = self.objective(out.points, cam_t, center, focal, keypoints, full_pose, betas, expression,
                                   self.config.stages[-1], ends=ends)
            extras["collision_penalty"] = collision_penalty(ends, self.capsules.radii(betas), self.capsules.pairs)
        return SMPLifyXResult(full_pose=full_pose, betas=betas, expression=expression, cam_t=cam_t,
                              points=out.points, objective=terms["total"], terms=terms, extras=extras)

    # -- reference: SMPLify-X's L-BFGS stages, one person at a time ------------------------------------------
    def _fit_reference(self, keypoints: Tensor, center: Tensor, focal: Tensor) -> SMPLifyXResult:
        fits = [self._fit_one_reference(keypoints[b:b + 1], center[b:b + 1], focal[b:b + 1])
                for b in range(keypoints.shape[0])]
        full_pose, betas, expression, cam_t = (torch.cat([f[k] for f in fits]) for k in range(4))
        return self._result(full_pose, betas, expression, cam_t, keypoints, center, focal,
                            function_evaluations=torch.as_tensor([f[4] for f in fits]),
                            turned_tried=torch.as_tensor([f[5] for f in fits]),
                            stage_losses=torch.as_tensor([f[6] for f in fits]),
                            nonfinite_steps=torch.as_tensor([f[7] for f in fits]))

    def _fit_one_reference(self, keypoints, center, focal):
        c, model = self.config, self.model
        dtype, device = keypoints.dtype, keypoints.device
        num_betas, num_expression = model.num_betas, model.num_expression
        full_pose = torch.zeros(1, FULL_POSE_DIM, dtype=dtype, device=device)
        full_pose[:, 0] = math.pi                                         # fitloop's mean start (module docstring)
        betas = torch.zeros(1, num_betas, dtype=dtype, device=device)
        expression = torch.zeros(1, num_expression, dtype=dtype, device=device)
        evaluations = [0]
        # fitting.guess_init: depth from the torso edges at the start pose, x = y = 0
        with torch.no_grad():
            points = model.forward_full(full_pose, betas, expression).points
        depth, seen = edge_depth(points, keypoints, focal)
        init_t = torch.zeros(1, 3, dtype=dtype, device=device)
        init_t[0, 2] = depth[0] if bool(seen[0]) else 2 * c.focal_length / c.image_height
        # camera stage: translation and global orientation on the torso, plus the depth anchor
        cam_t = init_t.clone().requires_grad_(True)
        orient = full_pose[:, :3].clone().requires_grad_(True)
        rest = full_pose[:, 3:]
        torso = torso_sources(keypoints)[0, self._camera_torso]                      # OpenPose, or stand-ins
        mask = (keypoints[0, torso, 2] > 0).to(dtype)

        def camera_loss():
            pts = model.forward_full(torch.cat([orient, rest], 1), betas, expression).points
            err = (project(pts[:, torso], cam_t, focal, center) - keypoints[:, torso, :2]).square().sum(-1)
            evaluations[0] += 1
            return (c.data_weight**2 * (mask * err).sum()
                    + c.depth_loss_weight**2 * (cam_t[:, 2] - init_t[:, 2]).square().sum())

        broken = int(self._run_lbfgs([cam_t, orient], camera_loss)[2])
        cam_t = cam_t.detach()
        orientations = [orient.detach()]
        turned = bool(self._side_view(keypoints)[0])
        if turned:
            orientations.append(compose_axis_angle(orient.detach(), torch.tensor([FLIP], dtype=dtype, device=device)))
        best = None
        for start_orient in orientations:
            params = {"global_orient": start_orient.clone(), "body_pose": torch.zeros(1, BODY_POSE_DIM, dtype=dtype),
                      "betas": betas.clone(), "expression": expression.clone()}
            for name in ("left_hand_pose", "right_hand_pose"):
                params[name] = torch.zeros(1, HAND_POSE_DIM, dtype=dtype)
            for name in ("jaw_pose", "leye_pose", "reye_pose"):
                params[name] = torch.zeros(1, 3, dtype=dtype)
            params = {k: v.to(device).requires_grad_(True) for k, v in params.items()}
            loss_value, stage_losses = None, []
            for stage in c.stages:
                def closure(stage=stage, p=params):
                    pose = model.full_pose(p["global_orient"], p["body_pose"], p["left_hand_pose"],
                                           p["right_hand_pose"], p["jaw_pose"], p["leye_pose"], p["reye_pose"])
                    out = model.forward_full(pose, p["betas"], p["expression"])
                    evaluations[0] += 1
                    return self.objective(out.points, cam_t, center, focal, keypoints, pose, p["betas"],
                                          p["expression"], stage, ends=self.capsules.ends(out.vertices))["total"].sum()

                loss_value, first, broke = self._run_lbfgs(list(params.values()), closure)
                broken += int(broke)
                with torch.no_grad():
                    stage_losses.append((first, float(closure())))
            if best is None or loss_value < best[0]:
                best = (loss_value, {k: v.detach() for k, v in params.items()}, stage_losses)
        p = best[1]
        pose = model.full_pose(p["global_orient"], p["body_pose"], p["left_hand_pose"], p["right_hand_pose"],
                               p["jaw_pose"], p["leye_pose"], p["reye_pose"])
        return pose, p["betas"], p["expression"], cam_t, evaluations[0], turned, best[2], broken

    def _run_lbfgs(self, params: list[Tensor], loss_fn) -> tuple[float, float, bool]:
        """SMPLify-X's FittingMonitor.run_fitting with its L-BFGS: up to `maxiters` steps of a strong-Wolfe
        L-BFGS of `maxiters` iterations each, ended by ftol (relative loss change) or gtol (every gradient's
        largest entry, as SMPLify-X tests it: abs of the max). Returns the loss run_fitting returns (the one the
        last step started from: what SMPLify-X compares orientations by), the loss at the start, and whether a
        step's line search broke down (NaN; that step is undone and the run ends)."""
        c = self.config
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=c.maxiters, line_search_fn="strong_wolfe",
                                      tolerance_grad=SMPLIFYX_LBFGS_TOLERANCE_GRAD,
                                      tolerance_change=SMPLIFYX_LBFGS_TOLERANCE_CHANGE,
                                      history_size=SMPLIFYX_LBFGS_HISTORY)

        def closure():
            optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        previous, first, broke = None, None, False
        for n in range(c.maxiters):
            saved = [p.detach().clone() for p in params]
            loss = float(optimizer.step(closure).detach())
            first = loss if first is None else first
            if not math.isfinite(loss) or not all(bool(torch.isfinite(p).all()) for p in params):
                with torch.no_grad():  # a line search that broke down (NaN): back to the step's start, stop
                    for p, value in zip(params, saved):
                        p.copy_(value)
                broke = True
                break
            if (n > 0 and previous is not None and c.ftol > 0
                    and (previous - loss) / max(abs(previous), abs(loss), 1.0) <= c.ftol):
                break
            if all(abs(float(p.grad.max())) < c.gtol for p in params if p.grad is not None):
                break
            previous = loss
        return (previous if previous is not None else loss), first, broke

    # -- fast: batched Levenberg–Marquardt on the skeleton -------------------------------------------------
    def _fit_fast(self, keypoints: Tensor, center: Tensor, focal: Tensor,
                  start: SMPLifyXStart | None = None) -> SMPLifyXResult:
        c, model = self.config, self.model
        batch, dtype, device = keypoints.shape[0], keypoints.dtype, keypoints.device
        lifted = start is None and self.lifter is not None
        counts = c.lifted_stage_iterations if lifted else c.stage_iterations
        if lifted:
            full_pose, shape, cam_t = self.lifted_start(keypoints, center, focal)
        elif start is None:
            full_pose, shape, cam_t = self.mean_start(keypoints, center, focal)
        else:
            full_pose, cam_t = start.full_pose, start.cam_t
            shape = torch.cat([start.betas, start.expression], 1)
        full_pose, cam_t = self._lm_camera(full_pose, shape, cam_t, keypoints, center, focal)
        # the second orientation where the shoulders are close (from the mean start only), as extra examples of
        # the same batch
        turned = (self._side_view(keypoints) if start is None and not lifted
                  else torch.zeros(batch, dtype=torch.bool, device=device))
        extra = torch.nonzero(turned)[:, 0]
        example = torch.cat([torch.arange(batch, device=device), extra])
        pose = full_pose[example].clone()
        if len(extra):
            flip = torch.as_tensor([FLIP], dtype=dtype, device=device).expand(len(extra), 3)
            pose[batch:, :3] = compose_axis_angle(full_pose[extra, :3], flip)
        kp, ctr, foc, t, shp = keypoints[example], center[example], focal[example], cam_t[example], shape[example]
        iterations = 0
        # from an estimate, only the last stage: the annealing of the first four is for a mean start (a lifted
        # start runs the stages its counts give)
        if start is None:
            for stage, count in zip(c.stages[:-1], counts[:-1]):
                if count:
                    pose, shp = self._lm_stage(pose, shp, t, kp, ctr, foc, stage, count)
                    iterations += count
        pose, shp, count = self._last_stage(pose, shp, t, kp, ctr, foc, counts[-1])
        iterations += count
        nb = model.num_betas
        pick = torch.arange(batch, device=device)
        if len(extra):  # each turned candidate against its example's first: the lower final objective
            both = torch.cat([extra, torch.arange(batch, len(example), device=device)])
            objective = self.evaluate(pose[both], shp[both, :nb], shp[both, nb:], t[both], kp[both], ctr[both],
                                      focal_length=foc[both])["total"]
            better = objective[len(extra):] < objective[:len(extra)]
            pick[extra[better]] = batch + torch.nonzero(better)[:, 0]
        pose, shp, t = pose[pick], shp[pick], t[pick]
        return self._result(pose, shp[:, :nb], shp[:, nb:], t, keypoints, center, focal,
                            turned_tried=turned, turned_around=pick >= batch, iterations=iterations,
                            lifted_start=torch.full((batch,), lifted, dtype=torch.bool, device=device))

    def mean_start(self, keypoints: Tensor, center: Tensor, focal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The fast mode's start without a lifter (``lift_mean_start`` False): full pose (B, 165) zero but the
        global orientation (π about x: upright, facing the camera), [betas, expression] (B, NB + NE) zero, and the
        translation (B, 3) m that puts that body's OpenPose torso (or its dataset stand-ins, `torso_sources`) on the
        keypoints' (`placed`); center, focal (B, 2) px."""
        batch, dtype, device = keypoints.shape[0], keypoints.dtype, keypoints.device
        full_pose = torch.zeros(batch, FULL_POSE_DIM, dtype=dtype, device=device)
        full_pose[:, 0] = math.pi
        return self.placed(full_pose, keypoints, center, focal)

    def lifted_start(self, keypoints: Tensor, center: Tensor, focal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The fast mode's start without an estimate (``lift_mean_start``): the global orientation and the 21 body
        joints lifted from the body keypoints (the layout's first 49, less the ignored joints: SMPLify's lifter
        input, `fitting.lifter`; SMPL's hand joints 22-23 dropped), hands, jaw, eyes, betas and expression zero,
        placed as `mean_start` places the mean pose (`placed`)."""
        body = keypoints[:, :NUM_JOINTS]
        with torch.no_grad():
            lifted = self.lifter.lift(body, (body[..., 2] > 0) & self._lifter_seen)
        full_pose = torch.zeros(keypoints.shape[0], FULL_POSE_DIM, dtype=keypoints.dtype, device=keypoints.device)
        full_pose[:, :POSE_SLICES["body_pose"].stop] = lifted[:, :POSE_SLICES["body_pose"].stop]
        return self.placed(full_pose, keypoints, center, focal)

    def placed(self, full_pose: Tensor, keypoints: Tensor, center: Tensor,
               focal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A start pose (B, 165) with [betas, expression] (B, NB + NE) zero and the translation (B, 3) m that puts
        its OpenPose torso (or its dataset stand-ins, `torso_sources`) on the keypoints' (similar triangles on
        SMPLify-X's torso edges, `core.camera.translation_from_torso`; no torso pair seen: the extent of all the
        seen keypoints); center, focal (B, 2) px."""
        model = self.model
        batch, dtype, device = keypoints.shape[0], keypoints.dtype, keypoints.device
        shape = torch.zeros(batch, model.num_betas + model.num_expression, dtype=dtype, device=device)
        with torch.no_grad():
            points = model.forward_full(full_pose, shape[:, :model.num_betas], shape[:, model.num_betas:]).points
        pairs = tuple((WHOLEBODY_INDEX[a], WHOLEBODY_INDEX[b]) for a, b in DEPTH_EDGES + START_EXTRA_EDGES)
        sources = torso_sources(keypoints)
        torso_kp = read_sources(keypoints, sources)
        cam_t = translation_from_torso(read_sources(points, sources), torso_kp, focal, center, pairs)
        # no torso pair seen: depth from the extent of all the seen keypoints against the mean body's
        seen = keypoints[..., 2] > 0
        none = ~torch.stack([(torso_kp[:, a, 2] > 0) & (torso_kp[:, b, 2] > 0) for a, b in pairs], 1).any(1)
        if bool(none.any()):
            big = torch.finfo(dtype).max
            extent2d = (torch.where(seen[..., None], keypoints[..., :2], -big).amax(1)
                        - torch.where(seen[..., None], keypoints[..., :2], big).amin(1)).amax(-1)
            extent3d = (torch.where(seen[..., None], points[..., :2], -big).amax(1)
                        - torch.where(seen[..., None], points[..., :2], big).amin(1)).amax(-1)
            depth = focal.prod(-1).sqrt() * extent3d / extent2d.clamp_min(1.0)
            mean2d = (keypoints[..., :2] * seen[..., None]).sum(1) / seen.sum(1, keepdim=True).clamp_min(1)
            mean3d = (points * seen[..., None]).sum(1) / seen.sum(1, keepdim=True).clamp_min(1)
            xy = (mean2d - center) * depth[:, None] / focal - mean3d[:, :2]
            fallback = torch.cat([xy, depth[:, None] - mean3d[:, 2:]], 1)
            cam_t = torch.where(none[:, None] & (seen.sum(1) >= 2)[:, None], fallback, cam_t)
        return full_pose, shape, cam_t

    def _lm_camera(self, full_pose, shape, cam_t, kp, center, focal):
        """Camera stage: global orientation and translation on the torso keypoints (an OpenPose one missing: its
        dataset stand-in, `torso_sources`; masked where both are), weighted d², plus the depth anchor."""
        c = self.config
        batch, dtype, device = full_pose.shape[0], full_pose.dtype, full_pose.device
        # the skeleton evaluates both sets of torso points; each example reads its four (`pick`)
        torso = torso_sources(kp)[:, self._camera_torso]                                   # (B, 4)
        both = torch.cat([self._camera_torso, torch.as_tensor(
            wholebody_indices([OPENPOSE_STAND_INS[n] for n in CAMERA_TORSO]), device=device)])
        subset = self._point_of[both]
        slot = (torso[..., None] == both).to(torch.long).argmax(-1)                         # (B, 4) into both

        def pick(x: Tensor) -> Tensor:  # (B, 8, ...) -> (B, 4, ...)
            return x.gather(1, slot.reshape(slot.shape + (1,) * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))

        target = kp.gather(1, torso[..., None].expand(-1, -1, 3))
        mask = (target[..., 2] > 0).to(dtype) * c.data_weight                                 # (B, 4)
        target = target[..., :2]
        # fewer than three torso keypoints leave the orientation undetermined: keep the start's
        turn = ((mask > 0).sum(1) >= 3).to(dtype)
        depth0 = cam_t[:, 2].clone()
        lam = torch.full((batch,), 1e-3, dtype=dtype, device=device)

        def evaluate(p, t):
            state = self.skeleton(p, shape, subset)
            r = (project(pick(state.points), t, focal, center) - target) * mask[..., None]
            d = c.depth_loss_weight * (t[:, 2] - depth0)
            return state, r, d, r.square().sum((1, 2)) + d.square()

        state, r, d, cost = evaluate(full_pose, cam_t)
        jd = torch.zeros(batch, 1, 6, dtype=dtype, device=device)     # the depth anchor's row of the Jacobian
        jd[:, 0, 5].fill_(c.depth_loss_weight)                          # fill_: no scalar tensor from the host
        for _ in range(c.camera_iterations):
            d_pose = pick(self.skeleton.jacobian(state)[0])
            dproj = projection_jacobian(pick(state.points) + cam_t[:, None], focal) * mask[..., None, None]
            jac = torch.cat([dproj @ d_pose[..., :3] * turn[:, None, None, None], dproj], -1).reshape(batch, -1, 6)
            jac = torch.cat([jac, jd], 1)
            res = torch.cat([r.reshape(batch, -1), d[:, None]], 1)
            step = _solve(jac.transpose(1, 2) @ jac, (jac.transpose(1, 2) @ res[..., None])[..., 0], lam)
            new_pose = full_pose.clone()
            new_pose[:, :3] = full_pose[:, :3] + step[:, :3]
            new_t = cam_t + step[:, 3:]
            new_state, new_r, new_d, new_cost = evaluate(new_pose, new_t)
            better = new_cost < cost
            full_pose = torch.where(better[:, None], new_pose, full_pose)
            cam_t = torch.where(better[:, None], new_t, cam_t)
            state = select_state(better, new_state, state)
            r = torch.where(better[:, None, None], new_r, r)
            d, cost = torch.where(better, new_d, d), torch.where(better, new_cost, cost)
            lam = torch.where(better, lam / 3, lam * 5).clamp(1e-7, 1e7)
        return full_pose, cam_t

    def _last_stage(self, pose, shape, cam_t, kp, center, focal, iterations: int) -> tuple[Tensor, Tensor, int]:
        """The last stage: ``iterations`` of its LM on all its parameters, then the block alternation (module
        docstring); the pose, [betas, expression] and the LM iterations spent."""
        c = self.config
        stage = c.stages[-1]
        pose, shape = self._lm_stage(pose, shape, cam_t, kp, center, focal, stage, iterations)
        body = self._body_parameters(pose.device)
        for free in [body, None] * c.polish_rounds + [body]:
            pose, shape = self._lm_stage(pose, shape, cam_t, kp, center, focal, stage, c.polish_iterations, free)
        return pose, shape, iterations + (2 * c.polish_rounds + 1) * c.polish_iterations

    def _body_parameters(self, device) -> Tensor:
        """Indices into [full pose (165), betas, expression] of the body block: global orientation, body pose,
        betas."""
        nb = self.model.num_betas
        return torch.as_tensor(np.concatenate([np.arange(0, POSE_SLICES["body_pose"].stop),
                                               FULL_POSE_DIM + np.arange(nb)]), device=device)

    def _free_parameters(self, stage: StageWeights, device) -> Tensor:
        """Indices into [full pose (165), betas, expression] the fast mode solves for in a stage (the body block
        always)."""
        nb, ne = self.model.num_betas, self.model.num_expression
        blocks = [self._body_parameters(device).cpu().numpy()]
        if stage.hand_joints > 0:
            blocks += [np.arange(POSE_SLICES["left_hand_pose"].start, POSE_SLICES["right_hand_pose"].stop)]
        if stage.face_joints > 0:
            blocks += [np.arange(POSE_SLICES["jaw_pose"].start, POSE_SLICES["jaw_pose"].stop),
                       FULL_POSE_DIM + nb + np.arange(ne)]
        return torch.as_tensor(np.sort(np.concatenate(blocks)), device=device)

    def _stage_points(self, kp: Tensor, stage: StageWeights) -> tuple[Tensor, Tensor, Tensor]:
        """The whole-body indices a stage's data term reads (weight > 0 and seen in some example), their skeleton
        points, and their data weights (B, P) d² (w c)²."""
        weights = self.point_weights(stage)
        observed = (weights[None] * kp[..., 2] > 0).any(0) & (self._point_of >= 0)
        wb = torch.nonzero(observed)[:, 0]
        return wb, self._point_of[wb], (weights[wb][None] * kp[:, wb, 2] * self.config.data_weight).square()

    def normal_equations(self, pose: Tensor, shape: Tensor, cam_t: Tensor, keypoints: Tensor, center: Tensor,
                         focal: Tensor, stage: StageWeights, free: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The fast mode's Gauss–Newton normal equations of a stage's objective at (full pose (B, 165), [betas,
        expression] (B, NB + NE)): H (B, F, F) and g (B, F) over the parameters `free` (indices into
        [pose, betas, expression]; default all), with ½∇E = g exactly (GMoF by its IRLS weight, each prior by its
        block) and ½∇²E ≈ H. focal (B, 2) px."""
        wb, subset, conf = self._stage_points(keypoints, stage)
        state = self.skeleton(pose, shape, subset)
        resid = project(state.points, cam_t, focal, center) - keypoints[:, wb, :2]
        free = torch.arange(pose.shape[1] + shape.shape[1], device=pose.device) if free is None else free
        return self._normal_equations(state, resid, conf, pose, shape, cam_t, focal, stage,
                                      self._layout(free, stage, pose.dtype))

    def _layout(self, free: Tensor, stage: StageWeights, dtype: torch.dtype) -> _Free:
        """`_Free` for the parameters ``free`` of a stage (one host copy of the indices)."""
        size = FULL_POSE_DIM + self.model.num_betas + self.model.num_expression
        index = free.cpu().numpy()
        position = np.full(size, -1, dtype=np.int64)
        position[index] = np.arange(len(index))
        device = free.device
        return _Free(index=free, runs=tuple(_runs(index.tolist())), position=position,
                     angle_columns=torch.as_tensor(position[self._angle_idx.cpu().numpy()], device=device),
                     jaw_weight=torch.as_tensor(stage.jaw_pose, dtype=dtype, device=device).square())

    def _normal_equations(self, state, resid, conf, pose, shape, cam_t, focal, stage, free: _Free):
        batch, size = pose.shape[0], pose.shape[1] + shape.shape[1]
        rho2 = self.config.rho**2
        dproj = projection_jacobian(state.points + cam_t[:, None], focal)                    # (B, P, 2, 3)
        d_pose, d_shape = self.skeleton.jacobian(state, dproj)                               # (B, P, 2, ·)
        jac = torch.cat([d_pose, d_shape], -1).reshape(batch, -1, size)
        jac = torch.cat([jac[..., part] for part in free.runs], -1)                            # (B, 2P, F)
        w = (conf[..., None] * rho2**2 / (rho2 + resid.square()).square()).reshape(batch, -1)  # IRLS
        hess = jac.transpose(1, 2) @ (w[..., None] * jac)
        grad = (jac.transpose(1, 2) @ (w * resid.reshape(batch, -1))[..., None])[..., 0]
        prior_h, prior_g = self._prior_normal_equations(pose, shape, stage, free)
        hess, grad = hess + prior_h, grad + prior_g
        if self.collision_weight(stage) > 0:
            collision_h, collision_g = self._collision_normal_equations(pose, shape, stage, free)
            hess, grad = hess + collision_h, grad + collision_g
        return hess, grad

    def _lm_stage(self, pose, shape, cam_t, kp, center, focal, stage: StageWeights, iterations: int,
                  free: Tensor | None = None):
        """One SMPLify-X stage by LM on `free` (sorted indices into [full pose, betas, expression]; default the
        stage's free parameters, `_free_parameters`), the others held (`normal_equations`); a step is kept where it
        lowers the stage's objective."""
        batch, dtype, device = pose.shape[0], pose.dtype, pose.device
        nb = self.model.num_betas
        wb, subset, conf = self._stage_points(kp, stage)
        target = kp[:, wb, :2]
        free = self._free_parameters(stage, device) if free is None else free
        layout = self._layout(free, stage, dtype)                  # once per stage: no host copy per iteration
        lam = torch.full((batch,), self.config.damping, dtype=dtype, device=device)

        def cost_of(p, s):
            state = self.skeleton(p, s, subset)
            points = pose.new_zeros(batch, NUM_WHOLEBODY, 3)
            points[:, wb] = state.points
            terms = self.objective(points, cam_t, center, focal, kp, p, s[:, :nb], s[:, nb:], stage)
            resid = project(state.points, cam_t, focal, center) - target
            return state, resid, terms["total"]

        state, resid, cost = cost_of(pose, shape)
        nu = torch.full_like(lam, 2.0)
        for _ in range(iterations):
            hess, grad = self._normal_equations(state, resid, conf, pose, shape, cam_t, focal, stage, layout)
            step = _solve(hess, grad, lam)
            # the model's predicted decrease: E(δ) ≈ E + 2 gᵀδ + δᵀHδ (g, H are ½∇E, ½∇²E)
            predicted = -(2 * (grad * step).sum(-1) + (step[:, None] @ hess @ step[..., None])[:, 0, 0])
            params = torch.cat([pose, shape], 1).index_add(1, free, step)
            new_pose, new_shape = params[:, :FULL_POSE_DIM], params[:, FULL_POSE_DIM:]
            new_state, new_resid, new_cost = cost_of(new_pose, new_shape)
            better = new_cost < cost
            gain = (cost - new_cost) / predicted.clamp_min(1e-30)
            pose = torch.where(better[:, None], new_pose, pose)
            shape = torch.where(better[:, None], new_shape, shape)
            state = select_state(better, new_state, state)
            resid = torch.where(better[:, None, None], new_resid, resid)
            cost = torch.where(better, new_cost, cost)
            # Nielsen's damping update: shrink by how well the model predicted an accepted step, else grow
            shrink = (1 - (2 * gain - 1).pow(3)).clamp_min(1 / 3)
            lam = torch.where(better, lam * shrink, lam * nu).clamp(1e-7, 1e7)
            nu = torch.where(better, torch.full_like(nu, 2.0), nu * 2)
        return pose, shape

    # -- the interpenetration term (both modes) -------------------------------------------------------------
    def collision_weight(self, stage: StageWeights) -> float:
        """The interpenetration term's factor in a stage, w_coll × collision_scale (m⁻²); 0 with the term off."""
        c = self.config
        return stage.collision * c.collision_scale if c.interpenetration else 0.0

    def collision_ends(self, full_pose: Tensor, shape: Tensor) -> Tensor:
        """The capsule proxies' segment ends (B, 2C, 3), model frame, m, at full pose (B, 165) and [betas,
        expression] (B, NB + NE), by the skeleton (`fitting.collision.Capsules.end_rows` as its points)."""
        return self.proxies(full_pose, shape, self._proxy_rows).points

    def _collision_term(self, full_pose: Tensor, betas: Tensor, expression: Tensor, stage: StageWeights,
                        ends: Tensor | None) -> Tensor:
        """w_coll k_coll Σ depth² (B,) (zero where the stage's weight is 0 or the term is off)."""
        weight = self.collision_weight(stage)
        if weight == 0:
            return full_pose.new_zeros(full_pose.shape[0])
        if ends is None:
            ends = self.collision_ends(full_pose, torch.cat([betas, expression], 1))
        return weight * collision_penalty(ends, self.capsules.radii(betas), self.capsules.pairs)

    def _collision_normal_equations(self, pose: Tensor, shape: Tensor, stage: StageWeights,
                                    free: _Free) -> tuple[Tensor, Tensor]:
        """The interpenetration term's ½-Hessian (B, F, F) (Gauss–Newton: k Jᵀ J) and ½-gradient (B, F) (k Jᵀ
        depth, exact) over the parameters `free`, k = `collision_weight`; J the depths' Jacobian over [full pose,
        betas, expression] (`fitting.collision.chained_collision_residuals`)."""
        ends = self.collision_ends(pose, shape)
        depth, jac = chained_collision_residuals(self.capsules, self.proxies, self._proxy_rows, pose, shape, ends,
                                                 static=self.static_collision)
        jac = torch.cat([jac[..., part] for part in free.runs], -1)                            # (B, K, F)
        weight = self.collision_weight(stage)
        return weight * jac.transpose(1, 2) @ jac, weight * (jac.transpose(1, 2) @ depth[..., None])[..., 0]

    def _prior_normal_equations(self, pose: Tensor, shape: Tensor, stage: StageWeights,
                                free: _Free) -> tuple[Tensor, Tensor]:
        """The priors' ½-Hessian (B, F, F) and ½-gradient (B, F) over the parameters `free` (indices into [full
        pose, betas, expression]); a prior's block enters where its parameters are free (all or none of them)."""
        batch, dtype, device = pose.shape[0], pose.dtype, pose.device
        nb, ne = self.model.num_betas, self.model.num_expression
        params = torch.cat([pose, shape], 1)
        size = len(free.index)
        hess = torch.zeros(batch, size, size, dtype=dtype, device=device)
        grad = torch.zeros(batch, size, dtype=dtype, device=device)

        def where(part: slice) -> slice | None:
            first = int(free.position[part.start])                  # a host array: no tensor read
            return None if first < 0 else slice(first, first + part.stop - part.start)

        def add(part: slice, term: PoseTerm, weight2: float):
            at = where(part)
            if at is not None:
                h, g = term.normal_equations(params[:, part])
                hess[:, at, at] += weight2 * h
                grad[:, at] += weight2 * g

        def add_diagonal(part: slice, weight2: Tensor | float):
            at = where(part)
            if at is not None:
                hess.diagonal(dim1=-2, dim2=-1)[:, at] += weight2
                grad[:, at] += weight2 * params[:, part]

        add(POSE_SLICES["body_pose"], self.body_prior, stage.body_pose**2)
        add(HANDS, self.hand_prior, stage.hand_pose**2)
        add_diagonal(POSE_SLICES["jaw_pose"], free.jaw_weight)
        add_diagonal(slice(FULL_POSE_DIM, FULL_POSE_DIM + nb), stage.shape**2)
        add_diagonal(slice(FULL_POSE_DIM + nb, FULL_POSE_DIM + nb + ne), stage.expression**2)
        # bending prior: residuals sqrt(3.17 w) exp(s θ), on body-pose values (always free)
        bend = SMPLIFYX_BENDING_FACTOR * stage.body_pose
        e = torch.exp(pose[:, self._angle_idx] * self._angle_sign.to(dtype))
        de = self._angle_sign.to(dtype) * e
        at = free.angle_columns
        hess[:, at, at] += bend * de.square()
        grad[:, at] += bend * e * de
        return hess, grad


@dataclass(frozen=True)
class _Free:
    """The parameters a stage solves for (indices into [full pose, betas, expression]), laid out on the host once per
    stage so that its iterations read no index back from the device: ``index`` (F,) on the fit's device, its
    consecutive ``runs`` (column selection by slices), each parameter's column in the system ``position`` (a host
    array, -1 where held), the bending prior's columns and the jaw prior's squared weights (3,) on the device."""

    index: Tensor
    runs: tuple[slice, ...]
    position: np.ndarray
    angle_columns: Tensor
    jaw_weight: Tensor


def _runs(indices: list[int]) -> list[slice]:
    """Sorted indices as slices of consecutive runs (column selection by slices: cheaper than a gather)."""
    runs: list[slice] = []
    for i in indices:
        if runs and runs[-1].stop == i:
            runs[-1] = slice(runs[-1].start, i + 1)
        else:
            runs.append(slice(i, i + 1))
    return runs


def _solve(hess: Tensor, grad: Tensor, lam: Tensor) -> Tensor:
    """Marquardt's damped step, (H + λ diag H) δ = −g per example, solved on the Jacobi-scaled system
    (unit diagonal: the whole body's normal equations span ~10 decades, from the global orientation to a
    fingertip, which a float32 Cholesky of H itself does not survive). Each direction's curvature is at least
    1e-6 of the stiffest one's, so that a direction nothing observes takes no step instead of an unbounded one.
    `fitting.smplify.solve_spd`: a zero step where the factorisation fails (rejected, λ raised), no host sync."""
    diag = torch.diagonal(hess, dim1=-2, dim2=-1)
    diag = torch.maximum(diag, 1e-6 * diag.amax(-1, keepdim=True)).clamp_min(1e-12)
    scale = diag.rsqrt()                                                     # (B, F)
    scaled = hess * scale[:, :, None] * scale[:, None, :]
    scaled.diagonal(dim1=-2, dim2=-1).copy_(1.0 + lam[:, None])             # diag(H) / diag(H) + λ
    return -solve_spd(scaled, grad * scale) * scale
