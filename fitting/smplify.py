"""Batched SMPLify, as SPIN runs it (``mode="reference"``) and a much faster default (``mode="fast"``).

Both minimise SPIN's objective (SPIN_REFERENCE §3) in two stages:

1. camera translation t and global orientation, on the four torso joints (OpenPose hips and shoulders when all
   four are confident, else the dataset ones), plus the depth anchor depth_w² (t_z - t_z,init)²;
2. body pose, betas and global orientation with t fixed:
   Σ_j c_j² Σ_xy ρ(π(J_j) - x_j) + w_pose² E_GMM(θ) + w_angle² Σ exp(s θ)² + w_shape² ‖β‖²,
   ρ the Geman–McClure function with σ = 100 px, c the keypoint confidences (ignored joints set to 0).

reference: SPIN's own procedure — the full smplx body model evaluated every step (mesh, then the 49 joints),
  Adam with lr 1e-2, `iterations` steps per stage. Two defects of SPIN's code are not reproduced: the caller's
  confidences are never modified (SPIN zeroes them in place), and missing torso keypoints are masked in stage 1.
fast: the same objective on the exact joints-only `Skeleton`, minimised by batched Levenberg–Marquardt with
  analytic Jacobians (Geman–McClure by iteratively reweighted least squares, the max-mixture prior by its active
  component, a VAE prior (`fitting.vposer.VAEPosePrior`) by Gauss–Newton on its residuals). Run to convergence from
  an estimated start (``start="estimate"``: a network's prediction), a fit over-fits noisy keypoints and wanders
  into depth ambiguities, so stage 2 adds w² ‖θ_body - θ_body,init‖²
  (100 small Adam steps have the same effect implicitly), w = σ_kp / σ_start per example: the keypoints' noise
  (read off a first fit's residual) over the start's uncertainty (the caller's ``start_sigma``, or read off how far
  the start reprojects from the keypoints; `SMPLify.near_start_weight`). A start that carries no estimate of the
  person (``start="mean"``: `mean_pose_start`) gets no such term: the fast mode replaces its pose by one lifted from
  the keypoints (`fitting.lifter`; ``lift_mean_start``, SPIN's mean pose without), fits it and the same start
  turned around (front/back ambiguity; the mean pose also sideways both ways where the torso is not fully seen); its
  pose and angle priors start 100× stronger and relax to SPIN's (`SMPLify.prior_schedule`, over 5 iterations from a
  lifted start, 15 from the mean pose: limbs far from their keypoints would otherwise settle into depth minima), and
  after a few iterations the candidate with the lowest SPIN objective is kept (their objectives are in the result's
  extras). The caller says which start it gives; the values of the pose never decide
  it. `fitloop bench smplify` compares both modes. Optionally
  (``collision_weight`` > 0, off by default) stage 2 also penalises the body entering itself: w_c² Σ depth² over
  the overlapping pairs of capsule proxies (`fitting.collision`), by the same LM with closed-form Jacobians.
  Optionally (``silhouette_weight`` > 0 and person masks given, per example where one exists) stage 2 adds
  w_s² E_sil, the symmetric distance-transform distance between the mask and the body's silhouette
  (`fitting.silhouette_term`): in the LM with analytic Jacobians (from a mean start once the candidate is chosen),
  and in the reference by autograd on the same energy. DSR's semantic terms (``mc_weight``, ``clothed_weight``;
  `fitting.dsr`) enter the same way where part labels or a parsing are given: head, hands and feet matched
  tightly, the body kept inside the clothed person.

Body models: every family `fitting.body_model` loads (SMPL, SMPL-H, SMPL-X, the open model), in both modes. The
fitted parameters are the body model's: pose (B, 72) and betas. SMPL-H and SMPL-X have no joints for SMPL's hand
slots 22 and 23 (pose entries 66–71): only the pose prior (over all 69 body values, as in SPIN) moves them, and
the model ignores them. Their hand, jaw and eye joints keep zero pose (the body model's flat hands and closed
jaw): none of the 49 keypoints observes them, so nothing is fitted there and nothing beyond the 72 values is
returned or stored.

Conventions: keypoints (B, 49, 3) in pixels of the image the camera describes (SPIN: the 224 px crop) plus
confidence; pose (B, 72) axis-angle radians [global orient, body]; betas (B, NB); cam_t (B, 3) metres, camera
frame (x right, y down, z forward); camera_center (B, 2) px; focal length in px: the config's for every example
(SPIN: 5000 for the crop), or per example (``focal_length`` (B,) or (B, 2) fx, fy: a real camera written in the
keypoints' pixels, `core.frames.image_camera_in_fit_frame`). Inputs are never modified. Results are
deterministic for given inputs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor

from core.camera import project, projection_jacobian, translation_from_torso
from core.errors import ModelFileError
from core.frames import FIT_FOCAL, FIT_RES
from core.joints import JOINT_INDEX, NUM_JOINTS, SMPLIFY_IGNORED, indices
from fitting.body_model import BodyModel
from fitting.collision import body_capsules, chained_collision_residuals, collision_penalty
from fitting.dsr import (
    clothed_targets,
    load_semantic_prior,
    minimally_clothed_targets,
    minimally_clothed_vertices,
    prior_segments,
    vertex_segments,
)
from fitting.lifter import PoseLifter, lifter_on
from fitting.priors import (
    ANGLE_PRIOR_INDICES,
    ANGLE_PRIOR_SIGNS,
    BODY_POSE_DIM,
    SPIN_ANGLE_PRIOR_WEIGHT,
    SPIN_POSE_PRIOR_WEIGHT,
    SPIN_SHAPE_PRIOR_WEIGHT,
    MaxMixturePrior,
)
from fitting.silhouette import mesh_edges
from fitting.silhouette_term import (
    MaskTerm,
    SilhouetteResiduals,
    contour_vertices,
    mask_targets,
    normal_equations,
    silhouette_energy,
    term_residuals,
)
from fitting.skeleton import Skeleton, SkeletonState, compose_axis_angle, select_state, take_state
from fitting.step_graph import StepGraphs
from fitting.vposer import VAEPosePrior

OP_TORSO = ("OP RHip", "OP LHip", "OP RShoulder", "OP LShoulder")
TORSO_PAIRS = (("Right Shoulder", "Right Hip"), ("Left Shoulder", "Left Hip"))  # the start's similar triangles
TORSO_PAIR_INDEX = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in TORSO_PAIRS)
GT_TORSO = ("Right Hip", "Left Hip", "Right Shoulder", "Left Shoulder")
# What a fit's start is: "mean" carries nothing about this person (SPIN's static-fit start, `mean_pose_start`);
# "estimate" is a guess at this person (a network's prediction, a stored fit).
Start = Literal["mean", "estimate"]
# The headings (rad, about the camera's vertical) a mean start is tried at: as given, turned around, and, where
# the torso is not fully seen, turned sideways both ways (`SMPLifyResult.extras["candidate_objectives"]` order).
HEADINGS = (0.0, torch.pi, torch.pi / 2, -torch.pi / 2)
# The least uncertainty a start is given (rad): a start that reprojects exactly (or has no keypoints) is held
# firmly, with a finite weight that keeps the damped normal equations well conditioned in float32.
MIN_START_SIGMA = 1e-3
LM_DAMPING = 1e-3  # Levenberg–Marquardt's initial λ (relative to diag H), and its factors on a rejected / accepted step
LM_REJECT, LM_ACCEPT = 5.0, 1.0 / 3.0
# Levenberg's isotropic damping under Marquardt's, relative to the system's scale: ε = LM_FLOOR × the mean of
# diag H. A direction the data leave free that is no coordinate axis (the camera stage's turn about the line through
# the only two torso keypoints seen) has next to no Gauss–Newton curvature, and once λ had fallen its step was
# hundreds of radians, accepted whenever it happened to lower the cost: |ω| of 100–1,400 rad and bodies flipped
# about the hips, on 1 % of the dev split's net90 starts and 8 % of its mean-start candidates. Chosen on the dev
# split (docs/smplify.md, "A floor under the damping"): 1e-2 and more slow the camera stage of far starts (it then
# stops short in its 10 iterations)
LM_FLOOR = 1e-3
# px/m: where stage 2 moves the camera (`SMPLifyConfig.mask_moves_camera`), an example without a mask is held at
# stage 1's translation by TRANSLATION_HOLD² ‖t − t_1‖²: a metre weighs as a keypoint 10⁴ px off, far above what
# its keypoints' pull on t can move (f/z ≈ 100 px per m at SPIN's crop camera)
TRANSLATION_HOLD = 1e4


@dataclass(frozen=True)
class SMPLifyConfig:
    """SMPLify settings; the defaults are SPIN's weights with fitloop's fast solver."""

    mode: str = "fast"                      # "fast" (LM on the joints-only skeleton) or "reference" (SPIN's)
    focal_length: float = 5000.0            # px
    sigma: float = 100.0                    # Geman–McClure scale, px
    pose_prior_weight: float = SPIN_POSE_PRIOR_WEIGHT     # all weights enter squared, as in SPIN
    angle_prior_weight: float = SPIN_ANGLE_PRIOR_WEIGHT
    shape_prior_weight: float = SPIN_SHAPE_PRIOR_WEIGHT
    depth_loss_weight: float = 100.0
    ignored_joints: tuple[str, ...] = SMPLIFY_IGNORED
    # reference mode: Adam
    iterations: int = 100                   # steps per stage
    step_size: float = 1e-2
    # fast mode: Levenberg–Marquardt
    camera_iterations: int = 10
    body_iterations: int = 25               # at most: an example stops early once converged (tolerance, below)
    # stage 2's early exit: every check_every iterations, an example whose objective fell by less than tolerance
    # (relative) over them, its damping not risen, stops, and the rest run on without it (the batch is compacted).
    # Not while a schedule still changes the objective (`prior_schedule`). 0: every iteration runs for every example
    # (the fixed budget). Chosen on the dev split: within 0.2 mm of the fixed budget (docs/smplify.md)
    tolerance: float = 0.01
    check_every: int = 2
    # fast mode: torch.compile one whole stage-2 LM iteration of the keypoint and prior terms (`SMPLify._lm_step`;
    # the VAE prior, collision and mask terms stay eager): ~10-40 s to compile per process, then the iteration
    # about 1.6x faster on CPU (docs/smplify.md). Off by default
    compile: bool = False
    # fast mode: stage 2's LM iterations of the keypoint and prior terms replayed from a CUDA graph of one iteration
    # (`fitting.step_graph`; one launch per iteration instead of ~50-370 kernels): every example runs the whole
    # budget (no early exit: the batch keeps its shape); a graph per batch shape, captured on its first call. On a
    # CPU device the same static buffers run uncaptured (what the CPU tests check). Off by default: not yet timed
    # on a GPU (bench/gpu_check.sh does)
    cuda_graph: bool = False
    # near-start term for start="estimate": w² ‖θ_body − θ_body,start‖², w = σ_kp / σ_start (px/rad)
    init_weight: float | None = None        # None: w from the start's uncertainty (below); a number: fixed w
    keypoint_noise: float = 0.027           # σ_kp of the first fit: per coordinate, share of the keypoints' box side
    noise_from_fit: float = 1.0             # then σ_kp = this × the first fit's RMS residual (0: keep the above)
    noise_iterations: int = 2               # stage-2 iterations of that first fit (of body_iterations)
    try_back_start: bool | None = None      # None: for start="mean"; True/False: always/never
    side_starts: bool = True                # also the sideways headings where the torso is not fully seen
    back_choice_after: int = 3              # stage-2 iterations run on every candidate before keeping the best
    # fast mode, start="mean": the mean pose is replaced by a pose lifted from the keypoints (`fitting.lifter`: the
    # shipped lifter, or the one SMPLify is given) and the translation that puts its torso on theirs; it is fitted
    # as a mean start (no near-start term, SPIN's objective at the end) under a shorter prior schedule
    # (lifted_anneal_share), at its own heading only (try_back_start None). Chosen on the dev split
    # (docs/smplify.md, "A lifted start"). False: SPIN's mean pose, every heading, anneal_share
    lift_mean_start: bool = True
    lifted_anneal_share: float = 0.2
    # mean starts: the pose and angle priors' energies weigh prior_anneal times SPIN's at the first stage-2
    # iteration, decaying geometrically to SPIN's over the first anneal_share of them (prior_anneal 1: SPIN's
    # throughout); the rest are SPIN's objective
    prior_anneal: float = 100.0
    anneal_share: float = 0.6
    # fast mode, optional: w_c² Σ depth² over the capsule proxies' overlapping pairs (`fitting.collision`), depth
    # in m, w_c in px/m (a depth of 1 cm weighs as a keypoint (w_c / 100) px off); 0: off
    collision_weight: float = 0.0
    # optional, where the caller gives a person mask: w_s² E_sil, the symmetric distance-transform (chamfer) distance
    # between the mask and the projected body's silhouette (`fitting.silhouette_term`, px²: w_s = 5 weighs it like
    # ~25 keypoints); fast mode: in stage 2's LM with analytic Jacobians; reference: the same energy by autograd in
    # its stage-2 Adam. 0: off (the default until `fitloop bench masks` settles a weight)
    silhouette_weight: float = 0.0
    # where an example has a mask (a mask term on), stage 2 also moves its camera translation, depth included (3
    # more unknowns): stage 1 places a mean-sized torso from four noisy keypoints; with that translation held, a
    # silhouette offset by its error, or of a body of another size, is matched by bending the pose and the shape.
    # Free, the outline's size sets the depth and its proportions the shape (docs/smplify.md, "The camera moves
    # with the mask"). False: SPIN's stage 2, translation fixed. Examples without a mask keep stage 1's either way
    mask_moves_camera: bool = True
    # optional, DSR's semantic terms (`fitting.dsr`), px² like the silhouette term's and in the same places:
    # mc_weight w_mc on DSR-MC (a per-part chamfer between the part labels' head, hands and feet and the body's;
    # mc_forearms: the forearms too), clothed_weight w_c on DSR-C (the body inside a parsing's person region,
    # one-sided). semantic_prior: DSR's semantic_prior.npy (SMPL only), which then picks DSR-MC's vertices instead
    # of the anatomy rule. 0: off
    mc_weight: float = 0.0
    clothed_weight: float = 0.0
    mc_forearms: bool = False
    semantic_prior: str | None = None

    @property
    def reads_masks(self) -> bool:
        """Whether any mask term is on (the mesh's silhouette is needed)."""
        return max(self.silhouette_weight, self.mc_weight, self.clothed_weight) > 0

    def validated(self) -> "SMPLifyConfig":
        if self.prior_anneal < 1 or not 0 <= self.anneal_share < 1 or not 0 <= self.lifted_anneal_share < 1:
            raise ValueError(f"prior_anneal must be >= 1 and anneal_share, lifted_anneal_share in [0, 1), got "
                             f"{self.prior_anneal}, {self.anneal_share} and {self.lifted_anneal_share}")
        if self.tolerance < 0 or self.check_every < 1:
            raise ValueError(f"tolerance must be >= 0 and check_every >= 1, got {self.tolerance} and "
                             f"{self.check_every}")
        if self.mode not in ("fast", "reference"):
            raise ValueError(f"SMPLify mode must be 'fast' or 'reference', not {self.mode!r}")
        if min(self.iterations, self.body_iterations) < 1 or self.camera_iterations < 0:
            raise ValueError(f"SMPLify's iterations (reference) and body_iterations (fast) must be >= 1 and "
                             f"camera_iterations >= 0, got {self.iterations}, {self.body_iterations} and "
                             f"{self.camera_iterations}")
        if self.collision_weight < 0 or (self.collision_weight > 0 and self.mode != "fast"):
            raise ValueError(f"collision_weight must be >= 0, and is a term of mode='fast' only; got "
                             f"{self.collision_weight} with mode={self.mode!r}")
        for name in ("silhouette_weight", "mc_weight", "clothed_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = [j for j in self.ignored_joints if j not in JOINT_INDEX]
        if unknown:
            raise ValueError(f"ignored_joints has unknown joint names {unknown}")
        return self


@dataclass
class SMPLifyResult:
    """A batch of fits. reprojection_loss (B, 49) is SPIN's per-joint c² Σ_xy ρ; `loss` (B,) its mean over the
    49 joints, the number SPIN compares fits by. Priors are the unweighted energies (B,)."""

    pose: Tensor
    betas: Tensor
    cam_t: Tensor
    joints: Tensor                          # (B, 49, 3) model frame, metres (add cam_t for the camera frame)
    reprojection_loss: Tensor
    loss: Tensor
    pose_prior: Tensor
    angle_prior: Tensor
    shape_prior: Tensor
    iterations: int
    extras: dict = field(default_factory=dict)


def mean_pose_start(body: BodyModel, keypoints: Tensor, focal: float = FIT_FOCAL,
                    center: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """SPIN's start without an estimate, for keypoints (B, 49, 3) px: pose (B, 72) upright and facing the camera
    (global orientation π about x, body pose 0), betas (B, NB) 0, and the translation (B, 3) m that puts the mean
    body's torso on the keypoints' torso (similar triangles; `core.camera.translation_from_torso`).

    center: (B, 2) principal point, px; default SPIN's crop centre (112, 112)."""
    batch, device = keypoints.shape[0], keypoints.device
    pose = torch.zeros(batch, 72, dtype=keypoints.dtype, device=device)
    pose[:, 0] = torch.pi
    betas = torch.zeros(batch, body.num_betas, dtype=keypoints.dtype, device=device)
    if center is None:
        center = torch.full((batch, 2), FIT_RES / 2.0, dtype=keypoints.dtype, device=device)
    with torch.no_grad():
        joints = body(betas, pose[:, 3:], pose[:, :3]).joints
    return pose, betas, translation_from_torso(joints, keypoints, focal, center, TORSO_PAIR_INDEX)


def focal_per_example(focal_length: Tensor | None, keypoints: Tensor, default: float) -> Tensor:
    """(B, 2) focal lengths px (fx, fy) on the keypoints' (B, ...) device: ``default`` for every example, or the
    caller's (B,)/(B, 2). ValueError when not positive or of another shape."""
    batch = keypoints.shape[0]
    if focal_length is None:
        return torch.full((batch, 2), default, dtype=keypoints.dtype, device=keypoints.device)
    focal = torch.as_tensor(focal_length, dtype=keypoints.dtype, device=keypoints.device).detach().clone()
    if focal.shape == (batch,):
        focal = focal[:, None].expand(batch, 2).clone()
    if focal.shape != (batch, 2) or not bool((focal > 0).all()):
        raise ValueError(f"focal_length must be positive, of shape ({batch},) or ({batch}, 2); got "
                         f"{tuple(focal.shape)}")
    return focal


def gmof(residual: Tensor, sigma: float) -> Tensor:
    """Geman–McClure ρ(r) = σ² r² / (σ² + r²), elementwise."""
    r2 = residual.square()
    return sigma**2 * r2 / (sigma**2 + r2)


class SMPLify:
    """Batched two-stage SMPLify for one body model and pose prior; any batch size per call.

    SMPLify runs where the body model lives (inputs must be there too). Neither argument is modified: a prior on
    another device is copied there, the caller's stays where it is."""

    def __init__(self, body: BodyModel, prior: MaxMixturePrior | VAEPosePrior,
                 config: SMPLifyConfig = SMPLifyConfig(), lifter: PoseLifter | None = None):
        device = next(body.buffers()).device
        if prior.dim != BODY_POSE_DIM:
            raise ModelFileError(f"the pose prior is a mixture over {prior.dim} values; SMPLify needs one over the "
                                 f"69 body-pose values of SMPL's 23 body joints (pass such a prior file)")
        if next(prior.buffers()).device != device:
            prior = copy.deepcopy(prior).to(device)
        self.body, self.prior, self.config = body, prior, config.validated()
        self.skeleton = Skeleton(body).to(device) if config.mode == "fast" else None
        # the start of fits without an estimate (fast mode): a pose lifted from the keypoints; a lifter elsewhere is
        # copied here, as the prior is
        self.lifter = None
        if self.config.mode == "fast" and self.config.lift_mean_start:
            self.lifter = lifter_on(device, lifter)
        self.capsules, self.proxies = None, None
        if self.config.collision_weight > 0:  # the capsules' segment ends as more skeleton points, after the 49
            self.capsules = body_capsules(body)
            self.proxies = Skeleton(body, self.capsules.end_rows).to(device)
            self._proxy_rows = torch.arange(len(self.capsules.end_rows), device=device) + self.skeleton.a.shape[0]
        # the capsule term's rows: every pair, fixed shapes and no host sync, on a GPU (`fitting.collision`)
        self.static_collision = device.type == "cuda"
        self.faces, self.edges, self.vertex_points = None, None, None
        if self.config.reads_masks:  # the mesh's edges; fast mode: every vertex as a skeleton point
            self.faces = torch.as_tensor(body.faces, dtype=torch.long, device=device)
            self.edges = mesh_edges(self.faces)
            if config.mode == "fast":
                num = body.num_vertices
                identity = torch.sparse_coo_tensor(torch.arange(num).repeat(2, 1), torch.ones(num, dtype=torch.float64),
                                                   (num, num), check_invariants=True)
                self.vertex_points = Skeleton(body, identity, sparse=True).to(device)
                self._vertex_rows = torch.arange(num, device=device) + self.vertex_points.a.shape[0] - num
        self.mc_vertices, self.mc_groups = None, None
        if self.config.mc_weight > 0:  # DSR-MC's vertices: by anatomy, or by DSR's prior (`fitting.dsr`)
            if self.config.semantic_prior is not None:
                table = load_semantic_prior(self.config.semantic_prior, len(body.faces))
                chosen, group = prior_segments(table, body.faces, body.num_vertices)
            else:
                chosen, group = minimally_clothed_vertices(vertex_segments(body.layer.lbs_weights.detach().cpu()),
                                                           self.config.mc_forearms)
            self.mc_vertices, self.mc_groups = chosen.to(device), group.to(device)
        self._angle_idx = torch.tensor(ANGLE_PRIOR_INDICES, device=device) + 3          # into the full 72-d pose
        self._angle_sign = torch.tensor(ANGLE_PRIOR_SIGNS, device=device)
        self._ignored = torch.as_tensor(indices(config.ignored_joints), device=device)
        self._kept = torch.ones(NUM_JOINTS, device=device)                         # (49,) 0 where ignored
        self._kept[self._ignored] = 0.0
        self._op_torso = torch.as_tensor(indices(OP_TORSO), device=device)
        self._gt_torso = torch.as_tensor(indices(GT_TORSO), device=device)
        # Joints that are one 3D point: SPIN's 49 name several points twice (an OpenPose and a ground-truth name
        # for one SMPL joint, e.g. "OP RShoulder" and "Right Shoulder"): equal rows of the body's mixer. Stage 2
        # evaluates and differentiates each point once (34 of the 49 on SPIN's map) and sums its joints' weights.
        same = torch.unique(body.mixer, dim=0, return_inverse=True)[1].cpu()                 # (49,) point of joint
        first = torch.full((int(same.max()) + 1,), NUM_JOINTS, dtype=torch.long).scatter_reduce(
            0, same, torch.arange(NUM_JOINTS), "amin")
        self._point_joint = first.to(device)                                   # (U,) a joint that is point u
        self._joint_point = torch.nn.functional.one_hot(same).to(device)     # (49, U) joint j is point u
        self._headings = torch.tensor(HEADINGS, dtype=torch.float64, device=device)  # made once: no copy per call
        self._torso_pairs = torch.tensor(TORSO_PAIR_INDEX, device=device)
        # one stage-2 LM iteration of the keypoint and prior terms, compiled on request (any batch and point count:
        # dynamic shapes)
        self._compiled_step = (torch.compile(self._lm_step, dynamic=True) if config.compile and config.mode == "fast"
                               else None)
        # the same iteration replayed from CUDA graphs on request (`cuda_graph`), compiled first with ``compile``
        self._graphs = (StepGraphs(self._graph_step, capture=device.type == "cuda")
                        if config.cuda_graph and config.mode == "fast" else None)

    # -- public API ----------------------------------------------------------------------------------------
    def __call__(self, keypoints: Tensor, init_pose: Tensor, init_betas: Tensor, init_cam_t: Tensor,
                 camera_center: Tensor, *, start: Start, focal_length: Tensor | None = None,
                 start_sigma: Tensor | float | None = None, masks: Tensor | None = None,
                 has_mask: Tensor | None = None, parts: Tensor | None = None, has_parts: Tensor | None = None,
                 parsing: Tensor | None = None, has_parsing: Tensor | None = None,
                 mask_scale: float = 1.0) -> SMPLifyResult:
        """Fit a batch (shapes in the module docstring); returns fits with their losses.

        start: what the initial parameters are, for every example of the batch: ``"mean"`` (no estimate of this
        person, e.g. `mean_pose_start`) or ``"estimate"`` (a network's prediction). The fast mode keeps an
        estimate's body pose near its start and tries a mean start turned around too; SPIN's reference
        procedure treats both alike.
        focal_length: (B,) or (B, 2) px per example; None: the config's ``focal_length`` for every example.
        start_sigma: how uncertain an estimated start is, rad per pose value ((B,) or one number): the fast mode's
        near-start weight is σ_kp / start_sigma. None: estimated from how far the start reprojects from the
        keypoints (`near_start_weight`). Only for start="estimate"; the reference ignores it.
        masks: (B, H, W) uint8 person masks in the keypoints' pixels (0 background, 1 person, 255 unknown;
        `fitting.silhouette_term`) and has_mask (B,) bool (default: all): with ``silhouette_weight`` > 0 the fit
        adds the silhouette term for the examples that have one (and reports its energy, extras
        ``silhouette_energy`` (B,) px²); ignored when the weight is 0.
        parts: (B, H, W) uint8 part labels in the keypoints' pixels (0 background, 1 + SMPL segment, 255 unknown;
        `fitting.dsr`) and has_parts (B,) bool: with ``mc_weight`` > 0, DSR-MC (extras ``mc_energy``).
        parsing: (B, H, W) uint8 parsing (0 background, any other id the person, 255 unknown) and has_parsing
        (B,) bool: with ``clothed_weight`` > 0, DSR-C (extras ``clothed_energy``).
        mask_scale: the label images' px per keypoint px (all three on one grid over the same crop, pixel corners
        on the keypoint frame's: e.g. 2 for a 448 px mask of the 224 px fit frame; `fitting.silhouette_term`); the
        energies stay in keypoint px², so the weights mean the same at any scale."""
        if start not in get_args(Start):
            raise ValueError(f"SMPLify start must be one of {get_args(Start)}, not {start!r}")
        keypoints, init_pose, init_betas, init_cam_t, camera_center = (
            t.detach().clone() for t in (keypoints, init_pose, init_betas, init_cam_t, camera_center))
        if start_sigma is not None and start != "estimate":
            raise ValueError("start_sigma describes an estimated start; give it with start='estimate' only")
        focal = self._focal(focal_length, keypoints)
        targets = self._mask_terms(keypoints, masks, has_mask, parts, has_parts, parsing, has_parsing, mask_scale)
        if self.config.mode == "reference":
            return self._fit_reference(keypoints, init_pose, init_betas, init_cam_t, camera_center, focal, targets)
        sigma = None
        if start_sigma is not None:
            sigma = torch.as_tensor(start_sigma, dtype=keypoints.dtype, device=keypoints.device).detach().clone()
            sigma = sigma.expand(keypoints.shape[0]).clone() if sigma.dim() == 0 else sigma
            if sigma.shape != (keypoints.shape[0],) or not bool((sigma > 0).all()):
                raise ValueError(f"start_sigma must be positive, one number or of shape ({keypoints.shape[0]},); "
                                 f"got {tuple(sigma.shape)}")
        lifted = start == "mean" and self.lifter is not None
        if lifted:
            init_pose, init_cam_t = self.lifted_start(keypoints, init_betas, camera_center, focal)
        return self._fit_fast(keypoints, init_pose, init_betas, init_cam_t, camera_center, focal,
                              start == "estimate", sigma, targets, lifted)

    def lifted_start(self, keypoints: Tensor, betas: Tensor, center: Tensor, focal: Tensor) -> tuple[Tensor, Tensor]:
        """The start of a fit without an estimate (fast mode, ``lift_mean_start``): pose (B, 72) lifted from the
        keypoints (B, 49, 3) px by the lifter (`fitting.lifter`; the joints SMPLify ignores unseen), and the
        translation (B, 3) m that puts that body's torso (betas (B, NB)) on the keypoints' torso, as
        `mean_pose_start` places the mean pose. center (B, 2) px; focal (B, 2) px."""
        pose = self.lifter.lift(keypoints, self._body_conf(keypoints) > 0)
        with torch.no_grad():
            joints = self._joints(pose, betas)
        return pose, translation_from_torso(joints, keypoints, focal, center, self._torso_pairs)

    def _mask_terms(self, keypoints, masks, has_mask, parts, has_parts, parsing, has_parsing,
                    scale: float) -> dict[str, MaskTerm] | None:
        """The mask terms this fit has (by name: its extras' ``<name>_energy``), or None; scale: the images' px
        per keypoint px."""
        c, dtype, terms = self.config, keypoints.dtype, {}
        for name, arg, weight, images, has in (("silhouette", "masks", c.silhouette_weight, masks, has_mask),
                                               ("mc", "parts", c.mc_weight, parts, has_parts),
                                               ("clothed", "parsing", c.clothed_weight, parsing, has_parsing)):
            if images is None or weight == 0:
                continue
            if images.ndim != 3 or images.shape[0] != keypoints.shape[0]:
                raise ValueError(f"{arg} must be (B, H, W) with B = {keypoints.shape[0]} examples, got "
                                 f"{tuple(images.shape)}")
            has = torch.ones(images.shape[0], dtype=torch.bool) if has is None else has
            if name == "silhouette":
                terms[name] = MaskTerm(weight, mask_targets(images, has, dtype, scale=scale))
            elif name == "mc":
                mc = minimally_clothed_targets(images, has, dtype, forearms=c.mc_forearms, scale=scale)
                terms[name] = MaskTerm(weight, mc, self.mc_vertices, self.mc_groups)
            else:
                terms[name] = MaskTerm(weight, clothed_targets(images, has, dtype, scale=scale))
        return terms or None

    def fitting_loss(self, pose: Tensor, betas: Tensor, cam_t: Tensor, camera_center: Tensor,
                     keypoints: Tensor, *, focal_length: Tensor | None = None) -> Tensor:
        """SPIN's `get_fitting_loss`: the per-joint reprojection term (B, 49) of given fits, without fitting.
        focal_length: as in `__call__`."""
        return self.joints_loss(self.posed_joints(pose, betas), cam_t, camera_center, keypoints,
                                focal_length=focal_length)

    def posed_joints(self, pose: Tensor, betas: Tensor) -> Tensor:
        """The 49 joints (B, 49, 3), model frame, metres, of fits (pose (B, 72), betas (B, NB)), as SMPLify fits
        them (the fast mode's exact skeleton, the reference mode's body model); no gradient."""
        with torch.no_grad():
            return self._joints(pose, betas)

    def joints_loss(self, joints: Tensor, cam_t: Tensor, camera_center: Tensor, keypoints: Tensor, *,
                    focal_length: Tensor | None = None) -> Tensor:
        """`fitting_loss` of fits whose joints (B, 49, 3) are at hand (`posed_joints`); focal_length: as in
        `__call__`."""
        with torch.no_grad():
            return self._reprojection(joints, cam_t, camera_center, self._body_conf(keypoints), keypoints,
                                      self._focal(focal_length, keypoints))

    # -- shared pieces -------------------------------------------------------------------------------------
    def _focal(self, focal_length: Tensor | None, keypoints: Tensor) -> Tensor:
        return focal_per_example(focal_length, keypoints, self.config.focal_length)

    def _joints(self, pose: Tensor, betas: Tensor) -> Tensor:
        if self.skeleton is not None:
            return self.skeleton(pose, betas).points
        return self.body(betas, pose[:, 3:], pose[:, :3]).joints

    def _body_conf(self, keypoints: Tensor) -> Tensor:
        return keypoints[..., 2] * self._kept.to(keypoints.dtype)   # a product: no scalar copied to the device

    def _torso(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """Torso joint indices (B, 4) and their 0/1 mask: OpenPose set when all four are confident."""
        use_op = (keypoints[:, self._op_torso, 2] > 0).all(dim=1, keepdim=True)
        idx = torch.where(use_op, self._op_torso[None], self._gt_torso[None])
        mask = (torch.gather(keypoints[..., 2], 1, idx) > 0).to(keypoints.dtype)
        return idx, mask

    def _reprojection(self, joints: Tensor, cam_t: Tensor, center: Tensor, conf: Tensor, keypoints: Tensor,
                      focal: Tensor) -> Tensor:
        projected = project(joints, cam_t, focal, center)
        return conf.square() * gmof(projected - keypoints[..., :2], self.config.sigma).sum(-1)

    def _priors(self, pose: Tensor, betas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        body_pose = pose[:, 3:]
        angle = torch.exp(pose[:, self._angle_idx] * self._angle_sign.to(pose)).square().sum(-1)
        return self.prior(body_pose).to(pose.dtype), angle, betas.square().sum(-1)

    def _result(self, pose: Tensor, betas: Tensor, cam_t: Tensor, keypoints: Tensor, center: Tensor, focal: Tensor,
                iterations: int, **extras) -> SMPLifyResult:
        with torch.no_grad():
            joints = self._joints(pose, betas)
            reproj = self._reprojection(joints, cam_t, center, self._body_conf(keypoints), keypoints, focal)
            pose_prior, angle, shape = self._priors(pose, betas)
        return SMPLifyResult(pose=pose, betas=betas, cam_t=cam_t, joints=joints, reprojection_loss=reproj,
                             loss=reproj.mean(-1), pose_prior=pose_prior, angle_prior=angle, shape_prior=shape,
                             iterations=iterations, extras=extras)

    def _objective(self, pose: Tensor, betas: Tensor, cam_t: Tensor, center: Tensor, conf: Tensor,
                   keypoints: Tensor, focal: Tensor | None = None) -> Tensor:
        """SPIN's stage-2 objective per example (B,), without fitloop's near-start term; focal (B, 2) px, None: the
        config's."""
        c = self.config
        focal = self._focal(None, keypoints) if focal is None else focal
        joints = self._joints(pose, betas)
        pose_prior, angle, shape = self._priors(pose, betas)
        return (self._reprojection(joints, cam_t, center, conf, keypoints, focal).sum(-1)
                + c.pose_prior_weight**2 * pose_prior + c.angle_prior_weight**2 * angle
                + c.shape_prior_weight**2 * shape)

    # -- reference: SPIN's Adam on the full model ----------------------------------------------------------
    def _fit_reference(self, keypoints, init_pose, init_betas, init_cam_t, center, focal,
                       targets: dict[str, MaskTerm] | None = None) -> SMPLifyResult:
        c = self.config
        global_orient = init_pose[:, :3].clone().requires_grad_(True)
        body_pose = init_pose[:, 3:].clone()
        betas = init_betas.clone()
        cam_t = init_cam_t.clone().requires_grad_(True)
        torso_idx, torso_mask = self._torso(keypoints)
        torso_kp = torch.gather(keypoints[..., :2], 1, torso_idx[..., None].expand(-1, -1, 2))

        optimizer = torch.optim.Adam([global_orient, cam_t], lr=c.step_size, betas=(0.9, 0.999))
        for _ in range(c.iterations):
            joints = self.body(betas, body_pose, global_orient).joints
            torso = torch.gather(joints, 1, torso_idx[..., None].expand(-1, -1, 3))
            err = (project(torso, cam_t, focal, center) - torso_kp).square().sum(-1)
            loss = (torso_mask * err).sum() + c.depth_loss_weight**2 * (cam_t[:, 2] - init_cam_t[:, 2]).square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        cam_t = cam_t.detach()
        body_pose.requires_grad_(True)
        betas.requires_grad_(True)
        conf = self._body_conf(keypoints)
        optimizer = torch.optim.Adam([body_pose, betas, global_orient], lr=c.step_size, betas=(0.9, 0.999))
        for _ in range(c.iterations):
            pose = torch.cat([global_orient, body_pose], dim=1)
            loss = self._objective(pose, betas, cam_t, center, conf, keypoints, focal).sum()
            if targets is not None:  # the same chamfer energies, by autograd through the full mesh
                vertices = self.body(betas, body_pose, global_orient).vertices + cam_t[:, None]
                for term in targets.values():
                    energy = silhouette_energy(vertices, self.faces, self.edges, focal, center, term.targets,
                                               term.subset, term.groups)
                    loss = loss + term.weight**2 * energy.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pose = torch.cat([global_orient, body_pose], dim=1).detach()
        extras = {}
        if targets is not None:
            with torch.no_grad():
                vertices = self.body(betas, body_pose, global_orient).vertices + cam_t[:, None]
                for name, term in targets.items():
                    extras[f"{name}_energy"] = silhouette_energy(vertices, self.faces, self.edges, focal, center,
                                                                 term.targets, term.subset, term.groups)
        return self._result(pose, betas.detach(), cam_t, keypoints, center, focal, 2 * c.iterations, **extras)

    # -- fast: Levenberg–Marquardt on the skeleton ---------------------------------------------------------
    def _fit_fast(self, keypoints, init_pose, init_betas, init_cam_t, center, focal,
                  is_estimate: bool, start_sigma: Tensor | None = None,
                  targets: dict[str, MaskTerm] | None = None, lifted: bool = False) -> SMPLifyResult:
        c = self.config
        batch, dtype, dev = init_pose.shape[0], init_pose.dtype, init_pose.device
        # Candidates: each example's start, and for a mean start (which says nothing about this person) the same
        # start turned around, and turned sideways both ways where the torso is not fully seen (then stage 1 cannot
        # tell the heading). All are fitted; the lowest SPIN objective is kept.
        from_mean = torch.full((batch,), not is_estimate, dtype=torch.bool, device=dev)
        # a lifted start has its heading from the keypoints: no other candidate unless asked for
        back = from_mean & (not lifted) if c.try_back_start is None else torch.full_like(from_mean, c.try_back_start)
        _, torso_mask = self._torso(keypoints)
        side = back & (torso_mask < 1).any(1) & c.side_starts & (not lifted)
        tried = torch.stack([torch.ones_like(back), back, side, side], 1)                    # (B, K) per HEADINGS
        example, heading = torch.nonzero(tried.T, as_tuple=True)[::-1]                     # candidate -> (b, k)
        order = torch.argsort(heading * batch + example)                                   # the plain starts first
        example, heading = example[order], heading[order]
        turns = torch.zeros(len(example), 3, dtype=dtype, device=dev)
        turns[:, 1] = self._headings.to(dtype)[heading]
        pose = init_pose[example].clone()
        turned = heading > 0                                                                # about the camera's y
        pose[turned, :3] = compose_axis_angle(turns[turned], init_pose[example[turned], :3])
        kp, ctr, foc, betas, cam_t = (t[example] for t in (keypoints, center, focal, init_betas, init_cam_t))
        pose, cam_t = self._lm_camera(pose, betas, cam_t, kp, ctr, foc)
        sigma = None if start_sigma is None else start_sigma[example]
        if is_estimate:                                                                     # w per candidate
            if sigma is None and c.init_weight is None:  # read off the start once, after the camera stage
                sigma = self.start_sigma(pose, betas, cam_t, kp, ctr, foc)
            trust = self.near_start_weight(pose, betas, cam_t, kp, ctr, foc, sigma)
        else:
            trust = torch.zeros(len(example), dtype=dtype, device=dev)
        body_init = pose[:, 3:].clone()
        # the silhouette term: from a mean start, only once the keypoints have chosen the candidate (a mean-pose
        # silhouette far from the mask would pull limbs into the wrong parts of it); an estimate fits with it
        sil = None if targets is None or not is_estimate else {k: t.select(example) for k, t in targets.items()}
        done, total = 0, c.body_iterations
        scale = ([1.0] * total if is_estimate else                                # the priors' factor per iteration
                 self.prior_schedule(total, c.lifted_anneal_share if lifted else c.anneal_share))
        if is_estimate and c.init_weight is None and c.noise_from_fit > 0 and 0 < c.noise_iterations < total:
            # σ_kp from the keypoints themselves: the RMS residual per coordinate a first fit leaves, times
            # noise_from_fit for the degrees of freedom that fit absorbed; then w again, with it.
            start_pose, start_betas = pose, betas
            pose, betas, cam_t, ran = self._lm_body_converging(pose, betas, cam_t, kp, ctr, foc, trust, body_init,
                                                               scale[:c.noise_iterations], sil)
            with torch.no_grad():
                conf = self._body_conf(kp)
                r = (project(self._joints(pose, betas), cam_t, foc, ctr) - kp[..., :2]) * conf[..., None]
                rms = (r.square().sum((1, 2)) / (2 * (conf > 0).sum(1)).clamp_min(1)).sqrt()
            trust = self.near_start_weight(start_pose, start_betas, cam_t, kp, ctr, foc, sigma,
                                           c.noise_from_fit * rms)
            done = c.noise_iterations
        # the candidates are compared after back_choice_after iterations; a mean start meets its mask terms only
        # from there too, lifted (one candidate) or not
        split = len(example) > batch or (sil is None and targets is not None)
        first = max(min(c.back_choice_after, total), done) if split else total
        pose, betas, cam_t, ran_next = self._lm_body_converging(pose, betas, cam_t, kp, ctr, foc, trust, body_init,
                                                                scale[done:first], sil)
        ran = ran_next if done == 0 else ran + ran_next                    # stage-2 iterations per candidate
        objectives = torch.full((batch, len(HEADINGS)), float("nan"), dtype=dtype, device=dev)
        pick = torch.arange(batch, device=dev)
        if len(example) > batch:
            with torch.no_grad():
                objective = self._objective(pose, betas, cam_t, ctr, self._body_conf(kp), kp, foc)
            objectives[example, heading] = objective
            best = torch.where(torch.isnan(objectives), torch.inf, objectives).argmin(1)   # (B,) heading
            slot = torch.full((batch, len(HEADINGS)), -1, dtype=torch.long, device=dev)
            slot[example, heading] = torch.arange(len(example), device=dev)
            pick = slot[torch.arange(batch, device=dev), best]
        pose, betas, cam_t, trust, body_init, ran = (t[pick] for t in (pose, betas, cam_t, trust, body_init, ran))
        if total > first:
            pose, betas, cam_t, ran_last = self._lm_body_converging(pose, betas, cam_t, keypoints, center, focal,
                                                                    trust, body_init, scale[first:], targets)
            ran = ran + ran_last
        ranked = torch.where(torch.isnan(objectives), torch.inf, objectives).sort(1).values
        gap = torch.where(torch.isfinite(ranked[:, 1]), ranked[:, 1] - ranked[:, 0], torch.nan)
        return self._result(pose, betas, cam_t, keypoints, center, focal, c.camera_iterations + c.body_iterations,
                            turned_around=heading[pick] == 1, heading=self._headings.to(dtype)[heading[pick]],
                            candidate_objectives=objectives, objective_gap=gap, near_start_weight=trust,
                            body_iterations=ran, lifted_start=torch.full((batch,), lifted, device=dev),
                            **self._collision_extras(pose, betas),
                            **self._silhouette_extras(pose, betas, cam_t, focal, center, targets))

    def _proxy_ends(self, pose: Tensor, betas: Tensor) -> Tensor:
        """The capsules' segment ends (B, 2C, 3), model frame, m (`fitting.collision.Capsules.end_rows`)."""
        return self.proxies(pose, betas, self._proxy_rows).points

    def _collision(self, pose: Tensor, betas: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
        """The capsule term's residuals (B, K) m and Jacobian (B, K, 72 + NB) at pose (B, 72), betas (B, NB) whose
        segment ends are ``ends`` (B, 2C, 3) (`fitting.collision.chained_collision_residuals`)."""
        return chained_collision_residuals(self.capsules, self.proxies, self._proxy_rows, pose, betas, ends,
                                           static=self.static_collision)

    def _silhouette(self, pose: Tensor, betas: Tensor, cam_t: Tensor, focal: Tensor, center: Tensor,
                    terms: dict[str, MaskTerm]) -> tuple[dict[str, SilhouetteResiduals], Tensor, Tensor]:
        """The mask terms' residuals at pose (B, 72), betas (B, NB), cam_t (B, 3) m (`fitting.silhouette_term`),
        all read off one silhouette: its vertices' indices (B, K) and points (B, K, 3), camera frame, m."""
        vertices = self.vertex_points(pose, betas, self._vertex_rows).points + cam_t[:, None]     # (B, V, 3)
        vertex, valid = contour_vertices(vertices, self.faces, self.edges)
        points = torch.gather(vertices, 1, vertex[..., None].expand(-1, -1, 3))
        pixels = project(points, torch.zeros_like(cam_t), focal, center)
        return {k: term_residuals(t, pixels, vertex, valid) for k, t in terms.items()}, vertex, points

    def _silhouette_energy(self, pose, betas, cam_t, focal, center, terms: dict[str, MaskTerm]) -> Tensor:
        """Σ w² E (B,) px² of the mask terms."""
        res = self._silhouette(pose, betas, cam_t, focal, center, terms)[0]
        return sum(terms[k].weight**2 * r.energy for k, r in res.items())

    def _silhouette_system(self, pose: Tensor, betas: Tensor, cam_t: Tensor, focal: Tensor, center: Tensor,
                           terms: dict[str, MaskTerm], translation: bool = False) -> tuple[Tensor, Tensor]:
        """The mask terms' Σ w² JᵀJ (B, 72 + NB, 72 + NB) and Σ w² Jᵀr (B, 72 + NB) at one fit: their residuals
        chained through the skeleton's Jacobian of just the silhouette vertices some example uses. translation: the
        camera translation's 3 columns too (72 + NB + 3)."""
        res, vertex, points = self._silhouette(pose, betas, cam_t, focal, center, terms)
        used, where = torch.unique(vertex, return_inverse=True)
        state = self.vertex_points(pose, betas, self._vertex_rows[used])
        d_params = torch.cat(self.vertex_points.jacobian(state), -1)                          # (B, U, 3, D)
        d_params = d_params[torch.arange(len(pose), device=pose.device)[:, None], where]     # (B, K, 3, D)
        d_points = projection_jacobian(points, focal)                                       # (B, K, 2, 3)
        d_pixels = d_points @ d_params
        if translation:                                      # a camera-frame point moves with t one for one
            d_pixels = torch.cat([d_pixels, d_points], -1)
        hess, grad = 0.0, 0.0
        for name, r in res.items():
            h, g = normal_equations(r, d_pixels)
            hess, grad = hess + terms[name].weight**2 * h, grad + terms[name].weight**2 * g
        return hess, grad

    def _silhouette_extras(self, pose, betas, cam_t, focal, center, terms) -> dict[str, Tensor]:
        if terms is None:
            return {}
        with torch.no_grad():
            res = self._silhouette(pose, betas, cam_t, focal, center, terms)[0]
            return {f"{name}_energy": r.energy for name, r in res.items()}

    def _collision_extras(self, pose: Tensor, betas: Tensor) -> dict[str, Tensor]:
        if self.capsules is None:
            return {}
        with torch.no_grad():
            ends = self._proxy_ends(pose, betas)
            return {"collision_penalty": collision_penalty(ends, self.capsules.radii(betas), self.capsules.pairs)}

    def prior_schedule(self, iterations: int, share: float | None = None) -> list[float]:
        """Per stage-2 iteration, the factor on the pose and angle priors' weights (energies) from a mean start:
        ``prior_anneal`` at the first, decaying geometrically to 1 after ``share`` of them (default ``anneal_share``:
        15 of the default 25; a lifted start's ``lifted_anneal_share``: 5), then 1: SPIN's objective for the rest. A strong prior first keeps the limbs of a body far from its
        keypoints out of implausible depth minima; SPIN's objective then decides (SMPLify, Bogo et al. 2016, anneals
        its prior weights in stages for this)."""
        c = self.config
        relax = round((c.anneal_share if share is None else share) * iterations)
        if relax == 0:
            return [1.0] * iterations
        return [c.prior_anneal ** max(0.0, 1.0 - k / relax) for k in range(iterations)]

    def near_start_weight(self, pose: Tensor, betas: Tensor, cam_t: Tensor, keypoints: Tensor, center: Tensor,
                          focal: Tensor, start_sigma: Tensor | None = None,
                          sigma_kp: Tensor | None = None) -> Tensor:
        """The near-start weight w (B,) px/rad of estimated starts: w = σ_kp / σ_start, the ratio of the keypoints'
        noise to the start's, as a Gaussian posterior weighs them (the data term is in px², the near-start term
        w² ‖θ_body − θ_body,start‖² in rad²).

        σ_kp (px) = ``keypoint_noise`` × the longer side of the confident keypoints' box. σ_start (rad per pose
        value) is ``start_sigma`` (B,) when given; otherwise it is read off the start itself: were each body pose
        value off by σ, the start's joints would reproject off by E Σ c² r² = σ² ‖C J‖²_F to first order (J the
        Jacobian of the projected joints w.r.t. the body pose, C the confidences), so σ_start² = Σ c² r² / ‖C J‖²_F
        with r the start's residuals (px) after the camera stage. That also counts the keypoints' own noise and
        the shape's error, so it errs towards a looser start. σ_start is at least MIN_START_SIGMA. A fixed
        ``init_weight`` overrides all this.

        pose (B, 72), betas (B, NB), cam_t (B, 3), keypoints (B, 49, 3) px, center (B, 2) px, focal (B, 2) px."""
        c = self.config
        if c.init_weight is not None:
            return torch.full((pose.shape[0],), float(c.init_weight), dtype=pose.dtype, device=pose.device)
        conf = self._body_conf(keypoints)
        seen = conf > 0
        big = torch.finfo(keypoints.dtype).max
        low = torch.where(seen[..., None], keypoints[..., :2], big).amin(1)
        high = torch.where(seen[..., None], keypoints[..., :2], -big).amax(1)
        side = (high - low).amax(-1).clamp_min(1.0)
        if sigma_kp is None:
            sigma_kp = c.keypoint_noise * side                                                 # (B,) px
        if start_sigma is None:
            start_sigma = self.start_sigma(pose, betas, cam_t, keypoints, center, focal)
        return sigma_kp / start_sigma.clamp_min(MIN_START_SIGMA)

    def start_sigma(self, pose: Tensor, betas: Tensor, cam_t: Tensor, keypoints: Tensor, center: Tensor,
                    focal: Tensor) -> Tensor:
        """σ_start (B,) rad per body-pose value read off a start (`near_start_weight`): σ² = Σ c² r² / ‖C J‖²_F."""
        conf = self._body_conf(keypoints)
        with torch.no_grad():  # over the observed points, each once: ‖C J‖²_F = Σ_p (Σ_{k of p} c_k²) ‖J_p‖²
            points, merge, point_of = self._observed_points(keypoints)
            state = self.skeleton(pose, betas, points)
            dproj = projection_jacobian(state.points + cam_t[:, None], focal)               # (B, P, 2, 3)
            jac = self.skeleton.pixel_jacobian(state, dproj)[..., 3:72]                     # (B, P, 2, 69)
            c2 = conf.square() @ merge                                                      # (B, P)
            resid = ((project(state.points, cam_t, focal, center)[:, point_of] - keypoints[..., :2])
                     * conf[..., None])
            jac_norm = (c2 * jac.square().sum((2, 3))).sum(1)
            return (resid.square().sum((1, 2)) / jac_norm.clamp_min(1e-12)).sqrt()

    def _lm_camera(self, pose, betas, cam_t, kp, center, focal):
        """Stage 1: global orientation and translation on the torso joints, plus the depth anchor. The body pose
        and shape are held, so the torso turns rigidly: one skeleton evaluation, then each trial only rotates its
        four points (`Skeleton.root_frame`; the same values as evaluating the skeleton at every trial)."""
        c = self.config
        batch, dtype = pose.shape[0], pose.dtype
        torso_idx, mask = self._torso(kp)
        target = torch.gather(kp[..., :2], 1, torso_idx[..., None].expand(-1, -1, 2))
        # evaluate only the eight torso points; torso_idx re-indexed into that subset
        dev = pose.device
        local_idx = torch.where(torso_idx[:, :1] == self._op_torso[0], torch.arange(4, device=dev),
                                torch.arange(4, 8, device=dev))
        frame = self.skeleton.root_frame(self.skeleton(pose, betas, torch.cat([self._op_torso, self._gt_torso])))
        frame = frame.select(local_idx)                                                    # (B, 4, 3) each
        depth0 = cam_t[:, 2].clone()
        lam = torch.full((batch,), LM_DAMPING, dtype=dtype, device=dev)
        jd = torch.zeros(batch, 1, 6, dtype=dtype, device=dev)     # the depth anchor's row of the Jacobian
        jd[:, 0, 5].fill_(c.depth_loss_weight)                      # fill_: no scalar tensor copied to the device

        def evaluate(orient, t):
            torso = frame.points(orient)
            r = (project(torso, t, focal, center) - target) * mask[..., None]  # (B, 4, 2)
            d = c.depth_loss_weight * (t[:, 2] - depth0)
            return torso, r, d, r.square().sum((1, 2)) + d.square()

        orient = pose[:, :3]
        torso, r, d, cost = evaluate(orient, cam_t)
        for _ in range(c.camera_iterations):
            dproj = projection_jacobian(torso + cam_t[:, None], focal) * mask[..., None, None]  # (B,4,2,3)
            jac = torch.cat([dproj @ frame.jacobian(orient), dproj], dim=-1).reshape(batch, -1, 6)   # (B, 8, 6)
            jac = torch.cat([jac, jd], 1)
            res = torch.cat([r.reshape(batch, -1), d[:, None]], 1)
            hess, grad = jac.transpose(1, 2) @ jac, (jac.transpose(1, 2) @ res[..., None])[..., 0]
            step = _lm_solve(hess, grad, lam)
            new_orient, new_t = orient + step[:, :3], cam_t + step[:, 3:]
            new_torso, new_r, new_d, new_cost = evaluate(new_orient, new_t)
            better = new_cost < cost
            orient = torch.where(better[:, None], new_orient, orient)
            cam_t = torch.where(better[:, None], new_t, cam_t)
            torso = torch.where(better[:, None, None], new_torso, torso)
            r = torch.where(better[:, None, None], new_r, r)
            d, cost = torch.where(better, new_d, d), torch.where(better, new_cost, cost)
            lam = torch.where(better, lam * LM_ACCEPT, lam * LM_REJECT).clamp(1e-7, 1e7)
        return torch.cat([orient, pose[:, 3:]], 1), cam_t

    def data_system(self, state: SkeletonState, cam_t: Tensor, focal: Tensor, resid: Tensor, conf: Tensor,
                    merge: Tensor | None = None, translation: bool = False) -> tuple[Tensor, Tensor]:
        """The keypoint term's Gauss–Newton system at one skeleton evaluation: Jᵀ W J (B, 72 + NB, 72 + NB) and
        Jᵀ W r (B, 72 + NB), with J the projected points' Jacobian, r = resid (B, K, 2) px and W the
        Geman–McClure IRLS weights c² σ⁴ / (σ² + r²)² (conf (B, K)). The bulk of an LM iteration's work.

        merge (K, P) 0/1: which of the state's P points each keypoint is (None: keypoint k is point k). Keypoints
        of one point share its Jacobian rows J_p, so their weights and weighted residuals are summed first:
        Σ_k J_pᵀ W_k J_p = J_pᵀ (Σ_k W_k) J_p, and the Jacobian and the product are formed once per point.
        translation: the camera translation's 3 columns too (the system is then 72 + NB + 3)."""
        sigma2 = self.config.sigma**2
        batch = resid.shape[0]
        dproj = projection_jacobian(state.points + cam_t[:, None], focal)                # (B, P, 2, 3)
        jac = self.skeleton.pixel_jacobian(state, dproj)                                 # (B, P, 2, 72+NB)
        jac = (torch.cat([jac, dproj], -1) if translation else jac).flatten(1, 2)
        w = conf.square()[..., None] * sigma2**2 / (sigma2 + resid.square()).square()    # (B, K, 2)
        wr = w * resid
        if merge is not None:           # Σ over each point's keypoints, as one GEMM: (B, P, 2) each
            both = torch.cat([w, wr], -1).transpose(1, 2).reshape(-1, merge.shape[0]) @ merge    # (B*4, P)
            w, wr = both.reshape(batch, 2, 2, -1).permute(1, 0, 3, 2)
        w, wr = w.reshape(batch, -1), wr.reshape(batch, -1)
        hess = jac.transpose(1, 2) @ (w[..., None] * jac)
        # Jᵀ W r as a row vector times J: the (n, R) @ (R, 1) product through the transposed J is ~2x slower
        grad = (wr[:, None] @ jac)[:, 0]
        return hess, grad

    def _lm_body_converging(self, pose, betas, cam_t, kp, center, focal, trust, body_init, prior_scale,
                            sil: dict[str, MaskTerm] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`_lm_body` with the early exit of ``tolerance`` > 0: the iterations run in rounds of ``check_every``;
        after a round, the examples whose objective (with the round's last prior factor) fell by less than
        ``tolerance`` × itself, and whose damping did not rise over the round (a round of rejected steps is no
        convergence), stop, and the next round runs on the others only (their rows gathered; results scattered
        back). No example stops while the schedule's factor still changes afterwards. Each round costs one host
        sync (the new active set's size); the next round starts from the evaluation the last one ended with.

        Returns pose (B, 72), betas (B, NB), cam_t (B, 3) (moved only with a mask term: ``mask_moves_camera``) and
        the iterations each example ran (B,) long."""
        c = self.config
        ran = torch.zeros(len(pose), dtype=torch.long, device=pose.device)
        if c.tolerance == 0 or not prior_scale or self._graphs is not None:   # graphs: one shape, the whole budget
            pose, betas, cam_t = self._lm_body(pose, betas, cam_t, kp, center, focal, trust, body_init, prior_scale,
                                               sil)[:3]
            return pose, betas, cam_t, ran + len(prior_scale)
        pose, betas, cam_t = pose.clone(), betas.clone(), cam_t.clone()
        lam = torch.full((len(pose),), LM_DAMPING, dtype=pose.dtype, device=pose.device)
        rows = torch.arange(len(pose), device=pose.device)                  # the examples still running
        spared = torch.zeros(len(pose), dtype=torch.bool, device=pose.device)   # given a round for a stall
        seen = self._observed_points(kp)                                    # the whole batch's: rounds shrink it
        evaluation = None                               # the last round's final one, of the rows still running
        for first in range(0, len(prior_scale), c.check_every):
            scale = prior_scale[first:first + c.check_every]
            part = None if sil is None else {k: t.select(rows) for k, t in sil.items()}
            lam_start = lam[rows]
            p, b, t, lam_r, before, evaluation = self._lm_body(
                pose[rows], betas[rows], cam_t[rows], kp[rows], center[rows], focal[rows], trust[rows],
                body_init[rows], scale, part, lam_start, seen, evaluation)
            pose[rows], betas[rows], cam_t[rows], lam[rows] = p, b, t, lam_r
            ran[rows] += len(scale)
            rest = prior_scale[first + len(scale):]
            if not rest or any(f != scale[-1] for f in rest):
                continue                                      # the last round, or the objective still changes
            after = evaluation.terms
            cost_before, cost_after = before[:, 0] + scale[-1] * before[:, 1], after[:, 0] + scale[-1] * after[:, 1]
            # an objective that fell by less than the tolerance while the round's steps were rejected (the damping
            # rose) may be a stall, not convergence: such an example runs one more round before it may stop
            fell = cost_before - cost_after > c.tolerance * cost_after.abs()
            damped = lam_r > lam_start
            moving = fell | (damped & ~spared[rows])
            spared[rows] = damped & ~fell
            going = torch.nonzero(moving)[:, 0]               # host sync: the active set's size
            if len(going) == 0:
                break
            rows, evaluation = rows[going], evaluation.take(going)
        return pose, betas, cam_t, ran

    def _observed_points(self, kp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The skeleton points some example of kp (B, 49, 3) observes, each once: one joint index each (P,) (the
        skeleton's subset), which point each joint is (49, P) 0/1 in kp's dtype (`data_system`'s merge), and each
        joint's column in it (49,) (0 where no example observes the point: those joints' confidence is 0). SPIN's
        49 joints are 34 points (`_joint_point`); one host sync (the count)."""
        dtype = kp.dtype
        observed = (self._body_conf(kp).sum(0) > 0).to(dtype) @ self._joint_point.to(dtype)    # (U,)
        points = torch.nonzero(observed > 0)[:, 0]
        merge = self._joint_point[:, points].to(dtype)
        return self._point_joint[points], merge, merge.argmax(1)

    def _lm_body(self, pose, betas, cam_t, kp, center, focal, trust, body_init, prior_scale,
                 sil: dict[str, MaskTerm] | None = None, lam: Tensor | None = None,
                 seen: tuple[Tensor, Tensor, Tensor] | None = None, evaluation: _Evaluation | None = None):
        """Stage 2: pose, betas and global orientation; Geman–McClure by IRLS, GMM by its active component.

        trust (B,) px/rad: the near-start weight w (0 for a start that is no estimate), entering as w² ‖θ_body −
        θ_body,init‖². prior_scale: one factor on the pose and angle priors' weights per iteration (`prior_schedule`);
        a step is accepted when it lowers the objective with the factor of its iteration. sil: the candidates' mask
        terms (`_mask_terms`; None: off). lam (B,): the damping to start from (None: LM_DAMPING). seen:
        `_observed_points` of the batch these rows were taken from (None: of kp itself). evaluation: `_stage2_cost` at
        the given pose, betas and cam_t where the caller has it (the end of its last round; None: evaluated here). The
        loop has no host sync: every per-example decision is a ``torch.where``. Each iteration is `_lm_step` (compiled
        whole with ``compile``, for the keypoint and prior terms alone).

        With a mask term and ``mask_moves_camera``, cam_t (B, 3) is an unknown too (the rows without a mask held at
        the given translation, which is stage 1's: they never move).

        Returns pose, betas, cam_t, the damping reached (B,), the objective's two parts (B, 2) (the fixed terms,
        the priors a schedule scales) at the start, and the evaluation at the end (`_Evaluation`: its ``terms`` the
        two parts there)."""
        # only the points some example observes enter the data term, each once (`data_system`'s merge)
        dtype = pose.dtype
        points, merge, point_of = self._observed_points(kp) if seen is None else seen
        prior = self.prior
        fixed = _Stage2(points=points, merge=merge, point_of=point_of, conf=self._body_conf(kp), kp=kp, cam_t=cam_t,
                        focal=focal, center=center, body_init=body_init, w_init=trust.square(), sil=sil,
                        t_hold=TRANSLATION_HOLD**2 * (~torch.stack([t.targets.has_mask for t in sil.values()]).any(0)
                                                      ).to(dtype) if sil is not None and self.config.mask_moves_camera
                        else None,
                        gmm=None if isinstance(prior, VAEPosePrior) else
                        (prior.means.to(dtype), prior.precisions.to(dtype), prior.log_nll_weights.to(dtype)))
        lam = torch.full((len(pose),), LM_DAMPING, dtype=dtype, device=pose.device) if lam is None else lam
        # compiled or graphed: the keypoint and prior terms alone; compiled: more than one example (torch
        # specialises batch 1)
        plain = fixed.gmm is not None and sil is None and self.config.collision_weight == 0
        step = self._compiled_step if plain and len(pose) > 1 and self._compiled_step is not None else self._lm_step
        if evaluation is None:
            evaluation = _Evaluation(*self._stage2_cost(pose, betas, cam_t, fixed))
        state, resid, gmm, terms, ends = evaluation.state, evaluation.resid, evaluation.gmm, evaluation.terms, \
            evaluation.ends
        first_terms = terms
        if plain and self._graphs is not None and prior_scale:   # the factor float64: as the eager loop's float
            lam, state, cam_t, resid, gmm, terms, ends = self._graphs.run(
                (lam, state, cam_t, resid, gmm, terms, ends), fixed, list(prior_scale), torch.float64)
        else:
            for scale in prior_scale:
                lam, state, cam_t, resid, gmm, terms, ends = step(lam, state, cam_t, resid, gmm, terms, ends, scale,
                                                                  fixed)
        return state.pose, state.betas, cam_t, lam, first_terms, _Evaluation(state, resid, gmm, terms, ends)

    def _graph_step(self, carry: tuple, factor: Tensor, fixed: _Stage2) -> tuple:
        """`_lm_step` as `fitting.step_graph` replays it: the carry (lam, state, cam_t, resid, gmm, terms, ends)
        in and out, the priors' factor a 0-d tensor; the compiled iteration with ``compile``."""
        step = self._compiled_step if self._compiled_step is not None else self._lm_step
        return step(*carry, factor, fixed)

    def _stage2_cost(self, p: Tensor, b: Tensor, t: Tensor, fixed: "_Stage2"):
        """Stage 2's evaluation at pose p (B, 72), betas b (B, NB), camera translation t (B, 3): the skeleton's
        state, the keypoint residuals (B, P, 2) px, the pose prior's per-component energies (B, K) (VAE: its
        residuals (B, R)), the objective's terms (B, 2) (the rest, and the priors a schedule scales) and the capsules'
        segment ends (None without the collision term)."""
        c = self.config
        state = self.skeleton(p, b, fixed.points)
        # every keypoint's residual (a point's, where its point is observed; 0-confidence rows elsewhere)
        resid = project(state.points, t, fixed.focal, fixed.center)[:, fixed.point_of] - fixed.kp[..., :2]
        data = (fixed.conf.square()[..., None] * gmof(resid, c.sigma)).sum((1, 2))
        if fixed.gmm is None:                                                # (B, R) residuals, E = ½‖r‖²
            gmm = self.prior.residuals(p[:, 3:]).to(p.dtype)
            energy = 0.5 * gmm.square().sum(-1)
        else:                                                                # (B, K) component energies
            means, precisions, log_w = fixed.gmm
            gmm = 0.5 * _quadratic(p[:, 3:], means, precisions) - log_w
            energy = gmm.min(1).values
        angle = torch.exp(p[:, self._angle_idx] * self._angle_sign.to(p.dtype)).square().sum(-1)
        rest = (data + c.shape_prior_weight**2 * b.square().sum(-1)
                + fixed.w_init * (p[:, 3:] - fixed.body_init).square().sum(-1))
        ends = None
        if c.collision_weight > 0:  # the capsules' ends, kept for the step's Jacobian
            ends = self._proxy_ends(p, b)
            rest = rest + c.collision_weight**2 * collision_penalty(ends, self.capsules.radii(b), self.capsules.pairs)
        if fixed.sil is not None:  # correspondences re-made at every evaluation (fitting.silhouette_term)
            rest = rest + self._silhouette_energy(p, b, t, fixed.focal, fixed.center, fixed.sil)
        if fixed.free_t:  # the rows without a mask held where stage 1 put them
            rest = rest + fixed.t_hold * (t - fixed.cam_t).square().sum(-1)
        priors = c.pose_prior_weight**2 * energy + c.angle_prior_weight**2 * angle
        return state, resid, gmm, torch.stack([rest, priors], 1), ends

    def _lm_step(self, lam, state, cam_t, resid, gmm, terms, ends, scale: float | Tensor, fixed: "_Stage2"):
        """One stage-2 LM iteration from an accepted evaluation (state, resid, gmm, terms, ends: `_stage2_cost` at
        the pose and betas ``state`` holds and cam_t) with damping lam (B,) and the priors' factor ``scale``:
        the damped Gauss–Newton step, its trial, and per example the trial where it lowers the objective (λ down)
        else the old values (λ up). Returns the same tuple, updated. ``scale`` is a 0-d tensor where the iteration
        is replayed from a CUDA graph (`fitting.step_graph`: the value changes between replays)."""
        c = self.config
        pose, betas = state.pose, state.betas
        dtype = pose.dtype
        body_end = 72 + betas.shape[1]                   # pose and betas columns; then cam_t's (free_t)
        w_pose, w_angle, w_shape = c.pose_prior_weight**2, c.angle_prior_weight**2, c.shape_prior_weight**2
        angle_idx, angle_sign = self._angle_idx, self._angle_sign.to(dtype)
        cost = terms[:, 0] + scale * terms[:, 1]
        pose_w, angle_w = scale * w_pose * 0.5, scale * w_angle            # the priors' weights this iteration
        hess, grad = self.data_system(state, cam_t, fixed.focal, resid, fixed.conf, fixed.merge, fixed.free_t)
        if fixed.gmm is None:  # VAE prior: Gauss–Newton on its residuals, exact Jacobian (B, R, 69)
            jac_p = self.prior.residuals_and_jacobian(pose[:, 3:])[1].to(dtype)
            hess[:, 3:72, 3:72] += pose_w * jac_p.transpose(1, 2) @ jac_p
            grad[:, 3:72] += pose_w * (jac_p.transpose(1, 2) @ gmm[..., None])[..., 0]
        else:    # max-mixture prior: the active component's quadratic
            means, precisions, _ = fixed.gmm
            k = gmm.argmin(1)
            prec_k, diff = precisions[k], pose[:, 3:] - means[k]
            if isinstance(pose_w, Tensor):                                  # one pass over the (B, 69, 69) block
                hess[:, 3:72, 3:72].addcmul_(prec_k, pose_w)
            else:
                hess[:, 3:72, 3:72].add_(prec_k, alpha=pose_w)
            # diffᵀ P_k (P_k symmetric): the row-vector product, ~2x faster than P_k @ diff's matrix-vector one
            grad[:, 3:72] += pose_w * (diff[:, None] @ prec_k)[:, 0]
        # angle prior, shape prior and near-start term: diagonal Hessians, added through the diagonal's view
        diag = hess.diagonal(dim1=1, dim2=2)                         # (B, 72 + NB [+ 3]), hess's own memory
        # angle prior: residual w exp(s θ), derivative s exp(s θ)
        e = torch.exp(pose[:, angle_idx] * angle_sign)
        de = angle_sign * e
        diag[:, angle_idx] += angle_w * de.square()
        grad[:, angle_idx] += angle_w * e * de
        diag[:, 72:body_end] += w_shape
        grad[:, 72:body_end] += w_shape * betas
        diag[:, 3:72] += fixed.w_init[:, None]
        grad[:, 3:72] += fixed.w_init[:, None] * (pose[:, 3:] - fixed.body_init)
        if c.collision_weight > 0:  # interpenetration: residuals depth (B, K), Jacobian (B, K, 72 + NB)
            depth, d_depth = self._collision(pose, betas, ends)
            hess[:, :body_end, :body_end] += c.collision_weight**2 * d_depth.transpose(1, 2) @ d_depth
            grad[:, :body_end] += c.collision_weight**2 * (d_depth.transpose(1, 2) @ depth[..., None])[..., 0]
        if fixed.sil is not None:  # the mask terms, weights included
            hess_s, grad_s = self._silhouette_system(pose, betas, cam_t, fixed.focal, fixed.center, fixed.sil,
                                                     fixed.free_t)
            hess += hess_s
            grad += grad_s
        if fixed.free_t:  # the rows without a mask held where stage 1 put them
            diag[:, body_end:] += fixed.t_hold[:, None]
            grad[:, body_end:] += fixed.t_hold[:, None] * (cam_t - fixed.cam_t)

        step = _lm_solve(hess, grad, lam)
        new_pose, new_betas = pose + step[:, :72], betas + step[:, 72:body_end]
        new_t = cam_t + step[:, body_end:] if fixed.free_t else cam_t
        new_state, new_resid, new_gmm, new_terms, new_ends = self._stage2_cost(new_pose, new_betas, new_t, fixed)
        better = new_terms[:, 0] + scale * new_terms[:, 1] < cost
        keep = better[:, None, None]
        return (torch.where(better, lam * LM_ACCEPT, lam * LM_REJECT).clamp(1e-7, 1e7),
                select_state(better, new_state, state), torch.where(better[:, None], new_t, cam_t),
                torch.where(keep, new_resid, resid),
                torch.where(better[:, None], new_gmm, gmm), torch.where(better[:, None], new_terms, terms),
                None if ends is None else torch.where(keep, new_ends, ends))


@dataclass
class _Evaluation:
    """Stage 2's objective evaluated at one fit per example (`SMPLify._stage2_cost`): the skeleton's state (which
    holds the pose and betas), the keypoint residuals (B, 49, 2) px, the pose prior's per-component energies (B, K)
    (VAE: its residuals), the objective's two parts (B, 2) and the capsules' ends (or None)."""

    state: SkeletonState
    resid: Tensor
    gmm: Tensor
    terms: Tensor
    ends: Tensor | None

    def take(self, rows: Tensor) -> _Evaluation:
        """The evaluation of the examples ``rows`` (K,), in that order."""
        return _Evaluation(take_state(self.state, rows), self.resid[rows], self.gmm[rows], self.terms[rows],
                           None if self.ends is None else self.ends[rows])


@dataclass
class _Stage2:
    """What stage 2's objective holds fixed during one `SMPLify._lm_body` call: the skeleton points some example
    observes ``points`` (P,), one joint index each (`SMPLify._point_joint`), ``merge`` (49, P) 0/1 which point each
    joint is and ``point_of`` (49,) its column (0 where no example observes the point: those joints' confidence is
    0), the confidences (B, 49) and keypoints (B, 49, 3) px, the camera (cam_t (B, 3) m, focal (B, 2) px, center
    (B, 2) px; with ``free_t`` the translation the stage starts from), the near-start
    term's start (B, 69) and weight w² (B,), the mask terms (or None), the weight (B,) px²/m² that holds cam_t for
    the rows without a mask where cam_t is an unknown (``t_hold``; None: cam_t is held, SPIN's stage 2), and
    the max-mixture prior's means, precisions and log weights in the fit's dtype (None: the VAE prior)."""

    points: Tensor
    merge: Tensor
    point_of: Tensor
    conf: Tensor
    kp: Tensor
    cam_t: Tensor
    focal: Tensor
    center: Tensor
    body_init: Tensor
    w_init: Tensor
    sil: dict[str, MaskTerm] | None
    t_hold: Tensor | None
    gmm: tuple[Tensor, Tensor, Tensor] | None

    @property
    def free_t(self) -> bool:
        """Whether cam_t is an unknown of this stage 2 (a mask term with ``mask_moves_camera``)."""
        return self.t_hold is not None


def _quadratic(x: Tensor, means: Tensor, precisions: Tensor) -> Tensor:
    diff = x[:, None] - means                                                  # (B, K, D)
    return (torch.einsum("kij,bkj->bki", precisions, diff) * diff).sum(-1)


def _lm_solve(hess: Tensor, grad: Tensor, lam: Tensor) -> Tensor:
    """Solve (H + λ diag(H) + ε I) δ = -g per example, ε = LM_FLOOR × the mean of diag(H) (+ 1e-6), by
    `solve_spd` (a zero step where the factorisation fails: the caller rejects it and raises that example's λ)."""
    damped = hess.clone()                                  # the caller's system stays as it was
    diag = damped.diagonal(dim1=-2, dim2=-1)                # in place: no (B, n, n) diag_embed
    eps = LM_FLOOR * diag.mean(-1, keepdim=True) + 1e-6                  # before λ scales the diagonal
    diag.mul_(1 + lam[:, None]).add_(eps)
    return solve_spd(damped, -grad)


def solve_spd(matrix: Tensor, rhs: Tensor) -> Tensor:
    """x (B, n) with matrix @ x = rhs per example, for symmetric positive definite matrices (B, n, n) (damped normal
    equations) and rhs (B, n), by Cholesky. Where the factorisation fails (the matrix numerically indefinite:
    should not happen) x is 0 — a mask, not a Python branch: no host sync; an LM step of 0 lowers nothing, so its
    caller rejects it and raises that example's damping, which makes the next system more diagonal."""
    # Cholesky is ~2x cheaper than LU. The upper factor: 7.1 -> 5.0 ms at batch 256, 82 unknowns, 1 thread (the
    # lower one adds a (B, n, n) tril copy)
    upper, info = torch.linalg.cholesky_ex(matrix, upper=True)
    # Uᵀ U x = rhs by two triangular solves: torch.cholesky_solve would check its LAPACK status with .item() (a
    # host sync per call on CPU), triangular solves check nothing
    half = torch.linalg.solve_triangular(upper.mT, rhs[..., None], upper=False)
    x = torch.linalg.solve_triangular(upper, half, upper=True)[..., 0]
    return torch.where((info == 0)[:, None], x, 0.0)
