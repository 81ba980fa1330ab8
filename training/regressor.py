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
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fitting.priors import MaxMixturePrior
from training.geometry import axis_angle_to_rotmat, rot6d_to_rotmat, rotmat_to_rot6d
from training.resnet import ResNet, WeightsFileError

NUM_SMPL_JOINTS = 24
POSE_6D = NUM_SMPL_JOINTS * 6
DEFAULT_CAMERA = (0.9, 0.0, 0.0)


@dataclass(frozen=True)
class MeanParams:
    """The regressor's starting point: pose6d (144,) 24 joints × SPIN's 6D; betas (NB,); cam (3,) [s, tx, ty]."""

    pose6d: np.ndarray
    betas: np.ndarray
    cam: np.ndarray
    source: str


def mean_params_from_npz(path: str | Path) -> MeanParams:
    """SPIN's ``data/smpl_mean_params.npz`` (pose (144,) 6D, shape (10,), cam (3,)); read without pickles."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            pose, shape, cam = (np.asarray(data[k], np.float32).reshape(-1) for k in ("pose", "shape", "cam"))
    except (OSError, KeyError, ValueError) as err:
        raise WeightsFileError(f"{path}: not SPIN's smpl_mean_params.npz (pose, shape, cam): {err}") from None
    if pose.shape != (POSE_6D,) or cam.shape != (3,):
        raise WeightsFileError(f"{path}: pose {pose.shape} / cam {cam.shape}, expected ({POSE_6D},) / (3,)")
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
    """rotmat (B, 24, 3, 3) [global orientation, 23 body joints], camera frame; betas (B, NB); camera (B, 3)
    weak perspective [s, tx, ty] in normalised crop units; pose6d (B, 144)."""

    rotmat: Tensor
    betas: Tensor
    camera: Tensor
    pose6d: Tensor


class Regressor(ResNet):
    """SPIN's HMR regressor (module docstring): `forward` images (B, 3, H, W) -> `RegressorOutput`."""

    def __init__(self, mean: MeanParams, depth: int = 50, iterations: int = 3):
        super().__init__(depth, num_classes=None)
        num_betas = int(mean.betas.shape[0])
        self.iterations = iterations
        self.fc1 = nn.Linear(self.feature_dim + POSE_6D + num_betas + 3, 1024)
        self.drop1 = nn.Dropout()
        self.fc2 = nn.Linear(1024, 1024)
        self.drop2 = nn.Dropout()
        self.decpose = nn.Linear(1024, POSE_6D)
        self.decshape = nn.Linear(1024, num_betas)
        self.deccam = nn.Linear(1024, 3)
        for layer in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
        self.register_buffer("init_pose", torch.as_tensor(mean.pose6d, dtype=torch.float32)[None])
        self.register_buffer("init_shape", torch.as_tensor(mean.betas, dtype=torch.float32)[None])
        self.register_buffer("init_cam", torch.as_tensor(mean.cam, dtype=torch.float32)[None])

    def forward(self, x: Tensor, iterations: int | None = None) -> RegressorOutput:
        feats = self.features(x)
        batch = feats.shape[0]
        pose = self.init_pose.expand(batch, -1).to(feats.dtype)
        shape = self.init_shape.expand(batch, -1).to(feats.dtype)
        cam = self.init_cam.expand(batch, -1).to(feats.dtype)
        for _ in range(self.iterations if iterations is None else iterations):
            xc = self.drop2(self.fc2(self.drop1(self.fc1(torch.cat([feats, pose, shape, cam], 1)))))
            pose = pose + self.decpose(xc)
            shape = shape + self.decshape(xc)
            cam = cam + self.deccam(xc)
        rotmat = rot6d_to_rotmat(pose.float().reshape(batch, NUM_SMPL_JOINTS, 6))
        return RegressorOutput(rotmat=rotmat, betas=shape.float(), camera=cam.float(), pose6d=pose.float())
