"""SPIN's regressor: a ResNet trunk and HMR's iterative error feedback, 6D rotations, from mean parameters.

Structure (SPIN_REFERENCE §6; names as SPIN's ``models/hmr.py``, so its checkpoints' ``model`` dicts load):
the trunk (`training.resnet.ResNet`, torchvision names, no ``fc``) gives a feature f; starting from the mean
parameters θ₀ = (pose 24 × 6D, betas, camera [s, tx, ty]), each of ``iterations`` (3) steps computes
``x = drop2(fc2(drop1(fc1([f, θ]))))`` (no nonlinearity between the two layers, as in SPIN) and adds the decoded
deltas ``decpose(x), decshape(x), deccam(x)`` to θ. The decoders start near zero (Xavier-uniform, gain 0.01).

Mean parameters: SPIN's ``smpl_mean_params.npz`` (keys ``pose`` (144,) 6D, ``shape`` (10,), ``cam`` (3,)) for the
real SMPL; for fitloop's open model they are computed from data (`mean_params_from_prior`): the pose prior's
weight-averaged body pose, the global orientation that stands the body upright facing the camera (π about x),
mean shape (zeros), and camera [0.9, 0, 0].

**Heads follow the body model's family** (`heads_for_family`): ``"smpl"`` for SMPL-family models (SMPL, open,
SMPL-H: the 24-joint path above, unchanged), ``"smplx"`` for SMPL-X-layout models: the body is SMPL-X's 22 joints
(global + 21 body) in 6D, and three more parts join the same iterative error feedback: both hands' 2 × 15 joints
in 6D (SMPL-X's MANO order, left then right, relative to the flat hand), the jaw in 6D and the expression (10),
so the state vector fed back is [f, θ_body, β, cam, θ_hands, θ_jaw, ψ] and each part has its own decoder
(``dechands``, ``decjaw``, ``decexpr``, Xavier gain 0.01 as the others). Their mean parameters: zero hand and
jaw rotation (identity 6D, the flat open hand and closed mouth SMPL-X's zero pose is) and zero expression (the
neutral face); the body's as above, over its first 21 joints. The output's ``rotmat`` stays (B, 24, 3, 3) for
every head set: for SMPL-X its slots 22 and 23 (SMPL's hand joints, which SMPL-X's body has not) are the identity,
as SMPL-X fits store them (zero axis-angle), so the body code and the pose loss read one layout.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from core.model_id import WHOLEBODY_FAMILIES
from fits.schema import NUM_EXPRESSION
from fitting.priors import MaxMixturePrior
from fitting.wholebody_model import HAND_JOINTS
from training.geometry import axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_rot6d
from training.resnet import ResNet, WeightsFileError

NUM_SMPL_JOINTS = 24
POSE_6D = NUM_SMPL_JOINTS * 6
DEFAULT_CAMERA = (0.9, 0.0, 0.0)
# The whole-body (SMPL-X) heads: SMPL-X's global orientation + 21 body joints, 2 x 15 hand joints, the jaw, and
# the expression components (as many as fitloop's SMPL-X fits store: `fits.schema.NUM_EXPRESSION`).
NUM_SMPLX_BODY_JOINTS = 22
NUM_HAND_JOINTS = 2 * HAND_JOINTS
HEADS = ("smpl", "smplx")
IDENTITY_6D = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)  # rotmat_to_rot6d(I): the first two columns, row-major


def heads_for_family(family: str) -> str:
    """The regressor's head set for a body model family (module docstring): "smplx" for the SMPL-X layout, whose
    hands, jaw and face the fits table stores; "smpl" for every other (SMPL-H's hands are not regressed)."""
    return "smplx" if family in WHOLEBODY_FAMILIES else "smpl"


@dataclass(frozen=True)
class MeanParams:
    """The regressor's starting point: pose6d (J × 6,) SPIN's 6D of the body's joints (24 for heads "smpl", 22 for
    "smplx"); betas (NB,); cam (3,) [s, tx, ty]; for heads "smplx" also hands6d (180,) the 30 hand joints' 6D,
    jaw6d (6,), expression (NE,); None otherwise."""

    pose6d: np.ndarray
    betas: np.ndarray
    cam: np.ndarray
    source: str
    hands6d: np.ndarray | None = None
    jaw6d: np.ndarray | None = None
    expression: np.ndarray | None = None

    @property
    def heads(self) -> str:
        return "smpl" if self.hands6d is None else "smplx"

    def wholebody(self, num_expression: int = NUM_EXPRESSION) -> MeanParams:
        """These mean parameters with SMPL-X's heads (module docstring): the body's first 22 joints, identity
        hands and jaw, zero expression."""
        if self.heads == "smplx":
            return self
        identity = np.tile(np.asarray(IDENTITY_6D, np.float32), NUM_HAND_JOINTS)
        return replace(self, pose6d=self.pose6d[: NUM_SMPLX_BODY_JOINTS * 6].copy(), hands6d=identity,
                       jaw6d=np.asarray(IDENTITY_6D, np.float32), expression=np.zeros(num_expression, np.float32),
                       source=f"{self.source}; hands and jaw identity, expression 0")


def mean_params_from_npz(path: str | Path) -> MeanParams:
    """SPIN's ``data/smpl_mean_params.npz`` (pose (144,) 6D, shape (10,), cam (3,)); read without pickles."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such file; give SPIN's data/smpl_mean_params.npz, or leave --mean-params "
                               f"out (the pose prior's mean)")
    try:
        with np.load(path, allow_pickle=False) as data:
            pose, shape, cam = (np.asarray(data[k], np.float32).reshape(-1) for k in ("pose", "shape", "cam"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as err:
        reason = ("an array of Python objects (a pickle): never loaded" if "allow_pickle" in str(err)
                  else f"{type(err).__name__}: {err}")
        raise WeightsFileError(f"{path}: not SPIN's smpl_mean_params.npz (arrays pose, shape, cam): {reason}") from None
    if pose.shape != (POSE_6D,) or cam.shape != (3,):
        raise WeightsFileError(f"{path}: pose {pose.shape} / cam {cam.shape}, expected ({POSE_6D},) / (3,)")
    bad = [name for name, values in (("pose", pose), ("shape", shape), ("cam", cam)) if not np.isfinite(values).all()]
    if bad:  # the network would start from them, train on NaN losses and save NaN checkpoints
        raise WeightsFileError(f"{path}: {', '.join(bad)} hold NaN or infinite values; give SPIN's "
                               f"smpl_mean_params.npz, or leave --mean-params out (the pose prior's mean)")
    return MeanParams(pose, shape, cam, f"npz:{path.name}")


def mean_params_from_prior(prior: MaxMixturePrior, num_betas: int = 10,
                           cam: tuple[float, float, float] = DEFAULT_CAMERA) -> MeanParams:
    """Mean parameters from a pose prior: body pose = Σ_k w_k μ_k (axis-angle, radians), global orientation π
    about x (upright, facing the camera in SPIN's camera convention), betas 0, the given camera."""
    weights = prior.log_weights.detach().cpu().exp().double()
    body = (weights[:, None] * prior.means.detach().cpu().double()).sum(0) / weights.sum()          # (69,)
    pose = torch.cat([torch.tensor([np.pi, 0.0, 0.0], dtype=torch.float64), body]).reshape(NUM_SMPL_JOINTS, 3)
    pose6d = rotmat_to_rot6d(axis_angle_to_rotmat(pose)).reshape(-1).float().numpy()
    return MeanParams(pose6d, np.zeros(num_betas, np.float32), np.asarray(cam, np.float32), "pose-prior mean")


@dataclass
class RegressorOutput:
    """rotmat (B, 24, 3, 3) [global orientation, 23 body joints], camera frame (heads "smplx": 22 regressed, slots
    22, 23 identity); betas (B, NB); camera (B, 3) weak perspective [s, tx, ty] in normalised crop units; pose6d
    (B, J × 6) the regressed body joints. Heads "smplx" only (else None): hand_rotmat (B, 30, 3, 3) left then
    right hand, MANO order; jaw_rotmat (B, 1, 3, 3); expression (B, NE). vertices (B, V, 3): a head's own mesh,
    model frame, metres (the graphcmr head's; else None). volume_joints (B, 24, 3): the volumetric head's J24
    joints by soft-argmax (`training.volumetric`: x, y normalised crop, z root-relative depth /
    `DEPTH_HALF_RANGE`; else None)."""

    rotmat: Tensor
    betas: Tensor
    camera: Tensor
    pose6d: Tensor
    hand_rotmat: Tensor | None = None
    jaw_rotmat: Tensor | None = None
    expression: Tensor | None = None
    vertices: Tensor | None = None
    volume_joints: Tensor | None = None


class Regressor(ResNet):
    """SPIN's HMR regressor (module docstring): `forward` images (B, 3, H, W) -> `RegressorOutput`."""

    def __init__(self, mean: MeanParams, depth: int = 50, iterations: int = 3):
        super().__init__(depth, num_classes=None)
        num_betas = int(mean.betas.shape[0])
        self.iterations = iterations
        self.heads = mean.heads
        pose_dim = int(mean.pose6d.shape[0])
        expected = (NUM_SMPL_JOINTS if self.heads == "smpl" else NUM_SMPLX_BODY_JOINTS) * 6
        if pose_dim != expected:
            raise ValueError(f"mean pose of {pose_dim} values for heads {self.heads!r}, expected {expected}")
        extra = 0 if self.heads == "smpl" else (NUM_HAND_JOINTS * 6 + 6 + int(mean.expression.shape[0]))
        self.fc1 = nn.Linear(self.feature_dim + pose_dim + num_betas + 3 + extra, 1024)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(1024, 1024)
        self.drop2 = nn.Dropout()
        self.decpose = nn.Linear(1024, pose_dim)
        self.decshape = nn.Linear(1024, num_betas)
        self.deccam = nn.Linear(1024, 3)
        decoders = [self.decpose, self.decshape, self.deccam]
        if self.heads == "smplx":
            self.dechands = nn.Linear(1024, NUM_HAND_JOINTS * 6)
            self.decjaw = nn.Linear(1024, 6)
            self.decexpr = nn.Linear(1024, int(mean.expression.shape[0]))
            decoders += [self.dechands, self.decjaw, self.decexpr]
        for layer in decoders:
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        self.register_buffer("init_pose", torch.as_tensor(mean.pose6d, dtype=torch.float32)[None])
        self.register_buffer("init_shape", torch.as_tensor(mean.betas, dtype=torch.float32)[None])
        self.register_buffer("init_cam", torch.as_tensor(mean.cam, dtype=torch.float32)[None])
        if self.heads == "smplx":
            self.register_buffer("init_hands", torch.as_tensor(mean.hands6d, dtype=torch.float32)[None])
            self.register_buffer("init_jaw", torch.as_tensor(mean.jaw6d, dtype=torch.float32)[None])
            self.register_buffer("init_expr", torch.as_tensor(mean.expression, dtype=torch.float32)[None])

    def forward(self, x: Tensor, iterations: int | None = None) -> RegressorOutput:
        return self.regress(self.features(x), iterations)

    def regress(self, feats: Tensor, iterations: int | None = None) -> RegressorOutput:
        """The iterative error feedback from pooled features (B, feature_dim) (module docstring)."""
        batch = feats.shape[0]
        pose = self.init_pose.expand(batch, -1).to(feats.dtype)
        shape = self.init_shape.expand(batch, -1).to(feats.dtype)
        cam = self.init_cam.expand(batch, -1).to(feats.dtype)
        if self.heads == "smplx":
            return self._forward_wholebody(feats, pose, shape, cam, iterations)
        for _ in range(self.iterations if iterations is None else iterations):
            xc = self.drop2(self.fc2(self.drop1(self.fc1(torch.cat([feats, pose, shape, cam], 1)))))
            pose = pose + self.decpose(xc)
            shape = shape + self.decshape(xc)
            cam = cam + self.deccam(xc)
        rotmat = rot6d_to_rotmat(pose.float().reshape(batch, NUM_SMPL_JOINTS, 6))
        return RegressorOutput(rotmat=rotmat, betas=shape.float(), camera=cam.float(), pose6d=pose.float())

    def _forward_wholebody(self, feats: Tensor, pose: Tensor, shape: Tensor, cam: Tensor,
                           iterations: int | None) -> RegressorOutput:
        """The iterative error feedback with SMPL-X's heads: the state [θ_body, β, cam, θ_hands, θ_jaw, ψ]."""
        batch = feats.shape[0]
        hands = self.init_hands.expand(batch, -1).to(feats.dtype)
        jaw = self.init_jaw.expand(batch, -1).to(feats.dtype)
        expr = self.init_expr.expand(batch, -1).to(feats.dtype)
        for _ in range(self.iterations if iterations is None else iterations):
            state = torch.cat([feats, pose, shape, cam, hands, jaw, expr], 1)
            xc = self.drop2(self.fc2(self.drop1(self.fc1(state))))
            pose = pose + self.decpose(xc)
            shape = shape + self.decshape(xc)
            cam = cam + self.deccam(xc)
            hands = hands + self.dechands(xc)
            jaw = jaw + self.decjaw(xc)
            expr = expr + self.decexpr(xc)
        body = rot6d_to_rotmat(pose.float().reshape(batch, NUM_SMPLX_BODY_JOINTS, 6))
        pad = torch.eye(3, dtype=body.dtype, device=body.device).expand(batch, NUM_SMPL_JOINTS - len(body[0]), 3, 3)
        return RegressorOutput(rotmat=torch.cat([body, pad], 1), betas=shape.float(), camera=cam.float(),
                               pose6d=pose.float(),
                               hand_rotmat=rot6d_to_rotmat(hands.float().reshape(batch, NUM_HAND_JOINTS, 6)),
                               jaw_rotmat=rot6d_to_rotmat(jaw.float().reshape(batch, 1, 6)),
                               expression=expr.float())
