"""Pavlakos et al. 2018's regressor: 2D keypoints -> pose and camera ("PosePrior"), silhouette -> shape
("ShapePrior") (CVPR 2018, "Learning to Estimate 3D Human Pose and Shape from a Single Color Image").

The paper's networks read the output of its own keypoint and silhouette ConvNet; here they read the sample's
2D keypoints and person mask (`shards.reader`: what a detector or an annotation gives), so the network learns on
CPU in minutes (issue 16) and sees no pixels.

**PosePrior** (an MLP with Martinez et al.'s residual "bilinear" units, ICCV 2017, "A simple yet effective baseline
for 3d human pose estimation": Linear, BatchNorm, ReLU, Dropout 0.5, twice, plus the input): the 49 keypoints'
normalised x, y and confidence (absent joints all 0) -> Linear 1024 -> 2 units of 1024 -> the pose (24 × 6D) and
the weak-perspective camera [s, tx, ty] as deltas from the mean parameters.
**ShapePrior** (a small CNN): the mask area-pooled to 64 × 64, two channels (person fraction, unknown fraction;
the paper's input is one silhouette channel, ours also says where the crop leaves the image) -> 5 stages of
3 × 3 conv (8, 16, 32, 32, 32 channels), BatchNorm, ReLU, 2 × 2 max-pool (64 -> 2 px) -> Linear 512 -> 1 unit
of 512 -> betas as deltas from the mean shape. A sample without a mask gets the mean shape.

Sizes: the paper gives the structure, not every width; the widths above are those of a public TensorFlow
re-implementation (Lau KwanYuen, 2019, its ``pose`` and ``shape`` ``model.py``: PosePrior fc 1024 + two
bilinear 1024; ShapePrior 64 × 64 input, residual conv stages 8/16/32/32/32 with max-pooling, fc 512 + one bilinear
512), not the authors' code. Differences: plain conv stages instead of residual ones; the camera is regressed with
the pose (the paper fits it separately), so the network's output is `training.regressor.RegressorOutput`, as the
ResNet's, and the loop, losses, SMPLify in the loop and checkpoints work unchanged. Decoders start near zero
(Xavier-uniform, gain 0.01, as the HMR head's), so an untrained network predicts the mean parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.joints import NUM_JOINTS
from shards.masks import UNKNOWN
from training.geometry import rot6d_to_rotmat
from training.regressor import NUM_SMPL_JOINTS, MeanParams, RegressorOutput

POSE_WIDTH = 1024           # PosePrior's units (Martinez et al.'s width)
SHAPE_WIDTH = 512           # ShapePrior's fully connected width
SHAPE_INPUT = 64            # px: ShapePrior's silhouette side
SHAPE_CHANNELS = (8, 16, 32, 32, 32)
DROPOUT = 0.5               # Martinez et al.'s


class BilinearUnit(nn.Module):
    """Martinez et al.'s residual block: x + drop(relu(bn(W2 drop(relu(bn(W1 x)))))) on (B, width)."""

    def __init__(self, width: int, dropout: float = DROPOUT):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


def _dense(inputs: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(DROPOUT))


def silhouette_input(mask: Tensor, side: int = SHAPE_INPUT) -> Tensor:
    """Reader masks (B, R, R) uint8 (0, 1, `UNKNOWN`) -> (B, 2, side, side) float32: person and unknown fractions,
    area-pooled (`torch.nn.functional.adaptive_avg_pool2d`)."""
    planes = torch.stack([(mask == 1), (mask == UNKNOWN)], 1).float()
    return F.adaptive_avg_pool2d(planes, side)


class KeypointRegressor(nn.Module):
    """Pavlakos 2018's PosePrior + ShapePrior (module docstring): `forward` (keypoints (B, 49, 3) normalised +
    confidence, mask (B, R, R) uint8, has_mask (B,) bool) -> `RegressorOutput` (SMPL's 24 joints)."""

    def __init__(self, mean: MeanParams):
        super().__init__()
        if mean.heads != "smpl":
            raise ValueError(f"the keypoints head predicts SMPL's 24 joints; mean parameters of heads "
                             f"{mean.heads!r} (an SMPL-X-layout body model) need the hmr head")
        self.heads = "smpl"
        num_betas = int(mean.betas.shape[0])
        pose_dim = NUM_SMPL_JOINTS * 6
        self.pose_net = nn.Sequential(_dense(NUM_JOINTS * 3, POSE_WIDTH), BilinearUnit(POSE_WIDTH),
                                      BilinearUnit(POSE_WIDTH))
        self.decpose = nn.Linear(POSE_WIDTH, pose_dim)
        self.deccam = nn.Linear(POSE_WIDTH, 3)
        stages, channels = [], 2
        for width in SHAPE_CHANNELS:
            stages += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        side = SHAPE_INPUT // 2 ** len(SHAPE_CHANNELS)
        self.shape_net = nn.Sequential(*stages, nn.Flatten(), _dense(channels * side * side, SHAPE_WIDTH),
                                       BilinearUnit(SHAPE_WIDTH))
        self.decshape = nn.Linear(SHAPE_WIDTH, num_betas)
        for layer in (self.decpose, self.deccam, self.decshape):
            nn.init.xavier_uniform_(layer.weight, gain=0.01)
            nn.init.zeros_(layer.bias)
        self.register_buffer("init_pose", torch.as_tensor(mean.pose6d, dtype=torch.float32)[None])
        self.register_buffer("init_shape", torch.as_tensor(mean.betas, dtype=torch.float32)[None])
        self.register_buffer("init_cam", torch.as_tensor(mean.cam, dtype=torch.float32)[None])

    def forward(self, keypoints: Tensor, mask: Tensor, has_mask: Tensor) -> RegressorOutput:
        batch = keypoints.shape[0]
        if keypoints.shape[1:] != (NUM_JOINTS, 3) or mask.shape[0] != batch:
            raise ValueError(f"keypoints (B, {NUM_JOINTS}, 3) and masks (B, R, R) expected, got "
                             f"{tuple(keypoints.shape)} and {tuple(mask.shape)}")
        features = self.pose_net(keypoints.float().reshape(batch, -1))
        pose = self.init_pose + self.decpose(features)
        cam = self.init_cam + self.deccam(features)
        shape_delta = self.decshape(self.shape_net(silhouette_input(mask)))
        shape = self.init_shape + shape_delta * has_mask[:, None].to(shape_delta.dtype)
        rotmat = rot6d_to_rotmat(pose.float().reshape(batch, NUM_SMPL_JOINTS, 6))
        return RegressorOutput(rotmat=rotmat, betas=shape.float(), camera=cam.float(), pose6d=pose.float())
